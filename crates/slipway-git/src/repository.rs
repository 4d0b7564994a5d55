//! [`GitRepository`]: the [`Source`] backed by the `git` CLI.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::GitError;
use crate::command::Git;
use crate::error::{printable, printable_bytes};
use crate::export::{export, partial_sibling};
use crate::listing::list_tree;
use crate::objects::{ObjectReader, ObjectTree};
use crate::path::{Resolved, Target, check_path, resolve};
use crate::source::{Branch, Commit, Source, TreeEntry};
use crate::spec::{self, Location, RemoteUrl};

/// A repository read through the `git` CLI: a local work tree or bare repository, read live,
/// or a mirror of a remote kept in a cache directory.
///
/// # Assumptions
/// `git` 2.30 or newer is on `PATH` (for `--end-of-options` in `rev-parse`). The user's global
/// git configuration is honoured (credentials, ssh settings) but the system one is not, and
/// hooks, filesystem monitors and protocols other than file, https and ssh are disabled on
/// every command line.
///
/// # Caveats
/// A network fetch has no timeout of its own: configure ssh (`ServerAliveInterval`) or
/// `http.lowSpeedLimit` in the user's git configuration. Credentials in a URL end up in the
/// mirror's configuration on disk: prefer a credential helper.
#[derive(Debug)]
pub struct GitRepository {
    git: Git,
    location: String,
    mirror: Option<RemoteUrl>,
    work_tree: Option<PathBuf>,
    /// One fetch at a time per repository in this process: concurrent fetches fight over ref
    /// locks.
    fetch_lock: Mutex<()>,
}

impl GitRepository {
    /// Opens `spec`: a local path (a work tree, a directory inside one, or a bare repository),
    /// or a `file://`, `https://` or `ssh://` URL or scp-like `user@host:path`, which is
    /// mirrored into `cache_dir` (cloned on first use, reused after; see
    /// [`Source::fetch`]).
    ///
    /// # Errors
    /// [`GitError::UnsupportedSpec`] for other schemes (`ext::`, `git://`, ...) or a spec
    /// starting with `-`; [`GitError::NotARepository`] for a path outside any repository;
    /// [`GitError::Remote`] when the first clone fails.
    pub fn open(spec: &str, cache_dir: &Path) -> Result<GitRepository, GitError> {
        match spec::parse(spec)? {
            Location::Local(path) => GitRepository::open_local(&path),
            Location::Remote(remote) => GitRepository::open_mirror(remote, cache_dir),
        }
    }

