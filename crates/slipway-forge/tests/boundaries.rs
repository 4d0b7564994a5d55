//! What the forge crate does at the edges of the one repository it serves: webhooks about
//! other repositories (organisation and group hooks deliver every repository's events under one
//! secret) are not acted on, the token never follows a redirect to another address, and the
//! server's private paths never reach a comment or a status.

mod util;

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use slipway_forge::{
    CommitStatus, Delivery, ExpectedRepository, ForgeConfig, ForgeError, ForgeEvent, ForgeKind,
    RepositoryRef, StatusState, WebhookVerifier, connect, payload_repository, sign,
};
use util::{Recorded, Reply, Server};

const SECRET: &str = "It's a Secret to Everybody";
const TOKEN: &str = "glpat-TESTTOKEN0123456789";
const SHA: &str = "6dcb09b5b57875f334f61aebed695e2e4193db5e";

fn headers(kind: ForgeKind, event: &str, body: &[u8]) -> Vec<(String, String)> {
    match kind {
        ForgeKind::GitHub => vec![
            ("X-GitHub-Event".into(), event.into()),
            ("X-GitHub-Delivery".into(), "d-1".into()),
            (
                "X-Hub-Signature-256".into(),
                format!("sha256={}", sign(SECRET.as_bytes(), body)),
            ),
        ],
        ForgeKind::GitLab => vec![
            ("X-Gitlab-Event".into(), event.into()),
            ("X-Gitlab-Token".into(), SECRET.into()),
            ("X-Gitlab-Event-UUID".into(), "d-1".into()),
        ],
        ForgeKind::Gitea => vec![
            ("X-Gitea-Event".into(), event.into()),
            ("X-Gitea-Delivery".into(), "d-1".into()),
            ("X-Gitea-Signature".into(), sign(SECRET.as_bytes(), body)),
        ],
    }
}

/// `payload` as delivered to a controller configured for `repository`.
fn deliver(kind: ForgeKind, repository: &str, event: &str, payload: &Value) -> Delivery {
    let mut config = ForgeConfig::new(kind, repository, TOKEN);
    config.webhook_secret = SECRET.into();
    let body = serde_json::to_vec(payload).expect("serialize");
    config
        .webhook_verifier()
        .verify_and_parse(&headers(kind, event, &body), &body)
        .unwrap_or_else(|e| panic!("{kind} {event}: {e}"))
}

fn acted_on(d: &Delivery) -> bool {
    !matches!(d.event, ForgeEvent::Ignored { .. } | ForgeEvent::Ping)
}

/// Every GitHub example of the events Slipway acts on, from `@octokit/webhooks-examples`.
fn github_examples() -> Vec<(String, Value)> {
    let index = util::fixtures_dir().join("webhooks-examples/api.github.com/index.json");
    let index = util::read_json(&index);
    let mut out = Vec::new();
    for entry in index.as_array().expect("index.json is a list") {
        let name = entry["name"].as_str().unwrap_or_default();
        if ![
            "push",
            "pull_request",
            "pull_request_review",
            "issue_comment",
        ]
        .contains(&name)
        {
            continue;
        }
        for example in entry["examples"].as_array().expect("examples") {
            out.push((name.to_owned(), example.clone()));
        }
    }
    out
}

#[test]
fn github_events_are_acted_on_only_for_the_configured_repository_in_any_case() {
    let mut acted = 0;
    for (event, example) in github_examples() {
        let own = example["repository"]["full_name"]
            .as_str()
            .expect("every example names its repository")
            .to_owned();
        let ours = deliver(ForgeKind::GitHub, &own.to_uppercase(), &event, &example);
        if !acted_on(&ours) {
            // An edited comment and the like: ignored whatever the repository.
            continue;
        }
        acted += 1;
        assert_eq!(ours.other_repository, None, "{event} about {own}");
        let theirs = deliver(ForgeKind::GitHub, "acme/shop", &event, &example);
        assert!(
            !acted_on(&theirs),
            "a {event} about {own} is not acted on by a controller of acme/shop: {:?}",
            theirs.event
        );
        assert!(
            matches!(&theirs.event, ForgeEvent::Ignored { kind } if kind.ends_with(".other_repository")),
            "{:?}",
            theirs.event
        );
        assert!(
            theirs
                .other_repository
                .as_deref()
                .is_some_and(|r| r.contains(&own)),
            "the delivery names the repository it was about: {:?}",
            theirs.other_repository
        );
    }
    assert!(acted > 10, "only {acted} GitHub examples were acted on");
}

