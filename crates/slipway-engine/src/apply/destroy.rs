//! Destroying an environment: every resource deleted, dependents first, on the one
//! scheduler; then whatever its code left running, its files and its record.

use slipway_core::EnvName;
use std::collections::BTreeMap;

use serde_json::json;
use slipway_core::plan::{Action, Change};
use slipway_core::vocab::{EventKind, Health, Reason, SyncState};
use slipway_state::NewDeployment;

use super::dag::Dag;
use super::{ApplyReport, Confirmation, Outcome, Progress, step, summary};
use crate::{Engine, EngineError, EnvLock};

/// How to destroy an environment.
#[derive(Debug, Clone)]
pub struct DestroyOptions {
    /// Who asked, recorded with the deployment.
    pub who: String,
    /// Whether a person confirmed it: a protected environment is destroyed only then.
    pub confirm: Confirmation,
    /// Most resources deleted at once.
    pub parallelism: usize,
    /// Why, when it was not asked for by name (a closed pull request, an expiry, a branch
    /// gone): said in the one `environment.destroyed` event.
    pub reason: Option<String>,
}

impl DestroyOptions {
    /// A destroy asked for by `who`, with `confirm`, deleting up to 8 resources at once.
    pub fn new(who: &str, confirm: Confirmation) -> Self {
        DestroyOptions {
            who: who.to_string(),
            confirm,
            parallelism: 8,
            reason: None,
        }
    }
}

impl Engine {
    /// Deletes the recorded resources `names`, each only after every recorded resource that
    /// depends on it is gone, up to `parallelism` at once. A resource whose dependent failed
    /// to delete is kept (and reported skipped), and so is what it depends on: deleting it
    /// would break what still runs.
    pub(crate) fn delete_all(
        &self,
        env: &EnvName,
        names: &[String],
        parallelism: usize,
        progress: &dyn Progress,
    ) -> Vec<(String, Outcome)> {
        let records = self.store.resources(env).unwrap_or_default();
        // Reverse edges: a resource waits for its dependents among those being deleted.
        let mut dependents: BTreeMap<&str, Vec<&str>> =
            names.iter().map(|n| (n.as_str(), Vec::new())).collect();
        for record in &records {
            for dep in &record.depends_on {
                if let Some(waits) = dependents.get_mut(dep.as_str()) {
                    waits.push(record.name.as_str());
                }
            }
        }
        let mut outcomes = Dag::new(dependents, parallelism).run(
            progress,
            &mut (),
            |_, _| Some(()),
            |name, ()| {
                step::tracked(name, Action::Delete, progress, || {
                    self.delete_resource(env, name)
                })
            },
            |_, _, ()| {},
        );
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

    /// Starts what destroying the environment `lock` holds will take (a database server's
    /// connection for its deletes), so that it overlaps what comes before them: for a caller
    /// with checks of its own before [`Engine::destroy`] (the CLI's confirmation), to call
    /// once they passed. Nothing when the destroy will be refused for the environment's
    /// protection: judged as [`Engine::destroy`] judges it, from the record read under the
    /// same lock, so a refused destroy never reaches a server with the admin's credentials.
    /// (One failure is not foreseen: on a state shared by replicas, a lease lost between the
    /// command taking it and the destroy's first write fails the destroy after the connection
    /// started.)
    pub fn expect_destroy(&self, lock: &EnvLock, confirm: Confirmation) {
        let env = lock.environment();
        if let Ok(Some(record)) = self.store.environment(env)
            && !protection_refuses(&record, confirm)
            && let Ok(resources) = self.store.resources(env)
        {
            self.expect_changes_to(env, &resources);
        }
    }

    /// Deletes every resource of `environment`, dependents first, then its directory and its
    /// record (its deployments and events stay, as history).
    ///
    /// A protected environment is destroyed only with a person's confirmation.
    pub fn destroy(
        &self,
        lock: &EnvLock,
        options: &DestroyOptions,
        progress: &dyn Progress,
    ) -> Result<ApplyReport, EngineError> {
        let env = lock.environment().clone();
        let who = options.who.as_str();
        let _span = tracing::info_span!("destroy", environment = %env, who).entered();
        let Some(record) = self.store.environment(&env)? else {
            return Err(EngineError::Environment(format!(
                "environment `{env}` does not exist here; `slipway status` lists them"
            )));
        };
        if protection_refuses(&record, options.confirm) {
            return Err(EngineError::NeedsConfirmation(
                crate::ConfirmationNeeded::whole(&env),
            ));
        }
        let now = slipway_state::now_ms();
        self.store.mark_interrupted(&env, now)?;
        let resources = self.store.resources(&env)?;
        // Past the destroy's checks (its protection): what the providers start meanwhile (a
        // database connection) overlaps the records below.
        self.expect_changes_to(&env, &resources);
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
                reason: Some(Reason::Other("destroy".into())),
                objects: Vec::new(),
            })
            .collect();
        let commit = record.commit.clone().unwrap_or_default();
        let plan = slipway_core::plan::Plan {
            environment: env.to_string(),
            commit: commit.clone(),
            changes,
        };
        let deployment = self.store.begin_deployment(&NewDeployment {
            environment: env.clone(),
            commit: commit.clone(),
            hash: String::new(),
            reference: Some("destroy".into()),
            plan: serde_json::to_value(&plan).expect("a plan is always serializable"),
            rules: None,
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
            .delete_all(&env, &names, options.parallelism, progress)
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
                self.kill_everything_of(&env, uid)
            }
            _ => Ok(()),
        };
        if report.succeeded() {
            if let Err(error) = killed {
                // Recorded as a failed destroy (not left `running`, the environment
                // `destroying`): the environment and its uid stay for the retry it asks for.
                self.record_failed_deployment(
                    &env,
                    deployment,
                    (
                        &error.to_string(),
                        "destroy failed: its processes could not be stopped; run it again",
                    ),
                    &summary(&report),
                    finished,
                )?;
                return Err(error);
            }
            // No resource is left to run from an export: every one goes.
            self.collect_exports(&env)?;
            let root = self.home.join("envs").join(&env);
            crate::isolation::gone(crate::isolation::remove_env_root(&root))
                .map_err(EngineError::io(format!("cannot remove {}", root.display())))?;
            // Its processes are stopped and its files gone: its uid may serve another. The
            // deployment, the uid, the record and the event: one transaction, made once its
            // ports are taken from its code (before the store may give them to another).
            self.fence_release_all(&env, || {
                self.store.finish_destroy(
                    &env,
                    deployment,
                    &summary(&report),
                    finished,
                    (
                        EventKind::EnvironmentDestroyed,
                        &match &options.reason {
                            Some(why) => format!("{env} destroyed: {why}"),
                            None => format!("{env} was destroyed"),
                        },
                        &json!({"deployment": deployment, "who": who, "reason": options.reason}),
                    ),
                )
            })??;
        } else {
            self.record_failed_deployment(
                &env,
                deployment,
                (
                    "some resources could not be deleted",
                    "destroy failed; run it again",
                ),
                &summary(&report),
                finished,
            )?;
        }
        Ok(report)
    }
}

