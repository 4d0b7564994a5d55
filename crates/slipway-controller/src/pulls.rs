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
//!   and discovery destroys its preview.
//! - Comment commands (`/slipway plan|apply|unlock|preview|help`), parsed strictly and only
//!   honoured from people with write access.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use slipway_core::plan::{Action as Change, Plan};
use slipway_core::vocab::{EnvKind, EventKind, SyncState};
use slipway_engine::{EnvTarget, Origin};
use slipway_forge::{
    Command, CommitStatus, DEFAULT_PLAN_MARKER, EnvPlan, Forge, ForgeConfig, ForgeEvent, ForgeKind,
    ForgeSection, PlanCommentOptions, PrAction, PrState, PullRequestInfo, StatusState,
    WebhookVerifier, parse_command, render_plan_comment,
};
use slipway_state::{PullRequestRecord, now_ms};

use crate::{ControllerError, Inner};

/// The forge a controller works with, and its policy.
pub struct ForgeSetup {
    /// The forge's API.
    pub forge: Arc<dyn Forge>,
    /// Checks its webhooks.
    pub verifier: WebhookVerifier,
    /// Which forge.
    pub kind: ForgeKind,
    /// Authors whose pull requests from forks get a preview environment anyway.
    pub fork_allow: Vec<String>,
}

