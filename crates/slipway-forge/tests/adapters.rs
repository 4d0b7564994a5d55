//! The forge adapters against a recording HTTP server on 127.0.0.1. GitHub's requests are
//! checked against GitHub's OpenAPI description (`@octokit/openapi`) and answered with its
//! documented examples; GitLab's and Gitea's are checked for method, path, headers and body.

mod util;

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use slipway_forge::{
    Approval, CommentId, CommitStatus, Forge, ForgeConfig, ForgeError, ForgeKind, PrState,
    StatusState, connect,
};
use util::{OpenApi, Recorded, Reply, RequestCheck, Server};

const TOKEN: &str = "ghp_TESTTOKEN0123456789";
const MARKER: &str = "<!-- slipway:plan -->";
const SHA: &str = "6dcb09b5b57875f334f61aebed695e2e4193db5e";

fn forge(kind: ForgeKind, server: &Server, repository: &str) -> Box<dyn Forge> {
    let mut config = ForgeConfig::new(kind, repository, TOKEN);
    config.api_url = Some(match kind {
        ForgeKind::GitHub => server.url(),
        ForgeKind::GitLab => format!("{}/api/v4", server.url()),
        ForgeKind::Gitea => format!("{}/api/v1", server.url()),
    });
    connect(config).expect("a valid configuration")
}

fn not_found() -> Reply {
    Reply::json(404, &json!({"message": "Not Found"}))
}

/// Checks one request GitHub would get: it matches an operation of GitHub's API description
/// (path, method, query parameters, body), carries the headers GitHub asks for, and has the
/// token in the Authorization header only.
fn check_github(req: &Recorded) -> String {
    let op = OpenApi::github()
        .check(req)
        .unwrap_or_else(|e| panic!("a request GitHub's API does not describe: {e}"));
    assert_eq!(
        req.header("Authorization"),
        Some(format!("Bearer {TOKEN}").as_str()),
        "{}",
        req.line()
    );
    assert_eq!(
        req.header("Accept"),
        Some("application/vnd.github+json"),
        "{}",
        req.line()
    );
    assert_eq!(
        req.header("X-GitHub-Api-Version"),
        Some("2022-11-28"),
        "{}",
        req.line()
    );
    assert_eq!(req.header("User-Agent"), Some("slipway"), "{}", req.line());
    assert!(
        !req.line().contains(TOKEN),
        "the token is never in the URL: {}",
        req.line()
    );
    if !req.body.is_empty() {
        assert!(
            req.header("Content-Type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{}: a JSON body says so",
            req.line()
        );
    }
    op
}

/// A GitHub that answers every call with the example of GitHub's API description, except the
/// comments of issue 1347, which it keeps like GitHub would.
fn stateful_github() -> (Server, Arc<Mutex<Vec<Value>>>) {
    let api = OpenApi::github();
    let example = api
        .example_reply("GET", "/repos/octocat/Hello-World/issues/1347/comments")
        .expect("an example");
    let mut comments: Vec<Value> = serde_json::from_str(&example.body).expect("a list");
    // Someone else's comment that carries Slipway's marker: it must be left alone.
    let mut mallory = comments[0].clone();
    mallory["id"] = json!(7);
    mallory["user"]["login"] = json!("mallory");
    mallory["body"] = json!(format!("{MARKER}\nlooks like Slipway, is not"));
    comments.push(mallory);
    let comments = Arc::new(Mutex::new(comments));
    let state = Arc::clone(&comments);
    let server = Server::start(move |req| {
        let mut comments = state.lock().expect("not poisoned");
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/repos/octocat/Hello-World/issues/1347/comments") => {
                Reply::json(200, &Value::Array(comments.clone()))
            }
            ("POST", "/repos/octocat/Hello-World/issues/1347/comments") => {
                let mut c = comments[0].clone();
                c["id"] = json!(1000 + comments.len());
                c["body"] = req.json()["body"].clone();
                comments.push(c.clone());
                Reply::json(201, &c)
            }
            ("PATCH", path) if path.starts_with("/repos/octocat/Hello-World/issues/comments/") => {
                let id: u64 = path
                    .rsplit('/')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("an id");
                match comments.iter_mut().find(|c| c["id"] == id) {
                    Some(c) => {
                        c["body"] = req.json()["body"].clone();
                        Reply::json(200, c)
                    }
                    None => not_found(),
                }
            }
            _ => api
                .example_reply(&req.method, &req.path)
                .unwrap_or_else(not_found),
        }
    });
    (server, comments)
}

