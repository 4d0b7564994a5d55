//! The work queue: one slot per environment (kube-runtime's scheduler shape). Pure: time is
//! passed in, so it is tested without a clock.
//!
//! Static environments (declared with `track:`) are indexed apart from the others, so that
//! workers of their own take them first: whoever pushes a branch decides how long its
//! environment's reconcile runs (its jobs' `timeout`), and must not hold up prod's.
//!
//! The others belong to people ([`Queue::set_people`]: who pushed a branch, opened a pull
//! request or made an ad-hoc environment), and one person's run at most
//! [`Queue::set_person_limit`] at once: whoever pushes ten branches whose jobs run for an
//! hour holds that many workers, not all, and the next person's preview still starts.

use slipway_core::EnvName;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::Trigger;

/// How a reconcile ended, as far as the queue's backoff goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// It succeeded (or was held, or found someone else busy): the backoff resets.
    Succeeded,
    /// It failed, and the same reconcile may succeed later: retried after a backoff.
    Retry,
    /// It failed, and retrying will not help until a new commit or a person: no retry is
    /// scheduled, and the backoff resets for whatever comes next.
    Wait,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    due: Instant,
    trigger: Trigger,
}

/// Pending reconciles, at most one per environment, plus which are running.
///
/// Every operation is O(log n): with a thousand environments the scheduler asks for the next
/// due one after every event, and a scan per question was most of a reconcile pass's CPU.
#[derive(Debug, Default)]
pub struct Queue {
    /// Every queued environment, running or not.
    slots: BTreeMap<EnvName, Slot>,
    /// The queued environments that are not running and not static, by due time.
    index: BTreeSet<(Instant, EnvName)>,
    /// The same for static environments: what their own workers can start.
    static_index: BTreeSet<(Instant, EnvName)>,
    /// Which environments are static ([`Queue::set_statics`]).
    statics: BTreeSet<EnvName>,
    running: BTreeSet<EnvName>,
    failures: BTreeMap<EnvName, u32>,
    /// Whose each environment that is not static is, when known ([`Queue::set_people`]).
    people: BTreeMap<EnvName, String>,
    /// The running environments that count against a person, and whose (at most as many
    /// as there are workers).
    running_people: BTreeMap<EnvName, String>,
    /// How many environments one person may have running at once (0: no limit).
    person_limit: usize,
}

impl Queue {
    /// Asks for `env` to be reconciled at `due`. An environment already queued keeps one slot,
    /// due at the earlier time; the trigger of the earlier request wins, except that the
    /// periodic [`Trigger::Timer`] gives way to any other: it asks the least of a reconcile
    /// (an unchanged environment is not observed, see `reconcile`), so a drift tick or a
    /// person's request landing on a slot it holds must not be lost to it.
    pub fn push(&mut self, env: &EnvName, trigger: Trigger, due: Instant) {
        let startable = !self.running.contains(env);
        let index = if self.statics.contains(env) {
            &mut self.static_index
        } else {
            &mut self.index
        };
        match self.slots.get_mut(env) {
            Some(slot) if slot.due <= due => {
                if slot.trigger == Trigger::Timer {
                    slot.trigger = trigger;
                }
            }
            Some(slot) => {
                if startable {
                    index.remove(&(slot.due, env.clone()));
                    index.insert((due, env.clone()));
                }
                let trigger = if trigger == Trigger::Timer {
                    slot.trigger
                } else {
                    trigger
                };
                *slot = Slot { due, trigger };
            }
            None => {
                self.slots.insert(env.clone(), Slot { due, trigger });
                if startable {
                    index.insert((due, env.clone()));
                }
            }
        }
    }

    /// Says which environments are static (every other is not), moving those queued whose
    /// kind this changes to the other index.
    pub fn set_statics(&mut self, statics: BTreeSet<EnvName>) {
        let old = std::mem::take(&mut self.statics);
        for env in old.symmetric_difference(&statics) {
            let Some(slot) = self.slots.get(env) else {
                continue;
            };
            let key = (slot.due, env.clone());
            if self.index.remove(&key) {
                self.static_index.insert(key);
            } else if self.static_index.remove(&key) {
                self.index.insert(key);
            }
        }
        self.statics = statics;
    }

