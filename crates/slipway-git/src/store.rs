//! Reading a repository in process (gitoxide's object database and reference store): commits,
//! trees, blobs and references, with no `git` process started per read.
//!
//! Every command used to pay a `git` process per question (rev-parse, for-each-ref, log,
//! cat-file, ls-tree: about nine for one `slipway apply`, a few milliseconds each); reading the
//! files of the repository directly costs microseconds. The `git` CLI is kept where it is
//! needed: clone and fetch (credentials, the network), `merge-base`, revision syntax this module
//! does not read (`main@{1}`, `v1^{/fix}`), and blobs too large to hold in memory at once, which
//! an export streams.
//!
//! # Guarantees
//! - One [`Store`] per opened repository, shared by every thread; each call takes its own
//!   [`Reader`] (an object-database handle and a buffer): no answer is shared between threads.
//! - What is on disk at each call is what is read: a fetch that added packs or moved refs
//!   meanwhile is seen (the object database rescans its packs when an object is missing;
//!   loose and packed refs are read again), and an object is absent only when views of the
//!   object database opened afresh say so too: a repack (`git gc --auto` after a fetch) that
//!   moves objects under a read does not make one look absent; nor does its `git pack-refs`
//!   make a branch look deleted (see [`Reader::branches`]).
//! - Objects are read as stored: `refs/replace/` refs, which anyone who can push refs to a
//!   mirror could create, are ignored, as the CLI did with `GIT_NO_REPLACE_OBJECTS=1`. Only the
//!   repository's own configuration is read (no global or system file, no environment
//!   variable), and nothing is ever run.
//! - No object over [`IN_PROCESS_LIMIT`] is decompressed into memory here; callers check a
//!   header first.
//!
//! # Caveats
//! Repositories gitoxide cannot open (reftable refs, unknown `extensions.*`) are refused as not
//! repositories; a partial clone's missing objects are not fetched on demand.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use gix::ObjectId;
use gix::objs::{Find, FindHeader, Kind};

use crate::GitError;

/// The largest object read into memory at once; larger blobs are streamed through `git
/// cat-file` by an export, and refused by a read whose limit is below it.
pub(crate) const IN_PROCESS_LIMIT: u64 = 32 * 1024 * 1024;

/// How many symbolic refs one lookup follows (git stops at 5 too).
const MAX_SYMREF_HOPS: usize = 5;

/// The largest annotated tag read (a tag object is its target, its name, its tagger and its
/// message).
const MAX_TAG_BYTES: u64 = 1 << 20;

/// How many annotated tags one peel goes through.
const MAX_TAG_HOPS: usize = 32;

/// How many times [`Reader::branches`] lists the branches while `packed-refs` keeps changing
/// under it (each `git pack-refs` changes it once).
const MAX_BRANCH_LISTINGS: usize = 5;

/// How many times an object the shared view of the object database says is absent is looked
/// for again, each time in a view opened afresh, before it is taken as absent.
///
/// A miss is not always true: while `git gc --auto` (which a fetch may start in the
/// background) or `git repack` moves loose objects into a pack and removes them, gitoxide can
/// answer "absent" for an object that is there, as when a loose file goes between its check
/// and its read. Git answers such a miss by listing the packs again and looking once more
/// (`reprepare_packed_git`); a fresh view does that here. Two, because a fresh view can still
/// list the packs just before a repack's new pack lands and then miss the loose file it
/// removes.
const MISS_LOOKUPS: usize = 2;

/// A repository opened for reading in process.
pub(crate) struct Store {
    repo: gix::ThreadSafeRepository,
    /// The repository, for messages.
    location: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("git_dir", &self.repo.git_dir())
            .finish_non_exhaustive()
    }
}

/// How every repository is opened: its own configuration only, replacements off.
fn options() -> gix::open::Options {
    gix::open::Options::isolated().config_overrides(["core.useReplaceRefs=false"])
}

impl Store {
    /// The repository `path` (canonical) is in: a work tree, a directory inside one, or a bare
    /// repository. `Err` says why there is none.
    pub(crate) fn discover(path: &Path) -> Result<Store, String> {
        let options = options();
        let repo = gix::ThreadSafeRepository::discover_opts(
            path,
            gix::discover::upwards::Options::default(),
            gix::sec::trust::Mapping {
                full: options.clone(),
                reduced: options,
            },
        )
        .map_err(|error| format!("{error:#}"))?;
        Ok(Store {
            location: path.display().to_string(),
            repo,
        })
    }

