//! The preview-URL router: `http://<env>.<stack>.localhost:<port>/` on the server's own
//! listener is proxied to the environment's exposed process.
//!
//! The target is looked up in the state store for every request, so a deploy that records a
//! new instance switches traffic at once. A request whose connection is refused (the old
//! instance stopped between the lookup and the connect) is retried once against a fresh
//! lookup, so a deploy fails no request that carries no body.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use slipway_controller::Controller;

/// What the router needs: the controller (for the store) and an HTTP client.
#[derive(Clone)]
pub struct Previews {
    controller: Controller,
    client: Client<HttpConnector, Body>,
}

impl Previews {
    /// A router over `controller`'s environments.
    pub fn new(controller: Controller) -> Previews {
        Previews {
            controller,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

/// The `(environment, stack)` a preview host names, if it is one.
pub fn parse_host(host: &str) -> Option<(&str, &str)> {
    let name = host
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    let rest = name.strip_suffix(".localhost")?;
    let (env, stack) = rest.split_once('.')?;
    let label = |s: &str| slipway_core::stack::is_dns_label(s);
    (label(env) && label(stack)).then_some((env, stack))
}

/// The exposed address of `env`, if it belongs to `stack` and exposes a running process.
fn target(controller: &Controller, env: &str, stack: &str) -> Option<String> {
    let store = controller.engine().store();
    let record = store.environment(env).ok()??;
    if record.stack != stack {
        return None;
    }
    let resources = store.resources(env).ok()?;
    // Any status but `deleting`: during an update the record still holds the running
    // instance's address, and after a failed swap the old instance still serves.
    let exposed = resources.iter().find(|r| {
        r.type_name == "process" && r.config.get("expose").is_some() && r.status != "deleting"
    })?;
    exposed.outputs.get("url")?.as_str().map(str::to_string)
}

async fn lookup(controller: &Controller, env: &str, stack: &str) -> Option<String> {
    let (c, e, s) = (controller.clone(), env.to_string(), stack.to_string());
    tokio::task::spawn_blocking(move || target(&c, &e, &s))
        .await
        .ok()?
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

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
        .map(|(e, s)| (e.to_string(), s.to_string()))
    else {
        return next.run(request).await;
    };
    let Some(base) = lookup(&previews.controller, &env, &stack).await else {
        let body = serde_json::json!({"error": format!("no environment `{env}` of stack `{stack}` serves an exposed process here"), "hint": "`slipway env list` shows the environments; a process needs `expose:` to get a preview URL"});
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    };
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    for name in HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    if let Ok(value) = HeaderValue::from_str(host.as_deref().unwrap_or("")) {
        parts.headers.insert("x-forwarded-host", value);
    }
    let retryable =
        parts.method == axum::http::Method::GET || parts.method == axum::http::Method::HEAD;
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
        match previews.client.request(forwarded).await {
            Ok(response) => {
                let (mut rparts, rbody) = response.into_parts();
                for name in HOP_BY_HOP {
                    rparts.headers.remove(*name);
                }
                return Response::from_parts(rparts, Body::new(rbody));
            }
            Err(e) if retryable && attempt < 2 && e.is_connect() => {
                // The instance we looked up is gone: a deploy switched it. Look again.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                match lookup(&previews.controller, &env, &stack).await {
                    Some(fresh) => base = fresh,
                    None => break,
                }
            }
            Err(e) => {
                let body = serde_json::json!({"error": format!("the exposed process of `{env}` did not answer: {e}"), "hint": format!("`slipway logs --env {env}` shows its output")});
                return (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response();
            }
        }
    }
    let body = serde_json::json!({"error": format!("the exposed process of `{env}` is not reachable"), "hint": format!("`slipway status --env {env}`")});
    (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_hosts_are_recognised_and_others_are_not() {
        assert_eq!(
            parse_host("pr-42.shop.localhost:7300"),
            Some(("pr-42", "shop"))
        );
        assert_eq!(parse_host("dev.shop.localhost"), Some(("dev", "shop")));
        assert_eq!(parse_host("127.0.0.1:7300"), None);
        assert_eq!(parse_host("localhost:7300"), None);
        assert_eq!(parse_host("a.b.c.localhost"), None, "only <env>.<stack>");
        assert_eq!(parse_host("../x.shop.localhost"), None);
        assert_eq!(parse_host("Dev.shop.localhost"), None);
    }
}