    /// Says that `env` is static too.
    pub fn add_static(&mut self, env: &EnvName) {
        if self.statics.insert(env.clone())
            && let Some(slot) = self.slots.get(env)
        {
            let key = (slot.due, env.clone());
            if self.index.remove(&key) {
                self.static_index.insert(key);
            }
        }
    }

    /// Says whose each of these environments is (`None`: nobody's, no limit holds it); the
    /// others stay as they were. Those running keep counting against whoever they were
    /// started for.
    pub fn set_people<'e>(
        &mut self,
        people: impl IntoIterator<Item = (&'e EnvName, Option<String>)>,
    ) {
        for (env, person) in people {
            match person {
                Some(person) => {
                    self.people.insert(env.clone(), person);
                }
                None => {
                    self.people.remove(env);
                }
            }
        }
    }

    /// Says whose `env` is, as [`Queue::set_people`] does for all.
    pub fn set_person(&mut self, env: &EnvName, person: String) {
        self.people.insert(env.clone(), person);
    }

    /// How many environments one person may have running at once (0: no limit).
    pub fn set_person_limit(&mut self, limit: usize) {
        self.person_limit = limit;
    }

    /// Whether `env` may start now as far as its person's limit goes.
    fn person_may_start(&self, env: &EnvName) -> bool {
        self.person_limit == 0
            || self.people.get(env).is_none_or(|person| {
                self.running_people
                    .values()
                    .filter(|p| *p == person)
                    .count()
                    < self.person_limit
            })
    }

    /// The first entry of the index (static or not) that may start, by due time: in the
    /// other index, one whose person is at their limit is passed over (the entries passed
    /// are those of the people at their limit, at most as many as those people queued: the
    /// families' `max_environments` and the home's cap bound them).
    fn first_startable(&self, statics: bool) -> Option<&(Instant, EnvName)> {
        if statics {
            return self.static_index.first();
        }
        self.index
            .iter()
            .find(|(_, env)| self.person_may_start(env))
    }

    /// Removes `env` from the queue (it was destroyed).
    pub fn forget(&mut self, env: &EnvName) {
        if let Some(slot) = self.slots.remove(env) {
            let key = (slot.due, env.clone());
            self.index.remove(&key);
            self.static_index.remove(&key);
        }
        self.failures.remove(env);
        self.people.remove(env);
    }

    /// The earliest due environment that is not running, if it is due by `now`; it is marked
    /// running until [`Queue::done`].
    pub fn pop_due(&mut self, now: Instant) -> Option<(EnvName, Trigger)> {
        let statics_first = match (self.first_startable(true), self.first_startable(false)) {
            (Some(a), Some(b)) => a <= b,
            (a, _) => a.is_some(),
        };
        self.pop_from(statics_first, now)
    }

    /// [`Queue::pop_due`] of static environments only.
    pub fn pop_due_static(&mut self, now: Instant) -> Option<(EnvName, Trigger)> {
        self.pop_from(true, now)
    }

    fn pop_from(&mut self, statics: bool, now: Instant) -> Option<(EnvName, Trigger)> {
        let first = self.first_startable(statics)?.clone();
        if first.0 > now {
            return None;
        }
        let index = if statics {
            &mut self.static_index
        } else {
            &mut self.index
        };
        index.remove(&first);
        let (_, env) = first;
        let slot = self
            .slots
            .remove(&env)
            .expect("every indexed environment has a slot");
        self.running.insert(env.clone());
        if !self.statics.contains(&env)
            && let Some(person) = self.people.get(&env)
        {
            self.running_people.insert(env.clone(), person.clone());
        }
        Some((env, slot.trigger))
    }

