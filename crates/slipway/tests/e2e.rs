//! End to end, as a user would: real git repositories, the real binary, real processes.

mod util;

use std::time::Duration;

use serde_json::Value;
use util::*;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart");

fn quickstart() -> Sandbox {
    let s = Sandbox::new();
    for name in ["slipway.yaml", "app.py", "seed.py", "migrate.sql"] {
        let text =
            std::fs::read_to_string(format!("{EXAMPLE}/{name}")).expect("the example exists");
        s.write(name, &text);
    }
    // An unrelated resource, to see that it is left alone by changes to others.
    let yaml = std::fs::read_to_string(s.repo.join("slipway.yaml")).expect("read")
        + "  notes: { type: file, path: NOTES, content: \"unrelated\" }\n";
    s.write("slipway.yaml", &yaml);
    s.commit("quickstart");
    s
}

fn web_port(s: &Sandbox) -> u16 {
    let status = s.json(&["status", "--env", "dev", "--output", "json"]);
    let web = status["environments"][0]["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["name"] == "web")
        .expect("a web resource")
        .clone();
    u16::try_from(
        web["outputs"]["ports"]["http"]
            .as_u64()
            .expect("a port in status --output json"),
    )
    .expect("a port")
}

fn actions(report: &Value) -> Vec<(String, String)> {
    report["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["resource"].as_str().unwrap_or("").to_string(),
                r["action"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn apply_serves_restarts_changes_and_destroys() {
    let s = quickstart();
    let report = s.json(&["apply", "--env", "dev", "--yes", "--output", "json"]);
    assert_eq!(
        report["succeeded"], true,
        "the first apply succeeds: {report}"
    );
    let port = web_port(&s);
    let body = wait_for("the service answers", Duration::from_secs(10), || {
        http_get(port, "/")
    });
    assert!(
        body.contains("Hello from Slipway (dev"),
        "the service reads its rendered config: {body}"
    );

    // Kill the service: its supervisor restarts it with no slipway command running.
    let before = supervisor_state(&s.home, "dev", "web").expect("a supervisor state file");
    let child = before["child"]["pid"].as_i64().expect("a child pid");
    std::process::Command::new("kill")
        .args(["-9", &child.to_string()])
        .status()
        .expect("kill");
    let restarted = wait_for(
        "the killed service is restarted by its supervisor",
        Duration::from_secs(15),
        || {
            let state = supervisor_state(&s.home, "dev", "web")?;
            let pid = state["child"]["pid"].as_i64()?;
            (pid != child && http_get(port, "/healthz").is_some()).then_some(pid)
        },
    );
    assert_ne!(restarted, child);

    // A new commit changes the greeting: the file is updated and what reads it is replaced;
    // the unrelated file is not touched.
    let yaml = std::fs::read_to_string(s.repo.join("slipway.yaml"))
        .expect("read")
        .replace("Hello from Slipway", "Bonjour");
    s.write("slipway.yaml", &yaml);
    s.commit("bonjour");
    let report = s.json(&["apply", "--env", "dev", "--yes", "--output", "json"]);
    let acts = actions(&report);
    assert!(
        acts.contains(&("config".into(), "update".into())),
        "the config file is updated in place: {acts:?}"
    );
    assert!(
        acts.contains(&("notes".into(), "noop".into())),
        "an unrelated resource is left alone: {acts:?}"
    );
    assert_eq!(
        web_port(&s),
        port,
        "ports are stable across deployments of an environment"
    );
    let body = wait_for("the new version answers", Duration::from_secs(10), || {
        http_get(port, "/").filter(|b| b.contains("Bonjour"))
    });
    assert!(body.contains("Bonjour"));

    // After an apply, the plan for the same commit is empty.
    s.expect_code(&["plan", "--env", "dev", "--detailed-exitcode"], 0);
    let history = s.json(&["history", "--env", "dev", "--output", "json"]);
    assert_eq!(
        history["deployments"].as_array().map(Vec::len),
        Some(2),
        "two deployments recorded: {history}"
    );

    // Destroy: nothing left running, the port is free.
    s.ok(&["destroy", "--env", "dev", "--yes"]);
    let left = s.processes();
    assert!(left.is_empty(), "no process outlives destroy: {left:?}");
    assert!(port_is_free(port), "the port is free after destroy");
    let status = s.json(&["status", "--output", "json"]);
    assert_eq!(
        status["environments"],
        serde_json::json!([]),
        "the environment is gone"
    );
}

/// The process resources of [`crash_stack`] and the `sleep` argument that tells each apart.
const PROCESSES: &[(&str, &str)] = &[("a", "4242000"), ("b", "4242001"), ("c", "4242002")];

/// Every round changes every resource, so there is work to interrupt at any moment.
fn crash_stack(round: usize) -> String {
    dev_stack(
        "crash",
        &format!(
            r#"  a: {{ type: process, command: ["sleep", "4242000"], env: {{ ROUND: "{round}" }} }}
  b: {{ type: process, command: ["sleep", "4242001"], env: {{ ROUND: "{round}" }} }}
  slow: {{ type: job, command: ["sh", "-c", "sleep 0.5 # round {round}"], depends_on: [a, b] }}
  conf: {{ type: file, path: conf.txt, content: "round {round}" }}
  c: {{ type: process, command: ["sleep", "4242002"], env: {{ CONF: "${{resources.conf.path}}", ROUND: "{round}" }}, depends_on: [slow] }}
"#
        ),
    )
}

#[test]
fn killing_the_cli_mid_apply_then_applying_again_converges_without_duplicates() {
    let s = Sandbox::new();
    s.write("slipway.yaml", &crash_stack(0));
    s.commit("crash test");
    // SIGKILL the CLI at several points: before anything, while processes start, while the job
    // runs, near the end. Each time, a second apply converges.
    for (round, delay_ms) in [0u64, 60, 250, 500, 900, 1200].into_iter().enumerate() {
        let mut child = s
            .cmd(&["apply", "--env", "dev", "--yes"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn apply");
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().expect("SIGKILL the CLI mid-apply");
        let _ = child.wait();
        let report = s.json(&["apply", "--env", "dev", "--yes", "--output", "json"]);
        assert_eq!(
            report["succeeded"], true,
            "round {round}: the apply after a kill at {delay_ms} ms converges: {report}"
        );
        assert_one_of_each(&s, PROCESSES, &format!("after a kill at {delay_ms} ms"));
        s.expect_code(&["plan", "--env", "dev", "--detailed-exitcode"], 0);
        let history = s.json(&["history", "--env", "dev", "--output", "json"]);
        let statuses: Vec<&str> = history["deployments"]
            .as_array()
            .expect("deployments")
            .iter()
            .map(|d| d["status"].as_str().unwrap_or(""))
            .collect();
        assert!(
            !statuses.contains(&"running"),
            "no deployment is left running after a kill: {statuses:?}"
        );
        // Start the next round from a different commit, so that there is work to interrupt.
        s.write("slipway.yaml", &crash_stack(round + 1));
        s.commit(&format!("round {round}"));
    }
    let history = s.json(&["history", "--env", "dev", "--output", "json"]);
    let interrupted = history["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .filter(|d| d["status"] == "interrupted")
        .count();
    assert!(
        interrupted >= 1,
        "killed applies that had begun are recorded as interrupted: {history}"
    );
    s.ok(&["destroy", "--env", "dev", "--yes"]);
    assert!(s.processes().is_empty(), "destroy leaves nothing running");
}

#[test]
fn a_failed_job_stops_its_dependents_and_is_recorded() {
    let s = Sandbox::new();
    s.commit_dev_stack(
        "fail",
        r#"  migrate: { type: job, command: ["sh", "-c", "echo migrating; echo boom >&2; exit 3"] }
  api: { type: process, command: ["sleep", "4242003"], depends_on: [migrate] }
  other: { type: file, path: ok.txt, content: fine }
"#,
        "failing job",
    );
    let out = s.expect_code(&["apply", "--env", "dev", "--yes", "--output", "json"], 1);
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    let results = report["results"].as_array().expect("results");
    let find = |n: &str| {
        results
            .iter()
            .find(|r| r["resource"] == n)
            .expect("a result")
            .clone()
    };
    assert_eq!(find("migrate")["outcome"], "failed");
    assert!(
        find("migrate")["error"]
            .as_str()
            .unwrap_or("")
            .contains("boom"),
        "the failure shows the job's output: {report}"
    );
    assert_eq!(
        find("api")["outcome"],
        "skipped",
        "a dependent of a failed job is skipped"
    );
    assert_eq!(
        find("other")["outcome"],
        "succeeded",
        "independent resources still apply"
    );
    assert!(
        processes_mentioning("sleep 4242003").is_empty(),
        "the skipped process was never started"
    );
    let history = s.json(&["history", "--env", "dev", "--output", "json"]);
    assert_eq!(history["deployments"][0]["status"], "failed");
    let status = s.json(&["status", "--env", "dev", "--output", "json"]);
    assert_eq!(status["environments"][0]["sync"], "failed");
}

/// `plan --env dev --output json --detailed-exitcode`, which must exit with `code`: its plan.
fn plan_json(s: &Sandbox, code: i32) -> Value {
    let args = [
        "plan",
        "--env",
        "dev",
        "--output",
        "json",
        "--detailed-exitcode",
    ];
    serde_json::from_slice(&s.expect_code(&args, code).stdout).expect("json")
}

#[test]
fn plan_json_is_the_documented_shape_and_detailed_exitcode_says_changes() {
    let s = quickstart();
    let plan = plan_json(&s, 2);
    assert_eq!(plan["environment"], "dev");
    assert_eq!(plan["commit"].as_str().map(str::len), Some(40));
    for change in plan["changes"].as_array().expect("changes") {
        for key in ["resource", "type", "action", "diff"] {
            assert!(
                change.get(key).is_some(),
                "every change has `{key}`: {change}"
            );
        }
        assert_eq!(change["action"], "create");
    }
    let out = s.expect_code(&["plan", "--env", "nope"], 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no environment `nope`") && err.contains("dev"),
        "an unknown environment names the known ones: {err}"
    );
}

#[test]
fn validate_reports_every_problem_with_its_location() {
    let s = Sandbox::new();
    s.write("slipway.yaml", "version: 1\nstack: shop\nresources:\n  api: { type: process, comand: [x] }\n  b: { type: job, command: [\"${vars.nope}\"] }\n");
    s.commit("broken");
    let out = s.expect_code(&["validate"], 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("slipway.yaml:4:25: error: unknown field `comand`"),
        "{err}"
    );
    assert!(err.contains("did you mean `command`?"), "{err}");
    assert!(
        err.contains("slipway.yaml:5:30: error: unknown variable `nope`"),
        "{err}"
    );
    let out = s.expect_code(&["validate", "--output", "json"], 1);
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["valid"], false);
    assert_eq!(v["diagnostics"].as_array().map(Vec::len), Some(3), "{v}");
    assert_eq!(v["diagnostics"][0]["line"], 4);
}

#[test]
fn unsafe_repository_content_is_refused_with_a_clear_error() {
    let s = Sandbox::new();
    std::os::unix::fs::symlink("/etc/passwd", s.repo.join("slipway.yaml")).expect("symlink");
    s.commit("escaping symlink");
    let out = s.expect_code(&["validate"], 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("slipway.yaml") && err.contains("refused"),
        "a symlink leaving the repository is refused: {err}"
    );

    let s = Sandbox::new();
    s.write(
        "slipway.yaml",
        "version: 1\nstack: big\ninclude: [big.yaml]\n",
    );
    let big = "# padding\n".repeat(5 * 1024 * 1024);
    s.write("big.yaml", &big);
    s.commit("a 50 MB include");
    let out = s.expect_code(&["validate"], 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("slipway.yaml:3:11") && err.contains("larger than the limit"),
        "a 50 MB file is refused, located at its include: {err}"
    );
}

#[test]
fn repo_urls_and_older_refs_render_what_that_commit_says() {
    let s = Sandbox::new();
    s.write("deploy/slipway.yaml", "version: 1\nstack: t\nvariables: { v: one }\nenvironments: { dev: { track: main } }\nresources:\n  f: { type: file, path: f, content: \"${vars.v}\" }\n");
    let first = s.commit("one");
    git(&s.repo, &["tag", "v1"]);
    s.write("deploy/slipway.yaml", "version: 1\nstack: t\nvariables: { v: two }\nenvironments: { dev: { track: main } }\nresources:\n  f: { type: file, path: f, content: \"${vars.v}\" }\n");
    s.commit("two");
    let url = format!("file://{}", s.repo.display());
    let render = |reference: &str| -> Value {
        let out = s.ok(&[
            "render", "--env", "dev", "--repo", &url, "--ref", reference, "--path", "deploy",
        ]);
        serde_json::from_slice(&out.stdout).expect("render prints JSON")
    };
    let old = render("v1");
    assert_eq!(
        old["resources"]["f"]["config"]["content"], "one",
        "the tag renders its own commit"
    );
    assert_eq!(old["commit"], first.as_str());
    let new = render("main");
    assert_eq!(new["resources"]["f"]["config"]["content"], "two");
    let again = s.ok(&[
        "render", "--env", "dev", "--repo", &url, "--ref", "main", "--path", "deploy",
    ]);
    assert_eq!(
        serde_json::to_string(&new).expect("json"),
        String::from_utf8_lossy(&again.stdout).trim(),
        "render is byte-for-byte stable"
    );
    let out = s.expect_code(
        &[
            "render",
            "--env",
            "dev",
            "--ref",
            "no-such-branch",
            "--path",
            "deploy",
        ],
        1,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-branch"),
        "an unknown ref is named"
    );
}

#[test]
fn the_schema_agrees_with_the_parser() {
    let s = Sandbox::new();
    let out = s.ok(&["schema"]);
    let schema: Value = serde_json::from_slice(&out.stdout).expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let valid = [
        format!("{root}/crates/slipway-core/tests/fixtures/valid/spec-example.yaml"),
        format!("{root}/examples/quickstart/slipway.yaml"),
    ];
    let windows = "version: 1\nstack: s\nenvironments:\n  prod:\n    track: main\n    windows:\n      - { kind: deny, schedule: \"0 17 * * 5\", duration: 64h, time_zone: Europe/Paris }\n      - { kind: allow, schedule: \"0 9 * * 1-5\", duration: 8h }\n";
    assert!(
        validator.is_valid(&yaml_to_json(windows)),
        "deploy windows validate against `slipway schema`"
    );
    for path in &valid {
        let doc = yaml_to_json(&std::fs::read_to_string(path).expect("read"));
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{path} validates against `slipway schema`: {errors:?}"
        );
    }
    for (name, text) in [
        (
            "unknown field",
            "version: 1\nstack: s\nresources:\n  a: { type: job, comand: [x] }\n",
        ),
        (
            "unknown type",
            "version: 1\nstack: s\nresources:\n  a: { type: proces, command: [x] }\n",
        ),
        ("bad stack name", "version: 1\nstack: Bad_Name\n"),
        (
            "unknown kind of deploy window",
            "version: 1\nstack: s\nenvironments:\n  prod: { track: main, windows: [{ kind: freeze, schedule: \"0 17 * * 5\", duration: 1h }] }\n",
        ),
        (
            "deploy window without a schedule",
            "version: 1\nstack: s\nenvironments:\n  prod: { track: main, windows: [{ kind: deny, duration: 1h }] }\n",
        ),
        (
            "missing command",
            "version: 1\nstack: s\nresources:\n  a: { type: job }\n",
        ),
    ] {
        assert!(
            !validator.is_valid(&yaml_to_json(text)),
            "the schema rejects a stack with an {name}, as the parser does"
        );
    }
}

/// YAML → JSON with serde-saphyr, a reader independent of slipway's own located tree, so
/// the schema is checked against what another YAML library makes of the file.
fn yaml_to_json(text: &str) -> Value {
    serde_saphyr::from_str(text).expect("the YAML parses")
}

/// `--token` is read, and said to be readable by every process on the machine; the token
/// in `SLIPWAY_TOKEN` is not said so.
#[test]
fn a_token_given_as_an_argument_is_warned_about() {
    let s = Sandbox::new();
    let said = |out: std::process::Output| String::from_utf8_lossy(&out.stderr).to_string();
    let warning = "--token puts the token in this command's arguments";
    let argued = said(s.run(&[
        "--server",
        "http://127.0.0.1:9",
        "--token",
        "slw_example",
        "status",
    ]));
    assert!(argued.contains(warning), "{argued}");
    let env = said(
        s.cmd(&["--server", "http://127.0.0.1:9", "status"])
            .env("SLIPWAY_TOKEN", "slw_example")
            .output()
            .expect("slipway runs"),
    );
    assert!(!env.contains(warning), "{env}");
}

/// A folder someone else prepared, holding a dangling symlink named like a file `init`
/// writes: the file it points to is not made (it was, with the scaffold's content).
#[test]
fn init_writes_through_no_symlink_the_folder_holds() {
    let s = Sandbox::new();
    let folder = s.dir.path().join("prepared");
    std::fs::create_dir(&folder).expect("mkdir");
    let target = s.dir.path().join("operators-profile");
    std::os::unix::fs::symlink(&target, folder.join("migrate.sql")).expect("a symlink");
    let out = s.expect_code(&["init", folder.to_str().expect("utf-8")], 1);
    assert!(!target.exists(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The default home, `.slipway/` in the work tree, ignored: a branch that commits
/// `.slipway/state.db` has a checkout write it over the operator's (git overwrites ignored
/// files), with the branch's tokens and keys. The engine refuses such a home before reading it.
#[test]
fn a_home_a_checked_out_branch_tracks_is_refused() {
    let s = Sandbox::new();
    s.ok(&["init", "."]);
    s.commit("init");
    let in_tree = |args: &[&str]| {
        let mut command = s.cmd(args);
        command.env_remove("SLIPWAY_HOME");
        command.output().expect("slipway runs")
    };
    assert!(in_tree(&["status"]).status.success(), "the default home");
    let state = s.repo.join(".slipway/state.db");
    assert!(state.is_file(), "the default home is in the work tree");

    git(&s.repo, &["checkout", "-qb", "hostile"]);
    git(&s.repo, &["add", "-f", ".slipway/state.db"]);
    git(&s.repo, &["commit", "-qm", "the state, with my tokens"]);
    let before = std::fs::read(&state).expect("the state");
    let refused = in_tree(&["status"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("`.slipway/state.db`"), "{said}");
    assert!(said.contains("--home"), "the fix: {said}");
    assert_eq!(std::fs::read(&state).expect("the state"), before, "unread");
    // Nor is a recipient printed from the home's age key (the branch's, committed there).
    let recipient = in_tree(&["secret", "recipient"]);
    assert_eq!(recipient.status.code(), Some(1), "{}", text(&recipient));
    assert!(String::from_utf8_lossy(&recipient.stderr).contains("tracks"));
    // A home outside the work tree is the engine's alone.
    s.ok(&["status"]);
}

#[test]
fn init_scaffolds_a_stack_that_validates_and_applies() {
    let s = Sandbox::new();
    s.ok(&["init", "."]);
    s.commit("init");
    s.ok(&["validate"]);
    let out = s.expect_code(&["init", "."], 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "init never overwrites"
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let port = web_port(&s);
    wait_for(
        "the scaffolded service answers",
        Duration::from_secs(10),
        || http_get(port, "/"),
    );
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

#[test]
fn apply_without_yes_off_a_terminal_changes_nothing() {
    let s = quickstart();
    let out = s.expect_code(&["apply", "--env", "dev"], 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--yes"),
        "the error says how to proceed"
    );
    let status = s.json(&["status", "--output", "json"]);
    assert_eq!(
        status["environments"],
        serde_json::json!([]),
        "nothing was applied"
    );
}

#[test]
fn compare_shows_that_two_environments_of_one_commit_differ_only_by_their_variables() {
    let s = Sandbox::new();
    s.write(
        "slipway.yaml",
        "version: 1\nstack: cmp\nvariables: { level: info, replicas: 1 }\nenvironments:\n  dev: { track: main }\n  prod: { track: main, variables: { level: warn } }\nresources:\n  conf: { type: file, path: app.toml, content: \"level = ${vars.level}\\n\" }\n  notes: { type: file, path: NOTES, content: \"same everywhere\" }\n",
    );
    s.commit("two environments");
    s.ok(&["apply", "--env", "dev", "--yes"]);
    s.ok(&["apply", "--env", "prod", "--yes"]);
    let diff = s.json(&["compare", "dev", "prod", "--output", "json"]);
    assert_eq!(diff["same_commit"], true, "{diff}");
    let vars: Vec<&str> = diff["variables"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(
        vars,
        vec!["level"],
        "only the declared variable that prod overrides differs: {diff}"
    );
    let resources: Vec<&str> = diff["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["resource"].as_str())
        .collect();
    assert_eq!(
        resources,
        vec!["conf"],
        "only the resource that reads it differs: {diff}"
    );
    let text = String::from_utf8(s.ok(&["compare", "dev", "prod"]).stdout).expect("utf-8");
    assert!(
        text.contains("same commit") && text.contains("level"),
        "{text}"
    );
    s.ok(&["destroy", "--env", "dev", "--yes"]);
    s.ok(&["destroy", "--env", "prod", "--yes"]);
}

/// The resources a plan would change, by name (`noop`s left out).
fn changed(plan: &Value) -> Vec<String> {
    plan["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| c["action"] != "noop")
        .map(|c| c["resource"].as_str().expect("a name").to_string())
        .collect()
}

/// More resources than a plan resolves on one thread (256 and up are split over the
/// cores, and what the plan no longer needs is freed on a thread of its own): after the
/// apply, a plan sees nothing to change; then a commit that changes one resource, a secret
/// given a new value, and a file changed on disk behind Slipway's back are each seen on
/// their own resource, and nothing else is. (`on_cores` has its own test, across the
/// threshold.)
#[test]
fn a_plan_of_thousands_of_resources_sees_each_change_and_nothing_else() {
    let s = Sandbox::new();
    let keygen = s.ok(&["secret", "keygen"]);
    let recipient = String::from_utf8_lossy(&keygen.stdout).trim().to_string();
    let commit = |marked: &str, token: &str| {
        let mut yaml = format!(
            "version: 1\nstack: many\nsecrets: {{ recipients: [{recipient}] }}\n\
             environments:\n  dev: {{ track: main }}\nresources:\n"
        );
        for i in 0..1200 {
            // Every tenth reads the path of the one before it: a resource output resolved
            // against what the store recorded.
            let content = match i {
                1111 => format!("{marked} ${{env.name}}"),
                1150 => "${secrets.token}".to_string(),
                i if i % 10 == 9 => {
                    format!("after ${{resources.f{:04}.path}} in ${{env.name}}", i - 1)
                }
                i => format!("f{i} in ${{env.name}}"),
            };
            yaml += &format!(
                "  f{i:04}: {{ type: file, path: out/f{i:04}.txt, content: \"{content}\" }}\n"
            );
        }
        s.write("slipway.yaml", &yaml);
        s.set_secret("token", None, token);
        s.commit(marked);
    };
    commit("first", "one-secret-value");
    s.ok(&["apply", "--env", "dev", "--yes"]);
    assert_eq!(
        changed(&plan_json(&s, 0)),
        Vec::<String>::new(),
        "nothing to change"
    );

    commit("second", "another-secret-value");
    let file = s.home.join("envs/dev/data/out/f0500.txt");
    std::fs::write(&file, "edited by hand").expect("edit a file behind slipway's back");
    assert_eq!(
        changed(&plan_json(&s, 2)),
        ["f0500", "f1111", "f1150"],
        "the file edited on disk, the resource the commit changed and the one reading the \
         secret, nothing else"
    );
}

/// A plan reads each record as the text stored and parses only what it needs: a column
/// damaged by hand is still an error naming the record and the column, never a panic, a
/// silent drift or a guess; a live record that is JSON but no envelope reads as an empty one,
/// as a status reads it.
#[test]
fn a_plan_names_a_damaged_record_and_its_column() {
    let s = Sandbox::new();
    s.commit_dev_stack(
        "damage",
        "  a: { type: file, path: a.txt, content: one }\n  \
         b: { type: file, path: b.txt, content: \"${resources.a.path}\" }\n",
        "two files",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    assert_eq!(changed(&plan_json(&s, 0)), Vec::<String>::new());
    let damage = |sql: &str| {
        let out = std::process::Command::new("sqlite3")
            .arg(s.home.join("state.db"))
            .arg(sql)
            .output()
            .expect("sqlite3 runs");
        assert!(out.status.success(), "{sql}: {}", text(&out));
    };
    damage("CREATE TABLE saved AS SELECT * FROM resources");
    let restore = || damage("DELETE FROM resources; INSERT INTO resources SELECT * FROM saved");
    for (name, column, value) in [
        ("b", "live", "{not json"),
        ("b", "config", "{\"path\": "),
        ("b", "depends_on", "[\"a\""),
        // `a`'s outputs are read: `b` references them.
        ("a", "outputs", "nope"),
        // `b`'s are not, and are still checked.
        ("b", "outputs", "{\"path\""),
    ] {
        damage(&format!(
            "UPDATE resources SET {column} = '{value}' WHERE name = '{name}'"
        ));
        let out = s.expect_code(&["plan", "--env", "dev"], 1);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("resource dev/{name}")) && err.contains(column),
            "damaged {column}: the error names the record and the column: {err}"
        );
        restore();
        assert_eq!(changed(&plan_json(&s, 0)), Vec::<String>::new());
    }
    // JSON, but no envelope: nothing recorded of the live object, which is no error.
    damage("UPDATE resources SET live = '[1]' WHERE name = 'a'");
    let out = s.run(&["plan", "--env", "dev"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// An environment gets the directories its resources use, and no more: a `file` gets its
/// data and the engine's records, not the repository's export, which an environment that
/// runs no code never reads (a new inode per file of the repository, for each environment).
/// The commit that adds a job gets the export and the rest, and the job runs from it.
#[test]
fn an_environment_gets_the_directories_its_resources_use() {
    let s = Sandbox::new();
    for i in 0..50 {
        s.write(&format!("vendor/m{i}.txt"), "not read by a file resource\n");
    }
    s.commit_dev_stack(
        "dirs",
        "  conf: { type: file, path: app.conf, content: hi }\n",
        "files only",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let root = s.home.join("envs/dev");
    let present = |dir: &str| root.join(dir).is_dir();
    assert!(
        present("data") && present("run"),
        "a file's data and records"
    );
    for dir in ["src", "tmp", "logs"] {
        assert!(
            !present(dir),
            "no {dir}/ for an environment that runs no code"
        );
    }
    assert_eq!(
        std::fs::read_to_string(root.join("data/app.conf")).expect("the file"),
        "hi"
    );

    let commit = s.commit_dev_stack(
        "dirs",
        "  conf: { type: file, path: app.conf, content: hi }\n  \
         check: { type: job, command: [\"sh\", \"-c\", \"cat vendor/m7.txt > $HOME/seen\"] }\n",
        "and a job",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    for dir in ["src", "tmp", "logs", "data", "run"] {
        assert!(present(dir), "{dir}/ once a resource runs code");
    }
    assert!(
        root.join("src")
            .join(&commit)
            .join("vendor/m49.txt")
            .is_file(),
        "the export holds the repository at the commit"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("data/seen")).expect("the job's output"),
        "not read by a file resource\n",
        "the job ran in the export"
    );
}

/// `env pin` (as the CLI's other reconciles: `env create`, `unpin`, `rollback`, `wake`) run
/// while another operation holds the environment waits for it to end, says so, then does
/// what was asked. It used to find the environment busy and report success, having done
/// nothing.
#[test]
fn a_pin_waits_for_the_operation_holding_the_environment_then_deploys_the_pinned_commit() {
    use std::io::BufRead;
    let s = Sandbox::new();
    let first = s.commit_dev_stack(
        "held",
        "  conf: { type: file, path: app.conf, content: one }\n",
        "one",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    s.commit_dev_stack(
        "held",
        "  conf: { type: file, path: app.conf, content: two }\n",
        "two",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let conf = s.home.join("envs/dev/data/app.conf");
    let content = || std::fs::read_to_string(&conf).expect("the file");
    assert_eq!(content(), "two");

    // Another operation holds `dev`: its lock, taken as an apply takes it.
    let held = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(s.home.join("locks/dev.lock"))
        .expect("the lock file");
    held.lock().expect("locked");
    let mut pin = s
        .cmd(&["env", "pin", "dev", "--commit", &first])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("slipway runs");
    // Whatever fails below, the command does not outlive the test.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = pin.stderr.take().expect("stderr");
    let mut pin = Killed(pin);
    let (lines, said) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            if lines.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let mut heard = Vec::new();
    loop {
        let line = said
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| {
                panic!(
                    "`env pin` ended or went silent without waiting for the lock ({e}): {heard:?}"
                )
            });
        let waits = line.contains("waiting for another slipway operation on `dev` to finish");
        heard.push(line);
        if waits {
            break;
        }
    }
    assert!(
        pin.0.try_wait().expect("waitable").is_none(),
        "it waits while the lock is held"
    );
    assert_eq!(content(), "two", "nothing is changed under another's lock");

    drop(held);
    let code = wait_for(
        "`env pin` ends once the lock is free",
        Duration::from_secs(60),
        || pin.0.try_wait().expect("waitable"),
    );
    heard.extend(said.try_iter());
    assert!(code.success(), "{heard:?}");
    assert_eq!(
        content(),
        "one",
        "the pinned commit is deployed once the lock is free"
    );
    let status = s.json(&["status", "--env", "dev", "--output", "json"]);
    assert_eq!(
        status["environments"][0]["commit"],
        first.as_str(),
        "{status}"
    );
}

/// The CLI turns mimalloc's huge pages off for itself (crates/slipway/src/alloc.rs), never
/// through `prctl(PR_SET_THP_DISABLE)`, which every program it starts would inherit: an
/// environment's code, and the supervisors, keep the machine's huge-page setting.
#[test]
fn programs_the_cli_starts_keep_the_machine_s_huge_pages() {
    let s = Sandbox::new();
    s.commit_dev_stack(
        "thp",
        r#"  api: { type: process, command: ["sleep", "4242017"] }
  probe: { type: job, command: ["sh", "-c", "grep THP_enabled /proc/self/status >&2; exit 3"], depends_on: [api] }
"#,
        "a probe of the huge pages",
    );
    let out = s.expect_code(&["apply", "--env", "dev", "--yes", "--output", "json"], 1);
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    let error = report["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["resource"] == "probe")
        .and_then(|r| r["error"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("THP_enabled"), "the job's output: {report}");
    assert!(!error.contains("THP_enabled:\t0"), "{error}");
    let supervisors: Vec<i32> = s
        .processes()
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains("__supervise"))
        .map(|(pid, _)| pid)
        .collect();
    assert!(!supervisors.is_empty(), "{:?}", s.processes());
    for pid in supervisors {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(!status.contains("THP_enabled:\t0"), "{status}");
    }
}

/// A person's command that reconciles at once (`env unpin`, `env pin`, `env create`) records
/// a failure that lasts as the controller's queue does: the environment is marked failed,
/// with a `reconcile.failed` event (what notifications are made of), not only printed.
#[test]
fn a_failure_that_lasts_under_a_person_s_command_marks_the_environment_failed() {
    let s = Sandbox::new();
    s.commit_stack(
        "lasting",
        "{ rel: { track: release } }",
        "  note: { type: file, path: note.txt, content: \"hi\" }\n",
        "rel tracks release",
    );
    git(&s.repo, &["branch", "release"]);
    s.ok(&["apply", "--env", "rel", "--ref", "release", "--yes"]);
    s.ok(&["env", "pin", "rel"]);
    let status = s.json(&["status", "--env", "rel", "--output", "json"]);
    assert_eq!(status["environments"][0]["sync"], "synced", "{status}");
    git(&s.repo, &["branch", "-D", "release"]);
    let out = s.run(&["env", "unpin", "rel"]);
    assert!(!out.status.success(), "{}", text(&out));
    let status = s.json(&["status", "--env", "rel", "--output", "json"]);
    assert_eq!(status["environments"][0]["sync"], "failed", "{status}");
    assert_eq!(stored_events(&s, "reconcile.failed").len(), 1);
}

/// A static environment's deployment records the rules its commit declares, so that they
/// stay in force should that commit ever be gone (a force push, then the mirror's gc); an
/// ad-hoc environment's records none.
#[test]
fn a_static_environments_deployment_records_the_rules_of_its_commit() {
    let s = Sandbox::new();
    s.write(
        "slipway.yaml",
        "version: 1\nstack: shop\nenvironments:\n  prod: { track: main, protected: true, \
         apply_requirements: [approved], windows: [{ kind: allow, schedule: \"* * * * *\", \
         duration: 1h }] }\n  previews: { generate: { branches: [\"feature/*\"] } }\nresources:\n  page: { type: file, path: page.txt, content: hi }\n",
    )
    .commit("v1");
    let sha = git(&s.repo, &["rev-parse", "HEAD"]);
    s.ok(&["apply", "--env", "prod", "--yes"]);
    s.ok(&[
        "env", "create", "scratch", "--ref", "main", "--like", "previews",
    ]);
    let store = slipway_state::Store::open(&s.home).expect("open the store");
    let name = |n: &str| slipway_core::EnvName::parse(n).expect("a name");
    let recorded = store
        .deployment_rules(&name("prod"), &sha)
        .expect("read")
        .expect("recorded");
    let rules = slipway_engine::Rules::from_record(&recorded).expect("readable");
    assert!(rules.protected, "{recorded}");
    assert_eq!(rules.apply_requirements, ["approved"], "{recorded}");
    assert!(!rules.windows.is_empty(), "{recorded}");
    assert_eq!(
        store
            .deployment_rules(&name("scratch"), &sha)
            .expect("read"),
        None
    );
}
