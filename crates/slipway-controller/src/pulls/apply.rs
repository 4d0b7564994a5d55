//! `/slipway apply ENV`: a pull request's head deployed to a static environment before merge,
//! under its apply requirements, with the environment locked to the pull request.

use slipway_core::EnvName;
use slipway_core::render::EnvKind;
use slipway_core::vocab::SyncState;
use slipway_forge::{CommitPrefix, PrState, literal_block};
use slipway_state::{PullRequestRecord, now_ms};

use super::commands::{audit, reply, unseen_head};
use super::plans::fetched_head;
use super::{
    FollowUp, origin_at, pushers_of, qualified_approval, set_head, setup, short, unknown_pusher,
};
use crate::{ControllerError, Inner};

/// The rules `/slipway apply ENV` judges a pull request by: those of the branch ENV tracks
/// (its stack at the branch's head), of what ENV runs (in force), and of the pull request's
/// own head, each at the stronger. A pull request cannot lower its own requirements, and a
/// base branch nobody reviews cannot either: only the tracked branch's rules count.
pub(crate) fn apply_rules(
    tracked: Option<&slipway_engine::Rules>,
    in_force: Option<&slipway_engine::Rules>,
    head: &slipway_engine::Rules,
) -> slipway_engine::Rules {
    let mut rules = head.clone();
    for r in [tracked, in_force].into_iter().flatten() {
        rules = rules.stronger(r);
    }
    rules
}

/// What the comment of a `/slipway apply` said besides the environment.
pub(super) struct Said<'a> {
    /// The head commit its author named, if they did.
    pub commit: Option<&'a CommitPrefix>,
    /// When the forge says it was made (unix ms), if it says.
    pub at: Option<i64>,
}

