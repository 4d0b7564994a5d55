//! One resource's step: create, update or replace it (an exposed one is handed to `swap`),
//! or delete it, recording each stage in the store before acting.

use slipway_core::EnvName;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use slipway_core::plan::{Action, Change};
use slipway_core::vocab::ResourceStatus;
use slipway_providers::sandbox::Sandbox;
use slipway_providers::{Applied, EnvDirs, ResourceContext};
use slipway_state::ResourceRecord;

use super::{ApplyEvent, ApplyOptions, Outputs, Progress, Secrets, StepError};
use crate::{Engine, Envelope, Prepared, resolve};

/// Runs `act`, the step of `resource`, in its own span, telling `progress` when it starts and
/// how it ends.
pub(super) fn tracked<R>(
    resource: &str,
    action: Action,
    progress: &dyn Progress,
    act: impl FnOnce() -> Result<R, StepError>,
) -> Result<R, StepError> {
    let _span = tracing::info_span!("resource", resource, action = action.as_str()).entered();
    progress.event(&ApplyEvent::Started { resource, action });
    let started = Instant::now();
    // A panic (a bug) ends the step as a failure, so that it is reported as finished.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(act))
        .unwrap_or_else(|_| Err(StepError::panicked()));
    let elapsed = started.elapsed();
    match &result {
        Ok(_) => tracing::info!(?elapsed, "done"),
        Err(error) => tracing::warn!(
            ?elapsed,
            error = %error.message,
            retryable = error.retryable,
            "failed"
        ),
    }
    progress.event(&ApplyEvent::Finished {
        resource,
        action,
        elapsed,
        error: result.as_ref().err().map(|e| e.message.as_str()),
    });
    result
}

/// Records what a create or update left: the provider's handle (in its envelope, made by
/// `envelope_of`) and the outputs.
pub(super) fn record_applied(
    record: &mut ResourceRecord,
    applied: &Applied,
    envelope_of: impl Fn(Json) -> Json,
) {
    record.live = envelope_of(applied.live.clone());
    record.outputs = Json::Object(applied.outputs.clone().into_iter().collect());
    record.secret_outputs = applied.secret_outputs.clone();
}

