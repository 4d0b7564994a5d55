//! The fake forge: one [`FakeForge`] (one HTTP server, [`crate::http::Server`]; one state,
//! [`state`]) that plays GitHub ([`github`]), GitLab ([`gitlab`]) or Gitea ([`gitea`]). Each
//! forge's module holds only what differs: its route table (an `Op` enum and its
//! `match_op`), the JSON shapes of its answers, its auth header and error shapes, and its
//! webhook payloads and signatures, gathered in its `DIALECT`.
//!
//! Shared by the three: the state and the test-side methods ([`state`]), the recording of
//! every request with its answer (and the unhandled ones: a route the fake does not know),
//! the token check, pagination parameters, ids and times, and the waiting helpers.

pub mod control;
pub mod gitea;
pub mod github;
pub mod gitlab;
pub mod state;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

pub use crate::http::{Reply, Request, Server, header_of};
pub use state::{
    Comment, Delivery, Deployment, DeploymentStatus, Event, FakeForge, PrSpec, PrState, Status,
};
use state::{DEFAULT_BRANCH, NAME, REPO};

/// Which forge a fake plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    /// GitHub's REST API (`api.github.com`).
    GitHub,
    /// GitLab's REST API v4.
    GitLab,
    /// Gitea's (and Forgejo's) API v1.
    Gitea,
}

impl Forge {
    /// `github`, `gitlab` or `gitea`.
    pub fn name(self) -> &'static str {
        match self {
            Forge::GitHub => "github",
            Forge::GitLab => "gitlab",
            Forge::Gitea => "gitea",
        }
    }

    /// How the fake plays it.
    pub(crate) fn dialect(self) -> &'static state::Dialect {
        match self {
            Forge::GitHub => &github::DIALECT,
            Forge::GitLab => &gitlab::DIALECT,
            Forge::Gitea => &gitea::DIALECT,
        }
    }

    /// The forge of a name given by [`Forge::name`].
    pub fn parse(name: &str) -> Option<Forge> {
        [Forge::GitHub, Forge::GitLab, Forge::Gitea]
            .into_iter()
            .find(|f| f.name() == name)
    }
}

/// One request a fake received, and what it answered.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`…
    pub method: String,
    /// The path as sent (still percent-encoded), without the query.
    pub path: String,
    /// The query parameters, percent-decoded, in order.
    pub query: Vec<(String, String)>,
    /// The body as JSON; `None` when it was empty or not JSON.
    pub body: Option<Value>,
    /// The body as received.
    pub raw_body: Vec<u8>,
    /// The headers (names lowercase, as HTTP/2 spells them).
    pub headers: Vec<(String, String)>,
    /// The status the fake answered with.
    pub status: u16,
    /// The forge's operation the request matched (GitHub: its OpenAPI `operationId`, e.g.
    /// `issues/create-comment`; GitLab and Gitea: the endpoint as their docs write it); `None`
    /// for a path or method the fake does not implement.
    pub operation: Option<&'static str>,
    /// The JSON the fake answered with.
    pub response: Value,
    /// Which TCP connection it came on (numbered from 1 per fake).
    pub connection: u64,
    /// When its body had been read: seconds of `CLOCK_MONOTONIC`.
    pub at: f64,
}

impl Recorded {
    /// The record of `req`, answered with `reply` after matching `operation`.
    pub fn new(req: Request, reply: &Reply, operation: Option<&'static str>) -> Recorded {
        Recorded {
            query: parse_query(&req.query),
            body: json_body(&req.body),
            method: req.method,
            path: req.path,
            raw_body: req.body,
            headers: req.headers,
            status: reply.status,
            operation,
            response: reply.body.clone().unwrap_or(Value::Null),
            connection: req.connection,
            at: req.at,
        }
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }

    /// The first value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        query_param(&self.query, name)
    }

    /// `METHOD /path?query -> status`, for assertion messages.
    pub fn line(&self) -> String {
        let q: Vec<String> = self.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let sep = if q.is_empty() { "" } else { "?" };
        format!(
            "{} {}{sep}{} -> {}",
            self.method,
            self.path,
            q.join("&"),
            self.status
        )
    }

    /// The record as the control API of `slipway-fake-forge` shows it.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "at": self.at,
            "method": self.method,
            "path": self.path,
            "query": self.query.iter().map(|(k, v)| vec![k.clone(), v.clone()]).collect::<Vec<_>>(),
            "status": self.status,
            "operation": self.operation,
            "json": self.body,
            "response": self.response,
            "connection": self.connection,
        })
    }
}

/// Every request a fake answered, in order.
#[derive(Debug, Default)]
pub struct Log {
    requests: Vec<Recorded>,
}

