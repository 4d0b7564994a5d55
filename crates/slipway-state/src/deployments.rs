//! Deployments: the history of every attempt to bring an environment to a commit.

use crate::db::{DbError, Exec, Row, params};
use serde::{Deserialize, Serialize};
use slipway_core::EnvName;

use slipway_core::vocab::DeploymentStatus;

use crate::StateError;
use crate::store::{Store, env_name, from_json, sql, sql_limit, to_json, word};

/// One deployment of an environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// Increasing with time; never reused.
    pub id: i64,
    /// The environment deployed. Not a foreign key: history outlives the environment.
    pub environment: EnvName,
    /// The commit deployed.
    pub commit: String,
    /// The rendered desired-state hash deployed.
    pub hash: String,
    /// The ref the commit was resolved from, if any.
    pub reference: Option<String>,
    /// The plan applied.
    pub plan: serde_json::Value,
    /// `running`, or how it finished.
    pub status: DeploymentStatus,
    /// Why it failed or was interrupted.
    pub error: Option<String>,
    /// Who or what started it: a user, `controller`, `webhook:github`.
    pub who: String,
    /// When it started, unix milliseconds.
    pub started_at: i64,
    /// When it finished, unix milliseconds.
    pub finished_at: Option<i64>,
    /// What it did, recorded when it finishes (`null` until then).
    pub summary: serde_json::Value,
}

/// Which deployment it was, without its plan and summary (which hold every resource of the
/// environment): see [`Store::deployment_refs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploymentRef {
    /// As [`DeploymentRecord::id`].
    pub id: i64,
    /// The commit deployed.
    pub commit: String,
    /// The ref the commit was resolved from, if any.
    pub reference: Option<String>,
}

/// A deployment about to start; see [`Store::begin_deployment`].
#[derive(Clone, Debug, PartialEq)]
pub struct NewDeployment {
    /// The environment deployed.
    pub environment: EnvName,
    /// The commit deployed.
    pub commit: String,
    /// The rendered desired-state hash deployed.
    pub hash: String,
    /// The ref the commit was resolved from, if any.
    pub reference: Option<String>,
    /// The plan about to be applied.
    pub plan: serde_json::Value,
    /// The rules its commit declares for the environment, when it is a static one (see
    /// [`Store::deployment_rules`]).
    pub rules: Option<serde_json::Value>,
    /// Who or what started it.
    pub who: String,
    /// When it starts, unix milliseconds.
    pub at: i64,
}

const COLUMNS: &str = "id, environment, commit_sha, hash, reference, plan, status, error, who, \
                       started_at, finished_at, summary";

fn from_row(row: &Row) -> Result<(DeploymentRecord, String, String), DbError> {
    Ok((
        DeploymentRecord {
            id: row.get(0)?,
            environment: env_name(row, 1)?,
            commit: row.get(2)?,
            hash: row.get(3)?,
            reference: row.get(4)?,
            plan: serde_json::Value::Null,
            status: word(row, 6)?,
            error: row.get(7)?,
            who: row.get(8)?,
            started_at: row.get(9)?,
            finished_at: row.get(10)?,
            summary: serde_json::Value::Null,
        },
        row.get(5)?,
        row.get(11)?,
    ))
}

/// Decodes the JSON columns outside the rusqlite row callback, so that a damaged value is
/// reported as such rather than as a query failure.
fn decode(
    (mut record, plan, summary): (DeploymentRecord, String, String),
) -> Result<DeploymentRecord, StateError> {
    let id = record.id;
    record.plan = from_json(&plan, || format!("deployment {id}"), "plan")?;
    record.summary = from_json(&summary, || format!("deployment {id}"), "summary")?;
    Ok(record)
}

impl Store {
    /// Records a deployment as `running` and returns its id.
    ///
    /// Record before acting: the engine calls this before it changes anything, so that a crash
    /// mid-deployment leaves a `running` row for [`Store::mark_interrupted`] to find.
    pub fn begin_deployment(&self, new: &NewDeployment) -> Result<i64, StateError> {
        self.write_env(Some(&new.environment), &[], |tx| {
            tx.query_one(
                "INSERT INTO deployments (environment, commit_sha, hash, reference, plan, \
                                          status, who, started_at, summary, rules) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7, 'null', ?8) RETURNING id",
                params![
                    new.environment,
                    new.commit,
                    new.hash,
                    new.reference,
                    to_json(&new.plan),
                    new.who,
                    new.at,
                    new.rules.as_ref().map(to_json),
                ],
                |row| row.get(0),
            )
            .map_err(sql(format!("record a deployment of {}", new.environment)))
        })
    }

