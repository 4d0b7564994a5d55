//! A fake Gitea for end-to-end tests of `slipway serve`: the REST API v1 its Gitea adapter
//! calls, and the webhook deliveries Gitea sends.
//!
//! - [`DIALECT`] makes a [`FakeForge`] (the kit's one HTTP server, on `127.0.0.1:0`) answer, under `/api/v1`, exactly the calls
//!   `slipway-forge`'s Gitea adapter makes, for one repository, [`REPO`] (`acme/shop`), from
//!   in-memory state the test controls: pull requests (head, state, mergeability), reviews,
//!   collaborator permissions. It keeps what the adapter writes (issue comments, commit
//!   statuses) and records every request with its answer. Answers have the fields of Gitea's
//!   API structs (`modules/structs`: `PullRequest`, `Comment`, `PullReview`, `CommitStatus`,
//!   `RepoCollaboratorPermission`, `User`, `Repository`), paginated lists take `page` and
//!   `limit` and answer with `X-Total-Count` and a `Link` header like Gitea's, and anything else
//!   is a `404` recorded with no operation ([`FakeForge::unhandled`]).
//! - The payload builders ([`pull_request_payload`], [`issue_comment_payload`],
//!   [`pull_request_review_payload`]) start from the Gitea fixtures of `slipway-forge`
//!   (`tests/fixtures/gitea`: Gitea's webhook structs filled with Gitea's own test values), move
//!   them to [`REPO`] and patch only numbers, shas, branches, users and the action.
//! - [`send_webhook`] POSTs a delivery signed like Gitea's (`X-Gitea-Signature`: the hex
//!   HMAC-SHA256 of the body, with `X-Gitea-Event`, `X-Gitea-Event-Type`, `X-Gitea-Delivery` and
//!   the `X-Gogs-*`/`X-GitHub-*` copies Gitea adds) to `slipway serve`'s [`WEBHOOK_PATH`];
//!   [`send_webhook_raw`] sends any headers, for hostile cases.
//!
//! ```ignore
//! let gt = FakeForge::start(Forge::Gitea, "slipway-bot");
//! gt.set_permission("alice", "write");
//! gt.add_pr(PrSpec::new(1, &sha));
//! // … start `slipway serve` with [forge.gitea] api_url = gt.url(), repository = "acme/shop"
//! let body = pull_request_payload("opened", &gt.pr(1), false, None);
//! let (status, _) = send_webhook(&server.addr, SECRET, "pull_request", "d-1", &body);
//! let plan = gt.wait_for_comment(1, |c| c.body.contains("slipway:plan"), T);
//! ```

use serde_json::{Value, json};

pub use super::Recorded;
use super::github::{Op, match_op_with};
use super::state::{
    Call, Core, Delivery, Dialect, EditRefused, Event, Pr, State, StoredComment, StoredReview,
    StoredStatus, Unauthorized, route,
};
pub use super::state::{
    Comment, DEFAULT_BRANCH, FakeForge, NAME, OWNER, PrSpec, PrState, REPO, Status,
};
use super::{
    Forge, Page, PageLinks, PullRequestEvents, Rebrand, Reply, Request, map_strings, now_iso,
    rebrand, set_closing, stable_id, to_bytes, token_of,
};

/// [`REPO`]'s id, the same in API answers and webhook payloads (`repo_id` tells forks).
pub const REPO_ID: u64 = 6_100_001;
pub const WEBHOOK_PATH: &str = "/webhooks/gitea";
/// Gitea's `ROOT_URL` in every URL of answers and payloads (the host of the fixtures).
pub const WEB: &str = "http://localhost:3000";
/// Where the API lives under the fake's root.
pub const API_PREFIX: &str = "/api/v1";
/// Gitea's most items per page (`[api] MAX_RESPONSE_ITEMS`).
pub const MAX_PAGE: usize = 50;
/// Gitea's default items per page (`[api] DEFAULT_PAGING_NUM`).
pub const DEFAULT_PAGE: usize = 30;

/// A repository's id: [`REPO_ID`] for `acme/shop`, another stable one for a fork.
pub fn repo_id(full_name: &str) -> u64 {
    super::repo_id_with(full_name, REPO_ID, 7_000_000)
}

/// A user's id, the same in answers and payloads.
pub fn user_id(login: &str) -> u64 {
    stable_id(login, 100)
}

/// The pull request's id (not its number), the same in answers and payloads.
pub fn pr_id(number: u64) -> u64 {
    40_000 + number
}

