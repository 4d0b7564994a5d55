//! The [`Source`] trait and the values it returns.

use std::path::Path;

use crate::GitError;

/// A repository read at a commit, without a checkout.
///
/// The engine depends on this trait, not on [`crate::GitRepository`], so that another backend
/// (gitoxide, a test double) can replace the git CLI.
///
/// # Guarantees
/// Every method that takes a `commit` wants a full commit id as returned by
/// [`Source::resolve`] and reads exactly that commit: its answer never changes, so callers may
/// cache by commit id.
pub trait Source: Send + Sync {
    /// The commit a reference names: a branch, a tag (peeled to its commit), a full or
    /// abbreviated commit id, or `HEAD`.
    ///
    /// # Errors
    /// [`GitError::InvalidReference`] for a reference starting with `-` or containing control
    /// characters; [`GitError::ReferenceNotFound`] when nothing matches;
    /// [`GitError::AmbiguousReference`] when the name is both a branch and a tag (or another
    /// ref, or an abbreviated commit id) at different commits: a person gave it, and either
    /// reading could be the wrong one.
    fn resolve(&self, reference: &str) -> Result<Commit, GitError>;

    /// The commit a tracked ref names (an environment's `track:`, the controller's default
    /// ref): the branch of that name (`refs/heads/<name>`; in a mirror, the remote's branch)
    /// when there is one, never a tag or another ref named like it, which anyone allowed to
    /// push a tag could create. Otherwise (no such branch, `HEAD`, a full ref name or a
    /// commit id) what [`Source::resolve`] finds.
    ///
    /// # Errors
    /// As [`Source::resolve`].
    fn resolve_tracked(&self, reference: &str) -> Result<Commit, GitError>;

    /// The content of the file at `path` (repository-relative, `/`-separated) at `commit`, or
    /// `None` when there is no such file. Symlinks are followed inside the tree.
    ///
    /// # Errors
    /// [`GitError::UnsafePath`] for an absolute path or one with `..`, `.` or empty components;
    /// [`GitError::SymlinkEscapes`] when a symlink on the way leaves the repository;
    /// [`GitError::TooLarge`] when the file is over `limit` bytes (it is not read).
    fn read_file(&self, commit: &str, path: &str, limit: u64) -> Result<Option<Vec<u8>>, GitError>;

    /// Every file of the tree at `commit` whose path starts with `under` (`""` for every
    /// file; a folder ends with `/`), recursively, in git's tree order. Only the trees on the
    /// way to `under` and beneath it are read.
    fn list_files(&self, commit: &str, under: &str) -> Result<Vec<TreeEntry>, GitError>;

    /// Writes the whole tree at `commit` into `dest`, read-only, after checking that `subdir`
    /// (the folder holding `slipway.yaml`; `""` for the root) exists in it.
    ///
    /// # Guarantees
    /// `dest` appears complete or not at all (the tree is written beside it, then renamed). An
    /// existing `dest` is left untouched: exports are immutable, one per commit.
    fn export(&self, commit: &str, subdir: &str, dest: &Path) -> Result<(), GitError>;

    /// Brings a mirrored remote up to date; does nothing for a local repository, which is read
    /// live.
    fn fetch(&self) -> Result<(), GitError>;

    /// Every branch with the commit it points at, sorted by name. Branch names are attacker
    /// input (anyone who can push names them): callers must not trust them as identifiers.
    /// A branch that cannot be followed by its name ([`crate::names_a_branch`]: one named
    /// `refs/…` or like a whole commit id) is left out.
    fn branches(&self) -> Result<Vec<Branch>, GitError>;

    /// Whether commit `ancestor` is `descendant` or in its history (both full commit ids):
    /// whether a commit reached a branch whose tip is `descendant`.
    fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Result<bool, GitError>;
}

/// A branch and the commit at its tip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    /// Its name without `refs/heads/`, e.g. `feature/login`.
    pub name: String,
    /// The full commit id at its tip.
    pub sha: String,
}

/// A commit, as [`Source::resolve`] found it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Commit {
    /// The full commit id in lowercase hex (40 digits; 64 in a SHA-256 repository).
    pub sha: String,
    /// The first line of its message.
    pub summary: String,
    /// Its author, as `Name <email>`.
    pub author: String,
    /// Its committer time, unix seconds.
    pub time: i64,
}

/// What a tree entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file.
    Blob,
    /// A regular file with the executable bit.
    Executable,
    /// A symbolic link; its content is the target.
    Symlink,
    /// A submodule (a commit of another repository); never read or exported.
    Submodule,
}

/// One file of a tree, as listed by [`Source::list_files`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TreeEntry {
    /// Repository-relative, `/`-separated.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Its size in bytes (the target's length for a symlink, 0 for a submodule).
    pub size: u64,
    /// Its object id: equal ids mean equal content, so a tree's files can be hashed
    /// without reading them.
    pub oid: String,
}