    /// Finishes a running deployment with a final status (`succeeded`, `failed` or
    /// `interrupted`).
    ///
    /// # Errors
    /// [`StateError::DeploymentNotRunning`] when it already finished (for example, it was
    /// marked interrupted after a restart: that record stands); [`StateError::NotFound`] for
    /// an unknown id.
    pub fn finish_deployment(
        &self,
        id: i64,
        status: DeploymentStatus,
        error: Option<&str>,
        summary: &serde_json::Value,
        at: i64,
    ) -> Result<(), StateError> {
        if !status.is_final() {
            return Err(StateError::InvalidValue {
                field: "final deployment status",
                value: status.to_string(),
                allowed: &["succeeded", "failed", "interrupted"],
            });
        }
        let operation = || format!("record the end of deployment {id}");
        let environment = self
            .conn()
            .query_opt(
                "SELECT environment FROM deployments WHERE id = ?1",
                params![id],
                |row| env_name(row, 0),
            )
            .map_err(sql(operation()))?
            .ok_or_else(|| StateError::NotFound {
                what: "deployment",
                key: id.to_string(),
            })?;
        self.write_env(Some(&environment), &[], |tx| {
            finish_in(tx, &environment, id, status, error, summary, at)
        })
    }

    /// Records an apply of `environment` that succeeded, all in one transaction: its
    /// deployment `id` finished with `summary` at `at`, the environment's record changed by
    /// `change` (its commit, its sync state) and `event` recorded. Returns the event's id.
    ///
    /// One transaction, not three: a crash leaves either the apply unfinished (interrupted,
    /// its environment `syncing`, as after a crash during its changes) or all of it done.
    pub fn finish_apply(
        &self,
        environment: &EnvName,
        id: i64,
        summary: &serde_json::Value,
        at: i64,
        change: impl FnOnce(&mut crate::EnvironmentRecord),
        event: OperationEvent<'_>,
    ) -> Result<i64, StateError> {
        self.finish_succeeded(environment, id, summary, at, event, |tx| {
            crate::environments::modify_in(tx, environment, change).map(drop)
        })
    }

    /// Records a destroy of `environment` that succeeded, all in one transaction: its
    /// deployment `id` finished with `summary`, the environment's uid released, its record
    /// deleted (its resources and ports with it; its deployments and events stay, as history)
    /// and `event` recorded. Returns the event's id.
    ///
    /// One transaction, not four: a crash leaves either the environment as it was (the destroy
    /// is run again) or all of it done; never a deleted environment whose deployment still
    /// says `running`, or a uid given back while the environment is still recorded.
    pub fn finish_destroy(
        &self,
        environment: &EnvName,
        id: i64,
        summary: &serde_json::Value,
        at: i64,
        event: OperationEvent<'_>,
    ) -> Result<i64, StateError> {
        self.finish_succeeded(environment, id, summary, at, event, |tx| {
            crate::identities::release_uid_in(tx, environment)?;
            crate::environments::delete_environment_in(tx, environment).map(drop)
        })
    }

