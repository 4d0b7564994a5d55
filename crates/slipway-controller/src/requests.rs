//! What people ask of an environment outside the loop: an ad-hoc environment, a longer time
//! to live, a pin (or rollback) and its release. Each runs on a blocking thread; the caller
//! queues the reconcile that follows.
//!
//! With several replicas, a person's request about an existing environment is done by the
//! replica that works on it, under its lease ([`claim`]): another replica refuses it, naming
//! that one, rather than write beside it.

use slipway_core::EnvName;
use std::time::Duration;

use slipway_core::render::EnvKind;
use slipway_core::vocab::EventKind;
use slipway_engine::Origin;
use slipway_state::EnvironmentRecord;

use crate::reconcile::{event, expires};
use crate::replicas::{ReplicaOptions, rendezvous};
use crate::{ControllerError, CreateEnvironment, Inner, short};

/// Before a person's request about `name`, on a replica: takes (or renews) its lease when
/// this replica is the one to work on it (its share of the floating environments, or the
/// node-bound ones of its node), so that the request's writes prove the lease and no other
/// replica acts on it meanwhile; otherwise refuses, naming the replica that works on it
/// ([`ControllerError::Elsewhere`]), having changed nothing. `true`: taken, to give back with
/// [`release`] once the request is done. Not a replica, or no such environment (the request
/// itself says so): nothing to take.
pub(crate) fn claim(inner: &Inner, name: &EnvName) -> Result<bool, ControllerError> {
    let Some(replica) = &inner.options.replica else {
        return Ok(false);
    };
    let store = inner.engine.store();
    if let Some(found) = store.schema_moved() {
        return Err(slipway_state::StateError::SchemaMoved {
            found,
            understood: store.understood_schema(),
        }
        .into());
    }
    if store.environment(name)?.is_none() {
        return Ok(false);
    }
    if inner
        .membership
        .take(&inner.engine, replica, &inner.metrics, name)?
    {
        return Ok(true);
    }
    Err(elsewhere(inner, replica, name)?)
}

/// After a request [`claim`] took `name`'s lease for: the lease stays this replica's (it is
/// its share) unless it was lost meanwhile.
pub(crate) fn release(inner: &Inner, name: &EnvName) {
    if let Some(replica) = &inner.options.replica {
        inner
            .membership
            .done(&inner.engine, replica, &inner.metrics, name);
    }
}

/// Why this replica does not act on `name`: the replica holding its lease now; or, free, the
/// one it belongs to (the last holder of a node-bound environment, else the live replica
/// rendezvous hashing ranks first).
fn elsewhere(
    inner: &Inner,
    me: &ReplicaOptions,
    name: &EnvName,
) -> Result<ControllerError, ControllerError> {
    let store = inner.engine.store();
    let replicas = store.replicas()?;
    let silent_limit = i64::try_from(me.lease.as_millis() * 2).unwrap_or(i64::MAX);
    let alive = |replica: &str| {
        replicas
            .iter()
            .any(|r| r.name == replica && (r.silent_ms <= silent_limit || r.name == me.name))
    };
    let node_bound = store
        .resource_types(Some(name))?
        .values()
        .flatten()
        .any(|t| slipway_core::types::capabilities(t).node_bound);
    let now = store.holder(name)?;
    let holding = now.is_some();
    let holder = match now {
        Some(holder) => Some(holder),
        None if node_bound => store.lease(name)?.map(|lease| lease.holder),
        None => {
            let live: Vec<String> = replicas
                .iter()
                .filter(|r| alive(&r.name))
                .map(|r| r.name.clone())
                .collect();
            rendezvous(name.as_str(), &live).map(str::to_owned)
        }
    };
    Ok(match holder {
        Some(holder) if holder != me.name => ControllerError::Elsewhere {
            environment: name.clone(),
            advertise: replicas
                .iter()
                .find(|r| r.name == holder)
                .and_then(|r| r.advertise.clone()),
            // A live lease is a live holder, a one-shot command's (which beats no heartbeat)
            // too.
            alive: holding || alive(&holder),
            replica: holder,
        },
        _ if inner.membership.is_draining(name) => ControllerError::Conflict(format!(
            "environment `{name}` is still being worked on under a lease this replica lost (it \
             stalled or was cut off from the database); nothing was changed: retry once that \
             work ends, in a moment"
        )),
        // Free a moment ago and this replica's to take, yet not taken: another replica took
        // it in between, or it is changing hands as replicas join or leave.
        _ => ControllerError::Conflict(format!(
            "environment `{name}` is changing hands between replicas just now; retry in a \
             moment"
        )),
    })
}

