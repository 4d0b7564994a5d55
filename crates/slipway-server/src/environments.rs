//! `/api/v1/environments`: list, create, get, destroy, sync, plan, rollback, extend, pin,
//! unpin, sleep, wake and the deployment history of one, with the JSON Schemas of what they take and
//! answer.

use slipway_core::EnvName;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use schemars::generate::SchemaGenerator;
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use slipway_controller::{Controller, CreateEnvironment};
use slipway_core::plan::Change;
use slipway_core::vocab::{
    Access as PreviewAccess, Activity, EnvKind, Health, ShownStatus, SyncState,
};
use slipway_engine::{EngineError, EnvironmentStatus, Origin};
use slipway_state::EnvironmentRecord;

use crate::AppState;
use crate::auth::{AuditTarget, Principal};
use crate::body::{EnvPath, JsonBody, NoFields, QueryArgs, parse_name, printable};
use crate::deployments::DeploymentSummary;
use crate::error::ApiError;
use crate::openapi::one_of;
use crate::routes::{Access, Route};

/// A change asked of a replica that does not work on the environment is forwarded to the one
/// that does (`forward.rs`); these are the answers when it cannot be.
const ELSEWHERE_409: &str = "Another replica works on the environment (several replicas on one PostgreSQL state) and this one cannot forward the change there (it advertises no address, a one-shot command holds the environment, its node is not alive, or the request was forwarded once already): the message names it; nothing was changed.";
const ELSEWHERE_503: &str = "The replica that works on the environment is not alive or did not accept the forwarded change: nothing was changed; `Retry-After` says when to ask again.";
const ELSEWHERE_502: &str = "The answer of the replica that works on the environment broke off: the change may or may not have been made.";
const ELSEWHERE_504: &str = "The replica that works on the environment did not answer the forwarded change in time: it may or may not have been made.";

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
            .json::<EnvironmentList>(StatusCode::OK, "The environments, by name."),
        Route::post("/api/v1/environments", create)
            .id("createEnvironment", "environment.create")
            .summary(
                "Create an ad-hoc environment",
                "Records an ad-hoc environment running `ref`, with the variables and secrets of the generated family `like` (a static environment such as prod is refused), owned by the caller's token, living `ttl` (at most `[environments] max_ttl`), and queues its first deployment. Beyond its family's `max_environments` or the home's `[local] max_environments` it is made all the same, `activity: queued` with its `queue_position`, and deployed when a slot frees.",
            )
            .access(Access::Developer)
            .body::<CreateRequest>()
            .json::<EnvironmentView>(StatusCode::CREATED, "The new environment; its first deployment is queued.")
            .links(&[
                ("getEnvironment", "name", "$response.body#/name"),
                ("planEnvironment", "name", "$response.body#/name"),
                ("extendEnvironment", "name", "$response.body#/name"),
                ("pinEnvironment", "name", "$response.body#/name"),
                ("listDeployments", "name", "$response.body#/name"),
                ("destroyEnvironment", "name", "$response.body#/name"),
            ])
            .errors(&[
                (StatusCode::CONFLICT, "An environment of that name exists, the default branch's stack defines the name (an environment or family), or it starts with `pr-` or `br-`."),
                (StatusCode::UNPROCESSABLE_ENTITY, "The ref, the stack at it, or `like` cannot be used (`like` must name a generated family), or `ttl` is longer than `[environments] max_ttl`."),
            ]),
        Route::get(ENV, get)
            .id("getEnvironment", "environment.get")
            .summary("Get an environment", "One environment, its resources observed now.")
            .json::<EnvironmentView>(StatusCode::OK, "The environment."),
        Route::delete(ENV, destroy)
            .id("destroyEnvironment", "environment.destroy")
            .summary(
                "Destroy an environment",
                "Deletes every resource of the environment, then its record (its deployments and events stay as history). Waits for an operation in progress on it to finish.",
            )
            .access(Access::Environment)
            .forwarded()
            .query::<DestroyQuery>()
            .json::<Destroyed>(StatusCode::OK, "It is gone.")
            .errors(&[
                (StatusCode::UNPROCESSABLE_ENTITY, "Some resources could not be deleted (it is marked failed and retried), or it is protected and `confirm` does not name it."),
                (StatusCode::CONFLICT, ELSEWHERE_409), (StatusCode::SERVICE_UNAVAILABLE, ELSEWHERE_503), (StatusCode::BAD_GATEWAY, ELSEWHERE_502), (StatusCode::GATEWAY_TIMEOUT, ELSEWHERE_504),
            ]),
        Route::post("/api/v1/environments/{name}/sync", sync)
            .id("syncEnvironment", "environment.sync")
            .summary(
                "Sync an environment",
                "Queues a reconcile of the environment now: it is brought to the commit it should run and repaired where it drifted. A change a deploy window (`windows:`) denies now is held, unless `override_window` is true, which needs the deployer role (or admin) and is recorded with the caller's name in the audit and event logs.",
            )
            .access(Access::Environment)
            .forwarded()
            .body::<SyncRequest>()
            .json::<Queued>(StatusCode::ACCEPTED, "The reconcile is queued.")
            .errors(&[(StatusCode::FORBIDDEN, "`override_window` was asked by a token below the deployer role."), (StatusCode::CONFLICT, ELSEWHERE_409), (StatusCode::SERVICE_UNAVAILABLE, ELSEWHERE_503), (StatusCode::BAD_GATEWAY, ELSEWHERE_502), (StatusCode::GATEWAY_TIMEOUT, ELSEWHERE_504)]),
        Route::get("/api/v1/environments/{name}/plan", plan)
            .id("planEnvironment", "environment.plan")
            .summary(
                "Plan an environment",
                "What a sync would change now: the plan from the environment's ref (its pinned commit when pinned) as last fetched, against what runs. `POST /api/v1/refresh` fetches first.",
            )
            .json::<PlanView>(StatusCode::OK, "The plan.")
            .errors(&[(StatusCode::UNPROCESSABLE_ENTITY, "The stack at the commit is not valid.")]),
        Route::post("/api/v1/environments/{name}/rollback", rollback)
            .id("rollbackEnvironment", "environment.rollback")
            .summary(
                "Roll an environment back",
                "Pins the environment to the commit of one of its earlier deployments and queues its deployment. `unpin` lets it follow its ref again.",
            )
            .access(Access::Environment)
            .forwarded()
            .body::<RollbackRequest>()
            .json::<EnvironmentView>(StatusCode::OK, "The environment, pinned; the deployment is queued.")
            .errors(&[
                (StatusCode::UNPROCESSABLE_ENTITY, "The deployment is not one of this environment's."),
                (StatusCode::CONFLICT, ELSEWHERE_409), (StatusCode::SERVICE_UNAVAILABLE, ELSEWHERE_503), (StatusCode::BAD_GATEWAY, ELSEWHERE_502), (StatusCode::GATEWAY_TIMEOUT, ELSEWHERE_504),
            ]),
        Route::post("/api/v1/environments/{name}/extend", extend)
            .id("extendEnvironment", "environment.extend")
            .summary(
                "Extend an environment's life",
                "Pushes the expiry of a generated or ad-hoc environment `by` later (from now, if it had none or it has passed), never past `[environments] max_ttl` from now.",
            )
            .access(Access::Environment)
            .forwarded()
            .body::<ExtendRequest>()
            .json::<EnvironmentView>(StatusCode::OK, "The environment with its new expiry.")
            .errors(&[
                (StatusCode::CONFLICT, "It is a static environment: those have no time to live and never expire; or another replica works on it and this one cannot forward the change there (the message names it; nothing was changed)."),
                (StatusCode::SERVICE_UNAVAILABLE, ELSEWHERE_503),
                (StatusCode::BAD_GATEWAY, ELSEWHERE_502),
                (StatusCode::GATEWAY_TIMEOUT, ELSEWHERE_504),
                (StatusCode::UNPROCESSABLE_ENTITY, "`by` is longer than `[environments] max_ttl`."),
            ]),
        Route::post("/api/v1/environments/{name}/link", link)
            .id("linkEnvironment", "environment.link")
            .summary(
                "Make a signed link to an environment's preview URL",
                "A URL that opens the environment's preview without a Slipway login until it expires (`for`, default 1h, at most 30d), also when the environment is `access: private`. It opens that preview only, and stops working when the environment is destroyed or made again. The call is audited: who shared which preview, for how long.",
            )
            .access(Access::Environment)
            .body::<LinkRequest>()
            .json::<LinkView>(StatusCode::OK, "The link.")
            .errors(&[
                (StatusCode::UNPROCESSABLE_ENTITY, "No preview router runs on this server (a link needs its address)."),
            ]),
        Route::post("/api/v1/environments/{name}/pin", pin)
            .id("pinEnvironment", "environment.pin")
            .summary(
                "Pin an environment",
                "Stops it following its ref: it stays at `commit` (a ref or commit; default: the commit it runs).",
            )
            .access(Access::Environment)
            .forwarded()
            .body::<PinRequest>()
            .json::<EnvironmentView>(StatusCode::OK, "The environment, pinned.")
            .errors(&[
                (StatusCode::UNPROCESSABLE_ENTITY, "The commit cannot be resolved, or it runs none yet."),
                (StatusCode::CONFLICT, ELSEWHERE_409), (StatusCode::SERVICE_UNAVAILABLE, ELSEWHERE_503), (StatusCode::BAD_GATEWAY, ELSEWHERE_502), (StatusCode::GATEWAY_TIMEOUT, ELSEWHERE_504),
            ]),
        Route::post("/api/v1/environments/{name}/unpin", unpin)
            .id("unpinEnvironment", "environment.unpin")
            .summary("Unpin an environment", "Lets a pinned environment follow its ref again, and queues a sync.")
            .access(Access::Environment)
            .forwarded()
            .json::<EnvironmentView>(StatusCode::OK, "The environment, following its ref.")
            .errors(&[(StatusCode::CONFLICT, ELSEWHERE_409), (StatusCode::SERVICE_UNAVAILABLE, ELSEWHERE_503), (StatusCode::BAD_GATEWAY, ELSEWHERE_502), (StatusCode::GATEWAY_TIMEOUT, ELSEWHERE_504)]),
        Route::post("/api/v1/environments/{name}/sleep", sleep)
            .id("sleepEnvironment", "environment.sleep")
            .summary(
                "Put an environment to sleep",
                "Stops its processes now, as `sleep_after` does after that long without a request; its data, files, databases and ports stay. The next request through its preview URL, or `wake`, starts them again. Asleep already: nothing changes.",
            )
            .access(Access::Environment)
            .forwarded()
            .json::<EnvironmentView>(StatusCode::OK, "The environment, `sleeping`.")
            .errors(&[
                (StatusCode::UNPROCESSABLE_ENTITY, "It runs nothing yet (no deployment)."),
                (StatusCode::CONFLICT, ELSEWHERE_409), (StatusCode::SERVICE_UNAVAILABLE, ELSEWHERE_503), (StatusCode::BAD_GATEWAY, ELSEWHERE_502), (StatusCode::GATEWAY_TIMEOUT, ELSEWHERE_504),
            ]),
        Route::post("/api/v1/environments/{name}/wake", wake)
            .id("wakeEnvironment", "environment.wake")
            .summary(
                "Wake a sleeping environment",
                "Starts its processes again (at the newest commit of what it follows) and answers once that is done, or after 60 seconds with it still waking. Awake already: nothing changes.",
            )
            .access(Access::Environment)
            .forwarded()
            .json::<EnvironmentView>(StatusCode::OK, "The environment: `awake`, or still `sleeping` while its wake goes on.")
            .errors(&[(StatusCode::CONFLICT, ELSEWHERE_409), (StatusCode::SERVICE_UNAVAILABLE, ELSEWHERE_503), (StatusCode::BAD_GATEWAY, ELSEWHERE_502), (StatusCode::GATEWAY_TIMEOUT, ELSEWHERE_504)]),
        Route::get("/api/v1/environments/{name}/deployments", deployments)
            .id("listDeployments", "deployment.list")
            .summary(
                "List an environment's deployments",
                "Its deployment history, newest first, without the plans (`GET /api/v1/deployments/{id}` has them). History outlives a destroyed environment.",
            )
            .query::<DeploymentsQuery>()
            .json::<DeploymentList>(StatusCode::OK, "The deployments, newest first."),
    ]
}

