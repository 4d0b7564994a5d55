//! The blocking half of the controller: discovery and the reconcile of one environment. Every
//! function here runs on a blocking thread and talks to the engine directly.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use slipway_core::plan::Action as Change;
use slipway_core::render::EnvKind;
use slipway_engine::{ApplyOptions, EngineError, Origin, source};
use slipway_state::{EnvironmentRecord, now_ms};

use crate::{ControllerError, CreateEnvironment, Inner, Trigger, discover, kind_of, target_of};

/// What to do after a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Look again after this long.
    Requeue(Duration),
    /// The environment is gone; forget it.
    Done,
}

const WHO: &str = "slipway-controller";

fn event(inner: &Inner, env: &str, kind: &str, message: &str) {
    let _ = inner
        .engine
        .store()
        .record_event(Some(env), kind, message, &json!({}), now_ms());
}

/// Records a `commit.invalid` event about `commit` unless the last one of `env` (engine-wide
/// when `None`) was already about it: an invalid commit is seen again on every poll and
/// drift tick until a new one replaces it, and one event says it.
fn invalid_once(inner: &Inner, env: Option<&str>, commit: &str, message: &str) {
    let store = inner.engine.store();
    let said = store
        .last_event(env, "commit.invalid")
        .ok()
        .flatten()
        .is_some_and(|e| e.data.get("commit").and_then(|c| c.as_str()) == Some(commit));
    if !said {
        let data = json!({ "commit": commit });
        let _ = store.record_event(env, "commit.invalid", message, &data, now_ms());
    }
}

/// Fetches, reads the stack at the default ref, and makes the recorded environments match
/// what it asks for: new static and generated environments are recorded, generated ones whose
/// branch is gone are destroyed. Returns the environments to reconcile, with why.
pub(crate) fn discover(inner: &Inner) -> Result<Vec<(String, Trigger)>, ControllerError> {
    inner.source.fetch()?;
    let mut branches = inner.source.branches()?;
    // Open pull requests allowed a preview: their head refs join the branches (so their tips
    // are known like a branch's), checked against the head the forge announced.
    let mut pulls = Vec::new();
    if let Some(setup) = inner.forge.get() {
        for pr in inner.engine.store().pull_requests(Some("open"))? {
            if !pr.preview_allowed {
                continue;
            }
            let reference = setup.forge.pr_head_ref(pr.number as u64);
            match inner.source.resolve(&reference) {
                Ok(commit) if commit.sha == pr.head_sha => {
                    branches.push(slipway_git::Branch {
                        name: reference.clone(),
                        sha: commit.sha,
                    });
                    pulls.push(discover::PullHead {
                        number: pr.number as u64,
                        reference,
                    });
                }
                // Not fetched yet, or moved since the event: the next event or poll has it.
                // An environment already running keeps running meanwhile.
                _ => {
                    if inner
                        .engine
                        .store()
                        .environment(&format!("pr-{}", pr.number))?
                        .is_some()
                    {
                        pulls.push(discover::PullHead {
                            number: pr.number as u64,
                            reference,
                        });
                    }
                }
            }
        }
    }
    *inner
        .tips
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = branches
        .iter()
        .map(|b| (b.name.clone(), b.sha.clone()))
        .collect();
    let store = inner.engine.store();
    let mut out = Vec::new();
    // Environments whose branch moved are reconciled whatever the default ref says, so a
    // poisoned commit on their branch is reported on them.
    for record in store.environments()? {
        let tip = record
            .tracked_ref
            .as_ref()
            .and_then(|r| branches.iter().find(|b| &b.name == r));
        if !record.pinned
            && tip.is_some_and(|t| record.desired_commit.as_deref() != Some(t.sha.as_str()))
        {
            out.push((record.name.clone(), Trigger::Poll));
        }
    }
    let loaded = source::load_commit(
        inner.source.as_ref(),
        &inner.options.default_ref,
        &inner.folder,
    )?;
    let stack = match loaded.valid_stack() {
        Ok(stack) => stack,
        Err(first) => {
            let message = format!(
                "{} at {} is not valid; the set of environments is left as it is: {first}",
                loaded.entry,
                &loaded.commit.sha[..12]
            );
            invalid_once(inner, None, &loaded.commit.sha, &message);
            return Ok(out);
        }
    };
    let holder = |name: &str| {
        store
            .environment(name)
            .ok()
            .flatten()
            .filter(|r| r.kind == "generated")
            .and_then(|r| r.tracked_ref)
    };
    let wanted = discover::wanted(stack, &branches, &pulls, &holder);
    let now = now_ms();
    for w in &wanted {
        let existing = store.environment(&w.name)?;
        let record = match existing {
            Some(r) => r,
            None => {
                let record = EnvironmentRecord {
                    name: w.name.clone(),
                    kind: w.kind.as_str().to_string(),
                    stack: stack.name.clone(),
                    repo: inner.repo_label.clone(),
                    tracked_ref: Some(w.tracked_ref.clone()),
                    desired_commit: None,
                    commit: None,
                    hash: None,
                    sync: "out_of_sync".into(),
                    health: "missing".into(),
                    message: None,
                    owner: None,
                    ttl_ms: w
                        .ttl
                        .map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX)),
                    expires_at: w.ttl.map(|t| {
                        now.saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX))
                    }),
                    pinned: false,
                    created_at: now,
                    updated_at: now,
                    definition: Some(w.definition.clone()),
                    protected: false,
                };
                store.upsert_environment(&record)?;
                let what = if w.kind == EnvKind::Generated {
                    format!("for branch `{}`", w.tracked_ref)
                } else {
                    format!("tracking `{}`", w.tracked_ref)
                };
                event(
                    inner,
                    &w.name,
                    "environment.created",
                    &format!("{} created {what}", w.name),
                );
                record
            }
        };
        if record.pinned {
            continue;
        }
        let tip = branches
            .iter()
            .find(|b| b.name == w.tracked_ref)
            .map(|b| b.sha.clone());
        if tip.is_none() || tip != record.desired_commit || record.commit != record.desired_commit {
            out.push((w.name.clone(), Trigger::Poll));
        }
    }
    // Generated environments whose branch no longer matches: destroy them.
    let wanted_names: BTreeSet<&str> = wanted.iter().map(|w| w.name.as_str()).collect();
    for record in store.environments()? {
        if record.kind == "generated" && !wanted_names.contains(record.name.as_str()) {
            let tracked = record.tracked_ref.as_deref().unwrap_or("?");
            let why = if tracked.starts_with("refs/") {
                format!("its pull request is closed or merged ({tracked})")
            } else {
                format!("branch `{tracked}` is gone")
            };
            if let Err(e) = destroy(inner, &record.name, WHO, &why, true) {
                event(inner, &record.name, "destroy.failed", &e.to_string());
            }
        }
    }
    Ok(out)
}

