//! Preview URLs with two `slipway serve` replicas on one PostgreSQL state: an environment's
//! process runs on the node of the replica that holds it, and the other replica's router
//! forwards its preview requests there (`[local] advertise`), whole and streaming, never twice,
//! and without passing Slipway's credentials on; without an advertised address it answers an
//! error naming the replica to ask instead. A sleeping environment is woken on its node by a
//! request to the other replica.
//!
//! Both replicas run on this machine, so the other replica could reach the process's port on
//! the loopback interface itself: the tests check that it does not (its forward shows in the
//! application's `X-Forwarded-For`, and without `advertise` it answers an error).

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use slipway_testkit::pg::TestDatabase;
use util::replicas::*;
use util::*;

const T: Duration = Duration::from_secs(60);

/// The application: `/hello` answers a greeting, `/echo` the request's headers as JSON,
/// `POST /body` the body it got (with the method and path in `X-Seen`), `/upgrade` switches to
/// `x-echo` and echoes bytes back.
const APP: &str = r#"
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, body, extra=()):
        self.send_response(200)
        for name, value in extra:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            self.reply(b"ok")
        elif self.path == "/hello":
            self.reply(b"hello from the app")
        elif self.path == "/echo":
            headers = {}
            for name, value in self.headers.items():
                headers.setdefault(name.lower(), []).append(value)
            self.reply(json.dumps(headers).encode())
        elif self.path == "/upgrade":
            self.send_response(101)
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", "x-echo")
            self.end_headers()
            self.wfile.flush()
            while True:
                data = self.connection.recv(4096)
                if not data:
                    break
                self.connection.sendall(data)
            self.close_connection = True
        else:
            self.send_error(404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        self.reply(body, [("X-Seen", self.command + " " + self.path)])

    def log_message(self, *args):
        pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), App).serve_forever()
"#;

const STACK: &str = r#"version: 1
stack: pv
environments:
  dev: { track: main }
resources:
  web:
    type: process
    command: ["python3", "app.py", "${ports.http}"]
    ports: [http]
    expose: http
    health: { http: /health, port: http }
"#;

/// Two replicas, r1 and r2, on one PostgreSQL state (1 s leases), serving the stack above;
/// `local` is added to `[local]` of both. `holder` is the replica whose node runs `dev`,
/// `other` the one that does not.
struct Pair {
    s: Sandbox,
    database: TestDatabase,
    holder: (String, Server),
    other: (String, Server),
    logs: Vec<(String, std::sync::Arc<std::sync::Mutex<Vec<String>>>)>,
    /// The first replica's admin token, for the API of either.
    token: String,
}

impl Pair {
    fn start(local: &str) -> Pair {
        Pair::start_with(local, STACK)
    }

    /// [`Pair::start`] serving `stack`.
    fn start_with(local: &str, stack: &str) -> Pair {
        Pair::start_serving(local, stack, &[])
    }