    /// When the next queued environment that is not running, and may start, is due (one
    /// whose person is at their limit waits for one of theirs to end, which wakes the
    /// scheduler).
    pub fn next_due(&self) -> Option<Instant> {
        let due = |statics| self.first_startable(statics).map(|(due, _)| *due);
        match (due(true), due(false)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// [`Queue::next_due`] of static environments only.
    pub fn next_due_static(&self) -> Option<Instant> {
        self.static_index.first().map(|(due, _)| *due)
    }

    /// Marks `env` finished. For [`Finished::Retry`], returns the backoff before the retry
    /// (exponential, from 1 s to `max`, with ±20% jitter so that many failing environments
    /// spread out); otherwise resets it.
    pub fn done(&mut self, env: &EnvName, finished: Finished, max: Duration) -> Option<Duration> {
        self.running.remove(env);
        self.running_people.remove(env);
        // A request made while it ran can start now.
        if let Some(slot) = self.slots.get(env) {
            let index = if self.statics.contains(env) {
                &mut self.static_index
            } else {
                &mut self.index
            };
            index.insert((slot.due, env.clone()));
        }
        if finished != Finished::Retry {
            self.failures.remove(env);
            return None;
        }
        let count = self.failures.entry(env.clone()).or_insert(0);
        *count = count.saturating_add(1);
        let base = Duration::from_secs(1)
            .saturating_mul(2u32.saturating_pow((*count - 1).min(16)))
            .min(max);
        let jitter = 0.8 + fastrand::f64() * 0.4;
        Some(base.mul_f64(jitter))
    }

    /// Queued environments (not counting running ones).
    pub fn depth(&self) -> usize {
        self.slots.len()
    }

    /// Environments being reconciled now.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Consecutive failures of `env`.
    pub fn failures(&self, env: &EnvName) -> u32 {
        self.failures.get(env).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> EnvName {
        EnvName::parse(name).expect("the test's environment names are DNS labels")
    }

    #[test]
    fn one_slot_per_environment_due_at_the_earliest_request() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.push(&env("a"), Trigger::Timer, t0 + Duration::from_secs(10));
        q.push(&env("a"), Trigger::Push, t0 + Duration::from_secs(1));
        q.push(&env("a"), Trigger::Drift, t0 + Duration::from_secs(5));
        assert_eq!(q.depth(), 1, "requests for one environment share a slot");
        assert_eq!(q.pop_due(t0), None, "nothing is due yet");
        assert_eq!(
            q.pop_due(t0 + Duration::from_secs(1)),
            Some((env("a"), Trigger::Push))
        );
    }

    #[test]
    fn the_periodic_timer_gives_way_to_any_other_trigger_in_a_slot() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.push(&env("a"), Trigger::Timer, t0);
        q.push(&env("a"), Trigger::Drift, t0 + Duration::from_secs(5));
        assert_eq!(
            q.pop_due(t0),
            Some((env("a"), Trigger::Drift)),
            "a drift tick landing on a queued timer is not lost: the slot observes, as early \
             as the timer was due"
        );
        q.push(&env("b"), Trigger::Manual, t0 + Duration::from_secs(5));
        q.push(&env("b"), Trigger::Timer, t0);
        assert_eq!(
            q.pop_due(t0),
            Some((env("b"), Trigger::Manual)),
            "an earlier timer keeps the person's request it moves forward"
        );
    }

    #[test]
    fn a_running_environment_is_not_started_twice() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.push(&env("a"), Trigger::Poll, t0);
        assert!(q.pop_due(t0).is_some());
        q.push(&env("a"), Trigger::Manual, t0);
        assert_eq!(
            q.pop_due(t0),
            None,
            "one operation at a time per environment"
        );
        q.done(&env("a"), Finished::Succeeded, Duration::from_secs(60));
        assert_eq!(
            q.pop_due(t0),
            Some((env("a"), Trigger::Manual)),
            "the request made meanwhile runs next"
        );
    }