/// Marks `record`'s environment as holding a change back, saying why (an event the first
/// time the reason is seen).
fn hold(inner: &Inner, record: &EnvironmentRecord, why: &str) -> Result<(), ControllerError> {
    let message = format!("held: {why}");
    if record.message.as_deref() != Some(message.as_str()) {
        event(inner, &record.name, "change.held", &message);
    }
    inner.engine.store().set_environment_status(
        &record.name,
        "failed",
        &record.health,
        Some(&message),
        now_ms(),
    )?;
    Ok(())
}

/// Why a `require_pr` environment may not take `prepared`'s commit: it must be the commit a
/// merged pull request made, and that pull request must have met the apply requirements
/// (`approved`: approved when merged). A commit a pull request was applied at with
/// `/slipway apply` (the environment is pinned to it) passed its checks then.
fn unmerged(
    inner: &Inner,
    record: &EnvironmentRecord,
    prepared: &slipway_engine::Prepared,
) -> Result<Option<String>, ControllerError> {
    let sha = prepared.commit.sha.as_str();
    if !prepared.require_pr || record.pinned || record.commit.as_deref() == Some(sha) {
        return Ok(None);
    }
    let short = &sha[..12.min(sha.len())];
    if inner.forge.get().is_none() {
        return Ok(Some(format!(
            "`{}` has `require_pr: true`, which needs a forge ([forge.github], gitlab or gitea) \
             to know which commits came through a merged pull request; commit {short} is not \
             deployed",
            record.name
        )));
    }
    Ok(match inner.engine.store().merged_commit(sha)? {
        Some(m) if m.approved || !prepared.apply_requirements.iter().any(|r| r == "approved") => {
            None
        }
        Some(m) => Some(format!(
            "commit {short} came from #{} merged without an approval, and `{}` requires one \
             (require_pr)",
            m.pull_request, record.name
        )),
        None => Some(format!(
            "commit {short} on `{}` did not arrive through a merged pull request, and `{}` takes \
             only those (require_pr); merge the change through a pull request, or apply it by \
             hand with `slipway apply --env {}`",
            record.tracked_ref.as_deref().unwrap_or("its branch"),
            record.name,
            record.name
        )),
    })
}

