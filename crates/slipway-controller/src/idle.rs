//! Sleep, wake and idle expiry: what an environment's use through its preview URL decides.
//!
//! The routers tell the controller of each request ([`Controller::saw_request`]): a note in
//! memory, written to the state at most every [`FLUSH_EVERY`] (never a write per request).
//! Every second the controller looks at the environments with `sleep_after` or `idle_ttl` in
//! force (recorded on the environment at each apply, from the commit it runs) and queues
//! those with something due ([`Trigger::Idle`]); the reconcile then decides ([`check`]):
//! past `idle_ttl` without a request it is destroyed, as an expiry; some time before, one
//! `environment.idle` event warns; past `sleep_after` its processes are stopped
//! (`Engine::sleep`) and it is `sleeping`. Idle time counts from the latest of its last
//! request, a deploy of a new commit, a wake, an extension and its creation
//! (`EnvironmentRecord::idle_since`), all in the state: a controller restart keeps it.
//!
//! A wake is asked by a request for a sleeping environment ([`Controller::wake_for_request`])
//! or a person ([`Controller::wake`]); one wake at a time per environment, which every request
//! meanwhile joins. It is a reconcile ([`Trigger::Wake`]): the stopped processes are found gone
//! and started again (at the newest commit of what it follows), then it is `awake`.
//!
//! [`Controller::saw_request`]: crate::Controller::saw_request
//! [`Controller::wake_for_request`]: crate::Controller::wake_for_request
//! [`Controller::wake`]: crate::Controller::wake
//! [`Trigger::Idle`]: crate::Trigger::Idle
//! [`Trigger::Wake`]: crate::Trigger::Wake

use std::collections::BTreeMap;
use std::time::Duration;

use slipway_core::EnvName;
use slipway_core::vocab::{Activity, EventKind};
use slipway_engine::{Confirmation, EngineError};
use slipway_state::EnvironmentRecord;

use crate::reconcile::{self, Action, WHO, event, expires};
use crate::{ControllerError, DestroyOptions, Inner};

/// How often requests seen by the router are written to the state, at most.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(2);

/// How long before its idle expiry an environment is warned: 20% of `idle_ttl`, or an hour
/// when that is less (a day's `idle_ttl` warns an hour before, not five).
const WARN_AT_MOST: i64 = 3_600_000;

/// What is due for an environment for want of requests, now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Due {
    /// Past `idle_ttl`: destroy it.
    pub expire: bool,
    /// Past the warning point of `idle_ttl`, not warned in this idle spell: warn.
    pub warn: bool,
    /// Awake past `sleep_after`: put it to sleep.
    pub sleep: bool,
}

impl Due {
    fn any(self) -> bool {
        self.expire || self.warn || self.sleep
    }
}

/// When the warning before the idle expiry of an environment idle since `since` comes.
fn warn_at(since: i64, idle_ttl: i64) -> i64 {
    let before = (idle_ttl / 5).min(WARN_AT_MOST);
    since.saturating_add(idle_ttl.saturating_sub(before))
}

/// What is due for `record` at `now`, given a request `seen` that is not in the state yet.
/// Pure: the state's columns and the clock decide.
pub(crate) fn due(record: &EnvironmentRecord, seen: Option<i64>, now: i64) -> Due {
    let since = record.idle_since(seen);
    let mut due = Due {
        expire: false,
        warn: false,
        sleep: false,
    };
    // Nothing runs before its first deploy: nothing to stop, and its idle time has not begun.
    if record.commit.is_none() {
        return due;
    }
    if let Some(idle_ttl) = record.idle_ttl_ms.filter(|_| expires(record)) {
        due.expire = now >= since.saturating_add(idle_ttl);
        due.warn = !due.expire
            && now >= warn_at(since, idle_ttl)
            && record.idle_warned_at.is_none_or(|warned| warned < since);
    }
    if let Some(sleep_after) = record.sleep_after_ms {
        due.sleep = !due.expire
            && record.activity == Activity::Awake
            && now >= since.saturating_add(sleep_after);
    }
    due
}

