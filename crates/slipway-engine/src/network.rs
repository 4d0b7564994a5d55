//! The engine's side of the packet filter keeping environments' code from one another's ports
//! and from denied networks (`[local] network`, `deny_networks`; uid mode): whether there is
//! one, and when it is written, from what the store says ([`slipway_providers::network`]).
//!
//! Written whole by `slipway serve` at its start ([`Engine::install_fence`]), and before any
//! environment's code runs (an apply, a plan's exec `read`, a health command: its sandbox is
//! made, [`Engine::fence_ready`]): a command's first look writes it when it is missing or
//! written for another home; in a process that lives on (`slipway serve`), each look after
//! the first, once a minute at most, writes it whole from the store, which drops what a
//! crash, a failed revoke or another replica's change left. A resource's ports are granted
//! before its code starts, and revoked before the store releases them
//! ([`Engine::fence_grant`], [`Engine::fence_revoke`]).

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use slipway_core::EnvName;
use slipway_providers::network::{Fence, Holdings, Owned};
use slipway_providers::sandbox::Isolation;

use crate::config::{LocalConfig, NetworkSetting};
use crate::{Engine, EngineError};

/// In the home: a revoke failed, and the table may give code ports its environment holds
/// no more; the next look of any command writes it whole, then removes this.
const STALE: &str = "network.stale";

/// How long a look that found the fence in force (or could not write it) holds.
const LOOKED_AT: Duration = Duration::from_secs(60);

/// The fence an engine keeps, or why it keeps none.
pub(crate) struct Network {
    fence: Result<Fence, String>,
    /// With `network = "off"` in uid mode: the table a former configuration wrote, removed
    /// by `slipway serve`'s start (its rules would still refuse what they refused).
    leftover: Option<Fence>,
    /// Asked for (`"nftables"`): a failure to write it is an error, not a warning.
    required: bool,
    look: Mutex<Look>,
    /// Told when a first look ends (`Look::first`).
    looked_at: std::sync::Condvar,
}

/// This engine's last look at its fence.
#[derive(Debug, Default)]
struct Look {
    /// When; `None`: not yet.
    at: Option<Instant>,
    /// Whether it found (or wrote) the fence in force. Ports are granted only then (revoked
    /// whenever a fence is kept): under `"auto"`, a machine whose `nft` fails runs without,
    /// and says so.
    in_force: bool,
    /// What the table may hold that the store does not (a revoke failed): the next look
    /// writes it whole, whenever it comes.
    stale: bool,
    /// Why it is not in force.
    why: Option<String>,
    /// A first look is under way (perhaps ahead of the command's code,
    /// [`Engine::look_at_fence_ahead`]): the others wait for it.
    first: bool,
}

impl Network {
    /// The fence `[local] network` asks for, where `isolation` and this machine allow it.
    ///
    /// # Errors
    /// `"nftables"` asked for where it cannot be had: not uid mode, or no `nft`.
    pub(crate) fn new(
        isolation: Isolation,
        local: &LocalConfig,
        uids: std::ops::RangeInclusive<u32>,
        home: &Path,
    ) -> Result<Network, EngineError> {
        let required = local.network == NetworkSetting::Nftables;
        let fence_of = |nft| {
            Fence::new(
                nft,
                home,
                uids.clone(),
                local.ports.0.clone(),
                local.deny_networks.clone(),
            )
        };
        let leftover = (local.network == NetworkSetting::Off && isolation == Isolation::Uid)
            .then(Fence::find_nft)
            .flatten()
            .map(fence_of);
        let fence = match (local.network, isolation) {
            (NetworkSetting::Off, _) => Err("[local] network = \"off\"".to_owned()),
            (_, Isolation::Uid) => Fence::find_nft().map(fence_of).ok_or_else(|| {
                "`nft` is not installed (the package `nftables`; `/usr/sbin/nft`)".to_owned()
            }),
            (_, isolation) => Err(format!(
                "isolation is {isolation}: only an engine running as root gives each \
                 environment a uid of its own, which the packet filter tells apart"
            )),
        };
        if required && let Err(why) = &fence {
            return Err(EngineError::Usage(format!(
                "[local] network = \"nftables\", but environments' connections cannot be \
                 filtered here: {why}; install nftables and run the engine as root, or set \
                 `network = \"off\"`"
            )));
        }
        Ok(Network {
            fence,
            leftover,
            required,
            look: Mutex::new(Look::default()),
            looked_at: std::sync::Condvar::new(),
        })
    }

