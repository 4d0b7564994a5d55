//! The reconcile of one environment: idempotent, safe to re-run after a crash at any line. It
//! runs on a blocking thread and talks to the engine directly.

use slipway_core::EnvName;
use std::time::Duration;

use serde_json::json;
use slipway_core::plan::Action as Change;
use slipway_core::render::EnvKind;
use slipway_core::vocab::{Activity, EventKind, Health, Reason, SyncState};
use slipway_engine::{ApplyOptions, Confirmation, EngineError, Origin};
use slipway_state::EnvironmentRecord;

use crate::{ControllerError, DestroyOptions, Inner, Trigger, short, target_of};

/// What to do after a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Look again after this long.
    Requeue(Duration),
    /// The environment is gone; forget it.
    Done,
    /// Another operation (a CLI apply) holds the environment: the same request again after
    /// [`BUSY_RETRY`].
    Busy,
    /// The environment was asked to follow something else while this reconcile decided what
    /// to apply (a pull request pinned it): nothing was applied; the same request again now.
    Superseded,
}

/// How soon a reconcile that found its environment busy looks again.
pub(crate) const BUSY_RETRY: Duration = Duration::from_secs(2);

pub(crate) const WHO: &str = "slipway-controller";

pub(crate) fn event(inner: &Inner, env: &EnvName, kind: EventKind, message: &str) {
    event_with(inner, env, kind, message, &json!({}));
}

/// [`event`], with `data` for programs.
pub(crate) fn event_with(
    inner: &Inner,
    env: &EnvName,
    kind: EventKind,
    message: &str,
    data: &serde_json::Value,
) {
    let _ = inner
        .engine
        .store()
        .record_event(Some(env), kind, message, data, inner.now());
}

/// Records that `record`'s environment expires now, with the commit it was at: discovery does
/// not make a generated environment again for that same commit (`refresh`), so an expired
/// preview stays gone until its branch or pull request moves. Written before the destroy, so
/// that no refresh in between makes it again.
pub(crate) fn expired(inner: &Inner, record: &EnvironmentRecord, message: &str) {
    let _ = inner.engine.store().record_event(
        Some(&record.name),
        EventKind::EnvironmentExpired,
        message,
        &json!({ "commit": record.desired_commit }),
        inner.now(),
    );
}

/// Something about an environment (or, with none, the whole repository) that every poll and
/// drift tick sees again until it changes: one event says it, the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause<'a> {
    /// This commit does not validate (`commit.invalid`).
    InvalidCommit(&'a str),
    /// An environment of another kind, made at this time, holds a name the stack defines
    /// (`environment.conflict`); a new impostor is a new cause.
    NotAdopted {
        /// When the environment that holds the name was made.
        holder_created: i64,
    },
}

impl Cause<'_> {
    fn kind(&self) -> EventKind {
        match self {
            Cause::InvalidCommit(_) => EventKind::CommitInvalid,
            Cause::NotAdopted { .. } => EventKind::EnvironmentConflict,
        }
    }

    fn data(&self) -> serde_json::Value {
        match self {
            Cause::InvalidCommit(commit) => json!({ "commit": commit }),
            Cause::NotAdopted { holder_created } => json!({ "holder_created": holder_created }),
        }
    }
}

/// Records `message` as an event about `cause` on `env` (engine-wide when `None`), unless the
/// last event of its kind there was already about the same cause. Whether it recorded it.
pub(crate) fn report_once(
    inner: &Inner,
    env: Option<&EnvName>,
    cause: Cause<'_>,
    message: &str,
) -> bool {
    let store = inner.engine.store();
    let data = cause.data();
    let said = store
        .last_event(env, cause.kind())
        .ok()
        .flatten()
        .is_some_and(|e| e.data == data);
    if !said {
        let _ = store.record_event(env, cause.kind(), message, &data, inner.now());
    }
    !said
}

/// Marks `record`'s environment failed with `message` (what `slipway status` shows), its
/// health as it was.
pub(crate) fn mark_failed(
    inner: &Inner,
    record: &EnvironmentRecord,
    message: &str,
) -> Result<(), ControllerError> {
    let message = shown(inner, &record.name, message);
    inner.engine.store().set_environment_status(
        &record.name,
        SyncState::Failed,
        record.health,
        Some(&message),
        inner.now(),
    )?;
    Ok(())
}