/// Destroys `name` under its lock, recording why.
pub(crate) fn destroy(
    inner: &Inner,
    name: &str,
    who: &str,
    why: &str,
    confirm: bool,
) -> Result<(), ControllerError> {
    let engine = &inner.engine;
    if engine.store().environment(name)?.is_none() {
        return Err(ControllerError::NotFound(name.to_string()));
    }
    let lock = engine.lock(name, true, &|| {})?;
    let report = engine.destroy(&lock, who, confirm, &())?;
    if !report.succeeded() {
        return Err(ControllerError::Invalid(format!(
            "some resources of `{name}` could not be deleted; it is marked failed and will be retried"
        )));
    }
    event(
        inner,
        name,
        "environment.destroyed",
        &format!("{name} destroyed: {why}"),
    );
    Ok(())
}

/// The reconcile of one environment: idempotent, safe to re-run after a crash at any line.
pub(crate) fn reconcile(
    inner: &Inner,
    name: &str,
    trigger: Trigger,
) -> Result<Action, ControllerError> {
    let engine = &inner.engine;
    let store = engine.store();
    let Some(record) = store.environment(name)? else {
        return Ok(Action::Done);
    };
    let requeue = Action::Requeue(inner.options.requeue_interval);
    if record.expires_at.is_some_and(|at| at <= now_ms()) {
        destroy(inner, name, WHO, "its time to live has passed", true)?;
        event(
            inner,
            name,
            "environment.expired",
            &format!("{name} expired and was destroyed"),
        );
        return Ok(Action::Done);
    }
    let reference = if record.pinned {
        record.desired_commit.clone()
    } else {
        record.tracked_ref.clone()
    };
    let Some(reference) = reference else {
        return Err(ControllerError::Invalid(format!(
            "`{name}` has no ref to follow"
        )));
    };
    let lock = match engine.lock(name, false, &|| {}) {
        Ok(lock) => lock,
        // Someone (a CLI apply) is working on it: look again shortly.
        Err(EngineError::Locked(_)) => return Ok(Action::Requeue(Duration::from_secs(2))),
        Err(e) => return Err(e.into()),
    };
    // A person asking for a sync wants the branch as it is now, not as of the last poll:
    // fetch, then resolve the ref afresh.
    if trigger == Trigger::Manual && !record.pinned {
        inner.source.fetch()?;
    }
    let tip = if record.pinned || trigger == Trigger::Manual {
        None
    } else {
        inner
            .tips
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&reference)
            .cloned()
    };
    let origin = Origin {
        source: inner.source.as_ref(),
        repo: &inner.repo_label,
        reference: &reference,
        folder: &inner.folder,
        tip: tip.as_deref(),
    };
    let prepared = match engine.prepare(&origin, &target_of(&record)) {
        Ok(p) => p,
        Err(EngineError::Invalid {
            commit,
            diagnostics,
        }) => {
            // A poisoned commit: say why, keep the running version.
            let first = diagnostics
                .iter()
                .find(|d| d.is_error())
                .map(|d| d.to_string())
                .unwrap_or_default();
            let message = format!(
                "commit {} is not valid, so the running version stays: {first}",
                &commit[..12.min(commit.len())]
            );
            store.set_environment_status(
                name,
                "failed",
                &record.health,
                Some(&message),
                now_ms(),
            )?;
            invalid_once(inner, Some(name), &commit, &message);
            return Ok(requeue);
        }
        Err(e) => {
            store.set_environment_status(
                name,
                "failed",
                &record.health,
                Some(&e.to_string()),
                now_ms(),
            )?;
            return Err(e.into());
        }
    };
    if let Some(why) = unmerged(inner, &record, &prepared)? {
        hold(inner, &record, &why)?;
        return Ok(requeue);
    }
    if !prepared.plan.has_changes() {
        if record.sync != "synced" || record.commit.as_deref() != Some(prepared.commit.sha.as_str())
        {
            // Nothing to change, but the record is behind (first sight after a restart).
            let report = engine.apply(
                &lock,
                &prepared,
                inner.source.as_ref(),
                &ApplyOptions {
                    parallelism: 1,
                    who: WHO.into(),
                    swap_exposed: true,
                    confirm_destroy: false,
                },
                &(),
            )?;
            let _ = report;
        }
        return Ok(requeue);
    }
    let same_commit = record.commit.as_deref() == Some(prepared.commit.sha.as_str());
    let drifted: Vec<String> = prepared
        .plan
        .changes
        .iter()
        .filter(|c| {
            c.action != Change::Noop && c.reason.as_deref().is_some_and(|r| r.starts_with("drift:"))
        })
        .map(|c| format!("{}: {}", c.resource, c.reason.as_deref().unwrap_or("")))
        .collect();
    if same_commit && !drifted.is_empty() {
        let message = format!("drift: {}", drifted.join("; "));
        inner.metrics.drift_detected(drifted.len());
        if !prepared.self_heal {
            // Unrepaired drift is seen again on every drift check: one event while it lasts.
            if record.message.as_deref() != Some(message.as_str()) {
                event(
                    inner,
                    name,
                    "drift.detected",
                    &format!("{message} (self_heal is off: not repaired)"),
                );
            }
            store.set_environment_status(
                name,
                "out_of_sync",
                "degraded",
                Some(&message),
                now_ms(),
            )?;
            return Ok(requeue);
        }
        event(
            inner,
            name,
            "drift.detected",
            &format!("{message}; repairing"),
        );
    }
    let parallelism = inner.options.parallelism;
    let applied = engine.apply(
        &lock,
        &prepared,
        inner.source.as_ref(),
        &ApplyOptions {
            parallelism,
            who: WHO.into(),
            // The preview router hides the port change: deploy exposed processes with no
            // downtime.
            swap_exposed: true,
            // Only a person confirms destroying something in a protected environment.
            confirm_destroy: false,
        },
        &(),
    );
    let report = match applied {
        Err(slipway_engine::EngineError::NeedsConfirmation(why)) => {
            // Held, not failed by a fault: nothing was applied, and retrying will not help
            // until a person confirms, so it waits for the next regular pass.
            hold(inner, &record, &why)?;
            return Ok(requeue);
        }
        other => other?,
    };
    if !report.succeeded() {
        return Err(ControllerError::Invalid(format!(
            "apply of `{name}` at {} failed (deployment #{})",
            &prepared.commit.sha[..12],
            report.deployment
        )));
    }
    if same_commit && !drifted.is_empty() {
        inner.metrics.drift_repaired(drifted.len());
        event(
            inner,
            name,
            "drift.repaired",
            &format!("repaired {} resource(s)", drifted.len()),
        );
    }
    // A generated environment lives `ttl` past its last new commit.
    if !same_commit
        && kind_of(&record) == EnvKind::Generated
        && let (Some(ttl), Some(mut fresh)) = (record.ttl_ms, store.environment(name)?)
    {
        fresh.expires_at = Some(now_ms().saturating_add(ttl));
        store.upsert_environment(&fresh)?;
    }
    Ok(requeue)
}