    /// [`Pair::start_with`], each `serve` given `extra` arguments.
    fn start_serving(local: &str, stack: &str, extra: &[&str]) -> Pair {
        let database = TestDatabase::create("slipway_preview_replicas");
        let s = Sandbox::new();
        if !local.is_empty() {
            s.with_local(local);
        }
        s.write("app.py", APP).write("slipway.yaml", stack);
        s.commit("an application with a preview URL");
        let command = |name: &str| {
            let config = replica_config(&s, &database, ReplicaSettings::named(name));
            let home = replica_home(&s, name);
            let mut command = serve_command(&s, &home, &config);
            command.args(extra);
            (home.clone(), command)
        };
        // The first replica makes the state's key; the second gets a copy, as an operator
        // would.
        let (home1, command1) = command("r1");
        let (r1, log1) = serve_from(command1, T);
        let (home2, command2) = command("r2");
        wait_for("r1 makes the state key", T, || {
            home1.join("state.key").is_file().then_some(())
        });
        std::fs::copy(home1.join("state.key"), home2.join("state.key")).expect("copy the key");
        let token = std::fs::read_to_string(home1.join("admin-token"))
            .expect("the first token")
            .trim()
            .to_owned();
        let (r2, log2) = serve_from(command2, T);
        let logs = vec![("r1".to_owned(), log1), ("r2".to_owned(), log2)];
        let explain = || {
            let mut text = format!("leases: {:?}", holders(&database));
            for (name, log) in &logs {
                text.push_str(&format!(
                    "\n--- {name}\n{}",
                    log.lock().expect("log").join("\n")
                ));
            }
            text
        };
        let holder = slipway_testkit::wait::wait_for_explained(
            "a replica runs dev and serves its preview URL",
            T,
            explain,
            || {
                let (_, holder) = holders(&database).into_iter().find(|(e, _)| e == "dev")?;
                let server = if holder == "r1" { &r1 } else { &r2 };
                // A token lets it in whether the stack makes dev private or not.
                let bearer = format!("Authorization: Bearer {token}\r\n");
                let reply = get(server.port(), "/hello", &bearer)?;
                (reply.status == 200).then_some(holder)
            },
        );
        let (holder, other) = if holder == "r1" {
            (("r1".to_owned(), r1), ("r2".to_owned(), r2))
        } else {
            (("r2".to_owned(), r2), ("r1".to_owned(), r1))
        };
        Pair {
            s,
            database,
            holder,
            other,
            logs,
            token,
        }
    }

    /// Both replicas' logs, for an assertion's message.
    fn explain(&self) -> String {
        self.logs
            .iter()
            .map(|(name, log)| format!("--- {name}\n{}", log.lock().expect("log").join("\n")))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A response read whole from a connection the server closes after it.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    /// The values of header `name` (case-insensitive).
    fn header(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    /// The body as JSON.
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("JSON ({e}): {self:?}"))
    }
}

/// Sends `head` (a request's head without its blank line; `Host` and `Connection: close` are
/// added) and `body` to the replica on `port`, and reads the response until it closes.
fn send(port: u16, head: &str, body: &[u8]) -> Option<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let request = format!("{head}Host: dev.pv.localhost:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).ok()?;
    s.write_all(body).ok()?;
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

/// `GET path` of dev's preview URL on the replica on `port`, with the header lines `extra`.
fn get(port: u16, path: &str, extra: &str) -> Option<Reply> {
    send(port, &format!("GET {path} HTTP/1.1\r\n{extra}"), b"")
}

#[test]
fn every_replica_shows_an_environment_on_another_node_as_its_holder_sees_it() {
    let pair = Pair::start("advertise = \"127.0.0.1\"");
    let status_through = |server: &Server| {
        let (code, status) = api_request(
            &server.addr,
            "GET",
            "/api/v1/environments/dev",
            &pair.token,
            None,
        );
        assert_eq!(code, 200, "{status}");
        let web = status["resources"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == "web"))
            .map(|web| web["status"].as_str().unwrap_or("").to_owned());
        (
            status["health"].as_str().unwrap_or("").to_owned(),
            web,
            status,
        )
    };
    slipway_testkit::wait::wait_for_explained(
        "the holder records dev deployed and healthy",
        T,
        || pair.explain(),
        || {
            let (health, web, _) = status_through(&pair.holder.1);
            (health == "healthy" && web.as_deref() == Some("ready")).then_some(())
        },
    );
    // The process runs on the holder's node only: the other replica finds nothing of it on its
    // own (its home has no trace of it), and must not call it missing or the environment
    // degraded for that.
    let (health, web, status) = status_through(&pair.other.1);
    assert_eq!(
        (health.as_str(), web.as_deref()),
        ("healthy", Some("ready")),
        "through {}: {status}\n{}",
        pair.other.0,
        pair.explain()
    );
    assert_eq!(status["replica"].as_str(), Some(pair.holder.0.as_str()));
}

