//! Sleep and wake end to end (issue 15): a real `slipway serve`, a real process behind its
//! preview URL, real HTTP. A preview stops after `sleep_after` without a request, keeps its
//! files, and the next request (its body intact) wakes it; a person does the same by hand. One
//! with `idle_ttl` is kept while visited, and destroyed when left alone, warned of first.

mod util;

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{Value, json};
use util::*;

const T: Duration = Duration::from_secs(60);

/// An HTTP service that counts its starts in the environment's data directory and answers
/// `POST` with the body it read.
const APP: &str = r#"import os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
starts = os.path.join(os.environ["SLIPWAY_DATA_DIR"], "starts.txt")
with open(starts, "a") as f:
    f.write(f"{os.getpid()}\n")
class Handler(BaseHTTPRequestHandler):
    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        with open(starts) as f:
            count = len(f.read().split())
        self.answer(f"pid={os.getpid()} starts={count}\n".encode())
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.answer(b"got " + body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

fn stack(sleep_after: &str) -> String {
    format!(
        r#"version: 1
stack: nap
environments:
  dev: {{ track: main }}
  previews: {{ generate: {{ branches: ["feature/*"] }}, sleep_after: {sleep_after}, access: public }}
resources:
  notes: {{ type: file, path: notes.txt, content: "kept while asleep" }}
  web:
    type: process
    command: ["python3", "app.py", "${{ports.http}}"]
    ports: [http]
    health: {{ http: /healthz }}
    expose: http
"#
    )
}

/// A sandbox whose `main` has the stack, and a branch `feature/a` (environment
/// `br-feature-a`) of it; a running server and an admin token.
fn world(sleep_after: &str) -> (Sandbox, Server, String) {
    let s = Sandbox::new();
    s.write("app.py", APP);
    s.write("slipway.yaml", &stack(sleep_after));
    s.commit("stack");
    git(&s.repo, &["branch", "feature/a"]);
    util::world::append_config(
        &s,
        "[repo]\npoll_interval = \"300ms\"\n[controller]\ndrift_interval = \"500ms\"\n",
    );
    let token = named_token(&s, "admin", "test");
    let server = start_serve(&s);
    (s, server, token)
}

const ENV: &str = "br-feature-a";

fn environment(server: &Server, token: &str) -> Value {
    let env = generated(server, token);
    assert!(env.is_some(), "the preview {ENV} exists");
    env.unwrap_or_default()
}

/// The preview's record once the controller generated it (its branch is discovered by a
/// poll, so a test that has just pushed waits for it rather than assumes it).
fn generated(server: &Server, token: &str) -> Option<Value> {
    let (code, env) = api_request(
        &server.addr,
        "GET",
        &format!("/api/v1/environments/{ENV}"),
        token,
        None,
    );
    match code {
        200 => Some(env),
        404 => None,
        _ => panic!("the environment is readable: {code} {env}"),
    }
}

/// The environment's web process while it runs.
fn web_pid(s: &Sandbox) -> Option<Process> {
    Process::recorded(&supervisor_state(&s.home, ENV, "web")?["child"])
}

/// `METHOD /path` through the preview URL with `body`: (status, body).
fn preview(server: &Server, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(&server.addr).expect("connect to the router");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("a timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {ENV}.nap.localhost:{}\r\nContent-Length: {}\r\n\r\n{body}",
        server.port(),
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

fn wait_asleep(server: &Server, token: &str, what: &str) -> Value {
    wait_for(what, T, || {
        let env = generated(server, token)?;
        (env["activity"] == "sleeping").then_some(env)
    })
}

#[test]
fn a_preview_sleeps_when_unused_and_a_request_wakes_it_with_its_body_and_files_intact() {
    let (s, server, token) = world("2s");
    let first = wait_for("the preview runs its web process", T, || web_pid(&s));
    let data = s.home.join("envs").join(ENV).join("data");

    // No request for two seconds: its process stops; its files stay; it says so.
    let env = wait_asleep(&server, &token, "the unused preview falls asleep");
    wait_for("its process is gone", T, || (!first.runs()).then_some(()));
    assert_ne!(
        env["health"], "degraded",
        "a sleeping environment is not degraded: {env}"
    );
    let web = env["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["name"] == "web")
        .expect("web")
        .clone();
    assert_eq!(
        web["status"], "ready",
        "its process shows as it will be: {web}"
    );
    assert!(
        std::fs::read_to_string(data.join("notes.txt")).is_ok_and(|t| t == "kept while asleep"),
        "its files stay while it sleeps"
    );
    let status = s.json(&["status", "--env", ENV, "--output", "json"]);
    assert_eq!(
        status_environment(&status, ENV).expect("listed")["activity"],
        "sleeping",
        "`slipway status` shows it asleep: {status}"
    );
    let dev = status_environment(&s.json(&["status", "--output", "json"]), "dev")
        .expect("dev")
        .clone();
    assert_eq!(
        dev["activity"], "awake",
        "a static environment without sleep_after never sleeps"
    );

    // A POST with a body wakes it; the application reads the body.
    let (code, body) = preview(&server, "POST", "/echo", "hello sleepy");
    assert_eq!(
        (code, body.as_str()),
        (200, "got hello sleepy"),
        "the held request is answered once it woke"
    );
    let woken = web_pid(&s).expect("a process again");
    assert_ne!(woken, first, "a new process serves");
    let (_, page) = preview(&server, "GET", "/", "");
    assert!(
        page.contains("starts=2"),
        "its data directory survived the sleep (the app counts its starts there): {page}"
    );

    // Asleep again; ten requests at once during the wake are all answered, by one wake.
    wait_asleep(&server, &token, "it falls asleep again");
    let answers: Vec<(u16, String)> = std::thread::scope(|scope| {
        let running: Vec<_> = (0..10)
            .map(|i| {
                let server = &server;
                scope.spawn(move || preview(server, "POST", "/", &format!("request {i}")))
            })
            .collect();
        running
            .into_iter()
            .map(|t| t.join().expect("a request thread"))
            .collect()
    });
    for (i, (code, body)) in answers.iter().enumerate() {
        assert_eq!(
            (*code, body.as_str()),
            (200, format!("got request {i}").as_str()),
            "every request during a wake is answered: {answers:?}"
        );
    }
    let (_, page) = preview(&server, "GET", "/", "");
    assert!(
        page.contains("starts=3"),
        "the concurrent requests joined one wake (one start more): {page}"
    );
    let kinds = event_kinds(&s);
    assert!(
        kinds.iter().any(|k| k == "environment.slept")
            && kinds.iter().any(|k| k == "environment.woke"),
        "sleeping and waking are events: {kinds:?}"
    );

    // A host that names no environment costs nothing and wakes nothing.
    let (code, _) = preview_host(&server, "nobody.nap.localhost");
    assert_eq!(code, 404, "an unknown preview host is a 404");
    drop(server);
    s.ok(&["destroy", "--env", ENV, "--yes"]);
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

/// The kinds of the environment's events, oldest first, from the state.
fn event_kinds(s: &Sandbox) -> Vec<String> {
    let store = slipway_state::Store::open(&s.home).expect("open the store");
    store
        .events(&slipway_state::EventQuery {
            environment: Some(slipway_core::EnvName::parse(ENV).expect("a name")),
            after_id: None,
            limit: 1000,
        })
        .expect("events")
        .into_iter()
        .map(|e| e.kind.to_string())
        .collect()
}

fn preview_host(server: &Server, host: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(&server.addr).expect("connect");
    write!(stream, "GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").expect("send");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, answer)
}

#[test]
fn a_person_puts_an_environment_to_sleep_and_wakes_it_by_hand() {
    let (s, server, token) = world("1h");
    let first = wait_for("the preview runs its web process", T, || web_pid(&s));
    wait_for("the preview is synced", T, || {
        (environment(&server, &token)["sync"] == "synced").then_some(())
    });

    // The CLI on the home, JSON out.
    let slept = s.json(&["env", "sleep", ENV, "--output", "json"]);
    assert_eq!(
        status_environment(&slept, ENV).expect("shown")["activity"],
        "sleeping",
        "`env sleep` answers with it asleep: {slept}"
    );
    assert!(
        !first.runs(),
        "its process is stopped when `env sleep` returns"
    );
    assert!(
        s.home
            .join("envs")
            .join(ENV)
            .join("data/notes.txt")
            .exists(),
        "its files stay"
    );

    // A viewer may not; a developer may (a generated environment), through the API.
    let viewer = named_token(&s, "viewer", "viewer");
    let (code, _) = api_request(
        &server.addr,
        "POST",
        &format!("/api/v1/environments/{ENV}/wake"),
        &viewer,
        Some(json!({})),
    );
    assert_eq!(code, 403, "a viewer cannot wake an environment by hand");
    let developer = named_token(&s, "developer", "developer");
    let url = format!("http://{}", server.addr);
    let woken = s.json(&["--server", &url, "--token", &developer, "env", "wake", ENV]);
    assert_eq!(
        woken["activity"], "awake",
        "the API answers once it is awake: {woken}"
    );
    let pid = web_pid(&s).expect("a process again");
    assert!(pid.runs() && pid != first, "a new process runs");
    let (code, page) = preview(&server, "GET", "/", "");
    assert_eq!(code, 200, "it serves at once: {page}");

    // Asleep by hand through the API; a static environment needs a deployer.
    let (code, env) = api_request(
        &server.addr,
        "POST",
        &format!("/api/v1/environments/{ENV}/sleep"),
        &developer,
        Some(json!({})),
    );
    assert_eq!((code, &env["activity"]), (200, &json!("sleeping")), "{env}");
    let (code, _) = api_request(
        &server.addr,
        "POST",
        "/api/v1/environments/dev/sleep",
        &developer,
        Some(json!({})),
    );
    assert_eq!(
        code, 403,
        "a developer cannot put a static environment to sleep"
    );
    let (code, body) = api_request(
        &server.addr,
        "POST",
        &format!("/api/v1/environments/{ENV}/sleep"),
        &developer,
        Some(json!({"now": true})),
    );
    assert_eq!(code, 400, "an unknown field is refused: {body}");
    let (code, _) = api_request(
        &server.addr,
        "POST",
        "/api/v1/environments/no-such-env/wake",
        &token,
        Some(json!({})),
    );
    assert_eq!(
        code, 404,
        "waking an environment that does not exist is a 404"
    );

    // The CLI wakes it on the home too.
    let woken = s.json(&["env", "wake", ENV, "--output", "json"]);
    assert_eq!(
        status_environment(&woken, ENV).expect("shown")["activity"],
        "awake",
        "{woken}"
    );
    let (code, _) = preview(&server, "GET", "/", "");
    assert_eq!(code, 200, "awake, it serves");
    drop(server);
    s.ok(&["destroy", "--env", ENV, "--yes"]);
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

#[test]
fn an_unused_preview_is_destroyed_after_idle_ttl_with_a_warning_first_and_requests_keep_it() {
    let s = Sandbox::new();
    s.write("app.py", APP);
    s.write(
        "slipway.yaml",
        &stack("1h").replace("sleep_after: 1h", "idle_ttl: 4s"),
    );
    s.commit("stack");
    git(&s.repo, &["branch", "feature/a"]);
    util::world::append_config(
        &s,
        "[repo]\npoll_interval = \"300ms\"\n[controller]\ndrift_interval = \"500ms\"\n",
    );
    let token = named_token(&s, "admin", "test");
    let server = start_serve(&s);
    // Its process may run before the deployment that starts it is recorded: the preview URL
    // answers once it is.
    wait_for("the preview URL answers", T, || {
        (preview(&server, "GET", "/", "").0 == 200).then_some(())
    });

    // Visited every 300 ms for twice its idle_ttl: kept (its idle time never nears 4 s).
    let until = std::time::Instant::now() + Duration::from_secs(8);
    while std::time::Instant::now() < until {
        let (code, body) = preview(&server, "GET", "/", "");
        assert_eq!(code, 200, "a preview in use is kept: {body}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(environment(&server, &token)["name"], ENV);

    // Left alone: warned, then destroyed, its process gone.
    let pid = web_pid(&s).expect("it runs");
    wait_for("the unused preview is destroyed", T, || {
        let (code, _) = api_request(
            &server.addr,
            "GET",
            &format!("/api/v1/environments/{ENV}"),
            &token,
            None,
        );
        (code == 404).then_some(())
    });
    wait_for("its process is gone", T, || (!pid.runs()).then_some(()));
    let kinds = event_kinds(&s);
    let warned = kinds.iter().position(|k| k == "environment.idle");
    let expired = kinds.iter().position(|k| k == "environment.expired");
    assert!(
        matches!((warned, expired), (Some(w), Some(e)) if w < e),
        "a warning comes before the idle expiry: {kinds:?}"
    );
    drop(server);
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

/// A branch does not decide how long its own preview may idle: its commit lengthening the
/// family's `sleep_after` (or dropping it) leaves the default branch's in force.
#[test]
fn a_branch_cannot_lengthen_its_own_sleep_after() {
    let (s, server, token) = world("2s");
    git(&s.repo, &["checkout", "-q", "feature/a"]);
    s.write(
        "slipway.yaml",
        &stack("1000d").replace("stack: nap", "stack: nap\n# longer"),
    );
    let head = s.commit("sleep later, please");
    git(&s.repo, &["checkout", "-q", "main"]);
    let env = wait_for("the preview runs the branch's commit", T, || {
        let env = generated(&server, &token)?;
        (env["commit"] == head.as_str() && env["sync"] == "synced").then_some(env)
    });
    assert_eq!(env["activity"], "awake", "{env}");
    wait_asleep(
        &server,
        &token,
        "the preview sleeps after the default branch's 2s, not its own 1000d",
    );
}

/// [`APP`], but every start after the first takes two minutes before it listens: a wake that
/// the branch's own code makes slow.
const SLOW_TO_WAKE_APP: &str = r#"import os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
starts = os.path.join(os.environ["SLIPWAY_DATA_DIR"], "starts.txt")
if os.path.exists(starts):
    time.sleep(120)
with open(starts, "a") as f:
    f.write(f"{os.getpid()}\n")
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

/// Anyone who can reach a preview URL can make requests wait for its wake, up to a minute
/// each, and the branch's code decides how slowly it wakes. Those requests wait within the
/// preview share (half of `max_connections`): past it they are refused at once, and
/// `/healthz` and the API still answer while a slow wake holds the rest.
#[test]
fn requests_waiting_for_a_slow_wake_cannot_hold_every_connection() {
    let s = Sandbox::new();
    s.write("app.py", SLOW_TO_WAKE_APP);
    s.write("slipway.yaml", &stack("1h"));
    s.commit("stack");
    git(&s.repo, &["branch", "feature/a"]);
    util::world::append_config(
        &s,
        "[repo]\npoll_interval = \"300ms\"\n[controller]\ndrift_interval = \"500ms\"\n\
         [server]\nmax_connections = 20\nheader_timeout = \"2s\"\n",
    );
    let token = named_token(&s, "admin", "test");
    let server = start_serve(&s);
    wait_for("the preview runs its web process", T, || web_pid(&s));
    wait_for("the preview is synced", T, || {
        (environment(&server, &token)["sync"] == "synced").then_some(())
    });
    s.json(&["env", "sleep", ENV, "--output", "json"]);

    // The attack: 20 requests to the sleeping preview, one per connection.
    let (answered, answers) = std::sync::mpsc::channel();
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut c = std::net::TcpStream::connect(&server.addr).expect("connect");
        write!(
            c,
            "GET / HTTP/1.1\r\nHost: {ENV}.nap.localhost:{}\r\n\r\n",
            server.port()
        )
        .expect("send");
        let mut reader = c.try_clone().expect("clone");
        let answered = answered.clone();
        std::thread::spawn(move || {
            reader
                .set_read_timeout(Some(Duration::from_secs(150)))
                .expect("a timeout");
            let mut status = [0u8; 12];
            let line = reader
                .read_exact(&mut status)
                .map(|()| String::from_utf8_lossy(&status).into_owned());
            let _ = answered.send(line.unwrap_or_else(|e| format!("no answer: {e}")));
        });
        held.push(c);
    }
    // Half are refused at once; the other half wait for the wake, which is slow.
    let mut refused = 0;
    while refused < 10 {
        let answer = answers
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("only {refused} requests were answered at once"));
        assert_eq!(
            answer, "HTTP/1.1 503",
            "a request past the share is refused"
        );
        refused += 1;
    }
    assert!(
        answers.recv_timeout(Duration::from_secs(1)).is_err(),
        "the other ten wait for the wake"
    );
    // Meanwhile the server answers everyone else.
    let health = wait_for("/healthz answers while requests wait for a wake", T, || {
        http_get_host(server.port(), "127.0.0.1", "/healthz")
    });
    assert!(health.contains("\"ok\""), "{health}");
    assert_eq!(
        environment(&server, &token)["name"],
        ENV,
        "the API answers too"
    );
    drop(held);
}
