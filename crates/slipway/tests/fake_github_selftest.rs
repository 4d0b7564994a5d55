//! The fake GitHub of `util::fake_github`, checked against the real thing: `slipway-forge`'s
//! GitHub adapter talks to it and gets what it expects from every `Forge` method; every answer
//! has the shape of GitHub's OpenAPI description (`@octokit/openapi`); every payload builder's
//! delivery verifies and parses into the expected event, and keeps the shape of GitHub's webhook
//! schema; the server survives hostile requests.

mod util;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use slipway_forge::{
    Approval, CommitStatus, DeploymentState, Forge, ForgeConfig, ForgeEvent, ForgeKind, PrAction,
    PreviewDeployment, PullRequestInfo, ReviewState, StatusState, verify_and_parse,
};
use slipway_testkit::openapi::{OpenApi, has_type};
use util::fake_github::*;

const SECRET: &[u8] = b"It's a Secret to Everybody";
const BOT: &str = "slipway-bot";
const TOKEN: &str = "ghp_fake_token_1234";
const MARKER: &str = "<!-- slipway:plan -->";

fn sha(c: char) -> String {
    c.to_string().repeat(40)
}

fn forge(gh: &FakeForge, bot_login: Option<&str>) -> Box<dyn Forge> {
    let mut config = ForgeConfig::new(ForgeKind::GitHub, REPO, TOKEN);
    config.api_url = Some(gh.url());
    config.bot_login = bot_login.map(str::to_owned);
    config.timeout = Duration::from_secs(10);
    slipway_forge::connect(config).expect("the adapter takes the fake's URL")
}

fn lines(requests: &[Recorded]) -> String {
    requests
        .iter()
        .map(Recorded::line)
        .collect::<Vec<_>>()
        .join("\n")
}

fn count(requests: &[Recorded], operation: &str) -> usize {
    requests
        .iter()
        .filter(|r| r.operation == Some(operation))
        .count()
}

/// Pull requests #1 (alice, same repository), #2 (mallory, from a fork, head branch `main`),
/// #3 (closed) and #4 (merged).
fn fake_with_prs() -> FakeForge {
    let gh = FakeForge::start(util::Forge::GitHub, BOT);
    gh.require_token(TOKEN);
    gh.add_pr(PrSpec::new(1, &sha('a')));
    gh.add_pr(PrSpec {
        author: "mallory".into(),
        fork: true,
        head_ref: "main".into(),
        title: "Totally harmless".into(),
        ..PrSpec::new(2, &sha('b'))
    });
    gh.add_pr(PrSpec::new(3, &sha('c')));
    gh.set_state(3, PrState::Closed);
    gh.add_pr(PrSpec::new(4, &sha('d')));
    gh.set_state(
        4,
        PrState::Merged {
            merge_sha: sha('e'),
        },
    );
    gh
}

