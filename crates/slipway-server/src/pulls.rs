//! `/api/v1/pull-requests`: the open pull requests the controller knows of, each with its
//! preview environment and the environments it holds locked, for the web UI's pull request
//! page.
//!
//! The plan itself is posted on the forge (one comment per pull request, and a
//! `slipway/plan` commit status); what this answers is what the store knows: the pull
//! request's head, whether its preview environment runs that head yet and in what state, and
//! the locks its `/slipway apply` took. The plan of the preview against what runs is
//! `GET /api/v1/environments/pr-N/plan`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};
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
            .json(StatusCode::OK, "PullRequestList", "The open pull requests and the locks."),
    ]
}

/// The JSON Schemas of this module.
pub(crate) fn schemas() -> Vec<(&'static str, Value)> {
    let name = json!({"$ref": "#/components/schemas/EnvironmentName"});
    vec![
        (
            "Lock",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["environment", "pull_request", "who", "at"],
                "properties": {
                    "environment": name,
                    "pull_request": {"type": "integer", "description": "The pull request holding it."},
                    "who": {"type": "string", "description": "Who commented `/slipway apply`."},
                    "at": {"type": "string", "format": "date-time"}
                }
            }),
        ),
        (
            "Preview",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["environment", "sync", "health", "commit", "desired_commit", "at_head", "url"],
                "properties": {
                    "environment": name,
                    "sync": {"enum": SyncState::WORDS},
                    "health": {"enum": Health::WORDS},
                    "commit": {"type": ["string", "null"], "description": "The commit it runs."},
                    "desired_commit": {"type": ["string", "null"], "description": "The commit it should run."},
                    "at_head": {"type": "boolean", "description": "Whether it runs the pull request's head."},
                    "url": {"type": ["string", "null"], "description": "Its preview URL, when the stack exposes a port."},
                    "message": {"type": "string", "description": "Its last problem."}
                }
            }),
        ),
        (
            "PullRequest",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["number", "title", "author", "head_sha", "head_ref", "base_ref", "is_fork",
                             "preview_allowed", "url", "updated_at", "preview", "locks"],
                "properties": {
                    "number": {"type": "integer"},
                    "title": {"type": "string"},
                    "author": {"type": "string"},
                    "head_sha": {"type": "string", "description": "The commit at its head, as last seen."},
                    "head_ref": {"type": "string"},
                    "base_ref": {"type": "string", "description": "The branch it merges into."},
                    "is_fork": {"type": "boolean"},
                    "preview_allowed": {"type": "boolean", "description": "Whether it may have a preview environment (not a fork, an allowed author, or a maintainer's `/slipway preview`)."},
                    "url": {"type": "string", "description": "Its page on the forge, where the plan comment is."},
                    "updated_at": {"type": "string", "format": "date-time"},
                    "preview": {
                        "description": "Its preview environment, when one exists.",
                        "oneOf": [{"$ref": "#/components/schemas/Preview"}, {"type": "null"}]
                    },
                    "locks": {"type": "array", "items": {"$ref": "#/components/schemas/Lock"}, "description": "The environments it holds."}
                }
            }),
        ),
        (
            "PullRequestList",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["pull_requests", "locks"],
                "properties": {
                    "pull_requests": {"type": "array", "items": {"$ref": "#/components/schemas/PullRequest"}},
                    "locks": {"type": "array", "items": {"$ref": "#/components/schemas/Lock"}}
                }
            }),
        ),
    ]
}

#[derive(Debug, Serialize)]
struct LockView {
    environment: String,
    pull_request: i64,
    who: String,
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

#[derive(Debug, Serialize)]
struct PreviewView {
    environment: String,
    sync: SyncState,
    health: Health,
    commit: Option<String>,
    desired_commit: Option<String>,
    at_head: bool,
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

#[derive(Debug, Serialize)]
struct PullRequestView {
    number: i64,
    title: String,
    author: String,
    head_sha: String,
    head_ref: String,
    base_ref: String,
    is_fork: bool,
    preview_allowed: bool,
    url: String,
    updated_at: String,
    preview: Option<PreviewView>,
    locks: Vec<LockView>,
}

#[derive(Debug, Serialize)]
struct PullRequestList {
    pull_requests: Vec<PullRequestView>,
    locks: Vec<LockView>,
}

async fn list(State(app): State<AppState>) -> Result<Json<PullRequestList>, ApiError> {
    app.blocking(|controller| {
        let store = controller.engine().store();
        let open = store.pull_requests(Some("open"))?;
        let locks = store.locks()?;
        let environments: BTreeMap<String, EnvironmentRecord> = store
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
    environments: &BTreeMap<String, EnvironmentRecord>,
) -> PullRequestView {
    // Discovery names the preview of pull request N `pr-N`, in a generated family.
    let preview = environments
        .get(&format!("pr-{}", pr.number))
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
fn exposes_a_port(controller: &slipway_controller::Controller, env: &str) -> bool {
    controller
        .engine()
        .store()
        .resources(env)
        .is_ok_and(|resources| {
            resources
                .iter()
                .any(|r| r.type_name == "process" && r.config.get("expose").is_some())
        })
}
