//! The one error type of the git layer.

use std::path::PathBuf;

/// Everything that can go wrong while reading a repository.
///
/// [`GitError::retryable`] says whether the same call may succeed later with nothing changed by
/// a person (the network or the disk recovered). Errors about the input (a bad reference, an
/// unsafe path, a symlink leaving the repository) are terminal: the repository must change.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The `git` program could not be started.
    #[error("failed to run git; is it installed and on PATH?")]
    Spawn {
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },

    /// A git command failed.
    #[error("`git {command}` failed ({status}): {stderr}")]
    Command {
        /// The command's arguments (credentials redacted).
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr (trimmed, credentials redacted).
        stderr: String,
    },

    /// Cloning or fetching a remote failed (network, authentication, a missing repository).
    #[error("failed to {action} {url}: {stderr}")]
    Remote {
        /// `clone` or `fetch`.
        action: &'static str,
        /// The remote (credentials redacted).
        url: String,
        /// What git printed on stderr.
        stderr: String,
    },

    /// The repository spec is not a local path or an allowed URL.
    #[error("unsupported repository `{spec}`: {reason}")]
    UnsupportedSpec {
        /// The spec (credentials redacted, control characters escaped).
        spec: String,
        /// Why it is refused, and what is accepted.
        reason: String,
    },

    /// A local path is not inside a git repository.
    #[error("{path} is not a git repository: {detail}")]
    NotARepository {
        /// The path given.
        path: PathBuf,
        /// What git said.
        detail: String,
    },

    /// A reference that is refused before git sees it.
    #[error("invalid reference `{reference}`: {reason}")]
    InvalidReference {
        /// The reference (control characters escaped).
        reference: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// A reference that names no commit in the repository.
    #[error(
        "reference `{reference}` not found in {repository}; list the branches and tags with \
         `git branch -a` and `git tag`, or `git fetch` if it was pushed recently"
    )]
    ReferenceNotFound {
        /// The reference.
        reference: String,
        /// The repository searched.
        repository: String,
    },

    /// A reference that names several things: an abbreviated commit id that matches several
    /// objects, or a name that is both a branch and a tag (or a commit id), which git would
    /// silently pick one of.
    #[error("reference `{reference}` is ambiguous in {repository}: {detail}")]
    AmbiguousReference {
        /// The reference.
        reference: String,
        /// The repository searched.
        repository: String,
        /// What it could name, and how to name one of them.
        detail: String,
    },

    /// A commit argument that is not a full commit id.
    #[error("`{commit}` is not a full commit id; resolve references with `Source::resolve` first")]
    InvalidCommit {
        /// The argument (control characters escaped).
        commit: String,
    },

    /// A commit id absent from the repository.
    #[error("commit {commit} not found in {repository}; `git fetch` if it was pushed recently")]
    CommitNotFound {
        /// The commit.
        commit: String,
        /// The repository searched.
        repository: String,
    },

    /// A repository path that could name something outside the tree.
    #[error("unsafe path `{path}`: {reason}")]
    UnsafePath {
        /// The path (control characters escaped).
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// A symlink in the repository whose target leaves the repository.
    #[error(
        "symlink `{path}` points to `{target}`, outside the repository; make it relative and \
         inside the repository"
    )]
    SymlinkEscapes {
        /// The symlink's path in the repository.
        path: String,
        /// Its target (control characters escaped).
        target: String,
    },

    /// A path that goes through too many symlinks (or a loop of them).
    #[error("path `{path}` goes through more than {limit} symlinks (is there a loop?)")]
    TooManySymlinks {
        /// The path being resolved.
        path: String,
        /// The limit.
        limit: usize,
    },

    /// A file larger than the caller's limit.
    #[error("file `{path}` is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The path asked for.
        path: String,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },

    /// A commit's tree larger than Slipway reads: more entries than
    /// [`crate::MAX_TREE_ENTRIES`], more bytes in its files than [`crate::MAX_EXPORT_BYTES`], or
    /// a tree object too large to read. Git stores a tree repeated under many names once, so a
    /// push of a few kilobytes can name a billion files.
    #[error(
        "the tree of commit {commit} is too large: {detail}; split the repository, or keep \
         what Slipway does not deploy out of it"
    )]
    TreeTooLarge {
        /// The commit.
        commit: String,
        /// What was over which limit.
        detail: String,
    },

    /// A path that names a directory or a submodule where a file was expected.
    #[error("`{path}` is a {kind}, not a file")]
    NotAFile {
        /// The path asked for.
        path: String,
        /// `directory` or `submodule`.
        kind: &'static str,
    },

    /// A directory that does not exist at the commit.
    #[error("directory `{path}` does not exist at commit {commit}")]
    PathNotFound {
        /// The commit.
        commit: String,
        /// The directory.
        path: String,
    },

    /// A filesystem operation failed.
    #[error("failed to {action} {path}")]
    Io {
        /// What was being done, e.g. "write".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },

    /// The repository's files could not be read in process (a pack, a loose object, a ref).
    #[error("failed to {action} in {repository}")]
    Read {
        /// What was being read, e.g. "read object 1234…".
        action: String,
        /// The repository (credentials redacted).
        repository: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// An object a commit refers to is not in the repository. Git writes a fetched commit's
    /// objects one at a time and moves its refs last, so a commit named from elsewhere (a
    /// webhook's head) can be read before the tree or blobs its fetch is still writing; or the
    /// repository is damaged.
    #[error(
        "{object} is missing from {repository}; a fetch may still be bringing it (it is read \
         again on the next try), or the repository is damaged"
    )]
    MissingObject {
        /// `object ID`, and the path it is at when known: `object ID of PATH`.
        object: String,
        /// The repository (credentials redacted).
        repository: String,
    },

    /// Git printed something this crate does not understand.
    #[error("unexpected output from `git {command}`: {detail}")]
    Protocol {
        /// The command.
        command: String,
        /// What was unexpected.
        detail: String,
    },
}

impl GitError {
    /// Whether the same call may succeed later with nothing changed by a person: a remote that
    /// could not be reached, or a transient filesystem error.
    pub fn retryable(&self) -> bool {
        match self {
            GitError::Remote { .. } => true,
            // A fetch or a repack may have replaced a pack under the read; a repository that
            // is corrupt fails again, under the caller's backoff.
            GitError::Read { .. } => true,
            // A fetch had not finished writing it; a damaged repository fails again, under
            // the caller's backoff.
            GitError::MissingObject { .. } => true,
            GitError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::StorageFull
            ),
            GitError::Spawn { .. }
            | GitError::Command { .. }
            | GitError::UnsupportedSpec { .. }
            | GitError::NotARepository { .. }
            | GitError::InvalidReference { .. }
            | GitError::ReferenceNotFound { .. }
            | GitError::AmbiguousReference { .. }
            | GitError::InvalidCommit { .. }
            | GitError::CommitNotFound { .. }
            | GitError::UnsafePath { .. }
            | GitError::SymlinkEscapes { .. }
            | GitError::TooManySymlinks { .. }
            | GitError::TooLarge { .. }
            | GitError::TreeTooLarge { .. }
            | GitError::NotAFile { .. }
            | GitError::PathNotFound { .. }
            | GitError::Protocol { .. } => false,
        }
    }
}

/// Text from outside (a reference, a path, a symlink target) made safe to print: control
/// characters are escaped so that it cannot forge log lines or terminal sequences.
pub(crate) fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Bytes from outside made printable: lossy UTF-8, then [`printable`].
pub(crate) fn printable_bytes(bytes: &[u8]) -> String {
    printable(&String::from_utf8_lossy(bytes))
}
