//! What `slipway status` shows: recorded environments with their resources, observed live.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use slipway_core::EnvName;
use slipway_core::plan::Observed;
use slipway_core::vocab::{Access, Activity, EnvKind, Health, ShownStatus, SyncState};
use slipway_providers::sandbox::Isolation;
use slipway_state::{EnvironmentRecord, ResourceSummary};

use crate::{Engine, EngineError, EnvelopeText, Observable};

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
    /// Whether its processes run (`awake`), are stopped for want of requests (`sleeping`) or
    /// wait for a slot in its family (`queued`).
    #[serde(default = "awake")]
    pub activity: Activity,
    /// Its place in its family's queue while `queued`, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
    /// Who may open its preview URL: anyone (`public`), or people signed in to Slipway and
    /// signed links (`private`).
    #[serde(default = "public")]
    pub access: Access,
    /// Its resources.
    pub resources: Vec<ResourceStatus>,
}

fn awake() -> Activity {
    Activity::Awake
}

fn public() -> Access {
    Access::Public
}

/// What `status` shows of one environment besides its record, as the store has it: read by
/// its own queries for one environment, and by one query per table for all of them.
#[derive(Default)]
struct Stored<'a> {
    resources: Vec<ResourceSummary<'a>>,
    /// The replica holding its lease now.
    holder: Option<String>,
    /// The replica that held its lease last, expired or not (read only on a state shared by
    /// replicas, where it says whose node its node-bound resources are on).
    last_holder: Option<String>,
    /// The pull request whose lock holds it.
    locked_by: Option<i64>,
    /// Its uid, when the engine isolates by uid and it has one.
    uid: Option<u32>,
    /// Its resources' ports, by resource then port name.
    ports: BTreeMap<String, BTreeMap<String, u16>>,
    /// Its place in its family's queue, while queued.
    queue_position: Option<u32>,
}

/// A range of a listing, by its place, once made.
type Part<T> = (usize, Result<Vec<T>, EngineError>);

/// How many environments a listing reads the resources of at once: a bounded amount in
/// memory however many there are, and parts enough to share among the cores.
const CHUNK: usize = 128;

impl Engine {
    /// Recorded environments (or one), each resource observed now.
    pub fn status(&self, only: Option<&EnvName>) -> Result<Vec<EnvironmentStatus>, EngineError> {
        match only {
            Some(name) => match self.store.environment(name)? {
                Some(r) => Ok(vec![self.status_of(r)?]),
                None => Err(EngineError::Environment(format!(
                    "environment `{name}` does not exist here"
                ))),
            },
            None => self.status_each(|_, status| status),
        }
    }

    /// Every recorded environment's status (each resource observed now), by name, each
    /// handed to `show` with its record as soon as it is made: what `show` makes of them is
    /// all that is kept (the API turns each into its JSON), so a listing of ten thousand
    /// environments never holds ten thousand statuses.
    ///
    /// The store is read with one query per table for what is small (names, holders, locks,
    /// ports, the queue), and the environments' records and their resources a range of names
    /// at a time, never one query per environment; each range is read and observed by one of
    /// up to as many threads as the machine has cores (reading every record first, on one
    /// thread, was a sixth of a listing of ten thousand).
    ///
    /// # Caveats
    /// The tables are read one after the other, not in one transaction: an environment
    /// changed meanwhile shows as it was when each was read (e.g. without the resources an
    /// apply is creating), as separate reads per environment did. One created after the
    /// names were read is listed only if its name falls inside a range.
    ///
    /// Each queued environment's place comes from one read of the queue, and its record from
    /// another: a promotion in between would show places that are no longer right (second
    /// in line when the first two just left). So the queue is read again once the records
    /// are, and the listing made again if it moved meanwhile (at most twice more).
    pub fn status_each<T: Send>(
        &self,
        show: impl Fn(&EnvironmentRecord, EnvironmentStatus) -> T + Sync,
    ) -> Result<Vec<T>, EngineError> {
        let mut positions = slipway_state::queue_positions(&self.store.queued_environments()?);
        let mut again = 2;
        loop {
            let out = self.status_each_placed(&show, &positions)?;
            let now = slipway_state::queue_positions(&self.store.queued_environments()?);
            if now == positions || again == 0 {
                return Ok(out);
            }
            again -= 1;
            positions = now;
        }
    }

