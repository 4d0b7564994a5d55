//! The blocking half of the controller: discovery and the reconcile of one environment. Every
//! function here runs on a blocking thread and talks to the engine directly.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use slipway_core::plan::Action as Change;
use slipway_core::vocab::{EnvKind, EventKind, Health, Reason, SyncState};
use slipway_engine::{ApplyOptions, EngineError, Origin, source};
use slipway_state::{EnvironmentRecord, now_ms};

use crate::{ControllerError, CreateEnvironment, Inner, Trigger, discover, target_of};

/// What to do after a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Look again after this long.
    Requeue(Duration),
    /// The environment is gone; forget it.
    Done,
}

const WHO: &str = "slipway-controller";

fn event(inner: &Inner, env: &str, kind: EventKind, message: &str) {
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
        .last_event(env, EventKind::CommitInvalid)
        .ok()
        .flatten()
        .is_some_and(|e| e.data.get("commit").and_then(|c| c.as_str()) == Some(commit));
    if !said {
        let data = json!({ "commit": commit });
        let _ = store.record_event(env, EventKind::CommitInvalid, message, &data, now_ms());
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
            let reference = setup.forge.pr_head_ref(pr.number as u64);
            if !pr.preview_allowed {
                // A fork's new head nobody approved yet: a preview already running stays, at
                // the commit that was approved (reconcile holds the new one).
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
                continue;
            }
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
    let loaded = source::load_tracked(
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
            .filter(|r| r.kind == EnvKind::Generated)
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
                    kind: w.kind,
                    stack: stack.name.clone(),
                    repo: inner.repo_label.clone(),
                    tracked_ref: Some(w.tracked_ref.clone()),
                    desired_commit: None,
                    commit: None,
                    hash: None,
                    sync: SyncState::OutOfSync,
                    health: Health::Missing,
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
                    EventKind::EnvironmentCreated,
                    &format!("{} created {what}", w.name),
                );
                record
            }
        };
        if record.kind != w.kind {
            // Something else holds the name (an ad-hoc `prod` made before the stack defined
            // it, a generated environment where a static one now stands): it is never
            // adopted as the other, which would hand it prod's rules, or prod's resources to
            // a branch. Reported once; a person destroys the impostor.
            let why = format!(
                "held: the stack defines `{}` as a {} environment, but an environment of kind \
                 `{}` holds the name{}; it is not adopted: destroy it (`slipway env destroy {}`) \
                 so that the stack's `{}` can be made",
                w.name,
                w.kind.as_str(),
                record.kind,
                record
                    .owner
                    .as_deref()
                    .map(|o| format!(" (made by {o})"))
                    .unwrap_or_default(),
                w.name,
                w.name
            );
            // The reconcile of the impostor reports the same (the engine refuses it).
            if !record
                .message
                .as_deref()
                .is_some_and(|m| m.contains("not adopted"))
            {
                event(inner, &w.name, EventKind::EnvironmentConflict, &why);
                store.set_environment_status(
                    &w.name,
                    SyncState::Failed,
                    record.health,
                    Some(&why),
                    now_ms(),
                )?;
            }
            continue;
        }
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
        if record.kind == EnvKind::Generated
            && !wanted_names.contains(record.name.as_str())
            && let Err(e) = destroy(inner, &record.name, WHO, true)
        {
            event(
                inner,
                &record.name,
                EventKind::DestroyFailed,
                &e.to_string(),
            );
        }
    }
    Ok(out)
}

/// Marks `record`'s environment as holding a change back, saying why (an event the first
/// time the reason is seen).
fn hold(inner: &Inner, record: &EnvironmentRecord, why: &str) -> Result<(), ControllerError> {
    let message = format!("held: {why}");
    if record.message.as_deref() != Some(message.as_str()) {
        event(inner, &record.name, EventKind::ChangeHeld, &message);
    }
    inner.engine.store().set_environment_status(
        &record.name,
        SyncState::Failed,
        record.health,
        Some(&message),
        now_ms(),
    )?;
    Ok(())
}

