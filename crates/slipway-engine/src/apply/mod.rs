//! Running a plan: deletes first, then every other change in dependency order, independent
//! resources in parallel up to a limit; dependents of a failed resource are skipped.
//!
//! The seams: [`dag`] is the one scheduler (apply and destroy both run on it), `step` acts
//! on one resource (create, update, replace, delete), `swap` replaces an exposed resource
//! side by side (blue/green), `exports` keeps the environment's source exports, and
//! `destroy` removes a whole environment. This file holds the apply itself and its types.

mod dag;
mod destroy;
mod exports;
mod sleep;
mod step;
mod swap;

pub use destroy::DestroyOptions;

use slipway_core::EnvName;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value as Json, json};
use slipway_core::plan::{Action, Change};
use slipway_core::vocab::{DeploymentStatus, EventKind, Health, SyncState};
use slipway_providers::{EnvDirs, Uses};
use slipway_state::NewDeployment;

use crate::{Engine, EngineError, EnvLock, Prepared};
use dag::Dag;

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
    /// Whether a person confirmed that resources of a protected environment may be destroyed
    /// (deleted, or replaced when that loses data). Without it such a plan is refused, and
    /// nothing is applied.
    pub confirm_destroy: Confirmation,
    /// What the environment followed when this apply was decided (the controller's, which
    /// read it from the record). If the record follows something else by the time the apply
    /// starts (a pull request's apply pinned it meanwhile), nothing is applied:
    /// [`EngineError::Superseded`]. `None` (a person's apply) applies whatever it follows.
    pub follows: Option<slipway_state::Follows>,
    /// The owner (in `[policies] owners`) who approved the policies' `soft` denials of this
    /// plan's commit, recorded in the audit; `None`: a soft denial refuses it like a hard one.
    pub policies_approved_by: Option<String>,
    /// Who overrides a deploy window that denies this change now (a person with the
    /// deployer role): recorded in the audit log and the event log. `None`: a change the
    /// windows deny is refused ([`EngineError::OutsideWindow`]).
    pub override_window: Option<String>,
    /// The time the deploy windows are judged at (milliseconds since the Unix epoch): the
    /// controller's clock; `None` reads the system's.
    pub now_ms: Option<i64>,
}

/// Whether a person confirmed that something in a protected environment may be destroyed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Confirmation {
    /// Nobody did: what destroys something in a protected environment is refused.
    #[default]
    Absent,
    /// A person did (`--confirm-destroy ENV` on the command line, or a confirmed API call).
    Given,
}

impl From<bool> for Confirmation {
    /// `true` when a person confirmed: for the edges, where the answer arrives as a flag.
    fn from(given: bool) -> Self {
        if given {
            Confirmation::Given
        } else {
            Confirmation::Absent
        }
    }
}

impl Engine {
    /// Whether the deploy windows deny applying `prepared` at `now` (milliseconds since the
    /// Unix epoch), and why: what [`Engine::apply`] refuses without an override.
    ///
    /// What the windows hold is a deploy: a plan that changes something to run other than
    /// what the environment runs (a repair of drift or a wake at the commit and rendered hash
    /// it runs deploys nothing new), or a commit that drops windows in force (applying it,
    /// even with nothing to change, would lift them for the commits after it).
    pub fn window_denial(
        &self,
        prepared: &Prepared,
        now: i64,
    ) -> Result<Option<crate::WindowDenied>, EngineError> {
        let verdict = prepared.windows.verdict(now);
        if verdict.allowed() {
            return Ok(None);
        }
        let env = &prepared.desired.environment.name;
        let runs_it = self.store.environment(env)?.is_some_and(|r| {
            r.commit.as_deref() == Some(prepared.commit.sha.as_str())
                && r.hash.as_deref() == Some(prepared.desired.hash.as_str())
        });
        let deploys = prepared.plan.has_changes() && !runs_it;
        Ok(
            (deploys || prepared.lowers_windows).then(|| crate::WindowDenied {
                environment: env.clone(),
                verdict,
            }),
        )
    }

    /// Tells the provider of each resource `prepared` creates or updates that its change is
    /// coming (see `Provider::expect_change`), once the checks of what is applied have passed
    /// (policies, isolation, the queue, deploy windows): what they start (a database
    /// connection) then overlaps the records that come before the first change. A refusal
    /// after it (a lease lost, the queue's check again in the record's transaction) leaves
    /// that unused: a connection made ahead closes itself after 30 s.
    fn expect_changes(&self, prepared: &Prepared) {
        for change in &prepared.plan.changes {
            if !matches!(
                change.action,
                Action::Create | Action::Update | Action::Replace
            ) {
                continue;
            }
            if let (Some(provider), Some(desired)) = (
                self.registry.get(&change.type_name),
                prepared.desired.resources.get(&change.resource),
            ) {
                let key = slipway_providers::ResourceKey {
                    environment: &prepared.desired.environment.name,
                    resource: &change.resource,
                };
                provider.expect_change(key, change.action, &desired.config);
            }
        }
    }