/// `/slipway apply ENV`: the pull request's head goes to ENV before merge, when the pull
/// request is into the branch ENV tracks, ENV's apply requirements hold and no other pull
/// request holds it; ENV is then locked to this pull request (and stays on its head) until it
/// is merged or closed, or unlocked. Refused or held, it leaves no lock and no pin behind.
/// A fork's head is applied on a maintainer's say-so for the code they read: the head they
/// named, or one not pushed moments before their comment or after it (as `/slipway preview`).
/// Anyone else's pull request is as much its author's to apply (they can comment as they
/// push); a commit named there must still be the head.
pub(super) fn apply(
    inner: &Inner,
    record: &mut PullRequestRecord,
    env: &EnvName,
    author: &str,
    said: Said<'_>,
    handoff: Option<i64>,
) -> Result<FollowUp, ControllerError> {
    let number = record.number;
    let forge = &setup(inner)?.forge;
    let store = inner.engine.store();
    let refuse = |why: String| {
        audit(inner, author, "pr.apply", env, "refused", &why);
        reply(inner, number as u64, &why);
        Ok(FollowUp::default())
    };
    let details = forge.pull_request(number as u64)?;
    if details.state != PrState::Open {
        return refuse(format!("#{number} is not open; nothing was applied."));
    }
    let shown = &details.info.head_sha;
    let fork = record.is_fork;
    let unseen = if fork || said.commit.is_some() {
        let verb = format!("apply {env}");
        unseen_head(inner, record, shown, said.commit, &verb, said.at)?
            .filter(|_| fork || said.commit.is_some_and(|c| !c.names(shown)))
    } else {
        None
    };
    if let Some(why) = unseen {
        return refuse(why);
    }
    if details.info.head_sha != record.head_sha
        || details.info.base_ref != record.base_ref
        || details.info.author != record.author
        || details.info.labels != record.labels
    {
        set_head(inner, record, &details.info.head_sha)?;
        record.base_ref = details.info.base_ref.clone();
        // The author as the forge's API says (a GitLab webhook names whoever acted).
        record.author = details.info.author.clone();
        // The labels as they are now, for the policies (webhooks may arrive out of order).
        record.labels = details.info.labels.clone();
        store.upsert_pull_request(record)?;
    }
    // An approval was given against the base the pull request had then: retargeted (say from
    // an unreviewed branch to `main`), its diff now carries the old base's commits, which
    // nobody approved. Such a pull request is not applied; a new one is reviewed afresh.
    let opened_base = store
        .pull_request_opened_base(number)?
        .unwrap_or_else(|| record.base_ref.clone());
    if opened_base != details.info.base_ref {
        return refuse(format!(
            "Not applied: #{number} was opened into `{opened_base}` and now merges into `{}`. \
             Its approvals were given against `{opened_base}`, and do not cover what `{}` \
             does not have yet; a pull request whose base changed cannot be applied before \
             merge. Open a new pull request into `{}` (it is reviewed afresh).",
            details.info.base_ref, details.info.base_ref, details.info.base_ref
        ));
    }
    // Which branch ENV tracks is the environment's record (discovery wrote it from the
    // default branch's stack), never what the pull request's stack says.
    let Some(existing) = store
        .environment(env)?
        .filter(|e| e.kind == EnvKind::Static)
    else {
        return refuse(format!(
            "`{env}` is not a deployed static environment; `/slipway apply` takes one that \
             Slipway already runs from its branch."
        ));
    };
    let Some(tracked) = existing.tracked_ref.clone() else {
        return refuse(format!("`{env}` tracks no branch; nothing was applied."));
    };
    if record.base_ref != tracked {
        return refuse(format!(
            "Not applied: `{env}` tracks `{tracked}`, and this pull request is into `{}`. Only \
             a pull request into `{tracked}` can be applied to `{env}`.",
            record.base_ref
        ));
    }
    // A person's command judges by the repository as it is now: a policy merged into the
    // default branch a moment ago holds this apply, whatever the last poll saw.
    inner.fetch()?;
    let head = fetched_head(inner, record)?;
    let cached = inner.engine.load(&origin_at(inner, &head))?;
    let stack = match cached.loaded.valid_stack() {
        Ok(stack) => stack,
        Err(first) => {
            return refuse(format!(
                "The stack at {} does not validate, so it cannot be applied:{}",
                short(&head),
                literal_block(&first.to_string())
            ));
        }
    };
    let Some(def) = stack
        .environments
        .get(env.as_str())
        .filter(|d| d.track.is_some())
    else {
        return refuse(format!(
            "`{env}` is not a static environment of the stack at {}; nothing was applied.",
            short(&head)
        ));
    };
    let head_rules = slipway_engine::Rules::declared(def, EnvKind::Static);
    // The rules of the branch ENV tracks, at its head: a change must not be able to lower
    // its own requirements.
    // The branch itself, never a tag named like it.
    let tracked_tip = inner.source.resolve_tracked(&tracked)?.sha;
    let branch = inner.engine.load(&origin_at(inner, &tracked_tip))?;
    let tracked_rules = branch
        .loaded
        .valid_stack()
        .ok()
        .and_then(|s| s.environments.get(env.as_str()))
        .map(|d| slipway_engine::Rules::declared(d, EnvKind::Static));
    let in_force = inner
        .engine
        .rules_in_force(&origin_at(inner, &head), env, env)?;
    let rules = apply_rules(tracked_rules.as_ref(), in_force.as_ref(), &head_rules);
    let mut unmet = Vec::new();
    if rules.apply_requirements.iter().any(|r| r == "approved") {
        let approvals = forge.approvals(number as u64)?;
        // An approval counts for the head it names; one that names none (GitLab) counts
        // unless its reviewer had approved before the last push (and so approved older code).
        // Only a reviewer with write access who is neither the author nor a pusher of the
        // head approves; while nobody is known to have pushed it, nobody does.
        let pushers = pushers_of(inner, number, record.is_fork, &record.head_ref, &head)?;
        let trusted = &setup(inner)?.trusted_bots;
        if let Some(why) = unknown_pusher(&pushers, &record.author, trusted, &head) {
            unmet.push(format!("approved ({why})"));
        } else if qualified_approval(
            forge.as_ref(),
            &approvals,
            &record.author,
            &pushers.all,
            |a| a.counts_for(&head, &record.stale_approvers),
        )?
        .is_none()
        {
            unmet.push(
                "approved (no approval of the head commit by a reviewer with write access \
                 other than its author, whoever pushed to it and automation accounts)"
                    .to_string(),
            );
        }
    }
    let mergeable = match details.mergeable {
        Some(true) if rules.apply_requirements.iter().any(|r| r == "mergeable") => {
            forge.checks_green(&head)?
        }
        other => other,
    };
    if rules.apply_requirements.iter().any(|r| r == "mergeable") && mergeable != Some(true) {
        unmet.push(match mergeable {
            Some(false) => "mergeable (the forge says it cannot be merged now: a conflict, or a \
                            check or review the base branch requires)"
                .to_string(),
            _ => "mergeable (the forge has not decided yet, or a required check still runs; try \
                  again in a moment)"
                .to_string(),
        });
    }
    if !unmet.is_empty() {
        return refuse(format!(
            "Not applied to `{env}`: its apply requirements are not met: {}.",
            unmet.join("; ")
        ));
    }
    // A protected environment's destroys need a person's typed confirmation, which a comment
    // is not: refuse before taking the lock.
    let mut prepared = match crate::target_of(inner, &existing)
        .and_then(|target| inner.engine.prepare(&origin_at(inner, &head), &target))
    {
        Ok(prepared) => prepared,
        Err(e) => {
            // What a provider or a cluster said may quote a secret value: the reply is public.
            let said = inner.engine.redactor(env)?.redact(&e.to_string());
            return refuse(format!(
                "Not applied: `{env}` cannot be planned at {}:{}",
                short(&head),
                literal_block(&said)
            ));
        }
    };
    // Applying a new head of a pull request that already holds ENV keeps its lock whatever
    // happens; a first apply that changes nothing gives the lock back.
    let held_before = store
        .environment_lock(env)?
        .is_some_and(|l| l.pull_request == number);
    prepared.protected |= rules.protected;
    if let Some(why) = prepared.needs_confirmation() {
        return refuse(format!(
            "Not applied #{number} ({}) to `{env}`:{}A comment cannot confirm that; merge it and \
             have a person confirm on the server. {}",
            short(&head),
            literal_block(&why.to_string()),
            if held_before {
                format!("`{env}` stays on the commit of this pull request it ran.")
            } else {
                format!("`{env}` is not locked.")
            }
        ));
    }
    // The deploy windows of ENV's rules (its branch's head's among them, in force yet or
    // not): a change waits for them, and a comment is no deployer's override.
    let verdict = rules.windows.verdict(inner.now());
    if !verdict.allowed() && prepared.plan.has_changes() {
        let denied = slipway_engine::WindowDenied {
            environment: env.clone(),
            verdict,
        };
        return refuse(format!(
            "Not applied #{number} ({}) to `{env}`: {denied}. {}",
            short(&head),
            if held_before {
                format!("`{env}` stays on the commit of this pull request it ran.")
            } else {
                format!("`{env}` is not locked.")
            }
        ));
    }
    // The policies of the default branch, judging this pull request's code: refused here,
    // with their word, before the environment is locked to it.
    let approved_by = crate::gate::judge_for_pull(inner, &mut prepared, record)?;
    if let Err(denied) = inner
        .engine
        .policies_allow(&prepared, approved_by.as_deref())
    {
        return refuse(format!(
            "Not applied #{number} ({}) to `{env}`:{}",
            short(&head),
            literal_block(&denied.to_string())
        ));
    }
    let Some(lock) = store.lock_environment_while_open(env, number, author, now_ms())? else {
        return refuse(format!(
            "#{number} was closed while it was applied; nothing was applied to `{env}`."
        ));
    };
    if lock.pull_request != number {
        return refuse(format!(
            "Not applied: `{env}` is locked by #{} (applied by @{}). It is released when #{} \
             is merged or closed, or with `/slipway unlock {env}` there.",
            lock.pull_request, lock.who, lock.pull_request
        ));
    }
    // Stay on the pull request's head: the environment is pinned to it until the lock goes.
    // Read and written at once: a reconcile finishing meanwhile keeps what it recorded. Only
    // while the lock is still this pull request's, in the same transaction: a person's pin,
    // rollback or unpin ends it, and what they chose stays.
    let last_deployment = store.deployment_refs(env, 1)?.first().map(|d| d.id);
    let mut before = None;
    let pinned = store.update_environment_locked_by(env, number, |recorded| {
        let mut environment = recorded.unwrap_or(existing);
        before = Some((environment.pinned, environment.desired_commit.clone()));
        environment.pinned = true;
        environment.desired_commit = Some(head.clone());
        environment.updated_at = now_ms();
        Ok::<_, std::convert::Infallible>(environment)
    })?;
    if pinned.is_none() {
        return refuse(format!(
            "Not applied #{number} ({}) to `{env}`: a person pinned, rolled back or unpinned \
             `{env}` while this was decided (which ends a pull request's lock), or #{number} \
             was closed or unlocked. `{env}` stays as they left it, and is not locked; comment \
             `/slipway apply {env}` again to apply #{number} over it.",
            short(&head)
        ));
    }
    let (before_pinned, before_desired) = before.expect("the update read the environment");
    let pending = PendingApply {
        number,
        head,
        author: author.to_string(),
        held_before,
        before_pinned,
        before_desired,
        last_deployment,
        handoff,
    };
    // The reconcile is the queue's, like every other trigger's: the environment may be busy
    // (the controller's own pass, a CLI apply), and this forge event must not hold up the
    // next ones while it is. The pull request is answered when that reconcile ends.
    let replaced = inner
        .applies
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(env.clone(), pending);
    // An earlier apply of this environment not started yet is answered by this one's
    // reconcile (as it always was): its handed-over work is done.
    if let Some(id) = replaced.and_then(|p| p.handoff) {
        store.finish_handoff(id)?;
    }
    Ok(FollowUp {
        apply: Some(env.clone()),
        ..FollowUp::default()
    })
}