///
/// Endpoints (under [`FakeForge::url`], like `https://gitea.example.com/api/v1`):
///
/// | request | answer |
/// | --- | --- |
/// | `GET /user` | the bot |
/// | `GET /repos/acme/shop/issues/{index}/comments` | all its comments, oldest first (Gitea does not page this list) |
/// | `POST /repos/acme/shop/issues/{index}/comments` | `201`, a comment by the bot |
/// | `GET`/`PATCH /repos/acme/shop/issues/comments/{id}` | the comment; `PATCH` edits it (`403` unless the bot wrote it) |
/// | `POST /repos/acme/shop/statuses/{sha}` | `201`, the status |
/// | `GET /repos/acme/shop/commits/{sha}/status` | the combined status: the latest of each context, and a failing `ci/tests` on the head of a pull request whose checks fail |
/// | `GET /repos/acme/shop/pulls?state=open\|closed\|all` | newest first, paginated (default `open`) |
/// | `GET /repos/acme/shop/pulls/{index}` | the pull request, with `mergeable` and `merged` |
/// | `GET /repos/acme/shop/pulls/{index}/reviews` | its reviews, oldest first, paginated |
/// | `GET /repos/acme/shop/collaborators/{user}/permission` | as set; `404` for a user never set; `403` for someone else's unless the bot is a repository admin (or owner) |
///
/// Every one needs a token (`Authorization: token …` or `Bearer …`; any token, or the one of
pub static DIALECT: Dialect = Dialect {
    forge: Forge::Gitea,
    label: "Gitea",
    pr_word: "pull request #",
    api_prefix: API_PREFIX,
    webhook_path: WEBHOOK_PATH,
    first_id: 500,
    roles: &["owner", "admin", "write", "read", "none"],
    // Only a repository admin may ask for someone else's permission: the bot is one.
    bot_role: Some("admin"),
    review_states: &["APPROVED", "REQUEST_CHANGES", "COMMENT", "PENDING"],
    approval_toggles: false,
    pr_url: html_url,
    pr_ref: |n| format!("refs/pull/{n}/head"),
    repo_id: REPO_ID,
    write_role: "write",
    read_role: "read",
    delivery,
    headers: |secret, d, id| webhook_headers(secret.as_bytes(), d.event, id, &d.body),
    respond,
    bug: || message(500, "the fake Gitea failed to answer (a bug)"),
};

/// Pull request `number`'s web page.
pub fn html_url(number: u64) -> String {
    format!("{WEB}/{REPO}/pulls/{number}")
}

/// The head repository's id.
pub fn head_repo_id(spec: &PrSpec) -> u64 {
    repo_id(&spec.head_repo_full_name())
}

// ---- Answering ---------------------------------------------------------------------------------

/// Gitea's name (its swagger `operationId`) of an operation: Gitea's API v1 has GitHub's
/// paths, so the fake routes with GitHub's table.
fn op_id(op: &Op) -> &'static str {
    match op {
        Op::GetUser => "userGetCurrent",
        Op::ListComments(_) => "issueGetComments",
        Op::CreateComment(_) => "issueCreateComment",
        Op::GetComment(_) => "issueGetComment",
        Op::UpdateComment(_) => "issueEditComment",
        Op::CreateStatus(_) => "repoCreateStatus",
        Op::GetCombinedStatus(_) => "repoGetCombinedStatusByRef",
        Op::ListPulls => "repoListPullRequests",
        Op::GetPull(_) => "repoGetPullRequest",
        Op::ListReviews(_) => "repoListPullReviews",
        Op::GetPermission(_) => "repoGetRepoPermissions",
        // Never matched (see `match_op`): Gitea has no deployments API.
        Op::ListDeployments | Op::CreateDeployment | Op::CreateDeploymentStatus(_) => {
            "(not in Gitea's API)"
        }
    }
}

