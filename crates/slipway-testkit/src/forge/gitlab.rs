//! A fake GitLab for end-to-end tests of `slipway serve`: the REST API v4 its GitLab adapter
//! calls, and the webhook deliveries GitLab sends.
//!
//! - [`DIALECT`] makes a [`FakeForge`] (the kit's one HTTP server, on `127.0.0.1:0`) answer, under `/api/v4`, exactly the calls `slipway-forge`'s GitLab adapter makes, for one
//!   project, [`PROJECT`] (`acme/shop`, id [`PROJECT_ID`]), from in-memory state the test
//!   controls: merge requests (head, state, mergeability), approvals, project members and their
//!   access levels. It keeps what the adapter writes (notes, commit statuses) and records every
//!   request with its answer. Answers have the fields of GitLab's REST API documentation
//!   (`doc/api/{merge_requests,notes,commits,members,users,projects}.md`), lists are paginated
//!   like GitLab's (`page`/`per_page`, `X-*` headers and a `Link` header), and anything else is
//!   a `404` recorded with no operation ([`FakeForge::unhandled`]).
//! - The payload builders ([`merge_request_payload`], [`note_payload`]) start from GitLab's own
//!   documented examples (`slipway-forge/tests/fixtures/gitlab`), move them to [`PROJECT`] and
//!   patch only numbers, shas, branches, users and the action.
//! - [`send_webhook`] POSTs a delivery as GitLab does (`X-Gitlab-Event`, `X-Gitlab-Token`,
//!   `X-Gitlab-Event-UUID`, `Idempotency-Key`) to `slipway serve`'s [`WEBHOOK_PATH`];
//!   [`send_webhook_raw`] sends any headers, for hostile cases.
//!
//! ```ignore
//! let gl = FakeForge::start(Forge::GitLab, "slipway-bot");
//! gl.set_permission("alice", DEVELOPER);
//! gl.add_pr(PrSpec::new(1, &sha));
//! // … start `slipway serve` with [forge.gitlab] api_url = gl.url(), repository = "acme/shop"
//! let body = merge_request_payload("open", &gl.pr(1), "alice", None, None);
//! let (status, _) = send_webhook(&server.addr, "secret", "Merge Request Hook", "d-1", &body);
//! let plan = gl.wait_for_comment(1, |n| n.body.contains("slipway:plan"), T);
//! ```
//!
//! The server never panics on what a client sends; the test-side methods panic on test bugs
//! (an unknown merge request).

use serde_json::{Value, json};

pub use super::Recorded;
use super::state::{
    Call, Core, Delivery, Dialect, EditRefused, Event, Pr, State, StoredComment, StoredStatus,
    route,
};
pub use super::state::{Comment, DEFAULT_BRANCH, FakeForge, NAME, PrSpec, PrState, Status};
use super::{
    Forge, Page, Reply, Request, map_strings, merge, other_params, page_params, stable_id, uuid,
};

/// The one project the fake serves, and every payload names.
pub const PROJECT: &str = super::state::REPO;
/// [`PROJECT`]'s namespace (a group).
pub const NAMESPACE: &str = super::state::OWNER;
/// [`PROJECT`]'s id, the same in API answers and webhook payloads (the adapter tells forks by
/// it).
pub const PROJECT_ID: u64 = 4_200_001;
/// Where `slipway serve` receives GitLab's deliveries.
pub const WEBHOOK_PATH: &str = "/webhooks/gitlab";
/// The web root of `web_url`s (the host of GitLab's documented examples).
pub const WEB: &str = "http://example.com";
/// Where the API lives under the fake's root.
pub const API_PREFIX: &str = "/api/v4";
/// GitLab's limit on a note's body, in characters.
pub const NOTE_LIMIT: usize = 1_000_000;

/// GitLab's access levels (`doc/api/members.md`), as [`FakeForge::set_permission`] takes
/// them; `"0"` is no member (still a known user).
pub const NO_ACCESS: &str = "0";
/// Guest.
pub const GUEST: &str = "10";
/// Planner.
pub const PLANNER: &str = "15";
/// Reporter: may read, not push.
pub const REPORTER: &str = "20";
/// Developer: the lowest role that may push.
pub const DEVELOPER: &str = "30";
/// Maintainer.
pub const MAINTAINER: &str = "40";
/// Owner.
pub const OWNER: &str = "50";

/// The source project's id: [`PROJECT_ID`], or the fork's.
pub fn source_project_id(spec: &PrSpec) -> u64 {
    if spec.fork {
        stable_id(&spec.head_repo_full_name(), 5_000_000)
    } else {
        PROJECT_ID
    }
}

/// Merge request `iid`'s web page.
pub fn web_url(iid: u64) -> String {
    format!("{WEB}/{PROJECT}/-/merge_requests/{iid}")
}

/// The merge request's global id (`id`, not `iid`), the same in answers and payloads.
pub fn mr_global_id(iid: u64) -> u64 {
    90_000_000 + iid
}

/// A user's id, the same in answers and payloads.
pub fn user_id(username: &str) -> u64 {
    stable_id(username, 100)
}

/// GitLab's spelling of a merge request's state.
fn state_name(state: &PrState) -> &'static str {
    match state {
        PrState::Open => "opened",
        PrState::Closed => "closed",
        PrState::Merged { .. } => "merged",
    }
}

