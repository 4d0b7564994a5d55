//! A commit of the repository as the core's [`Files`], and loading a stack from it.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use slipway_core::stack::{FileError, Files, LoadLimits, Loaded};
use slipway_core::types::SourceDir;
use slipway_git::{Commit, GitError, Source, TreeEntry};

/// Largest file of a stack definition.
pub const MAX_STACK_FILE: u64 = 4 * 1024 * 1024;

/// The files of one commit, read through a [`Source`].
pub struct CommitFiles<'a> {
    /// Where to read.
    pub source: &'a dyn Source,
    /// The full sha.
    pub commit: &'a str,
}

impl Files for CommitFiles<'_> {
    fn read(&self, path: &str) -> Result<String, FileError> {
        match self.source.read_file(self.commit, path, MAX_STACK_FILE) {
            Ok(Some(bytes)) => String::from_utf8(bytes).map_err(|_| FileError::NotUtf8),
            Ok(None) => Err(FileError::NotFound),
            Err(GitError::TooLarge { size, limit, .. }) => Err(FileError::TooLarge { size, limit }),
            Err(e @ (GitError::UnsafePath { .. } | GitError::SymlinkEscapes { .. })) => {
                Err(FileError::Unsafe(e.to_string()))
            }
            Err(e) => Err(FileError::Other(e.to_string())),
        }
    }

    fn list(&self) -> Result<Vec<String>, FileError> {
        self.source
            .list_files(self.commit, "")
            .map(|entries| {
                entries
                    .into_iter()
                    .filter(|e| e.kind != slipway_git::EntryKind::Submodule)
                    .map(|e| e.path)
                    .collect()
            })
            .map_err(|e| FileError::Other(e.to_string()))
    }
}

/// A stack loaded from one commit.
pub struct LoadedCommit {
    /// The commit.
    pub commit: Commit,
    /// The stack and its diagnostics.
    pub loaded: Loaded,
    /// The entry file, e.g. `slipway.yaml` or `deploy/slipway.yaml`.
    pub entry: String,
    /// The stack's folder inside the repository (`""` for the root).
    pub folder: String,
}

impl LoadedCommit {
    /// The stack when it loaded without errors; otherwise the first error, rendered
    /// `file:line:col: message`, for a one-line report.
    pub fn valid_stack(&self) -> Result<&slipway_core::stack::Stack, String> {
        match self
            .loaded
            .stack
            .as_ref()
            .filter(|_| !self.loaded.has_errors())
        {
            Some(stack) => Ok(stack),
            None => Err(self
                .loaded
                .diagnostics
                .iter()
                .find(|d| d.is_error())
                .map(|d| d.to_string())
                .unwrap_or_else(|| format!("{} could not be read", self.entry))),
        }
    }
}

/// Normalizes the stack's folder (`--path`, `[repo] path`) into a folder prefix (`""` or `deploy/`).
pub fn folder_of(path: &str) -> Result<String, String> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() || trimmed == "." {
        return Ok(String::new());
    }
    slipway_core::stack::check_relative_path(trimmed)
        .map_err(|why| format!("the folder `{path}` is refused: {why}"))?;
    let parts: Vec<&str> = trimmed
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    Ok(format!("{}/", parts.join("/")))
}

/// Resolves `reference` and loads the stack at that commit.
pub fn load_commit(
    source: &dyn Source,
    reference: &str,
    folder: &str,
) -> Result<LoadedCommit, GitError> {
    let commit = source.resolve(reference)?;
    Ok(load_at(source, commit, folder))
}

/// [`load_commit`] for a tracked ref (the controller's default ref, an environment's
/// `track:`): the branch of that name, never a tag named like it
/// ([`Source::resolve_tracked`]).
pub fn load_tracked(
    source: &dyn Source,
    reference: &str,
    folder: &str,
) -> Result<LoadedCommit, GitError> {
    let commit = source.resolve_tracked(reference)?;
    Ok(load_at(source, commit, folder))
}

/// Loads the stack at an already resolved commit.
pub fn load_at(source: &dyn Source, commit: Commit, folder: &str) -> LoadedCommit {
    let entry = format!("{folder}slipway.yaml");
    let loaded = slipway_core::stack::load(
        &CommitFiles {
            source,
            commit: &commit.sha,
        },
        &entry,
        &LoadLimits::default(),
    );
    LoadedCommit {
        commit,
        loaded,
        entry,
        folder: folder.to_string(),
    }
}

/// Whether any of `resources` runs code from the repository (and so has a source hash).
pub fn runs_code(resources: &BTreeMap<String, slipway_core::stack::ResourceDef>) -> bool {
    resources
        .values()
        .any(|r| slipway_core::types::capabilities(&r.type_name).source != SourceDir::None)
}

/// The source hash of each resource that runs code from the repository: a hash of every file
/// under its working directory, except the stack's own definition files (changing a variable
/// in `slipway.yaml` must not restart everything).
pub fn source_hashes(
    files: &[TreeEntry],
    folder: &str,
    stack_files: &[String],
    resources: &BTreeMap<String, slipway_core::stack::ResourceDef>,
) -> BTreeMap<String, String> {
    let mut by_dir: BTreeMap<String, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (name, res) in resources {
        let field = match slipway_core::types::capabilities(&res.type_name).source {
            SourceDir::None => continue,
            SourceDir::Folder => None,
            SourceDir::Field(field) => res.fields.get(field).map(|n| &n.value),
        };
        let cwd = match field {
            Some(slipway_core::yaml::Value::Str(s)) => format!("{folder}{}/", s.trim_matches('/')),
            _ => folder.to_string(),
        };
        let hash = by_dir
            .entry(cwd.clone())
            .or_insert_with(|| {
                let mut h = Sha256::new();
                for entry in files
                    .iter()
                    .filter(|e| e.path.starts_with(&cwd) && !stack_files.contains(&e.path))
                {
                    h.update(entry.path.as_bytes());
                    h.update([0]);
                    h.update(entry.oid.as_bytes());
                    h.update([0]);
                }
                slipway_core::render::hex(&h.finalize())
            })
            .clone();
        out.insert(name.clone(), hash);
    }
    out
}