    /// The repository at exactly `git_dir` (a mirror).
    pub(crate) fn open(git_dir: &Path, location: &str) -> Result<Store, GitError> {
        let repo = options()
            .open(git_dir)
            .map_err(|error| GitError::NotARepository {
                path: git_dir.to_path_buf(),
                detail: format!("{error:#}"),
            })?;
        Ok(Store {
            location: location.to_owned(),
            repo,
        })
    }

    /// The git directory, absolute.
    pub(crate) fn git_dir(&self) -> &Path {
        self.repo.git_dir()
    }

    /// The work tree, for a non-bare repository.
    pub(crate) fn work_tree(&self) -> Option<PathBuf> {
        self.repo.work_tree.clone()
    }

    /// A view of the object database opened afresh from the disk: no pack list nor index
    /// shared with the other readers.
    fn fresh_objects(&self) -> Result<ObjectsHandle, GitError> {
        let fresh = Store::open(self.git_dir(), &self.location)?;
        Ok(fresh.repo.objects.to_handle_arc())
    }

    /// [`GitError::MissingObject`] for `object` (`object ID`, or `object ID of PATH`).
    fn missing(&self, object: String) -> GitError {
        GitError::MissingObject {
            object,
            repository: self.location.clone(),
        }
    }

    /// A reader for one call, on this thread.
    pub(crate) fn reader(&self) -> Reader<'_> {
        Reader {
            store: self,
            objects: self.repo.objects.to_handle_arc(),
            hash: self.repo.objects.object_hash(),
            buf: Vec::new(),
            packed_refreshed: std::cell::Cell::new(false),
        }
    }
}

/// A commit's fields, as [`Reader::commit`] parses them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CommitObject {
    /// Its tree, in hex.
    pub(crate) tree: String,
    /// Its parents, in hex, in order.
    pub(crate) parents: Vec<String>,
    /// `Name <email>` of its author.
    pub(crate) author: String,
    /// Its committer time, unix seconds (0 when unreadable, as git prints it).
    pub(crate) time: i64,
    /// The first paragraph of its message, lines joined by a space (git's `%s`).
    pub(crate) summary: String,
}

/// A handle on an object database.
type ObjectsHandle = gix::odb::store::Handle<std::sync::Arc<gix::odb::Store>>;

/// Reads objects and references for one call.
pub(crate) struct Reader<'a> {
    store: &'a Store,
    objects: ObjectsHandle,
    hash: gix::hash::Kind,
    buf: Vec<u8>,
    /// `packed-refs` was read afresh for a missed ref in this call (once is enough).
    packed_refreshed: std::cell::Cell<bool>,
}

