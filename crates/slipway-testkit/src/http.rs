//! The one HTTP server of the kit's fakes: hyper's HTTP/1.1 on a tokio runtime of its own, on
//! `127.0.0.1:0`, handing every request (body read in full) to a synchronous handler.
//!
//! hyper reads and refuses what is not HTTP (`400`) and more than 200 headers (`431`), and answers
//! `Expect: 100-continue`; the server refuses headers over 64 KiB (`431`), a declared body over
//! 16 MiB (`413`) and a body
//! that cannot be read (a broken chunked encoding: `400`) before the handler sees them. A
//! handler that panics answers `500`. Stopped when dropped: every connection is closed.

use std::convert::Infallible;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// The largest body the server reads.
pub const MAX_BODY: usize = 16 << 20;
/// The most header bytes a request may have (else `431`).
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The most headers a request may have (else `431`).
const MAX_HEADERS: usize = 200;
/// What hyper buffers of a request's head: far more than [`MAX_HEADER_BYTES`], so that the
/// server reads a request with too many header bytes in full and answers it, rather than
/// closing on unread data (which resets the connection before the client reads the `431`).
const MAX_BUFFER: usize = 1 << 20;
/// The longest line of an answer the client reads.
const MAX_LINE: u64 = 16 * 1024;

/// A request, its body read in full.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`…
    pub method: String,
    /// The path as sent (still percent-encoded), without the query.
    pub path: String,
    /// The raw query (after `?`), empty when there is none.
    pub query: String,
    /// The headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
    /// Which TCP connection it came on (numbered from 1 per server): requests of one
    /// keep-alive connection share it.
    pub connection: u64,
    /// When its body had been read: seconds of `CLOCK_MONOTONIC` ([`monotonic_now`]).
    pub at: f64,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }
}

/// An answer: a JSON body (or none, for `204`) and extra headers.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status.
    pub status: u16,
    /// The body.
    pub body: Option<Value>,
    /// Headers besides `Content-Type` and `Content-Length`.
    pub headers: Vec<(String, String)>,
}

impl Reply {
    /// `status` with `body`.
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: Some(body),
            headers: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: String) -> Reply {
        self.headers.push((name.to_owned(), value));
        self
    }
}

type Handler = dyn Fn(Request) -> Reply + Send + Sync;
/// What answers before the handler: `Some` answers the request (unrecorded by the handler).
type Front = dyn Fn(&Request) -> Option<Reply> + Send + Sync;

/// A running server. Stopped when dropped.
pub struct Server {
    addr: SocketAddr,
    front: Arc<OnceLock<Box<Front>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `127.0.0.1:0`, builds the handler from the bound address, and serves.
    pub fn start<H>(name: &str, make_handler: impl FnOnce(SocketAddr) -> H) -> Server
    where
        H: Fn(Request) -> Reply + Send + Sync + 'static,
    {
        Server::start_on("127.0.0.1:0", name, make_handler)
    }

    /// [`Server::start`] on `addr` (`host:port`).
    pub fn start_on<H>(addr: &str, name: &str, make_handler: impl FnOnce(SocketAddr) -> H) -> Server
    where
        H: Fn(Request) -> Reply + Send + Sync + 'static,
    {
        let listener = std::net::TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("bind {addr} for {name}: {e}"));
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        listener
            .set_nonblocking(true)
            .expect("a listener can be non-blocking");
        let inner: Arc<Handler> = Arc::new(make_handler(addr));
        let front: Arc<OnceLock<Box<Front>>> = Arc::default();
        let handler: Arc<Handler> = {
            let front = Arc::clone(&front);
            Arc::new(
                move |req: Request| match front.get().and_then(|f| f(&req)) {
                    Some(reply) => reply,
                    None => inner(req),
                },
            )
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-http"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a tokio runtime");
                runtime.block_on(serve(listener, handler, stopped));
                // Connections and blocking handlers still running are dropped, not awaited.
                runtime.shutdown_background();
            })
            .expect("spawn the server's thread");
        Server {
            addr,
            front,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Puts `front` before the handler: a request it answers (`Some`) never reaches the
    /// handler. Set once; later calls are ignored.
    pub fn set_front(&self, front: impl Fn(&Request) -> Option<Reply> + Send + Sync + 'static) {
        let _ = self.front.set(Box::new(front));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    handler: Arc<Handler>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
    let next = Arc::new(AtomicU64::new(0));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let connection = next.fetch_add(1, Ordering::Relaxed) + 1;
        let handler = Arc::clone(&handler);
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let handler = Arc::clone(&handler);
                async move { Ok::<_, Infallible>(answer(&handler, req, connection).await) }
            });
            let _ = http1::Builder::new()
                .max_buf_size(MAX_BUFFER)
                .max_headers(MAX_HEADERS)
                .half_close(true)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        // Forget the connections that ended.
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
}

