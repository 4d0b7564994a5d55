//! How the engine isolates environments' code, and the home's permissions that go with it.
//!
//! The home is the engine's: `<home>` is `0711` (others may traverse it, not list it), every
//! file in it `0600` and every directory `0700`, except the way down to an environment's own
//! directories: `<home>/envs` is `0711`; `<home>/envs/<env>` (and its `src/`) is root's,
//! `0750`, group the environment's gid; its `data/` and `tmp/` belong to its uid, `0700`; its
//! `logs/` and `run/` (supervisor specs, which hold secrets) stay root's, `0700`.

use slipway_core::EnvName;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use slipway_core::render::EnvKind;
use slipway_providers::sandbox::{self, Isolation, Sandbox};
use slipway_providers::{EnvDirs, Uses};

use crate::config::{EngineConfig, IsolationSetting};
use crate::{Engine, EngineError};

/// The isolation the configuration asks for, as this process can give it.
///
/// Never Landlock alone as root: Landlock confines paths, not privileges, and code running as
/// root keeps every capability (it could make a device node of the disk, load modules, …).
/// An engine running as root therefore always isolates by uid (which adds Landlock where the
/// kernel has it), `landlock` included.
///
/// # Errors
/// When an explicit `uid` or `landlock` cannot be had here.
pub(crate) fn effective(setting: IsolationSetting) -> Result<Isolation, EngineError> {
    let root = sandbox::running_as_root();
    let landlock = sandbox::landlock_abi().is_some();
    match setting {
        IsolationSetting::Auto if root => Ok(Isolation::Uid),
        IsolationSetting::Auto if landlock => Ok(Isolation::Landlock),
        IsolationSetting::Auto | IsolationSetting::None => Ok(Isolation::None),
        IsolationSetting::Uid if root => Ok(Isolation::Uid),
        IsolationSetting::Uid => Err(EngineError::Usage(
            "`[local] isolation = \"uid\"` needs the engine to run as root (it runs each \
             environment under its own uid); run it as root, or use \"auto\" or \"landlock\""
                .into(),
        )),
        IsolationSetting::Landlock if root => Ok(Isolation::Uid),
        IsolationSetting::Landlock if landlock => Ok(Isolation::Landlock),
        IsolationSetting::Landlock => Err(EngineError::Usage(
            "`[local] isolation = \"landlock\"` needs a kernel with Landlock (Linux 5.13 or \
             later, with `landlock` in the `lsm=` boot parameter); use \"auto\", or run the \
             engine as root for \"uid\""
                .into(),
        )),
    }
}

/// The control groups of environments' code and the limits each holds ([`resource_limits`]).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    cgroups: slipway_providers::cgroup::Cgroups,
    memory: Option<u64>,
    cpu: Option<u32>,
}

impl Limits {
    /// The group of the environment of `uid`.
    fn group(&self, uid: u32) -> slipway_providers::cgroup::Cgroup {
        self.cgroups.for_uid(uid, self.memory, self.cpu)
    }

    /// `cgroup v1, under DIR: memory 12.0 GiB, CPU 1.5 cores`.
    fn describe(&self) -> String {
        let memory = self.memory.map_or("unlimited".to_owned(), |m| {
            format!("{:.1} GiB", m as f64 / f64::from(1u32 << 30))
        });
        let cpu = self.cpu.map_or("unlimited".to_owned(), |c| {
            format!("{} cores", f64::from(c) / 1000.0)
        });
        format!(
            "{}: memory {memory}, CPU {cpu} per environment",
            self.cgroups.describe()
        )
    }
}

/// The control groups environments' code gets, from `[local] cgroup`, `max_memory` and
/// `max_cpu`: in uid mode only (making a group takes root). `Ok(Err(why))` when it gets
/// none and none was asked for explicitly (the default: `slipway serve` says why);
/// `Err` when a limit was asked for that cannot be enforced here, so that no environment's
/// code runs believed bounded and is not.
pub(crate) fn resource_limits(
    isolation: Isolation,
    local: &crate::config::LocalConfig,
) -> Result<Result<Limits, String>, EngineError> {
    use crate::config::SizeLimit;
    use slipway_providers::cgroup::{Cgroups, Setting};
    let explicit = local.max_memory.is_some_and(|m| m != SizeLimit::Unlimited)
        || local.max_cpu.is_some()
        || matches!(local.cgroup.0, Setting::At(_));
    let unenforceable = |why: String| {
        EngineError::Usage(format!(
            "[local] max_memory, max_cpu or cgroup is set, but environments' code cannot be \
             given a control group here: {why}; remove them, or set `[local] max_memory = \
             \"none\"` and `cgroup = \"off\"` to run without"
        ))
    };
    let found = if isolation == Isolation::Uid {
        Cgroups::detect(&local.cgroup.0)
    } else {
        Err(format!(
            "isolation is {isolation}, and only an engine running as root (uid mode) makes \
             groups"
        ))
    };
    let cgroups = match found {
        Ok(cgroups) if local.max_cpu.is_some() && !cgroups.has_cpu() => {
            return Err(unenforceable(
                "no cgroup hierarchy with the cpu controller is mounted".to_owned(),
            ));
        }
        Ok(cgroups) => cgroups,
        Err(why) if explicit => return Err(unenforceable(why)),
        Err(why) => return Ok(Err(why)),
    };
    let memory = match (
        local.max_memory.unwrap_or(SizeLimit::DEFAULT),
        slipway_providers::cgroup::machine_memory(),
    ) {
        (SizeLimit::Share(_), None) if local.max_memory.is_some() => {
            return Err(unenforceable(
                "this machine's memory is unknown (/proc/meminfo)".to_owned(),
            ));
        }
        (SizeLimit::Share(_), None) => None,
        (limit, machine) => limit.bytes(machine.unwrap_or(0)),
    }
    // Whole MiB: what the kernel keeps (page by page) reads back as written, so that a
    // group's limit in force can be compared with it.
    .map(|bytes| bytes >> 20 << 20);
    Ok(Ok(Limits {
        cgroups,
        memory,
        cpu: local.max_cpu,
    }))
}

/// The most each environment's data and temporary directories may hold, in bytes, from
/// `[local] max_disk`: by default half the file system holding `home` (on which the
/// environments' directories are). In uid and landlock modes only: with isolation `none` the
/// code may write wherever the engine may, and a limit on two directories would bound
/// nothing (asking for one then is refused).
pub(crate) fn disk_limit(
    isolation: Isolation,
    local: &crate::config::LocalConfig,
    home: &Path,
) -> Result<Option<u64>, EngineError> {
    use crate::config::SizeLimit;
    let asked = local.max_disk.filter(|l| *l != SizeLimit::Unlimited);
    if isolation == Isolation::None {
        return match asked {
            Some(_) => Err(EngineError::Usage(
                "[local] max_disk is set, but isolation is none: the code may write wherever \
                 the engine may; isolate it (`isolation = \"auto\"`), or remove max_disk"
                    .to_owned(),
            )),
            None => Ok(None),
        };
    }
    let limit = local.max_disk.unwrap_or(SizeLimit::DEFAULT);
    let whole = match limit {
        // Whole GiB (below): a file system whose size moves (ZFS counts what is free in it)
        // must not make every process drift at each look.
        SizeLimit::Share(_) => match nix::sys::statvfs::statvfs(home) {
            Ok(fs) => fs.blocks().saturating_mul(fs.fragment_size()),
            Err(e) => {
                return Err(EngineError::Usage(format!(
                    "[local] max_disk is a share of the file system holding {}, whose size \
                     cannot be read: {e}; give a size (\"10GiB\") or \"none\"",
                    home.display()
                )));
            }
        },
        _ => 0,
    };
    let bytes = limit.bytes(whole).map(|bytes| match limit {
        // Whole GiB, but never none at all.
        SizeLimit::Share(_) if bytes >= 1 << 30 => bytes >> 30 << 30,
        _ => bytes,
    });
    match bytes {
        Some(bytes) if bytes < 4 << 20 => Err(EngineError::Usage(format!(
            "[local] max_disk is {bytes} bytes here ({limit:?} of the file system holding \
             {}): less than 4MiB, nothing could run; give a size (\"1GiB\") or \"none\"",
            home.display()
        ))),
        bytes => Ok(bytes),
    }
}

