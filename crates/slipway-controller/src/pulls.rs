//! Pull requests as the gate: what the controller does with a forge's events. Every function
//! here runs on a blocking thread (forge calls are blocking HTTP).
//!
//! - A pull request opened, reopened or pushed to: it is recorded, the repository fetched and
//!   its head checked against the event, and one comment on it (updated in place) shows the
//!   plan of every environment it would change once merged (each static environment tracking
//!   its base branch) and of its own preview environment, with a `slipway/plan` commit status.
//!   The preview environment `pr-<n>` itself comes from discovery, for generated families with
//!   `pull_requests: true`, unless the code comes from a fork nobody vouched for.
//! - Closed or merged: its locks are released (those environments follow their branch again)
//!   and discovery marks its preview, which a worker then destroys.
//! - Comment commands (`/slipway plan|apply|unlock|preview|help`), parsed strictly and only
//!   honoured from people with write access.

mod apply;
mod commands;
mod handoff;
mod plans;
mod setup;

use commands::comment;
use slipway_core::EnvName;
use std::collections::BTreeSet;

use slipway_core::vocab::EventKind;
use slipway_engine::Origin;
use slipway_forge::{Forge, ForgeEvent, PrAction, PrState, PullRequestDetails, PullRequestInfo};
use slipway_state::{PullRequestRecord, now_ms};

pub(crate) use apply::{PendingApply, answer};
pub(crate) use handoff::{run as run_handoff, take as take_handoffs};
pub(crate) use plans::{Announce, post_plans};
pub use plans::{detail, summary};
pub use setup::{ForgeSetup, setup_from_config};

use crate::{ControllerError, Inner, short};

/// What the async side should do after an event was handled.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct FollowUp {
    /// Fetch and discover now (a push, a new or closed pull request).
    pub refresh: bool,
    /// Environments to reconcile now.
    pub reconcile: Vec<EnvName>,
    /// The environment a `/slipway apply` pinned: reconciled now, and the pull request
    /// answered when that ends.
    pub apply: Option<EnvName>,
}

fn setup(inner: &Inner) -> Result<&ForgeSetup, ControllerError> {
    inner
        .forge
        .get()
        .ok_or_else(|| ControllerError::Invalid("no forge is configured".into()))
}