fn match_op(method: &str, segments: &[String]) -> Option<Op> {
    match_op_with(method, segments, |n| {
        (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .then(|| n.parse().ok())
            .flatten()
    })
    // GitHub's deployments have no counterpart in Gitea's API: a request for them is one the
    // fake does not implement.
    .filter(|op| {
        !matches!(
            op,
            Op::ListDeployments | Op::CreateDeployment | Op::CreateDeploymentStatus(_)
        )
    })
}

/// Gitea's error shape: `{"message", "url"}` (`url` points at the API's documentation).
fn message(status: u16, text: &str) -> Reply {
    Reply::json(
        status,
        json!({ "message": text, "url": format!("{WEB}/api/swagger") }),
    )
}

fn not_found() -> Reply {
    Reply::json(
        404,
        json!({ "errors": null, "message": "The target couldn't be found.", "url": format!("{WEB}/api/swagger") }),
    )
}

/// Answers one request: its reply and the operation it matched.
fn respond(core: &Core, st: &mut State, req: &Request) -> (Reply, Option<&'static str>) {
    route(req, API_PREFIX, match_op, op_id, not_found, |call| {
        answer(core, st, call)
    })
}

fn answer(core: &Core, st: &mut State, call: &Call<'_, Op>) -> Reply {
    let (op, req, query, json) = (&call.op, call.req, &call.query, call.json.as_ref());
    match st.authorize(token_of(req, None)) {
        Err(Unauthorized::Missing) => return message(401, "token is required"),
        Err(Unauthorized::Wrong) => {
            return message(401, "user does not exist [uid: 0, name: ]");
        }
        Ok(()) => {}
    }
    let param = |name: &str| call.param(name);
    let path = req.path.as_str();
    match op {
        Op::GetUser => Reply::json(200, user_json(&core.bot_login)),
        Op::ListComments(n) => {
            if st.pr(*n).is_none() {
                return not_found();
            }
            let items: Vec<Value> = st.comments_of(*n).map(comment_json).collect();
            Reply::json(200, Value::Array(items))
        }
        Op::CreateComment(n) => {
            match st.create_comment(*n, &core.bot_login, comment_body(json), not_found) {
                Ok(id) => Reply::json(201, comment_json(st.comment(id).expect("just added"))),
                Err(reply) => reply,
            }
        }
        Op::GetComment(id) => match st.comment(*id) {
            Some(c) => Reply::json(200, comment_json(c)),
            None => not_found(),
        },
        Op::UpdateComment(id) => {
            let body = match comment_body(json) {
                Ok(b) => b,
                Err(reply) => return reply,
            };
            // Only its poster may edit a comment (Gitea would let a repository admin edit
            // anyone's: the fake refuses, so that editing someone else's comment shows).
            match st.edit_comment(*id, None, &core.bot_login, true, body) {
                Err(EditRefused::NotFound) => not_found(),
                Err(EditRefused::NotAuthor) => message(403, "Forbidden"),
                Ok(()) => Reply::json(200, comment_json(st.comment(*id).expect("edited above"))),
            }
        }
        Op::CreateStatus(sha) => create_status(core, st, sha, json),
        Op::GetCombinedStatus(sha) => {
            let number = |name: &str, default: usize| {
                param(name)
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(default)
            };
            combined_status(core, st, sha, number("page", 1), number("limit", 30))
        }
        Op::ListPulls => {
            let Some(prs) = st.prs_in(param("state").unwrap_or("open")) else {
                return message(422, "[State]: invalid state");
            };
            let items = prs.into_iter().map(|p| pr_json(st, p)).collect();
            paginate(path, query, items)
        }
        Op::GetPull(n) => match st.pr(*n) {
            Some(p) => Reply::json(200, pr_json(st, p)),
            None => not_found(),
        },
        Op::ListReviews(n) => {
            let Some(pr) = st.pr(*n) else {
                return not_found();
            };
            let items = st
                .reviews_of(*n)
                .map(|r| review_json(r, &pr.spec.head_sha))
                .collect();
            paginate(path, query, items)
        }
        Op::GetPermission(user) => {
            let bot = st.permissions.get(&core.bot_login.to_ascii_lowercase());
            let admin = bot.is_some_and(|(_, level)| level == "admin" || level == "owner");
            if !admin && !user.eq_ignore_ascii_case(&core.bot_login) {
                return message(
                    403,
                    "Only admins can query all permissions, repo admins can query all repo \
                         permissions, collaborators can query only their own",
                );
            }
            match st.permissions.get(&user.to_ascii_lowercase()) {
                Some((login, level)) => Reply::json(
                    200,
                    json!({ "permission": level, "role_name": level, "user": user_json(login) }),
                ),
                None => not_found(),
            }
        }
        Op::ListDeployments | Op::CreateDeployment | Op::CreateDeploymentStatus(_) => not_found(),
    }
}

fn create_status(core: &Core, st: &mut State, sha: &str, body: Option<&Value>) -> Reply {
    let hex = sha.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex || !(sha.len() == 40 || sha.len() == 64) {
        return not_found();
    }
    let Some(body) = body else {
        return message(422, "[State]: Required");
    };
    let state = body.get("state").and_then(Value::as_str).unwrap_or("");
    if !matches!(
        state,
        "pending" | "success" | "error" | "failure" | "warning"
    ) {
        return message(422, "[State]: invalid commit status state");
    }
    let text = |field: &str| body.get(field).and_then(Value::as_str).map(str::to_owned);
    let stored = st.add_status(
        sha,
        Status {
            context: text("context").unwrap_or_else(|| "default".to_owned()),
            state: state.to_owned(),
            description: text("description"),
            target_url: text("target_url"),
        },
    );
    Reply::json(201, status_json(&core.bot_login, stored))
}

/// The `body` of a comment create/edit request, or Gitea's `422`.
fn comment_body(json: Option<&Value>) -> Result<String, Reply> {
    match json.and_then(|j| j.get("body")) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(message(422, "[Body]: Required")),
    }
}

