//! The router in front of `slipway serve`: a process of its own that owns the public listener,
//! serves preview hosts itself, and passes every other request to `serve` over a unix socket,
//! so that preview URLs keep answering while `serve` restarts, is upgraded, or is killed.
//!
//! - [`serve_router`] (the router's side) keeps every protection of the one-process server
//!   (conn.rs: header and body deadlines, the connection cap, the write timeout) and
//!   [`crate::preview::route`] over a controller opened for routing only.
//! - A request that is not a preview's goes to `serve` on its unix socket, on a connection of
//!   its own. While no `serve` listens there (killed, restarting), the request waits for one
//!   for [`FrontOptions::hold`], then gets `503` with `Retry-After`. A request whose
//!   connection to `serve` failed before any byte of an answer is sent again when that is
//!   safe: always when the connection could not be made (nothing was sent), otherwise only
//!   for a `GET` or `HEAD` without a body. Upgrades (WebSockets) are spliced through; event
//!   streams flow as any streamed body does.
//! - The client's address travels in [`CLIENT_HEADER`]; the router removes whatever a client
//!   sent under that name, and `serve` reads it only from its unix socket
//!   ([`serve_behind_router`]), which only the engine's user can reach (its directory is
//!   mode 0700).
//!
//! # Compatibility
//! The router and `serve` speak HTTP/1.1 and share one header: a router started by an older
//! binary keeps working with a newer `serve` as long as both stay so. A newer router's
//! features (preview routing itself) arrive when the router is restarted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use slipway_controller::Controller;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::preview::{self, strip_hop_by_hop, upgrade_protocol};
use crate::{ServerOptions, StopSignal};

/// The header that carries the client's address from the router to `serve`.
pub const CLIENT_HEADER: &str = "x-slipway-client";

/// How the router passes requests on to `serve`.
#[derive(Debug, Clone)]
pub struct FrontOptions {
    /// The unix socket `serve` listens on.
    pub upstream: PathBuf,
    /// How long a request waits for a `serve` to answer on it before `503`.
    pub hold: Duration,
}

#[derive(Clone)]
struct Upstream(Arc<FrontOptions>, usize);

/// Serves the public `listener`: preview hosts through [`preview::route`] over `controller`
/// (opened for routing only), everything else passed to `serve` as [`FrontOptions`] says.
///
/// # Errors
/// None today: failures to accept a connection are retried.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    controller: Controller,
    options: ServerOptions,
    front: FrontOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        controller.set_preview_port(addr.port());
    }
    let previews = preview::Previews::with_timeouts(controller, options.preview);
    let app = Router::new()
        .fallback(forward)
        .with_state(Upstream(Arc::new(front), options.body_limit))
        .layer(axum::middleware::from_fn_with_state(
            previews,
            preview::route,
        ));
    crate::conn::serve(listener, app, crate::limits(&options), shutdown).await;
    Ok(())
}

