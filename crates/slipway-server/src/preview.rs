//! The preview-URL router: `http://<env>.<stack>.localhost:<port>/` on the server's own
//! listener is proxied to the environment's exposed process.
//!
//! The target is looked up in the state store for every request, so a deploy that records a
//! new instance switches traffic at once. A request whose connection is refused (the old
//! instance stopped between the lookup and the connect) is retried once against a fresh
//! lookup, so a deploy fails no request that carries no body.
//!
//! # What reaches the application
//! - Only the port the process names in `expose`, never another of its ports (an admin or
//!   metrics port stays private). An environment without an exposed process has no preview
//!   URL: its host answers `404`, whatever ports its processes listen on.
//! - Hop-by-hop headers (`Connection`, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`,
//!   `Transfer-Encoding`, `Upgrade`) and every header `Connection` names are removed, in both
//!   directions. A WebSocket (or other `Upgrade`) handshake is passed on as such, and its
//!   connection is spliced to the application's once the application answers `101`.
//! - `X-Forwarded-For` gets the real peer appended (what a client sent stays before it, so
//!   the last entry is the one to trust), `Forwarded` likewise; `X-Forwarded-Proto` and
//!   `X-Forwarded-Host` are set by the router, replacing any a client sent.
//! - Slipway's own credentials never do: its session cookie is cut out of `Cookie` (the
//!   application's cookies stay), an `Authorization` whose credential is a Slipway API token
//!   (`slw_...`) is removed (any other `Authorization`, e.g. the application's own bearer or
//!   basic credentials, is passed on: applications use it), and `X-Slipway-CSRF` is removed.
//!   A response cannot set a cookie under the session cookie's name.
//! - The application has [`PreviewTimeouts::connect`] to accept the connection and
//!   [`PreviewTimeouts::response`] to send its response's head; past that the client gets `504`.
//! - [`FORWARDED_BY`] never does: it is Slipway's, between replicas (below).
//!
//! # Several replicas
//! On a PostgreSQL state shared by several `slipway serve` replicas, an environment's processes
//! run on the node of the replica that holds (or last held) its lease: they stay there (they
//! are node-bound), and listen on that node's loopback interface only. A replica that receives
//! a request for such an environment serves it only when it is that replica; otherwise it
//! forwards the request, whole, to that replica's router, at the address that replica recorded
//! in the `replicas` table from its `[local] advertise`, and streams the answer back (a
//! WebSocket too). The request it forwards has already lost what this router strips (above);
//! it keeps its method, path, query, body and `Host`, so the other router picks the same
//! environment, and gains [`FORWARDED_BY`] naming this replica; `X-Forwarded-For` and
//! `Forwarded` end with this replica's address, after the client's.
//!
//! Who can trigger a forward, and what it reaches: anyone who can send a request to any
//! replica, by naming a preview host. The host only picks an environment (a checked
//! [`EnvName`] and stack, which must exist in the state with an exposed process); the address
//! comes from the state alone: the `replicas` row of the environment's lease holder, which
//! only that replica writes (its heartbeat), checked to be a bare `HOST:PORT`, and used only
//! while that replica is alive (heard from within two leases) — never an address a request
//! names, nor a dead replica's, which may belong to something else by now. So a forward
//! reaches only another replica's own router, which treats it as any client's request.
//!
//! Loops: a request carrying [`FORWARDED_BY`] is never forwarded again; the replica that
//! receives it serves it from its own node if the environment is there, and otherwise answers
//! `502`. The header is a hop counter, not a credential: a client that sends it gains nothing
//! (it can only make a replica refuse to forward), and it never reaches an application.
//! A replica that cannot forward (the holder advertises nothing, is not alive, or already got
//! the request forwarded) answers `502` or `503` naming the holder and never its address, and
//! never tries the process's port on its own node, where it does not run.

use slipway_core::EnvName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use slipway_controller::Controller;
use slipway_core::vocab::ResourceStatus;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long the router waits on an application, and how many requests it has in flight.
#[derive(Debug, Clone, Copy)]
pub struct PreviewTimeouts {
    /// To connect to the exposed port.
    pub connect: Duration,
    /// From sending the request to the response's head (its body then streams as long as
    /// the application sends it).
    pub response: Duration,
    /// Most requests in flight through the router at once (a response still streaming, an
    /// upgraded connection, count); more get `503`. An application answers as slowly as it
    /// likes (its code may be anyone's branch), so without this a few slow responses could
    /// hold every connection of the server and keep `/healthz` and the API out.
    pub max_in_flight: usize,
}

impl Default for PreviewTimeouts {
    fn default() -> Self {
        PreviewTimeouts {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(60),
            max_in_flight: 512,
        }
    }
}

/// What the router needs: the controller (for the store) and an HTTP client.
#[derive(Clone)]
pub struct Previews {
    controller: Controller,
    client: Client<HttpConnector, Body>,
    timeouts: PreviewTimeouts,
    in_flight: Arc<Semaphore>,
}

impl Previews {
    /// A router over `controller`'s environments, with the default timeouts.
    pub fn new(controller: Controller) -> Previews {
        Previews::with_timeouts(controller, PreviewTimeouts::default())
    }

    /// A router over `controller`'s environments that waits on applications `timeouts` long.
    pub fn with_timeouts(controller: Controller, timeouts: PreviewTimeouts) -> Previews {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeouts.connect));
        connector.set_nodelay(true);
        Previews {
            controller,
            // Idle connections to an application are dropped after a while (with a timer, not
            // only when next checked out): an old instance a deploy replaced keeps none open.
            client: Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            timeouts,
            in_flight: Arc::new(Semaphore::new(timeouts.max_in_flight.max(1))),
        }
    }
}

