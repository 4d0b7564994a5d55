//! The preview-URL router: `http://<env>.<stack>.localhost:<port>/` on the server's own
//! listener is proxied to the environment's exposed process.
//!
//! The target is looked up in the state store for every request, so a deploy that records a
//! new instance switches traffic at once. A request whose connection is refused (the old
//! instance stopped between the lookup and the connect) is retried once against a fresh
//! lookup, so a deploy fails no request that carries no body.
//!
//! # What reaches the application
//! - Only the port the process names in `expose`, never another of its ports (an admin or
//!   metrics port stays private). An environment without an exposed process has no preview
//!   URL: its host answers `404`, whatever ports its processes listen on.
//! - Hop-by-hop headers (`Connection`, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`,
//!   `Transfer-Encoding`, `Upgrade`) and every header `Connection` names are removed, in both
//!   directions. A WebSocket (or other `Upgrade`) handshake is passed on as such, and its
//!   connection is spliced to the application's once the application answers `101`.
//! - `X-Forwarded-For` gets the real peer appended (what a client sent stays before it, so
//!   the last entry is the one to trust), `Forwarded` likewise; `X-Forwarded-Proto` and
//!   `X-Forwarded-Host` are set by the router, replacing any a client sent.
//! - Slipway's own credentials never do: its session cookie is cut out of `Cookie` (the
//!   application's cookies stay), an `Authorization` whose credential is a Slipway API token
//!   (`slw_...`) is removed (any other `Authorization`, e.g. the application's own bearer or
//!   basic credentials, is passed on: applications use it), and `X-Slipway-CSRF` is removed.
//!   A response cannot set a cookie under the session cookie's name.
//! - The application has [`PreviewTimeouts::connect`] to accept the connection and
//!   [`PreviewTimeouts::response`] to send its response's head; past that the client gets `504`.

use slipway_core::EnvName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use slipway_controller::Controller;
use slipway_core::vocab::ResourceStatus;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long the router waits on an application, and how many requests it has in flight.
#[derive(Debug, Clone, Copy)]
pub struct PreviewTimeouts {
    /// To connect to the exposed port.
    pub connect: Duration,
    /// From sending the request to the response's head (its body then streams as long as
    /// the application sends it).
    pub response: Duration,
    /// Most requests in flight through the router at once (a response still streaming, an
    /// upgraded connection, count); more get `503`. An application answers as slowly as it
    /// likes (its code may be anyone's branch), so without this a few slow responses could
    /// hold every connection of the server and keep `/healthz` and the API out.
    pub max_in_flight: usize,
}

impl Default for PreviewTimeouts {
    fn default() -> Self {
        PreviewTimeouts {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(60),
            max_in_flight: 512,
        }
    }
}

/// What the router needs: the controller (for the store) and an HTTP client.
#[derive(Clone)]
pub struct Previews {
    controller: Controller,
    client: Client<HttpConnector, Body>,
    timeouts: PreviewTimeouts,
    in_flight: Arc<Semaphore>,
}

impl Previews {
    /// A router over `controller`'s environments, with the default timeouts.
    pub fn new(controller: Controller) -> Previews {
        Previews::with_timeouts(controller, PreviewTimeouts::default())
    }

    /// A router over `controller`'s environments that waits on applications `timeouts` long.
    pub fn with_timeouts(controller: Controller, timeouts: PreviewTimeouts) -> Previews {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeouts.connect));
        connector.set_nodelay(true);
        Previews {
            controller,
            // Idle connections to an application are dropped after a while (with a timer, not
            // only when next checked out): an old instance a deploy replaced keeps none open.
            client: Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            timeouts,
            in_flight: Arc::new(Semaphore::new(timeouts.max_in_flight.max(1))),
        }
    }
}

/// The `(environment, stack)` a preview host names, if it is one.
pub fn parse_host(host: &str) -> Option<(EnvName, &str)> {
    let name = host
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    let rest = name.strip_suffix(".localhost")?;
    let (env, stack) = rest.split_once('.')?;
    let env = EnvName::parse(env).ok()?;
    slipway_core::stack::is_dns_label(stack).then_some((env, stack))
}

