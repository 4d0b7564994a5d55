//! Listing a commit's tree with `git ls-tree`, checking every path on the way.

use crate::GitError;
use crate::command::Git;
use crate::error::printable_bytes;
use crate::path::check_tree_path;
use crate::source::{EntryKind, TreeEntry};

/// One line of `git ls-tree -r -z -l [-t]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Listed {
    pub(crate) mode: u32,
    pub(crate) oid: String,
    /// `None` for trees and submodules.
    pub(crate) size: Option<u64>,
    pub(crate) path: String,
}

impl Listed {
    /// The entry as [`crate::Source::list_files`] returns it; `None` for a directory.
    pub(crate) fn tree_entry(&self) -> Option<TreeEntry> {
        let kind = match self.mode & 0o170_000 {
            0o040_000 => return None,
            0o120_000 => EntryKind::Symlink,
            0o160_000 => EntryKind::Submodule,
            _ if self.mode & 0o111 != 0 => EntryKind::Executable,
            _ => EntryKind::Blob,
        };
        Some(TreeEntry {
            path: self.path.clone(),
            kind,
            size: self.size.unwrap_or(0),
            oid: self.oid.clone(),
        })
    }
}

/// Every entry of the tree at `commit` (an already-checked commit id), recursively; with
/// `with_trees`, directories too, each listed before its content.
///
/// # Errors
/// [`GitError::UnsafePath`] for a path that is not UTF-8 or could escape a checkout (`..`,
/// `.git`, ...): git's own checkout refuses those trees too.
pub(crate) fn list_tree(
    git: &Git,
    commit: &str,
    repository: &str,
    with_trees: bool,
) -> Result<Vec<Listed>, GitError> {
    let mut args = vec!["ls-tree", "-r", "-z", "-l", "--full-tree"];
    if with_trees {
        args.push("-t");
    }
    args.extend(["--end-of-options", commit]);
    let output = git.output(&args, None)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("Not a valid object name") || stderr.contains("not a tree object") {
            return Err(GitError::CommitNotFound {
                commit: commit.to_owned(),
                repository: repository.to_owned(),
            });
        }
        return Err(git.failure(&args, &output));
    }
    output
        .stdout
        .split(|byte| *byte == 0)
        .filter(|record| !record.is_empty())
        .map(|record| parse_record(record).unwrap_or_else(|| Err(malformed(git, &args, record))))
        .collect()
}

/// `<mode> <type> <oid> <size>\t<path>`; the size is right-aligned, `-` for trees.
fn parse_record(record: &[u8]) -> Option<Result<Listed, GitError>> {
    let tab = record.iter().position(|byte| *byte == b'\t')?;
    let meta = std::str::from_utf8(&record[..tab]).ok()?;
    let mut words = meta.split_ascii_whitespace();
    let mode = u32::from_str_radix(words.next()?, 8).ok()?;
    let _kind = words.next()?;
    let oid = words.next()?.to_owned();
    let size = match words.next()? {
        "-" => None,
        size => Some(size.parse().ok()?),
    };
    let path = match String::from_utf8(record[tab + 1..].to_vec()) {
        Ok(path) => path,
        Err(error) => {
            return Some(Err(GitError::UnsafePath {
                path: printable_bytes(error.as_bytes()),
                reason: "it is not valid UTF-8",
            }));
        }
    };
    Some(check_tree_path(&path).map(|()| Listed {
        mode,
        oid,
        size,
        path,
    }))
}

fn malformed(git: &Git, args: &[&str], record: &[u8]) -> GitError {
    GitError::Protocol {
        command: git.describe(args),
        detail: format!("cannot parse `{}`", printable_bytes(record)),
    }
}