impl Engine {
    /// What a provider is told about `resource` of `env` (with no secret values to redact).
    pub(crate) fn resource_context<'a>(
        &'a self,
        stack: &'a str,
        env: &'a EnvName,
        resource: &'a str,
        dirs: &'a EnvDirs,
        ports: &'a BTreeMap<String, u16>,
        sandbox: &'a Sandbox,
    ) -> ResourceContext<'a> {
        ResourceContext {
            environment: env,
            stack,
            resource,
            dirs,
            ports,
            settings: &self.settings,
            redact: &[],
            sandbox,
            kind: None,
        }
    }

    /// Marks `record` failed with `error` (what the store keeps), best effort, and gives
    /// back `returned` (what the caller reports).
    pub(super) fn record_failed(
        &self,
        record: &mut ResourceRecord,
        error: String,
        returned: StepError,
    ) -> StepError {
        record.status = ResourceStatus::Failed;
        record.error = Some(error);
        record.updated_at = slipway_state::now_ms();
        let _ = self.store.put_resource(record);
        returned
    }

    /// Marks `record` ready, its configuration resolved as `resolved_hash`; gives back its
    /// outputs and the names of the secret ones.
    pub(super) fn record_ready(
        &self,
        mut record: ResourceRecord,
        resolved_hash: String,
    ) -> Result<(Json, Vec<String>), StepError> {
        record.status = ResourceStatus::Ready;
        record.resolved_hash = Some(resolved_hash);
        record.updated_at = slipway_state::now_ms();
        self.store.put_resource(&record)?;
        Ok((record.outputs, record.secret_outputs))
    }

    /// Creates, updates or replaces one resource; returns its outputs and the names of the
    /// secret ones. Errors are redacted of every secret value the resource was given.
    pub(super) fn apply_change(
        &self,
        prepared: &Prepared,
        change: &Change,
        outputs: &Outputs,
        secret_outputs: &Secrets,
        options: &ApplyOptions,
    ) -> Result<(Json, Vec<String>), StepError> {
        let env = &prepared.desired.environment.name;
        let desired = &prepared.desired.resources[&change.resource];
        let provider = self
            .registry
            .get(&desired.type_name)
            .ok_or_else(|| StepError::terminal(format!("resource type `{}` is not available on this engine (it needs a provider that is not configured)", desired.type_name)))?;
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
        let previous = self.store.resource(env, &change.resource)?;
        let previous_envelope = previous.as_ref().map(Envelope::of);
        // An exposed process is replaced blue/green: the new version starts beside the old
        // one (in the other instance slot, on its own ports), is health-checked, takes the
        // preview URL over, and only then is the old one stopped.
        let exposed =
            slipway_core::types::exposed_port(&desired.type_name, &desired.config).is_some();
        let previous_slot = previous_envelope.as_ref().map_or(0, |e| {
            u8::from(e.instance(&change.resource) != change.resource)
        });
        let blue_green = exposed
            && options.swap_exposed
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
        // What the environment's code may reach changes with its ports (the fence's, uid
        // mode): those released are taken from it before the store may give them to another,
        // those allocated given before its code starts. Looked up for a resource made now
        // too: a step that failed after allocating left them unrecorded.
        let fenced = self.fence_kept();
        let before = if fenced {
            self.store.ports(env, &change.resource)?
        } else {
            BTreeMap::new()
        };
        let allocated =
            self.store
                .allocate_ports(env, &change.resource, &slot_names, range, &|p| {
                    std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                })?;
        let ports = crate::slot_ports(&allocated, slot);
        let mut keep = port_names.clone();
        if exposed {
            keep.extend(port_names.iter().map(|p| crate::slot_port(p, 1)));
        }
        let released: Vec<u16> = before
            .iter()
            .filter(|(name, _)| !keep.contains(name))
            .map(|(_, &port)| port)
            .collect();
        self.fence_release(env, &released, || {
            self.store.retain_ports(env, &change.resource, &keep)
        })?;
        if fenced && !(before.is_empty() && slot_names.is_empty()) {
            // Each one it holds, changed or not: one granted before by a command whose
            // fence was not in force then is granted now.
            let after = self.store.ports(env, &change.resource)?;
            self.fence_grant(env, &after.into_values().collect::<Vec<_>>())?;
        }
        let scope = resolve::Scope {
            ports: &ports,
            outputs,
            secret_outputs,
            secrets: &prepared.secrets,
        };
        let resolved_all = resolve::resolve(&desired.config, &scope).map_err(|r| {
            StepError::terminal(format!(
                "`{r}` has no value: the resource it names produced no such output"
            ))
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
            environment: env.clone(),
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
        self.store.put_resource(&record)?;

        let dirs = self.env_dirs(env, &prepared.commit.sha, &prepared.folder);
        let sandbox = self.sandbox(env)?;
        let ctx = ResourceContext {
            redact: &resolved_all.secrets,
            kind: Some(prepared.desired.environment.kind),
            ..self.resource_context(
                &prepared.desired.stack,
                env,
                &instance,
                &dirs,
                &ports,
                &sandbox,
            )
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
        let result: Result<Applied, slipway_providers::ProviderError> = (|| {
            match (change.action, &previous_envelope) {
                (Action::Update, Some(prev)) if !prev.handle.is_null() => {
                    provider.update(ctx, &resolved, &prev.handle)
                }
                (Action::Create, None) => provider.create(ctx, &resolved),
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
                        provider.delete(old_ctx, handle)?;
                    }
                    // Whatever an interrupted create (or blue/green swap) left in either
                    // instance slot goes too.
                    provider.delete(ctx, None)?;
                    if exposed {
                        let other = crate::instance_name(&change.resource, 1);
                        provider.delete(
                            ResourceContext {
                                resource: &other,
                                ..ctx
                            },
                            None,
                        )?;
                    }
                    record.live = Json::Null;
                    provider.create(ctx, &resolved)
                }
            }
        })();
        let applied = match result {
            Ok(applied) => applied,
            Err(error) => {
                let error = StepError::from(error).redacted(&redactor);
                return Err(self.record_failed(&mut record, error.message.clone(), error));
            }
        };
        record_applied(&mut record, &applied, envelope_of);
        redactor.add_outputs(&record.outputs, &record.secret_outputs);
        // Record the handle before waiting, so a process that never gets healthy is still
        // known (and stopped by the next apply or destroy). What may be ready at once is asked
        // first with no time to wait (unless the provider saw it ready as it made it): ready,
        // it is recorded with the ready state in one write.
        let ready = applied.ready
            || (provider.ready_at_once(&resolved)
                && provider
                    .wait_ready(ctx, &resolved, &applied, Instant::now())
                    .is_ok());
        if !ready {
            record.updated_at = slipway_state::now_ms();
            self.store.put_resource(&record)?;
            let deadline = Instant::now() + self.settings.ready_timeout.max(Duration::from_secs(1));
            if let Err(e) = provider.wait_ready(ctx, &resolved, &applied, deadline) {
                let error = StepError::from(e).redacted(&redactor);
                return Err(self.record_failed(&mut record, error.message.clone(), error));
            }
        }
        self.record_ready(record, resolved_hash)
    }

    /// Deletes one recorded resource: marks it `deleting`, asks its provider, forgets it.
    pub(crate) fn delete_resource(&self, env: &EnvName, name: &str) -> Result<(), StepError> {
        let Some(mut record) = self.store.resource(env, name)? else {
            return Ok(());
        };
        let envelope = Envelope::of(&record);
        record.status = ResourceStatus::Deleting;
        record.updated_at = slipway_state::now_ms();
        self.store.put_resource(&record)?;
        if let Err(error) = self.stop_resource(env, &record, &envelope) {
            return Err(self.record_failed(&mut record, error.message.clone(), error));
        }
        // Its ports are taken from its code before the store may give them to another.
        let ports: Vec<u16> = if self.fence_kept() {
            self.store.ports(env, name)?.into_values().collect()
        } else {
            Vec::new()
        };
        self.fence_release(env, &ports, || self.store.forget_resource(env, name))?;
        Ok(())
    }

    /// Has `record`'s provider delete its live object (both instance slots of an exposed
    /// one); the record itself, its ports and its row are the caller's.
    pub(crate) fn stop_resource(
        &self,
        env: &EnvName,
        record: &ResourceRecord,
        envelope: &Envelope,
    ) -> Result<(), StepError> {
        let name = record.name.as_str();
        let Some(provider) = self.registry.get(&record.type_name) else {
            return Ok(());
        };
        let dirs = self.env_dirs(env, &envelope.src_commit, "");
        let ports = self.store.ports(env, name)?;
        let instance = envelope.instance(name);
        let sandbox = self.sandbox(env)?;
        let (stack, kind) = self.stack_of(env)?;
        // What the delete says (an exec program's error, a log's tail) may quote a value the
        // resource was given or made: redacted like a create's or an update's, and the
        // provider told those values (an exec program's log is redacted as it is written).
        let redactor = crate::secrets::Redactor::default();
        redactor.add_outputs(&record.outputs, &record.secret_outputs);
        for value in &envelope.redact {
            redactor.add(value);
        }
        let ctx = ResourceContext {
            redact: &envelope.redact,
            kind,
            ..self.resource_context(&stack, env, instance, &dirs, &ports, &sandbox)
        };
        let handle = (!envelope.handle.is_null()).then_some(&envelope.handle);
        let mut result = provider.delete(ctx, handle);
        if result.is_ok()
            && slipway_core::types::lookup(&record.type_name)
                .is_some_and(|t| t.has_instance_slots())
        {
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
        result.map_err(|e| StepError::from(e).redacted(&redactor))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value as Json, json};
    use slipway_core::types::{FieldKind, TYPES};

    use crate::{Engine, EngineConfig};

    /// A small valid value of `kind`, as the engine hands it to a provider.
    fn example(kind: FieldKind) -> Json {
        match kind {
            FieldKind::Str | FieldKind::PortName => json!("http"),
            FieldKind::Bool => json!(true),
            FieldKind::Duration => json!("1m30s"),
            FieldKind::StrList | FieldKind::NameList | FieldKind::PortNames => json!(["http"]),
            FieldKind::StrMap => json!({"NAME": "value"}),
            FieldKind::Health => {
                json!({"http": "/health", "port": "http", "interval": "1s", "timeout": "2s"})
            }
            FieldKind::RelPath => json!("app"),
            FieldKind::Mode => json!("0644"),
            FieldKind::Any => json!({"anything": [1, "two"]}),
            FieldKind::Manifests => json!([{
                "source": "k8s/app.yaml:1:1",
                "object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app"}}
            }]),
        }
    }

    /// String fields that take one of a few words, which the catalogue says in prose only.
    const WORDS: &[(&str, &str, &str)] = &[
        ("process", "restart", "on-failure"),
        ("postgres.database", "strategy", "wal_log"),
    ];

    fn config<'a>(
        t: &slipway_core::types::ResourceType,
        fields: impl Iterator<Item = &'a str>,
    ) -> Json {
        let config: Map<String, Json> = fields
            .map(|name| {
                let kind = t.field(name).expect("a field of the type").kind;
                let value = match WORDS.iter().find(|(ty, f, _)| *ty == t.name && *f == name) {
                    Some((_, _, word)) => json!(word),
                    None => example(kind),
                };
                (name.to_string(), value)
            })
            .collect();
        Json::Object(config)
    }

    #[test]
    fn every_catalogue_type_has_a_provider_taking_exactly_its_fields_or_none_at_all() {
        let home = tempfile::tempdir().expect("a temporary directory");
        let engine = Engine::open(home.path(), EngineConfig::default(), vec![]).expect("engine");
        for t in TYPES {
            let Some(provider) = engine.registry.get(t.name) else {
                // Refused at validation (the core's tests check the diagnostic).
                assert!(
                    !t.capabilities.provided,
                    "`{}` is in the catalogue as provided, but the engine registers no provider \
                     for it",
                    t.name
                );
                continue;
            };
            assert!(
                t.capabilities.provided,
                "`{}` has a provider: the catalogue must say so",
                t.name
            );
            // A provider may tolerate the keys every resource has (the engine passes none).
            let mut names: Vec<&str> = provider
                .config_fields()
                .iter()
                .copied()
                .filter(|f| !slipway_core::types::COMMON_FIELDS.contains(f))
                .collect();
            let mut catalogue: Vec<&str> = t.fields.iter().map(|f| f.name).collect();
            names.sort_unstable();
            catalogue.sort_unstable();
            assert_eq!(
                names, catalogue,
                "`{}`: provider config against catalogue",
                t.name
            );

            let every = config(t, t.fields.iter().map(|f| f.name));
            if let Err(e) = provider.check_config(&every) {
                panic!(
                    "`{}` refuses an example of every field ({every}): {e}",
                    t.name
                );
            }
            let required = config(t, t.fields.iter().filter(|f| f.required).map(|f| f.name));
            if let Err(e) = provider.check_config(&required) {
                panic!(
                    "`{}` refuses its required fields alone ({required}): {e}",
                    t.name
                );
            }
            let mut extra = every.clone();
            extra["unexpected"] = json!("x");
            assert!(
                provider.check_config(&extra).is_err(),
                "`{}` accepts a field the catalogue does not have",
                t.name
            );
        }
        for name in engine.registry.types() {
            assert!(
                slipway_core::types::lookup(name).is_some(),
                "the provider of `{name}` has no catalogue entry"
            );
        }
    }
}

#[cfg(test)]
mod panics {
    use std::sync::Mutex;

    use super::*;

    /// Records every event, in order.
    #[derive(Default)]
    struct Events(Mutex<Vec<String>>);

    impl Progress for Events {
        fn event(&self, event: &ApplyEvent<'_>) {
            let line = match event {
                ApplyEvent::Started { resource, .. } => format!("started {resource}"),
                ApplyEvent::Finished {
                    resource, error, ..
                } => format!("finished {resource}: {}", error.unwrap_or("ok")),
                ApplyEvent::Skipped { resource, .. } => format!("skipped {resource}"),
            };
            self.0.lock().expect("not poisoned").push(line);
        }
    }

    #[test]
    fn a_step_that_panics_is_reported_finished_with_a_failure() {
        let events = Events::default();
        let result: Result<(), StepError> = tracked("web", Action::Create, &events, || {
            panic!("a provider's bug")
        });
        let error = result.expect_err("a panic is a failure");
        assert!(!error.retryable);
        let seen = events.0.into_inner().expect("not poisoned");
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0], "started web");
        assert!(
            seen[1].starts_with("finished web: a bug in Slipway: this step panicked"),
            "{seen:?}"
        );
    }
}