/// Records a new ad-hoc environment (its first deployment is queued by the caller).
pub(crate) fn create_adhoc(
    inner: &Inner,
    request: &CreateEnvironment,
) -> Result<EnvironmentRecord, ControllerError> {
    let name = &request.name;
    let store = inner.engine.store();
    if store.environment(name)?.is_some() {
        return Err(ControllerError::Conflict(format!(
            "environment `{name}` already exists; pick another name or destroy it first"
        )));
    }
    inner.fetch()?;
    let cached = inner
        .engine
        .load_ref(inner.source.as_ref(), &request.reference, &inner.folder)?;
    let loaded = &cached.loaded;
    let stack = loaded.valid_stack().map_err(|first| {
        ControllerError::Invalid(format!(
            "{} at {} is not valid: {first}",
            loaded.entry, request.reference
        ))
    })?;
    // The names and families that count are the default branch's: the ref is anyone's
    // branch, and its `slipway.yaml` could leave `prod` out or call it a family.
    let main = inner.engine.load_tracked(
        inner.source.as_ref(),
        &inner.options.default_ref,
        &inner.folder,
    )?;
    let main = &main.loaded;
    let main_stack = main.valid_stack().map_err(|first| {
        ControllerError::Invalid(format!(
            "{} at the default ref `{}` is not valid, so the name `{name}` cannot be checked \
             against the environments it defines; fix it first: {first}",
            main.entry, inner.options.default_ref
        ))
    })?;
    check_adhoc_name(name, main_stack, stack)?;
    let families = |s: &slipway_core::stack::Stack| -> Vec<String> {
        s.environments
            .iter()
            .filter(|(_, d)| d.generate.is_some())
            .map(|(n, _)| n.clone())
            .collect()
    };
    let at_ref = families(stack);
    let allowed: Vec<String> = families(main_stack)
        .into_iter()
        .filter(|f| at_ref.contains(f))
        .collect();
    let listed = if allowed.is_empty() {
        "the stack has no generated family (`generate:`), so ad-hoc environments cannot be made"
            .to_string()
    } else {
        format!("its families are: {}", allowed.join(", "))
    };
    let definition = match &request.like {
        Some(like) if allowed.contains(like) => like.clone(),
        Some(like) if main_stack.environments.contains_key(like) => {
            // A copy of a static environment would take its variables and its secret
            // overrides (prod's passwords) and hand them to whoever asked.
            return Err(ControllerError::Invalid(format!(
                "--like `{like}`: `{like}` is a static environment, and ad-hoc environments take \
                 their variables and secrets only from a generated family; {listed}"
            )));
        }
        Some(like) => {
            return Err(ControllerError::Invalid(format!(
                "--like `{like}`: no such family in the stack of the default ref and of \
                 `{}`; {listed}",
                request.reference
            )));
        }
        None => match allowed.as_slice() {
            [only] => only.clone(),
            _ => {
                return Err(ControllerError::Invalid(format!(
                    "say which family this environment is like with --like; {listed}"
                )));
            }
        },
    };
    let limits = &inner.engine.config().environments;
    let max = limits.max_ttl();
    let ttl = match request.ttl {
        Some(asked) if asked > max => {
            return Err(ControllerError::Invalid(format!(
                "--ttl {} is longer than the most an ad-hoc environment may live, {} \
                 ([environments] max_ttl in the engine configuration)",
                humantime::format_duration(asked),
                humantime::format_duration(max)
            )));
        }
        Some(asked) => asked,
        None => stack.environments[&definition]
            .ttl
            .map_or_else(|| limits.default_ttl(), |t| t.min(max)),
    };
    let ttl = Some(ttl);
    let now = inner.now();
    let ttl_ms = ttl.map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX));
    let record = EnvironmentRecord {
        tracked_ref: Some(followed_ref(inner, &request.reference, &loaded.commit.sha)?),
        desired_commit: Some(loaded.commit.sha.clone()),
        owner: request.owner.clone(),
        ttl_ms,
        expires_at: ttl_ms.map(|ms| now.saturating_add(ms)),
        definition: Some(definition),
        ..EnvironmentRecord::new(
            name.clone(),
            EnvKind::Adhoc,
            stack.name.clone(),
            inner.repo_label.clone(),
            now,
        )
    };
    // Beyond its family's `max_environments` (as the default ref says) or the home's, it
    // waits in the queue like a branch's environment: recorded, answered as queued with its
    // place, and started when a slot frees.
    let caps = crate::slots::caps(inner, main_stack);
    let Some(admitted) = store.admit(&record, &caps, now)? else {
        return Err(ControllerError::Conflict(format!(
            "environment `{name}` already exists; pick another name or destroy it first"
        )));
    };
    event(
        inner,
        name,
        EventKind::EnvironmentCreated,
        &format!(
            "{name} created from `{}` by {}",
            request.reference,
            request.owner.as_deref().unwrap_or("someone")
        ),
    );
    let mut record = admitted.record;
    // Its first deployment counts against its owner's workers, as every later one.
    if let Some(owner) = &record.owner {
        inner
            .queue
            .lock()
            .expect("the queue lock is never poisoned")
            .set_person(name, owner.clone());
    }
    if record.activity == slipway_core::vocab::Activity::Queued {
        let said = crate::slots::announce_queued(inner, &caps, &record, admitted.position);
        record.message = Some(said);
    }
    crate::slots::started(inner, admitted.promoted)?;
    Ok(record)
}

