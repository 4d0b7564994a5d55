//! The `file` resource type: a rendered file inside the environment's data directory.
//!
//! # Guarantees
//! - A file resource never reads, writes or removes anything outside `ctx.dirs.data`: its path
//!   must be relative, without `..`, and no existing component of it may be a symlink. The
//!   checks and the write are done relative to directory file descriptors opened with
//!   `O_NOFOLLOW`, so a symlink swapped in between the check and the write (by a process of the
//!   same environment, say) makes the write fail instead of escaping. Observing reads the
//!   file the same way, or, when no component of its whole path is a symlink, opens it in one
//!   `openat2` that refuses any (`RESOLVE_NO_SYMLINKS`).
//! - Observing is live: every observation looks at the file on disk. It reads and hashes
//!   the file only when its stat fingerprint (device, inode, size, modification and change
//!   times) is not one this provider has already hashed (see [`FileProvider`]), as git's
//!   index does; the look itself (the open, refusing symlinks, and `fstat`) is made every time.
//! - Writes are atomic: readers see the old content or the new, never a half-written file.
//! - `create` first records the path it is about to write in `<run>/<resource>.file.json`, so
//!   that `delete` with `live: None` (an interrupted create) knows what to remove.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, OpenHow, ResolveFlag, open, openat, openat2, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{Applied, Observation, Provider, ProviderError, ResourceContext, Retry};

/// Configuration of a `file` resource.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Path relative to the environment's data directory, e.g. `etc/app.toml`.
    pub path: String,
    /// The file's content.
    pub content: String,
    /// Permission bits as an octal string, e.g. `"0600"`; `"0644"` if absent.
    #[serde(default)]
    pub mode: Option<String>,
}

/// The `file` provider.
///
/// It remembers, for each file it has read and hashed, the file's stat fingerprint at that
/// moment and the hash, so that observing an unchanged file again is an open and an `fstat`,
/// not a read and a hash: what a long-lived process (the server listing ten thousand
/// environments, the controller's drift passes) observes over and over.
///
/// # Guarantees
/// A hash is reused only for a file whose device, inode, size, modification time and change
/// time (`ctime`, nanoseconds) are all as they were when it was hashed. Any write to a file
/// through `write`, `truncate`, `rename`, a hard link, `chmod` or `chown` sets its `ctime` to
/// the current time, which no process can set back; `utimensat` sets `mtime` but then sets
/// `ctime` too. A fingerprint is remembered only once its `ctime` is [`SETTLED`] in the past
/// when it was taken (the timestamp granularity of the file system, up to FAT's two seconds,
/// and a clock tick, included), so a write in the same tick as the hashed one (git's "racy"
/// case) cannot leave the same fingerprint behind. A hash is trusted for at most
/// [`REVERIFY`], then the file is read again.
///
/// # Assumptions
/// The data directory is on a local file system that keeps `ctime` (every Linux one does;
/// an NFS server's clock far behind this machine's would defeat the [`SETTLED`] rule).
///
/// # Caveats
/// A process writing through a shared memory mapping of the file changes `ctime` only when it
/// first dirties a page after the page was written back, so its later writes to a dirty page
/// are seen when the page is next dirtied after write-back, or after [`REVERIFY`] at the
/// latest. Only the environment's own code can do that (it is its data directory, which it
/// may write at any time anyway).
#[derive(Debug, Default)]
pub struct FileProvider {
    hashed: Hashed,
}

/// How long before a look a file's last change must be for its fingerprint to be remembered.
pub const SETTLED: Duration = Duration::from_secs(3);

/// How long a remembered hash is reused before the file is read and hashed again.
pub const REVERIFY: Duration = Duration::from_secs(300);

/// How many files' hashes are remembered at most: past that, all are forgotten (and read
/// again on the next look). Some 200 bytes each.
const REMEMBERED: usize = 1 << 18;

/// The hashes of files as last read, by their recorded absolute path (as the live record
/// spells it: a key hashed and compared as bytes).
#[derive(Debug, Default)]
struct Hashed(Mutex<std::collections::HashMap<Box<str>, Verified>>);

/// A file's content hash, valid while its fingerprint is this one.
#[derive(Debug, Clone, Copy)]
struct Verified {
    fingerprint: Fingerprint,
    sha256: [u8; 32],
    at: Instant,
}