#[test]
fn every_replica_answers_a_preview_url_forwarding_to_the_replica_whose_node_runs_it() {
    let pair = Pair::start("advertise = \"127.0.0.1\"");
    let (holder, at_holder) = (&pair.holder.0, pair.holder.1.port());
    let (other, at_other) = (&pair.other.0, pair.other.1.port());

    // Each replica's heartbeat records its listener as `[local] advertise` names its host.
    let expected = |name: &str, port: u16| (name.to_owned(), Some(format!("127.0.0.1:{port}")));
    let mut want = vec![expected(holder, at_holder), expected(other, at_other)];
    want.sort();
    let advertised = || -> Vec<(String, Option<String>)> {
        pair.database
            .connect()
            .query("SELECT name, advertise FROM replicas ORDER BY name", &[])
            .expect("read the replicas")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    slipway_testkit::wait::wait_for_explained(
        "a host alone is advertised with the port each replica listens on",
        T,
        || format!("replicas: {:?}\n{}", advertised(), pair.explain()),
        || (advertised() == want).then_some(()),
    );

    // Through both replicas, the application's answer.
    for (name, port) in [(holder, at_holder), (other, at_other)] {
        let reply = get(port, "/hello", "").expect("the replica answers");
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "hello from the app"),
            "the preview URL through {name}: {reply:?}\n{}",
            pair.explain()
        );
    }

    // Through the other replica the request went to the holder's router (one more hop in
    // X-Forwarded-For: it did not reach the port on its own node), with its Host, and without
    // Slipway's credentials or its hop header.
    let reply = get(
        at_other,
        "/echo",
        "Cookie: slipway_session=secret; app=1\r\nAuthorization: Bearer slw_secret\r\n\
         X-Forwarded-For: 6.6.6.6\r\n",
    )
    .expect("the other replica answers");
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = reply.json();
    assert_eq!(
        seen["x-forwarded-for"],
        serde_json::json!(["6.6.6.6, 127.0.0.1, 127.0.0.1"]),
        "the client's claim, then the client as {other} saw it, then {other} as {holder} saw it"
    );
    assert_eq!(
        seen["host"],
        serde_json::json!([format!("dev.pv.localhost:{at_other}")]),
        "the Host the client sent reaches the application"
    );
    assert_eq!(
        seen["cookie"],
        serde_json::json!(["app=1"]),
        "only the application's cookie"
    );
    assert!(
        seen.get("authorization").is_none() && seen.get("x-slipway-forwarded").is_none(),
        "neither Slipway's token nor its hop header reach the application: {seen}"
    );

    // A POST through the other replica: method, path, query and a 1 MiB body arrive intact,
    // and its answer comes back whole.
    let body: Vec<u8> = (0..1u32 << 20)
        .map(|i| {
            b"abcdefghijklmnopqrstuvwxyz0123456789"
                [(i.wrapping_mul(2_654_435_761) >> 7) as usize % 36]
        })
        .collect();
    let reply = send(
        at_other,
        &format!(
            "POST /body?x=1&y=two HTTP/1.1\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {}\r\n",
            body.len()
        ),
        &body,
    )
    .expect("the other replica answers the POST");
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(reply.header("x-seen"), vec!["POST /body?x=1&y=two"]);
    assert!(
        reply.body.as_bytes() == body.as_slice(),
        "the body came through both routers and back intact ({} of {} bytes)",
        reply.body.len(),
        body.len()
    );

    // A WebSocket-style upgrade through the other replica is spliced through both routers.
    {
        let mut s = TcpStream::connect(("127.0.0.1", at_other)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("a timeout");
        write!(
            s,
            "GET /upgrade HTTP/1.1\r\nHost: dev.pv.localhost:{at_other}\r\n\
             Connection: Upgrade\r\nUpgrade: x-echo\r\n\r\n"
        )
        .expect("send the handshake");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).expect("the handshake's answer");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        s.write_all(b"ping through two routers").expect("write");
        let mut echoed = [0u8; 24];
        s.read_exact(&mut echoed).expect("the echo");
        assert_eq!(&echoed, b"ping through two routers");
    }

    // The hop header from a client is no bypass: the other replica neither forwards the
    // request nor serves the port on its own node, it refuses; the holder serves it as any
    // request, and the header does not reach the application.
    let reply = get(
        at_other,
        "/hello",
        &format!("X-Slipway-Forwarded: {holder}\r\n"),
    )
    .expect("the other replica answers");
    assert_eq!(reply.status, 502, "{reply:?}");
    let error = reply.json()["error"].as_str().unwrap_or("").to_owned();
    assert!(
        error.contains(&format!("replica {holder}")) && error.contains("not forwarded twice"),
        "the refusal names the holder and says why: {error}"
    );
    let reply = get(at_holder, "/echo", "X-Slipway-Forwarded: r9\r\n").expect("answers");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.json().get("x-slipway-forwarded").is_none(),
        "{}",
        reply.body
    );
}

