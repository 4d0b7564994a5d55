//! The engine's side of the packet filter keeping environments' code from one another's ports
//! and from denied networks (`[local] network`, `deny_networks`; uid mode): whether there is
//! one, and when it is written, from what the store says ([`slipway_providers::network`]).
//!
//! Written whole by `slipway serve` at its start ([`Engine::install_fence`]), and by any
//! command about to run an environment's code (an apply, a plan's exec `read`, a health
//! command) when it finds it missing or written for another home ([`Engine::fence_ready`],
//! looked at once a minute at most); a resource's ports are granted before its code starts
//! and revoked once they are released ([`Engine::fence_ports`]).

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use slipway_core::EnvName;
use slipway_providers::network::{Fence, Owned};
use slipway_providers::sandbox::Isolation;

use crate::config::{LocalConfig, NetworkSetting};
use crate::{Engine, EngineError};

/// How long the look that found the fence in force holds: a table removed meanwhile (an
/// operator's `nft flush ruleset`) is written again by the next command after that.
const LOOKED_AT: Duration = Duration::from_secs(60);

/// The fence an engine keeps, or why it keeps none.
pub(crate) struct Network {
    fence: Result<Fence, String>,
    /// With `network = "off"` in uid mode: the table a former configuration wrote, removed
    /// by `slipway serve`'s start (its rules would still refuse what they refused).
    leftover: Option<Fence>,
    /// When the fence was last found in force (or written) by this engine.
    looked: Mutex<Option<Instant>>,
    /// Asked for (`"nftables"`): a failure to write it is an error, not a warning.
    required: bool,
    /// Set when, under `"auto"`, writing the fence failed (no `nf_tables` in the kernel):
    /// why; this engine then leaves it alone rather than fail every apply.
    failed: Mutex<Option<String>>,
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
            looked: Mutex::new(None),
            required,
            failed: Mutex::new(None),
        })
    }

    /// The fence to write, unless there is none or writing it failed before (under `"auto"`).
    fn usable(&self) -> Option<&Fence> {
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.fence.as_ref().ok().filter(|_| failed.is_none())
    }

    /// A failure to write the fence: the error under `"nftables"`; under `"auto"` a warning,
    /// after which this engine leaves the fence alone.
    fn failed(&self, e: &std::io::Error) -> Result<(), EngineError> {
        let why = format!("environments' connections are not filtered: {e}");
        if self.required {
            return Err(EngineError::Environment(format!(
                "{why} ([local] network = \"nftables\")"
            )));
        }
        tracing::warn!("{why}");
        *self
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
        Ok(())
    }
}

impl Engine {
    /// Every uid and port of the store: each environment's uid with each port allocated to
    /// it.
    fn owned(&self) -> std::io::Result<Vec<Owned>> {
        let uids = self
            .store
            .environment_uids()
            .map_err(std::io::Error::other)?;
        let ports = self.store.all_ports().map_err(std::io::Error::other)?;
        Ok(ports
            .iter()
            .filter_map(|(env, resources)| Some((uids.get(env).copied()?, resources)))
            .flat_map(|(uid, resources)| {
                resources
                    .values()
                    .flat_map(|named| named.values())
                    .map(move |&port| (uid, port))
            })
            .collect())
    }

    /// Writes the fence whole, from the store (`slipway serve`'s start, which also drops
    /// what a former run left): what it keeps environments' code from, or why there is
    /// none.
    ///
    /// # Errors
    /// Writing it failed under `[local] network = "nftables"`.
    pub fn install_fence(&self) -> Result<Result<String, String>, EngineError> {
        if let Some(leftover) = &self.network.leftover
            && let Err(e) = leftover.remove()
        {
            tracing::warn!(table = %leftover.table(), error = %e, "a former packet filter stays");
        }
        let Some(fence) = self.network.usable() else {
            return Ok(Err(self.fence_absent()));
        };
        let mut looked = self
            .network
            .looked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match fence.install(|| self.owned()) {
            Ok(()) => {
                *looked = Some(Instant::now());
                Ok(Ok(fence.describe()))
            }
            Err(e) => {
                self.network.failed(&e)?;
                Ok(Err(self.fence_absent()))
            }
        }
    }

    /// Why there is no fence.
    fn fence_absent(&self) -> String {
        match (&self.network.fence, self.network.failed.lock()) {
            (Err(why), _) => why.clone(),
            (Ok(_), Ok(failed)) => failed.clone().unwrap_or_default(),
            (Ok(_), Err(_)) => String::new(),
        }
    }

    /// Whether a fence is kept (and writing it has not failed).
    pub(crate) fn fence_active(&self) -> bool {
        self.network.usable().is_some()
    }

    /// Before an environment's code runs (its sandbox is made): the fence in force, written
    /// whole from the store when it is not (after a reboot, or written for another home).
    /// Looked at once a minute at most; the others wait for a look under way.
    pub(crate) fn fence_ready(&self) -> Result<(), EngineError> {
        let Some(fence) = self.network.usable() else {
            return Ok(());
        };
        let mut looked = self
            .network
            .looked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if looked.is_some_and(|at| at.elapsed() < LOOKED_AT) {
            return Ok(());
        }
        match fence.ensure(|| self.owned()) {
            Ok(written) => {
                *looked = Some(Instant::now());
                if written {
                    tracing::info!(table = %fence.table(), "environments' packet filter written");
                }
                Ok(())
            }
            Err(e) => self.network.failed(&e),
        }
    }

    /// `env`'s ports `before` and `after` a change of them (allocated, released): those it
    /// holds no more are revoked, those it holds granted. A grant that fails fails the
    /// change (the environment's code could not reach its own port); a revoke that fails is
    /// logged (the next whole write drops it).
    pub(crate) fn fence_ports(
        &self,
        env: &EnvName,
        before: &[u16],
        after: &[u16],
    ) -> Result<(), EngineError> {
        let Some(fence) = self.network.usable() else {
            return Ok(());
        };
        if before == after {
            return Ok(());
        }
        let Some(uid) = self.store.environment_uid(env)? else {
            return Ok(());
        };
        let gone: Vec<Owned> = before
            .iter()
            .filter(|p| !after.contains(p))
            .map(|&p| (uid, p))
            .collect();
        if let Err(e) = fence.revoke(&gone) {
            tracing::error!(environment = %env, error = %e, "released ports stay open to its code");
        }
        let held: Vec<Owned> = after.iter().map(|&p| (uid, p)).collect();
        fence.grant(&held).map_err(EngineError::io(format!(
            "cannot open {env}'s ports to its code"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(off.usable().is_none(), "none when asked for none");
    }
}