/// What a file's `fstat` says changes whenever its content may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    fn of(st: &FileStat) -> Fingerprint {
        Fingerprint {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }

    /// Whether the file last changed at least [`SETTLED`] before `taken` (a time read before
    /// the `fstat` that made this fingerprint): then any later write gives it another
    /// `ctime`.
    fn settled(&self, taken: SystemTime) -> bool {
        let Ok(taken) = taken.duration_since(SystemTime::UNIX_EPOCH) else {
            return false;
        };
        let Some(before) = taken.checked_sub(SETTLED) else {
            return false;
        };
        let (secs, nanos) = self.ctime;
        let (Ok(secs), Ok(nanos)) = (u64::try_from(secs), u32::try_from(nanos)) else {
            return false;
        };
        nanos < 1_000_000_000 && Duration::new(secs, nanos) < before
    }
}

impl Hashed {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Box<str>, Verified>> {
        // A panic elsewhere while it was held left the map whole (one insert or remove).
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the file at `path` hashed to when last read, not too long ago.
    fn get(&self, path: &str) -> Option<Verified> {
        self.map()
            .get(path)
            .copied()
            .filter(|verified| verified.at.elapsed() < REVERIFY)
    }

    /// Remembers what the file at `path` hashed to, read after an `fstat` that found
    /// `fingerprint` at `taken`, when that fingerprint is settled; forgets it otherwise.
    fn remember(&self, path: &str, fingerprint: Fingerprint, taken: SystemTime, sha256: [u8; 32]) {
        let mut map = self.map();
        if !fingerprint.settled(taken) {
            map.remove(path);
            return;
        }
        if map.len() >= REMEMBERED && !map.contains_key(path) {
            map.clear();
        }
        map.insert(
            path.into(),
            Verified {
                fingerprint,
                sha256,
                at: Instant::now(),
            },
        );
    }
}

/// What `create` and `update` record as the live object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LiveFile {
    /// Absolute path of the file.
    path: PathBuf,
    /// Hex SHA-256 of the content written.
    sha256: String,
    /// Permission bits written.
    #[serde(default)]
    mode: Option<u32>,
    /// The content's length in bytes (absent in records made before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
}

/// The largest file a look reads to hash, when its record keeps no size: a larger one is no
/// content a stack wrote here (a process may make its file a sparse 16 TiB), and is drift.
const MAX_UNSIZED_LOOK: u64 = 1 << 30;

/// The record of what an interrupted create may have left behind.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    /// The path relative to the data directory.
    path: String,
}

const DEFAULT_MODE: u32 = 0o644;

impl Provider for FileProvider {
    type Config = FileConfig;
    const TYPE: &'static str = "file";

    /// Nothing to wait for once made.
    fn ready_at_once(&self, _config: &Self::Config) -> bool {
        true
    }

    fn create(
        &self,
        ctx: ResourceContext<'_>,
        config: &FileConfig,
    ) -> Result<Applied, ProviderError> {
        let target = DataPath::parse(&config.path)?;
        let mode = parse_mode(config.mode.as_deref())?;
        write_file(ctx, config, &target, mode)?;
        applied(ctx, &target, &config.content, mode)
    }

    fn update(
        &self,
        ctx: ResourceContext<'_>,
        config: &FileConfig,
        live: &Value,
    ) -> Result<Applied, ProviderError> {
        let target = DataPath::parse(&config.path)?;
        let mode = parse_mode(config.mode.as_deref())?;
        let previous = recorded_path(ctx, Some(live))?;
        write_file(ctx, config, &target, mode)?;
        if let Some(previous) = previous.filter(|p| *p != target) {
            previous.remove(&ctx.dirs.data)?;
        }
        applied(ctx, &target, &config.content, mode)
    }