    fn look(&self) -> std::sync::MutexGuard<'_, Look> {
        self.look
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records how writing (or looking at) the fence went: under `"nftables"` a failure is
    /// the error; under `"auto"` a warning, and this engine grants nothing until a later look
    /// finds it in force.
    fn looked(&self, result: std::io::Result<()>) -> Result<(), EngineError> {
        let mut look = self.look();
        look.at = Some(Instant::now());
        match result {
            Ok(()) => {
                look.in_force = true;
                look.why = None;
                Ok(())
            }
            Err(e) => {
                let why = format!("environments' connections are not filtered: {e}");
                look.in_force = false;
                look.why = Some(why.clone());
                if self.required {
                    return Err(refused(&why));
                }
                tracing::warn!("{why}");
                Ok(())
            }
        }
    }
}

/// Code does not run while a fence asked for (`"nftables"`) is not in force: `why`.
fn refused(why: &str) -> EngineError {
    EngineError::Environment(format!("{why} ([local] network = \"nftables\")"))
}

impl Engine {
    /// What the store holds: every environment's uid, and each port allocated with its
    /// environment's uid.
    fn holdings(&self) -> std::io::Result<Holdings> {
        let uids = self
            .store
            .environment_uids()
            .map_err(std::io::Error::other)?;
        let ports = self.store.all_ports().map_err(std::io::Error::other)?;
        let owned: Vec<Owned> = ports
            .iter()
            .filter_map(|(env, resources)| Some((uids.get(env).copied()?, resources)))
            .flat_map(|(uid, resources)| {
                resources
                    .values()
                    .flat_map(|named| named.values())
                    .map(move |&port| (uid, port))
            })
            .collect();
        Ok(Holdings {
            uids: uids.into_values().collect(),
            owned,
        })
    }

    /// Writes the fence whole, from the store (`slipway serve`'s start, which also drops
    /// what a former run left, or the table of a former configuration when it is `"off"`):
    /// what it keeps environments' code from, or why there is none.
    ///
    /// # Errors
    /// Writing it failed under `[local] network = "nftables"`.
    pub fn install_fence(&self) -> Result<Result<String, String>, EngineError> {
        if let Some(leftover) = &self.network.leftover
            && let Err(e) = leftover.remove()
        {
            tracing::warn!(table = %leftover.table(), error = %e, "a former packet filter stays");
        }
        let fence = match &self.network.fence {
            Ok(fence) => fence,
            Err(why) => return Ok(Err(why.clone())),
        };
        self.network.looked(fence.install(|| self.holdings()))?;
        let look = self.network.look();
        Ok(match &look.why {
            None => Ok(fence.describe()),
            Some(why) => Err(why.clone()),
        })
    }

    /// Whether the fence is kept and was in force at the last look: ports are granted then.
    pub(crate) fn fence_active(&self) -> bool {
        self.network.fence.is_ok() && self.network.look().in_force
    }

