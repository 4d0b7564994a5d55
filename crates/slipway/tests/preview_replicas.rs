//! Preview URLs with two `slipway serve` replicas on one PostgreSQL state: an environment's
//! process runs on the node of the replica that holds it, and the other replica's router
//! forwards its preview requests there (`[local] advertise`), whole and streaming, never twice,
//! and without passing Slipway's credentials on; without an advertised address it answers an
//! error naming the replica to ask instead.
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
    _s: Sandbox,
    database: TestDatabase,
    holder: (String, Server),
    other: (String, Server),
    logs: Vec<(String, std::sync::Arc<std::sync::Mutex<Vec<String>>>)>,
    /// The first replica's admin token, for the API of either.
    token: String,
}

impl Pair {
    fn start(local: &str) -> Pair {
        let database = TestDatabase::create("slipway_preview_replicas");
        let s = Sandbox::new();
        if !local.is_empty() {
            s.with_local(local);
        }
        s.write("app.py", APP).write("slipway.yaml", STACK);
        s.commit("an application with a preview URL");
        let command = |name: &str| {
            let config = replica_config(&s, &database, ReplicaSettings::named(name));
            let home = replica_home(&s, name);
            (home.clone(), serve_command(&s, &home, &config))
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
                let reply = get(server.port(), "/hello", "")?;
                (reply.status == 200).then_some(holder)
            },
        );
        let (holder, other) = if holder == "r1" {
            (("r1".to_owned(), r1), ("r2".to_owned(), r2))
        } else {
            (("r2".to_owned(), r2), ("r1".to_owned(), r1))
        };
        Pair {
            _s: s,
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
