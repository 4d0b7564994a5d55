//! Discovery's blocking half: fetch, read the stack at the default ref, and bring the set of
//! recorded environments in line with it (the pure decision is [`crate::discover`]).

use slipway_core::EnvName;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use slipway_core::render::EnvKind;
use slipway_core::vocab::{Activity, EventKind};
use slipway_state::EnvironmentRecord;

use crate::reconcile::{Cause, event, leave_queue, mark_failed, report_once};
use crate::{ControllerError, Inner, Trigger, discover, short, slots};

/// Fetches, reads the stack at the default ref, and makes the recorded environments match
/// what it asks for: new static and generated environments are recorded, generated ones whose
/// branch is gone are marked to be destroyed (`Inner::unwanted`, by the reconcile). Returns
/// the environments to reconcile, with why.
pub(crate) fn discover(inner: &Inner) -> Result<Vec<(EnvName, Trigger)>, ControllerError> {
    // One pass at a time (each poll tick, webhook and person asks for one): an older pass
    // finishing after a newer one would write its older tips and marks over the newer's,
    // and destroy a branch's environment that the newer saw come back. A caller waits until
    // a pass begun after it asked is done: its own, or one that served several callers
    // (which queues what it found).
    let lock = || {
        inner
            .discovery
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let mut state = lock();
    state.asked += 1;
    let mine = state.asked;
    while state.running {
        state = inner
            .discovered
            .wait(state)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.done >= mine {
            return Ok(Vec::new());
        }
    }
    state.running = true;
    let mut pass = Pass {
        inner,
        covers: state.asked,
        succeeded: false,
    };
    drop(state);
    let result = discover_once(inner);
    pass.succeeded = result.is_ok();
    drop(pass);
    result
}

/// The running discovery pass: it ends when this drops, a panic's unwinding included (the
/// next caller then runs one), serving the callers it covers when it succeeded.
struct Pass<'a> {
    inner: &'a Inner,
    covers: u64,
    succeeded: bool,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut state = self
            .inner
            .discovery
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.running = false;
        if self.succeeded {
            state.done = self.covers;
        }
        drop(state);
        self.inner.discovered.notify_all();
    }
}

/// One pass of [`discover`].
fn discover_once(inner: &Inner) -> Result<Vec<(EnvName, Trigger)>, ControllerError> {
    let mut unwanted = BTreeMap::new();
    let found = discover_all(inner, &mut unwanted);
    // Only a discovery that saw the whole set names environments to destroy; one that
    // stopped short (the default branch unreadable or invalid, an error) leaves none marked:
    // a branch pushed again meanwhile must not be destroyed on an older pass's word.
    *inner
        .unwanted
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = unwanted;
    found
}