/// One page of `items` as Gitea pages lists: `limit` (default 30, at most 50) and `page` (from
/// 1), with `X-Total-Count` and, when there is more than one page, a `Link` header (`next`,
/// `last`, `first`, `prev`).
fn paginate(path: &str, query: &[(String, String)], items: Vec<Value>) -> Reply {
    let param = |name: &str| super::query_param(query, name).and_then(|v| v.parse::<usize>().ok());
    let limit = match param("limit") {
        Some(0) | None => DEFAULT_PAGE,
        Some(n) => n.min(MAX_PAGE),
    };
    let page = param("page").unwrap_or(1).max(1);
    let total = items.len();
    let Page { pages, items, .. } = Page::of(items, page, limit);
    let pager = PageLinks::new(format!("{WEB}{path}"), query, "limit", limit);
    let mut links = Vec::new();
    if page < pages {
        links.push(pager.link(page + 1, "next"));
        links.push(pager.link(pages, "last"));
    }
    if page > 1 {
        links.push(pager.link(1, "first"));
        links.push(pager.link((page - 1).min(pages), "prev"));
    }
    let reply = Reply::json(200, items)
        .header("X-Total-Count", total.to_string())
        .header(
            "Access-Control-Expose-Headers",
            "X-Total-Count, Link".to_owned(),
        );
    if links.is_empty() {
        reply
    } else {
        reply.header("Link", links.join(","))
    }
}

// ---- JSON in the shapes of Gitea's API structs ---------------------------------------------------

/// `User` (`modules/structs/user.go`).
fn user_json(login: &str) -> Value {
    json!({
        "id": user_id(login),
        "login": login,
        "login_name": "",
        "source_id": 0,
        "full_name": "",
        "email": format!("{login}@noreply.localhost"),
        "avatar_url": format!("{WEB}/avatars/{:032x}", user_id(login)),
        "html_url": format!("{WEB}/{login}"),
        "language": "",
        "is_admin": false,
        "last_login": "0001-01-01T00:00:00Z",
        "created": "2024-01-01T00:00:00Z",
        "restricted": false,
        "active": false,
        "prohibit_login": false,
        "location": "",
        "website": "",
        "description": "",
        "visibility": "public",
        "followers_count": 0,
        "following_count": 0,
        "starred_repos_count": 0,
        "username": login,
    })
}

/// `Repository` (`modules/structs/repo.go`), the fields of a pull request's `base.repo`.
fn repo_json(full_name: &str, fork: bool) -> Value {
    let (owner, name) = full_name.split_once('/').unwrap_or((full_name, full_name));
    let html = format!("{WEB}/{full_name}");
    let mut v = json!({
        "id": repo_id(full_name),
        "owner": user_json(owner),
        "name": name,
        "full_name": full_name,
        "description": "",
        "empty": false,
        "private": false,
        "fork": fork,
        "template": false,
        "parent": if fork { repo_json(REPO, false) } else { Value::Null },
        "mirror": false,
        "size": 1,
        "language": "",
        "languages_url": format!("{WEB}/api/v1/repos/{full_name}/languages"),
        "html_url": html,
        "url": format!("{WEB}/api/v1/repos/{full_name}"),
        "link": "",
        "ssh_url": format!("ssh://git@localhost:2222/{full_name}.git"),
        "clone_url": format!("{html}.git"),
        "original_url": "",
        "website": "",
    });
    let rest = json!({
        "stars_count": 0,
        "forks_count": 0,
        "watchers_count": 1,
        "open_issues_count": 0,
        "open_pr_counter": 0,
        "release_counter": 0,
        "default_branch": DEFAULT_BRANCH,
        "archived": false,
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z",
        "archived_at": "1970-01-01T00:00:00Z",
        "permissions": { "admin": false, "push": true, "pull": true },
        "has_issues": true,
        "has_wiki": true,
        "has_pull_requests": true,
        "has_projects": false,
        "has_releases": true,
        "has_packages": false,
        "has_actions": false,
        "ignore_whitespace_conflicts": false,
        "allow_merge_commits": true,
        "allow_rebase": true,
        "allow_rebase_explicit": true,
        "allow_squash_merge": true,
        "allow_rebase_update": true,
        "default_delete_branch_after_merge": false,
        "default_merge_style": "merge",
        "default_allow_maintainer_edit": false,
        "avatar_url": "",
        "internal": false,
        "mirror_interval": "",
        "object_format_name": "sha1",
        "mirror_updated": "0001-01-01T00:00:00Z",
        "repo_transfer": null,
    });
    if let (Value::Object(v), Value::Object(rest)) = (&mut v, rest) {
        v.extend(rest);
    }
    v
}

