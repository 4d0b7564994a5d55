//! Who may open a private preview URL (`access: private`, SPEC §3), and the sign-in that lets
//! a person in.
//!
//! A request to the preview host of a private environment is let through when it carries,
//! for that environment:
//! - a signed link ([`slipway_controller::links`]) in the preview cookie
//!   ([`COOKIE`], set on the preview host by [`AUTH_PATH`]) or in [`LINK_HEADER`] (what one
//!   replica sends another it forwards a request to; a client may send one too);
//! - or a Slipway API token (`Authorization: Bearer slw_...`) that is active, of any role:
//!   what a script or `curl` uses.
//!
//! Anything else gets `401`: for a browser (`Accept: text/html`) a page saying the preview is
//! private with a link to sign in through Slipway; for other clients JSON saying how to get
//! in. The sign-in ([`SIGN_IN_PATH`], on the server's own host) needs the web UI's session
//! and a `POST` from the UI with its CSRF token (see [`sign_in`]): it makes a link holding
//! until the session ends (at most [`slipway_controller::links::MAX_LINK`]), and sends the
//! browser to the preview host's [`AUTH_PATH`], which sets the preview cookie and sends it
//! on to the page it asked for; a `GET` (the private page's link) goes through the UI.
//!
//! # What never reaches the application
//! The preview cookie, [`LINK_HEADER`] and Slipway tokens are removed before a request is
//! passed on (`preview::strip_slipway_credentials`), and a response cannot set the preview
//! cookie. [`AUTH_PATH`] is the router's own on every preview host, public ones too.
//!
//! # Who can trigger what
//! Anyone who can reach the router can ask for a private preview and gets the `401`; the
//! check reads the state only once a link's tag holds or a token of the right shape is sent.
//! `next` (where the browser goes after the sign-in) is a path on the preview host only: an
//! absolute URL, `//host` or a backslash is replaced by `/`, so the sign-in is no open
//! redirect.

use std::time::Duration;

use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use slipway_controller::Controller;
use slipway_controller::links::{AUTH_PATH, MAX_LINK, Refused};
use slipway_core::EnvName;
use slipway_state::now_ms;

/// The cookie a signed link leaves on the preview host.
pub const COOKIE: &str = "slipway_preview";

/// The header a signed link may be sent in (between replicas, or by a client).
pub const LINK_HEADER: &str = "x-slipway-link";

/// The path of the server's own host that signs a person in to a private preview
/// (`?env=E&stack=S&next=/path`).
pub const SIGN_IN_PATH: &str = "/.slipway/preview-sign-in";

/// The most links one request is checked with (its link headers and preview cookies).
const MAX_LINKS: usize = 32;

/// How long a link made for a replica it forwards a request to holds.
pub(crate) const FORWARD_LINK: Duration = Duration::from_secs(60);

/// Why a request for a private preview is not let in.
enum Denied {
    /// It carried nothing that lets it in.
    Nothing,
    /// Its link was refused.
    Link(Refused),
    /// Its token is unknown or revoked.
    Token,
    /// The state cannot be read.
    Unavailable,
}