/// `message` about `env` as it may be shown: what a provider or a cluster said may quote a
/// value the environment keeps secret, and an environment's message and events are shown to
/// every viewer, and quoted in pull requests' replies.
pub(crate) fn shown(inner: &Inner, env: &EnvName, message: &str) -> String {
    match inner.engine.redactor(env) {
        Ok(redactor) => redactor.redact(message),
        // Not to be shown unredacted, and the failure still recorded.
        Err(e) => format!(
            "failed; its message is withheld, as the environment's secret values cannot be \
             read to redact it: {e}"
        ),
    }
}

/// Marks `record`'s environment as holding a change back, saying why (a `change.held` event
/// the first time the reason is seen, with `data` for programs: its `reason` and details).
fn hold(
    inner: &Inner,
    record: &EnvironmentRecord,
    why: &str,
    data: serde_json::Value,
) -> Result<(), ControllerError> {
    let message = format!("held: {why}");
    if record.message.as_deref() != Some(message.as_str()) {
        event_with(inner, &record.name, EventKind::ChangeHeld, &message, &data);
    }
    mark_failed(inner, record, &message)
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
    // Pinned (a person's pin or rollback, to stop a bad head): it runs its pin, not the
    // pull request's head, until unpinned.
    if record.kind != EnvKind::Generated || !reference.starts_with("refs/") || record.pinned {
        return Ok(PreviewHead::NotAPullRequest);
    }
    // The one pull request whose head ref this is (`refs/pull/N/head`,
    // `refs/merge-requests/N/head`), read by its number rather than by a scan of every open
    // one on every reconcile.
    let number = reference
        .split('/')
        .find_map(|part| part.parse::<u64>().ok())
        .filter(|n| setup.forge.pr_head_ref(*n) == reference);
    let pull = match number {
        Some(n) => inner
            .engine
            .store()
            .pull_request(n as i64)?
            .filter(|p| p.state == "open"),
        None => None,
    };
    Ok(match pull {
        Some(p) if p.preview_allowed => PreviewHead::Approved(p.head_sha),
        Some(p) => PreviewHead::Unapproved(format!(
            "#{} from a fork moved to {}, which nobody approved for a preview yet; the approved \
             commit keeps running until a maintainer says `/slipway preview` again",
            p.number,
            &p.head_sha[..12.min(p.head_sha.len())]
        )),
        // Closed: discovery marks it, and a worker destroys it; meanwhile nothing new runs.
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

/// Destroys `name` under its lock, recording why.
pub(crate) fn destroy(
    inner: &Inner,
    name: &EnvName,
    options: &DestroyOptions,
    why: &str,
) -> Result<(), ControllerError> {
    destroy_if(inner, name, options, why, &|| Ok(true), &|| {}).map(drop)
}

/// [`destroy`], if `still` agrees when it is done: a queued environment's as it leaves the
/// queue, any other's once its lock is held, deciding from what holds then (a request or an
/// extension that came while the lock was awaited calls an expiry off). `announce` runs once,
/// right before (an expiry's event). Whether it was destroyed.
pub(crate) fn destroy_if(
    inner: &Inner,
    name: &EnvName,
    options: &DestroyOptions,
    why: &str,
    still: &dyn Fn() -> Result<bool, ControllerError>,
    announce: &dyn Fn(),
) -> Result<bool, ControllerError> {
    let engine = &inner.engine;
    let Some(record) = engine.store().environment(name)? else {
        return Err(ControllerError::NotFound(name.to_string()));
    };
    // A destroy that failed waits for its backoff, and is announced once; a person's asks now.
    let failed_before = lock_failures(inner).get(name).copied();
    if let Some(failures) = failed_before
        && failures.retry_at > inner.now()
        && options.who == WHO
    {
        return Err(failures.error(name));
    }
    let announce = || {
        if failed_before.is_none() {
            announce();
        }
    };
    let announced = std::cell::Cell::new(false);
    let announce = || {
        if !announced.replace(true) {
            announce();
        }
    };
    // Still waiting for a slot: nothing of it exists but its record, which leaves the queue
    // (those behind it move up). Had it just got its slot, it is destroyed as any other.
    if record.activity == Activity::Queued {
        if !still()? {
            return Ok(false);
        }
        announce();
        if leave_queue(inner, name, why)? {
            return Ok(true);
        }
    }
    let lock = engine.lock(name, slipway_engine::LockWait::Block(&|| {}))?;
    if !still()? {
        return Ok(false);
    }
    announce();
    let options = DestroyOptions {
        reason: Some(why.to_string()),
        ..options.clone()
    };
    let report = engine.destroy(&lock, &options, &())?;
    drop(lock);
    if !report.succeeded() {
        let now = inner.now();
        let failures = Failures::after(failed_before, now);
        lock_failures(inner).insert(name.clone(), failures);
        let next = if options.who == WHO {
            let wait = failures.retry_at.saturating_sub(now) / 1000;
            format!("tried again in {wait} s")
        } else {
            "run it again".to_string()
        };
        event(
            inner,
            name,
            EventKind::DestroyFailed,
            &format!(
                "destroying {name} ({why}) failed: some resources could not be deleted; {next}"
            ),
        );
        return Err(failures.error(name));
    }
    lock_failures(inner).remove(name);
    // A slot freed: the first queued environment it fits takes it now (and if this process
    // dies first, the next refresh gives it).
    if crate::slots::capped(&record) {
        crate::slots::fill_now(inner);
    }
    Ok(true)
}

/// Takes `name` out of its family's queue of environments waiting for a slot (nothing of it
/// exists but its record, so nothing runs): whether it was still waiting there.
pub(crate) fn leave_queue(
    inner: &Inner,
    name: &EnvName,
    why: &str,
) -> Result<bool, ControllerError> {
    if !inner.engine.store().leave_queue(name)? {
        return Ok(false);
    }
    event(
        inner,
        name,
        EventKind::EnvironmentDestroyed,
        &format!("{name} left the queue before it ran: {why}"),
    );
    if let Err(e) = crate::slots::queue_moved(inner, &[]) {
        tracing::warn!(error = %e, "queueing the plan comments of queued previews failed");
    }
    Ok(true)
}

/// Destroys of one environment that failed in a row (see `Inner::destroy_failures`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Failures {
    /// How many.
    count: u32,
    /// When the next is tried (ms since the epoch, the controller's clock).
    retry_at: i64,
}

impl Failures {
    /// The first wait; each failure doubles it, up to [`Failures::LONGEST`].
    const FIRST: Duration = Duration::from_secs(30);
    const LONGEST: Duration = Duration::from_secs(3600);

    /// After another failure at `now`, following `before`.
    fn after(before: Option<Failures>, now: i64) -> Failures {
        let count = before.map_or(1, |b| b.count.saturating_add(1));
        let wait = Self::FIRST
            .saturating_mul(1 << (count - 1).min(10))
            .min(Self::LONGEST);
        Failures {
            count,
            retry_at: now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)),
        }
    }

    /// What the reconcile says meanwhile: the same words until it succeeds (the error
    /// policy records a message once while it lasts).
    fn error(self, name: &EnvName) -> ControllerError {
        ControllerError::Invalid(format!(
            "some resources of `{name}` could not be deleted; it is marked failed and tried \
             again with backoff (up to an hour apart)"
        ))
    }
}