/// Writes `record`, a person's change made from a read a moment ago, keeping what the store
/// says now of its activity: a promotion from the queue (or a sleep) meanwhile is not undone
/// by it.
fn write_change(inner: &Inner, record: &EnvironmentRecord) -> Result<(), ControllerError> {
    let written = inner
        .engine
        .store()
        .update_environment(&record.name, |current| {
            Ok::<_, std::convert::Infallible>(keeping_activity(record, current))
        })?;
    match written {
        Ok(_) => Ok(()),
        Err(never) => match never {},
    }
}

/// `record` with the activity `current` (the store's now) says.
fn keeping_activity(
    record: &EnvironmentRecord,
    current: Option<EnvironmentRecord>,
) -> EnvironmentRecord {
    let mut record = record.clone();
    if let Some(current) = current {
        record.activity = current.activity;
        record.activity_since = current.activity_since;
        record.queued_at = current.queued_at;
    }
    record
}

/// [`write_change`] of a person's pin, rollback or unpin (`what` they did), which ends a
/// pull request's hold on the environment in the same transaction: its lock is released
/// (what the person chose stays), so that the pull request's close or its `/slipway unlock`
/// does not move the environment off it (back to the branch's tip a rollback left, say). A
/// `/slipway apply` pinning it at the same moment comes wholly before or after. Returns the
/// pull request whose lock ended, for [`lock_ended`].
fn write_change_ending_lock(
    inner: &Inner,
    record: &EnvironmentRecord,
) -> Result<Option<i64>, ControllerError> {
    let (_, ended) = inner
        .engine
        .store()
        .update_environment_ending_lock(&record.name, |current| {
            keeping_activity(record, current)
        })?;
    Ok(ended)
}

/// Says that a person's change (`what` they did) ended pull request `ended`'s lock of `name`.
fn lock_ended(inner: &Inner, name: &EnvName, ended: Option<i64>, what: &str) {
    if let Some(number) = ended {
        event(
            inner,
            name,
            EventKind::LockReleased,
            &format!(
                "the lock of #{number} is released: a person {what}, and closing #{number} no \
                 longer moves it"
            ),
        );
    }
}

fn existing(inner: &Inner, name: &EnvName) -> Result<EnvironmentRecord, ControllerError> {
    inner
        .engine
        .store()
        .environment(name)?
        .ok_or_else(|| ControllerError::NotFound(name.to_string()))
}