/// Whether a request with `headers` may reach the private preview of `env` of `stack`.
/// `Err` is the answer to give instead.
pub(crate) async fn admit(
    controller: &Controller,
    env: &EnvName,
    stack: &str,
    headers: &HeaderMap,
    main_host: Option<&str>,
    path: &str,
) -> Result<(), Response> {
    let links: Vec<String> = headers
        .get_all(LINK_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .chain(cookie_values(headers, COOKIE))
        // Checking one costs an HMAC (the state is read only for one that holds), and a page
        // of a sibling preview can set cookies of this name for the whole stack's domain:
        // enough are read that a few planted ones do not hide the visitor's own.
        .take(MAX_LINKS)
        .collect();
    let token = slipway_token(headers);
    let (c, e, s) = (controller.clone(), env.clone(), stack.to_string());
    let verdict = tokio::task::spawn_blocking(move || {
        let mut last = Denied::Nothing;
        for link in &links {
            match c.check_link(link, &e, &s) {
                Ok(_) => return Ok(()),
                Err(refused) => last = Denied::Link(refused),
            }
        }
        if let Some(token) = token {
            return match c
                .engine()
                .store()
                .token_by_hash(&slipway_state::hash_token(&token))
            {
                Ok(Some(record)) if record.is_active() => Ok(()),
                Ok(_) => Err(Denied::Token),
                Err(_) => Err(Denied::Unavailable),
            };
        }
        Err(last)
    })
    .await
    .unwrap_or(Err(Denied::Unavailable));
    verdict.map_err(|denied| refusal(denied, env, stack, headers, main_host, path))
}

/// The answer when whether a request may reach a private preview cannot be told: the state
/// cannot be read. A 503 to retry, never the preview.
pub(crate) fn unavailable() -> Response {
    let body = serde_json::json!({
        "error": "the state store cannot be read just now",
        "hint": "try again shortly; GET /healthz says whether this server reaches its state",
    });
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// `GET AUTH_PATH?link=...&next=/path` on a preview host: the link checked, the preview
/// cookie set, and the browser sent on to `next`.
pub(crate) async fn take_link(
    controller: &Controller,
    env: &EnvName,
    stack: &str,
    request: &Parts,
    main_host: Option<&str>,
) -> Response {
    let query = request.uri.query().unwrap_or("");
    let mut link = None;
    let mut next = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()).take(8) {
        match key.as_ref() {
            "link" if link.is_none() => link = Some(value.into_owned()),
            "next" if next.is_none() => next = Some(value.into_owned()),
            _ => {}
        }
    }
    let next = safe_next(next.as_deref());
    let Some(link) = link else {
        return refusal(
            Denied::Nothing,
            env,
            stack,
            &request.headers,
            main_host,
            &next,
        );
    };
    let (c, e, s, l) = (
        controller.clone(),
        env.clone(),
        stack.to_string(),
        link.clone(),
    );
    let checked = tokio::task::spawn_blocking(move || c.check_link(&l, &e, &s))
        .await
        .unwrap_or(Err(Refused::Gone));
    match checked {
        Ok(checked) => {
            let seconds = (checked.expires_at - now_ms()).max(0) / 1000;
            let cookie =
                format!("{COOKIE}={link}; Path=/; HttpOnly; SameSite=Lax; Max-Age={seconds}");
            let mut response = StatusCode::SEE_OTHER.into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::LOCATION,
                HeaderValue::from_str(&next).unwrap_or(HeaderValue::from_static("/")),
            );
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                headers.insert(header::SET_COOKIE, value);
            }
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(refused) => refusal(
            Denied::Link(refused),
            env,
            stack,
            &request.headers,
            main_host,
            &next,
        ),
    }
}