    /// Tells the provider of each type that `prepared` creates or updates resources of that
    /// the environment's directories `dirs` are made (see `Provider::expect_changes_in`):
    /// what they start (a process supervisor) then comes up while the commit is exported.
    fn expect_changes_in(&self, prepared: &Prepared, dirs: &EnvDirs) {
        let types: BTreeSet<&str> = prepared
            .plan
            .changes
            .iter()
            .filter(|change| {
                matches!(
                    change.action,
                    Action::Create | Action::Update | Action::Replace
                )
            })
            .map(|change| change.type_name.as_str())
            .collect();
        for type_name in types {
            if let Some(provider) = self.registry.get(type_name) {
                provider.expect_changes_in(&self.settings, dirs);
            }
        }
    }

    /// Refuses `prepared` while its deploy windows deny it, unless `options` overrides them
    /// (then recorded in the audit and event logs); see [`Engine::window_denial`].
    /// Destroying an environment (expiry, a closed pull request) is no deploy and never
    /// comes here.
    fn check_window(&self, prepared: &Prepared, options: &ApplyOptions) -> Result<(), EngineError> {
        let now = options.now_ms.unwrap_or_else(slipway_state::now_ms);
        let Some(denied) = self.window_denial(prepared, now)? else {
            return Ok(());
        };
        let env = &prepared.desired.environment.name;
        let Some(who) = &options.override_window else {
            return Err(EngineError::OutsideWindow(denied));
        };
        let why = denied.verdict.describe().unwrap_or_default();
        let message = format!(
            "{who} overrode the deploy window to apply {} at {}: {why}",
            prepared.reference,
            short(&prepared.commit.sha)
        );
        self.store.record_audit(&slipway_state::NewAudit {
            at: now,
            who: who.clone(),
            action: "window.override".into(),
            target: Some(env.to_string()),
            outcome: "ok".into(),
            detail: message.clone(),
        })?;
        self.store.record_event(
            Some(env),
            EventKind::WindowOverridden,
            &message,
            &json!({"who": who, "commit": prepared.commit.sha, "until": denied.verdict.until}),
            now,
        )?;
        Ok(())
    }
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
            c.action == Action::Delete
                || (c.action == Action::Replace
                    && slipway_core::types::capabilities(&c.type_name).holds_data)
        })
        .collect()
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
        /// Whether retrying the same change later may succeed (kept out of reports: the
        /// controller's error policy reads it).
        #[serde(skip)]
        retryable: bool,
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
    pub environment: EnvName,
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

    /// Whether applying again may succeed without a new commit: no change failed for good
    /// (a configuration its provider refuses, a reference with no value).
    pub fn retryable(&self) -> bool {
        !self.results.iter().any(|(_, _, o)| {
            matches!(
                o,
                Outcome::Failed {
                    retryable: false,
                    ..
                }
            )
        })
    }
}

/// Why one resource's step failed: its message (redacted where the step had secret values)
/// and whether retrying may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StepError {
    message: String,
    retryable: bool,
}

impl StepError {
    /// A failure retrying will not mend: only a new commit (or a person) can.
    fn terminal(message: String) -> Self {
        StepError {
            message,
            retryable: false,
        }
    }

    /// A step that panicked (a bug). The panic's own text, which may hold anything, went to
    /// standard error and is not kept.
    fn panicked() -> Self {
        StepError::terminal(
            "a bug in Slipway: this step panicked (standard error says where); nothing after \
             it that waits for it runs"
                .to_owned(),
        )
    }

    /// The same failure, its message redacted of `redactor`'s secret values.
    fn redacted(self, redactor: &crate::secrets::Redactor) -> Self {
        StepError {
            message: redactor.redact(&self.message),
            ..self
        }
    }
}

impl From<StepError> for Outcome {
    fn from(e: StepError) -> Self {
        Outcome::Failed {
            error: e.message,
            retryable: e.retryable,
        }
    }
}

impl From<slipway_providers::ProviderError> for StepError {
    fn from(e: slipway_providers::ProviderError) -> Self {
        StepError {
            message: describe(&e),
            retryable: e.retryable(),
        }
    }
}

