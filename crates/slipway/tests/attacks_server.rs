//! Attacks on the router and the HTTP server, performed against the real `slipway serve` and a
//! real application process (`util/attacks_server_echo.py`): reaching a port that is not
//! exposed, smuggling headers past the preview router or getting Slipway's credentials
//! through it, hanging it on a stuck application, exhausting its connections with half-open
//! sockets or bodies sent a byte at a time, and growing its database with refused requests
//! and repeated events.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::*;

const T: Duration = Duration::from_secs(60);
const ECHO: &str = include_str!("util/attacks_server_echo.py");

const STACK: &str = r#"version: 1
stack: attack
environments:
  dev: { track: main }
resources:
  web:
    type: process
    command: ["python3", "echo.py", "${ports.admin}", "${ports.http}"]
    # The admin port is listed first: it must never be what the preview URL serves.
    ports: [admin, http]
    expose: http
    health: { http: /health, port: http }
"#;

/// A sandbox with the echo application, a short header timeout and preview timeout, a 30-day
/// retention, and an admin token; `extra` is appended to the engine configuration (after its
/// `[server]` table).
fn setup(extra: &str) -> (Sandbox, String) {
    let s = Sandbox::new();
    s.write("echo.py", ECHO).write("slipway.yaml", STACK);
    s.commit("stack");
    util::world::append_config(
        &s,
        &format!(
            "[repo]\npoll_interval = \"300ms\"\n[controller]\ndrift_interval = \"500ms\"\nretention = \"30d\"\n\
             [server]\nheader_timeout = \"2s\"\npreview_timeout = \"2s\"\n{extra}"
        ),
    );
    let token = named_token(&s, "admin", "test");
    (s, token)
}

/// A response read whole from a connection the server closes after it.
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    /// Every value of header `name` (case-insensitive).
    fn header(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

/// Sends `request` (a whole HTTP/1.1 request, which should say `Connection: close`) and reads
/// the response until the server closes.
fn raw(port: u16, request: &str) -> Option<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

fn get(port: u16, host: &str, path: &str, extra: &str) -> Option<Reply> {
    raw(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"),
    )
}

/// Starts serve and waits until the preview URL of `dev` answers.
/// `/healthz` and the API (with `token`) answer `200`.
fn health_and_api_answer(port: u16, token: &str) {
    let health = get(port, "127.0.0.1", "/healthz", "").expect("/healthz answers");
    assert_eq!(health.status, 200);
    let api = get(
        port,
        "127.0.0.1",
        "/api/v1/environments",
        &format!("Authorization: Bearer {token}\r\n"),
    )
    .expect("the API answers");
    assert_eq!(api.status, 200);
}

fn serve_dev(s: &Sandbox) -> (Server, u16, String) {
    let server = start_serve(s);
    let port = server.port();
    let host = format!("dev.attack.localhost:{port}");
    wait_for("dev answers at its preview URL", T, || {
        get(port, &host, "/health", "").filter(|r| r.status == 200 && r.body == "ok")
    });
    (server, port, host)
}

/// Process outputs of `web` in dev, as the API shows them.
fn web_outputs(port: u16, token: &str) -> Value {
    let reply = get(
        port,
        "127.0.0.1",
        "/api/v1/environments/dev",
        &format!("Authorization: Bearer {token}\r\n"),
    )
    .expect("the API answers");
    let v: Value = serde_json::from_str(&reply.body).expect("json");
    v["resources"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["name"] == "web"))
        .map(|r| r["outputs"].clone())
        .unwrap_or_else(|| panic!("dev has a `web` resource: {v}"))
}