/// One environment: the status shape of SPEC §6 (`slipway status --output json`), plus what
/// its record knows of who made it and how long it lives.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Environment")]
pub(crate) struct EnvironmentView {
    name: EnvName,
    kind: EnvKind,
    /// The commit it runs.
    commit: Option<String>,
    /// The commit it should run.
    desired_commit: Option<String>,
    sync: SyncState,
    health: Health,
    /// Where its exposed port is served.
    url: Option<String>,
    #[schemars(extend("format" = "date-time"))]
    expires_at: Option<String>,
    /// The ref it follows.
    tracked_ref: Option<String>,
    /// The last problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    /// The token name that created it (ad-hoc environments).
    owner: Option<String>,
    /// The `environments:` entry it follows: itself, or its family.
    definition: Option<String>,
    /// Pinned environments do not follow their ref.
    pinned: bool,
    /// Destroying it, or a resource in it, needs a person's confirmation.
    protected: bool,
    /// The pull request whose `/slipway apply` holds it, until merged, closed or unlocked.
    #[serde(skip_serializing_if = "Option::is_none")]
    locked_by: Option<i64>,
    /// The replica working on it, with several replicas on one PostgreSQL state; `null`
    /// when none holds it, and with a SQLite state.
    replica: Option<String>,
    /// How its code is isolated: its own uid (the engine runs as root), Landlock
    /// (unprivileged engine), or none (said explicitly in the engine config).
    #[schemars(schema_with = "isolations")]
    isolation: String,
    resources: Vec<ResourceView>,
    /// How long it lives after its last new commit or extension.
    ttl_seconds: Option<i64>,
    /// Whether its processes run (`awake`), are stopped until a request comes
    /// (`sleeping`), or wait for a slot in its family (`queued`).
    activity: Activity,
    /// Its place in its family's queue while `queued`, from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_position: Option<u32>,
    /// Who may open its preview URL: anyone (`public`), or people signed in to Slipway,
    /// Slipway tokens and signed links (`private`).
    access: PreviewAccess,
}