/// GitLab's REST API v4 for [`PROJECT`], as a [`FakeForge`] plays it.
///
/// Endpoints (under [`FakeForge::url`], like `https://gitlab.com/api/v4`; `:id` is
/// `acme%2Fshop` or [`PROJECT_ID`]):
///
/// | request | answer |
/// | --- | --- |
/// | `GET /user` | the bot |
/// | `GET /users?username=U` | `[U]` when the fake knows U, else `[]` |
/// | `GET /projects/:id` | the project (or a fork of it, by its id) |
/// | `GET /projects/:id/merge_requests?state=…` | newest first, paginated (default `all`) |
/// | `GET /projects/:id/merge_requests/:iid` | the merge request, with its merge status |
/// | `GET`/`POST /projects/:id/merge_requests/:iid/notes` | notes (`sort`, `order_by`; newest first by default), paginated; `POST`: `201`, a note by the bot |
/// | `GET`/`PUT /projects/:id/merge_requests/:iid/notes/:note_id` | the note; `PUT` edits it (`403` unless the bot wrote it) |
/// | `GET /projects/:id/merge_requests/:iid/approvals` | who approved |
/// | `GET /projects/:id/merge_requests/:iid/versions` | its diff versions, one per push (its head and when), newest first, paginated |
/// | `POST /projects/:id/statuses/:sha` | `201`, the commit status |
/// | `GET /projects/:id/members/all/:user_id` | the member with their access level; `404` for a non-member |
///
/// Every one needs a token (`PRIVATE-TOKEN`, or `Authorization: Bearer`; any token, or the one
/// of [`FakeForge::require_token`]), else `401`. Bodies GitLab would refuse get GitLab's `400`.
/// A push, an approval and its withdrawal leave system notes; an approval is a toggle.
pub static DIALECT: Dialect = Dialect {
    forge: Forge::GitLab,
    label: "GitLab",
    pr_word: "merge request !",
    api_prefix: API_PREFIX,
    webhook_path: WEBHOOK_PATH,
    first_id: 7_000_000,
    roles: &[
        NO_ACCESS, "5", GUEST, PLANNER, REPORTER, DEVELOPER, MAINTAINER, OWNER,
    ],
    bot_role: None,
    review_states: &["APPROVED"],
    approval_toggles: true,
    pr_url: web_url,
    pr_ref: |n| format!("refs/merge-requests/{n}/head"),
    repo_id: PROJECT_ID,
    write_role: DEVELOPER,
    read_role: REPORTER,
    delivery,
    headers: |secret, d, id| webhook_headers(secret, d.event, id),
    respond,
    bug: || message(500, "the fake GitLab failed to answer (a bug)"),
};

// ---- Answering ---------------------------------------------------------------------------------

/// A GitLab endpoint the fake implements, with its path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    GetUser,
    ListUsers,
    GetProject(String),
    ListMrs,
    GetMr(u64),
    ListNotes(u64),
    CreateNote(u64),
    GetNote(u64, u64),
    UpdateNote(u64, u64),
    GetApprovals(u64),
    ListVersions(u64),
    CreateStatus(String),
    GetMember(String),
}

impl Op {
    fn id(&self) -> &'static str {
        match self {
            Op::GetUser => "GET /user",
            Op::ListUsers => "GET /users",
            Op::GetProject(_) => "GET /projects/:id",
            Op::ListMrs => "GET /projects/:id/merge_requests",
            Op::GetMr(_) => "GET /projects/:id/merge_requests/:merge_request_iid",
            Op::ListNotes(_) => "GET /projects/:id/merge_requests/:merge_request_iid/notes",
            Op::CreateNote(_) => "POST /projects/:id/merge_requests/:merge_request_iid/notes",
            Op::GetNote(..) => "GET /projects/:id/merge_requests/:merge_request_iid/notes/:note_id",
            Op::UpdateNote(..) => {
                "PUT /projects/:id/merge_requests/:merge_request_iid/notes/:note_id"
            }
            Op::GetApprovals(_) => "GET /projects/:id/merge_requests/:merge_request_iid/approvals",
            Op::ListVersions(_) => "GET /projects/:id/merge_requests/:merge_request_iid/versions",
            Op::CreateStatus(_) => "POST /projects/:id/statuses/:sha",
            Op::GetMember(_) => "GET /projects/:id/members/all/:user_id",
        }
    }
}

fn is_project(id: &str) -> bool {
    id.eq_ignore_ascii_case(PROJECT) || id == PROJECT_ID.to_string()
}