#[test]
fn the_preview_url_serves_only_the_exposed_port() {
    let (s, token) = setup("");
    let (_server, port, host) = serve_dev(&s);
    let outputs = web_outputs(port, &token);
    let admin = outputs["ports"]["admin"].as_u64().expect("an admin port");
    let http = outputs["ports"]["http"].as_u64().expect("an http port");
    assert_eq!(
        http_get(u16::try_from(admin).expect("port"), "/").as_deref(),
        Some("internal admin port"),
        "the admin port is up (so not reaching it below means the router avoids it)"
    );
    assert_eq!(
        outputs["url"],
        format!("http://127.0.0.1:{http}"),
        "the `url` output is the exposed port's, not the first port's"
    );
    for path in ["/", "/admin", "/health", "/echo"] {
        let reply = get(port, &host, path, "").expect("the router answers");
        assert!(
            !reply.body.contains("internal admin port"),
            "{path} through the preview URL must not reach the admin port: {}",
            reply.body
        );
    }
    let unknown = get(port, &format!("nope.attack.localhost:{port}"), "/", "").expect("answers");
    assert_eq!(
        unknown.status, 404,
        "an environment without an exposed process has no preview URL"
    );
    drop(_server);
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

#[test]
fn the_router_filters_headers_and_keeps_slipways_credentials_from_the_application() {
    let (s, token) = setup("");
    let (_server, port, host) = serve_dev(&s);

    // A real session cookie of the web UI, as a logged-in browser would hold it.
    let login = raw(
        port,
        &format!(
            "POST /api/v1/session HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        ),
    )
    .expect("login answers");
    assert_eq!(login.status, 201, "login: {}", login.body);
    let cookie = login
        .header("set-cookie")
        .into_iter()
        .find_map(|c| {
            c.strip_prefix("slipway_session=")
                .map(|v| v.split(';').next().unwrap_or("").to_string())
        })
        .expect("a session cookie");

    let reply = get(
        port,
        &host,
        "/echo",
        &format!(
            "Connection: X-Secret-Hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
             Proxy-Authorization: Basic c2VjcmV0\r\nX-Forwarded-For: 6.6.6.6\r\n\
             Forwarded: for=6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n\
             Cookie: app_session=keep-me; slipway_session={cookie}; theme=dark\r\n\
             Authorization: Bearer {token}\r\nX-Slipway-CSRF: abc\r\n"
        ),
    )
    .expect("the router answers");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let got: Value = serde_json::from_str(&reply.body).expect("the echo is json");
    let one = |name: &str| got[name].as_array().map(|v| v.len()).unwrap_or(0);
    for hop in [
        "x-secret-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "upgrade",
    ] {
        assert_eq!(
            one(hop),
            0,
            "`{hop}` (hop-by-hop, or named in Connection) is not forwarded: {got}"
        );
    }
    let xff = got["x-forwarded-for"][0].as_str().unwrap_or("");
    assert!(
        xff.ends_with("127.0.0.1") && xff.split(',').count() == 2,
        "the real peer is appended after what the client claimed: {xff:?}"
    );
    let forwarded = got["forwarded"][0].as_str().unwrap_or("");
    assert!(
        forwarded.contains("for=127.0.0.1;proto=http")
            && forwarded.ends_with(&format!("host=\"{host}\"")),
        "Forwarded ends with the router's own element: {forwarded:?}"
    );
    assert_eq!(
        got["x-forwarded-proto"],
        serde_json::json!(["http"]),
        "{got}"
    );
    assert_eq!(got["x-forwarded-host"], serde_json::json!([host]), "{got}");
    let cookies = got["cookie"][0].as_str().unwrap_or("");
    assert_eq!(
        cookies, "app_session=keep-me; theme=dark",
        "Slipway's session cookie is cut out and the application's cookies stay"
    );
    assert!(
        !reply.body.contains(&cookie) && !reply.body.contains(&token),
        "neither the session id nor the API token reaches the application: {got}"
    );
    assert_eq!(
        one("authorization"),
        0,
        "a Slipway API token is not forwarded"
    );
    assert_eq!(one("x-slipway-csrf"), 0, "the CSRF header is not forwarded");

    // The application's own credentials do reach it.
    let own = get(
        port,
        &host,
        "/echo",
        "Authorization: Bearer app-own-jwt\r\n",
    )
    .expect("answers");
    let own: Value = serde_json::from_str(&own.body).expect("json");
    assert_eq!(
        own["authorization"],
        serde_json::json!(["Bearer app-own-jwt"]),
        "an Authorization that is not a Slipway token is the application's"
    );

    // The response's hop-by-hop headers are stripped too, and it cannot plant Slipway's cookie.
    let hop = get(port, &host, "/hop", "").expect("answers");
    assert_eq!(hop.status, 200);
    assert!(
        hop.header("x-resp-hop").is_empty() && hop.header("keep-alive").is_empty(),
        "hop-by-hop response headers are not passed back: {}",
        hop.head
    );
    assert_eq!(hop.header("x-end-to-end"), vec!["kept".to_string()]);
    assert_eq!(
        hop.header("set-cookie"),
        vec!["app=ok; Path=/".to_string()],
        "the application's cookie is passed back; one named like Slipway's session is not"
    );

    // A WebSocket-style upgrade is spliced through, both ways.
    let mut ws = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    ws.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        ws,
        "GET /upgrade HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: x-echo\r\n\r\n"
    )
    .expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ws.read_exact(&mut byte).expect("the 101 head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "the upgrade is accepted: {head}"
    );
    ws.write_all(b"ping through the router").expect("send");
    let mut echoed = [0u8; 23];
    ws.read_exact(&mut echoed).expect("echo");
    assert_eq!(
        &echoed, b"ping through the router",
        "the upgraded connection is spliced"
    );
    drop(ws);

    // A hung application gets the client a 504 within the preview timeout, not a hung request.
    let started = Instant::now();
    let hung = get(port, &host, "/hang", "").expect("the router answers");
    assert_eq!(
        hung.status, 504,
        "a hung application is a 504: {}",
        hung.body
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the 504 comes after the 2s preview timeout, not later: {:?}",
        started.elapsed()
    );
    drop(_server);
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

/// Raises this test process's open-file limit: it holds thousands of sockets.
fn raise_nofile(at_least: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < at_least {
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(at_least.max(soft)), hard).expect("setrlimit");
    }
}

#[test]
fn thousands_of_half_open_connections_do_not_take_the_server_down() {
    const FLOOD: usize = 2000;
    raise_nofile(FLOOD as u64 + 512);
    let (s, token) = setup("max_connections = 1024\nbody_timeout = \"2s\"\n");
    let (_server, port, host) = serve_dev(&s);

    // The attack: connect and send nothing, or half a request head, and hold on.
    let started = Instant::now();
    let mut held = Vec::with_capacity(FLOOD);
    while held.len() < FLOOD && started.elapsed() < Duration::from_secs(30) {
        let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        if held.len() % 2 == 1 {
            let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
        }
        held.push(c);
    }
    assert_eq!(held.len(), FLOOD, "the attack opened its connections");
    // And some that send a whole head, then their body a byte at a time (one byte, then
    // nothing): they have a request in flight, so only the body's timeout (2 s) ends them.
    for _ in 0..50 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.write_all(
            b"POST /webhooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{",
        )
        .expect("send");
        held.push(c);
    }

    // The server holds no more than its cap of them (plus its own files: the store, logs,
    // the repository, the application's connections).
    let open_files = std::fs::read_dir(format!("/proc/{}/fd", _server.child.id()))
        .expect("the server's open files")
        .count();
    assert!(
        open_files <= 1024 + 200,
        "the server keeps at most max_connections (1024) connections open, not one per attacker: {open_files} files"
    );

    // Meanwhile every kind of request still answers, promptly (10 s: a busy machine's
    // "at once"; held by the attack, they would wait for as long as it lasts).
    let deadline = Duration::from_secs(10);
    let timed = |what: &str, f: &dyn Fn() -> Option<Reply>| {
        let t = Instant::now();
        let reply = f().unwrap_or_else(|| panic!("{what} answers under the attack"));
        assert!(
            t.elapsed() < deadline,
            "{what} answered within {deadline:?} under the attack (took {:?})",
            t.elapsed()
        );
        reply
    };
    let health = timed("/healthz", &|| get(port, "127.0.0.1", "/healthz", ""));
    assert_eq!(health.status, 200);
    let preview = timed("the preview URL", &|| get(port, &host, "/health", ""));
    assert_eq!(preview.body, "ok");
    let api = timed("the API", &|| {
        get(
            port,
            "127.0.0.1",
            "/api/v1/environments",
            &format!("Authorization: Bearer {token}\r\n"),
        )
    });
    assert_eq!(api.status, 200);
    let webhook = timed("the webhook endpoint", &|| {
        raw(
            port,
            "POST /webhooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        )
    });
    assert_eq!(
        webhook.status, 503,
        "the webhook endpoint answers (no forge here)"
    );

    // Every half-open connection is closed by the server within the header (or body) timeout
    // (2s) plus slack: evicted at once to make room, or timed out.
    let deadline = started + Duration::from_secs(20);
    for (i, c) in held.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        c.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        let mut buf = [0u8; 512];
        let closed = loop {
            match c.read(&mut buf) {
                Ok(0) => break true,
                // A 408 or 400 before the close is fine; keep reading to the close.
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        assert!(
            closed,
            "half-open (or stalled-body) connection {i} was closed by the server within the \
             header timeout"
        );
    }
    drop(held);
    let health = get(port, "127.0.0.1", "/healthz", "").expect("answers after the attack");
    assert_eq!(health.status, 200);
    drop(_server);
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

#[test]
fn responses_that_never_end_cannot_hold_every_connection() {
    // 20 connections at most, so at most 10 requests in flight through preview URLs.
    let (s, token) = setup("max_connections = 20\n");
    let (_server, port, host) = serve_dev(&s);
    // The attack: 20 requests to an application whose responses never end (its code is
    // anyone's branch), each holding its connection busy.
    let mut held = Vec::new();
    let (mut streaming, mut refused) = (0, 0);
    for _ in 0..20 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(c, "GET /trickle HTTP/1.1\r\nHost: {host}\r\n\r\n").expect("send");
        let mut first = [0u8; 12];
        c.read_exact(&mut first).expect("a status line");
        match &first {
            b"HTTP/1.1 200" => streaming += 1,
            b"HTTP/1.1 503" => refused += 1,
            other => panic!("unexpected answer {:?}", String::from_utf8_lossy(other)),
        }
        held.push(c);
    }
    assert_eq!(
        (streaming, refused),
        (10, 10),
        "half the connections at most are held by preview requests; the rest are refused"
    );
    let t = Instant::now();
    health_and_api_answer(port, &token);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "/healthz and the API answer at once while preview responses hang: {:?}",
        t.elapsed()
    );
    drop(held.remove(0)); // one of the first ten, which got a permit
    wait_for("the preview URL serves again once one left", T, || {
        get(port, &host, "/health", "").filter(|r| r.status == 200)
    });

    // Responses that never end do not keep the server from stopping either.
    let mut server = _server;
    let stopping = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(server.child.id()).expect("a pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    wait_for("serve stops on SIGTERM", Duration::from_secs(30), || {
        server.child.try_wait().ok().flatten()
    });
    assert!(
        stopping.elapsed() < Duration::from_secs(20),
        "serve stopped within its shutdown grace although responses were still streaming: {:?}",
        stopping.elapsed()
    );
    drop(held);
    drop(server);
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

/// Anyone may POST a webhook. The attack: fill every connection with webhook requests that
/// announce a body and trickle it a byte at a time (each may take `body_timeout`, 30 s by
/// default, and is then sent again). A connection whose body has come slower than 1 KiB/s for
/// a second is taken for a new one when none is idle: `/healthz` and the API still answer.
#[test]
fn webhook_bodies_that_never_come_cannot_hold_every_connection() {
    let (s, token) = setup("max_connections = 20\n");
    let server = start_serve(&s);
    let port = server.port();
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        write!(
            c,
            "POST /webhooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nX-GitHub-Event: push\r\n\
             Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        )
        .expect("send the head");
        stalled.push(c);
    }
    let trickling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let trickler = {
        let streams: Vec<TcpStream> = stalled
            .iter()
            .map(|c| c.try_clone().expect("clone"))
            .collect();
        let trickling = trickling.clone();
        std::thread::spawn(move || {
            let mut streams = streams;
            while trickling.load(std::sync::atomic::Ordering::Relaxed) {
                for c in &mut streams {
                    let _ = c.write_all(b" ");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // Once their bodies have trickled for a second, a new request takes one's place.
    wait_for("/healthz answers while bodies trickle", T, || {
        get(port, "127.0.0.1", "/healthz", "").filter(|r| r.status == 200)
    });
    health_and_api_answer(port, &token);
    trickling.store(false, std::sync::atomic::Ordering::Relaxed);
    trickler.join().expect("the trickler ends");
    drop(stalled);
    drop(server);
}

#[test]
fn bodies_sent_a_byte_at_a_time_cannot_hold_every_connection() {
    const TRICKLERS: usize = 300;
    raise_nofile(TRICKLERS as u64 + 512);
    // 64 connections at most; a request body has 2 s to arrive.
    let (s, token) = setup("max_connections = 64\nbody_timeout = \"2s\"\n");
    let (_server, port, _host) = serve_dev(&s);

    // The attack: webhook requests (public; the handler reads the whole body) that announce a
    // body of 1 MiB, then send it a byte at a time, a byte every 500 ms on every connection:
    // no connection ever stalls, and each has a request in flight, so none is evicted.
    let started = Instant::now();
    let mut tricklers = Vec::with_capacity(TRICKLERS);
    for _ in 0..TRICKLERS {
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        // The server may already have refused (503) and closed it: the write may fail.
        let _ = c.write_all(
            b"POST /webhooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1048576\r\n\r\n{",
        );
        tricklers.push(c);
    }
    let writers: Vec<TcpStream> = tricklers
        .iter()
        .map(|c| c.try_clone().expect("clone"))
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut writers = writers;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for w in &mut writers {
                    let _ = w.write_all(b" ");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };

    // /healthz and the API answer again once the tricklers' 2 s are up, although they keep
    // sending (before the fix, every byte bought another stall timeout: never).
    let health = wait_for("/healthz answers while bodies trickle", T, || {
        get(port, "127.0.0.1", "/healthz", "").filter(|r| r.status == 200)
    });
    assert!(health.body.contains("\"ok\""), "{}", health.body);
    let answered = started.elapsed();
    assert!(
        answered < Duration::from_secs(8),
        "/healthz answered within the body timeout (2 s) plus slack, not after the tricklers \
         gave up: {answered:?}"
    );
    let api = get(
        port,
        "127.0.0.1",
        "/api/v1/environments",
        &format!("Authorization: Bearer {token}\r\n"),
    )
    .expect("the API answers while bodies trickle");
    assert_eq!(api.status, 200, "the API answers: {}", api.body);

    // Every trickler is closed by the server, although it is still sending: those it took
    // were answered 408 at their deadline, the rest refused (503) or evicted before their
    // head was read.
    let deadline = started + Duration::from_secs(20);
    let (mut timed_out, mut refused) = (0, 0);
    for (i, c) in tricklers.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        c.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        let mut answer = Vec::new();
        let mut buf = [0u8; 512];
        let closed = loop {
            match c.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                // The server closed with the rest of the body unread: a reset.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        assert!(
            closed,
            "trickling connection {i} was closed by the server within its body timeout, though \
             it kept sending"
        );
        if answer.starts_with(b"HTTP/1.1 408") {
            timed_out += 1;
        } else if answer.starts_with(b"HTTP/1.1 503") {
            refused += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trickle.join().expect("trickler");
    assert!(
        (1..=64).contains(&timed_out),
        "the server took at most max_connections (64) tricklers and told them 408: \
         {timed_out} 408s, {refused} 503s"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "every trickler was gone within the body timeout plus slack"
    );
    drop(tricklers);
    drop(_server);
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

#[test]
fn clients_that_never_read_their_responses_cannot_hold_the_preview_share() {
    // 20 connections at most, so 10 requests in flight through preview URLs; a write the
    // client takes nothing of for 3 s ends its connection.
    let (s, _token) = setup("max_connections = 20\nwrite_timeout = \"3s\"\n");
    let (_server, port, host) = serve_dev(&s);

    // The attack: 10 requests for a large streamed response, never read. The buffers fill,
    // the response stops mid-way, and each request stays in flight with its permit.
    let mut floods = Vec::new();
    for _ in 0..10 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        write!(c, "GET /flood HTTP/1.1\r\nHost: {host}\r\n\r\n").expect("send");
        floods.push(c);
    }
    // Each has its response's head (peeked, not read): each holds a permit.
    for (i, f) in floods.iter().enumerate() {
        f.set_read_timeout(Some(T)).expect("timeout");
        let mut first = [0u8; 12];
        let n = f.peek(&mut first).expect("a response starts");
        assert_eq!(&first[..n], b"HTTP/1.1 200", "flood {i} is answered");
    }
    let held = Instant::now();
    let refused = get(port, &host, "/health", "").expect("a preview request is answered");
    assert_eq!(
        refused.status, 503,
        "the unread responses hold the whole preview share: {}",
        refused.body
    );
    // /healthz is not in the preview share.
    let health = get(port, "127.0.0.1", "/healthz", "").expect("/healthz answers");
    assert_eq!(health.status, 200);

    // Once the writes have stalled for 3 s the server closes those connections, their
    // permits are released, and the preview URL serves again (before the fix: never).
    let preview = wait_for("the preview URL serves again", T, || {
        get(port, &host, "/health", "").filter(|r| r.status == 200)
    });
    assert_eq!(preview.body, "ok");
    assert!(
        held.elapsed() < Duration::from_secs(10),
        "the unread responses were cut within the write timeout (3 s) plus slack: {:?}",
        held.elapsed()
    );
    drop(floods);
    drop(_server);
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

fn sql_count(s: &Sandbox, query: &str) -> i64 {
    let out = std::process::Command::new("sqlite3")
        .arg("-readonly")
        .arg(s.home.join("state.db"))
        .arg(query)
        .output()
        .expect("sqlite3 runs");
    assert!(
        out.status.success(),
        "{query}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{query} gives a number"))
}

/// Sends `n` copies of `request` (HTTP/1.1, kept alive) on one connection, reading each
/// response (they all carry a Content-Length).
fn hammer(port: u16, request: &str, n: usize) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut reader = std::io::BufReader::new(c.try_clone().expect("clone"));
    for i in 0..n {
        c.write_all(request.as_bytes()).expect("send");
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut reader, &mut line)
                .unwrap_or_else(|e| panic!("response {i}: {e}"));
            assert!(!line.is_empty(), "the server closed after {i} requests");
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("a length");
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).expect("body");
    }
}

/// Unsigned webhooks (anyone may post them) while the state is locked, as a CLI's apply holds
/// SQLite's write lock: each waits to record its refusal, and none of them holds a worker of
/// the server meanwhile. They used to, all of them: every other request waited five seconds
/// (SQLite's busy timeout) for each round of them.
#[test]
fn unsigned_webhooks_waiting_for_a_locked_state_do_not_stall_the_server() {
    use std::io::BufRead;
    let (s, _token) = setup("");
    let server = start_serve(&s);
    let port = server.port();
    let mut holder = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n\
             c.execute('BEGIN IMMEDIATE')\n\
             print('locked', flush=True)\n\
             sys.stdin.read()\n",
        ])
        .arg(s.home.join("state.db"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    std::io::BufReader::new(holder.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("the lock is taken");
    assert_eq!(line.trim(), "locked");
    // Sixteen at once (more than the server has workers), each sent whole before the read.
    const POSTS: usize = 16;
    let sent = Arc::new(std::sync::Barrier::new(POSTS + 1));
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let posts: Vec<_> = (0..POSTS)
        .map(|_| {
            let (sent, answered) = (sent.clone(), answered.clone());
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                c.write_all(
                    b"POST /webhooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                      Content-Type: application/json\r\nContent-Length: 2\r\n\
                      Connection: close\r\n\r\n{}",
                )
                .expect("send");
                sent.wait();
                let mut answer = Vec::new();
                let _ = c.read_to_end(&mut answer);
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        })
        .collect();
    sent.wait();
    // The server answers meanwhile, before any of them could record its refusal: with its
    // workers waiting on the store, it answered only once some gave up (a busy timeout).
    let page = get(port, "127.0.0.1", "/api/v1/openapi.json", "").expect("an answer");
    assert_eq!(page.status, 200);
    let before = answered.load(std::sync::atomic::Ordering::SeqCst);
    drop(holder.stdin.take());
    let _ = holder.wait();
    for post in posts {
        post.join().expect("the poster ends");
    }
    assert_eq!(
        before, 0,
        "answered while every webhook still waited for the store"
    );
}

#[test]
fn refused_requests_and_repeated_events_add_a_bounded_number_of_rows() {
    const SECRET: &str = "attack-webhook-secret";
    let (s, _token) = setup(
        "[forge.github]\nrepository = \"acme/shop\"\napi_url = \"http://127.0.0.1:9\"\nbot_login = \"slipway-bot\"\n",
    );
    // Rows from long ago (1970), past any retention, and one from now, within it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    let seeded = std::process::Command::new("sqlite3")
        .arg(s.home.join("state.db"))
        .arg(format!(
            "INSERT INTO audit (at, who, action, outcome, detail) VALUES (1000, 'old', 'x', 'ok', 'old'), ({now}, 'new', 'x', 'ok', 'new');\
             INSERT INTO events (environment, kind, message, data, at) VALUES (NULL, 'old.event', 'old', '{{}}', 1000);\
             INSERT INTO deliveries (id, received_at) VALUES ('github:old', 1000), ('github:new', {now});"
        ))
        .status()
        .expect("sqlite3 runs");
    assert!(seeded.success(), "old rows are seeded");
    let server = start_serve_with(
        &s,
        &[
            ("GITHUB_TOKEN", "test-token"),
            ("SLIPWAY_WEBHOOK_SECRET", SECRET),
        ],
    );
    let port = server.port();
    wait_for(
        "the controller prunes what is older than the retention on start",
        T,
        || {
            (sql_count(&s, "SELECT count(*) FROM audit WHERE who = 'old'") == 0
                && sql_count(&s, "SELECT count(*) FROM events WHERE kind = 'old.event'") == 0
                && sql_count(
                    &s,
                    "SELECT count(*) FROM deliveries WHERE id = 'github:old'",
                ) == 0)
                .then_some(())
        },
    );
    assert_eq!(
        sql_count(&s, "SELECT count(*) FROM audit WHERE who = 'new'")
            + sql_count(
                &s,
                "SELECT count(*) FROM deliveries WHERE id = 'github:new'"
            ),
        2,
        "rows within the retention stay"
    );
    wait_for("dev answers", T, || {
        get(port, &format!("dev.attack.localhost:{port}"), "/health", "")
            .filter(|r| r.status == 200)
    });
    let before = sql_count(&s, "SELECT count(*) FROM audit");

    // 5,000 calls with made-up tokens (on many routes' worth of targets), and 5,000 webhook
    // deliveries with a bad signature.
    let bad_token = std::thread::spawn(move || {
        for batch in 0..5 {
            hammer(
                port,
                &format!(
                    "GET /api/v1/environments/env-{batch} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer slw_made_up_{batch}\r\n\r\n"
                ),
                1000,
            );
        }
    });
    let bad_signature = std::thread::spawn(move || {
        hammer(
            port,
            "POST /webhooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: 1\r\nX-Hub-Signature-256: sha256=0000000000000000000000000000000000000000000000000000000000000000\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            5000,
        );
    });
    bad_token.join().expect("the bad-token calls ran");
    bad_signature.join().expect("the bad-signature calls ran");
    let added = sql_count(&s, "SELECT count(*) FROM audit") - before;
    let counted = sql_count(
        &s,
        "SELECT coalesce(sum(count), 0) FROM audit WHERE outcome = 'refused'",
    );
    assert!(
        added <= 10,
        "10,000 refused requests add a bounded number of audit rows (one per reason a minute), not {added}"
    );
    assert!(
        counted >= 10_000,
        "the rows still count every refusal: {counted}"
    );

    // An invalid commit on the default branch is seen on every poll (300ms) and drift tick
    // (500ms): it is recorded once.
    s.write(
        "slipway.yaml",
        "version: 1\nstack: attack\nresources: {web: {type: nope}}\n",
    );
    let bad = s.commit("an invalid stack");
    let invalid = format!(
        "SELECT count(*) FROM events WHERE kind = 'commit.invalid' AND json_extract(data, '$.commit') = '{bad}'"
    );
    wait_for("the invalid commit is reported", T, || {
        (sql_count(&s, &invalid) > 0).then_some(())
    });
    // Let at least 15 polls and drift ticks pass, counted by the controller's own reconciles.
    let reconciles = |s: &Sandbox| {
        sql_count(
            s,
            "SELECT count(*) FROM events WHERE kind = 'commit.invalid'",
        )
    };
    let polls = |port: u16| -> u64 {
        get(port, "127.0.0.1", "/metrics", "")
            .map(|r| {
                r.body
                    .lines()
                    .filter(|l| l.starts_with("slipway_reconcile_duration_seconds_count"))
                    .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
                    .sum::<f64>() as u64
            })
            .unwrap_or(0)
    };
    let start = polls(port);
    wait_for("15 more reconciles of dev ran", T, || {
        (polls(port) >= start + 15).then_some(())
    });
    assert_eq!(
        reconciles(&s),
        sql_count(&s, &invalid),
        "only the invalid commit was reported"
    );
    let engine_wide = sql_count(&s, &format!("{invalid} AND environment IS NULL"));
    let for_dev = sql_count(&s, &format!("{invalid} AND environment = 'dev'"));
    assert!(
        engine_wide <= 1 && for_dev <= 1,
        "the invalid commit is recorded once (engine-wide {engine_wide}, dev {for_dev}), not once per poll"
    );
    drop(server);
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

#[test]
fn the_web_ui_links_the_preview_url_and_never_a_process_raw_address() {
    use util::browser::Browser;
    const PAGE: Duration = Duration::from_secs(30);
    let (s, token) = setup("");
    let (server, port, host) = serve_dev(&s);
    let raw_url = web_outputs(port, &token)["url"]
        .as_str()
        .expect("a url output")
        .to_string();
    let browser = Browser::start(
        &s.dir.path().join("browser"),
        &format!("http://{}", server.addr),
    );
    browser.goto("/");
    browser.wait_until_exists("the login form is shown", PAGE, "#login #token");
    browser.fill("#token", &token);
    browser.click("#login-submit");
    browser.wait_for("the admin is logged in", PAGE, |b| {
        (b.text("#who-name").as_deref() == Some("test")).then_some(())
    });
    browser.goto("/#/env/dev");
    browser.wait_until_exists(
        "the resources of dev are shown",
        PAGE,
        "#resources tr[data-resource=web]",
    );
    let outputs = browser
        .text("#resources tr[data-resource=web] [data-col=outputs]")
        .unwrap_or_default();
    assert!(
        outputs.contains(&raw_url),
        "the raw address is shown as text: {outputs:?}"
    );
    let hrefs = browser.js(
        "return [...document.querySelectorAll('a[href]')].map((a) => a.href);",
        vec![],
    );
    let hrefs: Vec<String> = hrefs
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    assert!(
        !hrefs.iter().any(|h| h.starts_with(&raw_url)
            || h.starts_with("http://127.0.0.1:")
                && !h.starts_with(&format!("http://{}", server.addr))),
        "no link leads to a process's own address (the session cookie would go along): {hrefs:?}"
    );
    assert!(
        hrefs.contains(&format!("http://{host}/")),
        "the preview URL, through the router, is linked: {hrefs:?}"
    );
    drop(browser);
    drop(server);
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}
