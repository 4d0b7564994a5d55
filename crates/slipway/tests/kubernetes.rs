//! `kubernetes.manifests` end to end: the real binary, a real git repository and a real
//! Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager from
//! `scripts/test-cluster.sh`), checked with Debian's `kubectl`.
//!
//! No kubelet runs: where a test needs a workload to become healthy, it plays the kubelet's
//! part for the Pods of one namespace (`Cluster::play_kubelet`) and the real controllers do
//! the rest. Each test has its own stack name, so its namespaces are its own.

mod util;

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use slipway_testkit::cluster::Cluster;
use slipway_testkit::wait::wait_for;
use util::Sandbox;

fn cluster() -> &'static Cluster {
    Cluster::shared("slipway-e2e")
}

/// A sandbox whose engine may use `cluster` as `[kubernetes.test]`.
fn sandbox(cluster: &Cluster) -> Sandbox {
    let s = Sandbox::new();
    let mut config = std::fs::read_to_string(&s.config).expect("the engine config");
    config.push_str(&format!(
        "[kubernetes.test]\nkubeconfig = \"{}\"\n",
        cluster.kubeconfig().display()
    ));
    std::fs::write(&s.config, config).expect("write the engine config");
    s
}

fn stack(name: &str, extra: &str) -> String {
    format!(
        "version: 1\nstack: {name}\nvariables:\n  greeting: hello\nenvironments:\n  dev: {{ track: main }}\n  qa: {{ track: main, variables: {{ greeting: bonjour }} }}\nresources:\n  app:\n    type: kubernetes.manifests\n    cluster: test\n    manifests: [k8s]\n    wait: 60s\n{extra}"
    )
}

const SETTINGS: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  labels: { app: web }
data:
  greeting: "${vars.greeting} from ${env.name}"
"#;

const WEB: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector: { matchLabels: { app: web } }
  template:
    metadata: { labels: { app: web } }
    spec:
      containers:
        - name: web
          image: nginx:1.27
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: { app: web }
  ports: [{ port: 80 }]
"#;

/// The resource `app` of `env`, from `status --output json`.
fn resource_app(s: &Sandbox, env: &str) -> Value {
    let status = s.json(&["status", "--env", env, "--output", "json"]);
    status["environments"][0]["resources"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "app").cloned())
        .unwrap_or_else(|| panic!("no resource app in {status}"))
}

