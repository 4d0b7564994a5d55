//! Running a plan: deletes first, then every other change in dependency order, independent
//! resources in parallel up to a limit; dependents of a failed resource are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value as Json, json};
use slipway_core::plan::{Action, Change};
use slipway_core::vocab::{DeploymentStatus, EventKind, Health, ResourceStatus, SyncState};
use slipway_providers::{Applied, ResourceContext};
use slipway_state::{NewDeployment, ResourceRecord};

use crate::{Engine, EngineError, EnvLock, Envelope, Prepared, resolve};

/// How to apply.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Most resources changing at once.
    pub parallelism: usize,
    /// Who asked, recorded with the deployment.
    pub who: String,
    /// Replace exposed processes blue/green: the new version starts beside the old one on
    /// the other of its two ports and takes over once healthy. Worth it only where a preview
    /// router hides the port change (`slipway serve`); without, an exposed process keeps one
    /// port and is stopped before its replacement starts.
    pub swap_exposed: bool,
    /// A person confirmed that resources of a protected environment may be destroyed (deleted,
    /// or replaced when that loses data). Without it such a plan is refused, and nothing is
    /// applied.
    pub confirm_destroy: bool,
}

/// The changes of `prepared` that destroy something in a protected environment: deletes, and
/// replacements of resources that hold data (a database is dropped and created empty).
pub fn protected_destroys(prepared: &Prepared) -> Vec<&Change> {
    if !prepared.protected {
        return Vec::new();
    }
    prepared
        .plan
        .changes
        .iter()
        .filter(|c| {
            c.action == Action::Delete || (c.action == Action::Replace && holds_data(&c.type_name))
        })
        .collect()
}

/// Why applying `prepared` needs a person's confirmation (`--confirm-destroy ENV`), if it
/// does: it destroys something in a protected environment, or it removes the protection
/// itself (otherwise one commit could drop `protected` and the next delete freely).
pub fn needs_confirmation(prepared: &Prepared) -> Option<String> {
    let env = prepared.desired.environment.name.as_str();
    let destroys: Vec<String> = protected_destroys(prepared)
        .iter()
        .map(|c| format!("{} ({} {})", c.resource, c.action.as_str(), c.type_name))
        .collect();
    let unprotects = prepared.protected && !prepared.declared.protected;
    let what = match (destroys.is_empty(), unprotects) {
        (true, false) => return None,
        (false, false) => format!("this plan destroys {}", destroys.join(", ")),
        (true, true) => "this commit removes its `protected` setting".to_string(),
        (false, true) => format!(
            "this commit removes its `protected` setting and destroys {}",
            destroys.join(", ")
        ),
    };
    Some(format!("`{env}` is protected and {what}"))
}

/// [`needs_confirmation`], said of an apply that waits for the confirmation.
pub fn held_for_confirmation(prepared: &Prepared) -> Option<String> {
    let env = prepared.desired.environment.name.as_str();
    needs_confirmation(prepared).map(|why| {
        format!(
            "{why}: held until a person confirms (`slipway apply --env {env} \
             --confirm-destroy {env}`)"
        )
    })
}

/// Whether replacing a resource of this type loses data.
pub fn holds_data(type_name: &str) -> bool {
    slipway_core::types::lookup(type_name).is_some_and(|t| t.holds_data())
}

/// Progress of an apply, for a progress bar or log lines.
#[derive(Debug, Clone)]
pub enum ApplyEvent<'a> {
    /// A change begins.
    Started {
        /// The resource.
        resource: &'a str,
        /// What is done to it.
        action: Action,
    },
    /// A change ended.
    Finished {
        /// The resource.
        resource: &'a str,
        /// What was done.
        action: Action,
        /// How long it took.
        elapsed: Duration,
        /// The error, if it failed.
        error: Option<&'a str>,
    },
    /// A change was not attempted because a dependency failed.
    Skipped {
        /// The resource.
        resource: &'a str,
        /// The failed dependency.
        because: &'a str,
    },
}

/// Receives [`ApplyEvent`]s, from several threads.
pub trait Progress: Sync {
    /// Called for each event.
    fn event(&self, event: &ApplyEvent<'_>);
}

impl Progress for () {
    fn event(&self, _: &ApplyEvent<'_>) {}
}

/// How one change ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    /// Done (noops included).
    Succeeded,
    /// Its provider failed.
    Failed {
        /// Why.
        error: String,
    },
    /// Not attempted.
    Skipped {
        /// The dependency that failed.
        because: String,
    },
}

/// The result of an apply or destroy.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    /// The deployment recorded.
    pub deployment: i64,
    /// The environment.
    pub environment: String,
    /// The commit.
    pub commit: String,
    /// Per resource, in plan order.
    pub results: Vec<(String, Action, Outcome)>,
}

