//! The router across restarts (`slipway serve --router`, docs/previews.md): a real `serve`,
//! its router process and a real application; a loop of requests to a preview URL while
//! `serve` is stopped, killed and started again sees no failure, and the API, event streams
//! and the router's files behave as a user and a stranger would find them.

mod util;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use util::*;

const T: Duration = Duration::from_secs(60);

const STACK: &str = r#"version: 1
stack: shop
environments:
  main: { track: main }
resources:
  web:
    type: process
    command: ["python3", "-m", "http.server", "${ports.http}", "--bind", "127.0.0.1"]
    ports: [http]
    health: { http: /greeting.txt }
    expose: http
"#;

/// Waits until `probe` holds, at most `timeout` (the shared `wait_for`, for a yes/no probe).
fn wait_until(what: &str, timeout: Duration, mut probe: impl FnMut() -> bool) {
    wait_for(what, timeout, || probe().then_some(()));
}

fn serve_command(s: &Sandbox) -> Command {
    let url = format!("file://{}", s.repo.display());
    s.cmd(&[
        "serve",
        "--repo",
        &url,
        "--listen",
        "127.0.0.1:0",
        "--router",
    ])
}

fn start(s: &Sandbox) -> (Server, Arc<Mutex<Vec<String>>>) {
    serve_from(serve_command(s), T)
}

/// The pid the running router wrote in its lock file.
fn router_pid(s: &Sandbox) -> i32 {
    let text = std::fs::read_to_string(s.home.join("run/router/router.lock")).expect("lock");
    text.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the lock file holds the router's pid")
}

fn page(port: u16) -> Option<String> {
    http_get_host(port, "main.shop.localhost", "/greeting.txt")
}

/// A sandbox serving `main` (`greeting.txt` = `v1`) through a router: the server and its port.
fn served() -> (Sandbox, Server, u16) {
    let s = Sandbox::new();
    s.write("slipway.yaml", STACK)
        .write("greeting.txt", "v1")
        .commit("v1");
    let (server, _) = start(&s);
    let port = server.port();
    wait_until("main serves v1 through the router", T, || {
        page(port).as_deref() == Some("v1")
    });
    (s, server, port)
}

/// Requests to the preview URL in a loop, counting answers and failures, until stopped.
struct Loop {
    answered: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Loop {
    fn start(port: u16) -> Loop {
        let answered = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (answered, failed, stop) = (answered.clone(), failed.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match page(port) {
                        Some(body) if body == "v1" => {
                            answered.fetch_add(1, Ordering::AcqRel);
                        }
                        other => failed.lock().expect("failed").push(format!("{other:?}")),
                    }
                }
            })
        };
        Loop {
            answered,
            failed,
            stop,
            thread: Some(thread),
        }
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::Acquire)
    }

    /// Waits until `more` requests were answered from now on.
    fn crosses(&self, more: usize, what: &str) {
        let from = self.answered();
        wait_until(what, T, || self.answered() >= from + more);
    }

    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the loop");
        }
        let failed = self.failed.lock().expect("failed").clone();
        (self.answered(), failed)
    }
}

