//! The policy gate end to end (issue 16): Rego policies on the default branch judge every plan
//! with changes, through the real binary (its `__policy` child, bounded), real git and a real
//! `slipway serve`. A branch cannot rewrite the policies that judge it; a broken or runaway
//! policy holds, saying why; soft denials yield only to an owner, audited.

mod util;

use std::time::Duration;

use serde_json::Value;
use util::*;

const T: Duration = Duration::from_secs(60);
const MARKER: &str = "<!-- slipway:plan -->";

/// Denies deleting or replacing anything in a protected environment (hard, the default).
const NO_DELETES: &str = r#"# METADATA
# title: Nothing is deleted in a protected environment
package slipway

deny contains {"msg": sprintf("%s would be %sd in %s", [c.address, c.actions[0], input.env.name]), "resource": c.address} if {
    input.env.protected
    some c in input.resource_changes
    some action in c.actions
    action in {"delete", "replace"}
}
"#;

/// Caps how many files an environment may have (a preview's size), soft.
const AT_MOST_TWO_FILES: &str = r#"# METADATA
# title: At most two files
# custom:
#   enforcement: soft
package slipway

deny contains {"msg": sprintf("%d files, at most 2", [n]), "resource": c.address} if {
    n := count([r | some r in input.resource_changes; r.type == "file"; r.actions[0] != "delete"])
    n > 2
    some c in input.resource_changes
    c.actions[0] == "create"
}

warn contains "files are many" if {
    count(input.resource_changes) > 1
}
"#;

fn file(name: &str) -> String {
    format!("  {name}: {{ type: file, path: {name}.txt, content: \"{name}\" }}\n")
}

fn files(names: &[&str]) -> String {
    names.iter().map(|n| file(n)).collect()
}

/// A sandbox whose `main` has a protected `prod` of files `names` and the policies `policies`
/// (path, text).
fn world(names: &[&str], policies: &[(&str, &str)]) -> Sandbox {
    let s = Sandbox::new();
    for (path, text) in policies {
        s.write(path, text);
    }
    s.commit_stack(
        "gate",
        "{ prod: { track: main, protected: true } }",
        &files(names),
        "stack and policies",
    );
    s
}

fn data_file(s: &Sandbox, env: &str, name: &str) -> std::path::PathBuf {
    s.home
        .join("envs")
        .join(env)
        .join("data")
        .join(format!("{name}.txt"))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_hard_policy_denies_a_delete_in_a_protected_environment_from_the_cli() {
    let s = world(&["a", "b"], &[("policies/no-deletes.rego", NO_DELETES)]);
    // Creating passes the policy.
    s.ok(&["apply", "--env", "prod", "--yes"]);
    assert!(data_file(&s, "prod", "b").exists());

    // A commit that drops `b`: the plan shows the failed policy and its message.
    s.commit_stack(
        "gate",
        "{ prod: { track: main, protected: true } }",
        &files(&["a"]),
        "drop b",
    );
    let plan = s.ok(&["plan", "--env", "prod"]);
    let text = stdout(&plan);
    assert!(
        text.contains("failed policies/no-deletes.rego [hard]")
            && text.contains("deny: b would be deleted in prod")
            && text.contains("Blocked by policy"),
        "{text}"
    );

    // Apply is refused, even with the protected delete confirmed; nothing is deleted.
    let out = s.expect_code(
        &[
            "apply",
            "--env",
            "prod",
            "--yes",
            "--confirm-destroy",
            "prod",
        ],
        1,
    );
    let err = stderr(&out);
    assert!(
        err.contains("the policies deny this plan of `prod`")
            && err.contains("policies/no-deletes.rego (hard): b would be deleted"),
        "{err}"
    );
    assert!(data_file(&s, "prod", "b").exists(), "b is still there");

    // The plan document says so, and matches its published schema.
    let doc = s.json(&["plan", "--env", "prod", "--output", "json"]);
    assert_eq!(doc["format_version"], "1");
    assert_eq!(doc["policies"]["gate"], "hard_fail", "{doc}");
    assert_eq!(doc["env"]["protected"], true);
    let b = doc["resource_changes"]
        .as_array()
        .expect("changes")
        .iter()
        .find(|c| c["address"] == "b")
        .expect("b")
        .clone();
    assert_eq!(b["actions"], serde_json::json!(["delete"]));
    assert_eq!(b["before"]["content"], "b", "{b}");
    assert!(b["after"].is_null());
    let schema = s.json(&["schema", "--plan"]);
    let validator = jsonschema::validator_for(&schema).expect("the plan schema compiles");
    let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "the plan document fits its schema: {errors:?}\n{doc}"
    );
}

