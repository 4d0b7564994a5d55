//! `/api/v1/pull-requests`: the open pull requests the controller knows of, each with its
//! preview environment and the environments it holds locked, for the web UI's pull request
//! page.
//!
//! The plan itself is posted on the forge (one comment per pull request, and a
//! `slipway/plan` commit status); what this answers is what the store knows: the pull
//! request's head, whether its preview environment runs that head yet and in what state, and
//! the locks its `/slipway apply` took. The plan of the preview against what runs is
//! `GET /api/v1/environments/pr-N/plan`.

use slipway_core::EnvName;
use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use schemars::JsonSchema;
use serde::Serialize;
use slipway_core::vocab::{EnvKind, Health, SyncState};
use slipway_state::{EnvironmentRecord, LockRecord, PullRequestRecord};

use crate::error::ApiError;
use crate::routes::Route;
use crate::{AppState, rfc3339};

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::get("/api/v1/pull-requests", list)
            .id("listPullRequests", "pull_request.list")
            .summary(
                "List open pull requests",
                "The open pull requests of the forge as the controller last recorded them (webhooks and its catch-up with the forge), by number: each with its head, its preview environment `pr-N` (when one exists: its state, and whether it runs the head yet) and the environments its `/slipway apply` locked. `locks` lists every lock, whichever pull request holds it.",
            )
            .json::<PullRequestList>(StatusCode::OK, "The open pull requests and the locks."),
    ]
}

/// An environment held by a pull request's `/slipway apply`.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Lock")]
struct LockView {
    environment: EnvName,
    /// The pull request holding it.
    pull_request: i64,
    /// Who commented `/slipway apply`.
    who: String,
    #[schemars(extend("format" = "date-time"))]
    at: String,
}

impl From<&LockRecord> for LockView {
    fn from(lock: &LockRecord) -> LockView {
        LockView {
            environment: lock.environment.clone(),
            pull_request: lock.pull_request,
            who: lock.who.clone(),
            at: rfc3339(lock.at),
        }
    }
}

/// A pull request's preview environment.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Preview")]
struct PreviewView {
    environment: EnvName,
    sync: SyncState,
    health: Health,
    /// The commit it runs.
    commit: Option<String>,
    /// The commit it should run.
    desired_commit: Option<String>,
    /// Whether it runs the pull request's head.
    at_head: bool,
    /// Its preview URL, when the stack exposes a port.
    url: Option<String>,
    /// Its last problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

/// An open pull request.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "PullRequest")]
struct PullRequestView {
    number: i64,
    title: String,
    author: String,
    /// The commit at its head, as last seen.
    head_sha: String,
    head_ref: String,
    /// The branch it merges into.
    base_ref: String,
    is_fork: bool,
    /// Whether it may have a preview environment (not a fork, an allowed author, or a
    /// maintainer's `/slipway preview`).
    preview_allowed: bool,
    /// Its page on the forge, where the plan comment is.
    url: String,
    #[schemars(extend("format" = "date-time"))]
    updated_at: String,
    /// Its preview environment, when one exists.
    preview: Option<PreviewView>,
    /// The environments it holds.
    locks: Vec<LockView>,
}

#[derive(Debug, Serialize, JsonSchema)]
struct PullRequestList {
    pull_requests: Vec<PullRequestView>,
    locks: Vec<LockView>,
}

async fn list(State(app): State<AppState>) -> Result<Json<PullRequestList>, ApiError> {
    app.blocking(|controller| {
        let store = controller.engine().store();
        let open = store.pull_requests(Some("open"))?;
        let locks = store.locks()?;
        let environments: BTreeMap<EnvName, EnvironmentRecord> = store
            .environments()?
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect();
        let pull_requests = open
            .into_iter()
            .map(|pr| view(controller, pr, &locks, &environments))
            .collect();
        Ok(Json(PullRequestList {
            pull_requests,
            locks: locks.iter().map(LockView::from).collect(),
        }))
    })
    .await
}

fn view(
    controller: &slipway_controller::Controller,
    pr: PullRequestRecord,
    locks: &[LockRecord],
    environments: &BTreeMap<EnvName, EnvironmentRecord>,
) -> PullRequestView {
    // Discovery names the preview of pull request N `pr-N`, in a generated family.
    let preview = environments
        .get(&EnvName::pull_request(pr.number))
        .filter(|e| e.kind == EnvKind::Generated)
        .map(|e| PreviewView {
            environment: e.name.clone(),
            sync: e.sync,
            health: e.health,
            commit: e.commit.clone(),
            desired_commit: e.desired_commit.clone(),
            at_head: e.commit.as_deref() == Some(pr.head_sha.as_str()),
            url: exposes_a_port(controller, &e.name)
                .then(|| controller.preview_url(&e.name, &e.stack))
                .flatten(),
            message: e.message.clone(),
        });
    PullRequestView {
        locks: locks
            .iter()
            .filter(|l| l.pull_request == pr.number)
            .map(LockView::from)
            .collect(),
        preview,
        number: pr.number,
        title: pr.title,
        author: pr.author,
        head_sha: pr.head_sha,
        head_ref: pr.head_ref,
        base_ref: pr.base_ref,
        is_fork: pr.is_fork,
        preview_allowed: pr.preview_allowed,
        url: pr.url,
        updated_at: rfc3339(pr.updated_at),
    }
}

/// Whether `env` has a process with `expose:`, which the preview router serves.
fn exposes_a_port(controller: &slipway_controller::Controller, env: &EnvName) -> bool {
    controller
        .engine()
        .store()
        .resources(env)
        .is_ok_and(|resources| {
            resources
                .iter()
                .any(|r| slipway_core::types::exposed_port(&r.type_name, &r.config).is_some())
        })
}