/// [`discover`], filling `unwanted` when it looks at every environment.
fn discover_all(
    inner: &Inner,
    unwanted: &mut BTreeMap<EnvName, crate::Unwanted>,
) -> Result<Vec<(EnvName, Trigger)>, ControllerError> {
    inner.fetch()?;
    let mut branches = inner.source.branches()?;
    // Open pull requests allowed a preview: their head refs join the branches (so their tips
    // are known like a branch's), checked against the head the forge announced.
    let mut pulls = Vec::new();
    if let Some(setup) = inner.forge.get() {
        let (open, unreadable) = inner
            .engine
            .store()
            .pull_requests_and_unreadable(Some("open"))?;
        // A pull request whose record is damaged: its preview, if one runs, is kept as it is
        // (nothing new is deployed for it, and it is not destroyed as if it were closed).
        for number in unreadable {
            let env = EnvName::pull_request(number as u64);
            if inner.engine.store().environment(&env)?.is_some() {
                pulls.push(discover::PullHead {
                    number: number as u64,
                    reference: setup.forge.pr_head_ref(number as u64),
                });
            }
        }
        for pr in open {
            let reference = setup.forge.pr_head_ref(pr.number as u64);
            let head = if pr.preview_allowed {
                inner.source.resolve(&reference).ok()
            } else {
                None
            };
            match head {
                Some(commit) if commit.sha == pr.head_sha => {
                    branches.push(slipway_git::Branch {
                        name: reference.clone(),
                        sha: commit.sha,
                    });
                }
                // A fork's new head nobody approved yet (reconcile holds it, and a preview
                // already running stays at the commit that was approved), or a head not
                // fetched yet or moved since the event (the next event or poll has it): an
                // environment already running keeps running meanwhile.
                _ => {
                    let running = inner
                        .engine
                        .store()
                        .environment(&EnvName::pull_request(pr.number))?
                        .is_some();
                    if !running {
                        continue;
                    }
                }
            }
            pulls.push(discover::PullHead {
                number: pr.number as u64,
                reference,
            });
        }
    }
    *inner
        .tips
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = branches
        .iter()
        .map(|b| (b.name.clone(), b.sha.clone()))
        .collect();
    let store = inner.engine.store();
    // Every record read once, and the tips by branch: with ten thousand branches and
    // environments, a query per environment and a scan of the branches per environment were
    // most of a refresh.
    let records: BTreeMap<EnvName, EnvironmentRecord> = store
        .environments()?
        .into_iter()
        .map(|r| (r.name.clone(), r))
        .collect();
    // Static environments have workers of their own (`Options::static_concurrency`).
    inner
        .queue
        .lock()
        .expect("the queue lock is never poisoned")
        .set_statics(
            records
                .values()
                .filter(|r| r.kind == EnvKind::Static)
                .map(|r| r.name.clone())
                .collect(),
        );
    let tips: HashMap<&str, &str> = branches
        .iter()
        .map(|b| (b.name.as_str(), b.sha.as_str()))
        .collect();
    let people = People::read(inner, &tips)?;
    inner
        .queue
        .lock()
        .expect("the queue lock is never poisoned")
        .set_people(
            records
                .values()
                .filter(|r| r.kind != EnvKind::Static)
                .map(|r| (&r.name, people.of(r))),
        );
    let mut out = Vec::new();
    // Environments whose branch moved are reconciled whatever the default ref says, so a
    // poisoned commit on their branch is reported on them.
    for record in records.values() {
        let tip = record
            .tracked_ref
            .as_deref()
            .and_then(|r| tips.get(r).copied());
        if !record.pinned && tip.is_some_and(|t| record.desired_commit.as_deref() != Some(t)) {
            out.push((record.name.clone(), Trigger::Poll));
        }
    }
    let cached = match inner.engine.load_tracked(
        inner.source.as_ref(),
        &inner.options.default_ref,
        &inner.folder,
    ) {
        Ok(cached) => cached,
        // The commit could not be read this time (a fetch still writing it): the set of
        // environments is looked at again on the next poll; those whose branch moved are
        // reconciled now all the same.
        Err(e) if e.retryable() => {
            tracing::warn!(error = %e, "the default branch's stack could not be read; the set of environments is left as it is");
            return Ok(out);
        }
        Err(e) => return Err(e.into()),
    };
    let loaded = &cached.loaded;
    let stack = match loaded.valid_stack() {
        Ok(stack) => stack,
        Err(first) => {
            let message = format!(
                "{} at {} is not valid; the set of environments is left as it is: {first}",
                loaded.entry,
                short(&loaded.commit.sha)
            );
            report_once(
                inner,
                None,
                Cause::InvalidCommit(&loaded.commit.sha),
                &message,
            );
            return Ok(out);
        }
    };
    let holder = |name: &EnvName| {
        records
            .get(name)
            .filter(|r| r.kind == EnvKind::Generated)
            .and_then(|r| r.tracked_ref.clone())
    };
    let wanted = discover::wanted(stack, &branches, &pulls, &holder);
    let now = inner.now();
    let caps = slots::caps(inner, stack);
    // Whether an environment joined the queue: the plan comments of queued previews say
    // their places.
    let mut joined = false;
    for w in &wanted {
        if !records.contains_key(&w.name)
            && w.kind == EnvKind::Generated
            && expired_at(store, &w.name, tips.get(w.tracked_ref.as_str()).copied())
        {
            // It expired (its time to live, or idle) at the commit its branch is still at:
            // not made again before the branch or pull request moves.
            continue;
        }
        let record = match records.get(&w.name) {
            Some(r) => Cow::Borrowed(r),
            None => Cow::Owned({
                let record = EnvironmentRecord {
                    tracked_ref: Some(w.tracked_ref.clone()),
                    ttl_ms: w
                        .ttl
                        .map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX)),
                    expires_at: w.ttl.map(|t| {
                        now.saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX))
                    }),
                    definition: Some(w.definition.clone()),
                    ..EnvironmentRecord::new(
                        w.name.clone(),
                        w.kind,
                        stack.name.clone(),
                        inner.repo_label.clone(),
                        now,
                    )
                };
                // Recorded awake, or queued when its family (or the home) runs as many as its
                // cap allows: decided with the count in one transaction.
                match store.admit(&record, &caps, now)? {
                    // Another replica recorded it meanwhile: go on with its record (and its
                    // one `created` event).
                    None => match store.environment(&w.name)? {
                        Some(theirs) => theirs,
                        None => continue,
                    },
                    Some(admitted) => {
                        slots::started(inner, admitted.promoted)?;
                        let record = admitted.record;
                        let mut queue = inner
                            .queue
                            .lock()
                            .expect("the queue lock is never poisoned");
                        if record.kind == EnvKind::Static {
                            queue.add_static(&record.name);
                        } else if let Some(person) = people.of(&record) {
                            queue.set_person(&record.name, person);
                        }
                        drop(queue);
                        let what = if w.kind == EnvKind::Generated {
                            format!("for branch `{}`", w.tracked_ref)
                        } else {
                            format!("tracking `{}`", w.tracked_ref)
                        };
                        event(
                            inner,
                            &w.name,
                            EventKind::EnvironmentCreated,
                            &format!("{} created {what}", w.name),
                        );
                        if record.activity == Activity::Queued {
                            slots::announce_queued(inner, &caps, &record, admitted.position);
                            joined = true;
                        }
                        record
                    }
                }
            }),
        };
        if record.kind != w.kind {
            // Something else holds the name (an ad-hoc `prod` made before the stack defined
            // it, a generated environment where a static one now stands): it is never
            // adopted as the other, which would hand it prod's rules, or prod's resources to
            // a branch. Reported once; a person destroys the impostor.
            let why = format!(
                "held: the stack defines `{}` as a {} environment, but an environment of kind \
                 `{}` holds the name{}; it is not adopted: destroy it (`slipway env destroy {}`) \
                 so that the stack's `{}` can be made",
                w.name,
                w.kind.as_str(),
                record.kind,
                record
                    .owner
                    .as_deref()
                    .map(|o| format!(" (made by {o})"))
                    .unwrap_or_default(),
                w.name,
                w.name
            );
            // The reconcile of the impostor reports the same (the engine refuses it): once,
            // by whichever of the two sees it first.
            let cause = Cause::NotAdopted {
                holder_created: record.created_at,
            };
            if report_once(inner, Some(&w.name), cause, &why) {
                mark_failed(inner, &record, &why)?;
            }
            continue;
        }
        if record.activity == Activity::Queued {
            // Nothing runs for it until it has a slot (`slots::fill` queues it then).
            continue;
        }
        if record.pinned {
            continue;
        }
        let tip = tips.get(w.tracked_ref.as_str()).copied();
        if tip.is_none()
            || tip != record.desired_commit.as_deref()
            || record.commit != record.desired_commit
        {
            out.push((w.name.clone(), Trigger::Poll));
        }
    }
    // Generated environments whose branch no longer matches: a worker destroys them (see
    // `Inner::unwanted`); one wanted again meanwhile is not.
    let wanted_names: BTreeSet<&str> = wanted.iter().map(|w| w.name.as_str()).collect();
    for record in records.values() {
        if record.kind == EnvKind::Generated && !wanted_names.contains(record.name.as_str()) {
            let tracked = record.tracked_ref.as_deref().unwrap_or("?");
            // Its ref gone: destroyed only while it stays gone (`Unwanted::gone`). Still
            // there, it no longer matches what the default branch generates.
            let gone = (!tips.contains_key(tracked)).then(|| tracked.to_string());
            let why = match (tracked.starts_with("refs/"), gone.is_some()) {
                (true, true) => format!("its pull request is closed or merged ({tracked})"),
                (false, true) => format!("branch `{tracked}` is gone"),
                (_, false) => {
                    format!("`{tracked}` no longer matches a family of the default branch's stack")
                }
            };
            // One still waiting for a slot leaves the queue now (nothing of it runs), so
            // that the slots filled below are not given to it.
            if record.activity == Activity::Queued && leave_queue(inner, &record.name, &why)? {
                continue;
            }
            out.push((record.name.clone(), Trigger::Poll));
            unwanted.insert(record.name.clone(), crate::Unwanted { why, gone });
        }
    }
    // Slots that freed (a destroy whose promotion did not happen: a controller killed in
    // between) or a cap raised by the default ref's new commit: the first queued take them.
    let started = slots::fill(inner, &caps)?;
    if joined && started.is_empty() {
        slots::queue_moved(inner, &[])?;
    }
    out.extend(started.into_iter().map(|name| (name, Trigger::Poll)));
    Ok(out)
}