fn match_op(method: &str, segments: &[String]) -> Option<Op> {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let num = |n: &str| -> Option<u64> {
        (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .then(|| n.parse().ok())
            .flatten()
    };
    match (method, s.as_slice()) {
        ("GET", ["user"]) => Some(Op::GetUser),
        ("GET", ["users"]) => Some(Op::ListUsers),
        ("GET", ["projects", id]) => Some(Op::GetProject((*id).to_owned())),
        (_, ["projects", id, rest @ ..]) if is_project(id) => match (method, rest) {
            ("GET", ["merge_requests"]) => Some(Op::ListMrs),
            ("GET", ["merge_requests", iid]) => Some(Op::GetMr(num(iid)?)),
            ("GET", ["merge_requests", iid, "notes"]) => Some(Op::ListNotes(num(iid)?)),
            ("POST", ["merge_requests", iid, "notes"]) => Some(Op::CreateNote(num(iid)?)),
            ("GET", ["merge_requests", iid, "notes", id]) => Some(Op::GetNote(num(iid)?, num(id)?)),
            ("PUT", ["merge_requests", iid, "notes", id]) => {
                Some(Op::UpdateNote(num(iid)?, num(id)?))
            }
            ("GET", ["merge_requests", iid, "approvals"]) => Some(Op::GetApprovals(num(iid)?)),
            ("GET", ["merge_requests", iid, "versions"]) => Some(Op::ListVersions(num(iid)?)),
            ("POST", ["statuses", sha]) if !sha.is_empty() => {
                Some(Op::CreateStatus((*sha).to_owned()))
            }
            ("GET", ["members", "all", user]) if !user.is_empty() => {
                Some(Op::GetMember((*user).to_owned()))
            }
            _ => None,
        },
        _ => None,
    }
}

/// GitLab's answer to a path it does not route.
fn route_not_found() -> Reply {
    Reply::json(404, json!({ "error": "404 Not Found" }))
}

/// GitLab's error shapes: `{"message": …}` for most, `{"error": …}` for parameter validation.
fn message(status: u16, text: &str) -> Reply {
    Reply::json(status, json!({ "message": text }))
}

fn param_error(text: &str) -> Reply {
    Reply::json(400, json!({ "error": text }))
}

/// Answers one request: its reply and the operation it matched.
fn respond(core: &Core, st: &mut State, req: &Request) -> (Reply, Option<&'static str>) {
    route(req, API_PREFIX, match_op, Op::id, route_not_found, |call| {
        answer(core, st, call)
    })
}

fn answer(core: &Core, st: &mut State, call: &Call<'_, Op>) -> Reply {
    let (op, req, query, json) = (&call.op, call.req, &call.query, call.json.as_ref());
    let token = req
        .header("private-token")
        .map(str::trim)
        .or_else(|| {
            req.header("authorization")
                .and_then(|v| v.trim().strip_prefix("Bearer "))
                .map(str::trim)
        })
        .filter(|t| !t.is_empty());
    if st.authorize(token).is_err() {
        return message(401, "401 Unauthorized");
    }
    let param = |name: &str| call.param(name);
    let path = req.path.as_str();
    match op {
        Op::GetUser => Reply::json(200, current_user_json(&core.bot_login)),
        Op::ListUsers => {
            let mut users: Vec<&String> = match param("username") {
                Some(name) => st
                    .users
                    .get(&name.to_ascii_lowercase())
                    .into_iter()
                    .collect(),
                None => st.users.values().collect(),
            };
            users.sort();
            let items = users.into_iter().map(|u| user_json(u)).collect();
            paginate(&core.base_url, path, query, items)
        }
        Op::GetProject(id) => {
            if is_project(id) {
                return Reply::json(200, project_json(PROJECT, PROJECT_ID, false));
            }
            match st
                .prs
                .iter()
                .find(|m| m.spec.fork && source_project_id(&m.spec).to_string() == *id)
            {
                Some(m) => Reply::json(
                    200,
                    project_json(
                        &m.spec.head_repo_full_name(),
                        source_project_id(&m.spec),
                        true,
                    ),
                ),
                None => message(404, "404 Project Not Found"),
            }
        }
        Op::ListMrs => {
            let state = param("state").unwrap_or("all");
            if !matches!(state, "opened" | "closed" | "locked" | "merged" | "all") {
                return param_error("state does not have a valid value");
            }
            // GitLab's default order: created_at, newest first.
            let items = st
                .prs
                .iter()
                .rev()
                .filter(|m| state == "all" || state_name(&m.state) == state)
                .map(|m| mr_json(st, m, false))
                .collect();
            paginate(&core.base_url, path, query, items)
        }
        Op::GetMr(iid) => match st.pr(*iid) {
            Some(m) => Reply::json(200, mr_json(st, m, true)),
            None => message(404, "404 Not found"),
        },
        Op::ListNotes(iid) => {
            if st.pr(*iid).is_none() {
                return message(404, "404 Not found");
            }
            let sort = param("sort").unwrap_or("desc");
            let order_by = param("order_by").unwrap_or("created_at");
            if !matches!(sort, "asc" | "desc") {
                return param_error("sort does not have a valid value");
            }
            if !matches!(order_by, "created_at" | "updated_at") {
                return param_error("order_by does not have a valid value");
            }
            let mut notes: Vec<&StoredComment> =
                st.comments.iter().filter(|n| n.pr == *iid).collect();
            // Ids grow with time: they break ties between notes of the same second.
            notes.sort_by(|a, b| {
                let key = |n: &StoredComment| {
                    let at = if order_by == "updated_at" {
                        n.updated_at.clone()
                    } else {
                        n.created_at.clone()
                    };
                    (at, n.id)
                };
                key(a).cmp(&key(b))
            });
            if sort == "desc" {
                notes.reverse();
            }
            let items = notes.into_iter().map(note_json).collect();
            paginate(&core.base_url, path, query, items)
        }
        Op::CreateNote(iid) => {
            if st.pr(*iid).is_none() {
                return message(404, "404 Not found");
            }
            let body = match note_body(json) {
                Ok(b) => b,
                Err(reply) => return reply,
            };
            let id = st.add_comment(*iid, &core.bot_login, body, false);
            Reply::json(201, note_json(st.comment(id).expect("just added")))
        }
        Op::GetNote(iid, id) => match st.comments.iter().find(|n| n.pr == *iid && n.id == *id) {
            Some(n) => Reply::json(200, note_json(n)),
            None => message(404, "404 Note Not Found"),
        },
        Op::UpdateNote(iid, id) => {
            let body = match note_body(json) {
                Ok(b) => b,
                Err(reply) => return reply,
            };
            // Only a note's author may edit it (and nobody a system note).
            match st.edit_comment(*id, Some(*iid), &core.bot_login, true, body) {
                Err(EditRefused::NotFound) => message(404, "404 Note Not Found"),
                Err(EditRefused::NotAuthor) => message(403, "403 Forbidden"),
                Ok(()) => Reply::json(200, note_json(st.comment(*id).expect("edited above"))),
            }
        }
        Op::GetApprovals(iid) => match st.pr(*iid) {
            Some(m) => Reply::json(200, approvals_json(st, m)),
            None => message(404, "404 Not found"),
        },
        Op::ListVersions(iid) => match st.pr(*iid) {
            Some(m) => {
                let items = versions_json(m);
                paginate(&core.base_url, path, query, items)
            }
            None => message(404, "404 Not found"),
        },
        Op::CreateStatus(sha) => create_status(core, st, sha, json),
        Op::GetMember(user) => {
            let found = st
                .users
                .values()
                .find(|u| user_id(u).to_string() == *user)
                .cloned();
            match found.and_then(|u| {
                let level = st.permission(&u)?.parse::<u32>().ok()?;
                (level > 0).then_some((u, level))
            }) {
                Some((u, level)) => Reply::json(200, member_json(&u, level)),
                None => message(404, "404 Not found"),
            }
        }
    }
}

fn create_status(core: &Core, st: &mut State, sha: &str, body: Option<&Value>) -> Reply {
    let hex = sha.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex || !(sha.len() == 40 || sha.len() == 64) {
        return message(404, "404 Commit Not Found");
    }
    let Some(body) = body else {
        return param_error("state is missing");
    };
    let Some(state) = body.get("state").and_then(Value::as_str) else {
        return param_error("state is missing");
    };
    if !matches!(
        state,
        "pending" | "running" | "success" | "failed" | "canceled" | "skipped"
    ) {
        return param_error("state does not have a valid value");
    }
    let text = |field: &str| -> Result<Option<String>, Reply> {
        match body.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(param_error(&format!("{field} is invalid"))),
        }
    };
    let (name, context, description, target_url) = match (
        text("name"),
        text("context"),
        text("description"),
        text("target_url"),
    ) {
        (Ok(n), Ok(c), Ok(d), Ok(t)) => (n, c, d, t),
        (Err(r), ..) | (_, Err(r), ..) | (_, _, Err(r), _) | (.., Err(r)) => return r,
    };
    let branch = st
        .prs
        .iter()
        .find(|m| m.spec.head_sha.eq_ignore_ascii_case(sha))
        .map(|m| m.spec.head_ref.clone());
    let stored = st.add_status(
        sha,
        Status {
            context: name.or(context).unwrap_or_else(|| "default".to_owned()),
            state: state.to_owned(),
            description,
            target_url,
        },
    );
    Reply::json(201, status_json(&core.bot_login, stored, branch))
}