impl Reader<'_> {
    /// Bytes in an object id: 20 (SHA-1) or 32 (SHA-256).
    pub(crate) fn oid_len(&self) -> usize {
        self.hash.len_in_bytes()
    }

    fn id(&self, hex: &str) -> Result<ObjectId, GitError> {
        ObjectId::from_hex(hex.as_bytes())
            .ok()
            .filter(|id| id.kind() == self.hash)
            .ok_or_else(|| GitError::InvalidCommit {
                commit: crate::error::printable(hex),
            })
    }

    /// The kind and size of an object, without reading its content; `None` when it is absent.
    pub(crate) fn header(&self, oid: &str) -> Result<Option<(Kind, u64)>, GitError> {
        let id = self.id(oid)?;
        if id.is_empty_tree() {
            return Ok(Some((Kind::Tree, 0)));
        }
        let header = |objects: &ObjectsHandle| {
            objects
                .try_header(&id)
                .map(|header| header.map(|header| (header.kind, header.size)))
                .map_err(|source| self.failed(format!("read the header of object {oid}"), source))
        };
        if let Some(found) = header(&self.objects)? {
            return Ok(Some(found));
        }
        // Absent, says the shared view: confirmed on fresh ones (see [`MISS_LOOKUPS`]).
        for _ in 0..MISS_LOOKUPS {
            if let Some(found) = header(&self.store.fresh_objects()?)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// An object's kind and content; `None` when it is absent. Callers check its size with
    /// [`Reader::header`] first when it comes from the repository's content (a blob).
    pub(crate) fn object(&mut self, oid: &str) -> Result<Option<(Kind, &[u8])>, GitError> {
        let id = self.id(oid)?;
        self.object_by_id(&id)
    }

    fn object_by_id(&mut self, id: &ObjectId) -> Result<Option<(Kind, &[u8])>, GitError> {
        if id.is_empty_tree() {
            return Ok(Some((Kind::Tree, &[])));
        }
        let mut lookups = 0;
        loop {
            let found = self
                .objects
                .try_find(id, &mut self.buf)
                .map_err(|source| {
                    failed(&self.store.location, format!("read object {id}"), source)
                })?
                .map(|data| (data.kind, data.data.as_ptr(), data.data.len()));
            match found {
                // The object is the buffer's content, as gitoxide reads it.
                Some((kind, at, len)) if at == self.buf.as_ptr() && len <= self.buf.len() => {
                    return Ok(Some((kind, &self.buf[..len])));
                }
                // Somewhere else: read it again below, keeping where it is.
                Some(_) => break,
                None if lookups == MISS_LOOKUPS => return Ok(None),
                // Absent, says this view: confirmed on a fresh one (see [`MISS_LOOKUPS`]),
                // which the rest of this call then reads.
                None => {
                    lookups += 1;
                    self.objects = self.store.fresh_objects()?;
                }
            }
        }
        match self.objects.try_find(id, &mut self.buf) {
            Ok(Some(data)) => Ok(Some((data.kind, data.data))),
            Ok(None) => Ok(None),
            Err(source) => Err(failed(
                &self.store.location,
                format!("read object {id}"),
                source,
            )),
        }
    }

    /// [`GitError::MissingObject`] for `object` (`object ID`, or `object ID of PATH`).
    pub(crate) fn missing(&self, object: String) -> GitError {
        self.store.missing(object)
    }

    /// The object `oid` must be, of `kind`.
    pub(crate) fn expect(&mut self, oid: &str, kind: Kind) -> Result<&[u8], GitError> {
        let store = self.store;
        match self.object(oid)? {
            Some((found, data)) if found == kind => Ok(data),
            Some((found, _)) => Err(malformed(format!("{oid} is a {found}, not a {kind}"))),
            None => Err(store.missing(format!("object {oid}"))),
        }
    }

    /// The commit `oid`, parsed; `None` when it is absent or not a commit.
    pub(crate) fn commit(&mut self, oid: &str) -> Result<Option<CommitObject>, GitError> {
        // Its size first: a commit's message is anyone's who can push one, and a commit of
        // gigabytes is no commit to read into memory.
        match self.header(oid)? {
            Some((Kind::Commit, size)) if size > IN_PROCESS_LIMIT => {
                return Err(malformed(format!(
                    "commit {oid} is {size} bytes, more than is read at once"
                )));
            }
            Some((Kind::Commit, _)) => {}
            _ => return Ok(None),
        }
        match self.object(oid)? {
            Some((Kind::Commit, data)) => parse_commit(data)
                .map(Some)
                .ok_or_else(|| malformed(format!("commit {oid} is malformed"))),
            _ => Ok(None),
        }
    }

    /// The commit `oid` is or leads to through annotated tags (git's `oid^{commit}`); `None`
    /// when it is absent or leads to something else (a tree, a blob).
    pub(crate) fn peel_to_commit(&mut self, oid: &str) -> Result<Option<String>, GitError> {
        let mut id = self.id(oid)?;
        for _ in 0..MAX_TAG_HOPS {
            // What the ref names is known by its header: a commit is not read, nor a blob or
            // a tree (a tag anyone may push can name a blob of gigabytes), and a tag is read
            // only when it is of a tag's size.
            match self.header(&id.to_string())? {
                Some((Kind::Commit, _)) => return Ok(Some(id.to_string())),
                Some((Kind::Tag, size)) if size <= MAX_TAG_BYTES => {}
                Some((Kind::Tag, size)) => {
                    return Err(malformed(format!("tag {id} is {size} bytes")));
                }
                _ => return Ok(None),
            }
            match self.object_by_id(&id)? {
                Some((Kind::Commit, _)) => return Ok(Some(id.to_string())),
                Some((Kind::Tag, data)) => {
                    // `object <hex>` is a tag's first line.
                    let target = data
                        .strip_prefix(b"object ")
                        .and_then(|rest| rest.split(|b| *b == b'\n').next())
                        .and_then(|hex| ObjectId::from_hex(hex).ok())
                        .ok_or_else(|| malformed(format!("tag {id} is malformed")))?;
                    id = target;
                }
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// The object the ref named exactly `name` (a full name such as `refs/heads/main`, or
    /// `HEAD`) points at, symbolic refs followed; `None` when there is no such ref. Never
    /// another ref named like it: git's lookup rules (`refs/tags/<name>`, ...) are not applied.
    pub(crate) fn reference(&self, name: &str) -> Result<Option<String>, GitError> {
        if let Some(found) = self.reference_once(name)? {
            return Ok(Some(found));
        }
        // Absent, or moved into a `packed-refs` that gitoxide's copy predates (see
        // [`Reader::fresh_packed_refs`]): looked for once more in the file as it is, once a
        // call (a name is looked up under several prefixes, most of them absent).
        if self.packed_refreshed.replace(true) {
            return Ok(None);
        }
        self.fresh_packed_refs()?;
        self.reference_once(name)
    }

    /// Reads `packed-refs` again, whatever gitoxide's copy of it says. Its copy is reloaded
    /// only when the file's modification time changed, which the kernel keeps in ticks of a
    /// few milliseconds: a `git pack-refs` (run by `git gc`, which a fetch may start in the
    /// background) rewriting it within the tick of the last load would not be seen, and the
    /// loose refs it then removes would be found nowhere (gitoxide reloads it only when its
    /// time grew). Not seen happen; a read of one file.
    fn fresh_packed_refs(&self) -> Result<(), GitError> {
        let refs = &self.store.repo.refs;
        let packed = refs.packed_refs_path();
        if std::fs::metadata(&packed).is_err() {
            // None (or none readable): nothing to read again.
            return Ok(());
        }
        match refs.force_refresh_packed_buffer() {
            Ok(()) => Ok(()),
            // Gone meanwhile: there is nothing to read.
            Err(_) if std::fs::metadata(&packed).is_err() => Ok(()),
            Err(source) => Err(self.failed("read packed-refs".to_owned(), source)),
        }
    }

    fn reference_once(&self, name: &str) -> Result<Option<String>, GitError> {
        let refs = &self.store.repo.refs;
        let mut name = name.to_owned();
        for _ in 0..MAX_SYMREF_HOPS {
            // A name git would refuse as a ref name: no ref can have it.
            let Ok(partial) = <&gix::refs::PartialNameRef>::try_from(name.as_str()) else {
                return Ok(None);
            };
            let found = refs
                .try_find(partial)
                .map_err(|source| self.failed(format!("read the ref {name}"), source))?;
            match found {
                Some(reference) if reference.name.as_bstr() == name.as_bytes() => {
                    match reference.target {
                        gix::refs::Target::Object(id) => return Ok(Some(id.to_string())),
                        gix::refs::Target::Symbolic(target) => name = target.to_string(),
                    }
                }
                // Found under another name (git's rules): not this ref.
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// The full ids of the objects whose id starts with `prefix` (hex, at least 4 digits,
    /// shorter than a full id).
    pub(crate) fn with_prefix(&self, prefix: &str) -> Result<Vec<String>, GitError> {
        // A prefix of this repository's kind of id: the id padded with zeros, cut to length.
        let hex_len = self.hash.len_in_hex();
        let padded = format!("{:0<hex_len$}", prefix.to_ascii_lowercase());
        let prefix = match ObjectId::from_hex(padded.as_bytes()) {
            Ok(id) if (4..hex_len).contains(&prefix.len()) => {
                match gix::hash::Prefix::new(&id, prefix.len()) {
                    Ok(prefix) => prefix,
                    Err(_) => return Ok(Vec::new()),
                }
            }
            _ => return Ok(Vec::new()),
        };
        let mut candidates = HashSet::new();
        self.objects
            .lookup_prefix(prefix, Some(&mut candidates))
            .map_err(|source| {
                self.failed(format!("look up objects starting with {prefix}"), source)
            })?;
        let mut found: Vec<String> = candidates.iter().map(ObjectId::to_string).collect();
        found.sort();
        Ok(found)
    }

    /// Every branch (`refs/heads/*`) with the object it points at, unsorted, or an error:
    /// never a listing that may miss one. The controller takes a branch missing from it for
    /// deleted, and destroys its environments.
    ///
    /// Listed again (after a pause doubling from 10 ms: 150 ms in all) while `packed-refs`
    /// changes under the listing, or a ref cannot be read: `git pack-refs` (run by `git gc`,
    /// which a fetch may start in the background) writes the refs it moves into a new
    /// `packed-refs` and then removes their loose files one by one, and a listing across the two misses
    /// what moved (gitoxide skips the packed entry of a loose ref it failed to read): a
    /// stress of 200 `git pack-refs` saw about one listing in 100 miss a branch. Unlike `git
    /// for-each-ref`, which warns and goes on, a ref still unreadable after
    /// [`MAX_BRANCH_LISTINGS`] is an error: a moved ref and a broken one cannot be told
    /// apart here.
    pub(crate) fn branches(&self) -> Result<Vec<(String, String)>, GitError> {
        let packed = self.store.repo.refs.packed_refs_path();
        let stamp = || {
            use std::os::unix::fs::MetadataExt;
            std::fs::symlink_metadata(&packed)
                .ok()
                .map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
        };
        let mut listings = 0;
        loop {
            let before = stamp();
            // gitoxide's copy of `packed-refs` may predate a rewrite within one tick of the
            // file's time (see [`Reader::fresh_packed_refs`]).
            self.fresh_packed_refs()?;
            let (branches, unread) = self.list_branches()?;
            listings += 1;
            // A new `packed-refs` is renamed into place before any loose file goes: the
            // same one before and after means none went during the listing. A loose ref
            // removed between the listing of its directory and its read is unread, and its
            // packed entry is skipped with it.
            let changed = stamp() != before;
            if !changed && unread == 0 {
                return Ok(branches);
            }
            if listings == MAX_BRANCH_LISTINGS {
                // A listing that may miss branches is not an answer: the caller tries later.
                let why = if unread > 0 {
                    format!(
                        "{unread} ref(s) under refs/heads could not be read in each of \
                         {listings} listings (a broken ref file, or refs being packed)"
                    )
                } else {
                    format!(
                        "{} changed under each of {listings} listings",
                        packed.display()
                    )
                };
                // The reason in the message itself: the engine shows errors without their
                // sources.
                return Err(self.failed(
                    format!("list the branches ({why})"),
                    std::io::Error::other(why),
                ));
            }
            // `git pack-refs` removes the loose files in a moment: wait it out.
            std::thread::sleep(std::time::Duration::from_millis(5 << listings));
        }
    }

    /// The branches, and how many refs could not be read.
    fn list_branches(&self) -> Result<(Vec<(String, String)>, usize), GitError> {
        let refs = &self.store.repo.refs;
        let platform = refs
            .iter()
            .map_err(|source| self.failed("list the refs".to_owned(), source))?;
        let prefix: &gix::path::RelativePath = "refs/heads/"
            .try_into()
            .expect("refs/heads/ is a valid ref prefix");
        let iter = platform.prefixed(prefix).map_err(|source| {
            failed(&self.store.location, "list the branches".to_owned(), source)
        })?;
        let mut branches = Vec::new();
        let mut unread = 0;
        for reference in iter {
            let Ok(reference) = reference else {
                unread += 1;
                continue;
            };
            let name = reference.name.to_string();
            let target = match reference.target {
                gix::refs::Target::Object(id) => Some(id.to_string()),
                gix::refs::Target::Symbolic(_) => self.reference(&name)?,
            };
            if let (Some(branch), Some(target)) = (name.strip_prefix("refs/heads/"), target) {
                branches.push((branch.to_owned(), target));
            }
        }
        Ok((branches, unread))
    }

    fn failed(&self, action: String, source: impl Into<BoxedError>) -> GitError {
        failed(&self.store.location, action, source)
    }
}

type BoxedError = Box<dyn std::error::Error + Send + Sync>;

fn failed(repository: &str, action: String, source: impl Into<BoxedError>) -> GitError {
    GitError::Read {
        action,
        repository: repository.to_owned(),
        source: source.into(),
    }
}

fn malformed(detail: String) -> GitError {
    GitError::Protocol {
        command: "cat-file".to_owned(),
        detail,
    }
}

/// A commit object's fields, read as leniently as `git log` reads them: `tree` first, then the
/// `parent` lines, then the first `author` and `committer` headers wherever they are; a
/// missing or garbled identity or time gives empty text or 0, not an error. `None` only
/// without a readable `tree` line.
pub(crate) fn parse_commit(data: &[u8]) -> Option<CommitObject> {
    let (headers, message) = match find(data, b"\n\n") {
        Some(end) => (&data[..end], &data[end + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = headers.split(|b| *b == b'\n').peekable();
    let tree = hex_field(lines.next()?.strip_prefix(b"tree ")?)?;
    let mut parents = Vec::new();
    while let Some(parent) = lines.peek().and_then(|line| line.strip_prefix(b"parent ")) {
        parents.push(hex_field(parent)?);
        lines.next();
    }
    let mut author = None;
    let mut committer = None;
    for line in lines {
        if author.is_none()
            && let Some(ident) = line.strip_prefix(b"author ")
        {
            author = Some(ident);
        } else if committer.is_none()
            && let Some(ident) = line.strip_prefix(b"committer ")
        {
            committer = Some(ident);
        }
    }
    let author = author.map(split_ident).unwrap_or_default();
    let time = committer.map(ident_time).unwrap_or(0);
    Some(CommitObject {
        tree,
        parents,
        author: format!("{} <{}>", author.0, author.1),
        time,
        summary: subject(message),
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn hex_field(field: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(field).ok()?;
    let hex = text
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (hex && (text.len() == 40 || text.len() == 64)).then(|| text.to_owned())
}

/// `Name <email> 1700000000 +0000` → (name, email), as git splits an identity.
fn split_ident(ident: &[u8]) -> (String, String) {
    let Some(open) = ident.iter().position(|b| *b == b'<') else {
        return (
            String::from_utf8_lossy(ident).trim().to_owned(),
            String::new(),
        );
    };
    let name = String::from_utf8_lossy(&ident[..open]).trim().to_owned();
    let rest = &ident[open + 1..];
    let close = rest.iter().position(|b| *b == b'>').unwrap_or(rest.len());
    (name, String::from_utf8_lossy(&rest[..close]).into_owned())
}

/// The unix time after the identity's `>`.
fn ident_time(ident: &[u8]) -> i64 {
    let Some(close) = ident.iter().rposition(|b| *b == b'>') else {
        return 0;
    };
    let digits: Vec<u8> = ident[close + 1..]
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits)
        .ok()
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0)
}

/// Git's `%s`: blank lines skipped, then the lines up to the next blank one, each trimmed at
/// the end, joined by a space.
fn subject(message: &[u8]) -> String {
    let text = String::from_utf8_lossy(message);
    let lines = text
        .split('\n')
        .map(str::trim_end)
        .skip_while(|line| line.is_empty())
        .take_while(|line| !line.is_empty());
    lines.collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TREE: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";
    const PARENT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn a_commit_is_read_like_git_log_reads_it() {
        let data = format!(
            "tree {TREE}\nparent {PARENT}\nauthor Ada Lovelace <ada@example.com> 1600000000 +0100\n\
             committer C <c@example.com> 1700000000 +0000\ngpgsig -----BEGIN\n parent x\n\n\
             \n  first line  \nsecond\n\nbody\n"
        );
        let commit = parse_commit(data.as_bytes()).expect("a well-formed commit");
        assert_eq!(commit.tree, TREE, "its tree");
        assert_eq!(commit.parents, vec![PARENT.to_owned()], "its one parent");
        assert_eq!(
            commit.author, "Ada Lovelace <ada@example.com>",
            "the author"
        );
        assert_eq!(commit.time, 1_700_000_000, "the committer's time");
        assert_eq!(
            commit.summary, "  first line second",
            "the first paragraph, lines joined"
        );
    }

    #[test]
    fn a_garbled_identity_is_empty_not_an_error() {
        let data = format!("tree {TREE}\nauthor nobody\ncommitter x <y> soon\n\nmsg");
        let commit = parse_commit(data.as_bytes()).expect("a commit git would read");
        assert_eq!(commit.author, "nobody <>", "a name without an email");
        assert_eq!(commit.time, 0, "an unreadable time is 0, as git prints it");
        assert!(
            parse_commit(b"parent x\ntree y\n\n").is_none(),
            "no tree line first: not a commit"
        );
    }

    /// `git -C dir args…`, which must succeed; its output, trimmed.
    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    }

    /// A repository at `dir/src` whose one commit has the file `f`, packed.
    fn packed_repo(dir: &Path) -> PathBuf {
        let src = dir.join("src");
        std::fs::create_dir(&src).expect("made");
        git(&src, &["init", "-q", "-b", "main"]);
        git(&src, &["config", "user.email", "a@example.com"]);
        git(&src, &["config", "user.name", "A"]);
        std::fs::write(src.join("f"), "0").expect("written");
        git(&src, &["add", "."]);
        git(&src, &["commit", "-qm", "0"]);
        git(&src, &["repack", "-a", "-d", "-q"]);
        src
    }

    /// Commits `name` with `content` and packs it (`git repack -d`: the loose objects go into
    /// a new pack and are removed); the blob's id.
    fn commit_packed(src: &Path, name: &str, content: &str) -> String {
        std::fs::write(src.join(name), content).expect("written");
        git(src, &["add", "."]);
        git(src, &["commit", "-qm", name]);
        git(src, &["repack", "-d", "-q"]);
        git(src, &["rev-parse", &format!("HEAD:{name}")])
    }

    #[test]
    fn an_object_a_stale_view_misses_is_found_in_a_fresh_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let src = packed_repo(dir.path());
        let store = Store::open(&src.join(".git"), "src").expect("opened");
        let first = git(&src, &["rev-parse", "HEAD:f"]);
        // A view that will not see what lands after it read its packs: what gitoxide's shared
        // view can be for a moment while a repack moves objects (as `git gc --auto` does after
        // a fetch), made lasting here.
        let mut reader = store.reader();
        assert!(reader.object(&first).expect("read").is_some(), "f is read");
        reader.objects.refresh_never();
        let mut header_reader = store.reader();
        assert!(header_reader.header(&first).expect("read").is_some());
        header_reader.objects.refresh_never();

        let landed = commit_packed(&src, "g", "1");
        let object = reader.object(&landed).expect("read");
        assert_eq!(
            object.map(|(kind, data)| (kind, data.to_vec())),
            Some((Kind::Blob, b"1".to_vec())),
            "a blob in a pack the view has not listed is found, whole"
        );
        assert_eq!(
            header_reader.header(&landed).expect("read"),
            Some((Kind::Blob, 1)),
            "and so is its header"
        );
        // What is absent is still absent.
        let absent = "0123456789abcdef0123456789abcdef01234567";
        assert!(
            reader.object(absent).expect("read").is_none(),
            "no such object"
        );
        assert!(header_reader.header(absent).expect("read").is_none());
    }

    #[test]
    fn an_object_streamed_through_git_that_is_not_there_is_missing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let src = packed_repo(dir.path());
        let store = Store::open(&src.join(".git"), "src").expect("opened");
        let reader = store.reader();
        let present = git(&src, &["rev-parse", "HEAD:f"]);
        let absent = "0123456789abcdef0123456789abcdef01234567".to_owned();
        let mut read = Vec::new();
        let error = crate::objects::stream_objects(
            &crate::command::Git::bound(src.join(".git")),
            &[present, absent],
            |oid| reader.missing(format!("object {oid}")),
            |_, _, content| {
                content.read_to_end(&mut read).expect("read");
                Ok(())
            },
        )
        .expect_err("the second is not there");
        assert_eq!(read, b"0", "the first is streamed");
        assert!(
            matches!(error, GitError::MissingObject { .. }) && error.retryable(),
            "{error}"
        );
    }

    /// A stress of the shared view against a repository being fetched into and repacked: two
    /// threads read every blob fetched so far while the main thread fetches 300 commits into a
    /// mirror, repacking it every 25. Before [`MISS_LOOKUPS`], about one read in 16 million
    /// said a present blob was absent (seen twice in CI as a plan's "object … is missing from
    /// the repository"). Half a minute on 2 cores and probabilistic, so it is run by hand:
    /// `cargo test -p slipway-git --lib -- --ignored`.
    #[test]
    #[ignore = "a half-minute stress, run by hand"]
    fn reads_find_every_object_while_the_repository_is_fetched_into_and_repacked() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let dir = tempfile::tempdir().expect("temp dir");
        let src = packed_repo(dir.path());
        let mirror = dir.path().join("mirror");
        git(
            dir.path(),
            &[
                "clone",
                "-q",
                "--mirror",
                "src",
                mirror.to_str().expect("utf-8"),
            ],
        );
        let store = Arc::new(Store::open(&mirror, "mirror").expect("opened"));
        let known = Arc::new(Mutex::new(vec![git(&src, &["rev-parse", "HEAD:f"])]));
        let done = Arc::new(AtomicBool::new(false));
        let misses = Arc::new(Mutex::new(Vec::<String>::new()));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (store, known, done, misses) =
                    (store.clone(), known.clone(), done.clone(), misses.clone());
                std::thread::spawn(move || {
                    let mut reads = 0u64;
                    while !done.load(Ordering::Relaxed) {
                        let oids = known.lock().expect("not poisoned").clone();
                        let mut reader = store.reader();
                        for oid in oids.iter().rev().take(50) {
                            reads += 1;
                            if !matches!(reader.object(oid), Ok(Some(_))) {
                                misses.lock().expect("not poisoned").push(oid.clone());
                            }
                        }
                    }
                    reads
                })
            })
            .collect();
        for i in 1..=300 {
            // Every third commit is fetched as a pack (more objects than git unpacks), the
            // others as loose objects.
            let files = if i % 3 == 0 { 150 } else { 3 };
            for j in 0..files {
                std::fs::write(src.join(format!("g{j}")), format!("{i}-{j}")).expect("written");
            }
            git(&src, &["add", "."]);
            git(&src, &["commit", "-qm", &i.to_string()]);
            let blob = git(&src, &["rev-parse", "HEAD:g0"]);
            git(&mirror, &["fetch", "-q", "--prune", "origin"]);
            known.lock().expect("not poisoned").push(blob);
            if i % 25 == 0 {
                git(&mirror, &["repack", "-a", "-d", "-q"]);
            }
        }
        done.store(true, Ordering::Relaxed);
        let reads: u64 = readers
            .into_iter()
            .map(|reader| reader.join().expect("no panic"))
            .sum();
        let misses = misses.lock().expect("not poisoned");
        assert!(
            misses.is_empty(),
            "{} of {reads} reads missed a present object: {:?}",
            misses.len(),
            &misses[..misses.len().min(5)]
        );
    }

    /// The names of the branches `store` lists, sorted.
    fn branch_names(store: &Store) -> Vec<String> {
        let mut names: Vec<String> = store
            .reader()
            .branches()
            .expect("listed")
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        names.sort();
        names
    }

    /// `git pack-refs` moves loose branches into `packed-refs` while a thread lists the
    /// branches: every listing has every branch made before it began. Without the listings
    /// again, about one in 100 missed the branch being packed (some 100 a run; 2-4 s).
    #[test]
    fn a_listing_of_the_branches_misses_none_while_they_are_packed() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let dir = tempfile::tempdir().expect("temp dir");
        let src = packed_repo(dir.path());
        let store = Arc::new(Store::open(&src.join(".git"), "src").expect("opened"));
        let made = Arc::new(Mutex::new(vec!["main".to_owned()]));
        let done = Arc::new(AtomicBool::new(false));
        let lister = {
            let (store, made, done) = (store.clone(), made.clone(), done.clone());
            std::thread::spawn(move || {
                let (mut listings, mut missed) = (0, Vec::new());
                while !done.load(Ordering::Relaxed) {
                    let expected = made.lock().expect("not poisoned").clone();
                    let listed: HashSet<String> = branch_names(&store).into_iter().collect();
                    listings += 1;
                    missed.extend(expected.into_iter().filter(|b| !listed.contains(b)));
                }
                (listings, missed)
            })
        };
        for i in 0..200 {
            let name = format!("b{i}");
            git(&src, &["branch", &name]);
            made.lock().expect("not poisoned").push(name);
            git(&src, &["pack-refs", "--all"]);
        }
        done.store(true, Ordering::Relaxed);
        let (listings, missed) = lister.join().expect("no panic");
        assert!(listings > 0, "listed");
        assert!(
            missed.is_empty(),
            "{} of {listings} listings missed a branch: {:?}",
            missed.len(),
            &missed[..missed.len().min(5)]
        );
    }

    #[test]
    fn a_branch_that_cannot_be_read_fails_the_listing_rather_than_vanish_from_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let src = packed_repo(dir.path());
        git(&src, &["branch", "kept"]);
        let store = Store::open(&src.join(".git"), "src").expect("opened");
        assert_eq!(branch_names(&store), ["kept", "main"]);
        // A loose ref file that is not a ref: the branch may exist, the listing cannot say.
        std::fs::write(src.join(".git/refs/heads/broken"), "not a ref\n").expect("written");
        let error = store
            .reader()
            .branches()
            .expect_err("a listing that may miss a branch is not an answer");
        assert!(
            error.to_string().contains("could not be read"),
            "says why: {error}"
        );
        assert!(error.retryable(), "tried again later: {error:?}");
    }
}