/// The `(environment, stack)` a preview host names, if it is one.
pub fn parse_host(host: &str) -> Option<(EnvName, &str)> {
    let name = host
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    let rest = name.strip_suffix(".localhost")?;
    let (env, stack) = rest.split_once('.')?;
    let env = EnvName::parse(env).ok()?;
    slipway_core::stack::is_dns_label(stack).then_some((env, stack))
}

/// The address of the port an exposed process names in `expose`, among `resources`: the
/// first resource that exposes a port (a `process` with `expose`) and is not being deleted.
/// `None` when none exposes a port: the router then serves nothing for the environment.
pub fn exposed_address(resources: &[slipway_state::ResourceRecord]) -> Option<String> {
    resources.iter().find_map(|r| {
        // Any status but `deleting`: during an update the record still holds the running
        // instance's ports, and after a failed swap the old instance still serves.
        if r.status == ResourceStatus::Deleting {
            return None;
        }
        let name = slipway_core::types::exposed_port(&r.type_name, &r.config)?;
        // The number the process was given for that name; never its `url` or first port.
        let port = r.outputs.get("ports")?.get(name)?.as_u64()?;
        let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
        Some(format!("http://127.0.0.1:{port}"))
    })
}

/// The header a replica adds to a request it forwards to another replica, naming itself: a
/// preview request (see the module's "Several replicas") or a person's change to an
/// environment through the API (`forward.rs`). A request that carries it is never forwarded
/// again. It is a hop counter, never a credential: nothing is allowed because of it.
pub const FORWARDED_BY: &str = "x-slipway-forwarded";

/// Where this replica sends a request for an environment that exposes a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// To the exposed process on this node.
    Here,
    /// To the router of `replica`, whose node runs the environment, at `base`
    /// (`http://HOST:PORT`, from its `[local] advertise`).
    Forward {
        /// The replica.
        replica: String,
        /// Its router's base URL.
        base: String,
    },
    /// Nowhere: `replica`'s node runs the environment and this replica cannot forward to it.
    Unreachable {
        /// The replica.
        replica: String,
        /// Why not.
        why: Unreachable,
    },
}

/// Why a request cannot be forwarded to the replica whose node runs its environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// It recorded no `[local] advertise`.
    NotAdvertised,
    /// It recorded one that is not a bare `HOST:PORT`.
    BadAddress,
    /// It was not heard from within two leases (or never).
    NotAlive,
    /// The request was forwarded by a replica already (or says it was).
    AlreadyForwarded,
}

/// The base URL of a router at `advertise`, as a replica recorded it: `HOST:PORT` and nothing
/// more (no user, no path), or `None`.
fn router_base(advertise: &str) -> Option<String> {
    let authority: axum::http::uri::Authority = advertise.parse().ok()?;
    (authority.as_str() == advertise && !advertise.contains('@') && authority.port_u16().is_some())
        .then(|| format!("http://{authority}"))
}

/// The replica whose node a lease `holder` works on: a one-shot command on a shared state
/// holds an environment's lease as `<replica>/cli-<pid>` while it runs (the binary's
/// `lease.rs`), on that replica's node.
pub(crate) fn node_of(holder: &str) -> &str {
    holder.split_once("/cli-").map_or(holder, |(node, _)| node)
}

/// The base URL (`http://HOST:PORT`) of replica `replica`'s listener, where this replica (`me`)
/// may forward a request that was not `forwarded` already: the address `replica` recorded
/// from its `[local] advertise`, a bare `HOST:PORT`, and only while it is alive (heard from
/// within two leases, as the controller counts the live). What the API's forwarding of a
/// person's change (`forward.rs`) shares with the preview router's.
pub(crate) fn reach(
    me: &slipway_controller::ReplicaOptions,
    replica: &str,
    replicas: &[slipway_state::ReplicaRecord],
    forwarded: bool,
) -> Result<String, Unreachable> {
    if forwarded {
        return Err(Unreachable::AlreadyForwarded);
    }
    let silent_limit = i64::try_from(me.lease.as_millis() * 2).unwrap_or(i64::MAX);
    let record = replicas
        .iter()
        .find(|r| r.name == replica && r.silent_ms <= silent_limit)
        .ok_or(Unreachable::NotAlive)?;
    let advertise = record
        .advertise
        .as_deref()
        .ok_or(Unreachable::NotAdvertised)?;
    router_base(advertise).ok_or(Unreachable::BadAddress)
}

/// Where this replica (`me`: its name and lease, `None` when it is not one of several replicas)
/// sends a request for an environment whose lease `holder` holds or last held, given the
/// replicas' records and whether the request was `forwarded` already.
///
/// An environment with an exposed process is node-bound: it runs where its holder is, expired
/// lease or not (it stays with its last holder). No holder (a state no replica worked on yet)
/// or this replica: here.
pub fn placement(
    me: Option<&slipway_controller::ReplicaOptions>,
    holder: Option<&str>,
    replicas: &[slipway_state::ReplicaRecord],
    forwarded: bool,
) -> Placement {
    let (Some(me), Some(holder)) = (me, holder.map(node_of)) else {
        return Placement::Here;
    };
    if holder == me.name {
        return Placement::Here;
    }
    match reach(me, holder, replicas, forwarded) {
        Ok(base) => Placement::Forward {
            replica: holder.to_owned(),
            base,
        },
        Err(why) => Placement::Unreachable {
            replica: holder.to_owned(),
            why,
        },
    }
}