/// The last request seen for `name` and not written to the state yet.
fn seen(inner: &Inner, name: &EnvName) -> Option<i64> {
    inner
        .seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(name)
        .copied()
}

/// Writes the requests seen since the last time to the state (every [`FLUSH_EVERY`], from
/// the controller's timer). Each stays in memory until the state has it: a reconcile that
/// looks meanwhile finds it in one or the other ([`settled`]). Kept in memory when the write
/// fails, for the next time.
pub(crate) fn flush(inner: &Inner) {
    flush_with(&inner.seen, |seen| {
        inner.engine.store().record_requests(seen)
    });
}

/// [`flush`] of the requests in `memory`, written with `write`.
fn flush_with(
    memory: &std::sync::Mutex<BTreeMap<EnvName, i64>>,
    write: impl FnOnce(&[(EnvName, i64)]) -> Result<(), slipway_state::StateError>,
) {
    let lock = || {
        memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let seen: Vec<(EnvName, i64)> = lock().iter().map(|(n, at)| (n.clone(), *at)).collect();
    if seen.is_empty() {
        return;
    }
    match write(&seen) {
        Ok(()) => forget_written(&mut lock(), &seen),
        Err(e) => {
            tracing::warn!(error = %e, "recording the preview requests seen failed; kept for later");
        }
    }
}

/// Forgets the requests of `written` that the state now has; one seen since (later) stays.
fn forget_written(seen: &mut BTreeMap<EnvName, i64>, written: &[(EnvName, i64)]) {
    for (name, at) in written {
        if seen.get(name).is_some_and(|now| now <= at) {
            seen.remove(name);
        }
    }
}

/// What is due for environment `name` at `now`, from memory and then the state, read in
/// that order: a request that [`flush`] moves from one to the other meanwhile is in the state
/// by the time it is gone from memory. `None` when the environment is gone.
fn settled(
    seen: impl FnOnce() -> Option<i64>,
    read: impl FnOnce() -> Result<Option<EnvironmentRecord>, ControllerError>,
    now: i64,
) -> Result<Option<(EnvironmentRecord, Option<i64>, Due)>, ControllerError> {
    let seen = seen();
    Ok(read()?.map(|record| {
        let due = due(&record, seen, now);
        (record, seen, due)
    }))
}

/// The environments with something due now (see [`due`]): what the timer queues.
pub(crate) fn due_now(inner: &Inner) -> Result<Vec<EnvName>, ControllerError> {
    let now = inner.now();
    // Memory before the state, as `settled` reads them: a request being flushed meanwhile
    // is in one of the two (the other order queued a reconcile for nothing).
    let seen = inner
        .seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(inner
        .engine
        .store()
        .idling_environments(now)?
        .into_iter()
        .filter(|record| due(record, seen.get(&record.name).copied(), now).any())
        .map(|record| record.name)
        .collect())
}

/// In a reconcile of `record`'s environment: does what is due for want of requests. `Some`:
/// the reconcile is over (destroyed, or put to sleep, or busy); `None`: go on.
pub(crate) fn check(
    inner: &Inner,
    record: &EnvironmentRecord,
) -> Result<Option<Action>, ControllerError> {
    let name = &record.name;
    let now = inner.now();
    if !due(record, seen(inner, name), now).any() {
        return Ok(None);
    }
    // Something is due by the record the reconcile read: decided again from the state as it
    // is now (a request written since that read is in the state, no longer in memory).
    let Some((fresh, seen_now, due)) = settled(
        || seen(inner, name),
        || Ok(inner.engine.store().environment(name)?),
        now,
    )?
    else {
        return Ok(Some(Action::Done));
    };
    let record = &fresh;
    // Under the environment's lock, what is due is looked at once more: a request or an
    // extension that came while the lock was awaited calls it off.
    let still_due = |what: fn(Due) -> bool| {
        move || -> Result<bool, ControllerError> {
            Ok(settled(
                || seen(inner, name),
                || Ok(inner.engine.store().environment(name)?),
                inner.now(),
            )?
            .is_some_and(|(_, _, due)| what(due)))
        }
    };
    if due.expire {
        let idle = humantime::format_duration(ms(record.idle_ttl_ms.unwrap_or(0)));
        let options = DestroyOptions::new(WHO, Confirmation::Absent);
        let why = format!("no request through its preview URL for {idle} (idle_ttl)");
        let expiring = still_due(|due| due.expire);
        let announce = || {
            if let Ok(Some(now)) = inner.engine.store().environment(name) {
                reconcile::expired(
                    inner,
                    &now,
                    &format!("{name} was idle for {idle} and was destroyed (idle_ttl)"),
                );
            }
        };
        if reconcile::destroy_if(inner, name, &options, &why, &expiring, &announce)? {
            return Ok(Some(Action::Done));
        }
        // Called off (used meanwhile): the reconcile goes on, and wakes it if a request
        // asked for that.
        return Ok(None);
    }
    if due.warn {
        let idle_ttl = record.idle_ttl_ms.unwrap_or(0);
        let since = record.idle_since(seen_now);
        let left = since.saturating_add(idle_ttl).saturating_sub(now).max(0);
        inner
            .engine
            .store()
            .modify_environment(name, |fresh| fresh.idle_warned_at = Some(now))?;
        event(
            inner,
            name,
            EventKind::EnvironmentIdle,
            &format!(
                "{name} has had no request for {} and is destroyed in {} unless its preview \
                 URL is visited or it is extended (`slipway env extend {name} --by 1h`)",
                humantime::format_duration(ms(now.saturating_sub(since))),
                humantime::format_duration(ms(left)),
            ),
        );
    }
    if due.sleep {
        let idle = humantime::format_duration(ms(record.sleep_after_ms.unwrap_or(0)));
        let sleeping = still_due(|due| due.sleep);
        return match sleep(
            inner,
            name,
            &format!("no request through its preview URL for {idle} (sleep_after)"),
            slipway_engine::LockWait::Fail,
            &sleeping,
        ) {
            Ok(_) => Ok(Some(Action::Requeue(inner.options.requeue_interval))),
            Err(ControllerError::Engine(EngineError::Locked(_))) => Ok(Some(Action::Busy)),
            Err(e) => Err(e),
        };
    }
    Ok(None)
}

/// Stops `name`'s processes under its lock and records it `sleeping`, saying `why`, if
/// `still` agrees once the lock is held (a request since calls an idle sleep off). An
/// environment asleep already, or one `still` spares, is left as it is.
pub(crate) fn sleep(
    inner: &Inner,
    name: &EnvName,
    why: &str,
    wait: slipway_engine::LockWait<'_>,
    still: &dyn Fn() -> Result<bool, ControllerError>,
) -> Result<EnvironmentRecord, ControllerError> {
    let engine = &inner.engine;
    let lock = engine.lock(name, wait)?;
    // Read under the lock: what an operation that held it meanwhile left.
    let Some(record) = engine.store().environment(name)? else {
        return Err(ControllerError::NotFound(name.to_string()));
    };
    if record.activity == Activity::Sleeping || !still()? {
        return Ok(record);
    }
    if record.commit.is_none() {
        return Err(ControllerError::Invalid(format!(
            "`{name}` runs nothing yet (it has no deployment), so there is nothing to stop"
        )));
    }
    let stopped = engine.sleep(&lock)?;
    let now = inner.now();
    let mut slept = None;
    engine.store().modify_environment(name, |fresh| {
        fresh.activity = Activity::Sleeping;
        fresh.activity_since = Some(now);
        fresh.updated_at = now;
        slept = Some(fresh.clone());
    })?;
    event(
        inner,
        name,
        EventKind::EnvironmentSlept,
        &format!(
            "{name} is asleep: {why}; stopped {}; the next request through its preview URL \
             wakes it",
            if stopped.is_empty() {
                "nothing (it runs no process)".to_string()
            } else {
                stopped.join(", ")
            }
        ),
    );
    slept.ok_or_else(|| ControllerError::NotFound(name.to_string()))
}

/// After a wake's reconcile (whatever its outcome: a failed apply is reported as such, not
/// as sleep): `name` is `awake`, its idle time starts again.
pub(crate) fn woke(inner: &Inner, name: &EnvName, started: i64) -> Result<(), ControllerError> {
    let now = inner.now();
    let changed = inner.engine.store().modify_environment(name, |fresh| {
        fresh.activity = Activity::Awake;
        fresh.activity_since = Some(now);
        fresh.touched_at = Some(now);
        fresh.updated_at = now;
    })?;
    if changed {
        event(
            inner,
            name,
            EventKind::EnvironmentWoke,
            &format!(
                "{name} is awake again (its processes started in {})",
                humantime::format_duration(Duration::from_millis(
                    u64::try_from(now.saturating_sub(started)).unwrap_or(0)
                ))
            ),
        );
    }
    Ok(())
}

fn ms(ms: i64) -> Duration {
    // Whole seconds: what a person reads in an event.
    Duration::from_secs(u64::try_from(ms.max(0) / 1000).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_core::vocab::EnvKind;

    fn record(sleep_after: Option<i64>, idle_ttl: Option<i64>) -> EnvironmentRecord {
        EnvironmentRecord {
            commit: Some("abc".into()),
            sleep_after_ms: sleep_after,
            idle_ttl_ms: idle_ttl,
            ..EnvironmentRecord::new(
                EnvName::parse("pr-1").expect("a valid name"),
                EnvKind::Generated,
                "shop".into(),
                "repo".into(),
                1_000,
            )
        }
    }

    #[test]
    fn idle_time_counts_from_the_latest_sign_of_use() {
        let mut r = record(Some(10_000), None);
        assert!(!due(&r, None, 10_999).sleep, "not before sleep_after");
        assert!(
            due(&r, None, 11_000).sleep,
            "sleeps at sleep_after after creation"
        );
        r.last_request_at = Some(5_000);
        assert!(!due(&r, None, 11_000).sleep, "a request recorded resets it");
        assert!(
            !due(&r, Some(9_000), 15_000).sleep,
            "a request not yet recorded too"
        );
        r.touched_at = Some(20_000);
        assert!(!due(&r, None, 29_999).sleep, "a wake or an extension too");
        r.activity = Activity::Sleeping;
        assert!(!due(&r, None, 99_999).sleep, "asleep already");
    }

    #[test]
    fn idle_expiry_warns_once_before_it_destroys() {
        // 10 s: warned at 8 s (20% before); a day: an hour before.
        let mut r = record(None, Some(10_000));
        assert_eq!(warn_at(0, 86_400_000), 86_400_000 - 3_600_000);
        let at = |r: &EnvironmentRecord, now| due(r, None, now);
        assert!(!at(&r, 8_999).warn);
        assert!(at(&r, 9_000).warn && !at(&r, 9_000).expire);
        r.idle_warned_at = Some(9_000);
        assert!(!at(&r, 9_500).warn, "warned once");
        assert!(at(&r, 11_000).expire);
        r.last_request_at = Some(10_500);
        assert!(!at(&r, 11_000).expire, "a request puts it off");
        assert!(at(&r, 18_500).warn, "and the next idle spell warns again");
        r.commit = None;
        assert!(!at(&r, 99_000).expire, "nothing deployed yet: no idle time");
    }

    /// While a flush writes the requests, they are still in memory; once written, they are
    /// not, but one seen meanwhile is; a write that fails forgets nothing.
    #[test]
    fn a_flush_forgets_a_request_only_once_it_is_written() {
        let name = |n: &str| EnvName::parse(n).expect("a valid name");
        let memory = std::sync::Mutex::new(BTreeMap::from([(name("pr-1"), 10)]));
        flush_with(&memory, |writing| {
            assert_eq!(writing, [(name("pr-1"), 10)]);
            let mut now = memory.lock().expect("memory");
            assert_eq!(
                now.get(&name("pr-1")),
                Some(&10),
                "a request being written is still in memory"
            );
            now.insert(name("pr-2"), 20);
            Ok(())
        });
        assert_eq!(
            *memory.lock().expect("memory"),
            BTreeMap::from([(name("pr-2"), 20)]),
            "what was written is forgotten, what came meanwhile is not"
        );
        flush_with(&memory, |_| {
            Err(slipway_state::StateError::NotFound {
                what: "environment",
                key: "pr-2".into(),
            })
        });
        assert_eq!(
            *memory.lock().expect("memory"),
            BTreeMap::from([(name("pr-2"), 20)]),
            "a failed write forgets nothing"
        );
    }

    /// A flush writes the requests it read, then forgets them: one seen meanwhile, later, is
    /// still to be written; one not written yet is still in memory.
    #[test]
    fn a_request_stays_in_memory_until_the_state_has_it() {
        let name = |n: &str| EnvName::parse(n).expect("a valid name");
        let mut seen = BTreeMap::from([(name("pr-1"), 10), (name("pr-2"), 20)]);
        let written = vec![(name("pr-1"), 10), (name("pr-2"), 20)];
        // Between the write and the forgetting, pr-2 got another request; pr-3 its first.
        seen.insert(name("pr-2"), 25);
        seen.insert(name("pr-3"), 30);
        forget_written(&mut seen, &written);
        assert_eq!(
            seen,
            BTreeMap::from([(name("pr-2"), 25), (name("pr-3"), 30)]),
            "only what the state has is forgotten"
        );
    }

    /// A flush that moves a request from memory to the state between the two looks of a
    /// reconcile: whichever look comes first sees the world before it, the second after.
    /// Read memory first, then the state, the request is seen in one of them; the other way
    /// round, in neither, and an environment in use was destroyed as idle.
    #[test]
    fn a_request_being_flushed_is_seen_by_the_idle_check() {
        let mut stale = record(None, Some(10_000));
        stale.last_request_at = Some(1_000);
        let mut written = stale.clone();
        written.last_request_at = Some(10_500);
        let flushed = std::cell::Cell::new(false);
        let seen = || {
            let before = !flushed.replace(true);
            before.then_some(10_500)
        };
        let read = || {
            let before = !flushed.replace(true);
            Ok(Some(if before {
                stale.clone()
            } else {
                written.clone()
            }))
        };
        let (_, _, decided) = settled(seen, read, 12_000)
            .expect("read")
            .expect("the environment exists");
        assert!(
            !decided.expire && !decided.warn,
            "a request 1.5 s ago keeps it: {decided:?}"
        );
        assert!(
            due(&stale, None, 12_000).expire,
            "the stale record alone would have destroyed it"
        );
    }

    /// The store picks the candidates (`Store::idling_environments`): awake past
    /// `sleep_after`, or past 80% of `idle_ttl`, from the recorded signs of use. Whatever
    /// `due` finds due must be among them, whatever the times.
    #[test]
    fn whatever_is_due_is_among_the_candidates_the_store_picks() {
        let candidate = |r: &EnvironmentRecord, now: i64| {
            let since = r.idle_since(None);
            r.commit.is_some()
                && (r.idle_ttl_ms.is_some_and(|t| now >= since + t * 4 / 5)
                    || (r.activity == Activity::Awake
                        && r.sleep_after_ms.is_some_and(|t| now >= since + t)))
        };
        let mut checked = 0;
        for idle_ttl in [None, Some(1), Some(7), Some(10_000), Some(86_400_000)] {
            for sleep_after in [None, Some(1), Some(5_000)] {
                for warned in [None, Some(0), Some(50_000)] {
                    let mut r = record(sleep_after, idle_ttl);
                    r.idle_warned_at = warned;
                    r.last_request_at = Some(2_000);
                    for now in (0..100_000_000).step_by(9_973) {
                        for seen in [None, Some(3_000)] {
                            if due(&r, seen, now).any() {
                                checked += 1;
                                assert!(candidate(&r, now), "{r:?} at {now} is due");
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 100, "due cases were checked: {checked}");
    }
}