/// Handles one verified event.
pub(crate) fn handle(inner: &Inner, forge_event: ForgeEvent) -> Result<FollowUp, ControllerError> {
    match forge_event {
        ForgeEvent::Push {
            git_ref,
            after,
            deleted,
            pusher,
            ..
        } => {
            if let (Some(pusher), false) = (pusher, deleted) {
                inner
                    .engine
                    .store()
                    .record_push(&git_ref, &after, &pusher, now_ms())?;
            }
            Ok(FollowUp {
                refresh: true,
                ..FollowUp::default()
            })
        }
        ForgeEvent::PullRequest {
            action,
            mut pr,
            sender,
        } => match action {
            PrAction::Opened | PrAction::Reopened | PrAction::Synchronized => {
                // A late delivery (an `opened` or a push redelivered after the close) would
                // reopen a closed pull request's record and make its preview again: the
                // forge is asked whether it is still closed, only then.
                if action != PrAction::Reopened
                    && inner
                        .engine
                        .store()
                        .pull_request(pr.number as i64)?
                        .is_some_and(|known| known.state != "open")
                    && setup(inner)?.forge.pull_request(pr.number)?.state != PrState::Open
                {
                    event(
                        inner,
                        &EnvName::pull_request(pr.number),
                        EventKind::PullRequestUpdated,
                        &format!(
                            "#{} is closed: a late delivery about it is not acted on",
                            pr.number
                        ),
                    );
                    return Ok(FollowUp::default());
                }
                // Who pushed the head: the sender of a push to the pull request; for a fork's,
                // whose branch pushes this repository never sees, the opener (its author) of
                // the head it was opened with. A same-repository branch's pushes come as push
                // webhooks; a reopen's sender pushed nothing.
                let pushed =
                    action == PrAction::Synchronized || (action == PrAction::Opened && pr.is_fork);
                if let (Some(sender), true) = (&sender, pushed) {
                    inner.engine.store().record_push(
                        &format!("pull/{}", pr.number),
                        &pr.head_sha,
                        sender,
                        now_ms(),
                    )?;
                }
                pr.author = real_author(inner, &pr)?;
                // A reopened pull request's head may have been pushed while it was closed
                // (GitLab and Gitea send no push event then): seen now too.
                opened(inner, &pr, pushed || action == PrAction::Reopened)?;
                Ok(FollowUp {
                    refresh: true,
                    ..FollowUp::default()
                })
            }
            PrAction::Closed | PrAction::Merged => closed(inner, &pr, action == PrAction::Merged),
            // An edit that moved the base (GitHub and Gitea `edited`, GitLab `update` of the
            // target branch): recorded and planned against the new base; `/slipway apply`
            // refuses it (see `apply`).
            PrAction::Other(_) => {
                let store = inner.engine.store();
                let known = store
                    .pull_request(pr.number as i64)?
                    .filter(|k| k.state == "open");
                let retargeted = known.as_ref().is_some_and(|k| k.base_ref != pr.base_ref);
                // Labelled or unlabelled: the policies may read the labels, so its plans are
                // judged again (GitHub `labeled`/`unlabeled`, Gitea `label_updated`, GitLab
                // `update` of its labels).
                let relabelled = known.as_ref().is_some_and(|k| k.labels != pr.labels);
                if relabelled && !retargeted {
                    pr.author = real_author(inner, &pr)?;
                    event(
                        inner,
                        &EnvName::pull_request(pr.number),
                        EventKind::PullRequestUpdated,
                        &format!(
                            "#{} is labelled {}",
                            pr.number,
                            if pr.labels.is_empty() {
                                "nothing".to_string()
                            } else {
                                pr.labels.join(", ")
                            }
                        ),
                    );
                    opened(inner, &pr, false)?;
                    return Ok(FollowUp {
                        refresh: true,
                        reconcile: crate::gate::environments_of(inner, pr.number as i64)?,
                        ..FollowUp::default()
                    });
                }
                if !retargeted {
                    return Ok(FollowUp::default());
                }
                pr.author = real_author(inner, &pr)?;
                event(
                    inner,
                    &EnvName::pull_request(pr.number),
                    EventKind::PullRequestRetargeted,
                    &format!(
                        "#{} now merges into {}: it cannot be applied before merge any more \
                         (approvals were given against its first base)",
                        pr.number, pr.base_ref
                    ),
                );
                opened(inner, &pr, false)?;
                Ok(FollowUp {
                    refresh: true,
                    ..FollowUp::default()
                })
            }
        },
        ForgeEvent::Comment {
            pr_number,
            author,
            body,
            is_pull_request: true,
            created_at,
            ..
        } => comment(inner, pr_number, &author, &body, created_at),
        ForgeEvent::Comment { .. }
        | ForgeEvent::Review { .. }
        | ForgeEvent::Ping
        | ForgeEvent::Ignored { .. } => Ok(FollowUp::default()),
    }
}

/// The pull request's author. GitLab's merge request webhooks name whoever triggered the
/// event (a reviewer, a maintainer who edited the title), not the author: there the author is
/// asked of the API. Other forges' payloads name the author.
fn real_author(inner: &Inner, pr: &PullRequestInfo) -> Result<String, ControllerError> {
    let setup = setup(inner)?;
    if setup.kind.profile().webhook_names_pr_author {
        return Ok(pr.author.clone());
    }
    Ok(setup.forge.pull_request(pr.number)?.info.author)
}

