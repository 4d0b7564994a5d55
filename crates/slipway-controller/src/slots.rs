//! The caps on running environments, as the controller applies them: which caps are in force
//! (the families' `max_environments` at the default ref, `[local] max_environments`), what a
//! new environment is told when it waits, and filling the slots that free up. The decision
//! itself, counted and recorded in one transaction, is the store's
//! ([`slipway_state::Store::admit`], [`slipway_state::Store::promote`]).
//!
//! A queued environment is a record and nothing else: its reconcile does nothing, so no port,
//! uid, directory or process is made for it until it has a slot.

use std::time::Instant;

use serde_json::json;
use slipway_core::EnvName;
use slipway_core::stack::Stack;
use slipway_core::vocab::EventKind;
use slipway_state::{Caps, EnvironmentRecord, Promoted};

use crate::{ControllerError, Inner, Trigger};

/// The caps in force: each family's `max_environments` in `stack` (the default ref's: a
/// branch cannot raise its own family's cap) and the home's `[local] max_environments`.
pub(crate) fn caps(inner: &Inner, stack: &Stack) -> Caps {
    Caps {
        families: stack
            .environments
            .iter()
            .filter(|(_, d)| d.generate.is_some())
            .filter_map(|(name, d)| d.max_environments.map(|cap| (name.clone(), cap)))
            .collect(),
        total: inner.engine.config().local.max_environments,
    }
}

/// [`caps`] as the stack at the default ref says now (through the engine's commit cache).
/// A default ref whose stack does not validate keeps no family's cap: only the home's.
pub(crate) fn caps_now(inner: &Inner) -> Result<Caps, ControllerError> {
    let cached = inner.engine.load_tracked(
        inner.source.as_ref(),
        &inner.options.default_ref,
        &inner.folder,
    )?;
    Ok(match cached.loaded.valid_stack() {
        Ok(stack) => caps(inner, stack),
        Err(_) => Caps {
            families: Default::default(),
            total: inner.engine.config().local.max_environments,
        },
    })
}

/// Whether `record`'s environment may hold a slot: a generated or ad-hoc one (static
/// environments are the team's, never capped).
pub(crate) fn capped(record: &EnvironmentRecord) -> bool {
    record.kind != slipway_core::vocab::EnvKind::Static
}

/// "1st", "2nd", "3rd", "11th", …
pub(crate) fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// Why `record`'s environment waits, for people: its place, and what it waits for.
pub(crate) fn waiting(caps: &Caps, record: &EnvironmentRecord, position: u32) -> String {
    let family = record
        .definition
        .as_deref()
        .and_then(|d| caps.families.get(d).map(|cap| (d, cap)));
    let of = |n: u32| match n {
        1 => "its one environment goes".to_string(),
        n => format!("one of its {n} environments goes"),
    };
    let slots = match (family, caps.total) {
        (Some((family, cap)), _) => {
            format!("family `{family}` runs {cap}; starts when {}", of(*cap))
        }
        (None, Some(total)) => format!("this home runs {total}; starts when {}", of(total)),
        (None, None) => "starts when a slot frees".to_string(),
    };
    format!("queued: {} in line; {slots}", ordinal(position))
}

/// Records that `record`'s environment waits at `position` (event `environment.queued`, and
/// its status message, which it returns).
pub(crate) fn announce_queued(
    inner: &Inner,
    caps: &Caps,
    record: &EnvironmentRecord,
    position: Option<u32>,
) -> String {
    let position = position.unwrap_or(1);
    let message = waiting(caps, record, position);
    let store = inner.engine.store();
    let _ = store.record_event(
        Some(&record.name),
        EventKind::EnvironmentQueued,
        &format!("{}: {message}", record.name),
        &json!({ "position": position, "family": record.definition }),
        inner.now(),
    );
    let _ = store.modify_environment(&record.name, |r| {
        if r.activity == slipway_core::vocab::Activity::Queued {
            r.message = Some(message.clone());
        }
    });
    message
}

