//! Listing a commit's tree in process, as `git ls-tree -r -l` would, checking every path on the
//! way.

use std::collections::{HashMap, HashSet};

use gix::objs::Kind;

use crate::GitError;
use crate::error::{printable, printable_bytes};
use crate::objects::parse_tree;
use crate::path::check_tree_path;
use crate::source::{EntryKind, TreeEntry};
use crate::store::{IN_PROCESS_LIMIT, Reader};

/// The most entries (files, directories, symlinks, submodules) a listing of a commit holds:
/// more than the largest repositories' checkouts (Chromium's holds about 450,000 files).
pub const MAX_TREE_ENTRIES: usize = 1_000_000;

/// The most bytes the files of a listing add up to (an export writes them all).
pub const MAX_EXPORT_BYTES: u64 = 8 << 30;

/// How many blob sizes a listing keeps at once.
const SIZES_KEPT: usize = 4096;

/// How many entries of the trees it read a listing keeps at once.
const TREE_ENTRIES_KEPT: usize = 16_384;

/// A tree's entry as [`parse_tree`] gives it: `(mode, name, oid)`.
type TreeLine = (u32, Vec<u8>, String);

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
/// [`GitError::TreeTooLarge`] past [`MAX_TREE_ENTRIES`] or [`MAX_EXPORT_BYTES`], or for a tree
/// object over [`crate::store::IN_PROCESS_LIMIT`]: the tree is refused, not read to its end.
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
    let too_large = |detail: String| GitError::TreeTooLarge {
        commit: commit.to_owned(),
        detail,
    };
    // The trees last read, by id, up to [`TREE_ENTRIES_KEPT`] entries in all: a tree named
    // under many directories (as in a tree made to look huge) is read once.
    // Kept from its second reading on: in a repository's own trees none is read twice, and
    // keeping a copy of each would double what a listing allocates.
    let mut trees: HashMap<String, Vec<TreeLine>> = HashMap::new();
    let mut read_once: HashSet<String> = HashSet::new();
    let mut kept = 0usize;
    let mut tree = |reader: &mut Reader<'_>, oid: &str| -> Result<Vec<TreeLine>, GitError> {
        if let Some(entries) = trees.get(oid) {
            return Ok(entries.clone());
        }
        if let Some((_, size)) = reader.header(oid)?
            && size > IN_PROCESS_LIMIT
        {
            return Err(too_large(format!(
                "one of its trees is {size} bytes, over the {IN_PROCESS_LIMIT} read at once"
            )));
        }
        let entries = parse_tree(reader.expect(oid, Kind::Tree)?, oid_len)?;
        if read_once.insert(oid.to_owned()) {
            return Ok(entries);
        }
        if kept + entries.len() > TREE_ENTRIES_KEPT {
            trees.clear();
            kept = 0;
        }
        if entries.len() <= TREE_ENTRIES_KEPT {
            kept += entries.len();
            trees.insert(oid.to_owned(), entries.clone());
        }
        Ok(entries)
    };
    let mut listed = Vec::new();
    let (mut seen, mut bytes) = (0usize, 0u64);
    // The sizes of the last blobs met: a blob named many times (as in a tree made to look
    // huge) is looked up once, not once per name (a loose object is a file to open).
    let mut sizes = HashMap::new();
    // Depth first without recursion, so that a hostile tree nested a million deep cannot
    // overflow the stack: (the directory's path, its entries not yet listed).
    let mut stack = vec![(String::new(), tree(reader, &root)?.into_iter())];
    while let Some((dir, entries)) = stack.last_mut() {
        let Some((mode, name, oid)) = entries.next() else {
            stack.pop();
            continue;
        };
        // Every entry walked counts, listed or on the way to `under`.
        seen += 1;
        if seen > MAX_TREE_ENTRIES {
            return Err(too_large(format!(
                "it holds more than {MAX_TREE_ENTRIES} entries"
            )));
        }
        let path = entry_path(dir, name)?;
        let wanted = path.starts_with(under);
        match mode & 0o170_000 {
            // A directory on the way down to `under` (`under` starts with `path/`).
            0o040_000 if !wanted => {
                if under.len() > path.len()
                    && under.starts_with(path.as_str())
                    && under.as_bytes()[path.len()] == b'/'
                {
                    let entries = tree(reader, &oid)?;
                    stack.push((path, entries.into_iter()));
                }
            }
            _ if !wanted => {}
            0o040_000 => {
                let entries = tree(reader, &oid)?;
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
                let size = match sizes.get(&oid) {
                    Some(size) => *size,
                    None => {
                        let size = match reader.header(&oid)? {
                            Some((Kind::Blob, size)) => size,
                            Some((kind, _)) => {
                                return Err(malformed(format!("{path} is a {kind}")));
                            }
                            None => return Err(reader.missing(format!("object {oid} of {path}"))),
                        };
                        if sizes.len() == SIZES_KEPT {
                            sizes.clear();
                        }
                        sizes.insert(oid.clone(), size);
                        size
                    }
                };
                bytes = bytes.saturating_add(size);
                if bytes > MAX_EXPORT_BYTES {
                    return Err(too_large(format!(
                        "its files add up to more than {MAX_EXPORT_BYTES} bytes"
                    )));
                }
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
