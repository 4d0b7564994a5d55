//! Webhook verification and parsing against the forges' own example payloads: every GitHub
//! example of `@octokit/webhooks-examples` for the events Slipway reads, and the GitLab and
//! Gitea payloads of `tests/fixtures`.

mod util;

use serde_json::{Value, json};
use slipway_forge::{
    Delivery, ForgeEvent, ForgeKind, PrAction, PullRequestInfo, ReviewState, WebhookError,
    WebhookVerifier, parse_payload, sign, verify_and_parse,
};

const SECRET: &[u8] = b"It's a Secret to Everybody";

fn github_headers(event: &str, body: &[u8], delivery: &str) -> Vec<(String, String)> {
    vec![
        ("X-GitHub-Event".into(), event.into()),
        ("X-GitHub-Delivery".into(), delivery.into()),
        (
            "X-Hub-Signature-256".into(),
            format!("sha256={}", sign(SECRET, body)),
        ),
        ("Content-Type".into(), "application/json".into()),
    ]
}

fn gitea_headers(event: &str, body: &[u8]) -> Vec<(String, String)> {
    vec![
        ("X-Gitea-Event".into(), event.into()),
        (
            "X-Gitea-Delivery".into(),
            "f6266f16-1bf3-46a5-9ea4-602e06ead473".into(),
        ),
        ("X-Gitea-Signature".into(), sign(SECRET, body)),
    ]
}

fn gitlab_headers(event: &str) -> Vec<(String, String)> {
    vec![
        ("X-Gitlab-Event".into(), event.into()),
        (
            "X-Gitlab-Token".into(),
            String::from_utf8(SECRET.to_vec()).expect("utf-8"),
        ),
        (
            "X-Gitlab-Event-UUID".into(),
            "13792a34-cac6-4fda-95a8-c58e00a3954e".into(),
        ),
    ]
}

fn github(event: &str, payload: &Value) -> Result<Delivery, WebhookError> {
    let body = serde_json::to_vec(payload).expect("serialize");
    let headers = github_headers(event, &body, "72d3162e-cc78-11e3-81ab-4c9367dc0958");
    verify_and_parse(ForgeKind::GitHub, &headers, &body, SECRET)
}

fn gitlab(event: &str, payload: &Value) -> Result<Delivery, WebhookError> {
    let body = serde_json::to_vec(payload).expect("serialize");
    verify_and_parse(ForgeKind::GitLab, &gitlab_headers(event), &body, SECRET)
}

fn gitea(event: &str, payload: &Value) -> Result<Delivery, WebhookError> {
    let body = serde_json::to_vec(payload).expect("serialize");
    verify_and_parse(
        ForgeKind::Gitea,
        &gitea_headers(event, &body),
        &body,
        SECRET,
    )
}

fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("{v} is a string"))
        .to_owned()
}

/// Every example payload of one event, from every GitHub flavour in the package
/// (`api.github.com`, `ghes-3.x`).
fn github_examples(event: &str) -> Vec<(String, Value)> {
    let root = util::fixtures_dir().join("webhooks-examples");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("list webhooks-examples")
        .map(|e| e.expect("dir entry").path())
        .collect();
    dirs.sort();
    let mut out = Vec::new();
    for dir in dirs {
        let index = util::read_json(&dir.join("index.json"));
        let flavour = dir
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        for entry in index.as_array().expect("index.json is a list") {
            if entry["name"] == event {
                for (i, example) in entry["examples"]
                    .as_array()
                    .expect("examples")
                    .iter()
                    .enumerate()
                {
                    out.push((format!("{flavour} {event} #{i}"), example.clone()));
                }
            }
        }
    }
    out
}

/// What the payload's `pull_request` object says, computed from the JSON independently of the
/// crate's parser.
fn expected_pr(pr: &Value) -> PullRequestInfo {
    let head_repo = &pr["head"]["repo"];
    let base_repo = &pr["base"]["repo"];
    PullRequestInfo {
        number: pr["number"].as_u64().expect("number"),
        title: s(&pr["title"]),
        author: s(&pr["user"]["login"]),
        head_sha: s(&pr["head"]["sha"]),
        head_ref: s(&pr["head"]["ref"]),
        base_ref: s(&pr["base"]["ref"]),
        head_repo_full_name: head_repo.get("full_name").map(s),
        base_repo_full_name: s(&base_repo["full_name"]),
        is_fork: head_repo.is_null() || head_repo["id"] != base_repo["id"],
        url: s(&pr["html_url"]),
        labels: {
            let mut names: Vec<String> = pr["labels"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| s(&l["name"]))
                .collect();
            names.sort();
            names.dedup();
            names
        },
    }
}