/// Whose the environments are, for the queue's limit per person
/// (`Options::author_concurrency`).
struct People {
    /// Who pushed each branch's tip, else to it last, by branch name (from the forge's push
    /// webhooks), and whether they pushed the tip.
    branches: HashMap<String, (String, bool)>,
    /// The same for the pull requests' own pushes (`pull/N`, their webhooks' senders).
    pull_pushers: HashMap<String, (String, bool)>,
    /// The open pull requests' environments: their own source (`pull/N`), their branch (this
    /// repository's), and their author.
    pulls: HashMap<EnvName, (String, Option<String>, String)>,
    /// Whether a forge's webhooks say who pushes: then nobody known is someone unknown.
    forge: bool,
}

/// Whose the environments are that a forge's webhooks named nobody for (a push whose
/// webhook has not arrived, a sender the forge did not name): one person, so that pushes
/// made unknown get no more workers than anyone's. No forge login has parentheses or spaces.
const UNKNOWN: &str = "(someone unknown)";

impl People {
    fn read(inner: &Inner, tips: &HashMap<&str, &str>) -> Result<People, ControllerError> {
        let store = inner.engine.store();
        let open = store.pull_requests(Some("open"))?;
        let mut heads: HashMap<String, String> = HashMap::new();
        let mut pulls = HashMap::new();
        for pr in open {
            let Ok(number) = u64::try_from(pr.number) else {
                continue;
            };
            let own = format!("pull/{number}");
            heads.insert(own.clone(), pr.head_sha.clone());
            let branch = (!pr.is_fork).then_some(pr.head_ref);
            pulls.insert(EnvName::pull_request(number), (own, branch, pr.author));
        }
        let tip_of = |source: &str| match source.strip_prefix("refs/heads/") {
            Some(branch) => tips.get(branch).copied(),
            None => heads.get(source).map(String::as_str),
        };
        let mut branches = HashMap::new();
        let mut pull_pushers = HashMap::new();
        for (source, found) in store.pushers(tip_of)? {
            match source.strip_prefix("refs/heads/") {
                Some(branch) => branches.insert(branch.to_string(), found),
                None => pull_pushers.insert(source, found),
            };
        }
        Ok(People {
            branches,
            pull_pushers,
            pulls,
            forge: inner.forge.get().is_some(),
        })
    }

