//! A fake GitHub for end-to-end tests of `slipway serve`: the REST API its GitHub adapter
//! calls, and the webhook deliveries GitHub sends.
//!
//! - [`DIALECT`] makes a [`FakeForge`] (the kit's one HTTP server, on `127.0.0.1:0`) answer exactly the calls
//!   `slipway-forge`'s GitHub adapter makes, for one repository, [`REPO`] (`acme/shop`), from
//!   in-memory state the test controls: pull requests, reviews, collaborator permissions. It
//!   keeps what the adapter writes (issue comments, commit statuses) and records every request
//!   with its answer. Answers have the fields of GitHub's REST API description
//!   (`@octokit/openapi`; `tests/fake_github_selftest.rs` checks them against it), lists are
//!   paginated with `Link` headers like GitHub's, and anything else is a `404` recorded with no
//!   operation ([`FakeForge::unhandled`]), so that a test can assert that none happened.
//! - The payload builders ([`pull_request_payload`], [`issue_comment_payload`],
//!   [`pull_request_review_payload`], [`push_payload`]) start from GitHub's own example
//!   deliveries (`@octokit/webhooks-examples`, fetched once per target directory by
//!   `slipway-forge`'s `tests/fetch-fixtures.sh`, exactly as its own tests do), rename the
//!   repository to `acme/shop`, and patch only what the scenario needs.
//! - [`send_webhook`] POSTs a delivery signed like GitHub's (`X-Hub-Signature-256`) to
//!   `slipway serve`'s [`WEBHOOK_PATH`]; [`send_webhook_raw`] and [`try_send_webhook_raw`] send
//!   any headers and body, for hostile cases; [`http_request`] is the plain client under them.
//!
//! ```ignore
//! let gh = FakeForge::start(Forge::GitHub, "slipway-bot");
//! gh.add_pr(PrSpec { fork: true, author: "mallory".into(), ..PrSpec::new(7, &sha) });
//! gh.set_permission("alice", "write");
//! // … start `slipway serve` with [forge.github] api_url = gh.url(), repository = "acme/shop"
//! let body = pull_request_payload("opened", &gh.pr(7), false, None);
//! let (status, _) = send_webhook(&server.addr, SECRET, "pull_request", "d-1", &body);
//! assert_eq!(status, 202);
//! let plan = gh.wait_for_comment(7, |c| c.body.contains("slipway:plan"), T);
//! assert!(gh.unhandled().is_empty());
//! ```
//!
//! The server never panics on what a client sends (malformed requests get a `400`, oversized
//! ones a `413`/`431`, and a bug in an answer a `500`); its state sits behind a mutex that a
//! panicking test does not poison for the others. The test-side methods do panic on test bugs
//! (an unknown pull request number, an unknown permission level).

use std::collections::HashMap;
use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};

pub use super::Recorded;
use super::state::{
    Call, Core, Delivery, Dialect, Event, Pr, State, StoredComment, StoredReview, StoredStatus,
    Unauthorized, route,
};
pub use super::state::{
    Comment, DEFAULT_BRANCH, Deployment, DeploymentStatus, FakeForge, NAME, OWNER, PrSpec, PrState,
    REPO, Status,
};
use super::{
    Forge, Page, PageLinks, PullRequestEvents, Rebrand, Reply, Request, map_strings, merge,
    now_iso, page_params, rebrand, set_closing, stable_id, to_bytes, token_of, unix_now,
};
pub use crate::fixtures::fixtures_dir;
pub use crate::http::{HttpResponse, http_request};

/// [`REPO`]'s id, the same in API answers and webhook payloads (the adapter tells forks by it).
pub const REPO_ID: u64 = 700_000_001;
/// Where `slipway serve` receives GitHub's deliveries.
pub const WEBHOOK_PATH: &str = "/webhooks/github";

/// The web UI's root, for `html_url`s.
const WEB: &str = "https://github.com";
/// The API root the example payloads use (`url` fields of webhook payloads).
const PUBLIC_API: &str = "https://api.github.com";
/// The repository of every `@octokit/webhooks-examples` payload.
const EXAMPLE_REPO: &str = "Codertocat/Hello-World";
const DOCS: &str = "https://docs.github.com/rest";

/// GitHub's limit on a comment body, in characters.
pub const COMMENT_LIMIT: usize = 65_536;
/// GitHub's limit on a commit status description, in characters.
pub const STATUS_DESCRIPTION_LIMIT: usize = 140;

/// GitHub's REST API for [`REPO`], as a [`FakeForge`] plays it.
///
/// Endpoints (under the root [`FakeForge::url`], like `https://api.github.com`):
///
/// | request | answer |
/// | --- | --- |
/// | `GET /user` | the bot (`403` when its login ends in `[bot]`: an App token cannot read it) |
/// | `GET /repos/acme/shop/issues/{n}/comments` | its comments, oldest first, paginated |
/// | `POST /repos/acme/shop/issues/{n}/comments` | `201`, a comment by the bot |
/// | `GET`/`PATCH /repos/acme/shop/issues/comments/{id}` | the comment; `PATCH` edits it |
/// | `POST /repos/acme/shop/statuses/{sha}` | `201`, the status |
/// | `GET /repos/acme/shop/pulls?state=open\|closed\|all` | newest first, paginated |
/// | `GET /repos/acme/shop/pulls/{n}` | the pull request, with `mergeable` and `merged` |
/// | `GET /repos/acme/shop/pulls/{n}/reviews` | its reviews, oldest first, paginated |
/// | `GET /repos/acme/shop/collaborators/{user}/permission` | as set; `404` for a user never set |
/// | `GET /repos/acme/shop/deployments?sha=&environment=` | the deployments made, newest first |
/// | `POST /repos/acme/shop/deployments` | `201`, a deployment of a commit (`ref` a sha) |
/// | `POST /repos/acme/shop/deployments/{id}/statuses` | `201`, the status |
///
/// Every one needs an `Authorization` header (any token, or the one of
/// [`FakeForge::require_token`]), else `401`. Unknown pull requests and comments are `404`;
/// bodies GitHub would refuse are `422` (an empty or over-65,536-character comment, a status
/// state that is not one of the four, a description over 140 characters, a sha that is not
/// hex); unparsable JSON is `400`.
pub static DIALECT: Dialect = Dialect {
    forge: Forge::GitHub,
    label: "GitHub",
    pr_word: "pull request #",
    api_prefix: "",
    webhook_path: WEBHOOK_PATH,
    first_id: 1_000_000_001,
    roles: &["admin", "maintain", "write", "triage", "read", "none"],
    bot_role: None,
    review_states: &["APPROVED", "CHANGES_REQUESTED", "COMMENTED", "DISMISSED"],
    approval_toggles: false,
    pr_url: html_url,
    pr_ref: |n| format!("refs/pull/{n}/head"),
    repo_id: REPO_ID,
    write_role: "write",
    read_role: "read",
    delivery,
    headers: |secret, d, id| webhook_headers(secret.as_bytes(), d.event, id, &d.body),
    respond,
    bug: || with_github_headers(message(500, "the fake GitHub failed to answer (a bug)")),
};