/// The sign-in, on the server's own host. `GET SIGN_IN_PATH?env=E&stack=S&next=/path` (the
/// link of a private preview's page) sends the browser to the UI: its login without a
/// session, which then comes back here; with one, a question the person answers. Only
/// `POST SIGN_IN_PATH` from the UI, its form (`env`, `stack`, `next` and the session's
/// `csrf`) in `form`, makes the link, holding until the session ends, and sends the browser
/// to the preview host's [`AUTH_PATH`]. The previews of a stack share a site with this host,
/// so the `SameSite=Strict` session cookie goes with any request a preview's page makes
/// here (a frame, an image, a script's navigation, a form): only the session's CSRF token,
/// which no other page can read, says the person asked.
pub(crate) async fn sign_in(
    controller: &Controller,
    request: &Parts,
    form: Option<&str>,
) -> Response {
    let fields = form.unwrap_or_else(|| request.uri.query().unwrap_or(""));
    let (mut env, mut stack, mut next, mut csrf) = (None, None, None, None);
    for (key, value) in form_urlencoded::parse(fields.as_bytes()).take(8) {
        match key.as_ref() {
            "env" if env.is_none() => env = Some(value.into_owned()),
            "stack" if stack.is_none() => stack = Some(value.into_owned()),
            "next" if next.is_none() => next = Some(value.into_owned()),
            "csrf" if csrf.is_none() => csrf = Some(value.into_owned()),
            _ => {}
        }
    }
    let Some(env) = env.and_then(|e| EnvName::parse(&e).ok()) else {
        return bad_request("`env` names no environment: a DNS label such as `pr-42`");
    };
    let Some(stack) = stack.filter(|s| slipway_core::stack::is_dns_label(s)) else {
        return bad_request("`stack` names no stack: a DNS label such as `shop`");
    };
    let next = safe_next(next.as_deref());
    let session = crate::session::session_cookie(&request.headers);
    let (Some(session), Some(csrf), Some(_)) = (session, csrf, form) else {
        // The UI: its login, or its question with the form that comes back here.
        return to_login(&env, &stack, &next);
    };
    let (asked, stack_asked) = (env.clone(), stack.clone());
    let c = controller.clone();
    let made = tokio::task::spawn_blocking(move || {
        let store = c.engine().store();
        let Ok(Some(found)) = crate::session::find(store, &session) else {
            return Ok(None);
        };
        if !crate::session::same_secret(&csrf, &found.csrf) {
            return Ok(None);
        }
        let token = match store.token_by_hash(&found.token_hash) {
            Ok(Some(token)) if token.is_active() => token,
            _ => return Ok(None),
        };
        let record = match store.environment(&env) {
            Ok(Some(record)) if record.stack == stack => record,
            _ => return Err(()),
        };
        let until = found
            .expires_at
            .min(now_ms().saturating_add(MAX_LINK.as_millis() as i64));
        let link = c.link_until(&record, until).map_err(|_| ())?;
        // A link is a bearer credential that anyone holding it may use: who was given one,
        // for which preview and how long, is audited as a link made through the API is.
        let _ = store.record_audit(&slipway_state::NewAudit {
            at: now_ms(),
            who: token.name,
            action: "environment.link".into(),
            target: Some(env.to_string()),
            outcome: "ok".into(),
            detail: format!(
                "preview sign-in ({} token), until {}",
                token.role,
                crate::rfc3339(until)
            ),
        });
        Ok(Some(link))
    })
    .await
    .unwrap_or(Err(()));
    match made {
        Ok(Some(link)) => {
            let to = format!(
                "{}&{}",
                link.url,
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("next", &next)
                    .finish()
            );
            onward(&to)
        }
        Ok(None) => to_login(&asked, &stack_asked, &next),
        Err(()) => {
            let body = serde_json::json!({
                "error": "no such environment of that stack serves a preview here",
                "hint": "`slipway env list` shows the environments",
            });
            (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
        }
    }
}

/// The UI's login, told to come back to the sign-in.
fn to_login(env: &EnvName, stack: &str, next: &str) -> Response {
    let back = format!(
        "{SIGN_IN_PATH}?{}",
        form_urlencoded::Serializer::new(String::new())
            .append_pair("env", env.as_str())
            .append_pair("stack", stack)
            .append_pair("next", next)
            .finish()
    );
    let to = format!(
        "/?{}",
        form_urlencoded::Serializer::new(String::new())
            .append_pair("next", &back)
            .finish()
    );
    see_other(&to)
}

/// The answer to the UI's form: a page that goes on to `to` (the preview host) at once. Not a
/// redirect: the UI's `form-action 'self'` would stop the browser at one to another host.
fn onward(to: &str) -> Response {
    let to = escape(to);
    let page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"0;url={to}\">\
         <title>Opening the preview</title></head>\
         <body><p><a href=\"{to}\">Open the preview</a></p></body></html>\n"
    );
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn see_other(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn bad_request(error: &str) -> Response {
    let body = serde_json::json!({
        "error": error,
        "hint": "open the preview URL itself; its sign-in page links here",
    });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// `next` as a path on the same host: anything else (an absolute URL, `//host`, a
/// backslash, control characters, an overlong text) is `/`.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && path.len() <= 2048
                && !path.contains('\\')
                && path.bytes().all(|b| b.is_ascii_graphic())
                && !path.starts_with(AUTH_PATH) =>
        {
            path.to_string()
        }
        _ => "/".to_string(),
    }
}

/// The values of cookie `name` in the request's `Cookie` headers.
fn cookie_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(n, _)| n.trim() == name)
        .map(|(_, value)| value.trim().trim_matches('"').to_string())
        .filter(|value| !value.is_empty())
        .collect()
}

