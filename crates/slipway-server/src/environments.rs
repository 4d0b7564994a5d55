//! `/api/v1/environments`: list, create, get, destroy, sync, plan, rollback, extend, pin,
//! unpin and the deployment history of one, with the JSON Schemas of what they take and
//! answer.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use slipway_controller::{Controller, CreateEnvironment, Trigger};
use slipway_core::plan::Change;
use slipway_core::vocab::{EnvKind, Health, ShownStatus, SyncState};
use slipway_engine::{EngineError, EnvironmentStatus, Origin};
use slipway_state::EnvironmentRecord;

use crate::AppState;
use crate::auth::{AuditTarget, Principal};
use crate::body::{EnvName, JsonBody, NoFields, QueryArgs, check_name, printable};
use crate::deployments::DeploymentView;
use crate::error::ApiError;
use crate::routes::{Access, Route};

/// The longest `ttl` or `extend` accepted: past it, a mistake is likelier than a need.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

pub(crate) fn routes() -> Vec<Route> {
    const ENV: &str = "/api/v1/environments/{name}";
    vec![
        Route::get("/api/v1/environments", list)
            .id("listEnvironments", "environment.list")
            .summary(
                "List environments",
                "Every environment with its commit, sync state, health, owner, TTL and resources (the shape of `slipway status --output json`, plus `owner`, `pinned` and `ttl_seconds`).",
            )
            .json(StatusCode::OK, "EnvironmentList", "The environments, by name."),
        Route::post("/api/v1/environments", create)
            .id("createEnvironment", "environment.create")
            .summary(
                "Create an ad-hoc environment",
                "Records an ad-hoc environment running `ref`, with the variables and secrets of the generated family `like` (a static environment such as prod is refused), owned by the caller's token, living `ttl` (at most `[environments] max_ttl`), and queues its first deployment.",
            )
            .access(Access::Developer)
            .body("CreateEnvironment")
            .json(StatusCode::CREATED, "Environment", "The new environment; its first deployment is queued.")
            .errors(&[
                (StatusCode::CONFLICT, "An environment of that name exists, the default branch's stack defines the name (an environment or family), or it starts with `pr-` or `br-`."),
                (StatusCode::UNPROCESSABLE_ENTITY, "The ref, the stack at it, or `like` cannot be used (`like` must name a generated family), or `ttl` is longer than `[environments] max_ttl`."),
            ]),
        Route::get(ENV, get)
            .id("getEnvironment", "environment.get")
            .summary("Get an environment", "One environment, its resources observed now.")
            .json(StatusCode::OK, "Environment", "The environment."),
        Route::delete(ENV, destroy)
            .id("destroyEnvironment", "environment.destroy")
            .summary(
                "Destroy an environment",
                "Deletes every resource of the environment, then its record (its deployments and events stay as history). Waits for an operation in progress on it to finish.",
            )
            .access(Access::Environment)
            .query(
                "confirm",
                "The environment's name again: required to destroy a protected environment.",
                json!({"type": "string"}),
            )
            .json(StatusCode::OK, "Destroyed", "It is gone.")
            .errors(&[(StatusCode::UNPROCESSABLE_ENTITY, "Some resources could not be deleted (it is marked failed and retried), or it is protected and `confirm` does not name it.")]),
        Route::post("/api/v1/environments/{name}/sync", sync)
            .id("syncEnvironment", "environment.sync")
            .summary(
                "Sync an environment",
                "Queues a reconcile of the environment now: it is brought to the commit it should run and repaired where it drifted.",
            )
            .access(Access::Environment)
            .json(StatusCode::ACCEPTED, "Queued", "The reconcile is queued."),
        Route::get("/api/v1/environments/{name}/plan", plan)
            .id("planEnvironment", "environment.plan")
            .summary(
                "Plan an environment",
                "What a sync would change now: the plan from the environment's ref (its pinned commit when pinned) as last fetched, against what runs. `POST /api/v1/refresh` fetches first.",
            )
            .json(StatusCode::OK, "PlanView", "The plan.")
            .errors(&[(StatusCode::UNPROCESSABLE_ENTITY, "The stack at the commit is not valid.")]),
        Route::post("/api/v1/environments/{name}/rollback", rollback)
            .id("rollbackEnvironment", "environment.rollback")
            .summary(
                "Roll an environment back",
                "Pins the environment to the commit of one of its earlier deployments and queues its deployment. `unpin` lets it follow its ref again.",
            )
            .access(Access::Environment)
            .body("Rollback")
            .json(StatusCode::OK, "Environment", "The environment, pinned; the deployment is queued.")
            .errors(&[(StatusCode::UNPROCESSABLE_ENTITY, "The deployment is not one of this environment's.")]),
        Route::post("/api/v1/environments/{name}/extend", extend)
            .id("extendEnvironment", "environment.extend")
            .summary(
                "Extend an environment's life",
                "Pushes the expiry of a generated or ad-hoc environment `by` later (from now, if it had none or it has passed), never past `[environments] max_ttl` from now.",
            )
            .access(Access::Environment)
            .body("Extend")
            .json(StatusCode::OK, "Environment", "The environment with its new expiry.")
            .errors(&[
                (StatusCode::CONFLICT, "It is a static environment: those have no time to live and never expire."),
                (StatusCode::UNPROCESSABLE_ENTITY, "`by` is longer than `[environments] max_ttl`."),
            ]),
        Route::post("/api/v1/environments/{name}/pin", pin)
            .id("pinEnvironment", "environment.pin")
            .summary(
                "Pin an environment",
                "Stops it following its ref: it stays at `commit` (a ref or commit; default: the commit it runs).",
            )
            .access(Access::Environment)
            .body("Pin")
            .json(StatusCode::OK, "Environment", "The environment, pinned.")
            .errors(&[(StatusCode::UNPROCESSABLE_ENTITY, "The commit cannot be resolved, or it runs none yet.")]),
        Route::post("/api/v1/environments/{name}/unpin", unpin)
            .id("unpinEnvironment", "environment.unpin")
            .summary("Unpin an environment", "Lets a pinned environment follow its ref again, and queues a sync.")
            .access(Access::Environment)
            .json(StatusCode::OK, "Environment", "The environment, following its ref."),
        Route::get("/api/v1/environments/{name}/deployments", deployments)
            .id("listDeployments", "deployment.list")
            .summary(
                "List an environment's deployments",
                "Its deployment history, newest first, without the plans (`GET /api/v1/deployments/{id}` has them). History outlives a destroyed environment.",
            )
            .query(
                "limit",
                "At most this many (default 50, at most 1000).",
                json!({"type": "integer", "minimum": 1, "maximum": 1000}),
            )
            .json(StatusCode::OK, "DeploymentList", "The deployments, newest first."),
    ]
}

