//! Operating the server: `/healthz`, `/metrics`, the OpenAPI document, `refresh` and the
//! audit log.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use schemars::generate::SchemaGenerator;
use schemars::{JsonSchema, Schema, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use slipway_core::vocab::{Health as EnvHealth, SyncState};
use slipway_state::{AUDIT_OUTCOMES, AuditRecord};

use crate::body::{JsonBody, NoFields, QueryArgs, cursor};
use crate::error::ApiError;
use crate::openapi::one_of;
use crate::routes::{Access, Reply, Route};
use crate::{AppState, rfc3339};

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::get("/healthz", healthz)
            .id("health", "health")
            .summary(
                "Check health",
                "Whether the server answers, its state store can be read, and it has not stepped aside for a newer Slipway that migrated the state's schema (a rolling upgrade: a load balancer should take such a replica out). No token needed.",
            )
            .access(Access::Public)
            .json::<Health>(StatusCode::OK, "The server is up.")
            .errors(&[(StatusCode::SERVICE_UNAVAILABLE, "The state store cannot be read, or a newer Slipway migrated its schema and this replica stepped aside (it still answers reads).")]),
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
            .json::<OpenApi>(StatusCode::OK, "An OpenAPI 3.1 document."),
        Route::post("/api/v1/refresh", refresh)
            .id("refresh", "refresh")
            .summary(
                "Refresh from the repository",
                "Fetches the repository now and brings the set of environments in line with it (what the poll does): new branches get their environments, deleted ones lose them, moved refs are queued.",
            )
            .access(Access::Developer)
            .json::<Refreshed>(StatusCode::OK, "Fetched; what changed is queued."),
        Route::get("/api/v1/replicas", replicas)
            .id("listReplicas", "replicas.list")
            .summary(
                "List the replicas",
                "The `slipway serve` replicas sharing this PostgreSQL state, with their last heartbeat by the database's clock and whether they count as alive (heard from within two leases). Empty with a SQLite state.",
            )
            .access(Access::Viewer)
            .json::<ReplicaList>(StatusCode::OK, "The replicas, by name."),
        Route::get("/api/v1/audit", audit)
            .id("listAudit", "audit.list")
            .summary(
                "Read the audit log",
                "Who called what and how it ended, oldest first after the cursor `after`.",
            )
            .access(Access::Admin)
            .query::<AuditQuery>()
            .json::<AuditList>(StatusCode::OK, "The entries, oldest first."),
    ]
}

async fn healthz(State(app): State<AppState>) -> Response {
    match app
        .blocking(|c| Ok(c.engine().store().check_schema()?))
        .await
    {
        Ok(None) => Json(Health { status: "ok" }).into_response(),
        // A load balancer takes it out of rotation; reads still answer for whoever asks.
        Ok(Some(found)) => ApiError::client(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this replica has stepped aside: a newer slipway migrated the state's schema to \
                 version {found}, past the {} this one understands",
                app.controller.engine().store().understood_schema()
            ),
        )
        .hint("replace it with the newer version; it still answers reads, and writes nothing")
        .into_response(),
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
                for health in EnvHealth::WORDS {
                    counts.insert((sync.to_string(), health.to_string()), 0);
                }
            }
            // The recorded states, counted by the store (`engine.status` would observe every
            // resource of every environment on each scrape, and reading every record costs
            // tens of milliseconds at ten thousand).
            for (sync, health, n) in c.engine().store().environment_counts()? {
                *counts
                    .entry((sync.to_string(), health.to_string()))
                    .or_insert(0) += usize::try_from(n).unwrap_or(usize::MAX);
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

async fn openapi(State(app): State<AppState>) -> Json<OpenApi> {
    Json(OpenApi(app.openapi.as_ref().clone()))
}

/// The server is up.
#[derive(Debug, Serialize, JsonSchema)]
struct Health {
    #[schemars(extend("const" = "ok"))]
    status: &'static str,
}

/// The OpenAPI document: built from the route table (`openapi::document`), so its schema
/// only says what every OpenAPI document has.
#[derive(Debug, Serialize)]
struct OpenApi(Value);

impl JsonSchema for OpenApi {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "OpenApi".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "required": ["openapi", "info", "paths"],
            "properties": {"openapi": {"type": "string"}},
            "additionalProperties": true
        })
    }
}

