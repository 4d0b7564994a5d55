//! The server's own accept loop, for what `axum::serve` does not bound: how long a client may
//! take to send a request's head, and how many connections are open at once.
//!
//! - A connection has [`Limits::header_timeout`] to send each request's head: the first one
//!   after it connects, and the next one after a response on a kept-alive connection (so it
//!   is also the idle keep-alive timeout). Past it the connection is closed. A connection
//!   that connects and sends nothing, or half a head, is gone after that long.
//! - At most [`Limits::max_connections`] are open. A new connection beyond that closes the
//!   oldest idle one (no request in flight: one still to send its first head, or a kept-alive
//!   one between requests) to make room; when every open connection has a request in flight,
//!   the new one is closed at once. So idle or half-open connections, however many, never
//!   keep a client with a request to make (a health check, a webhook) out.
//! - A request's body must keep coming: a body that stalls for [`Limits::header_timeout`]
//!   fails (the handler sees an error, the connection closes). So a client cannot hold a
//!   connection busy, where eviction cannot reach it, by sending its body a byte at a time.
//! - Each request carries its peer's address ([`axum::extract::ConnectInfo`]).
//! - On shutdown, idle connections close at once and busy ones finish their request, within
//!   a grace period (then they are closed).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

/// What the accept loop bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// How long a client has to send a request's head (and, kept alive, the next one).
    pub header_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

/// One open connection, as the registry sees it.
#[derive(Default)]
struct Tracked {
    /// Requests being handled or whose response is still being sent.
    in_flight: AtomicUsize,
    /// Fired to close the connection at once.
    close: Notify,
}

/// The open connections, oldest first.
#[derive(Default)]
struct Registry {
    next_id: u64,
    open: BTreeMap<u64, Arc<Tracked>>,
}

impl Registry {
    /// Closes the oldest connection with no request in flight; false when there is none.
    fn evict_idle(&mut self) -> bool {
        let idle = self
            .open
            .iter()
            .find(|(_, t)| t.in_flight.load(Ordering::Acquire) == 0)
            .map(|(id, _)| *id);
        match idle.and_then(|id| self.open.remove(&id)) {
            Some(tracked) => {
                // `notify_one` keeps the permit if the task is not waiting yet.
                tracked.close.notify_one();
                true
            }
            None => false,
        }
    }
}

fn lock(registry: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    // Every operation on the map is a single insert, remove or scan: a panic cannot leave it
    // inconsistent.
    registry
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Counts a request as in flight until it is dropped (with its response's body).
struct InFlight(Arc<Tracked>);

impl InFlight {
    fn new(tracked: &Arc<Tracked>) -> InFlight {
        tracked.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(tracked.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request body that fails when no part of it arrives for `timeout` while it is read.
struct Unstalled {
    inner: Incoming,
    timeout: Duration,
    /// Started when the body is first read: a handler may read it late.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Unstalled {
    fn new(inner: Incoming, timeout: Duration) -> Unstalled {
        Unstalled {
            inner,
            timeout,
            deadline: None,
        }
    }
}

impl hyper::body::Body for Unstalled {
    type Data = axum::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.deadline = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                        "the request body stalled for {}",
                        humantime::format_duration(timeout)
                    )
                    .into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets busy connections
/// finish and returns.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let registry = Arc::new(Mutex::new(Registry::default()));
    let (stop, stopping) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            // Finished connections are reaped as they end, so the set stays small.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors (or a connection reset before it was
                    // accepted): make room, and do not spin on the error.
                    // ENFILE (23) and EMFILE (24) on Linux.
                    if matches!(e.raw_os_error(), Some(23 | 24)) {
                        lock(&registry).evict_idle();
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let (id, tracked) = {
            let mut registry = lock(&registry);
            if registry.open.len() >= limits.max_connections.max(1) && !registry.evict_idle() {
                // Every open connection is busy with a request: this one is told so and
                // closed, rather than left waiting (a fresh socket's send buffer is empty, so
                // the answer is written at once or not at all).
                let _ = stream.try_write(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                drop(stream);
                continue;
            }
            let id = registry.next_id;
            registry.next_id += 1;
            let tracked = Arc::new(Tracked::default());
            registry.open.insert(id, tracked.clone());
            (id, tracked)
        };
        let _ = stream.set_nodelay(true);
        let registry = registry.clone();
        let router = router.clone();
        let stopping = stopping.clone();
        tasks.spawn(async move {
            connection(stream, peer, router, &tracked, stopping, limits).await;
            lock(&registry).open.remove(&id);
        });
    }
    let _ = stop.send(true);
    // Busy connections finish their request, for a while: a preview response that never
    // ends (an application's event stream, a hung one) must not keep the server from
    // stopping.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
    }
}

/// How long a stopping server waits for busy connections before it closes them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    tracked: &Arc<Tracked>,
    mut stopping: watch::Receiver<bool>,
    limits: Limits,
) {
    let counted = tracked.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let request = request.map(|body| Body::new(Unstalled::new(body, limits.header_timeout)));
        let in_flight = InFlight::new(&counted);
        let router = router.clone();
        async move {
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            // The request stays in flight until its response's body is sent (or dropped):
            // an event stream is a busy connection, not an idle one.
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _ = &in_flight;
                    frame
                }))
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut shutting_down = *stopping.borrow();
    if shutting_down {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        // Stopping, hyper closes a kept-alive connection between requests, but waits on one
        // that has not sent its first request yet (up to the header timeout). A connection
        // with no request in flight is closed after a moment (to flush a response just sent).
        let idle_while_stopping = shutting_down && tracked.in_flight.load(Ordering::Acquire) == 0;
        tokio::select! {
            _ = conn.as_mut() => return,
            () = tracked.close.notified() => return,
            changed = stopping.changed(), if !shutting_down => {
                if changed.is_err() || *stopping.borrow() {
                    shutting_down = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = tokio::time::sleep(Duration::from_millis(100)), if idle_while_stopping => {
                if tracked.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_idle_connection_is_evicted_and_busy_ones_never_are() {
        let mut registry = Registry::default();
        for id in 0..3 {
            registry.open.insert(id, Arc::new(Tracked::default()));
        }
        let busy = InFlight::new(&registry.open[&0]);
        assert!(registry.evict_idle(), "an idle connection makes room");
        assert_eq!(
            registry.open.keys().copied().collect::<Vec<_>>(),
            vec![0, 2],
            "the oldest idle one (1) went, not the older busy one (0)"
        );
        assert!(registry.evict_idle());
        assert!(
            !registry.evict_idle(),
            "with every connection busy, none is evicted"
        );
        drop(busy);
        assert!(registry.evict_idle(), "once its request is done it is idle");
    }
}