#[test]
fn every_forge_method_works_against_the_fake() {
    let gh = fake_with_prs();
    let f = forge(&gh, None);
    assert_eq!(f.kind(), ForgeKind::GitHub);
    assert_eq!(f.pr_head_ref(1), "refs/pull/1/head");

    // Comments: someone else's comment with the marker is left alone; ours is created once,
    // edited once, and not written when its body is already right.
    let theirs = gh.add_comment(1, "mallory", &format!("{MARKER}\nfake plan"));
    let id = f.upsert_comment(1, MARKER, "plan v1").expect("upsert 1");
    let id2 = f.upsert_comment(1, MARKER, "plan v2").expect("upsert 2");
    let id3 = f.upsert_comment(1, MARKER, "plan v2").expect("upsert 3");
    assert_eq!((id, id2), (id3, id3), "one comment, kept in place");
    let comments = gh.comments(1);
    assert_eq!(comments.len(), 2, "{comments:#?}");
    assert_eq!(comments[0], theirs);
    assert_eq!(
        comments[1],
        Comment {
            id: id.0,
            author: BOT.into(),
            body: format!("{MARKER}\nplan v2"),
            system: false,
            edits: 1,
        }
    );
    let posted = f.post_comment(1, "hello").expect("post");
    assert_eq!(
        gh.comments(1).last(),
        Some(&Comment {
            id: posted.0,
            author: BOT.into(),
            body: "hello".into(),
            system: false,
            edits: 0,
        })
    );
    let requests = gh.requests();
    assert_eq!(
        count(&requests, "users/get-authenticated"),
        1,
        "the bot's login is asked once\n{}",
        lines(&requests)
    );
    assert_eq!(count(&requests, "issues/update-comment"), 1);
    assert_eq!(count(&requests, "issues/create-comment"), 2);

    // Commit statuses, in order; the adapter cuts long descriptions to GitHub's 140.
    let status = |context: &str, state, description: &str, target_url: Option<&str>| CommitStatus {
        sha: sha('a'),
        context: context.into(),
        state,
        description: description.into(),
        target_url: target_url.map(str::to_owned),
    };
    f.set_status(&status(
        "slipway/plan",
        StatusState::Pending,
        "planning",
        None,
    ))
    .expect("pending");
    f.set_status(&status(
        "slipway/plan",
        StatusState::Success,
        "2 to change",
        Some("http://slipway.example/plans/1"),
    ))
    .expect("success");
    f.set_status(&status(
        "slipway/apply",
        StatusState::Error,
        &"x".repeat(300),
        None,
    ))
    .expect("a long description is cut, not refused");
    let statuses = gh.statuses(&sha('a'));
    assert_eq!(
        statuses[..2],
        [
            Status {
                context: "slipway/plan".into(),
                state: "pending".into(),
                description: Some("planning".into()),
                target_url: None,
            },
            Status {
                context: "slipway/plan".into(),
                state: "success".into(),
                description: Some("2 to change".into()),
                target_url: Some("http://slipway.example/plans/1".into()),
            },
        ]
    );
    assert_eq!(statuses[2].state, "error");
    assert!(
        statuses[2]
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() <= 140)
    );
    assert_eq!(
        gh.latest_status(&sha('a'), "slipway/plan").map(|s| s.state),
        Some("success".into())
    );
    assert!(gh.statuses(&sha('b')).is_empty());

    // Pull requests, with the labels someone with triage access set.
    gh.set_labels(1, &["preview", "approved", "preview"]);
    let d = f.pull_request(1).expect("pull 1");
    assert_eq!(
        d.info,
        PullRequestInfo {
            number: 1,
            title: "Change 1".into(),
            author: "alice".into(),
            head_sha: sha('a'),
            head_ref: "feature-1".into(),
            base_ref: "main".into(),
            head_repo_full_name: Some(REPO.into()),
            base_repo_full_name: REPO.into(),
            is_fork: false,
            url: "https://github.com/acme/shop/pull/1".into(),
            labels: vec!["approved".into(), "preview".into()],
        }
    );
    assert_eq!(d.mergeable, Some(true));
    assert_eq!(d.state, slipway_forge::PrState::Open);
    gh.set_mergeable(1, None);
    assert_eq!(f.pull_request(1).expect("pull 1").mergeable, None);
    gh.set_mergeable(1, Some(false));
    assert_eq!(f.pull_request(1).expect("pull 1").mergeable, Some(false));
    // No conflict, but a check the base branch requires fails: `blocked`, not mergeable.
    gh.set_mergeable(1, Some(true));
    gh.set_checks_failing(1, true);
    assert_eq!(f.pull_request(1).expect("pull 1").mergeable, Some(false));
    gh.set_checks_failing(1, false);
    assert_eq!(f.pull_request(1).expect("pull 1").mergeable, Some(true));
    gh.set_head(1, &sha('f'));
    assert_eq!(f.pull_request(1).expect("pull 1").info.head_sha, sha('f'));
    let fork = f.pull_request(2).expect("pull 2").info;
    assert!(fork.is_fork);
    assert_eq!(fork.head_repo_full_name.as_deref(), Some("mallory/shop"));
    assert_eq!(
        (fork.head_ref.as_str(), fork.author.as_str()),
        ("main", "mallory")
    );
    assert_eq!(
        f.pull_request(3).expect("pull 3").state,
        slipway_forge::PrState::Closed
    );
    assert_eq!(
        f.pull_request(4).expect("pull 4").state,
        slipway_forge::PrState::Merged
    );
    let missing = f.pull_request(99).expect_err("no #99");
    assert_eq!(missing.status(), Some(404));
    assert!(!missing.retryable());

    // Approvals: a reviewer's latest verdict counts, comments do not change it.
    gh.approve(1, "bob", &sha('a'));
    gh.review(1, "carol", "CHANGES_REQUESTED", &sha('a'));
    gh.approve(1, "carol", &sha('f'));
    gh.approve(1, "dave", &sha('a'));
    gh.review(1, "dave", "DISMISSED", &sha('a'));
    gh.review(1, "bob", "COMMENTED", &sha('f'));
    assert_eq!(
        f.approvals(1).expect("approvals"),
        [
            Approval {
                author: "bob".into(),
                commit_sha: Some(sha('a')),
            },
            Approval {
                author: "carol".into(),
                commit_sha: Some(sha('f')),
            },
        ]
    );
    assert!(f.approvals(2).expect("approvals of #2").is_empty());

    // Write access, by role; a user the repository does not know has none.
    for (user, level, writes) in [
        ("root", "admin", true),
        ("keeper", "maintain", true),
        ("alice", "write", true),
        ("triager", "triage", false),
        ("reader", "read", false),
        ("nobody", "none", false),
        ("renovate[bot]", "write", true),
    ] {
        gh.set_permission(user, level);
        assert_eq!(
            f.has_write_access(user).expect("permission"),
            writes,
            "{user} ({level})"
        );
    }
    assert!(!f.has_write_access("stranger").expect("unknown user"));

    // Open pull requests, with the fork.
    let open = f.open_pull_requests().expect("open pulls");
    let numbers: BTreeSet<u64> = open.iter().map(|p| p.number).collect();
    assert_eq!(numbers, BTreeSet::from([1, 2]));
    assert!(open.iter().any(|p| p.number == 2 && p.is_fork));

    // Every request was one the fake implements, authenticated, with GitHub's headers.
    let requests = gh.requests();
    assert!(gh.unhandled().is_empty(), "{}", lines(&gh.unhandled()));
    for r in &requests {
        assert_eq!(r.header("authorization"), Some(&*format!("Bearer {TOKEN}")));
        assert_eq!(r.header("x-github-api-version"), Some("2022-11-28"));
        assert!(r.status < 300 || r.status == 404, "{}", r.line());
    }
    // ureq keeps connections alive, and the fake serves several requests on one.
    let connections: BTreeSet<u64> = requests.iter().map(|r| r.connection).collect();
    assert!(
        connections.len() < requests.len(),
        "{} requests on {} connections",
        requests.len(),
        connections.len()
    );
}