/// Moves `record`'s head to `head`. When it moves, everyone who approved by then is added to
/// its stale approvers: an approval that names no commit (GitLab keeps them across pushes) was
/// given for an older head. Every path that changes a recorded head goes through here (an
/// event, `/slipway preview`, `/slipway apply`, the catch-up pass), whichever sees the new
/// head first. A fork's preview approval was for the old head: it goes with it (unless its
/// author is in `fork_allow`). Errors when the forge cannot list the approvals: the head is
/// then not moved, and the next event or catch-up pass tries again.
fn set_head(
    inner: &Inner,
    record: &mut PullRequestRecord,
    head: &str,
) -> Result<(), ControllerError> {
    if record.head_sha == head {
        return Ok(());
    }
    let approvals = setup(inner)?
        .forge
        .approvals(record.number as u64)
        .map_err(|e| {
            ControllerError::Invalid(format!(
                "#{}'s head moved to {}, but its approvals cannot be listed (the forge \
                 answered {e}); it is taken when they can be",
                record.number,
                short(head)
            ))
        })?;
    record.stale_approvers.extend(
        approvals
            .into_iter()
            .filter(|a| a.commit_sha.is_none())
            .map(|a| a.author),
    );
    record.stale_approvers.sort();
    record.stale_approvers.dedup();
    record.head_sha = head.to_string();
    record.head_seen_at = Some(now_ms());
    let fork_allow = &setup(inner)?.fork_allow;
    let outsiders = fork_pushers(inner, record)?;
    record.preview_allowed = preview_allowed(record, fork_allow, outsiders.as_deref(), None);
    Ok(())
}

fn record_of(
    inner: &Inner,
    pr: &PullRequestInfo,
    state: &str,
) -> Result<PullRequestRecord, ControllerError> {
    // A record that cannot be read is an error, not a pull request seen for the first time:
    // written back as new, it would lose the approvers a push made stale (who would count
    // again) and when its head was seen.
    let known = inner.engine.store().pull_request(pr.number as i64)?;
    // The head (and who approved before it) stays what was known: callers move it with
    // `set_head`.
    let mut record = PullRequestRecord {
        number: pr.number as i64,
        title: pr.title.clone(),
        author: pr.author.clone(),
        head_sha: known
            .as_ref()
            .map_or_else(|| pr.head_sha.clone(), |k| k.head_sha.clone()),
        head_ref: pr.head_ref.clone(),
        base_ref: pr.base_ref.clone(),
        is_fork: pr.is_fork,
        state: state.into(),
        preview_allowed: false,
        url: pr.url.clone(),
        updated_at: now_ms(),
        stale_approvers: known
            .as_ref()
            .map(|k| k.stale_approvers.clone())
            .unwrap_or_default(),
        labels: pr.labels.clone(),
        head_seen_at: known.as_ref().map_or(Some(now_ms()), |k| k.head_seen_at),
    };
    let fork_allow = setup(inner).map(|s| s.fork_allow.as_slice()).unwrap_or(&[]);
    // Judged at the pull request's new head.
    let at_head = PullRequestRecord {
        head_sha: pr.head_sha.clone(),
        ..record.clone()
    };
    let outsiders = fork_pushers(inner, &at_head)?;
    record.preview_allowed =
        preview_allowed(&at_head, fork_allow, outsiders.as_deref(), known.as_ref());
    Ok(record)
}

/// Who seen pushing to fork pull request `pr` has no write access to the repository (a
/// maintainer's "Update branch" or fixup is theirs to vouch for); `None` when nobody is
/// known to have pushed its head (its push's webhook never came: anyone's, for all Slipway
/// knows). Nobody for another pull request: its pushes do not decide its preview.
fn fork_pushers(
    inner: &Inner,
    pr: &PullRequestRecord,
) -> Result<Option<Vec<String>>, ControllerError> {
    if !pr.is_fork {
        return Ok(Some(Vec::new()));
    }
    let pushers = pushers_of(inner, pr.number, true, &pr.head_ref, &pr.head_sha)?;
    if pushers.of_head.is_empty() {
        return Ok(None);
    }
    let setup = setup(inner)?;
    let mut outsiders = Vec::new();
    for pusher in pushers.all {
        // Asked only of those `fork_allow` does not list; an answer the forge cannot give
        // counts as none.
        let listed = setup
            .fork_allow
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&pusher));
        if !listed && !setup.forge.has_write_access(&pusher).unwrap_or(false) {
            outsiders.push(pusher);
        }
    }
    Ok(Some(outsiders))
}

