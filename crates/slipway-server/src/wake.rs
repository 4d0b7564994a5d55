//! The preview router's part in sleep and wake (issue 15): every request through a preview
//! URL is noted (the controller writes them to the state every few seconds, never one write
//! per request), and a request for a sleeping environment whose node is this one is held
//! while the environment wakes, then sent on as any other, its body untouched (it is not read
//! before the application reads it).
//!
//! Who can trigger a wake: anyone who can reach a preview URL. So a wake is bounded: it is
//! asked only for an environment the state says is `sleeping` here (a request for one that
//! does not exist, exposes nothing, or is awake costs the lookup every request costs), one
//! wake at a time per environment, which every request meanwhile joins
//! ([`Controller::wake_for_request`]); a request waits at most [`WAKE_WAIT`], then gets `503`
//! with `Retry-After` (the wake goes on), and waits holding its permit of the preview share,
//! so that requests to a preview that wakes slowly cannot hold every connection. A request
//! for a sleeping environment that runs on another replica's node is forwarded there, as any
//! request is, and woken by that replica.

use std::future::Future;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use slipway_controller::Controller;
use slipway_core::EnvName;

use crate::preview::Lookup;

/// The longest a request waits for its environment to wake.
pub(crate) const WAKE_WAIT: Duration = Duration::from_secs(60);

/// `look`s up where a request for `env` goes, noting the request; for a sleeping environment
/// of this node ([`Lookup::Asleep`]), joins or asks for its wake and looks again once it is
/// awake, or says [`Lookup::Waking`] after [`WAKE_WAIT`].
pub(crate) async fn when_awake<F, Fut>(controller: &Controller, env: &EnvName, look: F) -> Lookup
where
    F: Fn() -> Fut,
    Fut: Future<Output = Lookup>,
{
    let found = look().await;
    match found {
        Lookup::Found { .. } => {
            controller.saw_request(env);
            found
        }
        Lookup::Asleep => {
            controller.saw_request(env);
            let mut woken = controller.wake_for_request(env);
            // The controller dropped the wake without answering (shut down), or it takes
            // longer than a request may wait: not woken.
            let woke = matches!(
                tokio::time::timeout(WAKE_WAIT, woken.wait_for(|done| *done)).await,
                Ok(Ok(_))
            );
            if !woke {
                return Lookup::Waking;
            }
            match look().await {
                Lookup::Asleep => Lookup::Waking,
                other => other,
            }
        }
        other => other,
    }
}

/// The answer to a request whose environment did not wake in time.
pub(crate) fn still_waking(env: &EnvName) -> Response {
    let body = serde_json::json!({
        "error": format!(
            "environment `{env}` was asleep and is still waking up after {}",
            humantime::format_duration(WAKE_WAIT)
        ),
        "hint": format!(
            "try again in a moment; `slipway status --env {env}` and `slipway logs --env {env}` \
             say how its start goes"
        ),
    });
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}