/// What a generated environment previewing a pull request may run.
enum PreviewHead {
    /// It previews no pull request: it follows its ref.
    NotAPullRequest,
    /// This commit, the pull request's head as the forge announced it and someone vouched
    /// for (anyone's branch in the repository, `fork_allow`, `/slipway preview`).
    Approved(String),
    /// Its head is a fork's code nobody vouched for yet: the running version stays.
    Unapproved(String),
}

fn preview_head(inner: &Inner, record: &EnvironmentRecord) -> Result<PreviewHead, ControllerError> {
    let (Some(setup), Some(reference)) = (inner.forge.get(), record.tracked_ref.as_deref()) else {
        return Ok(PreviewHead::NotAPullRequest);
    };
    if record.kind != EnvKind::Generated || !reference.starts_with("refs/") {
        return Ok(PreviewHead::NotAPullRequest);
    }
    let pull = inner
        .engine
        .store()
        .pull_requests(Some("open"))?
        .into_iter()
        .find(|p| setup.forge.pr_head_ref(p.number as u64) == reference);
    Ok(match pull {
        Some(p) if p.preview_allowed => PreviewHead::Approved(p.head_sha),
        Some(p) => PreviewHead::Unapproved(format!(
            "#{} from a fork moved to {}, which nobody approved for a preview yet; the approved \
             commit keeps running until a maintainer says `/slipway preview` again",
            p.number,
            &p.head_sha[..12.min(p.head_sha.len())]
        )),
        // Closed: discovery destroys it; meanwhile nothing new runs.
        None => PreviewHead::Unapproved(format!(
            "the pull request of `{reference}` is not open; nothing new is deployed"
        )),
    })
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
    let tracked = record.tracked_ref.as_deref();
    Ok(match inner.engine.store().merged_commit(sha)? {
        // A pull request merged into another branch (a scratch one its author merges alone),
        // whose merge commit was then pushed on to this branch, is not this branch's gate.
        Some(m) if m.base_ref.is_none() || m.base_ref.as_deref() != tracked => Some(format!(
            "commit {short} came from #{} merged into {}, not into `{}`, and `{}` takes only \
             merges of pull requests into the branch it tracks (require_pr)",
            m.pull_request,
            m.base_ref
                .as_deref()
                .map_or_else(|| "a branch not recorded".to_string(), |b| format!("`{b}`")),
            tracked.unwrap_or("its branch"),
            record.name
        )),
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
             only those (require_pr){}; merge the change through a pull request, or apply it by \
             hand with `slipway apply --env {}`",
            record.tracked_ref.as_deref().unwrap_or("its branch"),
            record.name,
            if prepared.declared.require_pr {
                ""
            } else {
                // The commit's own `require_pr: false` is in force only once it is deployed.
                ", which is in force until a commit that lowers it is deployed"
            },
            record.name
        )),
    })
}

