//! Browser sessions, for the web UI: an API token is exchanged once for a session cookie, and
//! the cookie is then accepted in place of the token, under a CSRF check.
//!
//! - `POST /api/v1/session` with `Authorization: Bearer <token>` starts a session: the answer
//!   sets the cookie `slipway_session` (`HttpOnly; SameSite=Strict; Path=/`) and carries a
//!   CSRF token. The API token itself is never stored in the browser.
//! - The guard accepts the cookie when no `Authorization` header is sent, and only with the
//!   session's CSRF token: every call made with the cookie, reads included, sends it in
//!   `X-Slipway-CSRF` (an event stream's `GET` may send it as the query's `csrf`, as an
//!   `EventSource` must),
//!   else it is refused with `403` before its handler runs. A forged form post carries the
//!   cookie (at most: `SameSite=Strict` already keeps it off cross-site requests) but cannot
//!   know the token, nor set a custom header. Reads need it too because a browser sends the
//!   cookie to every port of the host, so to any process of an environment listening there
//!   that a branch's page sends the browser to; the UI keeps the token in its origin's
//!   `localStorage`, which no other port's page can read.
//! - `GET /api/v1/whoami` says who the caller is and, for a session, its CSRF token.
//! - `DELETE /api/v1/session` ends the session and clears the cookie.
//!
//! Sessions are kept in the state store (`slipway_state`'s `browser_sessions`), not in the
//! server's memory: with several replicas on one PostgreSQL state, any replica answers a
//! session started on another and `DELETE /api/v1/session` on one ends it on all, with no
//! sticky load balancer; a restarted server keeps its sessions.
//!
//! # Guarantees
//! - A session never outlives its token: each request through it looks the session and the
//!   token up again in the store, so a revoked token ends its sessions at once, on every
//!   replica. Its role is the token's role at that moment.
//! - Session ids and CSRF tokens are 256 random bits from the operating system; sessions are
//!   kept by the SHA-256 of their id (the store never sees the id written), and CSRF tokens
//!   compared in constant time.
//! - A session lasts [`LIFETIME`] from login. A token keeps at most 32 (a login past that
//!   ends its own oldest: one token's flood of logins pushes nobody else out), and at most
//!   [`MAX_SESSIONS`] are kept in all: each login deletes the ended ones, and at the bound
//!   those that end soonest (their users log in again), so a flood of logins cannot grow the
//!   table without end.
//! - A cookie that is not a session id this server could have made (43 base64url
//!   characters) is refused with `401` before the store is asked.
//! - Sessions are not an environment's state: starting or ending one proves no lease, so
//!   every replica, holding leases or not, does both. A replica that stepped aside for a
//!   newer Slipway answers `503` to a login or logout (it writes nothing) and still accepts
//!   the sessions there are.
//!
//! # Caveats
//! - A session ends at the time the replica that started it gave it, compared with the
//!   clock of the replica that reads it: replicas whose clocks disagree end it that much
//!   apart.
//! - `slipway state migrate` leaves sessions behind (users log in again; their tokens move);
//!   a backup carries them.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use schemars::JsonSchema;
use serde::Serialize;
use slipway_state::{SessionRecord, Store, now_ms};

use crate::auth::{Credential, Principal, Role};
use crate::body::{JsonBody, NoFields};
use crate::error::ApiError;
use crate::routes::Route;
use crate::{AppState, rfc3339};

/// The cookie that carries a session id.
pub(crate) const COOKIE_NAME: &str = "slipway_session";

/// The header a mutating call made with the cookie carries the session's CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-slipway-csrf";

