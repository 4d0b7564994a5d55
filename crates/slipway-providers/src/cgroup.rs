//! Control groups: in uid mode each environment's code runs in a cgroup of its own, which
//! bounds the memory all its processes hold together (the kernel's OOM killer ends one of
//! them past it, never a process outside the group) and the CPU they take together, and
//! makes them share the machine as one group against the controller and the other
//! environments rather than one share per process.
//!
//! The group is `<base>/<uid>` in each hierarchy that has the controllers: cgroup v1 has one
//! per controller (`memory`, `cpu`), v2 one for all. Its directories and files are root's:
//! the code, under its uid, can neither write its own limits nor move itself out (moving a
//! process needs write access to the `cgroup.procs` of its destination). A command enters
//! its group as its very first step in the child, still as root, before it takes its uid
//! ([`Prepared::join`], through descriptors the parent opened); every process it forks is
//! born in it.
//!
//! Where the base is (see [`Cgroups::detect`]): by default `/slipway` in each v1 hierarchy,
//! the same for every command (a base under the engine's own group would differ between a
//! `slipway apply` run from a shell and `slipway serve` run by systemd, and each would take
//! the other's processes for drift). cgroup v2 needs a group delegated to Slipway that holds
//! no process (a group with processes cannot give its children controllers): the operator
//! names it (`[local] cgroup`).

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The period of the CPU limit, microseconds (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// The group of one environment's code, and the limits it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    /// Its directories.
    pub place: Place,
    /// The most memory its processes may hold together, in bytes; `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    /// The most CPU its processes may take together, in thousandths of a core; `None`: no
    /// limit (the group still takes one share against the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max: Option<u32>,
}

/// Where a group's directories are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "version")]
pub enum Place {
    /// cgroup v1: the group in the `memory` hierarchy, and in the `cpu` one if mounted.
    V1 {
        /// The group's directory in the `memory` hierarchy.
        memory: PathBuf,
        /// The group's directory in the `cpu` hierarchy.
        cpu: Option<PathBuf>,
    },
    /// cgroup v2: the group's directory.
    V2 {
        /// The group's directory.
        dir: PathBuf,
    },
}

/// Where environments' groups are made on this machine: the base of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroups {
    base: Place,
}

/// `[local] cgroup`: where environments' groups go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Setting {
    /// `/slipway` (cgroup v1); under v2 none unless named.
    #[default]
    Auto,
    /// No groups: environments' memory and CPU are not bounded.
    Off,
    /// This group, a path from the hierarchy's root (`/slipway`), in every hierarchy.
    At(String),
}

impl Setting {
    /// Reads `"auto"`, `"off"` or an absolute group path.
    pub fn parse(text: &str) -> Result<Setting, String> {
        match text {
            "auto" => Ok(Setting::Auto),
            "/" => Err(format!(
                "[local] cgroup {text:?} is the hierarchy's root: name a group of Slipway's \
                 own, such as \"/slipway\""
            )),
            "off" => Ok(Setting::Off),
            path if path.starts_with('/')
                && !path.contains('\0')
                && path
                    .trim_end_matches('/')
                    .split('/')
                    .skip(1)
                    .all(|part| !matches!(part, "" | "." | "..")) =>
            {
                Ok(Setting::At(path.trim_end_matches('/').to_owned()))
            }
            _ => Err(format!(
                "[local] cgroup {text:?} is not \"auto\", \"off\" or an absolute cgroup path \
                 such as \"/slipway\" (no `..`)"
            )),
        }
    }
}

