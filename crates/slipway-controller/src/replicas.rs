//! Several controllers on one PostgreSQL state: which replica works on which environment.
//!
//! Each replica beats a heartbeat every third of its lease, and works on an environment only
//! while it holds that environment's lease (the store's, timed by the database's clock, with a
//! fencing epoch every write of the environment proves). Who should hold what is decided
//! without a coordinator:
//! - an environment with node-bound resources (`process`, `file`) stays with the replica that
//!   last held it (its processes and files are on that node), alive or not;
//! - any other environment floats: it belongs to the live replica that rendezvous hashing
//!   ranks first for it, so that a replica joining or leaving moves only its share.
//!
//! A replica renews the leases it should hold, releases those it should not once idle, and
//! queues the environments it should hold but does not (after a replica died, its leases
//! expire and the others take them within about two leases). A replica that stalls past its
//! lease loses it: its writes are refused (the store's fence), its commands are killed by the
//! engine's watchdog, and on waking it lets go. Each beat also removes this node's copies of
//! environments another replica destroyed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use std::time::Instant;

use slipway_core::EnvName;
use slipway_engine::Engine;
use slipway_state::{Fence, Store};

use crate::Metrics;

/// `[controller] replica` and `lease`: this replica's name and how long its leases last.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    /// Its name, unique among the replicas (default: host name and pid).
    pub name: String,
    /// How long a lease lasts unless renewed; failover takes about two.
    pub lease: Duration,
    /// Where other replicas reach this node's processes (`[local] advertise`).
    pub advertise: Option<String>,
}

/// What this replica knows of the others and holds itself.
#[derive(Debug, Default)]
pub(crate) struct Membership {
    /// The replicas heard from within two leases, this one included, by name.
    live: Mutex<Vec<String>>,
    /// The leases held, with their epochs.
    held: Mutex<BTreeMap<EnvName, i64>>,
    /// The environments being worked on now (never released mid-reconcile), with how many
    /// workers each: a person's request handled while a reconcile runs takes and is done
    /// with the same environment, and must not mark it idle under the reconcile.
    working: Mutex<BTreeMap<EnvName, usize>>,
    /// The environments whose lease this replica lost while a worker was on them: not taken
    /// again until those workers end. The store checks a write against the one fence this
    /// replica holds for an environment; a new holding's would let the writes of a reconcile
    /// begun under the lost one through, over what the replica that held it between did.
    draining: Mutex<BTreeSet<EnvName>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// SHA-256 of the pair: stable across processes, versions and machines, so every replica
/// ranks alike, and with no structure a set of similar names could line up on.
fn score(environment: &str, replica: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(environment.as_bytes())
        .chain_update([0])
        .chain_update(replica.as_bytes())
        .finalize();
    u64::from_be_bytes(
        digest[..8]
            .try_into()
            .expect("a SHA-256 digest has 32 bytes"),
    )
}

/// The replica among `live` that rendezvous hashing ranks first for `environment`.
pub(crate) fn rendezvous<'a>(environment: &str, live: &'a [String]) -> Option<&'a str> {
    live.iter()
        .max_by_key(|r| (score(environment, r), r.as_str()))
        .map(String::as_str)
}

/// The environments (`only`, or all) that run something bound to the node that started it (a
/// process, a file), by their resources' types.
fn node_bound(
    store: &Store,
    only: Option<&EnvName>,
) -> Result<BTreeSet<EnvName>, slipway_state::StateError> {
    Ok(store
        .resource_types(only)?
        .into_iter()
        .filter(|(_, types)| {
            types
                .iter()
                .any(|t| slipway_core::types::capabilities(t).node_bound)
        })
        .map(|(environment, _)| environment)
        .collect())
}

impl Membership {
    /// Whether `me` should work on `environment` now.
    pub(crate) fn should_hold(
        &self,
        store: &Store,
        me: &str,
        environment: &EnvName,
        node_bound: &BTreeSet<EnvName>,
    ) -> bool {
        if node_bound.contains(environment)
            && let Ok(Some(lease)) = store.lease(environment)
        {
            return lease.holder == me;
        }
        let live = lock(&self.live);
        rendezvous(environment.as_str(), &live).is_none_or(|owner| owner == me)
    }

