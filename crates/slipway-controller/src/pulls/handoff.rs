//! With several replicas, a pull request's action on an environment is done by the replica
//! that works on it, whichever replica the forge's webhook reached.
//!
//! A delivery is verified, recorded once (its id is unique in the state) and handled by the
//! replica that got it: a comment command is parsed, its author's write access checked and
//! audited there, as on a single controller. What it then changes of an environment
//! (`/slipway apply ENV` pins it and answers once its reconcile ends; `/slipway unlock ENV`
//! and a closed or merged pull request unpin it) must be done under the environment's lease,
//! which another replica may hold. Such work is handed over in the state
//! ([`Store::hand_off`](slipway_state::Store::hand_off)), a `NOTIFY` wakes the replicas, and
//! the holder takes it ([`take`]) and does it ([`run`]) as if it had heard the command
//! itself; every replica also looks for work at each heartbeat, in case a wake-up was lost.
//!
//! Why the state and not a request to the holder: the work outlives either replica. Handed
//! over while the holder is down (or a node-bound environment's replica is away), it waits
//! for whichever replica holds the environment next; taken by a holder that dies before it
//! answers, it is taken again by the next (a later lease epoch), which runs the command
//! again: the pull request may then be answered twice, never not at all. An apply's work is
//! done (forgotten) once the pull request is answered, the rest once it ran.
//!
//! # Trust
//! Only replicas write the state. A command handed over was checked by the replica that
//! heard it (signature, repository, write access); the holder runs it without asking the
//! forge again, and judges the apply's requirements itself, at the time it runs.

use serde::{Deserialize, Serialize};
use slipway_core::EnvName;
use slipway_core::vocab::EventKind;
use slipway_forge::parse_command;
use slipway_state::now_ms;

use super::{FollowUp, commands, event};
use crate::{ControllerError, Inner, requests};

/// What is handed to the replica that works on an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Work {
    /// A comment command about the environment (`/slipway apply ENV`, `/slipway unlock ENV`)
    /// by `author` on pull request `number`, already checked where it was heard: run it.
    Command {
        number: u64,
        author: String,
        /// As typed (`Command`'s `Display`, which `parse_command` reads back).
        command: String,
        /// When the forge says the comment was made (unix ms), if it says: the replica that
        /// runs it judges how fresh the head is by it too. Missing in work handed over by an
        /// earlier release.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        said_at: Option<i64>,
    },
    /// Pull request `number`, closed or merged, released its lock on the environment: it
    /// follows its branch again, unless another pull request locked it since.
    Released { number: i64 },
}

/// Where a pull request's action on an environment is done.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// Here, now: this replica works on it (its lease was taken when `claimed`, to give back
    /// with [`requests::release`]), or no replica needs to (one controller, or no such
    /// environment).
    Here { claimed: bool },
    /// Handed over to `replica`, which works on it; `alive`: whether it runs now (a
    /// node-bound environment's replica may be away).
    HandedOff { replica: String, alive: bool },
}

/// Decides where `work` on `env` is done: here, or handed over in the state to the replica
/// that works on it (and the replicas woken).
pub(super) fn route(inner: &Inner, env: &EnvName, work: &Work) -> Result<Route, ControllerError> {
    let (replica, alive) = match requests::claim(inner, env) {
        Ok(claimed) => return Ok(Route::Here { claimed }),
        Err(ControllerError::Elsewhere { replica, alive, .. }) => (replica, alive),
        // Changing hands just now: whoever takes it next does it.
        Err(ControllerError::Conflict(_)) => ("the next holder".to_owned(), true),
        Err(e) => return Err(e),
    };
    let store = inner.engine.store();
    let written = serde_json::to_value(work).expect("the work is plain strings and numbers");
    let id = store.hand_off(env, &written, now_ms())?;
    if let Err(e) = store.notify(slipway_state::Wake::Handoff) {
        tracing::warn!(error = %e, "waking the replicas for handed-over work failed; the holder finds it at its next heartbeat");
    }
    tracing::info!(environment = %env, handoff = id, to = %replica, ?work, "handed over");
    Ok(Route::HandedOff { replica, alive })
}

/// Work this replica took, to do now with [`run`].
#[derive(Debug)]
pub(crate) struct Taken {
    id: i64,
    environment: EnvName,
    work: Work,
}