/// `PRBranchInfo`.
fn branch_json(label: String, git_ref: &str, sha: &str, full_name: &str, fork: bool) -> Value {
    json!({
        "label": label,
        "ref": git_ref,
        "sha": sha,
        "repo_id": repo_id(full_name),
        "repo": repo_json(full_name, fork),
    })
}

/// The base branch's tip in answers and payloads (the fake knows no commits).
const BASE_SHA: &str = "2020558fe2e34debb818a514715839cabd25e777";

/// `PullRequest` (`modules/structs/pull.go`).
fn pr_json(st: &State, pr: &Pr) -> Value {
    let spec = &pr.spec;
    let n = spec.number;
    let html = html_url(spec.number);
    let shown = pr.shown();
    let head_full = spec.head_repo_full_name();
    let head_label = if spec.fork {
        format!(
            "{}:{}",
            head_full.split('/').next().unwrap_or(OWNER),
            spec.head_ref
        )
    } else {
        spec.head_ref.clone()
    };
    json!({
        "id": pr_id(n),
        "url": html,
        "number": n,
        "user": user_json(&spec.author),
        "title": spec.title,
        "body": "",
        "labels": spec.labels.iter().map(|name| json!({"id": super::stable_id(name, 1), "name": name, "color": "ededed", "description": "", "url": ""})).collect::<Vec<_>>(),
        "milestone": null,
        "assignee": null,
        "assignees": null,
        "requested_reviewers": null,
        "requested_reviewers_teams": null,
        "state": shown.state,
        "draft": false,
        "is_locked": false,
        "comments": st.comments.iter().filter(|c| c.pr == n).count(),
        "review_comments": 0,
        "additions": 1,
        "deletions": 0,
        "changed_files": 1,
        "html_url": html,
        "diff_url": format!("{html}.diff"),
        "patch_url": format!("{html}.patch"),
        "mergeable": pr.mergeable.unwrap_or(false),
        "merged": shown.merged,
        "merged_at": shown.merged_at,
        "merge_commit_sha": shown.merge_sha,
        "merged_by": if shown.merged { user_json(&spec.author) } else { Value::Null },
        "allow_maintainer_edit": false,
        "base": branch_json(spec.base_ref.clone(), &spec.base_ref, BASE_SHA, REPO, false),
        "head": branch_json(head_label, &spec.head_ref, &spec.head_sha, &head_full, spec.fork),
        "merge_base": BASE_SHA,
        "due_date": null,
        "created_at": pr.created_at,
        "updated_at": pr.updated_at,
        "closed_at": pr.closed_at,
        "pin_order": 0,
    })
}

/// `Comment` (`modules/structs/issue_comment.go`).
fn comment_json(c: &StoredComment) -> Value {
    let pr_url = format!("{WEB}/{REPO}/pulls/{}", c.pr);
    json!({
        "id": c.id,
        "html_url": format!("{pr_url}#issuecomment-{}", c.id),
        "pull_request_url": pr_url,
        "issue_url": "",
        "user": user_json(&c.author),
        "original_author": "",
        "original_author_id": 0,
        "body": c.body,
        "assets": [],
        "created_at": c.created_at,
        "updated_at": c.updated_at,
    })
}

/// `CommitStatus` (`modules/structs/status.go`).
fn status_json(bot: &str, s: &StoredStatus) -> Value {
    json!({
        "id": s.id,
        "status": s.status.state,
        "target_url": s.status.target_url.clone().unwrap_or_default(),
        "description": s.status.description.clone().unwrap_or_default(),
        "url": format!("{WEB}/api/v1/repos/{REPO}/statuses/{}", s.sha),
        "context": s.status.context,
        "creator": user_json(bot),
        "created_at": s.created_at,
        "updated_at": s.created_at,
    })
}