    /// Whose `record` is: a pull request's environment its head's pusher's (else its
    /// author's), a branch's its pusher's, an ad-hoc one its owner's. Static environments are
    /// nobody's (no limit holds them), and so are those nobody is known for without a forge.
    fn of(&self, record: &EnvironmentRecord) -> Option<String> {
        let found = match record.kind {
            EnvKind::Static => return None,
            EnvKind::Generated => match self.pulls.get(&record.name) {
                // Through the pull request or its branch: whoever pushed its head, else
                // whoever pushed to it last, else its author.
                Some((own, branch, author)) => {
                    let found: Vec<&(String, bool)> = [
                        self.pull_pushers.get(own),
                        branch.as_ref().and_then(|b| self.branches.get(b)),
                    ]
                    .into_iter()
                    .flatten()
                    .collect();
                    found
                        .iter()
                        .find(|(_, of_tip)| *of_tip)
                        .or(found.first())
                        .map(|(pusher, _)| pusher)
                        .or(Some(author))
                        .cloned()
                }
                None => record
                    .tracked_ref
                    .as_deref()
                    .and_then(|branch| self.branches.get(branch))
                    .map(|(pusher, _)| pusher.clone()),
            },
            EnvKind::Adhoc => record.owner.clone(),
        };
        found.or_else(|| self.forge.then(|| UNKNOWN.to_string()))
    }
}