/// Pushes the expiry of a generated or ad-hoc environment `by` later, never past
/// `[environments] max_ttl` from now. Static environments have no time to live: giving them
/// one would let the controller destroy them (prod) without anyone's confirmation.
pub(crate) fn extend(
    inner: &Inner,
    name: &EnvName,
    by: Duration,
) -> Result<EnvironmentRecord, ControllerError> {
    let mut record = existing(inner, name)?;
    if !expires(&record) {
        return Err(ControllerError::Conflict(format!(
            "`{name}` is a static environment: it has no time to live to extend, and never \
             expires; only generated and ad-hoc environments do"
        )));
    }
    let max = inner.engine.config().environments.max_ttl();
    if by > max {
        return Err(ControllerError::Invalid(format!(
            "--by {} is longer than the most an environment may be extended, {} from now \
             ([environments] max_ttl in the engine configuration)",
            humantime::format_duration(by),
            humantime::format_duration(max)
        )));
    }
    let now = inner.now();
    let by_ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
    let max_ms = i64::try_from(max.as_millis()).unwrap_or(i64::MAX);
    let wanted = record
        .expires_at
        .unwrap_or(now)
        .max(now)
        .saturating_add(by_ms);
    let limit = now.saturating_add(max_ms);
    let at = wanted.min(limit);
    // An environment that lives only as long as it is used (`idle_ttl`, no `ttl`) is given
    // no time to live by an extension: its idle time starts again, below.
    if record.expires_at.is_some() || record.idle_ttl_ms.is_none() {
        record.expires_at = Some(at);
    }
    // An extension is a sign of use: its idle time (`sleep_after`, `idle_ttl`) starts again,
    // and a new warning comes before its idle expiry.
    record.touched_at = Some(now);
    record.updated_at = now;
    write_change(inner, &record)?;
    let capped = if wanted > limit {
        format!(
            " (capped at [environments] max_ttl, {}, from now)",
            humantime::format_duration(max)
        )
    } else {
        String::new()
    };
    event(
        inner,
        name,
        EventKind::EnvironmentExtended,
        &match (record.expires_at, record.idle_ttl_ms) {
            (None, Some(idle)) => format!(
                "{name} was extended: it is destroyed after {} without a request from now",
                humantime::format_duration(Duration::from_secs((idle.max(0) / 1000) as u64))
            ),
            _ => format!(
                "{name} now expires in {}{capped}",
                humantime::format_duration(Duration::from_secs(((at - now).max(0) / 1000) as u64))
            ),
        },
    );
    Ok(record)
}

pub(crate) fn pin(
    inner: &Inner,
    name: &EnvName,
    commit: Option<String>,
) -> Result<EnvironmentRecord, ControllerError> {
    let mut record = existing(inner, name)?;
    let sha = match commit {
        Some(reference) => {
            // The ref may have been pushed since the last poll.
            inner.fetch()?;
            inner.source.resolve(&reference)?.sha
        }
        None => record.commit.clone().ok_or_else(|| {
            ControllerError::Invalid(format!(
                "`{name}` runs no commit yet; pin it to one with a ref"
            ))
        })?,
    };
    pin_gate(inner, &record, &sha)?;
    record.pinned = true;
    record.desired_commit = Some(sha.clone());
    record.updated_at = inner.now();
    let ended = write_change_ending_lock(inner, &record)?;
    event(
        inner,
        name,
        EventKind::EnvironmentPinned,
        &format!("{name} pinned to {}", short(&sha)),
    );
    lock_ended(
        inner,
        name,
        ended,
        &format!("pinned `{name}` to {}", short(&sha)),
    );
    Ok(record)
}

/// Whether `record`'s environment may be pinned (or rolled back) to `sha`. Under `protected`
/// or `require_pr` it takes only commits that reached its branch (reviews are the forge's
/// branch protection there; a pull request goes to it with `/slipway apply`); under
/// `require_pr` only a commit a pull request merged into that branch made (approved, when
/// the apply requirements say so) or one it ran itself before (a rollback): a pin must not
/// be a way around the gate the reconcile applies to its branch.
fn pin_gate(inner: &Inner, record: &EnvironmentRecord, sha: &str) -> Result<(), ControllerError> {
    let name = &record.name;
    let Some(branch) = record.tracked_ref.clone() else {
        return Ok(());
    };
    if record.kind != EnvKind::Static {
        return Ok(());
    }
    // The branch itself, never a tag named like it.
    let tip = inner.source.resolve_tracked(&branch)?.sha;
    let rules = pin_rules(inner, record, &[&tip, sha])?;
    if !rules.protected && !rules.require_pr {
        return Ok(());
    }
    let short = &sha[..12.min(sha.len())];
    let why = match (rules.protected, rules.require_pr) {
        (true, true) => "protected and has `require_pr: true`",
        (true, false) => "protected",
        _ => "has `require_pr: true`",
    };
    if !inner.source.is_ancestor(sha, &tip)? {
        return Err(ControllerError::Invalid(format!(
            "`{name}` is {why}, and takes only commits on `{branch}`; {short} is not in its \
             history (a pull request goes there with `/slipway apply {name}` once its \
             requirements are met)"
        )));
    }
    if !rules.require_pr {
        return Ok(());
    }
    let store = inner.engine.store();
    if record.commit.as_deref() == Some(sha)
        || store.deployed_commit(name, sha, record.created_at)?
    {
        return Ok(());
    }
    let needs_approval = rules.apply_requirements.iter().any(|r| r == "approved");
    match store.merged_commit(sha)? {
        Some(m)
            if m.base_ref.as_deref() == Some(branch.as_str())
                && (m.approved || !needs_approval) =>
        {
            Ok(())
        }
        _ => Err(ControllerError::Invalid(format!(
            "`{name}` has `require_pr: true`: it is pinned or rolled back only to a commit an \
             {}pull request merged into `{branch}` made, or one it ran before; {short} is \
             neither (require_pr). Merge the change through a pull request",
            if needs_approval { "approved " } else { "" }
        ))),
    }
}