/// What a preview host leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// An environment with an exposed process, at `exposed` on the node that runs it, and
    /// where this replica sends its requests.
    Found {
        exposed: String,
        placement: Placement,
        /// When its record was made (what its links name).
        created_at: i64,
    },
    /// No such environment of that stack, or it exposes no process.
    Missing,
    /// The state store could not be read.
    Unavailable,
    /// A sleeping environment whose node is this one: to wake first (`wake.rs`).
    Asleep,
    /// An environment waiting for a slot in its family (`max_environments`), at this place.
    Queued(Option<u32>),
    /// It was asleep and did not wake in time.
    Waking,
}

/// Where a request for `env` of `stack` goes (see [`placement`]).
fn target(controller: &Controller, env: &EnvName, stack: &str, forwarded: bool) -> Lookup {
    let store = controller.engine().store();
    let record = match store.environment(env) {
        Ok(Some(record)) if record.stack == stack => record,
        Ok(_) => return Lookup::Missing,
        Err(_) => return Lookup::Unavailable,
    };
    if record.activity == slipway_core::vocab::Activity::Queued {
        // Nothing of it runs yet: say where it is in the line (read only for a request
        // already let in, as every lookup is).
        return Lookup::Queued(store.queue_position(env).ok().flatten());
    }
    let exposed = match store.resources(&record.name) {
        Ok(resources) => exposed_address(&resources),
        Err(_) => return Lookup::Unavailable,
    };
    let Some(exposed) = exposed else {
        return Lookup::Missing;
    };
    let me = controller.replica();
    let holder = match me.map(|_| store.lease(env)).transpose() {
        Ok(lease) => lease.flatten().map(|lease| lease.holder),
        Err(_) => return Lookup::Unavailable,
    };
    // The replicas are read only for a request that is not this node's.
    let elsewhere = me
        .zip(holder.as_deref())
        .is_some_and(|(me, holder)| node_of(holder) != me.name);
    let replicas = if elsewhere && !forwarded {
        match store.replicas() {
            Ok(replicas) => replicas,
            Err(_) => return Lookup::Unavailable,
        }
    } else {
        Vec::new()
    };
    let placement = placement(me, holder.as_deref(), &replicas, forwarded);
    if record.activity == slipway_core::vocab::Activity::Sleeping && placement == Placement::Here {
        return Lookup::Asleep;
    }
    Lookup::Found {
        exposed,
        placement,
        created_at: record.created_at,
    }
}

async fn lookup(controller: &Controller, env: &EnvName, stack: &str, forwarded: bool) -> Lookup {
    let once = || {
        let (c, e, s) = (controller.clone(), env.clone(), stack.to_string());
        async move {
            tokio::task::spawn_blocking(move || target(&c, &e, &s, forwarded))
                .await
                .unwrap_or(Lookup::Unavailable)
        }
    };
    crate::wake::when_awake(controller, env, once).await
}

/// The answer to a request for `env` while it waits for a slot in its family: `503`, its
/// place, and when to ask again.
fn queued(env: &EnvName, place: Option<u32>) -> Response {
    let place = place.map_or_else(String::new, |p| format!(" (#{p} in line)"));
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("environment `{env}` is queued{place}: its family runs max_environments already"),
        format!(
            "it starts when one of its family's environments goes; `slipway status --env {env}` \
             shows its place"
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    response
}

/// The answer to a request for `env`, whose node is `replica`'s, when this replica cannot
/// forward it there: names the replica, never its address (preview URLs may be public).
fn unreachable(env: &EnvName, replica: &str, why: Unreachable, me: &str) -> Response {
    let (status, message, hint) = match why {
        Unreachable::NotAdvertised => (
            StatusCode::BAD_GATEWAY,
            format!(
                "environment `{env}` runs on the node of replica {replica}, and this replica \
                 ({me}) cannot forward to it: {replica} advertises no address"
            ),
            format!(
                "open the preview URL through {replica} itself, or set [local] advertise on \
                 {replica} (its listen address as the other replicas reach it) so that every \
                 replica forwards to it"
            ),
        ),
        Unreachable::BadAddress => (
            StatusCode::BAD_GATEWAY,
            format!(
                "environment `{env}` runs on the node of replica {replica}, whose recorded \
                 address is not HOST:PORT, so this replica ({me}) does not forward to it"
            ),
            format!("check [local] advertise on {replica}"),
        ),
        Unreachable::NotAlive => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "environment `{env}` runs on the node of replica {replica}, which is not alive \
                 (not heard from within two leases)"
            ),
            format!(
                "its preview URL answers again once {replica} runs again; GET /api/v1/replicas \
                 lists the replicas"
            ),
        ),
        Unreachable::AlreadyForwarded => (
            StatusCode::BAD_GATEWAY,
            format!(
                "environment `{env}` runs on the node of replica {replica}, not of this one \
                 ({me}), and this request was already forwarded by a replica: it is not \
                 forwarded twice"
            ),
            format!(
                "retry (the replicas may have disagreed for a moment on where `{env}` runs), \
                 without an {FORWARDED_BY} header"
            ),
        ),
    };
    error(status, message, hint)
}

/// Headers that concern one connection, never passed on by a proxy (RFC 9110 7.6.1), plus
/// the obsolete `Proxy-Connection` some clients still send.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The header names `Connection` lists (lowercase), from every `Connection` header.
fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Removes the hop-by-hop headers of [`HOP_BY_HOP`] and every header that `Connection` names
/// (a client can name any header there to have a proxy drop it, or to smuggle one past a
/// proxy that does not).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in connection_tokens(headers) {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// The protocol a request asks to upgrade to (`Upgrade`, when `Connection` says `upgrade`).
pub(crate) fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    if !connection_tokens(headers).iter().any(|t| t == "upgrade") {
        return None;
    }
    headers.get(header::UPGRADE).cloned()
}

