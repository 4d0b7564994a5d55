//! A person's change to an environment (sync, destroy, pin, unpin, rollback, extend) that
//! reaches a replica which does not work on the environment is forwarded, once, to the one
//! that does, and its answer relayed: every replica answers the whole API, so a load balancer
//! may send any request anywhere.
//!
//! # How the replica to ask is chosen
//! The request is first handled here as on any replica: authenticated and authorized by the
//! guard (`auth.rs`), then the handler asks the controller, whose one rule
//! (`requests::claim`) either takes the environment's lease and makes the change, or refuses
//! with `ControllerError::Elsewhere`, having changed nothing, naming the replica that works on
//! it. Only that refusal is forwarded ([`HeldElsewhere`] on the response), so which replica
//! acts on an environment is decided in one place, with the lease, and never guessed here
//! from a read that may be stale by the time the change runs. The request's body is kept
//! (at most [`crate::ServerOptions::body_limit`], as every body) for the second try.
//!
//! # Where it goes, and who may send it there
//! To the address the holder recorded in the `replicas` table from its `[local] advertise`, a
//! bare `HOST:PORT`, and only while it is alive: the preview router's rule and code
//! (`preview::reach`). Never an address a request names. The forwarded request carries only
//! what the holder needs to judge it as its own: method, path and query, body, `Content-Type`,
//! `Accept`, and the caller's credentials (`Authorization`, or the web UI's session cookie and
//! its CSRF header), plus [`FORWARDED_BY`] naming this replica. The holder authenticates and
//! authorizes it again, exactly as any request (tokens and sessions are in the shared state),
//! and audits it: this replica does not audit a change it relayed ([`Relayed`]), only one it
//! could not.
//!
//! # Guarantees
//! - One hop: a request that carries [`FORWARDED_BY`] is never forwarded again; it is refused
//!   (`409` naming the holder) as without forwarding. The header is a hop counter, not a
//!   credential: the guard never reads it, so a client that sends it gains nothing but that
//!   refusal.
//! - Nothing is forwarded before the caller is authenticated and allowed here: an anonymous
//!   or weak request is refused by the first replica it reaches.
//! - The hop is bounded: a connect timeout, and [`crate::ServerOptions::forward_timeout`] for
//!   the whole answer, itself at most [`ANSWER_LIMIT`] bytes.
//! - When the holder cannot be reached, the caller is told whether the change may have
//!   happened: refused connection or holder not alive, `503` with `Retry-After` (nothing was
//!   sent, nothing changed; the environment moves to a live replica once the holder's lease
//!   runs out, within about two leases); no answer in time or a broken answer, `504`/`502`
//!   saying it may have been made. A holder that advertises no usable address, a one-shot
//!   command holding the environment, or a node-bound environment whose replica is not
//!   alive, keep their `409` naming it.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::AppState;
use crate::error::{ApiError, HeldElsewhere};
use crate::preview::{FORWARDED_BY, Unreachable, node_of, reach};

/// The largest answer relayed from the holder (an environment's JSON is a few kilobytes).
pub(crate) const ANSWER_LIMIT: usize = 4 * 1024 * 1024;

/// How long the holder has to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The request headers the holder needs to judge a forwarded request as its own.
const PASSED: &[&str] = &[
    "authorization",
    "cookie",
    crate::session::CSRF_HEADER,
    "content-type",
    "accept",
];

/// The answer headers relayed back.
const RELAYED: &[&str] = &["content-type", "location", "retry-after"];

/// Marks a response that is the holder's answer, relayed: the holder audited the call, so
/// this replica's guard does not audit it again.
#[derive(Debug, Clone)]
pub(crate) struct Relayed;

/// The HTTP client of the hops: one per server, its connections pooled.
#[derive(Clone)]
pub(crate) struct Forwarder {
    client: Client<HttpConnector, Body>,
}

