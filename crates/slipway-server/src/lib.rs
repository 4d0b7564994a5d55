//! Slipway's HTTP API: the controller's environments, deployments and events as JSON under
//! `/api/v1`, behind bearer tokens with roles, plus `/healthz`, `/metrics` (Prometheus) and an
//! OpenAPI 3.1 document at `/api/v1/openapi.json`.
//!
//! Start with [`serve`]: give it a bound listener, a [`Controller`] and a future that completes
//! when the server should stop. [`router`] is the same API as an [`axum::Router`] for a caller
//! that serves more than the API on one listener (webhooks, the web UI); [`serve_app`] serves
//! such a composition and still ends open event streams on shutdown.
//!
//! With a router process in front (`front.rs`), the public listener is the router's:
//! [`front::serve_router`] serves preview hosts and passes the rest to
//! [`front::serve_behind_router`] on a unix socket, so that previews outlive `serve`.
//!
//! The web UI is served at `/` from files embedded in the binary (`ui.rs`, `ui/`); it uses
//! this API, logged in with a session cookie instead of a bearer token (`session.rs`).
//!
//! The whole API is one route table (`routes.rs`): each entry names its method, path, the
//! role it needs, its request and response schemas and its handler. The router and the OpenAPI
//! document are both built from that table, so the document cannot list a route the server does
//! not serve, or miss one it does. The schemas are derived (`schemars`) from the types the
//! handlers read and answer, and the API tests validate real responses against them.
//!
//! # Guarantees
//! - Every route but `/healthz`, `/metrics` and the OpenAPI document needs a token; a missing,
//!   unknown or revoked one gets `401`, a role too weak `403`, before the handler runs. (The
//!   web UI's page and files need none: they hold no data.)
//! - A browser session's cookie is accepted for a `POST` or `DELETE` only with the session's
//!   CSRF token in `X-Slipway-CSRF`; otherwise `403`.
//! - Every mutating call, and every refused call, is written to the audit log (`audit` table)
//!   with the token's name, the action, its target and the outcome.
//! - Every error is JSON `{"error", "hint"?}`; an internal error is a `500` with an `id` whose
//!   details go to stderr, never to the client. A panicking handler is a `500` too.
//! - Request bodies over [`ServerOptions::body_limit`] (1 MiB) are refused with `413` without
//!   being read.
//! - Event streams end when the server stops, so a graceful shutdown does not wait on them.
//! - With several replicas on one PostgreSQL state, a change to an environment that reaches a
//!   replica which does not work on it is forwarded once to the one that does, which
//!   authenticates it again (`forward.rs`).
//!
//! # Assumptions
//! Tokens are made with [`slipway_state::new_token`] and stored by their
//! [`slipway_state::hash_token`] (the CLI's `slipway token create` does this on the home).
#![deny(missing_docs)]

mod auth;
mod body;
mod config;
mod conn;
mod deployments;
mod environments;
mod error;
mod events;
mod forward;
pub mod front;
mod logs;
mod openapi;
mod ops;
pub mod preview;
mod preview_access;
mod pulls;
mod routes;
mod session;
mod streams;
mod ui;
mod wake;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use slipway_controller::Controller;
use tokio::sync::watch;

pub use config::ServerConfig;

/// How the API behaves. Every field has a default.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The largest request body accepted; larger ones get `413`.
    pub body_limit: usize,
    /// How often an open event stream looks for new events in the store.
    pub event_poll_interval: Duration,
    /// How often an idle event stream sends a comment, so that proxies keep it open.
    pub event_keep_alive: Duration,
    /// How long a client has to send a request's head, on a new connection and between the
    /// requests of a kept-alive one; past it the connection is closed.
    pub header_timeout: Duration,
    /// Most connections open at once: a new one beyond it closes the oldest idle one, or is
    /// closed itself when every open one has a request in flight.
    pub max_connections: usize,
    /// How long a request's body may take to arrive, from when it is first read; past it (and
    /// the allowance of `body_min_rate`) the client gets `408` and the connection closes.
    pub body_timeout: Duration,
    /// Bytes per second a request body must average beyond `body_timeout`: each this many
    /// bytes received give it a second more (0: none).
    pub body_min_rate: u64,
    /// How long a write to a client that does not read may make no progress before its
    /// connection is closed.
    pub write_timeout: Duration,
    /// How long the preview router waits on an application.
    pub preview: preview::PreviewTimeouts,
    /// With several replicas: how long a person's change forwarded to the replica that works
    /// on its environment may take, answer included, before the caller is told it may or may
    /// not have been made (`504`). Below a load balancer's own timeout (60 s in
    /// docs/operations.md's examples), so that the caller gets the clearer answer.
    pub forward_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            body_limit: 1024 * 1024,
            event_poll_interval: Duration::from_millis(300),
            event_keep_alive: Duration::from_secs(15),
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            body_timeout: Duration::from_secs(30),
            body_min_rate: 32 * 1024,
            write_timeout: Duration::from_secs(30),
            preview: preview::PreviewTimeouts::default(),
            forward_timeout: Duration::from_secs(50),
        }
    }
}

