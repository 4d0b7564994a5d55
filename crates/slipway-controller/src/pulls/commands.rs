//! Comment commands (`/slipway plan|apply|unlock|preview|approve-policies|help`): parsed
//! strictly, honoured only from people with write access, each audited and answered on the
//! pull request. One that approves a head (`preview`, `approve-policies`) approves the commit
//! it names, or, naming none, a head that is not too new to have been seen.

use slipway_core::EnvName;
use slipway_core::vocab::EventKind;
use slipway_forge::{Command, CommitPrefix, parse_command};
use slipway_state::now_ms;

use super::handoff::{Route, Work, route};
use super::{FollowUp, apply::apply, event, plans::post_plans, set_head, setup, short};
use crate::{ControllerError, Inner, requests};

pub(super) fn reply(inner: &Inner, pr: u64, body: &str) {
    if let Ok(setup) = setup(inner)
        && let Err(e) = setup.forge.post_comment(pr, body)
    {
        event(
            inner,
            &EnvName::pull_request(pr),
            EventKind::ForgeFailed,
            &format!("cannot comment on #{pr}: {e}"),
        );
    }
}

/// The oldest a command may be when it is delivered (by the forge's time of the comment).
const MAX_AGE_MS: i64 = 60 * 60 * 1000;

/// How long after refusing a command of an author without write access on a pull request
/// Slipway stays silent on their next ones (each is still audited).
const REFUSAL_QUIET_MS: i64 = 10 * 60 * 1000;

/// The same, for a malformed command (a maintainer's typo among them: answered again soon).
const MALFORMED_QUIET_MS: i64 = 60 * 1000;

/// Most (author, pull request) pairs remembered as answered: past it, the oldest go.
const REFUSALS_KEPT: usize = 10_000;

/// Answers `author`'s refused or malformed command on `pr` with `body`, unless they were
/// answered so less than `quiet_ms` ago (on this pull request, or on any when `anywhere`): a
/// flood of comments gets one answer, not a flood of Slipway's (which would also spend the
/// token's limits on comments, and hold the forge events' queue).
fn refuse(inner: &Inner, pr: u64, author: &str, body: &str, quiet_ms: i64, anywhere: bool) {
    let now = now_ms();
    {
        let mut refusals = inner
            .refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Pull requests are numbered from 1: 0 stands for any.
        let key = (author.to_ascii_lowercase(), if anywhere { 0 } else { pr });
        if refusals.get(&key).is_some_and(|at| now - at < quiet_ms) {
            return;
        }
        refusals.retain(|_, at| now - *at < REFUSAL_QUIET_MS);
        if refusals.len() >= REFUSALS_KEPT {
            let oldest = refusals
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                refusals.remove(&oldest);
            }
        }
        refusals.insert(key, now);
    }
    reply(inner, pr, body);
}

pub(super) fn audit(
    inner: &Inner,
    who: &str,
    action: &str,
    target: &str,
    outcome: &str,
    detail: &str,
) {
    let _ = inner.engine.store().record_audit(&slipway_state::NewAudit {
        at: now_ms(),
        who: format!("forge:{who}"),
        action: action.into(),
        target: Some(target.into()),
        outcome: outcome.into(),
        detail: detail.into(),
    });
}