#[test]
fn preview_requests_never_fail_across_a_term_and_a_kill_9_of_serve() {
    let (s, mut server, port) = served();
    let token = role_token(&s, "viewer");
    let router = router_pid(&s);
    let running = Process::of(router).expect("the router runs");
    let requests = Loop::start(port);
    requests.crosses(20, "the loop runs with serve up");

    // A clean stop: serve goes, the router and the preview stay.
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    server.child.wait().expect("serve stops on SIGTERM");
    requests.crosses(20, "preview requests are answered while serve is stopped");
    // An API request made now is held until a serve answers it, not refused.
    let addr = server.addr.clone();
    let held = {
        let (addr, token) = (addr.clone(), token.clone());
        std::thread::spawn(move || api_request(&addr, "GET", "/api/v1/environments", &token, None))
    };
    requests.crosses(5, "the held request waits");
    let (mut server, lines) = start(&s);
    assert_eq!(
        server.port(),
        port,
        "the restarted serve is behind the same router"
    );
    assert!(
        lines
            .lock()
            .expect("lines")
            .iter()
            .any(|l| l.contains("the router already running")),
        "serve says it found the router: {:?}",
        lines.lock().expect("lines")
    );
    let (status, body) = held.join().expect("the held request");
    assert_eq!(
        status, 200,
        "an API request made while serve was down is answered once it is back: {body}"
    );
    requests.crosses(20, "the loop runs with the second serve");

    // A kill -9: every connection serve had goes with it; none of them was a preview's.
    server.child.kill().expect("kill -9");
    server.child.wait().expect("reaped");
    requests.crosses(20, "preview requests are answered while serve is dead");
    let held = {
        let (addr, token) = (addr.clone(), token.clone());
        std::thread::spawn(move || api_request(&addr, "GET", "/api/v1/environments", &token, None))
    };
    requests.crosses(5, "the held request waits");
    let (_server, _) = start(&s);
    let (status, body) = held.join().expect("the held request");
    assert_eq!(status, 200, "the API answers again after a kill -9: {body}");
    requests.crosses(20, "the loop runs with the third serve");

    let (answered, failed) = requests.finish();
    assert!(
        failed.is_empty(),
        "no request to the preview URL failed across a stop and a kill -9 of serve \
         ({answered} answered): {failed:?}"
    );
    assert!(
        answered >= 125,
        "the loop crossed both restarts: {answered}"
    );
    assert_eq!(router_pid(&s), router, "one router served throughout");
    assert!(running.runs(), "the router is still running");
}

#[test]
fn event_streams_pass_through_the_router_and_its_sockets_are_the_engine_users_alone() {
    let (s, server, port) = served();
    let token = role_token(&s, "viewer");

    // Server-sent events through the router: the replayed events arrive as a stream.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "GET /api/v1/events?after=0 HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
        server.addr
    )
    .expect("send");
    let mut seen = Vec::new();
    let deadline = Instant::now() + T;
    while !String::from_utf8_lossy(&seen).contains("\ndata:") {
        assert!(Instant::now() < deadline, "an event arrives");
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).expect("read the stream");
        assert!(
            n > 0,
            "the stream stays open: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    let seen = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    assert!(seen.starts_with("http/1.1 200"), "{seen}");
    assert!(seen.contains("content-type: text/event-stream"), "{seen}");

    // Only the engine's user reaches the socket serve trusts.
    let dir = s.home.join("run/router");
    let meta = std::fs::metadata(&dir).expect("the router's directory");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o700,
        "strangers cannot enter the router's directory"
    );
    assert_eq!(meta.uid(), nix_uid(), "it is the engine user's");
    assert!(
        dir.join("serve.sock").exists(),
        "serve's socket is inside it"
    );

    // The router stops by itself once its home is gone.
    let router = Process::of(router_pid(&s)).expect("the router runs");
    drop(server);
    std::fs::remove_dir_all(&s.home).expect("remove the home");
    wait_until("the router of a removed home stops", T, || !router.runs());
}

fn nix_uid() -> u32 {
    std::fs::metadata("/proc/self").expect("proc").uid()
}

#[test]
fn a_killed_router_is_started_again_by_serve_on_the_same_port_and_a_second_serve_is_refused() {
    let (s, _server, port) = served();
    let first = router_pid(&s);
    let status = Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    wait_until("a new router serves the preview URL again", T, || {
        alive_router(&s).is_some_and(|pid| pid != first) && page(port).as_deref() == Some("v1")
    });

    // A second serve on the same home would take the first one's socket from it.
    let out = serve_command(&s).output().expect("a second serve");
    assert!(
        !out.status.success(),
        "a second serve behind one router is refused"
    );
    assert!(
        text(&out).contains("another `slipway serve` runs behind this home's router"),
        "it says why: {}",
        text(&out)
    );
    assert_eq!(
        page(port).as_deref(),
        Some("v1"),
        "the first one still serves"
    );
}

/// The pid of the router now running for the sandbox's home (its lock file's, once a live
/// process holds it).
fn alive_router(s: &Sandbox) -> Option<i32> {
    let text = std::fs::read_to_string(s.home.join("run/router/router.lock")).ok()?;
    let pid: i32 = text.split_whitespace().next()?.parse().ok()?;
    Process::of(pid).map(|_| pid)
}