/// An environment as the API shows it: the status shape of SPEC §6, plus what the record
/// knows of who made it and how long it lives.
#[derive(Debug, Serialize)]
pub(crate) struct EnvironmentView {
    #[serde(flatten)]
    status: EnvironmentStatus,
    ttl_seconds: Option<i64>,
}

impl EnvironmentView {
    fn new(
        controller: &Controller,
        mut status: EnvironmentStatus,
        record: Option<&EnvironmentRecord>,
    ) -> EnvironmentView {
        // An exposed process is reached through the preview router, by a URL that stays the
        // same across deploys; its own address is in the resource's outputs.
        if status.url.is_some()
            && let Some(url) = record.and_then(|r| controller.preview_url(&status.name, &r.stack))
        {
            status.url = Some(url);
        }
        EnvironmentView {
            status,
            ttl_seconds: record.and_then(|r| r.ttl_ms).map(|ms| ms / 1000),
        }
    }
}

#[derive(Debug, Serialize)]
struct EnvironmentList {
    environments: Vec<EnvironmentView>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    name: String,
    #[serde(rename = "ref")]
    reference: String,
    #[serde(default)]
    like: Option<String>,
    #[serde(default)]
    ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    deployment: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendRequest {
    by: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinRequest {
    #[serde(default)]
    commit: Option<String>,
}

#[derive(Debug, Serialize)]
struct Queued {
    environment: String,
    queued: bool,
}

#[derive(Debug, Serialize)]
struct Destroyed {
    environment: String,
    destroyed: bool,
}

#[derive(Debug, Serialize)]
struct PlanView {
    environment: String,
    reference: String,
    commit: String,
    has_changes: bool,
    changes: Vec<Change>,
}

#[derive(Debug, Deserialize)]
struct DestroyQuery {
    confirm: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DeploymentsQuery {
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
struct DeploymentList {
    deployments: Vec<DeploymentView>,
}

/// The JSON Schemas of this module's requests and responses.
pub(crate) fn schemas() -> Vec<(&'static str, Value)> {
    let name = json!({"$ref": "#/components/schemas/EnvironmentName"});
    let nullable = |s: &str| json!({"type": [s, "null"]});
    vec![
        (
            "EnvironmentName",
            json!({
                "type": "string",
                "description": "A DNS label: lowercase letters, digits and `-`, at most 63 characters.",
                "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
                "maxLength": 63
            }),
        ),
        (
            "Resource",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["name", "type", "status", "outputs"],
                "properties": {
                    "name": {"type": "string"},
                    "type": {"type": "string", "description": "Its type, e.g. `process` or `file`."},
                    "status": {"enum": ShownStatus::WORDS},
                    "outputs": {"type": ["object", "null"], "description": "Its outputs, secret ones `<redacted>`; null while it is first being created."},
                    "message": {"type": "string", "description": "What is wrong, when something is."}
                }
            }),
        ),
        (
            "Environment",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["name", "kind", "commit", "desired_commit", "sync", "health", "url",
                             "expires_at", "tracked_ref", "resources", "owner", "pinned", "protected", "ttl_seconds"],
                "properties": {
                    "name": name,
                    "kind": {"enum": EnvKind::WORDS},
                    "commit": {"type": ["string", "null"], "description": "The commit it runs."},
                    "desired_commit": {"type": ["string", "null"], "description": "The commit it should run."},
                    "sync": {"enum": SyncState::WORDS},
                    "health": {"enum": Health::WORDS},
                    "url": {"type": ["string", "null"], "description": "Where its exposed port is served."},
                    "expires_at": {"type": ["string", "null"], "format": "date-time"},
                    "tracked_ref": nullable("string"),
                    "message": {"type": "string", "description": "The last problem."},
                    "resources": {"type": "array", "items": {"$ref": "#/components/schemas/Resource"}},
                    "owner": {"type": ["string", "null"], "description": "The token name that created it (ad-hoc environments)."},
                    "definition": {"type": ["string", "null"], "description": "The `environments:` entry it follows: itself, or its family."},
                    "pinned": {"type": "boolean", "description": "Pinned environments do not follow their ref."},
                    "protected": {"type": "boolean", "description": "Destroying it, or a resource in it, needs a person's confirmation."},
                    "locked_by": {"type": "integer", "description": "The pull request whose `/slipway apply` holds it, until merged, closed or unlocked."},
                    "ttl_seconds": {"type": ["integer", "null"], "description": "How long it lives after its last new commit or extension."},
                    "isolation": {"enum": ["uid", "landlock", "none"], "description": "How its code is isolated: its own uid (the engine runs as root), Landlock (unprivileged engine), or none (said explicitly in the engine config)."}
                }
            }),
        ),
        (
            "EnvironmentList",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["environments"],
                "properties": {
                    "environments": {"type": "array", "items": {"$ref": "#/components/schemas/Environment"}}
                }
            }),
        ),
        (
            "CreateEnvironment",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["name", "ref"],
                "properties": {
                    "name": name,
                    "ref": {"type": "string", "minLength": 1, "description": "A branch, tag or commit."},
                    "like": {"type": "string", "description": "The generated family (`generate:`) whose variables and secrets it takes; default: the only one."},
                    "ttl": {"type": "string", "description": "How long it lives, e.g. `8h` or `1h30m` (units ms, s, m, h, d), at most `[environments] max_ttl`; default: the family's `ttl`, else `[environments] default_ttl`.", "examples": ["8h"]}
                }
            }),
        ),
        (
            "Rollback",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["deployment"],
                "properties": {"deployment": {"type": "integer", "description": "The id of an earlier deployment of this environment."}}
            }),
        ),
        (
            "Extend",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["by"],
                "properties": {"by": {"type": "string", "description": "How much longer, e.g. `2h`.", "examples": ["2h"]}}
            }),
        ),
        (
            "Pin",
            json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {"commit": {"type": "string", "description": "A ref or commit; default: the commit it runs."}}
            }),
        ),
        (
            "Queued",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["environment", "queued"],
                "properties": {"environment": name, "queued": {"const": true}}
            }),
        ),
        (
            "Destroyed",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["environment", "destroyed"],
                "properties": {"environment": name, "destroyed": {"const": true}}
            }),
        ),
        (
            "Change",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["resource", "type", "action", "diff"],
                "properties": {
                    "resource": {"type": "string"},
                    "type": {"type": "string"},
                    "action": {"enum": ["create", "update", "replace", "delete", "noop"]},
                    "diff": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": false,
                            "required": ["path", "forces_replace"],
                            "properties": {
                                "path": {"type": "string", "description": "Dotted path of the field."},
                                "before": {"description": "Its old value; absent when added."},
                                "after": {"description": "Its new value; absent when removed."},
                                "forces_replace": {"type": "boolean"}
                            }
                        }
                    },
                    "reason": {"type": "string", "description": "Why, when the diff does not say (drift, an interrupted apply)."}
                }
            }),
        ),
        (
            "PlanView",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["environment", "reference", "commit", "has_changes", "changes"],
                "properties": {
                    "environment": name,
                    "reference": {"type": "string", "description": "The ref (or pinned commit) planned."},
                    "commit": {"type": "string", "description": "The commit it resolved to."},
                    "has_changes": {"type": "boolean"},
                    "changes": {"type": "array", "items": {"$ref": "#/components/schemas/Change"}}
                }
            }),
        ),
        (
            "DeploymentList",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["deployments"],
                "properties": {
                    "deployments": {"type": "array", "items": {"$ref": "#/components/schemas/DeploymentSummary"}}
                }
            }),
        ),
    ]
}