/// The answer when no `serve` took a request within the hold.
fn unavailable(hold: Duration) -> Response {
    let body = serde_json::json!({
        "error": format!(
            "the controller (`slipway serve`) has not answered for {}",
            humantime::format_duration(hold)
        ),
        "hint": "it is restarting or stopped; preview URLs keep answering meanwhile; start \
                 `slipway serve` on this home",
    });
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

async fn forward(
    State(Upstream(front, body_limit)): State<Upstream>,
    mut request: Request,
) -> Response {
    // `serve` refuses a declared length over the limit without reading the body, then
    // closes the connection: the router, still sending the body, would see only a broken
    // connection. So the router refuses it first, as `serve` would (but `serve` does not
    // audit that refusal then).
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > body_limit as u64) {
        return crate::body::too_large(body_limit).into_response();
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let upgrade = upgrade_protocol(request.headers());
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // Only the router says who the client is.
    parts.headers.remove(CLIENT_HEADER);
    if let Some(peer) = peer.and_then(|p| HeaderValue::from_str(&p.to_string()).ok()) {
        parts.headers.insert(CLIENT_HEADER, peer);
    }
    if let Some(protocol) = &upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol.clone());
    }
    parts.extensions = axum::http::Extensions::new();
    let bodiless = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .is_none_or(|l| l == "0")
        && !parts.headers.contains_key(header::TRANSFER_ENCODING);
    let replayable = upgrade.is_none()
        && bodiless
        && (parts.method == axum::http::Method::GET || parts.method == axum::http::Method::HEAD);
    let deadline = tokio::time::Instant::now() + front.hold;
    // A body of no declared length is cut at the limit (and answered `413` below).
    let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut body = Some(Body::new(Capped {
        inner: body,
        left: body_limit as u64,
        over: over.clone(),
    }));
    let mut client_upgrade = client_upgrade;
    loop {
        let Some(stream) = connect(&front.upstream, deadline).await else {
            return unavailable(front.hold);
        };
        let attempt = async {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = connection.with_upgrades().await;
            });
            let outgoing = Request::from_parts(
                parts.clone(),
                if replayable {
                    Body::empty()
                } else {
                    body.take().unwrap_or_default()
                },
            );
            sender.send_request(outgoing).await
        };
        match attempt.await {
            Ok(mut response) => {
                let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                let upstream_upgrade = switching.then(|| hyper::upgrade::on(&mut response));
                let (mut rparts, rbody) = response.into_parts();
                let answered = upgrade_protocol(&rparts.headers);
                strip_hop_by_hop(&mut rparts.headers);
                if let (Some(client), Some(upstream), Some(protocol)) =
                    (client_upgrade.take(), upstream_upgrade, answered)
                {
                    rparts
                        .headers
                        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    rparts.headers.insert(header::UPGRADE, protocol);
                    tokio::spawn(splice(client, upstream));
                    return Response::from_parts(rparts, Body::empty());
                }
                return Response::from_parts(rparts, Body::new(rbody));
            }
            Err(e) if (replayable || body.is_some()) && tokio::time::Instant::now() < deadline => {
                // `serve` went away with the request unanswered (a restart closing the
                // connection it had just accepted): a GET, or a request whose body was not
                // sent yet, is sent again.
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) if over.load(std::sync::atomic::Ordering::Acquire) => {
                return crate::body::too_large(body_limit).into_response();
            }
            Err(e) => {
                eprintln!("slipway router: the controller dropped a request unanswered: {e}");
                let body = serde_json::json!({
                    "error": "the controller (`slipway serve`) stopped before answering",
                    "hint": "it is restarting; the request may or may not have been carried \
                             out: look before trying again",
                });
                return (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response();
            }
        }
    }
}

/// A request body that fails once it passes `left` bytes, saying so in `over`.
struct Capped {
    inner: Body,
    left: u64,
    over: Arc<std::sync::atomic::AtomicBool>,
}

