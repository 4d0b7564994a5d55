//! The one scheduler of apply and destroy: runs the nodes of a dependency graph, each after
//! every node it waits for has settled, independent ones in parallel up to a limit. A node
//! that waits for a failed or skipped one is skipped (and so, in turn, is whatever waits for
//! it); independent branches carry on.
//!
//! Apply hands it the resources being created, updated or replaced, each waiting for its
//! dependencies; destroy hands it the resources being deleted, each waiting for its
//! dependents. Kahn's algorithm, run as the work finishes: each node counts the nodes it
//! still waits for, and is ready when the count reaches zero. Linear in the graph's size.
//!
//! The work runs on at most `limit` worker threads, made as they are first needed and kept
//! for the whole graph; with one node, or one at a time, on the calling thread, as a worker
//! would only add its start and its end (a third of a millisecond here) to the graph's time.
//! A step that panics (a bug) fails its node, as an error would: the graph still settles,
//! and the environment's lock is not held forever.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Mutex, mpsc};

use super::{ApplyEvent, Outcome, Progress, StepError};

/// A dependency graph over names borrowed for `'a`, and how many nodes may run at once.
pub(crate) struct Dag<'a> {
    /// Each node, with the nodes (of this graph, each once) it waits for.
    waits_for: BTreeMap<&'a str, Vec<&'a str>>,
    limit: usize,
}