/// Whether pull request `pr` may have a preview environment at its head: not from a fork, or
/// by an author `fork_allow` lists now, while everyone else seen pushing to it is listed or
/// has write access (`outsiders`, those who are neither: a listed author's pull request from
/// a fork where others push is not theirs alone; `None`: its head's pusher is unknown), or
/// approved by a maintainer's `/slipway preview` for this very head. The approval vouched
/// for the code the maintainer saw: a new push from the fork stops at plans until someone
/// approves it again.
pub(crate) fn preview_allowed(
    pr: &PullRequestRecord,
    fork_allow: &[String],
    outsiders: Option<&[String]>,
    known: Option<&PullRequestRecord>,
) -> bool {
    let allowed = |login: &String| fork_allow.iter().any(|a| a.eq_ignore_ascii_case(login));
    !pr.is_fork
        || (allowed(&pr.author) && outsiders.is_some_and(|o| o.iter().all(allowed)))
        || known.is_some_and(|k| k.preview_allowed && k.head_sha == pr.head_sha)
}

/// A pull request was opened or its head moved: record it, check the fetched head, and post
/// its plans. `pushed`: a push made the head (a webhook said so), which counts as seen now
/// even when it is the head already recorded: a head pushed back to an earlier commit (whose
/// push away from it went unseen) is as new to a reader as any.
fn opened(inner: &Inner, pr: &PullRequestInfo, pushed: bool) -> Result<(), ControllerError> {
    let mut record = record_of(inner, pr, "open")?;
    set_head(inner, &mut record, &pr.head_sha)?;
    if pushed {
        record.head_seen_at = Some(now_ms());
    }
    inner.engine.store().upsert_pull_request(&record)?;
    event(
        inner,
        &EnvName::pull_request(pr.number),
        EventKind::PullRequestUpdated,
        &format!(
            "#{} {} at {}{}",
            pr.number,
            pr.title,
            short(&pr.head_sha),
            if record.preview_allowed {
                ""
            } else {
                " (from a fork: plans only, no preview until a maintainer says `/slipway preview`)"
            }
        ),
    );
    post_plans(inner, &record, None, Announce::Pending)
}

/// The base branch `base` runs a new commit (an environment tracking it deployed one): the
/// plans of the open pull requests into it, made against what ran before, are stale. Each is
/// queued to be planned again ([`replan`], by the controller's re-plan worker).
pub(crate) fn base_moved(inner: &Inner, base: &str) -> Result<(), ControllerError> {
    if inner.forge.get().is_none() {
        return Ok(());
    }
    let open = inner.engine.store().pull_requests(Some("open"))?;
    let added = {
        let mut pending = inner
            .replans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = pending.len();
        pending.extend(
            open.iter()
                .filter(|pr| pr.base_ref == base)
                .map(|pr| pr.number),
        );
        pending.len() - before
    };
    if added > 0 {
        inner.replan_wake.notify_one();
    }
    Ok(())
}

/// Plans open pull request `number` again, against what its environments run now, at the
/// head the controller recorded (a newer push arrives as its own event). Its comment is
/// edited only if a plan changed, and its `slipway/plan` status is not set back to pending
/// first: until the new plans are in, the last ones stand.
pub(crate) fn replan(inner: &Inner, number: i64) -> Result<(), ControllerError> {
    let Some(record) = inner.engine.store().pull_request(number)? else {
        return Ok(());
    };
    if record.state != "open" {
        return Ok(());
    }
    post_plans(inner, &record, None, Announce::Quietly)
}