/// Records a new ad-hoc environment (its first deployment is queued by the caller).
pub(crate) fn create_adhoc(
    inner: &Inner,
    request: &CreateEnvironment,
) -> Result<EnvironmentRecord, ControllerError> {
    let name = request.name.as_str();
    if !slipway_core::stack::is_dns_label(name) {
        return Err(ControllerError::Invalid(format!(
            "`{name}` is not a valid environment name: use lowercase letters, digits and `-`, at most 63 characters"
        )));
    }
    let store = inner.engine.store();
    if store.environment(name)?.is_some() {
        return Err(ControllerError::Invalid(format!(
            "environment `{name}` already exists; pick another name or destroy it first"
        )));
    }
    inner.source.fetch()?;
    let loaded = source::load_commit(inner.source.as_ref(), &request.reference, &inner.folder)?;
    let stack = loaded.valid_stack().map_err(|first| {
        ControllerError::Invalid(format!(
            "{} at {} is not valid: {first}",
            loaded.entry, request.reference
        ))
    })?;
    if stack.environments.contains_key(name) {
        return Err(ControllerError::Invalid(format!(
            "`{name}` is an environment of the stack itself; ad-hoc environments need their own name"
        )));
    }
    let definition = match &request.like {
        Some(like) => {
            if !stack.environments.contains_key(like) {
                let known: Vec<&str> = stack.environments.keys().map(String::as_str).collect();
                return Err(ControllerError::Invalid(format!(
                    "--like `{like}`: no such environment in the stack; it defines: {}",
                    known.join(", ")
                )));
            }
            like.clone()
        }
        None => {
            let families: Vec<&String> = stack
                .environments
                .iter()
                .filter(|(_, d)| d.generate.is_some())
                .map(|(n, _)| n)
                .collect();
            match families.as_slice() {
                [only] => (*only).clone(),
                _ => return Err(ControllerError::Invalid("say which environment this one is like with --like (e.g. --like previews or --like prod)".into())),
            }
        }
    };
    let ttl = request.ttl.or(stack.environments[&definition].ttl);
    let now = now_ms();
    let ttl_ms = ttl.map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX));
    let record = EnvironmentRecord {
        name: name.to_string(),
        kind: "adhoc".into(),
        stack: stack.name.clone(),
        repo: inner.repo_label.clone(),
        tracked_ref: Some(request.reference.clone()),
        desired_commit: Some(loaded.commit.sha.clone()),
        commit: None,
        hash: None,
        sync: "out_of_sync".into(),
        health: "missing".into(),
        message: None,
        owner: request.owner.clone(),
        ttl_ms,
        expires_at: ttl_ms.map(|ms| now.saturating_add(ms)),
        pinned: false,
        created_at: now,
        updated_at: now,
        definition: Some(definition),
        protected: false,
    };
    store.upsert_environment(&record)?;
    event(
        inner,
        name,
        "environment.created",
        &format!(
            "{name} created from `{}` by {}",
            request.reference,
            request.owner.as_deref().unwrap_or("someone")
        ),
    );
    Ok(record)
}

