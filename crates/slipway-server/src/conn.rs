//! The server's own accept loop, for what `axum::serve` does not bound: how long a client may
//! take to send a request's head and body and to read its response, and how many connections
//! are open at once.
//!
//! - A connection has [`Limits::header_timeout`] to send each request's head: the first one
//!   after it connects, and the next one after a response on a kept-alive connection (so it
//!   is also the idle keep-alive timeout). Past it the connection is closed. A connection
//!   that connects and sends nothing, or half a head, is gone after that long.
//! - At most [`Limits::max_connections`] are open. A new connection beyond that closes the
//!   oldest idle one (no request in flight: one still to send its first head, or a kept-alive
//!   one between requests) to make room; without one, the one whose request body has waited
//!   longest for its client, once it has waited [`STALLED_BODY`] and came slower than
//!   [`Limits::body_min_rate`] (1 KiB/s at least) meanwhile (a client that announces a body
//!   and never sends it, or trickles it, is as idle as one that sends nothing); when every
//!   open connection is busy otherwise, the new one is closed at once. So idle, half-open or
//!   stalled connections, however many, never keep a client with a request to make (a
//!   health check, a webhook) out.
//! - A request's body must arrive within [`Limits::body_timeout`] of when it is first read,
//!   plus a second for every [`Limits::body_min_rate`] bytes received: a total deadline, not
//!   one reset by each byte, so a client that sends its body a byte at a time holds a
//!   connection busy (where eviction cannot reach it) for that long at most. Past it the
//!   handler sees an error, the client gets `408` and the connection closes.
//! - A response to a request whose body was not read to its end (refused before it mattered)
//!   says `Connection: close`: the connection cannot carry another request, and a client
//!   that kept it would send its next one into a closed socket.
//! - A response must keep leaving: a write to the client that makes no progress for
//!   [`Limits::write_timeout`] closes the connection, so a client that never reads its
//!   response (an event stream, a preview's streamed body) does not keep it busy forever.
//!   Nor does one that vanished without closing (a laptop asleep, a network gone): what it
//!   no longer acknowledges is given up on after as long (`TCP_USER_TIMEOUT`), although an
//!   event stream's keep-alive comments would never fill the kernel's buffer for it.
//! - Each request carries its peer's address ([`axum::extract::ConnectInfo`]).
//! - On shutdown, idle connections close at once and busy ones finish their request, within
//!   a grace period (then they are closed).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    /// How long a request's body may take to arrive (from when it is first read), before the
    /// allowance of [`Limits::body_min_rate`].
    pub body_timeout: Duration,
    /// Bytes per second a body must average past [`Limits::body_timeout`]: each this many
    /// bytes received give it a second more. 0 makes `body_timeout` the whole allowance.
    pub body_min_rate: u64,
    /// How long a write to the client may make no progress before the connection is closed.
    pub write_timeout: Duration,
}

/// One open connection, as the registry sees it.
#[derive(Default)]
struct Tracked {
    /// Requests being handled or whose response is still being sent.
    in_flight: AtomicUsize,
    /// Since when its request's body has been waited for ([`since_start`] + 1, from the first
    /// time it was not there yet), or 0: none is, or it has all come.
    body_wait: AtomicU64,
    /// The bytes of that body received since then.
    body_bytes: AtomicU64,
    /// Fired to close the connection at once.
    close: Notify,
}

/// How long a request body must have waited for its client, coming slower than the least
/// rate, before its connection may be closed to make room for a new one.
pub(crate) const STALLED_BODY: Duration = Duration::from_secs(1);

/// The least rate a body is held to for eviction, whatever `body_min_rate` says.
const LEAST_RATE: u64 = 1024;

/// Milliseconds since the first call, on a monotonic clock.
fn since_start() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The open connections, oldest first.
#[derive(Default)]
struct Registry {
    next_id: u64,
    open: BTreeMap<u64, Arc<Tracked>>,
}