/// Destroys `name` under its lock. The engine records the one `environment.destroyed` event.
pub(crate) fn destroy(
    inner: &Inner,
    name: &str,
    who: &str,
    confirm: bool,
) -> Result<(), ControllerError> {
    let engine = &inner.engine;
    if engine.store().environment(name)?.is_none() {
        return Err(ControllerError::NotFound(name.to_string()));
    }
    let lock = engine.lock(name, true, &|| {})?;
    let options = slipway_engine::DestroyOptions::new(who, confirm.into());
    let report = engine.destroy(&lock, &options, &())?;
    if !report.succeeded() {
        return Err(ControllerError::Invalid(format!(
            "some resources of `{name}` could not be deleted; it is marked failed and will be retried"
        )));
    }
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
    if record.expires_at.is_some_and(|at| at <= now_ms()) && !expires(&record) {
        // A static environment has no time to live (`extend` refuses it); an expiry in its
        // record came from elsewhere (an older version, a hand-edited store). Destroying it
        // would need a person's confirmation when it is protected, and the controller never
        // gives one: the expiry is held, reported, and dropped; it keeps running.
        let why = if record.protected {
            format!(
                "`{name}` reached the expiry in its record, but it is protected: destroying it \
                 needs a person's confirmation (`slipway env destroy {name} --confirm-destroy \
                 {name}`), so it is kept and the expiry dropped (static environments do not \
                 expire)"
            )
        } else {
            format!(
                "`{name}` reached the expiry in its record, but static environments do not \
                 expire: it is kept and the expiry dropped (`slipway env destroy {name}` \
                 destroys it)"
            )
        };
        event(inner, name, EventKind::ExpiryHeld, &why);
        let mut fresh = record.clone();
        fresh.expires_at = None;
        fresh.ttl_ms = None;
        fresh.message = Some(format!("held: {why}"));
        fresh.sync = SyncState::Failed;
        fresh.updated_at = now_ms();
        store.upsert_environment(&fresh)?;
        return Ok(requeue);
    }
    if record.expires_at.is_some_and(|at| at <= now_ms()) {
        destroy(inner, name, WHO, false)?;
        event(
            inner,
            name,
            EventKind::EnvironmentExpired,
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
    // A pull request's preview runs only the head the controller approved for it (a fork's
    // new push waits for another `/slipway preview`), never whatever its ref points at now.
    let approved = match preview_head(inner, &record)? {
        PreviewHead::NotAPullRequest => None,
        PreviewHead::Approved(sha) => Some(sha),
        PreviewHead::Unapproved(why) => {
            hold(inner, &record, &why)?;
            return Ok(requeue);
        }
    };
    let known = if approved.is_some() {
        approved
    } else if record.pinned || trigger == Trigger::Manual {
        None
    } else {
        inner
            .tips
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&reference)
            .cloned()
    };
    // The ref it follows is its branch, never a tag of the same name (anyone allowed to push
    // a tag `main` would otherwise replace prod's branch on the next sync).
    let tip = match known {
        Some(sha) => Some(sha),
        None if record.pinned => None,
        None => match inner.source.resolve_tracked(&reference) {
            Ok(commit) => Some(commit.sha),
            Err(e) => {
                let message = e.to_string();
                store.set_environment_status(
                    name,
                    SyncState::Failed,
                    record.health,
                    Some(&message),
                    now_ms(),
                )?;
                return Err(e.into());
            }
        },
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
                SyncState::Failed,
                record.health,
                Some(&message),
                now_ms(),
            )?;
            invalid_once(inner, Some(name), &commit, &message);
            return Ok(requeue);
        }
        Err(e) => {
            let message = e.to_string();
            // An impostor under a name of the stack (see `discover`): reported once, by
            // whichever of the two sees it first.
            if message.contains("not adopted")
                && !record
                    .message
                    .as_deref()
                    .is_some_and(|m| m.contains("not adopted"))
            {
                event(inner, name, EventKind::EnvironmentConflict, &message);
            }
            store.set_environment_status(
                name,
                SyncState::Failed,
                record.health,
                Some(&message),
                now_ms(),
            )?;
            return Err(e.into());
        }
    };
    if let Some(why) = unmerged(inner, &record, &prepared)? {
        hold(inner, &record, &why)?;
        return Ok(requeue);
    }
    // Only a person confirms destroying something in a protected environment, or removing
    // its protection: held, not failed by a fault (retrying will not help until then).
    if let Some(why) = slipway_engine::apply::held_for_confirmation(&prepared) {
        hold(inner, &record, &why)?;
        return Ok(requeue);
    }
    if !prepared.plan.has_changes() {
        if record.sync != SyncState::Synced
            || record.commit.as_deref() != Some(prepared.commit.sha.as_str())
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
                    confirm_destroy: slipway_engine::Confirmation::Absent,
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
        .filter(|c| c.action != Change::Noop && c.reason.as_ref().is_some_and(Reason::is_drift))
        .filter_map(|c| Some(format!("{}: {}", c.resource, c.reason.as_ref()?)))
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
                    EventKind::DriftDetected,
                    &format!("{message} (self_heal is off: not repaired)"),
                );
            }
            store.set_environment_status(
                name,
                SyncState::OutOfSync,
                Health::Degraded,
                Some(&message),
                now_ms(),
            )?;
            return Ok(requeue);
        }
        event(
            inner,
            name,
            EventKind::DriftDetected,
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
            confirm_destroy: slipway_engine::Confirmation::Absent,
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
            EventKind::DriftRepaired,
            &format!("repaired {} resource(s)", drifted.len()),
        );
    }
    // A generated environment lives `ttl` past its last new commit.
    if !same_commit
        && record.kind == EnvKind::Generated
        && let (Some(ttl), Some(mut fresh)) = (record.ttl_ms, store.environment(name)?)
    {
        fresh.expires_at = Some(now_ms().saturating_add(ttl));
        store.upsert_environment(&fresh)?;
    }
    Ok(requeue)
}