    fn open_local(path: &Path) -> Result<GitRepository, GitError> {
        let not_a_repository = |detail: String| GitError::NotARepository {
            path: path.to_path_buf(),
            detail,
        };
        if !path.is_dir() {
            return Err(not_a_repository("no such directory".to_owned()));
        }
        let unbound = Git::unbound();
        let args = ["rev-parse", "--absolute-git-dir", "--is-bare-repository"];
        let output = unbound.output(args, Some(path))?;
        if !output.status.success() {
            return Err(not_a_repository(unbound.stderr(&output.stderr)));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let mut lines = stdout.lines();
        let (Some(git_dir), Some(bare)) = (lines.next(), lines.next()) else {
            return Err(GitError::Protocol {
                command: unbound.describe(args),
                detail: format!("expected two lines, got `{}`", printable(&stdout)),
            });
        };
        let git = Git::bound(PathBuf::from(git_dir));
        let work_tree = if bare == "true" {
            None
        } else {
            // Unbound: with `--git-dir`, git would take the current directory as the top.
            let top = unbound.output(["rev-parse", "--show-toplevel"], Some(path))?;
            top.status.success().then(|| {
                PathBuf::from(String::from_utf8_lossy(top.stdout.trim_ascii()).into_owned())
            })
        };
        Ok(GitRepository {
            git,
            location: path.display().to_string(),
            mirror: None,
            work_tree,
            fetch_lock: Mutex::new(()),
        })
    }

    fn open_mirror(remote: RemoteUrl, cache_dir: &Path) -> Result<GitRepository, GitError> {
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| GitError::Io {
                action,
                path,
                source,
            }
        };
        std::fs::create_dir_all(cache_dir).map_err(io("create", cache_dir))?;
        let cache_dir = cache_dir.canonicalize().map_err(io("resolve", cache_dir))?;
        let dir = cache_dir.join(spec::mirror_name(&remote));
        if !dir.is_dir() {
            // Clone beside it, then rename: a killed clone never looks like a mirror.
            let partial = partial_sibling(&dir);
            let git = Git::unbound().redacting(&remote.url, &remote.redacted);
            let mut args = vec![
                "clone".as_ref(),
                "--mirror".as_ref(),
                "--quiet".as_ref(),
                // No template: nothing (hooks included) is copied into the mirror.
                "--template=".as_ref(),
                "--".as_ref(),
            ];
            args.push(std::ffi::OsStr::new(&remote.url));
            args.push(partial.as_os_str());
            let output = git.output(&args, None)?;
            if !output.status.success() {
                let _ = std::fs::remove_dir_all(&partial);
                return Err(GitError::Remote {
                    action: "clone",
                    url: remote.redacted.clone(),
                    stderr: git.stderr(&output.stderr),
                });
            }
            if let Err(error) = std::fs::rename(&partial, &dir) {
                let _ = std::fs::remove_dir_all(&partial);
                // Another process cloned the same remote first: use its mirror.
                if !dir.is_dir() {
                    return Err(io("rename the mirror into", &dir)(error));
                }
            }
        }
        Ok(GitRepository {
            git: Git::bound(dir).redacting(&remote.url, &remote.redacted),
            location: remote.redacted.clone(),
            mirror: Some(remote),
            work_tree: None,
            fetch_lock: Mutex::new(()),
        })
    }

    /// The repository's git directory (the mirror, for a remote).
    pub fn git_dir(&self) -> &Path {
        self.git
            .git_dir()
            .expect("an opened repository is bound to its git directory")
    }

    /// The top of the work tree, for a local non-bare repository.
    pub fn work_tree(&self) -> Option<&Path> {
        self.work_tree.as_deref()
    }

    /// Whether this is a mirror of a remote (refreshed by [`Source::fetch`]).
    pub fn is_mirror(&self) -> bool {
        self.mirror.is_some()
    }