#[test]
fn lists_are_paginated_like_githubs() {
    let gh = FakeForge::start(util::Forge::GitHub, BOT);
    gh.add_pr(PrSpec::new(5, &sha('5')));
    for i in 0..150 {
        gh.add_comment(5, "chatty", &format!("comment {i}"));
    }
    for n in 100..=230 {
        gh.add_pr(PrSpec::new(n, &sha('6')));
    }
    let f = forge(&gh, Some(BOT));
    let first = f.upsert_comment(5, MARKER, "plan").expect("create");
    let second = f.upsert_comment(5, MARKER, "plan 2").expect("edit");
    assert_eq!(first, second, "our comment on page 2 was found");
    assert_eq!(gh.comments(5).len(), 151);
    assert_eq!(f.open_pull_requests().expect("open").len(), 132);
    let requests = gh.requests();
    assert_eq!(
        count(&requests, "users/get-authenticated"),
        0,
        "bot_login is set"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.operation == Some("issues/list-comments")
                && r.query_param("page") == Some("2")),
        "{}",
        lines(&requests)
    );

    let auth = format!("Bearer {TOKEN}");
    let get = |path: &str| {
        http_request(&gh.addr(), "GET", path, &[("Authorization", &auth)], b"").expect("GET")
    };
    let page1 = get("/repos/acme/shop/issues/5/comments?per_page=100");
    let link = page1.header("link").expect("a Link header");
    let base = gh.url();
    assert_eq!(
        link,
        format!(
            "<{base}/repos/acme/shop/issues/5/comments?per_page=100&page=2>; rel=\"next\", \
             <{base}/repos/acme/shop/issues/5/comments?per_page=100&page=2>; rel=\"last\""
        )
    );
    let page2 = get("/repos/acme/shop/issues/5/comments?per_page=100&page=2");
    let items: Vec<Value> = serde_json::from_str(&page2.body).expect("JSON");
    assert_eq!(items.len(), 51);
    let link = page2.header("link").expect("a Link header");
    assert!(
        link.contains("rel=\"prev\"") && link.contains("rel=\"first\""),
        "{link}"
    );
    assert!(!link.contains("rel=\"next\""), "{link}");
    let one_page = get("/repos/acme/shop/pulls?state=closed");
    assert_eq!(one_page.body, "[]");
    assert_eq!(one_page.header("link"), None, "one page has no Link header");
    let default = get("/repos/acme/shop/pulls");
    let items: Vec<Value> = serde_json::from_str(&default.body).expect("JSON");
    assert_eq!(items.len(), 30, "30 per page by default");
    assert_eq!(items[0]["number"], 230, "newest first");
}

#[test]
fn a_github_app_cannot_read_user_and_must_be_configured_with_its_login() {
    let gh = FakeForge::start(util::Forge::GitHub, "slipway[bot]");
    gh.add_pr(PrSpec::new(1, &sha('a')));
    let err = forge(&gh, None)
        .upsert_comment(1, MARKER, "plan")
        .expect_err("GET /user is refused to an App");
    assert_eq!(err.status(), Some(403));
    let f = forge(&gh, Some("slipway[bot]"));
    let id = f.upsert_comment(1, MARKER, "plan").expect("create");
    assert_eq!(f.upsert_comment(1, MARKER, "plan 2").expect("edit"), id);
    assert_eq!(gh.comments(1)[0].author, "slipway[bot]");
}

#[test]
fn failures_can_be_injected() {
    let gh = fake_with_prs();
    let f = forge(&gh, Some(BOT));
    gh.fail_next("POST", "/statuses/", 502, 1);
    let status = CommitStatus {
        sha: sha('a'),
        context: "slipway/plan".into(),
        state: StatusState::Pending,
        description: "planning".into(),
        target_url: None,
    };
    let err = f.set_status(&status).expect_err("injected 502");
    assert_eq!(err.status(), Some(502));
    assert!(err.retryable());
    f.set_status(&status).expect("only once");
    assert_eq!(gh.statuses(&sha('a')).len(), 1);

    gh.fail_next("GET", "/pulls/1", 403, 1);
    let err = f.pull_request(1).expect_err("rate limited");
    assert!(
        err.retryable(),
        "403 with X-RateLimit-Remaining: 0 is a rate limit: {err}"
    );
    f.pull_request(1).expect("then fine");
}