/// Pull request `number`'s web page.
pub fn html_url(number: u64) -> String {
    format!("{WEB}/{REPO}/pull/{number}")
}

/// The head repository's owner.
fn fork_owner(spec: &PrSpec) -> String {
    spec.head_repo_full_name()
        .split_once('/')
        .map_or_else(|| OWNER.to_owned(), |(owner, _)| owner.to_owned())
}

/// The `author_association` GitHub gives `login`.
fn association(st: &State, login: &str) -> &'static str {
    if login.eq_ignore_ascii_case(OWNER) {
        return "OWNER";
    }
    match st.permission(login) {
        Some("none") | None => {
            if st
                .prs
                .iter()
                .any(|p| p.spec.author.eq_ignore_ascii_case(login))
            {
                "CONTRIBUTOR"
            } else {
                "NONE"
            }
        }
        Some(_) => "COLLABORATOR",
    }
}

// ---- Answering -------------------------------------------------------------------------------

/// GitHub's error shape: `{"message", "documentation_url", "status"}`.
fn message(status: u16, message: &str) -> Reply {
    Reply::json(
        status,
        json!({ "message": message, "documentation_url": DOCS, "status": status.to_string() }),
    )
}

fn not_found() -> Reply {
    message(404, "Not Found")
}

/// `422 Validation Failed`, with one error.
fn invalid(resource: &str, field: &str, code: &str, message: Option<&str>) -> Reply {
    let mut error = json!({ "resource": resource, "field": field, "code": code });
    if let Some(m) = message {
        error["message"] = json!(m);
    }
    Reply::json(
        422,
        json!({
            "message": "Validation Failed",
            "errors": [error],
            "documentation_url": DOCS,
            "status": "422",
        }),
    )
}

/// The headers GitHub sends with every answer (its rate limit: exhausted when the answer
/// already says so).
fn with_github_headers(mut reply: Reply) -> Reply {
    let limited = reply
        .headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("x-ratelimit-remaining") && v == "0");
    let mut headers = vec![
        (
            "X-GitHub-Media-Type".to_owned(),
            "github.v3; format=json".to_owned(),
        ),
        (
            "X-GitHub-Api-Version-Selected".to_owned(),
            "2022-11-28".to_owned(),
        ),
        ("X-RateLimit-Limit".to_owned(), "5000".to_owned()),
        ("X-RateLimit-Used".to_owned(), "1".to_owned()),
        ("X-RateLimit-Resource".to_owned(), "core".to_owned()),
        (
            "X-RateLimit-Reset".to_owned(),
            (unix_now() + 3600).to_string(),
        ),
    ];
    if !limited {
        headers.push(("X-RateLimit-Remaining".to_owned(), "4999".to_owned()));
    }
    headers.append(&mut reply.headers);
    reply.headers = headers;
    reply
}

/// A GitHub REST operation the fake implements, with its path parameters. Gitea's API v1
/// copies these paths (under `/api/v1`): its fake routes with [`match_op_with`] too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Op {
    GetUser,
    ListComments(u64),
    CreateComment(u64),
    GetComment(u64),
    UpdateComment(u64),
    CreateStatus(String),
    /// Gitea's combined status of a commit (GitHub's adapter reads `mergeable_state`).
    GetCombinedStatus(String),
    ListPulls,
    GetPull(u64),
    ListReviews(u64),
    GetPermission(String),
    ListDeployments,
    CreateDeployment,
    CreateDeploymentStatus(u64),
}

impl Op {
    fn id(&self) -> &'static str {
        match self {
            Op::GetUser => "users/get-authenticated",
            Op::ListComments(_) => "issues/list-comments",
            Op::CreateComment(_) => "issues/create-comment",
            Op::GetComment(_) => "issues/get-comment",
            Op::UpdateComment(_) => "issues/update-comment",
            Op::CreateStatus(_) => "repos/create-commit-status",
            // Never matched (see `match_op`): the fake answers it as Gitea only.
            Op::GetCombinedStatus(_) => "(not in the fake GitHub)",
            Op::ListPulls => "pulls/list",
            Op::GetPull(_) => "pulls/get",
            Op::ListReviews(_) => "pulls/list-reviews",
            Op::GetPermission(_) => "repos/get-collaborator-permission-level",
            Op::ListDeployments => "repos/list-deployments",
            Op::CreateDeployment => "repos/create-deployment",
            Op::CreateDeploymentStatus(_) => "repos/create-deployment-status",
        }
    }
}

fn match_op(method: &str, segments: &[String]) -> Option<Op> {
    // GitHub's numbers are plain decimals: no sign, no leading zeros.
    match_op_with(method, segments, |n| {
        (!n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit()))
            .then(|| n.parse().ok())
            .flatten()
    })
    .filter(|op| !matches!(op, Op::GetCombinedStatus(_)))
}