/// One resource of an environment.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Resource")]
struct ResourceView {
    name: String,
    /// Its type, e.g. `process` or `file`.
    #[serde(rename = "type")]
    type_name: String,
    status: ShownStatus,
    /// Its outputs, secret ones `<redacted>`; null while it is first being created.
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    outputs: Value,
    /// What is wrong, when something is.
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

fn isolations(_: &mut SchemaGenerator) -> Schema {
    one_of(&["uid", "landlock", "none"])
}

impl EnvironmentView {
    fn new(
        controller: &Controller,
        status: EnvironmentStatus,
        record: Option<&EnvironmentRecord>,
    ) -> EnvironmentView {
        // An exposed process is reached through the preview router, by a URL that stays the
        // same across deploys; its own address is in the resource's outputs.
        let url = status.url.map(|own| {
            record
                .and_then(|r| controller.preview_url(&status.name, &r.stack))
                .unwrap_or(own)
        });
        let resources = status
            .resources
            .into_iter()
            .map(|r| ResourceView {
                name: r.name,
                type_name: r.type_name,
                status: r.status,
                outputs: r.outputs,
                message: r.message,
            })
            .collect();
        EnvironmentView {
            name: status.name,
            kind: status.kind,
            commit: status.commit,
            desired_commit: status.desired_commit,
            sync: status.sync,
            health: status.health,
            url,
            expires_at: status.expires_at,
            tracked_ref: status.tracked_ref,
            message: status.message,
            owner: status.owner,
            definition: status.definition,
            pinned: status.pinned,
            protected: status.protected,
            locked_by: status.locked_by,
            replica: status.replica,
            isolation: status.isolation,
            resources,
            ttl_seconds: record.and_then(|r| r.ttl_ms).map(|ms| ms / 1000),
            activity: status.activity,
            queue_position: status.queue_position,
            access: status.access,
        }
    }
}

/// The list's answer: its schema (`list` writes these bytes around each environment's own).
#[derive(Debug, Serialize, JsonSchema)]
#[allow(dead_code)] // Never built: `list` writes its JSON piece by piece.
struct EnvironmentList {
    environments: Vec<EnvironmentView>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "CreateEnvironment")]