    fn delete(&self, ctx: ResourceContext<'_>, live: Option<&Value>) -> Result<(), ProviderError> {
        if let Some(target) = recorded_path(ctx, live)? {
            target.remove(&ctx.dirs.data)?;
        }
        let marker = marker_path(ctx);
        match std::fs::remove_file(&marker) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ProviderError::Io {
                context: format!("failed to remove {}", marker.display()),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    fn observe(
        &self,
        ctx: ResourceContext<'_>,
        // What is observed is the file the live record names (where the configuration's
        // path pointed when it was last applied).
        _config: &FileConfig,
        live: &Value,
    ) -> Result<Observation, ProviderError> {
        // Borrowed from the record: a listing observes thousands of files.
        let recorded = LiveRef::deserialize(live)
            .map_err(|e| ProviderError::Config(format!("file: unreadable live record: {e}")))?;
        self.observe_live(ctx, &recorded)
    }

    /// Reads the live record in place from its text, and needs no configuration.
    fn observe_recorded(
        &self,
        ctx: ResourceContext<'_>,
        _config: &str,
        live: &str,
    ) -> Result<Observation, ProviderError> {
        let recorded: LiveRef<'_> = serde_json::from_str(live)
            .map_err(|e| ProviderError::Config(format!("file: unreadable live record: {e}")))?;
        self.observe_live(ctx, &recorded)
    }
}

impl FileProvider {
    /// What the file named by a live record looks like now against what it records.
    fn observe_live(
        &self,
        ctx: ResourceContext<'_>,
        recorded: &LiveRef<'_>,
    ) -> Result<Observation, ProviderError> {
        let found = match self.quick_look(ctx, &recorded.path) {
            Some(found) => found,
            None => self.look(ctx, &recorded.path, recorded.size)?,
        };
        let found = match found {
            Ok(found) => found,
            Err((Unreadable::Missing, shown)) => {
                return Ok(Observation::Missing {
                    reason: format!("{} does not exist", shown.display()),
                });
            }
            Err((Unreadable::Symlink(at), _)) => {
                return Ok(Observation::Drifted {
                    reason: format!("{} is now a symlink", at.display()),
                });
            }
            Err((Unreadable::NotAFile, shown)) => {
                return Ok(Observation::Drifted {
                    reason: format!("{} is no longer a regular file", shown.display()),
                });
            }
            Err((Unreadable::Error(e), _)) => return Err(e),
        };
        if found.sha256.is_none() || from_hex(&recorded.sha256) != found.sha256 {
            return Ok(Observation::Drifted {
                reason: "content changed on disk".to_owned(),
            });
        }
        let want = recorded.mode.unwrap_or(DEFAULT_MODE);
        if found.mode != want {
            return Ok(Observation::Drifted {
                reason: format!("mode changed on disk ({:04o}, want {want:04o})", found.mode),
            });
        }
        Ok(Observation::InSync)
    }

    /// The file's hash and mode from its fingerprint alone: when it was hashed before and
    /// its fingerprint is the same now (one `fstatat` in its directory, opened once for the
    /// pass: [`crate::OpenDirs`]). `None` when it must be looked at the long way: not hashed,
    /// changed, or anything odd on its path (which the long way names).
    fn quick_look(&self, ctx: ResourceContext<'_>, recorded: &str) -> Option<Look> {
        let known = self.hashed.get(recorded)?;
        let relative = Path::new(recorded).strip_prefix(&ctx.dirs.data).ok()?;
        if !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return None;
        }
        let dir = ctx.dirs.opened.dir(&ctx.dirs.data, relative.parent()?)?;
        let st = fstatat(&*dir, relative.file_name()?, AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
        (is_type(st.st_mode, SFlag::S_IFREG) && Fingerprint::of(&st) == known.fingerprint)
            .then_some(Ok(Found {
                sha256: Some(known.sha256),
                mode: st.st_mode & 0o7777,
            }))
    }

    /// The file read and hashed (and its hash remembered), without following a symlink; or
    /// why it cannot be, with the path to name.
    fn look(
        &self,
        ctx: ResourceContext<'_>,
        recorded: &str,
        size: Option<u64>,
    ) -> Result<Look, ProviderError> {
        let target = live_path(ctx, Path::new(recorded))?;
        Ok(target
            .look(&ctx.dirs.data, recorded, size, &self.hashed)
            .map_err(|why| (why, ctx.dirs.data.join(&target.relative))))
    }
}

/// What a look at a file found, or why it could not read it and the path to name.
type Look = Result<Found, (Unreadable, PathBuf)>;

fn applied(
    ctx: ResourceContext<'_>,
    target: &DataPath,
    content: &str,
    mode: u32,
) -> Result<Applied, ProviderError> {
    let path = ctx.dirs.data.join(&target.relative);
    let live = LiveFile {
        path: path.clone(),
        sha256: hex_sha256(content.as_bytes()),
        mode: Some(mode),
        size: Some(content.len() as u64),
    };
    Ok(Applied {
        outputs: BTreeMap::from([("path".to_owned(), json!(path.display().to_string()))]),
        secret_outputs: Vec::new(),
        live: crate::to_json(&live, "the file's path")?,
        ready: false,
    })
}

fn marker_path(ctx: ResourceContext<'_>) -> PathBuf {
    ctx.dirs.run.join(format!("{}.file.json", ctx.resource))
}

/// Writes the marker that names the file, then the file itself at `target`.
fn write_file(
    ctx: ResourceContext<'_>,
    config: &FileConfig,
    target: &DataPath,
    mode: u32,
) -> Result<(), ProviderError> {
    write_marker(ctx, &config.path)?;
    target.write(
        &ctx.dirs.data,
        config.content.as_bytes(),
        mode,
        ctx.sandbox.ids,
    )
}

fn write_marker(ctx: ResourceContext<'_>, relative: &str) -> Result<(), ProviderError> {
    let marker = marker_path(ctx);
    let text = serde_json::to_vec(&Marker {
        path: relative.to_owned(),
    })
    .expect("a marker serializes");
    crate::atomic_write(&marker, &text).map_err(|source| ProviderError::Io {
        context: format!("failed to write {}", marker.display()),
        source,
    })
}

/// The file recorded as `live`, or, with no record, the one an interrupted create named in its
/// marker; `None` if neither exists.
fn recorded_path(
    ctx: ResourceContext<'_>,
    live: Option<&Value>,
) -> Result<Option<DataPath>, ProviderError> {
    if let Some(live) = live {
        let recorded = LiveRef::deserialize(live)
            .map_err(|e| ProviderError::Config(format!("file: unreadable live record: {e}")))?;
        return live_path(ctx, Path::new(recorded.path.as_ref())).map(Some);
    }
    let marker = marker_path(ctx);
    match std::fs::read(&marker) {
        Ok(bytes) => {
            let marker: Marker = serde_json::from_slice(&bytes).map_err(|e| {
                ProviderError::Config(format!("file: unreadable {}: {e}", marker.display()))
            })?;
            DataPath::parse(&marker.path).map(Some)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ProviderError::Io {
            context: format!("failed to read {}", marker.display()),
            source,
        }),
    }
}

/// The file `recorded` (a live record's absolute path) names, checked to be below the data
/// directory.
fn live_path(ctx: ResourceContext<'_>, recorded: &Path) -> Result<DataPath, ProviderError> {
    let relative = recorded.strip_prefix(&ctx.dirs.data).map_err(|_| {
        ProviderError::Config(format!(
            "file: recorded path {} is outside the data directory {}; refusing to touch it",
            recorded.display(),
            ctx.dirs.data.display()
        ))
    })?;
    let relative = relative.to_str().ok_or_else(|| {
        ProviderError::Config(format!(
            "file: recorded path {} is not UTF-8",
            recorded.display()
        ))
    })?;
    DataPath::parse(relative)
}

/// Parses `"0644"`, `"644"` or `"0o644"`.
fn parse_mode(mode: Option<&str>) -> Result<u32, ProviderError> {
    let Some(text) = mode else {
        return Ok(DEFAULT_MODE);
    };
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        // The engine writes the file (as root, in uid mode) into the environment's own
        // directory: a set-uid, set-gid or sticky bit would hand whoever wrote the stack a
        // privileged program.
        Ok(bits) if !digits.is_empty() && bits > 0o777 && bits <= 0o7777 => {
            Err(ProviderError::Config(format!(
                "file: `mode` {text:?} sets the set-uid, set-gid or sticky bit, which Slipway \
                 refuses; give permission bits only, like \"0755\""
            )))
        }
        Ok(bits) if !digits.is_empty() && bits <= 0o777 && !digits.starts_with('+') => Ok(bits),
        _ => Err(ProviderError::Config(format!(
            "file: `mode` {text:?} is not an octal permission like \"0644\""
        ))),
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in Sha256::digest(bytes) {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// The 32 bytes a 64-digit hex SHA-256 spells, if it is one.
fn from_hex(text: &str) -> Option<[u8; 32]> {
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// A checked path below the data directory: its directory components and its file name, all
/// plain names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DataPath {
    relative: PathBuf,
    dirs: Vec<PathBuf>,
    name: PathBuf,
}

/// What a file's current state on disk is.
struct Found {
    /// The SHA-256 of its content; `None` when it was not read, its size being another than
    /// the content's.
    sha256: Option<[u8; 32]>,
    mode: u32,
}

/// A live record's fields that observing reads, borrowed from it (but for a string with an
/// escape in its text).
#[derive(Deserialize)]
struct LiveRef<'a> {
    #[serde(borrow)]
    path: Cow<'a, str>,
    #[serde(borrow)]
    sha256: Cow<'a, str>,
    #[serde(default)]
    mode: Option<u32>,
    #[serde(default)]
    size: Option<u64>,
}

/// Why a file could not be read.
enum Unreadable {
    /// It, or a directory on its way, does not exist.
    Missing,
    /// A component (this path) is a symlink.
    Symlink(PathBuf),
    /// It is a directory or a special file.
    NotAFile,
    /// Anything else.
    Error(ProviderError),
}

impl DataPath {
    /// Checks `path` from a configuration.
    fn parse(path: &str) -> Result<DataPath, ProviderError> {
        let refuse = |why: &str| {
            Err(ProviderError::Config(format!(
                "file: `path` {path:?} {why}; give a relative path inside the environment's \
                 data directory, like \"etc/app.toml\""
            )))
        };
        if path.is_empty() {
            return refuse("is empty");
        }
        if path.contains('\0') {
            return refuse("contains a NUL character");
        }
        let mut names = Vec::new();
        for component in Path::new(path).components() {
            match component {
                Component::Normal(name) => names.push(PathBuf::from(name)),
                Component::CurDir => {}
                Component::ParentDir => return refuse("contains `..`"),
                Component::RootDir | Component::Prefix(_) => return refuse("is absolute"),
            }
        }
        if path.ends_with('/') {
            return refuse("names a directory");
        }
        let Some(name) = names.pop() else {
            return refuse("names no file");
        };
        Ok(DataPath {
            relative: names.iter().chain([&name]).collect(),
            dirs: names,
            name,
        })
    }

    /// The absolute path of `prefix` components of this path, for messages.
    fn shown(&self, data: &Path, prefix: usize) -> PathBuf {
        let mut path = data.to_owned();
        path.extend(self.dirs.iter().chain([&self.name]).take(prefix));
        path
    }

    /// Opens the chain of directories from `data` down to the file's parent, creating missing
    /// ones if `create` (owned by `owner`, the environment's uid/gid, when given). Returns
    /// every directory's descriptor, `data`'s first.
    fn open_dirs(
        &self,
        data: &Path,
        create: bool,
        owner: Option<(u32, u32)>,
    ) -> Result<Vec<OwnedFd>, Unreadable> {
        let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        // The data directory itself is never a link either (its parent belongs to the
        // engine, so only the engine could have made one).
        let root =
            open(data, dir_flags | OFlag::O_NOFOLLOW, Mode::empty()).map_err(|e| match e {
                Errno::ENOENT => Unreadable::Missing,
                e => Unreadable::Error(io_error(format!("failed to open {}", data.display()), e)),
            })?;
        let mut chain = vec![root];
        for (i, name) in self.dirs.iter().enumerate() {
            let parent = chain
                .last()
                .expect("the chain starts with the data directory");
            let mut made = false;
            let opened = match openat(parent, name, dir_flags | OFlag::O_NOFOLLOW, Mode::empty()) {
                Err(Errno::ENOENT) if create => {
                    match mkdirat(parent, name, Mode::from_bits_truncate(0o755)) {
                        Ok(()) => made = true,
                        Err(Errno::EEXIST) => {}
                        Err(e) => {
                            let at = self.shown(data, i + 1);
                            return Err(Unreadable::Error(io_error(
                                format!("failed to create directory {}", at.display()),
                                e,
                            )));
                        }
                    }
                    openat(parent, name, dir_flags | OFlag::O_NOFOLLOW, Mode::empty())
                }
                other => other,
            };
            match opened {
                Ok(fd) => {
                    // A directory we made in the environment's data belongs to the
                    // environment, like the rest of it.
                    if let (true, Some((uid, gid))) = (made, owner) {
                        std::os::unix::fs::fchown(&fd, Some(uid), Some(gid)).map_err(|e| {
                            Unreadable::Error(ProviderError::Io {
                                context: format!(
                                    "failed to give {} to the environment",
                                    self.shown(data, i + 1).display()
                                ),
                                source: e,
                            })
                        })?;
                    }
                    chain.push(fd)
                }
                Err(Errno::ENOENT) => return Err(Unreadable::Missing),
                Err(e) => return Err(self.classify(parent, name, data, i + 1, e)),
            }
        }
        Ok(chain)
    }

    /// Turns an open failure of `name` in `parent` into a symlink refusal when it is one.
    fn classify(
        &self,
        parent: &OwnedFd,
        name: &Path,
        data: &Path,
        prefix: usize,
        e: Errno,
    ) -> Unreadable {
        let at = self.shown(data, prefix);
        match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if is_type(st.st_mode, SFlag::S_IFLNK) => Unreadable::Symlink(at),
            Ok(_) if matches!(e, Errno::ENOTDIR | Errno::EISDIR) => Unreadable::NotAFile,
            _ => Unreadable::Error(io_error(format!("failed to open {}", at.display()), e)),
        }
    }

    /// Writes `content` with `mode` atomically, creating parent directories; the file (and
    /// the directories made) belong to `owner`, the environment's uid/gid, when given, so that
    /// its code can read a private file.
    fn write(
        &self,
        data: &Path,
        content: &[u8],
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<(), ProviderError> {
        let target = self.shown(data, usize::MAX);
        let chain = self
            .open_dirs(data, true, owner)
            .map_err(|why| self.refusal(data, why))?;
        let dir = chain
            .last()
            .expect("the chain starts with the data directory");
        match fstatat(dir, &self.name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if is_type(st.st_mode, SFlag::S_IFLNK) => {
                return Err(self.refusal(data, Unreadable::Symlink(target)));
            }
            Ok(st) if !is_type(st.st_mode, SFlag::S_IFREG) => {
                return Err(self.refusal(data, Unreadable::NotAFile));
            }
            _ => {}
        }
        let temp = temp_name(&self.name);
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(dir, &temp, flags, Mode::from_bits_truncate(0o600)).map_err(|e| {
            io_error(
                format!("failed to create a temporary file for {}", target.display()),
                e,
            )
        })?;
        let written = (|| -> Result<(), ProviderError> {
            let mut file = File::from(fd);
            file.write_all(content)
                .map_err(|source| ProviderError::Io {
                    context: format!("failed to write {}", target.display()),
                    source,
                })?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|source| {
                    ProviderError::Io {
                        context: format!("failed to give {} to the environment", target.display()),
                        source,
                    }
                })?;
            }
            // Set explicitly: the mode given to open is filtered by the umask (and a chown
            // clears set-id bits).
            fchmod(file.as_fd(), Mode::from_bits_truncate(mode)).map_err(|e| {
                io_error(format!("failed to set the mode of {}", target.display()), e)
            })?;
            file.sync_all().map_err(|source| ProviderError::Io {
                context: format!("failed to sync {}", target.display()),
                source,
            })?;
            renameat(dir, &temp, dir, &self.name)
                .map_err(|e| io_error(format!("failed to replace {}", target.display()), e))
        })();
        if written.is_err() {
            let _ = unlinkat(dir, &temp, UnlinkatFlags::NoRemoveDir);
        }
        written
    }

    /// The file's content hash and mode, read without following symlinks, and remembered in
    /// `hashed`: `recorded` is its absolute path (the data directory's joined with this one,
    /// as the live record has it). Not read (no hash) when its size is not `size`, the
    /// content's (more than [`MAX_UNSIZED_LOOK`] when that is not known): it differs, and
    /// reading a file the environment's code may have made huge is what it must not make
    /// the controller do.
    fn look(
        &self,
        data: &Path,
        recorded: &str,
        size: Option<u64>,
        hashed: &Hashed,
    ) -> Result<Found, Unreadable> {
        let fd = match open_plain(Path::new(recorded), OFlag::O_RDONLY | OFlag::O_NONBLOCK) {
            Some(fd) => fd,
            None => self.open_checked(data)?,
        };
        // Read before the `fstat`: what `Fingerprint::settled` compares the change time with.
        let taken = SystemTime::now();
        let st = self.stat(data, &fd)?;
        let found = st.st_size as u64;
        if size.map_or(found > MAX_UNSIZED_LOOK, |size| found != size) {
            return Ok(Found {
                sha256: None,
                mode: st.st_mode & 0o7777,
            });
        }
        // Hashed as it is read, in pieces: the file may have grown since the `fstat`. Read
        // with `read` on a buffer rather than `File::read_to_end`, which would ask for the size
        // and the position again (a listing observes thousands of files).
        let mut file = File::from(fd);
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; (found as usize).clamp(1, 1 << 16) + 1];
        loop {
            match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buffer[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Unreadable::Error(ProviderError::Io {
                        context: format!(
                            "failed to read {}",
                            self.shown(data, usize::MAX).display()
                        ),
                        source,
                    }));
                }
            }
        }
        let sha256: [u8; 32] = hasher.finalize().into();
        // The content read after that `fstat`: a write since then changed the file's `ctime`,
        // so this fingerprint is not the one a later look finds.
        hashed.remember(recorded, Fingerprint::of(&st), taken, sha256);
        Ok(Found {
            sha256: Some(sha256),
            mode: st.st_mode & 0o7777,
        })
    }

    /// `fd`'s `fstat`, when it is a regular file.
    fn stat(&self, data: &Path, fd: &OwnedFd) -> Result<FileStat, Unreadable> {
        let st = fstat(fd).map_err(|e| {
            Unreadable::Error(io_error(
                format!("failed to stat {}", self.shown(data, usize::MAX).display()),
                e,
            ))
        })?;
        if !is_type(st.st_mode, SFlag::S_IFREG) {
            return Err(Unreadable::NotAFile);
        }
        Ok(st)
    }

    /// Opens the file for reading from `data` down, a directory at a time, each opened
    /// without following a symlink.
    fn open_checked(&self, data: &Path) -> Result<OwnedFd, Unreadable> {
        let chain = self.open_dirs(data, false, None)?;
        let dir = chain
            .last()
            .expect("the chain starts with the data directory");
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        match openat(dir, &self.name, flags, Mode::empty()) {
            Ok(fd) => Ok(fd),
            Err(Errno::ENOENT) => Err(Unreadable::Missing),
            Err(e) => Err(self.classify(dir, &self.name, data, usize::MAX, e)),
        }
    }

    /// Removes the file, then each parent directory below `data` that is left empty.
    /// Succeeds if it is already gone.
    fn remove(&self, data: &Path) -> Result<(), ProviderError> {
        let chain = match self.open_dirs(data, false, None) {
            Ok(chain) => chain,
            // A directory on the way that is now a link (or not a directory) was put there by
            // someone else: what we wrote cannot be behind it, and nothing is followed.
            Err(Unreadable::Missing | Unreadable::Symlink(_) | Unreadable::NotAFile) => {
                return Ok(());
            }
            Err(why) => return Err(self.refusal(data, why)),
        };
        let dir = chain
            .last()
            .expect("the chain starts with the data directory");
        let target = self.shown(data, usize::MAX);
        match fstatat(dir, &self.name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => {}
            // A directory placed where the file was is not ours to remove.
            Ok(st) if is_type(st.st_mode, SFlag::S_IFDIR) => {}
            // Unlinking a symlink removes the link itself, which is inside `data`.
            _ => match unlinkat(dir, &self.name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => {
                    return Err(io_error(
                        format!("failed to remove {}", target.display()),
                        e,
                    ));
                }
            },
        }
        for (parent, name) in chain.iter().zip(&self.dirs).rev() {
            if unlinkat(parent, name, UnlinkatFlags::RemoveDir).is_err() {
                // Not empty (or already gone): everything above it stays too.
                break;
            }
        }
        Ok(())
    }

    fn refusal(&self, data: &Path, why: Unreadable) -> ProviderError {
        let target = self.shown(data, usize::MAX);
        match why {
            Unreadable::Missing => ProviderError::Failed {
                message: format!("data directory {} does not exist", data.display()),
                log_tail: None,
                retry: Retry::Retryable,
            },
            Unreadable::Symlink(at) => ProviderError::Failed {
                message: format!(
                    "refusing to write {}: {} is a symlink, and a file resource never \
                     follows one (remove it)",
                    target.display(),
                    at.display()
                ),
                log_tail: None,
                retry: Retry::Terminal,
            },
            Unreadable::NotAFile => ProviderError::Failed {
                message: format!(
                    "refusing to write {}: something other than a regular file is in the way",
                    target.display()
                ),
                log_tail: None,
                retry: Retry::Terminal,
            },
            Unreadable::Error(e) => e,
        }
    }
}