    /// The repository for messages: the path, or the URL with credentials redacted.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// `Some(commit id)`, `None` when the reference names no commit.
    fn rev_parse(&self, reference: &str) -> Result<Option<String>, GitError> {
        let revision = format!("{reference}^{{commit}}");
        let args = [
            "rev-parse",
            "--verify",
            "--end-of-options",
            revision.as_str(),
        ];
        let output = self.git.output(args, None)?;
        if output.status.success() {
            let sha = String::from_utf8_lossy(output.stdout.trim_ascii()).into_owned();
            check_commit(&sha).map_err(|_| GitError::Protocol {
                command: self.git.describe(args),
                detail: format!("expected a commit id, got `{}`", printable(&sha)),
            })?;
            return Ok(Some(sha));
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("is ambiguous") {
            return Err(GitError::AmbiguousReference {
                reference: reference.to_owned(),
                repository: self.location.clone(),
                detail: "use more hex digits or the full commit id".to_owned(),
            });
        }
        if stderr.contains("Needed a single revision") {
            return Ok(None);
        }
        Err(self.git.failure(args, &output))
    }

    fn commit_info(&self, sha: &str) -> Result<Commit, GitError> {
        let args = [
            "log",
            "-1",
            "--no-show-signature",
            "--format=%H%x00%ct%x00%an <%ae>%x00%s",
            "--end-of-options",
            sha,
            "--",
        ];
        let stdout = self.git.run(args)?;
        let text = String::from_utf8_lossy(stdout.trim_ascii_end());
        let mut fields = text.splitn(4, '\0');
        let parsed = (|| {
            let sha = fields.next()?.to_owned();
            let time = fields.next()?.parse().ok()?;
            let author = fields.next()?.to_owned();
            let summary = fields.next()?.to_owned();
            Some(Commit {
                sha,
                summary,
                author,
                time,
            })
        })();
        parsed.ok_or_else(|| GitError::Protocol {
            command: self.git.describe(args),
            detail: format!("cannot parse `{}`", printable_bytes(&stdout)),
        })
    }

    /// Those of `refnames` (full ref names) that exist, exactly (not by prefix), in the
    /// order given, each with the object it points at (a tag's, peeled once).
    fn existing_refs(&self, refnames: &[String]) -> Result<Vec<(String, String)>, GitError> {
        let mut args = vec![
            "for-each-ref".to_owned(),
            "--format=%(objectname) %(*objectname) %(refname)".to_owned(),
        ];
        args.extend(refnames.iter().cloned());
        let stdout = self.git.run(&args)?;
        let text = String::from_utf8_lossy(&stdout);
        let found: Vec<(String, String)> = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.splitn(3, ' ');
                let (object, peeled, refname) = (fields.next()?, fields.next()?, fields.next()?);
                let target = if peeled.is_empty() { object } else { peeled };
                Some((refname.to_owned(), target.to_owned()))
            })
            .collect();
        Ok(refnames
            .iter()
            .filter_map(|wanted| found.iter().find(|(refname, _)| refname == wanted).cloned())
            .collect())
    }

    /// The one ref `name` stands for, as a full ref name, or `None` when no ref has that name
    /// (git then reads it as a commit id, or `HEAD`). Git's own rules (`git help revisions`)
    /// take the first of `refs/<name>`, `refs/tags/<name>`, `refs/heads/<name>`, ... and only
    /// warn when several exist: a tag `main` would win over the branch `main`, and a branch
    /// named like an abbreviated commit id over the commit. Several is an error here.
    fn named_ref(&self, name: &str) -> Result<Option<String>, GitError> {
        if !is_plain_ref_name(name) || is_root_ref(name) || is_full_commit_id(name) {
            // A full commit id is always the commit (git reads it so too); `HEAD` is the
            // repository's own, which no push can create.
            return Ok(None);
        }
        let mut candidates = Vec::new();
        if name.starts_with("refs/") {
            let exact = self.existing_refs(&[name.to_owned()])?;
            if !exact.is_empty() {
                return Ok(Some(name.to_owned()));
            }
        }
        for rule in ["refs/", "refs/tags/", "refs/heads/", "refs/remotes/"] {
            candidates.push(format!("{rule}{name}"));
        }
        candidates.push(format!("refs/remotes/{name}/HEAD"));
        if self.is_mirror()
            && let Some(branch) = name.strip_prefix("origin/")
            && !branch.is_empty()
        {
            // In a mirror, the remote's branches are local branches: `origin/main` is the
            // name a person would use in their own clone.
            candidates.push(format!("refs/heads/{branch}"));
        }
        let found = self.existing_refs(&candidates)?;
        let Some((first, target)) = found.first() else {
            return Ok(None);
        };
        let mut named: Vec<String> = found
            .iter()
            .filter(|(_, t)| t != target)
            .map(|(refname, t)| format!("`{refname}` ({})", &t[..12.min(t.len())]))
            .collect();
        if name.len() >= 4 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            // A branch or tag named like an abbreviated commit id, and such a commit.
            let commit = self.rev_parse(target)?;
            for object in self.objects_with_prefix(name)? {
                if let Some(other) = self.rev_parse(&object)?
                    && Some(&other) != commit.as_ref()
                {
                    named.push(format!("commit {}", &other[..12]));
                }
            }
        }
        if named.is_empty() {
            return Ok(Some(first.clone()));
        }
        named.insert(
            0,
            format!("`{first}` ({})", &target[..12.min(target.len())]),
        );
        Err(GitError::AmbiguousReference {
            reference: printable(name),
            repository: self.location.clone(),
            detail: format!(
                "it names {}; name one in full (`{first}`) or give the commit id",
                named.join(" and ")
            ),
        })
    }

    /// The full ids of the objects whose id starts with `prefix` (hex, 4 digits or more).
    fn objects_with_prefix(&self, prefix: &str) -> Result<Vec<String>, GitError> {
        let argument = format!("--disambiguate={prefix}");
        let output = self.git.output(["rev-parse", argument.as_str()], None)?;
        // No object with that prefix: git says so and exits non-zero.
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|id| is_full_commit_id(id))
            .map(str::to_owned)
            .collect())
    }

    /// The commit at the tip of branch `name` (`refs/heads/<name>`; in a mirror, the remote's
    /// branch, also when named `origin/<name>`), or `None` when there is no such branch.
    fn branch_tip(&self, name: &str) -> Result<Option<String>, GitError> {
        if !is_plain_ref_name(name) || is_root_ref(name) || name.starts_with("refs/") {
            return Ok(None);
        }
        let mut candidates = Vec::new();
        if self.is_mirror()
            && let Some(branch) = name.strip_prefix("origin/")
            && !branch.is_empty()
        {
            candidates.push(format!("refs/heads/{branch}"));
        }
        candidates.push(format!("refs/heads/{name}"));
        match self.existing_refs(&candidates)?.into_iter().next() {
            // The object id, not the name: nothing else named like it can be read instead.
            Some((_, target)) => self.rev_parse(&target),
            None => Ok(None),
        }
    }
}