/// The address of the port an exposed process names in `expose`, among `resources`: the
/// first resource that exposes a port (a `process` with `expose`) and is not being deleted.
/// `None` when none exposes a port: the router then serves nothing for the environment.
pub fn exposed_address(resources: &[slipway_state::ResourceRecord]) -> Option<String> {
    resources.iter().find_map(|r| {
        // Any status but `deleting`: during an update the record still holds the running
        // instance's ports, and after a failed swap the old instance still serves.
        if r.status == ResourceStatus::Deleting {
            return None;
        }
        let name = slipway_core::types::exposed_port(&r.type_name, &r.config)?;
        // The number the process was given for that name; never its `url` or first port.
        let port = r.outputs.get("ports")?.get(name)?.as_u64()?;
        let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
        Some(format!("http://127.0.0.1:{port}"))
    })
}

/// The exposed address of `env`, if it belongs to `stack` and exposes a running process.
fn target(controller: &Controller, env: &EnvName, stack: &str) -> Option<String> {
    let store = controller.engine().store();
    let record = store.environment(env).ok()??;
    if record.stack != stack {
        return None;
    }
    exposed_address(&store.resources(env).ok()?)
}

async fn lookup(controller: &Controller, env: &EnvName, stack: &str) -> Option<String> {
    let (c, e, s) = (controller.clone(), env.clone(), stack.to_string());
    tokio::task::spawn_blocking(move || target(&c, &e, &s))
        .await
        .ok()?
}

/// Headers that concern one connection, never passed on by a proxy (RFC 9110 7.6.1), plus
/// the obsolete `Proxy-Connection` some clients still send.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The header names `Connection` lists (lowercase), from every `Connection` header.
fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Removes the hop-by-hop headers of [`HOP_BY_HOP`] and every header that `Connection` names
/// (a client can name any header there to have a proxy drop it, or to smuggle one past a
/// proxy that does not).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in connection_tokens(headers) {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// The protocol a request asks to upgrade to (`Upgrade`, when `Connection` says `upgrade`).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    if !connection_tokens(headers).iter().any(|t| t == "upgrade") {
        return None;
    }
    headers.get(header::UPGRADE).cloned()
}

/// Removes what authenticates a caller to Slipway itself: the session cookie (other cookies
/// stay), an `Authorization` carrying a Slipway API token, and the session's CSRF header.
pub fn strip_slipway_credentials(headers: &mut HeaderMap) {
    let cookies: Vec<HeaderValue> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| {
            let Ok(text) = value.to_str() else {
                // Not text: it cannot be parsed for our cookie, so it is not passed on.
                return None;
            };
            let kept: Vec<&str> = text
                .split(';')
                .map(str::trim)
                .filter(|pair| !pair.is_empty())
                .filter(|pair| {
                    let name = pair.split_once('=').map_or(*pair, |(n, _)| n).trim();
                    name != crate::session::COOKIE_NAME
                })
                .collect();
            (!kept.is_empty())
                .then(|| HeaderValue::from_str(&kept.join("; ")).ok())
                .flatten()
        })
        .collect();
    headers.remove(header::COOKIE);
    for value in cookies {
        headers.append(header::COOKIE, value);
    }
    let slipway_token = headers.get_all(header::AUTHORIZATION).iter().any(|value| {
        // Whatever the scheme (Bearer, or a token pasted as a Basic password is not this
        // shape), a credential that is a Slipway token is Slipway's.
        let text = String::from_utf8_lossy(value.as_bytes());
        text.split_whitespace()
            .any(|part| part.starts_with(slipway_state::TOKEN_PREFIX))
    });
    if slipway_token {
        headers.remove(header::AUTHORIZATION);
    }
    headers.remove(crate::session::CSRF_HEADER);
}