/// Takes the handed-over work this replica should do: that about the environments whose
/// lease it holds, and about environments that no longer exist (any replica may answer
/// those), oldest first. Each is taken once ([`Store::take_handoff`]).
///
/// [`Store::take_handoff`]: slipway_state::Store::take_handoff
pub(crate) fn take(inner: &Inner) -> Result<Vec<Taken>, ControllerError> {
    let Some(taker) = inner.taker.as_deref() else {
        return Ok(Vec::new());
    };
    let store = inner.engine.store();
    let mut taken = Vec::new();
    for record in store.handoffs()? {
        let epoch = match store.held(&record.environment) {
            Some(fence) => fence.epoch,
            None if store.environment(&record.environment)?.is_none() => 0,
            None => continue,
        };
        let work = match serde_json::from_value::<Work>(record.work) {
            Ok(work) => work,
            Err(e) => {
                // Not work this Slipway knows: nobody will do it.
                tracing::warn!(handoff = record.id, error = %e, "dropping handed-over work of an unknown shape");
                store.finish_handoff(record.id)?;
                continue;
            }
        };
        if store.take_handoff(record.id, taker, epoch)? {
            taken.push(Taken {
                id: record.id,
                environment: record.environment,
                work,
            });
        }
    }
    Ok(taken)
}

/// Does work this replica took, under its environment's lease. Lost meanwhile, the work is
/// left to the next holder. Done (or failed) it is forgotten, but for an apply waiting for
/// its reconcile, forgotten once the pull request is answered.
pub(crate) fn run(inner: &Inner, taken: &Taken) -> Result<FollowUp, ControllerError> {
    let env = &taken.environment;
    let claimed = match requests::claim(inner, env) {
        Ok(claimed) => claimed,
        Err(ControllerError::Elsewhere { .. } | ControllerError::Conflict(_)) => {
            return Ok(FollowUp::default());
        }
        Err(e) => {
            // Failed as a command heard here would: reported, not retried.
            inner.engine.store().finish_handoff(taken.id)?;
            return Err(e);
        }
    };
    let done = match &taken.work {
        Work::Command {
            number,
            author,
            command,
            said_at,
        } => match parse_command(command) {
            Ok(Some(command)) => {
                commands::run(inner, *number, author, command, *said_at, Some(taken.id))
            }
            _ => Ok(FollowUp::default()),
        },
        Work::Released { number } => released(inner, env, *number),
    };
    if claimed {
        requests::release(inner, env);
    }
    if !matches!(done, Ok(FollowUp { apply: Some(_), .. })) {
        inner.engine.store().finish_handoff(taken.id)?;
    }
    done
}

/// Pull request `number` released its lock on `env`: it follows its branch again, unless
/// another pull request locked it since.
fn released(inner: &Inner, env: &EnvName, number: i64) -> Result<FollowUp, ControllerError> {
    if inner.engine.store().environment_lock(env)?.is_some() {
        return Ok(FollowUp::default());
    }
    Ok(FollowUp {
        reconcile: unpin_released(inner, env, number)?.into_iter().collect(),
        ..FollowUp::default()
    })
}

/// Unpins `env`, whose lock pull request `number` released: it follows its branch again.
/// `None` when it no longer exists.
pub(super) fn unpin_released(
    inner: &Inner,
    env: &EnvName,
    number: i64,
) -> Result<Option<EnvName>, ControllerError> {
    let store = inner.engine.store();
    let found = store.modify_environment(env, |record| {
        record.pinned = false;
        record.updated_at = now_ms();
    })?;
    if !found {
        return Ok(None);
    }
    event(
        inner,
        env,
        EventKind::LockReleased,
        &format!("the lock of #{number} is released; `{env}` follows its branch again"),
    );
    Ok(Some(env.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_reads_back_as_written() {
        for work in [
            Work::Command {
                number: 7,
                author: "alice".into(),
                command: "/slipway apply qa".into(),
                said_at: Some(1_700_000_000_000),
            },
            Work::Command {
                number: 7,
                author: "alice".into(),
                command: "/slipway apply qa".into(),
                said_at: None,
            },
            Work::Released { number: 7 },
        ] {
            let written = serde_json::to_value(&work).expect("written");
            assert_eq!(serde_json::from_value::<Work>(written).expect("read"), work);
        }
        assert_eq!(
            serde_json::from_value::<Work>(serde_json::json!({
                "kind": "command", "number": 7, "author": "alice", "command": "/slipway apply qa"
            }))
            .expect("work an earlier release handed over"),
            Work::Command {
                number: 7,
                author: "alice".into(),
                command: "/slipway apply qa".into(),
                said_at: None,
            }
        );
        assert_eq!(
            serde_json::to_value(Work::Released { number: 3 }).expect("written"),
            serde_json::json!({"kind": "released", "number": 3}),
            "the stored shape"
        );
    }
}
