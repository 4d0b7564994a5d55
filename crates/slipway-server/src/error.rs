//! The API's one error type and its JSON shape: `{"error": "...", "hint": "..."}`, plus an
//! `id` for internal errors, whose text goes to stderr and never to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;
use slipway_controller::ControllerError;
use slipway_engine::EngineError;
use slipway_state::StateError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// The client can fix it: the status says how it is wrong, the message what, the hint how
    /// to do it right.
    #[error("{message}")]
    Client {
        status: StatusCode,
        message: String,
        hint: Option<String>,
        /// A change refused because another replica works on the environment: that replica
        /// (see `forward.rs`, which may send the request on to it).
        held: Option<HeldElsewhere>,
    },
    /// The server failed. The text is logged under an id and not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Attached to every response an [`ApiError`] makes, for the audit log.
#[derive(Debug, Clone)]
pub(crate) struct ErrorNote(pub String);

/// Attached to the response of a person's change that this replica refused because another
/// live replica works on the environment (`ControllerError::Elsewhere`): nothing was changed,
/// and `forward.rs` may send the request on to that replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeldElsewhere {
    /// The environment.
    pub environment: slipway_core::EnvName,
    /// The replica that works on it (holds its lease, or should).
    pub replica: String,
}

/// Every error response. `id` is set on internal errors only: the server's log has the
/// details under it.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Error")]
pub(crate) struct ErrorBody<'a> {
    /// What went wrong.
    error: &'a str,
    /// How to do it right.
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<&'a str>,
    /// Where to look in the server's log.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