async fn answer(
    handler: &Arc<Handler>,
    req: hyper::Request<Incoming>,
    connection: u64,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let header_bytes: usize = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return respond(&message(431, "Request Header Fields Too Large"));
    }
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return respond(&message(413, "Payload Too Large"));
    }
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return respond(&message(413, "Payload Too Large"));
        }
        Err(_) => return respond(&message(400, "Bad Request: the body cannot be read")),
    };
    let at = monotonic_now();
    let request = Request {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).trim().to_owned(),
                )
            })
            .collect(),
        body,
        connection,
        at,
    };
    let handler = Arc::clone(handler);
    let reply = tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(request)))
    })
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_else(|| message(500, "the fake failed to answer (a bug)"));
    respond(&reply)
}

fn message(status: u16, text: &str) -> Reply {
    Reply::json(status, json!({ "message": text }))
}

fn respond(reply: &Reply) -> hyper::Response<Full<Bytes>> {
    let body = reply
        .body
        .as_ref()
        .map(|b| b.to_string())
        .unwrap_or_default();
    let mut response = hyper::Response::builder().status(reply.status);
    if reply.body.is_some() {
        response = response.header("Content-Type", "application/json; charset=utf-8");
    }
    for (k, v) in &reply.headers {
        response = response.header(k.as_str(), v.as_str());
    }
    response
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| {
            let mut r = hyper::Response::new(Full::new(Bytes::from_static(
                b"{\"message\":\"the fake built an invalid answer\"}",
            )));
            *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            r
        })
}

/// Seconds of `CLOCK_MONOTONIC`: the clock of Python's `time.monotonic()` and
/// `time.perf_counter()` on Linux, so that a benchmark compares its own times with the fake's.
pub fn monotonic_now() -> f64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is readable");
    ts.tv_sec() as f64 + ts.tv_nsec() as f64 / 1e9
}

/// The first value of header `name` (case-insensitive).
pub fn header_of<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

// ---- A plain client, for requests a library would refuse to send -------------------------------

/// An answer read by [`http_request`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status.
    pub status: u16,
    /// The headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body (lossy UTF-8), de-chunked.
    pub body: String,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }
}

/// One HTTP/1.1 request to `addr` (`host:port`) on a new connection: `headers` as given, plus
/// `Host`, and `Content-Length` and `Connection: close` unless given. The body is written from
/// another thread while the answer is read, so that a server that answers early (`413`) and
/// closes is still heard. 10 s to connect, 30 s for each read.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    let target = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
    let stream = TcpStream::connect_timeout(&target, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !has("host") {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has("content-length") && !has("transfer-encoding") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if !has("connection") {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut writer = stream.try_clone()?;
    std::thread::scope(|scope| {
        let sending = scope.spawn(move || -> io::Result<()> {
            writer.write_all(head.as_bytes())?;
            for chunk in body.chunks(64 * 1024) {
                writer.write_all(chunk)?;
            }
            writer.flush()
        });
        let answer = read_response(&mut BufReader::new(&stream));
        let sent = sending.join();
        match (answer, sent) {
            (Ok(r), _) => Ok(r),
            (Err(e), Ok(Err(send))) => Err(io::Error::new(
                e.kind(),
                format!("{e} (sending the request failed: {send})"),
            )),
            (Err(e), _) => Err(e),
        }
    })
}

fn read_response(r: &mut impl BufRead) -> io::Result<HttpResponse> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    loop {
        let line = read_line(r, MAX_LINE)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed without an answer",
            )
        })?;
        let line = String::from_utf8_lossy(trim_crlf(&line)).into_owned();
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .filter(|_| line.starts_with("HTTP/1."))
            .ok_or_else(|| bad("not an HTTP status line"))?;
        let mut headers = Vec::new();
        loop {
            let l = read_line(r, MAX_LINE)?.ok_or_else(|| bad("the answer's headers end early"))?;
            let l = String::from_utf8_lossy(trim_crlf(&l)).into_owned();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').ok_or_else(|| bad("malformed header"))?;
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        if (100..200).contains(&status) {
            continue;
        }
        let chunked = header_of(&headers, "transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = header_of(&headers, "content-length").and_then(|v| v.parse::<usize>().ok());
        let mut body = Vec::new();
        if chunked {
            loop {
                let size_line =
                    read_line(r, 1024)?.ok_or_else(|| bad("chunked body ends early"))?;
                let text = String::from_utf8_lossy(trim_crlf(&size_line)).into_owned();
                let size = usize::from_str_radix(text.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| bad("bad chunk size"))?;
                if size == 0 {
                    while read_line(r, MAX_LINE)?.is_some_and(|l| !trim_crlf(&l).is_empty()) {}
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                r.read_exact(&mut body[start..])?;
                let mut crlf = [0u8; 2];
                r.read_exact(&mut crlf)?;
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        } else if status != 204 && status != 304 {
            r.take(64 << 20).read_to_end(&mut body)?;
        }
        return Ok(HttpResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
}

/// Reads one line, up to `limit` bytes: `None` at end of stream.
fn read_line(r: &mut impl BufRead, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let n = r.take(limit).read_until(b'\n', &mut buf)?;
    Ok((n > 0).then_some(buf))
}

fn trim_crlf(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}