    /// [`Engine::status_each`] with the queue's places read already.
    fn status_each_placed<T: Send>(
        &self,
        show: &(impl Fn(&EnvironmentRecord, EnvironmentStatus) -> T + Sync),
        positions: &BTreeMap<EnvName, u32>,
    ) -> Result<Vec<T>, EngineError> {
        // The names alone here; each range's records are read by the thread that shows them.
        let names = self.store.environment_names()?;
        let holders = self.store.holders()?;
        let locks: BTreeMap<EnvName, i64> = self
            .store
            .locks()?
            .into_iter()
            .map(|lock| (lock.environment, lock.pull_request))
            .collect();
        let uids = if self.isolation == Isolation::Uid {
            self.store.environment_uids()?
        } else {
            BTreeMap::new()
        };
        let ports = self.store.all_ports()?;
        let last_holders: BTreeMap<EnvName, String> = if self.node.is_some() {
            self.store
                .leases()?
                .into_iter()
                .map(|lease| (lease.environment, lease.holder))
                .collect()
        } else {
            BTreeMap::new()
        };
        let chunks: Vec<&[EnvName]> = names.chunks(CHUNK).collect();
        let chunk = |part: &[EnvName]| -> Result<Vec<T>, EngineError> {
            let (Some(first), Some(last)) = (part.first(), part.last()) else {
                return Ok(Vec::new());
            };
            let records = self.store.environments_between(first, last)?;
            let resources = self.store.resources_between(first, last)?;
            records
                .iter()
                .map(|record| {
                    let name = &record.name;
                    let stored = Stored {
                        resources: resources.of(name.as_str()).collect(),
                        holder: holders.get(name).cloned(),
                        last_holder: last_holders.get(name).cloned(),
                        locked_by: locks.get(name).copied(),
                        uid: uids.get(name).copied(),
                        ports: ports.get(name).cloned().unwrap_or_default(),
                        queue_position: positions.get(name).copied(),
                    };
                    let status = self.status_from(record, stored)?;
                    Ok(show(record, status))
                })
                .collect()
        };
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(chunks.len())
            .max(1);
        if threads == 1 {
            let mut out = Vec::with_capacity(names.len());
            for part in chunks {
                out.extend(chunk(part)?);
            }
            return Ok(out);
        }
        // Each thread takes the next range until none is left; the ranges' results are
        // joined in order, so the listing stays by name.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let done: Vec<Vec<Part<T>>> = std::thread::scope(|scope| {
            let running: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let at = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(part) = chunks.get(at) else {
                                return mine;
                            };
                            let result = chunk(part);
                            let failed = result.is_err();
                            mine.push((at, result));
                            if failed {
                                return mine;
                            }
                        }
                    })
                })
                .collect();
            running
                .into_iter()
                .map(|thread| {
                    thread
                        .join()
                        .expect("observing environments does not panic")
                })
                .collect()
        });
        let mut parts: Vec<Part<T>> = done.into_iter().flatten().collect();
        parts.sort_by_key(|(at, _)| *at);
        let mut out = Vec::with_capacity(names.len());
        for (_, part) in parts {
            out.extend(part?);
        }
        // What the listing read of every environment is freed while its answer is written.
        let count = names.len();
        crate::discard((names, holders, locks, uids, ports, last_holders), count);
        Ok(out)
    }

    /// One recorded environment as `status` shows it, its resources observed now: what a
    /// caller that has just written the record (a create) answers, without reading it back.
    pub fn status_of(&self, env: EnvironmentRecord) -> Result<EnvironmentStatus, EngineError> {
        let name = &env.name;
        let holder = self.store.holder(name)?;
        let last_holder = match (&self.node, &holder) {
            (Some(_), None) => self.store.lease(name)?.map(|lease| lease.holder),
            _ => None,
        };
        let uid = if self.isolation == Isolation::Uid {
            self.store.environment_uid(name)?
        } else {
            None
        };
        let summaries = self.store.resource_summaries(name)?;
        let stored = Stored {
            resources: summaries.of(name.as_str()).collect(),
            holder,
            last_holder,
            locked_by: self.store.environment_lock(name)?.map(|l| l.pull_request),
            uid,
            ports: self.store.environment_ports(name)?,
            queue_position: self.store.queue_position(name)?,
        };
        self.status_from(&env, stored)
    }

    /// The status of `env` from what the store has of it, its ready resources observed now.
    fn status_from(
        &self,
        env: &EnvironmentRecord,
        stored: Stored<'_>,
    ) -> Result<EnvironmentStatus, EngineError> {
        let mut resources = Vec::with_capacity(stored.resources.len());
        let mut url = None;
        let mut degraded = false;
        let replica = stored.holder;
        let elsewhere = self.on_another_node(replica.as_deref().or(stored.last_holder.as_deref()));
        let mut held_elsewhere = false;
        // Made when the first resource is observed: an environment with nothing to observe
        // is not given a uid for it.
        let mut sandbox = None;
        // Made for the first reason a provider gives (see `Engine::redact_observed`).
        let mut redactor = None;
        // Made for the first resource observed: the pass's deadline counts from then.
        let mut settings = None;
        let none = BTreeMap::new();
        // The environment's directories at the commit its resources run from: the same for
        // all of them but after a failed apply.
        let mut dirs: Option<(String, slipway_providers::EnvDirs)> = None;
        for record in stored.resources {
            let mut status = ShownStatus::from(record.status);
            let mut message = record.error.map(str::to_owned);
            // What lives on another replica's node cannot be observed from here: it shows as
            // its holder last recorded it, and the environment's health as that holder
            // observed it.
            let bound_elsewhere = elsewhere.is_some()
                && slipway_core::types::capabilities(record.type_name).node_bound;
            held_elsewhere |= bound_elsewhere;
            // A sleeping environment's processes are stopped on purpose: not observed (they
            // would be `missing`), shown as they will be once a request wakes them.
            let asleep = env.activity == Activity::Sleeping
                && slipway_core::types::capabilities(record.type_name).sleeps;
            if asleep && status == ShownStatus::Ready {
                message = Some("stopped while the environment sleeps".to_owned());
            }
            if status == ShownStatus::Ready && !bound_elsewhere && !asleep {
                let envelope = EnvelopeText::of(record.live_text());
                let sandbox = sandbox.get_or_insert_with(|| {
                    self.sandbox_known(&env.name, stored.uid)
                        .map_err(|e| format!("cannot observe: {e}"))
                });
                let dirs = match &mut dirs {
                    Some((commit, dirs)) if *commit == envelope.src_commit => dirs,
                    slot => {
                        let made = self.env_dirs(&env.name, &envelope.src_commit, "");
                        &slot.insert((envelope.src_commit.to_string(), made)).1
                    }
                };
                let resource = Observable {
                    name: record.name,
                    type_name: record.type_name,
                    instance: envelope.instance.as_deref(),
                    resolved: envelope.resolved,
                    handle: envelope.handle,
                };
                let mut observed = match sandbox {
                    Ok(sandbox) => self.observe_in(
                        settings.get_or_insert_with(|| self.observation_settings()),
                        (&env.stack, Some(env.kind)),
                        sandbox,
                        &env.name,
                        dirs,
                        &resource,
                        stored.ports.get(record.name).unwrap_or(&none),
                    ),
                    Err(why) => Observed::Drifted(why.clone()),
                };
                self.redact_observed(&env.name, &mut observed, &mut redactor);
                match observed {
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
            let mut outputs = record.outputs()?;
            if let Some(map) = outputs.as_object_mut() {
                for secret in &record.secret_outputs()? {
                    if let Some(v) = map.get_mut(secret) {
                        *v = Json::String("<redacted>".into());
                    }
                }
            }
            // The configuration is read only for a type that may expose a port.
            if slipway_core::types::capabilities(record.type_name)
                .expose
                .is_some()
                && slipway_core::types::exposed_port(record.type_name, &record.config()?).is_some()
            {
                url = outputs
                    .get("url")
                    .and_then(Json::as_str)
                    .map(str::to_string);
            }
            resources.push(ResourceStatus {
                name: record.name.to_owned(),
                type_name: record.type_name.to_owned(),
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
        Ok(EnvironmentStatus {
            name: env.name.clone(),
            kind: env.kind,
            commit: env.commit.clone(),
            desired_commit: env.desired_commit.clone(),
            sync: env.sync,
            health,
            url,
            expires_at: env.expires_at.map(|ms| {
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
                )
                .to_string()
            }),
            tracked_ref: env.tracked_ref.clone(),
            owner: env.owner.clone(),
            definition: env.definition.clone(),
            pinned: env.pinned,
            protected: env.protected,
            locked_by: stored.locked_by,
            replica,
            isolation: self.isolation.as_str().to_string(),
            message: env.message.clone(),
            activity: env.activity,
            queue_position: stored.queue_position,
            access: env.access(),
            resources,
        })
    }

    /// On a state shared by replicas: the node of an environment's `holder` (the replica
    /// holding its lease, or the last one that held it when no one does now) when that is
    /// not this engine's node ([`Engine::on_node`]); `None` when it is this one, when it never
    /// had a holder, and always on a state of its own.
    fn on_another_node(&self, holder: Option<&str>) -> Option<String> {
        let here = self.node.as_ref()?;
        let node = node_of(holder?);
        (node != here).then(|| node.to_owned())
    }
}

/// The node a lease holder works on: a replica's name, or for a one-shot command's
/// `<node>/cli-<pid>`, `<node>`.
pub fn node_of(holder: &str) -> &str {
    holder.split_once("/cli-").map_or(holder, |(node, _)| node)
}