fn lock_failures(
    inner: &Inner,
) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<EnvName, Failures>> {
    inner
        .destroy_failures
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The reconcile of one environment: idempotent, safe to re-run after a crash at any line.
pub(crate) fn reconcile(
    inner: &Inner,
    name: &EnvName,
    trigger: Trigger,
) -> Result<Action, ControllerError> {
    let engine = &inner.engine;
    let store = engine.store();
    let Some(record) = store.environment(name)? else {
        return Ok(Action::Done);
    };
    let requeue = Action::Requeue(inner.options.requeue_interval);
    if record.expires_at.is_some_and(|at| at <= inner.now()) && !expires(&record) {
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
        // Read and written in one transaction: the record read above, before any lock, may be
        // behind (a pin, a sleep since), and writing it whole would undo that.
        let now = inner.now();
        store.modify_environment(name, |fresh| {
            fresh.expires_at = None;
            fresh.ttl_ms = None;
            fresh.message = Some(format!("held: {why}"));
            fresh.sync = SyncState::Failed;
            fresh.updated_at = now;
        })?;
        return Ok(requeue);
    }
    if record.expires_at.is_some_and(|at| at <= inner.now()) {
        // Never confirmed: a protected environment does not expire (see above).
        let options = DestroyOptions::new(WHO, Confirmation::Absent);
        // Looked at again under the lock: an extension while the destroy waited for it (an
        // apply held it) moved the expiry, and the reconcile goes on.
        let still = || -> Result<bool, ControllerError> {
            Ok(store.environment(name)?.is_some_and(|now| {
                now.expires_at.is_some_and(|at| at <= inner.now()) && expires(&now)
            }))
        };
        let announce = || {
            if let Ok(Some(now)) = store.environment(name) {
                expired(inner, &now, &format!("{name} expired and was destroyed"));
            }
        };
        let why = "its time to live has passed";
        if destroy_if(inner, name, &options, why, &still, &announce)? {
            return Ok(Action::Done);
        }
    }
    // Its branch is gone, or its pull request closed (the last discovery said): destroyed,
    // unless the branch came back while the destroy waited for the lock.
    let unwanted = |name: &EnvName| {
        let marked = inner
            .unwanted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()?;
        let back = marked.gone.is_some_and(|gone| {
            inner
                .tips
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains_key(&gone)
        });
        (!back).then_some(marked.why)
    };
    if record.kind == EnvKind::Generated
        && let Some(why) = unwanted(name)
    {
        // A generated environment is never protected: nothing here needs a person.
        let options = DestroyOptions::new(WHO, Confirmation::Given);
        let still = || Ok(unwanted(name).is_some());
        if destroy_if(inner, name, &options, &why, &still, &|| {})? {
            return Ok(Action::Done);
        }
    }
    // Waiting for a slot: nothing is rendered, allocated or started for it until the
    // controller gives it one (`slots::fill`) and queues it again.
    if record.activity == Activity::Queued {
        if trigger == Trigger::Manual {
            // A person asked for a sync: told why nothing happens (the UI waits on the event
            // log), with its place now.
            crate::slots::still_queued(inner, &record);
        }
        return Ok(requeue);
    }
    if let Some(action) = crate::idle::check(inner, &record)? {
        return Ok(action);
    }
    // A sleeping environment wakes when a request or a person asks (a wake queued behind
    // another trigger is still asked for: `Inner::waking`).
    let asleep = record.activity == Activity::Sleeping;
    let waking = asleep
        && (trigger == Trigger::Wake
            || trigger.from_person()
            || inner
                .waking
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains_key(name));
    if asleep && !waking {
        // Its stopped processes are not drift, and a new commit is deployed when it wakes
        // (at the newest commit then): asleep, it costs nothing.
        return Ok(requeue);
    }
    // A wake asked of an environment awake already (it woke meanwhile), and a look for
    // idleness that found nothing more to do, are the periodic look: they plan nothing when
    // it runs what its commit renders to.
    let trigger = if (trigger == Trigger::Wake && !waking) || trigger == Trigger::Idle {
        Trigger::Timer
    } else {
        trigger
    };
    let started = inner.now();
    let result = converge(inner, name, trigger, record, waking);
    if waking && !matches!(result, Ok(Action::Busy | Action::Superseded)) {
        crate::idle::woke(inner, name, started)?;
    }
    result
}

/// The reconcile of an environment that is awake (or waking: `waking`, its stopped
/// processes are started again whatever `self_heal` says, and are not drift).
fn converge(
    inner: &Inner,
    name: &EnvName,
    trigger: Trigger,
    record: EnvironmentRecord,
    waking: bool,
) -> Result<Action, ControllerError> {
    let engine = &inner.engine;
    let store = engine.store();
    let requeue = Action::Requeue(inner.options.requeue_interval);
    let Some(follows) = record.follows() else {
        return Err(ControllerError::Invalid(format!(
            "`{name}` has no ref to follow"
        )));
    };
    let reference = follows.reference().to_string();
    // A pull request's preview runs only the head the controller approved for it (a fork's
    // new push waits for another `/slipway preview`), never whatever its ref points at now.
    // Read before the lock, as the record is; acted on under it.
    let head = preview_head(inner, &record)?;
    let preview = matches!(head, PreviewHead::Approved(_));
    // The tip it follows as of the last fetch; none when pinned, or when a person asks (the
    // ref is fetched and resolved afresh under the lock).
    let known = match &head {
        PreviewHead::Approved(sha) => Some(sha.clone()),
        PreviewHead::Unapproved(_) => None,
        PreviewHead::NotAPullRequest if record.pinned || trigger.from_person() => None,
        PreviewHead::NotAPullRequest => inner
            .tips
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&reference)
            .cloned(),
    };
    // The periodic look at an environment that runs, in full, what the tip it follows renders
    // to: decided from the record in hand and the tips of the last fetch, before the lock
    // file is opened, since nothing is written (see the look under the lock below). A tip not
    // known here, a fork's head waiting for approval, a pin: the long way.
    let mut looked_at = None;
    if trigger == Trigger::Timer
        && !record.pinned
        && let Some(tip) = known
            .as_deref()
            .filter(|tip| record.commit.as_deref() == Some(tip))
    {
        let origin = Origin {
            source: inner.source.as_ref(),
            repo: &inner.repo_label,
            reference: &reference,
            folder: &inner.folder,
            tip: Some(tip),
        };
        if target_of(inner, &record)
            .is_ok_and(|target| engine.runs_as_rendered(&origin, &target, &record))
        {
            return Ok(requeue);
        }
        looked_at = Some(tip.to_owned());
    }
    let lock = match engine.lock(name, slipway_engine::LockWait::Fail) {
        Ok(lock) => lock,
        // Someone (a CLI apply) is working on it: look again shortly.
        Err(EngineError::Locked(_)) => return Ok(Action::Busy),
        Err(e) => return Err(e.into()),
    };
    // A person asking for a sync wants the branch as it is now, not as of the last poll:
    // fetch, then resolve the ref afresh.
    if trigger.from_person() && !record.pinned {
        inner.fetch()?;
    }
    // The record as it is now, under the lock: another replica, or a person's apply, may
    // have changed it since it was read above. Everything decided from here on is about what
    // runs now: whether the commit is new (a deployment with nothing to change, pull
    // requests planned again, a preview's time to live pushed back), whether the record is
    // behind, and never going back past the commit last applied. What was decided before
    // the lock from the record then (what it follows, whether it sleeps, is queued or
    // expired) is decided again from the top when it changed meanwhile (a pin, a sleep):
    // nothing was done yet.
    let Some(latest) = store.environment(name)? else {
        return Ok(Action::Done);
    };
    if latest.follows().as_ref() != Some(&follows)
        || latest.activity != record.activity
        || latest.expires_at != record.expires_at
    {
        return Ok(Action::Superseded);
    }
    let record = latest;
    // A person's override of the deploy windows is for the reconcile their sync asked for,
    // whatever becomes of it (held, failed, applied): taken here, once this one holds the
    // environment, never left for a later reconcile of a commit nobody overrode for.
    let override_window = if trigger.from_person() {
        inner
            .window_overrides
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name)
    } else {
        None
    };
    if let PreviewHead::Unapproved(why) = &head {
        hold(inner, &record, why, json!({ "reason": "unapproved_head" }))?;
        return Ok(requeue);
    }
    // The ref it follows is its branch, never a tag of the same name (anyone allowed to push
    // a tag `main` would otherwise replace prod's branch on the next sync).
    let tip = match known {
        Some(sha) => Some(sha),
        None if record.pinned => None,
        None => match inner.source.resolve_tracked(&reference) {
            Ok(commit) => Some(commit.sha),
            // Recorded by the error policy (`policy::record_failure`): a fault of the moment
            // leaves the environment as it runs; one that lasts (the branch was deleted)
            // fails it, with a `reconcile.failed` event, which notifies.
            Err(e) => return Err(e.into()),
        },
    };
    // Never back to an older commit than the one running, nor than the one last applied,
    // because this copy of the repository is behind (another replica deployed a newer one,
    // or the last poll was before it): fetch, and follow the branch as it is now. The one
    // last applied counts even when its apply failed or was cut short (`desired_commit`):
    // some of its changes ran, and going back to an ancestor would undo them. A branch that
    // really moved back (a force push) is followed. A person's trigger has just fetched.
    let behind = match tip.as_deref() {
        Some(sha) if !preview && !record.pinned && !trigger.from_person() => {
            [record.commit.as_deref(), record.desired_commit.as_deref()]
                .into_iter()
                .flatten()
                .any(|newer| newer != sha && inner.source.is_ancestor(sha, newer).unwrap_or(true))
        }
        _ => false,
    };
    let tip = if behind {
        inner.fetch()?;
        Some(inner.source.resolve_tracked(&reference)?.sha)
    } else {
        tip
    };
    let origin = Origin {
        source: inner.source.as_ref(),
        repo: &inner.repo_label,
        reference: &reference,
        folder: &inner.folder,
        tip: tip.as_deref(),
    };
    let target = target_of(inner, &record)?;
    // The periodic look (and the one on start) at an environment that runs, in full, what
    // its commit renders to now: nothing to plan but drift, which the drift interval looks
    // for (`Trigger::Drift`; a drift tick landing on a queued timer takes its slot). Skipping
    // the plan here spares observing every resource of every environment on every pass. Half
    // done work is never skipped: an apply that did not finish left the record `syncing` or
    // `failed`, not `synced` at this commit.
    // (Not twice at the same tip: the look before the lock had the record as it was then,
    // which changes between the two only in a race, where the plan says what to do.)
    if trigger == Trigger::Timer
        && looked_at.as_deref() != origin.tip
        && engine.runs_as_rendered(&origin, &target, &record)
    {
        return Ok(requeue);
    }
    let mut prepared = match engine.prepare(&origin, &target) {
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
            mark_failed(inner, &record, &message)?;
            report_once(inner, Some(name), Cause::InvalidCommit(&commit), &message);
            return Ok(requeue);
        }
        Err(e) => {
            let message = e.to_string();
            // An impostor under a name of the stack (see `discover`): reported once, by
            // whichever of the two sees it first.
            if matches!(e, EngineError::NotAdopted(_)) {
                let cause = Cause::NotAdopted {
                    holder_created: record.created_at,
                };
                report_once(inner, Some(name), cause, &message);
            }
            // Recorded, with its event, by the error policy (as above).
            return Err(e.into());
        }
    };
    tracing::Span::current().record("commit", short(&prepared.commit.sha));
    // The error policy's wait: a commit whose apply failed for good is not applied again
    // before a new one arrives or a person asks.
    {
        let mut parked = inner
            .parked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let epoch = inner.membership.epoch(name);
        if parked
            .get(name)
            .is_some_and(|p| p.holds(&prepared.commit.sha, epoch))
            && !trigger.from_person()
            && !waking
        {
            return Ok(requeue);
        }
        parked.remove(name);
    }
    if let Some(why) = unmerged(inner, &record, &prepared)? {
        hold(inner, &record, &why, json!({ "reason": "unmerged" }))?;
        return Ok(requeue);
    }
    // Only a person confirms destroying something in a protected environment, or removing
    // its protection: held, not failed by a fault (retrying will not help until then).
    if let Some(why) = prepared.needs_confirmation() {
        hold_for_confirmation(inner, &record, &why)?;
        return Ok(requeue);
    }
    // A deploy window that denies the change now: held, not failed by a fault, and looked
    // at again as the window opens (unless a person overrode it for this sync).
    let now = inner.now();
    if override_window.is_none()
        && let Some(denied) = engine.window_denial(&prepared, now)?
    {
        // A wake is no deploy: asked to wake during the window, it starts what it ran (its
        // new commit waits for the window like any other). Not when the last apply was of
        // another commit and did not finish: some of that commit's changes ran, and applying
        // the one before would undo them; it stays asleep until the window opens.
        if waking
            && let Some(running) = record.commit.as_deref()
            && running != prepared.commit.sha
            && record
                .desired_commit
                .as_deref()
                .is_none_or(|last| last == running)
        {
            let at = Origin {
                source: inner.source.as_ref(),
                repo: &inner.repo_label,
                reference: running,
                folder: &inner.folder,
                tip: Some(running),
            };
            let mut again = engine.prepare(&at, &target)?;
            // It still follows its ref: the record keeps it.
            again.reference = reference.clone();
            let woke = engine.apply(
                &lock,
                &again,
                inner.source.as_ref(),
                &ApplyOptions {
                    parallelism: inner.options.parallelism,
                    who: WHO.into(),
                    swap_exposed: true,
                    confirm_destroy: slipway_engine::Confirmation::Absent,
                    follows: Some(follows.clone()),
                    policies_approved_by: None,
                    override_window: None,
                    now_ms: Some(now),
                },
                &(),
            );
            match woke {
                Err(EngineError::Superseded(_)) => return Ok(Action::Superseded),
                // What it ran is held too (it would deploy something new), or the
                // policies block it: it stays asleep.
                Err(EngineError::OutsideWindow(_) | EngineError::PolicyDenied(_)) => {}
                other => drop(other?),
            }
        }
        return hold_for_window(inner, &record, &denied.verdict);
    }
    // The policies in force at the default branch (the engine's apply would refuse it too):
    // held, saying which policy and why, until the commit or the policies change, or an
    // owner approves a pull request's soft denials for this commit.
    // Only a judged plan (one that changes something, with policies in force) asks which pull
    // request it is of: the unchanged environments of a drift pass pay nothing for the gate.
    let pull = if prepared.policy.is_some() {
        crate::gate::pull_request_of(inner, &record)?
    } else {
        None
    };
    let approved_by = match pull {
        Some(pull) => crate::gate::judge_for_pull(inner, &mut prepared, &pull)?,
        None => None,
    };
    if let Err(denied) = engine.policies_allow(&prepared, approved_by.as_deref()) {
        // The event carries every policy's result, so that a program (or the UI) shows which
        // policy holds it, where, and what the others said.
        let data = json!({
            "reason": "policy",
            "commit": prepared.commit.sha,
            "policies": prepared.policy.as_ref().map(slipway_engine::policy::Judged::report),
        });
        hold(inner, &record, &denied.to_string(), data)?;
        return Ok(requeue);
    }
    if !prepared.plan.has_changes() {
        if record.sync != SyncState::Synced
            || record.commit.as_deref() != Some(prepared.commit.sha.as_str())
        {
            // Nothing to change, but the record is behind (first sight after a restart).
            let applied = engine.apply(
                &lock,
                &prepared,
                inner.source.as_ref(),
                &ApplyOptions {
                    parallelism: 1,
                    who: WHO.into(),
                    swap_exposed: true,
                    confirm_destroy: slipway_engine::Confirmation::Absent,
                    follows: Some(follows),
                    policies_approved_by: approved_by.clone(),
                    override_window: override_window.clone(),
                    now_ms: Some(now),
                },
                &(),
            );
            match applied {
                Err(EngineError::Superseded(_)) => return Ok(Action::Superseded),
                Err(EngineError::OutsideWindow(denied)) => {
                    return hold_for_window(inner, &record, &denied.verdict);
                }
                other => drop(other?),
            }
            if record.commit.as_deref() != Some(prepared.commit.sha.as_str()) {
                ran_new_commit(inner, &record);
            }
        } else if trigger == Trigger::Manual {
            // No apply, so no apply's events: whoever asked (the UI waits on the event log)
            // is told that there was nothing to do.
            event(
                inner,
                name,
                EventKind::SyncUnchanged,
                &format!(
                    "{name} is up to date at {}: nothing to change",
                    short(&prepared.commit.sha)
                ),
            );
        }
        return Ok(requeue);
    }
    let same_commit = record.commit.as_deref() == Some(prepared.commit.sha.as_str());
    let drifted: Vec<String> = prepared
        .plan
        .changes
        .iter()
        // Waking, its processes were stopped on purpose: starting them repairs no drift.
        .filter(|_| !waking)
        .filter(|c| c.action != Change::Noop && c.reason.as_ref().is_some_and(Reason::is_drift))
        .map(|c| {
            format!(
                "{}: {}",
                c.resource,
                c.reason
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            )
        })
        .collect();
    if same_commit && !drifted.is_empty() {
        // A drift's reason is a provider's, an exec program's own words among them, which may
        // quote a value the environment keeps secret: shown as every message is.
        let message = shown(inner, name, &format!("drift: {}", drifted.join("; ")));
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
                inner.now(),
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
            follows: Some(follows),
            policies_approved_by: approved_by.clone(),
            override_window,
            now_ms: Some(now),
        },
        &(),
    );
    let report = match applied {
        Err(EngineError::Superseded(_)) => return Ok(Action::Superseded),
        // The window closed between the plan and the apply.
        Err(EngineError::OutsideWindow(denied)) => {
            return hold_for_window(inner, &record, &denied.verdict);
        }
        Err(slipway_engine::EngineError::NeedsConfirmation(why)) => {
            // Held, not failed by a fault: nothing was applied, and retrying will not help
            // until a person confirms, so it waits for the next regular pass.
            hold_for_confirmation(inner, &record, &why)?;
            return Ok(requeue);
        }
        other => other?,
    };
    if !report.succeeded() {
        return Err(ControllerError::Apply {
            environment: name.to_string(),
            commit: prepared.commit.sha.clone(),
            deployment: report.deployment,
            // Terminal when a change failed for good (its provider refused the configuration):
            // the commit then waits for a new one or a person instead of being retried.
            retryable: report.retryable(),
        });
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
    if !same_commit {
        ran_new_commit(inner, &record);
        // A new commit is a sign of use: its idle time starts again.
        if record.sleep_after_ms.is_some() || record.idle_ttl_ms.is_some() {
            let now = inner.now();
            store.modify_environment(name, |fresh| fresh.touched_at = Some(now))?;
        }
    }
    // A generated environment lives `ttl` past its last new commit.
    if !same_commit
        && record.kind == EnvKind::Generated
        && let Some(ttl) = record.ttl_ms
    {
        let expires_at = inner.now().saturating_add(ttl);
        store.modify_environment(name, |fresh| fresh.expires_at = Some(expires_at))?;
    }
    Ok(requeue)
}