#[test]
fn github_upsert_comment_creates_once_then_edits_in_place() {
    let (server, comments) = stateful_github();
    let gh = forge(ForgeKind::GitHub, &server, "octocat/Hello-World");

    let first = gh.upsert_comment(1347, MARKER, "plan v1").expect("create");
    let requests = server.take();
    let ops: Vec<String> = requests.iter().map(check_github).collect();
    assert_eq!(
        ops,
        [
            "users/get-authenticated",
            "issues/list-comments",
            "issues/create-comment"
        ]
    );
    assert_eq!(requests[1].query("per_page"), Some("100"));
    assert_eq!(requests[1].query("page"), Some("1"));
    assert_eq!(
        requests[2].json()["body"],
        format!("{MARKER}\nplan v1"),
        "the marker is added on its own line"
    );

    let second = gh.upsert_comment(1347, MARKER, "plan v2").expect("update");
    let requests = server.take();
    let ops: Vec<String> = requests.iter().map(check_github).collect();
    assert_eq!(
        ops,
        ["issues/list-comments", "issues/update-comment"],
        "the login is asked once"
    );
    assert_eq!(second, first, "the same comment is edited");
    assert_eq!(
        requests[1].path,
        format!("/repos/octocat/Hello-World/issues/comments/{first}")
    );

    let third = gh
        .upsert_comment(1347, MARKER, "plan v2")
        .expect("unchanged");
    let ops: Vec<String> = server.take().iter().map(check_github).collect();
    assert_eq!(
        ops,
        ["issues/list-comments"],
        "an unchanged body is not written again"
    );
    assert_eq!(third, first);

    let comments = comments.lock().expect("not poisoned");
    let ours: Vec<&Value> = comments
        .iter()
        .filter(|c| {
            c["user"]["login"] == "octocat"
                && c["body"].as_str().is_some_and(|b| b.contains(MARKER))
        })
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "one Slipway comment per pull request, however many pushes"
    );
    assert_eq!(ours[0]["body"], format!("{MARKER}\nplan v2"));
    let mallory = comments
        .iter()
        .find(|c| c["id"] == 7)
        .expect("mallory's comment");
    assert!(
        mallory["body"]
            .as_str()
            .is_some_and(|b| b.ends_with("is not")),
        "someone else's comment is not touched"
    );
}

/// A pull request the adapter cannot read (here a branch name with a character git takes and
/// Slipway refuses) is left out of the open ones rather than made an error for all of them:
/// catching up after missed webhooks goes on for the others.
#[test]
fn one_pull_request_that_cannot_be_read_leaves_the_others_listed() {
    let api = OpenApi::github();
    let server = Server::start(move |req| {
        let mut reply = api
            .example_reply(&req.method, &req.path)
            .unwrap_or_else(not_found);
        if req.method == "GET" && req.path.ends_with("/pulls") {
            let mut prs: Vec<Value> = serde_json::from_str(&reply.body).expect("a list");
            let mut odd = prs[0].clone();
            odd["number"] = json!(1348);
            odd["head"]["ref"] = json!("a\u{3000}b");
            prs.push(odd);
            reply.body = Value::from(prs).to_string();
        }
        reply
    });
    let gh = forge(ForgeKind::GitHub, &server, "octocat/Hello-World");
    let open = gh.open_pull_requests().expect("the list is read");
    let numbers: Vec<u64> = open.iter().map(|p| p.number).collect();
    assert_eq!(
        numbers,
        [1347],
        "the readable one is listed, the other left out"
    );
}

#[test]
fn github_calls_match_githubs_api_description() {
    let api = OpenApi::github();
    let server = Server::start(move |req| {
        api.example_reply(&req.method, &req.path)
            .unwrap_or_else(not_found)
    });
    let gh = forge(ForgeKind::GitHub, &server, "octocat/Hello-World");
    assert_eq!(gh.kind(), ForgeKind::GitHub);

    let id = gh.post_comment(1347, "hello").expect("post");
    assert_eq!(id, CommentId(1));

    gh.set_status(&CommitStatus {
        sha: SHA.into(),
        context: "slipway/plan".into(),
        state: StatusState::Failure,
        description: "x".repeat(300),
        target_url: Some("http://127.0.0.1:7300/prs/1347".into()),
    })
    .expect("status");

    let pr = gh.pull_request(1347).expect("pull request");
    assert_eq!(pr.info.number, 1347);
    assert_eq!(pr.info.head_sha, SHA);
    assert_eq!(
        (pr.info.head_ref.as_str(), pr.info.base_ref.as_str()),
        ("new-topic", "master")
    );
    assert_eq!(pr.info.author, "octocat");
    assert!(
        !pr.info.is_fork,
        "head and base are the same repository in the example"
    );
    assert_eq!(pr.mergeable, Some(true));
    assert_eq!(pr.state, PrState::Open);

    assert_eq!(
        gh.approvals(1347).expect("approvals"),
        [Approval {
            author: "octocat".into(),
            commit_sha: Some("ecdd80bb57125d7ba9641ffaa4d7d2c19d3f3091".into())
        }]
    );
    assert!(
        gh.has_write_access("octocat").expect("permission"),
        "the example is an admin"
    );

    let open = gh.open_pull_requests().expect("open pull requests");
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].number, 1347);
    assert_eq!(gh.pr_head_ref(1347), "refs/pull/1347/head");

    let requests = server.take();
    let ops: Vec<String> = requests.iter().map(check_github).collect();
    assert_eq!(
        ops,
        [
            "issues/create-comment",
            "repos/create-commit-status",
            "pulls/get",
            "pulls/list-reviews",
            "repos/get-collaborator-permission-level",
            "pulls/list",
        ]
    );
    let status = requests[1].json();
    assert_eq!(status["state"], "failure");
    assert_eq!(status["context"], "slipway/plan");
    assert!(
        status["description"]
            .as_str()
            .expect("a string")
            .chars()
            .count()
            <= 140,
        "GitHub's limit"
    );
    assert_eq!(
        requests[1].path,
        format!("/repos/octocat/Hello-World/statuses/{SHA}")
    );
    assert_eq!(requests[5].query("state"), Some("open"));
}

