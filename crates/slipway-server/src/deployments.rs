//! `/api/v1/deployments/{id}`, and the deployment shape the environment history shares.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;
use slipway_core::EnvName;
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
            .json::<DeploymentView>(StatusCode::OK, "The deployment."),
    ]
}

/// A deployment as lists show it: without its plan.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct DeploymentSummary {
    id: i64,
    environment: EnvName,
    /// The commit deployed.
    commit: String,
    /// The rendered desired-state hash deployed.
    hash: String,
    /// The ref the commit was resolved from.
    reference: Option<String>,
    status: DeploymentStatus,
    /// Why it failed or was interrupted.
    error: Option<String>,
    /// Who or what started it.
    who: String,
    #[schemars(extend("format" = "date-time"))]
    started_at: String,
    #[schemars(extend("format" = "date-time"))]
    finished_at: Option<String>,
    /// What it did, once finished (`null` until then).
    summary: Value,
}

impl From<DeploymentRecord> for DeploymentSummary {
    fn from(record: DeploymentRecord) -> DeploymentSummary {
        DeploymentSummary {
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
        }
    }
}

/// A deployment with the plan it applied.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Deployment")]
struct DeploymentView {
    #[serde(flatten)]
    summary: DeploymentSummary,
    /// The plan it applied (see `PlanView.changes`).
    plan: Value,
}

async fn get(
    State(app): State<AppState>,
    DeploymentId(id): DeploymentId,
) -> Result<Json<DeploymentView>, ApiError> {
    app.blocking(move |c| {
        let found = c.engine().store().deployment(id)?;
        let mut record = found.ok_or_else(|| {
            ApiError::not_found(format!("deployment #{id} does not exist")).hint(
                "GET /api/v1/environments/{name}/deployments lists an environment's deployments",
            )
        })?;
        let plan = std::mem::take(&mut record.plan);
        Ok(Json(DeploymentView {
            summary: DeploymentSummary::from(record),
            plan,
        }))
    })
    .await
}
