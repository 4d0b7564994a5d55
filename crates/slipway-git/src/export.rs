//! Exporting a commit's tree into a read-only directory, atomically.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, OpenOptions, Permissions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use gix::objs::Kind;

use crate::GitError;
use crate::command::Git;
use crate::listing::{Listed, list_tree};
use crate::objects::{node_for_mode, stream_objects, symlink_target};
use crate::path::{MapTree, Node, Resolved, Target, check_path, resolve};
use crate::store::{IN_PROCESS_LIMIT, Reader};

const FILE_MODE: u32 = 0o444;
const EXECUTABLE_MODE: u32 = 0o555;
const DIR_MODE: u32 = 0o555;
const WRITABLE_DIR_MODE: u32 = 0o755;

/// See [`crate::Source::export`]. Blobs are read in process, but for those over
/// [`IN_PROCESS_LIMIT`], streamed through one `git cat-file --batch` (`git`).
pub(crate) fn export(
    reader: &mut Reader<'_>,
    git: &Git,
    commit: &str,
    repository: &str,
    subdir: &str,
    dest: &Path,
) -> Result<(), GitError> {
    let subdir = subdir.trim_end_matches('/');
    let subdir = (!subdir.is_empty() && subdir != ".").then_some(subdir);
    if let Some(subdir) = subdir {
        check_path(subdir)?;
    }
    if fs::symlink_metadata(dest).is_ok() {
        // Already exported (exports only appear complete): answer from it. Its symlinks were
        // checked to stay inside when it was written, so following them here is safe.
        if let Some(subdir) = subdir
            && !dest.join(subdir).is_dir()
        {
            return Err(GitError::PathNotFound {
                commit: commit.to_owned(),
                path: subdir.to_owned(),
            });
        }
        return Ok(());
    }
    let listed = list_tree(reader, commit, repository, "", true)?;
    let mut index = IndexTree::new(&listed)?;
    index.load_targets(reader, git)?;

    if let Some(subdir) = subdir
        && !matches!(
            resolve(&mut index, subdir)?,
            Resolved::Found {
                target: Target::Dir(_),
                ..
            }
        )
    {
        return Err(GitError::PathNotFound {
            commit: commit.to_owned(),
            path: subdir.to_owned(),
        });
    }
    // Every symlink must stay inside the tree, including dangling ones.
    for entry in listed.iter().filter(|entry| is_symlink(entry)) {
        resolve(&mut index, &entry.path)?;
    }

    let parent = dest
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty());
    if let Some(parent) = parent {
        fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    let partial = Partial::create(dest)?;
    write_tree(reader, git, &listed, &index, partial.path())?;
    partial.publish(dest)
}

fn is_symlink(entry: &Listed) -> bool {
    entry.mode & 0o170_000 == 0o120_000
}

/// Writes directories and files in tree order, each directory before its content (files read
/// in process; the few too large for that streamed through one `cat-file` process at the end),
/// then symlinks: no file is ever created through a symlink this export made.
fn write_tree(
    reader: &mut Reader<'_>,
    git: &Git,
    listed: &[Listed],
    index: &IndexTree,
    root: &Path,
) -> Result<(), GitError> {
    let mut dirs = Vec::new();
    // Blobs too large to hold in memory, streamed after the others.
    let mut large = Vec::new();
    for entry in listed {
        let path = root.join(&entry.path);
        match node_for_mode(entry.mode, entry.oid.clone()) {
            Node::Tree(_) | Node::Submodule => {
                // A submodule is left as an empty directory, as `git checkout` leaves it.
                fs::create_dir(&path).map_err(io("create", &path))?;
                dirs.push(path);
            }
            Node::Blob { oid, executable } => {
                if entry.size.unwrap_or(0) > IN_PROCESS_LIMIT {
                    large.push((path, oid, executable));
                } else {
                    let mut content = reader.expect(&oid, Kind::Blob)?;
                    write_file(&path, executable, &mut content)?;
                }
            }
            Node::Symlink { .. } => {}
        }
    }
    if !large.is_empty() {
        let oids: Vec<String> = large.iter().map(|(_, oid, _)| oid.clone()).collect();
        let missing = |oid: &str| reader.missing(format!("object {oid}"));
        stream_objects(git, &oids, missing, |index, _header, content| {
            let (path, _, executable) = &large[index];
            write_file(path, *executable, content)
        })?;
    }
    for entry in listed.iter().filter(|entry| is_symlink(entry)) {
        let path = root.join(&entry.path);
        let target = index.target_text(&entry.oid);
        std::os::unix::fs::symlink(target, &path).map_err(io("create symlink", &path))?;
    }
    // Deepest first, so that each directory is still writable while its children change.
    for dir in dirs.iter().rev() {
        fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
            .map_err(io("set permissions of", dir))?;
    }
    Ok(())
}

/// Creates the file `path` (which must not exist) read-only, with `content`.
fn write_file(path: &Path, executable: bool, content: &mut dyn Read) -> Result<(), GitError> {
    let mode = if executable {
        EXECUTABLE_MODE
    } else {
        FILE_MODE
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io("create", path))?;
    std::io::copy(content, &mut file).map_err(io("write", path))?;
    // Set again: the umask may have masked bits at creation.
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(io("set permissions of", path))
}