struct CreateRequest {
    #[schemars(with = "EnvName")]
    name: String,
    /// A branch, tag or commit.
    #[serde(rename = "ref")]
    #[schemars(length(min = 1), regex(pattern = r"\S"), example = &"main")]
    reference: String,
    /// The generated family (`generate:`) whose variables and secrets it takes; default: the
    /// only one.
    #[serde(default)]
    #[schemars(with = "Option<EnvName>")]
    like: Option<String>,
    /// How long it lives, e.g. `8h` or `1h30m` (units ms, s, m, h, d), at most
    /// `[environments] max_ttl`; default: the family's `ttl`, else `[environments]
    /// default_ttl`.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    ttl: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Rollback")]
struct RollbackRequest {
    /// The id of an earlier deployment of this environment.
    #[serde(deserialize_with = "crate::body::integer")]
    deployment: i64,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Sync")]
struct SyncRequest {
    /// Apply even though a deploy window denies changes now (deployer role or above;
    /// recorded with the caller's name). Default `false`.
    #[serde(default)]
    override_window: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Extend")]
struct ExtendRequest {
    /// How much longer, e.g. `2h`.
    #[schemars(with = "DurationText")]
    by: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Link")]
struct LinkRequest {
    /// How long the link holds, e.g. `1h` (the default), at most `30d`.
    #[serde(default, rename = "for")]
    #[schemars(with = "Option<DurationText>")]
    valid: Option<String>,
}

/// A signed link to a preview URL.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "PreviewLink")]
struct LinkView {
    /// Opens the preview without a login until `expires_at`.
    url: String,
    #[schemars(extend("format" = "date-time"))]
    expires_at: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Pin")]
struct PinRequest {
    /// A ref or commit; default: the commit it runs. Leave it out rather than send `null`.
    #[serde(default, deserialize_with = "present")]
    #[schemars(
        with = "String",
        length(min = 1),
        regex(pattern = r"\S"),
        example = &"main"
    )]
    commit: Option<String>,
}

/// An optional field that, when sent, has a value: `null` is refused rather than read as
/// left out, as the schema (a string, not a string or null) says.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// A duration in the shapes the API documents: one to three parts of digits and a unit (ms,
/// s, m, h, d), e.g. `8h` or `1h30m`, longer than zero and at most 360 days. (The server
/// reads any duration up to 366 days; one of zero, or longer, is a 400.)
#[derive(JsonSchema)]
#[schemars(rename = "Duration", example = "8h")]
#[allow(dead_code)] // A schema only: the field is read as a `String` and parsed by `duration`.
struct DurationText(
    #[schemars(regex(
        pattern = r"^([1-9][0-9]{0,2}(ms|s|m|h)|([1-9]|[1-9][0-9]|[1-2][0-9]{2}|3[0-5][0-9]|360)d)([0-9]{1,2}(h|m|s|ms)){0,2}$"
    ))]
    String,
);