/// `CombinedStatus` (`modules/structs/status.go`) of commit `sha`: the latest status of each
/// context, and a failing `ci/tests` for the head of a pull request whose checks fail, on
/// page `page` of `limit` (at most 50, Gitea's default `MAX_RESPONSE_ITEMS`). Its `state` is
/// the worst of them all (`failure` or `error`, then `pending`, then `warning`, `success`),
/// and empty without any, as Gitea answers.
fn combined_status(core: &Core, st: &State, sha: &str, page: usize, limit: usize) -> Reply {
    let sha = sha.to_ascii_lowercase();
    let mut latest: Vec<&StoredStatus> = Vec::new();
    for s in st.statuses.iter().rev().filter(|s| s.sha == sha) {
        if !latest.iter().any(|l| l.status.context == s.status.context) {
            latest.push(s);
        }
    }
    let mut statuses: Vec<Value> = latest
        .iter()
        .map(|s| status_json(&core.bot_login, s))
        .collect();
    let failing = st
        .prs
        .iter()
        .any(|p| p.checks_failing && p.spec.head_sha.eq_ignore_ascii_case(&sha));
    if failing {
        statuses.push(json!({
            "id": 1, "status": "failure", "context": "ci/tests", "description": "tests failed",
            "target_url": "", "url": format!("{WEB}/api/v1/repos/{REPO}/statuses/{sha}"),
            "creator": user_json(&core.bot_login), "created_at": now_iso(), "updated_at": now_iso(),
        }));
    }
    let states: Vec<&str> = statuses
        .iter()
        .filter_map(|s| s["status"].as_str())
        .collect();
    let worst = ["failure", "error", "pending", "warning", "success"]
        .into_iter()
        .find(|w| states.contains(w))
        .unwrap_or("");
    let total = statuses.len();
    let limit = limit.clamp(1, 50);
    let statuses: Vec<Value> = statuses
        .into_iter()
        .skip(page.saturating_sub(1).saturating_mul(limit))
        .take(limit)
        .collect();
    Reply::json(
        200,
        json!({
            "state": worst,
            "sha": sha,
            "total_count": total,
            "statuses": statuses,
            "repository": null,
            "commit_url": format!("{WEB}/api/v1/repos/{REPO}/commits/{sha}"),
            "url": format!("{WEB}/api/v1/repos/{REPO}/commits/{sha}/status"),
        }),
    )
}

/// `PullReview` (`modules/structs/pull_review.go`).
fn review_json(r: &StoredReview, head_sha: &str) -> Value {
    let pr_url = format!("{WEB}/{REPO}/pulls/{}", r.pr);
    json!({
        "id": r.id,
        "user": user_json(&r.reviewer),
        "team": null,
        "state": r.state,
        "body": "",
        "commit_id": r.commit_id,
        "stale": !r.commit_id.eq_ignore_ascii_case(head_sha),
        "official": r.state == "APPROVED" || r.state == "REQUEST_CHANGES",
        "dismissed": r.dismissed,
        "comments_count": 0,
        "submitted_at": r.submitted_at,
        "updated_at": r.submitted_at,
        "html_url": format!("{pr_url}#issuecomment-{}", r.id),
        "pull_request_url": pr_url,
    })
}

// ---- Webhook payloads --------------------------------------------------------------------------

const PULL_REQUEST_EXAMPLE: &str =
    include_str!("../../../slipway-forge/tests/fixtures/gitea/pull_request_opened.json");
const ISSUE_COMMENT_EXAMPLE: &str =
    include_str!("../../../slipway-forge/tests/fixtures/gitea/issue_comment_pull.json");
const PUSH_EXAMPLE: &str = include_str!("../../../slipway-forge/tests/fixtures/gitea/push.json");
const REVIEW_EXAMPLE: &str =
    include_str!("../../../slipway-forge/tests/fixtures/gitea/pull_request_review_approved.json");
/// The repository of every fixture.
const EXAMPLE_REPO: &str = "test/repo";

fn example(text: &str) -> Value {
    serde_json::from_str(text).expect("the Gitea fixture is JSON")
}

/// Makes the user object `v` be `login`.
fn set_user(v: &mut Value, login: &str) {
    if let Some(obj) = v.as_object_mut() {
        obj.insert("id".into(), json!(user_id(login)));
        obj.insert("login".into(), json!(login));
        obj.insert("username".into(), json!(login));
        obj.insert("email".into(), json!(format!("{login}@localhost")));
        obj.insert("avatar_url".into(), json!(format!("{WEB}/{login}/avatar")));
    }
}

/// How the fixtures move to [`REPO`]: URLs, names, owner, ids, and every `repo_id` (a fixture
/// has no other repository).
const REBRAND: Rebrand = Rebrand {
    example_repo: EXAMPLE_REPO,
    repo_id: REPO_ID,
    branch_keys: &["default_branch"],
    repo: |obj| {
        if let Some(owner) = obj.get_mut("owner") {
            set_user(owner, OWNER);
        }
    },
    every: |obj| {
        if obj.get("repo_id").is_some() {
            obj.insert("repo_id".into(), json!(REPO_ID));
        }
    },
};