impl ApplyReport {
    /// Whether every change succeeded.
    pub fn succeeded(&self) -> bool {
        self.results
            .iter()
            .all(|(_, _, o)| *o == Outcome::Succeeded)
    }
}

/// How long the old instance of an exposed process keeps running after traffic switched.
const DRAIN: Duration = Duration::from_millis(300);

struct Job<'a> {
    change: &'a Change,
    deps: Vec<String>,
}

impl Engine {
    /// Applies a plan made under `lock`. Records a deployment, then each change as it goes.
    pub fn apply(
        &self,
        lock: &EnvLock,
        prepared: &Prepared,
        source: &dyn slipway_git::Source,
        options: &ApplyOptions,
        progress: &dyn Progress,
    ) -> Result<ApplyReport, EngineError> {
        let env = prepared.desired.environment.name.as_str();
        if lock.environment() != env {
            return Err(EngineError::Usage(format!(
                "the lock held is for `{}`, not `{env}`",
                lock.environment()
            )));
        }
        if let Some(why) = held_for_confirmation(prepared)
            && !options.confirm_destroy
        {
            return Err(EngineError::NeedsConfirmation(why));
        }
        self.check_isolated(env, prepared.desired.environment.kind)?;
        // Ownership before action: the environment's identity is recorded before anything of
        // it exists.
        let sandbox = self.sandbox(env)?;
        let now = slipway_state::now_ms();
        self.store.mark_interrupted(env, now)?;
        self.record_environment(prepared, SyncState::Syncing)?;
        let plan_json =
            serde_json::to_value(&prepared.plan).expect("a plan is always serializable");
        let deployment = self.store.begin_deployment(&NewDeployment {
            environment: env.to_string(),
            commit: prepared.commit.sha.clone(),
            hash: prepared.desired.hash.clone(),
            reference: Some(prepared.reference.clone()),
            plan: plan_json,
            who: options.who.clone(),
            at: now,
        })?;
        self.store.record_event(
            Some(env),
            EventKind::ApplyStarted,
            &format!(
                "applying {} at {}",
                prepared.reference,
                short(&prepared.commit.sha)
            ),
            &json!({"deployment": deployment}),
            now,
        )?;

        let dirs = self.env_dirs(env, &prepared.commit.sha, &prepared.folder);
        let result = (|| -> Result<Vec<(String, Action, Outcome)>, EngineError> {
            self.prepare_dirs(&dirs, &sandbox)?;
            let export = dirs.root.join("src").join(&prepared.commit.sha);
            if prepared.plan.has_changes() || !export.exists() {
                source.export(&prepared.commit.sha, &prepared.folder, &export)?;
            }
            Ok(self.run_changes(prepared, options, progress))
        })();
        let finished = slipway_state::now_ms();
        let results = match result {
            Ok(results) => results,
            Err(e) => {
                self.store.finish_deployment(
                    deployment,
                    DeploymentStatus::Failed,
                    Some(&e.to_string()),
                    &json!({}),
                    finished,
                )?;
                self.store.set_environment_status(
                    env,
                    SyncState::Failed,
                    Health::Degraded,
                    Some(&e.to_string()),
                    finished,
                )?;
                return Err(e);
            }
        };
        let report = ApplyReport {
            deployment,
            environment: env.to_string(),
            commit: prepared.commit.sha.clone(),
            results,
        };
        let summary = summary(&report);
        if report.succeeded() {
            self.store.finish_deployment(
                deployment,
                DeploymentStatus::Succeeded,
                None,
                &summary,
                finished,
            )?;
            if let Some(mut record) = self.store.environment(env)? {
                record.commit = Some(prepared.commit.sha.clone());
                record.hash = Some(prepared.desired.hash.clone());
                record.sync = SyncState::Synced;
                record.health = Health::Healthy;
                record.message = None;
                record.updated_at = finished;
                self.store.upsert_environment(&record)?;
            }
            self.collect_exports(env)?;
            self.store.record_event(
                Some(env),
                EventKind::ApplySucceeded,
                &format!("{} is at {}", env, short(&prepared.commit.sha)),
                &json!({"deployment": deployment}),
                finished,
            )?;
        } else {
            let failed: Vec<String> = report
                .results
                .iter()
                .filter_map(|(name, _, o)| match o {
                    Outcome::Failed { error } => Some(format!("{name}: {error}")),
                    _ => None,
                })
                .collect();
            let message = failed.join("; ");
            self.store.finish_deployment(
                deployment,
                DeploymentStatus::Failed,
                Some(&message),
                &summary,
                finished,
            )?;
            self.store.set_environment_status(
                env,
                SyncState::Failed,
                Health::Degraded,
                Some(&message),
                finished,
            )?;
            self.store.record_event(
                Some(env),
                EventKind::ApplyFailed,
                &message,
                &json!({"deployment": deployment}),
                finished,
            )?;
        }
        Ok(report)
    }