#[test]
fn a_branch_that_deletes_the_policy_is_still_judged_by_the_default_branchs() {
    let s = world(&["a"], &[("policies/size.rego", AT_MOST_TWO_FILES)]);
    s.ok(&["apply", "--env", "prod", "--yes"]);
    // A branch removes the policy and adds two files: the policy at main still judges it.
    git(&s.repo, &["checkout", "-q", "-b", "bigger"]);
    std::fs::remove_file(s.repo.join("policies/size.rego")).expect("rm");
    s.commit_stack(
        "gate",
        "{ prod: { track: main, protected: true } }",
        &files(&["a", "b", "c"]),
        "more files, and no policy",
    );
    git(&s.repo, &["checkout", "-q", "main"]);
    let doc = s.json(&[
        "plan", "--env", "prod", "--ref", "bigger", "--output", "json",
    ]);
    assert_eq!(doc["policies"]["gate"], "soft_fail", "{doc}");
    let result = &doc["policies"]["results"][0];
    assert_eq!(result["policy"], "policies/size.rego");
    assert_eq!(result["denies"][0]["msg"], "3 files, at most 2", "{result}");
    // The finding points at the declaration of what triggered it.
    let location = result["denies"][0]["location"].as_str().unwrap_or_default();
    assert!(location.starts_with("slipway.yaml:"), "{result}");
    assert_eq!(result["warns"][0]["msg"], "files are many");

    // Refused; an approval by someone who is not an owner is refused too.
    s.expect_code(&["apply", "--env", "prod", "--ref", "bigger", "--yes"], 1);
    let out = s
        .cmd(&[
            "apply",
            "--env",
            "prod",
            "--ref",
            "bigger",
            "--yes",
            "--approve-policies",
        ])
        .env("SLIPWAY_USER", "mallory")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("`mallory` may not approve policies"),
        "{}",
        stderr(&out)
    );
    assert!(!data_file(&s, "prod", "c").exists());

    // An owner approves: applied, and audited.
    util::world::append_config(&s, "[policies]\nowners = [\"alice\"]\n");
    s.ok_with(
        &[
            "apply",
            "--env",
            "prod",
            "--ref",
            "bigger",
            "--yes",
            "--approve-policies",
        ],
        &[("SLIPWAY_USER", "alice")],
    );
    assert!(data_file(&s, "prod", "c").exists());
    let store = slipway_state::Store::open(&s.home).expect("store");
    let audit = store.audit(100, None).expect("audit");
    assert!(
        audit
            .iter()
            .any(|a| a.entry.action == "policies.approve" && a.entry.who == "alice"),
        "the approval is audited: {audit:?}"
    );
}

#[test]
fn a_policy_with_a_syntax_error_holds_saying_where() {
    let broken = "package slipway\n\ndeny contains msg if {\n    msg := \n}\n";
    let s = world(&["a"], &[("policies/broken.rego", broken)]);
    let out = s.expect_code(&["apply", "--env", "prod", "--yes"], 1);
    let err = stderr(&out);
    assert!(err.contains("policies/broken.rego:"), "{err}");
    assert!(!data_file(&s, "prod", "a").exists(), "nothing applied");
}