/// The environment `name` as the API shows it, or a 404.
fn load(controller: &Controller, name: &str) -> Result<EnvironmentView, ApiError> {
    let engine = controller.engine();
    let record = engine
        .store()
        .environment(name)?
        .ok_or_else(|| ApiError::no_environment(name))?;
    let status = match engine.status(Some(name)) {
        Ok(mut found) => found.pop().ok_or_else(|| ApiError::no_environment(name))?,
        // Destroyed between the two reads.
        Err(EngineError::Environment(_)) => return Err(ApiError::no_environment(name)),
        Err(e) => return Err(e.into()),
    };
    Ok(EnvironmentView::new(controller, status, Some(&record)))
}

/// The record of `name`, or a 404.
fn require(controller: &Controller, name: &str) -> Result<EnvironmentRecord, ApiError> {
    controller
        .engine()
        .store()
        .environment(name)?
        .ok_or_else(|| ApiError::no_environment(name))
}

fn duration(field: &str, text: &str) -> Result<Duration, ApiError> {
    let hint = "a duration like `30m`, `8h` or `1h30m` (units ms, s, m, h, d), at most 366d";
    match slipway_core::stack::parse_duration(text) {
        Some(d) if d.is_zero() => {
            Err(ApiError::bad_request(format!("`{field}` must be longer than zero")).hint(hint))
        }
        Some(d) if d > MAX_DURATION => Err(ApiError::bad_request(format!(
            "`{field}` `{}` is longer than 366 days",
            printable(text)
        ))
        .hint(hint)),
        Some(d) => Ok(d),
        None => Err(ApiError::bad_request(format!(
            "`{field}` `{}` is not a duration",
            printable(text)
        ))
        .hint(hint)),
    }
}