    #[test]
    fn static_environments_are_started_apart_from_the_others() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.push(&env("br-a"), Trigger::Poll, t0);
        q.push(&env("prod"), Trigger::Push, t0 + Duration::from_secs(1));
        q.push(&env("qa"), Trigger::Push, t0 + Duration::from_secs(2));
        // Queued before it was known to be static: moved when it is.
        q.set_statics([env("prod"), env("qa")].into());
        let later = t0 + Duration::from_secs(5);
        assert_eq!(q.next_due_static(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(q.pop_due_static(later), Some((env("prod"), Trigger::Push)));
        assert_eq!(q.next_due(), Some(t0), "the earliest of either kind");
        assert_eq!(q.pop_due(later), Some((env("br-a"), Trigger::Poll)));
        q.push(&env("br-a"), Trigger::Timer, t0);
        q.done(&env("br-a"), Finished::Succeeded, Duration::from_secs(60));
        assert_eq!(
            q.pop_due_static(later),
            Some((env("qa"), Trigger::Push)),
            "a branch's environment is never started as a static one"
        );
        assert_eq!(q.pop_due_static(later), None);
        // No longer static (its name now a generated environment's): the other index.
        q.push(&env("qa"), Trigger::Timer, t0);
        q.done(&env("qa"), Finished::Succeeded, Duration::from_secs(60));
        q.set_statics([env("prod")].into());
        assert_eq!(q.pop_due_static(later), None);
        assert!(q.pop_due(later).is_some());
        assert!(q.pop_due(later).is_some());
        assert_eq!(q.pop_due(later), None, "both taken: br-a and qa");
        // Recorded static after it was queued: moved to the static index.
        q.push(&env("preprod"), Trigger::Poll, t0);
        q.add_static(&env("preprod"));
        assert_eq!(
            q.pop_due_static(later),
            Some((env("preprod"), Trigger::Poll))
        );
    }

    #[test]
    fn one_persons_environments_take_at_most_their_limit_of_workers() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(5);
        let mut q = Queue::default();
        q.set_person_limit(2);
        // Mallory's four branches are due first, then Alice's, then one nobody is known for.
        for (i, name) in ["br-m1", "br-m2", "br-m3", "br-m4", "br-alice", "br-x"]
            .into_iter()
            .enumerate()
        {
            q.push(
                &env(name),
                Trigger::Poll,
                t0 + Duration::from_millis(i as u64),
            );
        }
        let mallorys = ["br-m1", "br-m2", "br-m3", "br-m4"].map(env);
        q.set_people(mallorys.iter().map(|e| (e, Some("mallory".to_string()))));
        q.set_person(&env("br-alice"), "alice".into());
        let mut popped = || q.pop_due(later).map(|(env, _)| env.to_string());
        assert_eq!(popped().as_deref(), Some("br-m1"));
        assert_eq!(popped().as_deref(), Some("br-m2"));
        assert_eq!(
            popped().as_deref(),
            Some("br-alice"),
            "mallory is at her limit: the next person's goes first"
        );
        assert_eq!(popped().as_deref(), Some("br-x"), "nobody's: no limit");
        assert_eq!(popped(), None, "only mallory's are left");
        assert_eq!(
            q.next_due(),
            None,
            "nothing may start until one of hers ends"
        );
        // Whose it is changes while it runs: it counts for whom it was started.
        q.set_person(&env("br-m1"), "alice".into());
        q.done(&env("br-m1"), Finished::Succeeded, Duration::from_secs(60));
        assert_eq!(q.next_due(), Some(t0 + Duration::from_millis(2)));
        assert_eq!(
            q.pop_due(later).map(|(env, _)| env),
            Some(env("br-m3")),
            "one of hers ended: her next starts"
        );
        assert_eq!(q.pop_due(later), None);
        // Static environments are nobody's.
        q.push(&env("prod"), Trigger::Push, t0);
        q.set_person(&env("prod"), "mallory".into());
        q.add_static(&env("prod"));
        assert_eq!(q.pop_due(later).map(|(env, _)| env), Some(env("prod")));
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_cap() {
        let mut q = Queue::default();
        let max = Duration::from_secs(30);
        let delays: Vec<Duration> = (0..8)
            .map(|_| {
                q.running.insert(env("a"));
                q.done(&env("a"), Finished::Retry, max).expect("a backoff")
            })
            .collect();
        assert!(
            delays[0] >= Duration::from_millis(800) && delays[0] <= Duration::from_millis(1200)
        );
        assert!(
            delays[3] >= Duration::from_millis(6400) && delays[3] <= Duration::from_millis(9600)
        );
        assert!(
            delays.iter().all(|d| *d <= max.mul_f64(1.2)),
            "capped: {delays:?}"
        );
        q.running.insert(env("a"));
        assert_eq!(q.done(&env("a"), Finished::Succeeded, max), None);
        assert_eq!(q.failures(&env("a")), 0, "a success resets the backoff");
        q.running.insert(env("a"));
        q.done(&env("a"), Finished::Retry, max);
        q.running.insert(env("a"));
        assert_eq!(
            q.done(&env("a"), Finished::Wait, max),
            None,
            "a terminal failure schedules no retry"
        );
        assert_eq!(
            q.failures(&env("a")),
            0,
            "and what comes next starts from 1 s"
        );
    }
}