#[test]
fn every_github_pull_request_example_is_verified_and_parsed() {
    let examples = github_examples("pull_request");
    assert!(
        examples.len() >= 29,
        "the package has at least 29 pull_request examples, found {}",
        examples.len()
    );
    let labelled = examples
        .iter()
        .filter(|(_, e)| {
            e["pull_request"]["labels"]
                .as_array()
                .is_some_and(|l| !l.is_empty())
        })
        .count();
    assert!(
        labelled >= 1,
        "some examples carry labels, so that reading them is tested"
    );
    for (name, example) in examples {
        let delivery = github("pull_request", &example).unwrap_or_else(|e| panic!("{name}: {e}"));
        let action = s(&example["action"]);
        let merged = example["pull_request"]["merged"] == true;
        let expected_action = match action.as_str() {
            "opened" => PrAction::Opened,
            "synchronize" => PrAction::Synchronized,
            "reopened" => PrAction::Reopened,
            "closed" if merged => PrAction::Merged,
            "closed" => PrAction::Closed,
            other => PrAction::Other(other.to_owned()),
        };
        assert_eq!(
            delivery.event,
            ForgeEvent::PullRequest {
                action: expected_action,
                pr: expected_pr(&example["pull_request"]),
                sender: Some(s(&example["sender"]["login"])),
            },
            "{name}"
        );
        assert_eq!(
            delivery.id, "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "{name}: the delivery id is GitHub's"
        );
    }
}

#[test]
fn hostile_labels_are_refused_with_the_pull_request_named() {
    let (_, example) = github_examples("pull_request")
        .into_iter()
        .find(|(_, e)| e["action"] == "labeled")
        .expect("a labeled example");
    let with_labels = |labels: Value| {
        let mut e = example.clone();
        e["pull_request"]["labels"] = labels;
        github("pull_request", &e)
    };
    // Duplicates and order do not matter: a set of names.
    let ForgeEvent::PullRequest { pr, .. } = with_labels(json!([
        {"name": "preview"}, {"name": "approved"}, {"name": "preview"}
    ]))
    .expect("labels parse")
    .event
    else {
        panic!("a pull_request event");
    };
    assert_eq!(pr.labels, ["approved", "preview"]);
    // `null` (some Gitea objects) is no label.
    let ForgeEvent::PullRequest { pr, .. } = with_labels(Value::Null).expect("null").event else {
        panic!("a pull_request event");
    };
    assert!(pr.labels.is_empty());
    for (labels, why) in [
        (json!([{"name": "ok\nforged"}]), "control character"),
        (json!([{"name": ""}]), "empty"),
        (json!([{"name": "x".repeat(101)}]), "too long"),
        (
            json!(
                (0..101)
                    .map(|i| json!({"name": format!("l{i}")}))
                    .collect::<Vec<_>>()
            ),
            "too many",
        ),
    ] {
        let error = with_labels(labels).expect_err(why).to_string();
        assert!(
            error.contains("pull request") && error.contains("label"),
            "{why}: the error names the pull request and its labels: {error}"
        );
    }
    // A label object without a name is malformed, not a label named "".
    assert!(with_labels(json!([{"color": "fff"}])).is_err());
}

#[test]
fn github_forks_merges_and_deleted_forks_are_told_apart() {
    let (_, example) = github_examples("pull_request")
        .into_iter()
        .find(|(_, e)| e["action"] == "closed")
        .expect("a closed example");

    let mut merged = example.clone();
    merged["pull_request"]["merged"] = json!(true);
    let ForgeEvent::PullRequest { action, .. } =
        github("pull_request", &merged).expect("merged").event
    else {
        panic!("a pull_request event");
    };
    assert_eq!(
        action,
        PrAction::Merged,
        "closed with merged: true is a merge"
    );

    let mut fork = example.clone();
    fork["pull_request"]["head"]["repo"]["id"] = json!(999_999);
    fork["pull_request"]["head"]["repo"]["full_name"] = json!("mallory/Hello-World");
    let ForgeEvent::PullRequest { pr, .. } = github("pull_request", &fork).expect("fork").event
    else {
        panic!("a pull_request event");
    };
    assert!(pr.is_fork, "a head repo other than the base is a fork");
    assert_eq!(
        pr.head_repo_full_name.as_deref(),
        Some("mallory/Hello-World")
    );

    let mut gone = example.clone();
    gone["pull_request"]["head"]["repo"] = Value::Null;
    let ForgeEvent::PullRequest { pr, .. } =
        github("pull_request", &gone).expect("deleted fork").event
    else {
        panic!("a pull_request event");
    };
    assert!(pr.is_fork, "a deleted head repository counts as a fork");
    assert_eq!(pr.head_repo_full_name, None);
}