#[test]
fn odd_requests_get_githubs_errors_and_the_server_keeps_going() {
    let gh = fake_with_prs();
    let addr = gh.addr();
    let auth = format!("Bearer {TOKEN}");
    let req = |method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]| {
        let r = http_request(&addr, method, path, headers, body).expect("an answer");
        let json: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        (r.status, json)
    };
    let with_auth = |extra: &[(&'static str, &'static str)]| {
        let mut h = vec![("Authorization", auth.as_str())];
        h.extend_from_slice(extra);
        h
    };

    let (status, body) = req("GET", "/repos/acme/shop/pulls/1", &[], b"");
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("Requires authentication"))
    );
    let (status, body) = req(
        "GET",
        "/repos/acme/shop/pulls/1",
        &[("Authorization", "Bearer wrong")],
        b"",
    );
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("Bad credentials"))
    );
    gh.clear_requests();

    let (status, body) = req("GET", "/repos/other/repo/pulls", &with_auth(&[]), b"");
    assert_eq!((status, body["message"].as_str()), (404, Some("Not Found")));
    let (status, _) = req(
        "DELETE",
        "/repos/acme/shop/issues/comments/1",
        &with_auth(&[]),
        b"",
    );
    assert_eq!(status, 404);
    let (status, _) = req("GET", "/repos/acme/shop/pulls/01", &with_auth(&[]), b"");
    assert_eq!(status, 404);
    let unhandled = gh.unhandled();
    assert_eq!(unhandled.len(), 3, "{}", lines(&unhandled));
    assert_eq!(unhandled[0].path, "/repos/other/repo/pulls");
    assert_eq!(unhandled[1].method, "DELETE");
    gh.clear_requests();

    let comments = "/repos/acme/shop/issues/1/comments";
    let (status, body) = req("POST", comments, &with_auth(&[]), b"{not json");
    assert_eq!(
        (status, body["message"].as_str()),
        (400, Some("Problems parsing JSON"))
    );
    let (status, body) = req("POST", comments, &with_auth(&[]), br#"{"body": ""}"#);
    assert_eq!(
        (status, body["message"].as_str()),
        (422, Some("Validation Failed"))
    );
    let long = json!({ "body": "x".repeat(65_537) }).to_string();
    let (status, _) = req("POST", comments, &with_auth(&[]), long.as_bytes());
    assert_eq!(status, 422);
    let (status, _) = req(
        "POST",
        "/repos/acme/shop/issues/99/comments",
        &with_auth(&[]),
        br#"{"body":"x"}"#,
    );
    assert_eq!(status, 404);
    let statuses = format!("/repos/acme/shop/statuses/{}", sha('a'));
    let (status, _) = req("POST", &statuses, &with_auth(&[]), br#"{"state":"bogus"}"#);
    assert_eq!(status, 422);
    let long = json!({ "state": "success", "description": "d".repeat(141) }).to_string();
    let (status, _) = req("POST", &statuses, &with_auth(&[]), long.as_bytes());
    assert_eq!(status, 422);
    let (status, _) = req(
        "POST",
        "/repos/acme/shop/statuses/xyz",
        &with_auth(&[]),
        br#"{"state":"success"}"#,
    );
    assert_eq!(status, 422);
    assert!(gh.comments(1).is_empty() && gh.statuses(&sha('a')).is_empty());
    assert!(
        gh.unhandled().is_empty(),
        "refusals of known endpoints are handled"
    );

    // A chunked body after `Expect: 100-continue`.
    let (status, body) = req(
        "POST",
        comments,
        &with_auth(&[("Transfer-Encoding", "chunked"), ("Expect", "100-continue")]),
        b"5\r\n{\"bod\r\n8\r\ny\":\"hi\"}\r\n0\r\n\r\n",
    );
    assert_eq!((status, body["body"].as_str()), (201, Some("hi")));

    // Broken HTTP: answered (or dropped), never fatal.
    let raw = |bytes: &[u8]| -> Option<u16> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split(' ').nth(1).and_then(|c| c.parse().ok())
    };
    assert_eq!(raw(b"NOT HTTP AT ALL\r\n\r\n"), Some(400));
    assert_eq!(
        raw(b"GET /user HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"),
        Some(413)
    );
    assert_eq!(
        raw(b"GET /user HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        Some(400)
    );
    assert_eq!(
        raw(format!("GET /user HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(70_000)).as_bytes()),
        Some(431)
    );
    assert_eq!(
        raw(b"GET /user HTTP/1.1\r\nno colon here\r\n\r\n"),
        Some(400)
    );
    assert_eq!(
        raw(b"GET /user HTTP/1.1\r\n"),
        None,
        "a request cut short is dropped"
    );
    assert_eq!(
        raw(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        Some(400)
    );
    assert_eq!(
        raw(format!("GET /user HTTP/1.0\r\nAuthorization: token {TOKEN}\r\n\r\n").as_bytes()),
        Some(200)
    );
    let f = forge(&gh, Some(BOT));
    f.pull_request(1).expect("still serving");
}

#[test]
fn waiting_for_a_comment_returns_when_it_comes_and_times_out_with_a_report() {
    let gh = std::sync::Arc::new(fake_with_prs());
    let poster = {
        let gh = std::sync::Arc::clone(&gh);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            gh.add_comment(1, "alice", "/slipway plan");
        })
    };
    let c = gh.wait_for_comment(
        1,
        |c| c.body.starts_with("/slipway"),
        Duration::from_secs(10),
    );
    assert_eq!(c.author, "alice");
    poster.join().expect("poster");
    let timed_out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        gh.wait_for_comment(1, |c| c.body == "never", Duration::from_millis(100))
    }))
    .expect_err("times out");
    let message = timed_out
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("timed out") && message.contains("/slipway plan"),
        "{message}"
    );
    let s = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        gh.wait_for_status(&sha('a'), |_| true, Duration::from_millis(50))
    }));
    assert!(s.is_err());
}

