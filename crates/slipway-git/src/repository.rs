//! [`GitRepository`]: the [`Source`] read in process, with the `git` CLI for the network.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use gix::objs::Kind;

use crate::GitError;
use crate::command::Git;
use crate::error::printable;
use crate::export::{export, partial_sibling};
use crate::listing::list_tree;
use crate::objects::ObjectTree;
use crate::path::{Resolved, Target, check_path, resolve};
use crate::source::{Branch, Commit, Source, TreeEntry};
use crate::spec::{self, Location, RemoteUrl};
use crate::store::{Reader, Store};

/// A repository: a local work tree or bare repository, read live, or a mirror of a remote kept
/// in a cache directory.
///
/// References, commits, trees and files are read in process ([`crate::store`]): no `git`
/// process per read. The `git` CLI clones and fetches mirrors (credentials, the network), and
/// answers the rare questions read in process would have to reimplement: `merge-base
/// --is-ancestor`, revision syntax beyond `~N`, `^N` and `^{commit}`, and streaming blobs too
/// large to hold in memory into an export.
///
/// # Assumptions
/// `git` 2.30 or newer is on `PATH` (for `--end-of-options` in `rev-parse`). The user's global
/// git configuration is honoured by the CLI (credentials, ssh settings) but the system one is
/// not, and hooks, filesystem monitors and protocols other than file, https and ssh are
/// disabled on every command line. Reading in process takes the repository's own configuration
/// only, and runs nothing.
///
/// # Caveats
/// An https fetch that stalls (under 1 KiB/s for a minute) fails; an ssh one has no timeout
/// of its own: configure ssh (`ServerAliveInterval`) in the user's ssh configuration. Credentials in an https URL are given
/// to git as an `Authorization` header in its environment, never as an argument nor in the
/// mirror's configuration; they still sit wherever the URL was written: prefer a credential
/// helper.
#[derive(Debug)]
pub struct GitRepository {
    git: Git,
    /// The repository's files, read in process.
    store: Store,
    location: String,
    mirror: Option<RemoteUrl>,
    work_tree: Option<PathBuf>,
    /// One fetch at a time per repository in this process (concurrent fetches fight over ref
    /// locks), shared by the callers that waited for it: see [`Fetches`].
    fetches: Fetches,
}

/// The fetches of a mirror, so that callers asking at once share one. A caller needs a fetch
/// that began after it asked (what was pushed before it asked is then there): one that began
/// while the caller waited for the one before it, and succeeded, serves it; after a failure
/// the next caller tries again. Without this, every reconcile a person triggers and every
/// pull-request command fetched in turn: at 10,000 branches a fetch with nothing new takes
/// some 0.4 s here, so ten at once took four.
#[derive(Debug, Default)]
struct Fetches {
    /// How many fetches have begun.
    begun: std::sync::atomic::AtomicU64,
    /// Held while one runs: the number of the last one that succeeded.
    succeeded: Mutex<u64>,
    /// How many reads have begun waiting in [`Fetches::settle`]: what a test waits on before
    /// the fetch it plays writes what they missed.
    #[cfg(test)]
    settling: std::sync::atomic::AtomicU64,
}

