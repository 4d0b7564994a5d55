//! What `slipway status` shows: recorded environments with their resources, observed live.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use slipway_core::EnvName;
use slipway_core::plan::Observed;
use slipway_core::vocab::{EnvKind, Health, ShownStatus, SyncState};

use crate::{Engine, EngineError, Envelope};

/// One resource as `status --output json` shows it (SPEC §6).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceStatus {
    /// Its name.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub type_name: String,
    /// As recorded, or `missing` or `drifted` when it was ready and looks otherwise now.
    pub status: ShownStatus,
    /// Its outputs, secret ones replaced by `"<redacted>"`.
    pub outputs: Json,
    /// What is wrong, when something is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One environment as `status --output json` shows it (SPEC §6).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvironmentStatus {
    /// Its name.
    pub name: EnvName,
    /// How it came to be.
    pub kind: EnvKind,
    /// The commit it runs.
    pub commit: Option<String>,
    /// The commit it should run.
    pub desired_commit: Option<String>,
    /// Whether it runs the commit it should.
    pub sync: SyncState,
    /// Its health, as observed now.
    pub health: Health,
    /// Where its exposed port is served.
    pub url: Option<String>,
    /// When it expires, RFC 3339.
    pub expires_at: Option<String>,
    /// The ref it follows.
    pub tracked_ref: Option<String>,
    /// The last problem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Who made it (an ad-hoc environment's creator, a preview's pull request author).
    #[serde(default)]
    pub owner: Option<String>,
    /// The `environments:` entry it follows: itself, or its family.
    #[serde(default)]
    pub definition: Option<String>,
    /// Whether it stays on its commit instead of following its ref.
    #[serde(default)]
    pub pinned: bool,
    /// Whether it is protected (destroys need a person's confirmation).
    #[serde(default)]
    pub protected: bool,
    /// The pull request whose `/slipway apply` holds it, until merged, closed or unlocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_by: Option<i64>,
    /// The replica working on it, with several replicas on one PostgreSQL state (the holder
    /// of its unexpired lease); `null` when none holds it, and with a SQLite state.
    #[serde(default)]
    pub replica: Option<String>,
    /// How its code is isolated: `uid` (its own uid, plus Landlock where the kernel has
    /// it), `landlock` or `none`.
    #[serde(default)]
    pub isolation: String,
    /// Its resources.
    pub resources: Vec<ResourceStatus>,
}

impl Engine {
    /// Recorded environments (or one), each resource observed now.
    pub fn status(&self, only: Option<&EnvName>) -> Result<Vec<EnvironmentStatus>, EngineError> {
        let records = match only {
            Some(name) => match self.store.environment(name)? {
                Some(r) => vec![r],
                None => {
                    return Err(EngineError::Environment(format!(
                        "environment `{name}` does not exist here"
                    )));
                }
            },
            None => self.store.environments()?,
        };
        records.into_iter().map(|env| self.status_of(env)).collect()
    }

    /// One recorded environment as `status` shows it, its resources observed now: what a
    /// caller that has just written the record (a create) answers, without reading it back.
    pub fn status_of(
        &self,
        env: slipway_state::EnvironmentRecord,
    ) -> Result<EnvironmentStatus, EngineError> {
        let mut resources = Vec::new();
        let mut url = None;
        let mut degraded = false;
        let replica = self.store.holder(&env.name)?;
        let elsewhere = self.on_another_node(&env.name, replica.as_deref())?;
        let mut held_elsewhere = false;
        for record in self.store.resources(&env.name)? {
            let envelope = Envelope::of(&record);
            let mut status = ShownStatus::from(record.status);
            let mut message = record.error.clone();
            // What lives on another replica's node cannot be observed from here: it shows as
            // its holder last recorded it, and the environment's health as that holder
            // observed it.
            let bound_elsewhere = elsewhere.is_some()
                && slipway_core::types::capabilities(&record.type_name).node_bound;
            held_elsewhere |= bound_elsewhere;
            if status == ShownStatus::Ready && !bound_elsewhere {
                match self.observe(&env.name, &record, &envelope) {
                    Observed::InSync => {}
                    Observed::Drifted(why) => {
                        status = ShownStatus::Drifted;
                        message = Some(why);
                    }
                    Observed::Missing(why) => {
                        status = ShownStatus::Missing;
                        message = Some(why);
                    }
                }
            }
            degraded |= status != ShownStatus::Ready;
            let mut outputs = record.outputs.clone();
            if let Some(map) = outputs.as_object_mut() {
                for secret in &record.secret_outputs {
                    if let Some(v) = map.get_mut(secret) {
                        *v = Json::String("<redacted>".into());
                    }
                }
            }
            if slipway_core::types::exposed_port(&record.type_name, &record.config).is_some() {
                url = outputs
                    .get("url")
                    .and_then(Json::as_str)
                    .map(str::to_string);
            }
            resources.push(ResourceStatus {
                name: record.name,
                type_name: record.type_name,
                status,
                outputs,
                message,
            });
        }
        let health = if env.sync == SyncState::Syncing {
            Health::Progressing
        } else if degraded || (held_elsewhere && env.health == Health::Degraded) {
            Health::Degraded
        } else if env.commit.is_none() {
            Health::Missing
        } else {
            Health::Healthy
        };
        let locked_by = self
            .store
            .environment_lock(&env.name)?
            .map(|l| l.pull_request);
        Ok(EnvironmentStatus {
            name: env.name,
            kind: env.kind,
            commit: env.commit,
            desired_commit: env.desired_commit,
            sync: env.sync,
            health,
            url,
            expires_at: env.expires_at.map(|ms| {
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
                )
                .to_string()
            }),
            tracked_ref: env.tracked_ref,
            owner: env.owner,
            definition: env.definition,
            pinned: env.pinned,
            protected: env.protected,
            locked_by,
            replica,
            isolation: self.isolation.as_str().to_string(),
            message: env.message,
            resources,
        })
    }

    /// On a state shared by replicas: the node of `environment`'s holder (`holder`, or the
    /// last replica that held it when no one does now) when that is not this engine's node
    /// ([`Engine::on_node`]); `None` when it is this one, and always on a state of its own.
    fn on_another_node(
        &self,
        environment: &EnvName,
        holder: Option<&str>,
    ) -> Result<Option<String>, EngineError> {
        let Some(here) = &self.node else {
            return Ok(None);
        };
        let holder = match holder {
            Some(holder) => holder.to_owned(),
            None => match self.store.lease(environment)? {
                Some(lease) => lease.holder,
                None => return Ok(None),
            },
        };
        let node = node_of(&holder);
        Ok((node != here).then(|| node.to_owned()))
    }
}

/// The node a lease holder works on: a replica's name, or for a one-shot command's
/// `<node>/cli-<pid>`, `<node>`.
pub fn node_of(holder: &str) -> &str {
    holder.split_once("/cli-").map_or(holder, |(node, _)| node)
}