#[test]
fn without_advertise_a_replica_answers_an_error_naming_the_replica_whose_node_runs_it() {
    let pair = Pair::start("");
    let (holder, at_holder) = (&pair.holder.0, pair.holder.1.port());
    let (other, at_other) = (&pair.other.0, pair.other.1.port());
    let reply = get(at_holder, "/hello", "").expect("the holder answers");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "hello from the app")
    );

    let reply = get(at_other, "/hello", "").expect("the other replica answers");
    assert_eq!(
        reply.status, 502,
        "{other} does not serve the port on its own node: {reply:?}"
    );
    let answer = reply.json();
    let error = answer["error"].as_str().unwrap_or("");
    let hint = answer["hint"].as_str().unwrap_or("");
    assert!(
        error.contains(&format!("runs on the node of replica {holder}"))
            && error.contains("advertises no address"),
        "the error names the replica that runs dev: {answer}"
    );
    assert!(
        hint.contains(&format!("through {holder} itself")) && hint.contains("[local] advertise"),
        "the hint says what to do: {answer}"
    );
    assert!(
        !reply.body.contains("127.0.0.1"),
        "no address is given away: {answer}"
    );
}

/// A private environment through the replica that does not run it: let in there (by a
/// Slipway token), forwarded with a link of that replica's that holds a minute, let in again
/// by the holder; refused on the first replica without credentials, and a forged link is no
/// way in. Neither the token nor the link reaches the application.
#[test]
fn a_private_preview_is_checked_by_both_replicas_and_forwarded_with_a_link() {
    let stack = STACK.replace(
        "dev: { track: main }",
        "dev: { track: main, access: private }",
    );
    let pair = Pair::start_with("advertise = \"127.0.0.1\"", &stack);
    let (other, at_other) = (pair.other.0.clone(), pair.other.1.port());
    let bearer = format!("Authorization: Bearer {}\r\n", pair.token);
    wait_for("the forward reaches the holder", T, || {
        get(at_other, "/hello", &bearer).filter(|r| r.status == 200)
    });
    let reply = get(at_other, "/echo", &bearer).expect("the other replica answers");
    assert_eq!(reply.status, 200, "{reply:?}\n{}", pair.explain());
    let seen = reply.json();
    assert_eq!(
        seen["x-forwarded-for"],
        serde_json::json!(["127.0.0.1, 127.0.0.1"]),
        "{other} forwarded it to the holder: {seen}"
    );
    assert!(
        seen.get("authorization").is_none() && seen.get("x-slipway-link").is_none(),
        "neither the token nor the replicas' link reaches the application: {seen}"
    );
    for (who, extra) in [
        ("no credentials", String::new()),
        (
            "a forged link",
            "X-Slipway-Link: dev.pv.0.99999999999999~AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n"
                .to_string(),
        ),
        ("the forward header", "X-Slipway-Forwarded: r1\r\n".to_string()),
    ] {
        let reply = get(at_other, "/hello", &extra).expect("answers");
        assert_eq!(reply.status, 401, "{who}: {reply:?}");
        let reply = get(pair.holder.1.port(), "/hello", &extra).expect("answers");
        assert_eq!(reply.status, 401, "{who}, at the holder: {reply:?}");
    }
}