/// A Slipway API token sent as `Authorization: Bearer slw_...`.
fn slipway_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && token.starts_with("slw_") && token.len() <= 128)
        .then(|| token.to_string())
}

/// Whether the client is a browser that wants a page.
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// The `401` for a request not let in: a page for a browser, JSON for anything else.
fn refusal(
    denied: Denied,
    env: &EnvName,
    stack: &str,
    headers: &HeaderMap,
    main_host: Option<&str>,
    path: &str,
) -> Response {
    let why = match &denied {
        Denied::Nothing => "this preview is private".to_string(),
        Denied::Link(refused) => format!("this preview is private, and {refused}"),
        Denied::Token => "this preview is private, and the token sent is unknown or revoked".into(),
        Denied::Unavailable => return unavailable(),
    };
    let sign_in = main_host.map(|host| {
        format!(
            "http://{host}{SIGN_IN_PATH}?{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair("env", env.as_str())
                .append_pair("stack", stack)
                .append_pair("next", &safe_next(Some(path)))
                .finish()
        )
    });
    let mut response = if wants_html(headers) {
        let link = sign_in.as_deref().map_or(String::new(), |url| {
            format!(
                "<p><a href=\"{}\">Sign in with Slipway</a></p>",
                escape(url)
            )
        });
        let page = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>Private preview: {env}</title></head><body><main>\
             <h1>Private preview</h1><p>{}: <strong>{env}</strong> of <strong>{}</strong> \
             opens for people signed in to Slipway and for signed links.</p>{link}\
             <p>Someone who can sign in can make you a link: <code>slipway env link {env}</code>.\
             </p></main></body></html>",
            escape(&capitalize(&why)),
            escape(stack),
        );
        let mut response = (StatusCode::UNAUTHORIZED, page).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        response.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
        response
    } else {
        let body = serde_json::json!({
            "error": why,
            "hint": format!(
                "send `Authorization: Bearer <token>` (`slipway token create --role viewer`), \
                 open a signed link (`slipway env link {env}`), or sign in with a browser{}",
                sign_in.as_deref().map(|u| format!(" at {u}")).unwrap_or_default()
            ),
        });
        (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"slipway preview\""),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or(String::new(), |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The server's own host for a request to the preview host `host` of `env` and `stack`
/// (`pr-1.shop.localhost:7300` → `localhost:7300`).
pub(crate) fn main_host(host: &str, env: &EnvName, stack: &str) -> Option<String> {
    host.strip_prefix(&format!("{env}.{stack}."))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_the_preview_host() {
        for (given, want) in [
            (Some("/cart?x=1"), "/cart?x=1"),
            (None, "/"),
            (Some("https://evil.example/"), "/"),
            (Some("//evil.example/"), "/"),
            (Some("/\\evil.example"), "/"),
            (Some("/a b"), "/"),
            (Some("/.slipway/auth?link=x"), "/"),
            (Some(""), "/"),
        ] {
            assert_eq!(safe_next(given), want, "{given:?}");
        }
        assert_eq!(safe_next(Some(&format!("/{}", "a".repeat(5000)))), "/");
    }

    #[test]
    fn only_a_slipway_bearer_token_is_taken() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer slw_abc"),
        );
        assert_eq!(slipway_token(&headers).as_deref(), Some("slw_abc"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer app-token"),
        );
        assert_eq!(slipway_token(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic c2x3X2FiYw=="),
        );
        assert_eq!(slipway_token(&headers), None);
    }
}
