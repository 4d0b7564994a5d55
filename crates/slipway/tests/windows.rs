//! Deploy windows end to end (issue 16): the real binary at a chosen time (libfaketime, as
//! `replica_faults.rs` uses it), real git, a real `slipway serve`. A deploy inside a deny
//! window is refused by the CLI and held by the controller, which says until when and deploys
//! once the window ends; a deployer overrides it (audited); an allow-only window denies the
//! time outside it; a commit that deletes its own deny window is still held by it.

mod util;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};
use slipway_testkit::wait::wait_for;
use util::*;

/// Fridays 17:00 Paris for 64h: until Monday 09:00 Paris.
const FREEZE: &str =
    r#"[{ kind: deny, schedule: "0 17 * * 5", duration: 64h, time_zone: Europe/Paris }]"#;

/// Friday 2026-12-04 17:30 UTC: 18:30 in Paris, inside the freeze.
const FRIDAY_EVENING: &str = "@2026-12-04 17:30:00";
/// Thursday 2026-12-03 12:00 UTC: outside it.
const THURSDAY: &str = "@2026-12-03 12:00:00";
/// Monday 2026-12-07 08:00 UTC: 09:00 in Paris, the freeze's end (exclusive).
const MONDAY_MORNING: &str = "@2026-12-07 08:00:00";

fn libfaketime() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("libfaketime is needed (Debian's `faketime`; scripts/test.sh installs it)")
        })
}

/// Runs slipway with the clock at `at` (a libfaketime `@YYYY-MM-DD hh:mm:ss`, UTC).
fn run_at(s: &Sandbox, at: &str, args: &[&str]) -> Output {
    s.cmd(args)
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME", at)
        .env("TZ", "UTC")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .output()
        .expect("slipway runs")
}

fn expect_at(s: &Sandbox, at: &str, args: &[&str], code: i32) -> Output {
    let out = run_at(s, at, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        s.report(args, &out, &format!("expected exit code {code} at {at}"))
    );
    out
}

fn stack(windows: &str, content: &str) -> String {
    stack_file(
        "shop",
        &format!("{{ prod: {{ track: main, windows: {windows} }} }}"),
        &format!("  notes: {{ type: file, path: NOTES, content: \"{content}\" }}\n"),
    )
}

fn notes(s: &Sandbox, env: &str) -> Option<String> {
    std::fs::read_to_string(s.home.join("envs").join(env).join("data/NOTES")).ok()
}

/// Every event of `kind` the state holds, as (environment, message).
fn events(s: &Sandbox, kind: &str) -> Vec<(String, String)> {
    stored_events(s, kind)
        .into_iter()
        .map(|e| {
            (
                e.environment.map(|n| n.to_string()).unwrap_or_default(),
                e.message,
            )
        })
        .collect()
}

/// Every audit entry of `action`, as (who, target, outcome).
fn audit(s: &Sandbox, action: &str) -> Vec<(String, Option<String>, String)> {
    let store = slipway_state::Store::open(&s.home).expect("open the store");
    store
        .audit(10_000, None)
        .expect("read the audit log")
        .into_iter()
        .filter(|a| a.entry.action == action)
        .map(|a| (a.entry.who, a.entry.target, a.entry.outcome))
        .collect()
}