impl From<slipway_state::StateError> for StepError {
    fn from(e: slipway_state::StateError) -> Self {
        StepError {
            message: e.to_string(),
            // A write refused because this replica lost the environment's lease says nothing
            // about the commit: whoever holds the lease now applies it.
            retryable: e.retryable() || e.is_fenced(),
        }
    }
}

impl From<EngineError> for StepError {
    fn from(e: EngineError) -> Self {
        StepError {
            message: e.to_string(),
            retryable: e.retryable(),
        }
    }
}

/// Outputs of resources by name.
type Outputs = BTreeMap<String, Json>;
/// Names of the secret outputs of resources by name.
type Secrets = BTreeMap<String, Vec<String>>;
/// What the resources applied so far produced.
type Known = (Outputs, Secrets);

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
        let env = &prepared.desired.environment.name;
        if lock.environment() != env {
            return Err(EngineError::Usage(format!(
                "the lock held is for `{}`, not `{env}`",
                lock.environment()
            )));
        }
        if let Some(why) = prepared.needs_confirmation()
            && options.confirm_destroy == Confirmation::Absent
        {
            return Err(EngineError::NeedsConfirmation(why));
        }
        self.check_policies(prepared, options)?;
        let _span = tracing::info_span!(
            "apply",
            environment = %env,
            commit = short(&prepared.commit.sha),
            who = %options.who,
        )
        .entered();
        self.check_isolated(env, prepared.desired.environment.kind)?;
        // A queued environment gets nothing, not even the identity allocated just below (the
        // record's own check, in its transaction, stays the one that cannot race).
        if let Some(recorded) = self.store.environment(env)? {
            crate::refuse_queued(&recorded)?;
        }
        self.check_window(prepared, options)?;
        self.expect_changes(prepared);
        // Ownership before action: the environment's identity is recorded before anything of
        // it exists.
        let sandbox = self.sandbox(env)?;
        let now = slipway_state::now_ms();
        self.store.mark_interrupted(env, now)?;
        self.record_environment(prepared, SyncState::Syncing, options.follows.as_ref())?;
        let plan_json =
            serde_json::to_value(&prepared.plan).expect("a plan is always serializable");
        let deployment = self.store.begin_deployment(&NewDeployment {
            environment: env.clone(),
            commit: prepared.commit.sha.clone(),
            hash: prepared.desired.hash.clone(),
            reference: Some(prepared.reference.clone()),
            plan: plan_json,
            // A static environment's rules stay in force with its deployment, should its
            // commit ever be gone.
            rules: (prepared.desired.environment.kind == slipway_core::render::EnvKind::Static)
                .then(|| prepared.declared.to_record()),
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
            let uses = exports::uses(&prepared.desired);
            self.prepare_dirs(&dirs, &sandbox, uses)?;
            self.expect_changes_in(prepared, &dirs);
            if uses == Uses::All {
                self.export_commit(prepared, source, &dirs)?;
            }
            self.run_changes(prepared, options, progress)
        })();
        let finished = slipway_state::now_ms();
        let results = match result {
            Ok(results) => results,
            Err(e) => {
                tracing::warn!(deployment, error = %e, "apply failed before its changes");
                let message = e.to_string();
                self.record_failed_deployment(
                    env,
                    deployment,
                    (&message, &message),
                    &json!({}),
                    finished,
                )?;
                return Err(e);
            }
        };
        // The group's limits once its changes are done: a lowered one the kernel refused while
        // the group held more takes now that the processes it held are replaced.
        if let Some(group) = &sandbox.cgroup
            && let Err(error) = group.write_limits()
        {
            tracing::warn!(%error, "cannot write the limits of the environment's control group");
        }
        let report = ApplyReport {
            deployment,
            environment: env.clone(),
            commit: prepared.commit.sha.clone(),
            results,
        };
        let summary = summary(&report);
        if report.succeeded() {
            // The deployment, the record and the event, in one transaction.
            self.store.finish_apply(
                env,
                deployment,
                &summary,
                finished,
                |record| {
                    record.commit = Some(prepared.commit.sha.clone());
                    record.hash = Some(prepared.desired.hash.clone());
                    record.sync = SyncState::Synced;
                    record.health = Health::Healthy;
                    record.message = None;
                    record.updated_at = finished;
                },
                (
                    EventKind::ApplySucceeded,
                    &format!("{} is at {}", env, short(&prepared.commit.sha)),
                    &json!({"deployment": deployment}),
                ),
            )?;
            // Then what no resource runs from any more (the resources' records say which):
            // a cleanup, which fails no apply that is recorded as done.
            if let Err(error) = self.collect_exports(env) {
                tracing::warn!(%error, "cannot remove the exports no resource uses");
            }
            tracing::info!(deployment, "applied");
        } else {
            let failed: Vec<String> = report
                .results
                .iter()
                .filter_map(|(name, _, o)| match o {
                    Outcome::Failed { error, .. } => Some(format!("{name}: {error}")),
                    _ => None,
                })
                .collect();
            let message = failed.join("; ");
            tracing::warn!(deployment, failed = failed.len(), "apply failed");
            self.record_failed_deployment(
                env,
                deployment,
                (&message, &message),
                &summary,
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

    /// Records that `deployment` of `env` failed: the deployment with the first of `messages`,
    /// the environment with the second (the same, but for a destroy, whose environment is
    /// kept for its retry).
    pub(super) fn record_failed_deployment(
        &self,
        env: &EnvName,
        deployment: i64,
        messages: (&str, &str),
        summary: &Json,
        finished: i64,
    ) -> Result<(), EngineError> {
        self.store.finish_deployment(
            deployment,
            DeploymentStatus::Failed,
            Some(messages.0),
            summary,
            finished,
        )?;
        self.store.set_environment_status(
            env,
            SyncState::Failed,
            Health::Degraded,
            Some(messages.1),
            finished,
        )?;
        Ok(())
    }

    fn run_changes(
        &self,
        prepared: &Prepared,
        options: &ApplyOptions,
        progress: &dyn Progress,
    ) -> Result<Vec<(String, Action, Outcome)>, EngineError> {
        let env = &prepared.desired.environment.name;
        // What finished resources produced (outputs, and the names of the secret ones), read
        // before anything changes: a read that fails fails the apply with nothing done,
        // rather than give the changes' references nothing to resolve against. The deletes
        // below remove resources nothing kept refers to.
        let records = self.store.resources(env)?;
        let mut known: Known = (
            records
                .iter()
                .map(|r| (r.name.clone(), r.outputs.clone()))
                .collect(),
            crate::secret_outputs(&records),
        );
        drop(records);
        // Deletes first, dependents before what they depend on, several at once.
        let deletes: Vec<String> = prepared
            .plan
            .changes
            .iter()
            .filter(|c| c.action == Action::Delete)
            .map(|c| c.resource.clone())
            .collect();
        let mut results: BTreeMap<String, Outcome> = self
            .delete_all(env, &deletes, options.parallelism, progress)
            .into_iter()
            .collect();

        let changes: BTreeMap<&str, &Change> = prepared
            .plan
            .changes
            .iter()
            .filter(|c| c.action != Action::Delete)
            .map(|c| (c.resource.as_str(), c))
            .collect();
        let deps: BTreeMap<&str, Vec<&str>> = changes
            .keys()
            .map(|name| {
                let deps = prepared
                    .desired
                    .resources
                    .get(*name)
                    .map(|r| r.depends_on.iter().map(String::as_str).collect())
                    .unwrap_or_default();
                (*name, deps)
            })
            .collect();
        let dag = Dag::new(
            deps.iter()
                .map(|(name, deps)| (*name, deps.iter().copied())),
            options.parallelism,
        );
        let outcomes = dag.run(
            progress,
            &mut known,
            |(outputs, secrets), name| {
                let change = changes[name];
                if change.action == Action::Noop {
                    return None;
                }
                // Only what this resource may reference: its dependencies' outputs.
                let of = |d: &&str| outputs.get(*d).map(|o| (d.to_string(), o.clone()));
                let secret_of = |d: &&str| secrets.get(*d).map(|s| (d.to_string(), s.clone()));
                Some((
                    change,
                    deps[name].iter().filter_map(of).collect(),
                    deps[name].iter().filter_map(secret_of).collect(),
                ))
            },
            |_, (change, outputs, secrets): (&Change, Outputs, Secrets)| {
                step::tracked(&change.resource, change.action, progress, || {
                    self.apply_change(prepared, change, &outputs, &secrets, options)
                })
            },
            |(outputs, secrets), name, (out, secret)| {
                outputs.insert(name.to_string(), out);
                secrets.insert(name.to_string(), secret);
            },
        );
        results.extend(outcomes.into_iter().map(|(n, o)| (n.to_string(), o)));
        Ok(prepared
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
            .collect())
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

#[cfg(test)]
mod tests {
    use serde_json::json;
    use slipway_core::vocab::{EnvKind, Health, ResourceStatus, SyncState};
    use slipway_state::{EnvironmentRecord, ResourceRecord};

    use super::*;
    use crate::EngineConfig;

    fn env(name: &str) -> EnvName {
        EnvName::parse(name).expect("the test's environment names are DNS labels")
    }

    #[test]
    fn a_step_fenced_off_by_a_lost_lease_is_retried_not_parked() {
        let fenced = StepError::from(slipway_state::StateError::Fenced {
            environment: "dev".into(),
            replica: "r1".into(),
            epoch: 1,
            now: Some("held by r2 at epoch 2".into()),
        });
        assert!(fenced.retryable, "{}", fenced.message);
        let refused = StepError::from(slipway_state::StateError::NotFound {
            what: "environment",
            key: "dev".into(),
        });
        assert!(!refused.retryable, "{}", refused.message);
    }

    /// An engine holding environment `dev` with one recorded `file` resource, `page`, whose
    /// recorded handle is `handle`.
    fn engine_with_page(home: &std::path::Path, handle: Json) -> Engine {
        let engine = Engine::open(home, EngineConfig::default(), vec![]).expect("engine");
        engine
            .store
            .upsert_environment(&EnvironmentRecord {
                sync: SyncState::Synced,
                health: Health::Healthy,
                ..EnvironmentRecord::new(
                    env("dev"),
                    EnvKind::Static,
                    "shop".into(),
                    String::new(),
                    0,
                )
            })
            .expect("environment");
        engine
            .store
            .put_resource(&ResourceRecord {
                environment: env("dev"),
                name: "page".into(),
                type_name: "file".into(),
                status: ResourceStatus::Ready,
                config: json!({"path": "page.txt", "content": "hi"}),
                resolved_hash: None,
                outputs: Json::Null,
                secret_outputs: Vec::new(),
                live: json!({ "handle": handle }),
                depends_on: Vec::new(),
                error: None,
                updated_at: 0,
                sensitive: false,
            })
            .expect("resource");
        engine
    }

    fn delete_page(engine: &Engine) -> Outcome {
        let mut outcomes = engine.delete_all(&env("dev"), &["page".into()], 1, &());
        let (name, outcome) = outcomes.pop().expect("one outcome");
        assert_eq!(name, "page");
        assert_eq!(
            engine
                .store
                .resource(&env("dev"), "page")
                .expect("store")
                .map(|r| r.status),
            Some(ResourceStatus::Failed),
            "the failure is recorded: {outcome:?}"
        );
        outcome
    }

    #[test]
    fn a_configuration_its_provider_refuses_fails_the_step_for_good() {
        let home = tempfile::tempdir().expect("a temporary directory");
        // The file provider refuses to touch a recorded path outside the data directory.
        let engine = engine_with_page(home.path(), json!({"path": "/etc/hostname", "sha256": ""}));
        let outcome = delete_page(&engine);
        let Outcome::Failed { error, retryable } = outcome.clone() else {
            panic!("the delete fails: {outcome:?}");
        };
        assert!(error.contains("outside the data directory"), "{error}");
        assert!(!retryable, "a configuration error is terminal");
        let report = ApplyReport {
            deployment: 1,
            environment: env("dev"),
            commit: String::new(),
            results: vec![
                ("page".into(), Action::Delete, outcome),
                (
                    "other".into(),
                    Action::Create,
                    Outcome::Skipped {
                        because: "page".into(),
                    },
                ),
            ],
        };
        assert!(
            !report.retryable(),
            "an apply with a terminal failure is not retried"
        );
        assert_eq!(
            serde_json::to_value(&report.results[0].2).expect("json"),
            json!({"outcome": "failed", "error": error}),
            "reports keep their shape"
        );
    }

    #[test]
    fn a_provider_io_failure_may_pass_and_is_retryable() {
        let home = tempfile::tempdir().expect("a temporary directory");
        let engine = engine_with_page(home.path(), Json::Null);
        // Where the provider keeps its marker there is a directory it cannot read as a file.
        let run = engine.env_dirs(&env("dev"), "", "").run;
        std::fs::create_dir_all(run.join("page.file.json")).expect("a directory in the way");
        let outcome = delete_page(&engine);
        assert!(
            matches!(
                outcome,
                Outcome::Failed {
                    retryable: true,
                    ..
                }
            ),
            "an IO error is retryable: {outcome:?}"
        );
        let report = ApplyReport {
            deployment: 1,
            environment: env("dev"),
            commit: String::new(),
            results: vec![("page".into(), Action::Delete, outcome)],
        };
        assert!(report.retryable());
    }
}