impl Cgroups {
    /// Where this machine's environments' groups go, by `setting`, from the mounts and the
    /// engine's own groups (`/proc/self/mountinfo`, `/proc/self/cgroup`). `Err` says why
    /// there are none (the reason is shown to the operator).
    pub fn detect(setting: &Setting) -> Result<Cgroups, String> {
        if *setting == Setting::Off {
            return Err("[local] cgroup = \"off\"".to_owned());
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let cgroups = Cgroups::detect_in(setting, &mounts, &own)?;
        // A hierarchy mounted writable may still not be this engine's to write (a container
        // whose root is not the host's): asked of the base, or of what exists of it.
        for base in cgroups.base_dirs() {
            let existing = base.ancestors().find(|d| d.exists()).unwrap_or(base);
            nix::unistd::access(existing, nix::unistd::AccessFlags::W_OK).map_err(|e| {
                format!(
                    "this engine may not make groups in {} ({e})",
                    existing.display()
                )
            })?;
        }
        Ok(cgroups)
    }

    /// The base's directories: one per hierarchy.
    pub fn base_dirs(&self) -> Vec<&Path> {
        self.base.dirs()
    }

    /// Whether a CPU limit can be had here: a `cpu` hierarchy with CFS bandwidth control
    /// (v1), or the `cpu` controller available to the base (v2), read from the base or what
    /// exists of it.
    pub fn has_cpu(&self) -> bool {
        let existing = |dir: &Path| dir.ancestors().find(|d| d.is_dir()).map(Path::to_path_buf);
        match &self.base {
            Place::V1 { cpu, .. } => cpu
                .as_deref()
                .and_then(existing)
                .is_some_and(|d| d.join("cpu.cfs_quota_us").exists()),
            Place::V2 { dir } => existing(dir)
                .and_then(|d| std::fs::read_to_string(d.join("cgroup.controllers")).ok())
                .is_some_and(|c| c.split_whitespace().any(|c| c == "cpu")),
        }
    }

    /// [`Cgroups::detect`] from the text of `mountinfo` and `cgroup`.
    pub fn detect_in(setting: &Setting, mountinfo: &str, own: &str) -> Result<Cgroups, String> {
        let mounts = parse_mountinfo(mountinfo);
        let v1 = |controller: &str| {
            let (root, point, writable) = mounts.iter().find_map(|m| match m {
                Mount::V1 {
                    root,
                    point,
                    writable,
                    controllers,
                } if controllers.iter().any(|c| c == controller) => Some((root, point, writable)),
                _ => None,
            })?;
            if !writable {
                return Some(Err(read_only(point)));
            }
            // By default `slipway` at the top of what the mount shows (a container's
            // hierarchy may be shown from its own group).
            let base = match setting {
                Setting::At(path) => path.clone(),
                _ => format!("{}/slipway", root.trim_end_matches('/')),
            };
            Some(join_group(point, root, &base))
        };
        if let Some(memory) = v1("memory") {
            let memory = memory?;
            let cpu = v1("cpu").transpose()?;
            return Ok(Cgroups {
                base: Place::V1 { memory, cpu },
            });
        }
        let Some((root, point, writable)) = mounts.iter().find_map(|m| match m {
            Mount::V2 {
                root,
                point,
                writable,
            } => Some((root, point, writable)),
            _ => None,
        }) else {
            return Err("no cgroup hierarchy with the memory controller is mounted".to_owned());
        };
        if !writable {
            return Err(read_only(point));
        }
        let controllers =
            std::fs::read_to_string(point.join("cgroup.controllers")).unwrap_or_default();
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return Err(format!(
                "the cgroup v2 hierarchy at {} does not have the memory controller",
                point.display()
            ));
        }
        match setting {
            Setting::At(path) => Ok(Cgroups {
                base: Place::V2 {
                    dir: join_group(point, root, path)?,
                },
            }),
            _ => Err(format!(
                "cgroup v2 lets no group with processes of its own (the engine's, {}) give its \
                 children controllers: name a group delegated to Slipway with none, \
                 `[local] cgroup = \"/slipway\"` (or under systemd `Delegate=yes` with \
                 `DelegateSubgroup=engine` and the service's group beside it)",
                own_group(own).unwrap_or_else(|| "unknown".to_owned())
            )),
        }
    }

    /// The group of the environment whose uid is `uid`, with those limits.
    pub fn for_uid(&self, uid: u32, memory_max: Option<u64>, cpu_max: Option<u32>) -> Cgroup {
        let leaf = uid.to_string();
        let place = match &self.base {
            Place::V1 { memory, cpu } => Place::V1 {
                memory: memory.join(&leaf),
                cpu: cpu.as_ref().map(|c| c.join(&leaf)),
            },
            Place::V2 { dir } => Place::V2 {
                dir: dir.join(&leaf),
            },
        };
        Cgroup {
            place,
            memory_max,
            cpu_max,
        }
    }

    /// The base, for messages: `cgroup v1 at DIR` or `cgroup v2 at DIR`.
    pub fn describe(&self) -> String {
        match &self.base {
            Place::V1 { memory, .. } => format!("cgroup v1, under {}", memory.display()),
            Place::V2 { dir } => format!("cgroup v2, under {}", dir.display()),
        }
    }
}