impl ApiError {
    pub fn client(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError::Client {
            status,
            message: message.into(),
            hint: None,
            held: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::client(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::client(StatusCode::NOT_FOUND, message)
    }

    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::client(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    pub fn internal(text: impl Into<String>) -> ApiError {
        ApiError::Internal(text.into())
    }

    /// The unknown environment `name`.
    pub fn no_environment(name: &str) -> ApiError {
        ApiError::not_found(format!("environment `{name}` does not exist"))
            .hint("GET /api/v1/environments lists them")
    }

    /// Adds (or replaces) the hint of a client error.
    pub fn hint(self, hint: impl Into<String>) -> ApiError {
        match self {
            ApiError::Client {
                status,
                message,
                held,
                ..
            } => ApiError::Client {
                status,
                message,
                hint: Some(hint.into()),
                held,
            },
            internal => internal,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Client { status, .. } => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Client {
                status,
                message,
                hint,
                held,
            } => {
                let body = ErrorBody {
                    error: &message,
                    hint: hint.as_deref(),
                    id: None,
                };
                let mut response = (status, axum::Json(body)).into_response();
                if status == StatusCode::SERVICE_UNAVAILABLE
                    && !response
                        .headers()
                        .contains_key(axum::http::header::RETRY_AFTER)
                {
                    // Every 503 of this API is a condition that passes: say when to come back.
                    response.headers_mut().insert(
                        axum::http::header::RETRY_AFTER,
                        axum::http::HeaderValue::from_static("5"),
                    );
                }
                response.extensions_mut().insert(ErrorNote(message));
                if let Some(held) = held {
                    response.extensions_mut().insert(held);
                }
                response
            }
            ApiError::Internal(text) => {
                let id = format!("{:016x}", fastrand::u64(..));
                eprintln!("slipway-server: internal error {id}: {text}");
                let body = ErrorBody {
                    error: "internal error",
                    hint: Some("the server's log has the details under this id"),
                    id: Some(&id),
                };
                let mut response =
                    (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response();
                response
                    .extensions_mut()
                    .insert(ErrorNote(format!("internal error {id}")));
                response
            }
        }
    }
}

impl From<ControllerError> for ApiError {
    fn from(e: ControllerError) -> ApiError {
        match e {
            ControllerError::NotFound(name) => ApiError::no_environment(&name),
            ControllerError::Invalid(message) => ApiError::unprocessable(message),
            ControllerError::Conflict(message) => ApiError::client(StatusCode::CONFLICT, message),
            ControllerError::Elsewhere {
                ref environment,
                ref replica,
                alive: true,
                ..
            } => {
                let held = HeldElsewhere {
                    environment: environment.clone(),
                    replica: replica.clone(),
                };
                ApiError::Client {
                    status: StatusCode::CONFLICT,
                    message: e.to_string(),
                    hint: Some(
                        "every replica answers reads; a change goes to the replica that works \
                         on the environment, which this one forwards it to when that replica \
                         advertises an address (GET /api/v1/replicas lists them)"
                            .into(),
                    ),
                    held: Some(held),
                }
            }
            e @ ControllerError::Elsewhere { .. } => {
                ApiError::client(StatusCode::CONFLICT, e.to_string())
            }
            ControllerError::Engine(e) => e.into(),
            ControllerError::State(e) => e.into(),
            ControllerError::Git(e) => e.into(),
            ControllerError::Internal(text) => ApiError::internal(text),
            e @ (ControllerError::Forge(_) | ControllerError::Apply { .. }) => {
                ApiError::unprocessable(e.to_string())
            }
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e {
            EngineError::State(e) => e.into(),
            EngineError::Git(e) => e.into(),
            EngineError::Invalid {
                commit,
                diagnostics,
            } => {
                let errors: Vec<_> = diagnostics.iter().filter(|d| d.is_error()).collect();
                let first = errors.first().map(|d| d.to_string()).unwrap_or_default();
                ApiError::unprocessable(format!(
                    "slipway.yaml at {} has {} error(s); the first: {first}",
                    &commit[..12.min(commit.len())],
                    errors.len()
                ))
                .hint("`slipway validate --ref <commit>` lists them all")
            }
            EngineError::Environment(message)
            | EngineError::NotAdopted(message)
            | EngineError::PolicyDenied(message) => ApiError::unprocessable(message),
            EngineError::Locked(name) => ApiError::client(
                StatusCode::CONFLICT,
                format!("environment `{name}` is busy with another operation"),
            )
            .hint("retry when it finishes"),
            e @ EngineError::Superseded(_) => ApiError::client(StatusCode::CONFLICT, e.to_string())
                .hint("look at what it follows now, then retry"),
            EngineError::Usage(message) => ApiError::bad_request(message),
            EngineError::Secret(message) => ApiError::unprocessable(message),
            e @ EngineError::Family { .. } => ApiError::unprocessable(e.to_string()),
            EngineError::NeedsConfirmation(why) => ApiError::unprocessable(why.to_string()).hint(
                "repeat the environment's name: DELETE /api/v1/environments/NAME?confirm=NAME",
            ),
            e @ EngineError::Io { .. } => ApiError::internal(e.to_string()),
            e @ EngineError::OutsideWindow(_) => ApiError::client(StatusCode::CONFLICT, e.to_string())
                .hint("a deployer overrides it: POST /api/v1/environments/NAME/sync {\"override_window\": true}"),
        }
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> ApiError {
        match e {
            StateError::NotFound { .. } => ApiError::not_found(e.to_string()),
            StateError::InvalidValue { .. } => ApiError::bad_request(e.to_string()),
            StateError::Fenced { .. } => ApiError::client(StatusCode::CONFLICT, e.to_string())
                .hint(
                    "another replica works on this environment: retry shortly, or on that \
                     replica",
                ),
            StateError::SchemaMoved { .. } => {
                ApiError::client(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).hint(
                    "this replica runs an older slipway than the state and has stepped aside: \
                     send the request to an upgraded replica",
                )
            }
            // The database did not answer (a restart, a partition between this replica and
            // it): nothing was recorded, and the same request may pass in a moment, here or
            // on another replica. The details go to the log only, as an internal error's do.
            other @ (StateError::Database { .. } | StateError::Open { .. })
                if other.retryable() =>
            {
                let id = format!("{:016x}", fastrand::u64(..));
                eprintln!("slipway-server: state unavailable {id}: {}", chain(&other));
                ApiError::client(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "the state store does not answer this replica for now (log id {id}); \
                         nothing was recorded"
                    ),
                )
                .hint("retry in a few seconds; another replica may answer meanwhile")
            }
            other => ApiError::internal(chain(&other)),
        }
    }
}

impl From<slipway_git::GitError> for ApiError {
    fn from(e: slipway_git::GitError) -> ApiError {
        use slipway_git::GitError as G;
        match e {
            G::InvalidReference { .. }
            | G::ReferenceNotFound { .. }
            | G::AmbiguousReference { .. }
            | G::CommitNotFound { .. }
            | G::PathNotFound { .. }
            | G::UnsafePath { .. } => ApiError::unprocessable(e.to_string()),
            other => ApiError::internal(chain(&other)),
        }
    }
}

/// An error with its sources, for the log.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_that_does_not_answer_is_a_503_to_retry_without_the_databases_words() {
        // A real refusal: nothing listens on port 1.
        let home = tempfile::tempdir().expect("a home");
        let unreachable = slipway_state::Store::open_postgres(
            home.path(),
            "postgres://slipway@127.0.0.1:1/slipway_secret_db",
        )
        .expect_err("nothing answers there");
        assert!(unreachable.retryable());
        let error = ApiError::from(unreachable);
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
        let response = error.into_response();
        assert_eq!(
            response.headers().get(axum::http::header::RETRY_AFTER),
            Some(&axum::http::HeaderValue::from_static("5"))
        );
        let note = response.extensions().get::<ErrorNote>().expect("a note");
        assert!(
            note.0.contains("does not answer") && !note.0.contains("slipway_secret_db"),
            "{}",
            note.0
        );
    }
}