#[test]
fn the_cli_refuses_a_deploy_inside_a_deny_window_and_a_deployer_overrides_it() {
    let s = Sandbox::new();
    s.write("slipway.yaml", &stack(FREEZE, "v1"));
    s.commit("v1 with a weekend freeze");

    // The plan says so, in text and JSON.
    let plan = expect_at(&s, FRIDAY_EVENING, &["plan", "--env", "prod"], 0);
    let said = text(&plan);
    assert!(
        said.contains("Deploy window: changes are denied now")
            && said.contains("until 2026-12-07T09:00:00+01:00"),
        "the plan says the window denies changes and until when: {said}"
    );
    let json_plan = expect_at(
        &s,
        FRIDAY_EVENING,
        &["plan", "--env", "prod", "--output", "json"],
        0,
    );
    let plan: Value = serde_json::from_slice(&json_plan.stdout).expect("JSON");
    assert_eq!(
        plan["window"],
        json!({
            "allowed": false,
            "until": "2026-12-07T09:00:00+01:00",
            "window": {"kind": "deny", "schedule": "0 17 * * 5", "duration": "64h", "time_zone": "Europe/Paris"}
        }),
        "plan --output json: {plan}"
    );

    // Refused, saying until when and how to override; nothing deployed.
    let refused = expect_at(&s, FRIDAY_EVENING, &["apply", "--env", "prod", "--yes"], 1);
    let said = text(&refused);
    assert!(
        said.contains("inside the deploy window (deny `0 17 * * 5` for 64h, Europe/Paris)")
            && said.contains("until 2026-12-07T09:00:00+01:00")
            && said.contains("--override-window"),
        "the refusal names the window, until when, and the flag: {said}"
    );
    assert_eq!(notes(&s, "prod"), None, "nothing was deployed");

    // Overridden: deployed, and recorded with who.
    expect_at(
        &s,
        FRIDAY_EVENING,
        &["apply", "--env", "prod", "--yes", "--override-window"],
        0,
    );
    assert_eq!(notes(&s, "prod").as_deref(), Some("v1"));
    let overridden = events(&s, "window.overridden");
    assert_eq!(overridden.len(), 1, "one override event: {overridden:?}");
    assert!(
        overridden[0]
            .1
            .starts_with("tester overrode the deploy window"),
        "the event says who: {overridden:?}"
    );
    assert_eq!(
        audit(&s, "window.override"),
        vec![(
            "tester".to_string(),
            Some("prod".to_string()),
            "ok".to_string()
        )],
        "the override is in the audit log with who"
    );

    // Nothing to change: never refused, even inside the window.
    expect_at(&s, FRIDAY_EVENING, &["apply", "--env", "prod", "--yes"], 0);

    // At the window's end (09:00 Paris, exclusive), a new commit deploys without an override.
    s.write("slipway.yaml", &stack(FREEZE, "v2"));
    s.commit("v2");
    expect_at(
        &s,
        "@2026-12-07 07:59:59",
        &["apply", "--env", "prod", "--yes"],
        1,
    );
    expect_at(&s, MONDAY_MORNING, &["apply", "--env", "prod", "--yes"], 0);
    assert_eq!(notes(&s, "prod").as_deref(), Some("v2"));
    assert_eq!(
        events(&s, "window.overridden").len(),
        1,
        "no second override"
    );
}

#[test]
fn an_allow_only_window_denies_the_time_outside_it() {
    let s = Sandbox::new();
    let weekdays = r#"[{ kind: allow, schedule: "0 9 * * 1-5", duration: 8h }]"#;
    s.write("slipway.yaml", &stack(weekdays, "v1"));
    s.commit("v1, weekdays only");
    let refused = expect_at(
        &s,
        "@2026-12-05 12:00:00",
        &["apply", "--env", "prod", "--yes"],
        1,
    );
    let said = text(&refused);
    assert!(
        said.contains("outside every allow window (allow `0 9 * * 1-5` for 8h, UTC)")
            && said.contains("until 2026-12-07T09:00:00+00:00"),
        "Saturday is outside the allow window, until Monday 09:00: {said}"
    );
    expect_at(
        &s,
        "@2026-12-07 09:00:00",
        &["apply", "--env", "prod", "--yes"],
        0,
    );
    assert_eq!(notes(&s, "prod").as_deref(), Some("v1"));
}

