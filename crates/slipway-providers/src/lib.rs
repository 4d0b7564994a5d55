//! Resource providers: the code that makes one kind of live object exist, observes it, and
//! removes it.
//!
//! Start with [`Provider`]: one implementation per resource type (`process`, `job`, `file`,
//! `exec` in [`Registry::local`]; the `postgres.*` ones, which need the engine's servers, are
//! registered by the engine). What a type *can do* (hold data, expose a port, write logs) is
//! not said here but in the core's type catalogue (`slipway_core::types`), which every
//! provider's `Config` matches field for field. A provider receives its resource's *resolved*
//! configuration (every `${...}` reference already substituted by the engine) as JSON, and a
//! [`ResourceContext`] naming the environment's directories and the ports the engine allocated.
//! It knows nothing of git, plans, the state store or other providers: what it returns
//! ([`Applied`]) is recorded by the engine, and handed back to it on the next call.
//!
//! # Guarantees every provider gives
//! - `create` leaves something at a location derived only from the context (environment,
//!   resource name, directories), so that [`Provider::delete`] with `live: None` can find and
//!   remove what an interrupted `create` left behind. This is what makes `kill -9` of the CLI
//!   mid-apply safe: the engine records ownership before acting, and a resource whose result
//!   was never recorded is deleted that way and created again.
//! - `delete` is idempotent: deleting what is already gone succeeds.
#![deny(missing_docs)]

pub mod cgroup;
pub mod disk;
pub mod exec;
pub mod file;
pub mod job;
pub mod kubernetes;
pub mod network;
pub mod postgres;
pub mod process;
pub mod sandbox;
pub mod watchdog;

mod command;
mod duration;
mod fields;
mod logfile;
mod procinfo;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::Value;
pub use slipway_core::plan::Action;
pub use slipway_core::plan::ObjectChange;

/// The directories of one environment. The engine creates them before any provider runs.
#[derive(Debug, Clone)]
pub struct EnvDirs {
    /// `<home>/envs/<env>`.
    pub root: PathBuf,
    /// Read-only export of the repository at the commit being applied; processes and jobs run
    /// here (in the folder holding `slipway.yaml`).
    pub src: PathBuf,
    /// Kept across deployments; `file` resources live under it.
    pub data: PathBuf,
    /// Log files, one or more per resource.
    pub logs: PathBuf,
    /// Runtime files: supervisor state, pid files.
    pub run: PathBuf,
    /// Directories below `data` opened for observing what is in them, kept as long as this
    /// value is: make these directories anew (with none opened) for each pass of
    /// observations.
    pub opened: OpenDirs,
}

/// Directories below an environment's data directory (and itself) opened once for a pass of
/// observations of its resources (a status of every environment observes each one's files one
/// after the other), each as an `O_PATH` handle opened without following a symlink anywhere on
/// its path, and closed when dropped. A clone starts with none opened.
///
/// # Caveats
/// A handle names the directory it opened: one renamed, or replaced by a symlink, after it was
/// opened is still read through it. Keep one for a single pass.
#[derive(Default)]
pub struct OpenDirs(std::sync::Mutex<Vec<(PathBuf, std::sync::Arc<std::os::fd::OwnedFd>)>>);

impl Clone for OpenDirs {
    fn clone(&self) -> Self {
        OpenDirs::default()
    }
}

impl std::fmt::Debug for OpenDirs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opened = self.0.lock().map_or(0, |dirs| dirs.len());
        write!(f, "OpenDirs({opened} opened)")
    }
}

impl OpenDirs {
    /// How many directories one pass keeps open at most.
    pub const MOST: usize = 32;