#[derive(Debug, Serialize, JsonSchema)]
struct Queued {
    environment: EnvName,
    #[schemars(extend("const" = true))]
    queued: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
struct Destroyed {
    environment: EnvName,
    #[schemars(extend("const" = true))]
    destroyed: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
struct PlanView {
    environment: EnvName,
    /// The ref (or pinned commit) planned.
    reference: String,
    /// The commit it resolved to.
    commit: String,
    has_changes: bool,
    changes: Vec<Change>,
    /// What the deploy windows (`windows:`) say now: a sync of a change they deny is held.
    window: WindowView,
    /// What the policies in force at the default branch say of the plan (docs/policies.md);
    /// `null` when it changes nothing or no policy is in force.
    policies: Option<PoliciesView>,
}

/// The policies' verdict on a plan.
#[derive(Debug, Serialize, JsonSchema)]
struct PoliciesView {
    /// `pass`, `soft_fail` (blocked unless a policy owner approves this commit) or
    /// `hard_fail` (blocked).
    gate: String,
    /// The default branch's commit the policies were read at.
    policies_at: String,
    /// Each policy's result: `policy` (its file), `title`, `enforcement`, `outcome`
    /// (`failed`: it blocks; `warned`; `passed`), `denies` and `warns`
    /// (`{"msg", "resource", "location"}`), `error` when it could not be judged.
    results: Vec<serde_json::Value>,
}

/// What the deploy windows say now.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "DeployWindow")]
struct WindowView {
    /// Whether a change may deploy now.
    allowed: bool,
    /// When denied: the first time from which changes are allowed, RFC 3339 in the denying
    /// window's time zone; `null` when allowed, or when no time within a year is.
    until: Option<String>,
    /// When denied: the window that denies (or the first of the allow windows none of which
    /// is open).
    window: Option<WindowSpec>,
}

/// A deploy window as the stack writes it.
#[derive(Debug, Serialize, JsonSchema)]
struct WindowSpec {
    /// `allow` or `deny`.
    kind: &'static str,
    /// Its 5-field cron schedule.
    schedule: String,
    /// How long it stays open after each match, as written.
    duration: String,
    /// Its IANA time zone.
    time_zone: String,
}

impl From<&slipway_engine::Verdict> for WindowView {
    fn from(verdict: &slipway_engine::Verdict) -> WindowView {
        WindowView {
            allowed: verdict.allowed(),
            until: verdict.until_text(),
            window: verdict
                .denied
                .as_ref()
                .and_then(|d| d.window())
                .map(|w| WindowSpec {
                    kind: w.kind().as_str(),
                    schedule: w.schedule().to_string(),
                    duration: w.duration_text().to_string(),
                    time_zone: w.time_zone().to_string(),
                }),
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
struct DestroyQuery {
    /// The environment's name again: required to destroy a protected environment.
    confirm: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct DeploymentsQuery {
    /// At most this many (default 50, at most 1000).
    #[schemars(range(min = 1, max = 1000))]
    limit: Option<usize>,
}

#[derive(Debug, Serialize, JsonSchema)]
struct DeploymentList {
    deployments: Vec<DeploymentSummary>,
}

/// The environment `name` as the API shows it, or a 404.
fn load(controller: &Controller, name: &EnvName) -> Result<EnvironmentView, ApiError> {
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
fn require(controller: &Controller, name: &EnvName) -> Result<EnvironmentRecord, ApiError> {
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

async fn list(State(app): State<AppState>) -> Result<Response, ApiError> {
    app.blocking(|controller| {
        // Each environment's JSON is made as soon as its status is, and the list is written
        // around them: with ten thousand environments the server holds their JSON, not their
        // statuses, records and views. The bytes are those `Json(EnvironmentList)` writes.
        let views = controller.engine().status_each(|record, status| {
            // About what one environment with a few resources takes, grown if it takes more.
            let mut json = Vec::with_capacity(1024);
            serde_json::to_writer(
                &mut json,
                &EnvironmentView::new(controller, status, Some(record)),
            )
            .map(|()| json)
        })?;
        let mut body = Pieces::default();
        body.push(b"{\"environments\":[");
        for (i, view) in views.into_iter().enumerate() {
            if i > 0 {
                body.push(b",");
            }
            body.push(&view.map_err(|e| {
                ApiError::internal(format!("cannot write an environment as JSON: {e}"))
            })?);
        }
        body.push(b"]}");
        Ok((
            [(CONTENT_TYPE, "application/json")],
            axum::body::Body::new(body.done()),
        )
            .into_response())
    })
    .await
}

/// A response body gathered in pieces of [`Pieces::SIZE`] bytes, its length known (so it is
/// sent with a `Content-Length`). Ten thousand environments' JSON is about 8 MiB: one
/// buffer of that size was mapped, faulted in page by page and unmapped on every listing,
/// and the pieces are reused by the allocator from one listing to the next.
#[derive(Default)]
struct Pieces {
    done: Vec<axum::body::Bytes>,
    open: Vec<u8>,
    len: u64,
}

impl Pieces {
    /// Below glibc's threshold for mapping a block on its own (128 KiB, set in `bound_heap`).
    const SIZE: usize = 64 * 1024;

    fn push(&mut self, bytes: &[u8]) {
        if self.open.len() + bytes.len() > Self::SIZE && !self.open.is_empty() {
            let full = std::mem::replace(&mut self.open, Vec::with_capacity(Self::SIZE));
            self.done.push(full.into());
        }
        self.open.extend_from_slice(bytes);
        self.len += bytes.len() as u64;
    }

    fn done(mut self) -> PiecesBody {
        if !self.open.is_empty() {
            self.done.push(std::mem::take(&mut self.open).into());
        }
        PiecesBody {
            pieces: self.done.into_iter(),
            left: self.len,
        }
    }
}

/// [`Pieces`] as they are sent.
struct PiecesBody {
    pieces: std::vec::IntoIter<axum::body::Bytes>,
    left: u64,
}

impl hyper::body::Body for PiecesBody {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        std::task::Poll::Ready(this.pieces.next().map(|piece| {
            this.left -= piece.len() as u64;
            Ok(hyper::body::Frame::data(piece))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.len() == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
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
    let name = parse_name(&request.name)?;
    if request.reference.trim().is_empty() {
        return Err(ApiError::bad_request("`ref` is empty").hint("a branch, tag or commit"));
    }
    if let Some(like) = &request.like {
        parse_name(like).map_err(|_| {
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
    let record = app
        .controller
        .create_environment(CreateEnvironment {
            name: name.clone(),
            reference: request.reference,
            like: request.like,
            ttl,
            owner: Some(caller.name),
        })
        .await?;
    // What was created, from the record the create wrote: read back, it may already be gone
    // (expired, destroyed), and the create still happened.
    let view = app
        .blocking(move |c| {
            let status = c.engine().status_of(record.clone())?;
            Ok(EnvironmentView::new(c, status, Some(&record)))
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        [(LOCATION, format!("/api/v1/environments/{name}"))],
        Json(view),
    )
        .into_response())
}

async fn get(
    State(app): State<AppState>,
    EnvPath(name): EnvPath,
) -> Result<Json<EnvironmentView>, ApiError> {
    app.blocking(move |c| load(c, &name)).await.map(Json)
}

async fn destroy(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    EnvPath(name): EnvPath,
    QueryArgs(query): QueryArgs<DestroyQuery>,
) -> Result<Json<Destroyed>, ApiError> {
    {
        let name = name.clone();
        app.blocking(move |c| require(c, &name)).await?;
    }
    let confirm = query.confirm.as_deref() == Some(name.as_str());
    app.controller
        .destroy_environment(
            &name,
            slipway_controller::DestroyOptions::new(&caller.name, confirm.into()),
        )
        .await?;
    Ok(Json(Destroyed {
        environment: name,
        destroyed: true,
    }))
}

async fn sync(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    EnvPath(name): EnvPath,
    JsonBody(request): JsonBody<SyncRequest>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    {
        let name = name.clone();
        app.blocking(move |c| require(c, &name)).await?;
    }
    if request.override_window {
        // Overriding a deploy window is a deployer's call, whatever the environment.
        if caller.role < crate::auth::Role::Deployer {
            return Err(ApiError::client(
                StatusCode::FORBIDDEN,
                format!(
                    "overriding the deploy window of `{name}` needs the deployer role; this token is a {}",
                    caller.role.as_str()
                ),
            )
            .hint("ask a deployer, or sync without `override_window` (the change waits for the window)"));
        }
        app.controller
            .sync_overriding_window(&name, &caller.name)
            .await?;
    } else {
        app.controller.sync(&name).await?;
    }
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
    EnvPath(name): EnvPath,
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
        // As the reconcile judges it: a preview's family's windows at the default branch.
        let target = c.target(&record)?;
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
            window: WindowView::from(&prepared.window),
            policies: prepared.policy.as_ref().map(|judged| {
                let report = judged.report();
                PoliciesView {
                    gate: serde_json::to_value(report.gate)
                        .ok()
                        .and_then(|g| g.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    policies_at: report.policies_at,
                    results: report.results,
                }
            }),
            changes: prepared.plan.changes,
        }))
    })
    .await
}

async fn rollback(
    State(app): State<AppState>,
    EnvPath(name): EnvPath,
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
    EnvPath(name): EnvPath,
    JsonBody(request): JsonBody<ExtendRequest>,
) -> Result<Json<EnvironmentView>, ApiError> {
    let by = duration("by", &request.by)?;
    app.controller.extend(&name, by).await?;
    app.blocking(move |c| load(c, &name)).await.map(Json)
}

async fn link(
    State(app): State<AppState>,
    EnvPath(name): EnvPath,
    JsonBody(request): JsonBody<LinkRequest>,
) -> Result<Json<LinkView>, ApiError> {
    let valid = match request.valid.as_deref() {
        Some(text) => duration("for", text)?,
        None => Duration::from_secs(3600),
    };
    if valid > slipway_controller::links::MAX_LINK {
        return Err(ApiError::bad_request("`for` is longer than 30 days")
            .hint("a link holds for at most 30d; make a new one when it expires"));
    }
    let made = app
        .blocking(move |c| Ok(c.preview_link(&name, valid)?))
        .await?;
    Ok(Json(LinkView {
        url: made.url,
        expires_at: crate::rfc3339(made.expires_at),
    }))
}

async fn pin(
    State(app): State<AppState>,
    EnvPath(name): EnvPath,
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
    EnvPath(name): EnvPath,
    JsonBody(NoFields {}): JsonBody<NoFields>,
) -> Result<Json<EnvironmentView>, ApiError> {
    app.controller.unpin(&name).await?;
    app.blocking(move |c| load(c, &name)).await.map(Json)
}

async fn sleep(
    State(app): State<AppState>,
    EnvPath(name): EnvPath,
    JsonBody(NoFields {}): JsonBody<NoFields>,
) -> Result<Json<EnvironmentView>, ApiError> {
    app.controller.sleep(&name).await?;
    app.blocking(move |c| load(c, &name)).await.map(Json)
}

async fn wake(
    State(app): State<AppState>,
    EnvPath(name): EnvPath,
    JsonBody(NoFields {}): JsonBody<NoFields>,
) -> Result<Json<EnvironmentView>, ApiError> {
    if let Some(mut woken) = app.controller.wake(&name).await? {
        // Answered with what it is then: awake, or still waking after the wait.
        let _ = tokio::time::timeout(crate::wake::WAKE_WAIT, woken.wait_for(|done| *done)).await;
    }
    app.blocking(move |c| load(c, &name)).await.map(Json)
}

async fn deployments(
    State(app): State<AppState>,
    EnvPath(name): EnvPath,
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
            deployments: found.into_iter().map(DeploymentSummary::from).collect(),
        }))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::body::Body as _;

    /// Whatever is pushed, in any sizes (empty, tiny, larger than a piece): the body sends
    /// exactly those bytes, in order, in pieces of at most [`Pieces::SIZE`] but for one push
    /// larger than that, and says its exact length before the first byte (the
    /// `Content-Length`).
    #[test]
    fn pieces_send_what_was_pushed_with_its_exact_length() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let sizes = [
            0usize,
            1,
            17,
            1000,
            Pieces::SIZE - 1,
            1,
            Pieces::SIZE * 3,
            5,
            0,
        ];
        let mut pieces = Pieces::default();
        let mut want = Vec::new();
        for (i, size) in sizes.into_iter().cycle().take(400).enumerate() {
            let bytes: Vec<u8> = (0..size).map(|j| ((i + j) % 251) as u8).collect();
            pieces.push(&bytes);
            want.extend_from_slice(&bytes);
        }
        let body = pieces.done();
        assert_eq!(body.size_hint().exact(), Some(want.len() as u64));
        assert!(
            body.pieces
                .as_slice()
                .iter()
                .all(|p| p.len() <= Pieces::SIZE || p.len() == Pieces::SIZE * 3),
            "a piece is at most SIZE bytes, or one push that is larger"
        );
        let sent = runtime
            .block_on(body.collect())
            .expect("infallible")
            .to_bytes();
        assert_eq!(sent.len(), want.len());
        assert!(
            sent == want,
            "the bytes sent are the bytes pushed, in order"
        );
        assert_eq!(
            Pieces::default().done().size_hint().exact(),
            Some(0),
            "nothing pushed: an empty body"
        );
    }
}