    /// In one transaction: the running deployment `id` of `environment` succeeded, `also`
    /// wrote what the operation changes, and `event` is recorded; returns the event's id.
    fn finish_succeeded(
        &self,
        environment: &EnvName,
        id: i64,
        summary: &serde_json::Value,
        at: i64,
        (kind, message, data): OperationEvent<'_>,
        also: impl FnOnce(&mut crate::db::Tx<'_>) -> Result<(), StateError>,
    ) -> Result<i64, StateError> {
        self.write_env(Some(environment), &[], |tx| {
            let succeeded = DeploymentStatus::Succeeded;
            finish_in(tx, environment, id, succeeded, None, summary, at)?;
            also(tx)?;
            crate::events::insert_event(tx, Some(environment), kind, message, data, at)
        })
    }

    /// The deployment with this id, if any.
    pub fn deployment(&self, id: i64) -> Result<Option<DeploymentRecord>, StateError> {
        let raw = self
            .conn()
            .query_opt(
                &format!("SELECT {COLUMNS} FROM deployments WHERE id = ?1"),
                params![id],
                from_row,
            )
            .map_err(sql(format!("read deployment {id}")))?;
        raw.map(decode).transpose()
    }

    /// Whether `environment` was deployed at `commit` successfully by a deployment started
    /// at or after `since` (unix milliseconds: its record's creation, so that the history of
    /// an earlier environment of the same name does not count).
    pub fn deployed_commit(
        &self,
        environment: &EnvName,
        commit: &str,
        since: i64,
    ) -> Result<bool, StateError> {
        self.conn()
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM deployments WHERE environment = ?1 \
                 AND commit_sha = ?2 AND status = 'succeeded' AND started_at >= ?3)",
                params![environment, commit, since],
                |row| row.get(0),
            )
            .map_err(sql(format!("read the deployments of {environment}")))
    }

    /// The latest `limit` deployments of an environment, newest first, as
    /// [`Store::deployments`] without reading their plans: a plan of 10,000 resources is
    /// megabytes of JSON to parse, and a plan needs only which commits and refs these were.
    pub fn deployment_refs(
        &self,
        environment: &EnvName,
        limit: usize,
    ) -> Result<Vec<DeploymentRef>, StateError> {
        self.conn()
            .query(
                "SELECT id, commit_sha, reference FROM deployments WHERE environment = ?1 \
                 ORDER BY id DESC LIMIT ?2",
                params![environment, sql_limit(limit)],
                |row| {
                    Ok(DeploymentRef {
                        id: row.get(0)?,
                        commit: row.get(1)?,
                        reference: row.get(2)?,
                    })
                },
            )
            .map_err(sql(format!("list the deployments of {environment}")))
    }

    /// The rules recorded with the latest deployment of `commit` to `environment` that has
    /// them (see [`NewDeployment::rules`]); `None` when none has.
    pub fn deployment_rules(
        &self,
        environment: &EnvName,
        commit: &str,
    ) -> Result<Option<serde_json::Value>, StateError> {
        let text: Option<String> = self
            .conn()
            .query_opt(
                "SELECT rules FROM deployments WHERE environment = ?1 AND commit_sha = ?2 \
                 AND rules IS NOT NULL ORDER BY id DESC LIMIT 1",
                params![environment, commit],
                |row| row.get(0),
            )
            .map_err(sql(format!("read the rules deployed to {environment}")))?;
        text.map(|t| from_json(&t, || format!("a deployment of {environment}"), "rules"))
            .transpose()
    }

    /// The latest `limit` deployments of an environment, newest first.
    pub fn deployments(
        &self,
        environment: &EnvName,
        limit: usize,
    ) -> Result<Vec<DeploymentRecord>, StateError> {
        let operation = || format!("list the deployments of {environment}");
        let raw = self
            .conn()
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM deployments WHERE environment = ?1 \
                     ORDER BY id DESC LIMIT ?2"
                ),
                params![environment, sql_limit(limit)],
                from_row,
            )
            .map_err(sql(operation()))?;
        raw.into_iter().map(decode).collect()
    }

    /// Marks every `running` deployment of the environment `interrupted`, finished at `at`, and
    /// returns how many there were.
    ///
    /// # Assumptions
    /// The caller holds the environment's lock, so no deployment of it is really running: a
    /// `running` row is one whose process died.
    pub fn mark_interrupted(&self, environment: &EnvName, at: i64) -> Result<usize, StateError> {
        self.write_env(Some(environment), &[], |tx| {
            tx.execute(
                "UPDATE deployments SET status = 'interrupted', finished_at = ?2, \
                   error = coalesce(error, 'the process running this deployment stopped \
                                           before it finished') \
                 WHERE environment = ?1 AND status = 'running'",
                params![environment, at],
            )
            .map(|n| n as usize)
            .map_err(sql(format!(
                "mark the running deployments of {environment} interrupted"
            )))
        })
    }
}

/// An event to record with an operation's end: its kind, message and data.
pub type OperationEvent<'a> = (
    slipway_core::vocab::EventKind,
    &'a str,
    &'a serde_json::Value,
);

/// Marks the running deployment `id` finished, in `tx`.
fn finish_in(
    tx: &mut impl Exec,
    environment: &EnvName,
    id: i64,
    status: DeploymentStatus,
    error: Option<&str>,
    summary: &serde_json::Value,
    at: i64,
) -> Result<(), StateError> {
    let operation = || format!("record the end of deployment {id}");
    let updated = tx
        .execute(
            "UPDATE deployments SET status = ?2, error = ?3, summary = ?4, \
             finished_at = ?5 WHERE id = ?1 AND environment = ?6 AND status = 'running'",
            params![
                id,
                status.as_str(),
                error,
                to_json(summary),
                at,
                environment.as_str()
            ],
        )
        .map_err(sql(operation()))?;
    if updated > 0 {
        return Ok(());
    }
    let current: Option<DeploymentStatus> = tx
        .query_opt(
            "SELECT status FROM deployments WHERE id = ?1 AND environment = ?2",
            params![id, environment.as_str()],
            |row| word(row, 0),
        )
        .map_err(sql(operation()))?;
    Err(match current {
        Some(status) => StateError::DeploymentNotRunning { id, status },
        None => StateError::NotFound {
            what: "deployment",
            key: id.to_string(),
        },
    })
}
