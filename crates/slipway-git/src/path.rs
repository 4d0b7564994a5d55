//! Repository paths: which are safe, and how symlinks inside a tree resolve. Pure: the tree is
//! reached through [`TreeLookup`], backed by git objects or by an in-memory listing.

use std::collections::{HashMap, VecDeque};

use crate::GitError;
use crate::error::{printable, printable_bytes};

/// How many symlinks one resolution may go through, like a kernel's `MAXSYMLINKS`.
pub(crate) const MAX_SYMLINK_HOPS: usize = 16;

/// A symlink target longer than `PATH_MAX` is not a path.
pub(crate) const MAX_TARGET_LEN: usize = 4096;

/// Refuses a path that could name something outside the tree or be read two ways: absolute,
/// with empty, `.` or `..` components, or with a NUL.
pub(crate) fn check_path(path: &str) -> Result<(), GitError> {
    let unsafe_path = |reason| GitError::UnsafePath {
        path: printable(path),
        reason,
    };
    if path.is_empty() {
        return Err(unsafe_path("it is empty"));
    }
    if path.contains('\0') {
        return Err(unsafe_path("it contains a NUL byte"));
    }
    if path.starts_with('/') {
        return Err(unsafe_path(
            "it is absolute; give a path relative to the repository root",
        ));
    }
    for component in path.split('/') {
        match component {
            "" => {
                return Err(unsafe_path(
                    "it has an empty component (`//` or a trailing `/`)",
                ));
            }
            "." => return Err(unsafe_path("it has a `.` component")),
            ".." => return Err(unsafe_path("it has a `..` component")),
            _ => {}
        }
    }
    Ok(())
}

/// Like [`check_path`], and also refuses a `.git` component, which git itself never checks
/// out: a tree carrying one could plant repository configuration in an export.
pub(crate) fn check_tree_path(path: &str) -> Result<(), GitError> {
    check_path(path)?;
    if path
        .split('/')
        .any(|component| component.eq_ignore_ascii_case(".git"))
    {
        return Err(GitError::UnsafePath {
            path: printable(path),
            reason: "it has a `.git` component, which git never checks out",
        });
    }
    Ok(())
}

/// A tree entry, as much as resolution needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Node<D> {
    /// A directory.
    Tree(D),
    /// A file: its object id and whether it is executable.
    Blob { oid: String, executable: bool },
    /// A symlink: the object id of its target.
    Symlink { oid: String },
    /// A submodule.
    Submodule,
}

/// A whole tree in memory: nodes by path (directories identified by their path), symlink
/// targets by object id.
pub(crate) struct MapTree {
    pub(crate) entries: HashMap<String, Node<String>>,
    pub(crate) targets: HashMap<String, Vec<u8>>,
}

impl TreeLookup for MapTree {
    type Dir = String;

    fn root(&mut self) -> Result<String, GitError> {
        Ok(String::new())
    }

    fn entry(&mut self, dir: &String, name: &str) -> Result<Option<Node<String>>, GitError> {
        Ok(self.entries.get(&child_path(dir, name)).cloned())
    }

    fn symlink_target(&mut self, oid: &str) -> Result<Vec<u8>, GitError> {
        Ok(self.targets.get(oid).cloned().unwrap_or_default())
    }
}

/// The path of the entry `name` in the directory at path `dir` (`""` for the root).
fn child_path(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// Access to a tree for [`resolve`]. `Dir` identifies a directory (a tree id, or a path).
pub(crate) trait TreeLookup {
    /// How a directory is identified.
    type Dir: Clone;
    /// The root directory.
    fn root(&mut self) -> Result<Self::Dir, GitError>;
    /// The entry `name` of directory `dir`, if any.
    fn entry(&mut self, dir: &Self::Dir, name: &str) -> Result<Option<Node<Self::Dir>>, GitError>;
    /// The target of a symlink.
    fn symlink_target(&mut self, oid: &str) -> Result<Vec<u8>, GitError>;
}

/// What a resolved path leads to: never a symlink, those were followed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target<D> {
    /// A directory.
    Dir(D),
    /// A file.
    File { oid: String, executable: bool },
    /// A submodule.
    Submodule,
}

/// The outcome of [`resolve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Resolved<D> {
    /// The path leads, through symlinks inside the tree, to this entry.
    Found {
        real_path: String,
        target: Target<D>,
    },
    /// Nothing is there (the path stays inside the tree, but names nothing).
    Missing,
}