/// Refuses, in landlock mode, a credential file of the configuration that environments' code
/// could read: that code runs as the engine's uid, and the system directories (`/etc`,
/// `/opt`, ...) are open to it for reading. Uid mode needs no such check: its code runs as
/// another uid, which file modes keep out.
pub(crate) fn check_credentials_out_of_reach(
    isolation: Isolation,
    home: &Path,
    config: &EngineConfig,
) -> Result<(), EngineError> {
    if isolation != Isolation::Landlock {
        return Ok(());
    }
    // The home holds the age key, the state's key and every environment's files.
    if let Some(dir) = sandbox::readable_by_confined_code(home) {
        return Err(EngineError::Environment(format!(
            "the home {} is under {dir}, which environments' code can read in landlock mode \
             (it runs as this engine's user): its keys and every environment's files would be \
             theirs to read; put the home elsewhere (--home, SLIPWAY_HOME; /var/lib/slipway), \
             or run the engine as root, where each environment runs as a user of its own",
            home.display()
        )));
    }
    for (what, path) in credential_files(config) {
        if let Some(dir) = sandbox::readable_by_confined_code(&path) {
            return Err(EngineError::Environment(format!(
                "{what} {} is under {dir}, which environments' code can read in landlock mode \
                 (it runs as this engine's user): move it out of the system directories (into \
                 the home, or /var/lib/slipway, mode 0600), or run the engine as root, where \
                 each environment runs as a user of its own",
                path.display()
            )));
        }
    }
    Ok(())
}

/// The files holding credentials the configuration names: the age identity, URL files,
/// kubeconfigs and the key and token files those name.
fn credential_files(config: &EngineConfig) -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    if let Some(file) = &config.secrets.identity_file {
        files.push(("[secrets] identity_file".to_owned(), PathBuf::from(file)));
    }
    if let Some(file) = &config.state.url_file {
        files.push(("[state] url_file".to_owned(), PathBuf::from(file)));
    }
    for (name, server) in &config.postgres {
        if let Some(file) = &server.url_file {
            files.push((format!("[postgres.{name}] url_file"), PathBuf::from(file)));
        }
    }
    for (name, cluster) in &config.kubernetes {
        for (i, path) in cluster.credential_files(name).into_iter().enumerate() {
            let what = if i == 0 {
                format!("[kubernetes.{name}] kubeconfig")
            } else {
                format!("a file [kubernetes.{name}]'s kubeconfig names,")
            };
            files.push((what, path));
        }
    }
    files
}

fn chmod(path: &Path, mode: u32) -> Result<(), EngineError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(EngineError::io(
        format!("cannot set the mode of {} to {mode:04o}", path.display()),
    ))
}

/// [`chmod`] of what `meta` describes, only when its mode is not `mode` already: a `chmod`
/// writes the inode (its ctime) even when nothing changes, and [`secure_home`] looks at every
/// environment's directories on every open.
fn chmod_unless(path: &Path, meta: &std::fs::Metadata, mode: u32) -> Result<(), EngineError> {
    if meta.permissions().mode() & 0o7777 == mode {
        return Ok(());
    }
    chmod(path, mode)
}

fn mkdir(path: &Path) -> Result<(), EngineError> {
    std::fs::create_dir_all(path)
        .map_err(EngineError::io(format!("cannot create {}", path.display())))
}

/// Makes the home private (see the module's documentation): run on every open, so that a
/// home made by an older Slipway (or under another umask) is fixed too. The environments'
/// directories are looked at when `envs/` changed since the last look (see [`SWEPT`]): that
/// look is returned, to be run ([`EnvsSweep::run`]) beside the command rather than before it.
pub(crate) fn secure_home(home: &Path) -> Result<Option<EnvsSweep>, EngineError> {
    let meta = std::fs::metadata(home).map_err(EngineError::io(format!(
        "cannot inspect the home {}",
        home.display()
    )))?;
    chmod_unless(home, &meta, 0o711)?;
    let entries = std::fs::read_dir(home).map_err(EngineError::io(format!(
        "cannot read the home {}",
        home.display()
    )))?;
    let mut sweep = None;
    for entry in entries.flatten() {
        let path = entry.path();
        // Never following a link: `symlink_metadata`.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        if entry.file_name() == "envs" {
            chmod_unless(&path, &meta, 0o711)?;
            // Every environment's directories are looked at once, not on every open (30,000
            // `stat`s at 10,000 environments, most of a one-shot command's time): again only
            // when an environment came or went since, which changes `envs/` itself. This
            // Slipway gives each directory its mode when it makes or uses it
            // (`prepare_dirs`); the look fixes what an older one left.
            let stamp = std::fs::symlink_metadata(&path)
                .map(|m| envs_stamp(&m))
                .ok();
            let swept = home.join(SWEPT);
            if stamp.is_some() && std::fs::read_to_string(&swept).ok() == stamp {
                continue;
            }
            sweep = Some(EnvsSweep {
                envs: path,
                swept,
                stamp,
            });
        } else if meta.is_dir() {
            chmod_unless(&path, &meta, 0o700)?;
        } else {
            chmod_unless(&path, &meta, 0o600)?;
        }
    }
    Ok(sweep)
}

/// The look at every environment's directories that [`secure_home`] found due: each root
/// closed to others, its `logs/` and `run/` made private. Only ever narrows a mode, to what
/// `prepare_dirs` gives too, so it may run while the command makes or uses an environment.
#[derive(Debug)]
pub(crate) struct EnvsSweep {
    envs: PathBuf,
    swept: PathBuf,
    /// What `envs/` was before the look: one that came meanwhile is looked at next time.
    stamp: Option<String>,
}

impl EnvsSweep {
    /// Runs the look on a thread of its own; on this one, before returning, when no thread
    /// can be started.
    pub(crate) fn start(self) -> Option<std::thread::JoinHandle<()>> {
        let sweep = std::sync::Arc::new(std::sync::Mutex::new(Some(self)));
        let theirs = sweep.clone();
        let started = std::thread::Builder::new()
            .name("envs-sweep".into())
            .spawn(move || {
                if let Some(sweep) = theirs.lock().ok().and_then(|mut s| s.take()) {
                    sweep.run_logged();
                }
            });
        match started {
            Ok(running) => Some(running),
            Err(_) => {
                if let Some(sweep) = sweep.lock().ok().and_then(|mut s| s.take()) {
                    sweep.run_logged();
                }
                None
            }
        }
    }

    fn run_logged(self) {
        if let Err(error) = self.run() {
            tracing::warn!(%error, "cannot secure the environments' directories");
        }
    }