    /// The epoch of this replica's lease of `environment`, while it holds one.
    pub(crate) fn epoch(&self, environment: &EnvName) -> Option<i64> {
        lock(&self.held).get(environment).copied()
    }

    /// Before a reconcile of `environment`: takes or renews its lease if this replica should
    /// hold it. `false`: another replica works on it.
    pub(crate) fn take(
        &self,
        engine: &Engine,
        options: &ReplicaOptions,
        metrics: &Metrics,
        environment: &EnvName,
    ) -> Result<bool, slipway_state::StateError> {
        // Marked busy first: a beat running meanwhile (which may rank the environment to
        // another replica as the live set changes) must not let go of a lease this is about
        // to work under.
        *lock(&self.working).entry(environment.clone()).or_default() += 1;
        let taken = self.take_marked(engine, options, metrics, environment);
        if !matches!(taken, Ok(true)) {
            self.leave(engine, environment);
        }
        taken
    }

    /// A worker that did not take `environment` after all leaves it: it may have been the
    /// last one a lost holding waited for (counted when the beat found it lost).
    fn leave(&self, engine: &Engine, environment: &EnvName) {
        self.stop_working(environment);
        self.drained(engine, environment);
    }

    /// One worker fewer on `environment`.
    fn stop_working(&self, environment: &EnvName) {
        let mut working = lock(&self.working);
        if let Some(count) = working.get_mut(environment) {
            *count -= 1;
            if *count == 0 {
                working.remove(environment);
            }
        }
    }

    /// Whether a worker is still on `environment` under a lease this replica lost.
    pub(crate) fn is_draining(&self, environment: &EnvName) -> bool {
        lock(&self.draining).contains(environment)
    }

    /// Whether a worker is on `environment`.
    fn is_working(&self, environment: &EnvName) -> bool {
        lock(&self.working).contains_key(environment)
    }

    fn take_marked(
        &self,
        engine: &Engine,
        options: &ReplicaOptions,
        metrics: &Metrics,
        environment: &EnvName,
    ) -> Result<bool, slipway_state::StateError> {
        let store = engine.store();
        if !self.should_hold(
            store,
            &options.name,
            environment,
            &node_bound(store, Some(environment))?,
        ) {
            return Ok(false);
        }
        // Held from the lease's read to its fence, so that two workers taking the same
        // environment at once agree on which holding is lost.
        let mut held = lock(&self.held);
        if lock(&self.draining).contains(environment) {
            return Ok(false);
        }
        let asked = Instant::now();
        let Some(lease) = store.acquire_lease(environment, &options.name, options.lease)? else {
            return Ok(false);
        };
        let previous = held.get(environment).copied();
        if previous.is_some_and(|epoch| epoch != lease.epoch) {
            // A holding this replica thought it still had ended without it (it stalled or
            // was cut off, and another replica took over): lost.
            metrics.lease_lost();
            tracing::info!(environment = %environment, epoch = previous, "lost the lease");
            if lock(&self.working)
                .get(environment)
                .is_some_and(|&workers| workers > 1)
            {
                // Another worker is still on it under the lost holding: the new one waits
                // until it ends (its writes are refused meanwhile).
                store.release_lease(environment, &options.name, lease.epoch)?;
                held.remove(environment);
                metrics.leases(held.len());
                lock(&self.draining).insert(environment.clone());
                return Ok(false);
            }
        }
        if let Some(watchdog) = engine.watchdog() {
            watchdog.renewed(environment.as_str(), asked, options.lease);
        }
        store.hold(
            environment,
            Fence {
                replica: options.name.clone(),
                epoch: lease.epoch,
            },
        );
        if held.insert(environment.clone(), lease.epoch) != Some(lease.epoch) {
            metrics.lease_acquired();
            tracing::info!(environment = %environment, epoch = lease.epoch, "took the lease");
        }
        metrics.leases(held.len());
        Ok(true)
    }