    /// The directory `relative` (plain names, or empty for `data` itself) below `data`,
    /// opened now or earlier in this pass; `None` when it cannot be opened so (a symlink on
    /// the way, anything missing or not a directory): the caller then looks the long way,
    /// which says what is wrong.
    pub(crate) fn dir(
        &self,
        data: &Path,
        relative: &Path,
    ) -> Option<std::sync::Arc<std::os::fd::OwnedFd>> {
        use nix::fcntl::{AT_FDCWD, OFlag, OpenHow, ResolveFlag, openat2};
        let mut dirs = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, fd)) = dirs.iter().find(|(path, _)| path == relative) {
            return Some(fd.clone());
        }
        // A stack whose files are spread over many directories is observed the long way past
        // the first few: a pass never holds more than these descriptors for one environment.
        if dirs.len() >= OpenDirs::MOST {
            return None;
        }
        // One walk from `/`, refusing a symlink anywhere: `relative` is plain names, so the
        // directory is below `data`.
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
        let fd = if relative.as_os_str().is_empty() {
            openat2(AT_FDCWD, data, how)
        } else {
            openat2(AT_FDCWD, &data.join(relative), how)
        }
        .ok()?;
        let fd = std::sync::Arc::new(fd);
        dirs.push((relative.to_owned(), fd.clone()));
        Some(fd)
    }
}

impl EnvDirs {
    /// The environment's private temporary directory, `<root>/tmp` (its code's `TMPDIR`).
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
}

/// Engine-wide settings that providers need. Every field has a sensible default.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// The program and leading arguments that run a process supervisor, e.g.
    /// `["/usr/bin/slipway", "__supervise"]`; the environment's run directory is appended
    /// (one supervisor per environment, see `process`).
    pub supervisor: Vec<std::ffi::OsString>,
    /// Time between SIGTERM and SIGKILL when stopping a process.
    pub stop_grace: Duration,
    /// How long a process may take to become healthy, and a job to finish, unless the resource
    /// says otherwise.
    pub ready_timeout: Duration,
    /// A log file is rotated (one old generation kept) when it grows past this size.
    pub log_max_bytes: u64,
    /// When the pass of observations made with these settings ends: a look at a resource
    /// that would go past it (an exec program's `read`, the branch's code) fails instead.
    /// `None`: no pass deadline (each look still has its own bound).
    pub observe_until: Option<std::time::Instant>,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        ProviderSettings {
            supervisor: Vec::new(),
            stop_grace: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(60),
            log_max_bytes: 10 * 1024 * 1024,
            observe_until: None,
        }
    }
}

/// Everything a provider is told about the resource it acts on.
#[derive(Debug, Clone, Copy)]
pub struct ResourceContext<'a> {
    /// Environment name.
    pub environment: &'a slipway_core::EnvName,
    /// The stack's name (`stack:` in `slipway.yaml`, a DNS label).
    pub stack: &'a str,
    /// Resource name, unique in the environment.
    pub resource: &'a str,
    /// The environment's directories.
    pub dirs: &'a EnvDirs,
    /// Ports allocated to this resource by the engine, by the names it declared.
    pub ports: &'a BTreeMap<String, u16>,
    /// Engine-wide settings.
    pub settings: &'a ProviderSettings,
    /// Secret values that went into this resource's configuration: providers that keep the
    /// resource's output (process and job logs) replace them with `<redacted>` as it is
    /// written.
    pub redact: &'a [String],
    /// The identity and limits the environment's code runs under: every command a provider
    /// starts goes through [`sandbox::Confinement::apply`].
    pub sandbox: &'a sandbox::Sandbox,
    /// How the environment came to be, when the caller knows it (a create, an update and an
    /// observation do; a delete need not): what decides the limits a provider sets by it
    /// (a role's connections, `postgres::PgServers::connection_limit`). Nobody reviewed a
    /// generated or ad-hoc environment's code.
    pub kind: Option<slipway_core::vocab::EnvKind>,
}

/// Which resource a change is of: its environment and its name, as in [`ResourceContext`].
#[derive(Debug, Clone, Copy)]
pub struct ResourceKey<'a> {
    /// Environment name.
    pub environment: &'a slipway_core::EnvName,
    /// Resource name, unique in the environment.
    pub resource: &'a str,
}

impl<'a> From<ResourceContext<'a>> for ResourceKey<'a> {
    fn from(ctx: ResourceContext<'a>) -> Self {
        ResourceKey {
            environment: ctx.environment,
            resource: ctx.resource,
        }
    }
}