    /// Before an environment's code runs (its sandbox is made): the fence in force. A
    /// command's first look writes it when missing or another home's; later looks (in
    /// `slipway serve`), once a minute at most or when a revoke failed, write it whole.
    pub(crate) fn fence_ready(&self) -> Result<(), EngineError> {
        let Ok(fence) = &self.network.fence else {
            return Ok(());
        };
        let whole = {
            let mut look = self.network.look();
            while look.first {
                look = self
                    .network
                    .looked_at
                    .wait(look)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            let fresh = look.at.is_some_and(|at| at.elapsed() < LOOKED_AT);
            if !fresh && self.home.join(STALE).exists() {
                look.stale = true;
            }
            if fresh && !look.stale {
                return match (&look.why, self.network.required) {
                    (Some(why), true) => Err(refused(why)),
                    _ => Ok(()),
                };
            }
            // Taken now, so that the others do not look too: they wait for a first look
            // (nothing of the command has run yet), and go on meanwhile during a later one
            // (the table was in force at the last).
            let whole = look.at.is_some() || look.stale;
            look.first = look.at.is_none();
            look.at = Some(Instant::now());
            look.stale = false;
            whole
        };
        let result = if whole {
            fence.install(|| self.holdings()).map(|()| true)
        } else {
            fence.ensure(|| self.holdings())
        };
        if let Ok(true) = result {
            tracing::info!(table = %fence.table(), "environments' packet filter written");
            // Written from the store: what a failed revoke left is gone.
            let _ = std::fs::remove_file(self.home.join(STALE));
        }
        let outcome = self.network.looked(result.map(drop));
        self.network.look().first = false;
        self.network.looked_at.notify_all();
        outcome
    }

    /// Starts the first look at the fence now, on a thread of its own, so that writing it
    /// (a new home's first, some 20 ms, most of it the kernel's wait for readers of the
    /// rules it replaces) overlaps what a command does before its code runs (reading the
    /// commit, planning); the code's sandbox waits for it ([`Engine::fence_ready`]).
    pub fn look_at_fence_ahead(self: &std::sync::Arc<Self>) {
        if self.network.fence.is_err() {
            return;
        }
        let engine = std::sync::Arc::clone(self);
        let started = std::thread::Builder::new()
            .name("fence".into())
            .spawn(move || {
                // Its outcome is kept for the sandbox's look, which says it.
                let _ = engine.fence_ready();
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "the packet filter is looked at when code runs");
        }
    }

    /// Lets `env`'s code reach `ports` (allocated to it), before it runs. Should the table
    /// have gone meanwhile, it is written whole (which holds them: the store has them).
    pub(crate) fn fence_grant(&self, env: &EnvName, ports: &[u16]) -> Result<(), EngineError> {
        let Ok(fence) = &self.network.fence else {
            return Ok(());
        };
        if ports.is_empty() || !self.fence_active() {
            return Ok(());
        }
        let Some(uid) = self.store.environment_uid(env)? else {
            return Ok(());
        };
        let pairs: Vec<Owned> = ports.iter().map(|&p| (uid, p)).collect();
        match fence.grant(&pairs) {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(environment = %env, error = %e, "writing the packet filter whole");
                self.network.looked(fence.install(|| self.holdings()))?;
                if self.fence_active() {
                    Ok(())
                } else {
                    Err(EngineError::Environment(format!(
                        "cannot open {env}'s ports to its code: {e}"
                    )))
                }
            }
        }
    }

    /// Whether a fence is kept here (in force or not): ports released are revoked then,
    /// whatever the last look found (a table there from before holds them).
    pub(crate) fn fence_kept(&self) -> bool {
        self.network.fence.is_ok()
    }

    /// Takes `ports` from `env`'s code and then runs `release`, the store's release of them,
    /// while the home's lock is held (a whole write waiting for it reads the store without
    /// them). A revoke that fails is logged and noted in `<home>/network.stale`, so that the
    /// next look, of whichever command, writes the table whole; the release goes on.
    pub(crate) fn fence_release<R>(
        &self,
        env: &EnvName,
        ports: &[u16],
        release: impl FnOnce() -> R,
    ) -> R {
        let Ok(fence) = &self.network.fence else {
            return release();
        };
        if ports.is_empty() {
            return release();
        }
        let uid = match self.store.environment_uid(env) {
            Ok(Some(uid)) => uid,
            Ok(None) => return release(),
            Err(e) => {
                self.fence_stale(env, &e.to_string());
                return release();
            }
        };
        let pairs: Vec<Owned> = ports.iter().map(|&p| (uid, p)).collect();
        let (revoked, released) = fence.revoke_then(&pairs, release);
        if let Err(e) = revoked {
            self.fence_stale(env, &e.to_string());
        }
        released
    }

    /// A revoke failed: the table may give `env`'s code ports it holds no more.
    fn fence_stale(&self, env: &EnvName, error: &str) {
        tracing::error!(
            environment = %env,
            error,
            "its released ports stay open to its code until the packet filter is written again"
        );
        self.network.look().stale = true;
        if let Err(e) = std::fs::write(self.home.join(STALE), b"") {
            tracing::error!(error = %e, "cannot note that the packet filter is stale");
        }
    }