#[test]
fn a_commit_that_deletes_its_own_deny_window_is_still_held_by_it() {
    let s = Sandbox::new();
    s.write("slipway.yaml", &stack(FREEZE, "v1"));
    s.commit("v1 with a weekend freeze");
    expect_at(&s, THURSDAY, &["apply", "--env", "prod", "--yes"], 0);

    // Deletes the freeze and changes the file: judged by the freeze in force.
    s.write("slipway.yaml", &stack("[]", "v2"));
    s.commit("v2 without the freeze");
    let refused = expect_at(&s, FRIDAY_EVENING, &["apply", "--env", "prod", "--yes"], 1);
    assert!(
        text(&refused).contains("until 2026-12-07T09:00:00+01:00"),
        "the freeze in force holds: {}",
        text(&refused)
    );
    // An allow-everything window of its own opens nothing either.
    let open = r#"[{ kind: allow, schedule: "* * * * *", duration: 1m }]"#;
    s.write("slipway.yaml", &stack(open, "v2"));
    s.commit("v2 allowing itself");
    expect_at(&s, FRIDAY_EVENING, &["apply", "--env", "prod", "--yes"], 1);
    // Nor does a commit that only deletes it (nothing to change, but it would lift the
    // window for the commits after it).
    s.write("slipway.yaml", &stack("[]", "v1"));
    s.commit("only the freeze deleted");
    let refused = expect_at(&s, FRIDAY_EVENING, &["apply", "--env", "prod", "--yes"], 1);
    assert!(
        text(&refused).contains("deploy window"),
        "{}",
        text(&refused)
    );
    assert_eq!(notes(&s, "prod").as_deref(), Some("v1"), "v1 still runs");
}

/// `slipway serve` with the clock at `at`.
fn serve_at(s: &Sandbox, at: &str) -> Server {
    let url = format!("file://{}", s.repo.display());
    let mut command = s.cmd(&["serve", "--repo", &url, "--listen", "127.0.0.1:0"]);
    command
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME", at)
        .env("TZ", "UTC")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    serve_from(command, Duration::from_secs(60)).0
}

/// Once the server's clock (started at `started`, `open_after` before the deny window opens,
/// and running at the real pace) is inside the window, asks `env` to wake through the API.
fn wake_once_open(
    server: &Server,
    token: &str,
    env: &str,
    started: std::time::Instant,
    open_after: Duration,
) {
    wait_for(
        "the server's clock is past 17:00",
        Duration::from_secs(40),
        || (started.elapsed() >= open_after).then_some(()),
    );
    let (code, woken) = api_request(
        &server.addr,
        "POST",
        &format!("/api/v1/environments/{env}/wake"),
        token,
        None,
    );
    assert_eq!(code, 200, "{woken}");
}

fn prod(s: &Sandbox) -> Value {
    let status = s.json(&["status", "--env", "prod", "--output", "json"]);
    status["environments"][0].clone()
}

#[test]
fn the_controller_holds_a_change_until_the_window_ends_then_deploys_it() {
    let s = Sandbox::new();
    // A window that ends at 18:00 UTC; the controller starts 20 s before, at a commit that
    // deleted it (the one in force, deployed on Thursday, still holds).
    let hour = r#"[{ kind: deny, schedule: "0 17 * * 5", duration: 1h }]"#;
    s.write("slipway.yaml", &stack(hour, "v1"));
    s.commit("v1 with a window");
    expect_at(&s, THURSDAY, &["apply", "--env", "prod", "--yes"], 0);
    s.write("slipway.yaml", &stack("[]", "v2"));
    s.commit("v2 deletes the window");

    let _server = serve_at(&s, "@2026-12-04 17:59:40");
    let held = wait_for(
        "the controller holds v2 and says until when",
        Duration::from_secs(15),
        || {
            let env = prod(&s);
            env["message"]
                .as_str()
                .filter(|m| m.starts_with("held: "))
                .map(str::to_string)
        },
    );
    assert_eq!(
        held,
        "held: inside the deploy window (deny `0 17 * * 5` for 1h, UTC) until \
         2026-12-04T18:00:00+00:00; a deployer can override with \
         `slipway apply --env prod --override-window`",
        "the status says why and until when"
    );
    assert_eq!(notes(&s, "prod").as_deref(), Some("v1"), "v1 still runs");
    let said = events(&s, "change.held");
    assert_eq!(said.len(), 1, "one change.held event: {said:?}");
    let data = slipway_state::Store::open(&s.home)
        .expect("open the store")
        .last_event(
            Some(&slipway_core::EnvName::parse("prod").expect("a name")),
            slipway_core::vocab::EventKind::ChangeHeld,
        )
        .expect("read the event")
        .expect("the event")
        .data;
    assert_eq!(
        data,
        serde_json::json!({ "reason": "window", "until": "2026-12-04T18:00:00+00:00" }),
        "the event says to programs why and until when"
    );
    // The window ends at 18:00 (some 20 s after the start): v2 deploys without a person.
    wait_for(
        "v2 deploys once the window ends",
        Duration::from_secs(60),
        || (notes(&s, "prod").as_deref() == Some("v2")).then_some(()),
    );
    wait_for("prod is synced", Duration::from_secs(20), || {
        (prod(&s)["sync"] == "synced").then_some(())
    });
}