pub(super) fn comment(
    inner: &Inner,
    number: u64,
    author: &str,
    body: &str,
    said_at: Option<i64>,
) -> Result<FollowUp, ControllerError> {
    let command = match parse_command(body) {
        Ok(None) => return Ok(FollowUp::default()),
        Ok(Some(_)) if said_at.is_some_and(|at| now_ms().saturating_sub(at) > MAX_AGE_MS) => {
            // A delivery of an old comment (a signed one captured and sent again once its id
            // left the deliveries kept, or a redelivery days later) is not acted on: the pull
            // request's head and rules are not those its author saw.
            audit(
                inner,
                author,
                "pr.command",
                &format!("#{number}"),
                "refused",
                "a command said over an hour before it was delivered",
            );
            return Ok(FollowUp::default());
        }
        Ok(Some(command)) => command,
        Err(e) => {
            audit(
                inner,
                author,
                "pr.command",
                &format!("#{number}"),
                "refused",
                "malformed command",
            );
            // Answered before anyone's access is asked (a maintainer's typo): once a minute
            // for the author on any pull request, so that one account cannot make Slipway
            // comment on every pull request at once.
            refuse(
                inner,
                number,
                author,
                &e.to_string(),
                MALFORMED_QUIET_MS,
                true,
            );
            return Ok(FollowUp::default());
        }
    };
    let forge = &setup(inner)?.forge;
    let target = format!("#{number}");
    let allowed = match forge.has_write_access(author) {
        Ok(allowed) => allowed,
        Err(e) => {
            // Say so on the pull request: otherwise the command just seems ignored.
            audit(
                inner,
                author,
                "pr.command",
                &target,
                "failed",
                &format!("`{command}`: write access unknown: {e}"),
            );
            reply(
                inner,
                number,
                &format!(
                    "Slipway could not check whether @{author} may run `{command}`: the forge \
                     answered {e}. Its token must be allowed to read collaborators' \
                     permissions (on Gitea: an admin of the repository)."
                ),
            );
            return Ok(FollowUp::default());
        }
    };
    if !allowed {
        audit(
            inner,
            author,
            "pr.command",
            &target,
            "refused",
            &format!("`{command}` without write access"),
        );
        refuse(
            inner,
            number,
            author,
            &format!(
                "Sorry @{author}, only people with write access to this repository can run \
                 `{command}`."
            ),
            REFUSAL_QUIET_MS,
            false,
        );
        return Ok(FollowUp::default());
    }
    audit(
        inner,
        author,
        "pr.command",
        &target,
        "allowed",
        &command.to_string(),
    );
    let (Command::Apply { env, .. } | Command::Unlock { env }) = &command else {
        return run(inner, number, author, command, said_at, None);
    };
    // What it changes of the environment is done under its lease, by the replica that works
    // on it: here, or handed over to that replica (see `handoff`).
    let work = Work::Command {
        number,
        author: author.to_owned(),
        command: command.to_string(),
        said_at,
    };
    match route(inner, env, &work)? {
        Route::Here { claimed } => {
            let env = env.clone();
            let done = run(inner, number, author, command, said_at, None);
            if claimed {
                requests::release(inner, &env);
            }
            done
        }
        Route::HandedOff { alive: true, .. } => Ok(FollowUp::default()),
        Route::HandedOff {
            replica,
            alive: false,
        } => {
            reply(
                inner,
                number,
                &format!(
                    "`{env}` runs on the node of replica {replica}, which is not running just \
                     now: `{command}` waits for it, and is answered here once {replica} runs \
                     again."
                ),
            );
            Ok(FollowUp::default())
        }
    }
}