/// How long a session lasts after login.
pub(crate) const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Most sessions kept at once; past it, those that end soonest are dropped (their users log
/// in again).
pub(crate) const MAX_SESSIONS: usize = 10_000;

/// How long a session id is: 32 random bytes in unpadded base64url.
const ID_LENGTH: usize = 43;

/// 256 random bits as unpadded base64url: a session id or a CSRF token.
fn random_secret() -> String {
    let token = slipway_state::new_token();
    // `new_token` is a prefix plus 32 random bytes in base64url; only the random part is kept.
    match token.split_once('_') {
        Some((_, random)) => random.to_string(),
        None => token,
    }
}

/// Whether `id` could be a session id this server made: anything else is refused without
/// asking the store.
pub(crate) fn is_session_id(id: &str) -> bool {
    id.len() == ID_LENGTH
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// Starts a session for the token of `token_hash`; returns its id and the session.
pub(crate) fn start(
    store: &Store,
    token_hash: &str,
) -> Result<(String, SessionRecord), slipway_state::StateError> {
    let id = random_secret();
    let now = now_ms();
    let session = SessionRecord {
        token_hash: token_hash.to_string(),
        csrf: random_secret(),
        created_at: now,
        expires_at: now.saturating_add(i64::try_from(LIFETIME.as_millis()).unwrap_or(i64::MAX)),
    };
    store.start_session(&id, &session, MAX_SESSIONS)?;
    Ok((id, session))
}

/// The live session of `id`, if there is one.
pub(crate) fn find(
    store: &Store,
    id: &str,
) -> Result<Option<SessionRecord>, slipway_state::StateError> {
    if !is_session_id(id) {
        return Ok(None);
    }
    store.session(id, now_ms())
}

/// The session id the request's `Cookie` headers carry, if any.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim().trim_matches('"').to_string())
        .filter(|value| !value.is_empty())
}

/// Whether the request carries `expected` in [`CSRF_HEADER`], compared in constant time.
pub(crate) fn csrf_matches(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(CSRF_HEADER)
        .is_some_and(|sent| same_secret(sent.as_bytes(), expected))
}

/// Whether the request carries `expected` in [`CSRF_HEADER`], or, for a `GET` of an event
/// stream (`/api/v1/events`, a log's `…/follow`: an `EventSource` cannot send a header), in
/// its query's `csrf`, compared in constant time. Only there: a query is what proxies log.
pub(crate) fn csrf_sent(request: &Parts, expected: &str) -> bool {
    if csrf_matches(&request.headers, expected) {
        return true;
    }
    let path = request.uri.path();
    let stream = path == "/api/v1/events"
        || (path.starts_with("/api/v1/environments/") && path.ends_with("/follow"));
    if request.method != Method::GET || !stream {
        return false;
    }
    // A token is base64url: sent as it is, never percent-encoded.
    request
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.strip_prefix("csrf="))
        .any(|sent| same_secret(sent, expected))
}

/// Whether `sent` is `expected`, compared in constant time.
pub(crate) fn same_secret(sent: impl AsRef<[u8]>, expected: &str) -> bool {
    let (sent, expected) = (sent.as_ref(), expected.as_bytes());
    if sent.len() != expected.len() {
        return false;
    }
    sent.iter()
        .zip(expected)
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

fn set_cookie(id: &str, max_age: Duration) -> HeaderValue {
    // `Secure` is left out: the server speaks plain HTTP on 127.0.0.1, where browsers would
    // drop a Secure cookie set over http. Put it behind TLS and a proxy that adds it.
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        max_age.as_secs()
    ))
    .expect("a session id is base64url, which is a valid header value")
}

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::post("/api/v1/session", login)
            .id("createSession", "session.create")
            .summary(
                "Start a browser session",
                "Exchanges the bearer token of the call for a session cookie (`slipway_session`: HttpOnly, SameSite=Strict), as the web UI's login does. The answer's `csrf` must be sent in `X-Slipway-CSRF` with every call made with the cookie, reads included (an event stream's GET may send it as the query's `csrf`, as an EventSource must); without it such calls are refused with 403: a browser sends the cookie to every port of the host, where environments' processes listen. The session lasts 12 hours and ends with the token's revocation; it is kept in the state, so every replica sharing it accepts the cookie and a restart keeps it.",
            )
            .json::<SessionView>(StatusCode::CREATED, "The session started; the cookie is set."),
        Route::delete("/api/v1/session", logout)
            .id("endSession", "session.end")
            .summary(
                "End a browser session",
                "Ends the session of the cookie sent (the web UI's logout), on every replica, and clears the cookie. With a bearer token alone there is no session to end, and `ended` is false.",
            )
            .json::<SessionEnded>(StatusCode::OK, "The session is over; the cookie is cleared."),
        Route::get("/api/v1/whoami", whoami)
            .id("whoami", "session.whoami")
            .summary(
                "Say who the caller is",
                "The name and role of the caller's token, and for a browser session its CSRF token and end: what the web UI needs to know which actions to offer.",
            )
            .json::<Whoami>(StatusCode::OK, "The caller."),
    ]
}

