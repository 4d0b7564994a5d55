//! The environment's exports: the commit's source is exported read-only under
//! `envs/ENV/src/COMMIT` before its resources run from it, and an export no resource runs from
//! any more is removed.

use slipway_core::EnvName;
use std::collections::BTreeSet;

use slipway_providers::EnvDirs;

use crate::{Engine, EngineError, Envelope, Prepared};

impl Engine {
    /// Exports the commit of `prepared` for its resources to run from, unless the plan
    /// changes nothing and the export is already there.
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
        let keep: BTreeSet<String> = self
            .store
            .resources(env)?
            .iter()
            .map(|r| Envelope::of(r).src_commit)
            .collect();
        let dir = self.home.join("envs").join(env).join("src");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !keep.contains(&name) {
                let _ = slipway_git::remove_export(&entry.path());
            }
        }
        Ok(())
    }
}