    fn run_changes(
        &self,
        prepared: &Prepared,
        options: &ApplyOptions,
        progress: &dyn Progress,
    ) -> Vec<(String, Action, Outcome)> {
        let env = prepared.desired.environment.name.as_str();
        let mut results: BTreeMap<String, Outcome> = BTreeMap::new();
        // Deletes first, dependents before what they depend on, several at once.
        let deletes: Vec<String> = prepared
            .plan
            .changes
            .iter()
            .filter(|c| c.action == Action::Delete)
            .map(|c| c.resource.clone())
            .collect();
        for (name, outcome) in self.delete_all(env, &deletes, options.parallelism, progress) {
            results.insert(name, outcome);
        }

        let jobs: BTreeMap<&str, Job<'_>> = prepared
            .plan
            .changes
            .iter()
            .filter(|c| c.action != Action::Delete)
            .map(|c| {
                let deps = prepared
                    .desired
                    .resources
                    .get(&c.resource)
                    .map(|r| r.depends_on.iter().cloned().collect())
                    .unwrap_or_default();
                (c.resource.as_str(), Job { change: c, deps })
            })
            .collect();
        let records = self.store.resources(env).unwrap_or_default();
        let mut secret_names = crate::secret_outputs(&records);
        let mut outputs: BTreeMap<String, Json> =
            records.into_iter().map(|r| (r.name, r.outputs)).collect();
        // Kahn's algorithm, run as the work finishes: each job counts its unsettled
        // dependencies; a job whose count reaches zero is ready. Linear in the plan's size.
        let mut waiting_on: BTreeMap<&str, usize> = BTreeMap::new();
        let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, job) in &jobs {
            let known: BTreeSet<&str> = job
                .deps
                .iter()
                .map(String::as_str)
                .filter(|d| jobs.contains_key(d))
                .collect();
            waiting_on.insert(name, known.len());
            for d in known {
                dependents.entry(d).or_default().push(name);
            }
        }
        let mut ready: std::collections::VecDeque<&str> = waiting_on
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(k, _)| *k)
            .collect();
        let mut running = 0usize;
        let limit = options.parallelism.max(1);
        std::thread::scope(|scope| {
            type Done = (String, Result<(Json, Vec<String>), String>);
            let (tx, rx) = mpsc::channel::<Done>();
            loop {
                while running < limit {
                    let Some(name) = ready.pop_front() else { break };
                    let job = &jobs[name];
                    if let Some(bad) = job.deps.iter().find(|d| {
                        matches!(
                            results.get(*d),
                            Some(Outcome::Failed { .. } | Outcome::Skipped { .. })
                        )
                    }) {
                        progress.event(&ApplyEvent::Skipped {
                            resource: name,
                            because: bad,
                        });
                        results.insert(
                            name.to_string(),
                            Outcome::Skipped {
                                because: bad.clone(),
                            },
                        );
                        settle(name, &dependents, &mut ready, &mut waiting_on);
                        continue;
                    }
                    if job.change.action == Action::Noop {
                        results.insert(name.to_string(), Outcome::Succeeded);
                        settle(name, &dependents, &mut ready, &mut waiting_on);
                        continue;
                    }
                    running += 1;
                    let tx = tx.clone();
                    // Only what this resource may reference: its dependencies' outputs.
                    let snapshot: BTreeMap<String, Json> = job
                        .deps
                        .iter()
                        .filter_map(|d| outputs.get(d).map(|o| (d.clone(), o.clone())))
                        .collect();
                    let secret_snapshot: BTreeMap<String, Vec<String>> = job
                        .deps
                        .iter()
                        .filter_map(|d| secret_names.get(d).map(|o| (d.clone(), o.clone())))
                        .collect();
                    let change = job.change;
                    scope.spawn(move || {
                        progress.event(&ApplyEvent::Started {
                            resource: &change.resource,
                            action: change.action,
                        });
                        let started = Instant::now();
                        let result = self.apply_change(
                            prepared,
                            change,
                            &snapshot,
                            &secret_snapshot,
                            options.swap_exposed,
                        );
                        progress.event(&ApplyEvent::Finished {
                            resource: &change.resource,
                            action: change.action,
                            elapsed: started.elapsed(),
                            error: result.as_ref().err().map(String::as_str),
                        });
                        let _ = tx.send((change.resource.clone(), result));
                    });
                }
                if running == 0 {
                    break;
                }
                let Ok((name, result)) = rx.recv() else { break };
                running -= 1;
                match result {
                    Ok((out, secret)) => {
                        outputs.insert(name.clone(), out);
                        secret_names.insert(name.clone(), secret);
                        results.insert(name.clone(), Outcome::Succeeded);
                    }
                    Err(error) => {
                        results.insert(name.clone(), Outcome::Failed { error });
                    }
                }
                let key = jobs
                    .get_key_value(name.as_str())
                    .map(|(k, _)| *k)
                    .expect("a finished job is a job");
                settle(key, &dependents, &mut ready, &mut waiting_on);
            }
        });
        prepared
            .plan
            .changes
            .iter()
            .map(|c| {
                (
                    c.resource.clone(),
                    c.action,
                    results.remove(&c.resource).unwrap_or(Outcome::Skipped {
                        because: "not reached".into(),
                    }),
                )
            })
            .collect()
    }

    /// Creates, updates or replaces one resource; returns its outputs and the names of the
    /// secret ones. Errors are redacted of every secret value the resource was given.
    fn apply_change(
        &self,
        prepared: &Prepared,
        change: &Change,
        outputs: &BTreeMap<String, Json>,
        secret_outputs: &BTreeMap<String, Vec<String>>,
        swap_exposed: bool,
    ) -> Result<(Json, Vec<String>), String> {
        let env = prepared.desired.environment.name.as_str();
        let desired = &prepared.desired.resources[&change.resource];
        let provider = self
            .registry
            .get(&desired.type_name)
            .ok_or_else(|| format!("resource type `{}` is not available on this engine (it needs a provider that is not configured)", desired.type_name))?;
        let port_names: Vec<String> = desired
            .config
            .get("ports")
            .and_then(Json::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let previous = self
            .store
            .resource(env, &change.resource)
            .map_err(|e| e.to_string())?;
        let previous_envelope = previous.as_ref().map(Envelope::of);
        // An exposed process is replaced blue/green: the new version starts beside the old
        // one (in the other instance slot, on its own ports), is health-checked, takes the
        // preview URL over, and only then is the old one stopped.
        let exposed = desired.type_name == "process" && desired.config.get("expose").is_some();
        let previous_slot = previous_envelope.as_ref().map_or(0, |e| {
            u8::from(e.instance(&change.resource) != change.resource)
        });
        let blue_green = exposed
            && swap_exposed
            && matches!(change.action, Action::Replace | Action::Update)
            && previous
                .as_ref()
                .is_some_and(|p| p.status == ResourceStatus::Ready)
            && previous_envelope
                .as_ref()
                .is_some_and(|e| !e.handle.is_null());
        let slot = if blue_green { 1 - previous_slot } else { 0 };
        let instance = crate::instance_name(&change.resource, slot);
        let slot_names: Vec<String> = port_names
            .iter()
            .map(|p| crate::slot_port(p, slot))
            .collect();
        let range = self.config.port_range();
        let allocated = self
            .store
            .allocate_ports(env, &change.resource, &slot_names, range, &|p| {
                std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
            })
            .map_err(|e| e.to_string())?;
        let ports = crate::slot_ports(&allocated, slot);
        let mut keep = port_names.clone();
        if exposed {
            keep.extend(port_names.iter().map(|p| crate::slot_port(p, 1)));
        }
        self.store
            .retain_ports(env, &change.resource, &keep)
            .map_err(|e| e.to_string())?;
        let scope = resolve::Scope {
            ports: &ports,
            outputs,
            secret_outputs,
            secrets: &prepared.secrets,
        };
        let resolved_all = resolve::resolve(&desired.config, &scope).map_err(|r| {
            format!("`{r}` has no value: the resource it names produced no such output")
        })?;
        let resolved_hash = resolve::resolved_hash(
            &resolved_all,
            desired.source.as_deref(),
            self.store.sealer(),
        );
        let redactor = crate::secrets::Redactor::default();
        for value in &resolved_all.secrets {
            redactor.add(value);
        }
        let sensitive = !resolved_all.secrets.is_empty();
        let resolved = resolved_all.config;
        let mut record = ResourceRecord {
            environment: env.to_string(),
            name: change.resource.clone(),
            type_name: desired.type_name.clone(),
            status: if previous.is_some() {
                ResourceStatus::Updating
            } else {
                ResourceStatus::Creating
            },
            config: desired.config.clone(),
            resolved_hash: None,
            outputs: previous
                .as_ref()
                .map(|p| p.outputs.clone())
                .unwrap_or(Json::Null),
            secret_outputs: previous
                .as_ref()
                .map(|p| p.secret_outputs.clone())
                .unwrap_or_default(),
            live: previous
                .as_ref()
                .map(|p| p.live.clone())
                .unwrap_or(Json::Null),
            depends_on: desired.depends_on.iter().cloned().collect(),
            error: None,
            updated_at: slipway_state::now_ms(),
            sensitive: sensitive || previous.as_ref().is_some_and(|p| p.sensitive),
        };
        // Ownership first: from here on, the store knows this resource may exist.
        self.store
            .put_resource(&record)
            .map_err(|e| e.to_string())?;

        let dirs = self.env_dirs(env, &prepared.commit.sha, &prepared.folder);
        let sandbox = self.sandbox(env).map_err(|e| e.to_string())?;
        let ctx = ResourceContext {
            environment: env,
            resource: &instance,
            dirs: &dirs,
            ports: &ports,
            settings: &self.settings,
            redact: &resolved_all.secrets,
            sandbox: &sandbox,
        };
        let envelope_of = |handle: Json| {
            serde_json::to_value(Envelope {
                handle,
                src_commit: prepared.commit.sha.clone(),
                resolved: resolved.clone(),
                source: desired.source.clone(),
                instance: (slot != 0).then(|| instance.clone()),
                redact: resolved_all.secrets.clone(),
            })
            .expect("an envelope is always serializable")
        };
        if blue_green {
            let prev = previous_envelope
                .as_ref()
                .expect("blue/green needs a previous instance");
            return self.swap(
                prepared,
                change,
                provider,
                ctx,
                &resolved,
                resolved_hash,
                prev,
                record,
                envelope_of,
                &redactor,
            );
        }
        let result: Result<Applied, String> = (|| {
            match (change.action, &previous_envelope) {
                (Action::Update, Some(prev)) if !prev.handle.is_null() => provider
                    .update(ctx, &resolved, &prev.handle)
                    .map_err(|e| describe(&e)),
                (Action::Create, None) => provider.create(ctx, &resolved).map_err(|e| describe(&e)),
                _ => {
                    // Replace, or anything left half-done: remove what may exist, then create.
                    if let Some(prev) = &previous_envelope {
                        let old_dirs = self.env_dirs(env, &prev.src_commit, "");
                        let old_ctx = ResourceContext {
                            dirs: &old_dirs,
                            resource: prev.instance(&change.resource),
                            ..ctx
                        };
                        let handle = (!prev.handle.is_null()).then_some(&prev.handle);
                        provider.delete(old_ctx, handle).map_err(|e| describe(&e))?;
                    }
                    // Whatever an interrupted create (or blue/green swap) left in either
                    // instance slot goes too.
                    provider.delete(ctx, None).map_err(|e| describe(&e))?;
                    if exposed {
                        let other = crate::instance_name(&change.resource, 1);
                        provider
                            .delete(
                                ResourceContext {
                                    resource: &other,
                                    ..ctx
                                },
                                None,
                            )
                            .map_err(|e| describe(&e))?;
                    }
                    record.live = Json::Null;
                    provider.create(ctx, &resolved).map_err(|e| describe(&e))
                }
            }
        })();
        let applied = match result {
            Ok(applied) => applied,
            Err(error) => {
                let error = redactor.redact(&error);
                record.status = ResourceStatus::Failed;
                record.error = Some(error.clone());
                record.updated_at = slipway_state::now_ms();
                let _ = self.store.put_resource(&record);
                return Err(error);
            }
        };
        // Record the handle before waiting, so a process that never gets healthy is still
        // known (and stopped by the next apply or destroy).
        record.live = envelope_of(applied.live.clone());
        record.outputs = Json::Object(applied.outputs.clone().into_iter().collect());
        record.secret_outputs = applied.secret_outputs.clone();
        redactor.add_outputs(&record.outputs, &record.secret_outputs);
        record.updated_at = slipway_state::now_ms();
        self.store
            .put_resource(&record)
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + self.settings.ready_timeout.max(Duration::from_secs(1));
        if let Err(e) = provider.wait_ready(ctx, &resolved, &applied, deadline) {
            let error = redactor.redact(&describe(&e));
            record.status = ResourceStatus::Failed;
            record.error = Some(error.clone());
            record.updated_at = slipway_state::now_ms();
            let _ = self.store.put_resource(&record);
            return Err(error);
        }
        record.status = ResourceStatus::Ready;
        record.resolved_hash = Some(resolved_hash);
        record.updated_at = slipway_state::now_ms();
        self.store
            .put_resource(&record)
            .map_err(|e| e.to_string())?;
        Ok((record.outputs, record.secret_outputs))
    }

    /// The blue/green replacement of an exposed process: start the new instance in the other
    /// slot, wait until it is ready, record it (the preview router switches on the record),
    /// give in-flight requests a moment, then stop the old instance.
    #[allow(
        clippy::too_many_arguments,
        reason = "one private step of apply_change, called once"
    )]
    fn swap(
        &self,
        prepared: &Prepared,
        change: &Change,
        provider: &dyn slipway_providers::DynProvider,
        ctx: ResourceContext<'_>,
        resolved: &Json,
        resolved_hash: String,
        previous: &Envelope,
        mut record: ResourceRecord,
        envelope_of: impl Fn(Json) -> Json,
        redactor: &crate::secrets::Redactor,
    ) -> Result<(Json, Vec<String>), String> {
        let env = prepared.desired.environment.name.as_str();
        let fail = |record: &mut ResourceRecord, error: String| {
            let error = redactor.redact(&error);
            // The old instance is still recorded as live and still serving.
            record.status = ResourceStatus::Failed;
            record.error = Some(format!(
                "the new version did not replace the running one: {error}"
            ));
            record.updated_at = slipway_state::now_ms();
            let _ = self.store.put_resource(record);
            Err(error)
        };
        if let Err(e) = provider.delete(ctx, None) {
            return fail(&mut record, describe(&e));
        }
        let applied = match provider.create(ctx, resolved) {
            Ok(applied) => applied,
            Err(e) => return fail(&mut record, describe(&e)),
        };
        let deadline = Instant::now() + self.settings.ready_timeout.max(Duration::from_secs(1));
        if let Err(e) = provider.wait_ready(ctx, resolved, &applied, deadline) {
            let _ = provider.delete(ctx, Some(&applied.live));
            return fail(&mut record, describe(&e));
        }
        record.live = envelope_of(applied.live.clone());
        record.outputs = Json::Object(applied.outputs.clone().into_iter().collect());
        record.secret_outputs = applied.secret_outputs.clone();
        record.status = ResourceStatus::Ready;
        record.resolved_hash = Some(resolved_hash);
        record.updated_at = slipway_state::now_ms();
        self.store
            .put_resource(&record)
            .map_err(|e| e.to_string())?;
        // Requests routed to the old instance just before the switch finish on it.
        std::thread::sleep(DRAIN);
        let old_dirs = self.env_dirs(env, &previous.src_commit, "");
        let old_ctx = ResourceContext {
            dirs: &old_dirs,
            resource: previous.instance(&change.resource),
            ..ctx
        };
        if let Err(e) = provider.delete(old_ctx, Some(&previous.handle)) {
            // The new version serves; the old one is left in its slot, where the next swap
            // or destroy removes it.
            let _ = self.store.record_event(
                Some(env),
                EventKind::SwapCleanupFailed,
                &format!(
                    "{}: the previous instance could not be stopped: {}",
                    change.resource,
                    redactor.redact(&describe(&e))
                ),
                &json!({}),
                slipway_state::now_ms(),
            );
        }
        Ok((record.outputs, record.secret_outputs))
    }

    /// Deletes the recorded resources `names`, each only after every recorded resource that
    /// depends on it is gone, up to `parallelism` at once. A resource whose dependent failed
    /// to delete is kept (and reported skipped): deleting it would break what still runs.
    pub(crate) fn delete_all(
        &self,
        env: &str,
        names: &[String],
        parallelism: usize,
        progress: &dyn Progress,
    ) -> Vec<(String, Outcome)> {
        let records = self.store.resources(env).unwrap_or_default();
        let wanted: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        // Reverse edges: a resource waits for its dependents among those being deleted.
        let mut waiting_on: BTreeMap<&str, usize> = wanted.iter().map(|n| (*n, 0)).collect();
        let mut unblocks: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for record in records.iter().filter(|r| wanted.contains(r.name.as_str())) {
            for dep in record
                .depends_on
                .iter()
                .filter(|d| wanted.contains(d.as_str()))
            {
                let dep = *wanted.get(dep.as_str()).expect("filtered to wanted names");
                *waiting_on
                    .get_mut(dep)
                    .expect("every wanted name is counted") += 1;
                unblocks.entry(record.name.as_str()).or_default().push(dep);
            }
        }
        let mut ready: std::collections::VecDeque<&str> = waiting_on
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(k, _)| *k)
            .collect();
        let mut outcomes: BTreeMap<&str, Outcome> = BTreeMap::new();
        let mut blocked_by: BTreeMap<&str, String> = BTreeMap::new();
        let mut running = 0;
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::channel::<(&str, Outcome)>();
            loop {
                while running < parallelism.max(1) {
                    let Some(name) = ready.pop_front() else { break };
                    if let Some(because) = blocked_by.get(name) {
                        progress.event(&ApplyEvent::Skipped {
                            resource: name,
                            because,
                        });
                        outcomes.insert(
                            name,
                            Outcome::Skipped {
                                because: because.clone(),
                            },
                        );
                        settle(name, &unblocks, &mut ready, &mut waiting_on);
                        continue;
                    }
                    running += 1;
                    let tx = tx.clone();
                    scope.spawn(move || {
                        progress.event(&ApplyEvent::Started {
                            resource: name,
                            action: Action::Delete,
                        });
                        let started = Instant::now();
                        let outcome = match self.delete_resource(env, name) {
                            Ok(()) => Outcome::Succeeded,
                            Err(error) => Outcome::Failed { error },
                        };
                        let error = match &outcome {
                            Outcome::Failed { error } => Some(error.as_str()),
                            _ => None,
                        };
                        progress.event(&ApplyEvent::Finished {
                            resource: name,
                            action: Action::Delete,
                            elapsed: started.elapsed(),
                            error,
                        });
                        let _ = tx.send((name, outcome));
                    });
                }
                if running == 0 {
                    break;
                }
                let Ok((name, outcome)) = rx.recv() else {
                    break;
                };
                running -= 1;
                if outcome != Outcome::Succeeded {
                    for dep in unblocks.get(name).map(Vec::as_slice).unwrap_or(&[]) {
                        blocked_by.entry(dep).or_insert_with(|| name.to_string());
                    }
                }
                outcomes.insert(name, outcome);
                settle(name, &unblocks, &mut ready, &mut waiting_on);
            }
        });
        names
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    outcomes.remove(n.as_str()).unwrap_or(Outcome::Skipped {
                        because: "a dependency cycle".into(),
                    }),
                )
            })
            .collect()
    }

    /// Deletes one recorded resource: marks it `deleting`, asks its provider, forgets it.
    pub(crate) fn delete_resource(&self, env: &str, name: &str) -> Result<(), String> {
        let Some(mut record) = self.store.resource(env, name).map_err(|e| e.to_string())? else {
            return Ok(());
        };
        let envelope = Envelope::of(&record);
        record.status = ResourceStatus::Deleting;
        record.updated_at = slipway_state::now_ms();
        self.store
            .put_resource(&record)
            .map_err(|e| e.to_string())?;
        if let Some(provider) = self.registry.get(&record.type_name) {
            let dirs = self.env_dirs(env, &envelope.src_commit, "");
            let ports = self.store.ports(env, name).map_err(|e| e.to_string())?;
            let instance = envelope.instance(name);
            let sandbox = self.sandbox(env).map_err(|e| e.to_string())?;
            let ctx = ResourceContext {
                environment: env,
                resource: instance,
                dirs: &dirs,
                ports: &ports,
                settings: &self.settings,
                redact: &[],
                sandbox: &sandbox,
            };
            let handle = (!envelope.handle.is_null()).then_some(&envelope.handle);
            let mut result = provider.delete(ctx, handle);
            if result.is_ok() && record.type_name == "process" {
                // The other instance slot of an exposed process may hold what an interrupted
                // swap left.
                let other = if instance == name {
                    crate::instance_name(name, 1)
                } else {
                    name.to_string()
                };
                result = provider.delete(
                    ResourceContext {
                        resource: &other,
                        ..ctx
                    },
                    None,
                );
            }
            if let Err(e) = result {
                let error = describe(&e);
                record.status = ResourceStatus::Failed;
                record.error = Some(error.clone());
                let _ = self.store.put_resource(&record);
                return Err(error);
            }
        }
        self.store
            .release_ports(env, name)
            .map_err(|e| e.to_string())?;
        self.store
            .delete_resource(env, name)
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Removes exports of commits no resource runs from any more.
    fn collect_exports(&self, env: &str) -> Result<(), EngineError> {
        let keep: BTreeSet<String> = self
            .store
            .resources(env)?
            .iter()
            .map(|r| Envelope::of(r).src_commit)
            .collect();
        let dir = self.home.join("envs").join(env).join("src");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !keep.contains(&name) {
                let _ = slipway_git::remove_export(&entry.path());
            }
        }
        Ok(())
    }

    /// Deletes every resource of `environment`, dependents first, then its directory and its
    /// record (its deployments and events stay, as history).
    ///
    /// A protected environment is destroyed only with `confirm` (a person said so).
    pub fn destroy(
        &self,
        lock: &EnvLock,
        who: &str,
        confirm: bool,
        progress: &dyn Progress,
    ) -> Result<ApplyReport, EngineError> {
        let env = lock.environment().to_string();
        let Some(record) = self.store.environment(&env)? else {
            return Err(EngineError::Environment(format!(
                "environment `{env}` does not exist here; `slipway status` lists them"
            )));
        };
        if record.protected && !confirm {
            return Err(EngineError::NeedsConfirmation(format!(
                "`{env}` is protected: destroying it needs an explicit confirmation \
                 (`slipway destroy --env {env} --confirm-destroy {env}`)"
            )));
        }
        let now = slipway_state::now_ms();
        self.store.mark_interrupted(&env, now)?;
        let resources = self.store.resources(&env)?;
        let graph: BTreeMap<&str, Vec<&str>> = resources
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.depends_on.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        let order = slipway_core::graph::topological(&graph)
            .unwrap_or_else(|_| graph.keys().map(|s| s.to_string()).collect());
        let changes: Vec<Change> = order
            .iter()
            .rev()
            .map(|n| Change {
                resource: n.clone(),
                type_name: resources
                    .iter()
                    .find(|r| &r.name == n)
                    .map(|r| r.type_name.clone())
                    .unwrap_or_default(),
                action: Action::Delete,
                diff: Vec::new(),
                reason: Some(slipway_core::plan::Reason::Other("destroy".into())),
            })
            .collect();
        let commit = record.commit.clone().unwrap_or_default();
        let plan = slipway_core::plan::Plan {
            environment: env.clone(),
            commit: commit.clone(),
            changes,
        };
        let deployment = self.store.begin_deployment(&NewDeployment {
            environment: env.clone(),
            commit: commit.clone(),
            hash: String::new(),
            reference: Some("destroy".into()),
            plan: serde_json::to_value(&plan).expect("a plan is always serializable"),
            who: who.to_string(),
            at: now,
        })?;
        self.store.set_environment_status(
            &env,
            SyncState::Syncing,
            Health::Progressing,
            Some("destroying"),
            now,
        )?;
        let names: Vec<String> = plan.changes.iter().map(|c| c.resource.clone()).collect();
        let results: Vec<(String, Action, Outcome)> = self
            .delete_all(&env, &names, 8, progress)
            .into_iter()
            .map(|(name, outcome)| (name, Action::Delete, outcome))
            .collect();
        let report = ApplyReport {
            deployment,
            environment: env.clone(),
            commit,
            results,
        };
        let finished = slipway_state::now_ms();
        // Whatever its code left running outside the groups its providers stopped goes too,
        // whether or not every delete succeeded: the uid is the environment's alone, and its
        // code must not make it indestructible (a delete that fails, plus a daemon that
        // outlives its expiry). On failure the record and the uid stay, for a retry.
        let killed = match (self.isolation, self.store.environment_uid(&env)?) {
            (slipway_providers::sandbox::Isolation::Uid, Some(uid)) => {
                slipway_providers::sandbox::kill_everything_of(uid, uid).map_err(|e| (uid, e))
            }
            _ => Ok(()),
        };
        if report.succeeded() {
            killed.map_err(|(uid, e)| {
                EngineError::io(format!("cannot stop the processes of uid {uid}"))(e)
            })?;
            let root = self.home.join("envs").join(&env);
            if let Ok(entries) = std::fs::read_dir(root.join("src")) {
                for entry in entries.flatten() {
                    let _ = slipway_git::remove_export(&entry.path());
                }
            }
            std::fs::remove_dir_all(&root)
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(EngineError::io(format!("cannot remove {}", root.display())))?;
            // Its processes are stopped and its files gone: its uid may serve another.
            self.store.release_uid(&env)?;
            self.store.finish_deployment(
                deployment,
                DeploymentStatus::Succeeded,
                None,
                &summary(&report),
                finished,
            )?;
            self.store.delete_environment(&env)?;
            self.store.record_event(
                Some(&env),
                EventKind::EnvironmentDestroyed,
                &format!("{env} was destroyed"),
                &json!({"deployment": deployment, "who": who}),
                finished,
            )?;
        } else {
            self.store.finish_deployment(
                deployment,
                DeploymentStatus::Failed,
                Some("some resources could not be deleted"),
                &summary(&report),
                finished,
            )?;
            self.store.set_environment_status(
                &env,
                SyncState::Failed,
                Health::Degraded,
                Some("destroy failed; run it again"),
                finished,
            )?;
        }
        Ok(report)
    }
}