fn fixture(path: &str) -> Value {
    util::read_json(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(path),
    )
}

#[test]
fn gitlab_events_match_the_project_by_path_or_numeric_id() {
    for (file, event) in [
        ("gitlab/merge_request_open.json", "Merge Request Hook"),
        ("gitlab/note_merge_request.json", "Note Hook"),
        ("gitlab/push.json", "Push Hook"),
    ] {
        let payload = fixture(file);
        let path = payload["project"]["path_with_namespace"]
            .as_str()
            .expect("a project path")
            .to_owned();
        let id = payload["project"]["id"].as_u64().expect("a project id");
        for ours in [path.clone(), path.to_uppercase(), id.to_string()] {
            let d = deliver(ForgeKind::GitLab, &ours, event, &payload);
            assert!(acted_on(&d), "{file} is about {ours}: {:?}", d.event);
        }
        for theirs in ["acme/shop".to_owned(), (id + 1).to_string()] {
            let d = deliver(ForgeKind::GitLab, &theirs, event, &payload);
            assert!(
                !acted_on(&d) && d.other_repository.is_some(),
                "{file} ({path}, id {id}) is not about {theirs}: {:?}",
                d.event
            );
        }
    }
}

#[test]
fn gitea_events_match_the_repository_full_name() {
    for (file, event) in [
        ("gitea/pull_request_opened.json", "pull_request"),
        ("gitea/issue_comment_pull.json", "issue_comment"),
        (
            "gitea/pull_request_review_approved.json",
            "pull_request_approved",
        ),
        ("gitea/push.json", "push"),
        ("gitea/delete_branch.json", "delete"),
    ] {
        let payload = fixture(file);
        let own = payload["repository"]["full_name"]
            .as_str()
            .expect("a repository")
            .to_owned();
        let d = deliver(ForgeKind::Gitea, &own.to_uppercase(), event, &payload);
        assert!(acted_on(&d), "{file} is about {own}: {:?}", d.event);
        let d = deliver(ForgeKind::Gitea, "acme/shop", event, &payload);
        assert!(
            !acted_on(&d) && d.other_repository.is_some(),
            "{file} ({own}) is not about acme/shop: {:?}",
            d.event
        );
    }
}

#[test]
fn a_payload_that_names_no_repository_is_not_acted_on() {
    let mut payload = fixture("gitea/pull_request_opened.json");
    payload
        .as_object_mut()
        .expect("an object")
        .remove("repository");
    let d = deliver(ForgeKind::Gitea, "test/repo", "pull_request", &payload);
    assert!(!acted_on(&d), "{:?}", d.event);
    assert_eq!(d.other_repository.as_deref(), Some("(no repository)"));
    // Without a configured repository (the crate's own verifier), nothing is filtered.
    let body = serde_json::to_vec(&payload).expect("serialize");
    let d = WebhookVerifier::new(ForgeKind::Gitea, SECRET)
        .verify_and_parse(&headers(ForgeKind::Gitea, "pull_request", &body), &body)
        .expect("verified");
    assert!(acted_on(&d));
}