impl hyper::body::Body for Capped {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            match self.left.checked_sub(data.len() as u64) {
                Some(left) => self.left = left,
                None => {
                    self.over.store(true, std::sync::atomic::Ordering::Release);
                    return std::task::Poll::Ready(Some(Err(axum::Error::new(
                        "the request body is over the limit",
                    ))));
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection to `serve`'s socket, tried until `deadline`.
async fn connect(
    socket: &std::path::Path,
    deadline: tokio::time::Instant,
) -> Option<tokio::net::UnixStream> {
    loop {
        match tokio::net::UnixStream::connect(socket).await {
            Ok(stream) => return Some(stream),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(_) => return None,
        }
    }
}

/// Copies both ways between an upgraded client connection and `serve`'s.
async fn splice(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else {
        return;
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// Serves the API, UI and webhooks (no preview hosts: the router serves those) on the unix
/// `listener` a router passes requests to, until `shutdown` completes; then lets requests in
/// flight finish (event streams end at once) for a while.
///
/// Each request's client address is read from [`CLIENT_HEADER`], which only the router can
/// have set: the socket's directory admits the engine's user alone.
///
/// # Errors
/// None today: failures to accept a connection are retried.
pub async fn serve_behind_router(
    listener: tokio::net::UnixListener,
    controller: Controller,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (fire, signal) = watch::channel(false);
    let header_timeout = options.header_timeout;
    let app = crate::router_with(controller, options, StopSignal(signal.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let mut stopping = signal.clone();
        tasks.spawn(async move {
            let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
                let peer = request
                    .headers()
                    .get(CLIENT_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<SocketAddr>().ok())
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
                request.extensions_mut().insert(ConnectInfo(peer));
                let request = request.map(Body::new);
                app.clone().oneshot(request)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stopping.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    // No new connection is taken: the router holds new requests until the next `serve`.
    drop(listener);
    let _ = fire.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What `serve` would be: answers who the router says the client is, and echoes the
    /// bytes of an `Upgrade: echo`.
    fn upstream_app() -> Router {
        Router::new()
            .route(
                "/who",
                axum::routing::get(|headers: axum::http::HeaderMap| async move {
                    headers
                        .get_all(CLIENT_HEADER)
                        .iter()
                        .map(|v| v.to_str().unwrap_or("?").to_owned())
                        .collect::<Vec<_>>()
                        .join(",")
                }),
            )
            .route(
                "/echo",
                axum::routing::get(|mut request: Request| async move {
                    let upgraded = hyper::upgrade::on(&mut request);
                    tokio::spawn(async move {
                        if let Ok(upgraded) = upgraded.await {
                            let mut io = TokioIo::new(upgraded);
                            let mut buf = [0u8; 64];
                            while let Ok(n) = io.read(&mut buf).await {
                                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    });
                    Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header(header::CONNECTION, "upgrade")
                        .header(header::UPGRADE, "echo")
                        .body(Body::empty())
                        .expect("a 101")
                }),
            )
    }

    /// Serves `app` on a unix socket at `path` (as `serve` does behind the router).
    fn upstream(path: &std::path::Path) -> tokio::task::JoinHandle<()> {
        let listener = tokio::net::UnixListener::bind(path).expect("bind the socket");
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let app = upstream_app();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |r: hyper::Request<_>| {
                        app.clone().oneshot(r.map(Body::new))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        })
    }

    /// The router's forwarding half on 127.0.0.1, in front of `socket`.
    async fn front(socket: PathBuf, hold: Duration) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().fallback(forward).with_state(Upstream(
            Arc::new(FrontOptions {
                upstream: socket,
                hold,
            }),
            1024 * 1024,
        ));
        tokio::spawn(crate::conn::serve(
            listener,
            app,
            crate::limits(&ServerOptions::default()),
            std::future::pending(),
        ));
        addr
    }

    async fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        client.write_all(request.as_bytes()).await.expect("send");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), client.read_to_end(&mut answer))
            .await
            .expect("an answer within the test's deadline")
            .expect("read");
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn a_client_sent_client_address_is_replaced_by_the_real_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("serve.sock");
        let _up = upstream(&socket);
        let addr = front(socket, Duration::from_secs(5)).await;
        let answer = exchange(
            addr,
            "GET /who HTTP/1.1\r\nHost: x\r\nX-Slipway-Client: 203.0.113.9:1\r\n\
             Connection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        assert!(
            body.starts_with("127.0.0.1:") && !body.contains("203.0.113.9"),
            "serve is told the connection's real address, never the client's claim: {body}"
        );
    }

    #[tokio::test]
    async fn a_request_waits_for_a_serve_that_is_not_there_yet_and_is_then_answered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("serve.sock");
        let addr = front(socket.clone(), Duration::from_secs(15)).await;
        let asked = tokio::spawn(exchange(
            addr,
            "GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ));
        // A stale socket file, as a killed `serve` leaves: refused, so held too.
        drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !asked.is_finished() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!asked.is_finished(), "the request is held, not refused");
        std::fs::remove_file(&socket).expect("the stale socket goes");
        let _up = upstream(&socket);
        let answer = asked.await.expect("the request");
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "once serve listens the held request is answered: {answer}"
        );

        // With no serve for the whole hold: 503 with Retry-After.
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = front(dir.path().join("none.sock"), Duration::from_millis(300)).await;
        let answer = exchange(
            addr,
            "GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("retry-after: 5"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn an_upgrade_is_spliced_through_to_serve() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("serve.sock");
        let _up = upstream(&socket);
        let addr = front(socket, Duration::from_secs(5)).await;
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(
                b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
            )
            .await
            .expect("send");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut byte))
                .await
                .expect("the 101 arrives")
                .expect("read");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        client.write_all(b"ping").await.expect("write");
        let mut echoed = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut echoed))
            .await
            .expect("the echo arrives")
            .expect("read");
        assert_eq!(&echoed, b"ping", "bytes go both ways through the router");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_413_by_the_router_as_serve_would() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("serve.sock");
        let _up = upstream(&socket);
        let addr = front(socket, Duration::from_secs(5)).await;
        let answer = exchange(
            addr,
            "POST /who HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\
             Connection: close\r\n\r\n",
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "a declared 10 MB body is refused unread: {answer}"
        );
    }
}