/// The operation of `method` on the path `segments`, its numbers read by `num`.
pub(super) fn match_op_with(
    method: &str,
    segments: &[String],
    num: fn(&str) -> Option<u64>,
) -> Option<Op> {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (method, s.as_slice()) {
        ("GET", ["user"]) => Some(Op::GetUser),
        (_, ["repos", owner, repo, rest @ ..])
            if owner.eq_ignore_ascii_case(OWNER) && repo.eq_ignore_ascii_case(NAME) =>
        {
            match (method, rest) {
                ("GET", ["issues", "comments", id]) => Some(Op::GetComment(num(id)?)),
                ("PATCH", ["issues", "comments", id]) => Some(Op::UpdateComment(num(id)?)),
                ("GET", ["issues", n, "comments"]) => Some(Op::ListComments(num(n)?)),
                ("POST", ["issues", n, "comments"]) => Some(Op::CreateComment(num(n)?)),
                ("POST", ["statuses", sha]) if !sha.is_empty() => {
                    Some(Op::CreateStatus((*sha).to_owned()))
                }
                ("GET", ["commits", sha, "status"]) if !sha.is_empty() => {
                    Some(Op::GetCombinedStatus((*sha).to_owned()))
                }
                ("GET", ["pulls"]) => Some(Op::ListPulls),
                ("GET", ["pulls", n]) => Some(Op::GetPull(num(n)?)),
                ("GET", ["pulls", n, "reviews"]) => Some(Op::ListReviews(num(n)?)),
                ("GET", ["collaborators", user, "permission"]) if !user.is_empty() => {
                    Some(Op::GetPermission((*user).to_owned()))
                }
                ("GET", ["deployments"]) => Some(Op::ListDeployments),
                ("POST", ["deployments"]) => Some(Op::CreateDeployment),
                ("POST", ["deployments", id, "statuses"]) => {
                    Some(Op::CreateDeploymentStatus(num(id)?))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Answers one request: its reply (with GitHub's headers) and the operation it matched.
fn respond(core: &Core, st: &mut State, req: &Request) -> (Reply, Option<&'static str>) {
    let (reply, op) = route(req, "", match_op, Op::id, not_found, |call| {
        answer(core, st, call)
    });
    (with_github_headers(reply), op)
}

fn answer(core: &Core, st: &mut State, call: &Call<'_, Op>) -> Reply {
    let (op, req, query, json) = (&call.op, call.req, &call.query, call.json.as_ref());
    let path = req.path.as_str();
    match st.authorize(token_of(req, None)) {
        Err(Unauthorized::Missing) => return message(401, "Requires authentication"),
        Err(Unauthorized::Wrong) => return message(401, "Bad credentials"),
        Ok(()) => {}
    }
    if let Some(status) = st.injected_failure(&req.method, path) {
        let reply = message(status, "injected failure");
        return if matches!(status, 403 | 429) {
            reply
                .header("X-RateLimit-Remaining", "0".into())
                .header("Retry-After", "1".into())
        } else {
            reply
        };
    }
    let writes = matches!(
        op,
        Op::CreateComment(_)
            | Op::UpdateComment(_)
            | Op::CreateStatus(_)
            | Op::CreateDeployment
            | Op::CreateDeploymentStatus(_)
    );
    if writes && json.is_none() {
        return message(400, "Problems parsing JSON");
    }
    let api = core.base_url.as_str();
    match op {
        Op::GetUser => {
            if core.bot_login.ends_with("[bot]") {
                return message(403, "Resource not accessible by integration");
            }
            Reply::json(200, private_user_json(api, &core.bot_login))
        }
        Op::ListComments(n) => {
            if st.pr(*n).is_none() {
                return not_found();
            }
            let items = st
                .comments_of(*n)
                .map(|c| comment_json(api, st, c))
                .collect();
            paginate(api, path, query, items)
        }
        Op::CreateComment(n) => {
            let id = match st.create_comment(*n, &core.bot_login, comment_body(json), not_found) {
                Ok(id) => id,
                Err(reply) => return reply,
            };
            let answer = comment_json(api, st, st.comment(id).expect("just added"));
            let location = format!("{api}/repos/{REPO}/issues/comments/{id}");
            Reply::json(201, answer).header("Location", location)
        }
        Op::GetComment(id) => match st.comment(*id) {
            Some(c) => Reply::json(200, comment_json(api, st, c)),
            None => not_found(),
        },
        Op::UpdateComment(id) => {
            let body = match comment_body(json) {
                Ok(b) => b,
                Err(reply) => return reply,
            };
            if st.edit_comment(*id, None, "", false, body).is_err() {
                return not_found();
            }
            let c = st.comment(*id).expect("edited above");
            Reply::json(200, comment_json(api, st, c))
        }
        Op::CreateStatus(sha) => create_status(core, st, sha, json.unwrap_or(&Value::Null)),
        Op::GetCombinedStatus(_) => not_found(),
        Op::ListPulls => {
            let Some(prs) = st.prs_in(call.param("state").unwrap_or("open")) else {
                return invalid("PullRequest", "state", "invalid", None);
            };
            let items = prs
                .into_iter()
                .map(|p| pr_json(api, st, p, false))
                .collect();
            paginate(api, path, query, items)
        }
        Op::GetPull(n) => match st.pr(*n) {
            Some(p) => Reply::json(200, pr_json(api, st, p, true)),
            None => not_found(),
        },
        Op::ListReviews(n) => {
            if st.pr(*n).is_none() {
                return not_found();
            }
            let items = st.reviews_of(*n).map(|r| review_json(api, st, r)).collect();
            paginate(api, path, query, items)
        }
        Op::GetPermission(user) => match st.permissions.get(&user.to_ascii_lowercase()) {
            Some((login, level)) => Reply::json(200, permission_json(api, login, level)),
            None => not_found(),
        },
        Op::ListDeployments => {
            let (sha, environment) = (call.param("sha"), call.param("environment"));
            let items = st
                .deployments
                .iter()
                .rev()
                .filter(|d| sha.is_none_or(|s| d.sha.eq_ignore_ascii_case(s)))
                .filter(|d| environment.is_none_or(|e| d.environment == e))
                .map(|d| deployment_json(api, &core.bot_login, d))
                .collect();
            paginate(api, path, query, items)
        }
        Op::CreateDeployment => create_deployment(core, st, json.unwrap_or(&Value::Null)),
        Op::CreateDeploymentStatus(id) => {
            create_deployment_status(core, st, *id, json.unwrap_or(&Value::Null))
        }
    }
}

/// `POST /repos/acme/shop/deployments`: the `ref` must be a commit (the fake knows no
/// branches by name); `201` and the deployment.
fn create_deployment(core: &Core, st: &mut State, body: &Value) -> Reply {
    let Some(reference) = body.get("ref").and_then(Value::as_str) else {
        return invalid("Deployment", "ref", "missing_field", None);
    };
    let hex = reference.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex || !(reference.len() == 40 || reference.len() == 64) {
        return message(422, &format!("No ref found for: {reference}"));
    }
    let flag = |field: &str| -> Result<Option<bool>, Reply> {
        match body.get(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(invalid("Deployment", field, "invalid", None)),
        }
    };
    let (transient, production, auto_merge) = match (
        flag("transient_environment"),
        flag("production_environment"),
        flag("auto_merge"),
    ) {
        (Ok(t), Ok(p), Ok(a)) => (t, p, a),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r,
    };
    let required_contexts = match body.get("required_contexts") {
        None => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|c| c.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .unwrap_or_default(),
        ),
        Some(_) => return invalid("Deployment", "required_contexts", "invalid", None),
    };
    let environment = match body.get("environment") {
        None => "production".to_owned(),
        Some(Value::String(e)) if !e.is_empty() => e.clone(),
        Some(_) => return invalid("Deployment", "environment", "invalid", None),
    };
    let id = st.id();
    st.deployments.push(Deployment {
        id,
        sha: reference.to_ascii_lowercase(),
        reference: reference.to_owned(),
        environment,
        transient_environment: transient.unwrap_or(false),
        production_environment: production,
        auto_merge: auto_merge.unwrap_or(true),
        required_contexts,
        statuses: Vec::new(),
    });
    let answer = deployment_json(
        &core.base_url,
        &core.bot_login,
        st.deployments.last().expect("just pushed"),
    );
    Reply::json(201, answer)
}

/// `POST /repos/acme/shop/deployments/{id}/statuses`: `201` and the status.
fn create_deployment_status(core: &Core, st: &mut State, id: u64, body: &Value) -> Reply {
    let Some(state) = body.get("state").and_then(Value::as_str) else {
        return invalid("DeploymentStatus", "state", "missing_field", None);
    };
    if !matches!(
        state,
        "error" | "failure" | "inactive" | "in_progress" | "queued" | "pending" | "success"
    ) {
        return invalid("DeploymentStatus", "state", "invalid", None);
    }
    let text = |field: &str| body.get(field).and_then(Value::as_str).map(str::to_owned);
    let status_id = st.id();
    let Some(deployment) = st.deployments.iter_mut().find(|d| d.id == id) else {
        return not_found();
    };
    deployment.statuses.push(DeploymentStatus {
        id: status_id,
        state: state.to_owned(),
        environment_url: text("environment_url"),
        description: text("description"),
        created_at: now_iso(),
    });
    let deployment = deployment.clone();
    let status = deployment.statuses.last().expect("just pushed");
    Reply::json(
        201,
        deployment_status_json(&core.base_url, &core.bot_login, &deployment, status),
    )
}

/// `deployment`.
fn deployment_json(api: &str, creator: &str, d: &Deployment) -> Value {
    let url = format!("{api}/repos/{REPO}/deployments/{}", d.id);
    json!({
        "url": url,
        "id": d.id,
        "node_id": node_id("DE", d.id),
        "sha": d.sha,
        "ref": d.reference,
        "task": "deploy",
        "payload": {},
        "original_environment": d.environment,
        "environment": d.environment,
        "description": null,
        "creator": user_json(api, creator),
        "created_at": now_iso(),
        "updated_at": now_iso(),
        "statuses_url": format!("{url}/statuses"),
        "repository_url": format!("{api}/repos/{REPO}"),
        "transient_environment": d.transient_environment,
        "production_environment": d.production_environment.unwrap_or(false),
        "performed_via_github_app": null,
    })
}

/// `deployment-status`.
fn deployment_status_json(api: &str, creator: &str, d: &Deployment, s: &DeploymentStatus) -> Value {
    let url = format!("{api}/repos/{REPO}/deployments/{}", d.id);
    json!({
        "url": format!("{url}/statuses/{}", s.id),
        "id": s.id,
        "node_id": node_id("DES", s.id),
        "state": s.state,
        "creator": user_json(api, creator),
        "description": s.description.clone().unwrap_or_default(),
        "environment": d.environment,
        "target_url": "",
        "log_url": "",
        "environment_url": s.environment_url.clone().unwrap_or_default(),
        "created_at": s.created_at,
        "updated_at": s.created_at,
        "deployment_url": url,
        "repository_url": format!("{api}/repos/{REPO}"),
        "performed_via_github_app": null,
    })
}

fn create_status(core: &Core, st: &mut State, sha: &str, body: &Value) -> Reply {
    let hex = sha.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex || !(sha.len() == 40 || sha.len() == 64) {
        return message(422, &format!("No commit found for SHA: {sha}"));
    }
    let Some(state) = body.get("state").and_then(Value::as_str) else {
        return invalid("Status", "state", "missing_field", None);
    };
    if !matches!(state, "pending" | "success" | "failure" | "error") {
        return invalid("Status", "state", "invalid", None);
    }
    let text = |field: &str| -> Result<Option<String>, Reply> {
        match body.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(invalid("Status", field, "invalid", None)),
        }
    };
    let (description, target_url, context) =
        match (text("description"), text("target_url"), text("context")) {
            (Ok(d), Ok(t), Ok(c)) => (d, t, c),
            (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r,
        };
    if description
        .as_ref()
        .is_some_and(|d| d.chars().count() > STATUS_DESCRIPTION_LIMIT)
    {
        return invalid(
            "Status",
            "description",
            "custom",
            Some("description is too long (maximum is 140 characters)"),
        );
    }
    let stored = st.add_status(
        sha,
        Status {
            context: context.unwrap_or_else(|| "default".to_owned()),
            state: state.to_owned(),
            description,
            target_url,
        },
    );
    let answer = status_json(&core.base_url, &core.bot_login, stored);
    let location = format!("{}/repos/{REPO}/statuses/{sha}", core.base_url);
    Reply::json(201, answer).header("Location", location)
}

/// The `body` of a comment create/update request, or GitHub's `422`.
fn comment_body(json: Option<&Value>) -> Result<String, Reply> {
    match json.and_then(|j| j.get("body")) {
        Some(Value::String(s)) if s.is_empty() => {
            Err(invalid("IssueComment", "body", "missing_field", None))
        }
        Some(Value::String(s)) if s.chars().count() > COMMENT_LIMIT => Err(invalid(
            "IssueComment",
            "body",
            "custom",
            Some("body is too long (maximum is 65536 characters)"),
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(invalid("IssueComment", "body", "missing_field", None)),
        Some(_) => Err(invalid("IssueComment", "body", "invalid", None)),
    }
}

/// One page of `items` as GitHub pages lists: `per_page` (default 30, at most 100) and `page`
/// (from 1), with a `Link` header (`prev`, `next`, `last`, `first`) when there is more than
/// one page.
fn paginate(api: &str, path: &str, query: &[(String, String)], items: Vec<Value>) -> Reply {
    let (page, per_page) = page_params(query, 30, 100);
    let Page { pages, items, .. } = Page::of(items, page, per_page);
    let reply = Reply::json(200, items);
    if pages <= 1 {
        return reply;
    }
    let pager = PageLinks::new(format!("{api}{path}"), query, "per_page", per_page);
    let mut links = Vec::new();
    if page > 1 {
        links.push(pager.link(page.min(pages + 1) - 1, "prev"));
    }
    if page < pages {
        links.push(pager.link(page + 1, "next"));
        links.push(pager.link(pages, "last"));
    }
    if page > 1 {
        links.push(pager.link(1, "first"));
    }
    reply.header("Link", links.join(", "))
}

// ---- JSON in the shapes of GitHub's REST API ------------------------------------------------

fn login_id(login: &str) -> u64 {
    stable_id(login, 10_000_000)
}

/// A repository's id: [`REPO_ID`] for `acme/shop`, another stable one for a fork.
pub fn repo_id(full_name: &str) -> u64 {
    super::repo_id_with(full_name, REPO_ID, 800_000_000)
}

fn node_id(prefix: &str, id: u64) -> String {
    format!("{prefix}_kwDO{id:08X}")
}

/// `simple-user`.
fn user_json(api: &str, login: &str) -> Value {
    let id = login_id(login);
    let kind = if login.ends_with("[bot]") {
        "Bot"
    } else if login.eq_ignore_ascii_case(OWNER) {
        "Organization"
    } else {
        "User"
    };
    let u = format!("{api}/users/{login}");
    json!({
        "login": login,
        "id": id,
        "node_id": node_id("U", id),
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}?v=4"),
        "gravatar_id": "",
        "url": u,
        "html_url": format!("{WEB}/{login}"),
        "followers_url": format!("{u}/followers"),
        "following_url": format!("{u}/following{{/other_user}}"),
        "gists_url": format!("{u}/gists{{/gist_id}}"),
        "starred_url": format!("{u}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{u}/subscriptions"),
        "organizations_url": format!("{u}/orgs"),
        "repos_url": format!("{u}/repos"),
        "events_url": format!("{u}/events{{/privacy}}"),
        "received_events_url": format!("{u}/received_events"),
        "type": kind,
        "site_admin": false,
        "user_view_type": "public",
    })
}

/// `private-user`: what `GET /user` answers for the token's owner.
fn private_user_json(api: &str, login: &str) -> Value {
    let mut user = user_json(api, login);
    let extra = json!({
        "name": null, "company": null, "blog": "", "location": null, "email": null,
        "hireable": null, "bio": null, "twitter_username": null, "notification_email": null,
        "public_repos": 0, "public_gists": 0, "followers": 0, "following": 0,
        "created_at": "2020-01-01T00:00:00Z", "updated_at": "2020-01-01T00:00:00Z",
        "private_gists": 0, "total_private_repos": 0, "owned_private_repos": 0,
        "disk_usage": 0, "collaborators": 0, "two_factor_authentication": true,
        "user_view_type": "private",
    });
    merge(&mut user, extra);
    user
}

/// `repository`.
fn repo_json(api: &str, full_name: &str, fork: bool) -> Value {
    let (owner, name) = full_name.split_once('/').unwrap_or((full_name, full_name));
    let id = repo_id(full_name);
    let a = format!("{api}/repos/{full_name}");
    let mut m = Map::new();
    for (key, suffix) in [
        ("url", ""),
        ("archive_url", "/{archive_format}{/ref}"),
        ("assignees_url", "/assignees{/user}"),
        ("blobs_url", "/git/blobs{/sha}"),
        ("branches_url", "/branches{/branch}"),
        ("collaborators_url", "/collaborators{/collaborator}"),
        ("comments_url", "/comments{/number}"),
        ("commits_url", "/commits{/sha}"),
        ("compare_url", "/compare/{base}...{head}"),
        ("contents_url", "/contents/{+path}"),
        ("contributors_url", "/contributors"),
        ("deployments_url", "/deployments"),
        ("downloads_url", "/downloads"),
        ("events_url", "/events"),
        ("forks_url", "/forks"),
        ("git_commits_url", "/git/commits{/sha}"),
        ("git_refs_url", "/git/refs{/sha}"),
        ("git_tags_url", "/git/tags{/sha}"),
        ("hooks_url", "/hooks"),
        ("issue_comment_url", "/issues/comments{/number}"),
        ("issue_events_url", "/issues/events{/number}"),
        ("issues_url", "/issues{/number}"),
        ("keys_url", "/keys{/key_id}"),
        ("labels_url", "/labels{/name}"),
        ("languages_url", "/languages"),
        ("merges_url", "/merges"),
        ("milestones_url", "/milestones{/number}"),
        (
            "notifications_url",
            "/notifications{?since,all,participating}",
        ),
        ("pulls_url", "/pulls{/number}"),
        ("releases_url", "/releases{/id}"),
        ("stargazers_url", "/stargazers"),
        ("statuses_url", "/statuses/{sha}"),
        ("subscribers_url", "/subscribers"),
        ("subscription_url", "/subscription"),
        ("tags_url", "/tags"),
        ("teams_url", "/teams"),
        ("trees_url", "/git/trees{/sha}"),
    ] {
        m.insert(key.to_owned(), json!(format!("{a}{suffix}")));
    }
    let host = WEB.trim_start_matches("https://");
    let scalars = json!({
        "id": id,
        "node_id": node_id("R", id),
        "name": name,
        "full_name": full_name,
        "owner": user_json(api, owner),
        "private": false,
        "visibility": "public",
        "html_url": format!("{WEB}/{full_name}"),
        "description": null,
        "fork": fork,
        "git_url": format!("git://{host}/{full_name}.git"),
        "ssh_url": format!("git@{host}:{full_name}.git"),
        "clone_url": format!("{WEB}/{full_name}.git"),
        "svn_url": format!("{WEB}/{full_name}"),
        "mirror_url": null,
        "homepage": null,
        "language": null,
    });
    let counts = json!({
        "forks": 0,
        "forks_count": 0,
        "stargazers_count": 0,
        "watchers_count": 0,
        "watchers": 0,
        "size": 1,
        "default_branch": DEFAULT_BRANCH,
        "open_issues": 0,
        "open_issues_count": 0,
        "is_template": false,
        "topics": [],
    });
    let flags = json!({
        "has_issues": true,
        "has_projects": false,
        "has_wiki": false,
        "has_pages": false,
        "has_downloads": true,
        "has_discussions": false,
        "archived": false,
        "disabled": false,
        "license": null,
        "allow_forking": true,
        "web_commit_signoff_required": false,
        "pushed_at": "2024-01-01T00:00:00Z",
        "created_at": "2020-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z",
    });
    for part in [scalars, counts, flags] {
        if let Value::Object(s) = part {
            m.extend(s);
        }
    }
    Value::Object(m)
}

fn link(href: String) -> Value {
    json!({ "href": href })
}

/// GitHub's `label` objects for `names`.
pub(crate) fn labels_json(api: &str, names: &[String]) -> Value {
    names
        .iter()
        .map(|name| {
            json!({
                "id": stable_id(&format!("label {name}"), 200_000_000),
                "node_id": node_id("LA", stable_id(&format!("label {name}"), 1_000)),
                "url": format!("{api}/repos/{REPO}/labels/{}", name.replace(' ', "%20")),
                "name": name,
                "color": "ededed",
                "default": false,
                "description": null,
            })
        })
        .collect()
}

/// `pull-request` (`full`) or `pull-request-simple`.
fn pr_json(api: &str, st: &State, pr: &Pr, full: bool) -> Value {
    let spec = &pr.spec;
    let n = spec.number;
    let a = format!("{api}/repos/{REPO}");
    let html = html_url(spec.number);
    let shown = pr.shown();
    let head_owner = fork_owner(spec);
    let head_full = spec.head_repo_full_name();
    let head = json!({
        "label": format!("{head_owner}:{}", spec.head_ref),
        "ref": spec.head_ref,
        "sha": spec.head_sha,
        "user": user_json(api, &head_owner),
        "repo": repo_json(api, &head_full, spec.fork),
    });
    let base = json!({
        "label": format!("{OWNER}:{}", spec.base_ref),
        "ref": spec.base_ref,
        "sha": "0000000000000000000000000000000000000001",
        "user": user_json(api, OWNER),
        "repo": repo_json(api, REPO, false),
    });
    let links = json!({
        "self": link(format!("{a}/pulls/{n}")),
        "html": link(html.clone()),
        "issue": link(format!("{a}/issues/{n}")),
        "comments": link(format!("{a}/issues/{n}/comments")),
        "review_comments": link(format!("{a}/pulls/{n}/comments")),
        "review_comment": link(format!("{a}/pulls/comments{{/number}}")),
        "commits": link(format!("{a}/pulls/{n}/commits")),
        "statuses": link(format!("{a}/statuses/{}", spec.head_sha)),
    });
    let mut v = json!({
        "url": format!("{a}/pulls/{n}"),
        "id": stable_id(&format!("pr {n}"), 100_000_000),
        "node_id": node_id("PR", n),
        "html_url": html,
        "diff_url": format!("{html}.diff"),
        "patch_url": format!("{html}.patch"),
        "issue_url": format!("{a}/issues/{n}"),
        "commits_url": format!("{a}/pulls/{n}/commits"),
        "review_comments_url": format!("{a}/pulls/{n}/comments"),
        "review_comment_url": format!("{a}/pulls/comments{{/number}}"),
        "comments_url": format!("{a}/issues/{n}/comments"),
        "statuses_url": format!("{a}/statuses/{}", spec.head_sha),
        "number": n,
        "state": shown.state,
        "locked": false,
        "title": spec.title,
    });
    merge(
        &mut v,
        json!({
            "user": user_json(api, &spec.author),
            "body": null,
            "labels": labels_json(api, &spec.labels),
            "milestone": null,
            "active_lock_reason": null,
            "created_at": pr.created_at,
            "updated_at": pr.updated_at,
            "closed_at": pr.closed_at,
            "merged_at": shown.merged_at,
            "merge_commit_sha": shown.merge_sha,
            "assignee": null,
            "assignees": [],
            "requested_reviewers": [],
            "requested_teams": [],
            "head": head,
            "base": base,
            "_links": links,
            "author_association": association(st, &spec.author),
            "auto_merge": null,
            "draft": false,
        }),
    );
    if full {
        let mergeable_state = match pr.mergeable {
            _ if shown.state == "closed" => "unknown",
            // The base branch's protection requires a check that fails.
            Some(true) if pr.checks_failing => "blocked",
            Some(true) => "clean",
            Some(false) => "dirty",
            None => "unknown",
        };
        merge(
            &mut v,
            json!({
                "merged": shown.merged,
                "mergeable": pr.mergeable,
                "rebaseable": pr.mergeable,
                "mergeable_state": mergeable_state,
                "merged_by": if shown.merged { user_json(api, OWNER) } else { Value::Null },
                "comments": st.comments.iter().filter(|c| c.pr == n).count(),
                "review_comments": 0,
                "maintainer_can_modify": spec.fork,
                "commits": 1,
                "additions": 1,
                "deletions": 0,
                "changed_files": 1,
            }),
        );
    }
    v
}

/// `issue-comment`.
fn comment_json(api: &str, st: &State, c: &StoredComment) -> Value {
    json!({
        "id": c.id,
        "node_id": node_id("IC", c.id),
        "url": format!("{api}/repos/{REPO}/issues/comments/{}", c.id),
        "html_url": format!("{WEB}/{REPO}/pull/{}#issuecomment-{}", c.pr, c.id),
        "issue_url": format!("{api}/repos/{REPO}/issues/{}", c.pr),
        "body": c.body,
        "user": user_json(api, &c.author),
        "created_at": c.created_at,
        "updated_at": c.updated_at,
        "author_association": association(st, &c.author),
        "performed_via_github_app": null,
    })
}

/// `status`.
fn status_json(api: &str, creator: &str, s: &StoredStatus) -> Value {
    let user = user_json(api, creator);
    json!({
        "url": format!("{api}/repos/{REPO}/statuses/{}", s.sha),
        "avatar_url": user["avatar_url"],
        "id": s.id,
        "node_id": node_id("SC", s.id),
        "state": s.status.state,
        "description": s.status.description,
        "target_url": s.status.target_url,
        "context": s.status.context,
        "created_at": s.created_at,
        "updated_at": s.created_at,
        "creator": user,
    })
}

/// `pull-request-review`.
fn review_json(api: &str, st: &State, r: &StoredReview) -> Value {
    let html = format!("{WEB}/{REPO}/pull/{}#pullrequestreview-{}", r.pr, r.id);
    let pr_url = format!("{api}/repos/{REPO}/pulls/{}", r.pr);
    json!({
        "id": r.id,
        "node_id": node_id("PRR", r.id),
        "user": user_json(api, &r.reviewer),
        "body": "",
        "state": r.state,
        "html_url": html,
        "pull_request_url": pr_url,
        "_links": { "html": link(html.clone()), "pull_request": link(pr_url.clone()) },
        "submitted_at": r.submitted_at,
        "commit_id": r.commit_id,
        "author_association": association(st, &r.reviewer),
    })
}

/// `repository-collaborator-permission`.
fn permission_json(api: &str, login: &str, level: &str) -> Value {
    let permission = match level {
        "maintain" => "write",
        "triage" => "read",
        other => other,
    };
    let rank = ["none", "read", "triage", "write", "maintain", "admin"]
        .iter()
        .position(|l| *l == level)
        .unwrap_or(0);
    let mut user = user_json(api, login);
    merge(
        &mut user,
        json!({
            "permissions": {
                "pull": rank >= 1, "triage": rank >= 2, "push": rank >= 3,
                "maintain": rank >= 4, "admin": rank >= 5,
            },
            "role_name": level,
        }),
    );
    json!({ "permission": permission, "role_name": level, "user": user })
}

// ---- Webhook payloads --------------------------------------------------------------------------

/// The examples of `@octokit/webhooks-examples` for api.github.com, by event name.
fn webhook_examples() -> &'static HashMap<String, Vec<Value>> {
    static EXAMPLES: OnceLock<HashMap<String, Vec<Value>>> = OnceLock::new();
    EXAMPLES.get_or_init(|| {
        let path = fixtures_dir().join("webhooks-examples/api.github.com/index.json");
        let text = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let index: Value = serde_json::from_slice(&text)
            .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
        let mut out: HashMap<String, Vec<Value>> = HashMap::new();
        for entry in index.as_array().into_iter().flatten() {
            let (Some(name), Some(examples)) =
                (entry["name"].as_str(), entry["examples"].as_array())
            else {
                continue;
            };
            out.entry(name.to_owned())
                .or_default()
                .extend(examples.iter().cloned());
        }
        out
    })
}

/// GitHub's first api.github.com example of `event` that `pick` accepts.
pub fn webhook_example(event: &str, pick: impl Fn(&Value) -> bool) -> Value {
    webhook_examples()
        .get(event)
        .and_then(|xs| xs.iter().find(|x| pick(x)))
        .cloned()
        .unwrap_or_else(|| panic!("@octokit/webhooks-examples has no such {event} example"))
}

/// `s` with every `<prefix><old>` not followed by another digit turned into `<prefix><new>`.
fn replace_number(s: &str, prefix: &str, old: u64, new: u64) -> String {
    let needle = format!("{prefix}{old}");
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(&needle) {
        let after = &rest[i + needle.len()..];
        out.push_str(&rest[..i]);
        if after.starts_with(|c: char| c.is_ascii_digit()) {
            out.push_str(&needle);
        } else {
            out.push_str(&format!("{prefix}{new}"));
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Renumbers the pull request / issue URLs of `v` from `old` to `new`.
fn renumber(v: &mut Value, old: u64, new: u64) {
    map_strings(v, &|s| {
        let s = replace_number(s, "/pulls/", old, new);
        let s = replace_number(&s, "/pull/", old, new);
        replace_number(&s, "/issues/", old, new)
    });
}

/// Makes the user object `v` be `login`: its login, ids and URLs.
fn set_user(v: &mut Value, login: &str) {
    let Some(obj) = v.as_object_mut() else {
        return;
    };
    let old = obj
        .get("login")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let id = login_id(login);
    if !old.is_empty() {
        for (key, value) in obj.iter_mut() {
            if let Value::String(s) = value
                && key.ends_with("url")
            {
                *s = s
                    .replace(&format!("/users/{old}"), &format!("/users/{login}"))
                    .replace(&format!("github.com/{old}"), &format!("github.com/{login}"));
            }
        }
    }
    obj.insert("login".into(), json!(login));
    obj.insert("id".into(), json!(id));
    obj.insert("node_id".into(), json!(node_id("U", id)));
    obj.insert(
        "avatar_url".into(),
        json!(format!("https://avatars.githubusercontent.com/u/{id}?v=4")),
    );
    if login.ends_with("[bot]") {
        obj.insert("type".into(), json!("Bot"));
    }
}

/// How the examples move to [`REPO`]: URLs, names, id, default branch, and the owner, an
/// organization.
const REBRAND: Rebrand = Rebrand {
    example_repo: EXAMPLE_REPO,
    repo_id: REPO_ID,
    branch_keys: &["default_branch", "master_branch"],
    repo: |obj| {
        obj.insert("node_id".into(), json!(node_id("R", REPO_ID)));
        if let Some(owner) = obj.get_mut("owner") {
            set_user(owner, OWNER);
            if let Some(o) = owner.as_object_mut() {
                o.insert("type".into(), json!("Organization"));
                if o.contains_key("name") {
                    o.insert("name".into(), json!(OWNER));
                }
            }
        }
    },
    every: |_| {},
};

/// Ids for comments and reviews in payloads (a range apart from the fake's).
fn payload_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(3_000_000_001);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A `pull_request` delivery: GitHub's example for `action` (`opened`, `synchronize`,
/// `reopened`, `closed`; any other action is the `opened` example with `action` replaced),
/// for pull request `pr` of [`REPO`]. `merged` (only with `closed`) marks it merged as
/// `merge_sha`. A fork's head repository is `<author>/shop`, `fork: true`, with its own id.
pub fn pull_request_payload(
    action: &str,
    pr: &PrSpec,
    merged: bool,
    merge_sha: Option<&str>,
) -> Vec<u8> {
    super::assert_merge_closes(action, merged);
    let examples = webhook_examples().get("pull_request");
    let mut v = match examples.and_then(|xs| xs.iter().find(|x| x["action"] == action)) {
        Some(x) => x.clone(),
        None => {
            let mut x = webhook_example("pull_request", |x| x["action"] == "opened");
            x["action"] = json!(action);
            x
        }
    };
    rebrand(&mut v, &REBRAND);
    let old_number = v["number"].as_u64().unwrap_or(0);
    let old_sha = v["pull_request"]["head"]["sha"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    renumber(&mut v, old_number, pr.number);
    if !old_sha.is_empty() {
        let new_sha = pr.head_sha.clone();
        map_strings(&mut v, &move |s| s.replace(&old_sha, &new_sha));
    }
    let now = now_iso();
    v["number"] = json!(pr.number);
    if v.get("after").is_some() {
        v["after"] = json!(pr.head_sha);
    }
    set_user(&mut v["sender"], &pr.author);

    let base_repo = v["pull_request"]["base"]["repo"].clone();
    let p = &mut v["pull_request"];
    p["number"] = json!(pr.number);
    p["title"] = json!(pr.title);
    p["html_url"] = json!(html_url(pr.number));
    set_closing(p, action == "closed", merged, merge_sha, &now);
    p["updated_at"] = json!(now);
    p["labels"] = labels_json(PUBLIC_API, &pr.labels);
    set_user(&mut p["user"], &pr.author);

    let head_owner = fork_owner(pr);
    let head_full = pr.head_repo_full_name();
    let mut head_repo = base_repo;
    if pr.fork {
        let from = format!("/{REPO}");
        let to = format!("/{head_full}");
        let from_ssh = format!(":{REPO}");
        let to_ssh = format!(":{head_full}");
        map_strings(&mut head_repo, &move |s| {
            s.replace(&from, &to).replace(&from_ssh, &to_ssh)
        });
        let id = repo_id(&head_full);
        head_repo["full_name"] = json!(head_full);
        head_repo["name"] = json!(NAME);
        head_repo["id"] = json!(id);
        head_repo["node_id"] = json!(node_id("R", id));
        head_repo["fork"] = json!(true);
        set_user(&mut head_repo["owner"], &head_owner);
        head_repo["owner"]["type"] = json!("User");
    }
    let head = &mut p["head"];
    head["ref"] = json!(pr.head_ref);
    head["sha"] = json!(pr.head_sha);
    head["label"] = json!(format!("{head_owner}:{}", pr.head_ref));
    set_user(&mut head["user"], &head_owner);
    head["repo"] = head_repo;
    let base = &mut p["base"];
    base["ref"] = json!(pr.base_ref);
    base["label"] = json!(format!("{OWNER}:{}", pr.base_ref));
    to_bytes(&v)
}

/// An `issue_comment` delivery (`created`) of a new comment by `author` on pull request
/// `pr_number` (`issue.pull_request` is there), from GitHub's example. The comment's id is new
/// for each call.
pub fn issue_comment_payload(pr_number: u64, author: &str, body: &str) -> Vec<u8> {
    let mut v = webhook_example("issue_comment", |x| x["action"] == "created");
    rebrand(&mut v, &REBRAND);
    let old_number = v["issue"]["number"].as_u64().unwrap_or(0);
    renumber(&mut v, old_number, pr_number);
    let id = payload_id();
    let api = format!("{PUBLIC_API}/repos/{REPO}");
    let html = format!("{WEB}/{REPO}/pull/{pr_number}");
    let now = now_iso();
    let issue = &mut v["issue"];
    issue["number"] = json!(pr_number);
    issue["html_url"] = json!(html);
    issue["pull_request"] = json!({
        "url": format!("{api}/pulls/{pr_number}"),
        "html_url": html,
        "diff_url": format!("{html}.diff"),
        "patch_url": format!("{html}.patch"),
        "merged_at": null,
    });
    let comment = &mut v["comment"];
    comment["id"] = json!(id);
    comment["node_id"] = json!(node_id("IC", id));
    comment["url"] = json!(format!("{api}/issues/comments/{id}"));
    comment["html_url"] = json!(format!("{html}#issuecomment-{id}"));
    comment["issue_url"] = json!(format!("{api}/issues/{pr_number}"));
    comment["body"] = json!(body);
    comment["created_at"] = json!(now);
    comment["updated_at"] = json!(now);
    set_user(&mut comment["user"], author);
    set_user(&mut v["sender"], author);
    to_bytes(&v)
}

/// A `pull_request_review` delivery of `reviewer`'s review of pull request `pr_number` at
/// `commit_sha`, from GitHub's example: `state` `approved`, `changes_requested` or `commented`
/// (action `submitted`), or `dismissed` (action `dismissed`).
pub fn pull_request_review_payload(
    pr_number: u64,
    reviewer: &str,
    state: &str,
    commit_sha: &str,
) -> Vec<u8> {
    let state = state.to_ascii_lowercase();
    let action = if state == "dismissed" {
        "dismissed"
    } else {
        "submitted"
    };
    let mut v = webhook_example("pull_request_review", |x| x["action"] == action);
    rebrand(&mut v, &REBRAND);
    let old_number = v["pull_request"]["number"].as_u64().unwrap_or(0);
    renumber(&mut v, old_number, pr_number);
    let old_sha = v["review"]["commit_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if !old_sha.is_empty() {
        let new_sha = commit_sha.to_owned();
        map_strings(&mut v, &move |s| s.replace(&old_sha, &new_sha));
    }
    let id = payload_id();
    let html = format!("{WEB}/{REPO}/pull/{pr_number}#pullrequestreview-{id}");
    v["pull_request"]["number"] = json!(pr_number);
    let review = &mut v["review"];
    review["id"] = json!(id);
    review["node_id"] = json!(node_id("PRR", id));
    review["state"] = json!(state);
    review["commit_id"] = json!(commit_sha);
    review["html_url"] = json!(html);
    review["_links"]["html"]["href"] = json!(html);
    review["submitted_at"] = json!(now_iso());
    set_user(&mut review["user"], reviewer);
    set_user(&mut v["sender"], reviewer);
    to_bytes(&v)
}

/// A `push` delivery of `branch` (a name, or a full `refs/…` ref) from `before` to `after`,
/// from GitHub's example of a branch push: `created` when `before` is all zeros, `deleted`
/// (no commits, `head_commit: null`) when `after` is. Pushed by [`OWNER`].
pub fn push_payload(branch: &str, before: &str, after: &str) -> Vec<u8> {
    push_payload_by(branch, before, after, OWNER)
}

/// [`push_payload`], pushed by `pusher` (its `sender` and `pusher`).
pub fn push_payload_by(branch: &str, before: &str, after: &str, pusher: &str) -> Vec<u8> {
    let mut v = webhook_example("push", |x| {
        x["ref"]
            .as_str()
            .is_some_and(|r| r.starts_with("refs/heads/"))
    });
    rebrand(&mut v, &REBRAND);
    let old_sha = v["after"].as_str().unwrap_or_default().to_owned();
    if !old_sha.is_empty() {
        let new_sha = after.to_owned();
        map_strings(&mut v, &move |s| s.replace(&old_sha, &new_sha));
    }
    let zeros = |s: &str| !s.is_empty() && s.bytes().all(|b| b == b'0');
    let git_ref = if branch.starts_with("refs/") {
        branch.to_owned()
    } else {
        format!("refs/heads/{branch}")
    };
    let (created, deleted) = (zeros(before), zeros(after));
    v["ref"] = json!(git_ref);
    v["before"] = json!(before);
    v["after"] = json!(after);
    v["created"] = json!(created);
    v["deleted"] = json!(deleted);
    v["forced"] = json!(false);
    let short = |s: &str| s.chars().take(12).collect::<String>();
    v["compare"] = json!(if created {
        format!("{WEB}/{REPO}/commit/{after}")
    } else {
        format!("{WEB}/{REPO}/compare/{}...{}", short(before), short(after))
    });
    if deleted {
        v["head_commit"] = Value::Null;
        v["commits"] = json!([]);
    } else {
        v["head_commit"]["timestamp"] = json!(now_iso());
        v["commits"] = json!([v["head_commit"].clone()]);
    }
    set_user(&mut v["sender"], pusher);
    v["pusher"] = json!({"name": pusher, "email": format!("{pusher}@users.noreply.github.com")});
    to_bytes(&v)
}

// ---- Sending webhooks ------------------------------------------------------------------------

/// The headers GitHub sends with a delivery, signed with `secret` over `body`.
pub fn webhook_headers(
    secret: &[u8],
    event: &str,
    delivery_id: &str,
    body: &[u8],
) -> Vec<(String, String)> {
    vec![
        ("User-Agent".into(), "GitHub-Hookshot/fake".into()),
        ("Content-Type".into(), "application/json".into()),
        ("X-GitHub-Event".into(), event.into()),
        ("X-GitHub-Delivery".into(), delivery_id.into()),
        ("X-GitHub-Hook-ID".into(), "1".into()),
        (
            "X-GitHub-Hook-Installation-Target-Type".into(),
            "repository".into(),
        ),
        (
            "X-GitHub-Hook-Installation-Target-ID".into(),
            REPO_ID.to_string(),
        ),
        (
            "X-Hub-Signature-256".into(),
            format!("sha256={}", super::sign(secret, body)),
        ),
    ]
}

/// POSTs a delivery as GitHub does to `http://<addr>/webhooks/github` (`addr` is
/// `127.0.0.1:PORT`), and returns the status and body of the answer. Panics when no answer
/// comes.
pub fn send_webhook(
    addr: &str,
    secret: &[u8],
    event: &str,
    delivery_id: &str,
    body: &[u8],
) -> (u16, String) {
    let headers = webhook_headers(secret, event, delivery_id, body);
    super::deliver(addr, WEBHOOK_PATH, &headers, body)
}

/// POSTs `body` with exactly `headers` (plus `Host`, and `Content-Length` and
/// `Connection: close` unless given) to `http://<addr>/webhooks/github`. Panics when no answer
/// comes (use [`try_send_webhook_raw`] when a reset is acceptable).
pub fn send_webhook_raw(addr: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    super::post_webhook(addr, WEBHOOK_PATH, headers, body)
}

/// [`send_webhook_raw`], with an error instead of a panic when no answer comes (a server may
/// reset the connection of an oversized body before answering).
pub fn try_send_webhook_raw(
    addr: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<(u16, String)> {
    http_request(addr, "POST", WEBHOOK_PATH, headers, body).map(|r| (r.status, r.body))
}

/// What GitHub delivers when something happens to a pull request.
const EVENTS: PullRequestEvents = PullRequestEvents {
    push_action: "synchronize",
    label_action: "labeled",
    pull_request: pull_request_payload,
    approved: |pr, reviewer| Delivery {
        event: "pull_request_review",
        body: pull_request_review_payload(pr.number, reviewer, "approved", &pr.head_sha),
    },
    commented: |pr, comment| Delivery {
        event: "issue_comment",
        body: issue_comment_payload(pr.number, &comment.author, &comment.body),
    },
    set_user,
    push: |branch, before, after, pusher| Delivery {
        event: "push",
        body: push_payload_by(branch, before, after, pusher),
    },
};

/// What GitHub delivers when `event` happens to `pr`.
fn delivery(pr: &PrSpec, event: &Event) -> Delivery {
    EVENTS.delivery(pr, event)
}