fn label<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object["metadata"]["labels"][key].as_str()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn manifests_are_applied_updated_pruned_and_destroyed_with_their_namespace() {
    let k = cluster();
    let s = sandbox(k);
    s.write("slipway.yaml", &stack("kapp", ""))
        .write("k8s/settings.yaml", SETTINGS)
        .write("k8s/web.yaml", WEB)
        .commit("a config map, a deployment and a service");
    let _kubelet = k.play_kubelet("kapp-dev");
    s.ok(&["apply", "--env", "dev", "--yes"]);

    let namespace = k
        .get("", "namespace", "kapp-dev")
        .expect("the namespace exists");
    assert_eq!(label(&namespace, "slipway.dev/environment"), Some("dev"));
    assert_eq!(label(&namespace, "slipway.dev/stack"), Some("kapp"));
    assert_eq!(
        label(&namespace, "app.kubernetes.io/managed-by"),
        Some("slipway")
    );
    let settings: Value = serde_json::from_str(&k.kubectl_ok(&[
        "get",
        "configmap",
        "settings",
        "-n",
        "kapp-dev",
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .expect("JSON");
    assert_eq!(settings["data"]["greeting"], "hello from dev");
    assert_eq!(
        label(&settings, "app"),
        Some("web"),
        "the manifest's own labels stay"
    );
    assert_eq!(label(&settings, "slipway.dev/resource"), Some("app"));
    let managers: Vec<&str> = settings["metadata"]["managedFields"]
        .as_array()
        .expect("managed fields")
        .iter()
        .filter(|m| m["operation"] == "Apply")
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(
        managers,
        ["slipway"],
        "server-side apply as field manager slipway"
    );
    // The real controllers took it from there: a ReplicaSet, two Pods, rolled out.
    assert_eq!(k.names("kapp-dev", "replicasets").len(), 1);
    let web = k.get("kapp-dev", "deployment", "web").expect("applied");
    assert_eq!(web["status"]["availableReplicas"], 2, "{web}");
    let app = resource_app(&s, "dev");
    assert_eq!(app["status"], "ready", "{app}");
    assert_eq!(app["outputs"]["namespace"], "kapp-dev");
    assert_eq!(app["outputs"]["objects"], 3);

    // Update a field, add an object, remove one.
    s.write(
        "k8s/settings.yaml",
        &SETTINGS.replace("from", "greets from"),
    )
    .write(
        "k8s/web.yaml",
        WEB.split("---").next().expect("the deployment"),
    )
    .write(
        "k8s/token.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: { name: token }\nstringData: { value: plain }\n",
    )
    .commit("change the greeting, drop the service, add a secret");
    let plan = s.ok(&["plan", "--env", "dev"]);
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.contains("~ app"), "{plan}");
    // Per object, from the server's dry run against the live objects.
    assert!(
        plan.contains("~ ConfigMap/settings (k8s/settings.yaml:1:1)"),
        "{plan}"
    );
    assert!(
        plan.contains("data.greeting = \"hello from dev\" → \"hello greets from dev\""),
        "{plan}"
    );
    assert!(plan.contains("+ Secret/token"), "{plan}");
    assert!(plan.contains("- Service/web"), "{plan}");
    assert!(
        !plan.contains("Deployment/web"),
        "the unchanged deployment is no change: {plan}"
    );
    let json = s.json(&["plan", "--env", "dev", "--output", "json"]);
    let objects = &json["changes"][0]["objects"];
    assert_eq!(objects.as_array().map(Vec::len), Some(3), "{json}");
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let settings = k.get("kapp-dev", "configmap", "settings").expect("kept");
    assert_eq!(settings["data"]["greeting"], "hello greets from dev");
    assert!(
        k.get("kapp-dev", "service", "web").is_none(),
        "the service left the set: pruned"
    );
    assert!(
        k.get("kapp-dev", "secret", "token").is_some(),
        "the new secret is applied"
    );
    assert!(
        k.get("kapp-dev", "deployment", "web").is_some(),
        "the deployment stays"
    );
    assert_eq!(resource_app(&s, "dev")["outputs"]["objects"], 3);

    s.ok(&["destroy", "--env", "dev", "--yes"]);
    assert!(
        k.get("", "namespace", "kapp-dev").is_none(),
        "destroy waits until the namespace is gone"
    );
}

#[test]
fn two_environments_from_one_commit_differ_only_in_their_declared_variables() {
    let k = cluster();
    let s = sandbox(k);
    s.write("slipway.yaml", &stack("kpair", ""))
        .write("k8s/settings.yaml", SETTINGS)
        .write("k8s/web.yaml", WEB)
        .commit("one commit, two environments");
    let _dev = k.play_kubelet("kpair-dev");
    let _qa = k.play_kubelet("kpair-qa");
    s.ok(&["apply", "--env", "dev", "--yes"]);
    s.ok(&["apply", "--env", "qa", "--yes"]);
    let greeting = |ns: &str| k.get(ns, "configmap", "settings").expect("applied")["data"].clone();
    assert_eq!(greeting("kpair-dev")["greeting"], "hello from dev");
    assert_eq!(greeting("kpair-qa")["greeting"], "bonjour from qa");
    let spec = |ns: &str| k.get(ns, "deployment", "web").expect("applied")["spec"].clone();
    assert_eq!(
        spec("kpair-dev"),
        spec("kpair-qa"),
        "the same workload in both"
    );
    let service = |ns: &str| {
        let mut spec = k.get(ns, "service", "web").expect("applied")["spec"].clone();
        // Allocated by the cluster, one per service.
        for key in ["clusterIP", "clusterIPs"] {
            spec.as_object_mut().expect("a spec").remove(key);
        }
        spec
    };
    assert_eq!(service("kpair-dev"), service("kpair-qa"));
    s.ok(&["destroy", "--env", "dev", "--yes"]);
    assert!(k.get("", "namespace", "kpair-dev").is_none());
    assert!(
        k.get("kpair-qa", "configmap", "settings").is_some(),
        "destroying dev leaves qa alone"
    );
}

fn widget_crd(group: &str) -> String {
    format!(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{ plural: widgets, singular: widget, kind: Widget }}
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {{ status: {{}} }}
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
"#
    )
}

fn widget(group: &str) -> String {
    format!("apiVersion: {group}/v1\nkind: Widget\nmetadata: {{ name: w }}\nspec: {{ size: 3 }}\n")
}

#[test]
fn a_crd_and_its_custom_resource_apply_in_one_set_and_destroy_removes_both() {
    let k = cluster();
    let s = sandbox(k);
    let group = "kcrd.example.com";
    // The custom resource comes first in the files: the order is Slipway's to make.
    let name = format!("  name: widgets.{group}\n");
    let noted = format!("{name}  annotations: {{ example.com/note: first }}\n");
    s.write("slipway.yaml", &stack("kcrd", ""))
        .write("k8s/a-widget.yaml", &widget(group))
        .write("k8s/b-crd.yaml", &widget_crd(group).replace(&name, &noted))
        .commit("a CRD and a widget");
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let crd = k
        .get("", "crd", &format!("widgets.{group}"))
        .expect("the CRD is applied");
    assert_eq!(label(&crd, "slipway.dev/environment"), Some("dev"));
    assert_eq!(crd["metadata"]["annotations"]["example.com/note"], "first");
    // Created by a POST (see `send_cluster_scoped`), and still Slipway's apply's to change:
    // a field the manifests drop goes.
    s.write("k8s/b-crd.yaml", &widget_crd(group))
        .commit("no note");
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let crd = k
        .get("", "crd", &format!("widgets.{group}"))
        .expect("the CRD stays");
    assert!(
        crd["metadata"]["annotations"]
            .get("example.com/note")
            .is_none(),
        "{}",
        crd["metadata"]["annotations"]
    );
    let w = k
        .get("kcrd-dev", &format!("widgets.{group}"), "w")
        .expect("the widget is applied");
    assert_eq!(w["spec"]["size"], 3);

    s.ok(&["destroy", "--env", "dev", "--yes"]);
    assert!(k.get("", "namespace", "kcrd-dev").is_none());
    assert!(
        k.get("", "crd", &format!("widgets.{group}")).is_none(),
        "the cluster-scoped CRD of the inventory is deleted"
    );
}

#[test]
fn a_ready_false_condition_is_degraded_with_its_reason() {
    let k = cluster();
    let s = sandbox(k);
    let group = "kready.example.com";
    s.write(
        "slipway.yaml",
        &stack("kready", "").replace("wait: 60s", "wait: 4s"),
    )
    .write("k8s/crd.yaml", &widget_crd(group))
    .write("k8s/widget.yaml", &widget(group))
    .commit("a widget");
    // A custom resource without conditions is taken as it is: healthy once it exists.
    s.ok(&["apply", "--env", "dev", "--yes"]);
    // What a controller of widgets writes once it has looked at the object.
    k.kubectl_ok(&[
        "patch", &format!("widgets.{group}"), "w", "-n", "kready-dev", "--subresource=status",
        "--type=merge", "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"False","reason":"NoCapacity","message":"no room for size 3"}]}}"#,
    ]);
    s.write(
        "k8s/widget.yaml",
        &widget(group).replace("size: 3", "size: 4"),
    )
    .commit("a bigger widget");
    let out = s.run(&["apply", "--env", "dev", "--yes"]);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out) + &String::from_utf8_lossy(&out.stdout);
    assert!(
        err.contains("Widget/w") && err.contains("NoCapacity"),
        "{err}"
    );
    let app = resource_app(&s, "dev");
    assert_eq!(app["status"], "failed", "{app}");
    assert!(
        app["message"]
            .as_str()
            .is_some_and(|e| e.contains("Ready=False (NoCapacity: no room for size 3)")),
        "{app}"
    );
}