/// Whether `name` could be a ref name as it is (no revision suffix, no glob character).
fn is_plain_ref_name(name: &str) -> bool {
    !name.is_empty()
        && name != "@"
        && !name.contains("@{")
        && !name.contains(['^', '~', '*', '?', '[', '\\'])
        && !name.ends_with('/')
        && !name.ends_with(".lock")
}

/// `HEAD`, `FETCH_HEAD`, ...: files of the repository itself, which git reads first.
fn is_root_ref(name: &str) -> bool {
    (name == "HEAD" || name.ends_with("_HEAD"))
        && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
}

fn is_full_commit_id(name: &str) -> bool {
    check_commit(name).is_ok()
}

impl Source for GitRepository {
    fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Result<bool, GitError> {
        check_commit(ancestor)?;
        check_commit(descendant)?;
        let args = [
            "merge-base",
            "--is-ancestor",
            "--end-of-options",
            ancestor,
            descendant,
        ];
        let output = self.git.output(args, None)?;
        match output.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(self.git.failure(args, &output)),
        }
    }

    fn resolve(&self, reference: &str) -> Result<Commit, GitError> {
        check_reference(reference)?;
        // The name before any revision suffix (`main~1`, `v1^{commit}`) must name one ref.
        let end = reference.find(['^', '~']).unwrap_or(reference.len());
        let (name, suffix) = reference.split_at(end);
        let sha = match self.named_ref(name)? {
            // Its full name: git's first rule reads exactly that ref.
            Some(refname) => self.rev_parse(&format!("{refname}{suffix}"))?,
            None => self.rev_parse(reference)?,
        };
        match sha {
            Some(sha) => self.commit_info(&sha),
            None => Err(GitError::ReferenceNotFound {
                reference: reference.to_owned(),
                repository: self.location.clone(),
            }),
        }
    }

    fn resolve_tracked(&self, reference: &str) -> Result<Commit, GitError> {
        check_reference(reference)?;
        match self.branch_tip(reference)? {
            Some(sha) => self.commit_info(&sha),
            None => self.resolve(reference),
        }
    }

    fn read_file(&self, commit: &str, path: &str, limit: u64) -> Result<Option<Vec<u8>>, GitError> {
        check_commit(commit)?;
        check_path(path)?;
        let mut reader = ObjectReader::start(&self.git)?;
        let mut tree = ObjectTree {
            reader: &mut reader,
            commit,
            repository: &self.location,
            trees: HashMap::new(),
        };
        let (oid, real_path) = match resolve(&mut tree, path)? {
            Resolved::Missing => return Ok(None),
            Resolved::Found {
                target: Target::File { oid, .. },
                real_path,
            } => (oid, real_path),
            Resolved::Found {
                target: Target::Dir(_),
                ..
            } => {
                return Err(GitError::NotAFile {
                    path: path.to_owned(),
                    kind: "directory",
                });
            }
            Resolved::Found {
                target: Target::Submodule,
                ..
            } => {
                return Err(GitError::NotAFile {
                    path: path.to_owned(),
                    kind: "submodule",
                });
            }
        };
        let header = reader.request(&oid)?.ok_or_else(|| GitError::Protocol {
            command: "cat-file --batch".to_owned(),
            detail: format!("object {oid} of {real_path} is missing from the repository"),
        })?;
        if header.size > limit {
            // Dropping the reader kills git: the content is never read.
            return Err(GitError::TooLarge {
                path: path.to_owned(),
                size: header.size,
                limit,
            });
        }
        reader.body(&header).map(Some)
    }

    fn list_files(&self, commit: &str) -> Result<Vec<TreeEntry>, GitError> {
        check_commit(commit)?;
        Ok(list_tree(&self.git, commit, &self.location, false)?
            .iter()
            .filter_map(|entry| entry.tree_entry())
            .collect())
    }

    fn export(&self, commit: &str, subdir: &str, dest: &Path) -> Result<(), GitError> {
        check_commit(commit)?;
        export(&self.git, commit, &self.location, subdir, dest)
    }

    fn branches(&self) -> Result<Vec<Branch>, GitError> {
        let stdout = self.git.run([
            "for-each-ref",
            "--format=%(objectname) %(refname)",
            "refs/heads/",
        ])?;
        let text = String::from_utf8_lossy(&stdout);
        let mut branches: Vec<Branch> = text
            .lines()
            .filter_map(|line| {
                let (sha, refname) = line.split_once(' ')?;
                let name = refname.strip_prefix("refs/heads/")?;
                (sha.len() == 40 && !name.is_empty()).then(|| Branch {
                    name: name.to_owned(),
                    sha: sha.to_owned(),
                })
            })
            .collect();
        branches.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(branches)
    }

    fn fetch(&self) -> Result<(), GitError> {
        let Some(remote) = &self.mirror else {
            return Ok(());
        };
        let _one_at_a_time = self
            .fetch_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The mirror's refspec (`+refs/*:refs/*`) was set by `clone --mirror`.
        let output = self
            .git
            .output(["fetch", "--prune", "--quiet", "origin"], None)?;
        if output.status.success() {
            Ok(())
        } else {
            Err(GitError::Remote {
                action: "fetch",
                url: remote.redacted.clone(),
                stderr: self.git.stderr(&output.stderr),
            })
        }
    }
}