/// A `/slipway apply` whose environment is pinned to the pull request's head, waiting for the
/// reconcile that deploys it: the worker that starts the next reconcile of the environment
/// takes it, and [`answer`] replies on the pull request when that reconcile ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingApply {
    number: i64,
    head: String,
    author: String,
    /// The pull request held the environment's lock before this apply.
    held_before: bool,
    /// What the environment followed before, restored when nothing was applied.
    before_pinned: bool,
    before_desired: Option<String>,
    /// The environment's last deployment before, to tell whether an apply started.
    last_deployment: Option<i64>,
    /// The work this apply was handed over as by the replica that heard the command (see
    /// `handoff`): done once the pull request is answered.
    handoff: Option<i64>,
}

/// Answers `pending` on its pull request once the reconcile of `env` ended (`failure`: its
/// error, if it failed). Applied: the environment stays locked to the pull request. Held or
/// refused before anything changed: the environment goes back to what it followed, unlocked
/// unless the pull request held it already, and `true` asks for it to be reconciled again.
/// Failed while applying: it stays locked, for a fix to be pushed. Answered, the work it was
/// handed over as is done, whatever the answer.
pub(crate) fn answer(
    inner: &Inner,
    env: &EnvName,
    pending: &PendingApply,
    failure: Option<&str>,
) -> Result<bool, ControllerError> {
    let answered = answer_once(inner, env, pending, failure);
    if let Some(id) = pending.handoff {
        inner.engine.store().finish_handoff(id)?;
    }
    answered
}

