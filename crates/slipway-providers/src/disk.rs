//! The disk an environment's code holds, against `[local] max_disk`.
//!
//! Who: anyone who can push a branch that gets an environment. Without a bound its code fills
//! the file system the engine's home is on: the state database's writes fail, a PostgreSQL
//! server on the same disk stops, and every environment with them. Under Landlock the code
//! may write only its environment's data and temporary directories (and, in uid mode without
//! Landlock, what any user may: `/tmp`); those two are what is measured here.
//!
//! The kernel sets no per-uid quota here (that needs a file system mounted for quotas), so the
//! bound is kept as the kubelet keeps a pod's ephemeral storage, in two parts:
//! - **one file** can never grow past the limit: every command of the environment starts with
//!   its `RLIMIT_FSIZE` (soft and hard) at it, so the kernel refuses the write that would
//!   (`EFBIG`, after `SIGXFSZ`);
//! - **all files together** are measured by walking the directories
//!   ([`DiskLimit::exceeded`]): by the environment's supervisor every [`CHECK_EVERY`], and by
//!   the engine before a job or exec program starts and each [`RUN_CHECK_EVERY`] while it
//!   runs. Past the limit the environment's code is stopped, and none of it starts again until
//!   it holds less. Between two walks the code can write more: the bound is the limit plus
//!   what it writes in one interval.
//!
//! The walk runs with the engine's rights over a tree the code owns and changes while it is
//! walked: it opens each directory from its parent's descriptor, never following a symlink
//! (`O_NOFOLLOW`), never leaves the file system of the directory it started from, counts a
//! file with several links once, and goes at most [`MAX_DEPTH`] directories deep. A tree it
//! cannot measure (deeper than that, or a directory it may not read) counts as over the limit:
//! code cannot hide what it holds by making it unreadable.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use serde::{Deserialize, Serialize};

/// How often an environment's supervisor measures its directories.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How often the engine measures them while a job or exec program of the environment runs.
pub const RUN_CHECK_EVERY: Duration = Duration::from_secs(1);
/// The deepest directory the walk measures (one descriptor open per level).
pub const MAX_DEPTH: usize = 128;
/// The most entries a walk measures (about five seconds of walking): a tree of more counts
/// as over the limit, so that no walk holds its caller for long.
pub const MAX_ENTRIES: u64 = 5_000_000;

/// An environment's disk limit: the most its directories may hold, allocated blocks counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskLimit {
    /// The most bytes allocated to what its directories hold, all together.
    pub max: u64,
    /// The directories its code may write to: its data and temporary directories.
    pub dirs: Vec<PathBuf>,
    /// The `cgroup.procs` file of the environment's control group (uid mode, where it has
    /// one): what its processes hold open after removing it counts too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub procs: Option<PathBuf>,
    /// uid mode: the uid that is no environment's, from which every process of the
    /// environment's uid is killed once it is past the limit
    /// ([`crate::sandbox::kill_everything_of`]'s `spare`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killer: Option<u32>,
}

/// What directories hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes allocated (`st_blocks` × 512: a sparse file counts what it really takes).
    pub bytes: u64,
    /// Files, directories and other entries, each counted once.
    pub files: u64,
}

impl DiskLimit {
    /// Why the environment's code may not run on: its directories hold more than the limit,
    /// or cannot be measured; `None` while they hold no more.
    pub fn exceeded(&self) -> Option<String> {
        self.exceeded_past(self.max)
    }

    /// [`DiskLimit::exceeded`] by what the directories' files hold, not what processes hold
    /// open after removing them: the quick look before a process starts (its supervisor
    /// looks at both).
    pub fn exceeded_by_files(&self) -> Option<String> {
        self.judged(self.max, true, None)
    }

    /// What the directories hold now, in bytes; `None` when they cannot be measured.
    pub fn held(&self) -> Option<u64> {
        usage(&self.dirs, self.procs.as_deref())
            .ok()
            .map(|used| used.bytes)
    }

    /// [`DiskLimit::exceeded`], with `allowed` bytes taken as the limit when more.
    pub fn exceeded_past(&self, allowed: u64) -> Option<String> {
        self.judged(allowed, true, self.procs.as_deref())
    }

    /// Whether a command that may run over the limit (to see or remove what is there) made
    /// the directories grow past `allowed` bytes, what they held at its start: only what is
    /// measured counts (a tree that cannot be measured does not stop it).
    pub fn grown_past(&self, allowed: u64) -> Option<String> {
        self.judged(allowed, false, self.procs.as_deref())
    }