/// Removes what authenticates a caller to Slipway itself: the session cookie (other cookies
/// stay), an `Authorization` carrying a Slipway API token, and the session's CSRF header.
pub fn strip_slipway_credentials(headers: &mut HeaderMap) {
    let cookies: Vec<HeaderValue> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| {
            let Ok(text) = value.to_str() else {
                // Not text: it cannot be parsed for our cookie, so it is not passed on.
                return None;
            };
            let kept: Vec<&str> = text
                .split(';')
                .map(str::trim)
                .filter(|pair| !pair.is_empty())
                .filter(|pair| {
                    let name = pair.split_once('=').map_or(*pair, |(n, _)| n).trim();
                    name != crate::session::COOKIE_NAME && name != crate::preview_access::COOKIE
                })
                .collect();
            (!kept.is_empty())
                .then(|| HeaderValue::from_str(&kept.join("; ")).ok())
                .flatten()
        })
        .collect();
    headers.remove(header::COOKIE);
    for value in cookies {
        headers.append(header::COOKIE, value);
    }
    let slipway_token = headers.get_all(header::AUTHORIZATION).iter().any(|value| {
        // Whatever the scheme (Bearer, or a token pasted as a Basic password is not this
        // shape), a credential that is a Slipway token is Slipway's.
        let text = String::from_utf8_lossy(value.as_bytes());
        text.split_whitespace()
            .any(|part| part.starts_with(slipway_state::TOKEN_PREFIX))
    });
    if slipway_token {
        headers.remove(header::AUTHORIZATION);
    }
    headers.remove(crate::session::CSRF_HEADER);
    headers.remove(crate::preview_access::LINK_HEADER);
}

/// Sets the `X-Forwarded-*` and `Forwarded` headers for a request from `peer` to `host`.
/// What a client sent in `X-Forwarded-For` and `Forwarded` is kept before the real peer (an
/// application that trusts only the last entry, the one this router adds, cannot be fooled);
/// `X-Forwarded-Proto` and `X-Forwarded-Host` are replaced.
pub fn add_forwarded(headers: &mut HeaderMap, peer: Option<SocketAddr>, host: &str) {
    let joined = |headers: &HeaderMap, name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect()
    };
    let mut xff = joined(headers, "x-forwarded-for");
    let mut forwarded = joined(headers, "forwarded");
    headers.remove("x-forwarded-for");
    headers.remove("forwarded");
    headers.remove("x-forwarded-proto");
    headers.remove("x-forwarded-host");
    let Some(peer) = peer else {
        // Without the real peer, nothing a client claims about itself is passed on.
        return;
    };
    let ip = peer.ip().to_canonical();
    xff.push(ip.to_string());
    let node = match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut element = format!("for={node};proto=http");
    // A host is quoted unless it is a token; a preview host (labels, dots, a port) may
    // contain `:`, which is not a token character.
    if host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        && !host.is_empty()
    {
        element.push_str(&format!(";host=\"{host}\""));
    }
    forwarded.push(element);
    let set = |headers: &mut HeaderMap, name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    set(headers, "x-forwarded-for", xff.join(", "));
    set(headers, "forwarded", forwarded.join(", "));
    set(headers, "x-forwarded-proto", "http".into());
    if !host.is_empty() {
        set(headers, "x-forwarded-host", host.into());
    }
}

/// Removes a response's `Set-Cookie` headers that would set Slipway's session cookie: an
/// application on a preview host could otherwise plant one for the whole of `localhost`.
pub fn strip_slipway_set_cookie(headers: &mut HeaderMap) {
    let kept: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|value| {
            let text = String::from_utf8_lossy(value.as_bytes());
            let name = name_sent_back(&text);
            name != crate::session::COOKIE_NAME && name != crate::preview_access::COOKIE
        })
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for value in kept {
        headers.append(header::SET_COOKIE, value);
    }
}

/// The name a browser sends the cookie of a `Set-Cookie` value back under: its name, or for a
/// cookie without one (`=slipway_session=x`, or `slipway_session` alone), the start of its
/// value, which the browser sends back bare and a server then reads as a name.
fn name_sent_back(set_cookie: &str) -> &str {
    let pair = set_cookie.split(';').next().unwrap_or("").trim();
    match pair.split_once('=') {
        Some((name, value)) if name.trim().is_empty() => {
            value.split('=').next().unwrap_or("").trim()
        }
        Some((name, _)) => name.trim(),
        None => pair,
    }
}

fn error(status: StatusCode, error: String, hint: String) -> Response {
    let body = serde_json::json!({"error": error, "hint": hint});
    (status, axum::Json(body)).into_response()
}

/// Where one attempt of a request goes: the exposed process on this node, or another
/// replica's router.
enum Upstream {
    Local(String),
    Replica { replica: String, base: String },
}

impl Upstream {
    fn base(&self) -> &str {
        match self {
            Upstream::Local(base) | Upstream::Replica { base, .. } => base,
        }
    }
}