/// Why a read-only hierarchy holds no group of Slipway's.
fn read_only(point: &Path) -> String {
    format!(
        "the cgroup hierarchy at {} is mounted read-only here (as systemd's \
         `ProtectControlGroups=yes` does)",
        point.display()
    )
}

/// A mount of a cgroup hierarchy.
#[derive(Debug)]
enum Mount {
    V1 {
        root: String,
        point: PathBuf,
        writable: bool,
        controllers: Vec<String>,
    },
    V2 {
        root: String,
        point: PathBuf,
        writable: bool,
    },
}

/// The cgroup mounts of a `mountinfo` text: `ID PARENT MAJ:MIN ROOT POINT OPTIONS [TAGS] -
/// FSTYPE SOURCE SUPER_OPTIONS`, paths with `\040`-style escapes.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let (root, point) = (unescape(fields.get(3)?), unescape(fields.get(4)?));
            // The kernel writes a mount's point whole, from `/`: one that is not is no mount.
            if !Path::new(&point).is_absolute()
                || Path::new(&point)
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return None;
            }
            let writable = !fields.get(5)?.split(',').any(|o| o == "ro");
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let _source = right.next()?;
            let options = right.next().unwrap_or("");
            match fstype {
                "cgroup" => Some(Mount::V1 {
                    root,
                    point: PathBuf::from(point),
                    writable,
                    controllers: options.split(',').map(str::to_owned).collect(),
                }),
                "cgroup2" => Some(Mount::V2 {
                    root,
                    point: PathBuf::from(point),
                    writable,
                }),
                _ => None,
            }
        })
        .collect()
}

/// `mountinfo`'s octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = field
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The engine's group in cgroup v2 (`0::PATH`).
fn own_group(own: &str) -> Option<String> {
    own.lines()
        .find_map(|line| line.strip_prefix("0::").map(str::to_owned))
}

/// The directory of the group `path` (from the hierarchy's root) in the mount at `point`,
/// which shows the hierarchy from `root`: `Err` when the group is not beneath what the mount
/// shows, or names a parent.
fn join_group(point: &Path, root: &str, path: &str) -> Result<PathBuf, String> {
    if Path::new(path)
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("the cgroup {path} names a parent (`..`)"));
    }
    let relative = if root == "/" {
        path
    } else {
        path.strip_prefix(root)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .ok_or_else(|| {
                format!(
                    "the cgroup {path} is outside what {} shows of its hierarchy ({root})",
                    point.display()
                )
            })?
    };
    Ok(point.join(relative.trim_start_matches('/')))
}

impl Place {
    /// Its directories: one per hierarchy.
    fn dirs(&self) -> Vec<&Path> {
        match self {
            Place::V1 { memory, cpu } => std::iter::once(memory.as_path())
                .chain(cpu.as_deref())
                .collect(),
            Place::V2 { dir } => vec![dir],
        }
    }
}

impl Cgroup {
    /// Its directories, one per hierarchy.
    pub fn dirs(&self) -> Vec<&Path> {
        self.place.dirs()
    }