#[test]
fn drift_by_another_field_manager_is_shown_and_repaired() {
    let k = cluster();
    let s = sandbox(k);
    s.write("slipway.yaml", &stack("kdrift", ""))
        .write("k8s/settings.yaml", SETTINGS)
        .write("k8s/web.yaml", WEB)
        .commit("settings and a web deployment");
    let _kubelet = k.play_kubelet("kdrift-dev");
    s.ok(&["apply", "--env", "dev", "--yes"]);
    // Fields that only someone else manages are not drift.
    k.kubectl_ok(&[
        "annotate",
        "configmap",
        "settings",
        "-n",
        "kdrift-dev",
        "team=payments",
    ]);
    assert_eq!(
        resource_app(&s, "dev")["status"],
        "ready",
        "an annotation of another manager is not drift"
    );

    // Edits of Slipway's own fields by other managers are.
    k.kubectl_ok(&[
        "patch",
        "configmap",
        "settings",
        "-n",
        "kdrift-dev",
        "-p",
        r#"{"data":{"greeting":"hacked"}}"#,
    ]);
    k.kubectl_ok(&[
        "scale",
        "deployment",
        "web",
        "-n",
        "kdrift-dev",
        "--replicas=5",
    ]);
    let drifted = resource_app(&s, "dev");
    assert_eq!(drifted["status"], "drifted", "{drifted}");
    let reason = drifted["message"].as_str().unwrap_or_default();
    assert!(
        reason.contains("ConfigMap/settings: data.greeting"),
        "{drifted}"
    );
    assert!(
        reason.contains("Deployment/web: spec.replicas"),
        "{drifted}"
    );
    let plan = s.ok(&["plan", "--env", "dev"]);
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.contains("drift") && plan.contains("data.greeting"),
        "{plan}"
    );
    assert!(
        plan.contains("spec.replicas = 5 → 2"),
        "the dry run shows the repair: {plan}"
    );

    s.ok(&["apply", "--env", "dev", "--yes"]);
    let settings = k.get("kdrift-dev", "configmap", "settings").expect("kept");
    assert_eq!(settings["data"]["greeting"], "hello from dev", "repaired");
    assert_eq!(
        settings["metadata"]["annotations"]["team"], "payments",
        "another manager's field stays"
    );
    assert_eq!(
        k.get("kdrift-dev", "deployment", "web").expect("kept")["spec"]["replicas"],
        2
    );
    assert_eq!(resource_app(&s, "dev")["status"], "ready");
}

