//! One-shot commands on a shared PostgreSQL state (`slipway apply`, `slipway destroy`,
//! `slipway env ...` without `--server`) hold the environment's lease for as long as they
//! run, as a replica of `slipway serve` would: so that they never act beside a replica.
//!
//! The command takes the lease under a name of its own (`<node>/cli-<pid>`, `<node>` being
//! `[controller] replica`, else the host name), renews it every third of `[controller] lease`
//! on a thread of its own, proves it in every write (the store's fence), bounds the commands
//! it starts by it (the lease watchdog), and gives it back when done. A lease a live replica
//! holds is refused, naming the replica (with `--wait`, the command waits until it lets go:
//! the replica stops, dies, or hands it over as replicas join or leave). A node-bound
//! environment (`process`, `file`: its processes and files are on its last holder's node) is
//! refused unless that holder is this configuration's `[controller] replica`, and given back
//! to it afterwards, so that the replica takes it up again.
//!
//! With a SQLite state nothing is taken: the engine's file lock already serialises the
//! commands and the one `slipway serve` of a home.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use slipway_core::EnvName;
use slipway_engine::{Engine, node_of};
use slipway_state::{Dialect, Fence, Store};

use crate::config::Config;

/// Whether to wait for a lease a replica holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Refuse at once, naming the holder.
    No,
    /// Wait until it lets go.
    Yes,
}

impl From<bool> for Wait {
    fn from(wait: bool) -> Wait {
        if wait { Wait::Yes } else { Wait::No }
    }
}

/// Makes `engine`, on a PostgreSQL state, prove leases in its writes and bound the commands
/// it runs by them; nothing on SQLite. Call before [`take`].
pub fn prepare(engine: &mut Engine, config: &Config) -> Result<()> {
    if engine.store().dialect() != Dialect::Postgres {
        return Ok(());
    }
    engine.require_leases();
    let exe = std::env::current_exe()
        .context("cannot find the slipway binary to run the lease watchdog")?;
    let watchdog = slipway_providers::watchdog::Watchdog::start(
        &[exe.into_os_string(), "__watchdog".into()],
        config.controller.lease,
    )
    .context("cannot start the lease watchdog")?;
    engine.bound_by(watchdog);
    Ok(())
}

/// The lease of one environment, held by this command until dropped.
pub struct CommandLease {
    engine: Arc<Engine>,
    environment: EnvName,
    me: String,
    epoch: i64,
    ttl: Duration,
    /// The replica that gets a node-bound environment back.
    give_back: Option<String>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    renewer: Option<JoinHandle<()>>,
}

/// This configuration's node: `[controller] replica`, else the host name.
pub fn node(config: &Config) -> String {
    config.controller.replica.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "slipway".to_owned())
    })
}

/// Whether `environment` has resources bound to the node that runs them.
fn node_bound(store: &Store, environment: &EnvName) -> Result<bool> {
    Ok(store
        .resource_types(Some(environment))?
        .values()
        .flatten()
        .any(|t| slipway_core::types::capabilities(t).node_bound))
}