fn answer_once(
    inner: &Inner,
    env: &EnvName,
    pending: &PendingApply,
    failure: Option<&str>,
) -> Result<bool, ControllerError> {
    let store = inner.engine.store();
    let PendingApply {
        number,
        head,
        author,
        held_before,
        ..
    } = pending;
    let (number, held_before) = (*number, *held_before);
    let after = store.environment(env)?;
    let applied = failure.is_none()
        && after.as_ref().is_some_and(|e| {
            e.commit.as_deref() == Some(head.as_str()) && e.sync == SyncState::Synced
        });
    let started = store.deployment_refs(env, 1)?.first().map(|d| d.id) != pending.last_deployment;
    if applied {
        audit(
            inner,
            author,
            "pr.apply",
            env,
            "allowed",
            &format!("#{number} at {head}"),
        );
        reply(
            inner,
            number as u64,
            &format!(
                "Applied #{number} ({}) to `{env}`. `{env}` is locked to this pull request until \
                 it is merged or closed (`/slipway unlock {env}` releases it sooner).",
                short(head)
            ),
        );
        return Ok(false);
    }
    let why = after
        .as_ref()
        .and_then(|e| e.message.clone())
        .or_else(|| failure.map(str::to_string))
        .unwrap_or_else(|| "the apply did not finish".into());
    if !started {
        // Held or refused before anything changed (a protected destroy awaiting a person,
        // an invalid commit): the environment goes back to what it followed, unlocked unless
        // this pull request held it already.
        if !held_before {
            store.unlock_environment(env, number)?;
        }
        // Only what this apply did is undone: a close or an unlock handled meanwhile released
        // the environment to follow its branch (unpinned, the lock gone), and re-pinning it to
        // the head it ran before would leave it pinned, with no lock, for good.
        let released = held_before
            && store
                .environment_lock(env)?
                .is_none_or(|l| l.pull_request != number);
        store.modify_environment(env, |e| {
            // A person's pin meanwhile (which ended the lock) stays where they put it.
            if released || !e.pinned || e.desired_commit.as_deref() != Some(head.as_str()) {
                return;
            }
            e.pinned = pending.before_pinned;
            e.desired_commit = pending.before_desired.clone();
            e.updated_at = now_ms();
        })?;
        audit(inner, author, "pr.apply", env, "refused", &why);
        reply(
            inner,
            number as u64,
            &format!(
                "Not applied #{number} ({}) to `{env}`:{}Nothing was changed{}.",
                short(head),
                literal_block(&why),
                if held_before {
                    format!("; `{env}` stays on the commit of this pull request it ran")
                } else {
                    format!(" and `{env}` is not locked")
                }
            ),
        );
        return Ok(true);
    }
    audit(inner, author, "pr.apply", env, "failed", &why);
    reply(
        inner,
        number as u64,
        &format!(
            "Applying #{number} ({}) to `{env}` failed:{}`{env}` stays locked to this pull \
             request; push a fix and apply again, or `/slipway unlock {env}`.",
            short(head),
            literal_block(&why)
        ),
    );
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_engine::Rules;

    fn requirements(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_pull_request_is_judged_by_the_strongest_of_its_branch_what_runs_and_its_own() {
        let lowered = Rules::default();
        let branch = Rules {
            protected: true,
            apply_requirements: requirements(&["approved", "mergeable"]),
            ..Rules::default()
        };
        assert_eq!(
            apply_rules(Some(&branch), None, &lowered),
            branch,
            "the head cannot lower the tracked branch's rules"
        );
        let running = Rules {
            require_pr: true,
            apply_requirements: requirements(&["approved"]),
            ..Rules::default()
        };
        assert_eq!(
            apply_rules(Some(&lowered), Some(&running), &lowered),
            running,
            "nor those in force, whatever the branch's head says"
        );
        assert_eq!(
            apply_rules(None, None, &branch),
            branch,
            "with nothing else known, the head's own rules hold"
        );
    }
}