#[derive(Debug, Serialize, JsonSchema)]
struct Refreshed {
    #[schemars(extend("const" = true))]
    refreshed: bool,
}

async fn refresh(
    State(app): State<AppState>,
    JsonBody(NoFields {}): JsonBody<NoFields>,
) -> Result<Json<Refreshed>, ApiError> {
    app.controller.refresh_all().await?;
    Ok(Json(Refreshed { refreshed: true }))
}

#[derive(Debug, Deserialize, JsonSchema)]
struct AuditQuery {
    /// Only entries with a greater id.
    #[schemars(range(min = 0))]
    after: Option<i64>,
    /// At most this many (default 100, at most 1000).
    #[schemars(range(min = 1, max = 1000))]
    limit: Option<usize>,
}

#[derive(Debug, Serialize, JsonSchema)]
struct AuditEntry {
    id: i64,
    #[schemars(extend("format" = "date-time"))]
    at: String,
    /// The token's name, or `anonymous`.
    who: String,
    /// E.g. `environment.destroy`.
    action: String,
    /// E.g. the environment's name.
    target: Option<String>,
    #[schemars(schema_with = "outcomes")]
    outcome: String,
    /// The response status and, when it is an error, why.
    detail: String,
    /// How many calls the entry stands for: identical refusals within a minute are one entry
    /// (with the first one's time and target).
    #[schemars(range(min = 1))]
    count: i64,
}

fn outcomes(_: &mut SchemaGenerator) -> Schema {
    one_of(AUDIT_OUTCOMES)
}

impl From<AuditRecord> for AuditEntry {
    fn from(r: AuditRecord) -> AuditEntry {
        let e = r.entry;
        AuditEntry {
            id: r.id,
            at: rfc3339(e.at),
            who: e.who,
            action: e.action,
            target: e.target,
            outcome: e.outcome,
            detail: e.detail,
            count: r.count,
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
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
    let after = cursor("after", query.after)?;
    app.blocking(move |c| {
        let entries = c.engine().store().audit(limit, after)?;
        Ok(Json(AuditList {
            entries: entries.into_iter().map(AuditEntry::from).collect(),
        }))
    })
    .await
}

/// One replica sharing the state.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Replica")]
struct ReplicaView {
    /// Its `[controller] replica` name.
    name: String,
    /// Where other replicas reach its node's processes (`[local] advertise`).
    advertise: Option<String>,
    #[schemars(extend("format" = "date-time"))]
    started_at: String,
    #[schemars(extend("format" = "date-time"))]
    heartbeat_at: String,
    /// Milliseconds since its last heartbeat, by the database's clock.
    #[schemars(range(min = 0))]
    silent_ms: i64,
    /// Heard from within two leases: it works on environments.
    alive: bool,
    /// It is the replica answering this request.
    this: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
struct ReplicaList {
    replicas: Vec<ReplicaView>,
}

async fn replicas(State(app): State<AppState>) -> Result<Json<ReplicaList>, ApiError> {
    app.blocking(move |c| {
        let me = c.replica();
        let limit = me.map_or(0, |r| {
            i64::try_from(r.lease.as_millis() * 2).unwrap_or(i64::MAX)
        });
        let replicas = c
            .engine()
            .store()
            .replicas()?
            .into_iter()
            .map(|r| ReplicaView {
                alive: r.silent_ms <= limit,
                this: me.is_some_and(|m| m.name == r.name),
                advertise: r.advertise,
                started_at: rfc3339(r.started_at),
                heartbeat_at: rfc3339(r.heartbeat_at),
                silent_ms: r.silent_ms.max(0),
                name: r.name,
            })
            .collect();
        Ok(Json(ReplicaList { replicas }))
    })
    .await
}