#[test]
fn github_payloads_with_hostile_names_are_malformed() {
    let (_, example) = github_examples("pull_request")
        .into_iter()
        .next()
        .expect("an example");
    for (pointer, value) in [
        (
            "/pull_request/head/ref",
            json!("--upload-pack=touch /tmp/pwned"),
        ),
        ("/pull_request/head/ref", json!("a..b")),
        ("/pull_request/head/sha", json!("-c core.sshCommand=evil")),
        ("/pull_request/user/login", json!("evil\nlogin")),
    ] {
        let mut bad = example.clone();
        *bad.pointer_mut(pointer).expect("the field exists") = value.clone();
        let err = github("pull_request", &bad).expect_err(pointer);
        assert!(
            matches!(err, WebhookError::Malformed(_)),
            "{pointer} = {value}: {err}"
        );
    }
}

#[test]
fn every_github_push_example_is_verified_and_parsed() {
    let examples = github_examples("push");
    assert!(
        examples.len() >= 7,
        "the package has at least 7 push examples"
    );
    let mut deletions = 0;
    for (name, example) in examples {
        let delivery = github("push", &example).unwrap_or_else(|e| panic!("{name}: {e}"));
        let git_ref = s(&example["ref"]);
        let deleted = example["deleted"] == true;
        deletions += usize::from(deleted);
        assert_eq!(
            delivery.event,
            ForgeEvent::Push {
                branch: git_ref.strip_prefix("refs/heads/").map(str::to_owned),
                git_ref,
                before: s(&example["before"]),
                after: s(&example["after"]),
                deleted,
                pusher: Some(s(&example["sender"]["login"])),
            },
            "{name}"
        );
    }
    assert!(
        deletions > 0,
        "the examples include deletions, and they are reported as such"
    );

    // A deleted branch (the examples delete only tags).
    let (_, mut branch) = github_examples("push")
        .into_iter()
        .find(|(_, e)| e["deleted"] == true)
        .expect("a deletion example");
    branch["ref"] = json!("refs/heads/feature/login");
    let event = github("push", &branch).expect("branch deletion").event;
    assert!(
        matches!(&event, ForgeEvent::Push { branch: Some(b), deleted: true, .. } if b == "feature/login"),
        "a deleted branch is a push with deleted: true and its branch name: {event:?}"
    );
}

#[test]
fn every_github_issue_comment_example_is_verified_and_parsed() {
    let examples = github_examples("issue_comment");
    assert!(examples.len() >= 9);
    for (name, example) in examples {
        let event = github("issue_comment", &example)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .event;
        let action = s(&example["action"]);
        let expected = if action == "created" {
            ForgeEvent::Comment {
                pr_number: example["issue"]["number"].as_u64().expect("number"),
                comment_id: example["comment"]["id"].as_u64().expect("id"),
                author: s(&example["comment"]["user"]["login"]),
                body: s(&example["comment"]["body"]),
                is_pull_request: example["issue"].get("pull_request").is_some(),
                // RFC 3339 in GitHub's examples, e.g. `2019-05-15T15:20:33Z`.
                created_at: Some(
                    s(&example["comment"]["created_at"])
                        .parse::<jiff::Timestamp>()
                        .expect("an RFC 3339 time")
                        .as_millisecond(),
                ),
            }
        } else {
            ForgeEvent::Ignored {
                kind: format!("issue_comment.{action}"),
            }
        };
        assert_eq!(event, expected, "{name}: only new comments are commands");
    }

    let (_, mut on_pr) = github_examples("issue_comment")
        .into_iter()
        .find(|(_, e)| e["action"] == "created")
        .expect("a created example");
    on_pr["issue"]["pull_request"] =
        json!({"url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/1"});
    on_pr["comment"]["body"] = json!("/slipway plan staging");
    let event = github("issue_comment", &on_pr)
        .expect("comment on a PR")
        .event;
    assert!(
        matches!(&event, ForgeEvent::Comment { is_pull_request: true, body, .. } if body == "/slipway plan staging"),
        "{event:?}"
    );
}

