//! The policy gate where a pull request is involved: a plan of code from a pull request (the
//! environment its `/slipway apply` holds, or its generated preview) is judged with what the
//! forge says of it (its number, whether it comes from a fork), and a policy owner's
//! `/slipway approve-policies` lets soft denials of its head commit through, that commit only.
//! Everything else is the engine's (`slipway_engine::policy`): the policies are the default
//! branch's, and the engine's apply refuses what they block, whoever asks.

use slipway_core::EnvName;
use slipway_engine::Prepared;
use slipway_engine::policy::GitContext;
use slipway_state::{EnvironmentRecord, PullRequestRecord};

use crate::{ControllerError, Inner};

/// The pull request whose code `record` runs, if any: the one whose `/slipway apply` locks
/// it, or the one its generated preview follows (`refs/pull/N/head`).
pub(crate) fn pull_request_of(
    inner: &Inner,
    record: &EnvironmentRecord,
) -> Result<Option<PullRequestRecord>, ControllerError> {
    let store = inner.engine.store();
    let number = match store.environment_lock(&record.name)? {
        Some(lock) => Some(lock.pull_request),
        None => inner.forge.get().and_then(|setup| {
            let reference = record.tracked_ref.as_deref()?;
            reference
                .split('/')
                .find_map(|part| part.parse::<u64>().ok())
                .filter(|n| setup.forge.pr_head_ref(*n) == reference)
                .map(|n| n as i64)
        }),
    };
    match number {
        Some(n) => Ok(store.pull_request(n)?),
        None => Ok(None),
    }
}

/// The environments that run pull request `number`'s code (those [`pull_request_of`] maps to
/// it): judged again when an owner approves its policies or its labels change.
pub(crate) fn environments_of(inner: &Inner, number: i64) -> Result<Vec<EnvName>, ControllerError> {
    let store = inner.engine.store();
    let mut envs: Vec<EnvName> = store
        .locks()?
        .into_iter()
        .filter(|l| l.pull_request == number)
        .map(|l| l.environment)
        .collect();
    if let Some(setup) = inner.forge.get() {
        let head_ref = setup.forge.pr_head_ref(number as u64);
        envs.extend(
            store
                .environments()?
                .into_iter()
                .filter(|r| r.tracked_ref.as_deref() == Some(head_ref.as_str()))
                .map(|r| r.name),
        );
    }
    envs.sort();
    envs.dedup();
    Ok(envs)
}

/// Judges `prepared` again with `pull`'s context, and says who approved its commit's soft
/// denials, if anyone did.
pub(crate) fn judge_for_pull(
    inner: &Inner,
    prepared: &mut Prepared,
    pull: &PullRequestRecord,
) -> Result<Option<String>, ControllerError> {
    if prepared.policy.is_none() {
        return Ok(None);
    }
    let context = GitContext {
        pull_request: u64::try_from(pull.number).ok(),
        from_fork: pull.is_fork,
        labels: pull.labels.clone(),
    };
    prepared.policy = inner
        .engine
        .judge(prepared, inner.source.as_ref(), &context)?;
    Ok(inner
        .engine
        .store()
        .policies_approved(pull.number, &prepared.commit.sha)?)
}