#[test]
fn a_sleeping_environment_is_woken_on_its_node_by_a_request_to_another_replica() {
    let pair = Pair::start("advertise = \"127.0.0.1\"");
    let other = &pair.other.1;
    // Put to sleep through the replica that does not run it: forwarded to the holder.
    let (code, env) = api_request(
        &other.addr,
        "POST",
        "/api/v1/environments/dev/sleep",
        &pair.token,
        Some(serde_json::json!({})),
    );
    assert_eq!(
        (code, &env["activity"]),
        (200, &serde_json::json!("sleeping")),
        "a sleep asked of the other replica is done by the holder: {env}\n{}",
        pair.explain()
    );
    // A request with a body to the other replica: forwarded, held on the holder's node while
    // it wakes there, answered with its body intact.
    let reply = send(
        other.port(),
        "POST /body HTTP/1.1\r\nContent-Length: 11\r\n",
        b"wake me up!",
    )
    .expect("an answer");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "wake me up!"),
        "the forwarded request is answered once dev woke on its node: {reply:?}\n{}",
        pair.explain()
    );
    let (_, env) = api_request(
        &pair.holder.1.addr,
        "GET",
        "/api/v1/environments/dev",
        &pair.token,
        None,
    );
    assert_eq!(env["activity"], "awake", "{env}");
}

#[test]
fn with_routers_a_replica_forwards_and_its_node_keeps_answering_while_its_serve_is_killed() {
    let mut pair = Pair::start_serving("advertise = \"127.0.0.1\"", STACK, &["--router"]);
    let bearer = format!("Authorization: Bearer {}\r\n", pair.token);
    let through_other = get(pair.other.1.port(), "/hello", &bearer).expect("an answer");
    assert_eq!(
        (through_other.status, through_other.body.as_str()),
        (200, "hello from the app"),
        "the other replica's router forwards to the holder's: {}",
        pair.explain()
    );

    // The holder's serve is killed: its router, which runs the preview's node's routing,
    // keeps answering, request after request, until a new serve is back.
    let port = pair.holder.1.port();
    let (stop, answered, failed) = (
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        std::sync::Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    let looping = {
        let (stop, answered, failed, bearer) = (
            stop.clone(),
            answered.clone(),
            failed.clone(),
            bearer.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                match get(port, "/hello", &bearer) {
                    Some(r) if r.status == 200 => {
                        answered.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    }
                    other => failed.lock().expect("failed").push(format!("{other:?}")),
                }
            }
        })
    };
    let crossed = |more: usize| {
        let from = answered.load(std::sync::atomic::Ordering::Acquire);
        wait_for("the loop answers", T, || {
            (answered.load(std::sync::atomic::Ordering::Acquire) >= from + more).then_some(())
        });
    };
    crossed(10);
    pair.holder
        .1
        .child
        .kill()
        .expect("kill -9 the holder's serve");
    pair.holder.1.child.wait().expect("reaped");
    crossed(30);
    let name = pair.holder.0.clone();
    let config = replica_config(&pair.s, &pair.database, ReplicaSettings::named(&name));
    let home = replica_home(&pair.s, &name);
    let mut command = serve_command(&pair.s, &home, &config);
    command.arg("--router");
    let (server, _) = serve_from(command, T);
    assert_eq!(
        server.port(),
        port,
        "the new serve is behind the same router"
    );
    pair.holder.1 = server;
    crossed(10);
    stop.store(true, std::sync::atomic::Ordering::Release);
    looping.join().expect("the loop");
    let failed = failed.lock().expect("failed").clone();
    assert!(
        failed.is_empty(),
        "no preview request through the holder's router failed while its serve was killed \
         and started again: {failed:?}\n{}",
        pair.explain()
    );
}