#[test]
fn known_ids_decide_over_names() {
    let renamed = RepositoryRef {
        full_name: Some("acme/new-name".into()),
        id: Some(7),
    };
    let squatter = RepositoryRef {
        full_name: Some("acme/shop".into()),
        id: Some(8),
    };
    let by_id = ExpectedRepository {
        name: "acme/shop".into(),
        id: Some(7),
    };
    assert!(
        by_id.matches(Some(&renamed)),
        "a renamed repository keeps its id"
    );
    assert!(
        !by_id.matches(Some(&squatter)),
        "another repository under the old name is not ours"
    );
    let by_name = ExpectedRepository::new("Acme/Shop");
    assert!(by_name.matches(Some(&squatter)));
    assert!(!by_name.matches(Some(&renamed)));
    assert!(!by_name.matches(None));
    let numeric = ExpectedRepository::new("7");
    assert!(numeric.matches(Some(&renamed)));
    assert!(
        !numeric.matches(Some(&RepositoryRef {
            full_name: Some("7".into()),
            id: None,
        })),
        "a numeric id is compared with ids only"
    );
    assert_eq!(
        payload_repository(ForgeKind::GitLab, br#"{"project_id": 12}"#),
        Some(RepositoryRef {
            full_name: None,
            id: Some(12)
        })
    );
    assert_eq!(payload_repository(ForgeKind::GitHub, b"not json"), None);
}

/// A server that records every request and whose headers the test can read.
fn recording_server(
    respond: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
) -> (Server, Arc<Mutex<Vec<Recorded>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let server = Server::start(move |r| {
        log.lock().expect("not poisoned").push(r.clone());
        respond(r)
    });
    (server, seen)
}

fn api_url(kind: ForgeKind, base: &str) -> String {
    match kind {
        ForgeKind::GitHub => base.to_owned(),
        ForgeKind::GitLab => format!("{base}/api/v4"),
        ForgeKind::Gitea => format!("{base}/api/v1"),
    }
}

#[test]
fn no_adapter_sends_its_token_where_a_redirect_points() {
    for kind in ForgeKind::ALL {
        for status in [301, 302, 307, 308] {
            let (elsewhere, seen_elsewhere) =
                recording_server(|_| Reply::json(200, &json!({"ok": true})));
            let target = format!("{}/collect", elsewhere.url());
            let (forge_server, _) = recording_server(move |_| {
                Reply::json(status, &json!({})).with_header("Location", &target)
            });
            let mut config = ForgeConfig::new(kind, "acme/shop", TOKEN);
            config.api_url = Some(api_url(kind, &forge_server.url()));
            config.bot_login = Some("slipway-bot".into());
            let forge = connect(config).expect("valid");
            let calls: Vec<(&str, Result<(), ForgeError>)> = vec![
                ("pull_request", forge.pull_request(1).map(drop)),
                ("post_comment", forge.post_comment(1, "hello").map(drop)),
                (
                    "set_status",
                    forge.set_status(&CommitStatus {
                        sha: SHA.into(),
                        context: "slipway/plan".into(),
                        state: StatusState::Pending,
                        description: "planning".into(),
                        target_url: None,
                    }),
                ),
                ("open_pull_requests", forge.open_pull_requests().map(drop)),
            ];
            for (what, result) in calls {
                let err = result.expect_err("a redirect is an error");
                assert!(
                    matches!(err, ForgeError::Redirected { status: s, .. } if s == status),
                    "{kind} {what} {status}: {err}"
                );
                let text = err.to_string();
                assert!(
                    text.contains(&elsewhere.url()) && text.contains("api_url"),
                    "the error names where it pointed and what to set: {text}"
                );
                assert!(!text.contains(TOKEN), "{text}");
            }
            let seen = seen_elsewhere.lock().expect("not poisoned");
            assert!(
                seen.is_empty(),
                "{kind}: the other server got no request at all (so no token): {:?}",
                seen.iter().map(Recorded::line).collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn a_next_link_to_another_host_is_never_followed() {
    for kind in ForgeKind::ALL {
        let (elsewhere, seen_elsewhere) = recording_server(|_| Reply::json(200, &json!([])));
        let next = format!("<{}/steal?page=2>; rel=\"next\"", elsewhere.url());
        let (forge_server, seen) = recording_server(move |r| {
            let page: u32 = r.query("page").and_then(|p| p.parse().ok()).unwrap_or(1);
            let reply = Reply::json(200, &json!([]));
            if page == 1 {
                reply.with_header("Link", &next)
            } else {
                reply
            }
        });
        let mut config = ForgeConfig::new(kind, "acme/shop", TOKEN);
        config.api_url = Some(api_url(kind, &forge_server.url()));
        let forge = connect(config).expect("valid");
        forge.open_pull_requests().expect("two empty pages");
        assert!(
            seen_elsewhere.lock().expect("not poisoned").is_empty(),
            "{kind}: the `next` link's host got nothing"
        );
        let pages = seen.lock().expect("not poisoned").len();
        assert_eq!(pages, 2, "{kind}: page 2 was asked of the configured API");
    }
}

#[test]
fn private_paths_never_reach_a_comment_or_a_status() {
    const REPO: &str = "file:///srv/git/shop.git";
    const HOME: &str = "/var/lib/slipway";
    for kind in ForgeKind::ALL {
        let (server, seen) = recording_server(move |r| match r.method.as_str() {
            "GET" => Reply::json(200, &json!([])),
            _ => Reply::json(
                201,
                &json!({"id": 5, "body": "x", "user": {"login": "slipway-bot"}, "author": {"username": "slipway-bot"}}),
            ),
        });
        let mut config = ForgeConfig::new(kind, "acme/shop", TOKEN);
        config.api_url = Some(api_url(kind, &server.url()));
        config.bot_login = Some("slipway-bot".into());
        config.private_texts = vec![
            (REPO.into(), "[repository]".into()),
            (HOME.into(), "[home]".into()),
        ];
        let forge = connect(config).expect("valid");
        let error = "git fetch failed: fatal: '/srv/git/shop.git' does not appear to be a git \
                     repository; see /var/lib/slipway/repos/1f2e/FETCH_HEAD";
        forge.post_comment(1, error).expect("posted");
        forge
            .upsert_comment(
                1,
                "<!-- slipway:plan -->",
                &format!("| `prod` | ❌ {error} |"),
            )
            .expect("upserted");
        // Cut short by the caller, in the middle of the path.
        let cut: String = format!("cannot fetch {REPO}").chars().take(25).collect();
        forge
            .set_status(&CommitStatus {
                sha: SHA.into(),
                context: "slipway/plan".into(),
                state: StatusState::Error,
                description: cut,
                target_url: None,
            })
            .expect("status set");
        let sent: Vec<String> = seen
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|r| r.method != "GET")
            .map(|r| r.body.clone())
            .collect();
        assert_eq!(sent.len(), 3, "{kind}: {sent:?}");
        for body in &sent {
            for private in ["/srv/git", "/var/lib/slipway", "file://", "/srv/gi"] {
                assert!(
                    !body.contains(private),
                    "{kind}: {private} does not reach the forge: {body}"
                );
            }
        }
        assert!(
            sent[0].contains("[repository]") && sent[0].contains("[home]/repos/1f2e"),
            "{kind}: the message still says what happened: {}",
            sent[0]
        );
    }
}

#[test]
fn a_gitlab_project_may_be_configured_by_its_numeric_id() {
    let (server, seen) = recording_server(|r| match r.path.as_str() {
        "/api/v4/projects/42/merge_requests/1" => Reply::json(
            200,
            &json!({
                "iid": 1, "title": "Change 1", "author": {"username": "alice"}, "sha": SHA,
                "source_branch": "feature-1", "target_branch": "main",
                "source_project_id": 42, "target_project_id": 42,
                "web_url": "https://gitlab.example.com/acme/shop/-/merge_requests/1",
                "state": "opened"
            }),
        ),
        "/api/v4/projects/42" => {
            Reply::json(200, &json!({"id": 42, "path_with_namespace": "acme/shop"}))
        }
        _ => Reply::json(404, &json!({"message": "404 Not Found"})),
    });
    let mut config = ForgeConfig::new(ForgeKind::GitLab, "42", TOKEN);
    config.api_url = Some(api_url(ForgeKind::GitLab, &server.url()));
    let forge = connect(config).expect("a numeric GitLab project id is a repository");
    for _ in 0..2 {
        let pr = forge.pull_request(1).expect("read");
        assert_eq!(pr.info.base_repo_full_name, "acme/shop");
        assert_eq!(pr.info.head_repo_full_name.as_deref(), Some("acme/shop"));
        assert!(!pr.info.is_fork);
    }
    let asked: Vec<String> = seen
        .lock()
        .expect("not poisoned")
        .iter()
        .map(Recorded::line)
        .collect();
    assert_eq!(
        asked.iter().filter(|l| l.ends_with("/projects/42")).count(),
        1,
        "the project's path is asked once: {asked:?}"
    );
    // GitHub and Gitea name repositories by owner/name only.
    for kind in [ForgeKind::GitHub, ForgeKind::Gitea] {
        let mut config = ForgeConfig::new(kind, "42", TOKEN);
        config.api_url = Some("http://127.0.0.1:1".into());
        assert!(connect(config).is_err(), "{kind}: 42 is no repository");
    }
}

#[test]
fn a_configured_repository_id_survives_a_rename_and_refuses_a_namesake() {
    let (event, example) = github_examples()
        .into_iter()
        .find(|(e, x)| e == "pull_request" && x["action"] == "opened")
        .expect("an opened example");
    let name = example["repository"]["full_name"]
        .as_str()
        .expect("a name")
        .to_owned();
    let id = example["repository"]["id"].as_u64().expect("an id");
    let deliver_to = |repository: &str, repository_id: u64| {
        let mut config = ForgeConfig::new(ForgeKind::GitHub, repository, TOKEN);
        config.webhook_secret = SECRET.into();
        config.repository_id = Some(repository_id);
        let body = serde_json::to_vec(&example).expect("serialize");
        config
            .webhook_verifier()
            .verify_and_parse(&headers(ForgeKind::GitHub, &event, &body), &body)
            .expect("verified")
    };
    assert!(
        acted_on(&deliver_to("acme/old-name", id)),
        "the repository was renamed to {name}: its id still matches"
    );
    assert!(
        !acted_on(&deliver_to(&name, id + 1)),
        "{name} under another id is another repository"
    );
}