/// Follows `path` (already checked by [`check_path`]) through the tree, resolving every
/// symlink on the way physically, as the kernel would in a checkout: a `..` in a target climbs
/// out of the directory the link actually lives in.
///
/// # Guarantees
/// A target that is absolute, or whose `..` would climb above the root, is refused with
/// [`GitError::SymlinkEscapes`] naming that symlink, even when the rest of the path does not
/// exist (a dangling link must not point outside either).
pub(crate) fn resolve<T: TreeLookup>(
    tree: &mut T,
    path: &str,
) -> Result<Resolved<T::Dir>, GitError> {
    let root = tree.root()?;
    // The directories entered, from the root: (name, id).
    let mut stack: Vec<(String, T::Dir)> = Vec::new();
    // Components still to walk, each tagged with the symlink whose target it came from.
    let mut pending: VecDeque<(String, Option<usize>)> = path
        .split('/')
        .map(|component| (component.to_owned(), None))
        .collect();
    // The symlinks followed: (path, target).
    let mut links: Vec<(String, String)> = Vec::new();

    while let Some((name, origin)) = pending.pop_front() {
        match name.as_str() {
            "" | "." => continue,
            ".." => {
                if stack.pop().is_none() {
                    return Err(escape(&links, origin));
                }
                continue;
            }
            _ => {}
        }
        let dir = stack.last().map_or(&root, |(_, dir)| dir).clone();
        let Some(node) = tree.entry(&dir, &name)? else {
            return missing(stack.len(), pending, &links);
        };
        match node {
            Node::Tree(id) => stack.push((name, id)),
            Node::Symlink { oid } => {
                let link_path = join(&stack, Some(&name));
                if links.len() == MAX_SYMLINK_HOPS {
                    return Err(GitError::TooManySymlinks {
                        path: printable(path),
                        limit: MAX_SYMLINK_HOPS,
                    });
                }
                let target = tree.symlink_target(&oid)?;
                let target_text = match String::from_utf8(target) {
                    Ok(text)
                        if !text.is_empty()
                            && !text.contains('\0')
                            && text.len() <= MAX_TARGET_LEN =>
                    {
                        text
                    }
                    Ok(text) => {
                        return Err(GitError::SymlinkEscapes {
                            path: link_path,
                            target: printable(&text),
                        });
                    }
                    Err(error) => {
                        return Err(GitError::SymlinkEscapes {
                            path: link_path,
                            target: printable_bytes(error.as_bytes()),
                        });
                    }
                };
                if target_text.starts_with('/') {
                    return Err(GitError::SymlinkEscapes {
                        path: link_path,
                        target: printable(&target_text),
                    });
                }
                let index = links.len();
                for component in target_text.rsplit('/') {
                    pending.push_front((component.to_owned(), Some(index)));
                }
                links.push((link_path, target_text));
            }
            node @ (Node::Blob { .. } | Node::Submodule) => {
                if pending
                    .iter()
                    .any(|(component, _)| !component.is_empty() && component != ".")
                {
                    // A file used as a directory: nothing there.
                    return missing(stack.len() + 1, pending, &links);
                }
                let target = match node {
                    Node::Blob { oid, executable } => Target::File { oid, executable },
                    _ => Target::Submodule,
                };
                return Ok(Resolved::Found {
                    real_path: join(&stack, Some(&name)),
                    target,
                });
            }
        }
    }
    let target = Target::Dir(stack.last().map_or(root, |(_, dir)| dir.clone()));
    Ok(Resolved::Found {
        real_path: join(&stack, None),
        target,
    })
}

/// Nothing is at the path; still refuse it if the rest of a symlink target would climb above
/// the root, judged lexically from `depth` (there are no more symlinks to follow).
fn missing<D>(
    mut depth: usize,
    pending: VecDeque<(String, Option<usize>)>,
    links: &[(String, String)],
) -> Result<Resolved<D>, GitError> {
    for (component, origin) in pending {
        match component.as_str() {
            "" | "." => {}
            ".." => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return Err(escape(links, origin)),
            },
            _ => depth += 1,
        }
    }
    Ok(Resolved::Missing)
}

fn escape(links: &[(String, String)], origin: Option<usize>) -> GitError {
    let (path, target) = origin
        .and_then(|index| links.get(index))
        .cloned()
        .expect("a `..` climbing above the root comes from a symlink: paths with `..` are refused");
    GitError::SymlinkEscapes {
        path,
        target: printable(&target),
    }
}

