//! Operating the server: `/healthz`, `/metrics`, the OpenAPI document, `refresh` and the
//! audit log.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use slipway_core::vocab::{Health, SyncState};
use slipway_state::{AUDIT_OUTCOMES, AuditRecord};

use crate::body::{JsonBody, NoFields, QueryArgs};
use crate::error::ApiError;
use crate::routes::{Access, Reply, Route};
use crate::{AppState, rfc3339};

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::get("/healthz", healthz)
            .id("health", "health")
            .summary(
                "Check health",
                "Whether the server answers and its state store can be read. No token needed.",
            )
            .access(Access::Public)
            .json(StatusCode::OK, "Health", "The server is up.")
            .errors(&[(StatusCode::SERVICE_UNAVAILABLE, "The state store cannot be read.")]),
        Route::get("/metrics", metrics)
            .id("metrics", "metrics")
            .summary(
                "Read metrics",
                "Prometheus text exposition: reconcile duration histogram, failures, drift found and repaired, queue depth, reconciles running, and environments by sync state and health. No token needed: it carries counts only, never a name.",
            )
            .access(Access::Public)
            .reply(Reply::Text {
                content_type: "text/plain; version=0.0.4",
                description: "The metrics.",
            }),
        Route::get("/api/v1/openapi.json", openapi)
            .id("openapi", "openapi")
            .summary(
                "Describe the API",
                "This document, generated from the server's route table. No token needed.",
            )
            .access(Access::Public)
            .json(StatusCode::OK, "OpenApi", "An OpenAPI 3.1 document."),
        Route::post("/api/v1/refresh", refresh)
            .id("refresh", "refresh")
            .summary(
                "Refresh from the repository",
                "Fetches the repository now and brings the set of environments in line with it (what the poll does): new branches get their environments, deleted ones lose them, moved refs are queued.",
            )
            .access(Access::Developer)
            .json(StatusCode::OK, "Refreshed", "Fetched; what changed is queued."),
        Route::get("/api/v1/audit", audit)
            .id("listAudit", "audit.list")
            .summary(
                "Read the audit log",
                "Who called what and how it ended, oldest first after the cursor `after`.",
            )
            .access(Access::Admin)
            .query(
                "after",
                "Only entries with a greater id.",
                json!({"type": "integer", "minimum": 0}),
            )
            .query(
                "limit",
                "At most this many (default 100, at most 1000).",
                json!({"type": "integer", "minimum": 1, "maximum": 1000}),
            )
            .json(StatusCode::OK, "AuditList", "The entries, oldest first."),
    ]
}

/// The JSON Schemas of this module.
pub(crate) fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "Health",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["status"],
                "properties": {"status": {"const": "ok"}}
            }),
        ),
        (
            "OpenApi",
            json!({
                "type": "object",
                "required": ["openapi", "info", "paths"],
                "properties": {"openapi": {"type": "string"}}
            }),
        ),
        (
            "Refreshed",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["refreshed"],
                "properties": {"refreshed": {"const": true}}
            }),
        ),
        (
            "AuditEntry",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["id", "at", "who", "action", "target", "outcome", "detail", "count"],
                "properties": {
                    "id": {"type": "integer"},
                    "at": {"type": "string", "format": "date-time"},
                    "who": {"type": "string", "description": "The token's name, or `anonymous`."},
                    "action": {"type": "string", "description": "E.g. `environment.destroy`."},
                    "target": {"type": ["string", "null"], "description": "E.g. the environment's name."},
                    "outcome": {"enum": AUDIT_OUTCOMES},
                    "detail": {"type": "string", "description": "The response status and, when it is an error, why."},
                    "count": {"type": "integer", "minimum": 1, "description": "How many calls the entry stands for: identical refusals within a minute are one entry (with the first one's time and target)."}
                }
            }),
        ),
        (
            "AuditList",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["entries"],
                "properties": {"entries": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEntry"}}}
            }),
        ),
    ]
}

async fn healthz(State(app): State<AppState>) -> Response {
    match app
        .blocking(|c| Ok(c.engine().store().schema_version()?))
        .await
    {
        Ok(_) => Json(json!({"status": "ok"})).into_response(),
        Err(e) => {
            eprintln!("slipway-server: health check failed: {e}");
            ApiError::client(
                StatusCode::SERVICE_UNAVAILABLE,
                "the state store cannot be read",
            )
            .hint("the server's log says why")
            .into_response()
        }
    }
}

async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    let counts = app
        .blocking(|c| {
            let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
            // Every pair, so that a state's series drops to 0 rather than disappearing.
            for sync in SyncState::WORDS {
                for health in Health::WORDS {
                    counts.insert((sync.to_string(), health.to_string()), 0);
                }
            }
            // The recorded states: `engine.status` would observe every resource of every
            // environment on each scrape.
            for env in c.engine().store().environments()? {
                *counts
                    .entry((env.sync.to_string(), env.health.to_string()))
                    .or_insert(0) += 1;
            }
            Ok(counts)
        })
        .await?;
    let by_state: Vec<(String, String, usize)> = counts
        .into_iter()
        .map(|((sync, health), n)| (sync, health, n))
        .collect();
    let (depth, running) = app.controller.queue_depth();
    let text = app.controller.metrics().render(depth, running, &by_state);
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response())
}

async fn openapi(State(app): State<AppState>) -> Json<Value> {
    Json(app.openapi.as_ref().clone())
}

#[derive(Debug, Serialize)]
struct Refreshed {
    refreshed: bool,
}

async fn refresh(
    State(app): State<AppState>,
    JsonBody(NoFields {}): JsonBody<NoFields>,
) -> Result<Json<Refreshed>, ApiError> {
    app.controller.refresh().await?;
    Ok(Json(Refreshed { refreshed: true }))
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    after: Option<i64>,
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
struct AuditEntry {
    id: i64,
    at: String,
    who: String,
    action: String,
    target: Option<String>,
    outcome: String,
    detail: String,
    count: i64,
}

impl From<AuditRecord> for AuditEntry {
    fn from(r: AuditRecord) -> AuditEntry {
        AuditEntry {
            id: r.id,
            at: rfc3339(r.at),
            who: r.who,
            action: r.action,
            target: r.target,
            outcome: r.outcome,
            detail: r.detail,
            count: r.count,
        }
    }
}

#[derive(Debug, Serialize)]
struct AuditList {
    entries: Vec<AuditEntry>,
}

async fn audit(
    State(app): State<AppState>,
    QueryArgs(query): QueryArgs<AuditQuery>,
) -> Result<Json<AuditList>, ApiError> {
    let limit = match query.limit {
        None => 100,
        Some(n @ 1..=1000) => n,
        Some(n) => {
            return Err(
                ApiError::bad_request(format!("`limit` {n} is out of range")).hint("1 to 1000"),
            );
        }
    };
    app.blocking(move |c| {
        let entries = c.engine().store().audit(limit, query.after)?;
        Ok(Json(AuditList {
            entries: entries.into_iter().map(AuditEntry::from).collect(),
        }))
    })
    .await
}
