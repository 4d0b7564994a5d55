//! Private preview URLs end to end (`access: private`, docs/previews.md): a real `slipway
//! serve`, a real application behind its router, and raw HTTP as a stranger, a script with a
//! token, a browser with a signed link and a person signed in to the UI would send it.

mod util;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;
use util::*;

const T: Duration = Duration::from_secs(60);

/// Answers every request with what it received of the headers a router must keep from it,
/// and on `/plant` tries to set the router's own cookie.
const APP: &str = r#"
import http.server, json, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        seen = {k.lower(): v for k, v in self.headers.items()}
        body = json.dumps({"path": self.path, "cookie": seen.get("cookie"),
                           "authorization": seen.get("authorization"),
                           "link": seen.get("x-slipway-link")}).encode()
        self.send_response(200)
        if self.path == "/plant":
            self.send_header("Set-Cookie", "slipway_preview=planted; Path=/")
            self.send_header("Set-Cookie", "theme=dark; Path=/")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

const STACK: &str = r#"version: 1
stack: shop
environments:
  main: { track: main }
  previews:
    generate: { branches: ["feature/*"] }
resources:
  web:
    type: process
    command: ["python3", "app.py", "${ports.http}"]
    ports: [http]
    health: { tcp: http }
    expose: http
"#;

/// One raw HTTP/1.0 GET to the server: (status, headers by lower-case name, body).
fn exchange(
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, BTreeMap<String, Vec<String>>, String) {
    exchange_as(port, "GET", host, path, headers)
}

/// [`exchange`] with another method.
fn exchange_as(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, BTreeMap<String, Vec<String>>, String) {
    exchange_with_body(port, method, host, path, headers, "")
}

/// [`exchange_as`] with a body (its `Content-Length` added when there is one).
fn exchange_with_body(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, BTreeMap<String, Vec<String>>, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            found
                .entry(name.trim().to_ascii_lowercase())
                .or_default()
                .push(value.trim().to_string());
        }
    }
    (status, found, body.to_string())
}

fn header<'a>(headers: &'a BTreeMap<String, Vec<String>>, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.first())
        .map(String::as_str)
}

/// The `(host, path and query)` of an `http://` URL.
fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').expect("a path");
    (host.to_string(), format!("/{path}"))
}

fn synced(s: &Sandbox, server: &Server, token: &str, env: &str) -> Option<()> {
    let url = format!("http://{}", server.addr);
    let status = s.json(&[
        "--server", &url, "--token", token, "status", "--output", "json",
    ]);
    status_environment(&status, env)
        .filter(|e| e["sync"] == "synced" && e["health"] == "healthy")
        .map(|_| ())
}