#[test]
fn github_write_access_for_strangers_and_hostile_logins() {
    let server = Server::start(|req| {
        if req.path.ends_with("/collaborators/stranger/permission") {
            not_found()
        } else if req.path.contains("/collaborators/") {
            Reply::json(
                200,
                &json!({"permission": "read", "role_name": "triage", "user": null}),
            )
        } else {
            not_found()
        }
    });
    let gh = forge(ForgeKind::GitHub, &server, "octocat/Hello-World");
    assert!(
        !gh.has_write_access("stranger").expect("404 is an answer"),
        "a non-collaborator cannot write"
    );
    assert!(
        !gh.has_write_access("reader").expect("read"),
        "triage cannot write"
    );
    assert!(!gh.has_write_access("../../admin").expect("encoded"));
    let requests = server.take();
    for r in &requests {
        check_github(r);
    }
    assert_eq!(
        requests[2].path, "/repos/octocat/Hello-World/collaborators/..%2F..%2Fadmin/permission",
        "a login stays one path segment"
    );
    let err = gh.has_write_access("evil\nlogin").expect_err("not a login");
    assert!(matches!(err, ForgeError::InvalidInput { .. }), "{err}");
    assert!(
        server.take().is_empty(),
        "nothing is sent for an invalid login"
    );
}