#[test]
fn a_policy_that_loops_or_allocates_without_bound_is_stopped_by_the_limits() {
    let slow = "package slipway\n\ndeny contains \"never\" if {\n  some i in numbers.range(1, 30000)\n  some j in numbers.range(1, 30000)\n  i + j < 0\n}\n";
    let s = world(&["a"], &[("policies/slow.rego", slow)]);
    util::world::append_config(&s, "[policies]\ntimeout = \"1s\"\n");
    let out = s.expect_code(&["apply", "--env", "prod", "--yes"], 1);
    assert!(
        stderr(&out).contains("did not finish in its time"),
        "{}",
        stderr(&out)
    );

    let greedy = "package slipway\n\ndeny contains \"never\" if {\n  count(numbers.range(1, 400000000)) < 0\n}\n";
    let s = world(&["a"], &[("policies/greedy.rego", greedy)]);
    util::world::append_config(&s, "[policies]\nmemory_mib = 512\ntimeout = \"60s\"\n");
    let out = s.expect_code(&["apply", "--env", "prod", "--yes"], 1);
    assert!(
        stderr(&out).contains("past its memory limit of 512 MiB"),
        "{}",
        stderr(&out)
    );
    assert!(!data_file(&s, "prod", "a").exists(), "nothing applied");
}

#[test]
fn the_controller_holds_a_denied_change_and_applies_once_the_policy_allows_it() {
    let s = world(&["a"], &[("policies/no-deletes.rego", NO_DELETES)]);
    util::world::append_config(
        &s,
        "[repo]\npoll_interval = \"300ms\"\n[controller]\ndrift_interval = \"500ms\"\n",
    );
    let token = named_token(&s, "admin", "test");
    let server = start_serve(&s);
    let get = || {
        let (code, env) = api_request(
            &server.addr,
            "GET",
            "/api/v1/environments/prod",
            &token,
            None,
        );
        (code == 200).then_some(env)
    };
    wait_for("prod is deployed", T, || {
        get().filter(|e| e["sync"] == "synced")
    });
    // A replacement of `a` (its path changes): denied, held with the policy's word.
    s.commit_stack(
        "gate",
        "{ prod: { track: main, protected: true } }",
        "  a: { type: file, path: moved.txt, content: \"a\" }\n",
        "move a",
    );
    let held: Value = wait_for("the change is held by the policy", T, || {
        get().filter(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("policies/no-deletes.rego (hard)"))
        })
    });
    assert!(
        held["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("held: the policies deny"),
        "{held}"
    );
    assert!(data_file(&s, "prod", "a").exists());
    // The event says the same to programs: which policy, at which level, about what, where.
    let held_events: Vec<Value> = stored_events(&s, "change.held")
        .into_iter()
        .map(|e| e.data)
        .collect();
    let data = held_events
        .iter()
        .find(|d| d["reason"] == "policy")
        .unwrap_or_else(|| panic!("a change.held event of the policy: {held_events:?}"));
    assert_eq!(data["policies"]["gate"], "hard_fail", "{data}");
    let result = &data["policies"]["results"][0];
    assert_eq!(
        (
            &result["policy"],
            &result["outcome"],
            &result["enforcement"]
        ),
        (
            &Value::from("policies/no-deletes.rego"),
            &Value::from("failed"),
            &Value::from("hard")
        ),
        "{data}"
    );
    assert_eq!(result["denies"][0]["resource"], "a", "{data}");
    assert!(
        data["commit"].as_str().is_some_and(|c| c.len() == 40),
        "{data}"
    );
    // The API's plan says which policy blocks it, and where the resource is declared.
    let (code, plan) = api_request(
        &server.addr,
        "GET",
        "/api/v1/environments/prod/plan",
        &token,
        None,
    );
    assert_eq!(code, 200, "{plan}");
    assert_eq!(plan["policies"]["gate"], "hard_fail", "{plan}");
    let result = &plan["policies"]["results"][0];
    assert_eq!(result["policy"], "policies/no-deletes.rego", "{plan}");
    assert_eq!(result["outcome"], "failed", "{plan}");
    assert_eq!(result["denies"][0]["resource"], "a", "{plan}");
    assert!(
        result["denies"][0]["location"]
            .as_str()
            .is_some_and(|l| l.starts_with("slipway.yaml:")),
        "{plan}"
    );
    // The policy is made advisory on main: the next look applies it.
    s.write(
        "policies/no-deletes.rego",
        &NO_DELETES.replace(
            "# METADATA\n",
            "# METADATA\n# custom:\n#   enforcement: advisory\n",
        ),
    );
    s.commit("make the delete policy advisory");
    wait_for("the change is applied", T, || {
        get().filter(|e| e["sync"] == "synced" && e["message"].is_null())
    });
    assert!(data_file(&s, "prod", "moved").exists());
    drop(server);
    s.ok(&[
        "destroy",
        "--env",
        "prod",
        "--yes",
        "--confirm-destroy",
        "prod",
    ]);
}