fn join<D>(stack: &[(String, D)], last: Option<&str>) -> String {
    let mut parts: Vec<&str> = stack.iter().map(|(name, _)| name.as_str()).collect();
    parts.extend(last);
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree from `(path, node)` lines: `d` directory, `f` file, `l:target` symlink.
    struct Fixture(MapTree);

    impl Fixture {
        fn new(lines: &[(&str, &str)]) -> Fixture {
            let mut entries = HashMap::new();
            let mut targets = HashMap::new();
            for (path, kind) in lines {
                let node = match *kind {
                    "d" => Node::Tree((*path).to_owned()),
                    "f" => Node::Blob {
                        oid: (*path).to_owned(),
                        executable: false,
                    },
                    "s" => Node::Submodule,
                    link => {
                        let target = link.strip_prefix("l:").expect("fixture kind d, f, s or l:");
                        targets.insert((*path).to_owned(), target.as_bytes().to_vec());
                        Node::Symlink {
                            oid: (*path).to_owned(),
                        }
                    }
                };
                entries.insert((*path).to_owned(), node);
            }
            Fixture(MapTree { entries, targets })
        }

        fn resolve(&mut self, path: &str) -> Result<Resolved<String>, GitError> {
            resolve(&mut self.0, path)
        }
    }

    fn found(resolved: Result<Resolved<String>, GitError>) -> String {
        match resolved {
            Ok(Resolved::Found { real_path, .. }) => real_path,
            other => panic!("expected a found entry, got {other:?}"),
        }
    }

    fn escapes(resolved: Result<Resolved<String>, GitError>) -> (String, String) {
        match resolved {
            Err(GitError::SymlinkEscapes { path, target }) => (path, target),
            other => panic!("expected an escaping symlink, got {other:?}"),
        }
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for path in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            "./a",
            "a//b",
            "a/",
            "a\0b",
        ] {
            assert!(
                matches!(check_path(path), Err(GitError::UnsafePath { .. })),
                "`{}` must be refused",
                path.escape_debug()
            );
        }
        for path in ["a", "a/b.txt", "..a/b..", ".hidden/x", "ünï/☃"] {
            assert!(check_path(path).is_ok(), "`{path}` is a fine path");
        }
        assert!(
            matches!(
                check_tree_path("sub/.GIT/config"),
                Err(GitError::UnsafePath { .. })
            ),
            "a .git component in a tree is refused, in any case"
        );
    }

    #[test]
    fn symlinks_inside_the_tree_are_followed_physically() {
        let mut tree = Fixture::new(&[
            ("etc", "d"),
            ("etc/app.toml", "f"),
            ("link", "l:etc/app.toml"),
            ("dirlink", "l:etc"),
            ("sub", "d"),
            ("sub/up", "l:.."),
            ("sub/chain", "l:../link"),
            ("sub/dots", "l:./../etc/./app.toml"),
        ]);
        for (path, target, what) in [
            ("link", "etc/app.toml", "a file link"),
            ("dirlink/app.toml", "etc/app.toml", "a directory link"),
            ("sub/up/etc/app.toml", "etc/app.toml", "`..` to the root"),
            ("sub/chain", "etc/app.toml", "a chain of links"),
            ("sub/dots", "etc/app.toml", "`.` components in targets"),
            ("dirlink", "etc", "a link to a directory"),
        ] {
            assert_eq!(found(tree.resolve(path)), target, "{what}");
        }
        for (path, what) in [
            ("etc/nope", "missing file"),
            ("etc/app.toml/x", "a file used as a directory is missing"),
        ] {
            assert_eq!(tree.resolve(path).ok(), Some(Resolved::Missing), "{what}");
        }
    }

    #[test]
    fn symlinks_leaving_the_tree_are_refused() {
        let mut tree = Fixture::new(&[
            ("abs", "l:/etc/passwd"),
            ("sub", "d"),
            ("sub/rel", "l:../../etc/passwd"),
            ("sub/up", "l:.."),
            // Lexically `sub/up/..` is `sub`, but `sub/up` is the root, so this climbs out.
            ("sneaky", "l:sub/up/../x"),
            ("dangling", "l:nothing/../../x"),
            ("via", "l:sub/rel"),
        ]);
        assert_eq!(
            escapes(tree.resolve("abs")),
            ("abs".into(), "/etc/passwd".into())
        );
        assert_eq!(
            escapes(tree.resolve("sub/rel")),
            ("sub/rel".into(), "../../etc/passwd".into())
        );
        assert_eq!(
            escapes(tree.resolve("sneaky")).0,
            "sneaky",
            "physical, not lexical"
        );
        assert_eq!(
            escapes(tree.resolve("dangling")).0,
            "dangling",
            "a dangling link may not point outside either"
        );
        assert_eq!(
            escapes(tree.resolve("via")).0,
            "sub/rel",
            "the error names the link that escapes"
        );
    }

    #[test]
    fn symlink_loops_stop_after_the_hop_limit() {
        let mut tree = Fixture::new(&[("a", "l:b"), ("b", "l:a"), ("self", "l:self/x")]);
        for path in ["a", "self"] {
            assert!(
                matches!(
                    tree.resolve(path),
                    Err(GitError::TooManySymlinks {
                        limit: MAX_SYMLINK_HOPS,
                        ..
                    })
                ),
                "a loop through `{path}` ends with an error, not a hang"
            );
        }
    }

    #[test]
    fn odd_symlink_targets_are_refused() {
        let mut tree = Fixture::new(&[("empty", "l:"), ("nul", "l:a\0b")]);
        for path in ["empty", "nul"] {
            assert!(
                matches!(tree.resolve(path), Err(GitError::SymlinkEscapes { .. })),
                "an empty or NUL-bearing target through `{path}` is refused"
            );
        }
    }
}