#[test]
fn the_api_override_needs_a_deployer_and_is_audited() {
    let s = Sandbox::new();
    // A family of previews under a freeze, and a branch it previews.
    s.write(
        "slipway.yaml",
        &stack_file(
            "shop",
            &format!(
                "{{ previews: {{ generate: {{ branches: [\"feat/*\"] }}, windows: {FREEZE} }} }}"
            ),
            "  notes: { type: file, path: NOTES, content: \"v1\" }\n",
        ),
    );
    s.commit("previews under a freeze");
    git(&s.repo, &["branch", "feat/x"]);
    let developer = named_token(&s, "developer", "dev-dana");
    let deployer = named_token(&s, "deployer", "dep-dora");
    let server = serve_at(&s, FRIDAY_EVENING);
    let env = "br-feat-x";
    wait_for(
        "the preview is held by its family's window",
        Duration::from_secs(30),
        || {
            let status = s.json(&["status", "--output", "json"]);
            status_environment(&status, env)
                .and_then(|e| e["message"].as_str().map(str::to_string))
                .filter(|m| m.contains("until 2026-12-07T09:00:00+01:00"))
        },
    );
    let (status, plan) = api_request(
        &server.addr,
        "GET",
        &format!("/api/v1/environments/{env}/plan"),
        &developer,
        None,
    );
    assert_eq!(status, 200, "{plan}");
    assert_eq!(
        plan["window"],
        json!({
            "allowed": false,
            "until": "2026-12-07T09:00:00+01:00",
            "window": {"kind": "deny", "schedule": "0 17 * * 5", "duration": "64h", "time_zone": "Europe/Paris"}
        }),
        "the API's plan says what the windows say: {plan}"
    );
    let path = format!("/api/v1/environments/{env}/sync");
    let (status, body) = api_request(
        &server.addr,
        "POST",
        &path,
        &developer,
        Some(json!({"override_window": true})),
    );
    assert_eq!(status, 403, "a developer cannot override: {body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("deployer"),
        "{body}"
    );
    assert_eq!(notes(&s, env), None, "nothing deployed");
    // A plain sync is a developer's right: it stays held.
    let (status, body) = api_request(&server.addr, "POST", &path, &developer, None);
    assert_eq!(status, 202, "{body}");
    let (status, body) = api_request(
        &server.addr,
        "POST",
        &path,
        &deployer,
        Some(json!({"override_window": true})),
    );
    assert_eq!(status, 202, "a deployer overrides: {body}");
    wait_for(
        "the preview deploys on the deployer's override",
        Duration::from_secs(30),
        || (notes(&s, env).as_deref() == Some("v1")).then_some(()),
    );
    let overrides = audit(&s, "window.override");
    assert_eq!(
        overrides,
        vec![(
            "dep-dora".to_string(),
            Some(env.to_string()),
            "ok".to_string()
        )],
        "the override is audited with who"
    );
    let refused: Vec<_> = audit(&s, "environment.sync")
        .into_iter()
        .filter(|(who, _, outcome)| who == "dev-dana" && outcome != "ok")
        .collect();
    assert!(
        !refused.is_empty(),
        "the developer's refused override is audited"
    );
}