fn closed(inner: &Inner, pr: &PullRequestInfo, merged: bool) -> Result<FollowUp, ControllerError> {
    let store = inner.engine.store();
    let mut pr = pr.clone();
    let known = match store.pull_request(pr.number as i64) {
        Ok(known) => known,
        Err(e) => {
            return Ok(FollowUp {
                refresh: true,
                reconcile: release_unreadable(inner, pr.number as i64, merged, &format!(": {e}"))?,
                ..FollowUp::default()
            });
        }
    };
    if !setup(inner)?.kind.profile().webhook_names_pr_author {
        // GitLab's payload names who closed it, not its author (who decides a fork's preview
        // when it is reopened at this head).
        pr.author = match known {
            Some(known) => known.author,
            None => real_author(inner, &pr)?,
        };
    }
    let mut record = record_of(inner, &pr, ended(merged))?;
    // A push just before the close: approvals from before it are stale (for a reopen, and for
    // the merge's approval below).
    set_head(inner, &mut record, &pr.head_sha)?;
    store.upsert_pull_request(&record)?;
    // Its locks go whatever happens to the record of the merge: the pull request is recorded
    // closed, so nothing would release them later.
    let recorded = if merged {
        setup(inner)?
            .forge
            .pull_request(pr.number)
            .map_err(ControllerError::from)
            .and_then(|details| record_merge(inner, &details))
    } else {
        Ok(())
    };
    let released = release(inner, pr.number as i64)?;
    if let Err(e) = recorded {
        // Not recorded, a merge counts as not approved (`require_pr` holds its commit).
        event(
            inner,
            &EnvName::pull_request(pr.number),
            EventKind::PullRequestFailed,
            &format!(
                "#{} is merged, but its merge could not be recorded, so it counts as not \
                 approved: {e}",
                pr.number
            ),
        );
    }
    Ok(FollowUp {
        refresh: true,
        reconcile: released,
        ..FollowUp::default()
    })
}

/// The recorded state of a pull request that ended: `merged`, or `closed`.
fn ended(merged: bool) -> &'static str {
    if merged { "merged" } else { "closed" }
}

/// Pull request `number`, closed (or `merged`), whose record is damaged: the record is not
/// written over but for its state (so that its preview goes, and this is done once), its
/// locks still go (nothing would release them later), and a merge counts as not approved;
/// an event says so, with `why` after it. The environments to reconcile.
fn release_unreadable(
    inner: &Inner,
    number: i64,
    merged: bool,
    why: &str,
) -> Result<Vec<EnvName>, ControllerError> {
    let released = release(inner, number)?;
    inner
        .engine
        .store()
        .set_pull_request_state(number, ended(merged))?;
    event(
        inner,
        &EnvName::pull_request(number),
        EventKind::PullRequestFailed,
        &format!(
            "#{number} is closed, but its record cannot be read, so it is left as it is: its \
             locks are released, and a merge counts as not approved{why}"
        ),
    );
    Ok(released)
}

/// Remembers the commit a merged pull request made, and whether it was approved then: what
/// `require_pr` environments take. `details` is the forge's answer about it, asked once by
/// the caller.
fn record_merge(inner: &Inner, details: &PullRequestDetails) -> Result<(), ControllerError> {
    let forge = &setup(inner)?.forge;
    let number = details.info.number;
    let Some(sha) = details.merge_commit_sha.clone() else {
        event(
            inner,
            &EnvName::pull_request(number),
            EventKind::PullRequestMerged,
            &format!("#{number} is merged, but the forge names no merge commit"),
        );
        return Ok(());
    };
    let approvals = forge.approvals(number)?;
    // The same rule as `/slipway apply`: an approval of the head that was merged, by a
    // reviewer with write access who is not the author; one that names no commit (GitLab)
    // counts unless its reviewer approved before the last push.
    let stale = inner
        .engine
        .store()
        .pull_request(number as i64)?
        .map(|r| r.stale_approvers)
        .unwrap_or_default();
    let info = &details.info;
    let pushers = pushers_of(
        inner,
        number as i64,
        info.is_fork,
        &info.head_ref,
        &info.head_sha,
    )?;
    let trusted = &setup(inner)?.trusted_bots;
    // Approvals were given against the base it was opened into: retargeted (from an
    // unreviewed branch to `main`), it merged that branch's commits, which nobody approved
    // (`/slipway apply` refuses it for the same reason).
    let opened_base = inner
        .engine
        .store()
        .pull_request_opened_base(number as i64)?
        .unwrap_or_else(|| info.base_ref.clone());
    let retargeted = (opened_base != info.base_ref).then(|| {
        format!(
            "it was opened into `{opened_base}` and merged into `{}`, and its approvals were \
             given against `{opened_base}`",
            info.base_ref
        )
    });
    let approved = match retargeted
        .or_else(|| unknown_pusher(&pushers, &info.author, trusted, &info.head_sha))
    {
        Some(why) => {
            event(
                inner,
                &EnvName::pull_request(number),
                EventKind::PullRequestMerged,
                &format!("#{number} is merged as not approved: {why}"),
            );
            false
        }
        None => qualified_approval(
            forge.as_ref(),
            &approvals,
            &info.author,
            &pushers.all,
            |a| a.counts_for(&info.head_sha, &stale),
        )?
        .is_some(),
    };
    inner
        .engine
        .store()
        .record_merged_commit(&slipway_state::MergedCommit {
            sha,
            pull_request: number as i64,
            approved,
            at: now_ms(),
            // Only a merge into the branch an environment tracks counts for it: a pull
            // request merged into a scratch branch, then pushed on, is not its gate.
            base_ref: Some(details.info.base_ref.clone()),
        })?;
    Ok(())
}

