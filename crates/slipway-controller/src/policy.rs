//! The error policy: what follows a failed reconcile, decided by the kind of its error, and
//! the failure recorded where `slipway status` and the API show it.
//!
//! - Retryable (a remote or database busy or unreachable, a port in use, a task that died):
//!   retried after the queue's jittered exponential backoff.
//! - Terminal (a commit that cannot be applied, a name held by another kind of environment,
//!   a refusal): nothing is retried before a new commit arrives or a person asks; a failed
//!   apply's commit is parked (the reconcile does not apply it again on its own while this
//!   replica keeps the environment's lease), and the periodic pass stays the safety net.

use slipway_core::EnvName;
use slipway_core::vocab::{EventKind, SyncState};

use crate::queue::Finished;
use crate::reconcile::{event, shown};
use crate::{ControllerError, Inner};

/// What the queue does after a reconcile failed with `error`.
pub(crate) fn error_policy(error: &ControllerError) -> Finished {
    if error.retryable() {
        Finished::Retry
    } else {
        Finished::Wait
    }
}

/// Records `error` on `env`: its status message (shown by `slipway status` and the API) and a
/// `reconcile.failed` event, once while the same error lasts. A failed apply is recorded by
/// the engine with every resource's reason, and errors the reconcile already wrote into the
/// status are not repeated.
pub(crate) fn record_failure(inner: &Inner, env: &EnvName, error: &ControllerError) {
    if matches!(error, ControllerError::Apply { .. }) {
        return;
    }
    let store = inner.engine.store();
    let Ok(Some(record)) = store.environment(env) else {
        return;
    };
    let message = shown(inner, env, &error.to_string());
    if record.message.as_deref() == Some(message.as_str()) {
        return;
    }
    let retryable = error.retryable();
    event(
        inner,
        env,
        EventKind::ReconcileFailed,
        &format!(
            "{message} ({})",
            if retryable {
                "retried with backoff"
            } else {
                "not retried before a new commit or a person's request"
            }
        ),
    );
    // A passing fault leaves what the environment runs as it was; one that lasts fails it.
    let sync = if retryable {
        record.sync
    } else {
        SyncState::Failed
    };
    let _ = store.set_environment_status(env, sync, record.health, Some(&message), inner.now());
}

/// A commit whose apply failed for good, and the lease epoch it failed under (replicas only).
///
/// The wait lasts while this replica holds the environment without a break: once another
/// replica held it, what it did meanwhile is unknown here, so the commit is tried afresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parked {
    pub commit: String,
    pub epoch: Option<i64>,
}

impl Parked {
    /// Whether `commit`, under the lease at `epoch`, still waits.
    pub(crate) fn holds(&self, commit: &str, epoch: Option<i64>) -> bool {
        self.commit == commit && self.epoch == epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_engine::EngineError;

    fn git_remote() -> slipway_git::GitError {
        slipway_git::GitError::Remote {
            action: "fetch",
            url: "https://example.invalid/shop.git".into(),
            stderr: "could not resolve host".into(),
        }
    }

    #[test]
    fn a_parked_commit_waits_only_under_the_holding_it_failed_in() {
        let sha = "c".repeat(40);
        let alone = Parked {
            commit: sha.clone(),
            epoch: None,
        };
        assert!(alone.holds(&sha, None), "one controller: it waits");
        assert!(!alone.holds(&"d".repeat(40), None), "a new commit is tried");
        let replica = Parked {
            commit: sha.clone(),
            epoch: Some(1),
        };
        assert!(replica.holds(&sha, Some(1)), "the same lease: it waits");
        // Lost, then taken again after another replica held it: what the other did is
        // unknown here, so the commit is tried afresh rather than waiting for ever.
        assert!(!replica.holds(&sha, Some(3)), "a new holding tries again");
        assert!(!replica.holds(&sha, None), "not held: nothing waits");
    }

    #[test]
    fn a_passing_fault_is_retried_with_backoff() {
        for error in [
            ControllerError::Git(git_remote()),
            ControllerError::Engine(EngineError::Git(git_remote())),
            ControllerError::Engine(EngineError::Locked(
                EnvName::parse("dev").expect("a valid name"),
            )),
            ControllerError::Internal("a task died".into()),
            ControllerError::Apply {
                environment: "dev".into(),
                commit: "a".repeat(40),
                deployment: 3,
                retryable: true,
            },
        ] {
            assert_eq!(error_policy(&error), Finished::Retry, "{error}");
        }
    }

    #[test]
    fn a_lasting_fault_waits_for_a_new_commit_or_a_person() {
        for error in [
            ControllerError::Invalid("`dev` has no ref to follow".into()),
            ControllerError::NotFound("dev".into()),
            ControllerError::Engine(EngineError::Secret("cannot decrypt `db`".into())),
            ControllerError::Engine(EngineError::NotAdopted("held".into())),
            ControllerError::Apply {
                environment: "dev".into(),
                commit: "a".repeat(40),
                deployment: 3,
                retryable: false,
            },
        ] {
            assert_eq!(error_policy(&error), Finished::Wait, "{error}");
        }
        let apply = ControllerError::Apply {
            environment: "dev".into(),
            commit: "b".repeat(40),
            deployment: 4,
            retryable: false,
        };
        assert_eq!(
            apply.commit(),
            Some("b".repeat(40).as_str()),
            "a failed apply names the commit that waits"
        );
    }
}
