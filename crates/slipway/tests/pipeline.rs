//! The command line reaches environments the way the controller does: one engine entrance
//! names, loads and renders them, whatever the command.

mod util;

use serde_json::Value;
use util::*;

const STACK: &str = "version: 1\nstack: fam\nvariables: { v: one }\nenvironments:\n  dev: { track: main }\n  previews: { generate: { branches: [\"feature/*\"] }, ttl: 2h }\nresources:\n  f: { type: file, path: f.txt, content: \"${vars.v} ${env.name}\" }\n";

/// A repository with `main` and a branch `feature/x` that changes the variable, checked out
/// on `feature/x`. Returns the sandbox and the tips of main and feature/x.
fn with_feature_branch() -> (Sandbox, String, String) {
    let s = Sandbox::new();
    s.write("slipway.yaml", STACK);
    let main = s.commit("main");
    git(&s.repo, &["checkout", "-q", "-b", "feature/x"]);
    s.write("slipway.yaml", &STACK.replace("v: one", "v: two"));
    let feature = s.commit("feature");
    (s, main, feature)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_family_name_is_refused_as_an_environment_with_how_to_name_a_member() {
    let (s, _, _) = with_feature_branch();
    let out = s.expect_code(&["render", "--env", "previews"], 1);
    let err = stderr(&out);
    assert!(
        err.contains("`previews` is a family") && err.contains("--env br-feature-x"),
        "the refusal names a member to render instead: {err}"
    );
    let out = s.expect_code(&["plan", "--env", "previews"], 1);
    assert!(stderr(&out).contains("br-feature-x"), "{}", stderr(&out));
}

#[test]
fn a_generated_environment_renders_plans_and_applies_from_the_cli_as_the_controller_names_it() {
    let (s, main, feature) = with_feature_branch();
    // The checkout is on the branch; the environment reads its branch whatever HEAD is.
    git(&s.repo, &["checkout", "-q", "main"]);
    let out = s.ok(&["render", "--env", "br-feature-x"]);
    let desired: Value = serde_json::from_slice(&out.stdout).expect("render prints JSON");
    assert_eq!(desired["commit"], feature.as_str(), "{desired}");
    assert_eq!(desired["environment"]["kind"], "generated", "{desired}");
    assert_eq!(desired["environment"]["definition"], "previews");
    assert_eq!(
        desired["resources"]["f"]["config"]["content"],
        "two br-feature-x"
    );

    let plan = s.json(&["plan", "--env", "br-feature-x", "--output", "json"]);
    assert_eq!(plan["commit"], feature.as_str(), "{plan}");
    assert_eq!(plan["has_changes"], true);

    s.ok(&["apply", "--env", "br-feature-x", "--yes"]);
    let status = s.json(&["status", "--env", "br-feature-x", "--output", "json"]);
    let env = &status["environments"][0];
    assert_eq!(
        (
            &env["kind"],
            &env["definition"],
            &env["tracked_ref"],
            &env["commit"]
        ),
        (
            &Value::from("generated"),
            &Value::from("previews"),
            &Value::from("feature/x"),
            &Value::from(feature.as_str())
        ),
        "recorded as discovery would have made it: {env}"
    );
    assert!(env["expires_at"].is_string(), "its family's ttl: {env}");
    let again = s.json(&["plan", "--env", "br-feature-x", "--output", "json"]);
    assert_eq!(again["has_changes"], false, "{again}");

    // An ad-hoc environment is planned at the ref it was made from, not at HEAD.
    s.ok(&[
        "env",
        "create",
        "scratch",
        "--ref",
        "feature/x",
        "--ttl",
        "1h",
    ]);
    let plan = s.json(&["plan", "--env", "scratch", "--output", "json"]);
    assert_eq!(plan["commit"], feature.as_str(), "{plan}");
    assert_eq!(plan["has_changes"], false, "{plan}");
    // A ref asked for still wins.
    let plan = s.json(&[
        "plan", "--env", "scratch", "--ref", &main, "--output", "json",
    ]);
    assert_eq!(plan["commit"], main.as_str(), "{plan}");

    s.ok(&["destroy", "--env", "scratch", "--yes"]);
    s.ok(&["destroy", "--env", "br-feature-x", "--yes"]);
}

#[test]
fn a_command_given_a_url_fetches_it_and_says_when_it_works_offline() {
    let s = Sandbox::new();
    s.write("slipway.yaml", STACK);
    s.commit("one");
    let remote = slipway_testkit::git::clone_bare(&s.repo, s.dir.path(), "remote.git");
    let url = format!("file://{}", remote.display());
    let plan = |s: &Sandbox| -> (Value, String) {
        let out = s.ok(&[
            "plan", "--env", "dev", "--repo", &url, "--ref", "main", "--output", "json",
        ]);
        (
            serde_json::from_slice(&out.stdout).expect("plan prints JSON"),
            stderr(&out),
        )
    };
    let (first, _) = plan(&s);
    assert!(first.get("offline").is_none(), "{first}");

    s.write("slipway.yaml", &STACK.replace("v: one", "v: two"));
    let second = s.commit("two");
    git(
        &s.repo,
        &["push", "-q", &remote.display().to_string(), "main"],
    );
    let (planned, _) = plan(&s);
    assert_eq!(
        planned["commit"],
        second.as_str(),
        "the home's mirror is fetched, not read stale: {planned}"
    );

    std::fs::rename(&remote, s.dir.path().join("gone.git")).expect("move the remote away");
    let (offline, err) = plan(&s);
    assert_eq!(offline["commit"], second.as_str(), "{offline}");
    assert!(
        err.contains("offline") && err.contains(&second[..12]),
        "the command says it works from the copy, and at which commit: {err}"
    );
    assert_eq!(offline["offline"]["commit"], second.as_str(), "{offline}");
    assert!(
        offline["offline"]["commit_date"]
            .as_str()
            .is_some_and(|d| d.len() == 20 && d.ends_with('Z')),
        "{offline}"
    );
}