/// Middleware: proxies preview hosts, passes everything else on to the API (but the
/// sign-in to private previews, [`crate::preview_access::SIGN_IN_PATH`]).
pub async fn route(State(previews): State<Previews>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let Some((env, stack)) = host
        .as_deref()
        .and_then(parse_host)
        .map(|(e, s)| (e, s.to_string()))
    else {
        if request.uri().path() == crate::preview_access::SIGN_IN_PATH {
            let (parts, body) = request.into_parts();
            return match parts.method {
                axum::http::Method::GET => {
                    crate::preview_access::sign_in(&previews.controller, &parts, None).await
                }
                axum::http::Method::POST => {
                    // A form of four short fields.
                    let Ok(form) = axum::body::to_bytes(body, 8 * 1024).await else {
                        return error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "the sign-in's form is larger than 8 KiB".into(),
                            "it carries `env`, `stack`, `next` and `csrf`".into(),
                        );
                    };
                    let form = String::from_utf8_lossy(&form);
                    crate::preview_access::sign_in(&previews.controller, &parts, Some(&form)).await
                }
                _ => error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "the sign-in takes GET (from a preview's page) and POST (from the UI)".into(),
                    "open the preview's URL in a browser".into(),
                ),
            };
        }
        return next.run(request).await;
    };
    let main_host = host
        .as_deref()
        .and_then(|h| crate::preview_access::main_host(h, &env, &stack));
    let mut response = if request.uri().path() == slipway_controller::links::AUTH_PATH {
        let (parts, _) = request.into_parts();
        crate::preview_access::take_link(
            &previews.controller,
            &env,
            &stack,
            &parts,
            main_host.as_deref(),
        )
        .await
    } else {
        proxy(previews, request, env, stack, host, main_host).await
    };
    // No preview, public or private, and no answer about one, is for search engines.
    response
        .headers_mut()
        .insert(ROBOTS, HeaderValue::from_static("noindex, nofollow"));
    response
}

/// The answer for a request to `env`'s preview that may not open it (`access: private`
/// without a link or token); `None` when it may, or when there is no such preview (the
/// lookup that follows says so).
async fn gate(
    previews: &Previews,
    env: &EnvName,
    stack: &str,
    method: &axum::http::Method,
    headers: &HeaderMap,
    path: &str,
    main_host: Option<&str>,
) -> Option<Response> {
    let (c, e) = (previews.controller.clone(), env.clone());
    let read = tokio::task::spawn_blocking(move || c.engine().store().environment(&e)).await;
    // A state that cannot be read lets nobody in, though the lookup that follows might read
    // it (PostgreSQL back a moment later).
    let record = match read {
        Ok(Ok(record)) => record?,
        Ok(Err(_)) | Err(_) => return Some(crate::preview_access::unavailable()),
    };
    if record.stack != stack || record.access() != slipway_core::vocab::Access::Private {
        return None;
    }
    if let Some(refused) = foreign_origin(method, headers) {
        return Some(refused);
    }
    crate::preview_access::admit(&previews.controller, env, stack, headers, main_host, path)
        .await
        .err()
}

/// The answer to a request a page of another origin made to a private preview with the
/// visitor's preview cookie, and that could change something or read the answer: any method
/// but OPTIONS (a script's GET carries `Origin`, and an application that answers CORS with
/// credentials would let that page read it; a link followed, an image, a form's GET carry
/// none), or a WebSocket handshake (which no CORS rule guards), with an `Origin` that is not
/// the preview's own. The preview cookie goes with requests
/// from every page of the same site, and the previews of a stack share one
/// (`pr-1.shop.localhost` and `pr-2.shop.localhost`): without this, the code of any branch
/// with a preview could act in the visitor's name on the private previews they opened.
/// `None` to go on. A request without `Origin` is no browser's cross-origin request.
fn foreign_origin(method: &axum::http::Method, headers: &HeaderMap) -> Option<Response> {
    use axum::http::Method;
    let changes = *method != Method::OPTIONS || upgrade_protocol(headers).is_some();
    let origin = headers.get(header::ORIGIN)?;
    if !changes {
        return None;
    }
    // Name and port, each port as the browser means it: absent, the default of the Origin's
    // scheme (80, 443), in `Host` as in `Origin`. On this machine every preview's process
    // listens on a port of 127.0.0.1, which `*.localhost` reaches, so a page at
    // `pr-1.shop.localhost:<pr-2's port>` is pr-2's code under pr-1's name: the port counts.
    // A reverse proxy in front of the router must pass `Host` as the browser sent it
    // (nginx's `$http_host`, not `$host`, when it listens on another port than 80 or 443).
    let split = |authority: &str| {
        let (name, port) = match authority.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (name, Some(port)),
            _ => (authority, None),
        };
        (
            name.trim_end_matches('.').to_ascii_lowercase(),
            port.and_then(|p| p.parse::<u16>().ok()),
        )
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(split);
    let own = origin
        .to_str()
        .ok()
        .and_then(|o| {
            let (default, rest) = match o.strip_prefix("http://") {
                Some(rest) => (80, rest),
                None => (443, o.strip_prefix("https://")?),
            };
            (!rest.contains('/')).then(|| (default, split(rest)))
        })
        .zip(host)
        .is_some_and(|((default, (from, from_port)), (host, host_port))| {
            from == host && from_port.unwrap_or(default) == host_port.unwrap_or(default)
        });
    (!own).then(|| {
        error(
            StatusCode::FORBIDDEN,
            "a page of another origin may not send this request to a private preview".into(),
            "a private preview takes requests that change something, and WebSockets, only from \
             its own pages (its `Origin`)"
                .into(),
        )
    })
}

/// `X-Robots-Tag`, on every answer of a preview host.
const ROBOTS: HeaderName = HeaderName::from_static("x-robots-tag");