#[test]
fn a_preview_woken_inside_a_deny_window_starts_what_it_ran_and_its_new_commit_waits() {
    let s = Sandbox::new();
    // Previews that sleep after 2 s, under a window from Friday 17:00 UTC for an hour.
    let stack = |content: &str| {
        stack_file(
            "nap",
            r#"{ previews: { generate: { branches: ["feature/*"] }, sleep_after: 2s, windows: [{ kind: deny, schedule: "0 17 * * 5", duration: 1h }] } }"#,
            &format!(
                "  notes: {{ type: file, path: NOTES, content: \"{content}\" }}\n  \
                 idle: {{ type: process, command: [\"python3\", \"-c\", \"import time; time.sleep(100000)\"] }}\n"
            ),
        )
    };
    s.write("slipway.yaml", &stack("v1"));
    s.commit("v1");
    git(&s.repo, &["branch", "feature/a"]);
    util::world::append_config(
        &s,
        "[repo]\npoll_interval = \"300ms\"\n[controller]\ndrift_interval = \"500ms\"\n",
    );
    let token = named_token(&s, "admin", "test");
    // 15 s before the window opens: the preview deploys, then falls asleep.
    let started = std::time::Instant::now();
    let server = serve_at(&s, "@2026-12-04 16:59:45");
    let env = "br-feature-a";
    let pid = || Process::recorded(&supervisor_state(&s.home, env, "idle")?["child"]);
    // Its two resources are made side by side: the process may run before the file is
    // written, and the deployment is whole once both are.
    let first = wait_for("the preview runs", Duration::from_secs(12), || {
        pid().filter(|_| notes(&s, env).as_deref() == Some("v1"))
    });
    let activity = || {
        let status = s.json(&["status", "--output", "json"]);
        status_environment(&status, env).map(|e| e["activity"].clone())
    };
    wait_for("the preview falls asleep", Duration::from_secs(20), || {
        (activity()? == "sleeping").then_some(())
    });
    wait_for("its process stops", Duration::from_secs(20), || {
        (!first.runs()).then_some(())
    });
    // A new commit on its branch while it sleeps; then the server's clock reaches 17:00 (it
    // started at 16:59:45 and runs at the real pace), and the window is open.
    util::world::commit_on(&s, "feature/a", "feature/a", "v2", Some(&stack("v2")), None);
    wake_once_open(&server, &token, env, started, Duration::from_secs(16));
    let again = wait_for(
        "the woken preview runs its process again",
        Duration::from_secs(30),
        pid,
    );
    assert!(again.runs() && again != first, "a new process runs");
    assert_eq!(
        notes(&s, env).as_deref(),
        Some("v1"),
        "it woke at what it ran; the new commit waits for the window"
    );
    let status = s.json(&["status", "--output", "json"]);
    let message = status_environment(&status, env).expect("the preview")["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        message.starts_with("held: inside the deploy window"),
        "the new commit is held, saying why: {message}"
    );
}