    /// After a reconcile of `environment`: checks the lease is still this replica's (a
    /// reconcile that stalled past it has lost it), and lets go of it if not.
    pub(crate) fn done(
        &self,
        engine: &Engine,
        options: &ReplicaOptions,
        metrics: &Metrics,
        environment: &EnvName,
    ) {
        self.stop_working(environment);
        let held = lock(&self.held);
        let Some(epoch) = held.get(environment).copied() else {
            drop(held);
            // Lost while it was being worked on (counted then): the fence kept for the
            // reconcile goes now, once no other worker is on it, and the environment may be
            // taken anew.
            self.drained(engine, environment);
            return;
        };
        // Renewed with `held` locked: a worker taking the environment anew meanwhile (this
        // holding expired) would otherwise have its new lease let go by this renewal.
        let renewed = self.renew(engine, options, environment, epoch);
        drop(held);
        if !renewed {
            metrics.lease_lost();
            self.forget(engine, metrics, environment, epoch);
        }
    }

    /// Renews this replica's lease of `environment` at `epoch`; `false` when it is lost (or
    /// cannot be read).
    fn renew(
        &self,
        engine: &Engine,
        options: &ReplicaOptions,
        environment: &EnvName,
        epoch: i64,
    ) -> bool {
        let asked = Instant::now();
        let store = engine.store();
        let lease = store
            .acquire_lease(environment, &options.name, options.lease)
            .ok()
            .flatten();
        let renewed = lease.as_ref().is_some_and(|lease| lease.epoch == epoch);
        if let Some(lease) = lease.filter(|_| !renewed) {
            // Expired, and so taken anew: a holding nobody here works under, which would keep
            // the other replicas out until it expires.
            let _ = store.release_lease(environment, &options.name, lease.epoch);
        }
        if renewed && let Some(watchdog) = engine.watchdog() {
            watchdog.renewed(environment.as_str(), asked, options.lease);
        }
        renewed
    }

    /// Lets go of `environment`'s holding at `epoch`: its commands are killed now. A
    /// reconcile of it still running keeps proving the lost lease, so that its writes are
    /// refused (without a lease to prove, a write is let through when no other replica holds
    /// one); the fence goes once it ends ([`Membership::done`]). A holding taken anew since
    /// (another epoch) is not this one: it stays.
    fn forget(&self, engine: &Engine, metrics: &Metrics, environment: &EnvName, epoch: i64) {
        let mut held = lock(&self.held);
        if held.get(environment) != Some(&epoch) {
            return;
        }
        held.remove(environment);
        metrics.leases(held.len());
        if self.is_working(environment) {
            lock(&self.draining).insert(environment.clone());
        }
        drop(held);
        if let Some(watchdog) = engine.watchdog() {
            watchdog.released(environment.as_str());
        }
        self.drained(engine, environment);
    }

    /// Once no worker is on `environment`, which this replica no longer holds: its fence
    /// goes (its writes are refused again) and it may be taken anew.
    fn drained(&self, engine: &Engine, environment: &EnvName) {
        let held = lock(&self.held);
        if !held.contains_key(environment) && !self.is_working(environment) {
            engine.store().unhold(environment);
            lock(&self.draining).remove(environment);
        }
    }