/// Whether `record`'s environment may expire: generated and ad-hoc ones, never a static or
/// protected one.
fn expires(record: &EnvironmentRecord) -> bool {
    record.kind != EnvKind::Static && !record.protected
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
        return Err(ControllerError::Conflict(format!(
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
    // The names and families that count are the default branch's: the ref is anyone's
    // branch, and its `slipway.yaml` could leave `prod` out or call it a family.
    let main = source::load_tracked(
        inner.source.as_ref(),
        &inner.options.default_ref,
        &inner.folder,
    )?;
    let main_stack = main.valid_stack().map_err(|first| {
        ControllerError::Invalid(format!(
            "{} at the default ref `{}` is not valid, so the name `{name}` cannot be checked \
             against the environments it defines; fix it first: {first}",
            main.entry, inner.options.default_ref
        ))
    })?;
    check_adhoc_name(name, main_stack, stack)?;
    let families = |s: &slipway_core::stack::Stack| -> Vec<String> {
        s.environments
            .iter()
            .filter(|(_, d)| d.generate.is_some())
            .map(|(n, _)| n.clone())
            .collect()
    };
    let at_ref = families(stack);
    let allowed: Vec<String> = families(main_stack)
        .into_iter()
        .filter(|f| at_ref.contains(f))
        .collect();
    let listed = if allowed.is_empty() {
        "the stack has no generated family (`generate:`), so ad-hoc environments cannot be made"
            .to_string()
    } else {
        format!("its families are: {}", allowed.join(", "))
    };
    let definition = match &request.like {
        Some(like) if allowed.contains(like) => like.clone(),
        Some(like) if main_stack.environments.contains_key(like) => {
            // A copy of a static environment would take its variables and its secret
            // overrides (prod's passwords) and hand them to whoever asked.
            return Err(ControllerError::Invalid(format!(
                "--like `{like}`: `{like}` is a static environment, and ad-hoc environments take \
                 their variables and secrets only from a generated family; {listed}"
            )));
        }
        Some(like) => {
            return Err(ControllerError::Invalid(format!(
                "--like `{like}`: no such family in the stack of the default ref and of \
                 `{}`; {listed}",
                request.reference
            )));
        }
        None => match allowed.as_slice() {
            [only] => only.clone(),
            _ => {
                return Err(ControllerError::Invalid(format!(
                    "say which family this environment is like with --like; {listed}"
                )));
            }
        },
    };
    let limits = &inner.engine.config().environments;
    let max = limits.max_ttl();
    let ttl = match request.ttl {
        Some(asked) if asked > max => {
            return Err(ControllerError::Invalid(format!(
                "--ttl {} is longer than the most an ad-hoc environment may live, {} \
                 ([environments] max_ttl in the engine configuration)",
                humantime::format_duration(asked),
                humantime::format_duration(max)
            )));
        }
        Some(asked) => asked,
        None => stack.environments[&definition]
            .ttl
            .map_or_else(|| limits.default_ttl(), |t| t.min(max)),
    };
    let ttl = Some(ttl);
    let now = now_ms();
    let ttl_ms = ttl.map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX));
    let record = EnvironmentRecord {
        name: name.to_string(),
        kind: EnvKind::Adhoc,
        stack: stack.name.clone(),
        repo: inner.repo_label.clone(),
        tracked_ref: Some(request.reference.clone()),
        desired_commit: Some(loaded.commit.sha.clone()),
        commit: None,
        hash: None,
        sync: SyncState::OutOfSync,
        health: Health::Missing,
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
        EventKind::EnvironmentCreated,
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

/// Pushes the expiry of a generated or ad-hoc environment `by` later, never past
/// `[environments] max_ttl` from now. Static environments have no time to live: giving them
/// one would let the controller destroy them (prod) without anyone's confirmation.
pub(crate) fn extend(
    inner: &Inner,
    name: &str,
    by: Duration,
) -> Result<EnvironmentRecord, ControllerError> {
    let mut record = existing(inner, name)?;
    if !expires(&record) {
        return Err(ControllerError::Conflict(format!(
            "`{name}` is a static environment: it has no time to live to extend, and never \
             expires; only generated and ad-hoc environments do"
        )));
    }
    let max = inner.engine.config().environments.max_ttl();
    if by > max {
        return Err(ControllerError::Invalid(format!(
            "--by {} is longer than the most an environment may be extended, {} from now \
             ([environments] max_ttl in the engine configuration)",
            humantime::format_duration(by),
            humantime::format_duration(max)
        )));
    }
    let now = now_ms();
    let by_ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
    let max_ms = i64::try_from(max.as_millis()).unwrap_or(i64::MAX);
    let wanted = record
        .expires_at
        .unwrap_or(now)
        .max(now)
        .saturating_add(by_ms);
    let limit = now.saturating_add(max_ms);
    let at = wanted.min(limit);
    record.expires_at = Some(at);
    record.updated_at = now;
    inner.engine.store().upsert_environment(&record)?;
    let capped = if wanted > limit {
        format!(
            " (capped at [environments] max_ttl, {}, from now)",
            humantime::format_duration(max)
        )
    } else {
        String::new()
    };
    event(
        inner,
        name,
        EventKind::EnvironmentExtended,
        &format!(
            "{name} now expires in {}{capped}",
            humantime::format_duration(Duration::from_secs(((at - now).max(0) / 1000) as u64))
        ),
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
    pin_gate(inner, &record, &sha)?;
    record.pinned = true;
    record.desired_commit = Some(sha.clone());
    record.updated_at = now_ms();
    inner.engine.store().upsert_environment(&record)?;
    event(
        inner,
        name,
        EventKind::EnvironmentPinned,
        &format!("{name} pinned to {}", &sha[..12]),
    );
    Ok(record)
}

/// Whether `record`'s environment may be pinned (or rolled back) to `sha`. Under `protected`
/// or `require_pr` it takes only commits that reached its branch (reviews are the forge's
/// branch protection there; a pull request goes to it with `/slipway apply`); under
/// `require_pr` only a commit a pull request merged into that branch made (approved, when
/// the apply requirements say so) or one it ran itself before (a rollback): a pin must not
/// be a way around the gate the reconcile applies to its branch.
fn pin_gate(inner: &Inner, record: &EnvironmentRecord, sha: &str) -> Result<(), ControllerError> {
    let name = record.name.as_str();
    let Some(branch) = record.tracked_ref.clone() else {
        return Ok(());
    };
    if record.kind != EnvKind::Static {
        return Ok(());
    }
    // The branch itself, never a tag named like it.
    let tip = inner.source.resolve_tracked(&branch)?.sha;
    let rules = pin_rules(inner, record, &[&tip, sha])?;
    if !rules.protected && !rules.require_pr {
        return Ok(());
    }
    let short = &sha[..12.min(sha.len())];
    let why = match (rules.protected, rules.require_pr) {
        (true, true) => "protected and has `require_pr: true`",
        (true, false) => "protected",
        _ => "has `require_pr: true`",
    };
    if !inner.source.is_ancestor(sha, &tip)? {
        return Err(ControllerError::Invalid(format!(
            "`{name}` is {why}, and takes only commits on `{branch}`; {short} is not in its \
             history (a pull request goes there with `/slipway apply {name}` once its \
             requirements are met)"
        )));
    }
    if !rules.require_pr {
        return Ok(());
    }
    let store = inner.engine.store();
    if record.commit.as_deref() == Some(sha)
        || store.deployed_commit(name, sha, record.created_at)?
    {
        return Ok(());
    }
    let needs_approval = rules.apply_requirements.iter().any(|r| r == "approved");
    match store.merged_commit(sha)? {
        Some(m)
            if m.base_ref.as_deref() == Some(branch.as_str())
                && (m.approved || !needs_approval) =>
        {
            Ok(())
        }
        _ => Err(ControllerError::Invalid(format!(
            "`{name}` has `require_pr: true`: it is pinned or rolled back only to a commit an \
             {}pull request merged into `{branch}` made, or one it ran before; {short} is \
             neither (require_pr). Merge the change through a pull request",
            if needs_approval { "approved " } else { "" }
        ))),
    }
}

/// The rules a pin of `record`'s static environment is judged by: those in force, and those
/// the commits `at` (its branch's tip, the commit pinned) declare, the stronger of each.
/// Before its first deployment nothing is in force, and a pin must not escape what its
/// branch asks for.
fn pin_rules(
    inner: &Inner,
    record: &EnvironmentRecord,
    at: &[&str],
) -> Result<slipway_engine::Rules, ControllerError> {
    let definition = record.definition.as_deref().unwrap_or(&record.name);
    let origin = |sha| Origin {
        source: inner.source.as_ref(),
        repo: &inner.repo_label,
        reference: sha,
        folder: &inner.folder,
        tip: Some(sha),
    };
    let mut rules = inner
        .engine
        .rules_in_force(&origin(at[0]), &record.name, definition)?
        .unwrap_or_default();
    rules.protected |= record.protected;
    for sha in at {
        let cached = inner.engine.load(&origin(sha))?;
        if let Some(def) = cached
            .loaded
            .valid_stack()
            .ok()
            .and_then(|s| s.environments.get(definition))
        {
            rules = rules.stronger(&slipway_engine::Rules::declared(def, EnvKind::Static));
        }
    }
    Ok(rules)
}

pub(crate) fn unpin(inner: &Inner, name: &str) -> Result<EnvironmentRecord, ControllerError> {
    let mut record = existing(inner, name)?;
    record.pinned = false;
    record.updated_at = now_ms();
    inner.engine.store().upsert_environment(&record)?;
    event(
        inner,
        name,
        EventKind::EnvironmentUnpinned,
        &format!(
            "{name} follows `{}` again",
            record.tracked_ref.as_deref().unwrap_or("?")
        ),
    );
    Ok(record)
}

/// Refuses an ad-hoc environment name that belongs to something else: an environment or
/// family of the default branch's stack (or of the ref's own), or a generated environment's
/// pattern (`pr-*`, `br-*`), so that an ad-hoc environment can never stand in for one of them.
fn check_adhoc_name(
    name: &str,
    main_stack: &slipway_core::stack::Stack,
    stack: &slipway_core::stack::Stack,
) -> Result<(), ControllerError> {
    if main_stack.environments.contains_key(name) || stack.environments.contains_key(name) {
        return Err(ControllerError::Conflict(format!(
            "`{name}` is an environment of the stack itself; ad-hoc environments need their \
             own name"
        )));
    }
    for prefix in ["pr-", "br-"] {
        if name.starts_with(prefix) {
            return Err(ControllerError::Conflict(format!(
                "`{name}` starts with `{prefix}`, which names generated environments (pull \
                 requests and branches); ad-hoc environments need another name"
            )));
        }
    }
    Ok(())
}