#[test]
fn every_github_pull_request_review_example_is_verified_and_parsed() {
    let examples = github_examples("pull_request_review");
    assert!(examples.len() >= 4);
    for (name, example) in examples {
        let event = github("pull_request_review", &example)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .event;
        let state = match s(&example["review"]["state"]).as_str() {
            "approved" => ReviewState::Approved,
            "changes_requested" => ReviewState::ChangesRequested,
            "commented" => ReviewState::Commented,
            "dismissed" => ReviewState::Dismissed,
            other => panic!("{name}: unexpected state {other}"),
        };
        assert_eq!(
            event,
            ForgeEvent::Review {
                pr_number: example["pull_request"]["number"].as_u64().expect("number"),
                state,
                author: s(&example["review"]["user"]["login"]),
            },
            "{name}"
        );
    }
    let (_, mut approved) = github_examples("pull_request_review")
        .into_iter()
        .next()
        .expect("an example");
    approved["review"]["state"] = json!("approved");
    let event = github("pull_request_review", &approved)
        .expect("approval")
        .event;
    assert!(
        matches!(
            event,
            ForgeEvent::Review {
                state: ReviewState::Approved,
                ..
            }
        ),
        "{event:?}"
    );
}

#[test]
fn github_pings_are_acknowledged_and_other_events_ignored() {
    for (name, example) in github_examples("ping") {
        assert_eq!(
            github("ping", &example).expect("ping").event,
            ForgeEvent::Ping,
            "{name}"
        );
    }
    for (name, example) in github_examples("issues").into_iter().take(3) {
        assert_eq!(
            github("issues", &example).expect("issues").event,
            ForgeEvent::Ignored {
                kind: "issues".into()
            },
            "{name}"
        );
    }
    let event = github("some_future_event", &json!({"anything": [1, 2, 3]}))
        .expect("unknown event")
        .event;
    assert_eq!(
        event,
        ForgeEvent::Ignored {
            kind: "some_future_event".into()
        }
    );
}

#[test]
fn a_changed_byte_a_wrong_secret_or_no_signature_is_refused_for_every_github_example() {
    let mut checked = 0;
    for event in [
        "pull_request",
        "push",
        "issue_comment",
        "pull_request_review",
    ] {
        for (name, example) in github_examples(event) {
            let body = serde_json::to_vec(&example).expect("serialize");
            let headers = github_headers(event, &body, "d1");
            let mut tampered = body.clone();
            let last = tampered.len() - 2;
            tampered[last] ^= 0x01;
            assert_eq!(
                verify_and_parse(ForgeKind::GitHub, &headers, &tampered, SECRET),
                Err(WebhookError::BadSignature {
                    header: "X-Hub-Signature-256"
                }),
                "{name}: a changed body fails verification"
            );
            assert_eq!(
                verify_and_parse(ForgeKind::GitHub, &headers, &body, b"another secret"),
                Err(WebhookError::BadSignature {
                    header: "X-Hub-Signature-256"
                }),
                "{name}: another secret fails verification"
            );
            let unsigned: Vec<_> = headers
                .iter()
                .filter(|(k, _)| k != "X-Hub-Signature-256")
                .cloned()
                .collect();
            assert_eq!(
                verify_and_parse(ForgeKind::GitHub, &unsigned, &body, SECRET),
                Err(WebhookError::MissingSignature {
                    header: "X-Hub-Signature-256"
                }),
                "{name}: an unsigned delivery is refused"
            );
            checked += 1;
        }
    }
    assert!(checked >= 49, "all examples were checked ({checked})");
}

#[test]
fn signatures_of_the_wrong_form_are_refused() {
    let body = br#"{"zen":"Keep it logically awesome."}"#;
    for signature in [
        format!("sha1={}", sign(SECRET, body)),
        sign(SECRET, body),
        "sha256=".to_owned(),
        "sha256=zzzz".to_owned(),
        format!("sha256={}", &sign(SECRET, body)[..62]),
    ] {
        let headers = [
            ("X-GitHub-Event", "ping"),
            ("X-Hub-Signature-256", signature.as_str()),
        ];
        assert_eq!(
            verify_and_parse(ForgeKind::GitHub, &headers[..], body, SECRET),
            Err(WebhookError::BadSignature {
                header: "X-Hub-Signature-256"
            }),
            "{signature:?} is refused"
        );
    }
}

#[test]
fn bodies_over_the_limit_are_refused_before_anything_else() {
    let body = vec![b' '; 10 * 1024 * 1024];
    // Unsigned: the size is checked first, so the cost of an oversized body is bounded.
    let headers = [("X-GitHub-Event", "push")];
    assert_eq!(
        verify_and_parse(ForgeKind::GitHub, &headers[..], &body, SECRET),
        Err(WebhookError::BodyTooLarge {
            size: body.len(),
            limit: 1 << 20
        })
    );
    let verifier = WebhookVerifier::new(ForgeKind::Gitea, SECRET).with_max_body_bytes(10);
    let err = verifier
        .verify_and_parse(&gitea_headers("push", b"{\"a\": 12345}"), b"{\"a\": 12345}")
        .expect_err("over the configured limit");
    assert_eq!(err.http_status(), 413);
}