#[test]
fn policy_test_runs_test_rules_against_fixture_plans() {
    let dir = tempfile::tempdir().expect("tmp");
    let write = |p: &str, t: &str| std::fs::write(dir.path().join(p), t).expect("write");
    write("no-deletes.rego", NO_DELETES);
    write(
        "delete.json",
        r#"{"env": {"name": "prod", "protected": true}, "resource_changes": [{"address": "db", "actions": ["delete"]}]}"#,
    );
    write(
        "no-deletes_test.rego",
        "package slipway\n\ntest_a_delete_is_denied if {\n  count(deny) == 1 with input as data.fixtures.delete\n}\n",
    );
    let s = Sandbox::new();
    let path = dir.path().to_str().expect("utf-8");
    let out = s.ok(&["policy", "test", path]);
    assert!(
        stdout(&out).contains("PASS data.slipway.test_a_delete_is_denied"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("1/1 tests passed"));

    write(
        "wrong_test.rego",
        "package slipway\n\ntest_nothing_is_denied if {\n  count(deny) == 0 with input as data.fixtures.delete\n}\n",
    );
    let out = s.expect_code(&["policy", "test", path, "--output", "json"], 1);
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["passed"], false);
    let failed: Vec<&Value> = report["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .filter(|t| t["outcome"] == "fail")
        .collect();
    assert_eq!(failed.len(), 1, "{report}");
    assert_eq!(failed[0]["name"], "data.slipway.test_nothing_is_denied");

    write("broken.rego", "package slipway\ndeny contains if {\n");
    let out = s.expect_code(&["policy", "test", path], 1);
    assert!(stdout(&out).contains("broken.rego:"), "{}", stdout(&out));
}

/// A preview runs one process at most (soft): a cap on preview sizes.
const PREVIEW_SIZE: &str = r#"# METADATA
# title: A preview runs one process at most
# custom:
#   enforcement: soft
package slipway

deny contains {"msg": sprintf("a preview runs %d processes, at most 1", [input.sizes.processes]), "resource": c.address} if {
    input.env.kind == "generated"
    input.sizes.processes > 1
    some c in input.resource_changes
    c.type == "process"
    c.actions[0] in {"create", "update", "replace"}
}
"#;

/// `slipway serve` on the pull-request stack with a fake GitHub, `policy` (path, text) on
/// `main`, and `[policies]` naming `main` (the tests check branches out in the served
/// repository, so its `HEAD` moves) plus `extra`.
fn github_world(policy: (&str, &str), extra: &str) -> util::world::ForgeWorld {
    use util::world::{ForgeWorld, STACK};
    use util::{FakeForge, Forge};
    let forge = FakeForge::start(Forge::GitHub, "slipway-bot");
    let api = forge.url();
    ForgeWorld::serve(
        forge,
        STACK,
        &api,
        "repository = \"acme/shop\"",
        "test-token",
        "webhook-secret-for-tests",
        |s| {
            s.write(policy.0, policy.1);
            s.commit("a policy");
            util::world::append_config(s, &format!("[policies]\nbranch = \"main\"\n{extra}"));
        },
    )
}

/// A new commit on `branch` (pull request 1's) writing `greeting` to greeting.txt: pull
/// request 1's head ref moves to it, `main` stays checked out. Its commit.
fn push_to_pull_1(w: &util::world::ForgeWorld, branch: &str, greeting: &str) -> String {
    let repo = &w.s.repo;
    git(repo, &["checkout", "-q", branch]);
    w.s.write("greeting.txt", greeting);
    let next = w.s.commit(greeting);
    git(repo, &["update-ref", "refs/pull/1/head", &next]);
    git(repo, &["checkout", "-q", "main"]);
    next
}

/// Waits until `pr-1`'s status message names `policy` (it is made on the first reconcile:
/// until then `status` says it does not exist); its status.
fn preview_held_by(w: &util::world::ForgeWorld, policy: &str) -> Value {
    wait_for(&format!("the preview is held by {policy}"), T, || {
        let out = w.s.run(&["status", "--env", "pr-1", "--output", "json"]);
        let status: Value = serde_json::from_slice(&out.stdout).ok()?;
        let env = status_environment(&status, "pr-1")?.clone();
        env["message"]
            .as_str()
            .is_some_and(|m| m.contains(policy))
            .then_some(env)
    })
}

#[test]
fn a_pull_request_is_held_by_the_default_branchs_policy_until_an_owner_approves_its_head() {
    use util::world::{GitHubDelivered, STACK, Served};
    let w = github_world(
        ("policies/preview-size.rego", PREVIEW_SIZE),
        "owners = [\"olivia\", \"alice\"]\n",
    );
    w.forge.set_permission("olivia", "write");
    w.forge.set_permission("mallory", "write");
    w.serves("qa", "v1");

    // The pull request adds a second process and deletes the policy in its own branch.
    let bigger = format!(
        "{STACK}  web2:\n    type: process\n    command: [\"python3\", \"-m\", \"http.server\", \"${{ports.http}}\", \"--bind\", \"127.0.0.1\"]\n    ports: [http]\n"
    );
    let repo = &w.s.repo;
    git(repo, &["checkout", "-q", "-b", "feature-big"]);
    std::fs::remove_file(repo.join("policies/preview-size.rego")).expect("rm");
    w.s.write("slipway.yaml", &bigger)
        .write("greeting.txt", "big");
    let head = w.s.commit("two processes, no policy");
    git(repo, &["update-ref", "refs/pull/1/head", &head]);
    git(repo, &["checkout", "-q", "main"]);
    let opened = w.opened(1, "feature-big", &head);
    w.accepted(opened.event, &opened.body);

    // The plan comment says which policy blocks the preview, with the message and where the
    // process is declared; the status fails; the preview is held, not deployed.
    let plan = w.forge.wait_for_comment(
        1,
        |c| c.body.contains(MARKER) && c.body.contains("blocked by soft policies"),
        T,
    );
    assert!(
        plan.body.contains("policies/preview-size.rego")
            && plan.body.contains("a preview runs 2 processes, at most 1")
            && plan.body.contains("(at slipway.yaml:"),
        "{}",
        plan.body
    );
    w.forge.wait_for_status(
        &head,
        |s| s.context == "slipway/plan" && s.state == "failure",
        T,
    );
    let held = preview_held_by(&w, "policies/preview-size.rego (soft)");
    assert_ne!(held["commit"], head.as_str(), "{held}");
    assert_eq!(w.page("pr-1"), None, "nothing of the preview runs");

    // Someone with write access who is not a policy owner cannot approve.
    w.comment(1, "mallory", "/slipway approve-policies");
    w.reply(1, "only the policy owners");
    // Nor can an owner who opened it (it takes two people).
    w.forge.set_permission("alice", "write");
    w.comment(1, "alice", &format!("/slipway approve-policies {head}"));
    w.reply(1, "you opened or pushed to this pull request");
    // An owner approves this head, pushed moments ago: only by naming it (she may not have
    // read a head pushed just before her comment).
    w.comment(1, "olivia", "/slipway approve-policies");
    let refused = w.reply(1, "Nothing was approved");
    assert!(
        refused.contains(&format!("`/slipway approve-policies {head}`")),
        "{refused}"
    );
    assert_eq!(w.page("pr-1"), None, "nothing of the preview runs");
    w.comment(1, "olivia", &format!("/slipway approve-policies {head}"));
    let approved = w.reply(1, "approved the soft policy denials");
    assert!(approved.contains(&head[..12]), "{approved}");
    w.serves("pr-1", "big");

    // A new push needs a new approval: the new head is held again.
    let next = push_to_pull_1(&w, "feature-big", "bigger");
    w.forge.set_head(1, &next);
    w.accepted(
        "pull_request",
        &util::fake_github::pull_request_payload("synchronize", &w.forge.pr(1), false, None),
    );
    w.forge.wait_for_comment(
        1,
        |c| {
            c.body.contains(MARKER)
                && c.body.contains(&next[..12])
                && c.body.contains("blocked by soft policies")
        },
        T,
    );
    let audit = slipway_state::Store::open(&w.s.home)
        .expect("store")
        .audit(200, None)
        .expect("audit");
    assert!(
        audit.iter().any(|a| a.entry.action == "policies.approve"
            && a.entry.who == "forge:olivia"
            && a.entry.outcome == "ok"),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|a| a.entry.action == "policies.approve"
            && a.entry.who == "forge:mallory"
            && a.entry.outcome == "refused"),
        "{audit:?}"
    );
    assert_eq!(
        w.page("pr-1").as_deref(),
        Some("big"),
        "the approved commit keeps running"
    );

    // Olivia pushes to the pull request and approves her push by name before its webhook
    // comes: who pushed it is not known yet, so nothing is approved (once known, she is its
    // pusher, and cannot approve it either).
    let hers = push_to_pull_1(&w, "feature-big", "olivia's");
    w.forge.set_head(1, &hers);
    w.comment(1, "olivia", &format!("/slipway approve-policies {hers}"));
    let refused = w.reply(1, "nobody is known to have pushed");
    assert!(refused.contains("Nothing was approved"), "{refused}");
    assert_eq!(w.page("pr-1").as_deref(), Some("big"));
}