/// A browser session.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Session")]
struct SessionView {
    /// The token's name.
    name: String,
    role: Role,
    /// Send it in `X-Slipway-CSRF` with every call made with the cookie.
    csrf: String,
    #[schemars(extend("format" = "date-time"))]
    expires_at: String,
}

#[derive(Debug, Serialize, JsonSchema)]
struct SessionEnded {
    /// Whether a session was ended (false for a bearer token).
    ended: bool,
}

/// The caller.
#[derive(Debug, Serialize, JsonSchema)]
struct Whoami {
    /// The token's name, recorded as the author of what it does.
    name: String,
    role: Role,
    /// How the call was authenticated.
    via: Via,
    /// For a session: what to send in `X-Slipway-CSRF`.
    #[serde(skip_serializing_if = "Option::is_none")]
    csrf: Option<String>,
    /// For a session: when it ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    expires_at: Option<String>,
}

/// How a call was authenticated.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Via {
    Bearer,
    Session,
}

async fn login(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    JsonBody(NoFields {}): JsonBody<NoFields>,
) -> Result<Response, ApiError> {
    let token_hash = caller.token_hash.clone();
    // Logging in again from a browser replaces the session it had.
    let old = match &caller.via {
        Credential::Session { id, .. } => Some(id.clone()),
        Credential::Bearer => None,
    };
    let (id, session) = app
        .blocking(move |controller| {
            let store = controller.engine().store();
            let started = start(store, &token_hash)?;
            if let Some(old) = old {
                store.end_session(&old)?;
            }
            Ok(started)
        })
        .await?;
    let body = SessionView {
        name: caller.name,
        role: caller.role,
        csrf: session.csrf,
        expires_at: rfc3339(session.expires_at),
    };
    Ok((
        StatusCode::CREATED,
        [(SET_COOKIE, set_cookie(&id, LIFETIME))],
        Json(body),
    )
        .into_response())
}

async fn logout(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    JsonBody(NoFields {}): JsonBody<NoFields>,
) -> Result<Response, ApiError> {
    let ended = match caller.via {
        Credential::Session { id, .. } => {
            app.blocking(move |controller| Ok(controller.engine().store().end_session(&id)?))
                .await?
        }
        Credential::Bearer => false,
    };
    Ok((
        [(SET_COOKIE, set_cookie("", Duration::ZERO))],
        Json(SessionEnded { ended }),
    )
        .into_response())
}

async fn whoami(Extension(caller): Extension<Principal>) -> Json<Whoami> {
    let (via, csrf, expires_at) = match caller.via {
        Credential::Bearer => (Via::Bearer, None, None),
        Credential::Session {
            csrf, expires_at, ..
        } => (Via::Session, Some(csrf), Some(rfc3339(expires_at))),
    };
    Json(Whoami {
        name: caller.name,
        role: caller.role,
        via,
        csrf,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_static("a=1; slipway_session=abc; b=2"),
        );
        assert_eq!(session_cookie(&headers).as_deref(), Some("abc"));
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1"));
        headers.append(COOKIE, HeaderValue::from_static("slipway_session=xyz"));
        assert_eq!(session_cookie(&headers).as_deref(), Some("xyz"));
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_static("not_slipway_session=abc; slipway_session="),
        );
        assert_eq!(
            session_cookie(&headers),
            None,
            "an empty or other cookie is none"
        );
    }

    #[test]
    fn the_csrf_token_must_match_exactly() {
        let mut headers = HeaderMap::new();
        assert!(!csrf_matches(&headers, "secret"), "a missing header fails");
        headers.insert(CSRF_HEADER, HeaderValue::from_static("secreT"));
        assert!(!csrf_matches(&headers, "secret"), "a different value fails");
        headers.insert(CSRF_HEADER, HeaderValue::from_static("secret-and-more"));
        assert!(!csrf_matches(&headers, "secret"), "a longer value fails");
        headers.insert(CSRF_HEADER, HeaderValue::from_static("secret"));
        assert!(csrf_matches(&headers, "secret"));
    }

    #[test]
    fn only_what_could_be_a_session_id_is_looked_up() {
        let id = random_secret();
        assert!(is_session_id(&id), "a made id is one: {id}");
        assert_ne!(id, random_secret(), "ids are random");
        for hostile in [
            "",
            "abc",
            &"A".repeat(44),
            &"A".repeat(4096),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA+",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAé",
        ] {
            assert!(!is_session_id(hostile), "{hostile:?} is no session id");
        }
    }
}