/// Whether a destroy of the environment `record` is refused for its protection: a protected
/// environment is destroyed only with a person's confirmation.
fn protection_refuses(record: &slipway_state::EnvironmentRecord, confirm: Confirmation) -> bool {
    record.protected && confirm == Confirmation::Absent
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::{Value, json};
    use slipway_core::vocab::{EnvKind, ResourceStatus};
    use slipway_providers::{Applied, Observation, Provider, ProviderError, ResourceContext};
    use slipway_state::{EnvironmentRecord, ResourceRecord};

    use super::*;
    use crate::{EngineConfig, LockWait};

    /// Counts the changes it is told to expect; changes nothing itself.
    struct Expecting(Arc<AtomicUsize>);

    impl Provider for Expecting {
        type Config = Value;
        const TYPE: &'static str = "test.expecting";

        fn expect_change(
            &self,
            _resource: slipway_providers::ResourceKey<'_>,
            _action: slipway_providers::Action,
            _config: &Value,
        ) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }

        fn create(&self, _: ResourceContext<'_>, _: &Value) -> Result<Applied, ProviderError> {
            unreachable!("the test creates nothing")
        }

        fn update(
            &self,
            _: ResourceContext<'_>,
            _: &Value,
            _: &Value,
        ) -> Result<Applied, ProviderError> {
            unreachable!("the test updates nothing")
        }

        fn delete(&self, _: ResourceContext<'_>, _: Option<&Value>) -> Result<(), ProviderError> {
            Ok(())
        }

        fn observe(
            &self,
            _: ResourceContext<'_>,
            _: &Value,
            _: &Value,
        ) -> Result<Observation, ProviderError> {
            unreachable!("the test observes nothing")
        }
    }

    /// Fails every delete quoting the password its resource made.
    struct Leaky;

    impl Provider for Leaky {
        type Config = Value;
        const TYPE: &'static str = "test.leaky";

        fn create(&self, _: ResourceContext<'_>, _: &Value) -> Result<Applied, ProviderError> {
            unreachable!("the test creates nothing")
        }

        fn update(
            &self,
            _: ResourceContext<'_>,
            _: &Value,
            _: &Value,
        ) -> Result<Applied, ProviderError> {
            unreachable!("the test updates nothing")
        }

        fn delete(&self, _: ResourceContext<'_>, _: Option<&Value>) -> Result<(), ProviderError> {
            Err(ProviderError::Failed {
                message: "cannot drop: password hunter2-s3cret refused".into(),
                log_tail: Some("login hunter2-s3cret".into()),
                retry: slipway_providers::Retry::Terminal,
            })
        }

        fn observe(
            &self,
            _: ResourceContext<'_>,
            _: &Value,
            _: &Value,
        ) -> Result<Observation, ProviderError> {
            unreachable!("the test observes nothing")
        }
    }

    #[test]
    fn a_failed_delete_says_nothing_of_the_values_its_resource_keeps_secret() {
        let home = tempfile::tempdir().expect("a temporary home");
        let mut engine =
            Engine::open(home.path(), EngineConfig::default(), vec![]).expect("an engine");
        engine.registry.register(Leaky);
        let env = EnvName::parse("qa").expect("a name");
        engine
            .store
            .upsert_environment(&EnvironmentRecord::new(
                env.clone(),
                EnvKind::Static,
                "shop".into(),
                String::new(),
                0,
            ))
            .expect("qa");
        engine
            .store
            .put_resource(&ResourceRecord {
                environment: env.clone(),
                name: "db".into(),
                type_name: "test.leaky".into(),
                status: ResourceStatus::Ready,
                config: json!({}),
                resolved_hash: None,
                outputs: json!({"password": "hunter2-s3cret", "user": "u"}),
                secret_outputs: vec!["password".into()],
                live: json!({}),
                depends_on: Vec::new(),
                error: None,
                updated_at: 0,
                sensitive: false,
            })
            .expect("its resource");
        let error = engine
            .delete_resource(&env, "db")
            .expect_err("the delete fails");
        assert!(!error.message.contains("hunter2"), "{}", error.message);
        let kept = engine
            .store
            .resource(&env, "db")
            .expect("read")
            .and_then(|r| r.error)
            .expect("the failure is kept");
        assert!(
            !kept.contains("hunter2") && kept.contains("cannot drop"),
            "{kept}"
        );
    }

    #[test]
    fn a_destroy_its_protection_refuses_expects_nothing_of_its_providers() {
        let home = tempfile::tempdir().expect("a temporary home");
        let mut engine =
            Engine::open(home.path(), EngineConfig::default(), vec![]).expect("an engine");
        let expected = Arc::new(AtomicUsize::new(0));
        engine.registry.register(Expecting(expected.clone()));
        let env = EnvName::parse("prod").expect("a name");
        let record = |protected| EnvironmentRecord {
            protected,
            ..EnvironmentRecord::new(
                env.clone(),
                EnvKind::Static,
                "shop".into(),
                String::new(),
                0,
            )
        };
        engine
            .store
            .upsert_environment(&record(true))
            .expect("prod");
        engine
            .store
            .put_resource(&ResourceRecord {
                environment: env.clone(),
                name: "db".into(),
                type_name: "test.expecting".into(),
                status: ResourceStatus::Ready,
                config: json!({}),
                resolved_hash: None,
                outputs: Value::Null,
                secret_outputs: Vec::new(),
                live: json!({}),
                depends_on: Vec::new(),
                error: None,
                updated_at: 0,
                sensitive: false,
            })
            .expect("its resource");
        let lock = engine.lock(&env, LockWait::Fail).expect("the lock");

        engine.expect_destroy(&lock, Confirmation::Absent);
        assert_eq!(expected.load(Ordering::SeqCst), 0, "protected, unconfirmed");
        engine.expect_destroy(&lock, Confirmation::Given);
        assert_eq!(expected.load(Ordering::SeqCst), 1, "protected, confirmed");
        engine
            .store
            .upsert_environment(&record(false))
            .expect("unprotected");
        engine.expect_destroy(&lock, Confirmation::Absent);
        assert_eq!(expected.load(Ordering::SeqCst), 2, "unprotected");
        // What the destroy itself judges, from the same record: it goes ahead.
        let report = engine
            .destroy(
                &lock,
                &DestroyOptions::new("test", Confirmation::Absent),
                &(),
            )
            .expect("an unprotected environment is destroyed");
        assert!(report.succeeded());
    }
}