async fn list(State(app): State<AppState>) -> Result<Json<EnvironmentList>, ApiError> {
    app.blocking(|controller| {
        let engine = controller.engine();
        let records: BTreeMap<String, EnvironmentRecord> = engine
            .store()
            .environments()?
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        let environments = engine
            .status(None)?
            .into_iter()
            .map(|status| {
                let record = records.get(&status.name);
                EnvironmentView::new(controller, status, record)
            })
            .collect();
        Ok(Json(EnvironmentList { environments }))
    })
    .await
}

async fn create(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    JsonBody(request): JsonBody<CreateRequest>,
) -> Response {
    let target = AuditTarget(printable(&request.name));
    let mut response = match create_inner(app, caller, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    response.extensions_mut().insert(target);
    response
}

async fn create_inner(
    app: AppState,
    caller: Principal,
    request: CreateRequest,
) -> Result<Response, ApiError> {
    check_name(&request.name)?;
    if request.reference.trim().is_empty() {
        return Err(ApiError::bad_request("`ref` is empty").hint("a branch, tag or commit"));
    }
    if let Some(like) = &request.like {
        check_name(like).map_err(|_| {
            ApiError::bad_request(format!(
                "`like` `{}` is not an environment of the stack",
                printable(like)
            ))
            .hint("name an entry of `environments:` in slipway.yaml, e.g. `previews`")
        })?;
    }
    let ttl = request
        .ttl
        .as_deref()
        .map(|t| duration("ttl", t))
        .transpose()?;
    let name = request.name.clone();
    let exists = {
        let name = name.clone();
        app.blocking(move |c| Ok(c.engine().store().environment(&name)?.is_some()))
            .await?
    };
    if exists {
        return Err(ApiError::client(
            StatusCode::CONFLICT,
            format!("environment `{name}` already exists"),
        )
        .hint("pick another name, or destroy it first"));
    }
    app.controller
        .create_environment(CreateEnvironment {
            name: request.name,
            reference: request.reference,
            like: request.like,
            ttl,
            owner: Some(caller.name),
        })
        .await?;
    let view = {
        let name = name.clone();
        app.blocking(move |c| load(c, &name)).await?
    };
    Ok((
        StatusCode::CREATED,
        [(LOCATION, format!("/api/v1/environments/{name}"))],
        Json(view),
    )
        .into_response())
}

async fn get(
    State(app): State<AppState>,
    EnvName(name): EnvName,
) -> Result<Json<EnvironmentView>, ApiError> {
    app.blocking(move |c| load(c, &name)).await.map(Json)
}

async fn destroy(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    EnvName(name): EnvName,
    QueryArgs(query): QueryArgs<DestroyQuery>,
) -> Result<Json<Destroyed>, ApiError> {
    {
        let name = name.clone();
        app.blocking(move |c| require(c, &name)).await?;
    }
    let confirm = query.confirm.as_deref() == Some(name.as_str());
    app.controller
        .destroy_environment(&name, &caller.name, confirm)
        .await?;
    Ok(Json(Destroyed {
        environment: name,
        destroyed: true,
    }))
}

async fn sync(
    State(app): State<AppState>,
    EnvName(name): EnvName,
    JsonBody(NoFields {}): JsonBody<NoFields>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    {
        let name = name.clone();
        app.blocking(move |c| require(c, &name)).await?;
    }
    app.controller.enqueue(&name, Trigger::Manual);
    Ok((
        StatusCode::ACCEPTED,
        Json(Queued {
            environment: name,
            queued: true,
        }),
    ))
}

async fn plan(
    State(app): State<AppState>,
    EnvName(name): EnvName,
) -> Result<Json<PlanView>, ApiError> {
    app.blocking(move |c| {
        let record = require(c, &name)?;
        // What the reconcile would plan from: the pinned commit, or the ref it follows.
        let reference = if record.pinned {
            record.desired_commit.clone()
        } else {
            record.tracked_ref.clone()
        }
        .ok_or_else(|| {
            ApiError::unprocessable(format!("environment `{name}` has no ref to follow"))
        })?;
        let engine = c.engine();
        let target = engine.target_for(&name)?;
        // The ref it follows is its branch, never a tag named like it (as the reconcile).
        let tip = if record.pinned {
            None
        } else {
            Some(c.source().resolve_tracked(&reference)?.sha)
        };
        let origin = Origin {
            source: c.source().as_ref(),
            repo: c.repo_label(),
            reference: &reference,
            folder: c.folder(),
            tip: tip.as_deref(),
        };
        let prepared = engine.prepare(&origin, &target)?;
        Ok(Json(PlanView {
            environment: name,
            reference,
            commit: prepared.commit.sha,
            has_changes: prepared.plan.has_changes(),
            changes: prepared.plan.changes,
        }))
    })
    .await
}

async fn rollback(
    State(app): State<AppState>,
    EnvName(name): EnvName,
    JsonBody(request): JsonBody<RollbackRequest>,
) -> Result<Json<EnvironmentView>, ApiError> {
    {
        let name = name.clone();
        app.blocking(move |c| require(c, &name)).await?;
    }
    app.controller.rollback(&name, request.deployment).await?;
    app.blocking(move |c| load(c, &name)).await.map(Json)
}

async fn extend(
    State(app): State<AppState>,
    EnvName(name): EnvName,
    JsonBody(request): JsonBody<ExtendRequest>,
) -> Result<Json<EnvironmentView>, ApiError> {
    let by = duration("by", &request.by)?;
    app.controller.extend(&name, by).await?;
    app.blocking(move |c| load(c, &name)).await.map(Json)
}

async fn pin(
    State(app): State<AppState>,
    EnvName(name): EnvName,
    JsonBody(request): JsonBody<PinRequest>,
) -> Result<Json<EnvironmentView>, ApiError> {
    if request
        .commit
        .as_deref()
        .is_some_and(|c| c.trim().is_empty())
    {
        return Err(ApiError::bad_request("`commit` is empty")
            .hint("a ref or commit, or leave it out to pin the commit it runs"));
    }
    app.controller.pin(&name, request.commit).await?;
    app.blocking(move |c| load(c, &name)).await.map(Json)
}

async fn unpin(
    State(app): State<AppState>,
    EnvName(name): EnvName,
    JsonBody(NoFields {}): JsonBody<NoFields>,
) -> Result<Json<EnvironmentView>, ApiError> {
    app.controller.unpin(&name).await?;
    app.blocking(move |c| load(c, &name)).await.map(Json)
}

async fn deployments(
    State(app): State<AppState>,
    EnvName(name): EnvName,
    QueryArgs(query): QueryArgs<DeploymentsQuery>,
) -> Result<Json<DeploymentList>, ApiError> {
    let limit = match query.limit {
        None => 50,
        Some(n @ 1..=1000) => n,
        Some(n) => {
            return Err(
                ApiError::bad_request(format!("`limit` {n} is out of range")).hint("1 to 1000"),
            );
        }
    };
    app.blocking(move |c| {
        let store = c.engine().store();
        let found = store.deployments(&name, limit)?;
        if found.is_empty() && store.environment(&name)?.is_none() {
            return Err(ApiError::no_environment(&name));
        }
        Ok(Json(DeploymentList {
            deployments: found.into_iter().map(DeploymentView::summary).collect(),
        }))
    })
    .await
}