/// Whether an approval by `reviewer` counts on a pull request by `author`: only from someone
/// with write access (anyone may leave an approving review), never the author's own, and
/// never an automation account's, which approves for whoever set it off (a pipeline of the
/// author's branch holding a project's access token).
pub(crate) fn approval_counts(reviewer: &str, author: &str, has_write_access: bool) -> bool {
    has_write_access && !reviewer.eq_ignore_ascii_case(author) && !slipway_forge::is_bot(reviewer)
}

/// Who pushed to pull request `number`, whose head is `head`: its webhooks' senders, and the
/// pushers of its branch (this repository's, not a fork's).
pub(crate) fn pushers_of(
    inner: &Inner,
    number: i64,
    is_fork: bool,
    head_ref: &str,
    head: &str,
) -> Result<slipway_state::Pushers, ControllerError> {
    let branch = (!is_fork).then_some(head_ref);
    Ok(inner.engine.store().pushers_of(number, branch, head)?)
}

/// Why no approval can count for `head`, a pull request by `author` that `pushers` pushed to:
/// nobody is known to have pushed it (its push's webhook never reached Slipway), or an
/// automation account other than the author and the `trusted` ones pushed to it (it pushes
/// for whoever set it off, who may be the reviewer). `None` when approvals may count.
pub(crate) fn unknown_pusher(
    pushers: &slipway_state::Pushers,
    author: &str,
    trusted: &[String],
    head: &str,
) -> Option<String> {
    if pushers.of_head.is_empty() {
        return Some(format!(
            "nobody is known to have pushed {}: its push's webhook has not reached Slipway, \
             so an approval of it cannot be told apart from its pusher's; the webhook of the \
             next push to it is",
            short(head)
        ));
    }
    let bot = pushers.all.iter().find(|p| {
        slipway_forge::is_bot(p)
            && !p.eq_ignore_ascii_case(author)
            && !trusted.iter().any(|t| t.eq_ignore_ascii_case(p))
    })?;
    Some(format!(
        "@{bot} pushed to it, an automation account that pushes for whoever sets it off, who \
         may be its reviewer; open a new pull request without its push, or trust it in \
         `[forge] trusted_bots` if it only ever pushes for the author"
    ))
}

/// The first of `approvals` that `relevant` keeps (for the right commit) and that counts
/// ([`approval_counts`]), and whose reviewer never pushed to it (`pushers`: someone who
/// pushed to another's pull request does not approve their own push, nor what was pushed on
/// top of it); write access is asked of the forge for those only.
fn qualified_approval(
    forge: &dyn Forge,
    approvals: &[slipway_forge::Approval],
    author: &str,
    pushers: &[String],
    relevant: impl Fn(&slipway_forge::Approval) -> bool,
) -> Result<Option<String>, ControllerError> {
    for a in approvals.iter().filter(|a| relevant(a)) {
        if a.author.eq_ignore_ascii_case(author)
            || slipway_forge::is_bot(&a.author)
            || pushers.iter().any(|p| p.eq_ignore_ascii_case(&a.author))
        {
            continue;
        }
        let writes = forge.has_write_access(&a.author)?;
        if approval_counts(&a.author, author, writes) {
            return Ok(Some(a.author.clone()));
        }
    }
    Ok(None)
}