    /// Makes the group (and its parents) if missing, writes its limits
    /// ([`Cgroup::write_limits`]), and opens the `cgroup.procs` of each of its directories
    /// for a child to enter ([`join`]).
    ///
    /// # Errors
    /// What failed, naming the file and, under v2, how to give Slipway a group.
    pub fn prepare(&self) -> io::Result<Joining> {
        for dir in self.dirs() {
            make_dir(dir)?;
        }
        if let Place::V2 { dir } = &self.place
            && let Some(base) = dir.parent()
        {
            self.delegate(base)?;
        }
        self.write_limits()?;
        let mut joining = Joining::default();
        for dir in self.dirs() {
            use std::os::unix::fs::MetadataExt;
            let procs = dir.join("cgroup.procs");
            let opened = std::fs::OpenOptions::new()
                .write(true)
                .open(&procs)
                .and_then(|file| Ok((file.metadata()?, file)));
            let (meta, file) = opened.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot open {}: {e}", procs.display()))
            })?;
            joining.files.push((procs, meta.dev(), meta.ino()));
            joining.procs.push(OwnedFd::from(file));
        }
        Ok(joining)
    }

    /// Writes the group's limits, if it exists. They are the group's, for all its processes:
    /// written at each start of a command of the environment (a supervised process's restart
    /// excepted) and after each apply of it. A memory limit lowered below what the group
    /// holds, which cgroup v1 refuses while nothing can be reclaimed, is kept as it was
    /// rather than failing the start: [`Cgroup::limits_in_force`] then says so, which the
    /// process provider reports as drift, and the apply that replaces the processes writes
    /// it again once they are gone.
    ///
    /// # Errors
    /// A limit the kernel refused otherwise, or a file it does not have for a limit asked.
    pub fn write_limits(&self) -> io::Result<()> {
        if !self.dirs().iter().all(|dir| dir.is_dir()) {
            return Ok(());
        }
        match &self.place {
            Place::V1 { memory, cpu } => {
                let limit = self.memory_max.map_or("-1".to_owned(), |m| m.to_string());
                // Memory and swap together get the same limit, so that past it the code is
                // ended rather than swapped out (which would slow the whole machine). The
                // kernel keeps the sum at least the memory alone: so the sum first (which
                // fails when lowering it below the memory), the memory, then the sum. A
                // kernel that does not account swap has no such file.
                let sum = memory.join("memory.memsw.limit_in_bytes");
                let swap = sum.exists();
                if swap {
                    let _ = std::fs::write(&sum, &limit);
                }
                if write_memory_limit(&memory.join("memory.limit_in_bytes"), &limit)? && swap {
                    write_memory_limit(&sum, &limit)?;
                }
                if let Some(cpu) = cpu {
                    let quota_file = cpu.join("cpu.cfs_quota_us");
                    match self.cpu_max {
                        Some(cores) => {
                            write_limit(
                                &cpu.join("cpu.cfs_period_us"),
                                &CPU_PERIOD_US.to_string(),
                            )?;
                            write_limit(&quota_file, &quota(cores).to_string())?;
                        }
                        // A kernel without CFS bandwidth control has nothing to lift.
                        None if quota_file.exists() => write_limit(&quota_file, "-1")?,
                        None => {}
                    }
                }
            }
            Place::V2 { dir } => {
                write_memory_limit(
                    &dir.join("memory.max"),
                    &self.memory_max.map_or("max".to_owned(), |m| m.to_string()),
                )?;
                // No swap past the limit (see v1 above).
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    let value = if self.memory_max.is_some() {
                        "0"
                    } else {
                        "max"
                    };
                    write_limit(&swap, value)?;
                }
                let cpu_file = dir.join("cpu.max");
                match self.cpu_max {
                    Some(cores) => {
                        write_limit(&cpu_file, &format!("{} {CPU_PERIOD_US}", quota(cores)))?
                    }
                    None if cpu_file.exists() => {
                        write_limit(&cpu_file, &format!("max {CPU_PERIOD_US}"))?
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }

    /// Whether the group holds the memory limit it is meant to (and, under v1, the same
    /// limit of memory and swap together); `None` when it cannot be read (not made yet).
    pub fn limits_in_force(&self) -> Option<bool> {
        // What the kernel shows for "no limit": v1 a number near 2^63, v2 `max`.
        let read = |file: PathBuf| -> Option<Option<u64>> {
            let text = std::fs::read_to_string(file).ok()?;
            match text.trim() {
                "max" => Some(None),
                n => n.parse::<u64>().ok().map(|n| (n < 1 << 62).then_some(n)),
            }
        };
        let wanted = self.memory_max;
        match &self.place {
            Place::V1 { memory, .. } => {
                let held = read(memory.join("memory.limit_in_bytes"))?;
                let sum = memory.join("memory.memsw.limit_in_bytes");
                let sum_held = if sum.exists() { read(sum)? } else { wanted };
                Some(held == wanted && sum_held == wanted)
            }
            Place::V2 { dir } => Some(read(dir.join("memory.max"))? == wanted),
        }
    }

    /// Under cgroup v2: `base`, the group of Slipway's that holds the environments' groups,
    /// gives its children `memory`, and `cpu` (needed for a CPU limit, tried otherwise). Only
    /// `base`: the groups above it are the operator's (or systemd's, by `Delegate=`).
    fn delegate(&self, base: &Path) -> io::Result<()> {
        let control = base.join("cgroup.subtree_control");
        let enabled = std::fs::read_to_string(&control).unwrap_or_default();
        for (controller, needed) in [("memory", true), ("cpu", self.cpu_max.is_some())] {
            if enabled.split_whitespace().any(|c| c == controller) {
                continue;
            }
            match std::fs::write(&control, format!("+{controller}")) {
                Ok(()) => {}
                Err(e) if needed => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "cannot give the cgroup {}'s children the {controller} controller \
                             ({e}): it must hold no process and have the controller itself \
                             (`[local] cgroup` names a group delegated to Slipway, docs/isolation.md)",
                            base.display()
                        ),
                    ));
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Removes the group's directories once it holds no process (those just killed may take
    /// a moment to leave it): a missing one is removed already.
    ///
    /// # Errors
    /// A directory that still holds processes after a second, or cannot be removed.
    pub fn remove(&self) -> io::Result<()> {
        for dir in self.dirs() {
            let mut removed = Ok(());
            crate::procinfo::wait_until(Instant::now() + Duration::from_secs(1), || {
                removed = match std::fs::remove_dir(dir) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    other => other,
                };
                !removed
                    .as_ref()
                    .is_err_and(|e| e.raw_os_error() == Some(nix::libc::EBUSY))
            });
            removed.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot remove the cgroup {}: {e}", dir.display()),
                )
            })?;
        }
        Ok(())
    }

    /// How many of the group's processes the kernel killed for its memory limit so far
    /// (`oom_kill` of v1's `memory.oom_control`, v2's `memory.events`); `None` when the
    /// kernel does not say.
    pub fn oom_kills(&self) -> Option<u64> {
        let file = match &self.place {
            Place::V1 { memory, .. } => memory.join("memory.oom_control"),
            Place::V2 { dir } => dir.join("memory.events"),
        };
        std::fs::read_to_string(file)
            .ok()?
            .lines()
            .find_map(|line| {
                line.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse().ok())
            })
    }

    /// The group a process is in, for tests and checks: whether `pid` is in this one (its
    /// memory directory, or its v2 directory).
    pub fn holds(&self, pid: u32) -> bool {
        let dir = match &self.place {
            Place::V1 { memory, .. } => memory,
            Place::V2 { dir } => dir,
        };
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .is_ok_and(|procs| procs.lines().any(|p| p.trim() == pid.to_string()))
    }
}