impl Forwarder {
    pub(crate) fn new() -> Forwarder {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Forwarder {
            client: Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }
}

/// What of the request is sent on, taken before the handler consumed it.
struct Hop {
    method: axum::http::Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    /// It came from another replica already (or says so).
    forwarded: bool,
}

/// The route layer of the routes that change an environment, inside the guard: runs the
/// handler, and sends a request it refused as another replica's on to that replica.
pub(crate) async fn layer(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let Some(me) = app.controller.replica().cloned() else {
        // One controller: every environment is its own.
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let bytes = match crate::body::read_body(Request::from_parts(parts.clone(), body), &app).await {
        Ok(bytes) => bytes,
        Err(e) => return e.into_response(),
    };
    let mut headers = HeaderMap::new();
    for name in PASSED {
        for value in parts.headers.get_all(*name) {
            headers.append(HeaderName::from_static(name), value.clone());
        }
    }
    let hop = Hop {
        method: parts.method.clone(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers,
        body: bytes.clone(),
        forwarded: parts.headers.contains_key(FORWARDED_BY),
    };
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let Some(held) = response.extensions().get::<HeldElsewhere>().cloned() else {
        return response;
    };
    if node_of(&held.replica) != held.replica {
        // A one-shot command (`slipway apply` beside the replicas) holds it: it has no
        // listener, and it gives the lease back when it ends.
        return response;
    }
    let replicas = {
        let controller = app.controller.clone();
        tokio::task::spawn_blocking(move || controller.engine().store().replicas()).await
    };
    let replicas = match replicas {
        Ok(Ok(replicas)) => replicas,
        // The refusal stands: nothing was changed, and it names the replica to ask.
        _ => return response,
    };
    match reach(&me, &held.replica, &replicas, hop.forwarded) {
        Ok(base) => relay(&app, &me, &held, &base, hop).await,
        Err(Unreachable::NotAlive) => not_answering(
            &held,
            &me,
            format!(
                "replica {} has not been heard from within two leases",
                held.replica
            ),
        ),
        // No usable address, or forwarded once already: the `409` naming the holder.
        Err(
            Unreachable::NotAdvertised | Unreachable::BadAddress | Unreachable::AlreadyForwarded,
        ) => response,
    }
}

/// How long a caller should wait before asking again when the holder does not answer: two
/// leases, by when another replica has taken a floating environment over.
fn retry_after(me: &slipway_controller::ReplicaOptions) -> u64 {
    (me.lease * 2).as_secs_f64().ceil().max(1.0) as u64
}

/// `503` with `Retry-After`: the holder cannot be asked, and nothing was sent to it.
fn not_answering(
    held: &HeldElsewhere,
    me: &slipway_controller::ReplicaOptions,
    why: String,
) -> Response {
    let environment = &held.environment;
    let replica = &held.replica;
    let seconds = retry_after(me);
    let mut response = ApiError::client(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "environment `{environment}` is worked on by replica {replica}, and this replica \
             ({}) cannot forward the change to it: {why}; nothing was changed",
            me.name
        ),
    )
    .hint(format!(
        "retry in {seconds} s: if {replica} is gone, another replica takes `{environment}` over \
         once its lease runs out (one with processes or files waits for {replica} to start \
         again); GET /api/v1/replicas lists the replicas"
    ))
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Sends `hop` to the holder at `base` and relays its answer.
async fn relay(
    app: &AppState,
    me: &slipway_controller::ReplicaOptions,
    held: &HeldElsewhere,
    base: &str,
    hop: Hop,
) -> Response {
    let environment = &held.environment;
    let replica = &held.replica;
    let Ok(uri) = format!("{base}{}", hop.path).parse::<Uri>() else {
        return ApiError::internal(format!("cannot forward to {base}{}", hop.path)).into_response();
    };
    let mut request = axum::http::Request::new(Body::from(hop.body));
    *request.method_mut() = hop.method;
    *request.uri_mut() = uri;
    *request.headers_mut() = hop.headers;
    let name = HeaderValue::from_str(&me.name).unwrap_or(HeaderValue::from_static("replica"));
    request.headers_mut().insert(FORWARDED_BY, name);
    let within = app.options.forward_timeout;
    let exchange = async {
        let response = app.forwarder.client.request(request).await?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, ANSWER_LIMIT)
            .collect()
            .await
            .map_err(Broken::Answer)?
            .to_bytes();
        Ok::<_, Broken>((parts, body))
    };
    match tokio::time::timeout(within, exchange).await {
        Ok(Ok((parts, body))) => {
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = parts.status;
            for name in RELAYED {
                if let Some(value) = parts.headers.get(*name) {
                    response
                        .headers_mut()
                        .insert(HeaderName::from_static(name), value.clone());
                }
            }
            response.extensions_mut().insert(Relayed);
            response
        }
        Ok(Err(Broken::Send(e))) if e.is_connect() => {
            // Its address goes to this replica's log, not to the client.
            eprintln!(
                "slipway-server: forwarding a change of `{environment}` to replica {replica} at \
                 {base} failed: {e}"
            );
            not_answering(held, me, format!("{replica} did not accept the connection"))
        }
        Ok(Err(e)) => {
            eprintln!(
                "slipway-server: forwarding a change of `{environment}` to replica {replica} at \
                 {base} failed: {e}"
            );
            ApiError::client(
                StatusCode::BAD_GATEWAY,
                format!(
                    "environment `{environment}` is worked on by replica {replica}, and its \
                     answer to this replica ({}) broke off: the change may or may not have been \
                     made",
                    me.name
                ),
            )
            .hint(format!(
                "GET /api/v1/environments/{environment} shows whether it was, before you try \
                 again"
            ))
            .into_response()
        }
        Err(_) => ApiError::client(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "environment `{environment}` is worked on by replica {replica}, which did not \
                 answer this replica ({}) within {}: the change may or may not have been made",
                me.name,
                humantime::format_duration(within)
            ),
        )
        .hint(format!(
            "GET /api/v1/environments/{environment} shows whether it was; a long change (a \
             destroy) can be sent to {replica} itself"
        ))
        .into_response(),
    }
}

/// Why a hop failed after it began.
#[derive(Debug, thiserror::Error)]
enum Broken {
    #[error("{0}")]
    Send(#[from] hyper_util::client::legacy::Error),
    #[error("reading the answer: {0}")]
    Answer(Box<dyn std::error::Error + Send + Sync>),
}
