//! The error policy: what follows a failed reconcile, decided by the kind of its error, and
//! the failure recorded where `slipway status` and the API show it.
//!
//! - Retryable (a remote or database busy or unreachable, a port in use, a task that died):
//!   retried after the queue's jittered exponential backoff.
//! - Terminal (a commit that cannot be applied, a name held by another kind of environment,
//!   a refusal): nothing is retried before a new commit arrives or a person asks; a failed
//!   apply's commit is parked (the reconcile does not apply it again on its own), and the
//!   periodic pass stays the safety net.

use slipway_core::EnvName;
use slipway_core::vocab::{EventKind, SyncState};

use crate::queue::Finished;
use crate::reconcile::event;
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
    let message = error.to_string();
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