impl Log {
    /// Records one request.
    pub fn push(&mut self, r: Recorded) {
        self.requests.push(r);
    }

    /// Every request so far.
    pub fn all(&self) -> Vec<Recorded> {
        self.requests.clone()
    }

    /// The requests for paths or methods the fake does not implement.
    pub fn unhandled(&self) -> Vec<Recorded> {
        self.requests
            .iter()
            .filter(|r| r.operation.is_none())
            .cloned()
            .collect()
    }

    /// Forgets the requests recorded so far.
    pub fn clear(&mut self) {
        self.requests.clear();
    }

    /// The last `n` requests to the fake `forge`, one line each, for failure messages.
    pub fn recent(&self, n: usize, forge: &str) -> String {
        let skip = self.requests.len().saturating_sub(n);
        let mut out = format!(
            "last {} request(s) to the fake {forge}:\n",
            self.requests.len() - skip
        );
        for r in &self.requests[skip..] {
            out.push_str("  ");
            out.push_str(&r.line());
            out.push('\n');
        }
        out
    }
}

/// POSTs `body` with exactly `headers` to `path` on `addr` (`127.0.0.1:PORT`): the answer's
/// status and body; panics when no answer comes.
pub fn post_webhook(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    crate::http::http_request(addr, "POST", path, headers, body)
        .map(|r| (r.status, r.body))
        .unwrap_or_else(|e| panic!("POST http://{addr}{path}: no answer: {e}"))
}

/// POSTs `body` with exactly `headers` (as a forge's `webhook_headers` builds them) to `path`
/// on `addr`: what every forge's `send_webhook` and [`FakeForge::send`] do.
pub fn deliver(addr: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> (u16, String) {
    post_webhook(addr, path, &header_refs(headers), body)
}

/// `headers` as the borrowed pairs [`post_webhook`] takes.
pub fn header_refs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// The body as JSON; `None` when it is empty or not JSON.
pub fn json_body(body: &[u8]) -> Option<Value> {
    if body.is_empty() {
        None
    } else {
        serde_json::from_slice(body).ok()
    }
}

/// The token a request carries: after `Bearer ` (`bearer `) or `token ` in `Authorization`,
/// or the whole value of `extra_header` (GitLab's `PRIVATE-TOKEN`) when given and present.
pub fn token_of<'r>(req: &'r Request, extra_header: Option<&str>) -> Option<&'r str> {
    extra_header
        .and_then(|h| req.header(h))
        .map(str::trim)
        .or_else(|| {
            req.header("authorization").and_then(|v| {
                let v = v.trim();
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
                    .or_else(|| v.strip_prefix("token "))
                    .map(str::trim)
            })
        })
        .filter(|t| !t.is_empty())
}

/// The path's segments after `prefix`, percent-decoded; `None` when it does not start so.
pub fn segments(path: &str, prefix: &str) -> Option<Vec<String>> {
    path.strip_prefix(prefix).map(|rest| {
        rest.trim_start_matches('/')
            .split('/')
            .map(percent_decode)
            .collect()
    })
}

/// The `page` and `per_page` parameters of a list request, defaulted and bounded.
pub fn page_params(
    query: &[(String, String)],
    default_per_page: usize,
    max_per_page: usize,
) -> (usize, usize) {
    let param = |name: &str| query_param(query, name).and_then(|v| v.parse::<usize>().ok());
    let per_page = param("per_page")
        .unwrap_or(default_per_page)
        .clamp(1, max_per_page);
    let page = param("page").unwrap_or(1).max(1);
    (page, per_page)
}

/// Where one page of a paginated list falls.
pub struct Page {
    /// The page asked for (from 1).
    pub page: usize,
    /// How many pages the list has (at least 1).
    pub pages: usize,
    /// The items on it.
    pub items: Value,
}

impl Page {
    /// Page `page` (from 1) of `items`, `size` a page.
    pub fn of(items: Vec<Value>, page: usize, size: usize) -> Page {
        let total = items.len();
        let start = (page - 1).saturating_mul(size).min(total);
        let end = start.saturating_add(size).min(total);
        Page {
            page,
            pages: total.div_ceil(size).max(1),
            items: Value::Array(items[start..end].to_vec()),
        }
    }
}

/// The `Link` header entries of a paginated list pointing at its other pages, as GitHub and
/// Gitea write them: the list's URL, the query's other parameters, then the page size and
/// the page.
pub struct PageLinks {
    url: String,
    others: Vec<String>,
    size: String,
}