/// Marks `record` held by a deploy window (`verdict`, which denies), and when to look again:
/// as the window opens, and no later than the regular pass.
fn hold_for_window(
    inner: &Inner,
    record: &EnvironmentRecord,
    verdict: &slipway_engine::Verdict,
) -> Result<Action, ControllerError> {
    let env = &record.name;
    let why = format!(
        "{}; a deployer can override with `slipway apply --env {env} --override-window`",
        verdict.describe().unwrap_or_default()
    );
    let data = json!({
        "reason": "window",
        "until": verdict.until_text(),
    });
    hold(inner, record, &why, data)?;
    let regular = inner.options.requeue_interval;
    let wait = verdict
        .until
        .map(|until| {
            // A little past the opening, so that the look finds it open.
            Duration::from_millis(u64::try_from(until.saturating_sub(verdict.at)).unwrap_or(0))
                + Duration::from_millis(500)
        })
        .map_or(regular, |opening| opening.min(regular));
    Ok(Action::Requeue(wait))
}

/// Holds an apply that waits for a person's confirmation, saying what the person does.
fn hold_for_confirmation(
    inner: &Inner,
    record: &EnvironmentRecord,
    why: &slipway_engine::ConfirmationNeeded,
) -> Result<(), ControllerError> {
    let env = &why.environment;
    let message = format!(
        "{why}: held until a person confirms (`slipway apply --env {env} --confirm-destroy {env}`)"
    );
    hold(inner, record, &message, json!({ "reason": "confirmation" }))
}

/// Whether `record`'s environment may expire: generated and ad-hoc ones, never a static or
/// protected one.
pub(crate) fn expires(record: &EnvironmentRecord) -> bool {
    record.kind != EnvKind::Static && !record.protected
}

/// `record`'s environment now runs a new commit. A static environment following its branch
/// moves that branch's open pull requests' plans (they compare with what runs): they are
/// planned again.
fn ran_new_commit(inner: &Inner, record: &EnvironmentRecord) {
    if record.kind != EnvKind::Static || record.pinned {
        return;
    }
    if let Some(base) = &record.tracked_ref
        && let Err(e) = crate::pulls::base_moved(inner, base)
    {
        tracing::warn!(
            error = %e,
            "queueing the open pull requests into {base} to be planned again failed"
        );
    }
}