/// What a successful create or update leaves: outputs other resources may reference, and the
/// provider's own handle on the live object (pids, paths), given back on later calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// Outputs by name, e.g. `url`, `exit_code`, `path`.
    pub outputs: BTreeMap<String, Value>,
    /// Names of outputs whose values are secret (redacted wherever they are shown).
    pub secret_outputs: Vec<String>,
    /// Provider-private handle on the live object.
    pub live: Value,
    /// Whether the provider saw the object ready as it made it, waiting for nothing (what
    /// [`Provider::ready_at_once`] allows): the engine then records it ready without asking
    /// [`Provider::wait_ready`] first. `false` is always safe: the engine asks.
    pub ready: bool,
}

/// What observing a recorded live object found.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// It exists and matches what was applied.
    InSync,
    /// It exists but differs from what was applied (an edited file, a restarting process).
    Drifted {
        /// Human-readable description of the difference.
        reason: String,
    },
    /// It is gone (a killed supervisor, a deleted file).
    Missing {
        /// Human-readable description.
        reason: String,
    },
}

/// Whether an error may go away by itself if the operation is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Retrying later may succeed (a port in use, a timeout).
    Retryable,
    /// Retrying will not help until the configuration changes (bad command, exit code 1).
    Terminal,
}

/// A provider failure.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The resolved configuration does not fit the provider (a bug in validation, or an exec
    /// provider rejecting it).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The operation failed; `log_tail` holds the last lines of the resource's log, if any.
    #[error("{message}")]
    Failed {
        /// What went wrong, lowercase, naming the resource's command or path.
        message: String,
        /// Last lines of the resource's output, to show the user.
        log_tail: Option<String>,
        /// Whether retrying may help.
        retry: Retry,
    },
    /// An IO error on the environment's files.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl ProviderError {
    /// Whether retrying the same operation later may succeed (the spelling every error of
    /// Slipway's crates uses).
    pub fn retryable(&self) -> bool {
        match self {
            ProviderError::Config(_) => false,
            ProviderError::Failed { retry, .. } => *retry == Retry::Retryable,
            ProviderError::Io { .. } => true,
        }
    }
}