// ---- Payloads --------------------------------------------------------------------------------

fn deliver(event: &str, body: &[u8]) -> ForgeEvent {
    let headers = webhook_headers(SECRET, event, "d-1", body);
    let delivery = verify_and_parse(ForgeKind::GitHub, &headers, body, SECRET)
        .unwrap_or_else(|e| panic!("{event}: {e}"));
    assert_eq!(delivery.id, "d-1");
    delivery.event
}

#[test]
fn every_payload_verifies_and_parses_into_the_patched_event() {
    let same = PrSpec {
        title: "Add a cache".into(),
        head_ref: "feat/cache".into(),
        labels: vec!["preview".into(), "approved".into()],
        ..PrSpec::new(42, &sha('a'))
    };
    let fork = PrSpec {
        author: "mallory".into(),
        fork: true,
        ..PrSpec::new(43, &sha('b'))
    };
    let own_fork = PrSpec {
        author: "acme".into(),
        fork: true,
        ..PrSpec::new(44, &sha('c'))
    };
    let info = |pr: &PrSpec| PullRequestInfo {
        number: pr.number,
        title: pr.title.clone(),
        author: pr.author.clone(),
        head_sha: pr.head_sha.clone(),
        head_ref: pr.head_ref.clone(),
        base_ref: pr.base_ref.clone(),
        head_repo_full_name: Some(pr.head_repo_full_name()),
        base_repo_full_name: REPO.into(),
        is_fork: pr.fork,
        url: html_url(pr.number),
        labels: {
            let mut l = pr.labels.clone();
            l.sort();
            l
        },
    };
    for pr in [&same, &fork, &own_fork] {
        for (action, merged, expected) in [
            ("opened", false, PrAction::Opened),
            ("synchronize", false, PrAction::Synchronized),
            ("reopened", false, PrAction::Reopened),
            ("closed", false, PrAction::Closed),
            ("closed", true, PrAction::Merged),
            ("edited", false, PrAction::Other("edited".into())),
        ] {
            let body = pull_request_payload(action, pr, merged, Some(&sha('e')));
            assert_eq!(
                deliver("pull_request", &body),
                ForgeEvent::PullRequest {
                    action: expected,
                    pr: info(pr),
                    sender: Some(pr.author.clone()),
                },
                "{action} merged={merged} #{}",
                pr.number
            );
            let v: Value = serde_json::from_slice(&body).expect("JSON");
            assert_eq!(v["repository"]["full_name"], REPO);
            assert_eq!(v["pull_request"]["head"]["repo"]["fork"], pr.fork);
            assert_eq!(v["sender"]["login"], pr.author.as_str());
            if merged {
                assert_eq!(v["pull_request"]["merge_commit_sha"], sha('e').as_str());
            }
            let text = String::from_utf8_lossy(&body);
            assert!(
                !text.contains("Codertocat/Hello-World"),
                "{action}: renamed everywhere"
            );
        }
    }
    assert_eq!(own_fork.head_repo_full_name(), "acme-fork/shop");

    let first = issue_comment_payload(42, "alice", "/slipway apply prod");
    let second = issue_comment_payload(42, "alice", "/slipway apply prod");
    let (ForgeEvent::Comment { comment_id: a, .. }, ForgeEvent::Comment { comment_id: b, .. }) = (
        deliver("issue_comment", &first),
        deliver("issue_comment", &second),
    ) else {
        panic!("comments");
    };
    assert_ne!(a, b, "each comment has its own id");
    let first_event = deliver("issue_comment", &first);
    let created_at = util::made_just_now(&first_event);
    assert_eq!(
        first_event,
        ForgeEvent::Comment {
            pr_number: 42,
            comment_id: a,
            author: "alice".into(),
            body: "/slipway apply prod".into(),
            is_pull_request: true,
            created_at,
        }
    );

    for (state, expected) in [
        ("approved", ReviewState::Approved),
        ("changes_requested", ReviewState::ChangesRequested),
        ("commented", ReviewState::Commented),
        ("dismissed", ReviewState::Dismissed),
    ] {
        let body = pull_request_review_payload(42, "bob", state, &sha('a'));
        assert_eq!(
            deliver("pull_request_review", &body),
            ForgeEvent::Review {
                pr_number: 42,
                state: expected,
                author: "bob".into(),
            }
        );
        let v: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(v["review"]["commit_id"], sha('a').as_str());
        assert_eq!(v["pull_request"]["head"]["sha"], sha('a').as_str());
    }

    for (branch, before, after, git_ref) in [
        ("main", sha('1'), sha('2'), "refs/heads/main"),
        ("feature/x", sha('0'), sha('3'), "refs/heads/feature/x"),
        ("gone", sha('4'), sha('0'), "refs/heads/gone"),
        ("refs/tags/v1", sha('0'), sha('5'), "refs/tags/v1"),
    ] {
        let body = push_payload_by(branch, &before, &after, "mallory");
        let deleted = after == sha('0');
        assert_eq!(
            deliver("push", &body),
            ForgeEvent::Push {
                git_ref: git_ref.into(),
                branch: git_ref.strip_prefix("refs/heads/").map(str::to_owned),
                before: before.clone(),
                after: after.clone(),
                deleted,
                pusher: Some("mallory".into()),
            }
        );
        let v: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(v["created"], before == sha('0'));
        assert_eq!(v["head_commit"].is_null(), deleted);
        assert_eq!(v["repository"]["default_branch"], "main");
    }
}

