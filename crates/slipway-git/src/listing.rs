//! Listing a commit's tree in process, as `git ls-tree -r -l` would, checking every path on the
//! way.

use gix::objs::Kind;

use crate::GitError;
use crate::error::{printable, printable_bytes};
use crate::objects::parse_tree;
use crate::path::check_tree_path;
use crate::source::{EntryKind, TreeEntry};
use crate::store::Reader;

/// One entry of a listing, as `git ls-tree -r -l [-t]` prints it.
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

/// Every entry of the tree at `commit` (an already-checked commit id) whose path starts with
/// `under` (`""` for all; a folder ends with `/`), recursively, in git's tree order (`git
/// ls-tree -r -l`); with `with_trees`, directories too, each listed before its content (`-t`).
/// Sizes come from object headers: no blob is read, and only the trees on the way to `under`
/// and beneath it are.
///
/// # Errors
/// [`GitError::CommitNotFound`] when `commit` is absent or not a commit;
/// [`GitError::UnsafePath`] for a path that is not UTF-8 or could escape a checkout (`..`,
/// `.git`, an entry name with a `/`, ...): git's own checkout refuses those trees too.
pub(crate) fn list_tree(
    reader: &mut Reader<'_>,
    commit: &str,
    repository: &str,
    under: &str,
    with_trees: bool,
) -> Result<Vec<Listed>, GitError> {
    let root = reader
        .commit(commit)?
        .ok_or_else(|| GitError::CommitNotFound {
            commit: commit.to_owned(),
            repository: repository.to_owned(),
        })?
        .tree;
    let oid_len = reader.oid_len();
    let mut listed = Vec::new();
    // Depth first without recursion, so that a hostile tree nested a million deep cannot
    // overflow the stack: (the directory's path, its entries not yet listed).
    let mut stack = vec![(
        String::new(),
        parse_tree(reader.expect(&root, Kind::Tree)?, oid_len)?.into_iter(),
    )];
    while let Some((dir, entries)) = stack.last_mut() {
        let Some((mode, name, oid)) = entries.next() else {
            stack.pop();
            continue;
        };
        let path = entry_path(dir, name)?;
        let wanted = path.starts_with(under);
        match mode & 0o170_000 {
            // A directory on the way down to `under` (`under` starts with `path/`).
            0o040_000 if !wanted => {
                if under.len() > path.len()
                    && under.starts_with(path.as_str())
                    && under.as_bytes()[path.len()] == b'/'
                {
                    let entries = parse_tree(reader.expect(&oid, Kind::Tree)?, oid_len)?;
                    stack.push((path, entries.into_iter()));
                }
            }
            _ if !wanted => {}
            0o040_000 => {
                let entries = parse_tree(reader.expect(&oid, Kind::Tree)?, oid_len)?;
                if with_trees {
                    listed.push(Listed {
                        mode,
                        oid,
                        size: None,
                        path: path.clone(),
                    });
                }
                stack.push((path, entries.into_iter()));
            }
            0o160_000 => listed.push(Listed {
                mode,
                oid,
                size: None,
                path,
            }),
            _ => {
                let size = match reader.header(&oid)? {
                    Some((Kind::Blob, size)) => size,
                    Some((kind, _)) => return Err(malformed(format!("{path} is a {kind}"))),
                    None => return Err(reader.missing(format!("object {oid} of {path}"))),
                };
                listed.push(Listed {
                    mode,
                    oid,
                    size: Some(size),
                    path,
                });
            }
        }
    }
    Ok(listed)
}

/// `dir/name`, checked as a path a checkout could write.
fn entry_path(dir: &str, name: Vec<u8>) -> Result<String, GitError> {
    let name = String::from_utf8(name).map_err(|error| GitError::UnsafePath {
        path: printable_bytes(error.as_bytes()),
        reason: "it is not valid UTF-8",
    })?;
    if name.contains('/') {
        return Err(GitError::UnsafePath {
            path: printable(&name),
            reason: "a tree entry's name holds a `/` (a malformed tree)",
        });
    }
    let path = if dir.is_empty() {
        name
    } else {
        format!("{dir}/{name}")
    };
    check_tree_path(&path)?;
    Ok(path)
}

fn malformed(detail: String) -> GitError {
    GitError::Protocol {
        command: "ls-tree".to_owned(),
        detail,
    }
}