/// The `body` of a note create/update request, or GitLab's `400`.
fn note_body(json: Option<&Value>) -> Result<String, Reply> {
    match json.and_then(|j| j.get("body")) {
        None | Some(Value::Null) => Err(param_error("body is missing")),
        Some(Value::String(s)) if s.trim().is_empty() => Err(Reply::json(
            400,
            json!({ "message": { "note": ["can't be blank"] } }),
        )),
        Some(Value::String(s)) if s.chars().count() > NOTE_LIMIT => Err(Reply::json(
            400,
            json!({ "message": { "note": ["is too long (maximum is 1000000 characters)"] } }),
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(param_error("body is invalid")),
    }
}

/// One page of `items` as GitLab pages lists: `per_page` (default 20, at most 100) and `page`
/// (from 1), with `X-Page`, `X-Per-Page`, `X-Total`, `X-Total-Pages`, `X-Next-Page`,
/// `X-Prev-Page` and a `Link` header (`prev`, `next`, `first`, `last`).
fn paginate(base: &str, path: &str, query: &[(String, String)], items: Vec<Value>) -> Reply {
    let (page, per_page) = page_params(query, 20, 100);
    let total = items.len();
    let Page { pages, items, .. } = Page::of(items, page, per_page);
    let others = other_params(query, &["page", "per_page"]);
    let link = |p: usize, rel: &str| {
        let mut q = vec![format!("page={p}"), format!("per_page={per_page}")];
        q.extend(others.iter().cloned());
        format!("<{base}{path}?{}>; rel=\"{rel}\"", q.join("&"))
    };
    let mut links = Vec::new();
    if page > 1 {
        links.push(link((page - 1).min(pages), "prev"));
    }
    if page < pages {
        links.push(link(page + 1, "next"));
    }
    links.push(link(1, "first"));
    links.push(link(pages, "last"));
    let next = if page < pages {
        (page + 1).to_string()
    } else {
        String::new()
    };
    let prev = if page > 1 {
        (page - 1).to_string()
    } else {
        String::new()
    };
    Reply::json(200, items)
        .header("X-Page", page.to_string())
        .header("X-Per-Page", per_page.to_string())
        .header("X-Total", total.to_string())
        .header("X-Total-Pages", pages.to_string())
        .header("X-Next-Page", next)
        .header("X-Prev-Page", prev)
        .header("Link", links.join(", "))
}

// ---- JSON in the shapes of GitLab's REST API ---------------------------------------------------

/// `Jane` for `jane`: a display name.
fn display_name(username: &str) -> String {
    let mut chars = username.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The basic user of `doc/api/users.md` (as in `author`, `approved_by[].user`).
fn user_json(username: &str) -> Value {
    let id = user_id(username);
    json!({
        "id": id,
        "username": username,
        "name": display_name(username),
        "state": "active",
        "locked": false,
        "avatar_url": format!("https://www.gravatar.com/avatar/{id:032x}?s=80&d=identicon"),
        "web_url": format!("{WEB}/{username}"),
    })
}

/// `GET /user`: the token holder (a project access token's bot user).
fn current_user_json(username: &str) -> Value {
    let mut user = user_json(username);
    merge(
        &mut user,
        json!({
            "created_at": "2024-01-01T00:00:00.000Z",
            "bio": "", "location": "", "public_email": null, "skype": "", "linkedin": "",
            "twitter": "", "discord": "", "website_url": "", "organization": "",
            "job_title": "", "pronouns": null, "bot": true, "work_information": null,
            "followers": 0, "following": 0, "is_followed": false, "local_time": null,
            "last_sign_in_at": null, "confirmed_at": "2024-01-01T00:00:00.000Z",
            "last_activity_on": "2024-01-01",
            "email": format!("{username}@noreply.example.com"),
            "theme_id": 1, "color_scheme_id": 1, "projects_limit": 0,
            "current_sign_in_at": null, "identities": [], "can_create_group": false,
            "can_create_project": false, "two_factor_enabled": false, "external": false,
            "private_profile": false,
            "commit_email": format!("{username}@noreply.example.com"),
        }),
    );
    user
}

/// `doc/api/projects.md`'s project (the fields of a simple project and a few more).
fn project_json(path: &str, id: u64, forked: bool) -> Value {
    let (namespace, name) = path.rsplit_once('/').unwrap_or((path, path));
    let mut v = json!({
        "id": id,
        "description": null,
        "name": name,
        "name_with_namespace": format!("{} / {name}", display_name(namespace)),
        "path": name,
        "path_with_namespace": path,
        "created_at": "2024-01-01T00:00:00.000Z",
        "default_branch": DEFAULT_BRANCH,
        "tag_list": [],
        "topics": [],
        "ssh_url_to_repo": format!("git@example.com:{path}.git"),
        "http_url_to_repo": format!("{WEB}/{path}.git"),
        "web_url": format!("{WEB}/{path}"),
        "readme_url": null,
        "forks_count": 0,
        "avatar_url": null,
        "star_count": 0,
        "last_activity_at": "2024-01-01T00:00:00.000Z",
        "namespace": {
            "id": stable_id(namespace, 3_000),
            "name": display_name(namespace),
            "path": namespace,
            "kind": if forked { "user" } else { "group" },
            "full_path": namespace,
            "parent_id": null,
            "avatar_url": null,
            "web_url": format!("{WEB}/{namespace}"),
        },
        "visibility": "private",
        "empty_repo": false,
        "archived": false,
    });
    if forked {
        v["forked_from_project"] = project_json(PROJECT, PROJECT_ID, false);
    }
    v
}

fn merge_status(mr: &Pr) -> (&'static str, &'static str, bool) {
    match mr.mergeable {
        // No conflict (so `merge_status` says it can be merged), but the pipeline failed.
        Some(true) if mr.checks_failing => ("can_be_merged", "ci_must_pass", false),
        Some(true) => ("can_be_merged", "mergeable", false),
        Some(false) => ("cannot_be_merged", "conflict", true),
        None => ("checking", "checking", false),
    }
}

/// `doc/api/merge_requests.md`'s merge request: the list entry, or (`full`) the single one.
fn mr_json(st: &State, mr: &Pr, full: bool) -> Value {
    let spec = &mr.spec;
    let iid = spec.number;
    let (merge_status, detailed, conflicts) = merge_status(mr);
    let (merged_at, merge_sha, merged_by) = match &mr.state {
        PrState::Merged { merge_sha } => (
            mr.closed_at.clone(),
            Some(merge_sha.clone()),
            user_json(&spec.author),
        ),
        _ => (None, None, Value::Null),
    };
    let closed_at = match mr.state {
        PrState::Closed => mr.closed_at.clone(),
        _ => None,
    };
    let mut v = json!({
        "id": mr_global_id(iid),
        "iid": iid,
        "project_id": PROJECT_ID,
        "title": spec.title,
        "description": "",
        "state": state_name(&mr.state),
        "created_at": mr.created_at,
        "updated_at": mr.updated_at,
        "merged_by": merged_by,
        "merge_user": merged_by,
        "merged_at": merged_at,
        "closed_by": if closed_at.is_some() { user_json(&spec.author) } else { Value::Null },
        "closed_at": closed_at,
        "target_branch": spec.base_ref,
        "source_branch": spec.head_ref,
        "user_notes_count": st.comments.iter().filter(|n| n.pr == iid && !n.system).count(),
        "upvotes": 0,
        "downvotes": 0,
        "author": user_json(&spec.author),
        "assignees": [],
        "assignee": null,
        "reviewers": [],
        "source_project_id": source_project_id(spec),
        "target_project_id": PROJECT_ID,
        "labels": mr.spec.labels,
        "draft": false,
        "work_in_progress": false,
        "milestone": null,
    });
    let rest = json!({
        "merge_when_pipeline_succeeds": false,
        "merge_status": merge_status,
        "detailed_merge_status": detailed,
        "sha": spec.head_sha,
        "merge_commit_sha": merge_sha,
        "squash_commit_sha": null,
        "discussion_locked": null,
        "should_remove_source_branch": null,
        "force_remove_source_branch": false,
        "prepared_at": mr.created_at,
        "reference": format!("!{iid}"),
        "references": {
            "short": format!("!{iid}"),
            "relative": format!("!{iid}"),
            "full": format!("{PROJECT}!{iid}"),
        },
        "web_url": web_url(spec.number),
        "time_stats": {
            "time_estimate": 0, "total_time_spent": 0,
            "human_time_estimate": null, "human_total_time_spent": null,
        },
        "squash": false,
        "squash_on_merge": false,
        "task_completion_status": { "count": 0, "completed_count": 0 },
        "has_conflicts": conflicts,
        "blocking_discussions_resolved": true,
        "approvals_before_merge": null,
    });
    merge(&mut v, rest);
    if full {
        merge(
            &mut v,
            json!({
                "subscribed": false,
                "changes_count": "1",
                "latest_build_started_at": null,
                "latest_build_finished_at": null,
                "first_deployed_to_production_at": null,
                "pipeline": null,
                "head_pipeline": null,
                "diff_refs": {
                    "base_sha": "0000000000000000000000000000000000000001",
                    "head_sha": spec.head_sha,
                    "start_sha": "0000000000000000000000000000000000000001",
                },
                "merge_error": null,
                "first_contribution": false,
                "user": { "can_merge": true },
            }),
        );
    }
    v
}

/// `doc/api/notes.md`'s note.
/// `doc/api/merge_requests.md`'s diff versions of a merge request, one per push, newest
/// first.
fn versions_json(mr: &Pr) -> Vec<Value> {
    let base = "0".repeat(40);
    mr.versions
        .iter()
        .enumerate()
        .rev()
        .map(|(i, (sha, at))| {
            json!({
                "id": 110 + i,
                "head_commit_sha": sha,
                "base_commit_sha": base,
                "start_commit_sha": base,
                "created_at": super::iso_ms(*at),
                "merge_request_id": mr_global_id(mr.spec.number),
                "state": "collected",
                "real_size": "1",
                "patch_id_sha": sha,
            })
        })
        .collect()
}

fn note_json(n: &StoredComment) -> Value {
    json!({
        "id": n.id,
        "type": null,
        "body": n.body,
        "attachment": null,
        "author": user_json(&n.author),
        "created_at": super::iso_ms(n.created_ms),
        "updated_at": n.updated_at,
        "system": n.system,
        "noteable_id": mr_global_id(n.pr),
        "noteable_type": "MergeRequest",
        "project_id": PROJECT_ID,
        "commit_id": null,
        "resolvable": false,
        "confidential": false,
        "internal": false,
        "imported": false,
        "imported_from": "none",
        "noteable_iid": n.pr,
        "commands_changes": {},
    })
}

/// `doc/api/commits.md`'s commit status (the answer to `POST /projects/:id/statuses/:sha`).
fn status_json(bot: &str, s: &StoredStatus, branch: Option<String>) -> Value {
    let done = matches!(
        s.status.state.as_str(),
        "success" | "failed" | "canceled" | "skipped"
    );
    json!({
        "id": s.id,
        "sha": s.sha,
        "ref": branch,
        "status": s.status.state,
        "name": s.status.context,
        "target_url": s.status.target_url,
        "description": s.status.description,
        "created_at": s.created_at,
        "started_at": if s.status.state == "running" || done { json!(s.created_at) } else { Value::Null },
        "finished_at": if done { json!(s.created_at) } else { Value::Null },
        "allow_failure": false,
        "coverage": null,
        "pipeline_id": s.id + 1,
        "author": user_json(bot),
    })
}

/// `doc/api/merge_request_approvals.md`'s approval state of a merge request.
fn approvals_json(st: &State, mr: &Pr) -> Value {
    let iid = mr.spec.number;
    let approved_by: Vec<Value> = st
        .reviews_of(iid)
        .filter(|r| !r.dismissed)
        .map(|r| json!({ "user": user_json(&r.reviewer) }))
        .collect();
    let (merge_status, ..) = merge_status(mr);
    json!({
        "id": mr_global_id(iid),
        "iid": iid,
        "project_id": PROJECT_ID,
        "title": mr.spec.title,
        "description": "",
        "state": state_name(&mr.state),
        "created_at": mr.created_at,
        "updated_at": mr.updated_at,
        "merge_status": merge_status,
        "approved": !approved_by.is_empty(),
        "approvals_required": 0,
        "approvals_left": 0,
        "require_password_to_approve": false,
        "approved_by": approved_by,
        "suggested_approvers": [],
        "approvers": [],
        "approver_groups": [],
        "user_has_approved": false,
        "user_can_approve": true,
        "approval_rules_left": [],
        "has_approval_rules": false,
        "merge_request_approvers_available": false,
        "multiple_approval_rules_available": false,
        "invalid_approvers_rules": [],
    })
}

/// `doc/api/members.md`'s member.
fn member_json(username: &str, access_level: u32) -> Value {
    let mut v = user_json(username);
    merge(
        &mut v,
        json!({
            "access_level": access_level,
            "created_at": "2024-01-01T00:00:00.000Z",
            "expires_at": null,
            "group_saml_identity": null,
            "membership_state": "active",
        }),
    );
    v
}

// ---- Webhook payloads --------------------------------------------------------------------------

/// GitLab's documented example of a merge request event (`action: open`).
const MERGE_REQUEST_EXAMPLE: &str =
    include_str!("../../../slipway-forge/tests/fixtures/gitlab/merge_request_open.json");
/// GitLab's documented example of a comment on a merge request.
const PUSH_EXAMPLE: &str = include_str!("../../../slipway-forge/tests/fixtures/gitlab/push.json");
const NOTE_EXAMPLE: &str =
    include_str!("../../../slipway-forge/tests/fixtures/gitlab/note_merge_request.json");

fn example(text: &str) -> Value {
    serde_json::from_str(text).expect("GitLab's documented example is JSON")
}

/// Makes the user object `v` (`user` of a payload) be `username`.
fn set_user(v: &mut Value, username: &str) {
    if let Some(obj) = v.as_object_mut() {
        let id = user_id(username);
        obj.insert("id".into(), json!(id));
        obj.insert("name".into(), json!(display_name(username)));
        obj.insert("username".into(), json!(username));
        obj.insert(
            "avatar_url".into(),
            json!(format!(
                "https://www.gravatar.com/avatar/{id:032x}?s=80&d=identicon"
            )),
        );
        if obj.contains_key("email") {
            obj.insert("email".into(), json!("[REDACTED]"));
        }
    }
}

/// Makes the project object `v` (a payload's `project`, `source`, `target`) be `path`.
fn set_project(v: &mut Value, path: &str, id: u64) {
    let Some(old) = v["path_with_namespace"].as_str().map(str::to_owned) else {
        return;
    };
    let (namespace, name) = path.rsplit_once('/').unwrap_or((path, path));
    let new = path.to_owned();
    map_strings(v, &move |s| s.replace(&old, &new));
    let obj = v.as_object_mut().expect("a project is an object");
    obj.insert("name".into(), json!(name));
    obj.insert("namespace".into(), json!(display_name(namespace)));
    obj.insert("path_with_namespace".into(), json!(path));
    obj.insert("default_branch".into(), json!(DEFAULT_BRANCH));
    if obj.contains_key("id") {
        obj.insert("id".into(), json!(id));
    }
}

/// Moves the example to [`PROJECT`]: every project path it names (in URLs too), and the
/// top-level `project`, `project_id` and `repository`. Merge request objects are patched after.
fn rebrand(v: &mut Value) {
    let mut old_paths = Vec::new();
    collect_paths(v, &mut old_paths);
    map_strings(v, &move |s| {
        old_paths
            .iter()
            .fold(s.to_owned(), |s, old| s.replace(old.as_str(), PROJECT))
    });
    set_project(&mut v["project"], PROJECT, PROJECT_ID);
    if let Some(id) = v.get_mut("project_id")
        && id.is_u64()
    {
        *id = json!(PROJECT_ID);
    }
    if let Some(repo) = v.get_mut("repository").and_then(Value::as_object_mut) {
        repo.insert("name".into(), json!(NAME));
    }
}

fn collect_paths(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(obj) => {
            if let Some(p) = obj.get("path_with_namespace").and_then(Value::as_str)
                && !out.iter().any(|o| o == p)
            {
                out.push(p.to_owned());
            }
            obj.values().for_each(|x| collect_paths(x, out));
        }
        Value::Array(items) => items.iter().for_each(|x| collect_paths(x, out)),
        _ => {}
    }
}

/// Patches a merge request object of a payload (`object_attributes` of a merge request event,
/// `merge_request` of a note event) to be `mr`.
fn set_merge_request(m: &mut Value, mr: &PrSpec, state: &str) {
    let old_sha = m["last_commit"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if !old_sha.is_empty() {
        let new_sha = mr.head_sha.clone();
        map_strings(&mut m["last_commit"], &move |s| {
            s.replace(&old_sha, &new_sha)
        });
    }
    set_project(
        &mut m["source"],
        &mr.head_repo_full_name(),
        source_project_id(mr),
    );
    set_project(&mut m["target"], PROJECT, PROJECT_ID);
    m["id"] = json!(mr_global_id(mr.number));
    m["iid"] = json!(mr.number);
    m["title"] = json!(mr.title);
    m["source_branch"] = json!(mr.head_ref);
    m["target_branch"] = json!(mr.base_ref);
    m["source_project_id"] = json!(source_project_id(mr));
    m["target_project_id"] = json!(PROJECT_ID);
    m["author_id"] = json!(user_id(&mr.author));
    m["state"] = json!(state);
    if m.get("state_id").is_some() {
        let id = match state {
            "closed" => 2,
            "merged" => 3,
            "locked" => 4,
            _ => 1,
        };
        m["state_id"] = json!(id);
    }
    m["last_commit"]["id"] = json!(mr.head_sha);
}

/// A `Merge Request Hook` delivery from GitLab's documented example, for merge request `mr` of
/// [`PROJECT`], triggered by `actor` (the payload's `user`): `action` is `open`, `update`
/// (with `oldrev`, the previous head, when commits were pushed), `close`, `reopen`, `merge`
/// (with `merge_sha`), `approved`, `unapproved`…
pub fn merge_request_payload(
    action: &str,
    mr: &PrSpec,
    actor: &str,
    oldrev: Option<&str>,
    merge_sha: Option<&str>,
) -> Vec<u8> {
    let mut v = example(MERGE_REQUEST_EXAMPLE);
    rebrand(&mut v);
    let state = match action {
        "close" => "closed",
        "merge" => "merged",
        _ => "opened",
    };
    let a = &mut v["object_attributes"];
    set_merge_request(a, mr, state);
    a["url"] = json!(web_url(mr.number));
    a["action"] = json!(action);
    match oldrev {
        Some(old) => a["oldrev"] = json!(old),
        None => {
            if let Some(obj) = a.as_object_mut() {
                obj.remove("oldrev");
            }
        }
    }
    if let Some(sha) = merge_sha {
        a["merge_commit_sha"] = json!(sha);
    }
    // The labels after the event, in both places GitLab puts them.
    let labels: Vec<Value> = mr
        .labels
        .iter()
        .map(|title| json!({"id": super::stable_id(title, 1), "title": title, "color": "#ededed", "project_id": PROJECT_ID, "type": "ProjectLabel"}))
        .collect();
    a["labels"] = json!(labels);
    v["labels"] = json!(labels);
    set_user(&mut v["user"], actor);
    to_bytes(&v)
}

/// A `Push Hook` delivery from GitLab's documented example: `branch` of [`PROJECT`] moved from
/// `before` to `after` by `pusher`.
pub fn push_payload(branch: &str, before: &str, after: &str, pusher: &str) -> Vec<u8> {
    let mut v = example(PUSH_EXAMPLE);
    rebrand(&mut v);
    v["ref"] = json!(format!("refs/heads/{branch}"));
    v["before"] = json!(before);
    v["after"] = json!(after);
    v["checkout_sha"] = json!(after);
    v["user_username"] = json!(pusher);
    v["user_name"] = json!(pusher);
    v["user_id"] = json!(super::stable_id(pusher, 1));
    if let Some(commits) = v["commits"].as_array_mut() {
        commits.truncate(1);
        if let Some(c) = commits.first_mut() {
            c["id"] = json!(after);
        }
    }
    v["total_commits_count"] = json!(1);
    to_bytes(&v)
}

/// A `Note Hook` delivery from GitLab's documented example of a comment on a merge request:
/// `note` (from [`FakeForge::add_comment`]: its id, author and body) on merge request `mr`.
pub fn note_payload(mr: &PrSpec, note: &Comment) -> Vec<u8> {
    let mut v = example(NOTE_EXAMPLE);
    rebrand(&mut v);
    let a = &mut v["object_attributes"];
    a["id"] = json!(note.id);
    a["note"] = json!(note.body);
    a["noteable_type"] = json!("MergeRequest");
    a["author_id"] = json!(user_id(&note.author));
    a["project_id"] = json!(PROJECT_ID);
    a["noteable_id"] = json!(mr_global_id(mr.number));
    a["system"] = json!(note.system);
    a["action"] = json!("create");
    // Made now, in the form of GitLab's example (`2015-05-17 18:21:36 UTC`).
    a["created_at"] = json!(super::now_iso().replace('T', " ").replace('Z', " UTC"));
    a["url"] = json!(format!("{}#note_{}", web_url(mr.number), note.id));
    set_merge_request(&mut v["merge_request"], mr, "opened");
    set_user(&mut v["user"], &note.author);
    to_bytes(&v)
}

fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value serializes")
}

// ---- Sending webhooks ----------------------------------------------------------------------------

/// The headers GitLab sends with a delivery of `event` (`Merge Request Hook`, `Note Hook`…)
/// whose secret token is `token`; `delivery` is its event UUID and idempotency key.
pub fn webhook_headers(token: &str, event: &str, delivery: &str) -> Vec<(String, String)> {
    vec![
        ("User-Agent".into(), "GitLab/17.6.0".into()),
        ("Content-Type".into(), "application/json".into()),
        ("X-Gitlab-Event".into(), event.into()),
        ("X-Gitlab-Token".into(), token.into()),
        ("X-Gitlab-Instance".into(), WEB.into()),
        ("X-Gitlab-Webhook-UUID".into(), uuid()),
        ("X-Gitlab-Event-UUID".into(), delivery.into()),
        ("Idempotency-Key".into(), delivery.into()),
    ]
}

/// POSTs a delivery as GitLab does to `http://<addr>/webhooks/gitlab` (`addr` is
/// `127.0.0.1:PORT`), and returns the status and body of the answer.
pub fn send_webhook(
    addr: &str,
    token: &str,
    event: &str,
    delivery: &str,
    body: &[u8],
) -> (u16, String) {
    let headers = webhook_headers(token, event, delivery);
    super::deliver(addr, WEBHOOK_PATH, &headers, body)
}

/// POSTs `body` with exactly `headers` to `http://<addr>/webhooks/gitlab`.
pub fn send_webhook_raw(addr: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    super::post_webhook(addr, WEBHOOK_PATH, headers, body)
}

/// What GitLab delivers when `event` happens to `mr`.
fn delivery(mr: &PrSpec, event: &Event) -> Delivery {
    const HOOK: &str = "Merge Request Hook";
    let author = mr.author.as_str();
    let (event, body) = match event {
        Event::Opened => (HOOK, merge_request_payload("open", mr, author, None, None)),
        Event::Labelled => (
            HOOK,
            merge_request_payload("update", mr, author, None, None),
        ),
        Event::Pushed { before, by } => (
            HOOK,
            merge_request_payload(
                "update",
                mr,
                by.as_deref().unwrap_or(author),
                Some(before),
                None,
            ),
        ),
        Event::Approved { reviewer } => (
            HOOK,
            merge_request_payload("approved", mr, reviewer, None, None),
        ),
        Event::Commented { comment } => ("Note Hook", note_payload(mr, comment)),
        Event::BranchPushed { before, by } => (
            "Push Hook",
            push_payload(
                &mr.head_ref,
                before,
                &mr.head_sha,
                by.as_deref().unwrap_or(author),
            ),
        ),
        Event::Closed => (HOOK, merge_request_payload("close", mr, author, None, None)),
        Event::Merged { merge_sha } => (
            HOOK,
            merge_request_payload("merge", mr, author, None, Some(merge_sha)),
        ),
    };
    Delivery { event, body }
}