fn existing(inner: &Inner, name: &str) -> Result<EnvironmentRecord, ControllerError> {
    inner
        .engine
        .store()
        .environment(name)?
        .ok_or_else(|| ControllerError::NotFound(name.to_string()))
}

pub(crate) fn extend(
    inner: &Inner,
    name: &str,
    by: Duration,
) -> Result<EnvironmentRecord, ControllerError> {
    let mut record = existing(inner, name)?;
    let now = now_ms();
    let by_ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
    record.expires_at = Some(
        record
            .expires_at
            .unwrap_or(now)
            .max(now)
            .saturating_add(by_ms),
    );
    record.updated_at = now;
    inner.engine.store().upsert_environment(&record)?;
    event(
        inner,
        name,
        "environment.extended",
        &format!("{name} now expires {} ms later", by_ms),
    );
    Ok(record)
}

pub(crate) fn pin(
    inner: &Inner,
    name: &str,
    commit: Option<String>,
) -> Result<EnvironmentRecord, ControllerError> {
    let mut record = existing(inner, name)?;
    let sha = match commit {
        Some(reference) => {
            // The ref may have been pushed since the last poll.
            inner.source.fetch()?;
            inner.source.resolve(&reference)?.sha
        }
        None => record.commit.clone().ok_or_else(|| {
            ControllerError::Invalid(format!(
                "`{name}` runs no commit yet; pin it to one with a ref"
            ))
        })?,
    };
    // A protected environment takes only commits that reached its branch (reviews are the
    // forge's branch protection there); a pull request goes to it with `/slipway apply`.
    if record.protected
        && let Some(branch) = record.tracked_ref.clone()
    {
        let tip = inner.source.resolve(&branch)?.sha;
        if !inner.source.is_ancestor(&sha, &tip)? {
            return Err(ControllerError::Invalid(format!(
                "`{name}` is protected and takes only commits on `{branch}`; {} is not in its \
                 history (a pull request goes there with `/slipway apply {name}` once its \
                 requirements are met)",
                &sha[..12]
            )));
        }
    }
    record.pinned = true;
    record.desired_commit = Some(sha.clone());
    record.updated_at = now_ms();
    inner.engine.store().upsert_environment(&record)?;
    event(
        inner,
        name,
        "environment.pinned",
        &format!("{name} pinned to {}", &sha[..12]),
    );
    Ok(record)
}

pub(crate) fn unpin(inner: &Inner, name: &str) -> Result<EnvironmentRecord, ControllerError> {
    let mut record = existing(inner, name)?;
    record.pinned = false;
    record.updated_at = now_ms();
    inner.engine.store().upsert_environment(&record)?;
    event(
        inner,
        name,
        "environment.unpinned",
        &format!(
            "{name} follows `{}` again",
            record.tracked_ref.as_deref().unwrap_or("?")
        ),
    );
    Ok(record)
}
