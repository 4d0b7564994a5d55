//! The `slipway-fake-forge` binary: its first line is its URL, its control API adds pull
//! requests and shows what the forge's API received, for each forge.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use slipway_testkit::http::http_request;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary for `forge`; returns it and its `127.0.0.1:PORT`.
fn start(forge: &str) -> (Running, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_slipway-fake-forge"))
        .args([
            "--forge",
            forge,
            "--repo",
            "acme/shop",
            "--token",
            "T",
            "--bot",
            "bench-bot",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("it prints its URL");
    let addr = line
        .trim()
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("the first line is a URL: {line:?}"))
        .to_owned();
    (Running(child), addr)
}

fn call(addr: &str, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("Content-Type", "application/json")];
    if !token.is_empty() {
        headers.push(("Authorization", auth.as_str()));
        // GitLab's own header.
        headers.push(("PRIVATE-TOKEN", token));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let r = http_request(addr, method, path, &headers, body.as_bytes()).expect("an answer");
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

#[test]
fn each_forge_is_served_and_controlled_through_the_control_api() {
    // (forge, API prefix, the path that posts a comment on #3, a status on SHA)
    let cases = [
        (
            "github",
            "",
            "/repos/acme/shop/issues/3/comments",
            "/repos/acme/shop/statuses",
        ),
        (
            "gitea",
            "/api/v1",
            "/repos/acme/shop/issues/3/comments",
            "/repos/acme/shop/statuses",
        ),
        (
            "gitlab",
            "/api/v4",
            "/projects/acme%2Fshop/merge_requests/3/notes",
            "/projects/acme%2Fshop/statuses",
        ),
    ];
    for (forge, prefix, comments, statuses) in cases {
        let (_running, addr) = start(forge);
        let (status, info) = call(&addr, "GET", "/_fake/", "", None);
        assert_eq!(status, 200, "{forge}");
        assert_eq!(info["forge"], forge);
        assert_eq!(info["api_url"], format!("http://{addr}{prefix}"));
        assert_eq!(info["bot"], "bench-bot");

        let (status, _) = call(
            &addr,
            "POST",
            "/_fake/prs",
            "",
            Some(json!({ "number": 3, "head_sha": SHA })),
        );
        assert_eq!(status, 200, "{forge}");
        let (status, _) = call(
            &addr,
            "POST",
            &format!("{prefix}{comments}"),
            "T",
            Some(json!({ "body": "the plan" })),
        );
        assert_eq!(status, 201, "{forge}");
        let (status, _) = call(
            &addr,
            "POST",
            &format!("{prefix}{statuses}/{SHA}"),
            "T",
            Some(json!({ "state": "pending", "context": "slipway/plan", "name": "slipway/plan" })),
        );
        assert_eq!(status, 201, "{forge}");
        let (status, _) = call(&addr, "GET", &format!("{prefix}/user"), "wrong", None);
        assert_eq!(status, 401, "{forge}: the token is checked");
        let (status, _) = call(&addr, "GET", &format!("{prefix}/nowhere"), "T", None);
        assert_eq!(status, 404, "{forge}");

        let (_, seen) = call(&addr, "GET", "/_fake/prs/3/comments", "", None);
        assert_eq!(seen[0]["body"], "the plan", "{forge}: {seen}");
        assert_eq!(seen[0]["author"], "bench-bot", "{forge}");
        let (_, seen) = call(&addr, "GET", &format!("/_fake/statuses/{SHA}"), "", None);
        assert_eq!(seen[0]["state"], "pending", "{forge}: {seen}");
        assert_eq!(seen[0]["context"], "slipway/plan", "{forge}");

        let (_, log) = call(&addr, "GET", "/_fake/requests", "", None);
        let log = log.as_array().expect("a list").clone();
        assert_eq!(
            log.len(),
            4,
            "{forge}: control requests are not logged: {log:?}"
        );
        assert_eq!(log[0]["json"]["body"], "the plan");
        let at: Vec<f64> = log.iter().map(|r| r["at"].as_f64().expect("at")).collect();
        assert!(at.windows(2).all(|w| w[0] <= w[1]), "{forge}: {at:?}");
        assert!(
            at.iter()
                .all(|t| *t > 0.0 && *t <= slipway_testkit::http::monotonic_now()),
            "{forge}: `at` is on CLOCK_MONOTONIC: {at:?}"
        );
        let (_, later) = call(&addr, "GET", "/_fake/requests?since=3", "", None);
        assert_eq!(later.as_array().map(Vec::len), Some(1), "{forge}");
        assert_eq!(later[0]["index"], 3);
        let (_, unhandled) = call(&addr, "GET", "/_fake/unhandled", "", None);
        assert_eq!(
            unhandled.as_array().map(Vec::len),
            Some(1),
            "{forge}: {unhandled}"
        );
        assert_eq!(unhandled[0]["path"], format!("{prefix}/nowhere"));
    }
}

#[test]
fn a_delivered_pull_request_is_announced_moved_and_closed() {
    let (_running, addr) = start("github");
    let other = "89abcdef0123456789abcdef0123456789abcdef";
    let delivery = |sha: &str, state: &str| {
        json!({ "pull_request": {
            "number": 9, "state": state, "merged": false, "title": "Nine",
            "head": { "sha": sha, "ref": "feature/nine", "repo": { "fork": false } },
            "base": { "ref": "main" }, "user": { "login": "bob" },
        }})
    };
    let pulls = |state: &str| {
        call(
            &addr,
            "GET",
            &format!("/repos/acme/shop/pulls?state={state}"),
            "T",
            None,
        )
        .1
    };
    call(&addr, "POST", "/_fake/prs", "", Some(delivery(SHA, "open")));
    let open = pulls("open");
    assert_eq!(open[0]["head"]["sha"], SHA);
    assert_eq!(open[0]["head"]["ref"], "feature/nine");
    assert_eq!(open[0]["user"]["login"], "bob");
    call(
        &addr,
        "POST",
        "/_fake/prs",
        "",
        Some(delivery(other, "open")),
    );
    assert_eq!(pulls("open")[0]["head"]["sha"], other);
    call(
        &addr,
        "POST",
        "/_fake/prs",
        "",
        Some(delivery(other, "closed")),
    );
    assert_eq!(pulls("open"), json!([]));
    assert_eq!(pulls("closed")[0]["number"], 9);

    let (status, body) = call(&addr, "POST", "/_fake/prs", "", Some(json!({ "nope": 1 })));
    assert_eq!(status, 400, "{body}");
}

#[test]
fn another_repository_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_slipway-fake-forge"))
        .args(["--forge", "github", "--repo", "someone/else"])
        .output()
        .expect("the binary runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("acme/shop"));
}