    /// Why the directories (and what the processes of `procs` hold open) are past `allowed`
    /// (at least the limit); one that cannot be measured is, with `unmeasured_over`. Measured twice before saying so: a file removed
    /// between the walk and the look at open files would be counted twice.
    fn judged(&self, allowed: u64, unmeasured_over: bool, procs: Option<&Path>) -> Option<String> {
        let allowed = self.max.max(allowed);
        let over = |measured: &Result<Usage, String>| match measured {
            Ok(used) => used.bytes > allowed,
            Err(_) => unmeasured_over,
        };
        let mut measured = usage(&self.dirs, procs);
        if over(&measured) {
            measured = usage(&self.dirs, procs);
        }
        match measured {
            Ok(used) if used.bytes <= allowed => None,
            Ok(used) => Some(format!(
                "its environment's data and temporary directories hold {} in {} files, past \
                 its disk limit of {} (`[local] max_disk`): remove files there (or destroy \
                 the environment), or raise the limit",
                show(used.bytes),
                used.files,
                show(self.max)
            )),
            Err(why) if unmeasured_over => Some(format!(
                "its environment's data and temporary directories cannot be measured against \
                 its disk limit of {} (`[local] max_disk`): {why}",
                show(self.max)
            )),
            Err(_) => None,
        }
    }
}

/// A command refused because its environment's directories hold more than its limit: a
/// condition that passes (files removed, the limit raised), not a fault of the command
/// ([`refused_for_disk`]).
#[derive(Debug)]
pub(crate) struct OverLimit(pub String);

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OverLimit {}

/// Whether `e` is a command refused for its environment's disk ([`OverLimit`]).
pub(crate) fn refused_for_disk(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<OverLimit>())
}

/// `"12.0 MiB"`: a size in binary units.
pub fn show(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// What `dirs` hold together (a file linked from two of them counted once), and the files
/// on their file systems that the processes listed in `procs` (a `cgroup.procs`) hold open
/// though no directory names them any more (removed, or made with `O_TMPFILE`): their blocks
/// are taken until closed. A directory that does not exist holds nothing.
///
/// # Errors
/// What could not be measured, named by its path: a directory deeper than [`MAX_DEPTH`], or
/// on another file system (a mount, a btrfs subvolume), more than [`MAX_ENTRIES`] entries,
/// or one that cannot be opened or read (not one that vanished meanwhile).
pub fn usage(dirs: &[PathBuf], procs: Option<&Path>) -> Result<Usage, String> {
    let mut walked = Walked::default();
    let mut devices = Vec::new();
    for dir in dirs {
        if let Some(device) = walk(dir, &mut walked)? {
            devices.push(device);
        }
    }
    if let Some(procs) = procs {
        unlinked_open(procs, &devices, &mut walked)?;
    }
    Ok(walked.used)
}

/// What a measure found so far.
#[derive(Default)]
struct Walked {
    used: Usage,
    /// Files with several links (or none) counted: each once.
    linked: HashSet<(u64, u64)>,
    /// Entries and descriptors looked at, a repeated link included: at most [`MAX_ENTRIES`].
    visited: u64,
}

impl Walked {
    /// One more entry looked at; `Err` past [`MAX_ENTRIES`].
    fn visit(&mut self) -> Result<(), String> {
        self.visited += 1;
        if self.visited > MAX_ENTRIES {
            return Err(format!(
                "they hold more than {MAX_ENTRIES} entries (files, links, open descriptors)"
            ));
        }
        Ok(())
    }
}

/// Adds the regular files on `devices` that the processes listed in `procs` hold open and
/// that have no name left (`st_nlink` 0), each once: the descriptors of each of their
/// threads (a thread may have a table of its own), the caller's own excepted (a supervisor
/// runs in its environment's group).
fn unlinked_open(procs: &Path, devices: &[u64], walked: &mut Walked) -> Result<(), String> {
    let Ok(pids) = std::fs::read_to_string(procs) else {
        return Ok(());
    };
    let me = std::process::id().to_string();
    for pid in pids
        .lines()
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && *p != me)
    {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(fds) = std::fs::read_dir(task.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                walked.visit()?;
                // The descriptor's file itself (the link is followed into it, whatever its
                // name); gone meanwhile, it holds nothing.
                let Ok(stat) = nix::sys::stat::stat(&fd.path()) else {
                    continue;
                };
                if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
                    && stat.st_nlink == 0
                    && devices.contains(&stat.st_dev)
                    && walked.linked.insert((stat.st_dev, stat.st_ino))
                {
                    count(&stat, &mut walked.used);
                }
            }
        }
    }
    Ok(())
}