    /// Looks at every environment's directories, then notes the look.
    pub(crate) fn run(self) -> Result<(), EngineError> {
        for env in std::fs::read_dir(&self.envs)
            .into_iter()
            .flatten()
            .flatten()
        {
            let root = env.path();
            let Ok(meta) = std::fs::symlink_metadata(&root) else {
                continue;
            };
            if !meta.is_dir() {
                continue;
            }
            // Group access is granted again, to the environment's gid, when it is next
            // applied; until then only the engine may enter.
            if meta.permissions().mode() & 0o007 != 0 {
                gone_is_done(chmod_directory(&root, 0o700))?;
            }
            for private in ["logs", "run"] {
                let dir = root.join(private);
                if let Ok(meta) = std::fs::symlink_metadata(&dir)
                    && meta.is_dir()
                    && meta.permissions().mode() & 0o7777 != 0o700
                {
                    gone_is_done(chmod_directory(&dir, 0o700))?;
                }
            }
        }
        if let Some(stamp) = &self.stamp {
            note_swept(&self.swept, stamp);
        }
        Ok(())
    }
}

/// Gives the directory at `path` the mode `mode`, never through a link: the directory is
/// opened without following one (a link swapped in after a look, in a root an older Slipway
/// left writable by others, would otherwise have root change the mode of where it points).
fn chmod_directory(path: &Path, mode: u32) -> Result<(), EngineError> {
    use std::os::unix::fs::OpenOptionsExt;
    let context = || format!("cannot set the mode of {} to {mode:04o}", path.display());
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(EngineError::io(context()))?;
    dir.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(EngineError::io(context()))
}

/// A directory removed meanwhile (an environment destroyed by another command) needs no mode.
fn gone_is_done(result: Result<(), EngineError>) -> Result<(), EngineError> {
    match result {
        Err(EngineError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        other => other,
    }
}

/// The file of the home saying what `envs/` was when [`secure_home`] last looked at every
/// environment's directories.
const SWEPT: &str = "envs.secured";

/// What of `envs/` changes when an entry is added or removed, or its own mode or owner
/// change: device, inode, links (a directory added or removed within the clock's tick still
/// changes them), modification and change times, behind the version of the look.
fn envs_stamp(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "1 {} {} {} {}.{:09} {}.{:09}\n",
        meta.dev(),
        meta.ino(),
        meta.nlink(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )
}

/// Writes `stamp` to `path`, `0600`. Best effort: without it the next open looks again.
fn note_swept(path: &Path, stamp: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(stamp.as_bytes()));
    if let Err(e) = written {
        tracing::debug!(path = %path.display(), error = %e, "cannot note the home's look");
    }
}