/// `cpu_max` thousandths of a core as a quota of [`CPU_PERIOD_US`] (at least the kernel's
/// 1 ms).
fn quota(cpu_max: u32) -> u64 {
    (u64::from(cpu_max) * CPU_PERIOD_US / 1000).max(1000)
}

/// Makes `dir` and its missing parents (a group's directory and its files are root's).
fn make_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot make the cgroup {}: {e}", dir.display()),
        )
    })
}

/// Writes a memory limit; `false` when the kernel refused to lower it below what the group
/// holds (`EBUSY`, cgroup v1), which is then kept as it was.
fn write_memory_limit(file: &Path, value: &str) -> io::Result<bool> {
    match std::fs::write(file, value) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
            tracing::warn!(
                file = %file.display(),
                value,
                "the group holds more than its new memory limit, which the kernel refused: its \
                 processes are drift until they are replaced"
            );
            Ok(false)
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot set {} to {value}: {e}", file.display()),
        )),
    }
}

/// Writes a limit (the same value again changes nothing); a file the kernel does not have
/// is said to be missing (no controller), not made.
fn write_limit(file: &Path, value: &str) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(file)
        .and_then(|mut f| std::io::Write::write_all(&mut f, value.as_bytes()))
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot set {} to {value}: {e}", file.display()),
            )
        })
}

/// The `cgroup.procs` of a group's directories, opened by [`Cgroup::prepare`] for a child to
/// enter ([`join`]), with the device and inode each was: a group removed and made again
/// since is another, which [`Joining::current`] tells.
#[derive(Debug, Default)]
pub struct Joining {
    procs: Vec<OwnedFd>,
    files: Vec<(PathBuf, u64, u64)>,
    /// The process that prepared it entered the group itself ([`Joining::enter_self`]): its
    /// children are born there, and [`join`] moves none.
    entered: bool,
}

