//! Plans as snapshots, and the properties every plan keeps: render is deterministic, and the
//! plan after an apply is empty.

mod common;

use common::applied;
use proptest::prelude::*;
use slipway_core::EnvName;
use slipway_core::plan::{Observed, Plan, PlanInput, ResourceStatus, plan};
use slipway_core::render::{DesiredState, EnvKind, Target, render};
use slipway_core::stack::{FileError, Files, LoadLimits, load};

struct One(String);

impl Files for One {
    fn read(&self, path: &str) -> Result<String, FileError> {
        if path == "slipway.yaml" {
            Ok(self.0.clone())
        } else {
            Err(FileError::NotFound)
        }
    }
}

fn desired(text: &str, env: &str, sources: &[(&str, &str)]) -> DesiredState {
    let loaded = load(
        &One(text.to_string()),
        "slipway.yaml",
        &LoadLimits::default(),
    );
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    let sources = sources
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    render(
        &loaded.stack.expect("a stack"),
        Target {
            name: &EnvName::parse(env).expect("the test's environment names are DNS labels"),
            definition: env,
            kind: EnvKind::Static,
        },
        "c1",
        &sources,
    )
    .expect("renders")
}

fn show(p: &Plan) -> String {
    let mut out = String::new();
    for c in &p.changes {
        out.push_str(&format!(
            "{} {} ({})",
            c.action.as_str(),
            c.resource,
            c.type_name
        ));
        if let Some(r) = &c.reason {
            out.push_str(&format!(" # {r}"));
        }
        out.push('\n');
        for f in &c.diff {
            out.push_str(&format!(
                "    {}: {:?} -> {:?}{}\n",
                f.path,
                f.before,
                f.after,
                if f.forces_replace {
                    " (forces replacement)"
                } else {
                    ""
                }
            ));
        }
    }
    out
}

const STACK: &str = r#"
version: 1
stack: shop
variables: { greeting: hello, workers: 2 }
environments:
  dev: { track: main }
  prod: { track: main, variables: { workers: 4 } }
resources:
  config: { type: file, path: etc/app.toml, content: "greeting = ${vars.greeting}\n" }
  seed: { type: job, command: [python3, seed.py], env: { CONFIG: "${resources.config.path}" } }
  web:
    type: process
    command: [python3, app.py, --port, "${ports.http}"]
    ports: [http]
    env: { WORKERS: "${vars.workers}" }
    depends_on: [seed]
  docs: { type: file, path: README, content: docs }
"#;

#[test]
fn first_plan_creates_everything_in_dependency_order() {
    let d = desired(STACK, "dev", &[]);
    insta::assert_snapshot!(show(&plan(&d, &PlanInput::default())));
}

#[test]
fn a_variable_change_updates_the_file_and_replaces_what_reads_it() {
    let before = desired(STACK, "dev", &[]);
    let after = desired(
        &STACK.replace("greeting: hello", "greeting: bonjour"),
        "dev",
        &[],
    );
    let p = plan(
        &after,
        &PlanInput {
            recorded: applied(&before),
            ..Default::default()
        },
    );
    insta::assert_snapshot!(show(&p));
}

/// A recorded config known to be the desired one (`None`: the engine found its stored text
/// to be the desired config's) plans as that config recorded would: only what is not the
/// config (the source files, drift, a changed input) is still seen.
#[test]
fn a_config_known_to_be_as_desired_plans_as_the_config_itself() {
    let before = desired(STACK, "dev", &[]);
    let after = desired(
        &STACK.replace("greeting: hello", "greeting: bonjour"),
        "dev",
        &[],
    );
    for d in [&before, &after] {
        let as_recorded = plan(
            d,
            &PlanInput {
                recorded: applied(d),
                ..Default::default()
            },
        );
        let mut known = applied(d);
        for r in known.values_mut() {
            r.config = None;
        }
        let p = plan(
            d,
            &PlanInput {
                recorded: known,
                ..Default::default()
            },
        );
        assert_eq!(p, as_recorded);
        assert!(!p.has_changes(), "{}", show(&p));
    }
    // A config recorded otherwise is still a change, and so is what reads its outputs.
    let mut known = applied(&before);
    for r in known.values_mut() {
        r.config = None;
    }
    if let Some(r) = known.get_mut("config") {
        r.config = Some(serde_json::json!({"path": "etc/old.toml"}));
    }
    let p = plan(
        &before,
        &PlanInput {
            recorded: known,
            ..Default::default()
        },
    );
    let changed: Vec<&str> = p
        .changes
        .iter()
        .filter(|c| c.action != slipway_core::plan::Action::Noop)
        .map(|c| c.resource.as_str())
        .collect();
    assert_eq!(changed, ["config", "seed"], "{}", show(&p));
}

#[test]
fn removed_resources_are_deleted_and_interrupted_ones_replaced() {
    let before = desired(STACK, "dev", &[]);
    let after = desired(
        &STACK.replace("  docs: { type: file, path: README, content: docs }\n", ""),
        "dev",
        &[],
    );
    let mut recorded = applied(&before);
    recorded.get_mut("web").expect("web").status = ResourceStatus::Creating;
    let p = plan(
        &after,
        &PlanInput {
            recorded,
            ..Default::default()
        },
    );
    insta::assert_snapshot!(show(&p));
}