/// Releases the locks of pull request `number`: those environments follow their branch
/// again. Each is unpinned here when this replica may work on it, or by the replica that
/// does (handed over, see `handoff`); the ones unpinned here are returned, to reconcile.
fn release(inner: &Inner, number: i64) -> Result<Vec<EnvName>, ControllerError> {
    let released = inner.engine.store().release_locks(number)?;
    let mut here = Vec::new();
    for env in released {
        match handoff::route(inner, &env, &handoff::Work::Released { number })? {
            handoff::Route::Here { claimed } => {
                let unpinned = handoff::unpin_released(inner, &env, number);
                if claimed {
                    crate::requests::release(inner, &env);
                }
                here.extend(unpinned?);
            }
            handoff::Route::HandedOff { .. } => {}
        }
    }
    Ok(here)
}

/// Brings the recorded pull requests in line with the forge's open ones (webhooks missed while
/// the controller was down): new or moved ones are planned, vanished ones closed.
pub(crate) fn catch_up(inner: &Inner) -> Result<FollowUp, ControllerError> {
    let forge = &setup(inner)?.forge;
    let open = forge.open_pull_requests()?;
    let store = inner.engine.store();
    let mut follow = FollowUp::default();
    let failed = |number: i64, why: &str| {
        event(
            inner,
            &EnvName::pull_request(number),
            EventKind::PullRequestFailed,
            why,
        );
    };
    let listed: BTreeSet<i64> = open.iter().map(|p| p.number as i64).collect();
    for pr in &open {
        let known = match store.pull_request(pr.number as i64) {
            Ok(known) => known,
            // A damaged record stops only its own pull request.
            Err(e) => {
                failed(pr.number as i64, &e.to_string());
                continue;
            }
        };
        if known
            .as_ref()
            .is_none_or(|k| k.head_sha != pr.head_sha || k.state != "open" || k.labels != pr.labels)
        {
            if let Err(e) = opened(inner, pr, false) {
                failed(pr.number as i64, &e.to_string());
            }
            follow.refresh = true;
        }
    }
    let (recorded_open, unreadable) = store.pull_requests_and_unreadable(Some("open"))?;
    // Damaged records of pull requests the forge says are closed: their locks go, and the
    // records stay as they are (as a close webhook does for one, see `closed`).
    for number in unreadable {
        if listed.contains(&number) {
            continue;
        }
        if let Ok(details) = forge.pull_request(number as u64)
            && details.state != PrState::Open
        {
            let merged = details.state == PrState::Merged;
            follow
                .reconcile
                .extend(release_unreadable(inner, number, merged, "")?);
            follow.refresh = true;
        }
    }
    for known in recorded_open {
        if listed.contains(&known.number) {
            continue;
        }
        // Missing from the list (which a forge may cut short) is not closed: only the forge's
        // own answer for this pull request says so. Until it answers, nothing is released.
        let details = match forge.pull_request(known.number as u64) {
            Ok(details) if details.state != PrState::Open => details,
            Ok(_) => continue,
            Err(e) => {
                failed(
                    known.number,
                    &format!(
                        "#{} is not in the forge's list of open pull requests, and the forge \
                         cannot say whether it is closed ({e}); its locks stay until it can",
                        known.number
                    ),
                );
                continue;
            }
        };
        let mut gone = known.clone();
        if let Err(e) = set_head(inner, &mut gone, &details.info.head_sha) {
            failed(known.number, &e.to_string());
            continue;
        }
        // The stale approvers are recorded before the merge's approval is judged; the state
        // after it, so that a merge that could not be recorded is tried again next pass.
        gone.updated_at = now_ms();
        store.upsert_pull_request(&gone)?;
        let merged = details.state == PrState::Merged;
        if merged {
            record_merge(inner, &details)?;
        }
        gone.state = ended(merged).into();
        store.upsert_pull_request(&gone)?;
        follow.reconcile.extend(release(inner, known.number)?);
        follow.refresh = true;
    }
    // Merges whose record failed when their webhook came (`closed`: the forge could not
    // answer then) are tried again for a day, so that a passing error does not hold their
    // commit from `require_pr` environments for good.
    for number in store.merges_unrecorded(now_ms() - MERGE_RETRY_MS)? {
        if let Ok(details) = forge.pull_request(number as u64)
            && details.state == PrState::Merged
            && details.merge_commit_sha.is_some()
        {
            // Failing again, it is tried at the next pass.
            let _ = record_merge(inner, &details);
        }
    }
    Ok(follow)
}