/// Runs `command`, checked (parsed, its author's write access), on pull request `number`,
/// on the replica that works on the environment it changes; `said_at`: when the forge says the
/// comment was made (unix ms), if it says; `handoff`: the id of the work it was handed over as
/// (see `handoff`), finished when an apply is answered.
pub(super) fn run(
    inner: &Inner,
    number: u64,
    author: &str,
    command: Command,
    said_at: Option<i64>,
    handoff: Option<i64>,
) -> Result<FollowUp, ControllerError> {
    let forge = &setup(inner)?.forge;
    let store = inner.engine.store();
    let Some(mut record) = store.pull_request(number as i64)? else {
        reply(
            inner,
            number,
            "Slipway has not seen this pull request open yet; push to it (or reopen it) first.",
        );
        return Ok(FollowUp::default());
    };
    match command {
        Command::Help => {
            reply(inner, number, slipway_forge::USAGE);
            Ok(FollowUp::default())
        }
        Command::Plan { env } => {
            post_plans(inner, &record, env.as_ref(), super::Announce::Pending)?;
            Ok(FollowUp::default())
        }
        Command::Preview { commit } => {
            // The approval is for the code the maintainer saw: the head the forge shows now,
            // if it is the one they named or, naming none, if it is not too new to have
            // been seen.
            let head = forge.pull_request(number)?.info.head_sha;
            if !record.preview_allowed || record.head_sha != head {
                // Only a fork's code needs the say-so; any other head is just recorded.
                let named = if record.is_fork {
                    commit.as_ref()
                } else {
                    None
                };
                let unseen = unseen_head(inner, &mut record, &head, named, "preview", said_at)?;
                if let Some(why) = unseen.filter(|_| record.is_fork) {
                    return Ok(refused(inner, author, "pr.preview", number, &why));
                }
                record.preview_allowed = true;
                record.updated_at = now_ms();
                store.upsert_pull_request(&record)?;
                reply(
                    inner,
                    number,
                    &format!(
                        "@{author} allowed a preview environment for this pull request at {}: \
                         `pr-{number}` is on its way. {}",
                        short(&record.head_sha),
                        if record.is_fork {
                            "It runs this commit only: a new push waits for another \
                             `/slipway preview`."
                        } else {
                            ""
                        }
                    ),
                );
            }
            Ok(FollowUp {
                refresh: true,
                ..FollowUp::default()
            })
        }
        Command::Unlock { env } => {
            if store
                .environment_lock(&env)?
                .is_some_and(|l| l.pull_request == record.number)
            {
                let released = {
                    store.unlock_environment(&env, record.number)?;
                    store.modify_environment(&env, |e| {
                        e.pinned = false;
                        e.updated_at = now_ms();
                    })?;
                    vec![env.clone()]
                };
                reply(
                    inner,
                    number,
                    &format!("Unlocked `{env}`: it follows its branch again."),
                );
                Ok(FollowUp {
                    reconcile: released,
                    ..FollowUp::default()
                })
            } else {
                reply(
                    inner,
                    number,
                    &format!("`{env}` is not locked by this pull request."),
                );
                Ok(FollowUp::default())
            }
        }
        Command::Apply { env, commit } => apply(
            inner,
            &mut record,
            &env,
            author,
            super::apply::Said {
                commit: commit.as_ref(),
                at: said_at,
            },
            handoff,
        ),
        Command::ApprovePolicies { commit } => {
            approve_policies(inner, &mut record, author, commit.as_ref(), said_at)
        }
    }
}

/// Audits `author`'s `action` on pull request `number` as refused, and answers `why` there.
fn refused(inner: &Inner, author: &str, action: &str, number: u64, why: &str) -> FollowUp {
    audit(inner, author, action, &format!("#{number}"), "refused", why);
    reply(inner, number, why);
    FollowUp::default()
}

/// Records `head`, the forge's head of `record` now, and says why a `/slipway VERB` that
/// approves it must not. Its whole commit id (`named`) approves it at once. A shortened one
/// must be its start, and is then taken as naming none, since a commit made to start alike is
/// cheap to find: such a command does not approve a head newer than `[forge.NAME] fresh_head`,
/// or newer than what Slipway had when the command came, so that a push raced in between a
/// person's reading and their comment is not approved unseen. Newer is judged against the
/// comment's time as the forge gives it (`said_at`, unix ms) as well as against now: a
/// delivery can come minutes after its comment (a queue, a redelivery), by which time a head
/// pushed after the comment looks old. `None`: approve.
pub(super) fn unseen_head(
    inner: &Inner,
    record: &mut slipway_state::PullRequestRecord,
    head: &str,
    named: Option<&CommitPrefix>,
    verb: &str,
    said_at: Option<i64>,
) -> Result<Option<String>, ControllerError> {
    let moved = record.head_sha != head;
    if moved {
        set_head(inner, record, head)?;
        record.updated_at = now_ms();
        inner.engine.store().upsert_pull_request(record)?;
    }
    // The whole id: what a person copies from the commit they read.
    let again = format!("`/slipway {verb} {head}`");
    let fresh = i64::try_from(setup(inner)?.fresh_head.as_millis()).unwrap_or(i64::MAX);
    let recent = moved || too_fresh(record.head_seen_at, said_at, now_ms(), fresh);
    // What the command would have done, and did not.
    let (nothing, meant) = if verb.starts_with("apply") {
        ("Nothing was applied", "apply")
    } else {
        ("Nothing was approved", "approve")
    };
    Ok(match named {
        Some(commit) if !commit.names(head) => Some(format!(
            "{nothing}: the head of this pull request is {}, not `{commit}`. Look at it and, \
             if it is what you meant to {meant}, comment {again}.",
            short(head)
        )),
        Some(commit) if commit.is_whole(head) => None,
        _ if recent => Some(format!(
            "{nothing}: the head of this pull request, {}, was pushed moments before your \
             comment or after it, so it may not be what you read. Look at it and, if it is \
             what you meant to {meant}, name its whole id: {again}.",
            short(head)
        )),
        _ => None,
    })
}

