//! `/webhooks/{forge}`: a forge's events, verified before anything reads them.
//!
//! The signature (GitHub `X-Hub-Signature-256`, Gitea `X-Gitea-Signature`: HMAC-SHA256 over
//! the raw body) or token (GitLab `X-Gitlab-Token`) is compared in constant time before the
//! body is parsed; bodies over the server's limit are refused with `413` before they are read
//! whole. A delivery id or a body seen before is acknowledged and not handled again
//! (redeliveries, replays: the id is not covered by the signature, the body is). Unknown events are acknowledged and ignored, and so are events about another
//! repository than the configured one (organisation- and group-level hooks deliver every
//! repository's events under one secret; another repository's pull request 7 is not ours):
//! those are audited as refused. Every delivery, accepted or not, is
//! in the audit log; the event is then handled in the background (the forge wants an answer
//! within seconds), which also refreshes the repository at once.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::json;
use slipway_forge::{ForgeEvent, ForgeKind};
use slipway_state::{NewAudit, now_ms};

use crate::AppState;
use crate::error::ApiError;
use crate::routes::{Access, Route};

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::post("/webhooks/{forge}", receive)
            .id("receiveWebhook", "webhook.receive")
            .summary(
                "Receive a forge's webhook",
                "For the forge the controller is configured with (`github`, `gitlab`, `gitea`): push, pull request, review and comment events, verified by their signature or token before they are read. No token: the signature is the authentication. Answers at once; the event is handled in the background.",
            )
            .access(Access::Public)
            .json::<Accepted>(StatusCode::ACCEPTED, "Verified; handled in the background, or acknowledged as a duplicate or an event Slipway does not use.")
            .errors(&[
                (StatusCode::UNAUTHORIZED, "The signature or token is missing or wrong."),
                (StatusCode::SERVICE_UNAVAILABLE, "No forge is configured, or no webhook secret."),
            ]),
    ]
}

