//! Whether git tracks files in a directory of a work tree: a checkout replaces what it
//! tracks, ignored files included.

use std::path::{Path, PathBuf};

use crate::command::Git;

/// A file git tracks under a directory (see [`tracked_under`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracked {
    /// The top of the work tree that holds the directory.
    pub work_tree: PathBuf,
    /// The first file git tracks under the directory, relative to `work_tree`.
    pub file: String,
}

/// The first file the index of the work tree around `dir` tracks under `dir`, if any.
///
/// A checkout writes every file the branch it checks out tracks, over an ignored file of the
/// same name: whoever can push a branch decides the content of such a file in the work tree of
/// anyone who checks it out. `None` when `dir` is in no work tree, when git tracks nothing
/// under it, and when git cannot tell (not installed, a repository it refuses to read): a
/// branch decides none of these.
///
/// It runs git only when a `.git` sits in `dir` or one of its parents: a directory outside
/// any work tree costs a few `stat`s.
#[must_use]
pub fn tracked_under(dir: &Path) -> Option<Tracked> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let work_tree = dir
        .ancestors()
        .find(|candidate| std::fs::symlink_metadata(candidate.join(".git")).is_ok())?
        .to_path_buf();
    let inside = dir.strip_prefix(&work_tree).ok()?;
    let mut pathspec = std::ffi::OsString::from(":(literal)");
    if inside.as_os_str().is_empty() {
        pathspec.push(".");
    } else {
        pathspec.push(inside);
    }
    let git = Git::unbound();
    let args = [
        std::ffi::OsStr::new("ls-files"),
        std::ffi::OsStr::new("-z"),
        std::ffi::OsStr::new("--cached"),
        std::ffi::OsStr::new("--"),
        &pathspec,
    ];
    let output = git.output(args, Some(&work_tree)).ok()?;
    if !output.status.success() {
        return None;
    }
    let first = output.stdout.split(|byte| *byte == 0).next()?;
    if first.is_empty() {
        return None;
    }
    Some(Tracked {
        work_tree,
        file: String::from_utf8_lossy(first).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_testkit::git::git;

    #[test]
    fn a_directory_a_branch_commits_files_into_is_tracked() {
        let repo = tempfile::tempdir().unwrap();
        let root = repo.path();
        git(root, &["init", "-q"]);
        std::fs::write(root.join(".gitignore"), ".slipway/\n").unwrap();
        std::fs::create_dir_all(root.join(".slipway")).unwrap();
        std::fs::write(root.join(".slipway/state.db"), "the operator's").unwrap();
        git(root, &["add", ".gitignore"]);
        git(root, &["commit", "-qm", "base"]);
        // Ignored and untracked: a checkout leaves it alone unless a branch tracks it.
        assert_eq!(tracked_under(&root.join(".slipway")), None);
        assert_eq!(tracked_under(&root.join(".slipway/none")), None);

        // A branch that commits the file (forced past the ignore) and is checked out.
        git(root, &["checkout", "-qb", "hostile"]);
        std::fs::write(root.join(".slipway/state.db"), "the attacker's").unwrap();
        git(root, &["add", "-f", ".slipway/state.db"]);
        git(root, &["commit", "-qm", "take the state"]);
        let tracked = tracked_under(&root.join(".slipway")).expect("tracked");
        assert_eq!(tracked.file, ".slipway/state.db");
        assert_eq!(
            tracked.work_tree,
            std::fs::canonicalize(root).unwrap(),
            "the work tree's top"
        );
        // A home that is the work tree's top, or reached through a symlink, is looked at too.
        assert!(tracked_under(root).is_some());
        let link = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(root.join(".slipway"), link.path().join("home")).unwrap();
        assert!(tracked_under(&link.path().join("home")).is_some());
    }

    #[test]
    fn a_name_with_pathspec_magic_is_taken_literally() {
        let repo = tempfile::tempdir().unwrap();
        let root = repo.path();
        git(root, &["init", "-q"]);
        std::fs::create_dir_all(root.join("*")).unwrap();
        std::fs::write(root.join("tracked.txt"), "x").unwrap();
        git(root, &["add", "tracked.txt"]);
        git(root, &["commit", "-qm", "base"]);
        // `*` as a pathspec would match `tracked.txt`.
        assert_eq!(tracked_under(&root.join("*")), None);
    }

    #[test]
    fn outside_any_work_tree_nothing_is_tracked() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(tracked_under(dir.path()), None);
    }
}
