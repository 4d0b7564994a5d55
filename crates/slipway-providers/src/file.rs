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
//! - Writes are atomic: readers see the old content or the new, never a half-written file.
//! - `create` first records the path it is about to write in `<run>/<resource>.file.json`, so
//!   that `delete` with `live: None` (an interrupted create) knows what to remove.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, OpenHow, ResolveFlag, open, openat, openat2, renameat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
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
#[derive(Debug, Clone, Copy, Default)]
pub struct FileProvider;

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
}

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
        let recorded = LiveFile::deserialize(live)
            .map_err(|e| ProviderError::Config(format!("file: unreadable live record: {e}")))?;
        let target = live_path(ctx, &recorded)?;
        let shown = || ctx.dirs.data.join(&target.relative);
        let found = match target.read(&ctx.dirs.data) {
            Ok(found) => found,
            Err(Unreadable::Missing) => {
                return Ok(Observation::Missing {
                    reason: format!("{} does not exist", shown().display()),
                });
            }
            Err(Unreadable::Symlink(at)) => {
                return Ok(Observation::Drifted {
                    reason: format!("{} is now a symlink", at.display()),
                });
            }
            Err(Unreadable::NotAFile) => {
                return Ok(Observation::Drifted {
                    reason: format!("{} is no longer a regular file", shown().display()),
                });
            }
            Err(Unreadable::Error(e)) => return Err(e),
        };
        if hex_sha256(&found.content) != recorded.sha256 {
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
}

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
    };
    Ok(Applied {
        outputs: BTreeMap::from([("path".to_owned(), json!(path.display().to_string()))]),
        secret_outputs: Vec::new(),
        live: crate::to_json(&live, "the file's path")?,
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
        let recorded = LiveFile::deserialize(live)
            .map_err(|e| ProviderError::Config(format!("file: unreadable live record: {e}")))?;
        return live_path(ctx, &recorded).map(Some);
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

/// The file `recorded` names, checked to be below the data directory.
fn live_path(ctx: ResourceContext<'_>, recorded: &LiveFile) -> Result<DataPath, ProviderError> {
    let relative = recorded.path.strip_prefix(&ctx.dirs.data).map_err(|_| {
        ProviderError::Config(format!(
            "file: recorded path {} is outside the data directory {}; refusing to touch it",
            recorded.path.display(),
            ctx.dirs.data.display()
        ))
    })?;
    let relative = relative.to_str().ok_or_else(|| {
        ProviderError::Config(format!(
            "file: recorded path {} is not UTF-8",
            recorded.path.display()
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
    content: Vec<u8>,
    mode: u32,
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

    /// Reads the file's content and mode without following symlinks.
    fn read(&self, data: &Path) -> Result<Found, Unreadable> {
        let fd = match self.open_plain(data) {
            Some(fd) => fd,
            None => self.open_checked(data)?,
        };
        let st = fstat(&fd).map_err(|e| {
            Unreadable::Error(io_error(
                format!("failed to stat {}", self.shown(data, usize::MAX).display()),
                e,
            ))
        })?;
        if !is_type(st.st_mode, SFlag::S_IFREG) {
            return Err(Unreadable::NotAFile);
        }
        // Sized by the stat in hand, and read through `take`: `File::read_to_end` would ask
        // for the size and the position again (a listing observes thousands of files).
        let size = usize::try_from(st.st_size).unwrap_or(0);
        let mut content = Vec::with_capacity(size.saturating_add(1));
        File::from(fd)
            .take(u64::MAX)
            .read_to_end(&mut content)
            .map_err(|source| {
                Unreadable::Error(ProviderError::Io {
                    context: format!("failed to read {}", self.shown(data, usize::MAX).display()),
                    source,
                })
            })?;
        Ok(Found {
            content,
            mode: st.st_mode & 0o7777,
        })
    }

    /// Opens the file for reading in one system call when no component of its whole path,
    /// from `/` down, is a symlink (`openat2` with `RESOLVE_NO_SYMLINKS`, Linux 5.6): a
    /// stronger check than [`DataPath::open_checked`] makes, which observing a listing's
    /// thousands of files cannot afford component by component. `None` when that does not
    /// open it, for whatever reason (a symlink on the way, the home's own path included; a
    /// missing or odd component; an older kernel): the caller then looks component by
    /// component, which says what is wrong.
    fn open_plain(&self, data: &Path) -> Option<OwnedFd> {
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
        openat2(AT_FDCWD, &data.join(&self.relative), how).ok()
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