/// A preview whose newer commit failed half way (its page changed, then a check failed), then
/// fell asleep, is woken inside a deny window: it does not "start what it ran" by applying
/// the commit before, which would undo the newer commit's changes against its branch. It
/// waits for the window, the newer commit's changes in place.
#[test]
fn a_preview_woken_inside_a_deny_window_after_a_failed_apply_does_not_go_back() {
    let s = Sandbox::new();
    let stack = |content: &str, check: bool| {
        stack_file(
            "nap",
            r#"{ previews: { generate: { branches: ["feature/*"] }, sleep_after: 2s, windows: [{ kind: deny, schedule: "0 17 * * 5", duration: 1h }] } }"#,
            &format!(
                "  notes: {{ type: file, path: NOTES, content: \"{content}\" }}\n  \
                 idle: {{ type: process, command: [\"python3\", \"-c\", \"import time; time.sleep(100000)\"] }}\n{}",
                if check {
                    "  check: { type: job, command: [\"false\"], depends_on: [notes] }\n"
                } else {
                    ""
                }
            ),
        )
    };
    s.write("slipway.yaml", &stack("v1", false));
    s.commit("v1");
    git(&s.repo, &["branch", "feature/a"]);
    util::world::append_config(
        &s,
        "[repo]\npoll_interval = \"300ms\"\n[controller]\ndrift_interval = \"500ms\"\n",
    );
    let token = named_token(&s, "admin", "test");
    // 30 s before the window opens: the preview deploys, its next commit fails half way.
    let started = std::time::Instant::now();
    let server = serve_at(&s, "@2026-12-04 16:59:30");
    let env = "br-feature-a";
    let pid = || supervisor_state(&s.home, env, "idle")?["child"]["pid"].as_i64();
    // As above: the process may run before the file beside it is written.
    wait_for("the preview runs", Duration::from_secs(12), || {
        pid().filter(|_| notes(&s, env).as_deref() == Some("v1"))
    });
    let v2 = util::world::commit_on(
        &s,
        "feature/a",
        "feature/a",
        "v2 and a check that fails",
        Some(&stack("v2", true)),
        None,
    );
    let record = || {
        let status = s.json(&["status", "--output", "json"]);
        status_environment(&status, env).cloned()
    };
    wait_for(
        "the second commit's apply fails after its notes",
        Duration::from_secs(20),
        || (record()?["sync"] == "failed" && notes(&s, env).as_deref() == Some("v2")).then_some(()),
    );
    wait_for("the preview falls asleep", Duration::from_secs(20), || {
        (record()?["activity"] == "sleeping").then_some(())
    });
    assert!(
        started.elapsed() < Duration::from_secs(29),
        "the failed apply and the sleep came before the window ({:?}): the test is too slow \
         on this machine to show anything",
        started.elapsed()
    );
    wake_once_open(&server, &token, env, started, Duration::from_secs(31));
    // Watched for 4 s: the first commit is never applied again, and the notes stay v2's.
    let history = || {
        let history = s.json(&["history", "--env", env, "--output", "json"]);
        history["deployments"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let back =
        slipway_testkit::wait::poll(Duration::from_secs(4), Duration::from_millis(200), || {
            let newest = history().first().cloned()?;
            (newest["commit"] != v2.as_str() || notes(&s, env).as_deref() != Some("v2"))
                .then(|| (newest, notes(&s, env)))
        });
    assert_eq!(back, None, "the preview went back to the first commit");
}

/// A family frozen at the default branch: its preview's plan through the API says the window
/// denies changes, as the controller holds them, whatever the branch's own copy says.
#[test]
fn a_previews_plan_through_the_api_is_judged_by_its_familys_windows_at_main() {
    let s = Sandbox::new();
    // A freeze that always holds (every day for 24 h), on the family only.
    let always = r#"[{ kind: deny, schedule: "0 0 * * *", duration: 24h }]"#;
    let family = |windows: &str| {
        stack_file(
            "shop",
            &format!(
                "{{ previews: {{ generate: {{ branches: [\"feature/*\"] }}, ttl: 1h, \
                 windows: {windows} }} }}"
            ),
            "  notes: { type: file, path: NOTES, content: \"v1\" }\n",
        )
    };
    s.write("slipway.yaml", &family(always));
    s.commit("previews frozen");
    git(&s.repo, &["checkout", "-q", "-b", "feature/x"]);
    s.write("slipway.yaml", &family("[]"));
    s.commit("the branch drops the freeze from its copy");
    git(&s.repo, &["checkout", "-q", "main"]);
    let token = role_token(&s, "viewer");
    let server = start_serve(&s);
    let path = "/api/v1/environments/br-feature-x/plan";
    let plan = wait_for(
        "the preview is recorded and planned",
        Duration::from_secs(30),
        || {
            let (status, plan) = api_request(&server.addr, "GET", path, &token, None);
            (status == 200).then_some(plan)
        },
    );
    assert_eq!(
        plan["window"]["allowed"], false,
        "the family's freeze at main denies the change: {plan}"
    );
    assert_eq!(notes(&s, "br-feature-x"), None, "held, as the plan says");
}
