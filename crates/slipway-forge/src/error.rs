//! Why a call to the forge's API failed ([`ForgeError`]), and the forge's own reason read
//! from an error answer.

use crate::names;

/// A call to the forge's API failed.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    /// The forge answered with an error status.
    #[error("{method} {path}: the forge answered {status}: {reason}")]
    Status {
        /// The request's method.
        method: &'static str,
        /// The request's path (no host, no query).
        path: String,
        /// The HTTP status.
        status: u16,
        /// The forge's message, cut short.
        reason: String,
        /// The answer said the rate limit is used up.
        rate_limited: bool,
    },
    /// The request did not get an answer.
    #[error("{method} {path}: {reason}")]
    Transport {
        /// The request's method.
        method: &'static str,
        /// The request's path.
        path: String,
        /// What went wrong (connection refused, timeout…).
        reason: String,
    },
    /// The answer was not what the forge's API documents.
    #[error("{method} {path}: unexpected answer from the forge: {reason}")]
    Decode {
        /// The request's method.
        method: &'static str,
        /// The request's path.
        path: String,
        /// What did not fit.
        reason: String,
    },
    /// The forge answered with a redirect, which is not followed: the token must go to the
    /// configured API only, never to wherever an answer points.
    #[error(
        "{method} {path}: the forge API redirected ({status}) to {location}; Slipway does not \
         follow redirects with its token: set api_url (and repository, if it was renamed or \
         moved) to the final address"
    )]
    Redirected {
        /// The request's method.
        method: &'static str,
        /// The request's path.
        path: String,
        /// The HTTP status (301, 302, 303, 307, 308).
        status: u16,
        /// Where it pointed, without its query (`(none)` when the forge did not say).
        location: String,
    },
    /// An argument cannot be sent (a sha that is not hex, a marker that is not an HTML
    /// comment…).
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// Which argument.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

impl ForgeError {
    /// Whether trying again later may succeed: no answer, a timeout, `408`, `429`, a `5xx`, or
    /// a rate limit. Anything else (`401`, `404`, `422`, a bad argument) fails the same way
    /// every time.
    pub fn is_retryable(&self) -> bool {
        match self {
            ForgeError::Status {
                status,
                rate_limited,
                ..
            } => *rate_limited || matches!(status, 408 | 429 | 500..=599),
            ForgeError::Transport { .. } => true,
            ForgeError::Decode { .. }
            | ForgeError::InvalidInput { .. }
            | ForgeError::Redirected { .. } => false,
        }
    }

    /// A `GET path` whose answer decoded but does not hold what Slipway relies on (a sha that
    /// is not hex, a branch name that is not a ref).
    pub(crate) fn unexpected_answer(path: String, reason: String) -> ForgeError {
        ForgeError::Decode {
            method: "GET",
            path,
            reason,
        }
    }

    /// The HTTP status the forge answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ForgeError::Status { status, .. } | ForgeError::Redirected { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

/// The path of `path_and_query`, for error messages: the query is dropped (it carries only
/// paging and filters, but there is no reason to log it).
pub(crate) fn path_only(path_and_query: &str) -> String {
    path_and_query
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The forge's own explanation from an error body (`{"message": …}` on GitHub and Gitea,
/// `{"message"|"error": …}` on GitLab), cut to 200 characters.
pub(crate) fn error_reason(body: &str) -> String {
    let from_json = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            ["message", "error", "error_description"]
                .iter()
                .find_map(|k| match v.get(k) {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(other @ serde_json::Value::Object(_))
                    | Some(other @ serde_json::Value::Array(_)) => Some(other.to_string()),
                    _ => None,
                })
        });
    let text = from_json.unwrap_or_else(|| body.to_owned());
    let text = names::short_text(&text, 200);
    if text.is_empty() {
        "(no message)".to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reasons_come_from_the_json_message() {
        assert_eq!(error_reason(r#"{"message":"Not Found"}"#), "Not Found");
        assert_eq!(
            error_reason(r#"{"error":"insufficient_scope"}"#),
            "insufficient_scope"
        );
        assert_eq!(error_reason(""), "(no message)");
        assert_eq!(error_reason(&"x".repeat(500)).chars().count(), 201);
    }
}
