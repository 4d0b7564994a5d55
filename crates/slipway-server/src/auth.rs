//! Bearer tokens, roles and the audit log: the guard every route but the public ones runs
//! behind.
//!
//! The guard authenticates (401), authorizes (403), hands the handler the [`Principal`], and
//! afterwards writes the audit entry of a mutating call from the response: one place, so no
//! handler can forget it. Refusals are audited whatever the method.
//!
//! A request without an `Authorization` header may instead carry the web UI's session cookie
//! (`session.rs`); a mutating one must then also carry the session's CSRF token, or it is
//! refused with 403. A bearer token always wins over a cookie, so API clients are unaffected.

use std::sync::Arc;

use axum::RequestPartsExt;
use axum::extract::RawPathParams;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use slipway_core::vocab::EnvKind;
use slipway_state::{NewAudit, now_ms};

use crate::AppState;
use crate::error::{ApiError, ErrorNote};
use crate::routes::Access;

/// A role, weakest first: each may do all the ones before it may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    Viewer,
    Developer,
    Deployer,
    Admin,
}

impl Role {
    pub fn parse(role: &str) -> Option<Role> {
        match role {
            "viewer" => Some(Role::Viewer),
            "developer" => Some(Role::Developer),
            "deployer" => Some(Role::Deployer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Developer => "developer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }
}

/// Who is calling: the holder of a valid token.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    /// The token's name, recorded as the author of what it does.
    pub name: String,
    pub role: Role,
    /// The stored hash of the token (what a browser session is bound to).
    pub token_hash: String,
    /// How the token was presented.
    pub via: Credential,
}

/// How a request presented its token.
#[derive(Debug, Clone)]
pub(crate) enum Credential {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// The web UI's session cookie.
    Session {
        /// The session's id (the cookie's value).
        id: String,
        /// What its mutating calls must send in `X-Slipway-CSRF`.
        csrf: String,
        /// When it ends, unix milliseconds.
        expires_at: i64,
    },
}

/// What a handler may add to its response for the audit log: the target, when the path does
/// not name it (a created environment).
#[derive(Debug, Clone)]
pub(crate) struct AuditTarget(pub String);

/// The state of one route's guard.
#[derive(Clone)]
pub(crate) struct Guard {
    pub app: AppState,
    pub route: Arc<Guarded>,
}

/// What the guard knows of its route.
#[derive(Debug)]
pub(crate) struct Guarded {
    pub action: &'static str,
    pub summary: &'static str,
    pub access: Access,
    /// Whether a successful call is audited too (mutating calls).
    pub audited: bool,
}

/// The name recorded for calls without a valid token.
const ANONYMOUS: &str = "anonymous";

/// How long a token's `last_used_at` may lag: one write a minute per token, not one per call.
const TOUCH_EVERY_MS: i64 = 60_000;

pub(crate) async fn guard(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let route = &guard.route;
    if route.access == Access::Public {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let target = match parts.extract::<RawPathParams>().await {
        Ok(params) => params.iter().next().map(|(_, value)| value.to_string()),
        Err(_) => None,
    };
    let principal = match authenticate(&guard.app, &parts.headers).await {
        Ok(principal) => principal,
        Err(refusal) => return refuse(&guard, ANONYMOUS, target.as_deref(), refusal).await,
    };
    if let Credential::Session { csrf, .. } = &principal.via
        && !crate::session::csrf_sent(&parts, csrf)
    {
        // The cookie alone proves nothing, reads included: a cross-site request can make a
        // browser send it (SameSite aside), and a browser sends it to every port of the
        // host, so to any process an environment runs there that the browser is sent to.
        // Neither can read or guess the session's CSRF token, which the UI keeps in its own
        // origin's storage.
        let refusal = ApiError::client(
            StatusCode::FORBIDDEN,
            "a call made with the session cookie must send the session's CSRF token",
        )
        .hint(
            "send the `csrf` of POST /api/v1/session in `X-Slipway-CSRF` (an event stream's GET may send it as `?csrf=`, as an EventSource must), or authenticate with `Authorization: Bearer <token>`",
        );
        return refuse(&guard, &principal.name, target.as_deref(), refusal).await;
    }
    let needed = match needed_role(&guard, target.as_deref()).await {
        Ok(role) => role,
        Err(e) => return e.into_response(),
    };
    if principal.role < needed {
        let refusal = ApiError::client(
            StatusCode::FORBIDDEN,
            format!(
                "the {} token `{}` may not {}",
                principal.role.as_str(),
                principal.name,
                lowercase_first(route.summary)
            ),
        )
        .hint(format!(
            "this needs the {} role; ask an admin for a token with it",
            needed.as_str()
        ));
        return refuse(&guard, &principal.name, target.as_deref(), refusal).await;
    }
    parts.extensions.insert(principal.clone());
    let response = next.run(Request::from_parts(parts, body)).await;
    // A change forwarded to the replica that works on its environment was audited there.
    let relayed = response
        .extensions()
        .get::<crate::forward::Relayed>()
        .is_some();
    if route.audited && !relayed {
        let status = response.status();
        let outcome = if status.is_success() { "ok" } else { "failed" };
        let detail = match response.extensions().get::<ErrorNote>() {
            Some(ErrorNote(note)) => format!("{}: {note}", status.as_u16()),
            None => status.as_u16().to_string(),
        };
        let target = target.or_else(|| {
            response
                .extensions()
                .get::<AuditTarget>()
                .map(|t| t.0.clone())
        });
        record(
            &guard,
            &principal.name,
            target,
            outcome,
            detail,
            Entry::Call,
        )
        .await;
    }
    response
}

/// The token of `Authorization: Bearer <token>`, or else of the session cookie, checked
/// against the store.
async fn authenticate(app: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let unauthorized = |message: &str| {
        ApiError::client(StatusCode::UNAUTHORIZED, message).hint(
            "send `Authorization: Bearer <token>`; `slipway token create --role viewer` makes one",
        )
    };
    let (hash, via) = match headers.get(AUTHORIZATION) {
        Some(header) => {
            let token = header
                .to_str()
                .ok()
                .and_then(|value| {
                    let (scheme, token) = value.trim().split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
                })
                .filter(|token| !token.is_empty())
                .ok_or_else(|| unauthorized("the Authorization header is not `Bearer <token>`"))?;
            (slipway_state::hash_token(token), Credential::Bearer)
        }
        None => {
            let Some(id) = crate::session::session_cookie(headers) else {
                return Err(unauthorized("this route needs a bearer token"));
            };
            // Looked up in the store, which every replica shares; a value that cannot be a
            // session id is no session, and costs no query.
            let lookup = id.clone();
            let found = app
                .blocking(move |controller| {
                    Ok(crate::session::find(controller.engine().store(), &lookup)?)
                })
                .await?;
            let Some(session) = found else {
                return Err(ApiError::client(
                    StatusCode::UNAUTHORIZED,
                    "this session has ended (logged out or expired) or was never started",
                )
                .hint("log in again with a token, or send `Authorization: Bearer <token>`"));
            };
            let via = Credential::Session {
                id,
                csrf: session.csrf,
                expires_at: session.expires_at,
            };
            (session.token_hash, via)
        }
    };
    let controller = app.controller.clone();
    let lookup = hash.clone();
    let found = tokio::task::spawn_blocking(move || {
        let store = controller.engine().store();
        let found = store.token_by_hash(&lookup)?;
        if let Some(record) = &found {
            let now = now_ms();
            if record.is_active()
                && record
                    .last_used_at
                    .is_none_or(|at| now.saturating_sub(at) >= TOUCH_EVERY_MS)
            {
                // Best effort: a busy database must not refuse a valid token.
                let _ = store.touch_token(record.id, now);
            }
        }
        Ok::<_, slipway_state::StateError>(found)
    })
    .await
    .map_err(|e| ApiError::internal(format!("token lookup task failed: {e}")))??;
    let Some(record) = found else {
        return Err(unauthorized("unknown token"));
    };
    if !record.is_active() {
        return Err(unauthorized("this token was revoked"));
    }
    let role = Role::parse(&record.role).ok_or_else(|| {
        ApiError::internal(format!(
            "token {} has the unknown role `{}`",
            record.id, record.role
        ))
    })?;
    Ok(Principal {
        name: record.name,
        role,
        token_hash: hash,
        via,
    })
}

/// The role the route needs; for [`Access::Environment`], it depends on the environment.
async fn needed_role(guard: &Guard, target: Option<&str>) -> Result<Role, ApiError> {
    Ok(match guard.route.access {
        Access::Public | Access::Viewer => Role::Viewer,
        Access::Developer => Role::Developer,
        Access::Admin => Role::Admin,
        Access::Environment => {
            let Some(name) = target.and_then(|n| slipway_core::EnvName::parse(n).ok()) else {
                // Not a name at all: the handler refuses it with a 400.
                return Ok(Role::Developer);
            };
            let controller = guard.app.controller.clone();
            let record =
                tokio::task::spawn_blocking(move || controller.engine().store().environment(&name))
                    .await
                    .map_err(|e| {
                        ApiError::internal(format!("environment lookup task failed: {e}"))
                    })??;
            match record.as_ref().map(|r| r.kind) {
                // Unknown: the handler answers 404, which tells nothing a viewer cannot list.
                None | Some(EnvKind::Adhoc | EnvKind::Generated) => Role::Developer,
                Some(EnvKind::Static) => Role::Deployer,
            }
        }
    })
}

/// Records `refusal` in the audit log and answers with it. The entry is folded with identical
/// ones of the last [`REFUSAL_WINDOW_MS`]: anyone can send refused calls, so each must not
/// cost a row.
async fn refuse(guard: &Guard, who: &str, target: Option<&str>, refusal: ApiError) -> Response {
    let detail = format!("{}: {refusal}", refusal.status().as_u16());
    let target = target.map(str::to_string);
    record(guard, who, target, "refused", detail, Entry::Refusal).await;
    refusal.into_response()
}

/// Identical refusals within this long are one audit entry with a count.
pub(crate) const REFUSAL_WINDOW_MS: i64 = 60_000;

/// How an audit entry is written.
#[derive(Clone, Copy)]
enum Entry {
    /// Joins an identical refusal within [`REFUSAL_WINDOW_MS`], counting it.
    Refusal,
    /// One entry of its own.
    Call,
}

/// Writes one audit entry. A failure is logged, not returned: the call itself is done.
async fn record(
    guard: &Guard,
    who: &str,
    target: Option<String>,
    outcome: &str,
    detail: String,
    kind: Entry,
) {
    let entry = NewAudit {
        at: now_ms(),
        who: who.to_string(),
        action: guard.route.action.to_string(),
        target,
        outcome: outcome.to_string(),
        detail,
    };
    let controller = guard.app.controller.clone();
    let written = tokio::task::spawn_blocking(move || {
        let store = controller.engine().store();
        match kind {
            Entry::Refusal => store.record_refusal(&entry, REFUSAL_WINDOW_MS),
            Entry::Call => store.record_audit(&entry),
        }
        .map_err(|e| format!("{e} ({entry:?})"))
    })
    .await;
    match written {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => eprintln!("slipway-server: cannot write the audit log: {e}"),
        Err(e) => eprintln!("slipway-server: the audit task failed: {e}"),
    }
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