/// Opens the directory `name` beneath `parent` (or at that path, without a parent), never
/// following a symlink at its last component.
fn open_dir(parent: Option<BorrowedFd<'_>>, name: &std::ffi::CStr) -> nix::Result<nix::dir::Dir> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match parent {
        Some(parent) => nix::dir::Dir::openat(parent, name, flags, Mode::empty()),
        None => nix::dir::Dir::open(name, flags, Mode::empty()),
    }
}

fn count(stat: &FileStat, used: &mut Usage) {
    used.bytes = used.bytes.saturating_add(
        u64::try_from(stat.st_blocks)
            .unwrap_or(0)
            .saturating_mul(512),
    );
    used.files += 1;
}

fn is_dir(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// Adds what `root` holds (itself included) to `used`; its file system's device, if it
/// exists.
fn walk(root: &Path, walked: &mut Walked) -> Result<Option<u64>, String> {
    // The path of `name` in the directory `names` lead to, for messages only.
    let at = |names: &[std::ffi::CString], name: &std::ffi::CStr| {
        let mut path = root.to_path_buf();
        for part in names.iter().map(|n| n.as_c_str()).chain([name]) {
            path.push(std::ffi::OsStr::from_bytes(part.to_bytes()));
        }
        // Quoted and escaped: the code chose these names, and they reach terminals.
        format!("{path:?}")
    };
    let Ok(root_name) = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()) else {
        return Err(format!("{} has a NUL byte", root.display()));
    };
    let top = match open_dir(None, &root_name) {
        Ok(dir) => dir,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(format!("{}: {}", root.display(), e.desc())),
    };
    let stat = fstat(&top).map_err(|e| format!("{}: {}", root.display(), e.desc()))?;
    let device = stat.st_dev;
    walked.visit()?;
    count(&stat, &mut walked.used);
    // The directories being read, the deepest last, with the names that lead to each (for
    // messages only: every open goes from the parent's descriptor).
    let mut stack = vec![top.into_iter()];
    let mut names: Vec<std::ffi::CString> = Vec::new();
    while let Some(dir) = stack.last_mut() {
        let entry = match dir.next() {
            None => {
                stack.pop();
                names.pop();
                continue;
            }
            Some(Err(e)) => return Err(format!("{}: {}", at(&names, c"."), e.desc())),
            Some(Ok(entry)) => entry,
        };
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        // SAFETY: the descriptor is the iterator's, open for as long as `dir` is, which
        // outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(dir.as_raw_fd()) };
        let stat = match fstatat(fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            // Removed since it was listed.
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(format!("{}: {}", at(&names, name), e.desc())),
        };
        // The code mounts nothing, but on btrfs it may make a subvolume (a device of its
        // own) where it may write: what is there cannot be told from another disk's.
        if stat.st_dev != device {
            return Err(format!(
                "{} is on another file system (a mount, or a btrfs subvolume)",
                at(&names, name)
            ));
        }
        walked.visit()?;
        let directory = is_dir(&stat);
        if !directory && stat.st_nlink > 1 && !walked.linked.insert((stat.st_dev, stat.st_ino)) {
            continue;
        }
        count(&stat, &mut walked.used);
        if !directory {
            continue;
        }
        if stack.len() >= MAX_DEPTH {
            return Err(format!(
                "{} is more than {MAX_DEPTH} directories deep",
                at(&names, name)
            ));
        }
        match open_dir(Some(fd), name) {
            Ok(child) => {
                names.push(name.to_owned());
                stack.push(child.into_iter());
            }
            // Removed, or replaced by something else (a symlink: not followed), since.
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => {}
            Err(e) => return Err(format!("{}: {}", at(&names, name), e.desc())),
        }
    }
    Ok(Some(device))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, bytes: usize) {
        use std::io::Write;
        let mut file = std::fs::File::create(path).expect("create");
        file.write_all(&vec![7u8; bytes]).expect("write");
        file.sync_all().expect("sync");
    }

    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(path).expect("stat").blocks() * 512
    }

    #[test]
    fn what_the_directories_hold_is_summed_once_per_file_without_following_links() {
        let home = tempfile::tempdir().expect("tempdir");
        let data = home.path().join("data");
        let tmp = home.path().join("tmp");
        std::fs::create_dir_all(data.join("a/b")).expect("dirs");
        std::fs::create_dir(&tmp).expect("tmp");
        write(&data.join("a/b/big"), 1 << 20);
        write(&tmp.join("small"), 10);
        // Outside: a symlink to it is not followed, a hard link counts once.
        let outside = home.path().join("outside");
        std::fs::create_dir(&outside).expect("outside");
        write(&outside.join("huge"), 4 << 20);
        std::os::unix::fs::symlink(&outside, data.join("link")).expect("symlink");
        std::fs::hard_link(data.join("a/b/big"), tmp.join("same")).expect("hard link");

        let used = usage(
            &[data.clone(), tmp.clone(), home.path().join("missing")],
            None,
        )
        .expect("measured");
        let expected: u64 = [
            data.clone(),
            data.join("a"),
            data.join("a/b"),
            data.join("a/b/big"),
            data.join("link"),
            tmp.clone(),
            tmp.join("small"),
        ]
        .iter()
        .map(|p| allocated(p))
        .sum();
        assert_eq!(used.bytes, expected, "{used:?}");
        assert_eq!(used.files, 7, "the hard link counted once: {used:?}");
        assert!(used.bytes >= 1 << 20 && used.bytes < 4 << 20, "{used:?}");

        let limit = |max| DiskLimit {
            max,
            dirs: vec![data.clone(), tmp.clone()],
            procs: None,
            killer: None,
        };
        assert_eq!(limit(8 << 20).exceeded(), None);
        let why = limit(512 << 10).exceeded().expect("over");
        assert!(
            why.contains("past its disk limit of 512.0 KiB") && why.contains("max_disk"),
            "{why}"
        );
    }

    #[test]
    fn a_tree_too_deep_to_measure_counts_as_over_the_limit() {
        let home = tempfile::tempdir().expect("tempdir");
        let mut deep = home.path().join("data");
        std::fs::create_dir(&deep).expect("data");
        for _ in 0..MAX_DEPTH {
            deep.push("d");
            std::fs::create_dir(&deep).expect("level");
        }
        let limit = DiskLimit {
            max: 1 << 40,
            dirs: vec![home.path().join("data")],
            procs: None,
            killer: None,
        };
        let why = limit.exceeded().expect("not measured");
        assert!(
            why.contains("cannot be measured") && why.contains("directories deep"),
            "{why}"
        );
        // One level less is measured.
        std::fs::remove_dir(&deep).expect("rmdir");
        assert_eq!(limit.exceeded(), None);
    }

    #[test]
    fn a_file_removed_while_its_process_holds_it_open_still_counts() {
        let home = tempfile::tempdir().expect("tempdir");
        let data = home.path().join("data");
        std::fs::create_dir(&data).expect("data");
        let path = data.join("hidden");
        write(&path, 2 << 20);
        // A process that opens it, removes it, and keeps it open.
        let mut holder = std::process::Command::new("sh")
            .args(["-c", "exec 3<\"$0\"; rm \"$0\"; echo held; exec sleep 60"])
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.take().expect("its output")),
            &mut line,
        )
        .expect("its word");
        assert_eq!(line, "held\n");
        assert!(!path.exists());
        let procs = home.path().join("cgroup.procs");
        std::fs::write(&procs, format!("{}\n", holder.id())).expect("procs");
        let dirs = [data.clone()];
        let seen = usage(&dirs, Some(&procs));
        let unseen = usage(&dirs, None);
        let _ = holder.kill();
        let _ = holder.wait();
        let (seen, unseen) = (seen.expect("measured"), unseen.expect("measured"));
        assert!(
            seen.bytes >= unseen.bytes + (2 << 20),
            "what it holds open counts: {seen:?} against {unseen:?}"
        );
        assert_eq!(
            usage(&dirs, Some(&procs)).expect("measured"),
            unseen,
            "closed, it is gone"
        );
    }

    #[test]
    fn another_file_system_inside_cannot_be_measured() {
        let home = tempfile::tempdir().expect("tempdir");
        let inner = home.path().join("data/inner");
        std::fs::create_dir_all(&inner).expect("dirs");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&inner)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("cannot mount a tmpfs here (not root): nothing to check");
            return;
        }
        let measured = usage(&[home.path().join("data")], None);
        let _ = std::process::Command::new("umount").arg(&inner).status();
        let why = measured.expect_err("not measured");
        assert!(why.contains("another file system"), "{why}");
    }

    #[test]
    fn sizes_are_shown_in_binary_units() {
        assert_eq!(show(512), "512 B");
        assert_eq!(show(1536), "1.5 KiB");
        assert_eq!(show(8 << 30), "8.0 GiB");
    }
}