/// One resource type's behaviour. Implementations are registered in [`Registry`].
pub trait Provider: Send + Sync + 'static {
    /// The resource's resolved configuration: the fields of its `slipway.yaml` entry other
    /// than `type` and `depends_on`, with every reference substituted.
    type Config: DeserializeOwned;

    /// The `type:` this provider implements.
    const TYPE: &'static str;

    /// Makes the live object exist.
    fn create(
        &self,
        ctx: ResourceContext<'_>,
        config: &Self::Config,
    ) -> Result<Applied, ProviderError>;

    /// Changes the live object in place. Only called for changes to fields that the core's
    /// type catalogue does not mark as forcing a replacement; the default replaces.
    fn update(
        &self,
        ctx: ResourceContext<'_>,
        config: &Self::Config,
        live: &Value,
    ) -> Result<Applied, ProviderError> {
        self.delete(ctx, Some(live))?;
        self.create(ctx, config)
    }

    /// Removes the live object. `live` is `None` when a `create` was interrupted before its
    /// result was recorded: the provider then removes whatever a create may have left at its
    /// deterministic location. Idempotent.
    fn delete(&self, ctx: ResourceContext<'_>, live: Option<&Value>) -> Result<(), ProviderError>;

    /// Looks at the live object recorded as `live`, without changing it.
    fn observe(
        &self,
        ctx: ResourceContext<'_>,
        config: &Self::Config,
        live: &Value,
    ) -> Result<Observation, ProviderError>;

    /// [`Provider::observe`] from the JSON text the engine recorded: the resolved
    /// configuration and the live handle, for a caller that holds them as text (a listing of
    /// every environment observes each resource from its stored row). The default parses
    /// both and calls `observe`; a provider that reads its handle in place, and needs no
    /// configuration to observe, overrides it.
    fn observe_recorded(
        &self,
        ctx: ResourceContext<'_>,
        config: &str,
        live: &str,
    ) -> Result<Observation, ProviderError> {
        let config: Self::Config = serde_json::from_str(config)
            .map_err(|e| ProviderError::Config(format!("{}: {e}", Self::TYPE)))?;
        let live: Value = serde_json::from_str(live).map_err(|e| {
            ProviderError::Config(format!("{}: unreadable live record: {e}", Self::TYPE))
        })?;
        self.observe(ctx, &config, &live)
    }

    /// Blocks until the object just created or updated is ready (a process passes its health
    /// check) or `deadline` passes. The default is ready at once.
    fn wait_ready(
        &self,
        ctx: ResourceContext<'_>,
        config: &Self::Config,
        applied: &Applied,
        deadline: Instant,
    ) -> Result<(), ProviderError> {
        let _ = (ctx, config, applied, deadline);
        Ok(())
    }

    /// Whether [`Provider::wait_ready`] may find what was made with `config` ready at once
    /// (it waits for no health check, no rollout). The engine then asks it with no time to
    /// wait before writing anything: ready, what the create or update made is recorded with
    /// the ready state in one write; otherwise the handle is recorded first, so that an
    /// object that never gets ready is still known, and then it waits. A process killed
    /// between the create and that one write loses the handle, as one killed during the
    /// create does: the record stays `creating` (or `updating`) and the next apply removes
    /// whatever the name may have made before creating it again. With a deadline already
    /// passed, `wait_ready` must answer at once and change nothing. The default, `false`, is
    /// the safe answer.
    fn ready_at_once(&self, config: &Self::Config) -> bool {
        let _ = config;
        false
    }

    /// Told before the engine records an apply that will create or update `resource` (with
    /// its configuration as written, references not yet substituted), or a destroy that will
    /// delete it (with its configuration as recorded), and which of these `action` is
    /// (`Create`, `Update`, `Replace` or `Delete`): the provider may start what takes time
    /// and changes nothing, such as the connection the change will use and the change's first
    /// read, so that it overlaps the engine's records. A read made ahead may stand for the
    /// change's own only while it is a few tens of milliseconds old, and before any change
    /// of the provider's own (the `postgres` providers' bound). Nothing to wait for and
    /// nothing to report: the change itself reports any failure. The default does nothing.
    fn expect_change(&self, resource: ResourceKey<'_>, action: Action, config: &Value) {
        let _ = (resource, action, config);
    }

    /// Told once an apply made the environment's directories (`dirs`), before any change of
    /// this type runs in it and before the commit is exported into them: the provider may
    /// start what the environment's changes will all wait for otherwise (the environment's
    /// process supervisor), without waiting for it, so that its start overlaps the export.
    /// Nothing to report: the changes themselves report any failure. The default does
    /// nothing.
    fn expect_changes_in(&self, settings: &ProviderSettings, dirs: &EnvDirs) {
        let _ = (settings, dirs);
    }

    /// What updating the live object recorded as `live` to `config` would do, object by
    /// object, without changing anything: for a type whose live state is many objects
    /// (`kubernetes.manifests`: a server-side dry run of each). `None`, the default, when the
    /// configuration's own diff says it all.
    fn preview(
        &self,
        ctx: ResourceContext<'_>,
        config: &Self::Config,
        live: &Value,
    ) -> Result<Option<Vec<ObjectChange>>, ProviderError> {
        let _ = (ctx, config, live);
        Ok(None)
    }
}

/// Which of an environment's directories ([`EnvDirs`]) a resource type uses. The engine
/// makes an environment's directories before any provider runs, and only those its resources
/// use: each new directory is an inode, and the export is one per file of the repository's
/// folder, which an environment of databases or manifests would never read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Uses {
    /// `run/` alone, for its records (intents): what lives elsewhere (a server, a cluster).
    Run,
    /// `data/` and `run/`: what lives in the environment's data (`file`).
    Data,
    /// Every directory: code that runs from the export (`src/`), with `data/` as its home,
    /// `tmp/` and `logs/`.
    All,
}

impl Uses {
    /// What a type whose catalogue entry says `caps` uses: every directory for code that runs
    /// from the repository (it has a source, the same fact its source hash comes from);
    /// `data/` for what lives on the node; `run/` alone for what lives elsewhere. A type
    /// without a provider (refused before any apply) counts as using them all.
    pub fn of(caps: slipway_core::types::Capabilities) -> Uses {
        if !caps.provided || caps.source != slipway_core::types::SourceDir::None {
            Uses::All
        } else if caps.node_bound {
            Uses::Data
        } else {
            Uses::Run
        }
    }
}