#[test]
fn drift_and_new_source_files_are_planned() {
    let before = desired(STACK, "dev", &[("web", "aaaa"), ("seed", "aaaa")]);
    let after = desired(STACK, "dev", &[("web", "bbbb"), ("seed", "aaaa")]);
    let observed = [
        (
            "docs".to_string(),
            Observed::Drifted("content changed on disk".into()),
        ),
        (
            "config".to_string(),
            Observed::Missing("file deleted".into()),
        ),
    ]
    .into_iter()
    .collect();
    let p = plan(
        &after,
        &PlanInput {
            recorded: applied(&before),
            observed,
            ..Default::default()
        },
    );
    insta::assert_snapshot!(show(&p));
}

fn arbitrary_stack() -> impl Strategy<Value = String> {
    let resource = (
        0..3u8,
        any::<u16>(),
        proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
    );
    (proptest::collection::vec(resource, 1..25), "[a-z]{1,8}", 0..100i64).prop_map(|(resources, greeting, workers)| {
        let mut text = format!("version: 1\nstack: prop\nvariables: {{ greeting: {greeting}, workers: {workers} }}\nenvironments:\n  dev: {{ track: main }}\nresources:\n");
        for (i, (kind, seed, deps)) in resources.iter().enumerate() {
            // Dependencies only on earlier resources: acyclic by construction.
            let deps: Vec<String> = if i == 0 { vec![] } else { deps.iter().map(|d| format!("r{}", d.index(i))).collect() };
            let refs: String = deps.iter().filter(|d| d.as_str() != "r0" || kind != &2).map(|d| format!("${{resources.{d}.exit_code}}")).collect::<Vec<_>>().join(" ");
            match kind {
                0 => text.push_str(&format!("  r{i}: {{ type: file, path: f{i}, content: \"{seed} ${{vars.greeting}}\", depends_on: [{}] }}\n", deps.join(", "))),
                1 => text.push_str(&format!("  r{i}: {{ type: job, command: [run, \"{seed}\", \"${{vars.workers}}\"], depends_on: [{}] }}\n", deps.join(", "))),
                _ => text.push_str(&format!("  r{i}: {{ type: process, command: [serve, \"${{ports.p}}\"], ports: [p], env: {{ SEED: \"{seed}\" }}, depends_on: [{}] }}\n", deps.join(", "))),
            }
            let _ = refs;
        }
        text
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn render_is_deterministic_and_plan_after_apply_is_empty(text in arbitrary_stack()) {
        let a = desired(&text, "dev", &[]);
        let b = desired(&text, "dev", &[]);
        prop_assert_eq!(a.canonical_json(), b.canonical_json(), "same inputs, same bytes");
        prop_assert_eq!(&a.hash, &b.hash);
        let first = plan(&a, &PlanInput::default());
        prop_assert!(first.changes.iter().all(|c| c.action == slipway_core::plan::Action::Create));
        let after = plan(&a, &PlanInput { recorded: applied(&a), ..Default::default() });
        prop_assert!(!after.has_changes(), "after an apply, the plan is empty:\n{}", show(&after));
    }
}

#[test]
fn a_failed_job_is_drift_to_repair_and_other_failures_are_retried() {
    let d = desired(STACK, "dev", &[]);
    let mut recorded = applied(&d);
    recorded.get_mut("seed").expect("seed").status = ResourceStatus::Failed;
    recorded.get_mut("docs").expect("docs").status = ResourceStatus::Failed;
    let p = plan(
        &d,
        &PlanInput {
            recorded,
            ..Default::default()
        },
    );
    let reason = |name: &str| {
        p.changes
            .iter()
            .find(|c| c.resource == name)
            .and_then(|c| c.reason.as_ref())
            .map(ToString::to_string)
            .unwrap_or_default()
    };
    assert!(
        reason("seed").starts_with("drift:"),
        "a failed job's stale output is drift: {}",
        reason("seed")
    );
    assert_eq!(reason("docs"), "the previous apply failed");
}

/// A Secret's literal values (the repository may hold them: `data` in base64) are compared,
/// so that a change to them is planned, and never shown: plans and policy input are read by
/// people who may not read the repository. Other objects' values are shown.
#[test]
fn a_secret_s_values_are_compared_never_shown() {
    use serde_json::{Value, json};
    use slipway_core::plan::diff;
    let config = |password: &str| {
        json!({"cluster": "main", "manifests": [
            {"source": "k8s/s.yaml:1:1", "object": {"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "db"}, "data": {"password": password}}},
            {"source": "k8s/c.yaml:1:1", "object": {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "settings"}, "data": {"shown": password}}},
        ]})
    };
    let created = diff(
        &Value::Null,
        &config("aHVudGVyMg=="),
        "kubernetes.manifests",
    );
    let updated = diff(
        &config("aHVudGVyMg=="),
        &config("czNjcjN0"),
        "kubernetes.manifests",
    );
    for (what, changes) in [("created", &created), ("updated", &updated)] {
        let secret: Vec<_> = changes
            .iter()
            .filter(|c| c.path.starts_with("manifests[Secret/db]"))
            .collect();
        assert!(
            !secret.is_empty(),
            "{what}: the Secret is planned: {changes:?}"
        );
        let shown = serde_json::to_string(&secret).expect("json");
        assert!(
            !shown.contains("aHVudGVyMg==") && !shown.contains("czNjcjN0"),
            "{what}: {shown}"
        );
        let settings = serde_json::to_string(changes).expect("json");
        assert!(
            settings.contains("ConfigMap/settings"),
            "{what}: {settings}"
        );
    }
    let shown = serde_json::to_string(&updated).expect("json");
    assert!(
        shown.contains("czNjcjN0"),
        "the ConfigMap's value is shown: {shown}"
    );
}