/// Whether a head Slipway saw at `seen` is too fresh for a command naming no commit, made at
/// `said_at` (as the forge says; `None`: it does not) and handled `now` (unix ms): seen less
/// than `fresh` before the command was handled, or before the comment was made, or after it.
/// The comment's time is the forge's clock against Slipway's: a skew of a few seconds moves
/// the line by as much. GitHub and Gitea give whole seconds, so a time without milliseconds is
/// taken as the end of its second (the comment may have been made up to 999 ms after the time
/// it shows: "after it" is to the second there); GitLab's milliseconds are taken as they are.
/// A head never seen (a record from before the time was kept) is not too fresh.
fn too_fresh(seen: Option<i64>, said_at: Option<i64>, now: i64, fresh: i64) -> bool {
    let latest = |at: i64| {
        if at.rem_euclid(1_000) == 0 {
            at.saturating_add(999)
        } else {
            at
        }
    };
    seen.is_some_and(|seen| {
        now.saturating_sub(seen) < fresh
            || said_at.is_some_and(|at| latest(at).saturating_sub(seen) < fresh)
    })
}

/// `/slipway approve-policies`: a policy owner (`[policies] owners`, forge logins) lets the
/// soft policy denials of the pull request's head commit through, as the forge shows it now
/// (the commit the owner saw); a new push needs a new approval. Hard denials stay.
fn approve_policies(
    inner: &Inner,
    record: &mut slipway_state::PullRequestRecord,
    author: &str,
    commit: Option<&CommitPrefix>,
    said_at: Option<i64>,
) -> Result<FollowUp, ControllerError> {
    let number = record.number as u64;
    let owners = &inner.engine.config().policies.owners;
    if !owners.iter().any(|o| o == author) {
        audit(
            inner,
            author,
            "policies.approve",
            &format!("#{number}"),
            "refused",
            "not a policy owner",
        );
        reply(
            inner,
            number,
            &format!(
                "Sorry @{author}, only the policy owners named in Slipway's configuration \
                 (`[policies] owners`) can approve policies."
            ),
        );
        return Ok(FollowUp::default());
    }
    let head = setup(inner)?.forge.pull_request(number)?.info.head_sha;
    if let Some(why) = unseen_head(inner, record, &head, commit, "approve-policies", said_at)? {
        return Ok(refused(inner, author, "policies.approve", number, &why));
    }
    // Two people: an owner does not let their own code through.
    let pushers = super::pushers_of(
        inner,
        record.number,
        record.is_fork,
        &record.head_ref,
        &head,
    )?;
    // Who pushed the head must be known (the push's webhook may come after the comment's),
    // and no bot may have pushed for someone: as for `/slipway apply`'s `approved`.
    let trusted = &setup(inner)?.trusted_bots;
    if let Some(why) = super::unknown_pusher(&pushers, &record.author, trusted, &head) {
        let why = format!("Nothing was approved: {why}.");
        return Ok(refused(inner, author, "policies.approve", number, &why));
    }
    if record.author.eq_ignore_ascii_case(author)
        || pushers.all.iter().any(|p| p.eq_ignore_ascii_case(author))
    {
        let why = format!(
            "Sorry @{author}, you opened or pushed to this pull request: another policy owner \
             approves its policies."
        );
        return Ok(refused(inner, author, "policies.approve", number, &why));
    }
    inner
        .engine
        .store()
        .approve_policies(record.number, &head, author, now_ms())?;
    audit(
        inner,
        author,
        "policies.approve",
        &format!("#{number}"),
        "ok",
        &format!("soft policy denials of {} approved", short(&head)),
    );
    reply(
        inner,
        number,
        &format!(
            "@{author} approved the soft policy denials of this pull request at {}: its plans \
             may go through them for this commit only (a new push needs a new approval; hard \
             denials stay).",
            short(&head)
        ),
    );
    post_plans(inner, record, None, super::Announce::Quietly)?;
    // Its held environments are looked at again now, not at their next regular pass.
    Ok(FollowUp {
        refresh: true,
        reconcile: crate::gate::environments_of(inner, record.number)?,
        ..FollowUp::default()
    })
}

