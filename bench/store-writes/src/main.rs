//! `store-writes`: the state store's write path timed on SQLite and on PostgreSQL, for section
//! 10 of `bench/run` (bench/sections/replicas.py runs it and reports it).
//!
//! ```text
//! store-writes --home DIR [--postgres URL] [--n 500] [--rounds 5] [--warmup 1]
//! ```
//!
//! Opens the state of `DIR/sqlite` as `slipway` does by default (`Store::open`: WAL,
//! `synchronous = NORMAL`) and, with `--postgres`, the database at URL as a replica does
//! (`Store::open_postgres`, home `DIR/postgres`), records one environment in each, then per
//! round times N operations of each kind on each store in turn (the order of the stores
//! alternating round by round), one JSON line per batch on stdout:
//! `{"backend", "kind", "round", "n", "seconds"}`. The warm-up rounds are not printed.
//!
//! Kinds, each through the `Store` API the engine and the controller call:
//! - `read`: `Store::environment` (one row read: the round trip alone, for reference);
//! - `event`: `Store::record_event` (one INSERT in its own transaction);
//! - `status`: `Store::set_environment_status` (one UPDATE in its own transaction);
//! - `deployment`: `Store::begin_deployment` then `Store::finish_deployment` (two
//!   transactions: what every apply records);
//! - `event-fenced`, `status-fenced`, `deployment-fenced`: the same through a second handle on
//!   the same database with `Store::require_leases`, holding the environment's lease: each
//!   transaction first proves the lease (`check_fence`, `FOR UPDATE` on PostgreSQL), as a
//!   replica's writes do;
//! - `lease-renew`: `Store::acquire_lease` by its holder (one upsert: what each heartbeat does
//!   per environment held).
//!
//! Every write also proves the schema's version in its transaction (`Conn::guard_schema`), as
//! in `slipway` itself.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use slipway_core::EnvName;
use slipway_core::vocab::{DeploymentStatus, EnvKind, EventKind, Health, SyncState};
use slipway_state::{EnvironmentRecord, Fence, NewDeployment, Store, now_ms};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const KINDS: [&str; 8] = [
    "read",
    "event",
    "status",
    "deployment",
    "event-fenced",
    "status-fenced",
    "deployment-fenced",
    "lease-renew",
];
const REPLICA: &str = "bench";
const LEASE: Duration = Duration::from_secs(3600);

/// One state: a plain handle (the default, single controller) and a fenced one (a replica's).
struct Backend {
    name: &'static str,
    plain: Store,
    fenced: Store,
    env: EnvName,
}

impl Backend {
    fn new(name: &'static str, open: impl Fn() -> Result<Store>) -> Result<Backend> {
        let env = EnvName::parse("bench")?;
        let plain = open()?;
        plain.upsert_environment(&EnvironmentRecord::new(
            env.clone(),
            EnvKind::Static,
            "bench".to_owned(),
            "file:///bench".to_owned(),
            now_ms(),
        ))?;
        let mut fenced = open()?;
        fenced.require_leases();
        let lease = fenced
            .acquire_lease(&env, REPLICA, LEASE)?
            .ok_or("the environment's lease is held by another replica")?;
        fenced.hold(
            &env,
            Fence {
                replica: REPLICA.to_owned(),
                epoch: lease.epoch,
            },
        );
        Ok(Backend {
            name,
            plain,
            fenced,
            env,
        })
    }

    /// One operation of `kind`, the `i`-th of its batch.
    fn op(&self, kind: &str, i: usize) -> Result<()> {
        let (store, kind) = match kind.strip_suffix("-fenced") {
            Some(k) => (&self.fenced, k),
            None => (&self.plain, kind),
        };
        let env = &self.env;
        let now = now_ms();
        match kind {
            "read" => {
                store
                    .environment(env)?
                    .ok_or("the environment is recorded")?;
            }
            "event" => {
                store.record_event(
                    Some(env),
                    EventKind::DriftDetected,
                    "bench: a small event",
                    &serde_json::json!({ "i": i }),
                    now,
                )?;
            }
            "status" => {
                let sync = if i.is_multiple_of(2) {
                    SyncState::Synced
                } else {
                    SyncState::OutOfSync
                };
                store.set_environment_status(env, sync, Health::Healthy, Some("bench"), now)?;
            }
            "deployment" => {
                let id = store.begin_deployment(&NewDeployment {
                    environment: env.clone(),
                    commit: format!("{i:040x}"),
                    hash: format!("{i:064x}"),
                    reference: Some("refs/heads/main".to_owned()),
                    plan: serde_json::json!({ "changes": [{ "resource": "a", "action": "update" }] }),
                    rules: None,
                    who: "bench".to_owned(),
                    at: now,
                })?;
                store.finish_deployment(
                    id,
                    DeploymentStatus::Succeeded,
                    None,
                    &serde_json::json!({ "updated": 1 }),
                    now_ms(),
                )?;
            }
            "lease-renew" => {
                self.fenced
                    .acquire_lease(env, REPLICA, LEASE)?
                    .ok_or("the lease stays this replica's")?;
            }
            other => return Err(format!("unknown kind {other}").into()),
        }
        Ok(())
    }
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn number(args: &[String], name: &str, default: usize) -> Result<usize> {
    Ok(match arg(args, name) {
        Some(v) => v.parse().map_err(|e| format!("{name} {v}: {e}"))?,
        None => default,
    })
}

fn home(base: &Path, name: &str) -> Result<PathBuf> {
    let dir = base.join(name);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let base = PathBuf::from(arg(&args, "--home").ok_or("--home DIR is required")?);
    let n = number(&args, "--n", 500)?.max(1);
    let rounds = number(&args, "--rounds", 5)?;
    let warmup = number(&args, "--warmup", 1)?;
    let sqlite_home = home(&base, "sqlite")?;
    let mut backends = vec![Backend::new("sqlite", || Ok(Store::open(&sqlite_home)?))?];
    if let Some(url) = arg(&args, "--postgres") {
        let pg_home = home(&base, "postgres")?;
        backends.push(Backend::new("postgres", || {
            Ok(Store::open_postgres(&pg_home, url)?)
        })?);
    }
    for round in 0..warmup + rounds {
        for kind in KINDS {
            for b in 0..backends.len() {
                // The stores' order alternates round by round.
                let backend = &backends[(b + round) % backends.len()];
                let t0 = Instant::now();
                for i in 0..n {
                    backend.op(kind, i)?;
                }
                let seconds = t0.elapsed().as_secs_f64();
                if round >= warmup {
                    println!(
                        "{}",
                        serde_json::json!({
                            "backend": backend.name,
                            "kind": kind,
                            "round": round - warmup,
                            "n": n,
                            "seconds": seconds,
                        })
                    );
                }
            }
        }
    }
    Ok(())
}