/// A delivery, verified.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "WebhookAccepted")]
struct Accepted {
    /// The forge's delivery id.
    delivery: String,
    /// What it was: push, pull_request, review, comment, ping, or the ignored event's name
    /// (`pull_request.other_repository` and the like for an event about another repository
    /// than the configured one).
    event: String,
    /// Whether Slipway acts on it (false for a duplicate delivery, an event it does not use,
    /// or one about another repository).
    handled: bool,
    /// A delivery id, or a body, seen before.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

/// The `202 Accepted` answer to a delivery.
fn accepted(delivery: String, event: String, handled: bool, duplicate: bool) -> Response {
    let body = Accepted {
        delivery,
        event,
        handled,
        duplicate,
    };
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// Writes the audit entry of a delivery, on a blocking thread: the store may wait (SQLite's
/// lock held by a CLI, PostgreSQL's round trip), and anyone can post to a webhook, as fast as
/// they like: no runtime worker waits for the store.
async fn audit(app: &AppState, who: &str, target: &str, outcome: &str, detail: String) {
    let entry = NewAudit {
        at: now_ms(),
        who: who.into(),
        action: "webhook.receive".into(),
        target: Some(target.into()),
        outcome: outcome.into(),
        detail,
    };
    let _ = app
        .blocking(move |controller| {
            let store = controller.engine().store();
            let _ = if entry.outcome == "refused" {
                // Anyone can post a bad signature: identical refusals fold into one entry a
                // minute.
                store.record_refusal(&entry, crate::auth::REFUSAL_WINDOW_MS)
            } else {
                store.record_audit(&entry)
            };
            Ok(())
        })
        .await;
}

/// Audits a replayed delivery: signed, but possibly resent by anyone who recorded it, so
/// folded like a refusal (the delivery id is in the detail, so each id is one entry a minute).
async fn audit_duplicate(app: &AppState, who: &str, target: &str, detail: String) {
    let entry = NewAudit {
        at: now_ms(),
        who: who.into(),
        action: "webhook.receive".into(),
        target: Some(target.into()),
        outcome: "ok".into(),
        detail,
    };
    let _ = app
        .blocking(move |controller| {
            let _ = controller
                .engine()
                .store()
                .record_refusal(&entry, crate::auth::REFUSAL_WINDOW_MS);
            Ok(())
        })
        .await;
}

fn kind_name(event: &ForgeEvent) -> String {
    match event {
        ForgeEvent::Push { .. } => "push".into(),
        ForgeEvent::PullRequest { .. } => "pull_request".into(),
        ForgeEvent::Review { .. } => "review".into(),
        ForgeEvent::Comment { .. } => "comment".into(),
        ForgeEvent::Ping => "ping".into(),
        ForgeEvent::Ignored { kind } => kind.clone(),
    }
}

async fn receive(
    State(app): State<AppState>,
    Path(forge): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let Ok(kind) = forge.parse::<ForgeKind>() else {
        return Err(ApiError::not_found(format!("no forge called `{forge}`"))
            .hint("the webhook paths are /webhooks/github, /webhooks/gitlab and /webhooks/gitea"));
    };
    let target = format!("/webhooks/{}", kind.as_str());
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            // Over the body limit (413), or a body that could not be read: refused unread.
            let status = rejection.status();
            audit(
                &app,
                "anonymous",
                &target,
                "refused",
                format!("{}: {}", status.as_u16(), rejection.body_text()),
            )
            .await;
            return Err(ApiError::client(status, rejection.body_text()));
        }
    };
    let Some((configured, verifier)) = app.controller.webhook_verifier() else {
        audit(
            &app,
            "anonymous",
            &target,
            "refused",
            "no forge is configured".into(),
        )
        .await;
        return Err(ApiError::client(
            StatusCode::SERVICE_UNAVAILABLE,
            "this controller has no forge configured",
        )
        .hint("add [forge.github] (or gitlab, gitea) to the engine configuration"));
    };
    if configured != kind {
        audit(
            &app,
            "anonymous",
            &target,
            "refused",
            format!("configured for {}", configured.as_str()),
        )
        .await;
        return Err(ApiError::not_found(format!(
            "this controller takes webhooks from {}, at /webhooks/{}",
            configured.as_str(),
            configured.as_str()
        )));
    }
    let delivery = match verifier.verify_and_parse(&headers, &body) {
        Ok(delivery) => delivery,
        Err(e) => {
            let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            audit(
                &app,
                "anonymous",
                &target,
                "refused",
                format!("{}: {e}", status.as_u16()),
            )
            .await;
            return Err(ApiError::client(status, e.to_string()));
        }
    };
    let who = format!("{}:webhook", kind.as_str());
    let event = kind_name(&delivery.event);
    let store_key = format!("{}:{}", kind.as_str(), delivery.id);
    // The id is not signed: a captured body replayed under a fresh id is caught by its digest
    // (an old `closed` would otherwise release a lock again). Both are recorded either way.
    let body_key = format!(
        "{}:body:{}",
        kind.as_str(),
        slipway_forge::body_digest(&body)
    );
    let fresh = {
        let key = store_key.clone();
        app.blocking(move |c| {
            let store = c.engine().store();
            let id_fresh = store.record_delivery(&key, now_ms())?;
            let body_fresh = store.record_delivery(&body_key, now_ms())?;
            Ok(id_fresh && body_fresh)
        })
        .await?
    };
    if !fresh {
        audit_duplicate(
            &app,
            &who,
            &target,
            format!("duplicate delivery {} ({event}) ignored", delivery.id),
        )
        .await;
        return Ok(accepted(delivery.id, event, false, true));
    }
    if let Some(other) = &delivery.other_repository {
        let expected = verifier
            .repository()
            .map_or_else(|| "(none)".to_owned(), |r| r.name.clone());
        audit(
            &app,
            &who,
            &target,
            "refused",
            format!(
                "delivery {} ({event}) is about {other}, not the configured repository \
                 {expected}: acknowledged, not acted on (an organisation or group webhook \
                 sends every repository's events; if the repository was renamed or moved, \
                 update [forge.{}] repository)",
                delivery.id,
                kind.as_str()
            ),
        )
        .await;
        return Ok(accepted(delivery.id, event, false, false));
    }
    let handled = !matches!(
        delivery.event,
        ForgeEvent::Ignored { .. } | ForgeEvent::Ping
    );
    audit(
        &app,
        &who,
        &target,
        "ok",
        format!(
            "delivery {} ({event}){}",
            delivery.id,
            if handled {
                ""
            } else {
                " acknowledged, not used"
            }
        ),
    )
    .await;
    if handled {
        let controller = app.controller.clone();
        let forge_event = delivery.event;
        let id = delivery.id.clone();
        tokio::spawn(async move {
            if let Err(e) = controller.handle_forge_event(forge_event).await {
                let _ = controller.engine().store().record_event(
                    None,
                    slipway_core::vocab::EventKind::WebhookFailed,
                    &format!("delivery {id}: {e}"),
                    &json!({}),
                    now_ms(),
                );
            }
        });
    }
    Ok(accepted(delivery.id, event, handled, false))
}