impl PageLinks {
    /// The links of the list at `url` (root and path) asked for with `query`, `size_param`
    /// (`per_page`, `limit`) being `size`.
    pub fn new(url: String, query: &[(String, String)], size_param: &str, size: usize) -> Self {
        PageLinks {
            url,
            others: other_params(query, &["page", size_param]),
            size: format!("{size_param}={size}"),
        }
    }

    /// `<url?…&page=N>; rel="rel"`.
    pub fn link(&self, page: usize, rel: &str) -> String {
        let mut q = self.others.clone();
        q.push(self.size.clone());
        q.push(format!("page={page}"));
        format!("<{}?{}>; rel=\"{rel}\"", self.url, q.join("&"))
    }
}

/// The parameters of `query` but the paging ones (`paging`), percent-encoded as `k=v`, for
/// the links to other pages.
pub fn other_params(query: &[(String, String)], paging: &[&str]) -> Vec<String> {
    query
        .iter()
        .filter(|(k, _)| !paging.contains(&k.as_str()))
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect()
}

/// The first value of parameter `name` in `query`.
pub fn query_param<'q>(query: &'q [(String, String)], name: &str) -> Option<&'q str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `timeout`.
pub fn poll<T>(timeout: Duration, check: impl FnMut() -> Option<T>) -> Option<T> {
    crate::wait::poll(timeout, Duration::from_millis(20), check)
}

/// Decodes `%XX` escapes.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The parameters of a raw query, percent-decoded, in order.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

/// Applies `f` to every string in `v`.
pub fn map_strings(v: &mut Value, f: &dyn Fn(&str) -> String) {
    match v {
        Value::String(s) => *s = f(s),
        Value::Array(items) => items.iter_mut().for_each(|x| map_strings(x, f)),
        Value::Object(map) => map.values_mut().for_each(|x| map_strings(x, f)),
        _ => {}
    }
}

/// Copies `from`'s fields into `into` (both objects).
pub fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(into), Value::Object(from)) = (into, from) {
        into.extend(from);
    }
}

/// A repository's id: `repo_id` ([`REPO`]'s) for `acme/shop`, another stable one from
/// `fork_base` on for a fork.
pub fn repo_id_with(full_name: &str, repo_id: u64, fork_base: u64) -> u64 {
    if full_name.eq_ignore_ascii_case(REPO) {
        repo_id
    } else {
        stable_id(full_name, fork_base)
    }
}

/// A stable id for a name (FNV-1a, case-insensitive), in `base..base + 90,000,000`.
pub fn stable_id(name: &str, base: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.to_ascii_lowercase().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    base + h % 90_000_000
}

/// A fresh UUID-shaped id (unique within this process).
pub fn uuid() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:08x}-{:04x}-4000-8000-{n:012x}",
        std::process::id(),
        unix_now() & 0xffff
    )
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch, later than every earlier answer in this process: two
/// events the fake records one after the other (a push, then an approval) never share a time,
/// as two writes to GitLab's database a request apart do not. A rule judging one event newer
/// than another by these times is then tested, not the clock's resolution.
pub fn unix_now_ms() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let previous = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(now.max(last.saturating_add(1)))
        })
        .unwrap_or_else(|last| last);
    now.max(previous.saturating_add(1))
}

/// `ms` (since the Unix epoch) as ISO 8601 in UTC with milliseconds, as GitLab writes its
/// times: `2024-05-01T12:34:56.789Z`.
pub fn iso_ms(ms: i64) -> String {
    let secs = u64::try_from(ms.div_euclid(1_000)).unwrap_or(0);
    iso(secs).replace('Z', &format!(".{:03}Z", ms.rem_euclid(1_000)))
}

/// Now, as ISO 8601 in UTC: `2024-05-01T12:34:56Z`.
pub fn now_iso() -> String {
    iso(unix_now())
}

/// `secs` (since the Unix epoch) as ISO 8601 in UTC: `2024-05-01T12:34:56Z`.
fn iso(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// HMAC-SHA256 of `body` with `secret`, lowercase hex: GitHub's and Gitea's signature.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A payload as the bytes a delivery carries.
pub fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value serializes")
}

/// How a forge's example payloads are moved to [`REPO`]: what [`rebrand`] changes.
pub struct Rebrand {
    /// The repository (`owner/name`) of every example.
    pub example_repo: &'static str,
    /// [`REPO`]'s id.
    pub repo_id: u64,
    /// The keys of a repository object naming its default branch, set where present.
    pub branch_keys: &'static [&'static str],
    /// What else the forge sets in a repository object of [`REPO`], its owner among them.
    pub repo: fn(&mut Map<String, Value>),
    /// What the forge sets in every object (after a repository's fields).
    pub every: fn(&mut Map<String, Value>),
}