/// Opens `path` (with `flags`: for reading, or `O_PATH` to look at its inode) in one system
/// call when no component of it, from `/` down, is a symlink (`openat2` with
/// `RESOLVE_NO_SYMLINKS`, Linux 5.6): a stronger check than [`DataPath::open_checked`] makes,
/// which observing a listing's thousands of files cannot afford component by component.
/// `None` when that does not open it, for whatever reason (a symlink on the way, the home's
/// own path included; a missing or odd component; an older kernel): the caller then looks
/// component by component, which says what is wrong.
fn open_plain(path: &Path, flags: OFlag) -> Option<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
    openat2(AT_FDCWD, path, how).ok()
}

fn is_type(st_mode: u32, kind: SFlag) -> bool {
    st_mode & SFlag::S_IFMT.bits() == kind.bits()
}

fn io_error(context: String, errno: Errno) -> ProviderError {
    ProviderError::Io {
        context,
        source: std::io::Error::from(errno),
    }
}

/// A name for a temporary file next to `name`, unique within this machine.
fn temp_name(name: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut temp = b".".to_vec();
    temp.extend_from_slice(name.as_os_str().as_bytes());
    temp.extend_from_slice(format!(".slipway-{}-{n}.tmp", std::process::id()).as_bytes());
    PathBuf::from(OsStr::from_bytes(&temp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_below_the_data_directory() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a\0b",
            "a/",
            ".",
            "./",
        ] {
            assert!(DataPath::parse(bad).is_err(), "path {bad:?} is refused");
        }
        let ok = DataPath::parse("./etc/app.toml").expect("a plain relative path");
        assert_eq!(
            ok.relative,
            PathBuf::from("etc/app.toml"),
            "`.` components are dropped"
        );
    }

    #[test]
    fn a_fingerprint_is_settled_only_when_its_change_is_older_than_the_file_systems_tick() {
        let taken = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let changed = |ago: Duration| {
            let at = Duration::from_secs(1_000_000) - ago;
            Fingerprint {
                dev: 1,
                ino: 2,
                size: 3,
                mtime: (0, 0),
                ctime: (at.as_secs() as i64, i64::from(at.subsec_nanos())),
            }
        };
        assert!(
            !changed(Duration::ZERO).settled(taken),
            "a change at the look is racy"
        );
        assert!(
            !changed(Duration::from_millis(1999)).settled(taken),
            "a change within two seconds (FAT's granularity) is racy"
        );
        assert!(
            !changed(SETTLED).settled(taken),
            "a change exactly SETTLED before is racy"
        );
        assert!(
            changed(SETTLED + Duration::from_nanos(1)).settled(taken),
            "a change longer ago is settled"
        );
        let future = Fingerprint {
            ctime: (1_000_001, 0),
            ..changed(Duration::ZERO)
        };
        assert!(!future.settled(taken), "a change after the look is racy");
        let negative = Fingerprint {
            ctime: (-5, 0),
            ..changed(Duration::ZERO)
        };
        assert!(
            !negative.settled(taken),
            "a change time before 1970 is never trusted"
        );
    }

    #[test]
    fn hashes_are_read_from_64_hex_digits_only() {
        let hex = "00ff".repeat(16);
        let bytes = from_hex(&hex).expect("64 hex digits");
        assert_eq!(bytes[0], 0x00);
        assert_eq!(bytes[1], 0xff);
        assert_eq!(
            from_hex(&hex.to_uppercase()),
            Some(bytes),
            "either case is read"
        );
        for bad in ["", "00", &"0g".repeat(32), &"0".repeat(65), &"é".repeat(32)] {
            assert_eq!(from_hex(bad), None, "{bad:?} is not a hash");
        }
    }

    #[test]
    fn modes_are_octal_permissions() {
        assert_eq!(parse_mode(None).expect("default"), 0o644, "default mode");
        assert_eq!(
            parse_mode(Some("0600")).expect("0600"),
            0o600,
            "leading zero"
        );
        assert_eq!(
            parse_mode(Some("0o755")).expect("0o755"),
            0o755,
            "0o prefix"
        );
        for bad in ["", "999", "rw-r--r--", "+644", "17777"] {
            assert!(parse_mode(Some(bad)).is_err(), "mode {bad:?} is refused");
        }
        for special in ["4755", "2755", "1777", "0o6777"] {
            let err = parse_mode(Some(special)).expect_err("special bits are refused");
            assert!(
                err.to_string().contains("set-uid"),
                "mode {special:?} is refused saying why: {err}"
            );
        }
    }
}