/// A request to the preview host of `env` of `stack`, passed on to its exposed process (or
/// the replica whose node runs it) once let in.
async fn proxy(
    previews: Previews,
    request: Request,
    env: EnvName,
    stack: String,
    host: Option<String>,
    main_host: Option<String>,
) -> Response {
    let forwarded = request.headers().contains_key(FORWARDED_BY);
    let me = previews
        .controller
        .replica()
        .map_or_else(|| "this server".to_owned(), |r| r.name.clone());
    // Who may open it is checked before anything else happens for the request: a stranger's
    // request to a private preview wakes nothing and counts as no visit (idle time).
    let asked = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    if let Some(refused) = gate(
        &previews,
        &env,
        &stack,
        request.method(),
        request.headers(),
        &asked,
        main_host.as_deref(),
    )
    .await
    {
        return refused;
    }
    // The permit first: a request for a sleeping environment waits for its wake (up to
    // `WAKE_WAIT`) within the preview share too, or requests to a preview that wakes slowly
    // (anyone's branch decides how slowly) could hold every connection.
    let Ok(permit) = previews.in_flight.clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests through preview URLs are in flight".into(),
            "try again shortly; [server] max_connections sets the limit (half of it)".into(),
        );
    };
    let created;
    let upstream = match lookup(&previews.controller, &env, &stack, forwarded).await {
        Lookup::Found {
            exposed,
            placement,
            created_at,
        } => {
            created = created_at;
            match placement {
                Placement::Here => Upstream::Local(exposed),
                Placement::Forward { replica, base } => Upstream::Replica { replica, base },
                Placement::Unreachable { replica, why } => {
                    return unreachable(&env, &replica, why, &me);
                }
            }
        }
        Lookup::Missing => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no environment `{env}` of stack `{stack}` serves an exposed process here"),
                "`slipway env list` shows the environments; a process needs `expose:` to get a preview URL".into(),
            );
        }
        Lookup::Asleep | Lookup::Waking => return crate::wake::still_waking(&env),
        Lookup::Queued(place) => return queued(&env, place),
        Lookup::Unavailable => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the state store cannot be read just now".into(),
                "try again shortly; GET /healthz says whether this server reaches its state".into(),
            );
        }
    };
    let mut request = request;
    let upgrade = upgrade_protocol(request.headers());
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    strip_hop_by_hop(&mut parts.headers);
    strip_slipway_credentials(&mut parts.headers);
    add_forwarded(&mut parts.headers, peer, host.as_deref().unwrap_or(""));
    if let Some(protocol) = &upgrade {
        // The one hop-by-hop pair a proxy passes on on purpose: the handshake.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol.clone());
    }
    // Only what the router added to the request's extensions is ours; none goes upstream.
    parts.extensions = axum::http::Extensions::new();
    let retryable = upgrade.is_none()
        && (parts.method == axum::http::Method::GET || parts.method == axum::http::Method::HEAD);
    let mut upstream = upstream;
    let mut body = Some(body);
    for attempt in 0..3 {
        let Ok(uri) = format!("{}{path}", upstream.base()).parse::<Uri>() else {
            return (StatusCode::BAD_REQUEST, "bad request path").into_response();
        };
        let mut parts = parts.clone();
        // What a client sent under this name is dropped; a forward names this replica.
        parts.headers.remove(FORWARDED_BY);
        let mut wait = previews.timeouts.response;
        if let Upstream::Replica { .. } = &upstream {
            let name = HeaderValue::from_str(&me).unwrap_or(HeaderValue::from_static("replica"));
            parts.headers.insert(FORWARDED_BY, name);
            // The other router checks access again (the forward header is no credential):
            // this one let the request in, and says so with a link that holds a minute.
            let until = slipway_state::now_ms()
                .saturating_add(crate::preview_access::FORWARD_LINK.as_millis() as i64);
            let link = previews.controller.sign(&env, &stack, created, until);
            if let Ok(value) = HeaderValue::from_str(&link) {
                parts
                    .headers
                    .insert(crate::preview_access::LINK_HEADER, value);
            }
            // The other router's own timeout answers first, with its clearer `504`.
            wait += previews.timeouts.connect;
        }
        let mut outgoing = axum::http::Request::from_parts(
            parts,
            if attempt == 0 {
                body.take().unwrap_or_default()
            } else {
                Body::empty()
            },
        );
        *outgoing.uri_mut() = uri;
        let sent = tokio::time::timeout(wait, previews.client.request(outgoing)).await;
        match sent {
            Ok(Ok(mut response)) => {
                let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                let upstream_upgrade = switching.then(|| hyper::upgrade::on(&mut response));
                let (mut rparts, rbody) = response.into_parts();
                let answered = upgrade_protocol(&rparts.headers);
                strip_hop_by_hop(&mut rparts.headers);
                strip_slipway_set_cookie(&mut rparts.headers);
                if let (Some(client), Some(upstream), Some(protocol)) =
                    (client_upgrade, upstream_upgrade, answered)
                {
                    rparts
                        .headers
                        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    rparts.headers.insert(header::UPGRADE, protocol);
                    tokio::spawn(splice(client, upstream, permit));
                    return Response::from_parts(rparts, Body::empty());
                }
                if switching {
                    // A 101 the client did not ask for, or without an `Upgrade`: nothing
                    // sensible can follow it on this connection.
                    return error(
                        StatusCode::BAD_GATEWAY,
                        format!("the exposed process of `{env}` switched protocols unasked"),
                        "send `Connection: upgrade` and `Upgrade:` to open a WebSocket".into(),
                    );
                }
                // The permit is released when the body is sent or dropped.
                let rbody = rbody.map_frame(move |frame| {
                    let _ = &permit;
                    frame
                });
                return Response::from_parts(rparts, Body::new(rbody));
            }
            Ok(Err(e)) if retryable && attempt < 2 && e.is_connect() => {
                // The instance we looked up is gone (a deploy switched it), or the replica
                // whose node runs it: look again.
                tokio::time::sleep(Duration::from_millis(50)).await;
                upstream = match lookup(&previews.controller, &env, &stack, forwarded).await {
                    Lookup::Found {
                        exposed,
                        placement: Placement::Here,
                        ..
                    } => Upstream::Local(exposed),
                    Lookup::Found {
                        placement: Placement::Forward { replica, base },
                        ..
                    } => Upstream::Replica { replica, base },
                    _ => break,
                };
            }
            Ok(Err(e)) => {
                return match &upstream {
                    Upstream::Local(_) => error(
                        StatusCode::BAD_GATEWAY,
                        format!("the exposed process of `{env}` did not answer: {e}"),
                        format!("`slipway logs --env {env}` shows its output"),
                    ),
                    Upstream::Replica { replica, base } => {
                        // Its address goes to this replica's log, not to the client.
                        eprintln!(
                            "slipway-server: forwarding a preview request for `{env}` to replica \
                             {replica} at {base} failed: {e}"
                        );
                        error(
                            StatusCode::BAD_GATEWAY,
                            format!(
                                "environment `{env}` runs on the node of replica {replica}, \
                                 which did not answer this replica ({me})"
                            ),
                            format!(
                                "check that {replica} runs and that its [local] advertise is \
                                 reachable from {me}; this replica's log names the address"
                            ),
                        )
                    }
                };
            }
            Err(_) => {
                let within = humantime::format_duration(wait);
                return match &upstream {
                    Upstream::Local(_) => error(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("the exposed process of `{env}` did not answer within {within}"),
                        format!(
                            "`slipway logs --env {env}` shows its output; [server] preview_timeout sets the limit"
                        ),
                    ),
                    Upstream::Replica { replica, .. } => error(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "environment `{env}` runs on the node of replica {replica}, which \
                             did not answer within {within}"
                        ),
                        format!(
                            "`slipway logs --env {env}` on {replica} shows its output; [server] \
                             preview_timeout sets the limit"
                        ),
                    ),
                };
            }
        }
    }
    error(
        StatusCode::BAD_GATEWAY,
        format!("the exposed process of `{env}` is not reachable"),
        format!("`slipway status --env {env}`"),
    )
}