#[test]
fn a_pull_request_that_would_delete_in_prod_is_planned_blocked_and_cannot_be_applied_there() {
    use util::world::{GitHubDelivered, STACK, Served};
    let w = github_world(("policies/no-deletes.rego", NO_DELETES), "");
    w.forge.set_permission("alice", "write");
    w.forge.set_permission("carol", "write");
    w.serves("prod", "v1");

    // The pull request renames `web` to `site`: merged, prod would lose `web`.
    let repo = &w.s.repo;
    git(repo, &["checkout", "-q", "-b", "feature-rename"]);
    w.s.write("slipway.yaml", &STACK.replace("  web:\n", "  site:\n"))
        .write("greeting.txt", "renamed");
    let head = w.s.commit("web is now site");
    git(repo, &["update-ref", "refs/pull/1/head", &head]);
    git(repo, &["checkout", "-q", "main"]);
    let opened = w.opened(1, "feature-rename", &head);
    w.accepted(opened.event, &opened.body);

    // The plan comment blocks prod with the policy's word; the preview, not protected, runs.
    let plan = w.forge.wait_for_comment(
        1,
        |c| c.body.contains(MARKER) && c.body.contains("blocked by policy"),
        T,
    );
    assert!(
        plan.body.contains("policies/no-deletes.rego")
            && plan.body.contains("web would be deleted in prod"),
        "{}",
        plan.body
    );
    w.forge.wait_for_status(
        &head,
        |s| {
            s.context == "slipway/plan"
                && s.state == "failure"
                && s.description.as_deref().is_some_and(|d| d.contains("prod"))
        },
        T,
    );
    w.serves("pr-1", "renamed");

    // Approved and asked for by someone with write access: refused, before any lock (the
    // protection of prod answers first: a comment cannot confirm a destroy there).
    w.forge.approve(1, "carol", &head);
    w.comment(1, "alice", "/slipway apply prod");
    let refused = w.reply(1, "Not applied #1");
    assert!(refused.contains("`prod` is not locked"), "{refused}");
    assert_eq!(w.page("prod").as_deref(), Some("v1"), "prod is untouched");

    // qa is not protected: a policy of main's that freezes it is what refuses the comment.
    w.s.write("policies/qa-frozen.rego", QA_FROZEN);
    w.s.commit("freeze qa");
    w.comment(1, "alice", "/slipway apply qa");
    let refused = w.reply(1, "qa is frozen");
    assert!(
        refused.starts_with("Not applied #1")
            && refused.contains("policies/qa-frozen.rego (hard): qa is frozen"),
        "{refused}"
    );
    assert_eq!(w.page("qa").as_deref(), Some("v1"), "qa is untouched");
    let store = slipway_state::Store::open(&w.s.home).expect("store");
    for env in ["prod", "qa"] {
        let record = store
            .environment(&slipway_core::EnvName::parse(env).expect("name"))
            .expect("read")
            .expect("recorded");
        assert!(!record.pinned, "{env} was not pinned to the pull request");
        assert!(
            store
                .environment_lock(&record.name)
                .expect("read the lock")
                .is_none(),
            "{env} is not locked"
        );
    }
}