/// A [`Provider`] with its configuration type erased, so that providers of every type fit in one
/// [`Registry`]. Implemented for every `Provider`.
pub trait DynProvider: Send + Sync {
    /// See [`Provider::TYPE`].
    fn type_name(&self) -> &'static str;
    /// Whether `config` fits [`Provider::Config`], without acting on anything: the check
    /// every other call makes first.
    fn check_config(&self, config: &Value) -> Result<(), ProviderError>;
    /// The fields [`Provider::Config`] has: those of its type in the core's catalogue.
    fn config_fields(&self) -> &'static [&'static str];
    /// See [`Provider::create`].
    fn create(&self, ctx: ResourceContext<'_>, config: &Value) -> Result<Applied, ProviderError>;
    /// See [`Provider::update`].
    fn update(
        &self,
        ctx: ResourceContext<'_>,
        config: &Value,
        live: &Value,
    ) -> Result<Applied, ProviderError>;
    /// See [`Provider::delete`].
    fn delete(&self, ctx: ResourceContext<'_>, live: Option<&Value>) -> Result<(), ProviderError>;
    /// See [`Provider::observe`].
    fn observe(
        &self,
        ctx: ResourceContext<'_>,
        config: &Value,
        live: &Value,
    ) -> Result<Observation, ProviderError>;
    /// See [`Provider::observe_recorded`].
    fn observe_recorded(
        &self,
        ctx: ResourceContext<'_>,
        config: &str,
        live: &str,
    ) -> Result<Observation, ProviderError>;
    /// See [`Provider::wait_ready`].
    fn wait_ready(
        &self,
        ctx: ResourceContext<'_>,
        config: &Value,
        applied: &Applied,
        deadline: Instant,
    ) -> Result<(), ProviderError>;
    /// See [`Provider::ready_at_once`]; `false` for a configuration it cannot read.
    fn ready_at_once(&self, config: &Value) -> bool;
    /// See [`Provider::preview`].
    fn preview(
        &self,
        ctx: ResourceContext<'_>,
        config: &Value,
        live: &Value,
    ) -> Result<Option<Vec<ObjectChange>>, ProviderError>;
    /// See [`Provider::expect_change`].
    fn expect_change(&self, resource: ResourceKey<'_>, action: Action, config: &Value);
    /// See [`Provider::expect_changes_in`].
    fn expect_changes_in(&self, settings: &ProviderSettings, dirs: &EnvDirs);
}

fn decode<C: DeserializeOwned>(type_name: &str, config: &Value) -> Result<C, ProviderError> {
    // From the value in place, not a copy of it: every observation decodes its config.
    C::deserialize(config).map_err(|e| ProviderError::Config(format!("{type_name}: {e}")))
}

impl<P: Provider> DynProvider for P {
    fn type_name(&self) -> &'static str {
        P::TYPE
    }
    fn check_config(&self, config: &Value) -> Result<(), ProviderError> {
        decode::<P::Config>(P::TYPE, config).map(drop)
    }
    fn config_fields(&self) -> &'static [&'static str] {
        fields::of::<P::Config>()
    }
    fn create(&self, ctx: ResourceContext<'_>, config: &Value) -> Result<Applied, ProviderError> {
        Provider::create(self, ctx, &decode(P::TYPE, config)?)
    }
    fn update(
        &self,
        ctx: ResourceContext<'_>,
        config: &Value,
        live: &Value,
    ) -> Result<Applied, ProviderError> {
        Provider::update(self, ctx, &decode(P::TYPE, config)?, live)
    }
    fn delete(&self, ctx: ResourceContext<'_>, live: Option<&Value>) -> Result<(), ProviderError> {
        Provider::delete(self, ctx, live)
    }
    fn observe(
        &self,
        ctx: ResourceContext<'_>,
        config: &Value,
        live: &Value,
    ) -> Result<Observation, ProviderError> {
        Provider::observe(self, ctx, &decode(P::TYPE, config)?, live)
    }
    fn observe_recorded(
        &self,
        ctx: ResourceContext<'_>,
        config: &str,
        live: &str,
    ) -> Result<Observation, ProviderError> {
        Provider::observe_recorded(self, ctx, config, live)
    }
    fn wait_ready(
        &self,
        ctx: ResourceContext<'_>,
        config: &Value,
        applied: &Applied,
        deadline: Instant,
    ) -> Result<(), ProviderError> {
        Provider::wait_ready(self, ctx, &decode(P::TYPE, config)?, applied, deadline)
    }
    fn ready_at_once(&self, config: &Value) -> bool {
        decode::<P::Config>(P::TYPE, config)
            .is_ok_and(|config| Provider::ready_at_once(self, &config))
    }
    fn preview(
        &self,
        ctx: ResourceContext<'_>,
        config: &Value,
        live: &Value,
    ) -> Result<Option<Vec<ObjectChange>>, ProviderError> {
        Provider::preview(self, ctx, &decode(P::TYPE, config)?, live)
    }
    fn expect_change(&self, resource: ResourceKey<'_>, action: Action, config: &Value) {
        Provider::expect_change(self, resource, action, config);
    }
    fn expect_changes_in(&self, settings: &ProviderSettings, dirs: &EnvDirs) {
        Provider::expect_changes_in(self, settings, dirs);
    }
}