const JOB: &str = r#"apiVersion: batch/v1
kind: Job
metadata:
  name: migrate
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: migrate
          image: busybox:1.36
          command: ["sh", "-c", "echo v1"]
"#;

#[test]
fn an_immutable_field_change_replaces_the_object() {
    let k = cluster();
    let s = sandbox(k);
    s.write("slipway.yaml", &stack("kimm", ""))
        .write("k8s/job.yaml", JOB)
        .commit("a migration job");
    let _kubelet = k.play_kubelet("kimm-dev");
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let first = k.get("kimm-dev", "job", "migrate").expect("applied");
    assert!(
        first["status"]["conditions"]
            .to_string()
            .contains("Complete"),
        "the apply waited for the job: {first}"
    );
    s.write("k8s/job.yaml", &JOB.replace("echo v1", "echo v2"))
        .commit("the job's command changes: a job's template is immutable");
    let plan = s.ok(&["plan", "--env", "dev"]);
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.contains("-/+ Job/migrate") && plan.contains("`spec.template` cannot change in place"),
        "the plan says the job is replaced: {plan}"
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let second = k.get("kimm-dev", "job", "migrate").expect("applied again");
    assert_ne!(
        first["metadata"]["uid"], second["metadata"]["uid"],
        "a new job"
    );
    assert!(second["spec"]["template"].to_string().contains("echo v2"));
}