#[test]
fn signed_malformed_json_is_malformed_for_every_forge_and_event() {
    for body in [&b"{not json"[..], b"[]", b"null", b"{}", b"{\"ref\": 42}"] {
        for event in [
            "push",
            "pull_request",
            "issue_comment",
            "pull_request_review",
        ] {
            let err = verify_and_parse(
                ForgeKind::GitHub,
                &github_headers(event, body, "d"),
                body,
                SECRET,
            )
            .expect_err("malformed");
            assert!(
                matches!(err, WebhookError::Malformed(_)),
                "github {event} {body:?}: {err:?}"
            );
            assert_eq!(err.http_status(), 400);
        }
        for event in ["Push Hook", "Merge Request Hook", "Note Hook"] {
            let err = verify_and_parse(ForgeKind::GitLab, &gitlab_headers(event), body, SECRET)
                .expect_err("malformed");
            assert!(
                matches!(err, WebhookError::Malformed(_)),
                "gitlab {event}: {err:?}"
            );
        }
        for event in [
            "push",
            "pull_request",
            "issue_comment",
            "delete",
            "pull_request_approved",
        ] {
            let err = verify_and_parse(ForgeKind::Gitea, &gitea_headers(event, body), body, SECRET)
                .expect_err("malformed");
            assert!(
                matches!(err, WebhookError::Malformed(_)),
                "gitea {event}: {err:?}"
            );
        }
    }
}

#[test]
fn errors_never_contain_the_secret_or_the_body() {
    let body = br#"{"ref": "refs/heads/main", "before": "nope", "after": "SENSITIVE-PAYLOAD"}"#;
    let err = verify_and_parse(
        ForgeKind::GitHub,
        &github_headers("push", body, "d"),
        body,
        SECRET,
    )
    .expect_err("bad before");
    let text = err.to_string();
    assert!(
        !text.contains("Secret to Everybody") && !text.contains("SENSITIVE"),
        "{text}"
    );
    let err = verify_and_parse(
        ForgeKind::GitLab,
        &[("X-Gitlab-Token", "guess")][..],
        body,
        SECRET,
    )
    .expect_err("bad token");
    assert!(!err.to_string().contains("Secret to Everybody"));
}

#[test]
fn an_empty_secret_refuses_everything() {
    let body = b"{}";
    let headers = [
        ("X-GitHub-Event", "ping"),
        (
            "X-Hub-Signature-256",
            "sha256=b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad",
        ),
    ];
    let err = verify_and_parse(ForgeKind::GitHub, &headers[..], body, b"").expect_err("no secret");
    assert_eq!(err, WebhookError::NoSecret(ForgeKind::GitHub));
    assert_eq!(err.http_status(), 503);
}

#[test]
fn missing_event_headers_and_delivery_ids() {
    let body = br#"{"zen":"x"}"#;
    let sig = format!("sha256={}", sign(SECRET, body));
    let headers = [("X-Hub-Signature-256", sig.as_str())];
    assert_eq!(
        verify_and_parse(ForgeKind::GitHub, &headers[..], body, SECRET),
        Err(WebhookError::MissingEvent {
            header: "X-GitHub-Event"
        })
    );

    // No delivery id: the body's hash stands in, the same for the same body.
    let headers = [
        ("X-Hub-Signature-256", sig.as_str()),
        ("x-github-event", "ping"),
    ];
    let a = verify_and_parse(ForgeKind::GitHub, &headers[..], body, SECRET).expect("ping");
    let b = verify_and_parse(ForgeKind::GitHub, &headers[..], body, SECRET).expect("ping");
    assert!(
        a.id.starts_with("sha256:") && a.id.len() == 7 + 64,
        "{}",
        a.id
    );
    assert_eq!(a.id, b.id, "a redelivered body gets the same id");

    // A delivery id that could forge a log line is refused.
    for bad in ["a\nb", &"x".repeat(129), "id with spaces", ""] {
        let headers = [
            ("X-Hub-Signature-256", sig.as_str()),
            ("X-GitHub-Event", "ping"),
            ("X-GitHub-Delivery", bad),
        ];
        let err = verify_and_parse(ForgeKind::GitHub, &headers[..], body, SECRET).expect_err(bad);
        assert!(
            matches!(err, WebhookError::Malformed(_)),
            "{bad:?}: {err:?}"
        );
    }

    // GitLab: Idempotency-Key (the same across retries) wins over the event UUID.
    let mut headers = gitlab_headers("Push Hook");
    headers.push((
        "Idempotency-Key".into(),
        "908a6d9e-45fd-46c8-97e6-c4f350f219dd".into(),
    ));
    let push = serde_json::to_vec(&util::fixture("gitlab/push.json")).expect("serialize");
    let d = verify_and_parse(ForgeKind::GitLab, &headers, &push, SECRET).expect("push");
    assert_eq!(d.id, "908a6d9e-45fd-46c8-97e6-c4f350f219dd");
}

