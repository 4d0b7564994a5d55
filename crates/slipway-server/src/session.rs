//! Browser sessions, for the web UI: an API token is exchanged once for a session cookie, and
//! the cookie is then accepted in place of the token, under a CSRF check.
//!
//! - `POST /api/v1/session` with `Authorization: Bearer <token>` starts a session: the answer
//!   sets the cookie `slipway_session` (`HttpOnly; SameSite=Strict; Path=/`) and carries a
//!   CSRF token. The API token itself is never stored in the browser.
//! - The guard accepts the cookie when no `Authorization` header is sent. A mutating call
//!   (`POST`, `DELETE`) made with the cookie must also send the session's CSRF token in
//!   `X-Slipway-CSRF`, else it is refused with `403` before its handler runs. A forged form
//!   post carries the cookie (at most: `SameSite=Strict` already keeps it off cross-site
//!   requests) but cannot know the header's value, nor set a custom header.
//! - `GET /api/v1/whoami` says who the caller is and, for a session, gives its CSRF token again
//!   (a page reloaded has lost it); a cross-origin page cannot read that answer.
//! - `DELETE /api/v1/session` ends the session and clears the cookie.
//!
//! # Guarantees
//! - A session never outlives its token: each request through it looks the token up again, so
//!   a revoked token ends its sessions at once. Its role is the token's role at that moment.
//! - Session ids and CSRF tokens are 256 random bits from the operating system; sessions are
//!   kept by the SHA-256 of their id, and CSRF tokens compared in constant time.
//!
//! # Caveats
//! Sessions live in the server's memory: a restarted server has none, and its users log in
//! again (their tokens are unchanged). They last [`LIFETIME`] from login.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use schemars::JsonSchema;
use serde::Serialize;
use slipway_state::now_ms;

use crate::auth::{Credential, Principal, Role};
use crate::body::{JsonBody, NoFields};
use crate::routes::Route;
use crate::{AppState, rfc3339};

/// The cookie that carries a session id.
pub(crate) const COOKIE_NAME: &str = "slipway_session";

/// The header a mutating call made with the cookie carries the session's CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-slipway-csrf";

/// How long a session lasts after login.
pub(crate) const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Most sessions kept at once; past it, the oldest are dropped (their users log in again).
const MAX_SESSIONS: usize = 10_000;

/// One browser's session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// The hash of the API token it was started with: looked up on every request.
    pub token_hash: String,
    /// What a mutating call must send in [`CSRF_HEADER`].
    pub csrf: String,
    /// When it ends, unix milliseconds.
    pub expires_at: i64,
}

/// The sessions of this server, by the SHA-256 of their id.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    by_hash: Mutex<HashMap<String, Session>>,
}

/// 256 random bits as unpadded base64url: a session id or a CSRF token.
fn random_secret() -> String {
    let token = slipway_state::new_token();
    // `new_token` is a prefix plus 32 random bytes in base64url; only the random part is kept.
    match token.split_once('_') {
        Some((_, random)) => random.to_string(),
        None => token,
    }
}

impl Sessions {
    /// Starts a session for the token of `token_hash`; returns its id and the session.
    pub fn start(&self, token_hash: &str) -> (String, Session) {
        let id = random_secret();
        let session = Session {
            token_hash: token_hash.to_string(),
            csrf: random_secret(),
            expires_at: now_ms()
                .saturating_add(i64::try_from(LIFETIME.as_millis()).unwrap_or(i64::MAX)),
        };
        let mut all = self.lock();
        let now = now_ms();
        all.retain(|_, s| s.expires_at > now);
        if all.len() >= MAX_SESSIONS {
            // Drop the tenth that ends soonest: a flood of logins cannot grow memory unbounded.
            let mut ends: Vec<(i64, String)> = all
                .iter()
                .map(|(key, s)| (s.expires_at, key.clone()))
                .collect();
            ends.sort_unstable();
            for (_, key) in ends.into_iter().take(MAX_SESSIONS / 10) {
                all.remove(&key);
            }
        }
        all.insert(slipway_state::hash_token(&id), session.clone());
        (id, session)
    }

    /// The live session of `id`, if there is one.
    pub fn get(&self, id: &str) -> Option<Session> {
        let key = slipway_state::hash_token(id);
        let mut all = self.lock();
        match all.get(&key) {
            Some(session) if session.expires_at > now_ms() => Some(session.clone()),
            Some(_) => {
                all.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session of `id`; returns whether there was one.
    pub fn end(&self, id: &str) -> bool {
        self.lock().remove(&slipway_state::hash_token(id)).is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock leaves a map that is still consistent (every
        // operation on it is a single insert or remove), so a poisoned lock is used as is.
        self.by_hash
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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
    let Some(sent) = headers.get(CSRF_HEADER).map(HeaderValue::as_bytes) else {
        return false;
    };
    let expected = expected.as_bytes();
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
                "Exchanges the bearer token of the call for a session cookie (`slipway_session`: HttpOnly, SameSite=Strict), as the web UI's login does. The answer's `csrf` must be sent in `X-Slipway-CSRF` with every `POST` or `DELETE` made with the cookie; without it such calls are refused with 403. The session lasts 12 hours, ends with the token's revocation, and does not survive a restart of the server.",
            )
            .json::<SessionView>(StatusCode::CREATED, "The session started; the cookie is set."),
        Route::delete("/api/v1/session", logout)
            .id("endSession", "session.end")
            .summary(
                "End a browser session",
                "Ends the session of the cookie sent (the web UI's logout) and clears the cookie. With a bearer token alone there is no session to end, and `ended` is false.",
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
    /// Send it in `X-Slipway-CSRF` with every POST or DELETE made with the cookie.
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
) -> Response {
    let (id, session) = app.sessions.start(&caller.token_hash);
    // Logging in again from a browser replaces the session it had.
    if let Credential::Session { id: old, .. } = &caller.via {
        app.sessions.end(old);
    }
    let body = SessionView {
        name: caller.name,
        role: caller.role,
        csrf: session.csrf,
        expires_at: rfc3339(session.expires_at),
    };
    (
        StatusCode::CREATED,
        [(SET_COOKIE, set_cookie(&id, LIFETIME))],
        Json(body),
    )
        .into_response()
}

async fn logout(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    JsonBody(NoFields {}): JsonBody<NoFields>,
) -> Response {
    let ended = match &caller.via {
        Credential::Session { id, .. } => app.sessions.end(id),
        Credential::Bearer => false,
    };
    (
        [(SET_COOKIE, set_cookie("", Duration::ZERO))],
        Json(SessionEnded { ended }),
    )
        .into_response()
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
    fn sessions_start_end_and_expire() {
        let sessions = Sessions::default();
        let (id, session) = sessions.start("hash");
        assert_ne!(
            id, session.csrf,
            "the id and the CSRF token are independent secrets"
        );
        assert!(id.len() >= 43, "256 bits in base64url: {id}");
        assert_eq!(sessions.get(&id).map(|s| s.token_hash), Some("hash".into()));
        assert!(sessions.get("another").is_none());
        assert!(sessions.end(&id));
        assert!(sessions.get(&id).is_none(), "an ended session is gone");
        assert!(!sessions.end(&id));
        let (id, _) = sessions.start("hash");
        sessions.lock().values_mut().for_each(|s| s.expires_at = 0);
        assert!(sessions.get(&id).is_none(), "an expired session is refused");
    }
}