#[test]
fn send_webhook_posts_what_github_posts() {
    let gh = FakeForge::start(util::Forge::GitHub, BOT);
    let body = push_payload("main", &sha('1'), &sha('2'));
    let (status, answer) = send_webhook(&gh.addr(), SECRET, "push", "delivery-7", &body);
    assert_eq!(status, 404, "the fake has no webhook endpoint: {answer}");
    let recorded = gh.unhandled().pop().expect("recorded");
    assert_eq!(
        (recorded.method.as_str(), recorded.path.as_str()),
        ("POST", WEBHOOK_PATH)
    );
    assert_eq!(recorded.raw_body, body);
    assert_eq!(recorded.header("content-type"), Some("application/json"));
    let delivery = verify_and_parse(
        ForgeKind::GitHub,
        &recorded.headers,
        &recorded.raw_body,
        SECRET,
    )
    .expect("the signature verifies");
    assert_eq!(delivery.id, "delivery-7");
    assert!(matches!(delivery.event, ForgeEvent::Push { .. }));

    let (status, _) = send_webhook_raw(
        &gh.addr(),
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", "sha256=00"),
        ],
        b"{}",
    );
    assert_eq!(status, 404);
    let forged = gh.unhandled().pop().expect("recorded");
    assert_eq!(forged.header("x-hub-signature-256"), Some("sha256=00"));
    assert!(
        verify_and_parse(ForgeKind::GitHub, &forged.headers, &forged.raw_body, SECRET).is_err()
    );
    // An oversized body is refused before it is read; the answer still arrives.
    let huge = vec![b'x'; 20 << 20];
    let (status, _) = send_webhook_raw(&gh.addr(), &[("X-GitHub-Event", "push")], &huge);
    assert_eq!(status, 413);
}

// ---- Shapes, against GitHub's OpenAPI description --------------------------------------------

/// Checks `v` against `schema`: types, `nullable`, enums, required properties, items,
/// `allOf`/`oneOf`/`anyOf`. Errors name the place and the rule, not the value, so that two
/// documents' errors can be compared.
fn check(api: &OpenApi, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = api.resolve(schema);
    for s in schema["allOf"].as_array().into_iter().flatten() {
        check(api, s, v, at, errors);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alternatives) = schema[key].as_array() {
            let results: Vec<Vec<String>> = alternatives
                .iter()
                .map(|s| {
                    let mut e = Vec::new();
                    check(api, s, v, at, &mut e);
                    e
                })
                .collect();
            if !results.iter().any(Vec::is_empty) {
                errors.extend(results.into_iter().min_by_key(Vec::len).unwrap_or_default());
            }
        }
    }
    if v.is_null() {
        if schema.get("type").is_some() && schema["nullable"] != true {
            errors.push(format!("{at}: null is not allowed"));
        }
        return;
    }
    if !has_type(schema, v) {
        errors.push(format!("{at}: not of type {}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        errors.push(format!("{at}: not one of the enum's values"));
    }
    if let Some(obj) = v.as_object() {
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap_or_default();
            if !obj.contains_key(name) {
                errors.push(format!("{at}: missing required {name}"));
            }
        }
        if let Some(props) = schema["properties"].as_object() {
            for (k, value) in obj {
                if let Some(p) = props.get(k) {
                    check(api, p, value, &format!("{at}.{k}"), errors);
                }
            }
        }
    }
    if let (Some(items), Some(schema)) = (v.as_array(), schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check(api, schema, item, &format!("{at}[{i}]"), errors);
        }
    }
}

/// The errors of [`check`] from the root, as a set.
fn schema_errors(api: &OpenApi, schema: &Value, v: &Value) -> BTreeSet<String> {
    let mut errors = Vec::new();
    check(api, schema, v, "$", &mut errors);
    errors.into_iter().collect()
}

/// Whether `schema` (or one of its `allOf` parts) lists `field` as required.
fn schema_requires(api: &OpenApi, schema: &Value, field: &str) -> bool {
    let schema = api.resolve(schema);
    schema["required"]
        .as_array()
        .is_some_and(|r| r.iter().any(|f| f == field))
        || schema["allOf"]
            .as_array()
            .is_some_and(|parts| parts.iter().any(|p| schema_requires(api, p, field)))
}