#[test]
fn http_header_maps_work_as_headers() {
    let body = br#"{"zen":"Design for failure."}"#;
    let mut map = http::HeaderMap::new();
    map.insert("x-github-event", "ping".parse().expect("header value"));
    map.insert(
        "x-github-delivery",
        "abc-123".parse().expect("header value"),
    );
    map.insert(
        "x-hub-signature-256",
        format!("sha256={}", sign(SECRET, body))
            .parse()
            .expect("header value"),
    );
    let d = verify_and_parse(ForgeKind::GitHub, &map, body, SECRET).expect("ping");
    assert_eq!((d.id.as_str(), d.event), ("abc-123", ForgeEvent::Ping));
}

#[test]
fn gitlab_documented_payloads() {
    let d = gitlab("Push Hook", &util::fixture("gitlab/push.json")).expect("push");
    assert_eq!(d.id, "13792a34-cac6-4fda-95a8-c58e00a3954e");
    assert_eq!(
        d.event,
        ForgeEvent::Push {
            git_ref: "refs/heads/master".into(),
            branch: Some("master".into()),
            before: "95790bf891e76fee5e1747ab589903a6a1f80f22".into(),
            after: "da1560886d4f094c3e6c9ef40349f7d38b5d27d7".into(),
            deleted: false,
            pusher: Some("jsmith".into()),
        }
    );

    let mut deletion = util::fixture("gitlab/push.json");
    deletion["after"] = json!("0000000000000000000000000000000000000000");
    deletion["checkout_sha"] = Value::Null;
    let event = gitlab("Push Hook", &deletion).expect("deletion").event;
    assert!(
        matches!(event, ForgeEvent::Push { deleted: true, .. }),
        "{event:?}"
    );

    let event = gitlab("Tag Push Hook", &util::fixture("gitlab/tag_push.json"))
        .expect("tag")
        .event;
    assert!(
        matches!(&event, ForgeEvent::Push { branch: None, git_ref, deleted: false, .. } if git_ref == "refs/tags/v1.0.0"),
        "{event:?}"
    );

    let open = util::fixture("gitlab/merge_request_open.json");
    let expected_pr = PullRequestInfo {
        number: 1,
        title: "MS-Viewport".into(),
        author: "root".into(),
        head_sha: "da1560886d4f094c3e6c9ef40349f7d38b5d27d7".into(),
        head_ref: "ms-viewport".into(),
        base_ref: "master".into(),
        head_repo_full_name: Some("awesome_space/awesome_project".into()),
        base_repo_full_name: "awesome_space/awesome_project".into(),
        is_fork: false,
        url: "http://example.com/diaspora/merge_requests/1".into(),
        labels: vec!["API".into()],
    };
    assert_eq!(
        gitlab("Merge Request Hook", &open).expect("open").event,
        ForgeEvent::PullRequest {
            action: PrAction::Opened,
            pr: expected_pr.clone(),
            sender: Some("root".into()),
        }
    );

    let with = |action: &str, oldrev: Option<&str>| {
        let mut p = open.clone();
        p["object_attributes"]["action"] = json!(action);
        if let Some(rev) = oldrev {
            p["object_attributes"]["oldrev"] = json!(rev);
        }
        gitlab("Merge Request Hook", &p).expect(action).event
    };
    let pr_action = |event: ForgeEvent| match event {
        ForgeEvent::PullRequest { action, .. } => action,
        other => panic!("a merge request event, not {other:?}"),
    };
    assert_eq!(
        pr_action(with(
            "update",
            Some("95790bf891e76fee5e1747ab589903a6a1f80f22")
        )),
        PrAction::Synchronized
    );
    assert_eq!(
        pr_action(with("update", None)),
        PrAction::Other("update".into()),
        "an update without oldrev is no new code"
    );
    assert_eq!(pr_action(with("close", None)), PrAction::Closed);
    assert_eq!(pr_action(with("reopen", None)), PrAction::Reopened);
    assert_eq!(pr_action(with("merge", None)), PrAction::Merged);
    for (action, state) in [
        ("approved", ReviewState::Approved),
        ("approval", ReviewState::Approved),
        ("unapproved", ReviewState::Dismissed),
        ("unapproval", ReviewState::Dismissed),
    ] {
        assert_eq!(
            with(action, None),
            ForgeEvent::Review {
                pr_number: 1,
                state,
                author: "root".into()
            },
            "{action}"
        );
    }

    let mut fork = open.clone();
    fork["object_attributes"]["source_project_id"] = json!(15);
    fork["object_attributes"]["source"]["path_with_namespace"] = json!("mallory/awesome_project");
    let ForgeEvent::PullRequest { pr, .. } =
        gitlab("Merge Request Hook", &fork).expect("fork").event
    else {
        panic!("a merge request event");
    };
    assert!(pr.is_fork && pr.head_repo_full_name.as_deref() == Some("mallory/awesome_project"));

    assert_eq!(
        gitlab(
            "Note Hook",
            &util::fixture("gitlab/note_merge_request.json")
        )
        .expect("note")
        .event,
        ForgeEvent::Comment {
            pr_number: 1,
            comment_id: 1244,
            author: "root".into(),
            body: "This MR needs work.".into(),
            is_pull_request: true,
            // `2015-05-17 18:21:36 UTC`.
            created_at: Some(1_431_886_896_000),
        }
    );
    assert_eq!(
        gitlab("Note Hook", &util::fixture("gitlab/note_issue.json"))
            .expect("note")
            .event,
        ForgeEvent::Comment {
            pr_number: 17,
            comment_id: 1241,
            author: "root".into(),
            body: "Hello world".into(),
            is_pull_request: false,
            // `2015-05-17 17:06:40 UTC`.
            created_at: Some(1_431_882_400_000),
        }
    );
    assert_eq!(
        gitlab("Note Hook", &util::fixture("gitlab/note_commit.json"))
            .expect("note")
            .event,
        ForgeEvent::Ignored {
            kind: "note.commit".into()
        }
    );
    let mut edited = util::fixture("gitlab/note_merge_request.json");
    edited["object_attributes"]["action"] = json!("update");
    assert_eq!(
        gitlab("Note Hook", &edited).expect("edited note").event,
        ForgeEvent::Ignored {
            kind: "note.update".into()
        },
        "an edited note is not a new command"
    );
    assert_eq!(
        gitlab("Pipeline Hook", &json!({"object_kind": "pipeline"}))
            .expect("pipeline")
            .event,
        ForgeEvent::Ignored {
            kind: "Pipeline Hook".into()
        }
    );
}