/// Freezes `qa`: any change to it is denied (hard).
const QA_FROZEN: &str = r#"package slipway

deny contains "qa is frozen" if {
    input.env.name == "qa"
    count(input.resource_changes) > 0
}
"#;

#[test]
fn a_preview_size_cap_judges_the_cli_and_the_controller_too() {
    // A stack of three processes on main, with the soft cap on previews; `prod` is static.
    let s = Sandbox::new();
    s.write("policies/preview-size.rego", PREVIEW_SIZE);
    let process =
        |name: &str| format!("  {name}: {{ type: process, command: [\"sleep\", \"1000\"] }}\n");
    let three = format!("{}{}{}", process("a"), process("b"), process("c"));
    s.commit_stack(
        "caps",
        "{ prod: { track: main }, previews: { generate: { branches: \"feature/*\" }, ttl: 1h } }",
        &three,
        "three processes",
    );

    // The CLI: prod is static, so the cap does not apply to it.
    let prod = s.json(&["plan", "--env", "prod", "--output", "json"]);
    assert_eq!(prod["policies"]["gate"], "pass", "{prod}");
    // A branch's preview, planned by the CLI: the soft cap denies it, and apply refuses.
    git(&s.repo, &["checkout", "-q", "-b", "feature/big"]);
    s.write("note.txt", "big");
    s.commit("a note");
    git(&s.repo, &["checkout", "-q", "main"]);
    let doc = s.json(&["plan", "--env", "br-feature-big", "--output", "json"]);
    assert_eq!(doc["policies"]["gate"], "soft_fail", "{doc}");
    assert_eq!(doc["sizes"]["processes"], 3, "{doc}");
    let out = s.expect_code(&["apply", "--env", "br-feature-big", "--yes"], 1);
    assert!(
        stderr(&out).contains("a preview runs 3 processes, at most 1"),
        "{}",
        stderr(&out)
    );

    // The controller: prod runs its three processes, the preview is held by the cap.
    util::world::append_config(
        &s,
        "[repo]\npoll_interval = \"300ms\"\n[controller]\ndrift_interval = \"1h\"\n",
    );
    let token = named_token(&s, "admin", "test");
    let server = start_serve(&s);
    let get = |env: &str| {
        let (code, body) = api_request(
            &server.addr,
            "GET",
            &format!("/api/v1/environments/{env}"),
            &token,
            None,
        );
        (code == 200).then_some(body)
    };
    wait_for("prod runs", T, || {
        get("prod").filter(|e| e["sync"] == "synced")
    });
    let held = wait_for("the preview is held by the cap", T, || {
        get("br-feature-big").filter(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("policies/preview-size.rego (soft)"))
        })
    });
    assert!(held["commit"].is_null(), "nothing of it ran: {held}");
    drop(server);
    for env in ["prod", "br-feature-big"] {
        let _ = s.run(&["destroy", "--env", env, "--yes"]);
    }
}