/// Takes `environment`'s lease for this command (see the module's documentation): `None` on
/// a SQLite state.
///
/// # Errors
/// When a replica holds it (and `wait` is [`Wait::No`]), when it is bound to another node,
/// or when the state cannot be reached.
pub fn take(
    engine: &Arc<Engine>,
    environment: &EnvName,
    config: &Config,
    wait: Wait,
) -> Result<Option<CommandLease>> {
    let store = engine.store();
    if store.dialect() != Dialect::Postgres {
        return Ok(None);
    }
    let node = node(config);
    let me = format!("{node}/cli-{}", std::process::id());
    let ttl = config.controller.lease;
    let bound = node_bound(store, environment)?;
    let last = store.lease(environment)?.map(|lease| lease.holder);
    if bound && let Some(last) = &last {
        let owner = node_of(last);
        if owner != node {
            bail!(
                "environment `{environment}` runs on the node of replica {owner} (it has \
                 processes or files there), and this configuration is not that replica's \
                 ([controller] replica = \"{node}\"); nothing was changed: run the command on \
                 {owner}'s node with its configuration, or through a replica's API (--server)"
            );
        }
    }
    let mut said = false;
    let lease = loop {
        let asked = Instant::now();
        if let Some(lease) = store.acquire_lease(environment, &me, ttl)? {
            if let Some(watchdog) = engine.watchdog() {
                watchdog.renewed(environment.as_str(), asked, ttl);
            }
            break lease;
        }
        let holder = store
            .holder(environment)?
            .unwrap_or_else(|| "another replica".to_owned());
        let at = store
            .replicas()?
            .into_iter()
            .find(|r| r.name == holder)
            .and_then(|r| r.advertise)
            .map(|a| format!(" (at {a})"))
            .unwrap_or_default();
        match wait {
            Wait::No => bail!(
                "environment `{environment}` is worked on by {holder}{at}, which holds its \
                 lease; nothing was changed: make the change through that replica's API \
                 (--server), or pass --wait to wait until it lets go of it (it stops, or hands \
                 the environment over)"
            ),
            Wait::Yes if !said => {
                eprintln!("waiting for {holder}{at} to let go of environment `{environment}`...");
                said = true;
            }
            Wait::Yes => {}
        }
        std::thread::sleep((ttl / 3).clamp(Duration::from_millis(100), Duration::from_secs(2)));
    };
    store.hold(
        environment,
        Fence {
            replica: me.clone(),
            epoch: lease.epoch,
        },
    );
    // A node-bound environment goes back to its node's replica; a new one to this node's.
    let give_back = bound.then(|| {
        last.as_deref()
            .map_or(node.clone(), |l| node_of(l).to_owned())
    });
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let renewer = {
        let (engine, environment, me, stop) = (
            Arc::clone(engine),
            environment.clone(),
            me.clone(),
            Arc::clone(&stop),
        );
        let epoch = lease.epoch;
        std::thread::spawn(move || renew(&engine, &environment, &me, epoch, ttl, &stop))
    };
    Ok(Some(CommandLease {
        engine: Arc::clone(engine),
        environment: environment.clone(),
        me,
        epoch: lease.epoch,
        ttl,
        give_back,
        stop,
        renewer: Some(renewer),
    }))
}

/// Renews the lease every third of `ttl` until told to stop. A lease lost meanwhile (the
/// command stalled past it) is not taken again: the store's fence refuses the command's next
/// write, and the watchdog ends what it runs.
fn renew(
    engine: &Engine,
    environment: &EnvName,
    me: &str,
    epoch: i64,
    ttl: Duration,
    stop: &(Mutex<bool>, Condvar),
) {
    let (stopped, wake) = stop;
    let mut stopped = stopped.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let (guard, _) = wake
            .wait_timeout(stopped, ttl / 3)
            .unwrap_or_else(|e| e.into_inner());
        stopped = guard;
        if *stopped {
            return;
        }
        let asked = Instant::now();
        let kept = engine
            .store()
            .acquire_lease(environment, me, ttl)
            .ok()
            .flatten()
            .is_some_and(|lease| lease.epoch == epoch);
        if !kept {
            eprintln!(
                "lost the lease of environment `{environment}` (this command stalled past it, \
                 or the state could not be reached): its next write will be refused"
            );
            if let Some(watchdog) = engine.watchdog() {
                watchdog.released(environment.as_str());
            }
            return;
        }
        if let Some(watchdog) = engine.watchdog() {
            watchdog.renewed(environment.as_str(), asked, ttl);
        }
    }
}

impl Drop for CommandLease {
    fn drop(&mut self) {
        {
            let (stopped, wake) = &*self.stop;
            *stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
            wake.notify_all();
        }
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.join();
        }
        let store = self.engine.store();
        store.unhold(&self.environment);
        if let Some(watchdog) = self.engine.watchdog() {
            watchdog.released(self.environment.as_str());
        }
        let given = match &self.give_back {
            Some(to) => store.return_lease(&self.environment, &self.me, self.epoch, to),
            None => store.release_lease(&self.environment, &self.me, self.epoch),
        };
        if let Err(e) = given {
            eprintln!(
                "warning: cannot give back the lease of environment `{}` ({e}); it expires by \
                 itself within {:?}",
                self.environment, self.ttl
            );
        }
    }
}
