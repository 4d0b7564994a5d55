//! `/api/v1/deployments/{id}`, and the deployment shape the environment history shares.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};
use slipway_core::vocab::DeploymentStatus;
use slipway_state::DeploymentRecord;

use crate::body::DeploymentId;
use crate::error::ApiError;
use crate::routes::Route;
use crate::{AppState, rfc3339};

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::get("/api/v1/deployments/{id}", get)
            .id("getDeployment", "deployment.get")
            .summary(
                "Get a deployment",
                "One deployment with the plan it applied and the summary of what it did.",
            )
            .json(StatusCode::OK, "Deployment", "The deployment."),
    ]
}

/// A deployment as the API shows it; `plan` only when asked for one deployment.
#[derive(Debug, Serialize)]
pub(crate) struct DeploymentView {
    id: i64,
    environment: String,
    commit: String,
    hash: String,
    reference: Option<String>,
    status: DeploymentStatus,
    error: Option<String>,
    who: String,
    started_at: String,
    finished_at: Option<String>,
    summary: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<Value>,
}

impl DeploymentView {
    /// Without its plan, for lists.
    pub fn summary(record: DeploymentRecord) -> DeploymentView {
        let mut view = DeploymentView::full(record);
        view.plan = None;
        view
    }

    /// With its plan.
    pub fn full(record: DeploymentRecord) -> DeploymentView {
        DeploymentView {
            id: record.id,
            environment: record.environment,
            commit: record.commit,
            hash: record.hash,
            reference: record.reference,
            status: record.status,
            error: record.error,
            who: record.who,
            started_at: rfc3339(record.started_at),
            finished_at: record.finished_at.map(rfc3339),
            summary: record.summary,
            plan: Some(record.plan),
        }
    }
}

/// The JSON Schemas of this module: `DeploymentSummary`, and `Deployment` (the same with
/// `plan`).
pub(crate) fn schemas() -> Vec<(&'static str, Value)> {
    let summary = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["id", "environment", "commit", "hash", "reference", "status", "error", "who",
                     "started_at", "finished_at", "summary"],
        "properties": {
            "id": {"type": "integer"},
            "environment": {"$ref": "#/components/schemas/EnvironmentName"},
            "commit": {"type": "string", "description": "The commit deployed."},
            "hash": {"type": "string", "description": "The rendered desired-state hash deployed."},
            "reference": {"type": ["string", "null"], "description": "The ref the commit was resolved from."},
            "status": {"enum": DeploymentStatus::WORDS},
            "error": {"type": ["string", "null"], "description": "Why it failed or was interrupted."},
            "who": {"type": "string", "description": "Who or what started it."},
            "started_at": {"type": "string", "format": "date-time"},
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
            "summary": {"description": "What it did, once finished (`null` until then)."}
        }
    });
    let mut full = summary.clone();
    full["properties"]["plan"] =
        json!({"description": "The plan it applied (see `PlanView.changes`)."});
    if let Some(required) = full["required"].as_array_mut() {
        required.push(json!("plan"));
    }
    vec![("DeploymentSummary", summary), ("Deployment", full)]
}

async fn get(
    State(app): State<AppState>,
    DeploymentId(id): DeploymentId,
) -> Result<Json<DeploymentView>, ApiError> {
    app.blocking(move |c| {
        let found = c.engine().store().deployment(id)?;
        let record = found.ok_or_else(|| {
            ApiError::not_found(format!("deployment #{id} does not exist")).hint(
                "GET /api/v1/environments/{name}/deployments lists an environment's deployments",
            )
        })?;
        Ok(Json(DeploymentView::full(record)))
    })
    .await
}