/// Sets the `X-Forwarded-*` and `Forwarded` headers for a request from `peer` to `host`.
/// What a client sent in `X-Forwarded-For` and `Forwarded` is kept before the real peer (an
/// application that trusts only the last entry, the one this router adds, cannot be fooled);
/// `X-Forwarded-Proto` and `X-Forwarded-Host` are replaced.
pub fn add_forwarded(headers: &mut HeaderMap, peer: Option<SocketAddr>, host: &str) {
    let joined = |headers: &HeaderMap, name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect()
    };
    let mut xff = joined(headers, "x-forwarded-for");
    let mut forwarded = joined(headers, "forwarded");
    headers.remove("x-forwarded-for");
    headers.remove("forwarded");
    headers.remove("x-forwarded-proto");
    headers.remove("x-forwarded-host");
    let Some(peer) = peer else {
        // Without the real peer, nothing a client claims about itself is passed on.
        return;
    };
    let ip = peer.ip().to_canonical();
    xff.push(ip.to_string());
    let node = match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut element = format!("for={node};proto=http");
    // A host is quoted unless it is a token; a preview host (labels, dots, a port) may
    // contain `:`, which is not a token character.
    if host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        && !host.is_empty()
    {
        element.push_str(&format!(";host=\"{host}\""));
    }
    forwarded.push(element);
    let set = |headers: &mut HeaderMap, name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    set(headers, "x-forwarded-for", xff.join(", "));
    set(headers, "forwarded", forwarded.join(", "));
    set(headers, "x-forwarded-proto", "http".into());
    if !host.is_empty() {
        set(headers, "x-forwarded-host", host.into());
    }
}

/// Removes a response's `Set-Cookie` headers that would set Slipway's session cookie: an
/// application on a preview host could otherwise plant one for the whole of `localhost`.
pub fn strip_slipway_set_cookie(headers: &mut HeaderMap) {
    let kept: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|value| {
            let text = String::from_utf8_lossy(value.as_bytes());
            let name = text.split(['=', ';']).next().unwrap_or("").trim();
            name != crate::session::COOKIE_NAME
        })
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for value in kept {
        headers.append(header::SET_COOKIE, value);
    }
}

fn error(status: StatusCode, error: String, hint: String) -> Response {
    let body = serde_json::json!({"error": error, "hint": hint});
    (status, axum::Json(body)).into_response()
}