/// Copies both ways between an upgraded client connection and the application's, until
/// either side closes.
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    _permit: OwnedSemaphorePermit,
) {
    let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else {
        return;
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> EnvName {
        EnvName::parse(name).expect("the test's environment names are DNS labels")
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("a name"),
                HeaderValue::from_str(value).expect("a value"),
            );
        }
        map
    }

    fn values(map: &HeaderMap, name: &str) -> Vec<String> {
        map.get_all(name)
            .iter()
            .map(|v| v.to_str().expect("text").to_string())
            .collect()
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut map = headers(&[
            ("connection", "close, X-Secret-Hop"),
            ("connection", "x-other"),
            ("x-secret-hop", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut map);
        let left: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, vec!["x-end-to-end"], "only end-to-end headers remain");
    }

    #[test]
    fn slipway_credentials_are_removed_and_the_applications_kept() {
        let mut map = headers(&[
            ("cookie", "app=1; slipway_session=abc; theme=dark"),
            ("cookie", "slipway_session=def"),
            ("authorization", "Bearer slw_secret"),
            ("x-slipway-csrf", "c"),
        ]);
        strip_slipway_credentials(&mut map);
        assert_eq!(values(&map, "cookie"), vec!["app=1; theme=dark"]);
        assert!(
            map.get("authorization").is_none(),
            "a Slipway token is removed"
        );
        assert!(map.get("x-slipway-csrf").is_none());

        let mut own = headers(&[
            ("authorization", "Bearer eyJhbGciOi"),
            ("cookie", "slipway_session_other=1"),
        ]);
        strip_slipway_credentials(&mut own);
        assert_eq!(
            values(&own, "authorization"),
            vec!["Bearer eyJhbGciOi"],
            "the application's own credentials pass"
        );
        assert_eq!(
            values(&own, "cookie"),
            vec!["slipway_session_other=1"],
            "only the exact cookie name is Slipway's"
        );
    }

    #[test]
    fn forwarding_headers_name_the_real_peer_last() {
        let mut map = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "7.7.7.7"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ]);
        let peer: SocketAddr = "127.0.0.1:5555".parse().expect("addr");
        add_forwarded(&mut map, Some(peer), "dev.shop.localhost:7300");
        assert_eq!(
            values(&map, "x-forwarded-for"),
            vec!["6.6.6.6, 7.7.7.7, 127.0.0.1"]
        );
        assert_eq!(
            values(&map, "forwarded"),
            vec!["for=6.6.6.6, for=127.0.0.1;proto=http;host=\"dev.shop.localhost:7300\""]
        );
        assert_eq!(values(&map, "x-forwarded-proto"), vec!["http"]);
        assert_eq!(
            values(&map, "x-forwarded-host"),
            vec!["dev.shop.localhost:7300"]
        );

        let mut v6 = HeaderMap::new();
        add_forwarded(&mut v6, Some("[::1]:1".parse().expect("addr")), "");
        assert_eq!(values(&v6, "forwarded"), vec!["for=\"[::1]\";proto=http"]);

        let mut unknown = headers(&[("x-forwarded-for", "6.6.6.6")]);
        add_forwarded(&mut unknown, None, "h");
        assert!(
            unknown.get("x-forwarded-for").is_none(),
            "without a known peer, nothing a client claims is passed on"
        );
    }

    #[test]
    fn a_response_cannot_set_slipways_session_cookie() {
        let mut map = headers(&[
            ("set-cookie", "slipway_session=planted; Domain=localhost"),
            ("set-cookie", "app=ok; Path=/"),
            // Without a name, sent back by a browser as `slipway_session=planted`.
            ("set-cookie", "=slipway_session=planted; Domain=localhost"),
            ("set-cookie", " = slipway_session=planted"),
            ("set-cookie", "slipway_session; Path=/"),
            ("set-cookie", "=app=fine"),
        ]);
        strip_slipway_set_cookie(&mut map);
        assert_eq!(
            values(&map, "set-cookie"),
            vec!["app=ok; Path=/", "=app=fine"]
        );
    }

    #[test]
    fn only_the_port_named_in_expose_is_a_target() {
        let record = |config: serde_json::Value, status| slipway_state::ResourceRecord {
            environment: env("dev"),
            name: "web".into(),
            type_name: "process".into(),
            status,
            config,
            resolved_hash: None,
            outputs: serde_json::json!({
                "url": "http://127.0.0.1:20001",
                "ports": {"admin": 20001, "http": 20002}
            }),
            secret_outputs: Vec::new(),
            live: serde_json::json!({}),
            depends_on: Vec::new(),
            error: None,
            updated_at: 0,
            sensitive: false,
        };
        let exposed = record(serde_json::json!({"expose": "http"}), ResourceStatus::Ready);
        assert_eq!(
            exposed_address(std::slice::from_ref(&exposed)).as_deref(),
            Some("http://127.0.0.1:20002"),
            "the exposed port, not the first one nor the `url` output"
        );
        let unexposed = record(
            serde_json::json!({"ports": ["admin", "http"]}),
            ResourceStatus::Ready,
        );
        assert_eq!(
            exposed_address(&[unexposed]),
            None,
            "no `expose`, no preview target"
        );
        let deleting = record(
            serde_json::json!({"expose": "http"}),
            ResourceStatus::Deleting,
        );
        assert_eq!(exposed_address(&[deleting]), None);
    }

    #[test]
    fn a_request_is_forwarded_only_to_the_live_holders_advertised_router_and_only_once() {
        let me = slipway_controller::ReplicaOptions {
            name: "r1".into(),
            lease: Duration::from_secs(1),
            advertise: Some("10.0.0.11:7300".into()),
        };
        let replica =
            |name: &str, advertise: Option<&str>, silent_ms| slipway_state::ReplicaRecord {
                name: name.into(),
                advertise: advertise.map(str::to_owned),
                started_at: 0,
                heartbeat_at: 0,
                silent_ms,
            };
        let replicas = [
            replica("r1", Some("10.0.0.11:7300"), 0),
            replica("r2", Some("10.0.0.12:7300"), 1_500),
            replica("r3", None, 0),
            replica("r4", Some("10.0.0.14:7300"), 2_001),
            replica("r5", Some("evil.example:80/x"), 0),
            replica("r6", Some("user@10.0.0.16:7300"), 0),
            replica("r7", Some("10.0.0.17"), 0),
        ];
        let place =
            |holder: Option<&str>, forwarded| placement(Some(&me), holder, &replicas, forwarded);
        assert_eq!(place(Some("r1"), false), Placement::Here, "this node's");
        assert_eq!(
            place(Some("r1"), true),
            Placement::Here,
            "forwarded to this node: served"
        );
        assert_eq!(place(None, false), Placement::Here, "no holder yet");
        assert_eq!(
            place(Some("r1/cli-77"), true),
            Placement::Here,
            "a one-shot command on this node holds it"
        );
        assert_eq!(
            place(Some("r2/cli-77"), false),
            place(Some("r2"), false),
            "a one-shot command on r2's node holds it"
        );
        assert_eq!(
            placement(None, Some("r2"), &replicas, false),
            Placement::Here,
            "not one of several replicas"
        );
        assert_eq!(
            place(Some("r2"), false),
            Placement::Forward {
                replica: "r2".into(),
                base: "http://10.0.0.12:7300".into()
            },
            "a live holder within two leases"
        );
        let unreachable = |replica: &str, why| Placement::Unreachable {
            replica: replica.into(),
            why,
        };
        assert_eq!(
            place(Some("r2"), true),
            unreachable("r2", Unreachable::AlreadyForwarded),
            "never forwarded twice"
        );
        assert_eq!(
            place(Some("r3"), false),
            unreachable("r3", Unreachable::NotAdvertised)
        );
        assert_eq!(
            place(Some("r4"), false),
            unreachable("r4", Unreachable::NotAlive),
            "silent for more than two leases"
        );
        assert_eq!(
            place(Some("r9"), false),
            unreachable("r9", Unreachable::NotAlive),
            "never heard of"
        );
        for bad in ["r5", "r6", "r7"] {
            assert_eq!(
                place(Some(bad), false),
                unreachable(bad, Unreachable::BadAddress),
                "only a bare HOST:PORT"
            );
        }
    }

    #[test]
    fn preview_hosts_are_recognised_and_others_are_not() {
        assert_eq!(
            parse_host("pr-42.shop.localhost:7300"),
            Some((EnvName::pull_request(42), "shop"))
        );
        assert_eq!(
            parse_host("dev.shop.localhost"),
            Some((EnvName::parse("dev").expect("a name"), "shop"))
        );
        assert_eq!(parse_host("127.0.0.1:7300"), None);
        assert_eq!(parse_host("localhost:7300"), None);
        assert_eq!(parse_host("a.b.c.localhost"), None, "only <env>.<stack>");
        assert_eq!(parse_host("../x.shop.localhost"), None);
        assert_eq!(parse_host("Dev.shop.localhost"), None);
    }
}