#[cfg(test)]
mod tests {
    use super::too_fresh;

    const MINUTE: i64 = 60_000;

    #[test]
    fn a_head_is_too_fresh_near_the_comment_or_near_its_handling() {
        let now = 1_000 * MINUTE;
        // Handled at once: judged by now, as before the comment's time was known.
        assert!(too_fresh(Some(now - 59_000), None, now, MINUTE));
        assert!(!too_fresh(Some(now - MINUTE), None, now, MINUTE));
        // Handled late: a head seen ten minutes ago, after a comment made eleven minutes ago.
        let said = now - 11 * MINUTE;
        assert!(too_fresh(Some(now - 10 * MINUTE), Some(said), now, MINUTE));
        // Seen a minute or more before the comment: old enough, however late it came.
        assert!(!too_fresh(Some(said - MINUTE), Some(said), now, MINUTE));
        // The comment shows whole seconds, and is taken as made at the end of its second: a
        // head seen up to 999 ms less than a minute before the shown time is old enough (the
        // window shrinks by under a second), one more millisecond is not.
        assert!(!too_fresh(
            Some(said - MINUTE + 999),
            Some(said),
            now,
            MINUTE
        ));
        assert!(too_fresh(
            Some(said - MINUTE + 1_000),
            Some(said),
            now,
            MINUTE
        ));
        // `fresh_head = "0s"`: only a head seen after the comment's second is refused.
        assert!(!too_fresh(Some(said + 999), Some(said), now, 0));
        assert!(too_fresh(Some(said + 1_000), Some(said), now, 0));
        // A comment dated later (a forge clock ahead) makes heads look older to it; the time
        // of handling still refuses a head fresh now.
        assert!(!too_fresh(
            Some(now - 2 * MINUTE),
            Some(now + MINUTE),
            now,
            MINUTE
        ));
        assert!(too_fresh(
            Some(now - 10_000),
            Some(now + MINUTE),
            now,
            MINUTE
        ));
        // A time with milliseconds (GitLab) is taken as it is.
        assert!(too_fresh(Some(said + 501), Some(said + 500), now, 0));
        assert!(too_fresh(
            Some(said - MINUTE + 501),
            Some(said + 500),
            now,
            MINUTE
        ));
        // Never seen (a record older than the time): not too fresh.
        assert!(!too_fresh(None, Some(said), now, MINUTE));
        // Seen after now (Slipway's clock stepped back): too fresh.
        assert!(too_fresh(Some(i64::MAX), None, i64::MIN, 0));
        // Extremes do not wrap, in either clause.
        assert!(!too_fresh(
            Some(i64::MIN),
            Some(i64::MAX),
            i64::MAX,
            i64::MAX
        ));
        // A whole second at the very end of time: its 999 ms saturate.
        let last_second = i64::MAX - i64::MAX.rem_euclid(1_000);
        assert!(!too_fresh(
            Some(i64::MIN),
            Some(last_second),
            i64::MAX,
            i64::MAX
        ));
        // Seen at the very time of a comment given to the millisecond: too fresh.
        assert!(too_fresh(Some(i64::MIN), Some(i64::MIN), i64::MAX, 1));
    }
}