/// Gives `path` and everything beneath it (never following a link) to `uid`/`gid`.
fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<(), EngineError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(EngineError::io(format!(
        "cannot give {} to uid {uid}",
        path.display()
    )))?;
    let meta = std::fs::symlink_metadata(path).map_err(EngineError::io(format!(
        "cannot inspect {}",
        path.display()
    )))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)
            .map_err(EngineError::io(format!("cannot read {}", path.display())))?
            .flatten()
        {
            chown_tree(&entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

impl Engine {
    /// The isolation in force for environments' code.
    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    /// The sandbox of `env`'s code; in uid mode its uid, allocated now if it has none yet.
    pub(crate) fn sandbox(&self, env: &EnvName) -> Result<Sandbox, EngineError> {
        self.sandbox_known(env, None)
    }

    /// [`Engine::sandbox`] when `env`'s recorded uid was read already (`status` reads every
    /// environment's at once): it is not read again; with none, it is read or allocated.
    pub(crate) fn sandbox_known(
        &self,
        env: &EnvName,
        uid: Option<u32>,
    ) -> Result<Sandbox, EngineError> {
        let mut sandbox = match (self.isolation, uid) {
            (Isolation::Uid, Some(uid)) => Sandbox::uid(uid, uid),
            _ => self.identity(env)?,
        };
        if let (Isolation::Uid, Some((uid, _))) = (sandbox.isolation, sandbox.ids) {
            // Before any of its code runs, whichever port it would try.
            self.fence_ready()?;
            sandbox.max_processes = Some(self.config.local.max_processes).filter(|&n| n > 0);
            sandbox.cgroup = self.limits.as_ref().ok().map(|l| l.group(uid));
        }
        if sandbox.isolation != Isolation::None
            && let Some(max) = self.max_disk
        {
            let root = self.home.join("envs").join(env.as_str());
            let uid = sandbox.ids.map(|(uid, _)| uid);
            sandbox.disk = Some(slipway_providers::disk::DiskLimit {
                max,
                dirs: vec![root.join("data"), root.join("tmp")],
                procs: sandbox
                    .cgroup
                    .as_ref()
                    .and_then(|group| group.dirs().first().map(|dir| dir.join("cgroup.procs"))),
                killer: self
                    .disk_killer
                    .filter(|&killer| uid.is_some_and(|uid| uid != killer)),
            });
        }
        // On a replica every command is bound by the lease, and none starts without one.
        if let Some(watchdog) = &self.watchdog {
            sandbox.lease = Some(sandbox::LeaseBound {
                environment: env.to_string(),
                fence: self.store.held(env).map(|f| (f.replica, f.epoch)),
                watchdog: watchdog.clone(),
            });
        }
        Ok(sandbox)
    }

    /// The most each environment's data and temporary directories may hold
    /// (`[local] max_disk`), in bytes; `None`: no limit.
    pub fn max_disk(&self) -> Option<u64> {
        self.max_disk
    }

    /// Kills every process of `uid`, an environment's (see
    /// [`sandbox::kill_everything_of`]), from a process whose real and saved uid is the
    /// range's kept uid when it can be: neither given to an environment (a home from before
    /// the uid was kept may have given it) nor known to the system.
    ///
    /// Nothing to kill when `env` never ran code: only a resource of a type that runs code
    /// (`Uses::All`) gets its environment an export, `src/`, made before anything of it runs,
    /// and none of the environment's code can remove it (its root is the engine's). Without
    /// one, no process of the uid is the environment's: a uid is released only once every
    /// process of it was killed.
    pub(crate) fn kill_everything_of(&self, env: &EnvName, uid: u32) -> Result<(), EngineError> {
        let export = self.home.join("envs").join(env.as_str()).join("src");
        if std::fs::symlink_metadata(&export)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        {
            return Ok(());
        }
        let spare = match self.config.killer_uid() {
            Some(kept)
                if kept != uid && !sandbox::id_is_known(kept) && !self.store.uid_given(kept)? =>
            {
                Some(kept)
            }
            _ => None,
        };
        sandbox::kill_everything_of(uid, uid, spare).map_err(EngineError::io(format!(
            "cannot stop the processes of uid {uid}"
        )))?;
        // Its group goes with its processes (made again at its next start).
        if let Ok(limits) = &self.limits
            && let Err(e) = limits.group(uid).remove()
        {
            tracing::warn!(environment = %env, error = %e, "its control group stays");
        }
        Ok(())
    }

    /// Where environments' code gets its control group and the limits it holds there
    /// (`cgroup v1, under DIR: memory 12.0 GiB, CPU unlimited`), or why it gets none.
    pub fn resource_limits(&self) -> Result<String, String> {
        self.limits
            .as_ref()
            .map(Limits::describe)
            .map_err(Clone::clone)
    }

    /// Kills what the code of a former environment of the same name left running, before its
    /// directories become `uid`'s: one destroyed on another replica and made again here
    /// before this one swept its copy (see [`Engine::sweep_departed`]) finds `data/` still
    /// owned by the former uid. Only a uid that is an environment's by every sign (see
    /// [`Engine::environment_uid_of`]).
    fn kill_a_former_owner(&self, dirs: &EnvDirs, uid: u32) -> Result<(), EngineError> {
        use std::os::unix::fs::MetadataExt;
        // The common case first, for one stat: no `data/` yet, or already `uid`'s.
        if std::fs::symlink_metadata(&dirs.data).map_or(true, |d| d.uid() == uid || d.uid() == 0) {
            return Ok(());
        }
        let Some(former) = self.environment_uid_of(&dirs.root)? else {
            return Ok(());
        };
        let Some(env) = dirs
            .root
            .file_name()
            .and_then(|n| EnvName::parse(n.to_str()?).ok())
        else {
            return Ok(());
        };
        self.kill_everything_of(&env, former)
    }

    /// The uid whose the environment directory `root` is, read from its `data/`, if it is an
    /// environment's by every sign: in the range environments are given, unknown to the
    /// system, the group of `root` (which only the engine sets), and given to no environment
    /// now. `None` otherwise (a `data/` left by an engine that ran as another user, or
    /// restored with other ids, must not make the engine kill a real user's processes).
    pub(crate) fn environment_uid_of(&self, root: &Path) -> Result<Option<u32>, EngineError> {
        use std::os::unix::fs::MetadataExt;
        let Ok(data) = std::fs::symlink_metadata(root.join("data")) else {
            return Ok(None);
        };
        let uid = data.uid();
        let candidate = data.is_dir()
            && uid != 0
            && self.config.environment_uids().contains(&uid)
            && std::fs::symlink_metadata(root).is_ok_and(|r| r.is_dir() && r.gid() == uid)
            && !sandbox::id_is_known(uid);
        Ok((candidate && !self.store.uid_given(uid)?).then_some(uid))
    }

    /// [`Engine::sandbox`] without the lease.
    fn identity(&self, env: &EnvName) -> Result<Sandbox, EngineError> {
        Ok(match self.isolation {
            Isolation::Uid => {
                // Observing and applying ask for every resource: a read serves every call
                // after the first, which takes the write lock to allocate.
                let uid = match self.store.environment_uid(env)? {
                    Some(uid) => uid,
                    None => {
                        let range = self.config.environment_uids();
                        let known = sandbox::KnownIds::load();
                        self.store
                            .allocate_uid(env, range, |id| !known.contains(id))?
                    }
                };
                Sandbox::uid(uid, uid)
            }
            Isolation::Landlock => Sandbox::landlock(),
            Isolation::None => Sandbox::none(),
        })
    }

    /// Refuses to run a generated or ad-hoc environment (code nobody reviewed) without
    /// isolation, unless the configuration says `isolation = "none"` itself.
    pub(crate) fn check_isolated(&self, env: &EnvName, kind: EnvKind) -> Result<(), EngineError> {
        let unreviewed = matches!(kind, EnvKind::Generated | EnvKind::Adhoc);
        if self.isolation != Isolation::None
            || !unreviewed
            || self.config.local.isolation == IsolationSetting::None
        {
            return Ok(());
        }
        Err(EngineError::Usage(format!(
            "refusing to run `{env}` ({} environment) without isolation: the engine does not \
             run as root and this kernel has no Landlock, so its code would run with the \
             engine's rights (its keys, its database, every environment); run the engine as \
             root, or on a kernel with Landlock, or accept this explicitly with \
             `[local] isolation = \"none\"` in the engine configuration",
            kind.as_str()
        )))
    }

    /// Creates those of `dirs` that resources using `uses` need, with the ownership and
    /// modes of the module's documentation: the root and `run/` always; `data/` from
    /// [`Uses::Data`]; `src/`, `tmp/` and `logs/` for [`Uses::All`]. Those made before stay.
    ///
    /// # Errors
    /// In uid mode, when a directory above the home cannot be searched by other users (the
    /// environment's uid could not reach its own directories).
    pub(crate) fn prepare_dirs(
        &self,
        dirs: &EnvDirs,
        sandbox: &Sandbox,
        uses: Uses,
    ) -> Result<(), EngineError> {
        // The look at every environment's modes is done first: it would close this one's
        // root to its group again.
        self.settle_sweep();
        let envs = self.home.join("envs");
        mkdir(&envs)?;
        // Only when it differs: a `chmod` writes the ctime, which would make the next open
        // look at every environment again (`secure_home`).
        let meta = std::fs::metadata(&envs).map_err(EngineError::io(format!(
            "cannot inspect {}",
            envs.display()
        )))?;
        chmod_unless(&envs, &meta, 0o711)?;
        let src = dirs.root.join("src");
        let tmp = dirs.tmp();
        // The root first: each below it is made in it.
        let shared: &[&Path] = match uses {
            Uses::All => &[&dirs.root, &src],
            Uses::Data | Uses::Run => &[&dirs.root],
        };
        let owned: &[&Path] = match uses {
            Uses::All => &[&dirs.data, &tmp],
            Uses::Data => &[&dirs.data],
            Uses::Run => &[],
        };
        let private: &[&Path] = match uses {
            Uses::All => &[&dirs.logs, &dirs.run],
            Uses::Data | Uses::Run => &[&dirs.run],
        };
        if let Some((uid, gid)) = sandbox.ids {
            if let Some(dir) = sandbox::unsearchable_ancestor(&envs) {
                return Err(EngineError::Usage(format!(
                    "environments run under their own uid, which cannot reach {}: {} is not \
                     searchable by other users; run `chmod o+x {}` (it lets others traverse it, \
                     not list it), or move the home (SLIPWAY_HOME) under a directory that is",
                    envs.display(),
                    dir.display(),
                    dir.display()
                )));
            }
            self.kill_a_former_owner(dirs, uid)?;
            for dir in shared {
                mkdir(dir)?;
                std::os::unix::fs::chown(dir, Some(0), Some(gid)).map_err(EngineError::io(
                    format!("cannot give {} to gid {gid}", dir.display()),
                ))?;
                chmod(dir, 0o750)?;
            }
            for dir in owned {
                mkdir(dir)?;
                let meta = std::fs::symlink_metadata(dir)
                    .map_err(EngineError::io(format!("cannot inspect {}", dir.display())))?;
                use std::os::unix::fs::MetadataExt;
                if meta.uid() == 0 && uid != 0 {
                    // First run under its own uid: what the engine (root) left in it becomes
                    // the environment's. Only then is the tree walked: nothing but root could
                    // have written a root-owned tree, so no link can be swapped in meanwhile.
                    chown_tree(dir, uid, gid)?;
                } else if meta.uid() != uid || meta.gid() != gid {
                    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).map_err(
                        EngineError::io(format!("cannot give {} to uid {uid}", dir.display())),
                    )?;
                }
                chmod(dir, 0o700)?;
            }
        } else {
            for dir in shared.iter().chain(owned) {
                mkdir(dir)?;
                chmod(dir, 0o700)?;
            }
        }
        for dir in private {
            mkdir(dir)?;
            chmod(dir, 0o700)?;
        }
        Ok(())
    }
}

/// Removes an environment's directory `root`, its export (`src/`) last: a removal that fails
/// half way (a process of the uid writing into `data/` meanwhile) leaves `src/`, which says
/// that the environment ran code and so has its uid's processes killed by the retry (see
/// [`Engine::kill_everything_of`]).
pub(crate) fn remove_env_root(root: &Path) -> std::io::Result<()> {
    // A link (an administrator's) is removed, not followed.
    if std::fs::symlink_metadata(root)?.is_symlink() {
        return std::fs::remove_file(root);
    }
    let mut src = false;
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        if entry.file_name() == "src" {
            src = true;
            continue;
        }
        let path = entry.path();
        // Where the listing gives no type (some file systems), it is asked of the child, which
        // may be gone too.
        let is_dir = match entry.file_type() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            other => other?.is_dir(),
        };
        // A child gone meanwhile is what was wanted. (Only the root's own absence is
        // reported as not found: the caller takes that as already destroyed, and must not
        // take a vanished child for it, leaving the root behind.)
        gone(if is_dir {
            // Most are empty by now (a database's `run/`): one `rmdir`, not a walk, which
            // reports whatever stops it.
            std::fs::remove_dir(&path).or_else(|_| std::fs::remove_dir_all(&path))
        } else {
            std::fs::remove_file(&path)
        })?;
    }
    if src {
        gone(std::fs::remove_dir_all(root.join("src")))?;
    }
    std::fs::remove_dir(root)
}