/// Middleware: proxies preview hosts, passes everything else on to the API.
pub async fn route(State(previews): State<Previews>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let Some((env, stack)) = host
        .as_deref()
        .and_then(parse_host)
        .map(|(e, s)| (e, s.to_string()))
    else {
        return next.run(request).await;
    };
    let Some(base) = lookup(&previews.controller, &env, &stack).await else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no environment `{env}` of stack `{stack}` serves an exposed process here"),
            "`slipway env list` shows the environments; a process needs `expose:` to get a preview URL".into(),
        );
    };
    let Ok(permit) = previews.in_flight.clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests through preview URLs are in flight".into(),
            "try again shortly; [server] max_connections sets the limit (half of it)".into(),
        );
    };
    let mut request = request;
    let upgrade = upgrade_protocol(request.headers());
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    strip_hop_by_hop(&mut parts.headers);
    strip_slipway_credentials(&mut parts.headers);
    add_forwarded(&mut parts.headers, peer, host.as_deref().unwrap_or(""));
    if let Some(protocol) = &upgrade {
        // The one hop-by-hop pair a proxy passes on on purpose: the handshake.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol.clone());
    }
    // Only what the router added to the request's extensions is ours; none goes upstream.
    parts.extensions = axum::http::Extensions::new();
    let retryable = upgrade.is_none()
        && (parts.method == axum::http::Method::GET || parts.method == axum::http::Method::HEAD);
    let mut base = base;
    let mut body = Some(body);
    for attempt in 0..3 {
        let Ok(uri) = format!("{base}{path}").parse::<Uri>() else {
            return (StatusCode::BAD_REQUEST, "bad request path").into_response();
        };
        let mut forwarded = axum::http::Request::from_parts(
            parts.clone(),
            if attempt == 0 {
                body.take().unwrap_or_default()
            } else {
                Body::empty()
            },
        );
        *forwarded.uri_mut() = uri;
        let sent = tokio::time::timeout(
            previews.timeouts.response,
            previews.client.request(forwarded),
        )
        .await;
        match sent {
            Ok(Ok(mut response)) => {
                let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                let upstream_upgrade = switching.then(|| hyper::upgrade::on(&mut response));
                let (mut rparts, rbody) = response.into_parts();
                let answered = upgrade_protocol(&rparts.headers);
                strip_hop_by_hop(&mut rparts.headers);
                strip_slipway_set_cookie(&mut rparts.headers);
                if let (Some(client), Some(upstream), Some(protocol)) =
                    (client_upgrade, upstream_upgrade, answered)
                {
                    rparts
                        .headers
                        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    rparts.headers.insert(header::UPGRADE, protocol);
                    tokio::spawn(splice(client, upstream, permit));
                    return Response::from_parts(rparts, Body::empty());
                }
                if switching {
                    // A 101 the client did not ask for, or without an `Upgrade`: nothing
                    // sensible can follow it on this connection.
                    return error(
                        StatusCode::BAD_GATEWAY,
                        format!("the exposed process of `{env}` switched protocols unasked"),
                        "send `Connection: upgrade` and `Upgrade:` to open a WebSocket".into(),
                    );
                }
                // The permit is released when the body is sent or dropped.
                let rbody = rbody.map_frame(move |frame| {
                    let _ = &permit;
                    frame
                });
                return Response::from_parts(rparts, Body::new(rbody));
            }
            Ok(Err(e)) if retryable && attempt < 2 && e.is_connect() => {
                // The instance we looked up is gone: a deploy switched it. Look again.
                tokio::time::sleep(Duration::from_millis(50)).await;
                match lookup(&previews.controller, &env, &stack).await {
                    Some(fresh) => base = fresh,
                    None => break,
                }
            }
            Ok(Err(e)) => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    format!("the exposed process of `{env}` did not answer: {e}"),
                    format!("`slipway logs --env {env}` shows its output"),
                );
            }
            Err(_) => {
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "the exposed process of `{env}` did not answer within {}",
                        humantime::format_duration(previews.timeouts.response)
                    ),
                    format!(
                        "`slipway logs --env {env}` shows its output; [server] preview_timeout sets the limit"
                    ),
                );
            }
        }
    }
    error(
        StatusCode::BAD_GATEWAY,
        format!("the exposed process of `{env}` is not reachable"),
        format!("`slipway status --env {env}`"),
    )
}

