//! The environment's exports: the commit's source is exported read-only under
//! `envs/ENV/src/COMMIT` before its resources run from it, and an export no resource runs from
//! any more is removed.

use slipway_core::EnvName;
use std::collections::BTreeSet;

use slipway_core::render::DesiredState;
use slipway_providers::{EnvDirs, Uses};

use crate::{Engine, EngineError, Envelope, Prepared};

/// Which of the environment's directories the resources of `desired` use: the most any
/// of their types uses ([`Uses::Run`] for none), as the core's catalogue says.
pub(super) fn uses(desired: &DesiredState) -> Uses {
    desired
        .resources
        .values()
        .map(|r| Uses::of(slipway_core::types::capabilities(&r.type_name)))
        .max()
        .unwrap_or(Uses::Run)
}

impl Engine {
    /// Exports the commit of `prepared` for its resources to run from, unless the plan
    /// changes nothing and the export is already there. Only for resources that run code
    /// ([`Uses::All`]): an environment of databases or files never reads it.
    pub(super) fn export_commit(
        &self,
        prepared: &Prepared,
        source: &dyn slipway_git::Source,
        dirs: &EnvDirs,
    ) -> Result<(), EngineError> {
        let export = dirs.root.join("src").join(&prepared.commit.sha);
        if prepared.plan.has_changes() || !export.exists() {
            source.export(&prepared.commit.sha, &prepared.folder, &export)?;
        }
        Ok(())
    }

    /// Removes exports of commits no resource runs from any more.
    pub(super) fn collect_exports(&self, env: &EnvName) -> Result<(), EngineError> {
        // First whether there is any: an environment whose resources run no code (databases,
        // manifests) has no `src/`, and its records need not be read.
        let dir = self.home.join("envs").join(env).join("src");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        let keep: BTreeSet<String> = self
            .store
            .resources(env)?
            .iter()
            .map(|r| Envelope::of(r).src_commit)
            .collect();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !keep.contains(&name) {
                let _ = slipway_git::remove_export(&entry.path());
            }
        }
        Ok(())
    }
}

impl Engine {
    /// Removes this home's directories of environments the state no longer has (destroyed
    /// by another replica), unless `busy` says this replica is working on one now (it may be
    /// recreating it). With several replicas each node keeps a copy of every environment it
    /// ever worked on: one destroyed elsewhere would otherwise stay here for good, its data
    /// reachable by whichever environment is given its uid next. Returns those removed.
    ///
    /// # Errors
    /// When the environments cannot be read; a directory that cannot be removed is left for
    /// the next sweep.
    pub fn sweep_departed(
        &self,
        busy: impl Fn(&EnvName) -> bool,
    ) -> Result<Vec<EnvName>, EngineError> {
        let envs = self.home.join("envs");
        let Ok(entries) = std::fs::read_dir(&envs) else {
            return Ok(Vec::new());
        };
        let local: Vec<EnvName> = entries
            .flatten()
            .filter_map(|e| EnvName::parse(e.file_name().to_str()?).ok())
            .collect();
        if local.is_empty() {
            return Ok(Vec::new());
        }
        let known: BTreeSet<EnvName> = self
            .store
            .environments()?
            .into_iter()
            .map(|e| e.name)
            .collect();
        let mut removed = Vec::new();
        let mut recorded_uids = None;
        for env in local {
            // Asked again per directory: the state is read once, the work goes on.
            if busy(&env) {
                continue;
            }
            let root = envs.join(env.as_str());
            if known.contains(&env) && !self.stale_copy(&env, &root, &mut recorded_uids)? {
                continue;
            }
            // Its code may have left processes on this host (a job's daemon, from before the
            // environment moved to another replica): the destroy killed only those on its own
            // host. Its uid is read from its `data/`, which is the uid's; killed while no
            // other environment was given it meanwhile (a uid serves again only after every
            // other one of the range has), else left: that environment's processes are then
            // indistinguishable from them.
            if self.isolation == slipway_providers::sandbox::Isolation::Uid
                && let Some(uid) = self.environment_uid_of(&root)?
                && let Err(e) = self.kill_everything_of(&env, uid)
            {
                tracing::warn!(environment = %env, error = %e, "left for the next sweep");
                continue;
            }
            if let Ok(exports) = std::fs::read_dir(root.join("src")) {
                for export in exports.flatten() {
                    let _ = slipway_git::remove_export(&export.path());
                }
            }
            if crate::isolation::remove_env_root(&root).is_ok() {
                removed.push(env);
            }
        }
        Ok(removed)
    }

    /// Whether this host's copy of `env`, which the state has, is a former environment's of
    /// the same name (destroyed on another replica and made again, not here, before this one
    /// swept): its `data/` belongs to an environment's uid that the state gives to no
    /// environment now, not to `env`'s. Such a copy is swept as a departed one. The state's
    /// uids are read once per sweep, and only when some `data/` is not root's.
    fn stale_copy(
        &self,
        env: &EnvName,
        root: &std::path::Path,
        recorded_uids: &mut Option<std::collections::BTreeMap<EnvName, u32>>,
    ) -> Result<bool, EngineError> {
        use std::os::unix::fs::MetadataExt;
        if self.isolation != slipway_providers::sandbox::Isolation::Uid {
            return Ok(false);
        }
        let Ok(data) = std::fs::symlink_metadata(root.join("data")) else {
            return Ok(false);
        };
        if data.uid() == 0 {
            return Ok(false);
        }
        if recorded_uids.is_none() {
            *recorded_uids = Some(self.store.environment_uids()?);
        }
        if recorded_uids
            .as_ref()
            .is_some_and(|uids| uids.get(env) == Some(&data.uid()))
        {
            return Ok(false);
        }
        Ok(self.environment_uid_of(root)?.is_some())
    }
}