#[test]
fn gitlab_tokens_are_checked() {
    let body = serde_json::to_vec(&util::fixture("gitlab/push.json")).expect("serialize");
    let wrong = [
        ("X-Gitlab-Event", "Push Hook"),
        ("X-Gitlab-Token", "It's a Secret to Everybod"),
    ];
    assert_eq!(
        verify_and_parse(ForgeKind::GitLab, &wrong[..], &body, SECRET),
        Err(WebhookError::BadSignature {
            header: "X-Gitlab-Token"
        })
    );
    let missing = [("X-Gitlab-Event", "Push Hook")];
    assert_eq!(
        verify_and_parse(ForgeKind::GitLab, &missing[..], &body, SECRET),
        Err(WebhookError::MissingSignature {
            header: "X-Gitlab-Token"
        })
    );
}

#[test]
fn gitea_payloads() {
    let d = gitea("push", &util::fixture("gitea/push.json")).expect("push");
    assert_eq!(d.id, "f6266f16-1bf3-46a5-9ea4-602e06ead473");
    assert_eq!(
        d.event,
        ForgeEvent::Push {
            git_ref: "refs/heads/develop".into(),
            branch: Some("develop".into()),
            before: "28e1879d029cb852e4844d9c718537df08844e03".into(),
            after: "bffeb74224043ba2feb48d137756c8a9331c449a".into(),
            deleted: false,
            pusher: Some("gitea".into()),
        }
    );
    assert_eq!(
        gitea("delete", &util::fixture("gitea/delete_branch.json"))
            .expect("delete")
            .event,
        ForgeEvent::Push {
            git_ref: "refs/heads/test".into(),
            branch: Some("test".into()),
            before: String::new(),
            after: "0".repeat(40),
            deleted: true,
            pusher: Some("user1".into()),
        }
    );

    let opened = util::fixture("gitea/pull_request_opened.json");
    let expected = PullRequestInfo {
        number: 12,
        title: "Fix bug".into(),
        author: "user1".into(),
        head_sha: "2020558fe2e34debb818a514715839cabd25e778".into(),
        head_ref: "fix-bug".into(),
        base_ref: "master".into(),
        head_repo_full_name: Some("test/repo".into()),
        base_repo_full_name: "test/repo".into(),
        is_fork: false,
        url: "http://localhost:3000/test/repo/pulls/12".into(),
        labels: Vec::new(),
    };
    assert_eq!(
        gitea("pull_request", &opened).expect("opened").event,
        ForgeEvent::PullRequest {
            action: PrAction::Opened,
            pr: expected,
            sender: Some("user1".into()),
        }
    );
    let with = |f: &dyn Fn(&mut Value)| {
        let mut p = opened.clone();
        f(&mut p);
        match gitea("pull_request", &p).expect("pull_request").event {
            ForgeEvent::PullRequest { action, pr, .. } => (action, pr),
            other => panic!("a pull request event, not {other:?}"),
        }
    };
    assert_eq!(
        with(&|p| p["action"] = json!("synchronized")).0,
        PrAction::Synchronized
    );
    assert_eq!(with(&|p| p["action"] = json!("closed")).0, PrAction::Closed);
    assert_eq!(
        with(&|p| {
            p["action"] = json!("closed");
            p["pull_request"]["merged"] = json!(true);
        })
        .0,
        PrAction::Merged
    );
    let (_, fork) = with(&|p| {
        p["pull_request"]["head"]["repo_id"] = json!(7);
        p["pull_request"]["head"]["repo"]["id"] = json!(7);
        p["pull_request"]["head"]["repo"]["full_name"] = json!("user1/repo");
    });
    assert!(fork.is_fork && fork.head_repo_full_name.as_deref() == Some("user1/repo"));

    let review = util::fixture("gitea/pull_request_review_approved.json");
    for event in ["pull_request_approved", "pull_request_review_approved"] {
        assert_eq!(
            gitea(event, &review).expect("review").event,
            ForgeEvent::Review {
                pr_number: 12,
                state: ReviewState::Approved,
                author: "user2".into()
            },
            "{event}"
        );
    }
    assert_eq!(
        gitea("pull_request_rejected", &review)
            .expect("review")
            .event,
        ForgeEvent::Review {
            pr_number: 12,
            state: ReviewState::ChangesRequested,
            author: "user2".into()
        }
    );

    let comment = util::fixture("gitea/issue_comment_pull.json");
    let expected = ForgeEvent::Comment {
        pr_number: 12,
        comment_id: 4,
        author: "user1".into(),
        body: "changes requested".into(),
        is_pull_request: true,
        // `2017-03-13T13:52:11-04:00`: Gitea writes its offset.
        created_at: Some(1_489_427_531_000),
    };
    assert_eq!(
        gitea("issue_comment", &comment).expect("comment").event,
        expected
    );
    // X-Gitea-Event-Type's name for the same delivery.
    assert_eq!(
        gitea("pull_request_comment", &comment)
            .expect("comment")
            .event,
        expected
    );
    let mut edited = comment.clone();
    edited["action"] = json!("edited");
    assert_eq!(
        gitea("issue_comment", &edited).expect("edited").event,
        ForgeEvent::Ignored {
            kind: "issue_comment.edited".into()
        }
    );

    // Forgejo's own header names.
    let body = serde_json::to_vec(&util::fixture("gitea/push.json")).expect("serialize");
    let sig = sign(SECRET, &body);
    let headers = [
        ("X-Forgejo-Event", "push"),
        ("X-Forgejo-Signature", sig.as_str()),
        ("X-Forgejo-Delivery", "fj-1"),
    ];
    let d = verify_and_parse(ForgeKind::Gitea, &headers[..], &body, SECRET).expect("forgejo push");
    assert_eq!(d.id, "fj-1");
}