impl<'a> Dag<'a> {
    /// A graph of `nodes`, each with what it waits for; names that are not nodes of the graph
    /// are ignored (they are settled already). At most `limit` nodes run at once (at least
    /// one).
    pub(crate) fn new<W>(nodes: impl IntoIterator<Item = (&'a str, W)>, limit: usize) -> Self
    where
        W: IntoIterator<Item = &'a str>,
    {
        let nodes: Vec<(&'a str, W)> = nodes.into_iter().collect();
        let names: BTreeSet<&'a str> = nodes.iter().map(|(n, _)| *n).collect();
        let mut waits_for: BTreeMap<&'a str, Vec<&'a str>> = BTreeMap::new();
        for (name, waits) in nodes {
            let entry = waits_for.entry(name).or_default();
            for w in waits {
                if names.contains(w) && !entry.contains(&w) {
                    entry.push(w);
                }
            }
        }
        Dag {
            waits_for,
            limit: limit.max(1),
        }
    }

    /// Runs the graph. For each ready node whose waits all succeeded, `start` (on this thread,
    /// with `state`) says what to do: `None` settles it as succeeded at once (nothing to do),
    /// `Some(task)` runs `work` on a worker thread; when that succeeds, `finish` (on this
    /// thread, with `state`) takes its result. A node is skipped, with a
    /// [`ApplyEvent::Skipped`] to `progress`, when something it waits for failed or was
    /// skipped.
    ///
    /// Returns the outcome of every node that settled: nodes on a cycle never become ready
    /// and are absent.
    pub(crate) fn run<S, T: Send, R: Send>(
        &self,
        progress: &dyn Progress,
        state: &mut S,
        mut start: impl FnMut(&mut S, &'a str) -> Option<T>,
        work: impl Fn(&'a str, T) -> Result<R, StepError> + Sync,
        mut finish: impl FnMut(&mut S, &'a str, R),
    ) -> BTreeMap<&'a str, Outcome> {
        let mut waiting_on: BTreeMap<&'a str, usize> = BTreeMap::new();
        let mut unblocks: BTreeMap<&'a str, Vec<&'a str>> = BTreeMap::new();
        for (name, waits) in &self.waits_for {
            waiting_on.insert(name, waits.len());
            for w in waits {
                unblocks.entry(w).or_default().push(name);
            }
        }
        let mut ready: VecDeque<&'a str> = waiting_on
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(k, _)| *k)
            .collect();
        let mut outcomes: BTreeMap<&'a str, Outcome> = BTreeMap::new();
        let mut settle = |name: &'a str,
                          outcome: Outcome,
                          outcomes: &mut BTreeMap<&'a str, Outcome>,
                          ready: &mut VecDeque<&'a str>| {
            outcomes.insert(name, outcome);
            for next in unblocks.get(name).map(Vec::as_slice).unwrap_or(&[]) {
                let count = waiting_on.get_mut(next).expect("every node is counted");
                *count -= 1;
                if *count == 0 {
                    ready.push_back(next);
                }
            }
        };
        // Worker threads report within the span of the caller (an apply or a destroy).
        let span = tracing::Span::current();
        let work = &work;
        // Nothing runs beside the node: the calling thread runs it.
        let inline = self.limit == 1 || self.waits_for.len() == 1;
        let mut running = 0usize;
        // The workers: one more each time more tasks run at once than there are workers, up
        // to the limit, each taking task after task until the graph is done. A thread per task
        // would pay a thread's start, and its allocator's first touches of fresh memory, a
        // hundred times for a hundred resources.
        let (task_tx, task_rx) = mpsc::channel::<(&'a str, T)>();
        let task_rx = Mutex::new(task_rx);
        let mut workers = 0usize;
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::channel::<(&'a str, Result<R, StepError>)>();
            loop {
                while running < self.limit {
                    let Some(name) = ready.pop_front() else { break };
                    let blocker = self.waits_for[name].iter().find(|w| {
                        matches!(
                            outcomes.get(*w),
                            Some(Outcome::Failed { .. } | Outcome::Skipped { .. })
                        )
                    });
                    if let Some(because) = blocker {
                        progress.event(&ApplyEvent::Skipped {
                            resource: name,
                            because,
                        });
                        let skipped = Outcome::Skipped {
                            because: because.to_string(),
                        };
                        settle(name, skipped, &mut outcomes, &mut ready);
                        continue;
                    }
                    let Some(task) = start(state, name) else {
                        settle(name, Outcome::Succeeded, &mut outcomes, &mut ready);
                        continue;
                    };
                    running += 1;
                    if inline {
                        let _entered = span.enter();
                        let done = std::panic::catch_unwind(AssertUnwindSafe(|| work(name, task)))
                            .unwrap_or_else(|_| Err(StepError::panicked()));
                        tx.send((name, done)).expect("this loop holds the receiver");
                        continue;
                    }
                    if running > workers {
                        workers += 1;
                        let (tx, span, task_rx) = (tx.clone(), span.clone(), &task_rx);
                        scope.spawn(move || {
                            let _entered = span.enter();
                            loop {
                                // The lock is held only while waiting for the next task (a
                                // guard in a `while let`'s condition would be held through
                                // the work too, and the workers would take turns).
                                let next = task_rx
                                    .lock()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                                    .recv();
                                let Ok((name, task)) = next else { break };
                                // A panic (a bug) fails its node rather than leave the graph
                                // waiting for it forever, the environment's lock held. Its
                                // message, which may hold anything, went to standard error.
                                let done =
                                    std::panic::catch_unwind(AssertUnwindSafe(|| work(name, task)))
                                        .unwrap_or_else(|_| Err(StepError::panicked()));
                                if tx.send((name, done)).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    task_tx
                        .send((name, task))
                        .expect("the workers wait for tasks until this loop is done");
                }
                if running == 0 {
                    break;
                }
                let Ok((name, result)) = rx.recv() else { break };
                running -= 1;
                let outcome = match result {
                    Ok(done) => {
                        finish(state, name, done);
                        Outcome::Succeeded
                    }
                    Err(error) => error.into(),
                };
                settle(name, outcome, &mut outcomes, &mut ready);
            }
            // No more tasks: each worker's `recv` fails and it ends; the scope joins them.
            drop(task_tx);
        });
        outcomes
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    /// Records every event, in order.
    #[derive(Default)]
    struct Events(Mutex<Vec<String>>);

    impl Progress for Events {
        fn event(&self, event: &ApplyEvent<'_>) {
            if let ApplyEvent::Skipped { resource, because } = event {
                let mut events = self.0.lock().expect("not poisoned");
                events.push(format!("skip {resource} ({because})"));
            }
        }
    }

    fn dag<'a>(edges: &[(&'a str, &[&'a str])], limit: usize) -> Dag<'a> {
        Dag::new(edges.iter().map(|(n, w)| (*n, w.iter().copied())), limit)
    }

    /// Runs `dag`, failing the nodes in `failing`; returns the outcomes and the order in which
    /// the nodes' work finished.
    fn run<'a>(
        dag: &Dag<'a>,
        failing: &[&str],
        progress: &dyn Progress,
    ) -> (BTreeMap<&'a str, Outcome>, Vec<&'a str>) {
        let mut finished = Vec::new();
        let outcomes = dag.run(
            progress,
            &mut finished,
            |_, name| Some(name),
            |name, task| {
                assert_eq!(name, task, "a node's task is what start gave it");
                if failing.contains(&name) {
                    Err(StepError::terminal(format!("{name} broke")))
                } else {
                    Ok(name)
                }
            },
            |finished, _, name| finished.push(name),
        );
        (outcomes, finished)
    }

    #[test]
    fn a_node_runs_after_everything_it_waits_for() {
        let dag = dag(
            &[
                ("app", &["db", "config"]),
                ("db", &[]),
                ("config", &["db"]),
                ("web", &["app"]),
            ],
            4,
        );
        let (outcomes, order) = run(&dag, &[], &());
        assert_eq!(order, ["db", "config", "app", "web"]);
        assert!(outcomes.values().all(|o| *o == Outcome::Succeeded));
    }

    #[test]
    fn no_more_than_the_limit_run_at_once() {
        let nodes: Vec<String> = (0..12).map(|i| format!("n{i}")).collect();
        let edges: Vec<(&str, [&str; 0])> = nodes.iter().map(|n| (n.as_str(), [])).collect();
        for limit in [1, 3] {
            let dag = Dag::new(edges.clone(), limit);
            let now = AtomicUsize::new(0);
            let most = AtomicUsize::new(0);
            let threads = Mutex::new(Vec::new());
            let outcomes = dag.run(
                &(),
                &mut (),
                |_, _| Some(()),
                |_, ()| {
                    let me = std::thread::current().id();
                    let mut seen = threads.lock().expect("not poisoned");
                    if !seen.contains(&me) {
                        seen.push(me);
                    }
                    drop(seen);
                    let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(running, Ordering::SeqCst);
                    // Hold on until the limit was reached once (however slowly threads are
                    // scheduled), so that a scheduler starting too many would be seen.
                    let until = Instant::now() + Duration::from_secs(10);
                    while most.load(Ordering::SeqCst) < limit && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    now.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                },
                |_, _, ()| {},
            );
            assert_eq!(outcomes.len(), 12);
            assert_eq!(most.load(Ordering::SeqCst), limit, "limit {limit}");
            assert_eq!(
                threads.lock().expect("not poisoned").len(),
                limit,
                "twelve tasks, limit {limit}: as many threads as may run at once, not one each"
            );
        }
        // A limit of zero still makes progress.
        let dag = Dag::new(edges, 0);
        let (outcomes, _) = run(&dag, &[], &());
        assert_eq!(outcomes.len(), 12);
    }

    #[test]
    fn a_failure_skips_what_waits_for_it_transitively_and_independent_branches_continue() {
        let dag = dag(
            &[
                ("db", &[]),
                ("migrate", &["db"]),
                ("app", &["migrate"]),
                ("web", &["app"]),
                ("cache", &[]),
                ("worker", &["cache"]),
            ],
            2,
        );
        let events = Events::default();
        let (outcomes, finished) = run(&dag, &["migrate"], &events);
        assert_eq!(
            outcomes["migrate"],
            Outcome::Failed {
                error: "migrate broke".into(),
                retryable: false,
            }
        );
        assert_eq!(
            outcomes["app"],
            Outcome::Skipped {
                because: "migrate".into()
            }
        );
        assert_eq!(
            outcomes["web"],
            Outcome::Skipped {
                because: "app".into()
            }
        );
        for ok in ["db", "cache", "worker"] {
            assert_eq!(outcomes[ok], Outcome::Succeeded, "{ok}");
        }
        assert!(!finished.contains(&"app") && !finished.contains(&"web"));
        assert_eq!(
            *events.0.lock().expect("not poisoned"),
            ["skip app (migrate)", "skip web (app)"]
        );
    }

    #[test]
    fn a_node_whose_work_panics_fails_and_the_graph_still_settles() {
        // On workers (2), and on the calling thread (1).
        for limit in [2, 1] {
            a_panic_fails_its_node_with_limit(limit);
        }
    }

    fn a_panic_fails_its_node_with_limit(limit: usize) {
        let dag = dag(&[("bad", &[]), ("after", &["bad"]), ("other", &[])], limit);
        let outcomes = dag.run(
            &(),
            &mut (),
            |_, name| Some(name),
            |name, _| {
                if name == "bad" {
                    panic!("a provider's bug");
                }
                Ok(())
            },
            |_, _, ()| {},
        );
        assert!(
            matches!(&outcomes["bad"], Outcome::Failed { error, retryable: false }
                if error.contains("panicked")),
            "{outcomes:?}"
        );
        assert!(
            matches!(&outcomes["after"], Outcome::Skipped { because } if because == "bad"),
            "{outcomes:?}"
        );
        assert_eq!(outcomes["other"], Outcome::Succeeded);
    }

    #[test]
    fn a_node_with_nothing_to_do_settles_at_once_and_unblocks_the_rest() {
        let dag = dag(&[("a", &[]), ("b", &["a"])], 1);
        let mut ran = Vec::new();
        let outcomes = dag.run(
            &(),
            &mut ran,
            |_, name| (name != "a").then_some(name),
            |_, name| Ok(name),
            |ran, _, name| ran.push(name),
        );
        assert_eq!(ran, ["b"]);
        assert_eq!(outcomes["a"], Outcome::Succeeded);
        assert_eq!(outcomes["b"], Outcome::Succeeded);
    }

    #[test]
    fn unknown_waits_are_ignored_and_a_cycle_is_left_unsettled() {
        let dag = dag(
            &[
                ("a", &["gone"]),
                ("b", &["c"]),
                ("c", &["b"]),
                ("d", &["a", "a"]),
            ],
            2,
        );
        let (outcomes, _) = run(&dag, &[], &());
        assert_eq!(outcomes.keys().copied().collect::<Vec<_>>(), ["a", "d"]);
    }
}