/// The rules a pin of `record`'s static environment is judged by: those in force, and those
/// the commits `at` (its branch's tip, the commit pinned) declare, the stronger of each.
/// Before its first deployment nothing is in force, and a pin must not escape what its
/// branch asks for.
fn pin_rules(
    inner: &Inner,
    record: &EnvironmentRecord,
    at: &[&str],
) -> Result<slipway_engine::Rules, ControllerError> {
    let definition = record.definition.as_deref().unwrap_or(&record.name);
    let origin = |sha| Origin {
        source: inner.source.as_ref(),
        repo: &inner.repo_label,
        reference: sha,
        folder: &inner.folder,
        tip: Some(sha),
    };
    let mut rules = inner
        .engine
        .rules_in_force(&origin(at[0]), &record.name, definition)?
        .unwrap_or_default();
    rules.protected |= record.protected;
    for sha in at {
        let cached = inner.engine.load(&origin(sha))?;
        if let Some(def) = cached
            .loaded
            .valid_stack()
            .ok()
            .and_then(|s| s.environments.get(definition))
        {
            rules = rules.stronger(&slipway_engine::Rules::declared(def, EnvKind::Static));
        }
    }
    Ok(rules)
}

/// What an ad-hoc environment made from `reference` (which resolved to `sha`) follows: the
/// branch of that name when it is one, at `sha`; else (a tag, a commit id, `main~2`) the
/// commit itself, by its whole id. Environments follow their ref as a branch first
/// ([`slipway_git::Source::resolve_tracked`], and the poll's tips, by branch name): one kept
/// as `v1.0` or `1a2b3c` would run whatever a branch anyone may push under that name holds.
fn followed_ref(inner: &Inner, reference: &str, sha: &str) -> Result<String, ControllerError> {
    let named = [Some(reference), reference.strip_prefix("origin/")];
    let branches = inner.source.branches()?;
    Ok(named
        .into_iter()
        .flatten()
        .find(|name| {
            slipway_git::names_a_branch(name)
                && branches.iter().any(|b| b.name == *name && b.sha == sha)
        })
        .unwrap_or(sha)
        .to_string())
}

pub(crate) fn unpin(inner: &Inner, name: &EnvName) -> Result<EnvironmentRecord, ControllerError> {
    let mut record = existing(inner, name)?;
    record.pinned = false;
    record.updated_at = inner.now();
    let ended = write_change_ending_lock(inner, &record)?;
    event(
        inner,
        name,
        EventKind::EnvironmentUnpinned,
        &format!(
            "{name} follows `{}` again",
            record.tracked_ref.as_deref().unwrap_or("?")
        ),
    );
    lock_ended(inner, name, ended, &format!("unpinned `{name}`"));
    Ok(record)
}

/// Refuses an ad-hoc environment name that belongs to something else: an environment or
/// family of the default branch's stack (or of the ref's own), or a generated environment's
/// pattern (`pr-*`, `br-*`), so that an ad-hoc environment can never stand in for one of them.
fn check_adhoc_name(
    name: &str,
    main_stack: &slipway_core::stack::Stack,
    stack: &slipway_core::stack::Stack,
) -> Result<(), ControllerError> {
    if main_stack.environments.contains_key(name) || stack.environments.contains_key(name) {
        return Err(ControllerError::Conflict(format!(
            "`{name}` is an environment of the stack itself; ad-hoc environments need their \
             own name"
        )));
    }
    for prefix in ["pr-", "br-"] {
        if name.starts_with(prefix) {
            return Err(ControllerError::Conflict(format!(
                "`{name}` starts with `{prefix}`, which names generated environments (pull \
                 requests and branches); ad-hoc environments need another name"
            )));
        }
    }
    Ok(())
}