/// Whether generated environment `name` expired at commit `tip` (its branch's tip now).
fn expired_at(store: &slipway_state::Store, name: &EnvName, tip: Option<&str>) -> bool {
    let Some(tip) = tip else { return false };
    store
        .last_event(Some(name), EventKind::EnvironmentExpired)
        .ok()
        .flatten()
        .is_some_and(|e| e.data["commit"].as_str() == Some(tip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, kind: EnvKind, tracked: &str, owner: Option<&str>) -> EnvironmentRecord {
        EnvironmentRecord {
            tracked_ref: Some(tracked.into()),
            owner: owner.map(str::to_string),
            ..EnvironmentRecord::new(
                EnvName::parse(name).expect("a name"),
                kind,
                "shop".into(),
                "file:///repo".into(),
                0,
            )
        }
    }

    /// Whoever pushes a pull request's head is charged for its environment, not its author
    /// (anyone may push to a pull request of this repository); with a forge, a push nobody is
    /// known for is charged to one person, unknown.
    #[test]
    fn an_environment_is_whoever_pushed_what_it_runs() {
        let pushed = |list: &[(&str, &str, bool)]| -> HashMap<String, (String, bool)> {
            list.iter()
                .map(|(s, p, tip)| (s.to_string(), (p.to_string(), *tip)))
                .collect()
        };
        let branches = pushed(&[("feature/x", "mallory", true), ("shared", "mallory", true)]);
        // Carol pushed an older head of #8: its branch's tip is Mallory's.
        let pull_pushers = pushed(&[("pull/8", "carol", false), ("pull/9", "carol", false)]);
        let pulls: HashMap<EnvName, (String, Option<String>, String)> = [
            // Alice's pull request, which Mallory pushed to through its branch.
            (8, Some("shared"), "alice"),
            // A fork's, pushed through the pull request.
            (9, None, "dave"),
            // Nobody known pushed to it: its author.
            (10, Some("quiet"), "erin"),
        ]
        .map(|(n, branch, author)| {
            (
                EnvName::pull_request(n),
                (
                    format!("pull/{n}"),
                    branch.map(str::to_string),
                    author.to_string(),
                ),
            )
        })
        .into();
        let people = People {
            branches,
            pull_pushers,
            pulls,
            forge: true,
        };
        let of = |name, kind, tracked, owner| people.of(&record(name, kind, tracked, owner));
        let generated = EnvKind::Generated;
        assert_eq!(
            of("br-feature-x", generated, "feature/x", None).as_deref(),
            Some("mallory")
        );
        assert_eq!(
            of("pr-8", generated, "refs/pull/8/head", None).as_deref(),
            Some("mallory")
        );
        assert_eq!(
            of("pr-9", generated, "refs/pull/9/head", None).as_deref(),
            Some("carol")
        );
        assert_eq!(
            of("pr-10", generated, "refs/pull/10/head", None).as_deref(),
            Some("erin")
        );
        assert_eq!(
            of("br-new", generated, "new", None).as_deref(),
            Some(UNKNOWN)
        );
        assert_eq!(
            of("scratch", EnvKind::Adhoc, "main", Some("alice")).as_deref(),
            Some("alice")
        );
        assert_eq!(of("prod", EnvKind::Static, "main", None), None);
        let people = People {
            forge: false,
            ..people
        };
        assert_eq!(
            people.of(&record("br-new", generated, "new", None)),
            None,
            "without a forge nobody is known: nobody's"
        );
    }
}