#[test]
fn a_private_preview_opens_for_links_tokens_and_signed_in_people_only() {
    let s = Sandbox::new();
    s.write("app.py", APP).write("slipway.yaml", STACK);
    s.commit("stack");
    testkit_git(&s, &["branch", "feature/a"]);
    // feature/b's own commit opens the family to everyone: the default branch's family is
    // private (by default), and that is what holds.
    testkit_git(&s, &["checkout", "-q", "-b", "feature/b"]);
    s.write(
        "slipway.yaml",
        &STACK.replace(
            "generate: { branches: [\"feature/*\"] }",
            "generate: { branches: [\"feature/*\"] }\n    access: public",
        ),
    );
    s.commit("my preview is public");
    testkit_git(&s, &["checkout", "-q", "main"]);
    util::world::append_config(&s, "[repo]\npoll_interval = \"300ms\"\n");
    let admin = named_token(&s, "admin", "admin");
    let viewer = named_token(&s, "viewer", "viewer");
    let server = start_serve(&s);
    for env in ["main", "br-feature-a", "br-feature-b"] {
        wait_for(&format!("{env} runs"), T, || {
            synced(&s, &server, &admin, env)
        });
    }
    let port = server.port();
    let public = format!("main.shop.localhost:{port}");
    let private = format!("br-feature-a.shop.localhost:{port}");

    // A static environment is public by default; every preview answer says noindex.
    let (status, headers, _) = exchange(port, &public, "/", &[]);
    assert_eq!(status, 200, "a static environment's preview is public");
    assert_eq!(header(&headers, "x-robots-tag"), Some("noindex, nofollow"));

    // A stranger: 401, JSON for a script, a sign-in page for a browser, noindex on both.
    let (status, headers, body) = exchange(port, &private, "/cart?x=1", &[]);
    assert_eq!(
        status, 401,
        "a family's preview is private by default: {body}"
    );
    assert_eq!(header(&headers, "x-robots-tag"), Some("noindex, nofollow"));
    let refusal: Value = serde_json::from_str(&body).expect("JSON for a non-browser");
    assert!(
        refusal["error"]
            .as_str()
            .is_some_and(|e| e.contains("private")),
        "{refusal}"
    );
    assert!(
        refusal["hint"]
            .as_str()
            .is_some_and(|h| h.contains("slipway env link br-feature-a")),
        "the refusal says how to get in: {refusal}"
    );
    let (status, headers, page) = exchange(port, &private, "/cart?x=1", &[("Accept", "text/html")]);
    assert_eq!(status, 401);
    assert!(
        header(&headers, "content-type").is_some_and(|t| t.starts_with("text/html")),
        "{headers:?}"
    );
    let sign_in = format!(
        "http://localhost:{port}/.slipway/preview-sign-in?env=br-feature-a&amp;stack=shop&amp;next=%2Fcart%3Fx%3D1"
    );
    assert!(
        page.contains(&sign_in),
        "the page links to the sign-in, coming back to the page asked for: {page}"
    );
    assert_eq!(header(&headers, "x-robots-tag"), Some("noindex, nofollow"));

    // A script with any Slipway token gets in; the application never sees the token.
    let bearer = format!("Bearer {viewer}");
    let (status, _, body) = exchange(port, &private, "/", &[("Authorization", &bearer)]);
    assert_eq!(
        status, 200,
        "a viewer's token opens a private preview: {body}"
    );
    let seen: Value = serde_json::from_str(&body).expect("the app's JSON");
    assert_eq!(
        seen["authorization"],
        Value::Null,
        "the token is cut: {seen}"
    );
    let (status, _, _) = exchange(
        port,
        &private,
        "/",
        &[("Authorization", "Bearer slw_not-a-token")],
    );
    assert_eq!(status, 401, "an unknown token opens nothing");

    // A signed link from the CLI (through the API, audited).
    let url = format!("http://{}", server.addr);
    let link = s.json(&[
        "--server",
        &url,
        "--token",
        &admin,
        "env",
        "link",
        "br-feature-a",
        "--for",
        "1h",
        "--output",
        "json",
    ]);
    let link_url = link["url"].as_str().expect("a link").to_string();
    assert!(link["expires_at"].is_string(), "{link}");
    let (link_host, link_path) = split_url(&link_url);
    assert_eq!(link_host, private, "the link is on the preview's host");
    let (status, headers, _) = exchange(port, &link_host, &link_path, &[]);
    assert_eq!(
        status, 303,
        "the link sets the preview cookie and sends the browser on"
    );
    assert_eq!(header(&headers, "location"), Some("/"));
    let cookie = header(&headers, "set-cookie")
        .expect("a cookie")
        .to_string();
    assert!(
        cookie.starts_with("slipway_preview=")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let value = cookie.split(';').next().expect("name=value").to_string();
    let with_cookie = format!("theme=dark; {value}; cart=3");
    let (status, _, body) = exchange(port, &private, "/", &[("Cookie", &with_cookie)]);
    assert_eq!(status, 200, "the cookie opens the preview: {body}");
    let seen: Value = serde_json::from_str(&body).expect("the app's JSON");
    assert_eq!(
        seen["cookie"], "theme=dark; cart=3",
        "the application gets its own cookies and never the preview cookie"
    );
    // A page of another origin cannot send a request that changes something, nor open a
    // WebSocket, with the visitor's cookie: the previews of a stack share a site, so the
    // cookie goes with the requests of a sibling preview's page, whose code any branch
    // writes. Reading pages, and the preview's own pages, still work.
    let sibling = format!("http://br-feature-b.shop.localhost:{port}");
    let own = format!("http://{private}");
    let post = |origin: &str| {
        exchange_as(
            port,
            "POST",
            &private,
            "/",
            &[
                ("Cookie", &value),
                ("Origin", origin),
                ("Content-Length", "0"),
            ],
        )
    };
    let (status, _, body) = post(&sibling);
    assert_eq!(status, 403, "a sibling's POST is refused: {body}");
    assert!(body.contains("another origin"), "{body}");
    assert_eq!(post("null").0, 403, "so is an opaque origin's");
    assert_eq!(
        post(&own).0,
        501,
        "the preview's own POST reaches the app (which answers 501 to a POST)"
    );
    // Behind a reverse proxy on the default port, `Host` and `Origin` carry none: the same
    // origin. A port in one and none in the other is the default port against another.
    let proxied = |origin: &str| {
        exchange_as(
            port,
            "POST",
            "br-feature-a.shop.localhost",
            "/",
            &[
                ("Cookie", &value),
                ("Origin", origin),
                ("Content-Length", "0"),
            ],
        )
        .0
    };
    assert_eq!(
        proxied("http://br-feature-a.shop.localhost"),
        501,
        "port 80 both"
    );
    assert_eq!(proxied("http://br-feature-a.shop.localhost:80"), 501);
    assert_eq!(proxied(&own), 403, "port {port} against 80");
    assert_eq!(
        proxied("https://br-feature-a.shop.localhost"),
        501,
        "a proxy ending TLS on 443 sends no port either"
    );
    assert_eq!(
        proxied("http://br-feature-a.shop.localhost/"),
        403,
        "not with a path"
    );
    assert_eq!(proxied("http://br-feature-b.shop.localhost"), 403);
    // Another port of the same name is another origin: on this machine
    // `pr-1.shop.localhost:<another preview's port>` is that preview's code.
    let other_port = format!("http://br-feature-a.shop.localhost:{}", port + 1);
    assert_eq!(post(&other_port).0, 403, "another port is another origin");
    let websocket = |origin: &str| {
        exchange(
            port,
            &private,
            "/ws",
            &[
                ("Cookie", &value),
                ("Origin", origin),
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
        )
        .0
    };
    assert_eq!(websocket(&sibling), 403, "a sibling's WebSocket is refused");
    assert_ne!(websocket(&own), 403, "the preview's own is not");
    // A script's GET from a sibling carries its Origin: refused (an application answering
    // CORS with credentials would let the sibling read it). A link followed carries none.
    let (status, _, _) = exchange(
        port,
        &private,
        "/",
        &[("Cookie", &value), ("Origin", &sibling)],
    );
    assert_eq!(status, 403, "a sibling's script's GET is refused");
    let (status, _, _) = exchange(port, &private, "/", &[("Cookie", &value)]);
    assert_eq!(status, 200, "a link followed is let in");
    // Cookies of the name that a sibling's page planted for the stack's whole domain (sent
    // first) do not hide the visitor's own.
    let planted: Vec<String> = (0..8).map(|i| format!("slipway_preview=junk{i}")).collect();
    let planted = format!("{}; {value}", planted.join("; "));
    let (status, _, body) = exchange(port, &private, "/", &[("Cookie", &planted)]);
    assert_eq!(
        status, 200,
        "the visitor's own cookie still opens it: {body}"
    );

    // The application cannot plant the router's cookie.
    let (status, headers, _) = exchange(port, &private, "/plant", &[("Cookie", &value)]);
    assert_eq!(status, 200);
    let set: Vec<&String> = headers.get("set-cookie").into_iter().flatten().collect();
    assert_eq!(
        set.len(),
        1,
        "only the application's own cookie is set: {set:?}"
    );
    assert!(set[0].starts_with("theme="), "{set:?}");

    // The link opens that preview only: not another one, and not the API.
    let other = format!("br-feature-b.shop.localhost:{port}");
    let (status, _, _) = exchange(port, &other, "/", &[("Cookie", &value)]);
    assert_eq!(
        status, 401,
        "a link to br-feature-a does not open br-feature-b"
    );
    let (status, _, _) = exchange(port, &other, "/", &[]);
    assert_eq!(
        status, 401,
        "br-feature-b's commit says `access: public`; the default branch's private holds"
    );
    let (_, b) = api_request(
        &server.addr,
        "GET",
        "/api/v1/environments/br-feature-b",
        &admin,
        None,
    );
    assert_eq!(b["access"], "private", "{b}");
    let token_only = value.trim_start_matches("slipway_preview=");
    let (status, _, _) = exchange(port, &other, "/", &[("X-Slipway-Link", token_only)]);
    assert_eq!(status, 401, "nor when sent as the forwarding header");
    let (status, _, _) = exchange(
        port,
        &format!("localhost:{port}"),
        "/api/v1/environments",
        &[("Cookie", &value)],
    );
    assert_eq!(status, 401, "a preview link is no API credential");
    // A link whose expiry was edited no longer holds.
    let (payload, tag) = token_only.split_once('~').expect("a link");
    let (rest, expiry) = payload.rsplit_once('.').expect("an expiry");
    let later = format!(
        "{rest}.{}~{tag}",
        expiry.parse::<i64>().expect("ms") + 86_400_000
    );
    let (status, _, body) = exchange(
        port,
        &private,
        "/",
        &[("Cookie", &format!("slipway_preview={later}"))],
    );
    assert_eq!(status, 401, "an edited link is refused: {body}");

    // An expired link says so.
    let short = s.json(&[
        "--server",
        &url,
        "--token",
        &admin,
        "env",
        "link",
        "br-feature-a",
        "--for",
        "1s",
        "--output",
        "json",
    ]);
    let (host, path) = split_url(short["url"].as_str().expect("a link"));
    // Taken (303) until its second is up, then refused as expired.
    let (status, body) = wait_for("the one-second link expires", T, || {
        let (status, _, body) = exchange(port, &host, &path, &[]);
        (status != 303).then_some((status, body))
    });
    assert_eq!(status, 401);
    assert!(body.contains("expired"), "{body}");

    // Links are made by those who may act on the environment: not a viewer.
    let (status, _) = api_request(
        &server.addr,
        "POST",
        "/api/v1/environments/br-feature-a/link",
        &viewer,
        Some(serde_json::json!({"for": "1h"})),
    );
    assert_eq!(status, 403, "a viewer makes no links");
    for bad in [
        serde_json::json!({"for": "forever"}),
        serde_json::json!({"for": "31d"}),
        serde_json::json!({"for": "0s"}),
        serde_json::json!({"until": "1h"}),
    ] {
        let (status, answer) = api_request(
            &server.addr,
            "POST",
            "/api/v1/environments/br-feature-a/link",
            &admin,
            Some(bad.clone()),
        );
        assert_eq!(status, 400, "{bad} is refused clearly: {answer}");
        assert!(answer["hint"].is_string(), "{answer}");
    }

    // A person signed in to the UI. The preview's page links to the sign-in, which sends the
    // browser to the UI: the session cookie came along, but it would from any preview's page
    // too (the previews share a site with this host: a frame, an image, a script).
    let (session_cookie, csrf) = session(&server.addr, &viewer);
    let main_host = format!("localhost:{port}");
    let asked = "/.slipway/preview-sign-in?env=br-feature-a&stack=shop&next=%2Fcart";
    let (status, headers, _) = exchange(port, &main_host, asked, &[("Cookie", &session_cookie)]);
    assert_eq!(status, 303);
    let to = header(&headers, "location").expect("to the UI");
    assert!(
        to.starts_with("/?next=%2F.slipway%2Fpreview-sign-in%3F"),
        "the UI, which asks: {to}"
    );
    let with_token = format!("{asked}&csrf={csrf}");
    let (status, headers, _) = exchange(
        port,
        &main_host,
        &with_token,
        &[("Cookie", &session_cookie)],
    );
    assert_eq!(
        (
            status,
            header(&headers, "location").is_some_and(|l| l.starts_with("/?next="))
        ),
        (303, true),
        "a GET makes no link, whatever it carries"
    );
    // The UI's form: a POST with the session's CSRF token, which no other page can read.
    let form = |csrf: &str| format!("env=br-feature-a&stack=shop&next=%2Fcart&csrf={csrf}");
    let post = |body: &str| {
        exchange_with_body(
            port,
            "POST",
            &main_host,
            "/.slipway/preview-sign-in",
            &[
                ("Cookie", session_cookie.as_str()),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            body,
        )
    };
    let (status, headers, _) = post(&form("not-the-token"));
    assert_eq!(status, 303, "a form without the token is sent to the UI");
    assert!(header(&headers, "location").is_some_and(|l| l.starts_with("/?next=")));
    let (status, _, page) = post(&form(&csrf));
    assert_eq!(status, 200, "{page}");
    let to = page
        .split("url=")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page goes on to the preview")
        .replace("&amp;", "&");
    assert!(
        to.starts_with(&format!(
            "http://br-feature-a.shop.localhost:{port}/.slipway/auth?link="
        )) && to.ends_with("&next=%2Fcart"),
        "{to}"
    );
    let (host, path) = split_url(&to);
    let (status, headers, _) = exchange(port, &host, &path, &[]);
    assert_eq!(status, 303);
    assert_eq!(header(&headers, "location"), Some("/cart"));
    // The link it handed out is a bearer credential: audited, by whose session.
    let audited = slipway_state::Store::open(&s.home)
        .expect("store")
        .audit(100, None)
        .expect("audit");
    assert!(
        audited
            .iter()
            .map(|e| &e.entry)
            .any(|e| e.action == "environment.link"
                && e.who == "viewer"
                && e.target.as_deref() == Some("br-feature-a")
                && e.detail.contains("preview sign-in")),
        "{audited:?}"
    );
    // Without a session: to the UI's login, which comes back to the sign-in.
    let (status, headers, _) = exchange(port, &main_host, asked, &[]);
    assert_eq!(status, 303);
    let to = header(&headers, "location").expect("to the login");
    assert!(
        to.starts_with("/?next=%2F.slipway%2Fpreview-sign-in%3F"),
        "{to}"
    );

    // Hostile input: no open redirect, no environment but a DNS label.
    let (status, _, page) = post(&format!(
        "env=br-feature-a&stack=shop&next=%2F%2Fevil.example%2F&csrf={csrf}"
    ));
    assert_eq!(status, 200);
    assert!(
        page.contains("&amp;next=%2F\""),
        "`//evil.example/` becomes `/`: {page}"
    );
    let (status, headers, _) = exchange(
        port,
        &private,
        &format!(
            "/.slipway/auth?{}&next=https://evil.example/",
            &link_path[link_path.find("link=").expect("link")..]
        ),
        &[],
    );
    assert_eq!(status, 303);
    assert_eq!(header(&headers, "location"), Some("/"), "no open redirect");
    for asked in [
        "/.slipway/preview-sign-in?env=..%2F..&stack=shop",
        "/.slipway/preview-sign-in?env=br-feature-a&stack=%3Cscript%3E",
        "/.slipway/preview-sign-in",
    ] {
        let (status, _, body) = exchange(port, &main_host, asked, &[("Cookie", &session_cookie)]);
        assert_eq!(status, 400, "{asked}: {body}");
    }
    let (status, _, _) = post(&format!("env=nope&stack=shop&csrf={csrf}"));
    assert_eq!(
        status, 404,
        "an environment that does not exist gets no link"
    );
    let (status, _, _) = exchange_as(
        port,
        "PUT",
        &main_host,
        "/.slipway/preview-sign-in",
        &[("Cookie", &session_cookie)],
    );
    assert_eq!(status, 405, "nor another method");

    // A link made by the CLI on the home, without the server, holds too.
    let local = s.json(&["env", "link", "br-feature-a", "--output", "json"]);
    let (_, path) = split_url(local["url"].as_str().expect("a link"));
    let (status, _, _) = exchange(port, &private, &path, &[]);
    assert_eq!(status, 303, "the home's key made it: {local}");
}

fn testkit_git(s: &Sandbox, args: &[&str]) {
    slipway_testkit::git::git(&s.repo, args);
}

/// A browser session of `token`'s, as the `Cookie` header's `name=value`.
/// A UI session made with `token`: its cookie (`name=value`) and its CSRF token.
fn session(addr: &str, token: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "POST /api/v1/session HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let cookie = answer
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let session: Value = serde_json::from_str(body).expect("the session's JSON");
    let csrf = session["csrf"].as_str().expect("a CSRF token").to_string();
    (cookie, csrf)
}

/// A stranger's request to a private preview that sleeps gets its `401` and wakes nothing:
/// a bot cannot keep private previews awake (or alive past `idle_ttl`); a request let in
/// wakes it.
#[test]
fn a_strangers_request_wakes_no_private_preview() {
    let s = Sandbox::new();
    s.write("app.py", APP).write(
        "slipway.yaml",
        &STACK.replace(
            "generate: { branches: [\"feature/*\"] }",
            "generate: { branches: [\"feature/*\"] }\n    sleep_after: 2s",
        ),
    );
    s.commit("stack");
    testkit_git(&s, &["branch", "feature/a"]);
    util::world::append_config(&s, "[repo]\npoll_interval = \"300ms\"\n");
    let admin = named_token(&s, "admin", "admin");
    let server = start_serve(&s);
    let activity = || {
        let (status, env) = api_request(
            &server.addr,
            "GET",
            "/api/v1/environments/br-feature-a",
            &admin,
            None,
        );
        (status == 200).then(|| env["activity"].as_str().unwrap_or("").to_string())
    };
    wait_for("br-feature-a sleeps", T, || {
        activity().filter(|a| a == "sleeping").map(|_| ())
    });
    let port = server.port();
    let private = format!("br-feature-a.shop.localhost:{port}");
    for _ in 0..5 {
        let (status, _, _) = exchange(port, &private, "/", &[]);
        assert_eq!(status, 401, "a stranger is refused before any wake");
    }
    // A wake is asked by the request itself and answered when done: refused at once, these
    // asked none.
    assert_eq!(
        activity().as_deref(),
        Some("sleeping"),
        "the strangers' requests woke nothing"
    );
    let bearer = format!("Bearer {admin}");
    let (status, _, body) = exchange(port, &private, "/", &[("Authorization", &bearer)]);
    assert_eq!(
        status, 200,
        "a request let in wakes it and is answered: {body}"
    );
    assert_eq!(activity().as_deref(), Some("awake"));
}

#[test]
fn a_static_environment_rolled_back_to_a_public_commit_stays_as_private_as_its_branch_says() {
    let s = Sandbox::new();
    s.write("app.py", APP).write("slipway.yaml", STACK);
    let public = s.commit("main is public (a static environment's default)");
    util::world::append_config(&s, "[repo]\npoll_interval = \"300ms\"\n");
    let admin = named_token(&s, "admin", "admin");
    let server = start_serve(&s);
    let port = server.port();
    let host = format!("main.shop.localhost:{port}");
    let commit_of = || {
        let (_, env) = api_request(
            &server.addr,
            "GET",
            "/api/v1/environments/main",
            &admin,
            None,
        );
        (env["sync"] == "synced").then(|| env["commit"].as_str().unwrap_or("").to_string())
    };
    wait_for("main runs the public commit", T, || {
        (commit_of()? == public).then_some(())
    });
    assert_eq!(exchange(port, &host, "/", &[]).0, 200, "public: anyone");

    // main turns private on its branch.
    s.write(
        "slipway.yaml",
        &STACK.replace(
            "main: { track: main }",
            "main: { track: main, access: private }",
        ),
    );
    let private = s.commit("main is private");
    wait_for("main runs the private commit", T, || {
        (commit_of()? == private).then_some(())
    });
    assert_eq!(
        exchange(port, &host, "/", &[]).0,
        401,
        "private: a stranger is refused"
    );

    // Rolled back to the public commit: it runs it, but its branch says private, and that holds.
    let (_, deployments) = api_request(
        &server.addr,
        "GET",
        "/api/v1/environments/main/deployments",
        &admin,
        None,
    );
    let first = deployments["deployments"]
        .as_array()
        .and_then(|list| list.iter().find(|d| d["commit"] == public.as_str()))
        .and_then(|d| d["id"].as_i64())
        .unwrap_or_else(|| panic!("the public commit's deployment: {deployments}"));
    let (status, body) = api_request(
        &server.addr,
        "POST",
        "/api/v1/environments/main/rollback",
        &admin,
        Some(serde_json::json!({ "deployment": first })),
    );
    assert!(status < 300, "{status} {body}");
    wait_for("main runs the public commit again, pinned", T, || {
        (commit_of()? == public).then_some(())
    });
    let (status, _, body) = exchange(port, &host, "/", &[]);
    assert_eq!(
        status, 401,
        "an older commit cannot open the environment its branch made private: {body}"
    );
    let (_, env) = api_request(
        &server.addr,
        "GET",
        "/api/v1/environments/main",
        &admin,
        None,
    );
    assert_eq!(env["access"], "private", "{env}");
}