/// Refuses a reference git could read as an option or as something other than one revision.
fn check_reference(reference: &str) -> Result<(), GitError> {
    let invalid = |reason| GitError::InvalidReference {
        reference: printable(reference),
        reason,
    };
    if reference.is_empty() {
        return Err(invalid("it is empty"));
    }
    if reference.len() > 1024 {
        return Err(invalid("it is longer than 1024 bytes"));
    }
    if reference.starts_with('-') {
        return Err(invalid(
            "it starts with `-` and git would read it as an option",
        ));
    }
    if reference
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(invalid("it contains whitespace or control characters"));
    }
    if reference.contains(':') {
        // `rev:path` names a file and `:/text` searches commit messages.
        return Err(invalid("it contains `:`, which no branch or tag name may"));
    }
    if reference.contains("..") {
        return Err(invalid("it contains `..`, a range rather than one commit"));
    }
    Ok(())
}

/// Refuses anything but a full lowercase commit id (SHA-1 or SHA-256).
fn check_commit(commit: &str) -> Result<(), GitError> {
    let hex = commit
        .bytes()
        .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
    if hex && (commit.len() == 40 || commit.len() == 64) {
        Ok(())
    } else {
        Err(GitError::InvalidCommit {
            commit: printable(commit),
        })
    }
}