/// Patches a payload's `pull_request` object (already rebranded) to be `pr`, in `state`.
fn set_pull_request(
    p: &mut Value,
    pr: &PrSpec,
    merged: bool,
    merge_sha: Option<&str>,
    closed: bool,
) {
    let html = html_url(pr.number);
    let now = now_iso();
    p["id"] = json!(pr_id(pr.number));
    p["url"] = json!(html);
    p["number"] = json!(pr.number);
    p["title"] = json!(pr.title);
    p["labels"] = json!(
        pr.labels
            .iter()
            .map(|name| json!({"id": super::stable_id(name, 1), "name": name, "color": "ededed", "description": "", "url": ""}))
            .collect::<Vec<_>>()
    );
    p["html_url"] = json!(html);
    p["diff_url"] = json!(format!("{html}.diff"));
    p["patch_url"] = json!(format!("{html}.patch"));
    set_closing(p, closed, merged, merge_sha, &now);
    p["merged_by"] = if merged {
        user_json(&pr.author)
    } else {
        Value::Null
    };
    p["updated_at"] = json!(now);
    set_user(&mut p["user"], &pr.author);
    let base = &mut p["base"];
    base["label"] = json!(pr.base_ref);
    base["ref"] = json!(pr.base_ref);
    let base_repo = base["repo"].clone();
    let head = &mut p["head"];
    head["ref"] = json!(pr.head_ref);
    head["sha"] = json!(pr.head_sha);
    if pr.fork {
        let full = pr.head_repo_full_name();
        let owner = full.split('/').next().unwrap_or_default().to_owned();
        let mut repo = base_repo;
        let (from, to) = (format!("/{REPO}"), format!("/{full}"));
        map_strings(&mut repo, &move |s| s.replace(&from, &to));
        repo["full_name"] = json!(full);
        repo["id"] = json!(repo_id(&full));
        repo["fork"] = json!(true);
        set_user(&mut repo["owner"], &owner);
        head["label"] = json!(format!("{owner}:{}", pr.head_ref));
        head["repo_id"] = json!(repo_id(&full));
        head["repo"] = repo;
    } else {
        head["label"] = json!(pr.head_ref);
    }
}

/// A `push` delivery (`X-Gitea-Event: push`) from the fixture: `branch` of [`REPO`] moved from
/// `before` to `after` by `pusher`.
pub fn push_payload(branch: &str, before: &str, after: &str, pusher: &str) -> Vec<u8> {
    let mut v = example(PUSH_EXAMPLE);
    rebrand(&mut v, &REBRAND);
    v["ref"] = json!(format!("refs/heads/{branch}"));
    v["before"] = json!(before);
    v["after"] = json!(after);
    v["compare_url"] = json!(format!("{WEB}/{REPO}/compare/{before}...{after}"));
    let repo = &mut v["repository"];
    repo["full_name"] = json!(REPO);
    repo["name"] = json!(NAME);
    repo["id"] = json!(REPO_ID);
    set_user(&mut repo["owner"], OWNER);
    if let Some(commits) = v["commits"].as_array_mut() {
        commits.truncate(1);
        if let Some(c) = commits.first_mut() {
            c["id"] = json!(after);
        }
    }
    set_user(&mut v["pusher"], pusher);
    set_user(&mut v["sender"], pusher);
    to_bytes(&v)
}

/// A `pull_request` delivery (`X-Gitea-Event: pull_request`) from the fixture, for pull request
/// `pr` of [`REPO`]: `action` is `opened`, `synchronized` (a push), `reopened`, `closed`
/// (`merged` marks it merged as `merge_sha`), `edited`…; the sender is the author.
pub fn pull_request_payload(
    action: &str,
    pr: &PrSpec,
    merged: bool,
    merge_sha: Option<&str>,
) -> Vec<u8> {
    super::assert_merge_closes(action, merged);
    let mut v = example(PULL_REQUEST_EXAMPLE);
    rebrand(&mut v, &REBRAND);
    v["action"] = json!(action);
    v["number"] = json!(pr.number);
    set_pull_request(
        &mut v["pull_request"],
        pr,
        merged,
        merge_sha,
        action == "closed",
    );
    set_user(&mut v["sender"], &pr.author);
    to_bytes(&v)
}

/// The `X-Gitea-Event` of a review with `verdict` `approved`, `rejected` or `comment`.
pub fn review_event(verdict: &str) -> &'static str {
    match verdict {
        "approved" => "pull_request_approved",
        "rejected" => "pull_request_rejected",
        _ => "pull_request_comment",
    }
}

/// A review delivery (send it with [`review_event`]`(verdict)`) from the fixture: `reviewer`
/// reviews pull request `pr` with `verdict` (`approved`, `rejected`, `comment`) and `content`.
pub fn pull_request_review_payload(
    pr: &PrSpec,
    reviewer: &str,
    verdict: &str,
    content: &str,
) -> Vec<u8> {
    let mut v = example(REVIEW_EXAMPLE);
    rebrand(&mut v, &REBRAND);
    v["number"] = json!(pr.number);
    set_pull_request(&mut v["pull_request"], pr, false, None, false);
    v["review"]["type"] = json!(format!("pull_request_review_{verdict}"));
    v["review"]["content"] = json!(content);
    v["commit_id"] = json!(pr.head_sha);
    set_user(&mut v["sender"], reviewer);
    to_bytes(&v)
}