    /// One beat: the heartbeat, who is alive, every lease renewed (or let go when another
    /// replica should hold it and it is idle, or when it was lost), and the environments this
    /// replica should hold but does not, returned to be queued.
    pub(crate) fn beat(
        &self,
        engine: &Engine,
        options: &ReplicaOptions,
        metrics: &Metrics,
    ) -> Result<Vec<EnvName>, slipway_state::StateError> {
        let store = engine.store();
        store.heartbeat(&options.name, options.advertise.as_deref())?;
        let silent_limit = i64::try_from(options.lease.as_millis() * 2).unwrap_or(i64::MAX);
        let mut live: Vec<String> = store
            .replicas()?
            .into_iter()
            .filter(|r| r.silent_ms <= silent_limit || r.name == options.name)
            .map(|r| r.name)
            .collect();
        live.sort();
        *lock(&self.live) = live;
        let bound = node_bound(store, None)?;
        let recorded: BTreeSet<EnvName> =
            store.environments()?.into_iter().map(|e| e.name).collect();
        let held: Vec<(EnvName, i64)> = lock(&self.held)
            .iter()
            .map(|(e, epoch)| (e.clone(), *epoch))
            .collect();
        for (environment, epoch) in held {
            // `held` is locked from the check to the decision: a worker taking the
            // environment meanwhile (which takes it for its lease) sees this beat's outcome,
            // never a lease this beat lets go under it.
            let guard = lock(&self.held);
            if guard.get(&environment) != Some(&epoch) {
                // Taken anew, or let go, since the list was read: not this holding.
                continue;
            }
            let busy = self.is_working(&environment);
            // Destroyed (by another replica, or while this one was down and took it back on
            // start): nothing to work on; held on, its local copy would never be swept.
            let destroyed = !recorded.contains(&environment);
            if !busy && (destroyed || !self.should_hold(store, &options.name, &environment, &bound))
            {
                store.release_lease(&environment, &options.name, epoch)?;
                drop(guard);
                metrics.lease_handed_over();
                self.forget(engine, metrics, &environment, epoch);
                continue;
            }
            let asked = Instant::now();
            let renewed = store.acquire_lease(&environment, &options.name, options.lease)?;
            if renewed.as_ref().is_some_and(|lease| lease.epoch == epoch) {
                if let Some(watchdog) = engine.watchdog() {
                    watchdog.renewed(environment.as_str(), asked, options.lease);
                }
                continue;
            }
            // Lost while this replica was not looking (it stalled): another holds it, or a
            // new holding began (this renewal's, the old one expired) that nobody here works
            // under.
            if let Some(lease) = renewed {
                store.release_lease(&environment, &options.name, lease.epoch)?;
            }
            drop(guard);
            metrics.lease_lost();
            tracing::info!(environment = %environment, epoch, "lost the lease");
            self.forget(engine, metrics, &environment, epoch);
        }
        let swept =
            engine.sweep_departed(|e| lock(&self.held).contains_key(e) || self.is_working(e));
        match swept {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(
                    ?removed,
                    "removed the local copies of destroyed environments"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweeping destroyed environments' directories"),
        }
        let held = lock(&self.held).clone();
        Ok(recorded
            .into_iter()
            .filter(|e| !held.contains_key(e) && self.should_hold(store, &options.name, e, &bound))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine at `home` that records the static environment `env`, and replica r1 (its
    /// options, metrics and membership) after a first beat, alone.
    fn r1_alone_with(
        home: &std::path::Path,
        env: &EnvName,
    ) -> (Engine, ReplicaOptions, Metrics, Membership) {
        let engine =
            Engine::open(home, slipway_engine::EngineConfig::default(), vec![]).expect("engine");
        engine
            .store()
            .upsert_environment(&slipway_state::EnvironmentRecord::new(
                env.clone(),
                slipway_core::vocab::EnvKind::Static,
                "shop".into(),
                "file:///repo".into(),
                0,
            ))
            .expect("record");
        let options = ReplicaOptions {
            name: "r1".into(),
            lease: Duration::from_secs(30),
            advertise: None,
        };
        let metrics = Metrics::default();
        let membership = Membership::default();
        membership.beat(&engine, &options, &metrics).expect("beat");
        (engine, options, metrics, membership)
    }

    /// r1's holding of `env` (epoch 1) ends behind its back: r2 takes the environment, then
    /// lets it go. r2's lease.
    fn taken_over(store: &Store, env: &EnvName) -> slipway_state::Lease {
        assert!(store.release_lease(env, "r1", 1).expect("expire"));
        let r2 = store
            .acquire_lease(env, "r2", Duration::from_secs(30))
            .expect("read")
            .expect("r2 takes it");
        assert!(store.release_lease(env, "r2", r2.epoch).expect("let go"));
        r2
    }

    /// Another replica destroyed an environment this one held a lease of (taken back as it
    /// restarted, or held since): the next beat lets the lease go, and the environment's
    /// directory on this node, no longer anyone's, is removed. Held on, it never was.
    #[test]
    fn a_lease_of_an_environment_destroyed_elsewhere_is_let_go_and_its_copy_swept() {
        let home = tempfile::tempdir().expect("tempdir");
        let gone = EnvName::parse("gone").expect("a name");
        let (engine, options, metrics, membership) = r1_alone_with(home.path(), &gone);
        let store = engine.store();
        assert!(
            membership
                .take(&engine, &options, &metrics, &gone)
                .expect("take"),
            "r1, alone, holds it"
        );
        membership.done(&engine, &options, &metrics, &gone);
        let copy = home.path().join("envs/gone/data");
        std::fs::create_dir_all(&copy).expect("its copy on this node");

        // Destroyed by another replica: its record goes, this node's copy stays behind.
        store.delete_environment(&gone).expect("delete");
        let queued = membership.beat(&engine, &options, &metrics).expect("beat");
        assert!(queued.is_empty(), "{queued:?}");
        let lease = store.lease(&gone).expect("read").expect("a lease row");
        assert_eq!(lease.expires_at, 0, "let go: {lease:?}");
        assert!(!lock(&membership.held).contains_key(&gone));
        assert!(
            !home.path().join("envs/gone").exists(),
            "the copy of a destroyed environment is swept"
        );
    }

    /// A person's request about an environment handled while its reconcile runs (a sync, an
    /// extension, a pull request's command) was done with it, and marked it idle under the
    /// reconcile: a replica joining then had the lease released mid-reconcile, whose writes
    /// went on unfenced beside the new holder's.
    #[test]
    fn a_request_done_during_a_reconcile_does_not_release_its_lease() {
        let home = tempfile::tempdir().expect("tempdir");
        // A name the two replicas rank to r2 once it joins.
        let pair = ["r1".to_string(), "r2".to_string()];
        let name = (0..)
            .map(|i| format!("env-{i}"))
            .find(|name| rendezvous(name, &pair) == Some("r2"))
            .expect("some name ranks to r2");
        let env = EnvName::parse(&name).expect("a name");
        let (engine, options, metrics, membership) = r1_alone_with(home.path(), &env);
        let store = engine.store();
        assert!(
            membership
                .take(&engine, &options, &metrics, &env)
                .expect("the reconcile")
        );
        // The request, start to end, while the reconcile runs.
        assert!(
            membership
                .take(&engine, &options, &metrics, &env)
                .expect("the request")
        );
        membership.done(&engine, &options, &metrics, &env);
        // r2 joins: the environment is now its to take, once r1 is done with it.
        store.heartbeat("r2", None).expect("r2's beat");
        membership.beat(&engine, &options, &metrics).expect("beat");
        let lease = store.lease(&env).expect("read").expect("a lease row");
        assert!(lease.expires_at > 0 && lease.holder == "r1", "{lease:?}");
        assert!(
            membership.epoch(&env).is_some(),
            "held while the reconcile runs"
        );
        // The reconcile ends: let go at the next beat.
        membership.done(&engine, &options, &metrics, &env);
        membership.beat(&engine, &options, &metrics).expect("beat");
        assert!(membership.epoch(&env).is_none(), "handed over");
    }

    /// A reconcile ran under a lease this replica then lost (it stalled; another replica held
    /// the environment and let go), and a person's request took the environment anew while
    /// it still ran. The store checks one fence per environment: the new holding's let the
    /// old reconcile's writes through, over what the other replica had done.
    #[test]
    fn a_reconcile_under_a_lost_lease_stays_fenced_when_the_environment_is_asked_for_again() {
        let home = tempfile::tempdir().expect("tempdir");
        let env = EnvName::parse("shop").expect("a name");
        let (mut engine, options, metrics, membership) = r1_alone_with(home.path(), &env);
        engine.require_leases();
        let write = |engine: &Engine| {
            engine.store().record_event(
                Some(&env),
                slipway_core::vocab::EventKind::ApplyStarted,
                "a write",
                &serde_json::Value::Null,
                0,
            )
        };
        assert!(
            membership
                .take(&engine, &options, &metrics, &env)
                .expect("the reconcile")
        );
        write(&engine).expect("written under the lease");
        // r1 stalls: its holding (epoch 1) ends, r2 holds the environment and lets go.
        let store = engine.store();
        let r2 = taken_over(store, &env);

        // The request, while the reconcile still runs: refused, and nothing taken.
        assert!(
            !membership
                .take(&engine, &options, &metrics, &env)
                .expect("the request"),
            "not taken anew while a worker is on the lost holding"
        );
        assert!(membership.is_draining(&env));
        assert!(
            write(&engine).is_err_and(|e| e.is_fenced()),
            "the old reconcile's writes are refused"
        );
        let lease = store.lease(&env).expect("read").expect("a row");
        assert_eq!(
            lease.expires_at, 0,
            "free for whoever should hold it: {lease:?}"
        );
        // The next beat neither takes it back nor lets the fence go under the reconcile.
        let queued = membership.beat(&engine, &options, &metrics).expect("beat");
        assert!(write(&engine).is_err_and(|e| e.is_fenced()));
        // Queued as this replica's share: still not taken while the reconcile runs.
        assert_eq!(queued, vec![env.clone()]);
        assert!(
            !membership
                .take(&engine, &options, &metrics, &env)
                .expect("the queue's")
        );
        assert!(write(&engine).is_err_and(|e| e.is_fenced()));

        // The reconcile ends: the environment is taken anew, and written under the new lease.
        membership.done(&engine, &options, &metrics, &env);
        assert!(!membership.is_draining(&env));
        assert!(
            membership
                .take(&engine, &options, &metrics, &env)
                .expect("taken anew")
        );
        write(&engine).expect("written under the new lease");
        assert!(membership.epoch(&env) > Some(r2.epoch));
        membership.done(&engine, &options, &metrics, &env);
    }

    /// A worker about to take an environment (counted as working) when the beat finds its
    /// lease lost, then refused as the environment drains: the last one on it. Leaving, it
    /// lets the environment be taken again; it stayed refused for good before.
    #[test]
    fn a_worker_that_takes_nothing_is_not_waited_for_by_a_lost_holding() {
        let home = tempfile::tempdir().expect("tempdir");
        let env = EnvName::parse("shop").expect("a name");
        let (mut engine, options, metrics, membership) = r1_alone_with(home.path(), &env);
        engine.require_leases();
        assert!(
            membership
                .take(&engine, &options, &metrics, &env)
                .expect("take")
        );
        membership.done(&engine, &options, &metrics, &env);
        // A worker's take has begun (counted), when r1's holding ends behind its back.
        *lock(&membership.working).entry(env.clone()).or_default() += 1;
        taken_over(engine.store(), &env);
        membership.beat(&engine, &options, &metrics).expect("beat");
        assert!(
            membership.is_draining(&env),
            "the beat found it lost, a worker on it"
        );
        // The worker is refused (it drains), and leaves.
        assert!(
            !membership
                .take_marked(&engine, &options, &metrics, &env)
                .expect("take")
        );
        membership.leave(&engine, &env);
        assert!(!membership.is_draining(&env));
        assert!(
            membership
                .take(&engine, &options, &metrics, &env)
                .expect("take"),
            "taken again"
        );
        membership.done(&engine, &options, &metrics, &env);
    }

    #[test]
    fn rendezvous_moves_only_the_share_of_a_replica_that_joins() {
        let three: Vec<String> = ["r1", "r2", "r3"].map(String::from).to_vec();
        let four: Vec<String> = ["r1", "r2", "r3", "r4"].map(String::from).to_vec();
        let envs: Vec<String> = (0..400).map(|i| format!("env-{i}")).collect();
        let mut moved = 0;
        for env in &envs {
            let before = rendezvous(env, &three).expect("an owner");
            let after = rendezvous(env, &four).expect("an owner");
            if before != after {
                assert_eq!(after, "r4", "{env} moved between old replicas");
                moved += 1;
            }
        }
        assert!(
            (50..=150).contains(&moved),
            "about a quarter moves to the new replica, {moved} of 400 did"
        );
        let mut counts = BTreeMap::new();
        for env in &envs {
            *counts
                .entry(rendezvous(env, &three).expect("an owner"))
                .or_insert(0) += 1;
        }
        assert!(
            counts.values().all(|n| (90..=180).contains(n)),
            "the work is spread: {counts:?}"
        );
        assert_eq!(rendezvous("x", &[]), None);
    }
}