/// A cluster-scoped object is replaced the same way, and made again as its own (by a POST,
/// see `send_cluster_scoped`).
#[test]
fn an_immutable_field_change_replaces_a_cluster_scoped_object() {
    let k = cluster();
    let s = sandbox(k);
    let mut config = std::fs::read_to_string(&s.config).expect("the engine config");
    config.push_str("cluster_scoped = [\"ClusterRoleBinding\"]\n");
    std::fs::write(&s.config, config).expect("write the engine config");
    let binding = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n\
                   metadata: { name: kimmc-readers }\n\
                   roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view }\n\
                   subjects: [{ kind: Group, name: readers, apiGroup: rbac.authorization.k8s.io }]\n";
    s.write("slipway.yaml", &stack("kimmc", ""))
        .write("k8s/binding.yaml", binding)
        .commit("a binding");
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let first = k
        .get("", "clusterrolebinding", "kimmc-readers")
        .expect("applied");
    s.write(
        "k8s/binding.yaml",
        &binding.replace("name: view", "name: edit"),
    )
    .commit("its roleRef changes: immutable");
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let second = k
        .get("", "clusterrolebinding", "kimmc-readers")
        .expect("applied again");
    assert_ne!(first["metadata"]["uid"], second["metadata"]["uid"]);
    assert_eq!(second["roleRef"]["name"], "edit");
    assert_eq!(label(&second, "slipway.dev/environment"), Some("dev"));
    s.ok(&["destroy", "--env", "dev", "--yes"]);
    assert!(k.get("", "clusterrolebinding", "kimmc-readers").is_none());
}