/// An `issue_comment` delivery (`action: created`, `is_pull: true`) from the fixture: `comment`
/// (from [`FakeForge::add_comment`]: its id, author and body) on pull request `pr`.
pub fn issue_comment_payload(pr: &PrSpec, comment: &Comment) -> Vec<u8> {
    let mut v = example(ISSUE_COMMENT_EXAMPLE);
    rebrand(&mut v, &REBRAND);
    let html = html_url(pr.number);
    v["action"] = json!("created");
    v["is_pull"] = json!(true);
    let issue = &mut v["issue"];
    issue["id"] = json!(pr_id(pr.number));
    issue["url"] = json!(format!("{WEB}/api/v1/repos/{REPO}/pulls/{}", pr.number));
    issue["html_url"] = json!(html);
    issue["number"] = json!(pr.number);
    issue["title"] = json!(pr.title);
    set_user(&mut issue["user"], &pr.author);
    let c = &mut v["comment"];
    c["id"] = json!(comment.id);
    c["html_url"] = json!(format!("{html}#issuecomment-{}", comment.id));
    c["pull_request_url"] = json!(html);
    c["body"] = json!(comment.body);
    // Made now (the fixture's are from 2017).
    let now = now_iso();
    c["created_at"] = json!(now);
    c["updated_at"] = json!(now);
    set_user(&mut c["user"], &comment.author);
    set_user(&mut v["sender"], &comment.author);
    to_bytes(&v)
}

// ---- Sending webhooks ----------------------------------------------------------------------------

/// `X-Gitea-Event-Type` for a delivery of `event` with `body`: Gitea's finer name
/// (`pull_request_sync`, `pull_request_comment`, `pull_request_review_approved`…).
fn event_type(event: &str, body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match (event, v["action"].as_str()) {
        ("pull_request", Some("synchronized")) => "pull_request_sync".into(),
        ("issue_comment", _) if v["is_pull"] == true => "pull_request_comment".into(),
        ("pull_request_approved", _) => "pull_request_review_approved".into(),
        ("pull_request_rejected", _) => "pull_request_review_rejected".into(),
        ("pull_request_comment", _) => "pull_request_review_comment".into(),
        _ => event.into(),
    }
}

/// The headers Gitea sends with a delivery of `event`, signed with `secret` over `body`.
pub fn webhook_headers(
    secret: &[u8],
    event: &str,
    delivery: &str,
    body: &[u8],
) -> Vec<(String, String)> {
    let signature = super::sign(secret, body);
    let kind = event_type(event, body);
    let mut headers = vec![
        ("User-Agent".to_owned(), "Go-http-client/1.1".to_owned()),
        ("Content-Type".to_owned(), "application/json".to_owned()),
    ];
    for prefix in ["X-Gitea", "X-Gogs", "X-GitHub"] {
        headers.push((format!("{prefix}-Delivery"), delivery.to_owned()));
        headers.push((format!("{prefix}-Event"), event.to_owned()));
        headers.push((format!("{prefix}-Event-Type"), kind.clone()));
    }
    headers.push(("X-Gitea-Signature".to_owned(), signature.clone()));
    headers.push(("X-Gogs-Signature".to_owned(), signature.clone()));
    headers.push((
        "X-Hub-Signature-256".to_owned(),
        format!("sha256={signature}"),
    ));
    headers
}

/// POSTs a delivery as Gitea does to `http://<addr>/webhooks/gitea` (`addr` is
/// `127.0.0.1:PORT`), and returns the status and body of the answer.
pub fn send_webhook(
    addr: &str,
    secret: &[u8],
    event: &str,
    delivery: &str,
    body: &[u8],
) -> (u16, String) {
    let headers = webhook_headers(secret, event, delivery, body);
    super::deliver(addr, WEBHOOK_PATH, &headers, body)
}

/// POSTs `body` with exactly `headers` to `http://<addr>/webhooks/gitea`.
pub fn send_webhook_raw(addr: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    super::post_webhook(addr, WEBHOOK_PATH, headers, body)
}

/// What Gitea delivers when something happens to a pull request.
const EVENTS: PullRequestEvents = PullRequestEvents {
    push_action: "synchronized",
    label_action: "label_updated",
    pull_request: pull_request_payload,
    approved: |pr, reviewer| Delivery {
        event: review_event("approved"),
        body: pull_request_review_payload(pr, reviewer, "approved", "LGTM"),
    },
    commented: |pr, comment| Delivery {
        event: "issue_comment",
        body: issue_comment_payload(pr, comment),
    },
    set_user,
    push: |branch, before, after, pusher| Delivery {
        event: "push",
        body: push_payload(branch, before, after, pusher),
    },
};

/// What Gitea delivers when `event` happens to `pr`.
fn delivery(pr: &PrSpec, event: &Event) -> Delivery {
    EVENTS.delivery(pr, event)
}