/// Says, with an `environment.queued` event, that `record`'s environment still waits, at its
/// place now: the answer to a person's sync of it.
pub(crate) fn still_queued(inner: &Inner, record: &EnvironmentRecord) {
    let store = inner.engine.store();
    let (Ok(Some(position)), Ok(caps)) = (store.queue_position(&record.name), caps_now(inner))
    else {
        return;
    };
    let _ = store.record_event(
        Some(&record.name),
        EventKind::EnvironmentQueued,
        &format!(
            "{} is still {}",
            record.name,
            waiting(&caps, record, position)
        ),
        &json!({ "position": position, "family": record.definition }),
        inner.now(),
    );
}

/// Gives queued environments the slots `caps` leave free, reconciles those promoted at once,
/// and has the plan comments of the pull requests whose previews moved in the queue written
/// again. Returns those promoted. Safe to call at any time: the store decides in one
/// transaction, and a controller that died before reconciling a promoted environment finds
/// it awake on restart.
pub(crate) fn fill(inner: &Inner, caps: &Caps) -> Result<Vec<EnvName>, ControllerError> {
    let promoted = inner.engine.store().promote(caps, inner.now())?;
    started(inner, promoted)
}

/// What follows environments' promotion (by [`fill`], or by an admission that found slots
/// for some ahead of it): their `environment.dequeued` events, their reconciles queued now,
/// and the plan comments of the pull requests concerned written again. Returns their names.
pub(crate) fn started(
    inner: &Inner,
    promoted: Vec<Promoted>,
) -> Result<Vec<EnvName>, ControllerError> {
    for p in &promoted {
        dequeued(inner, p);
    }
    let names: Vec<EnvName> = promoted.into_iter().map(|p| p.name).collect();
    if !names.is_empty() {
        {
            let mut queue = inner
                .queue
                .lock()
                .expect("the queue lock is never poisoned");
            for name in &names {
                queue.push(name, Trigger::Poll, Instant::now());
            }
        }
        inner.wake.notify_one();
        // With several replicas, the one each environment belongs to may be another: woken,
        // every replica refreshes and finds it awake and not deployed yet.
        if inner.options.replica.is_some()
            && let Err(e) = inner.engine.store().notify(slipway_state::Wake::Refresh)
        {
            tracing::warn!(error = %e, "waking the other replicas for promoted environments failed");
        }
        queue_moved(inner, &names)?;
    }
    Ok(names)
}

/// [`fill`] with the caps in force now; a failure is logged (the next refresh fills again).
pub(crate) fn fill_now(inner: &Inner) {
    if let Err(e) = caps_now(inner).and_then(|caps| fill(inner, &caps)) {
        tracing::warn!(error = %e, "giving queued environments the slots that freed failed");
    }
}

fn dequeued(inner: &Inner, p: &Promoted) {
    let store = inner.engine.store();
    let _ = store.record_event(
        Some(&p.name),
        EventKind::EnvironmentDequeued,
        &format!(
            "{} left the queue after {}s and starts",
            p.name,
            p.waited_ms / 1000
        ),
        &json!({ "waited_ms": p.waited_ms, "family": p.definition }),
        inner.now(),
    );
    let _ = store.modify_environment(&p.name, |r| {
        if r.message
            .as_deref()
            .is_some_and(|m| m.starts_with("queued:"))
        {
            r.message = None;
        }
    });
}

/// The queue changed (an environment joined, left or got a slot): the plan comments of open
/// pull requests whose previews are queued (their places moved) or in `started` are written
/// again, by the controller's re-plan worker.
pub(crate) fn queue_moved(inner: &Inner, started: &[EnvName]) -> Result<(), ControllerError> {
    if inner.forge.get().is_none() {
        return Ok(());
    }
    let store = inner.engine.store();
    let open = store.pull_requests(Some("open"))?;
    let added = {
        let mut pending = inner
            .replans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = pending.len();
        for pr in &open {
            let name = EnvName::pull_request(pr.number);
            let queued = || -> Result<bool, ControllerError> {
                Ok(store
                    .environment(&name)?
                    .is_some_and(|r| r.activity == slipway_core::vocab::Activity::Queued))
            };
            if started.contains(&name) || queued()? {
                pending.insert(pr.number);
            }
        }
        pending.len() - before
    };
    if added > 0 {
        inner.replan_wake.notify_one();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ordinal;

    #[test]
    fn places_in_line_read_as_english_ordinals() {
        let said: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111]
            .into_iter()
            .map(ordinal)
            .collect();
        assert_eq!(
            said,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st",
                "111th"
            ]
        );
    }
}