/// Connects to the forge of the configuration's `[forge.NAME]` (`github`, `gitlab`, `gitea`
/// or `forgejo`; at most one), reading its token and webhook secret from the environment
/// variables it names. `None` when no forge is configured.
///
/// `private_texts` (`(text, stand-in)`: the repository's URL and paths, the home) are replaced
/// in everything posted to the forge (see `ForgeConfig::private_texts`).
pub fn setup_from_config(
    forges: &BTreeMap<String, ForgeSection>,
    private_texts: Vec<(String, String)>,
) -> Result<Option<ForgeSetup>, String> {
    let Some((name, section)) = forges.iter().next() else {
        return Ok(None);
    };
    if forges.len() > 1 {
        return Err(format!(
            "several forges are configured ({}); Slipway works with one repository, on one forge",
            forges.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    let kind: ForgeKind = name
        .parse()
        .map_err(|_| format!("[forge.{name}]: the forges are github, gitlab and gitea"))?;
    let repository = section.repository.clone();
    let token_env = section
        .token_env
        .clone()
        .unwrap_or_else(|| kind.profile().token_env.into());
    let token = std::env::var(&token_env).map_err(|_| {
        format!("[forge.{name}] reads its API token from ${token_env}, which is not set")
    })?;
    let secret_env = section
        .webhook_secret_env
        .clone()
        .unwrap_or_else(|| "SLIPWAY_WEBHOOK_SECRET".into());
    let secret = std::env::var(&secret_env).map_err(|_| {
        format!(
            "[forge.{name}] reads its webhook secret from ${secret_env}, which is not set; \
             webhooks are refused without one"
        )
    })?;
    let mut forge_config = ForgeConfig::new(kind, repository, token);
    forge_config.api_url = section.api_url.clone();
    forge_config.bot_login = section.bot_login.clone();
    forge_config.webhook_secret = secret.into();
    forge_config.private_texts = private_texts;
    forge_config.repository_id = section.repository_id.map(u64::from);
    let verifier = forge_config.webhook_verifier();
    let forge = slipway_forge::connect(forge_config).map_err(|e| format!("[forge.{name}]: {e}"))?;
    Ok(Some(ForgeSetup {
        forge: Arc::from(forge),
        verifier,
        kind,
        fork_allow: section.fork_allow.clone(),
    }))
}

/// What the async side should do after an event was handled.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct FollowUp {
    /// Fetch and discover now (a push, a new or closed pull request).
    pub refresh: bool,
    /// Environments to reconcile now.
    pub reconcile: Vec<String>,
}

fn setup(inner: &Inner) -> Result<&ForgeSetup, ControllerError> {
    inner
        .forge
        .get()
        .ok_or_else(|| ControllerError::Invalid("no forge is configured".into()))
}

fn forge_error(e: slipway_forge::ForgeError) -> ControllerError {
    ControllerError::Invalid(format!("the forge refused: {e}"))
}

/// Handles one verified event.
pub(crate) fn handle(inner: &Inner, forge_event: ForgeEvent) -> Result<FollowUp, ControllerError> {
    match forge_event {
        ForgeEvent::Push { .. } => Ok(FollowUp {
            refresh: true,
            ..FollowUp::default()
        }),
        ForgeEvent::PullRequest { action, mut pr } => match action {
            PrAction::Opened | PrAction::Reopened | PrAction::Synchronized => {
                pr.author = real_author(inner, &pr)?;
                opened(inner, &pr)?;
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
                let retargeted = store
                    .pull_request(pr.number as i64)?
                    .is_some_and(|k| k.state == "open" && k.base_ref != pr.base_ref);
                if !retargeted {
                    return Ok(FollowUp::default());
                }
                pr.author = real_author(inner, &pr)?;
                event(
                    inner,
                    &format!("pr-{}", pr.number),
                    EventKind::PullRequestRetargeted,
                    &format!(
                        "#{} now merges into {}: it cannot be applied before merge any more \
                         (approvals were given against its first base)",
                        pr.number, pr.base_ref
                    ),
                );
                opened(inner, &pr)?;
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
            ..
        } => comment(inner, pr_number, &author, &body),
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
    Ok(setup
        .forge
        .pull_request(pr.number)
        .map_err(forge_error)?
        .info
        .author)
}

/// Moves `record`'s head to `head`. When it moves, everyone who approved by then is added to
/// its stale approvers: an approval that names no commit (GitLab keeps them across pushes) was
/// given for an older head. Every path that changes a recorded head goes through here (an
/// event, `/slipway preview`, `/slipway apply`, the catch-up pass), whichever sees the new
/// head first. Errors when the forge cannot list the approvals: the head is then not moved,
/// and the next event or catch-up pass tries again.
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
    Ok(())
}

fn record_of(inner: &Inner, pr: &PullRequestInfo, state: &str) -> PullRequestRecord {
    let known = inner
        .engine
        .store()
        .pull_request(pr.number as i64)
        .ok()
        .flatten();
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
    };
    let fork_allow = setup(inner).map(|s| s.fork_allow.as_slice()).unwrap_or(&[]);
    // Judged at the pull request's new head.
    let at_head = PullRequestRecord {
        head_sha: pr.head_sha.clone(),
        ..record.clone()
    };
    record.preview_allowed = preview_allowed(&at_head, fork_allow, known.as_ref());
    record
}

/// Whether pull request `pr` may have a preview environment at its head: not from a fork, or
/// by an author `fork_allow` lists now, or approved by a maintainer's
/// `/slipway preview` for this very head. The approval vouched for the code the maintainer
/// saw: a new push from the fork stops at plans until someone approves it again.
pub(crate) fn preview_allowed(
    pr: &PullRequestRecord,
    fork_allow: &[String],
    known: Option<&PullRequestRecord>,
) -> bool {
    !pr.is_fork
        || fork_allow.iter().any(|a| a == &pr.author)
        || known.is_some_and(|k| k.preview_allowed && k.head_sha == pr.head_sha)
}

/// A pull request was opened or its head moved: record it, check the fetched head, and post
/// its plans.
fn opened(inner: &Inner, pr: &PullRequestInfo) -> Result<(), ControllerError> {
    let mut record = record_of(inner, pr, "open");
    set_head(inner, &mut record, &pr.head_sha)?;
    inner.engine.store().upsert_pull_request(&record)?;
    event(
        inner,
        &format!("pr-{}", pr.number),
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
    post_plans(inner, &record, None)
}

fn closed(inner: &Inner, pr: &PullRequestInfo, merged: bool) -> Result<FollowUp, ControllerError> {
    let store = inner.engine.store();
    let mut pr = pr.clone();
    if !setup(inner)?.kind.profile().webhook_names_pr_author {
        // GitLab's payload names who closed it, not its author (who decides a fork's preview
        // when it is reopened at this head).
        pr.author = match store.pull_request(pr.number as i64)? {
            Some(known) => known.author,
            None => real_author(inner, &pr)?,
        };
    }
    let mut record = record_of(inner, &pr, if merged { "merged" } else { "closed" });
    // A push just before the close: approvals from before it are stale (for a reopen, and for
    // the merge's approval below).
    set_head(inner, &mut record, &pr.head_sha)?;
    store.upsert_pull_request(&record)?;
    if merged {
        record_merge(inner, pr.number)?;
    }
    let released = release(inner, pr.number as i64)?;
    Ok(FollowUp {
        refresh: true,
        reconcile: released,
    })
}

/// Remembers the commit a merged pull request made, and whether it was approved then: what
/// `require_pr` environments take.
fn record_merge(inner: &Inner, number: u64) -> Result<(), ControllerError> {
    let forge = &setup(inner)?.forge;
    let details = forge.pull_request(number).map_err(forge_error)?;
    let Some(sha) = details.merge_commit_sha else {
        event(
            inner,
            &format!("pr-{number}"),
            EventKind::PullRequestMerged,
            &format!("#{number} is merged, but the forge names no merge commit"),
        );
        return Ok(());
    };
    let approvals = forge.approvals(number).map_err(forge_error)?;
    // The same rule as `/slipway apply`: an approval of the head that was merged, by a
    // reviewer with write access who is not the author; one that names no commit (GitLab)
    // counts unless its reviewer approved before the last push.
    let stale = inner
        .engine
        .store()
        .pull_request(number as i64)?
        .map(|r| r.stale_approvers)
        .unwrap_or_default();
    let approved = qualified_approval(forge.as_ref(), &approvals, &details.info.author, |a| {
        a.counts_for(&details.info.head_sha, &stale)
    })?
    .is_some();
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
/// with write access (anyone may leave an approving review), and never the author's own.
pub(crate) fn approval_counts(reviewer: &str, author: &str, has_write_access: bool) -> bool {
    has_write_access && !reviewer.eq_ignore_ascii_case(author)
}

/// The first of `approvals` that `relevant` keeps (for the right commit) and that counts
/// ([`approval_counts`]); write access is asked of the forge for those only.
fn qualified_approval(
    forge: &dyn Forge,
    approvals: &[slipway_forge::Approval],
    author: &str,
    relevant: impl Fn(&slipway_forge::Approval) -> bool,
) -> Result<Option<String>, ControllerError> {
    for a in approvals.iter().filter(|a| relevant(a)) {
        if a.author.eq_ignore_ascii_case(author) {
            continue;
        }
        let writes = forge.has_write_access(&a.author).map_err(forge_error)?;
        if approval_counts(&a.author, author, writes) {
            return Ok(Some(a.author.clone()));
        }
    }
    Ok(None)
}

/// Releases the locks of pull request `number`: those environments follow their branch
/// again.
fn release(inner: &Inner, number: i64) -> Result<Vec<String>, ControllerError> {
    let store = inner.engine.store();
    let released = store.release_locks(number)?;
    for env in &released {
        if let Some(mut record) = store.environment(env)? {
            record.pinned = false;
            record.updated_at = now_ms();
            store.upsert_environment(&record)?;
        }
        event(
            inner,
            env,
            EventKind::LockReleased,
            &format!("the lock of #{number} is released; `{env}` follows its branch again"),
        );
    }
    Ok(released)
}

/// The commit at the head of pull request `number` in the repository, after a fetch: the
/// forge's pull request ref (`refs/pull/N/head`, `refs/merge-requests/N/head`), which also
/// holds a fork's code. Errors when it is not the head the forge announced.
fn fetched_head(inner: &Inner, record: &PullRequestRecord) -> Result<String, ControllerError> {
    let forge = &setup(inner)?.forge;
    let reference = forge.pr_head_ref(record.number as u64);
    let resolve = || inner.source.resolve(&reference).map(|c| c.sha);
    let mut sha = resolve();
    if sha.as_deref().ok() != Some(record.head_sha.as_str()) {
        inner.source.fetch()?;
        sha = resolve();
    }
    match sha {
        Ok(sha) if sha == record.head_sha => Ok(sha),
        Ok(other) => Err(ControllerError::Invalid(format!(
            "{reference} is at {} in the repository, not at {} as the forge says; the next \
             event will plan the newer one",
            short(&other),
            short(&record.head_sha)
        ))),
        Err(e) => Err(ControllerError::Invalid(format!(
            "{reference} cannot be read from the repository ({e}); is the forge pushing pull \
             request refs to it?"
        ))),
    }
}

/// The environments a pull request changes: every static environment tracking its base
/// branch, and its preview when a family makes one; `only` narrows to one.
fn targets(
    stack: &slipway_core::stack::Stack,
    record: &PullRequestRecord,
    only: Option<&str>,
) -> Vec<EnvTarget> {
    let mut out = Vec::new();
    for (name, def) in &stack.environments {
        if def.track.as_deref() == Some(record.base_ref.as_str()) {
            out.push(EnvTarget {
                name: name.clone(),
                definition: name.clone(),
                kind: EnvKind::Static,
                owner: None,
                ttl: None,
            });
        }
    }
    if record.preview_allowed
        && let Some((family, def)) = stack
            .environments
            .iter()
            .find(|(_, d)| d.generate.as_ref().is_some_and(|g| g.pull_requests))
    {
        out.push(EnvTarget {
            name: format!("pr-{}", record.number),
            definition: family.clone(),
            kind: EnvKind::Generated,
            owner: Some(record.author.clone()),
            ttl: def.ttl,
        });
    }
    if let Some(only) = only {
        out.retain(|t| t.name == only);
    }
    out
}

/// Plans the pull request's head for each environment it changes and posts them as the one
/// plan comment, with a `slipway/plan` commit status.
pub(crate) fn post_plans(
    inner: &Inner,
    record: &PullRequestRecord,
    only: Option<&str>,
) -> Result<(), ControllerError> {
    let setup = setup(inner)?;
    let forge = &setup.forge;
    let status = |state: StatusState, description: &str| {
        let _ = forge.set_status(&CommitStatus {
            sha: record.head_sha.clone(),
            context: "slipway/plan".into(),
            state,
            description: description.chars().take(140).collect(),
            target_url: None,
        });
    };
    status(StatusState::Pending, "planning");
    let head = match fetched_head(inner, record) {
        Ok(sha) => sha,
        Err(e) => {
            status(StatusState::Error, &e.to_string());
            return Err(e);
        }
    };
    // Through the engine's commit cache: the plans below prepare from the same load.
    let cached = inner.engine.load(&origin_at(inner, &head))?;
    let mut plans = Vec::new();
    match cached.loaded.valid_stack() {
        Err(first) => plans.push(EnvPlan {
            env: "(all)".into(),
            summary_line: "the stack does not validate".into(),
            detail_text: String::new(),
            error: Some(first),
            preview_url: None,
        }),
        Ok(stack) => {
            let mut targets = targets(stack, record, only);
            // Which branch a running static environment tracks is its record's, not what the
            // pull request's stack says: a PR into another branch does not change it.
            targets.retain(|t| {
                t.kind != EnvKind::Static
                    || inner
                        .engine
                        .store()
                        .environment(&t.name)
                        .ok()
                        .flatten()
                        .is_none_or(|e| e.tracked_ref.as_deref() == Some(record.base_ref.as_str()))
            });
            if targets.is_empty() {
                plans.push(EnvPlan {
                    env: only.unwrap_or("(none)").into(),
                    summary_line: match only {
                        Some(env) => format!("`{env}` is not changed by this pull request"),
                        None => format!(
                            "no environment tracks `{}` and no family previews pull requests",
                            record.base_ref
                        ),
                    },
                    detail_text: String::new(),
                    error: None,
                    preview_url: None,
                });
            }
            for target in targets {
                let origin = origin_at(inner, &head);
                let preview_url = inner
                    .preview_port
                    .get()
                    .map(|port| format!("http://{}.{}.localhost:{port}/", target.name, stack.name));
                plans.push(match inner.engine.prepare(&origin, &target) {
                    Ok(prepared) => EnvPlan {
                        env: target.name.clone(),
                        summary_line: summary(&prepared.plan),
                        detail_text: detail(&prepared.plan),
                        error: None,
                        preview_url: (target.kind == EnvKind::Generated)
                            .then_some(preview_url)
                            .flatten(),
                    },
                    Err(e) => EnvPlan {
                        env: target.name.clone(),
                        summary_line: "planning failed".into(),
                        detail_text: String::new(),
                        error: Some(e.to_string()),
                        preview_url: None,
                    },
                });
            }
        }
    }
    let body = render_plan_comment(
        &plans,
        &PlanCommentOptions {
            marker: DEFAULT_PLAN_MARKER.into(),
            head_sha: Some(head.clone()),
            ..PlanCommentOptions::default()
        },
    );
    forge
        .upsert_comment(record.number as u64, DEFAULT_PLAN_MARKER, &body)
        .map_err(forge_error)?;
    let failed: Vec<&str> = plans
        .iter()
        .filter(|p| p.error.is_some())
        .map(|p| p.env.as_str())
        .collect();
    if failed.is_empty() {
        status(
            StatusState::Success,
            &format!("planned {} environment(s)", plans.len()),
        );
    } else {
        status(
            StatusState::Failure,
            &format!("planning failed for {}", failed.join(", ")),
        );
    }
    Ok(())
}

/// One line: what a plan does.
pub fn summary(plan: &Plan) -> String {
    let count = |a: Change| plan.changes.iter().filter(|c| c.action == a).count();
    if !plan.has_changes() {
        return "no changes".into();
    }
    format!(
        "{} to create, {} to update, {} to replace, {} to delete",
        count(Change::Create),
        count(Change::Update),
        count(Change::Replace),
        count(Change::Delete)
    )
}

/// The plan as text: one line per change, then its field changes. Values are the stack's
/// (references such as `${secrets.X}` unresolved), so no secret can appear.
pub fn detail(plan: &Plan) -> String {
    let mut out = String::new();
    for c in plan.changes.iter().filter(|c| c.action != Change::Noop) {
        let sign = match c.action {
            Change::Create => "+",
            Change::Update => "~",
            Change::Replace => "-/+",
            Change::Delete => "-",
            Change::Noop => " ",
        };
        out.push_str(&format!("{sign} {} ({})", c.resource, c.type_name));
        if let Some(reason) = &c.reason {
            out.push_str(&format!(": {reason}"));
        }
        out.push('\n');
        for f in &c.diff {
            let show = |v: &Option<serde_json::Value>| {
                v.as_ref().map_or("(none)".to_string(), |v| {
                    let text = v.to_string();
                    if text.chars().count() > 200 {
                        format!("{}…", text.chars().take(200).collect::<String>())
                    } else {
                        text
                    }
                })
            };
            out.push_str(&format!(
                "    {}: {} → {}{}\n",
                f.path,
                show(&f.before),
                show(&f.after),
                if f.forces_replace {
                    " (forces replacement)"
                } else {
                    ""
                }
            ));
        }
    }
    out
}

fn reply(inner: &Inner, pr: u64, body: &str) {
    if let Ok(setup) = setup(inner)
        && let Err(e) = setup.forge.post_comment(pr, body)
    {
        event(
            inner,
            &format!("pr-{pr}"),
            EventKind::ForgeFailed,
            &format!("cannot comment on #{pr}: {e}"),
        );
    }
}

fn audit(inner: &Inner, who: &str, action: &str, target: &str, outcome: &str, detail: &str) {
    let _ = inner.engine.store().record_audit(&slipway_state::NewAudit {
        at: now_ms(),
        who: format!("forge:{who}"),
        action: action.into(),
        target: Some(target.into()),
        outcome: outcome.into(),
        detail: detail.into(),
    });
}

fn comment(
    inner: &Inner,
    number: u64,
    author: &str,
    body: &str,
) -> Result<FollowUp, ControllerError> {
    let command = match parse_command(body) {
        Ok(None) => return Ok(FollowUp::default()),
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
            reply(inner, number, &e.to_string());
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
        reply(
            inner,
            number,
            &format!(
                "Sorry @{author}, only people with write access to this repository can run \
                 `{command}`."
            ),
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
            post_plans(inner, &record, env.as_deref())?;
            Ok(FollowUp::default())
        }
        Command::Preview => {
            // The approval is for the code the maintainer saw: the head the forge shows now.
            let head = forge
                .pull_request(number)
                .map_err(forge_error)?
                .info
                .head_sha;
            if !record.preview_allowed || record.head_sha != head {
                set_head(inner, &mut record, &head)?;
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
                    if let Some(mut e) = store.environment(&env)? {
                        e.pinned = false;
                        e.updated_at = now_ms();
                        store.upsert_environment(&e)?;
                    }
                    vec![env.clone()]
                };
                reply(
                    inner,
                    number,
                    &format!("Unlocked `{env}`: it follows its branch again."),
                );
                Ok(FollowUp {
                    refresh: false,
                    reconcile: released,
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
        Command::Apply { env } => apply(inner, &mut record, &env, author),
    }
}

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

/// `/slipway apply ENV`: the pull request's head goes to ENV before merge, when the pull
/// request is into the branch ENV tracks, ENV's apply requirements hold and no other pull
/// request holds it; ENV is then locked to this pull request (and stays on its head) until it
/// is merged or closed, or unlocked. Refused or held, it leaves no lock and no pin behind.
fn apply(
    inner: &Inner,
    record: &mut PullRequestRecord,
    env: &str,
    author: &str,
) -> Result<FollowUp, ControllerError> {
    let number = record.number;
    let forge = &setup(inner)?.forge;
    let store = inner.engine.store();
    let refuse = |why: String| {
        audit(inner, author, "pr.apply", env, "refused", &why);
        reply(inner, number as u64, &why);
        Ok(FollowUp::default())
    };
    let details = forge.pull_request(number as u64).map_err(forge_error)?;
    if details.state != PrState::Open {
        return refuse(format!("#{number} is not open; nothing was applied."));
    }
    if details.info.head_sha != record.head_sha
        || details.info.base_ref != record.base_ref
        || details.info.author != record.author
    {
        set_head(inner, record, &details.info.head_sha)?;
        record.base_ref = details.info.base_ref.clone();
        // The author as the forge's API says (a GitLab webhook names whoever acted).
        record.author = details.info.author.clone();
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
    let head = fetched_head(inner, record)?;
    let cached = inner.engine.load(&origin_at(inner, &head))?;
    let stack = match cached.loaded.valid_stack() {
        Ok(stack) => stack,
        Err(first) => {
            return refuse(format!(
                "The stack at {} does not validate, so it cannot be applied: {first}",
                short(&head)
            ));
        }
    };
    let Some(def) = stack.environments.get(env).filter(|d| d.track.is_some()) else {
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
        .and_then(|s| s.environments.get(env))
        .map(|d| slipway_engine::Rules::declared(d, EnvKind::Static));
    let in_force = inner
        .engine
        .rules_in_force(&origin_at(inner, &head), env, env)?;
    let rules = apply_rules(tracked_rules.as_ref(), in_force.as_ref(), &head_rules);
    let mut unmet = Vec::new();
    if rules.apply_requirements.iter().any(|r| r == "approved") {
        let approvals = forge.approvals(number as u64).map_err(forge_error)?;
        // An approval counts for the head it names; one that names none (GitLab) counts
        // unless its reviewer had approved before the last push (and so approved older code).
        // Only a reviewer with write access who is not the author approves.
        let current = qualified_approval(forge.as_ref(), &approvals, &record.author, |a| {
            a.counts_for(&head, &record.stale_approvers)
        })?;
        if current.is_none() {
            unmet.push(
                "approved (no approval of the head commit by a reviewer with write access \
                 other than its author)"
                    .to_string(),
            );
        }
    }
    if rules.apply_requirements.iter().any(|r| r == "mergeable") && details.mergeable != Some(true)
    {
        unmet.push(match details.mergeable {
            Some(false) => "mergeable (it has conflicts or failing required checks)".to_string(),
            _ => "mergeable (the forge has not decided yet; try again in a moment)".to_string(),
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
    let mut prepared = match inner
        .engine
        .prepare(&origin_at(inner, &head), &crate::target_of(&existing))
    {
        Ok(prepared) => prepared,
        Err(e) => {
            return refuse(format!(
                "Not applied: `{env}` cannot be planned at {}: {e}",
                short(&head)
            ));
        }
    };
    // Applying a new head of a pull request that already holds ENV keeps its lock whatever
    // happens; a first apply that changes nothing gives the lock back.
    let held_before = store
        .environment_lock(env)?
        .is_some_and(|l| l.pull_request == number);
    prepared.protected |= rules.protected;
    if let Some(why) = slipway_engine::apply::needs_confirmation(&prepared) {
        return refuse(format!(
            "Not applied #{number} ({}) to `{env}`: {why}. A comment cannot confirm that; \
             merge it and have a person confirm on the server. {}",
            short(&head),
            if held_before {
                format!("`{env}` stays on the commit of this pull request it ran.")
            } else {
                format!("`{env}` is not locked.")
            }
        ));
    }
    let lock = store.lock_environment(env, number, author, now_ms())?;
    if lock.pull_request != number {
        return refuse(format!(
            "Not applied: `{env}` is locked by #{} (applied by @{}). It is released when #{} \
             is merged or closed, or with `/slipway unlock {env}` there.",
            lock.pull_request, lock.who, lock.pull_request
        ));
    }
    // Stay on the pull request's head: the environment is pinned to it until the lock goes.
    let before = store.environment(env)?.unwrap_or(existing);
    let last_deployment = store.deployments(env, 1)?.first().map(|d| d.id);
    let mut environment = before.clone();
    environment.pinned = true;
    environment.desired_commit = Some(head.clone());
    environment.updated_at = now_ms();
    store.upsert_environment(&environment)?;
    // The environment may be busy (the controller's own pass, a CLI apply): wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let outcome = loop {
        let outcome = crate::reconcile::reconcile(inner, env, crate::Trigger::Manual);
        let at_head = store.environment(env)?.is_some_and(|e| {
            e.commit.as_deref() == Some(head.as_str()) && e.sync == SyncState::Synced
        });
        let busy = matches!(outcome, Ok(crate::reconcile::Action::Requeue(after)) if after <= std::time::Duration::from_secs(2));
        if at_head || !busy || std::time::Instant::now() > deadline {
            break outcome;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let after = store.environment(env)?;
    let applied = outcome.is_ok()
        && after.as_ref().is_some_and(|e| {
            e.commit.as_deref() == Some(head.as_str()) && e.sync == SyncState::Synced
        });
    let started = store.deployments(env, 1)?.first().map(|d| d.id) != last_deployment;
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
                short(&head)
            ),
        );
        return Ok(FollowUp::default());
    }
    let why = after
        .as_ref()
        .and_then(|e| e.message.clone())
        .or_else(|| outcome.as_ref().err().map(|e| e.to_string()))
        .unwrap_or_else(|| "the apply did not finish".into());
    if !started {
        // Held or refused before anything changed (a protected destroy awaiting a person,
        // an invalid commit): the environment goes back to what it followed, unlocked unless
        // this pull request held it already.
        if !held_before {
            store.unlock_environment(env, number)?;
        }
        if let Some(mut e) = store.environment(env)? {
            e.pinned = before.pinned;
            e.desired_commit = before.desired_commit.clone();
            e.updated_at = now_ms();
            store.upsert_environment(&e)?;
        }
        audit(inner, author, "pr.apply", env, "refused", &why);
        reply(
            inner,
            number as u64,
            &format!(
                "Not applied #{number} ({}) to `{env}`: {why}\n\nNothing was changed{}.",
                short(&head),
                if held_before {
                    format!("; `{env}` stays on the commit of this pull request it ran")
                } else {
                    format!(" and `{env}` is not locked")
                }
            ),
        );
        return Ok(FollowUp {
            refresh: false,
            reconcile: vec![env.to_string()],
        });
    }
    audit(inner, author, "pr.apply", env, "failed", &why);
    reply(
        inner,
        number as u64,
        &format!(
            "Applying #{number} ({}) to `{env}` failed: {why}\n\n`{env}` stays locked to \
             this pull request; push a fix and apply again, or `/slipway unlock {env}`.",
            short(&head)
        ),
    );
    Ok(FollowUp::default())
}

/// Brings the recorded pull requests in line with the forge's open ones (webhooks missed while
/// the controller was down): new or moved ones are planned, vanished ones closed.
pub(crate) fn catch_up(inner: &Inner) -> Result<FollowUp, ControllerError> {
    let forge = &setup(inner)?.forge;
    let open = forge.open_pull_requests().map_err(forge_error)?;
    let store = inner.engine.store();
    let mut follow = FollowUp::default();
    let listed: BTreeSet<i64> = open.iter().map(|p| p.number as i64).collect();
    for pr in &open {
        let known = store.pull_request(pr.number as i64)?;
        if known
            .as_ref()
            .is_none_or(|k| k.head_sha != pr.head_sha || k.state != "open")
        {
            if let Err(e) = opened(inner, pr) {
                event(
                    inner,
                    &format!("pr-{}", pr.number),
                    EventKind::PullRequestFailed,
                    &e.to_string(),
                );
            }
            follow.refresh = true;
        }
    }
    for known in store.pull_requests(Some("open"))? {
        if listed.contains(&known.number) {
            continue;
        }
        // Missing from the list (which a forge may cut short) is not closed: only the forge's
        // own answer for this pull request says so. Until it answers, nothing is released.
        let details = match forge.pull_request(known.number as u64) {
            Ok(details) if details.state != PrState::Open => details,
            Ok(_) => continue,
            Err(e) => {
                event(
                    inner,
                    &format!("pr-{}", known.number),
                    EventKind::PullRequestFailed,
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
            event(
                inner,
                &format!("pr-{}", known.number),
                EventKind::PullRequestFailed,
                &e.to_string(),
            );
            continue;
        }
        // The stale approvers are recorded before the merge's approval is judged; the state
        // after it, so that a merge that could not be recorded is tried again next pass.
        gone.updated_at = now_ms();
        store.upsert_pull_request(&gone)?;
        let merged = details.state == PrState::Merged;
        if merged {
            record_merge(inner, known.number as u64)?;
        }
        gone.state = if merged { "merged" } else { "closed" }.into();
        store.upsert_pull_request(&gone)?;
        follow.reconcile.extend(release(inner, known.number)?);
        follow.refresh = true;
    }
    Ok(follow)
}

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

fn event(inner: &Inner, env: &str, kind: EventKind, message: &str) {
    let _ = inner.engine.store().record_event(
        Some(env),
        kind,
        message,
        &serde_json::json!({}),
        now_ms(),
    );
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_engine::Rules;

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
        };
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let none: &[String] = &[];
        assert!(
            preview_allowed(&at(&a, false, false), none, None),
            "not a fork"
        );
        assert!(
            !preview_allowed(&at(&a, true, false), none, None),
            "a fork, unapproved"
        );
        assert!(
            preview_allowed(&at(&a, true, false), &["mallory".to_string()], None),
            "fork_allow lists its author"
        );
        assert!(
            preview_allowed(&at(&a, true, false), none, Some(&at(&a, true, true))),
            "approved at this head"
        );
        assert!(
            !preview_allowed(&at(&b, true, false), none, Some(&at(&a, true, true))),
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
    }

    fn rules(protected: bool, require_pr: bool, reqs: &[&str]) -> Rules {
        Rules {
            protected,
            require_pr,
            apply_requirements: reqs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_pull_request_is_judged_by_the_strongest_of_its_branch_what_runs_and_its_own() {
        let lowered = rules(false, false, &[]);
        let branch = rules(true, false, &["approved", "mergeable"]);
        assert_eq!(
            apply_rules(Some(&branch), None, &lowered),
            branch,
            "the head cannot lower the tracked branch's rules"
        );
        let running = rules(false, true, &["approved"]);
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