#[test]
fn gitea_signatures_are_checked() {
    let body = serde_json::to_vec(&util::fixture("gitea/push.json")).expect("serialize");
    let mut headers = gitea_headers("push", &body);
    headers[2].1 = sign(b"wrong", &body);
    assert_eq!(
        verify_and_parse(ForgeKind::Gitea, &headers, &body, SECRET),
        Err(WebhookError::BadSignature {
            header: "X-Gitea-Signature"
        })
    );
    headers.pop();
    assert_eq!(
        verify_and_parse(ForgeKind::Gitea, &headers, &body, SECRET),
        Err(WebhookError::MissingSignature {
            header: "X-Gitea-Signature"
        })
    );
}

#[test]
fn parse_payload_never_panics_on_truncations_of_real_payloads() {
    // A cheap stand-in for the fuzz target: every prefix of real payloads, for every event.
    let payloads = [
        serde_json::to_vec(&github_examples("pull_request")[0].1).expect("serialize"),
        serde_json::to_vec(&util::fixture("gitlab/merge_request_open.json")).expect("serialize"),
        serde_json::to_vec(&util::fixture("gitea/issue_comment_pull.json")).expect("serialize"),
    ];
    for payload in &payloads {
        for end in (0..payload.len()).step_by(97) {
            for forge in ForgeKind::ALL {
                for event in slipway_forge::KNOWN_EVENTS {
                    let _ = parse_payload(forge, event, &payload[..end]);
                }
            }
        }
    }
}