/// A preview needs the label `preview` on its pull request (a maintainer's say-so), hard.
const NEEDS_LABEL: &str = r#"# METADATA
# title: A preview needs the label preview
package slipway

deny contains "a pull request's preview needs the label `preview`" if {
    input.env.kind == "generated"
    input.git.pull_request != null
    not "preview" in input.git.labels
}
"#;

/// Tests of NEEDS_LABEL against the plan `slipway plan --output json` printed, as a fixture
/// with the pull request's fields set; `expect_allowed_without_label` makes the second test
/// wrong, so that the report and exit code of a failure are seen too.
fn needs_label_tests(expect_allowed_without_label: bool) -> String {
    let unlabelled = if expect_allowed_without_label {
        "count(deny) == 0"
    } else {
        "count(deny) == 1"
    };
    format!(
        r#"package slipway

pr(labels) := object.union(data.fixtures.plan, {{"env": object.union(data.fixtures.plan.env, {{"kind": "generated"}}), "git": object.union(data.fixtures.plan.git, {{"pull_request": 7, "labels": labels}})}})

test_labelled_is_allowed if {{
    count(deny) == 0 with input as pr(["preview", "docs"])
}}

test_unlabelled_is_denied if {{
    {unlabelled} with input as pr([])
}}

test_outside_a_pull_request_nothing_is_asked if {{
    count(deny) == 0 with input as data.fixtures.plan
}}
"#
    )
}

