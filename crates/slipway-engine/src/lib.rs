//! Slipway's engine: the impure half of the pipeline. It reads a commit through the git layer,
//! renders and plans with the core, applies plans through providers, and records every step
//! in the state store.
//!
//! Start with [`Engine`]: [`Engine::lock`] an environment, [`Engine::prepare`] a plan for it
//! at a commit, then [`Engine::apply`] the plan. Everything a CLI or a controller does to an
//! environment goes through these three calls, so they share one set of guarantees.
//!
//! # Guarantees
//! - One operation at a time per environment: [`Engine::lock`] takes an OS file lock that
//!   the kernel releases when the process dies, so a `kill -9` never leaves a stale lock.
//! - Ownership is recorded before acting: a resource's row is written with status
//!   `creating`/`updating`/`deleting` before its provider is called and updated after, so an
//!   interrupted apply leaves a record of everything that may exist, and the next plan
//!   replaces what was left half-done.
//! - A deployment row is written before the first change and finished after the last; one
//!   left `running` by a killed process is marked `interrupted` by the next operation.
#![deny(missing_docs)]

pub mod apply;
mod cache;
pub use cache::Cached;
pub mod config;
pub mod discover;
mod isolation;
mod network;
pub mod policy;
mod stages;
pub use stages::{
    ConfirmationNeeded, FamilyInForce, LogFile, Named, OpenedRepository, open_repository,
};
pub mod resolve;
pub mod rules;
pub mod secrets;
pub mod source;
mod status;

use slipway_core::EnvName;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use slipway_core::plan::{self, Observed, Plan, PlanInput, Recorded};
use slipway_core::render::{DesiredState, EnvKind};
use slipway_core::vocab::{Access, SyncState};
use slipway_git::{Commit, Source};
use slipway_providers::postgres::{self, PgServers};
use slipway_providers::{EnvDirs, ProviderSettings, Registry};
use slipway_state::{EnvironmentRecord, ResourceRecord, ResourceSummaries, ResourceSummary, Store};

pub use apply::{
    ApplyEvent, ApplyOptions, ApplyReport, Confirmation, DestroyOptions, Outcome, Progress,
};
pub use config::EngineConfig;
pub use rules::Rules;
pub use slipway_core::windows::{Verdict, Windows};
pub use status::{EnvironmentStatus, ResourceStatus, node_of};

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The state store failed.
    #[error(transparent)]
    State(#[from] slipway_state::StateError),
    /// Reading the repository failed.
    #[error(transparent)]
    Git(#[from] slipway_git::GitError),
    /// The stack has errors; they are in the list.
    #[error("slipway.yaml at {commit} has {} error(s)", .diagnostics.iter().filter(|d| d.is_error()).count())]
    Invalid {
        /// The commit.
        commit: String,
        /// Every diagnostic.
        diagnostics: Vec<slipway_core::diag::Diagnostic>,
    },
    /// The environment is not defined, or is not what it is asked to be.
    #[error("{0}")]
    Environment(String),
    /// A generated family was named as if it were one environment.
    #[error(
        "`{family}` is a family that generates environments, not one environment: {}",
        if members.is_empty() { "no branch matches it here yet".to_string() } else { format!("its members here are {}", members.join(", ")) }
    )]
    Family {
        /// The family.
        family: String,
        /// Its members the repository's branches make, e.g. `br-feature-x (branch
        /// `feature/x`)`.
        members: Vec<String>,
    },
    /// Another process holds the environment's lock and `wait` was not asked for.
    #[error("environment `{0}` is locked by another slipway operation")]
    Locked(EnvName),
    /// A file-system operation on the engine's home failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Bad input given to the engine.
    #[error("{0}")]
    Usage(String),
    /// A secret could not be decrypted (the message names it, never its value).
    #[error("{0}")]
    Secret(String),
    /// The operation destroys something in a protected environment and nobody confirmed it.
    #[error("{0}")]
    NeedsConfirmation(ConfirmationNeeded),
    /// An environment of another kind holds the name (an ad-hoc `prod`, a generated
    /// environment where the stack now defines a static one): it is not adopted as the other;
    /// the message says which and what to do.
    #[error("{0}")]
    NotAdopted(String),
    /// The environment was asked to follow something else while this operation was being
    /// decided (a pull request's apply pinned it): nothing was done, and deciding again
    /// does what is asked now.
    #[error("environment `{0}` was asked to follow something else meanwhile; nothing was applied")]
    Superseded(EnvName),
    /// The policies in force deny the plan (see [`policy`]); nothing was applied.
    #[error("{0}")]
    PolicyDenied(String),
    /// A deploy window denies changes to the environment now and nobody overrode it: nothing
    /// was applied. Terminal: it waits for the window (or a person), not a retry.
    #[error("{0}")]
    OutsideWindow(WindowDenied),
}

/// Why a change is held by a deploy window ([`EngineError::OutsideWindow`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowDenied {
    /// The environment.
    pub environment: EnvName,
    /// What the windows said, and until when.
    pub verdict: slipway_core::windows::Verdict,
}