impl Registry {
    /// Closes the oldest connection with no request in flight, or else the one whose request
    /// body has waited longest for its client, at least `stalled`, coming slower than
    /// `min_rate` bytes a second (1 KiB/s at least); false when there is none.
    fn evict_idle(&mut self, stalled: Duration, min_rate: u64) -> bool {
        let rate = min_rate.max(LEAST_RATE);
        let idle = self
            .open
            .iter()
            .find(|(_, t)| t.in_flight.load(Ordering::Acquire) == 0)
            .map(|(id, _)| *id);
        let stalled = || {
            let now = since_start();
            let long_enough = u64::try_from(stalled.as_millis()).unwrap_or(u64::MAX);
            self.open
                .iter()
                .filter_map(|(id, t)| {
                    let since = t.body_wait.load(Ordering::Acquire);
                    let waited = now.saturating_sub(since.saturating_sub(1));
                    let bytes = t.body_bytes.load(Ordering::Acquire);
                    let slow = bytes.saturating_mul(1000) < rate.saturating_mul(waited);
                    (since != 0 && waited >= long_enough && slow).then_some((since, *id))
                })
                .min()
                .map(|(_, id)| id)
        };
        match idle.or_else(stalled).and_then(|id| self.open.remove(&id)) {
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

/// A request body that has to arrive by a deadline: `timeout` after it is first read (a
/// handler may read it late), moved a second later for every `min_rate` bytes received.
struct Bounded<B> {
    inner: B,
    timeout: Duration,
    min_rate: u64,
    received: u64,
    started: Option<tokio::time::Instant>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Set when the deadline passes, so that the client is answered `408` whatever the
    /// handler made of the error.
    timed_out: Arc<AtomicBool>,
    /// Set once the body has been read to its end: until then the connection cannot carry
    /// another request (see [`close_unless_read`]).
    ended: Arc<AtomicBool>,
    /// Its connection, told when the body waits for its client ([`Tracked::body_wait`]).
    tracked: Arc<Tracked>,
}

impl<B> Bounded<B> {
    /// The body no longer waits for its client: it has all come, failed, or is dropped.
    fn done(&self) {
        self.tracked.body_wait.store(0, Ordering::Release);
        self.tracked.body_bytes.store(0, Ordering::Release);
    }
}

impl<B> Drop for Bounded<B> {
    fn drop(&mut self) {
        self.done();
    }
}

impl<B> Bounded<B> {
    fn new(
        inner: B,
        limits: &Limits,
        timed_out: Arc<AtomicBool>,
        ended: Arc<AtomicBool>,
        tracked: Arc<Tracked>,
    ) -> Bounded<B> {
        Bounded {
            inner,
            timeout: limits.body_timeout,
            min_rate: limits.body_min_rate,
            received: 0,
            started: None,
            deadline: None,
            timed_out,
            ended,
            tracked,
        }
    }

    fn deadline(&self, started: tokio::time::Instant) -> tokio::time::Instant {
        let allowance = self
            .received
            .saturating_mul(1000)
            .checked_div(self.min_rate)
            .map_or(Duration::ZERO, Duration::from_millis);
        started + self.timeout + allowance
    }

    fn timed_out(&self) -> BodyTimedOut {
        self.timed_out.store(true, Ordering::Release);
        BodyTimedOut {
            timeout: self.timeout,
            received: self.received,
        }
    }
}

/// The error a request body that missed its deadline reads as.
#[derive(Debug, thiserror::Error)]
#[error(
    "the request body did not arrive within {} ({received} bytes came); send it faster, or \
     raise [server] body_timeout",
    humantime::format_duration(*timeout)
)]
struct BodyTimedOut {
    timeout: Duration,
    received: u64,
}

impl<B> hyper::body::Body for Bounded<B>
where
    B: hyper::body::Body<Data = axum::body::Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = axum::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let started = *this.started.get_or_insert_with(tokio::time::Instant::now);
        // Only waiting on the client counts against it: what it has sent is read however late
        // (a handler, or a preview's application, may read slowly).
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received = this.received.saturating_add(data.len() as u64);
                    this.tracked
                        .body_bytes
                        .fetch_add(data.len() as u64, Ordering::AcqRel);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.done();
                this.ended.store(true, Ordering::Release);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.done();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => {
                // Waiting for the client from now, unless since earlier (a trickle is slow,
                // however often its bytes come).
                let _ = this.tracked.body_wait.compare_exchange(
                    0,
                    since_start().saturating_add(1),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                let deadline = this.deadline(started);
                let sleep = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(this.timed_out().into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let ended = self.inner.is_end_stream();
        if ended {
            self.ended.store(true, Ordering::Release);
        }
        ended
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Marks `response` as the connection's last when its request's body was not read to the end
/// (a request refused before its body mattered: a `401`, a `403`, a declared `413`).
///
/// hyper can take the next request only after the rest of that body, so it closes such a
/// connection once the response is sent. Without `Connection: close` the client cannot know:
/// it keeps the connection for its next request, which then meets a closed socket (ureq says
/// "Peer disconnected" and, for a `POST`, does not retry). With it, the client opens a new one.
fn close_unless_read(
    mut response: axum::response::Response,
    ended: &AtomicBool,
) -> axum::response::Response {
    // A `101` hands the connection over (an upgrade): it is the other protocol's now.
    if !ended.load(Ordering::Acquire)
        && response.status() != axum::http::StatusCode::SWITCHING_PROTOCOLS
    {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// What a client whose body missed its deadline is told; the connection closes after it (the
/// rest of the body is never read).
fn body_timed_out(timeout: Duration) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut response = crate::error::ApiError::client(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        format!(
            "the request body did not arrive within {}",
            humantime::format_duration(timeout)
        ),
    )
    .hint("send the body at once after the head; [server] body_timeout sets the limit")
    .into_response();
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// A connection whose writes fail when none makes progress for `timeout`: the client has
/// stopped reading (its receive window and our send buffer are full).
struct WriteBounded<T> {
    inner: T,
    timeout: Duration,
    /// Started when a write is first refused; cleared by any progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteBounded<T> {
    fn new(inner: T, timeout: Duration) -> WriteBounded<T> {
        WriteBounded {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Passes `polled` on, turning a write that has been pending for too long into an error.
    fn bound<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        match polled {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "the client read nothing of its response for {}",
                            humantime::format_duration(timeout)
                        ),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteBounded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteBounded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.bound(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.bound(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.bound(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.bound(cx, polled)
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
                        lock(&registry).evict_idle(STALLED_BODY, limits.body_min_rate);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let (id, tracked) = {
            let mut registry = lock(&registry);
            if registry.open.len() >= limits.max_connections.max(1)
                && !registry.evict_idle(STALLED_BODY, limits.body_min_rate)
            {
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
        // A peer that vanished acknowledges nothing: a write to it lands in the kernel's
        // buffer and succeeds, so only TCP can tell. It gives up on data unacknowledged for
        // the write timeout (the system's default is some 15 minutes of retransmissions).
        let _ = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(limits.write_timeout));
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
        let timed_out = Arc::new(AtomicBool::new(false));
        let ended = Arc::new(AtomicBool::new(hyper::body::Body::is_end_stream(
            request.body(),
        )));
        let request = request.map(|body| {
            Body::new(Bounded::new(
                body,
                &limits,
                timed_out.clone(),
                ended.clone(),
                counted.clone(),
            ))
        });
        let in_flight = InFlight::new(&counted);
        let router = router.clone();
        async move {
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            // Whatever the handler answered to a body that came too late (a 400, a preview's
            // 502), the client is told why, and the connection closes.
            let response = if timed_out.load(Ordering::Acquire) {
                body_timed_out(limits.body_timeout)
            } else {
                close_unless_read(response, &ended)
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
        .serve_connection(
            TokioIo::new(WriteBounded::new(stream, limits.write_timeout)),
            service,
        )
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
    use axum::body::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A request body fed by the test, a part at a time.
    struct Fed(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

    impl hyper::body::Body for Fed {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
            self.0
                .poll_recv(cx)
                .map(|part| part.map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }

    fn limits(body_timeout: Duration, body_min_rate: u64) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(5),
            max_connections: 4,
            body_timeout,
            body_min_rate,
            write_timeout: Duration::from_millis(300),
        }
    }

    // Paused time: the deadlines race nothing but the test's own timers.
    #[tokio::test(start_paused = true)]
    async fn a_body_sent_a_byte_at_a_time_fails_at_its_deadline_however_often_bytes_come() {
        let (feed, fed) = tokio::sync::mpsc::unbounded_channel();
        let flag = Arc::new(AtomicBool::new(false));
        let body = Bounded::new(
            Fed(fed),
            &limits(Duration::from_millis(400), 0),
            flag.clone(),
            Arc::default(),
            Arc::new(Tracked::default()),
        );
        // A byte every 50 ms: no stall ever lasts near the timeout.
        let trickle = tokio::spawn(async move {
            while feed.send(Bytes::from_static(b"x")).is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let started = tokio::time::Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(5), body.collect()).await;
        let error = read
            .expect("the body ends by its deadline, not when the client stops")
            .expect_err("a body still trickling at its deadline fails");
        assert!(
            error.to_string().contains("did not arrive within 400ms"),
            "the error says why: {error}"
        );
        assert!(
            flag.load(Ordering::Acquire),
            "the timeout is flagged for the 408"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "it failed at its deadline: {:?}",
            started.elapsed()
        );
        trickle.abort();
    }

    // Paused time: the deadlines race nothing but the test's own timers.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_the_minimum_rate_gets_more_time_and_one_that_comes_at_once_passes() {
        // 1000 bytes every 50 ms (20 kB/s) against a minimum of 10 kB/s: past the 200 ms
        // timeout, each part buys another 100 ms.
        let (feed, fed) = tokio::sync::mpsc::unbounded_channel();
        let flag = Arc::new(AtomicBool::new(false));
        let body = Bounded::new(
            Fed(fed),
            &limits(Duration::from_millis(200), 10_000),
            flag.clone(),
            Arc::default(),
            Arc::new(Tracked::default()),
        );
        tokio::spawn(async move {
            for _ in 0..20 {
                let _ = feed.send(Bytes::from(vec![b'x'; 1000]));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let bytes = body
            .collect()
            .await
            .expect("a body at twice the minimum rate is read whole, past body_timeout")
            .to_bytes();
        assert_eq!(bytes.len(), 20_000);
        assert!(!flag.load(Ordering::Acquire));

        let (feed, fed) = tokio::sync::mpsc::unbounded_channel();
        feed.send(Bytes::from_static(b"{}")).expect("send");
        drop(feed);
        let ended = Arc::new(AtomicBool::new(false));
        let body = Bounded::new(
            Fed(fed),
            &limits(Duration::from_millis(200), 0),
            flag,
            ended.clone(),
            Arc::new(Tracked::default()),
        );
        let bytes = body.collect().await.expect("a prompt body").to_bytes();
        assert_eq!(&bytes[..], b"{}");
        assert!(
            ended.load(Ordering::Acquire),
            "a body read whole is flagged as ended"
        );
    }

    // Paused time: the deadlines race nothing but the test's own timers.
    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_never_reads_fails_after_the_write_timeout() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut conn = WriteBounded::new(ours, Duration::from_millis(300));
        // The client reads a little: progress, so no error, however long it all takes.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut read = 0;
            while read < 256 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                read += theirs.read(&mut buf).await.expect("read");
            }
            theirs
        });
        conn.write_all(&[b'x'; 256])
            .await
            .expect("a client that reads, slowly, is written to");
        let _theirs = reader.await.expect("reader");
        // Then it stops reading.
        let started = tokio::time::Instant::now();
        let written = tokio::time::timeout(Duration::from_secs(5), conn.write_all(&[b'y'; 1024]))
            .await
            .expect("the write ends by the write timeout");
        let error = written.expect_err("a write nobody reads fails");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_trickled_body_is_answered_408_and_its_connection_closed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = Router::new().route(
            "/hook",
            axum::routing::post(|body: Bytes| async move { format!("{}", body.len()) }),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            router,
            limits(Duration::from_millis(500), 0),
            async move {
                let _ = stopped.await;
            },
        ));
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            .await
            .expect("head");
        let started = std::time::Instant::now();
        let (mut read, mut write) = client.into_split();
        let trickle = tokio::spawn(async move {
            while write.write_all(b"x").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut answer))
            .await
            .expect("the server closes the connection by the body's deadline")
            .expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "the client is told its body came too late: {answer}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        trickle.abort();

        // A prompt request on the same server is served.
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            .await
            .expect("send");
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n2"), "{answer}");
        let _ = stop.send(());
        server.await.expect("serve ends");
    }

    #[test]
    fn the_oldest_idle_connection_is_evicted_and_busy_ones_never_are() {
        let mut registry = Registry::default();
        for id in 0..3 {
            registry.open.insert(id, Arc::new(Tracked::default()));
        }
        let busy = InFlight::new(&registry.open[&0]);
        assert!(
            registry.evict_idle(STALLED_BODY, 0),
            "an idle connection makes room"
        );
        assert_eq!(
            registry.open.keys().copied().collect::<Vec<_>>(),
            vec![0, 2],
            "the oldest idle one (1) went, not the older busy one (0)"
        );
        assert!(registry.evict_idle(STALLED_BODY, 0));
        assert!(
            !registry.evict_idle(STALLED_BODY, 0),
            "with every connection busy, none is evicted"
        );
        drop(busy);
        assert!(
            registry.evict_idle(STALLED_BODY, 0),
            "once its request is done it is idle"
        );
    }

    #[test]
    fn a_connection_whose_body_waits_long_enough_is_evicted_when_none_is_idle() {
        let mut registry = Registry::default();
        let mut busy = Vec::new();
        for id in 0..3 {
            let tracked = Arc::new(Tracked::default());
            busy.push(InFlight::new(&tracked));
            registry.open.insert(id, tracked);
        }
        assert!(
            !registry.evict_idle(Duration::ZERO, 0),
            "all busy, none waits"
        );
        // Waiting since the clock's start (2), and since a moment later (1).
        let _ = since_start();
        registry.open[&2].body_wait.store(1, Ordering::Release);
        assert!(
            !registry.evict_idle(Duration::from_secs(3600), 0),
            "a body that has waited less than the limit is left alone"
        );
        registry.open[&1].body_wait.store(2, Ordering::Release);
        // A body that comes at its rate is not stalled, however long it takes.
        registry.open[&0].body_wait.store(1, Ordering::Release);
        registry.open[&0]
            .body_bytes
            .store(u64::MAX / 2, Ordering::Release);
        // Until the clock moves, nothing has waited at all (so nothing is slow yet).
        let stored = since_start();
        while since_start() == stored {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(registry.evict_idle(Duration::ZERO, 0));
        assert_eq!(
            registry.open.keys().copied().collect::<Vec<_>>(),
            vec![0, 1],
            "the one that has waited longest (2) went"
        );
    }

    /// Connections that announce a body and never send it fill every slot: a request that
    /// comes then is served all the same, in the place of the one that has waited longest.
    #[tokio::test]
    async fn bodies_that_never_come_do_not_keep_a_request_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = Router::new()
            .route(
                "/hook",
                axum::routing::post(|body: Bytes| async move { format!("{}", body.len()) }),
            )
            .route("/healthz", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut limits = limits(Duration::from_secs(60), 0);
        limits.max_connections = 2;
        let server = tokio::spawn(serve(listener, router, limits, async move {
            let _ = stopped.await;
        }));
        let mut stalled = Vec::new();
        for _ in 0..2 {
            let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
            client
                .write_all(b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
                .await
                .expect("head");
            stalled.push(client);
        }
        // Refused (503) while the bodies have waited less than the limit; once they have, the
        // request takes the place of the one that waited longest.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
            client
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .expect("send");
            // A refused one may be reset before its 503 is read: not an answer either way.
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer))
                .await
                .expect("an answer or a close");
            let answer = String::from_utf8_lossy(&answer);
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still refused after the bodies stalled: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The first stalled connection was closed to make room.
        // Read to its end (or reset): the wait ends only if the server closed it.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stalled[0].read_to_end(&mut rest))
            .await
            .expect("the oldest stalled connection is closed");
        let _ = stop.send(());
        server.await.expect("serve ends");
    }

    /// Sets its flag when dropped.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }

    /// A client that vanished without closing (no FIN nor RST: a laptop asleep, a network
    /// gone) acknowledges nothing more, and an endless response to it (an event stream's
    /// keep-alive comments) fits in the kernel's buffer for hours: no write stalls, so only
    /// TCP can tell, and by default it tries for some 15 minutes. The server's connections
    /// give up after the write timeout. The vanishing is real: a thread of the test's own,
    /// with a network namespace of its own, runs the server and the client, and takes its
    /// loopback down under the connection. Skipped where no such namespace can be made (not
    /// root, or a container without `CAP_SYS_ADMIN`) or without `ip`; CI runs as root.
    #[test]
    fn a_response_to_a_client_that_vanished_ends_after_the_write_timeout() {
        let skipped = std::thread::spawn(|| {
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                return Some(format!("no network namespace of its own ({e})"));
            }
            if let Err(e) = std::process::Command::new("ip").arg("-V").output() {
                return Some(format!("no `ip` ({e})"));
            }
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(vanished_client_in_this_namespace());
            None
        })
        .join()
        .expect("the test's thread");
        if let Some(why) = skipped {
            eprintln!("skipped: {why}");
        }
    }

    /// [`a_response_to_a_client_that_vanished_ends_after_the_write_timeout`], on a thread in a
    /// network namespace of its own.
    async fn vanished_client_in_this_namespace() {
        let ip = |args: &[&str]| {
            let status = std::process::Command::new("ip")
                .args(args)
                .status()
                .expect("ip runs");
            assert!(status.success(), "ip {args:?}");
        };
        ip(&["link", "set", "lo", "up"]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ended = Arc::new(AtomicBool::new(false));
        let router = {
            let ended = ended.clone();
            Router::new().route(
                "/stream",
                axum::routing::get(move || {
                    let flag = DropFlag(ended.clone());
                    async move {
                        // A keep-alive comment every 100 ms, for ever; the flag goes with it.
                        let comments = futures_util::stream::unfold(flag, |flag| async move {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            Some((Ok::<_, Infallible>(Bytes::from_static(b":\n")), flag))
                        });
                        axum::body::Body::from_stream(comments)
                    }
                }),
            )
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            router,
            Limits {
                write_timeout: Duration::from_secs(1),
                ..limits(Duration::from_secs(5), 0)
            },
            async move {
                let _ = stopped.await;
            },
        ));
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("send");
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.windows(2).any(|w| w == b":\n") {
            let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
                .await
                .expect("the stream flows")
                .expect("read");
            assert!(read > 0, "the stream ended early");
            got.extend_from_slice(&buf[..read]);
        }
        // The client vanishes: nothing it sent or would acknowledge gets through any more.
        ip(&["link", "set", "lo", "down"]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !ended.load(Ordering::Acquire) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            ended.load(Ordering::Acquire),
            "the response to a vanished client still runs 30 s later"
        );
        drop(client);
        let _ = stop.send(());
        server.await.expect("the server stops");
    }
}