/// Copies both ways between an upgraded client connection and the application's, until
/// either side closes.
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    _permit: OwnedSemaphorePermit,
) {
    let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else {
        return;
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> EnvName {
        EnvName::parse(name).expect("the test's environment names are DNS labels")
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("a name"),
                HeaderValue::from_str(value).expect("a value"),
            );
        }
        map
    }

    fn values(map: &HeaderMap, name: &str) -> Vec<String> {
        map.get_all(name)
            .iter()
            .map(|v| v.to_str().expect("text").to_string())
            .collect()
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut map = headers(&[
            ("connection", "close, X-Secret-Hop"),
            ("connection", "x-other"),
            ("x-secret-hop", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut map);
        let left: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, vec!["x-end-to-end"], "only end-to-end headers remain");
    }

    #[test]
    fn slipway_credentials_are_removed_and_the_applications_kept() {
        let mut map = headers(&[
            ("cookie", "app=1; slipway_session=abc; theme=dark"),
            ("cookie", "slipway_session=def"),
            ("authorization", "Bearer slw_secret"),
            ("x-slipway-csrf", "c"),
        ]);
        strip_slipway_credentials(&mut map);
        assert_eq!(values(&map, "cookie"), vec!["app=1; theme=dark"]);
        assert!(
            map.get("authorization").is_none(),
            "a Slipway token is removed"
        );
        assert!(map.get("x-slipway-csrf").is_none());

        let mut own = headers(&[
            ("authorization", "Bearer eyJhbGciOi"),
            ("cookie", "slipway_session_other=1"),
        ]);
        strip_slipway_credentials(&mut own);
        assert_eq!(
            values(&own, "authorization"),
            vec!["Bearer eyJhbGciOi"],
            "the application's own credentials pass"
        );
        assert_eq!(
            values(&own, "cookie"),
            vec!["slipway_session_other=1"],
            "only the exact cookie name is Slipway's"
        );
    }

    #[test]
    fn forwarding_headers_name_the_real_peer_last() {
        let mut map = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "7.7.7.7"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ]);
        let peer: SocketAddr = "127.0.0.1:5555".parse().expect("addr");
        add_forwarded(&mut map, Some(peer), "dev.shop.localhost:7300");
        assert_eq!(
            values(&map, "x-forwarded-for"),
            vec!["6.6.6.6, 7.7.7.7, 127.0.0.1"]
        );
        assert_eq!(
            values(&map, "forwarded"),
            vec!["for=6.6.6.6, for=127.0.0.1;proto=http;host=\"dev.shop.localhost:7300\""]
        );
        assert_eq!(values(&map, "x-forwarded-proto"), vec!["http"]);
        assert_eq!(
            values(&map, "x-forwarded-host"),
            vec!["dev.shop.localhost:7300"]
        );

        let mut v6 = HeaderMap::new();
        add_forwarded(&mut v6, Some("[::1]:1".parse().expect("addr")), "");
        assert_eq!(values(&v6, "forwarded"), vec!["for=\"[::1]\";proto=http"]);

        let mut unknown = headers(&[("x-forwarded-for", "6.6.6.6")]);
        add_forwarded(&mut unknown, None, "h");
        assert!(
            unknown.get("x-forwarded-for").is_none(),
            "without a known peer, nothing a client claims is passed on"
        );
    }

    #[test]
    fn a_response_cannot_set_slipways_session_cookie() {
        let mut map = headers(&[
            ("set-cookie", "slipway_session=planted; Domain=localhost"),
            ("set-cookie", "app=ok; Path=/"),
        ]);
        strip_slipway_set_cookie(&mut map);
        assert_eq!(values(&map, "set-cookie"), vec!["app=ok; Path=/"]);
    }

    #[test]
    fn only_the_port_named_in_expose_is_a_target() {
        let record = |config: serde_json::Value, status| slipway_state::ResourceRecord {
            environment: env("dev"),
            name: "web".into(),
            type_name: "process".into(),
            status,
            config,
            resolved_hash: None,
            outputs: serde_json::json!({
                "url": "http://127.0.0.1:20001",
                "ports": {"admin": 20001, "http": 20002}
            }),
            secret_outputs: Vec::new(),
            live: serde_json::json!({}),
            depends_on: Vec::new(),
            error: None,
            updated_at: 0,
            sensitive: false,
        };
        let exposed = record(serde_json::json!({"expose": "http"}), ResourceStatus::Ready);
        assert_eq!(
            exposed_address(std::slice::from_ref(&exposed)).as_deref(),
            Some("http://127.0.0.1:20002"),
            "the exposed port, not the first one nor the `url` output"
        );
        let unexposed = record(
            serde_json::json!({"ports": ["admin", "http"]}),
            ResourceStatus::Ready,
        );
        assert_eq!(
            exposed_address(&[unexposed]),
            None,
            "no `expose`, no preview target"
        );
        let deleting = record(
            serde_json::json!({"expose": "http"}),
            ResourceStatus::Deleting,
        );
        assert_eq!(exposed_address(&[deleting]), None);
    }

    #[test]
    fn preview_hosts_are_recognised_and_others_are_not() {
        assert_eq!(
            parse_host("pr-42.shop.localhost:7300"),
            Some((EnvName::pull_request(42), "shop"))
        );
        assert_eq!(
            parse_host("dev.shop.localhost"),
            Some((EnvName::parse("dev").expect("a name"), "shop"))
        );
        assert_eq!(parse_host("127.0.0.1:7300"), None);
        assert_eq!(parse_host("localhost:7300"), None);
        assert_eq!(parse_host("a.b.c.localhost"), None, "only <env>.<stack>");
        assert_eq!(parse_host("../x.shop.localhost"), None);
        assert_eq!(parse_host("Dev.shop.localhost"), None);
    }
}