/// Marks `name` settled and queues its dependents whose last unsettled dependency it was.
fn settle<'a>(
    name: &str,
    dependents: &BTreeMap<&'a str, Vec<&'a str>>,
    ready: &mut std::collections::VecDeque<&'a str>,
    waiting_on: &mut BTreeMap<&'a str, usize>,
) {
    for dependent in dependents.get(name).map(Vec::as_slice).unwrap_or(&[]) {
        let count = waiting_on
            .get_mut(dependent)
            .expect("every dependent is a job");
        *count -= 1;
        if *count == 0 {
            ready.push_back(dependent);
        }
    }
}

fn describe(e: &slipway_providers::ProviderError) -> String {
    match e {
        slipway_providers::ProviderError::Failed {
            message,
            log_tail: Some(tail),
            ..
        } if !tail.trim().is_empty() => {
            format!(
                "{message}\n--- last lines of its log ---\n{}",
                tail.trim_end()
            )
        }
        other => other.to_string(),
    }
}

fn summary(report: &ApplyReport) -> Json {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (_, action, outcome) in &report.results {
        if *action == Action::Noop {
            continue;
        }
        let key = match outcome {
            Outcome::Succeeded => action.as_str().to_string(),
            Outcome::Failed { .. } => "failed".into(),
            Outcome::Skipped { .. } => "skipped".into(),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    serde_json::to_value(counts).expect("counts are always serializable")
}

/// The first 12 characters of a sha.
pub fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}