impl std::fmt::Display for WindowDenied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` takes no change now: {}; a deployer can override the window",
            self.environment,
            self.verdict.describe().unwrap_or_default()
        )
    }
}

impl EngineError {
    /// Whether the same call may succeed later with nothing changed by a person: the store or
    /// the repository said so, another operation held the environment's lock, or the file
    /// system failed in a passing way. Everything else needs a new commit or a person first.
    pub fn retryable(&self) -> bool {
        match self {
            EngineError::State(e) => e.retryable(),
            EngineError::Git(e) => e.retryable(),
            EngineError::Locked(_) | EngineError::Superseded(_) => true,
            EngineError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::StorageFull
                    | std::io::ErrorKind::ResourceBusy
            ),
            EngineError::Invalid { .. }
            | EngineError::Environment(_)
            | EngineError::Usage(_)
            | EngineError::Secret(_)
            | EngineError::NeedsConfirmation(_)
            | EngineError::NotAdopted(_)
            | EngineError::PolicyDenied(_)
            | EngineError::OutsideWindow(_)
            | EngineError::Family { .. } => false,
        }
    }

    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
        let context = context.into();
        move |source| EngineError::Io { context, source }
    }
}

/// What the engine keeps per resource in the store's `live` column, around the provider's
/// own handle.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// The provider's handle.
    #[serde(default)]
    pub handle: Json,
    /// The commit whose export the resource runs from.
    #[serde(default)]
    pub src_commit: String,
    /// The config it was applied with, references resolved.
    #[serde(default)]
    pub resolved: Json,
    /// Its source hash.
    #[serde(default)]
    pub source: Option<String>,
    /// The instance the provider knows it by, when it is not the resource's name: an exposed
    /// process alternates between two instances (`web`, `web@b`) so that the new version
    /// runs beside the old one until it is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The secret values that went into `resolved`, to redact from the resource's logs. The
    /// store seals the whole envelope when there are any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
}

impl Envelope {
    /// The name the provider knows the live object by.
    pub(crate) fn instance<'a>(&'a self, name: &'a str) -> &'a str {
        self.instance.as_deref().unwrap_or(name)
    }
}

/// What a plan reads of the store and observes: the same whatever commit it plans.
struct Observation {
    /// The environment's resources as recorded, their columns as the text stored: a plan
    /// parses only what it reads (a configuration, its dependencies, the outputs something
    /// references), not every record whole.
    records: ResourceSummaries,
    /// What each record's envelope says besides what observing it read, in the records'
    /// order.
    live: Vec<Live>,
    /// Their ports, by resource.
    ports: BTreeMap<String, BTreeMap<String, u16>>,
    /// What each resource recorded ready is now.
    observed: BTreeMap<String, Observed>,
}

/// What a plan reads of a recorded resource's envelope besides observing it: read with it,
/// once.
struct Live {
    /// Whether the provider knows it by its second instance (`web@b`).
    second_slot: bool,
    /// Its source hash.
    source: Option<String>,
}

/// The names of each recorded resource's secret outputs.
pub(crate) fn secret_outputs(records: &[ResourceRecord]) -> BTreeMap<String, Vec<String>> {
    records
        .iter()
        .filter(|r| !r.secret_outputs.is_empty())
        .map(|r| (r.name.clone(), r.secret_outputs.clone()))
        .collect()
}

/// Frees `value`, which holds something for each of `count` resources or environments: on a
/// thread of its own from 256 on, else here. A plan of ten thousand
/// resources spent a tenth of its time on one core freeing the records, configurations and
/// maps it had finished with, while the other core idled; a one-shot command may exit before
/// that thread is done, which frees everything at once. Nothing with a side effect on drop
/// (a file, a lock, a connection) may be given to it.
pub(crate) fn discard<T: Send + 'static>(value: T, count: usize) {
    const ELSEWHERE: usize = 256;
    if count >= ELSEWHERE {
        // A thread that cannot start drops its closure, and `value` with it, here.
        let _ = std::thread::Builder::new()
            .name("discard".to_owned())
            .spawn(move || drop(value));
    }
}

/// `f` of each of `items` that gives something, in their order: on as many threads as the
/// machine has cores (at most 8) from 256 items on, else on this one. For work of a
/// few microseconds an item, such as resolving and hashing each resource of a plan after
/// everything was read: a plan of ten thousand did that on one core while the other idled.
pub(crate) fn on_cores<I: Sync, T: Send>(
    items: &[I],
    f: impl Fn(&I) -> Option<T> + Sync,
) -> Vec<T> {
    const ALONE: usize = 256;
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(8);
    if items.len() < ALONE || threads < 2 {
        return items.iter().filter_map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().filter_map(f).collect::<Vec<T>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// The provider-facing name of `resource`'s instance in `slot` (0 or 1).
pub(crate) fn instance_name(resource: &str, slot: u8) -> String {
    if slot == 0 {
        resource.to_string()
    } else {
        format!("{resource}@b")
    }
}

/// The store's name for port `port` of the instance in `slot`.
pub(crate) fn slot_port(port: &str, slot: u8) -> String {
    if slot == 0 {
        port.to_string()
    } else {
        format!("{port}@b")
    }
}

/// Ports of the instance in `slot`, by their declared names.
pub(crate) fn slot_ports(all: &BTreeMap<String, u16>, slot: u8) -> BTreeMap<String, u16> {
    all.iter()
        .filter_map(|(name, port)| match (slot, name.strip_suffix("@b")) {
            (0, None) => Some((name.clone(), *port)),
            (1, Some(plain)) => Some((plain.to_string(), *port)),
            _ => None,
        })
        .collect()
}

/// A recorded resource as observing it needs it: its name, its type, and what its envelope
/// holds for its provider.
pub(crate) struct Observable<'a> {
    /// Its name in the stack.
    pub name: &'a str,
    /// Its type.
    pub type_name: &'a str,
    /// The instance the provider knows it by, when it is not the resource's name.
    pub instance: Option<&'a str>,
    /// The config it was applied with, references resolved, as the JSON text stored
    /// ([`EnvelopeText`]).
    pub resolved: &'a str,
    /// The provider's handle, as the JSON text stored.
    pub handle: &'a str,
}

/// What observing reads of a record's [`Envelope`], read from its `live` column's JSON text
/// without building a value of it: the handle and the resolved configuration are kept as their
/// text, for the provider to read in place (`observe_recorded`). A listing of every environment
/// observes every resource from its stored row.
pub(crate) struct EnvelopeText<'a> {
    /// The provider's handle, JSON.
    pub handle: &'a str,
    /// The commit whose export the resource runs from.
    pub src_commit: std::borrow::Cow<'a, str>,
    /// The config it was applied with, references resolved, JSON.
    pub resolved: &'a str,
    /// The instance the provider knows it by, when it is not the resource's name.
    pub instance: Option<std::borrow::Cow<'a, str>>,
    /// Its source hash.
    pub source: Option<std::borrow::Cow<'a, str>>,
}

impl<'a> EnvelopeText<'a> {
    /// Reads `live` as [`Envelope::of`] reads its value: text that is not a whole envelope
    /// (a field of another type) reads as an empty one.
    pub(crate) fn of(live: &'a str) -> EnvelopeText<'a> {
        EnvelopeText::parse(live).unwrap_or_else(EnvelopeText::empty)
    }

    /// No envelope: nothing recorded of the live object.
    fn empty() -> EnvelopeText<'a> {
        EnvelopeText {
            handle: "null",
            src_commit: std::borrow::Cow::Borrowed(""),
            resolved: "null",
            instance: None,
            source: None,
        }
    }

    /// Reads `live` as [`EnvelopeText::of`] does; `None` when it is not a whole envelope.
    fn parse(live: &'a str) -> Option<EnvelopeText<'a>> {
        use serde_json::value::RawValue;
        use std::borrow::Cow;
        /// A string when present: `null` is not one.
        #[derive(Deserialize, Default)]
        #[serde(transparent)]
        struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
        /// Strings when present: `null` is not a list of them.
        #[derive(Deserialize, Default)]
        #[serde(transparent)]
        #[allow(dead_code)] // Read only to check it.
        struct Strings<'a>(#[serde(borrow)] Vec<Cow<'a, str>>);
        #[derive(Deserialize)]
        #[allow(dead_code)] // `redact` is read only to check it.
        struct Fields<'a> {
            #[serde(borrow, default)]
            handle: Option<&'a RawValue>,
            #[serde(borrow, default)]
            resolved: Option<&'a RawValue>,
            #[serde(borrow, default)]
            src_commit: Text<'a>,
            #[serde(borrow, default)]
            source: Option<Cow<'a, str>>,
            #[serde(borrow, default)]
            instance: Option<Cow<'a, str>>,
            #[serde(borrow, default)]
            redact: Strings<'a>,
        }
        // An object, not a list (which a struct would also read, by position).
        if !live.trim_start().starts_with('{') {
            return None;
        }
        let fields = serde_json::from_str::<Fields<'a>>(live).ok()?;
        Some(EnvelopeText {
            handle: fields.handle.map_or("null", RawValue::get),
            src_commit: fields.src_commit.0,
            resolved: fields.resolved.map_or("null", RawValue::get),
            instance: fields.instance,
            source: fields.source,
        })
    }
}

impl Envelope {
    pub(crate) fn of(record: &ResourceRecord) -> Envelope {
        // Read from the record's value in place: no copy of it (observing every environment
        // reads every resource's envelope).
        Envelope::deserialize(&record.live).unwrap_or_default()
    }
}

/// A held environment lock; released on drop (or by the kernel if the process dies).
pub struct EnvLock {
    _file: File,
    environment: EnvName,
}

impl EnvLock {
    /// The environment it locks.
    pub fn environment(&self) -> &EnvName {
        &self.environment
    }
}

/// Where the stack comes from for one operation.
pub struct Origin<'a> {
    /// The repository.
    pub source: &'a dyn Source,
    /// How the user named it (path or URL), recorded with the environment.
    pub repo: &'a str,
    /// Branch, tag or commit.
    pub reference: &'a str,
    /// Folder of `slipway.yaml` inside the repository: `""` or `deploy/`.
    pub folder: &'a str,
    /// The full commit id `reference` is known to point at now (the controller learns
    /// branch tips when it fetches): spares a `git` call, and lets the commit cache answer.
    pub tip: Option<&'a str>,
}

/// A plan, with everything needed to apply it.
pub struct Prepared {
    /// The commit.
    pub commit: Commit,
    /// What was asked for (`main`, a tag, a sha).
    pub reference: String,
    /// The rendered desired state.
    pub desired: DesiredState,
    /// The plan.
    pub plan: Plan,
    /// The repository, as named by the user.
    pub repo: String,
    /// Folder of `slipway.yaml`.
    pub folder: String,
    /// Whether the environment is protected: by the rules in force or this commit's own
    /// (the stronger; see [`rules`]).
    pub protected: bool,
    /// Whether drift is repaired.
    pub self_heal: bool,
    /// Whether its commits must come through a merged pull request that met the apply
    /// requirements (`require_pr`, a protected static environment's option).
    pub require_pr: bool,
    /// What applying a pull request to it needs (`approved`, `mergeable`).
    pub apply_requirements: Vec<String>,
    /// The rules this commit itself declares: in force once it is deployed. `protected`,
    /// `require_pr` and `apply_requirements` above are the stronger of these and the rules
    /// already in force, which is what this commit is judged by.
    pub declared: Rules,
    /// The rules in force before this commit (`None` before the first deployment).
    pub in_force: Option<Rules>,
    /// How long it lives, for a generated or ad-hoc environment.
    pub ttl: Option<Duration>,
    /// Its definition's `sleep_after`: its processes stop after this long without a request.
    pub sleep_after: Option<Duration>,
    /// Its definition's `idle_ttl`: destroyed after this long without a request.
    pub idle_ttl: Option<Duration>,
    /// Who made it.
    pub owner: Option<String>,
    /// The secrets the desired state references, decrypted.
    pub secrets: BTreeMap<String, secrets::SecretValue>,
    /// Who may open its preview URL, as this commit's `environments:` entry says.
    pub access: slipway_core::vocab::Access,
    /// Where each resource is declared (`slipway.yaml:12:3`), for the plan document and the
    /// policies' findings.
    pub locations: BTreeMap<String, String>,
    /// The policies' verdict on the plan, when it changes something and policies are in
    /// force at the default branch ([`policy`]): [`Engine::apply`] refuses what it blocks.
    pub policy: Option<policy::Judged>,
    /// The deploy windows this change is judged by: this commit's own and those in force
    /// (see [`rules`]).
    pub windows: slipway_core::windows::Windows,
    /// What [`Prepared::windows`] said when the plan was made (by the system clock; an
    /// apply judges again at its own time).
    pub window: slipway_core::windows::Verdict,
    /// Whether this commit's own windows drop some of those in force: applying it (even
    /// with nothing to change) would lift them for the commits after it.
    pub lowers_windows: bool,
}

/// Which environment an operation is for, and how it came to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvTarget {
    /// Its name.
    pub name: EnvName,
    /// The `environments:` entry that gives its variables: itself for a static environment,
    /// a family (or another environment, `--like prod`) otherwise.
    pub definition: String,
    /// How it came to be.
    pub kind: EnvKind,
    /// Who made it (ad-hoc environments).
    pub owner: Option<String>,
    /// How long it lives; `None` takes the definition's `ttl`, if any.
    pub ttl: Option<Duration>,
    /// The `sleep_after` and `idle_ttl` in force for its family (the default branch's, as the
    /// controller reads them), which its own commit can shorten but never lengthen or drop:
    /// a branch does not decide how long its own preview may idle. `(None, None)`: none.
    pub idle_limits: (Option<Duration>, Option<Duration>),
    /// Its family's `access` at the default branch (for a generated or ad-hoc environment):
    /// unless it is `public` there, its preview is private whatever its own commit says (a
    /// branch does not open its own preview to strangers).
    pub access_in_force: Option<slipway_core::vocab::Access>,
    /// Its family's deploy windows at the default branch (for a generated or ad-hoc
    /// environment), which hold it whatever its own commit says.
    pub windows_in_force: slipway_core::windows::Windows,
}

impl EnvTarget {
    /// A static environment: its own definition.
    pub fn static_env(name: &EnvName) -> EnvTarget {
        EnvTarget {
            name: name.clone(),
            definition: name.to_string(),
            kind: EnvKind::Static,
            owner: None,
            ttl: None,
            idle_limits: (None, None),
            access_in_force: None,
            windows_in_force: Default::default(),
        }
    }
}

/// What [`Engine::lock`] does when another operation holds the environment's lock.
#[derive(Clone, Copy)]
pub enum LockWait<'a> {
    /// Fail at once with [`EngineError::Locked`].
    Fail,
    /// Block until the holder finishes, calling this once first (to say so).
    Block(&'a dyn Fn()),
}

/// Refuses a home holding a file git tracks. The default home, `.slipway/`, sits in the
/// work tree of the repository it deploys (ignored by the `.gitignore` `slipway init`
/// writes): a checkout of a branch that commits `.slipway/state.db` writes it over the
/// ignored one, and the engine would then trust that branch's tokens, keys and records
/// (`serve` would let its tokens in). Checked before anything in the home is read.
///
/// # Errors
/// [`EngineError::Environment`] naming the tracked file and the fix.
pub fn refuse_tracked_home(home: &Path) -> Result<(), EngineError> {
    let Some(tracked) = slipway_git::tracked_under(home) else {
        return Ok(());
    };
    Err(EngineError::Environment(format!(
        "the home {} holds `{}`, which the git work tree {} tracks: a checkout of a branch \
         that commits files there replaces the engine's state and keys with that branch's. \
         Check out a branch that does not track them (and check that the state is yours), \
         or use a home outside the work tree (--home, SLIPWAY_HOME)",
        home.display(),
        tracked.file,
        tracked.work_tree.display()
    )))
}

/// How long one pass of observations (an environment's, for a plan or a status) may take:
/// the resources not looked at by then are taken as recorded (not drift: nothing is
/// repaired for want of a look), and a look running then is stopped. An exec program's
/// `read` is the branch's code, and a plan waits on every one (a pull request's, while the
/// controller's forge events wait); each is bounded too (`slipway_providers::exec::MAX_READ`).
pub const OBSERVE_PASS: Duration = Duration::from_secs(300);

/// The engine, over one home directory.
pub struct Engine {
    home: PathBuf,
    store: Store,
    registry: Registry,
    settings: ProviderSettings,
    config: EngineConfig,
    cache: cache::CommitCache,
    isolation: slipway_providers::sandbox::Isolation,
    /// uid mode: the control groups environments' code runs in and their limits; why there
    /// are none otherwise ([`isolation::resource_limits`]).
    limits: Result<isolation::Limits, String>,
    /// The most each environment's data and temporary directories may hold, in bytes
    /// (`[local] max_disk`; uid and landlock modes, [`isolation::disk_limit`]).
    max_disk: Option<u64>,
    /// uid mode: the uid (no environment's, nobody's on this system) from which an
    /// environment's supervisor kills every process of its uid once it is past its disk
    /// limit; `None`: from the uid itself.
    disk_killer: Option<u32>,
    /// uid mode: the packet filter keeping environments' code from one another's ports
    /// ([`network`]).
    network: network::Network,
    /// On a replica: bounds the commands run under a lease ([`Engine::bound_by`]).
    watchdog: Option<Arc<slipway_providers::watchdog::Watchdog>>,
    /// On a state shared by replicas: the node this engine runs on ([`Engine::on_node`]).
    node: Option<String>,
    /// The look at the environments' directories' modes that opening found due, running
    /// beside the command (see `isolation::EnvsSweep`): settled before an environment's
    /// directories are made or used, and before the engine goes.
    sweeping: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.settle_sweep();
    }
}

impl Engine {
    /// Opens (creating if needed) the engine's home. `supervisor` is the program and leading
    /// arguments that run a process supervisor (the `slipway` binary's `__supervise`).
    pub fn open(
        home: &Path,
        config: EngineConfig,
        supervisor: Vec<OsString>,
    ) -> Result<Engine, EngineError> {
        std::fs::create_dir_all(home).map_err(EngineError::io(format!(
            "cannot create the home {}",
            home.display()
        )))?;
        refuse_tracked_home(home)?;
        let isolation = isolation::effective(config.local.isolation)?;
        isolation::check_credentials_out_of_reach(isolation, home, &config)?;
        let limits = isolation::resource_limits(isolation, &config.local)?;
        let max_disk = isolation::disk_limit(isolation, &config.local, home)?;
        let disk_killer = config.killer_uid().filter(|&kept| {
            isolation == slipway_providers::sandbox::Isolation::Uid
                && !slipway_providers::sandbox::id_is_known(kept)
        });
        let network = network::Network::new(isolation, &config.local, config.uid_range(), home)?;
        let store = match config
            .state
            .resolve_url()
            .map_err(EngineError::Environment)?
        {
            None => Store::open(home)?,
            Some(url) => Store::open_postgres(home, &url)?,
        };
        let sweep = isolation::secure_home(home)?;
        let settings = ProviderSettings {
            supervisor,
            stop_grace: config.local.stop_grace,
            ready_timeout: config.local.ready_timeout,
            log_max_bytes: config.local.log_max_bytes,
            observe_until: None,
        };
        let mut registry = Registry::local();
        let mut urls = BTreeMap::new();
        let mut unusable = Vec::new();
        for (name, server) in &config.postgres {
            match server.resolve_url(name) {
                Ok(url) => {
                    urls.insert(name.clone(), url);
                }
                Err(why) => unusable.push((name.clone(), why)),
            }
        }
        let mut servers = PgServers::new(urls, store.sealer().instance_id())
            .with_role_cap(config.environments.max_postgres_roles());
        for (name, why) in unusable {
            servers = servers.with_unavailable(&name, &why);
        }
        for (name, server) in &config.postgres {
            servers = servers
                .with_templates(name, server.templates.clone())
                .with_extensions(name, server.extensions.clone())
                .with_connect(name, server.connect.clone())
                .with_connection_limits(
                    name,
                    postgres::ConnectionLimits {
                        reviewed: server.connection_limit,
                        unreviewed: server.preview_connection_limit,
                    },
                );
        }
        let servers = Arc::new(servers);
        registry.register(postgres::DatabaseProvider::new(Arc::clone(&servers)));
        registry.register(postgres::RoleProvider::new(servers));
        registry.register(slipway_providers::kubernetes::KubernetesProvider::new(
            config.kubernetes.clone(),
            store.sealer().instance_id(),
        ));
        Ok(Engine {
            cache: cache::CommitCache::default(),
            home: home.to_path_buf(),
            store,
            registry,
            settings,
            config,
            isolation,
            limits,
            max_disk,
            disk_killer,
            network,
            watchdog: None,
            node: None,
            sweeping: Mutex::new(sweep.and_then(isolation::EnvsSweep::start)),
        })
    }

    /// Waits for the look at the environments' directories' modes, if one runs. The lock is
    /// held while waiting: every caller (a controller's parallel applies) waits for it, not
    /// only the first.
    pub(crate) fn settle_sweep(&self) {
        let mut sweeping = self
            .sweeping
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(running) = sweeping.take() {
            let _ = running.join();
        }
    }

    /// Starts, for each of the recorded `resources`, what deleting it will take (see
    /// `Provider::expect_change`: a `postgres.*` resource's server connection), so that it
    /// overlaps what comes before the change. It changes nothing (what it reads ahead may
    /// serve the change's first read, within the bounds `Provider::expect_change` states), a
    /// resource of a type this engine does not know is passed over, and a failure (a server
    /// that does not answer) is met, and reported, by the change itself.
    fn expect_changes_to(&self, env: &EnvName, resources: &[slipway_state::ResourceRecord]) {
        for resource in resources {
            if let Some(provider) = self.registry.get(&resource.type_name) {
                let key = slipway_providers::ResourceKey {
                    environment: env,
                    resource: &resource.name,
                };
                provider.expect_change(key, slipway_providers::Action::Delete, &resource.config);
            }
        }
    }

    /// The state store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Makes every write of an environment prove this replica holds its lease (for
    /// controllers sharing a PostgreSQL state; see [`Store::require_leases`]).
    pub fn require_leases(&mut self) {
        self.store.require_leases();
    }

    /// Bounds every command an environment runs under this replica's lease of it by
    /// `watchdog` (see [`slipway_providers::watchdog`]).
    pub fn bound_by(&mut self, watchdog: Arc<slipway_providers::watchdog::Watchdog>) {
        self.watchdog = Some(watchdog);
    }

    /// Says which node this engine runs on, with a state shared by replicas: its replica's
    /// name (a one-shot command's `[controller] replica` or host name). Status then shows
    /// what another node holds of an environment (processes, files) as its holder recorded
    /// it, instead of looking for it on this machine.
    pub fn on_node(&mut self, node: String) {
        self.node = Some(node);
    }

    /// The watchdog bounding commands by leases, on a replica.
    pub fn watchdog(&self) -> Option<&Arc<slipway_providers::watchdog::Watchdog>> {
        self.watchdog.as_ref()
    }

    /// The engine's home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Everything secret that went into `env`'s resources, for redacting what is shown of
    /// them (logs, errors): decrypted secrets and secret outputs as last applied.
    pub fn redactor(&self, env: &EnvName) -> Result<secrets::Redactor, EngineError> {
        let redactor = secrets::Redactor::default();
        for record in self.store.resources(env)? {
            redactor.add_outputs(&record.outputs, &record.secret_outputs);
            for value in Envelope::of(&record).redact {
                redactor.add(&value);
            }
        }
        Ok(redactor)
    }

    /// The engine configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Takes the environment's lock; when another operation holds it, waits or not as
    /// `wait` says.
    ///
    /// # Guarantees
    /// The lock file is `locks/<environment>.lock`: an [`EnvName`] cannot leave that directory.
    pub fn lock(&self, environment: &EnvName, wait: LockWait<'_>) -> Result<EnvLock, EngineError> {
        let dir = self.home.join("locks");
        std::fs::create_dir_all(&dir)
            .map_err(EngineError::io("cannot create the locks directory"))?;
        let path = dir.join(format!("{environment}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(EngineError::io(format!("cannot open {}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => match wait {
                LockWait::Block(on_wait) => {
                    on_wait();
                    file.lock()
                        .map_err(EngineError::io(format!("cannot lock {}", path.display())))?;
                }
                LockWait::Fail => return Err(EngineError::Locked(environment.clone())),
            },
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(EngineError::io(format!("cannot lock {}", path.display()))(
                    e,
                ));
            }
        }
        Ok(EnvLock {
            _file: file,
            environment: environment.clone(),
        })
    }

    /// The directories of an environment for resources running from `commit`.
    pub fn env_dirs(&self, environment: &EnvName, commit: &str, folder: &str) -> EnvDirs {
        let root = self.home.join("envs").join(environment);
        let export = root.join("src").join(commit);
        let src = if folder.is_empty() {
            export
        } else {
            export.join(folder.trim_end_matches('/'))
        };
        EnvDirs {
            src,
            data: root.join("data"),
            logs: root.join("logs"),
            run: root.join("run"),
            root,
            opened: slipway_providers::OpenDirs::default(),
        }
    }

    /// Loads, renders and plans the `target` environment at `origin`. Read-only: safe without
    /// the lock, but [`Engine::apply`] wants a plan made under it.
    pub fn prepare(
        &self,
        origin: &Origin<'_>,
        target: &EnvTarget,
    ) -> Result<Prepared, EngineError> {
        // What the store recorded and what runs now do not depend on the commit: read and
        // observed on another thread while this one reads the commit from git and parses it
        // (a one-shot command's plan). A commit already in the cache (the controller's
        // reconciles, many at once already) is only rendered: no second thread for that.
        let (rendered, observed) = if self.cached(origin) {
            let rendered = self.render(origin, target);
            (rendered, self.observe_recorded(&target.name))
        } else {
            std::thread::scope(|scope| {
                let observing = scope.spawn(|| self.observe_recorded(&target.name));
                let rendered = self.render(origin, target);
                let observed = observing
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (rendered, observed)
            })
        };
        let (cached, desired) = rendered?;
        let observed = observed?;
        let loaded = &cached.loaded;
        let def = loaded
            .valid_stack()
            .ok()
            .and_then(|stack| stack.environments.get(&target.definition))
            .expect("a rendered target's definition is in its valid stack");
        let scope = secrets::Scope {
            environment: &desired.environment.name,
            definition: &desired.environment.definition,
        };
        let secrets =
            secrets::decrypt_all(&desired.secrets, &self.config.secrets, &self.home, scope)
                .map_err(EngineError::Secret)?;
        let (input, resolved) = self.plan_input(&desired, &secrets, observed)?;
        let mut plan = plan::plan(&desired, &input);
        self.preview_objects(&desired, &mut plan, &resolved, &secrets);
        let count = input.recorded.len();
        discard((input, resolved), count);
        let declared = Rules::declared(def, target.kind);
        let in_force = if target.kind == EnvKind::Static {
            self.rules_in_force(origin, &target.name, &target.definition)?
        } else {
            None
        };
        let mut rules = in_force
            .as_ref()
            .map_or_else(|| declared.clone(), |f| declared.stronger(f));
        // A generated or ad-hoc environment's windows in force are its family's at the
        // default branch.
        rules.windows = rules.windows.stronger(&target.windows_in_force);
        let lowers_windows = !declared.windows.covers(&rules.windows);
        let window = rules.windows.verdict(slipway_state::now_ms());
        let locations = loaded
            .valid_stack()
            .map(|stack| {
                stack
                    .resources
                    .iter()
                    .map(|(name, r)| {
                        let at = &r.location;
                        (
                            name.clone(),
                            format!("{}:{}:{}", at.file, at.pos.line, at.pos.col),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut prepared = Prepared {
            commit: loaded.commit.clone(),
            reference: origin.reference.to_string(),
            desired,
            plan,
            repo: origin.repo.to_string(),
            folder: loaded.folder.clone(),
            // Protection is a property of the static environment itself: an ad-hoc copy made
            // `--like prod` is a scratch environment.
            protected: rules.protected,
            self_heal: def.self_heal,
            require_pr: rules.require_pr,
            apply_requirements: rules.apply_requirements,
            windows: rules.windows,
            window,
            lowers_windows,
            declared,
            in_force,
            ttl: target.ttl.or(def.ttl),
            sleep_after: stricter(def.sleep_after, target.idle_limits.0),
            // A family's alone (validation refuses it elsewhere): never on a static one.
            idle_ttl: stricter(def.idle_ttl, target.idle_limits.1)
                .filter(|_| target.kind != EnvKind::Static),
            owner: target.owner.clone(),
            secrets,
            // A generated or ad-hoc environment is public only when both its own commit and
            // its family as in force say so (unknown in force: private).
            access: match (target.kind, def.access(target.kind)) {
                // A static environment pinned to another commit than its branch's (a
                // rollback, a pull request's `/slipway apply`) is private when either says so.
                (EnvKind::Static, _) if target.access_in_force == Some(Access::Private) => {
                    Access::Private
                }
                (EnvKind::Static, own) => own,
                (_, Access::Public)
                    if target.access_in_force.unwrap_or(Access::Private) == Access::Public =>
                {
                    Access::Public
                }
                _ => Access::Private,
            },
            locations,
            policy: None,
        };
        prepared.policy = self.judge(&prepared, origin.source, &policy::GitContext::default())?;
        Ok(prepared)
    }

    /// The stack at `origin`'s commit through the engine's commit cache, which
    /// [`Engine::prepare`] uses too: a caller that looks at the stack before preparing
    /// environments from it reads the commit from git once.
    pub fn load(&self, origin: &Origin<'_>) -> Result<Arc<cache::Cached>, EngineError> {
        self.load_cached(origin)
    }

    /// Whether `origin`'s commit is known to be in the commit cache already (its sha given).
    fn cached(&self, origin: &Origin<'_>) -> bool {
        origin
            .tip
            .or_else(|| is_full_sha(origin.reference).then_some(origin.reference))
            .is_some_and(|sha| self.cache.get(sha, origin.folder).is_some())
    }

    /// The stack at `origin`'s commit, loaded and with its source hashes: from the cache when
    /// the commit was seen before (a commit never changes, so neither does what it loads to).
    fn load_cached(&self, origin: &Origin<'_>) -> Result<Arc<cache::Cached>, EngineError> {
        let known = origin
            .tip
            .or_else(|| is_full_sha(origin.reference).then_some(origin.reference));
        if let Some(sha) = known
            && let Some(hit) = self.cache.get(sha, origin.folder)
        {
            return Ok(hit);
        }
        let commit = match known {
            Some(sha) => origin.source.resolve(sha)?,
            None => origin.source.resolve(origin.reference)?,
        };
        if let Some(hit) = self.cache.get(&commit.sha, origin.folder) {
            return Ok(hit);
        }
        let loaded = source::load_at(origin.source, commit, origin.folder)?;
        let sources = match loaded
            .loaded
            .stack
            .as_ref()
            .filter(|_| !loaded.loaded.has_errors())
        {
            // Listing the commit's files (a header read per blob) only when a resource runs
            // code from them.
            Some(stack) if source::runs_code(&stack.resources) => {
                let files = origin
                    .source
                    .list_files(&loaded.commit.sha, &loaded.folder)?;
                source::source_hashes(&files, &loaded.folder, &stack.files, &stack.resources)
            }
            _ => BTreeMap::new(),
        };
        let cached = Arc::new(cache::Cached { loaded, sources });
        self.cache
            .put(&cached.loaded.commit.sha, origin.folder, cached.clone());
        Ok(cached)
    }

    /// Asks the providers of the resources `plan` updates what the update does to each of
    /// their live objects (a Kubernetes server-side dry run), and adds it to the plan. A
    /// preview that fails leaves the configuration's diff alone and says why.
    ///
    /// What a preview says (an object's fields before and after, the server's refusal) may
    /// hold a value the environment keeps secret, through a field of its own (an exec
    /// program's secret output in a ConfigMap): redacted of the environment's secrets and
    /// secret outputs, as the plan is shown to viewers and kept in the deployment's record.
    fn preview_objects(
        &self,
        desired: &DesiredState,
        plan: &mut slipway_core::plan::Plan,
        resolved: &BTreeMap<String, Json>,
        secrets: &BTreeMap<String, secrets::SecretValue>,
    ) {
        let env = &desired.environment.name;
        // Made once a preview says something (most plans ask none: it reads every record).
        let redactor = std::cell::OnceCell::new();
        let redactor = || {
            redactor
                .get_or_init(|| {
                    let redactor = self.redactor(env).ok()?;
                    for value in secrets.values() {
                        redactor.add(value.expose());
                    }
                    Some(redactor)
                })
                .as_ref()
        };
        for change in plan
            .changes
            .iter_mut()
            .filter(|c| c.action == slipway_core::plan::Action::Update)
        {
            let (Some(config), Some(provider)) = (
                resolved.get(&change.resource),
                self.registry.get(&change.type_name),
            ) else {
                continue;
            };
            let Ok(Some(record)) = self.store.resource(env, &change.resource) else {
                continue;
            };
            let envelope = Envelope::of(&record);
            let (Ok(ports), Ok(sandbox)) =
                (self.store.ports(env, &change.resource), self.sandbox(env))
            else {
                continue;
            };
            let dirs = self.env_dirs(env, &envelope.src_commit, "");
            let instance = envelope.instance(&change.resource);
            let ctx = self.resource_context(&desired.stack, env, instance, &dirs, &ports, &sandbox);
            match provider.preview(ctx, config, &envelope.handle) {
                // Not shown unredacted: without the redactor, the configuration's diff stays.
                Ok(Some(objects)) => {
                    if let Some(redactor) = redactor() {
                        change.objects = redacted_objects(redactor, objects);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    let said = redactor().map_or_else(
                        || {
                            "its message is withheld, as the secret values to redact it cannot \
                            be read"
                                .to_owned()
                        },
                        |redactor| redactor.redact(&e.to_string()),
                    );
                    tracing::warn!(resource = %change.resource, error = %said, "no dry run");
                    if change.reason.is_none() {
                        change.reason = Some(slipway_core::vocab::Reason::Other(format!(
                            "the server's dry run could not be made: {said}"
                        )));
                    }
                }
            }
        }
    }

    /// What `env`'s plan reads of the store, and what each resource recorded ready is now.
    /// Each record's envelope is read once, here, from its stored text: what observing needs
    /// and what the plan reads of it besides (its slot, its source hash).
    fn observe_recorded(&self, env: &EnvName) -> Result<Observation, EngineError> {
        let records = self.store.resource_summaries(env)?;
        let ports = self.store.environment_ports(env)?;
        let mut envelopes = Vec::with_capacity(records.of(env.as_str()).len());
        for record in records.of(env.as_str()) {
            let text = record.live_text();
            let envelope = match EnvelopeText::parse(text) {
                Some(envelope) => envelope,
                None => {
                    // Text that is not JSON is damage, named as such; JSON that is no
                    // envelope reads as an empty one (as a status reads it).
                    record.live()?;
                    EnvelopeText::empty()
                }
            };
            envelopes.push((record, envelope));
        }
        let live = envelopes
            .iter()
            .map(|(record, envelope)| Live {
                second_slot: envelope
                    .instance
                    .as_deref()
                    .is_some_and(|instance| instance != record.name),
                source: envelope.source.as_deref().map(str::to_owned),
            })
            .collect();
        let ready: Vec<&(ResourceSummary<'_>, EnvelopeText<'_>)> = envelopes
            .iter()
            .filter(|(record, _)| record.status == slipway_core::vocab::ResourceStatus::Ready)
            .collect();
        let observed = self.observe_all(env, &ready, &ports);
        drop(ready);
        drop(envelopes);
        Ok(Observation {
            records,
            live,
            ports,
            observed,
        })
    }

    /// The plan's input: `observation` of the store and what runs, and each recorded
    /// resource's configuration as `desired` resolves it now.
    fn plan_input(
        &self,
        desired: &DesiredState,
        secrets: &BTreeMap<String, secrets::SecretValue>,
        observation: Observation,
    ) -> Result<(PlanInput, BTreeMap<String, Json>), EngineError> {
        let Observation {
            records,
            live,
            ports: all_ports,
            observed,
        } = observation;
        let env = desired.environment.name.as_str();
        let mut input = PlanInput {
            observed,
            ..PlanInput::default()
        };
        // Only the outputs that some configuration references are read: resolving looks up
        // no other.
        let referenced: std::collections::BTreeSet<&str> = desired
            .resources
            .values()
            .flat_map(|r| r.references.iter().map(String::as_str))
            .collect();
        let count = records.of(env).len();
        let mut slots = Vec::with_capacity(count);
        let mut outputs = Vec::with_capacity(referenced.len());
        let mut secret_outputs = Vec::new();
        let mut recorded = Vec::with_capacity(count);
        // The maps are built at once from the records, which come in name order, instead of
        // one insert after another.
        for (record, live) in records.of(env).zip(live) {
            let name = record.name.to_owned();
            if referenced.contains(record.name) {
                outputs.push((name.clone(), record.outputs()?));
            } else {
                // Not needed here, but a damaged column is reported now, naming it, rather
                // than met half way through an apply.
                record.check_outputs()?;
            }
            let secret = record.secret_outputs()?;
            if !secret.is_empty() {
                secret_outputs.push((name.clone(), secret));
            }
            slots.push((name.clone(), u8::from(live.second_slot)));
            recorded.push((
                name,
                Recorded {
                    type_name: record.type_name.to_owned(),
                    status: record.status,
                    // Not parsed when its stored text is the desired config's: the plan
                    // diffs nothing then.
                    config: match desired.resources.get(record.name) {
                        Some(now) if record.config_is(&now.config) => None,
                        _ => Some(record.config()?),
                    },
                    depends_on: record.depends_on()?.into_iter().collect(),
                    resolved_hash: record.resolved_hash.map(str::to_owned),
                    source: live.source,
                },
            ));
        }
        let slots: BTreeMap<String, u8> = slots.into_iter().collect();
        let outputs: BTreeMap<String, Json> = outputs.into_iter().collect();
        let secret_outputs: BTreeMap<String, Vec<String>> = secret_outputs.into_iter().collect();
        input.recorded = recorded.into_iter().collect();
        let todo: Vec<(&String, &slipway_core::render::DesiredResource)> = desired
            .resources
            .iter()
            .filter(|(name, _)| input.recorded.contains_key(*name))
            .collect();
        // Each recorded resource's configuration as it resolves now, and its hash.
        let resolve_one = |(name, res): &(&String, &slipway_core::render::DesiredResource)| {
            // Resolve with the ports of the instance that is live (an exposed process may run
            // in its second slot), as apply did.
            let slot = slots.get(*name).copied().unwrap_or(0);
            let ports = slot_ports(all_ports.get(*name).unwrap_or(&BTreeMap::new()), slot);
            let scope = resolve::Scope {
                ports: &ports,
                outputs: &outputs,
                secret_outputs: &secret_outputs,
                secrets,
            };
            let resolved = resolve::resolve(&res.config, &scope).ok()?;
            let hash =
                resolve::resolved_hash(&resolved, res.source.as_deref(), self.store.sealer());
            Some(((*name).clone(), hash, resolved.config))
        };
        let done: Vec<(String, String, Json)> = on_cores(&todo, resolve_one);
        let (hashes, configs): (Vec<_>, Vec<_>) = done
            .into_iter()
            .map(|(name, hash, config)| ((name.clone(), hash), (name, config)))
            .unzip();
        input.resolved_now = hashes.into_iter().collect();
        let configs: BTreeMap<String, Json> = configs.into_iter().collect();
        discard((records, outputs, slots), count);
        Ok((input, configs))
    }

    /// Observes every resource of `ready` (recorded ready) through its provider, on as many
    /// threads as the machine has cores (at most 8) when there are many: each observation
    /// reads what it observes (a file, a database, an API), so a plan of thousands waits on
    /// them one core each instead of one after the other.
    fn observe_all(
        &self,
        env: &EnvName,
        ready: &[&(ResourceSummary<'_>, EnvelopeText<'_>)],
        all_ports: &BTreeMap<String, BTreeMap<String, u16>>,
    ) -> BTreeMap<String, Observed> {
        const ALONE: usize = 64;
        if ready.is_empty() {
            return BTreeMap::new();
        }
        let none = BTreeMap::new();
        // Read once for all: the environment's sandbox and stack are the same for each, and
        // its directories at each commit its resources run from (opened once for all).
        let context = self
            .sandbox(env)
            .and_then(|sandbox| Ok((sandbox, self.stack_of(env)?)));
        let settings = self.observation_settings();
        let mut dirs: BTreeMap<&str, EnvDirs> = BTreeMap::new();
        for (_, envelope) in ready {
            dirs.entry(&envelope.src_commit)
                .or_insert_with(|| self.env_dirs(env, &envelope.src_commit, ""));
        }
        let observe = |chunk: &[&(ResourceSummary<'_>, EnvelopeText<'_>)]| {
            chunk
                .iter()
                .map(|(record, envelope)| {
                    let ports = all_ports.get(record.name).unwrap_or(&none);
                    let observed = if self.registry.get(record.type_name).is_none() {
                        Observed::InSync
                    } else {
                        match &context {
                            Ok((sandbox, (stack, kind))) => {
                                let resource = Observable {
                                    name: record.name,
                                    type_name: record.type_name,
                                    instance: envelope.instance.as_deref(),
                                    resolved: envelope.resolved,
                                    handle: envelope.handle,
                                };
                                let dirs = &dirs[&*envelope.src_commit];
                                self.observe_in(
                                    &settings,
                                    (stack, *kind),
                                    sandbox,
                                    env,
                                    dirs,
                                    &resource,
                                    ports,
                                )
                            }
                            Err(e) => Observed::Drifted(format!("cannot observe: {e}")),
                        }
                    };
                    (record.name.to_owned(), observed)
                })
                .collect::<Vec<(String, Observed)>>()
        };
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(8);
        let mut observed: BTreeMap<String, Observed> = if ready.len() < ALONE || threads < 2 {
            observe(ready).into_iter().collect()
        } else {
            let chunk = ready.len().div_ceil(threads);
            std::thread::scope(|scope| {
                let workers: Vec<_> = ready
                    .chunks(chunk)
                    .map(|part| scope.spawn(move || observe(part)))
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|w| w.join().expect("an observation does not panic"))
                    .collect()
            })
        };
        let mut redactor = None;
        for observation in observed.values_mut() {
            self.redact_observed(env, observation, &mut redactor);
        }
        observed
    }

    /// Redacts the reason `observed` gives of the environment's secret values: it is a
    /// provider's words (an exec program's own among them), which may quote them, and it is
    /// shown to every viewer, in plans and in pull requests' comments. `redactor` is made
    /// for the first reason to redact (it reads every resource record of the environment);
    /// one that cannot be made withholds the reason.
    pub(crate) fn redact_observed(
        &self,
        env: &EnvName,
        observed: &mut Observed,
        redactor: &mut Option<Result<secrets::Redactor, String>>,
    ) {
        let (Observed::Drifted(why) | Observed::Missing(why)) = observed else {
            return;
        };
        let redactor =
            redactor.get_or_insert_with(|| self.redactor(env).map_err(|e| e.to_string()));
        *why = match redactor {
            Ok(redactor) => redactor.redact(why),
            Err(e) => format!(
                "its reason is withheld, as the environment's secret values cannot be read to \
                 redact it: {e}"
            ),
        };
    }

    /// The settings a pass of observations runs with: the engine's, ending by
    /// [`OBSERVE_PASS`] from now.
    pub(crate) fn observation_settings(&self) -> ProviderSettings {
        ProviderSettings {
            observe_until: Some(std::time::Instant::now() + OBSERVE_PASS),
            ..self.settings.clone()
        }
    }

    /// Observes one recorded resource through its provider, with the environment's recorded
    /// stack and kind, its directories (at the commit the resource runs from), its sandbox, the
    /// resource's ports (of both instance slots) and the pass's settings
    /// ([`Engine::observation_settings`]) in hand: read once for all of them.
    #[allow(
        clippy::too_many_arguments,
        reason = "each is read once for a whole pass"
    )]
    pub(crate) fn observe_in(
        &self,
        settings: &ProviderSettings,
        (stack, kind): (&str, Option<EnvKind>),
        sandbox: &slipway_providers::sandbox::Sandbox,
        env: &EnvName,
        dirs: &EnvDirs,
        resource: &Observable<'_>,
        all_ports: &BTreeMap<String, u16>,
    ) -> Observed {
        let Some(provider) = self.registry.get(resource.type_name) else {
            return Observed::InSync;
        };
        if settings
            .observe_until
            .is_some_and(|until| std::time::Instant::now() >= until)
        {
            tracing::warn!(environment = %env, resource = resource.name, "not observed: the pass of observations ran out of time; taken as recorded");
            return Observed::InSync;
        }
        let instance = resource.instance.unwrap_or(resource.name);
        let slot = u8::from(instance != resource.name);
        let ports = slot_ports(all_ports, slot);
        let mut ctx = self.resource_context(stack, env, instance, dirs, &ports, sandbox);
        ctx.settings = settings;
        ctx.kind = kind;
        match provider.observe_recorded(ctx, resource.resolved, resource.handle) {
            Ok(slipway_providers::Observation::InSync) => Observed::InSync,
            Ok(slipway_providers::Observation::Drifted { reason }) => Observed::Drifted(reason),
            Ok(slipway_providers::Observation::Missing { reason }) => Observed::Missing(reason),
            Err(e) => Observed::Drifted(format!("cannot observe: {e}")),
        }
    }

    /// The stack and kind environment `env` was recorded with (empty and none before its
    /// first apply).
    pub(crate) fn stack_of(&self, env: &EnvName) -> Result<(String, Option<EnvKind>), EngineError> {
        Ok(self
            .store
            .environment(env)?
            .map_or_else(Default::default, |record| (record.stack, Some(record.kind))))
    }

    /// Records the environment (creating it on first use) before anything is applied to it,
    /// unless it no longer follows `follows` (see [`ApplyOptions::follows`]): read and written
    /// in one transaction, so a pull request pinning it meanwhile is never overwritten.
    fn record_environment(
        &self,
        prepared: &Prepared,
        sync: SyncState,
        follows: Option<&slipway_state::Follows>,
    ) -> Result<EnvironmentRecord, EngineError> {
        let now = slipway_state::now_ms();
        let env = &prepared.desired.environment.name;
        self.store.update_environment(env, |recorded| {
            // Waiting for a slot in its family (or the home): nothing of it may exist before
            // the controller gives it one, a person's apply included.
            if let Some(recorded) = &recorded {
                refuse_queued(recorded)?;
            }
            if let (Some(follows), Some(recorded)) = (follows, &recorded)
                && recorded.follows().as_ref() != Some(follows)
            {
                return Err(EngineError::Superseded(env.clone()));
            }
            let mut record = recorded.unwrap_or_else(|| {
                EnvironmentRecord::new(
                    env.clone(),
                    prepared.desired.environment.kind,
                    prepared.desired.stack.clone(),
                    prepared.repo.clone(),
                    now,
                )
            });
            record.repo = prepared.repo.clone();
            record.stack = prepared.desired.stack.clone();
            record.kind = prepared.desired.environment.kind;
            record.definition = Some(prepared.desired.environment.definition.clone());
            // What the record says is in force: the commit's own rules once it runs, except for
            // a pinned commit (a pull request's), whose rules were never accepted on the branch.
            record.protected = if record.pinned {
                prepared.protected
            } else {
                prepared.declared.protected
            };
            if record.owner.is_none() {
                record.owner = prepared.owner.clone();
            }
            record.access = Some(prepared.access);
            if record.expires_at.is_none()
                && prepared.desired.environment.kind != EnvKind::Static
                && let Some(ttl) = prepared.ttl
            {
                let ttl = if prepared.desired.environment.kind == EnvKind::Adhoc {
                    ttl.min(self.config.environments.max_ttl())
                } else {
                    ttl
                };
                let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
                record.ttl_ms = Some(ms);
                record.expires_at = Some(now.saturating_add(ms));
            }
            // A pinned environment is applied at its pinned commit: the ref it follows (which
            // unpinning returns it to) stays as it was.
            if !record.pinned || record.tracked_ref.is_none() {
                record.tracked_ref = Some(prepared.reference.clone());
            }
            // What the commit being applied says is in force from now on.
            let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            record.sleep_after_ms = prepared.sleep_after.map(ms);
            record.idle_ttl_ms = prepared.idle_ttl.map(ms);
            record.desired_commit = Some(prepared.commit.sha.clone());
            record.sync = sync;
            record.updated_at = now;
            Ok(record)
        })?
    }

    /// Provider settings in force.
    pub fn settings(&self) -> &ProviderSettings {
        &self.settings
    }
}

/// The shorter of two limits, `None` being none.
fn stricter(own: Option<Duration>, in_force: Option<Duration>) -> Option<Duration> {
    match (own, in_force) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn is_full_sha(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Refuses to apply an environment waiting for a slot (`queued`): nothing of it may exist
/// before the controller gives it one, a person's apply included.
pub(crate) fn refuse_queued(record: &EnvironmentRecord) -> Result<(), EngineError> {
    if record.activity != slipway_core::vocab::Activity::Queued {
        return Ok(());
    }
    let env = &record.name;
    Err(EngineError::Usage(format!(
        "environment `{env}` is queued: its family (or this home) runs as many environments as \
         `max_environments` allows, and it starts when one of them goes (`slipway status --env \
         {env}` shows its place)"
    )))
}

/// `objects` with every text in them redacted of `redactor`'s values; none when they cannot
/// be (the configuration's diff then stands alone).
fn redacted_objects(
    redactor: &secrets::Redactor,
    objects: Vec<slipway_core::plan::ObjectChange>,
) -> Vec<slipway_core::plan::ObjectChange> {
    fn walk(value: &mut Json, redactor: &secrets::Redactor) {
        match value {
            Json::String(text) => *text = redactor.redact(text),
            Json::Array(items) => items.iter_mut().for_each(|v| walk(v, redactor)),
            Json::Object(map) => map.values_mut().for_each(|v| walk(v, redactor)),
            _ => {}
        }
    }
    let Ok(mut value) = serde_json::to_value(&objects) else {
        return Vec::new();
    };
    walk(&mut value, redactor);
    serde_json::from_value(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_dry_run_shows_of_a_secret_is_redacted() {
        use slipway_core::plan::{Action, FieldChange, ObjectChange};
        let redactor = secrets::Redactor::default();
        redactor.add("t0ken-from-vault");
        let objects = vec![ObjectChange {
            object: "ConfigMap/app".into(),
            source: Some("k8s/app.yaml:1:1".into()),
            action: Action::Update,
            diff: vec![FieldChange {
                path: "data.token".into(),
                before: Some(serde_json::json!("old")),
                after: Some(serde_json::json!({"nested": ["Bearer t0ken-from-vault"]})),
                forces_replace: false,
            }],
            reason: Some("rejected: t0ken-from-vault".into()),
        }];
        let shown = serde_json::to_string(&redacted_objects(&redactor, objects)).expect("json");
        assert!(!shown.contains("t0ken-from-vault"), "{shown}");
        assert!(
            shown.contains("ConfigMap/app") && shown.contains("old"),
            "{shown}"
        );
    }
    use serde_json::json;

    /// Below the threshold and above it (on the cores): every item `f` keeps, in order.
    #[test]
    fn on_cores_keeps_what_f_gives_in_order() {
        for n in [0usize, 7, 255, 256, 5000] {
            let items: Vec<usize> = (0..n).collect();
            let kept = on_cores(&items, |i| (i % 3 != 0).then_some(i * 2));
            let want: Vec<usize> = (0..n).filter(|i| i % 3 != 0).map(|i| i * 2).collect();
            assert_eq!(kept, want, "{n} items");
        }
    }

    #[test]
    fn an_envelope_read_from_its_text_reads_as_the_parsed_one() {
        let record = |live: Json| ResourceRecord {
            environment: EnvName::parse("dev").expect("a valid name"),
            name: "web".into(),
            type_name: "file".into(),
            status: slipway_core::vocab::ResourceStatus::Ready,
            config: json!({}),
            resolved_hash: None,
            outputs: json!({}),
            secret_outputs: Vec::new(),
            live,
            depends_on: Vec::new(),
            error: None,
            updated_at: 0,
            sensitive: false,
        };
        for live in [
            json!({"handle": {"path": "/x"}, "src_commit": "abc", "resolved": {"path": "x"},
                   "source": "s1", "instance": "web@b", "redact": ["secret"], "other": 1}),
            json!({"handle": {"pid": 3}, "src_commit": "abc", "source": null}),
            json!({}),
            json!(null),
            json!("not an envelope"),
            json!({"handle": {"pid": 3}, "src_commit": 7}),
            json!({"handle": {"pid": 3}, "instance": ["web"]}),
            json!({"handle": {"pid": 3}, "redact": "secret"}),
            json!({"handle": {"pid": 3}, "redact": [1]}),
            json!({"handle": {"pid": 3}, "redact": null}),
            json!({"handle": {"pid": 3}, "src_commit": null}),
            json!({"handle": null, "src_commit": "a\"b", "instance": "w\u{e9}b"}),
        ] {
            let record = record(live.clone());
            let copied = Envelope::of(&record);
            let text = serde_json::to_string(&record.live).expect("JSON");
            let read = EnvelopeText::of(&text);
            let parse = |text: &str| serde_json::from_str::<Json>(text).expect("JSON");
            assert_eq!(
                (
                    &copied.handle,
                    copied.src_commit.as_str(),
                    &copied.resolved,
                    copied.source.as_deref(),
                    copied.instance.as_deref(),
                ),
                (
                    &parse(read.handle),
                    &*read.src_commit,
                    &parse(read.resolved),
                    read.source.as_deref(),
                    read.instance.as_deref(),
                ),
                "the live column {live} reads alike from its text"
            );
        }
        let listed = EnvelopeText::of(r#"["handle", "abc"]"#);
        assert_eq!(
            (listed.handle, &*listed.src_commit),
            ("null", ""),
            "a list is not an envelope, though a struct could be read from it by position"
        );
    }
}