/// Tells long-lived responses (event streams) that the server is stopping, so that they end
/// and a graceful shutdown can finish.
#[derive(Debug, Clone)]
pub struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    /// A signal that never fires: streams end only when their client leaves.
    pub fn never() -> StopSignal {
        // The sender is dropped at once; `stopped` treats a dropped sender that never said
        // `true` as "never".
        StopSignal(watch::channel(false).1)
    }

    /// Whether the server is stopping.
    pub fn is_stopping(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes when the server starts stopping (never, for [`StopSignal::never`]).
    pub async fn stopped(&mut self) {
        loop {
            if *self.0.borrow_and_update() {
                return;
            }
            if self.0.changed().await.is_err() {
                // No one can fire it any more.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub controller: Controller,
    pub options: Arc<ServerOptions>,
    pub stop: StopSignal,
    pub openapi: Arc<serde_json::Value>,
    /// The client that forwards a change to the replica working on its environment.
    pub forwarder: forward::Forwarder,
    /// The event and log streams each token holds.
    pub streams: Arc<streams::Streams>,
}

impl AppState {
    /// Runs `f` on a blocking thread: the store and the engine do file and database IO.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Controller) -> Result<T, error::ApiError> + Send + 'static,
    ) -> Result<T, error::ApiError> {
        let controller = self.controller.clone();
        tokio::task::spawn_blocking(move || f(&controller))
            .await
            .map_err(|e| error::ApiError::internal(format!("a blocking task failed: {e}")))?
    }
}

/// A time of the store (unix milliseconds) as the API shows times: RFC 3339, UTC.
pub(crate) fn rfc3339(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

/// The API with default [`ServerOptions`], whose event streams end only when their clients
/// leave (use [`router_with`] under [`serve_app`] to end them on shutdown).
pub fn router(controller: Controller) -> Router {
    router_with(controller, ServerOptions::default(), StopSignal::never())
}

/// The API with `options`; open event streams end when `stop` fires.
pub fn router_with(controller: Controller, options: ServerOptions, stop: StopSignal) -> Router {
    routes::build(controller, options, stop)
}

/// Serves the API on `listener` until `shutdown` completes, then finishes the requests in
/// flight (event streams end at once) and returns.
///
/// # Errors
/// None today: failures to accept a connection are retried.
pub async fn serve(
    listener: tokio::net::TcpListener,
    controller: Controller,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, controller, ServerOptions::default(), shutdown).await
}

/// [`serve`] with `options`: the API, the web UI, webhooks and the preview router on one
/// listener, with the connection limits of `options`.
///
/// # Errors
/// None today: failures to accept a connection are retried.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    controller: Controller,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        controller.set_preview_port(addr.port());
    }
    let previews = preview::Previews::with_timeouts(controller.clone(), options.preview);
    let limits = limits(&options);
    let (fire, signal) = watch::channel(false);
    // Preview hosts (`<env>.<stack>.localhost`) are proxied before the API sees them.
    let router = router_with(controller, options, StopSignal(signal)).layer(
        axum::middleware::from_fn_with_state(previews, preview::route),
    );
    conn::serve(listener, router, limits, async move {
        shutdown.await;
        let _ = fire.send(true);
    })
    .await;
    Ok(())
}

/// The accept loop's bounds, as `options` says.
pub(crate) fn limits(options: &ServerOptions) -> conn::Limits {
    conn::Limits {
        header_timeout: options.header_timeout,
        max_connections: options.max_connections,
        body_timeout: options.body_timeout,
        body_min_rate: options.body_min_rate,
        write_timeout: options.write_timeout,
    }
}

/// Serves the router `app` builds on `listener` until `shutdown` completes. `app` receives the
/// [`StopSignal`] that fires when `shutdown` completes: pass it to [`router_with`] (and to any
/// other long-lived responses) so that graceful shutdown does not wait on open streams. The
/// connections are bounded as [`ServerOptions::default`] says (header timeout, connection cap).
///
/// # Errors
/// None today: failures to accept a connection are retried.
pub async fn serve_app(
    listener: tokio::net::TcpListener,
    app: impl FnOnce(StopSignal) -> Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let defaults = ServerOptions::default();
    let (fire, signal) = watch::channel(false);
    let router = app(StopSignal(signal));
    let limits = conn::Limits {
        header_timeout: defaults.header_timeout,
        max_connections: defaults.max_connections,
        body_timeout: defaults.body_timeout,
        body_min_rate: defaults.body_min_rate,
        write_timeout: defaults.write_timeout,
    };
    conn::serve(listener, router, limits, async move {
        shutdown.await;
        let _ = fire.send(true);
    })
    .await;
    Ok(())
}