#[test]
fn every_answer_has_the_shape_of_githubs_openapi_description() {
    let api = OpenApi::github();
    let gh = fake_with_prs();
    gh.set_permission("alice", "write");
    gh.approve(1, "bob", &sha('a'));
    gh.add_comment(1, "mallory", "hi");
    let f = forge(&gh, None);
    f.upsert_comment(1, MARKER, "plan").expect("create");
    f.upsert_comment(1, MARKER, "plan 2").expect("edit");
    f.set_status(&CommitStatus {
        sha: sha('a'),
        context: "slipway/plan".into(),
        state: StatusState::Success,
        description: "ok".into(),
        target_url: Some("http://x.example".into()),
    })
    .expect("status");
    for n in [1, 2, 3, 4] {
        f.pull_request(n).expect("pull");
    }
    f.pull_request(99).expect_err("404");
    f.approvals(1).expect("approvals");
    f.has_write_access("alice").expect("permission");
    f.has_write_access("stranger").expect("404 permission");
    f.open_pull_requests().expect("open");
    let auth = format!("Bearer {TOKEN}");
    let comment = gh.comments(1)[0].id;
    http_request(
        &gh.addr(),
        "GET",
        &format!("/repos/acme/shop/issues/comments/{comment}"),
        &[("Authorization", &auth)],
        b"",
    )
    .expect("get a comment");
    http_request(
        &gh.addr(),
        "POST",
        "/repos/acme/shop/issues/1/comments",
        &[("Authorization", &auth)],
        b"{}",
    )
    .expect("a 422");

    let requests = gh.requests();
    let mut seen = BTreeSet::new();
    for r in &requests {
        let operation = api
            .operation(&r.method, &r.path)
            .unwrap_or_else(|e| panic!("{}: no such operation in GitHub's API: {e}", r.line()))
            .op;
        assert_eq!(
            operation["operationId"].as_str(),
            r.operation,
            "{}: the operation GitHub's description names",
            r.line()
        );
        let response = operation["responses"]
            .get(r.status.to_string())
            .map(|resp| api.resolve(resp))
            .unwrap_or_else(|| {
                panic!(
                    "{}: GitHub's description has no {} answer",
                    r.line(),
                    r.status
                )
            });
        let schema = &response["content"]["application/json"]["schema"];
        assert!(
            !schema.is_null(),
            "{}: no JSON schema for the answer",
            r.line()
        );
        let errors = schema_errors(api, schema, &r.response);
        assert!(
            errors.is_empty(),
            "{}: the answer does not fit GitHub's schema:\n{}",
            r.line(),
            errors.into_iter().collect::<Vec<_>>().join("\n")
        );
        seen.insert((r.operation.unwrap_or_default(), r.status));
        // The check has teeth: an answer without a required field fails it.
        if let Some(first) = r.response.as_object().and_then(|o| o.keys().next()) {
            let mut broken = r.response.clone();
            broken
                .as_object_mut()
                .expect("an object")
                .remove(&first.clone());
            if schema_requires(api, schema, first) {
                assert!(
                    !schema_errors(api, schema, &broken).is_empty(),
                    "{}: an answer without {first} still fits",
                    r.line()
                );
            }
        }
    }
    let expected: BTreeSet<(&str, u16)> = BTreeSet::from([
        ("users/get-authenticated", 200),
        ("issues/list-comments", 200),
        ("issues/create-comment", 201),
        ("issues/create-comment", 422),
        ("issues/update-comment", 200),
        ("issues/get-comment", 200),
        ("repos/create-commit-status", 201),
        ("pulls/get", 200),
        ("pulls/get", 404),
        ("pulls/list-reviews", 200),
        ("repos/get-collaborator-permission-level", 200),
        ("repos/get-collaborator-permission-level", 404),
        ("pulls/list", 200),
    ]);
    assert_eq!(seen, expected, "every operation was checked");
}

#[test]
fn payload_patches_keep_the_shape_of_githubs_webhook_schema() {
    let api = OpenApi::github();
    let fork = PrSpec {
        author: "mallory".into(),
        fork: true,
        ..PrSpec::new(43, &sha('b'))
    };
    let example = |event: &str, action: &str| {
        webhook_example(event, |x| {
            x["action"] == action
                || (event == "push"
                    && x["ref"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("refs/heads/")))
        })
    };
    let cases: Vec<(&str, Value, Vec<u8>)> = vec![
        (
            "pull-request-opened",
            example("pull_request", "opened"),
            pull_request_payload("opened", &fork, false, None),
        ),
        (
            "pull-request-synchronize",
            example("pull_request", "synchronize"),
            pull_request_payload("synchronize", &fork, false, None),
        ),
        (
            "pull-request-reopened",
            example("pull_request", "reopened"),
            pull_request_payload("reopened", &fork, false, None),
        ),
        (
            "pull-request-closed",
            example("pull_request", "closed"),
            pull_request_payload("closed", &fork, true, Some(&sha('e'))),
        ),
        (
            "issue-comment-created",
            example("issue_comment", "created"),
            issue_comment_payload(43, "alice", "/slipway plan"),
        ),
        (
            "pull-request-review-submitted",
            example("pull_request_review", "submitted"),
            pull_request_review_payload(43, "bob", "approved", &sha('b')),
        ),
        (
            "push",
            example("push", ""),
            push_payload("main", &sha('1'), &sha('2')),
        ),
        (
            "push",
            example("push", ""),
            push_payload("gone", &sha('1'), &sha('0')),
        ),
    ];
    for (name, original, patched) in cases {
        let schema = api.webhook_schema(name);
        let patched: Value = serde_json::from_slice(&patched).expect("JSON");
        let before = schema_errors(api, schema, &original);
        let after = schema_errors(api, schema, &patched);
        let new: Vec<&String> = after.difference(&before).collect();
        assert!(
            new.is_empty(),
            "{name}: patching broke GitHub's schema:\n{new:#?}"
        );
        // The check has teeth: a payload without its repository, or with a string for the
        // sender, does not fit.
        let mut broken = patched.clone();
        broken
            .as_object_mut()
            .expect("an object")
            .remove("repository");
        broken["sender"] = json!("nobody");
        let broken = schema_errors(api, schema, &broken);
        assert!(
            broken.contains("$: missing required repository")
                && broken.contains("$.sender: not of type \"object\""),
            "{name}: {broken:#?}"
        );
    }
}