/// A removal's `result`, with what was not there taken as removed.
pub(crate) fn gone(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A limit asked for that this engine cannot enforce refuses it at start, rather than
    /// running environments' code believed bounded; the default's absence is only said.
    #[test]
    fn a_limit_that_cannot_be_enforced_is_refused() {
        use crate::config::{CgroupSetting, LocalConfig, SizeLimit};
        use slipway_providers::cgroup::Setting;
        let default = LocalConfig::default();
        let found = resource_limits(Isolation::Landlock, &default).expect("the default");
        assert!(
            found.is_err_and(|why| why.contains("isolation is landlock")),
            "no group without root, and no error"
        );
        let mut asked = LocalConfig {
            max_memory: Some(SizeLimit::Bytes(64 << 20)),
            ..LocalConfig::default()
        };
        for isolation in [Isolation::Landlock, Isolation::None] {
            let refused = resource_limits(isolation, &asked).map(|_| ()).unwrap_err();
            assert!(refused.to_string().contains("max_memory"), "{refused}");
        }
        asked.cgroup = CgroupSetting(Setting::Off);
        assert!(
            resource_limits(Isolation::Uid, &asked).is_err(),
            "asked, with groups off"
        );
        asked.max_memory = Some(SizeLimit::Unlimited);
        assert!(
            resource_limits(Isolation::Uid, &asked).is_ok_and(|l| l.is_err()),
            "none asked and groups off: said, not refused"
        );
        asked.max_cpu = Some(500);
        assert!(
            resource_limits(Isolation::Uid, &asked).is_err(),
            "a CPU limit asked"
        );
    }

    /// [`secure_home`] with the look at the environments it found due, done at once.
    #[test]
    fn a_disk_limit_is_a_share_of_the_homes_file_system_and_needs_isolation() {
        use crate::config::{LocalConfig, SizeLimit};
        let home = tempfile::tempdir().expect("tempdir");
        let fs = nix::sys::statvfs::statvfs(home.path()).expect("statvfs");
        let size = fs.blocks() * fs.fragment_size();
        let mut local = LocalConfig::default();
        let limit = |isolation, local: &LocalConfig| disk_limit(isolation, local, home.path());
        assert_eq!(
            limit(Isolation::Landlock, &local).expect("default"),
            Some((size / 2) >> 30 << 30),
            "half the file system by default, in whole GiB"
        );
        assert_eq!(
            limit(Isolation::None, &local).expect("no isolation"),
            None,
            "nothing to bound without isolation"
        );
        local.max_disk = Some(SizeLimit::Bytes(64 << 20));
        assert_eq!(
            limit(Isolation::Uid, &local).expect("a size"),
            Some(64 << 20)
        );
        let refused = limit(Isolation::None, &local).expect_err("asked for without isolation");
        assert!(
            refused.to_string().contains("isolation is none"),
            "{refused}"
        );
        local.max_disk = Some(SizeLimit::Unlimited);
        assert_eq!(limit(Isolation::None, &local).expect("none"), None);
        assert_eq!(limit(Isolation::Uid, &local).expect("none"), None);

        // A small file system: a share below a GiB is not rounded to nothing, and one below
        // 4 MiB is refused.
        let small = home.path().join("small");
        std::fs::create_dir(&small).expect("dir");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
            .arg(&small)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("cannot mount a tmpfs here (not root): the small file system is not checked");
            return;
        }
        local.max_disk = Some(SizeLimit::Share(100));
        let whole = disk_limit(Isolation::Uid, &local, &small);
        local.max_disk = Some(SizeLimit::Share(50));
        let half = disk_limit(Isolation::Uid, &local, &small);
        let _ = std::process::Command::new("umount").arg(&small).status();
        assert_eq!(
            whole.expect("all of it"),
            Some(6 << 20),
            "not rounded to nothing"
        );
        let refused = half.expect_err("3 MiB");
        assert!(refused.to_string().contains("less than 4MiB"), "{refused}");
    }

    fn secure_now(home: &Path) -> Result<(), EngineError> {
        secure_home(home)?.map_or(Ok(()), EnvsSweep::run)
    }

    /// A directory whose removal fails half way keeps its export, so that the destroy's
    /// retry still knows the environment ran code (and kills its uid's processes).
    #[test]
    fn an_environment_root_whose_removal_fails_keeps_its_export() {
        if !sandbox::running_as_root() {
            eprintln!("skipped: needs root for chattr");
            return;
        }
        let home = tempfile::tempdir().expect("a temporary home");
        let root = home.path().join("qa");
        for dir in ["src/abc", "data", "run"] {
            std::fs::create_dir_all(root.join(dir)).expect("a directory");
        }
        let stuck = root.join("data/stuck");
        std::fs::write(&stuck, "x").expect("a file");
        let chattr = |flag: &str| {
            std::process::Command::new("chattr")
                .args([flag, stuck.to_str().expect("utf-8")])
                .status()
                .is_ok_and(|s| s.success())
        };
        if !chattr("+i") {
            eprintln!("skipped: this file system has no immutable files");
            return;
        }
        let removed = remove_env_root(&root);
        chattr("-i");
        assert!(removed.is_err(), "an immutable file cannot be removed");
        assert!(root.join("src/abc").is_dir(), "the export is removed last");
        remove_env_root(&root).expect("removed once the file may go");
        assert!(!root.exists());
    }

    /// Empty and full directories, files, an export and a link all go; what the link points
    /// to stays; a root without an export goes too.
    #[test]
    fn an_environment_root_goes_whole_and_never_through_a_link() {
        let home = tempfile::tempdir().expect("a temporary home");
        let outside = home.path().join("outside");
        std::fs::create_dir_all(outside.join("kept")).expect("a directory elsewhere");
        let root = home.path().join("qa");
        for dir in ["run", "logs", "data/deep/er", "src/abc"] {
            std::fs::create_dir_all(root.join(dir)).expect("a directory");
        }
        std::fs::write(root.join("logs/app.log"), "x").expect("a log");
        std::fs::write(root.join("data/deep/er/f"), "x").expect("a file");
        std::fs::write(root.join("state.json"), "{}").expect("a file at the root");
        std::os::unix::fs::symlink(&outside, root.join("data/link")).expect("a link");
        std::os::unix::fs::symlink(&outside, root.join("elsewhere")).expect("a link");
        remove_env_root(&root).expect("removed");
        assert!(!root.exists());
        assert!(outside.join("kept").is_dir(), "what a link points to stays");

        let plain = home.path().join("db");
        std::fs::create_dir_all(plain.join("run")).expect("a run directory");
        remove_env_root(&plain).expect("a root without an export is removed");
        assert!(!plain.exists());
    }

    /// Children that another process removes meanwhile are gone as wanted: the removal goes
    /// on and the root goes, rather than stop on a child not found (which the destroy would
    /// take for the root's own absence, and report done with the root still there).
    #[test]
    fn an_environment_root_goes_whole_while_its_children_vanish() {
        let home = tempfile::tempdir().expect("a temporary home");
        let root = home.path().join("qa");
        for round in 0..30 {
            let names: Vec<String> = (0..200).map(|i| format!("f{i}")).collect();
            std::fs::create_dir_all(root.join("src")).expect("an export");
            for name in &names {
                std::fs::write(root.join(name), "x").expect("a file");
            }
            // Removes the files too, in the order a listing is likely to give them.
            let racer = {
                let root = root.clone();
                std::thread::spawn(move || {
                    for name in names.iter().rev() {
                        let _ = std::fs::remove_file(root.join(name));
                    }
                })
            };
            let removed = remove_env_root(&root);
            racer.join().expect("the racing thread");
            removed.unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert!(!root.exists(), "round {round}: the root is left");
        }
    }

    /// How `child` ended, waiting up to 10 s; killed (and the test failed) if it did not.
    fn ended(mut child: std::process::Child) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("look at the child") {
                return status;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the process was not killed");
    }

    /// An engine in a new home, when this runs as root (else `None`: the test is skipped).
    #[test]
    fn a_credential_file_landlocked_code_could_read_is_refused() {
        use slipway_providers::kubernetes::ClusterConfig;
        let dir = tempfile::tempdir().expect("a temp dir");
        let cluster = |path: &Path| ClusterConfig {
            kubeconfig: Some(path.to_path_buf()),
            ..ClusterConfig::default()
        };
        let with = |kubeconfig: &Path, url_file: &Path| {
            let mut config = EngineConfig::default();
            config.kubernetes.insert("main".into(), cluster(kubeconfig));
            config.state.url_file = Some(url_file.display().to_string());
            config
        };
        let kept = dir.path().join("kubeconfig");
        std::fs::write(&kept, "apiVersion: v1\nkind: Config\n").expect("written");
        let url = dir.path().join("url");
        std::fs::write(&url, "postgres://x@h/db").expect("written");
        let reach = |config: &EngineConfig| {
            check_credentials_out_of_reach(Isolation::Landlock, dir.path(), config)
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(reach(&with(&kept, &url)), None, "files in a private place");
        // Under /etc: by its path, through a symlink, or named by the kubeconfig.
        let linked = dir.path().join("link");
        std::os::unix::fs::symlink("/etc/hostname", &linked).expect("a link");
        let naming = dir.path().join("naming");
        std::fs::write(
            &naming,
            "apiVersion: v1\nkind: Config\nusers:\n- name: u\n  user:\n    \
             tokenFile: /etc/hostname\n",
        )
        .expect("written");
        let etc = Path::new("/etc/hostname");
        for config in [
            with(etc, &url),
            with(&kept, etc),
            with(&linked, &url),
            with(&naming, &url),
            {
                let mut config = with(&kept, &url);
                config.secrets.identity_file = Some("/etc/hostname".into());
                config
            },
        ] {
            let refused =
                reach(&config).unwrap_or_else(|| panic!("refused: {:?}", config.kubernetes));
            assert!(refused.contains("/etc"), "{refused}");
            assert!(
                check_credentials_out_of_reach(Isolation::Uid, dir.path(), &config).is_ok(),
                "uid mode keeps the code out by file modes"
            );
        }
        let home = check_credentials_out_of_reach(
            Isolation::Landlock,
            Path::new("/opt/slipway"),
            &EngineConfig::default(),
        )
        .expect_err("a home under /opt");
        assert!(home.to_string().contains("/opt"), "{home}");
    }

    fn engine_as_root() -> Option<(tempfile::TempDir, Engine)> {
        if !sandbox::running_as_root() {
            eprintln!("skipped: needs root to take another uid");
            return None;
        }
        let home = tempfile::tempdir().expect("a temporary home");
        let engine =
            Engine::open(home.path(), crate::EngineConfig::default(), vec![]).expect("an engine");
        Some((home, engine))
    }

    /// In uid mode an environment's code gets `[local] max_processes` as its limit, and
    /// none when it is 0.
    #[test]
    fn an_environments_code_is_given_the_configured_process_limit() {
        let Some((_home, engine)) = engine_as_root() else {
            return;
        };
        let dev = EnvName::parse("dev").expect("a name");
        let sandbox = engine.sandbox(&dev).expect("a sandbox");
        assert_eq!(sandbox.isolation, Isolation::Uid);
        assert_eq!(sandbox.max_processes, Some(4096), "the default");
        let home = tempfile::tempdir().expect("a temporary home");
        let mut config = crate::EngineConfig::default();
        config.local.max_processes = 0;
        let engine = Engine::open(home.path(), config, vec![]).expect("an engine");
        let sandbox = engine.sandbox(&dev).expect("a sandbox");
        assert_eq!(sandbox.max_processes, None, "0: no limit");
    }

    /// The look at the environments' modes runs beside the command: an environment it
    /// prepares keeps the mode it gives it (the look, done first, does not close its root to
    /// its group afterwards), and every other one is fixed, and the look noted, once the
    /// engine is gone.
    #[test]
    fn the_look_at_the_environments_modes_never_undoes_what_an_apply_prepares() {
        use std::os::unix::fs::MetadataExt;
        if !sandbox::running_as_root() {
            eprintln!("skipped: needs root to give a directory to another uid");
            return;
        }
        const UID: u32 = 299_993;
        let home = tempfile::tempdir().expect("a temporary home");
        drop(Engine::open(home.path(), crate::EngineConfig::default(), vec![]).expect("made"));
        // What an older Slipway left: many roots open to everyone, so that the look is slow.
        let envs = home.path().join("envs");
        let legacy: Vec<PathBuf> = (0..2000).map(|i| envs.join(format!("old{i}"))).collect();
        for root in &legacy {
            std::fs::create_dir_all(root.join("logs")).expect("a legacy environment");
            chmod(root, 0o777).expect("open to all");
            chmod(&root.join("logs"), 0o755).expect("readable logs");
        }
        let engine =
            Engine::open(home.path(), crate::EngineConfig::default(), vec![]).expect("an engine");
        // Two at once, as a controller's parallel applies: each waits for the look.
        let mode = |p: &Path| std::fs::symlink_metadata(p).expect("stat").mode() & 0o7777;
        let prepared: Vec<(PathBuf, u32)> = std::thread::scope(|scope| {
            let preparing: Vec<_> = [("old1998", UID - 1), ("old1999", UID)]
                .into_iter()
                .map(|(name, uid)| {
                    let engine = &engine;
                    let swept = home.path().join(SWEPT);
                    scope.spawn(move || {
                        let env = EnvName::parse(name).expect("a name");
                        let dirs = engine.env_dirs(&env, "abc", "");
                        engine
                            .prepare_dirs(&dirs, &sandbox::Sandbox::uid(uid, uid), Uses::All)
                            .expect("prepare");
                        assert!(
                            swept.exists(),
                            "the look was done before {name} was prepared"
                        );
                        let prepared = mode(&dirs.root);
                        (dirs.root, prepared)
                    })
                })
                .collect();
            preparing
                .into_iter()
                .map(|t| t.join().expect("prepared"))
                .collect()
        });
        drop(engine);
        for (root, before) in &prepared {
            assert_eq!(
                mode(root),
                *before,
                "{} keeps its mode once the look is done",
                root.display()
            );
            assert_eq!(before & 0o070, 0o050, "its group may enter it: {before:o}");
        }
        for root in &legacy[..1998] {
            assert_eq!(mode(root), 0o700, "{} is closed", root.display());
            assert_eq!(mode(&root.join("logs")), 0o700, "its logs are private");
        }
    }

    /// The look changes a directory's mode only through the directory itself: a link in its
    /// place (swapped in by whoever could write a legacy root) is refused, and where it points
    /// keeps its mode.
    #[test]
    fn a_mode_is_never_set_through_a_link() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("a directory");
        let target = dir.path().join("system");
        std::fs::create_dir(&target).expect("a directory a link points to");
        chmod(&target, 0o755).expect("its mode");
        let link = dir.path().join("logs");
        std::os::unix::fs::symlink(&target, &link).expect("a link");
        assert!(chmod_directory(&link, 0o700).is_err(), "a link is refused");
        let mode = std::fs::metadata(&target).expect("stat").mode() & 0o7777;
        assert_eq!(mode, 0o755, "what it points to keeps its mode");
        chmod_directory(&target, 0o700).expect("the directory itself");
        let mode = std::fs::metadata(&target).expect("stat").mode() & 0o7777;
        assert_eq!(mode, 0o700);
    }

    /// A copy of an environment at `root` that ran code as `uid` (its export, its `data/`, its
    /// root's group), and a process that uid left running.
    fn left_by(root: &Path, uid: u32) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        for dir in ["src/abc", "data"] {
            std::fs::create_dir_all(root.join(dir)).expect("a directory");
        }
        std::os::unix::fs::chown(root.join("data"), Some(uid), Some(uid))
            .expect("the data is the uid's");
        std::os::unix::fs::chown(root, Some(0), Some(uid)).expect("the root is its group's");
        std::process::Command::new("sleep")
            .arg("1000")
            .uid(uid)
            .gid(uid)
            .spawn()
            .expect("a process of the uid")
    }

    /// An environment destroyed on another replica and made again here before this one swept
    /// its copy: the former uid's processes are killed before the directories become the new
    /// uid's.
    #[test]
    fn an_environment_made_again_over_a_former_copy_kills_the_former_uid_s_processes() {
        use std::os::unix::fs::MetadataExt;
        const FORMER: u32 = 299_991;
        const NOW: u32 = 299_992;
        let Some((_home, engine)) = engine_as_root() else {
            return;
        };
        let env = EnvName::parse("qa").expect("a name");
        let dirs = engine.env_dirs(&env, "abc", "");
        let left = left_by(&dirs.root, FORMER);
        engine
            .prepare_dirs(&dirs, &sandbox::Sandbox::uid(NOW, NOW), Uses::All)
            .expect("prepare");
        let status = ended(left);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "the former uid's process is killed (SIGKILL)"
        );
        assert_eq!(
            std::fs::symlink_metadata(&dirs.data).expect("stat").uid(),
            NOW,
            "data/ is the new uid's"
        );
    }

    /// What is not an environment's by every sign is not killed when a copy changes hands: a
    /// former uid given to another environment now, or a root of another group than the
    /// uid of its `data/`.
    #[test]
    fn a_former_owner_that_is_not_an_environment_s_by_every_sign_is_not_killed() {
        let Some((_home, engine)) = engine_as_root() else {
            return;
        };
        // Given to `other` now: its processes are that environment's.
        let other = EnvName::parse("other").expect("a name");
        engine
            .store
            .upsert_environment(&slipway_state::EnvironmentRecord::new(
                other.clone(),
                EnvKind::Static,
                "shop".into(),
                String::new(),
                0,
            ))
            .expect("an environment");
        let _ = engine.sandbox(&other).expect("its uid");
        let given = engine
            .store
            .environment_uid(&other)
            .expect("read")
            .expect("given");
        let qa = engine.env_dirs(&EnvName::parse("qa").expect("a name"), "abc", "");
        let mut of_other = left_by(&qa.root, given);
        // A root whose group is not its data/'s uid.
        let uat = engine.env_dirs(&EnvName::parse("uat").expect("a name"), "abc", "");
        let mut regrouped = left_by(&uat.root, 299_993);
        std::os::unix::fs::chown(&uat.root, Some(0), Some(299_994)).expect("chown");
        for dirs in [&qa, &uat] {
            engine
                .prepare_dirs(dirs, &sandbox::Sandbox::uid(299_995, 299_995), Uses::All)
                .expect("prepare");
        }
        let alive =
            [&mut of_other, &mut regrouped].map(|child| child.try_wait().expect("look").is_none());
        for child in [&mut of_other, &mut regrouped] {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert_eq!(alive, [true, true], "neither is killed");
    }

    /// A replica's copy of an environment destroyed elsewhere: what its code left running on
    /// this host (a job's daemon) is killed before the directory goes, or the uid's next
    /// environment would meet it.
    #[test]
    fn sweeping_a_departed_environment_kills_what_its_code_left_on_this_host() {
        const UID: u32 = 299_990;
        let Some((home, engine)) = engine_as_root() else {
            return;
        };
        assert!(engine.config.environment_uids().contains(&UID));
        assert_eq!(
            engine.isolation,
            Isolation::Uid,
            "root runs environments by uid"
        );
        let departed = |name: &str, uid: u32| {
            let root = home.path().join("envs").join(name);
            let process = left_by(&root, uid);
            (root, process)
        };
        let (root, daemon) = departed("gone", UID);
        // A copy whose data/ is a uid outside the range (an engine that ran as that user, a
        // restore with other ids): its processes are not the environment's to kill.
        let (_, mut outsider) = departed("stray", 3_999_442);
        // A name the state has again (made again on another replica, with another uid) whose
        // copy here is the former environment's: swept like a departed one. And one whose
        // copy is its own: kept.
        for name in ["again", "kept"] {
            let env = EnvName::parse(name).expect("a name");
            engine
                .store
                .upsert_environment(&slipway_state::EnvironmentRecord::new(
                    env.clone(),
                    EnvKind::Static,
                    "shop".into(),
                    String::new(),
                    0,
                ))
                .expect("an environment");
            let _ = engine.sandbox(&env).expect("its uid");
        }
        let (again, former) = departed("again", UID - 1);
        let kept_uid = engine
            .store
            .environment_uid(&EnvName::parse("kept").expect("a name"))
            .expect("read")
            .expect("given");
        let (kept, mut own) = departed("kept", kept_uid);
        let swept = engine.sweep_departed(|_| false).expect("sweep");
        let own_alive = own.try_wait().expect("look").is_none();
        let _ = own.kill();
        let _ = own.wait();
        assert!(
            own_alive,
            "a copy that is its environment's own is left alone"
        );
        assert!(kept.exists());
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&ended(former)),
            Some(9),
            "the former environment's process is killed"
        );
        assert!(!again.exists(), "and its stale copy removed");
        let alive = outsider.try_wait().expect("look at the outsider").is_none();
        let _ = outsider.kill();
        let _ = outsider.wait();
        assert!(alive, "a uid outside the range is not killed");
        assert_eq!(
            swept,
            vec![
                EnvName::parse("again").expect("a name"),
                EnvName::parse("gone").expect("a name"),
                EnvName::parse("stray").expect("a name")
            ]
        );
        let status = ended(daemon);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "the daemon is killed (SIGKILL)"
        );
        assert!(!root.exists(), "and the directory removed");
    }

    #[test]
    fn securing_a_home_fixes_loose_modes_and_leaves_right_ones_unwritten() {
        use std::os::unix::fs::MetadataExt;
        let home = tempfile::tempdir().expect("a temporary home");
        let home = home.path();
        let env = home.join("envs/qa");
        std::fs::create_dir_all(env.join("logs")).expect("logs");
        std::fs::create_dir_all(env.join("run")).expect("run");
        std::fs::write(home.join("state.key"), "key").expect("a key");
        for (path, mode) in [
            (home.join("envs"), 0o711),
            (env.clone(), 0o777),
            (env.join("logs"), 0o755),
            (env.join("run"), 0o700),
            (home.join("state.key"), 0o644),
        ] {
            chmod(&path, mode).expect("set up a mode");
        }
        let ctime = |p: &Path| {
            let m = std::fs::symlink_metadata(p).expect("stat");
            (m.ctime(), m.ctime_nsec())
        };
        // ctime has nanoseconds, but a write within the same tick of the kernel's clock would
        // not show: wait until a file written now (outside the home, which it would change)
        // gets a later ctime than `after`.
        let elsewhere = tempfile::tempdir().expect("a directory for the probe");
        let probe = elsewhere.path().join("probe");
        let next_tick = |after: (i64, i64)| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                std::fs::write(&probe, "tick").expect("write a probe");
                if ctime(&probe) > after {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the clock does not move"
                );
                std::thread::yield_now();
            }
            std::fs::remove_file(&probe).expect("remove the probe");
        };
        let (envs_before, run_before) = (ctime(&home.join("envs")), ctime(&env.join("run")));
        next_tick(envs_before.max(run_before));
        secure_now(home).expect("secure the home");
        let mode = |p: &Path| std::fs::symlink_metadata(p).expect("stat").mode() & 0o7777;
        assert_eq!(mode(home), 0o711, "the home");
        assert_eq!(mode(&env), 0o700, "an environment open to others is closed");
        assert_eq!(mode(&env.join("logs")), 0o700, "its logs");
        assert_eq!(mode(&home.join("state.key")), 0o600, "a file of the home");
        assert_eq!(
            (ctime(&home.join("envs")), ctime(&env.join("run"))),
            (envs_before, run_before),
            "what had its mode already is not written again"
        );
        let home_before = ctime(home);
        next_tick(home_before);
        secure_now(home).expect("secure the home again");
        assert_eq!(ctime(home), home_before, "nor is the home, on every open");
    }

    #[test]
    fn the_environments_are_looked_at_again_once_one_came_and_when_the_note_is_not_this_homes() {
        use std::os::unix::fs::MetadataExt;
        let home = tempfile::tempdir().expect("a temporary home");
        let home = home.path();
        let mode = |p: &Path| std::fs::symlink_metadata(p).expect("stat").mode() & 0o7777;
        let loose = |env: &str| {
            let dir = home.join("envs").join(env);
            std::fs::create_dir_all(dir.join("run")).expect("run");
            chmod(&dir, 0o777).expect("loose");
            chmod(&dir.join("run"), 0o755).expect("loose");
            dir
        };
        let qa = loose("qa");
        secure_now(home).expect("the first look");
        assert_eq!(mode(&qa), 0o700, "fixed on the first look");
        let note = std::fs::read_to_string(home.join(SWEPT)).expect("the look is noted");
        assert_eq!(
            mode(&home.join(SWEPT)),
            0o600,
            "the note is the engine's only"
        );

        // An environment made since (by an older Slipway, with loose modes) changes `envs/`:
        // the next open looks again and fixes it.
        let dev = loose("dev");
        secure_now(home).expect("the second look");
        assert_eq!(mode(&dev), 0o700, "the new environment is fixed");
        assert_eq!(mode(&dev.join("run")), 0o700, "its run directory too");
        assert_ne!(
            std::fs::read_to_string(home.join(SWEPT)).expect("noted"),
            note,
            "the new look is noted"
        );

        // A note that is not of this `envs/` (a home restored from a backup, a copied note)
        // is no reason to skip the look.
        chmod(&qa, 0o777).expect("loose again");
        std::fs::write(home.join(SWEPT), &note).expect("a stale note");
        secure_now(home).expect("the third look");
        assert_eq!(mode(&qa), 0o700, "a stale note does not skip the look");
        let ino = std::fs::symlink_metadata(home.join("envs"))
            .expect("envs")
            .ino();
        assert!(
            std::fs::read_to_string(home.join(SWEPT))
                .expect("noted")
                .contains(&format!(" {ino} ")),
            "the note names this envs/"
        );
    }

    /// Applying an environment that exists leaves `envs/` as it was, so the next open does
    /// not look at every environment again (30,000 `stat`s at 10,000 of them); one that came
    /// is looked at.
    #[test]
    fn applying_an_environment_again_does_not_make_the_next_open_look_at_them_all() {
        use std::os::unix::fs::MetadataExt;
        let home = tempfile::tempdir().expect("a temporary home");
        let envs = home.path().join("envs");
        let ctime = |p: &Path| {
            let m = std::fs::symlink_metadata(p).expect("stat");
            (m.ctime(), m.ctime_nsec())
        };
        // A write within the same tick of the kernel's clock would not show in the ctime: wait
        // until a file written now (outside the home) gets a later one than `envs/`'s.
        let elsewhere = tempfile::tempdir().expect("a directory for the probe");
        let probe = elsewhere.path().join("probe");
        let next_tick = || {
            let after = ctime(&envs);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while {
                std::fs::write(&probe, "tick").expect("write a probe");
                ctime(&probe) <= after
            } {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the clock does not move"
                );
                std::thread::yield_now();
            }
        };
        let prepare = |name: &str| {
            let engine = Engine::open(home.path(), crate::EngineConfig::default(), vec![])
                .expect("an engine");
            let env = EnvName::parse(name).expect("a name");
            engine
                .prepare_dirs(
                    &engine.env_dirs(&env, "abc", ""),
                    &sandbox::UNCONFINED,
                    Uses::Run,
                )
                .expect("prepare");
        };
        prepare("qa");
        secure_now(home.path()).expect("the look at the new environment");
        assert!(
            secure_home(home.path()).expect("open").is_none(),
            "nothing is due once it was looked at"
        );
        next_tick();
        prepare("qa");
        assert!(
            secure_home(home.path()).expect("open").is_none(),
            "applying qa again leaves nothing due"
        );
        next_tick();
        prepare("dev");
        assert!(
            secure_home(home.path()).expect("open").is_some(),
            "a new environment is looked at"
        );
    }

    #[test]
    fn an_engine_running_as_root_never_isolates_by_landlock_alone() {
        if !sandbox::running_as_root() {
            eprintln!("not root: nothing to check");
            return;
        }
        for setting in [
            IsolationSetting::Auto,
            IsolationSetting::Uid,
            IsolationSetting::Landlock,
        ] {
            assert_eq!(
                effective(setting).expect("root can isolate"),
                Isolation::Uid,
                "as root, {setting:?} runs environments under their own uid"
            );
        }
        assert_eq!(
            effective(IsolationSetting::None).expect("none"),
            Isolation::None,
            "none stays none when said"
        );
    }
}