/// How long a read that missed an object waits for the fetch under way ([`Fetches::settle`]):
/// a fetch that hangs on the network must not hold every read of a damaged mirror.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Fetches {
    /// Returns once no fetch of this process runs in the repository (at once when none does),
    /// or after [`SETTLE_WAIT`]: every object the last one brought is written then.
    fn settle(&self) {
        #[cfg(test)]
        self.settling
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let deadline = std::time::Instant::now() + SETTLE_WAIT;
        loop {
            match self.succeeded.try_lock() {
                Ok(_) | Err(std::sync::TryLockError::Poisoned(_)) => return,
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
            if std::time::Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl GitRepository {
    /// `read` of a commit's files, done again once the fetch this process is running in the
    /// mirror ends, when it found one of the commit's objects missing.
    ///
    /// Git writes the objects a fetch brings one at a time (the commit before its tree) and
    /// moves the refs last. A commit named from elsewhere (a webhook's or the forge's head,
    /// which the controller reads at once) can so be found while its tree is not written yet:
    /// such a read failed and, cached with the commit, kept failing (a CI run saw a pull
    /// request's head "not validate" for good). Waiting for the fetch that brings it is what
    /// makes the object there (waited for up to [`SETTLE_WAIT`]); a read that still misses one
    /// says so ([`GitError::MissingObject`], which callers try again later).
    fn settled<T>(&self, read: impl FnMut() -> Result<T, GitError>) -> Result<T, GitError> {
        self.settled_when(|e| matches!(e, GitError::MissingObject { .. }), read)
    }

    /// `read`, done again once the fetch under way in the mirror ends, when it failed as
    /// `missed` says a fetch could be the cause.
    fn settled_when<T>(
        &self,
        missed: impl Fn(&GitError) -> bool,
        mut read: impl FnMut() -> Result<T, GitError>,
    ) -> Result<T, GitError> {
        match read() {
            Err(e) if self.mirror.is_some() && missed(&e) => {
                self.fetches.settle();
                read()
            }
            done => done,
        }
    }

    /// [`Source::resolve`], without waiting for a fetch.
    fn resolve_once(&self, reference: &str) -> Result<Commit, GitError> {
        // The name before any revision suffix (`main~1`, `v1^{commit}`) must name one ref.
        let end = reference.find(['^', '~']).unwrap_or(reference.len());
        let (name, suffix) = reference.split_at(end);
        let mut reader = self.store.reader();
        let sha = match self.named_ref(&mut reader, name)? {
            // Its full name: exactly that ref is read.
            Some(refname) => self.revision(&mut reader, &refname, true, suffix)?,
            None => self.revision(&mut reader, name, false, suffix)?,
        };
        match sha {
            Some(sha) => self.commit_info(&mut reader, &sha),
            None => Err(GitError::ReferenceNotFound {
                reference: reference.to_owned(),
                repository: self.location.clone(),
            }),
        }
    }

    /// [`Source::read_file`], without [`GitRepository::settled`].
    fn read_file_once(
        &self,
        commit: &str,
        path: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, GitError> {
        let mut reader = self.store.reader();
        let mut tree = ObjectTree {
            reader: &mut reader,
            git: &self.git,
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
        let size = match reader.header(&oid)? {
            Some((Kind::Blob, size)) => size,
            Some((kind, _)) => {
                return Err(GitError::Protocol {
                    command: "cat-file".to_owned(),
                    detail: format!("{real_path} is a {kind}, not a blob"),
                });
            }
            None => return Err(reader.missing(format!("object {oid} of {real_path}"))),
        };
        if size > limit {
            // Only the header was read: the content never is.
            return Err(GitError::TooLarge {
                path: path.to_owned(),
                size,
                limit,
            });
        }
        reader
            .expect(&oid, Kind::Blob)
            .map(|content| Some(content.to_vec()))
    }

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
        // Canonical, as git's `rev-parse --absolute-git-dir` and `--show-toplevel` gave them.
        let canonical = path
            .canonicalize()
            .map_err(|error| not_a_repository(error.to_string()))?;
        let store = Store::discover(&canonical).map_err(not_a_repository)?;
        let canonical_or_given =
            |dir: &Path| dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let git_dir = canonical_or_given(store.git_dir());
        let work_tree = store.work_tree().map(|dir| canonical_or_given(&dir));
        Ok(GitRepository {
            git: Git::bound(git_dir),
            store,
            location: path.display().to_string(),
            mirror: None,
            work_tree,
            fetches: Fetches::default(),
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
            let git = Git::unbound()
                .redacting(&remote.spec, &remote.redacted)
                .with_header(remote.header.clone());
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
        let git = Git::bound(dir.clone())
            .redacting(&remote.spec, &remote.redacted)
            .with_header(remote.header.clone());
        if remote.header.is_some() {
            forget_credentials(&git, &dir, &remote)?;
        }
        let store = Store::open(&dir, &remote.redacted)?;
        Ok(GitRepository {
            git,
            store,
            location: remote.redacted.clone(),
            mirror: Some(remote),
            work_tree: None,
            fetches: Fetches::default(),
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

    /// `Some(commit id)`, `None` when the reference names no commit, as `git rev-parse`
    /// reads it: for the revision syntax [`GitRepository::revision`] leaves to git.
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
            return Err(ambiguous_id(reference, &self.location));
        }
        if stderr.contains("Needed a single revision") {
            return Ok(None);
        }
        Err(self.git.failure(args, &output))
    }

    /// The commit `start` and then `suffix` name: `start` is a full ref name when `is_ref`,
    /// else what git would read it as (`HEAD`, a commit id, an abbreviated one); `suffix` is
    /// empty or revision steps (`~2`, `^2`, `^{commit}`). Read in process, but for what only
    /// git reads (`@{1}`, `^{/text}`, `FETCH_HEAD`), which `git rev-parse` answers.
    fn revision(
        &self,
        reader: &mut Reader<'_>,
        start: &str,
        is_ref: bool,
        suffix: &str,
    ) -> Result<Option<String>, GitError> {
        let Some(steps) = parse_suffix(suffix) else {
            return self.rev_parse(&format!("{start}{suffix}"));
        };
        let object = if is_ref || start == "HEAD" {
            reader.reference(start)?
        } else if is_full_commit_id(start) {
            Some(start.to_owned())
        } else if start.len() >= 4
            && start.len() < 2 * reader.oid_len()
            && start.bytes().all(|b| b.is_ascii_hexdigit())
        {
            self.abbreviated(reader, start, suffix)?
        } else if is_plain_ref_name(start) && !is_root_ref(start) {
            // No ref of that name (`named_ref` looked) and not a commit id: nothing.
            None
        } else {
            return self.rev_parse(&format!("{start}{suffix}"));
        };
        let Some(object) = object else {
            return Ok(None);
        };
        let Some(mut commit) = reader.peel_to_commit(&object)? else {
            return Ok(None);
        };
        for step in steps {
            let (parent, times) = match step {
                Step::Parent(0) => continue,
                Step::Parent(n) => (n - 1, 1),
                Step::Ancestor(n) => (0, n),
            };
            for _ in 0..times {
                let Some(next) = reader
                    .commit(&commit)?
                    .and_then(|parsed| parsed.parents.get(parent).cloned())
                else {
                    return Ok(None);
                };
                commit = next;
            }
        }
        // A parent is a commit in any tree git wrote; check it all the same.
        reader.peel_to_commit(&commit)
    }

    /// The one object an abbreviated id names among those git would take for a commit (a
    /// commit, or a tag leading to one), as `git rev-parse <abbrev>^{commit}` disambiguates.
    fn abbreviated(
        &self,
        reader: &mut Reader<'_>,
        prefix: &str,
        suffix: &str,
    ) -> Result<Option<String>, GitError> {
        let mut committish = Vec::new();
        for object in reader.with_prefix(prefix)? {
            if reader.peel_to_commit(&object)?.is_some() {
                committish.push(object);
            }
        }
        match committish.len() {
            0 | 1 => Ok(committish.pop()),
            _ => Err(ambiguous_id(&format!("{prefix}{suffix}"), &self.location)),
        }
    }

    fn commit_info(&self, reader: &mut Reader<'_>, sha: &str) -> Result<Commit, GitError> {
        let commit = reader
            .commit(sha)?
            .ok_or_else(|| GitError::CommitNotFound {
                commit: sha.to_owned(),
                repository: self.location.clone(),
            })?;
        Ok(Commit {
            sha: sha.to_owned(),
            summary: commit.summary,
            author: commit.author,
            time: commit.time,
        })
    }

    /// Those of `refnames` (full ref names) that exist, exactly (not by prefix), in the
    /// order given, each with the object it leads to (through annotated tags when that is a
    /// commit).
    fn existing_refs(
        reader: &mut Reader<'_>,
        refnames: &[String],
    ) -> Result<Vec<(String, String)>, GitError> {
        let mut found = Vec::new();
        for refname in refnames {
            if let Some(object) = reader.reference(refname)? {
                let target = reader.peel_to_commit(&object)?.unwrap_or(object);
                found.push((refname.clone(), target));
            }
        }
        Ok(found)
    }

    /// The one ref `name` stands for, as a full ref name, or `None` when no ref has that name
    /// (git then reads it as a commit id, or `HEAD`). Git's own rules (`git help revisions`)
    /// take the first of `refs/<name>`, `refs/tags/<name>`, `refs/heads/<name>`, ... and only
    /// warn when several exist: a tag `main` would win over the branch `main`, and a branch
    /// named like an abbreviated commit id over the commit. Several is an error here.
    fn named_ref(&self, reader: &mut Reader<'_>, name: &str) -> Result<Option<String>, GitError> {
        if !is_plain_ref_name(name) || is_root_ref(name) || is_full_commit_id(name) {
            // A full commit id is always the commit (git reads it so too); `HEAD` is the
            // repository's own, which no push can create.
            return Ok(None);
        }
        if name.starts_with("refs/") && reader.reference(name)?.is_some() {
            return Ok(Some(name.to_owned()));
        }
        let mut candidates = Vec::new();
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
        let found = Self::existing_refs(reader, &candidates)?;
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
            let commit = reader.peel_to_commit(target)?;
            for object in reader.with_prefix(name)? {
                if let Some(other) = reader.peel_to_commit(&object)?
                    && Some(&other) != commit.as_ref()
                {
                    let other = format!("commit {}", &other[..12]);
                    if !named.contains(&other) {
                        named.push(other);
                    }
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

    /// The commit at the tip of branch `name` (`refs/heads/<name>`; in a mirror, the remote's
    /// branch, also when named `origin/<name>`), or `None` when there is no such branch.
    fn branch_tip(&self, reader: &mut Reader<'_>, name: &str) -> Result<Option<String>, GitError> {
        if !names_a_branch(name) {
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
        for candidate in candidates {
            // The object id, not the name: nothing else named like it can be read instead.
            if let Some(object) = reader.reference(&candidate)? {
                return reader.peel_to_commit(&object);
            }
        }
        Ok(None)
    }
}

/// One step of a revision suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// `^N`: the Nth parent; `^0`, `^{commit}` and `^{}`: the commit itself.
    Parent(usize),
    /// `~N`: the Nth first-parent ancestor.
    Ancestor(usize),
}

/// The steps of `suffix` (`~2^2^{commit}`), or `None` for syntax left to git.
fn parse_suffix(mut suffix: &str) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    while !suffix.is_empty() {
        if let Some(rest) = suffix
            .strip_prefix("^{commit}")
            .or_else(|| suffix.strip_prefix("^{}"))
        {
            steps.push(Step::Parent(0));
            suffix = rest;
            continue;
        }
        let mut chars = suffix.chars();
        let op = chars.next()?;
        let rest = chars.as_str();
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let n = if digits == 0 {
            1
        } else {
            rest[..digits].parse().ok()?
        };
        steps.push(match op {
            '^' => Step::Parent(n),
            '~' => Step::Ancestor(n),
            _ => return None,
        });
        suffix = &rest[digits..];
    }
    Some(steps)
}

fn ambiguous_id(reference: &str, repository: &str) -> GitError {
    GitError::AmbiguousReference {
        reference: reference.to_owned(),
        repository: repository.to_owned(),
        detail: "use more hex digits or the full commit id".to_owned(),
    }
}

/// Takes the credentials out of the URL a mirror cloned before they were kept out of it: git
/// hands the configured URL to its remote helper as an argument, which anyone on the machine
/// may read in `/proc`. Costs a read of the mirror's configuration, only for a URL with
/// credentials.
fn forget_credentials(git: &Git, dir: &Path, remote: &RemoteUrl) -> Result<(), GitError> {
    let config = std::fs::read_to_string(dir.join("config")).unwrap_or_default();
    let kept = config
        .lines()
        .filter_map(|line| line.trim().strip_prefix("url = "))
        .any(|url| url != remote.url);
    if !kept {
        return Ok(());
    }
    let output = git.output(["config", "remote.origin.url", remote.url.as_str()], None)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(GitError::Remote {
            action: "set the mirror's URL",
            url: remote.redacted.clone(),
            stderr: git.stderr(&output.stderr),
        })
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

/// Whether a branch named `name` can be followed by that name: a plain ref name that is not
/// `HEAD`, not a full ref name (`refs/…`) and not a whole commit id. A branch named otherwise
/// (git lets anyone who can push create `refs/heads/refs/tags/v1` or one named like a
/// commit id) would stand for the tag, the ref or the commit of that name wherever branches
/// are looked up by name: [`Source::branches`] leaves it out, and [`Source::resolve_tracked`]
/// never takes it.
pub fn names_a_branch(name: &str) -> bool {
    is_plain_ref_name(name)
        && !is_root_ref(name)
        && !name.starts_with("refs/")
        && !is_full_commit_id(name)
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
        // A commit named by its id (a webhook's head) that a fetch under way has not written
        // yet: there once the fetch ends (see [`GitRepository::settled`]).
        let unwritten = |e: &GitError| {
            is_full_commit_id(reference)
                && matches!(
                    e,
                    GitError::ReferenceNotFound { .. } | GitError::CommitNotFound { .. }
                )
        };
        self.settled_when(unwritten, || self.resolve_once(reference))
    }

    fn resolve_tracked(&self, reference: &str) -> Result<Commit, GitError> {
        check_reference(reference)?;
        let mut reader = self.store.reader();
        match self.branch_tip(&mut reader, reference)? {
            Some(sha) => self.commit_info(&mut reader, &sha),
            None => self.resolve(reference),
        }
    }

    fn read_file(&self, commit: &str, path: &str, limit: u64) -> Result<Option<Vec<u8>>, GitError> {
        check_commit(commit)?;
        check_path(path)?;
        self.settled(|| self.read_file_once(commit, path, limit))
    }

    fn list_files(&self, commit: &str, under: &str) -> Result<Vec<TreeEntry>, GitError> {
        check_commit(commit)?;
        self.settled(|| {
            Ok(list_tree(
                &mut self.store.reader(),
                commit,
                &self.location,
                under,
                false,
            )?
            .iter()
            .filter_map(|entry| entry.tree_entry())
            .collect())
        })
    }

    fn export(&self, commit: &str, subdir: &str, dest: &Path) -> Result<(), GitError> {
        check_commit(commit)?;
        self.settled(|| {
            export(
                &mut self.store.reader(),
                &self.git,
                commit,
                &self.location,
                subdir,
                dest,
            )
        })
    }

    fn branches(&self) -> Result<Vec<Branch>, GitError> {
        let mut branches: Vec<Branch> = self
            .store
            .reader()
            .branches()?
            .into_iter()
            .filter(|(name, sha)| names_a_branch(name) && check_commit(sha).is_ok())
            .map(|(name, sha)| Branch { name, sha })
            .collect();
        branches.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(branches)
    }

    fn fetch(&self) -> Result<(), GitError> {
        let Some(remote) = &self.mirror else {
            return Ok(());
        };
        use std::sync::atomic::Ordering;
        let asked = self.fetches.begun.load(Ordering::SeqCst);
        let mut succeeded = self
            .fetches
            .succeeded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *succeeded > asked {
            // Begun after this caller asked, and done while it waited.
            return Ok(());
        }
        let number = self.fetches.begun.fetch_add(1, Ordering::SeqCst) + 1;
        // The mirror's refspec (`+refs/*:refs/*`) was set by `clone --mirror`.
        let output = self
            .git
            .output(["fetch", "--prune", "--quiet", "origin"], None)?;
        if output.status.success() {
            *succeeded = number;
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::SeqCst;

    use slipway_testkit::git::Repo;

    use super::*;

    /// A repository with one commit, and a mirror of it by its `file://` URL, in `dir`.
    fn mirrored(dir: &Path) -> (Repo, GitRepository) {
        let source = Repo::init(&dir.join("source"));
        source.write("a", "1").commit("one");
        let url = format!("file://{}", source.path.display());
        let mirror = GitRepository::open(&url, &dir.join("cache")).expect("mirror");
        (source, mirror)
    }

    fn has_branch(mirror: &GitRepository, name: &str) -> bool {
        let branches = mirror.branches().expect("list the branches");
        branches.iter().any(|b| b.name == name)
    }

    /// A mirror cloned while its URL's credentials were kept in its configuration: opened
    /// again, the URL there loses them (git would hand it to its remote helper as an argument).
    #[test]
    fn a_mirror_made_with_credentials_in_its_url_forgets_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = Repo::init(&dir.path().join("source"));
        source.write("a", "1").commit("one");
        let url = "https://x-token:SECRET@127.0.0.1:9/acme/shop.git";
        let Ok(Location::Remote(remote)) = spec::parse(url) else {
            panic!("a remote");
        };
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).expect("mkdir");
        let mirror = cache.join(spec::mirror_name(&remote));
        source.git(&[
            "clone",
            "-q",
            "--mirror",
            source.path.to_str().expect("utf-8"),
            mirror.to_str().expect("utf-8"),
        ]);
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .arg("--git-dir")
                .arg(&mirror)
                .args(args)
                .output()
                .expect("git runs");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        git(&["config", "remote.origin.url", url]);
        let opened = GitRepository::open(url, &cache).expect("the mirror there");
        assert_eq!(
            git(&["config", "remote.origin.url"]),
            "https://127.0.0.1:9/acme/shop.git"
        );
        assert!(!opened.location().contains("SECRET"));
    }

    /// Callers that ask at once share fetches, and each finds what was pushed before it asked.
    #[test]
    fn callers_asking_at_once_share_a_fetch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (source, mirror) = mirrored(dir.path());
        let callers = 8;
        for i in 0..callers {
            source.git(&["branch", &format!("b{i}")]);
        }
        let before = mirror.fetches.begun.load(SeqCst);
        let together = std::sync::Barrier::new(callers);
        std::thread::scope(|s| {
            for i in 0..callers {
                let (mirror, together) = (&mirror, &together);
                s.spawn(move || {
                    together.wait();
                    mirror.fetch().expect("fetch");
                    assert!(has_branch(mirror, &format!("b{i}")), "b{i} is fetched");
                });
            }
        });
        let run = mirror.fetches.begun.load(SeqCst) - before;
        assert!(
            run < callers as u64,
            "{run} fetches ran for {callers} callers asking at once"
        );
    }

    /// A fetch already under way when a caller asks does not serve it: it may have read the
    /// refs before what the caller saw pushed.
    #[test]
    fn only_a_fetch_begun_after_a_caller_asked_serves_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (source, mirror) = mirrored(dir.path());
        // A fetch under way: begun, and holding the lock.
        let mut under_way = mirror.fetches.succeeded.lock().expect("not poisoned");
        let number = mirror.fetches.begun.fetch_add(1, SeqCst) + 1;
        source.git(&["branch", "late"]);
        std::thread::scope(|s| {
            let caller = s.spawn(|| mirror.fetch());
            // It ends well, having read the refs before `late` was pushed.
            *under_way = number;
            drop(under_way);
            caller.join().expect("no panic").expect("fetch");
        });
        assert!(has_branch(&mirror, "late"), "the caller fetched again");
        assert_eq!(mirror.fetches.begun.load(SeqCst), number + 1);
    }

    /// A commit named from elsewhere (a webhook's head) read while the fetch bringing it has
    /// written the commit but not yet its tree and blob: the read waits for that fetch to end,
    /// and finds the file. Before, it failed with the tree "missing", and the stack loaded
    /// from it was cached as broken.
    #[test]
    fn a_commit_read_while_its_fetch_writes_it_is_read_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (source, mirror) = mirrored(dir.path());
        source.write("a", "2").commit("two");
        let loose = |objects: &Path, oid: &str| objects.join(&oid[..2]).join(&oid[2..]);
        let copy = |oid: &str| {
            let to = loose(&mirror.git_dir().join("objects"), oid);
            std::fs::create_dir_all(to.parent().expect("a parent")).expect("made");
            std::fs::copy(loose(&source.path.join(".git/objects"), oid), to).expect("copied");
        };
        let commit = source.head();
        let rest = [source.rev_parse("HEAD^{tree}"), source.rev_parse("HEAD:a")];
        // `read` on this thread while a fetch under way (holding the lock) does `write` once
        // the read missed and waits for it.
        let while_fetching = |write: &(dyn Fn() + Sync), read: &dyn Fn()| {
            let (locked, fetching) = std::sync::mpsc::channel();
            let waiting = mirror.fetches.settling.load(SeqCst);
            std::thread::scope(|s| {
                let writer = s.spawn(|| {
                    let _fetch = mirror.fetches.succeeded.lock().expect("not poisoned");
                    locked.send(()).expect("the reader waits");
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                    while mirror.fetches.settling.load(SeqCst) == waiting {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "the read never waited for the fetch"
                        );
                        std::thread::yield_now();
                    }
                    write();
                });
                fetching.recv().expect("locked");
                read();
                writer.join().expect("no panic");
            });
        };
        // Named by its id before the fetch wrote it: found once it did.
        while_fetching(&|| copy(&commit), &|| {
            assert_eq!(mirror.resolve(&commit).expect("resolved").sha, commit);
        });
        // Its tree and blob not written yet: read once they are.
        while_fetching(
            &|| {
                for oid in &rest {
                    copy(oid);
                }
            },
            &|| {
                let read = mirror.read_file(&commit, "a", 1024);
                assert_eq!(read.expect("read").as_deref(), Some(&b"2"[..]));
            },
        );
        // With no fetch under way, a tree that never comes is missing, and the error says so.
        source.write("a", "3").commit("three");
        let third = source.head();
        copy(&third);
        match mirror.read_file(&third, "a", 1024) {
            Err(error @ GitError::MissingObject { .. }) => {
                assert!(error.retryable(), "tried again later");
                assert!(error.to_string().contains("a fetch may still"), "{error}");
            }
            other => panic!("not missing: {other:?}"),
        }
    }
}