impl Joining {
    /// Moves the calling process itself into the group (a long-lived parent that starts
    /// many children: a move per child would cost each start a cgroup migration, which
    /// takes the kernel's global lock of them). Only for a parent of the environment's own,
    /// the supervisor, whose memory then counts against the group's limit.
    ///
    /// # Errors
    /// The write that failed.
    pub fn enter_self(&mut self) -> io::Result<()> {
        for fd in &self.procs {
            nix::unistd::write(fd, b"0").map_err(io::Error::from)?;
        }
        self.entered = true;
        Ok(())
    }

    /// Whether each file opened is still its group's (not removed, nor made again since).
    pub fn current(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.files.iter().all(|(path, dev, ino)| {
            std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == (*dev, *ino))
        })
    }

    /// Whether it opened nothing (no group).
    pub(crate) fn procs_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// The descriptor of the `n`th directory, or -1.
    pub(crate) fn fd(&self, n: usize) -> i32 {
        use std::os::fd::AsRawFd;
        self.procs.get(n).map_or(-1, AsRawFd::as_raw_fd)
    }
}

/// In a child about to exec, still as root: moves the calling process into the group of
/// each descriptor of [`Cgroup::prepare`] (writing `0`, "this process", to its
/// `cgroup.procs`). A raw system call: sound after a fork of a multi-threaded process.
///
/// # Errors
/// The `errno` of the write that failed.
pub(crate) fn join(joining: &Joining) -> Result<(), syscalls::Errno> {
    use std::os::fd::AsRawFd;
    if joining.entered {
        return Ok(());
    }
    for fd in &joining.procs {
        // SAFETY: writes one byte from a static to a descriptor this process holds.
        unsafe {
            syscalls::syscall!(syscalls::Sysno::write, fd.as_raw_fd(), b"0".as_ptr(), 1)?;
        }
    }
    Ok(())
}