/// How long after its merge a merge that could not be recorded is tried again.
const MERGE_RETRY_MS: i64 = 24 * 3600 * 1000;

/// Where `reference` (a commit id, or a branch with `tip: None`) is read from.
fn origin_at<'a>(inner: &'a Inner, reference: &'a str) -> Origin<'a> {
    Origin {
        source: inner.source.as_ref(),
        repo: &inner.repo_label,
        reference,
        folder: &inner.folder,
        tip: Some(reference),
    }
}

fn event(inner: &Inner, env: &EnvName, kind: EventKind, message: &str) {
    let _ = inner.engine.store().record_event(
        Some(env),
        kind,
        message,
        &serde_json::json!({}),
        now_ms(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fork_preview_is_approved_for_one_head_commit() {
        let at = |head: &str, is_fork: bool, preview_allowed: bool| PullRequestRecord {
            number: 3,
            title: "t".into(),
            author: "mallory".into(),
            head_sha: head.into(),
            head_ref: "work".into(),
            base_ref: "main".into(),
            is_fork,
            state: "open".into(),
            preview_allowed,
            url: String::new(),
            updated_at: 0,
            stale_approvers: Vec::new(),
            labels: Vec::new(),
            head_seen_at: None,
        };
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let none: &[String] = &[];
        let listed = ["mallory".to_string()];
        let nobody: Option<&[String]> = Some(&[]);
        assert!(
            preview_allowed(&at(&a, false, false), none, nobody, None),
            "not a fork"
        );
        assert!(
            !preview_allowed(&at(&a, true, false), none, nobody, None),
            "a fork, unapproved"
        );
        assert!(
            preview_allowed(&at(&a, true, false), &listed, Some(&listed), None),
            "fork_allow lists its author, its only pusher"
        );
        assert!(
            !preview_allowed(
                &at(&a, true, false),
                &listed,
                Some(&["mallory".to_string(), "trudy".to_string()]),
                None
            ),
            "someone fork_allow does not list (nor a maintainer) pushed to it too"
        );
        assert!(
            !preview_allowed(&at(&a, true, false), &listed, None, None),
            "nobody is known to have pushed its head"
        );
        assert!(
            preview_allowed(
                &at(&a, true, false),
                none,
                nobody,
                Some(&at(&a, true, true))
            ),
            "approved at this head"
        );
        assert!(
            !preview_allowed(
                &at(&b, true, false),
                none,
                nobody,
                Some(&at(&a, true, true))
            ),
            "a new push is not approved by the approval of the old head"
        );
    }

    #[test]
    fn an_approval_counts_only_from_a_writer_who_is_not_the_author() {
        assert!(approval_counts("carol", "alice", true));
        assert!(
            !approval_counts("mallory", "alice", false),
            "anyone may approve on a public repository; without write access it does not count"
        );
        assert!(
            !approval_counts("alice", "alice", true),
            "the author's own approval does not count"
        );
        assert!(
            !approval_counts("Alice", "alice", true),
            "logins are compared as the forges do, without case"
        );
        for bot in [
            "project_7_bot_ci",
            "group_3_bot_x",
            "renovate[bot]",
            "gitea-actions",
        ] {
            assert!(
                !approval_counts(bot, "alice", true),
                "{bot}: an automation account approves for whoever set it off"
            );
        }
    }
}
