//! The web UI's browser sessions, kept in the state: with two `slipway serve` replicas on one
//! PostgreSQL state, a session started on one is good on the other (under its CSRF check)
//! and ended on both by a logout on either; on SQLite a session survives a restart of the
//! server; and a forged, ended, over-long or malformed cookie, or a revoked token's session,
//! gets a `401`, never a server error.

mod util;

use std::time::Duration;

use serde_json::Value;
use slipway_testkit::pg::TestDatabase;
use util::replicas::*;
use util::*;

const T: Duration = Duration::from_secs(40);

/// One environment with a file in it: enough for a controller to have something to do.
fn stack() -> String {
    dev_stack(
        "sessions",
        "  note: { type: file, path: note.txt, content: hello }\n",
    )
}

/// An answer: its status, its head (status line and headers) and its body as JSON.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    json: Value,
}

impl Reply {
    /// The value `Set-Cookie` gives `slipway_session`.
    fn session_cookie(&self) -> Option<String> {
        self.head
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("set-cookie")
                    .then(|| value.trim())
            })
            .find_map(|value| value.strip_prefix("slipway_session="))
            .map(|rest| rest.split(';').next().unwrap_or("").to_string())
    }
}

/// `METHOD path` on `addr` with `headers` and a JSON body of `{}` for a POST or DELETE.
fn call(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the API");
    stream
        .set_read_timeout(Some(T))
        .expect("set a read timeout");
    let body = if method == "GET" { "" } else { "{}" };
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    stream
        .write_all(request.as_bytes())
        .expect("send the request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    Reply {
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        head: head.to_string(),
        json: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}

/// Logs in on `addr` with `token`: the session cookie's value and its CSRF token.
fn log_in(addr: &str, token: &str) -> (String, String) {
    let auth = format!("Bearer {token}");
    let reply = call(addr, "POST", "/api/v1/session", &[("Authorization", &auth)]);
    assert_eq!(reply.status, 201, "a login starts a session: {reply:?}");
    let cookie = reply.session_cookie().expect("the session cookie is set");
    let csrf = reply.json["csrf"]
        .as_str()
        .expect("the session's CSRF token")
        .to_string();
    (cookie, csrf)
}

fn cookie_header(id: &str) -> String {
    format!("slipway_session={id}")
}

/// Replica `name` of `database`'s state for the sandbox, with `key` (the state key of the
/// first replica) copied into its home when given; returns it and its home.
fn replica(
    s: &Sandbox,
    database: &TestDatabase,
    name: &str,
    key: Option<&std::path::Path>,
) -> (Server, std::path::PathBuf) {
    let config = replica_config(s, database, ReplicaSettings::named(name));
    let home = replica_home(s, name);
    if let Some(key) = key {
        std::fs::copy(key, home.join("state.key")).expect("copy the state key");
    }
    let (server, _log) = serve_from(serve_command(s, &home, &config), T);
    (server, home)
}

#[test]
fn a_session_started_on_one_replica_is_good_on_the_other_and_a_logout_on_either_ends_it() {
    let database = TestDatabase::create("slipway_sessions");
    let s = Sandbox::new();
    s.write("slipway.yaml", &stack());
    s.commit("one environment");
    let (r1, home1) = replica(&s, &database, "r1", None);
    let key = home1.join("state.key");
    wait_for("r1 makes the state key", T, || key.is_file().then_some(()));
    let (r2, _) = replica(&s, &database, "r2", Some(&key));
    let token = std::fs::read_to_string(home1.join("admin-token")).expect("the first token");
    let token = token.trim();

    let (id, csrf) = log_in(&r1.addr, token);
    let cookie = cookie_header(&id);
    let stored: i64 = database
        .connect()
        .query_one(
            "SELECT COUNT(*) FROM browser_sessions WHERE id_hash = $1",
            &[&slipway_state::hash_token(&id)],
        )
        .expect("read the sessions")
        .get(0);
    assert_eq!(
        stored, 1,
        "the session is in the shared state, by its id's hash"
    );

    // r2 never saw the login, and knows the session.
    let who = call(
        &r2.addr,
        "GET",
        "/api/v1/whoami",
        &[("Cookie", &cookie), ("X-Slipway-CSRF", &csrf)],
    );
    assert_eq!(who.status, 200, "r2 answers r1's session: {who:?}");
    assert_eq!(who.json["via"], "session", "{who:?}");
    assert_eq!(who.json["role"], "admin", "{who:?}");
    assert_eq!(
        who.json["csrf"].as_str(),
        Some(csrf.as_str()),
        "r2 gives the session's CSRF token again"
    );

    // A change through r2 with the cookie needs the session's CSRF token.
    let refused = call(&r2.addr, "POST", "/api/v1/refresh", &[("Cookie", &cookie)]);
    assert_eq!(refused.status, 403, "no CSRF token, no change: {refused:?}");
    let wrong = call(
        &r2.addr,
        "POST",
        "/api/v1/refresh",
        &[("Cookie", &cookie), ("X-Slipway-CSRF", &id)],
    );
    assert_eq!(
        wrong.status, 403,
        "another value is no CSRF token: {wrong:?}"
    );
    let done = call(
        &r2.addr,
        "POST",
        "/api/v1/refresh",
        &[("Cookie", &cookie), ("X-Slipway-CSRF", &csrf)],
    );
    assert_eq!(done.status, 200, "with it, the change passes: {done:?}");

    // A logout through r2 ends the session on r1 too.
    let ended = call(
        &r2.addr,
        "DELETE",
        "/api/v1/session",
        &[("Cookie", &cookie), ("X-Slipway-CSRF", &csrf)],
    );
    assert_eq!(ended.status, 200, "{ended:?}");
    assert_eq!(ended.json["ended"], true, "{ended:?}");
    for (name, server) in [("r1", &r1), ("r2", &r2)] {
        let who = call(
            &server.addr,
            "GET",
            "/api/v1/whoami",
            &[("Cookie", &cookie)],
        );
        assert_eq!(
            who.status, 401,
            "{name} no longer knows the session: {who:?}"
        );
    }

    // The other way round: a session started on r2 is ended by a logout on r1.
    let (id, csrf) = log_in(&r2.addr, token);
    let cookie = cookie_header(&id);
    let who = call(
        &r1.addr,
        "GET",
        "/api/v1/whoami",
        &[("Cookie", &cookie), ("X-Slipway-CSRF", &csrf)],
    );
    assert_eq!(who.status, 200, "r1 answers r2's session: {who:?}");
    let ended = call(
        &r1.addr,
        "DELETE",
        "/api/v1/session",
        &[("Cookie", &cookie), ("X-Slipway-CSRF", &csrf)],
    );
    assert_eq!(ended.json["ended"], true, "{ended:?}");
    let who = call(&r2.addr, "GET", "/api/v1/whoami", &[("Cookie", &cookie)]);
    assert_eq!(who.status, 401, "r2 no longer knows it: {who:?}");
}

#[test]
fn a_session_survives_a_restart_of_the_server() {
    let s = Sandbox::new();
    s.write("slipway.yaml", &stack());
    s.commit("one environment");
    let server = start_serve(&s);
    let token = role_token(&s, "developer");
    let (id, csrf) = log_in(&server.addr, &token);
    let cookie = cookie_header(&id);
    // Stopped hard: a session must not depend on a clean shutdown.
    drop(server);

    let server = start_serve(&s);
    let who = call(
        &server.addr,
        "GET",
        "/api/v1/whoami",
        &[("Cookie", &cookie), ("X-Slipway-CSRF", &csrf)],
    );
    assert_eq!(
        who.status, 200,
        "the restarted server knows the session: {who:?}"
    );
    assert_eq!(who.json["role"], "developer", "{who:?}");
    assert_eq!(who.json["csrf"].as_str(), Some(csrf.as_str()), "{who:?}");
    let done = call(
        &server.addr,
        "POST",
        "/api/v1/refresh",
        &[("Cookie", &cookie), ("X-Slipway-CSRF", &csrf)],
    );
    assert_eq!(done.status, 200, "and accepts its changes: {done:?}");
}

#[test]
fn a_forged_ended_malformed_or_revoked_session_is_refused_with_401() {
    let database = TestDatabase::create("slipway_sessions");
    let s = Sandbox::new();
    s.write("slipway.yaml", &stack());
    s.commit("one environment");
    let (server, home) = replica(&s, &database, "r1", None);
    let token = std::fs::read_to_string(home.join("admin-token")).expect("the first token");
    let token = token.trim();
    let whoami = |cookie: &str| call(&server.addr, "GET", "/api/v1/whoami", &[("Cookie", cookie)]);

    // A cookie of the right shape that no login made.
    let forged = "A".repeat(43);
    let reply = whoami(&cookie_header(&forged));
    assert_eq!(reply.status, 401, "a forged session id: {reply:?}");
    // Too long, not base64url, or quoted oddly: refused before the store is asked.
    let long = "A".repeat(6000);
    let malformed = [
        long.as_str(),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "'; DROP TABLE browser_sessions; --",
        "\"\"",
    ];
    for value in malformed {
        let reply = whoami(&cookie_header(value));
        assert_eq!(
            reply.status,
            401,
            "{:?}: refused, not an error: {reply:?}",
            &value[..value.len().min(40)]
        );
        assert!(
            reply.json["error"].is_string() && reply.json.get("id").is_none(),
            "a client error, not an internal one: {reply:?}"
        );
    }

    // A session whose end has passed (its row is still there).
    let (id, csrf) = log_in(&server.addr, token);
    let live = call(
        &server.addr,
        "GET",
        "/api/v1/whoami",
        &[("Cookie", &cookie_header(&id)), ("X-Slipway-CSRF", &csrf)],
    );
    assert_eq!(live.status, 200, "a live session");
    database
        .connect()
        .execute(
            "UPDATE browser_sessions SET expires_at = 1 WHERE id_hash = $1",
            &[&slipway_state::hash_token(&id)],
        )
        .expect("end the session in the state");
    let reply = whoami(&cookie_header(&id));
    assert_eq!(reply.status, 401, "an ended session: {reply:?}");

    // A session whose token was revoked since: refused at once, row or not.
    let (id, csrf) = log_in(&server.addr, token);
    database
        .connect()
        .execute(
            "UPDATE tokens SET revoked_at = 1 WHERE hash = $1",
            &[&slipway_state::hash_token(token)],
        )
        .expect("revoke the token");
    let reply = whoami(&cookie_header(&id));
    assert_eq!(reply.status, 401, "a revoked token's session: {reply:?}");
    let reply = call(
        &server.addr,
        "POST",
        "/api/v1/refresh",
        &[("Cookie", &cookie_header(&id)), ("X-Slipway-CSRF", &csrf)],
    );
    assert_eq!(reply.status, 401, "and changes nothing: {reply:?}");
}