/// How much memory this machine has (`MemTotal` of `/proc/meminfo`), in bytes.
pub fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|line| {
        let kib = line.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?;
        kib.trim().parse::<u64>().ok().map(|k| k * 1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const V1_OWN: &str = "4:memory:/jobs/a1\n1:cpu,cpuacct:/\n0::/\n";

    #[test]
    fn cgroup_v1_groups_go_under_slipway_in_each_hierarchy() {
        // Not under the engine's own group: a command run from a shell and `serve` run by
        // systemd must make the same group.
        let cgroups = Cgroups::detect_in(&Setting::Auto, V1_MOUNTS, V1_OWN).expect("v1");
        let group = cgroups.for_uid(300_001, Some(64 << 20), Some(500));
        assert_eq!(
            group.place,
            Place::V1 {
                memory: "/sys/fs/cgroup/memory/slipway/300001".into(),
                cpu: Some("/sys/fs/cgroup/cpu,cpuacct/slipway/300001".into()),
            }
        );
        let named =
            Cgroups::detect_in(&Setting::At("/envs".into()), V1_MOUNTS, V1_OWN).expect("v1, named");
        assert_eq!(
            named.for_uid(7, None, None).dirs(),
            [
                Path::new("/sys/fs/cgroup/memory/envs/7"),
                Path::new("/sys/fs/cgroup/cpu,cpuacct/envs/7")
            ]
        );
        assert_eq!(quota(500), 50_000, "half a core of a 100 ms period");
        assert_eq!(quota(1), 1000, "never below the kernel's 1 ms");
    }

    #[test]
    fn a_mount_that_shows_part_of_its_hierarchy_is_joined_from_its_root() {
        // In a cgroup namespace or a container the mount shows the hierarchy from a group.
        let mounts = "35 31 0:32 /jobs /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let cgroups = Cgroups::detect_in(&Setting::At("/jobs/a1".into()), mounts, "")
            .expect("beneath the mount's root");
        assert_eq!(
            cgroups.for_uid(9, None, None).dirs(),
            [Path::new("/sys/fs/cgroup/memory/a1/9")]
        );
        let auto = Cgroups::detect_in(&Setting::Auto, mounts, "").expect("auto");
        assert_eq!(
            auto.for_uid(9, None, None).dirs(),
            [Path::new("/sys/fs/cgroup/memory/slipway/9")],
            "at the top of what the mount shows"
        );
        let read_only = mounts.replace(" rw - ", " ro,nosuid - ");
        assert!(
            Cgroups::detect_in(&Setting::Auto, &read_only, "")
                .is_err_and(|e| e.contains("read-only") && e.contains("ProtectControlGroups")),
            "a hierarchy mounted read-only (a systemd unit's) holds no group: its start would fail"
        );
        let outside = Cgroups::detect_in(&Setting::At("/other".into()), mounts, "");
        assert!(
            outside.is_err_and(|e| e.contains("outside what")),
            "a group the mount does not show is refused"
        );
    }

    #[test]
    fn cgroup_v2_needs_a_group_named_for_slipway() {
        // Read from the mount itself: only a machine whose v2 hierarchy has the memory
        // controller gets that far, so a hierarchy without it is what is checked here.
        let mounts = "41 31 0:38 / /nonexistent/unified rw - cgroup2 cgroup2 rw\n";
        let refused = Cgroups::detect_in(&Setting::Auto, mounts, "0::/system.slice/x.service\n");
        assert!(
            refused.is_err_and(|e| e.contains("does not have the memory controller")),
            "no controller, no group"
        );
        assert!(Cgroups::detect_in(&Setting::Auto, "", "").is_err());
        assert!(Cgroups::detect(&Setting::Off).is_err_and(|e| e.contains("off")));
    }

    #[test]
    fn the_cgroup_setting_is_auto_off_or_an_absolute_path() {
        assert_eq!(Setting::parse("auto"), Ok(Setting::Auto));
        assert_eq!(Setting::parse("off"), Ok(Setting::Off));
        assert_eq!(
            Setting::parse("/system.slice/slipway.service/environments/"),
            Ok(Setting::At(
                "/system.slice/slipway.service/environments".into()
            ))
        );
        for bad in ["slipway", "/a/../b", "", "/a/./b", "/a\0b", "/"] {
            assert!(Setting::parse(bad).is_err(), "{bad:?} refused");
        }
    }

    /// A limit lowered below what the group holds (which cgroup v1 refuses while nothing can
    /// be reclaimed) keeps the old one rather than failing every start of the environment;
    /// a group removed and made again is another, which a long-lived parent's cached
    /// descriptors must not be used for. On this machine's kernel, as root.
    #[test]
    fn a_limit_below_what_the_group_holds_keeps_the_old_one() {
        use std::os::unix::process::CommandExt;
        // Where this test means something: as root, on cgroup v1, without swap (with swap
        // the kernel could meet the lower limit by swapping out).
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
        if !crate::sandbox::running_as_root() || swaps.lines().count() > 1 {
            eprintln!("not root, or swap is on: skipped");
            return;
        }
        let setting = Setting::At(format!("/slipway-test-{}", std::process::id()));
        let cgroups = Cgroups::detect(&setting).expect("this machine has cgroups, as root");
        /// Removes the test's groups, whatever happens.
        struct Removed(Vec<PathBuf>);
        impl Drop for Removed {
            fn drop(&mut self) {
                for base in &self.0 {
                    let _ = std::fs::remove_dir(base.join("1"));
                    let _ = std::fs::remove_dir(base);
                }
            }
        }
        let _removed = Removed(
            cgroups
                .base_dirs()
                .into_iter()
                .map(Path::to_path_buf)
                .collect(),
        );
        let group = |mib: u64| cgroups.for_uid(1, Some(mib << 20), None);
        let joining = group(128).prepare().expect("made");
        let procs = joining.fd(0);
        assert!(procs >= 0);
        let mut holder = std::process::Command::new("python3");
        holder.args([
            "-c",
            "import sys,time; x=b'x'*(80<<20); print('held', flush=True); time.sleep(60)",
        ]);
        holder.stdout(std::process::Stdio::piped());
        // SAFETY: `join` makes one raw system call per descriptor.
        unsafe {
            holder.pre_exec(move || {
                join(&joining).map_err(|e| io::Error::from_raw_os_error(e.into_raw()))
            });
        }
        struct Killed(std::process::Child);
        impl Drop for Killed {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut holder = Killed(holder.spawn().expect("python3"));
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.0.stdout.take().expect("its output")),
            &mut line,
        )
        .expect("read");
        assert_eq!(line.trim(), "held");
        let Place::V1 { memory, .. } = &group(64).place else {
            panic!("this machine has cgroup v1");
        };
        let limit =
            || std::fs::read_to_string(memory.join("memory.limit_in_bytes")).expect("limit");
        group(64)
            .prepare()
            .expect("a limit it cannot have yet does not fail the start");
        assert_eq!(
            limit().trim(),
            (128u64 << 20).to_string(),
            "the old limit stays"
        );
        assert_eq!(
            group(64).limits_in_force(),
            Some(false),
            "said, for the drift it makes"
        );
        let _ = holder.0.kill();
        let _ = holder.0.wait();
        let first = group(64)
            .prepare()
            .expect("lowered once the memory is gone");
        assert_eq!(limit().trim(), (64u64 << 20).to_string());
        assert_eq!(group(64).limits_in_force(), Some(true));
        assert_eq!(group(128).limits_in_force(), Some(false));
        assert!(first.current());
        group(64).remove().expect("removed");
        assert!(!memory.exists());
        assert!(!first.current(), "its group is gone");
        let second = group(64).prepare().expect("made again");
        assert!(
            second.current() && !first.current(),
            "the one made again is another"
        );
        group(64).remove().expect("removed");
        assert_eq!(
            group(64).limits_in_force(),
            None,
            "no group, nothing to say"
        );
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/x\0"), r"/x\0");
    }

    /// A path as `mountinfo` may show one: components of letters, `.`, `..`, escapes.
    fn some_path() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let part = prop_oneof![
            4 => "[a-z]{1,4}",
            1 => Just(".".to_owned()),
            1 => Just("..".to_owned()),
            1 => "[a-z]{0,2}\\\\[0-7]{3}",
        ];
        proptest::collection::vec(part, 0..4).prop_map(|parts| format!("/{}", parts.join("/")))
    }

    /// A line of `mountinfo`, mostly a cgroup mount of any root and point (so that detection
    /// often finds a base), sometimes anything.
    fn mount_line() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (
                prop_oneof![2 => Just("/".to_owned()), 1 => some_path()],
                some_path(),
                prop_oneof![4 => Just("rw,relatime"), 1 => Just("ro,relatime")],
                prop_oneof![4 => Just("cgroup"), 1 => Just("cgroup2"), 1 => Just("tmpfs")],
                prop_oneof![3 => "rw,memory(,cpu)?", 1 => "(rw|ro)(,cpu|,pids|,memory){0,2}"],
            )
                .prop_map(|(root, point, opts, fstype, superopts)| {
                    format!("31 23 0:28 {root} {point} {opts} - {fstype} {fstype} {superopts}")
                }),
            1 => ".{0,80}",
        ]
    }

    proptest::proptest! {
        /// Whatever `mountinfo` says, detection does not panic, and the groups it finds lie
        /// beneath a cgroup mount's point, never above it (`..`), each environment's one level
        /// below the base.
        #[test]
        fn no_mountinfo_makes_detection_panic_or_leave_its_mounts(
            lines in proptest::collection::vec(mount_line(), 0..6),
            setting in proptest::prop_oneof![
                3 => proptest::strategy::Just("auto".to_owned()),
                2 => some_path(),
                1 => "(off|/|[a-z]{1,4})",
            ],
            own in "(0::/[a-z./]{0,8})?",
        ) {
            let text = lines.join("\n");
            let Ok(setting) = Setting::parse(&setting) else {
                return Ok(());
            };
            let Ok(found) = Cgroups::detect_in(&setting, &text, &own) else {
                return Ok(());
            };
            let points: Vec<PathBuf> = parse_mountinfo(&text)
                .into_iter()
                .map(|mount| match mount {
                    Mount::V1 { point, .. } | Mount::V2 { point, .. } => point,
                })
                .collect();
            for dir in found.base_dirs() {
                proptest::prop_assert!(
                    !dir
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir)),
                    "{} names a parent", dir.display()
                );
                proptest::prop_assert!(
                    points.iter().any(|point| dir.starts_with(point)),
                    "{} is beneath no cgroup mount of {text:?}", dir.display()
                );
            }
            let group = found.for_uid(200_001, None, None);
            let bases = found.base_dirs();
            for dir in group.dirs() {
                proptest::prop_assert!(
                    dir.file_name() == Some(std::ffi::OsStr::new("200001"))
                        && dir.parent().is_some_and(|parent| bases.contains(&parent)),
                    "{} is not a base's child", dir.display()
                );
            }
        }
    }
}