/// Renames the example repository to [`REPO`] everywhere in `v`: every string (URLs, names),
/// and in every repository object that then names [`REPO`], its `name`, id, default branch
/// and the forge's other fields (`how`).
pub fn rebrand(v: &mut Value, how: &Rebrand) {
    map_strings(v, &|s| s.replace(how.example_repo, REPO));
    fix_repos(v, how);
}

fn fix_repos(v: &mut Value, how: &Rebrand) {
    match v {
        Value::Object(obj) => {
            if obj.get("full_name").and_then(Value::as_str) == Some(REPO) {
                obj.insert("name".into(), json!(NAME));
                obj.insert("id".into(), json!(how.repo_id));
                for key in how.branch_keys {
                    if obj.contains_key(*key) {
                        obj.insert((*key).into(), json!(DEFAULT_BRANCH));
                    }
                }
                (how.repo)(obj);
            }
            (how.every)(obj);
            obj.values_mut().for_each(|x| fix_repos(x, how));
        }
        Value::Array(items) => items.iter_mut().for_each(|x| fix_repos(x, how)),
        _ => {}
    }
}

/// Sets the state fields of a payload's pull request object `p`: `state` and `closed_at`
/// (`now` when `closed`), `merged`, `merged_at` (`now`) and `merge_commit_sha` (`merge_sha`)
/// when `merged`, else `null`.
pub fn set_closing(p: &mut Value, closed: bool, merged: bool, merge_sha: Option<&str>, now: &str) {
    p["state"] = json!(if closed { "closed" } else { "open" });
    p["closed_at"] = if closed { json!(now) } else { Value::Null };
    p["merged"] = json!(merged);
    p["merged_at"] = if merged { json!(now) } else { Value::Null };
    p["merge_commit_sha"] = match merge_sha {
        Some(sha) if merged => json!(sha),
        _ => Value::Null,
    };
}

/// Panics unless a `pull_request` delivery saying `merged` is a `closed` one (`action`).
pub fn assert_merge_closes(action: &str, merged: bool) {
    assert!(
        !merged || action == "closed",
        "only a `closed` pull_request delivery can say merged"
    );
}

/// How GitHub and Gitea deliver what happens to a pull request: one `pull_request` event whose
/// action tells an opening, a push, a close or a merge, and events of their own for an
/// approval and a comment.
pub struct PullRequestEvents {
    /// The action of a push: `synchronize` (GitHub), `synchronized` (Gitea).
    pub push_action: &'static str,
    /// The action of a change of labels: `labeled` (GitHub), `label_updated` (Gitea).
    pub label_action: &'static str,
    /// The forge's `pull_request_payload(action, pr, merged, merge_sha)`.
    pub pull_request: fn(&str, &PrSpec, bool, Option<&str>) -> Vec<u8>,
    /// The delivery of `reviewer`'s approval of `pr`.
    pub approved: fn(pr: &PrSpec, reviewer: &str) -> Delivery,
    /// The delivery of `comment` on `pr`.
    pub commented: fn(pr: &PrSpec, comment: &Comment) -> Delivery,
    /// Makes a payload's user object (`sender`) `login`'s.
    pub set_user: fn(&mut serde_json::Value, &str),
    /// The forge's `push` delivery of `branch` from `before` to `after` by `pusher`.
    pub push: fn(branch: &str, before: &str, after: &str, pusher: &str) -> Delivery,
}

impl PullRequestEvents {
    /// What the forge delivers when `event` happens to `pr`.
    pub fn delivery(&self, pr: &PrSpec, event: &Event) -> Delivery {
        let (action, merge_sha) = match event {
            Event::Opened => ("opened", None),
            Event::Pushed { .. } => (self.push_action, None),
            Event::Labelled => (self.label_action, None),
            Event::Closed => ("closed", None),
            Event::Merged { merge_sha } => ("closed", Some(merge_sha.as_str())),
            Event::BranchPushed { before, by } => {
                let pusher = by.as_deref().unwrap_or(&pr.author);
                return (self.push)(&pr.head_ref, before, &pr.head_sha, pusher);
            }
            Event::Approved { reviewer } => return (self.approved)(pr, reviewer),
            Event::Commented { comment } => return (self.commented)(pr, comment),
        };
        let mut body = (self.pull_request)(action, pr, merge_sha.is_some(), merge_sha);
        if let Event::Pushed { by: Some(who), .. } = event {
            let mut v: serde_json::Value =
                serde_json::from_slice(&body).expect("a payload of the fake is JSON");
            (self.set_user)(&mut v["sender"], who);
            body = serde_json::to_vec(&v).expect("serialize a payload");
        }
        Delivery {
            event: "pull_request",
            body,
        }
    }
}