#[test]
fn a_preview_deployment_is_made_once_per_commit_in_requests_and_answers_githubs_description_accepts()
 {
    let api = OpenApi::github();
    let gh = fake_with_prs();
    let f = forge(&gh, Some(BOT));
    let deploy = |sha: &str, state: DeploymentState, url: Option<&str>| {
        f.set_deployment(&PreviewDeployment {
            sha: sha.to_owned(),
            environment: "pr-1".into(),
            state,
            environment_url: url.map(str::to_owned),
            description: "pr-1 runs it".into(),
        })
        .expect("the deployment is shown");
    };
    let url = "http://pr-1.shop.localhost:7300/";
    deploy(&sha('a'), DeploymentState::InProgress, None);
    deploy(&sha('a'), DeploymentState::Success, Some(url));
    deploy(&sha('b'), DeploymentState::Failure, None);
    deploy(&sha('b'), DeploymentState::Inactive, None);

    let deployments = gh.deployments();
    assert_eq!(
        deployments
            .iter()
            .map(|d| d.sha.clone())
            .collect::<Vec<_>>(),
        [sha('a'), sha('b')],
        "one deployment per commit"
    );
    for d in &deployments {
        assert_eq!(d.environment, "pr-1");
        assert!(
            d.transient_environment,
            "a preview is a transient environment"
        );
        assert_eq!(d.production_environment, Some(false));
        assert!(!d.auto_merge, "deploying a preview merges nothing into it");
        assert_eq!(
            d.required_contexts,
            Some(Vec::new()),
            "nor waits for checks"
        );
    }
    let states = |d: &util::fake_github::Deployment| {
        d.statuses
            .iter()
            .map(|s| (s.state.clone(), s.environment_url.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        states(&deployments[0]),
        [
            ("in_progress".to_owned(), None),
            ("success".to_owned(), Some(url.to_owned()))
        ]
    );
    assert_eq!(
        states(&deployments[1]),
        [("failure".to_owned(), None), ("inactive".to_owned(), None)]
    );

    // Every request's body and every answer, against GitHub's description.
    let requests = gh.requests();
    assert!(gh.unhandled().is_empty(), "{}", lines(&gh.unhandled()));
    for r in &requests {
        let operation = api
            .operation(&r.method, &r.path)
            .unwrap_or_else(|e| panic!("{}: no such operation in GitHub's API: {e}", r.line()));
        assert_eq!(
            operation.id.as_str(),
            r.operation.unwrap_or_default(),
            "{}",
            r.line()
        );
        if let Some(body) = &r.body {
            let schema =
                &api.resolve(&operation.op["requestBody"])["content"]["application/json"]["schema"];
            assert!(!schema.is_null(), "{}: GitHub takes no JSON body", r.line());
            let errors = schema_errors(api, schema, body);
            assert!(
                errors.is_empty(),
                "{}: the request does not fit GitHub's schema: {errors:?}\n{body}",
                r.line()
            );
            let known = api.resolve(schema)["properties"]
                .as_object()
                .expect("a body of properties");
            for field in body.as_object().expect("an object").keys() {
                assert!(
                    known.contains_key(field),
                    "{}: GitHub's description has no field {field}",
                    r.line()
                );
            }
        }
        for (name, _) in &r.query {
            let known = operation.op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| api.resolve(p))
                .any(|p| p["name"] == name.as_str() && p["in"] == "query");
            assert!(
                known,
                "{}: GitHub's description has no parameter {name}",
                r.line()
            );
        }
        let response = api.resolve(&operation.op["responses"][r.status.to_string()]);
        let schema = &response["content"]["application/json"]["schema"];
        let errors = schema_errors(api, schema, &r.response);
        assert!(
            errors.is_empty(),
            "{}: the answer does not fit GitHub's schema: {errors:?}",
            r.line()
        );
    }
    let operations: BTreeSet<&str> = requests.iter().filter_map(|r| r.operation).collect();
    assert_eq!(
        operations,
        BTreeSet::from([
            "repos/list-deployments",
            "repos/create-deployment",
            "repos/create-deployment-status"
        ])
    );
}