    /// At `env`'s destroy: `release` (the store's release of its ports and uid) once every
    /// port it holds is taken from its code, its resources' and those no resource record
    /// names (a step that failed between allocating them and recording the resource).
    pub(crate) fn fence_release_all<R>(
        &self,
        env: &EnvName,
        release: impl FnOnce() -> R,
    ) -> Result<R, EngineError> {
        if !self.fence_kept() {
            return Ok(release());
        }
        let ports: Vec<u16> = self
            .store
            .environment_ports(env)?
            .into_values()
            .flat_map(std::collections::BTreeMap::into_values)
            .collect();
        Ok(self.fence_release(env, &ports, release))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine whose fence is written by `nft`, a script that notes each call in `calls`
    /// and fails (`ok: false`, as `nft` without `CAP_NET_ADMIN`) or succeeds.
    fn engine_with_nft(home: &Path, ok: bool, required: bool) -> (Engine, std::path::PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let calls = home.join("calls");
        let nft = home.join("nft");
        let exit = if ok {
            "exit 0"
        } else {
            "echo 'Operation not permitted' >&2; exit 1"
        };
        std::fs::write(
            &nft,
            format!(
                "#!/bin/sh\necho \"$*\" >> {}\ncat > /dev/null\n{exit}\n",
                calls.display()
            ),
        )
        .expect("a fake nft");
        std::fs::set_permissions(&nft, std::fs::Permissions::from_mode(0o755)).expect("mode");
        let mut engine = Engine::open(&home.join("home"), crate::EngineConfig::default(), vec![])
            .expect("an engine");
        engine.network = Network {
            fence: Ok(Fence::new(nft, home, 5..=9, 20_000..=20_009, vec![])),
            leftover: None,
            required,
            look: Mutex::new(Look::default()),
            looked_at: std::sync::Condvar::new(),
        };
        (engine, calls)
    }

    fn calls(path: &Path) -> usize {
        std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
    }

    #[test]
    fn a_fence_nft_cannot_write_is_a_warning_looked_at_again_a_minute_later_unless_required() {
        let dir = tempfile::tempdir().expect("a directory");
        let (engine, log) = engine_with_nft(dir.path(), false, false);
        engine.fence_ready().expect("under auto, a warning");
        assert!(
            !engine.fence_active(),
            "not in force: nothing granted or revoked"
        );
        assert_eq!(calls(&log), 1, "one look");
        engine.fence_ready().expect("again");
        assert_eq!(calls(&log), 1, "not looked at again within the minute");
        engine
            .fence_grant(&EnvName::parse("dev").expect("a name"), &[20_001])
            .expect("nothing to grant");
        assert_eq!(calls(&log), 1, "no grant tried");
        assert!(
            engine
                .install_fence()
                .expect("under auto")
                .is_err_and(|why| why.contains("Operation not permitted")),
            "serve's start says why"
        );

        let dir = tempfile::tempdir().expect("a directory");
        let (engine, log) = engine_with_nft(dir.path(), false, true);
        for _ in 0..2 {
            let e = engine.fence_ready().expect_err("required").to_string();
            assert!(
                e.contains("Operation not permitted") && e.contains("network = \"nftables\""),
                "{e}"
            );
        }
        assert_eq!(calls(&log), 1, "the refusal holds for the minute too");

        let dir = tempfile::tempdir().expect("a directory");
        let (engine, log) = engine_with_nft(dir.path(), true, true);
        engine.fence_ready().expect("in force");
        assert!(engine.fence_active());
        engine.fence_ready().expect("in force");
        assert_eq!(calls(&log), 1, "looked at once: the table was there");
        assert!(
            std::fs::read_to_string(&log)
                .expect("calls")
                .starts_with("list set inet slipway_5_9 ready_"),
            "a command's first look only asks whether it is there"
        );
    }

    #[test]
    fn a_fence_asked_for_where_it_cannot_be_had_stops_the_engine_and_the_default_only_says_why() {
        let home = tempfile::tempdir().expect("a home");
        let mut local = LocalConfig {
            network: NetworkSetting::Nftables,
            ..LocalConfig::default()
        };
        for isolation in [Isolation::Landlock, Isolation::None] {
            let e = Network::new(isolation, &local, 5..=9, home.path())
                .err()
                .expect("refused");
            let e = e.to_string();
            assert!(
                e.contains("[local] network = \"nftables\"")
                    && e.contains(&format!("isolation is {isolation}")),
                "{e}"
            );
        }
        local.network = NetworkSetting::Auto;
        let auto = Network::new(Isolation::Landlock, &local, 5..=9, home.path()).expect("auto");
        assert!(
            auto.fence
                .is_err_and(|why| why.contains("isolation is landlock")),
            "none, and why"
        );
        local.network = NetworkSetting::Off;
        let off = Network::new(Isolation::Uid, &local, 5..=9, home.path()).expect("off");
        assert!(
            off.fence.is_err_and(|why| why.contains("\"off\"")),
            "none when asked for none"
        );
    }
}