#[test]
fn github_lists_follow_link_next_and_reviews_are_read_from_their_newest_pages() {
    let api = OpenApi::github();
    let server = Server::start(move |req| {
        let example = api
            .example_reply(&req.method, &req.path)
            .expect("an example");
        let page: u32 = req
            .query("page")
            .and_then(|p| p.parse().ok())
            .expect("a page");
        // Pull 1 has three pages; pull 2 claims a next page forever; pull 3 has eight, and
        // says which is the last.
        let more = req.path.contains("/pulls/2/") || page < 3;
        if req.path.contains("/pulls/4/") {
            // No `Link`, only how many there are (as Gitea lists reviews): 800, 8 pages.
            example.with_header("X-Total-Count", "800")
        } else if req.path.contains("/pulls/3/") {
            let link = |page: u32, rel: &str| {
                format!(
                    "<https://api.github.com{}?per_page=100&page={page}>; rel=\"{rel}\"",
                    req.path
                )
            };
            let mut links = vec![link(1, "first")];
            if page < 8 {
                links.extend([link(page + 1, "next"), link(8, "last")]);
            }
            example.with_header("Link", &links.join(", "))
        } else if more {
            let next = format!(
                "<{}{}?per_page=100&page={}>; rel=\"next\"",
                "https://api.github.com",
                req.path,
                page + 1
            );
            example.with_header("Link", &next)
        } else {
            example.with_header("Link", "<https://api.github.com/x?page=1>; rel=\"first\"")
        }
    });
    let mut config = ForgeConfig::new(ForgeKind::GitHub, "octocat/Hello-World", TOKEN);
    config.api_url = Some(server.url());
    config.max_pages = 5;
    let gh = connect(config).expect("config");

    gh.approvals(1).expect("three pages");
    let pages: Vec<String> = server
        .take()
        .iter()
        .map(|r| {
            check_github(r);
            r.query("page").unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(pages, ["1", "2", "3"]);

    // Reviews: a reviewer's latest verdict counts, so the newest pages are the ones read.
    let endless = gh.approvals(2).expect_err("a list that never ends");
    assert!(
        endless.to_string().contains("read up to 10 pages"),
        "{endless}"
    );
    assert_eq!(
        server.take().len(),
        10,
        "at most twice max_pages pages are read"
    );

    // Pull 3 says which page is last in its `Link` header; pull 4 only how many reviews there
    // are (as Gitea lists reviews): either way the first page tells the last, and the last
    // max_pages pages are read.
    for (number, how) in [(3, "Link rel=last"), (4, "X-Total-Count")] {
        gh.approvals(number).expect("the newest pages");
        let pages: Vec<String> = server
            .take()
            .iter()
            .map(|r| r.query("page").unwrap_or_default().to_owned())
            .collect();
        assert_eq!(pages, ["1", "4", "5", "6", "7", "8"], "{how}");
    }
}

#[test]
fn github_errors_carry_status_and_reason_never_the_token() {
    let server = Server::start(|req| match req.path.as_str() {
        "/repos/octocat/Hello-World/pulls/1" => {
            Reply::json(401, &json!({"message": format!("Bad credentials {TOKEN}")}))
        }
        "/repos/octocat/Hello-World/pulls/2" => {
            Reply::json(403, &json!({"message": "API rate limit exceeded"}))
                .with_header("x-ratelimit-remaining", "0")
        }
        "/repos/octocat/Hello-World/pulls/3" => {
            Reply::json(502, &json!({"message": "Server Error"}))
        }
        "/repos/octocat/Hello-World/pulls/4" => Reply::json(200, &json!({"number": 4})),
        _ => not_found(),
    });
    let gh = forge(ForgeKind::GitHub, &server, "octocat/Hello-World");

    let err = gh.pull_request(1).expect_err("401");
    assert_eq!(err.status(), Some(401));
    assert!(!err.retryable(), "bad credentials stay bad");
    let text = err.to_string();
    assert!(
        text.contains("GET /repos/octocat/Hello-World/pulls/1") && text.contains("Bad credentials"),
        "{text}"
    );
    assert!(
        !text.contains(TOKEN) && !format!("{err:?}").contains(TOKEN),
        "the token is redacted: {text}"
    );

    let err = gh.pull_request(2).expect_err("rate limited");
    assert!(err.retryable(), "a rate limit passes: {err}");
    let err = gh.pull_request(3).expect_err("502");
    assert!(err.retryable(), "a 5xx may pass: {err}");
    let err = gh.pull_request(4).expect_err("not a pull request");
    assert!(matches!(err, ForgeError::Decode { .. }), "{err}");

    let err = gh
        .set_status(&CommitStatus {
            sha: "--force".into(),
            context: "slipway/plan".into(),
            state: StatusState::Pending,
            description: String::new(),
            target_url: None,
        })
        .expect_err("not a sha");
    assert!(
        matches!(
            err,
            ForgeError::InvalidInput {
                what: "commit sha",
                ..
            }
        ),
        "{err}"
    );
    let err = gh
        .upsert_comment(1, "slipway", "body")
        .expect_err("not a marker");
    assert!(
        matches!(
            err,
            ForgeError::InvalidInput {
                what: "comment marker",
                ..
            }
        ),
        "{err}"
    );

    let url = server.url();
    drop(server);
    let mut config = ForgeConfig::new(ForgeKind::GitHub, "octocat/Hello-World", TOKEN);
    config.api_url = Some(url);
    let gh = connect(config).expect("config");
    let err = gh.pull_request(1).expect_err("nobody listens");
    assert!(
        matches!(err, ForgeError::Transport { .. }) && err.retryable(),
        "{err}"
    );
    assert!(!err.to_string().contains(TOKEN));
}

#[test]
fn configurations_that_cannot_work_are_refused() {
    let https = ForgeConfig::new(ForgeKind::GitHub, "octocat/Hello-World", TOKEN);
    if cfg!(feature = "tls") {
        assert!(connect(https).is_ok());
    } else {
        let err = connect(https).err().expect("no TLS in this build");
        assert!(err.to_string().contains("tls"), "{err}");
    }
    let err = connect(ForgeConfig::new(ForgeKind::Gitea, "a/b", TOKEN))
        .err()
        .expect("gitea needs a URL");
    assert!(err.to_string().contains("api_url"), "{err}");
    let mut bad_repo = ForgeConfig::new(ForgeKind::GitHub, "../etc", TOKEN);
    bad_repo.api_url = Some("http://127.0.0.1:1".into());
    assert!(connect(bad_repo).is_err());
    let mut no_token = ForgeConfig::new(ForgeKind::GitHub, "a/b", "");
    no_token.api_url = Some("http://127.0.0.1:1".into());
    assert!(
        connect(no_token)
            .err()
            .expect("no token")
            .to_string()
            .contains("token")
    );
}

/// Asserts the headers every GitLab request carries.
fn check_gitlab(req: &Recorded) {
    assert_eq!(req.header("PRIVATE-TOKEN"), Some(TOKEN), "{}", req.line());
    assert_eq!(req.header("Authorization"), None, "{}", req.line());
    assert_eq!(req.header("User-Agent"), Some("slipway"), "{}", req.line());
    assert!(req.path.starts_with("/api/v4/"), "{}", req.line());
    assert!(!req.line().contains(TOKEN));
}

fn gitlab_mr(iid: u64, source_project_id: u64) -> Value {
    // The shape of GitLab's "Get single MR" answer (docs: api/merge_requests.md), cut to the
    // fields Slipway reads and a few neighbours.
    json!({
        "id": 155016530 + iid,
        "iid": iid,
        "project_id": 15,
        "title": "Add slipway.yaml",
        "description": "",
        "state": "opened",
        "target_branch": "main",
        "source_branch": "feature/login",
        "author": {"id": 1, "username": "admin", "name": "Administrator", "state": "active"},
        "source_project_id": source_project_id,
        "target_project_id": 15,
        "draft": false,
        "merge_status": "can_be_merged",
        "detailed_merge_status": "mergeable",
        "has_conflicts": false,
        "sha": "8888888888888888888888888888888888888888",
        "web_url": format!("http://gitlab.example.com/my-group/my-project/-/merge_requests/{iid}"),
        "references": {"full": format!("my-group/my-project!{iid}")}
    })
}

#[test]
fn gitlab_adapter_calls() {
    let notes = Arc::new(Mutex::new(vec![
        json!({"id": 301, "body": "merged main", "author": {"username": "slipway-bot"}, "system": true}),
        json!({"id": 302, "body": format!("{MARKER}\nnot ours"), "author": {"username": "mallory"}, "system": false}),
        // Approvals count when given after the last push (the newest version, below).
        json!({"id": 303, "body": "approved this merge request", "author": {"username": "reviewer"}, "system": true, "created_at": "2026-01-01T10:00:01.250Z"}),
        json!({"id": 304, "body": "approved this merge request", "author": {"username": "early"}, "system": true, "created_at": "2026-01-01T09:59:59.999Z"}),
    ]));
    let state = Arc::clone(&notes);
    let server = Server::start(move |req| {
        let p = req.path.strip_prefix("/api/v4").unwrap_or(&req.path);
        let mut notes = state.lock().expect("not poisoned");
        match (req.method.as_str(), p) {
            ("GET", "/user") => Reply::json(200, &json!({"id": 9, "username": "slipway-bot"})),
            ("GET", "/projects/my-group%2Fmy-project/merge_requests/7/notes") => {
                Reply::json(200, &Value::Array(notes.clone()))
            }
            ("POST", "/projects/my-group%2Fmy-project/merge_requests/7/notes") => {
                let n = json!({"id": 400 + notes.len(), "body": req.json()["body"], "author": {"username": "slipway-bot"}, "system": false});
                notes.push(n.clone());
                Reply::json(201, &n)
            }
            ("PUT", path)
                if path.starts_with("/projects/my-group%2Fmy-project/merge_requests/7/notes/") =>
            {
                let id: u64 = path
                    .rsplit('/')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("an id");
                let n = notes.iter_mut().find(|n| n["id"] == id).expect("a note");
                n["body"] = req.json()["body"].clone();
                Reply::json(200, n)
            }
            ("POST", path) if path.starts_with("/projects/my-group%2Fmy-project/statuses/") => {
                Reply::json(201, &json!({"id": 93, "status": "pending"}))
            }
            ("GET", "/projects/my-group%2Fmy-project/merge_requests/7") => {
                Reply::json(200, &gitlab_mr(7, 15))
            }
            ("GET", "/projects/my-group%2Fmy-project/merge_requests/8") => {
                Reply::json(200, &gitlab_mr(8, 99))
            }
            ("GET", "/projects/99") => Reply::json(
                200,
                &json!({"id": 99, "path_with_namespace": "mallory/my-project"}),
            ),
            ("GET", "/projects/my-group%2Fmy-project/merge_requests/7/approvals") => Reply::json(
                200,
                &json!({
                    "id": 5, "iid": 7, "project_id": 15, "approved": true,
                    "approved_by": [
                        {"user": {"id": 3, "username": "reviewer", "name": "Reviewer"}},
                        {"user": {"id": 4, "username": "early", "name": "Early"}}
                    ]
                }),
            ),
            ("GET", "/projects/my-group%2Fmy-project/merge_requests/7/versions") => Reply::json(
                200,
                &json!([
                    {"id": 2, "head_commit_sha": "8888888888888888888888888888888888888888", "created_at": "2026-01-01T10:00:00.000Z"},
                    {"id": 1, "head_commit_sha": "7777777777777777777777777777777777777777", "created_at": "2026-01-01T09:00:00.000Z"}
                ]),
            ),
            ("GET", "/users") => match req.query("username") {
                Some("dev") => Reply::json(200, &json!([{"id": 21, "username": "dev"}])),
                Some("guest") => Reply::json(200, &json!([{"id": 22, "username": "guest"}])),
                _ => Reply::json(200, &json!([])),
            },
            ("GET", "/projects/my-group%2Fmy-project/members/all/21") => Reply::json(
                200,
                &json!({"id": 21, "username": "dev", "access_level": 30}),
            ),
            ("GET", "/projects/my-group%2Fmy-project/members/all/22") => Reply::json(
                200,
                &json!({"id": 22, "username": "guest", "access_level": 10}),
            ),
            ("GET", "/projects/my-group%2Fmy-project/merge_requests") => {
                Reply::json(200, &json!([gitlab_mr(7, 15), gitlab_mr(8, 99)]))
            }
            _ => Reply::json(404, &json!({"message": "404 Not found"})),
        }
    });
    let gl = forge(ForgeKind::GitLab, &server, "my-group/my-project");
    assert_eq!(gl.kind(), ForgeKind::GitLab);

    let first = gl.upsert_comment(7, MARKER, "plan v1").expect("create");
    let again = gl.upsert_comment(7, MARKER, "plan v2").expect("update");
    assert_eq!(first, again, "the note is edited in place");
    let requests = server.take();
    requests.iter().for_each(check_gitlab);
    let lines: Vec<(String, String)> = requests
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    let notes_path = "/api/v4/projects/my-group%2Fmy-project/merge_requests/7/notes".to_owned();
    assert_eq!(
        lines,
        [
            ("GET".into(), "/api/v4/user".into()),
            ("GET".into(), notes_path.clone()),
            ("POST".into(), notes_path.clone()),
            ("GET".into(), notes_path.clone()),
            ("PUT".into(), format!("{notes_path}/{first}")),
        ]
    );
    assert_eq!(requests[1].query("per_page"), Some("100"));
    assert_eq!(requests[1].query("sort"), Some("asc"));
    assert_eq!(
        requests[4].json(),
        json!({"body": format!("{MARKER}\nplan v2")})
    );
    assert!(
        notes.lock().expect("not poisoned")[1]["body"]
            .as_str()
            .is_some_and(|b| b.ends_with("not ours")),
        "mallory's note is not touched"
    );

    for (state, expected) in [
        (StatusState::Pending, "pending"),
        (StatusState::Success, "success"),
        (StatusState::Error, "failed"),
    ] {
        gl.set_status(&CommitStatus {
            sha: SHA.into(),
            context: "slipway/plan".into(),
            state,
            description: "planned".into(),
            target_url: None,
        })
        .expect("status");
        let r = server.take().pop().expect("a request");
        check_gitlab(&r);
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            (
                "POST",
                format!("/api/v4/projects/my-group%2Fmy-project/statuses/{SHA}").as_str()
            )
        );
        assert_eq!(
            r.json(),
            json!({"state": expected, "name": "slipway/plan", "description": "planned"})
        );
    }

    let mr = gl.pull_request(7).expect("mr");
    assert_eq!(mr.info.number, 7);
    assert_eq!(mr.info.author, "admin");
    assert_eq!(mr.info.head_sha, "8888888888888888888888888888888888888888");
    assert_eq!(
        mr.info.head_repo_full_name.as_deref(),
        Some("my-group/my-project")
    );
    assert!(!mr.info.is_fork);
    assert_eq!((mr.mergeable, mr.state), (Some(true), PrState::Open));
    let fork = gl.pull_request(8).expect("fork mr");
    assert!(fork.info.is_fork);
    assert_eq!(
        fork.info.head_repo_full_name.as_deref(),
        Some("mallory/my-project"),
        "the fork's path is asked for"
    );

    assert_eq!(
        gl.approvals(7).expect("approvals"),
        [Approval {
            author: "reviewer".into(),
            commit_sha: None
        }],
        "an approval given before the last push counts for no head"
    );
    assert!(
        gl.has_write_access("dev").expect("developer"),
        "Developer (30) may push"
    );
    assert!(
        !gl.has_write_access("guest").expect("guest"),
        "Guest (10) may not"
    );
    assert!(
        !gl.has_write_access("nobody").expect("unknown"),
        "an unknown user may not"
    );

    let open = gl.open_pull_requests().expect("open");
    assert_eq!(open.iter().map(|p| p.number).collect::<Vec<_>>(), [7, 8]);
    assert_eq!(gl.pr_head_ref(7), "refs/merge-requests/7/head");

    let requests = server.take();
    requests.iter().for_each(check_gitlab);
    let list = requests
        .iter()
        .find(|r| r.path.ends_with("/merge_requests"))
        .expect("the list request");
    assert_eq!(list.query("state"), Some("opened"));
    let forks: Vec<_> = requests
        .iter()
        .filter(|r| r.path == "/api/v4/projects/99")
        .collect();
    assert_eq!(forks.len(), 1, "a fork's project is asked for once");
}

/// Asserts the headers every Gitea request carries.
fn check_gitea(req: &Recorded) {
    assert_eq!(
        req.header("Authorization"),
        Some(format!("token {TOKEN}").as_str()),
        "{}",
        req.line()
    );
    assert_eq!(req.header("User-Agent"), Some("slipway"), "{}", req.line());
    assert!(
        req.path.starts_with("/api/v1/repos/test/repo/") || req.path == "/api/v1/user",
        "{}",
        req.line()
    );
    assert!(!req.line().contains(TOKEN));
}

#[test]
fn gitea_adapter_calls() {
    let pr = util::fixture("gitea/pull_request_opened.json")["pull_request"].clone();
    let comments = Arc::new(Mutex::new(vec![json!({
        "id": 3, "body": format!("{MARKER}\nnot ours"), "user": {"id": 5, "login": "mallory", "username": "mallory"}
    })]));
    let state = Arc::clone(&comments);
    let server = Server::start(move |req| {
        let p = req.path.strip_prefix("/api/v1").unwrap_or(&req.path);
        let mut comments = state.lock().expect("not poisoned");
        match (req.method.as_str(), p) {
            ("GET", "/user") => Reply::json(
                200,
                &json!({"id": 9, "login": "slipway", "username": "slipway"}),
            ),
            ("GET", "/repos/test/repo/issues/12/comments") => {
                Reply::json(200, &Value::Array(comments.clone()))
            }
            ("POST", "/repos/test/repo/issues/12/comments") => {
                let c = json!({"id": 10 + comments.len(), "body": req.json()["body"], "user": {"id": 9, "login": "slipway"}});
                comments.push(c.clone());
                Reply::json(201, &c)
            }
            ("PATCH", path) if path.starts_with("/repos/test/repo/issues/comments/") => {
                let id: u64 = path
                    .rsplit('/')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("an id");
                let c = comments
                    .iter_mut()
                    .find(|c| c["id"] == id)
                    .expect("a comment");
                c["body"] = req.json()["body"].clone();
                Reply::json(200, c)
            }
            ("POST", path) if path.starts_with("/repos/test/repo/statuses/") => {
                Reply::json(201, &json!({"id": 1}))
            }
            ("GET", "/repos/test/repo/pulls/12") => Reply::json(200, &pr),
            ("GET", "/repos/test/repo/pulls/12/reviews") => Reply::json(
                200,
                &json!([
                    {"id": 1, "user": {"login": "user2"}, "state": "APPROVED", "commit_id": "2020558fe2e34debb818a514715839cabd25e778", "dismissed": false, "stale": false},
                    {"id": 2, "user": {"login": "user3"}, "state": "APPROVED", "commit_id": "2020558fe2e34debb818a514715839cabd25e778", "dismissed": true, "stale": false},
                    {"id": 3, "user": {"login": "user4"}, "state": "PENDING", "commit_id": "2020558fe2e34debb818a514715839cabd25e778", "dismissed": false, "stale": false}
                ]),
            ),
            ("GET", "/repos/test/repo/collaborators/user1/permission") => {
                Reply::json(200, &json!({"permission": "write", "role_name": "write"}))
            }
            ("GET", "/repos/test/repo/collaborators/user2/permission") => {
                Reply::json(200, &json!({"permission": "read", "role_name": "read"}))
            }
            ("GET", "/repos/test/repo/pulls") => Reply::json(200, &json!([pr])),
            _ => Reply::json(404, &json!({"message": "The target couldn't be found."})),
        }
    });
    let gt = forge(ForgeKind::Gitea, &server, "test/repo");
    assert_eq!(gt.kind(), ForgeKind::Gitea);

    let first = gt.upsert_comment(12, MARKER, "plan v1").expect("create");
    let again = gt.upsert_comment(12, MARKER, "plan v2").expect("update");
    assert_eq!(first, again);
    let requests = server.take();
    requests.iter().for_each(check_gitea);
    let lines: Vec<(&str, &str)> = requests
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    let patch = format!("/api/v1/repos/test/repo/issues/comments/{first}");
    assert_eq!(
        lines,
        [
            ("GET", "/api/v1/user"),
            ("GET", "/api/v1/repos/test/repo/issues/12/comments"),
            ("POST", "/api/v1/repos/test/repo/issues/12/comments"),
            ("GET", "/api/v1/repos/test/repo/issues/12/comments"),
            ("PATCH", patch.as_str()),
        ]
    );
    assert!(
        requests[1].query.is_empty(),
        "Gitea's comment list takes no page"
    );
    assert!(
        comments.lock().expect("not poisoned")[0]["body"]
            .as_str()
            .is_some_and(|b| b.ends_with("not ours"))
    );

    gt.set_status(&CommitStatus {
        sha: SHA.into(),
        context: "slipway/plan".into(),
        state: StatusState::Error,
        description: "render failed".into(),
        target_url: Some("http://127.0.0.1:7300/".into()),
    })
    .expect("status");
    let r = server.take().pop().expect("a request");
    check_gitea(&r);
    assert_eq!(r.path, format!("/api/v1/repos/test/repo/statuses/{SHA}"));
    assert_eq!(
        r.json(),
        json!({"state": "error", "context": "slipway/plan", "description": "render failed", "target_url": "http://127.0.0.1:7300/"})
    );

    let details = gt.pull_request(12).expect("pull request");
    assert_eq!(details.info.number, 12);
    assert_eq!(details.info.head_ref, "fix-bug");
    assert_eq!(
        (details.mergeable, details.state),
        (Some(true), PrState::Open)
    );
    assert_eq!(
        gt.approvals(12).expect("approvals"),
        [Approval {
            author: "user2".into(),
            commit_sha: Some("2020558fe2e34debb818a514715839cabd25e778".into())
        }],
        "dismissed and pending reviews are no approvals"
    );
    assert!(gt.has_write_access("user1").expect("writer"));
    assert!(!gt.has_write_access("user2").expect("reader"));
    assert!(!gt.has_write_access("stranger").expect("404 is no access"));
    assert_eq!(gt.open_pull_requests().expect("open").len(), 1);
    assert_eq!(gt.pr_head_ref(12), "refs/pull/12/head");

    let requests = server.take();
    requests.iter().for_each(check_gitea);
    let reviews = requests
        .iter()
        .find(|r| r.path.ends_with("/reviews"))
        .expect("reviews");
    assert_eq!(
        (reviews.query("limit"), reviews.query("page")),
        (Some("50"), Some("1"))
    );
    let list = requests
        .iter()
        .find(|r| r.path == "/api/v1/repos/test/repo/pulls")
        .expect("list");
    assert_eq!(list.query("state"), Some("open"));
}

#[test]
fn the_openapi_checker_refuses_what_github_would_refuse() {
    // The adapter tests above are only as good as this checker: show that it bites.
    let req = |method: &str, path: &str, query: &[(&str, &str)], body: &str| Recorded {
        method: method.into(),
        path: path.into(),
        query: query
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        headers: Vec::new(),
        body: body.into(),
    };
    let api = OpenApi::github();
    let statuses = format!("/repos/o/r/statuses/{SHA}");
    for (what, bad) in [
        (
            "an enum value GitHub does not know",
            req("POST", &statuses, &[], r#"{"state":"bogus"}"#),
        ),
        (
            "a missing required field",
            req("POST", &statuses, &[], r#"{"context":"x"}"#),
        ),
        (
            "a field of the wrong type",
            req("POST", &statuses, &[], r#"{"state":"success","context":1}"#),
        ),
        (
            "an unknown body field",
            req(
                "POST",
                "/repos/o/r/issues/1/comments",
                &[],
                r#"{"body":"x","extra":1}"#,
            ),
        ),
        (
            "a method the path lacks",
            req(
                "PUT",
                "/repos/o/r/issues/comments/1",
                &[],
                r#"{"body":"x"}"#,
            ),
        ),
        (
            "a path GitHub lacks",
            req("GET", "/repos/o/r/pulls/1/reviewz", &[], ""),
        ),
        (
            "an unknown query parameter",
            req("GET", "/repos/o/r/pulls", &[("perpage", "100")], ""),
        ),
        (
            "a body on a GET",
            req("GET", "/repos/o/r/pulls/1", &[], r#"{"x":1}"#),
        ),
    ] {
        assert!(
            api.check(&bad).is_err(),
            "the checker refuses {what}: {}",
            bad.line()
        );
    }
    let good = req(
        "GET",
        "/repos/o/r/pulls",
        &[("per_page", "100"), ("state", "open"), ("page", "2")],
        "",
    );
    assert_eq!(api.check(&good), Ok("pulls/list".to_owned()));
}