/// The providers an engine can use, by type name.
#[derive(Default)]
pub struct Registry {
    providers: BTreeMap<&'static str, Box<dyn DynProvider>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The providers that run on the local machine: `process`, `job`, `file` and `exec`.
    /// They take their settings from each call's [`ResourceContext`].
    pub fn local() -> Self {
        let mut registry = Self::new();
        registry.register(process::ProcessProvider);
        registry.register(job::JobProvider);
        registry.register(file::FileProvider::default());
        registry.register(exec::ExecProvider);
        registry
    }

    /// Adds a provider; a later one for the same type replaces the earlier.
    pub fn register<P: Provider>(&mut self, provider: P) {
        self.providers.insert(P::TYPE, Box::new(provider));
    }

    /// The provider for `type_name`, if one is registered.
    pub fn get(&self, type_name: &str) -> Option<&dyn DynProvider> {
        self.providers.get(type_name).map(|p| p.as_ref())
    }

    /// The registered type names, sorted.
    pub fn types(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.providers.keys().copied()
    }
}

/// Replaces the file at `path` with `bytes` atomically: readers see the old content or the new,
/// never a mix, and a crash mid-write leaves the old file. Creates the parent directory.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    atomic_write_mode(path, bytes, 0o666)
}

/// Replaces the file at `path` with `bytes` atomically (readers see the old content or the
/// new, never a mix; a crash mid-write leaves the old file), as a file only its owner may
/// read: it may hold secrets. Creates the parent directory.
pub fn atomic_write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    atomic_write_mode(path, bytes, 0o600)
}

/// Replaces the file at `path` with `bytes` atomically, with `mode`, without syncing it to
/// disk: for runtime files (process supervisors' specs and states) that describe processes,
/// which do not outlive the machine either. A reader still sees the old content or the new.
pub(crate) fn atomic_write_runtime(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_and_rename(path, bytes, mode, Durability::Runtime)
}

/// Replaces `path` with `bytes` (mode `mode` for the new file), atomically and only if it
/// exists: the new file is written beside it and exchanged with it (`renameat2`
/// `RENAME_EXCHANGE`, which fails when either is missing), then the old one, now at the
/// temporary name, is removed. Never makes `path` nor its directory; not synced.
///
/// On a file system without `RENAME_EXCHANGE` (NFS, some FUSE ones), it looks whether `path`
/// exists and then renames over it: no longer atomic with a removal of `path` made between
/// the two (what the engine's delete then meets is what it met when a spec file said the
/// same, before the state file carried the spec).
///
/// # Errors
/// `NotFound` when `path` (or its directory) is gone.
pub(crate) fn exchange_existing(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temp = temp_beside(path);
    // A new file, with its own mode: one of this name left by a dead process of the same pid
    // goes first.
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
    };
    let written = (|| {
        let mut file = match create() {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                std::fs::remove_file(&temp)?;
                create()?
            }
            created => created?,
        };
        file.write_all(bytes)?;
        let exchanged = nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &temp,
            nix::fcntl::AT_FDCWD,
            path,
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        );
        match exchanged {
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS) => {
                std::fs::symlink_metadata(path)?;
                std::fs::rename(&temp, path)
            }
            other => other.map_err(std::io::Error::from),
        }
    })();
    // Whichever it holds now (the old file, or the new one that was not put in place).
    let _ = std::fs::remove_file(&temp);
    written
}