#[test]
fn a_policy_that_requires_a_label_reads_the_labels_the_forge_says_and_only_those() {
    use util::world::{GitHubDelivered, Served};
    let w = github_world(("policies/needs-label.rego", NEEDS_LABEL), "");
    w.serves("qa", "v1");

    // Through the CLI: the plan document of a plan outside any pull request has no labels
    // and no pull request; saved as a fixture, `slipway policy test` judges it with labels.
    let repo = &w.s.repo;
    git(repo, &["checkout", "-q", "-b", "feature-docs"]);
    w.s.write("greeting.txt", "docs");
    let head = w.s.commit("new docs");
    git(repo, &["update-ref", "refs/pull/1/head", &head]);
    let out = w.s.run(&["plan", "--env", "qa", "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).expect("the plan document");
    assert_eq!(plan["git"]["labels"], serde_json::json!([]), "{plan}");
    assert_eq!(plan["git"]["pull_request"], Value::Null, "{plan}");
    git(repo, &["checkout", "-q", "main"]);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("needs-label.rego"), NEEDS_LABEL).expect("write");
    std::fs::write(dir.path().join("plan.json"), &out.stdout).expect("write");
    let tests = dir.path().join("needs-label_test.rego");
    std::fs::write(&tests, needs_label_tests(false)).expect("write");
    let dir_arg = dir.path().to_str().expect("utf-8");
    let ok = w.s.run(&["policy", "test", dir_arg]);
    let report = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success() && report.contains("3/3 tests passed"),
        "{report}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    std::fs::write(&tests, needs_label_tests(true)).expect("write");
    let failed = w.s.run(&["policy", "test", dir_arg]);
    let report = String::from_utf8_lossy(&failed.stdout);
    assert_eq!(failed.status.code(), Some(1), "{report}");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("test_unlabelled_is_denied"))
            && report.contains("2/3 tests passed"),
        "{report}"
    );

    // Through a pull request: unlabelled, its preview is held and its comment says why.
    let opened = w.opened(1, "feature-docs", &head);
    w.accepted(opened.event, &opened.body);
    let plan = w.forge.wait_for_comment(
        1,
        |c| c.body.contains(MARKER) && c.body.contains("blocked by policy"),
        T,
    );
    assert!(
        plan.body.contains("needs the label `preview`")
            || plan.body.contains("needs the label \\`preview\\`"),
        "{}",
        plan.body
    );
    w.forge.wait_for_status(
        &head,
        |s| s.context == "slipway/plan" && s.state == "failure",
        T,
    );
    // Through the controller: the preview is held with the policy's word.
    preview_held_by(&w, "policies/needs-label.rego");
    assert_eq!(w.page("pr-1"), None, "nothing of the preview runs");

    // A maintainer labels it: the plans are judged again, the status passes, the preview runs.
    let labelled = w.labelled(1, &["preview"]);
    w.accepted(labelled.event, &labelled.body);
    w.forge.wait_for_status(
        &head,
        |s| s.context == "slipway/plan" && s.state == "success",
        T,
    );
    w.serves("pr-1", "docs");
    let plan = w
        .comments(1)
        .into_iter()
        .find(|c| c.body.contains(MARKER))
        .expect("the plan comment");
    assert!(!plan.body.contains("blocked by policy"), "{}", plan.body);

    // The label taken off: what runs keeps running (nothing changes to judge), but the next
    // push is held again.
    let unlabelled = w.labelled(1, &[]);
    w.accepted(unlabelled.event, &unlabelled.body);
    let next = push_to_pull_1(&w, "feature-docs", "more docs");
    let pushed = w.pushed(1, &next);
    w.accepted(pushed.event, &pushed.body);
    w.forge.wait_for_comment(
        1,
        |c| {
            c.body.contains(MARKER)
                && c.body.contains(&next[..12])
                && c.body.contains("blocked by policy")
        },
        T,
    );
    w.forge.wait_for_status(
        &next,
        |s| s.context == "slipway/plan" && s.state == "failure",
        T,
    );
    assert_eq!(
        w.page("pr-1").as_deref(),
        Some("docs"),
        "the labelled commit keeps running"
    );
}