/// Restores write permission on an export and removes it; a missing `dest` is not an error.
///
/// Exports are read-only (see [`crate::Source::export`]), so a plain `remove_dir_all` fails on
/// them. Symlinks inside are removed, never followed.
pub fn remove_export(dest: &Path) -> Result<(), GitError> {
    match fs::symlink_metadata(dest) {
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io("inspect", dest)(error)),
        Ok(metadata) if !metadata.is_dir() => fs::remove_file(dest).map_err(io("remove", dest)),
        Ok(_) => {
            make_writable(dest)?;
            fs::remove_dir_all(dest).map_err(io("remove", dest))
        }
    }
}

fn make_writable(dir: &Path) -> Result<(), GitError> {
    fs::set_permissions(dir, Permissions::from_mode(WRITABLE_DIR_MODE))
        .map_err(io("set permissions of", dir))?;
    for entry in fs::read_dir(dir).map_err(io("read", dir))? {
        let entry = entry.map_err(io("read", dir))?;
        // The type of the entry itself: a symlink to a directory is not followed.
        let file_type = entry.file_type().map_err(io("inspect", &entry.path()))?;
        if file_type.is_dir() {
            make_writable(&entry.path())?;
        }
    }
    Ok(())
}

/// A directory beside the destination, removed on drop unless published.
struct Partial {
    path: Option<PathBuf>,
}

impl Partial {
    fn create(dest: &Path) -> Result<Partial, GitError> {
        let path = partial_sibling(dest);
        fs::create_dir(&path).map_err(io("create", &path))?;
        Ok(Partial { path: Some(path) })
    }

    fn path(&self) -> &Path {
        self.path
            .as_deref()
            .expect("a partial export has a path until published")
    }

    /// Renames the partial export to `dest`, then makes its root read-only (renaming a
    /// read-only directory is refused on some systems). Another process that published the
    /// same export first wins; ours is removed.
    fn publish(mut self, dest: &Path) -> Result<(), GitError> {
        let path = self
            .path
            .take()
            .expect("a partial export is published once");
        if let Err(error) = fs::rename(&path, dest) {
            self.path = Some(path);
            if fs::symlink_metadata(dest).is_ok() {
                return Ok(());
            }
            return Err(io("rename the export into", dest)(error));
        }
        fs::set_permissions(dest, Permissions::from_mode(DIR_MODE))
            .map_err(io("set permissions of", dest))
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            // Best effort: a leftover `.partial-` directory is garbage, never mistaken for an
            // export, and the error that brought us here is the one worth reporting.
            let _ = remove_export(path);
        }
    }
}

/// A fresh name beside `dest`, hidden and unique across processes and threads:
/// `.<name>.partial-<pid>-<n>`.
pub(crate) fn partial_sibling(dest: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = dest
        .file_name()
        .map_or_else(|| "export".into(), |name| name.to_string_lossy());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    dest.with_file_name(format!(
        ".{name}.partial-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The whole tree in memory, directories identified by path.
type IndexTree = MapTree;

impl IndexTree {
    /// Indexes a listing, refusing a tree that could make a write leave the export: a path
    /// listed twice, or an entry whose parent is not a directory (a malformed tree could list
    /// `x` as a symlink and `x/file` beneath it).
    fn new(listed: &[Listed]) -> Result<IndexTree, GitError> {
        let mut entries = HashMap::with_capacity(listed.len());
        for entry in listed {
            if let Some((parent, _)) = entry.path.rsplit_once('/')
                && !matches!(entries.get(parent), Some(Node::Tree(_)))
            {
                return Err(GitError::UnsafePath {
                    path: entry.path.clone(),
                    reason: "its parent is not a directory in the tree (a malformed tree)",
                });
            }
            let node = match node_for_mode(entry.mode, entry.oid.clone()) {
                Node::Tree(_) => Node::Tree(entry.path.clone()),
                node => node,
            };
            if entries.insert(entry.path.clone(), node).is_some() {
                return Err(GitError::UnsafePath {
                    path: entry.path.clone(),
                    reason: "it appears twice in the tree (a malformed tree)",
                });
            }
        }
        Ok(IndexTree {
            entries,
            targets: HashMap::new(),
        })
    }

    /// Reads every symlink's target (a prefix of it, for absurdly long ones).
    fn load_targets(&mut self, reader: &mut Reader<'_>, git: &Git) -> Result<(), GitError> {
        let oids: BTreeSet<&String> = self
            .entries
            .values()
            .filter_map(|node| match node {
                Node::Symlink { oid } => Some(oid),
                _ => None,
            })
            .collect();
        if oids.is_empty() {
            return Ok(());
        }
        let mut targets = HashMap::with_capacity(oids.len());
        for oid in oids {
            targets.insert(oid.clone(), symlink_target(reader, git, oid)?);
        }
        self.targets = targets;
        Ok(())
    }

    /// The target of a symlink already accepted by [`resolve`] (so valid UTF-8).
    fn target_text(&self, oid: &str) -> &str {
        self.targets
            .get(oid)
            .and_then(|target| std::str::from_utf8(target).ok())
            .expect("every symlink was resolved, which checks its target, before writing")
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> GitError {
    let path = path.to_path_buf();
    move |source| GitError::Io {
        action,
        path,
        source,
    }
}