/// The temporary name a file is written under before it takes `path`'s place:
/// `<path>.tmp.<pid>`, so that the writer of one left behind can be told.
fn temp_beside(path: &Path) -> PathBuf {
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".tmp.{}", std::process::id()));
    PathBuf::from(temp)
}

/// Whether a replaced file is synced to disk before it is renamed into place.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// Synced: it must survive a crash of the machine.
    Synced,
    /// Not synced: it describes what a crash of the machine ends anyway.
    Runtime,
}

fn atomic_write_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_and_rename(path, bytes, mode, Durability::Synced)
}

fn write_and_rename(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    durability: Durability,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = temp_beside(path);
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)
    };
    let written = (|| {
        // The directory is made only when it is missing (not on every write).
        let mut file = match open() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)?;
                open()?
            }
            opened => opened?,
        };
        file.write_all(bytes)?;
        if durability == Durability::Synced {
            file.sync_all()?;
        }
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// `value` as JSON. Fails only for a path that is not UTF-8, which JSON cannot carry.
pub(crate) fn to_json<T: serde::Serialize>(value: &T, what: &str) -> Result<Value, ProviderError> {
    serde_json::to_value(value).map_err(|e| {
        ProviderError::Config(format!(
            "cannot record {what} as JSON ({e}); the environment's directories must have UTF-8 \
             paths"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the engine records in one write or two: only what waits for nothing may skip
    /// the handle written before the wait.
    #[test]
    fn only_what_waits_for_nothing_is_ready_at_once() {
        let local = Registry::local();
        let ready_at_once = |type_name: &str, config: Value| {
            let provider = local.get(type_name).expect("a local type");
            // Each answer below is about a valid configuration, but the one saying so.
            assert_eq!(
                provider.check_config(&config).is_ok(),
                config["command"] != 3,
                "{config}"
            );
            provider.ready_at_once(&config)
        };
        let sleep = serde_json::json!(["sleep", "1000"]);
        assert!(ready_at_once(
            "process",
            serde_json::json!({"command": sleep})
        ));
        assert!(
            !ready_at_once(
                "process",
                serde_json::json!({"command": sleep, "health": {"tcp": "web"}})
            ),
            "a health check is waited for"
        );
        assert!(
            !ready_at_once(
                "process",
                serde_json::json!({"command": sleep, "restart": "on-failure"})
            ),
            "a process that is not restarted must stay up a moment first"
        );
        assert!(
            !ready_at_once("process", serde_json::json!({"command": 3})),
            "a configuration that does not decode is the safe answer"
        );
        assert!(ready_at_once(
            "file",
            serde_json::json!({"path": "a", "content": "b"})
        ));
    }
    use slipway_core::types::{SourceDir, TYPES, capabilities};

    /// The engine exports the repository for an environment only when one of its resources'
    /// types uses every directory: that must be exactly the types that run code from it
    /// (the core's catalogue, which also decides their source hash), or such code would
    /// find no export to run in.
    #[test]
    fn a_type_uses_every_directory_exactly_when_it_runs_code() {
        for t in TYPES {
            let uses = Uses::of(capabilities(t.name));
            let runs_code = capabilities(t.name).source != SourceDir::None;
            assert_eq!(uses == Uses::All, runs_code, "{}: {uses:?}", t.name);
        }
        let of = |name: &str| Uses::of(capabilities(name));
        assert_eq!(
            of(file::FileProvider::TYPE),
            Uses::Data,
            "a file lives in data/"
        );
        for elsewhere in ["postgres.database", "postgres.role", kubernetes::TYPE] {
            assert_eq!(of(elsewhere), Uses::Run, "{elsewhere} lives elsewhere");
        }
        assert_eq!(
            of("no.such.type"),
            Uses::All,
            "an unknown type is given everything"
        );
    }
}