#[test]
fn manifests_cannot_reach_outside_their_namespace() {
    let k = cluster();
    let s = sandbox(k);
    let base = stack("khostile", "");
    // An object naming another namespace.
    s.write("slipway.yaml", &base)
        .write(
            "k8s/escape.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: planted, namespace: kube-system }\n",
        )
        .commit("try to write into kube-system");
    let out = s.run(&["apply", "--env", "dev", "--yes"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("names namespace `kube-system`"),
        "{}",
        stderr(&out)
    );
    assert!(k.get("kube-system", "configmap", "planted").is_none());

    // A cluster-wide grant.
    s.write(
        "k8s/escape.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: { name: khostile-admin }\nroleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin }\nsubjects: [{ kind: ServiceAccount, name: default, namespace: khostile-dev }]\n",
    )
    .commit("try to make the environment cluster-admin");
    let out = s.run(&["apply", "--env", "dev", "--yes"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("cluster-scoped"), "{}", stderr(&out));
    assert!(k.get("", "clusterrolebinding", "khostile-admin").is_none());

    // Taking over a namespace that is not the environment's.
    s.write(
        "slipway.yaml",
        &base.replace("wait: 60s", "wait: 60s\n    namespace: kube-system"),
    )
    .write(
        "k8s/escape.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: planted }\n",
    )
    .commit("try to use kube-system as the environment's namespace");
    let out = s.run(&["apply", "--env", "dev", "--yes"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("is not this environment's"),
        "{}",
        stderr(&out)
    );
    assert!(k.get("kube-system", "configmap", "planted").is_none());
    let ns = k
        .get("", "namespace", "kube-system")
        .expect("kube-system stays");
    assert_eq!(
        label(&ns, "slipway.dev/environment"),
        None,
        "kube-system is not relabelled"
    );
}

#[test]
fn the_cluster_going_down_mid_apply_is_retryable_and_the_next_apply_converges() {
    let k = Cluster::start(&Cluster::dir_for("slipway-e2e-down"));
    let s = sandbox(&k);
    s.write(
        "slipway.yaml",
        &stack("kdown", "").replace("wait: 60s", "wait: 120s"),
    )
    .write("k8s/settings.yaml", SETTINGS)
    .write("k8s/web.yaml", WEB)
    .commit("a deployment that no kubelet starts");
    // No kubelet: the apply sends every object, then waits for the rollout.
    let apply = s
        .cmd(&["apply", "--env", "dev", "--yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("slipway runs");
    wait_for("the deployment is applied", Duration::from_secs(60), || {
        k.get("kdown-dev", "deployment", "web").map(|_| ())
    });
    k.down();
    let out = apply.wait_with_output().expect("the apply ends");
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains(&k.server()) && err.contains("does not answer"),
        "the error names the server: {err}"
    );
    let failed = resource_app(&s, "dev");
    assert_eq!(failed["status"], "failed", "{failed}");

    k.up();
    let _kubelet = k.play_kubelet("kdown-dev");
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let app = resource_app(&s, "dev");
    assert_eq!(app["status"], "ready", "{app}");
    assert_eq!(
        app["outputs"]["objects"], 3,
        "each object recorded once: {app}"
    );
    assert_eq!(k.names("kdown-dev", "deployments"), ["web"]);
    assert_eq!(k.names("kdown-dev", "services"), ["web"]);
}

#[test]
fn kill_9_of_the_cli_during_an_apply_of_50_objects_leaves_nothing_orphaned() {
    let k = cluster();
    let s = sandbox(k);
    let maps = |n: usize| -> String {
        (0..n)
            .map(|i| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: m{i:03} }}\ndata: {{ i: \"{i}\" }}\n"))
            .collect::<Vec<_>>()
            .join("---\n")
    };
    s.write("slipway.yaml", &stack("kkill", ""))
        .write("k8s/maps.yaml", &maps(50))
        .commit("fifty objects");
    let mut apply = s
        .cmd(&["apply", "--env", "dev", "--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("slipway runs");
    wait_for("the namespace appears", Duration::from_secs(60), || {
        k.get("", "namespace", "kkill-dev").map(|_| ())
    });
    apply.kill().expect("kill -9");
    let _ = apply.wait();
    let at_kill = k
        .names("kkill-dev", "configmaps")
        .iter()
        .filter(|n| n.starts_with('m'))
        .count();
    eprintln!("killed with {at_kill} of 50 config maps applied");

    // The next commit drops ten: whatever the killed apply made of those is pruned too.
    s.write("k8s/maps.yaml", &maps(40)).commit("forty objects");
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let names: Vec<String> = k
        .names("kkill-dev", "configmaps")
        .into_iter()
        .filter(|n| n.starts_with('m'))
        .collect();
    assert_eq!(names.len(), 40, "{names:?}");
    assert_eq!(names.last().map(String::as_str), Some("m039"));
    let labelled = k.kubectl_ok(&[
        "get",
        "configmaps",
        "-n",
        "kkill-dev",
        "-l",
        "slipway.dev/resource=app",
        "-o",
        "name",
    ]);
    assert_eq!(
        labelled.lines().count(),
        40,
        "no object of the killed apply is left: {labelled}"
    );
    assert_eq!(resource_app(&s, "dev")["outputs"]["objects"], 40);
}

#[test]
fn a_manifest_the_servers_schema_refuses_fails_with_the_servers_reason() {
    let k = cluster();
    let s = sandbox(k);
    s.write("slipway.yaml", &stack("kschema", ""))
        .write(
            "k8s/bad.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: bad }\ndata: { count: 3 }\n",
        )
        .commit("a config map whose value is a number, not a string");
    let out = s.run(&["apply", "--env", "dev", "--yes"]);
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out) + &String::from_utf8_lossy(&out.stdout);
    assert!(
        err.contains("k8s/bad.yaml:1:1") && err.contains("expected string"),
        "the manifest's place and the server's reason: {err}"
    );
    assert!(k.get("kschema-dev", "configmap", "bad").is_none());
    assert_eq!(resource_app(&s, "dev")["status"], "failed");
}

#[test]
fn the_controller_deploys_and_repairs_drift_by_another_manager_by_itself() {
    let k = cluster();
    let s = sandbox(k);
    let mut config = std::fs::read_to_string(&s.config).expect("the engine config");
    config.push_str("[repo]\npoll_interval = \"300ms\"\n[controller]\ndrift_interval = \"1s\"\n");
    std::fs::write(&s.config, config).expect("write the engine config");
    s.write(
        "slipway.yaml",
        &stack("kheal", "").replace(
            "  qa: { track: main, variables: { greeting: bonjour } }\n",
            "",
        ),
    )
    .write("k8s/settings.yaml", SETTINGS)
    .commit("settings, deployed by the controller");
    let _serve = util::start_serve(&s);
    let greeting = || {
        k.get("kheal-dev", "configmap", "settings")
            .and_then(|cm| cm["data"]["greeting"].as_str().map(str::to_string))
    };
    wait_for(
        "the controller applies dev",
        Duration::from_secs(60),
        || greeting().filter(|g| g == "hello from dev"),
    );
    k.kubectl_ok(&[
        "patch",
        "configmap",
        "settings",
        "-n",
        "kheal-dev",
        "-p",
        r#"{"data":{"greeting":"hacked"}}"#,
    ]);
    wait_for(
        "self-heal takes the field back within a few drift intervals",
        Duration::from_secs(60),
        || greeting().filter(|g| g == "hello from dev"),
    );
}

/// Two environments naming one namespace, applied at the same moment, as a branch can make
/// its own preview do against a namespace another environment is creating: both found it
/// absent, and the second's apply relabelled the first's namespace as its own, which the
/// first then filled (its Secrets readable by the second's RoleBindings there). The first to
/// create it has it; the other is refused, every time.
#[test]
fn two_environments_racing_for_one_namespace_never_share_it() {
    use slipway_providers::kubernetes::{ClusterConfig, KubernetesProvider};
    use slipway_providers::{EnvDirs, Provider, ProviderSettings, ResourceContext};

    let k = cluster();
    let provider = KubernetesProvider::new(
        [(
            "test".to_owned(),
            ClusterConfig {
                kubeconfig: Some(k.kubeconfig()),
                ..ClusterConfig::default()
            },
        )]
        .into(),
        "race-instance",
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let dirs = EnvDirs {
        root: dir.path().to_path_buf(),
        src: dir.path().join("src"),
        data: dir.path().join("data"),
        logs: dir.path().join("logs"),
        run: dir.path().join("run"),
        opened: slipway_providers::OpenDirs::default(),
    };
    let settings = ProviderSettings::default();
    let ports = std::collections::BTreeMap::new();
    for round in 0..6 {
        let namespace = format!("krace-{round}");
        let config: slipway_providers::kubernetes::Config = serde_json::from_value(json!({
            "cluster": "test",
            "namespace": namespace,
            "manifests": [{"source": "k8s/cm.yaml:1:1", "object": {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "settings"}, "data": {"a": "b"},
            }}],
        }))
        .expect("a configuration");
        let racers = ["racer-a", "racer-b"]
            .map(|name| slipway_core::EnvName::parse(&format!("{name}-{round}")).expect("a name"));
        let start = std::sync::Barrier::new(racers.len());
        let outcomes: Vec<(String, bool)> = std::thread::scope(|scope| {
            let runs: Vec<_> = racers
                .iter()
                .map(|env| {
                    let (provider, config, start) = (&provider, &config, &start);
                    let (dirs, settings, ports) = (&dirs, &settings, &ports);
                    scope.spawn(move || {
                        let ctx = ResourceContext {
                            environment: env,
                            stack: "krace",
                            resource: "app",
                            dirs,
                            ports,
                            settings,
                            redact: &[],
                            sandbox: &slipway_providers::sandbox::UNCONFINED,
                            kind: None,
                        };
                        start.wait();
                        (env.to_string(), provider.create(ctx, config).is_ok())
                    })
                })
                .collect();
            runs.into_iter()
                .map(|run| run.join().expect("a racer"))
                .collect()
        });
        let winners: Vec<&str> = outcomes
            .iter()
            .filter(|(_, won)| *won)
            .map(|(env, _)| env.as_str())
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
        let live = k.get("", "namespace", &namespace).expect("the namespace");
        assert_eq!(
            label(&live, "slipway.dev/environment"),
            Some(winners[0]),
            "round {round}: the namespace is its creator's"
        );
        k.kubectl(&["delete", "namespace", &namespace, "--wait=false"]);
    }
}
