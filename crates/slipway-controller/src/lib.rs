//! Slipway's controller: keeps every environment converged to Git, continuously.
//!
//! Start with [`Controller`]: build it over an [`Engine`](slipway_engine::Engine) and a
//! repository, then `run` it. It is the kube-runtime / Flux shape: every reason to look at an
//! environment is one closed [`Trigger`]; triggers land in a [`queue::Queue`] with one slot per
//! environment; workers take due environments, at most `concurrency` at once (and
//! `static_concurrency` more that only static environments take) and one operation per
//! environment, and run the idempotent [`reconcile`](Controller) on a blocking
//! thread; the result is a requeue (the periodic safety net) or, on error, a retry with
//! exponential backoff and jitter. A failing environment never blocks another.
//!
//! # Guarantees
//! - Reconcile is safe to re-run after a crash at any line: it only ever plans from the
//!   recorded state and what it observes, and the engine records ownership before acting.
//!   On start every recorded environment is reconciled, which finishes or redoes whatever a
//!   killed controller left half-done (an environment recorded `synced` at the commit and
//!   desired state it should run has nothing half-done: it is observed at the first drift
//!   tick, one `drift_interval` after start, like every other).
//! - A commit that does not validate, or whose apply fails, marks the environment `failed`
//!   with the reason and leaves the running version up.
//! - Once a newer Slipway has migrated the state's schema (a rolling upgrade), the
//!   controller steps aside: it starts no reconcile, beats no heartbeat and takes no lease
//!   (the store refuses its writes anyway), so its leases expire and the upgraded replicas
//!   take its environments over; whatever serves beside it may go on reading.
#![deny(missing_docs)]

pub mod clock;
mod config;
pub mod discover;
mod gate;
mod idle;
pub mod links;
pub mod metrics;
pub mod notify;
mod policy;
pub mod pulls;
pub mod queue;
mod reconcile;
mod refresh;
mod replicas;
mod requests;
mod slots;

use slipway_core::EnvName;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use slipway_core::vocab::EventKind;
pub use slipway_engine::DestroyOptions;
use slipway_engine::{Engine, EngineError, EnvTarget};
use slipway_git::Source;
use slipway_state::EnvironmentRecord;
use tokio::sync::Notify;

pub use config::ControllerConfig;
pub use metrics::Metrics;
pub use replicas::ReplicaOptions;

/// Why an environment is being looked at. Closed: every source of work is one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The repository was polled and the environment's ref moved (or it is new).
    Poll,
    /// A webhook said something was pushed.
    Push,
    /// The periodic requeue, the safety net for missed events, and the look at every
    /// recorded environment on start: an environment that runs, in full, what its commit
    /// renders to now is left alone without observing it (that is [`Trigger::Drift`]'s).
    Timer,
    /// The drift interval: observe and repair.
    Drift,
    /// A person asked (sync, create, rollback, pin).
    Manual,
    /// Its time to live has passed.
    Ttl,
    /// A pull request's `/slipway apply` pinned it to the pull request's head; the pull
    /// request is answered when this reconcile ends.
    Apply,
    /// A request through its preview URL (or a person) asked a sleeping environment to wake:
    /// its processes are started again.
    Wake,
    /// It may be due to sleep, be warned, or expire for want of requests (`sleep_after`,
    /// `idle_ttl`).
    Idle,
}

impl Trigger {
    /// Whether a person asked for this reconcile (directly, or with a comment command): it
    /// fetches afresh, and retries a commit whose last attempt failed for good.
    pub fn from_person(self) -> bool {
        matches!(self, Trigger::Manual | Trigger::Apply)
    }
}

/// How the controller paces itself. Every field has a default.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often the repository is fetched and environments discovered.
    pub poll_interval: Duration,
    /// How often every environment is observed for drift.
    pub drift_interval: Duration,
    /// The safety-net requeue after a successful reconcile: it looks again at the commit
    /// and the desired state; observing every resource is the drift interval's.
    pub requeue_interval: Duration,
    /// Most environments reconciled at once.
    pub concurrency: usize,
    /// Workers beyond `concurrency` that only static environments take (declared with
    /// `track:`, taken from the default branch): however long the reconciles of environments
    /// made from branches run, they never hold these.
    pub static_concurrency: usize,
    /// How many of the environments reconciled at once may be one person's (who pushed a
    /// branch, opened a pull request or made an ad-hoc environment; static environments are
    /// nobody's): whoever pushes many branches whose jobs run long holds that many workers,
    /// and the next person's preview still starts. `None`: half of `concurrency` (at least
    /// one); 0: no limit.
    pub author_concurrency: Option<usize>,
    /// The longest retry backoff.
    pub max_backoff: Duration,
    /// The ref whose `slipway.yaml` says which environments exist.
    pub default_ref: String,
    /// Resources changing at once inside one apply.
    pub parallelism: usize,
    /// How long audit entries and events are kept (`None`: for ever).
    pub retention: Option<Duration>,
    /// How long handled webhook deliveries' ids are kept (`None`: for ever).
    pub delivery_retention: Option<Duration>,
    /// How often old rows are pruned.
    pub prune_interval: Duration,
    /// What time it is, for times to live and expiries (tests pass one they move by hand).
    pub clock: Arc<dyn clock::Clock>,
    /// With several replicas on one PostgreSQL state: this one's name and lease (the
    /// engine's store must require leases). `None`: the only controller of its state.
    pub replica: Option<ReplicaOptions>,
    /// How long the signed link to a private preview in a plan comment holds (zero: none, the
    /// plain URL).
    pub comment_links: Duration,
}

impl Options {
    /// [`Options::author_concurrency`] as the queue takes it (0: no limit).
    pub fn author_limit(&self) -> usize {
        self.author_concurrency
            .unwrap_or_else(|| self.concurrency.max(1).div_ceil(2))
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            poll_interval: Duration::from_secs(15),
            drift_interval: Duration::from_secs(30),
            requeue_interval: Duration::from_secs(300),
            concurrency: 4,
            static_concurrency: 2,
            author_concurrency: None,
            max_backoff: Duration::from_secs(300),
            default_ref: "HEAD".into(),
            parallelism: 8,
            retention: Some(Duration::from_secs(90 * 24 * 3600)),
            delivery_retention: Some(Duration::from_secs(365 * 24 * 3600)),
            prune_interval: Duration::from_secs(3600),
            comment_links: Duration::from_secs(24 * 3600),
            clock: Arc::new(clock::SystemClock),
            replica: None,
        }
    }
}

/// A request to make an ad-hoc environment.
#[derive(Debug, Clone)]
pub struct CreateEnvironment {
    /// Its name.
    pub name: EnvName,
    /// The branch, tag or commit it runs.
    pub reference: String,
    /// The `environments:` entry whose variables it takes; default: the only family.
    pub like: Option<String>,
    /// How long it lives; default: the family's `ttl`.
    pub ttl: Option<Duration>,
    /// Who asked.
    pub owner: Option<String>,
}

/// What a controller operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The store failed.
    #[error(transparent)]
    State(#[from] slipway_state::StateError),
    /// Git failed.
    #[error(transparent)]
    Git(#[from] slipway_git::GitError),
    /// The environment does not exist.
    #[error("environment `{0}` does not exist")]
    NotFound(String),
    /// The request cannot be done as asked; the message says why and what to do.
    #[error("{0}")]
    Invalid(String),
    /// The request contradicts what exists (a name that is taken, an environment of
    /// another kind); the message says why.
    #[error("{0}")]
    Conflict(String),
    /// A person's request reached a replica that does not work on the environment; nothing
    /// was changed. The replica that does is named, with the address its node advertises
    /// when it recorded one.
    #[error("{}", elsewhere(environment, replica, advertise.as_deref(), *alive))]
    Elsewhere {
        /// The environment.
        environment: EnvName,
        /// The replica that works on it (holds its lease, or should).
        replica: String,
        /// Where that replica's node is reached (`[local] advertise`), if it said.
        advertise: Option<String>,
        /// Whether that replica is alive (heard from within two leases).
        alive: bool,
    },
    /// The forge refused or could not be reached.
    #[error("the forge refused: {0}")]
    Forge(#[from] slipway_forge::ForgeError),
    /// An apply ran and some of its changes failed (the deployment records which, and why).
    #[error("apply of `{environment}` at {} failed (deployment #{deployment})", &commit[..12.min(commit.len())])]
    Apply {
        /// The environment.
        environment: String,
        /// The commit applied.
        commit: String,
        /// The deployment recorded.
        deployment: i64,
        /// Whether applying the same commit again may succeed.
        retryable: bool,
    },
    /// A blocking task died.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The message of [`ControllerError::Elsewhere`].
fn elsewhere(environment: &EnvName, replica: &str, advertise: Option<&str>, alive: bool) -> String {
    let at = advertise.map(|a| format!(" (at {a})")).unwrap_or_default();
    if alive {
        format!(
            "environment `{environment}` is worked on by replica {replica}{at}, not by this \
             one; nothing was changed: send the request to {replica}"
        )
    } else {
        format!(
            "environment `{environment}` runs on the node of replica {replica}{at} (it has \
             processes or files there), which is not alive; nothing was changed: start \
             {replica} again to act on it"
        )
    }
}

impl ControllerError {
    /// Whether the same call may succeed later with nothing changed by a person (the one
    /// spelling across the crates: the store's, git's, the forge's, the providers' and the
    /// engine's errors say it the same way). The controller's error policy backs off and
    /// retries these; the others wait for a new commit or a person.
    pub fn retryable(&self) -> bool {
        match self {
            ControllerError::Engine(e) => e.retryable(),
            ControllerError::State(e) => e.retryable(),
            ControllerError::Git(e) => e.retryable(),
            ControllerError::Forge(e) => e.retryable(),
            ControllerError::Apply { retryable, .. } => *retryable,
            // A blocking task that died: nothing says the next attempt will.
            ControllerError::Internal(_) => true,
            ControllerError::NotFound(_)
            | ControllerError::Invalid(_)
            | ControllerError::Conflict(_)
            | ControllerError::Elsewhere { .. } => false,
        }
    }

    /// The commit the failure is about, when it is one commit's (an apply that failed).
    pub fn commit(&self) -> Option<&str> {
        match self {
            ControllerError::Apply { commit, .. } => Some(commit),
            _ => None,
        }
    }
}

pub(crate) struct Inner {
    pub engine: Arc<Engine>,
    pub source: Arc<dyn Source>,
    pub repo_label: String,
    pub folder: String,
    pub options: Options,
    pub queue: Mutex<queue::Queue>,
    pub wake: Notify,
    pub metrics: Metrics,
    /// The port the preview router listens on, once a server runs.
    pub preview_port: std::sync::OnceLock<u16>,
    /// Branch tips as of the last fetch: reconciles resolve their ref from here.
    pub tips: Mutex<std::collections::BTreeMap<String, String>>,
    /// The forge, when one is configured.
    pub forge: std::sync::OnceLock<pulls::ForgeSetup>,
    /// Forge events are handled one at a time: a pull request's comment is read, then
    /// written, and two events about it must not interleave.
    pub forge_serial: tokio::sync::Mutex<()>,
    /// `/slipway apply`s waiting for their environment's next reconcile, by environment.
    pub applies: Mutex<std::collections::BTreeMap<EnvName, pulls::PendingApply>>,
    /// Environments whose last apply failed for good: not applied again before a new commit
    /// or a person asks (the error policy's wait).
    pub parked: Mutex<std::collections::BTreeMap<EnvName, policy::Parked>>,
    /// Environments whose destroy by the controller (an expiry, an idle one, a branch gone)
    /// failed: how many times in a row, and when it is tried again. Its resources' delete is
    /// a branch's code (an exec program) that may fail for ever: tried every second (as the
    /// expiry ticks), each attempt recorded a deployment, an event and a notification.
    pub destroy_failures: Mutex<std::collections::BTreeMap<EnvName, reconcile::Failures>>,
    /// Generated environments the last discovery found no branch or open pull request for,
    /// with why: destroyed by a worker (`reconcile`), not by discovery itself, whose destroy
    /// would run the branch's `delete` programs for as long as they say and hold up every
    /// discovery, and so every new branch, behind it.
    pub unwanted: Mutex<std::collections::BTreeMap<EnvName, Unwanted>>,
    /// Discovery passes (`refresh::discover`): one at a time, and who they served.
    pub discovery: Mutex<Discovery>,
    /// Signalled when a discovery pass ends.
    pub discovered: std::sync::Condvar,
    /// When Slipway last answered a refused or malformed command of an author on a pull
    /// request (lowercased login, number): anyone may comment on a public repository, and
    /// each answer is a comment in Slipway's name and a call against its token's limits.
    pub refusals: Mutex<std::collections::BTreeMap<(String, u64), i64>>,
    /// Who overrode the deploy window of an environment for its next reconcile (a sync
    /// asked with `override_window` by a deployer): taken by that reconcile.
    pub window_overrides: Mutex<std::collections::BTreeMap<EnvName, String>>,
    /// Who works on what, with several replicas.
    pub membership: replicas::Membership,
    /// Whether this controller has said it steps aside (a newer schema), said once.
    pub stepped_aside: std::sync::atomic::AtomicBool,
    /// With several replicas: who takes work handed over to this replica (`pulls::handoff`),
    /// its name and a number of this run's own, so that work a previous run of it took and
    /// left unfinished is taken again.
    pub taker: Option<String>,
    /// Held while this replica does handed-over work: one pass at a time.
    pub draining: tokio::sync::Mutex<()>,
    /// Open pull requests to plan again because their base branch runs a new commit (see
    /// `pulls::base_moved`), by number; a request already waiting is not added twice.
    pub replans: Mutex<std::collections::BTreeSet<i64>>,
    /// Wakes the worker that plans them.
    pub replan_wake: Notify,
    /// The receivers of `[notify.NAME]`, when any is configured.
    pub receivers: std::sync::OnceLock<Arc<Vec<notify::Receiver>>>,
    /// The last request through each environment's preview URL not written to the state
    /// yet (`idle::flush`), unix milliseconds by the controller's clock.
    pub seen: Mutex<std::collections::BTreeMap<EnvName, i64>>,
    /// Wakes under way, by environment: every request for it meanwhile waits on the same
    /// one (`true` once its reconcile ended).
    pub waking: Mutex<std::collections::BTreeMap<EnvName, tokio::sync::watch::Sender<bool>>>,
    /// How many times the repository was fetched: what [`Inner::family_in_force`] remembers
    /// is good until the next.
    pub fetches: std::sync::atomic::AtomicU64,
    /// What each family (or pinned static environment's definition) holds its environments
    /// to at a branch, by (branch, definition, kind), with the fetch it was read after.
    pub families: Mutex<FamilyMemo>,
}

/// [`Inner::families`]: (branch, definition, kind) to (fetch count, what is in force).
pub(crate) type FamilyMemo = std::collections::HashMap<
    (String, String, slipway_core::vocab::EnvKind),
    (u64, slipway_engine::FamilyInForce),
>;

impl Inner {
    /// Now, by the controller's clock (milliseconds since the epoch).
    pub fn now(&self) -> i64 {
        self.options.clock.now_ms()
    }

    /// Fetches the repository; what was remembered of its branches is read again after.
    pub fn fetch(&self) -> Result<(), slipway_git::GitError> {
        let fetched = self.source.fetch();
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        fetched
    }

    /// [`Engine::family_in_force`] of `definition` at `branch`, read once per fetch: every
    /// reconcile of a family's environment asks it, and with 10,000 of them resolving the
    /// branch and reading its stack each time was a sixth of a reconcile pass. While the
    /// branch cannot be read (a fetch still writing, a `slipway.yaml` pushed broken), what was
    /// read last holds; never read, it is an error, and the reconcile waits.
    pub fn family_in_force(
        &self,
        branch: &str,
        definition: &str,
        kind: slipway_core::vocab::EnvKind,
    ) -> Result<slipway_engine::FamilyInForce, EngineError> {
        let families = || {
            self.families
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let fetches = self.fetches.load(std::sync::atomic::Ordering::Acquire);
        let key = (branch.to_owned(), definition.to_owned(), kind);
        if let Some((at, family)) = families().get(&key)
            && *at == fetches
        {
            return Ok(family.clone());
        }
        match self.engine.family_in_force(
            self.source.as_ref(),
            branch,
            &self.folder,
            definition,
            kind,
        ) {
            Ok(family) => {
                families().insert(key, (fetches, family.clone()));
                Ok(family)
            }
            Err(e) => {
                let mut families = families();
                let Some((at, family)) = families.get_mut(&key) else {
                    return Err(e);
                };
                // Kept for this fetch: read again (and said again) after the next one.
                *at = fetches;
                tracing::warn!(branch, definition, error = %e, "what the branch sets for a family cannot be read; what was read last holds");
                Ok(family.clone())
            }
        }
    }
}

/// Discovery passes asked for and done (`Inner::discovery`).
#[derive(Debug, Default)]
pub(crate) struct Discovery {
    /// How many callers asked for a pass.
    pub asked: u64,
    /// Callers up to this number were served by a pass that began after they asked.
    pub done: u64,
    /// Whether a pass runs now.
    pub running: bool,
}

/// Why discovery wants a generated environment destroyed (`Inner::unwanted`).
#[derive(Debug, Clone)]
pub(crate) struct Unwanted {
    /// What the destroy says.
    pub why: String,
    /// The ref it follows, when that was gone: should a fetch since see it again (a branch
    /// pushed anew), the environment is kept, whatever an older discovery said.
    pub gone: Option<String>,
}

/// A task that stops when `run` returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

/// The workers' permits: `concurrency` for any environment, `static_concurrency` for static
/// ones only.
struct Workers {
    any: Arc<tokio::sync::Semaphore>,
    statics: Arc<tokio::sync::Semaphore>,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The controller. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

impl Controller {
    /// A controller over `engine`, reading `source` (named `repo_label` in records), with the
    /// stack in `folder` (`""` or `deploy/`).
    pub fn new(
        engine: Arc<Engine>,
        source: Arc<dyn Source>,
        repo_label: &str,
        folder: &str,
        options: Options,
    ) -> Controller {
        let taker = options
            .replica
            .as_ref()
            .map(|r| format!("{}#{:016x}", r.name, fastrand::u64(..)));
        let mut queue = queue::Queue::default();
        queue.set_person_limit(options.author_limit());
        Controller {
            inner: Arc::new(Inner {
                engine,
                source,
                repo_label: repo_label.to_string(),
                folder: folder.to_string(),
                options,
                queue: Mutex::new(queue),
                wake: Notify::new(),
                metrics: Metrics::default(),
                tips: Mutex::new(std::collections::BTreeMap::new()),
                preview_port: std::sync::OnceLock::new(),
                forge: std::sync::OnceLock::new(),
                forge_serial: tokio::sync::Mutex::new(()),
                applies: Mutex::new(std::collections::BTreeMap::new()),
                parked: Mutex::new(std::collections::BTreeMap::new()),
                destroy_failures: Mutex::new(std::collections::BTreeMap::new()),
                unwanted: Mutex::new(std::collections::BTreeMap::new()),
                discovery: Mutex::new(Discovery::default()),
                discovered: std::sync::Condvar::new(),
                refusals: Mutex::new(std::collections::BTreeMap::new()),
                window_overrides: Mutex::new(std::collections::BTreeMap::new()),
                membership: replicas::Membership::default(),
                stepped_aside: std::sync::atomic::AtomicBool::new(false),
                taker,
                draining: tokio::sync::Mutex::new(()),
                replans: Mutex::new(std::collections::BTreeSet::new()),
                replan_wake: Notify::new(),
                receivers: std::sync::OnceLock::new(),
                seen: Mutex::new(std::collections::BTreeMap::new()),
                waking: Mutex::new(std::collections::BTreeMap::new()),
                fetches: std::sync::atomic::AtomicU64::new(0),
                families: Mutex::new(FamilyMemo::new()),
            }),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.inner.engine
    }

    /// This replica's name and lease, when it is one of several on a PostgreSQL state.
    pub fn replica(&self) -> Option<&ReplicaOptions> {
        self.inner.options.replica.as_ref()
    }

    /// The newer schema version a newer Slipway migrated the state to while this one ran,
    /// once this controller met it: it has stepped aside (see the crate's guarantees).
    pub fn stepped_aside(&self) -> Option<i64> {
        let found = self.inner.engine.store().schema_moved()?;
        if !self
            .inner
            .stepped_aside
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::error!(
                schema = found,
                understood = self.inner.engine.store().understood_schema(),
                "a newer slipway migrated the state's schema: this one steps aside; it \
                 reconciles and writes nothing more, its leases expire and upgraded replicas \
                 take its environments over; replace it with the newer version"
            );
        }
        Some(found)
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The repository it reads (for planning an environment outside the loop, e.g. the API).
    pub fn source(&self) -> &Arc<dyn Source> {
        &self.inner.source
    }

    /// The folder of `slipway.yaml` inside the repository: `""` or `deploy/`.
    pub fn folder(&self) -> &str {
        &self.inner.folder
    }

    /// The repository as named in records.
    pub fn repo_label(&self) -> &str {
        &self.inner.repo_label
    }

    /// Gives the controller its forge (pull requests, webhooks). Once; later calls are
    /// ignored.
    pub fn set_forge(&self, setup: pulls::ForgeSetup) {
        let _ = self.inner.forge.set(setup);
    }

    /// Gives the controller its notification receivers (`[notify.NAME]`; see [`notify`]).
    /// Once; later calls are ignored.
    pub fn set_receivers(&self, receivers: Vec<notify::Receiver>) {
        if !receivers.is_empty() {
            let _ = self.inner.receivers.set(Arc::new(receivers));
        }
    }

    /// The forge's webhook verifier and kind, when a forge is configured.
    pub fn webhook_verifier(
        &self,
    ) -> Option<(slipway_forge::ForgeKind, &slipway_forge::WebhookVerifier)> {
        self.inner.forge.get().map(|s| (s.kind, &s.verifier))
    }

    /// Handles one verified forge event: records pull requests, posts plans, runs comment
    /// commands, then refreshes and reconciles what it changed.
    pub async fn handle_forge_event(
        &self,
        event: slipway_forge::ForgeEvent,
    ) -> Result<(), ControllerError> {
        let follow = {
            let _turn = self.inner.forge_serial.lock().await;
            self.blocking(move |inner| pulls::handle(inner, event))
                .await?
        };
        self.follow_up(follow).await
    }

    /// Does the work other replicas handed over to this one (a pull request's command about
    /// an environment it works on, see `pulls::handoff`), each as a forge event is handled:
    /// one at a time with the forge's events, then what it asks for (a reconcile, the
    /// apply's). One pass at a time, until nothing is left to take: a wake-up during a pass
    /// is served by it, or by the next heartbeat's.
    async fn do_handed_over(self) {
        let Ok(_pass) = self.inner.draining.try_lock() else {
            return;
        };
        loop {
            if self.stepped_aside().is_some() {
                return;
            }
            let taken = match self.blocking(pulls::take_handoffs).await {
                Ok(taken) if taken.is_empty() => return,
                Ok(taken) => taken,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the work handed over failed");
                    return;
                }
            };
            for work in taken {
                let follow = {
                    let _turn = self.inner.forge_serial.lock().await;
                    self.blocking(move |inner| pulls::run_handoff(inner, &work))
                        .await
                };
                let done = match follow {
                    Ok(follow) => self.follow_up(follow).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = done {
                    let message = format!("work handed over by another replica: {e}");
                    let _ = self
                        .blocking(move |inner| {
                            Ok(inner.engine.store().record_event(
                                None,
                                EventKind::WebhookFailed,
                                &message,
                                &serde_json::json!({}),
                                inner.now(),
                            ))
                        })
                        .await;
                }
            }
        }
    }

    /// Plans open pull requests again whose base branch moved (`Inner::replans`), one at a
    /// time, lowest number first, each as a forge event is handled: a webhook waits for at
    /// most one re-plan, and a re-plan never interleaves with its pull request's own events.
    /// Runs until the controller stops.
    async fn replan_open_pull_requests(self) {
        loop {
            self.inner.replan_wake.notified().await;
            loop {
                let next = self
                    .inner
                    .replans
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .pop_first();
                let Some(number) = next else { break };
                let planned = {
                    let _turn = self.inner.forge_serial.lock().await;
                    self.blocking(move |inner| pulls::replan(inner, number))
                        .await
                };
                if let Err(e) = planned {
                    tracing::warn!(
                        pull_request = number,
                        error = %e,
                        "planning the pull request again after its base moved failed"
                    );
                }
            }
        }
    }

    /// Reads the forge's open pull requests and catches up with what was missed.
    pub async fn catch_up_pull_requests(&self) -> Result<(), ControllerError> {
        if self.inner.forge.get().is_none() {
            return Ok(());
        }
        let follow = {
            let _turn = self.inner.forge_serial.lock().await;
            self.blocking(pulls::catch_up).await?
        };
        self.follow_up(follow).await
    }

    async fn follow_up(&self, follow: pulls::FollowUp) -> Result<(), ControllerError> {
        for env in &follow.reconcile {
            self.enqueue(env, Trigger::Manual);
        }
        if let Some(env) = &follow.apply {
            self.enqueue(env, Trigger::Apply);
        }
        if follow.refresh {
            self.refresh_all().await?;
        }
        Ok(())
    }

    /// [`Controller::refresh`] here, and on every other replica sharing the state (woken by
    /// a notification rather than at their next poll): the repository moved.
    pub async fn refresh_all(&self) -> Result<(), ControllerError> {
        if self.inner.options.replica.is_some()
            && let Err(e) = self
                .inner
                .engine
                .store()
                .notify(slipway_state::Wake::Refresh)
        {
            tracing::warn!(
                error = %e,
                "waking the other replicas failed; they catch up at their next poll"
            );
        }
        self.refresh().await
    }

    /// Tells the controller where its preview router listens (the server's port).
    pub fn set_preview_port(&self, port: u16) {
        let _ = self.inner.preview_port.set(port);
    }

    /// The preview URL of environment `env` of stack `stack`, when a router serves.
    pub fn preview_url(&self, env: &EnvName, stack: &str) -> Option<String> {
        self.inner
            .preview_port
            .get()
            .map(|port| format!("http://{env}.{stack}.localhost:{port}/"))
    }

    /// Queued and running reconciles.
    pub fn queue_depth(&self) -> (usize, usize) {
        let q = self
            .inner
            .queue
            .lock()
            .expect("the queue lock is never poisoned");
        (q.depth(), q.running())
    }

    /// Asks for `env` to be reconciled now.
    pub fn enqueue(&self, env: &EnvName, trigger: Trigger) {
        self.enqueue_at(env, trigger, Instant::now());
    }

    /// Asks for each of `envs` to be reconciled now, taking the queue's lock once.
    fn enqueue_all(&self, envs: &[EnvName], trigger: Trigger) {
        if envs.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut queue = self
            .inner
            .queue
            .lock()
            .expect("the queue lock is never poisoned");
        for env in envs {
            queue.push(env, trigger, now);
        }
        drop(queue);
        self.inner.wake.notify_one();
    }

    fn enqueue_at(&self, env: &EnvName, trigger: Trigger, due: Instant) {
        self.inner
            .queue
            .lock()
            .expect("the queue lock is never poisoned")
            .push(env, trigger, due);
        self.inner.wake.notify_one();
    }

    /// Fetches the repository and brings the set of environments in line with it now (what
    /// the poll does; webhooks and the API call it for an immediate refresh).
    pub async fn refresh(&self) -> Result<(), ControllerError> {
        let inner = self.inner.clone();
        let changed = tokio::task::spawn_blocking(move || refresh::discover(&inner))
            .await
            .map_err(|e| ControllerError::Internal(e.to_string()))??;
        for (env, trigger) in changed {
            self.enqueue(&env, trigger);
        }
        Ok(())
    }

    /// Runs until `shutdown` completes: polling, drift and TTL ticks, and the workers.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        // Woken by the other replicas (a push one of them heard of), with the poll as the
        // fallback; dropped, it stops, when this returns.
        let mut _listener = None;
        if let Some(replica) = self.inner.options.replica.clone() {
            let this = self.clone();
            let runtime = tokio::runtime::Handle::current();
            _listener = self.inner.engine.store().listen(move |wake| match wake {
                slipway_state::Wake::Refresh => {
                    let this = this.clone();
                    runtime.spawn(async move {
                        let _ = this.refresh().await;
                    });
                }
                slipway_state::Wake::Handoff => {
                    runtime.spawn(this.clone().do_handed_over());
                }
            });
            // The first beat before any work: this replica counts itself among the live.
            self.beat(&replica).await;
            let this = self.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(replica.lease / 3);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    this.beat(&replica).await;
                }
            });
        }
        // Crash safety: look at every recorded environment once on start, at the branch tips
        // this home's copy of the repository holds. The fetch and discovery run meanwhile and
        // queue whatever moved or appeared: neither a slow remote nor ten thousand branches
        // hold that look back.
        {
            let inner = self.inner.clone();
            if let Ok(Ok(branches)) =
                tokio::task::spawn_blocking(move || inner.source.branches()).await
            {
                *self
                    .inner
                    .tips
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    branches.into_iter().map(|b| (b.name, b.sha)).collect();
            }
        }
        // Notifications on tasks of their own: a receiver never holds a reconcile up.
        // (Also for a forge that shows previews' deployments: they go through the outbox.)
        let deployments = self
            .inner
            .forge
            .get()
            .is_some_and(|setup| setup.forge.has_deployments());
        if self.inner.receivers.get().is_some() || deployments {
            let inner = self.inner.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || notify::start(&inner)).await {
                tracing::warn!(error = %e, "placing the notifications' cursor failed; the notifier places it");
            }
        }
        let _notifier = (self.inner.receivers.get().is_some() || deployments).then(|| {
            let receivers = self.inner.receivers.get().cloned().unwrap_or_default();
            AbortOnDrop(tokio::spawn(notify::run(self.clone(), receivers)))
        });
        // Static environments have workers of their own from the start (discovery says it
        // again as it records new ones).
        if let Ok(statics) = self.inner.engine.store().static_environment_names() {
            self.inner
                .queue
                .lock()
                .expect("the queue lock is never poisoned")
                .set_statics(statics.into_iter().collect());
        }
        if let Ok(envs) = self.inner.engine.store().environment_names() {
            self.enqueue_all(&envs, Trigger::Timer);
        }
        {
            let this = self.clone();
            tokio::spawn(async move {
                let _ = this.refresh().await;
                tokio::spawn(this.clone().replan_open_pull_requests());
                // Pull requests opened, pushed to or closed while the controller was down.
                if let Err(e) = this.catch_up_pull_requests().await {
                    let _ = this.inner.engine.store().record_event(
                        None,
                        EventKind::ForgeFailed,
                        &format!("catching up with open pull requests: {e}"),
                        &serde_json::json!({}),
                        this.inner.now(),
                    );
                }
            });
        }
        let mut poll = tokio::time::interval(self.inner.options.poll_interval);
        let mut drift = tokio::time::interval(self.inner.options.drift_interval);
        let mut ttl = tokio::time::interval(Duration::from_secs(1));
        let mut flushed = Instant::now();
        // Its first tick is at once: a controller that starts prunes what aged while it was
        // down.
        let mut prune = tokio::time::interval(self.inner.options.prune_interval);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for timer in [&mut poll, &mut drift, &mut ttl] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer.tick().await;
        }
        let workers = Workers {
            any: Arc::new(tokio::sync::Semaphore::new(
                self.inner.options.concurrency.max(1),
            )),
            statics: Arc::new(tokio::sync::Semaphore::new(
                self.inner.options.static_concurrency,
            )),
        };
        loop {
            self.start_due(&workers);
            // With every worker busy, a due environment cannot start before one finishes (and
            // wakes this loop): sleeping until its due time, already past, would spin.
            let next = {
                let queue = self
                    .inner
                    .queue
                    .lock()
                    .expect("the queue lock is never poisoned");
                if workers.any.available_permits() > 0 {
                    queue.next_due()
                } else if workers.statics.available_permits() > 0 {
                    queue.next_due_static()
                } else {
                    None
                }
            };
            let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(
                next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
            ));
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.inner.wake.notified() => {}
                _ = sleep => {}
                _ = poll.tick() => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let _ = this.refresh().await;
                        // The safety net for missed webhooks, as for branches.
                        let _ = this.catch_up_pull_requests().await;
                    });
                }
                _ = drift.tick() => {
                    if let Ok(envs) = self.inner.engine.store().environment_names() {
                        self.enqueue_all(&envs, Trigger::Drift);
                    }
                }
                _ = prune.tick() => {
                    let this = self.clone();
                    tokio::task::spawn_blocking(move || this.prune());
                }
                _ = ttl.tick() => {
                    let now = self.inner.now();
                    if let Ok(envs) = self.inner.engine.store().expired_environments(now) {
                        self.enqueue_all(&envs, Trigger::Ttl);
                    }
                    let flush = flushed.elapsed() >= idle::FLUSH_EVERY;
                    if flush {
                        flushed = Instant::now();
                    }
                    let this = self.clone();
                    tokio::task::spawn_blocking(move || {
                        if flush {
                            idle::flush(&this.inner);
                        }
                        match idle::due_now(&this.inner) {
                            Ok(envs) => this.enqueue_all(&envs, Trigger::Idle),
                            Err(e) => tracing::warn!(error = %e, "looking for idle environments failed"),
                        }
                    });
                }
            }
        }
    }

    /// One heartbeat of this replica: renews its leases, lets go of those it lost or should
    /// not hold, and queues the environments it should hold but does not (a dead replica's).
    async fn beat(&self, replica: &ReplicaOptions) {
        if self.stepped_aside().is_some() {
            return;
        }
        let (inner, options) = (self.inner.clone(), replica.clone());
        let result = tokio::task::spawn_blocking(move || {
            // A newer Slipway migrated the schema: no heartbeat, no lease (the store would
            // refuse them); the next beat finds the controller stepped aside.
            if inner.engine.store().check_schema()?.is_some() {
                return Ok(Vec::new());
            }
            inner
                .membership
                .beat(&inner.engine, &options, &inner.metrics)
        })
        .await;
        if self.stepped_aside().is_some() {
            return;
        }
        // Work handed over to this replica, in case its wake-up was lost: on a task of its
        // own, so that a slow forge never delays the renewal of the leases.
        tokio::spawn(self.clone().do_handed_over());
        match result {
            Ok(Ok(orphans)) => {
                for env in orphans {
                    self.enqueue(&env, Trigger::Timer);
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "replica heartbeat failed"),
            Err(e) => tracing::warn!(error = %e, "replica heartbeat panicked"),
        }
    }

    /// Deletes audit entries, events and webhook deliveries older than the retention of
    /// [`Options`]; a failure is an event, and the next tick tries again.
    fn prune(&self) {
        let now = self.inner.now();
        let before = |keep: Option<Duration>| {
            keep.map(|d| now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
        };
        let options = &self.inner.options;
        let retention = slipway_state::Retention {
            audit_before: before(options.retention),
            events_before: before(options.retention),
            deliveries_before: before(options.delivery_retention),
        };
        if let Err(e) = self.inner.engine.store().prune(&retention) {
            let _ = self.inner.engine.store().record_event(
                None,
                EventKind::RetentionFailed,
                &format!("pruning old audit entries, events and deliveries: {e}"),
                &serde_json::json!({}),
                now,
            );
        }
    }

    /// Starts every due environment there is a worker for: a static one on a worker of
    /// their own if one is free, any other (or a static one when none is) on the others.
    fn start_due(&self, workers: &Workers) {
        loop {
            let now = Instant::now();
            let mut queue = self
                .inner
                .queue
                .lock()
                .expect("the queue lock is never poisoned");
            let started = match workers.statics.clone().try_acquire_owned() {
                Ok(permit) => queue.pop_due_static(now).map(|next| (next, permit)),
                Err(_) => None,
            };
            let started = match started {
                Some(started) => Some(started),
                None => match workers.any.clone().try_acquire_owned() {
                    Ok(permit) => queue.pop_due(now).map(|next| (next, permit)),
                    Err(_) => None,
                },
            };
            drop(queue);
            let Some(((env, trigger), permit)) = started else {
                return;
            };
            let this = self.clone();
            tokio::spawn(async move {
                this.work(env, trigger).await;
                drop(permit);
                this.inner.wake.notify_one();
            });
        }
    }

    /// One reconcile of `env` on a blocking thread, then what follows it: the next look
    /// (requeue, or the error policy's backoff or wait), the failure recorded, and the answer
    /// to a `/slipway apply` waiting for it.
    async fn work(&self, env: EnvName, trigger: Trigger) {
        if self.stepped_aside().is_some() {
            // Nothing more to do here: the upgraded replicas take it over.
            let mut queue = self
                .inner
                .queue
                .lock()
                .expect("the queue lock is never poisoned");
            queue.done(
                &env,
                queue::Finished::Succeeded,
                self.inner.options.max_backoff,
            );
            queue.forget(&env);
            return;
        }
        if let Some(replica) = self.inner.options.replica.clone() {
            let (inner, name) = (self.inner.clone(), env.clone());
            let taken = tokio::task::spawn_blocking(move || {
                inner
                    .membership
                    .take(&inner.engine, &replica, &inner.metrics, &name)
            })
            .await;
            if !matches!(taken, Ok(Ok(true))) {
                // Another replica works on it (or the lease could not be read): its turn,
                // and this one looks again at the next beat or requeue.
                if let Ok(Err(e)) = &taken {
                    tracing::warn!(environment = %env, error = %e, "taking the lease failed");
                }
                let mut queue = self
                    .inner
                    .queue
                    .lock()
                    .expect("the queue lock is never poisoned");
                queue.done(
                    &env,
                    queue::Finished::Succeeded,
                    self.inner.options.max_backoff,
                );
                drop(queue);
                self.enqueue_at(
                    &env,
                    Trigger::Timer,
                    Instant::now() + self.inner.options.requeue_interval,
                );
                return;
            }
        }
        self.reconcile_held(env.clone(), trigger).await;
        if let Some(replica) = self.inner.options.replica.clone() {
            let inner = self.inner.clone();
            let _ = tokio::task::spawn_blocking(move || {
                inner
                    .membership
                    .done(&inner.engine, &replica, &inner.metrics, &env)
            })
            .await;
        }
    }

    /// [`Controller::work`] once this replica may work on `env`.
    async fn reconcile_held(&self, env: EnvName, trigger: Trigger) {
        // Taken when the reconcile starts: one that was already running when the apply was
        // asked for must not answer it.
        let mut pending = self
            .inner
            .applies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&env);
        let span = tracing::info_span!(
            "reconcile",
            environment = %env,
            trigger = ?trigger,
            commit = tracing::field::Empty
        );
        let started = Instant::now();
        let result = {
            let (inner, name, span) = (self.inner.clone(), env.clone(), span.clone());
            tokio::task::spawn_blocking(move || {
                span.in_scope(|| reconcile::reconcile(&inner, &name, trigger))
            })
            .await
        };
        let outcome = result.unwrap_or_else(|e| {
            Err(ControllerError::Internal(format!(
                "reconcile of `{env}` panicked: {e}"
            )))
        });
        self.inner
            .metrics
            .observe_reconcile(trigger, started.elapsed(), outcome.is_ok());
        // Requests waiting for a wake are answered once a reconcile ran it (one that found
        // the environment busy runs again shortly; they keep waiting).
        if !matches!(
            outcome,
            Ok(reconcile::Action::Busy | reconcile::Action::Superseded)
        ) && let Some(done) = self
            .inner
            .waking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&env)
        {
            let _ = done.send(true);
        }
        let finished = match &outcome {
            Ok(_) => queue::Finished::Succeeded,
            Err(e) => policy::error_policy(e),
        };
        let backoff = self
            .inner
            .queue
            .lock()
            .expect("the queue lock is never poisoned")
            .done(&env, finished, self.inner.options.max_backoff);
        let now = Instant::now();
        match &outcome {
            Ok(reconcile::Action::Requeue(after)) => {
                self.enqueue_at(&env, Trigger::Timer, now + *after)
            }
            Ok(action @ (reconcile::Action::Busy | reconcile::Action::Superseded)) => {
                // Someone else (a CLI apply) holds it: the same request, shortly; asked for
                // something else meanwhile: the same request, now.
                let after = match action {
                    reconcile::Action::Busy => reconcile::BUSY_RETRY,
                    _ => {
                        span.in_scope(|| {
                            tracing::info!(
                                "asked to follow something else meanwhile; deciding again"
                            )
                        });
                        Duration::ZERO
                    }
                };
                self.enqueue_at(&env, trigger, now + after);
                if let Some(p) = pending.take() {
                    self.inner
                        .applies
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(env.clone(), p);
                }
            }
            Ok(reconcile::Action::Done) => self
                .inner
                .queue
                .lock()
                .expect("the queue lock is never poisoned")
                .forget(&env),
            Err(e) => {
                span.in_scope(
                    || tracing::warn!(error = %e, retryable = e.retryable(), "reconcile failed"),
                );
                let next = match backoff {
                    Some(backoff) => backoff,
                    // Terminal: the same commit is not tried again before a new one or a
                    // person; the periodic pass stays the safety net.
                    None => {
                        if let Some(commit) = e.commit() {
                            let parked = policy::Parked {
                                commit: commit.to_string(),
                                epoch: self.inner.membership.epoch(&env),
                            };
                            self.inner
                                .parked
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .insert(env.clone(), parked);
                        }
                        self.inner.options.requeue_interval
                    }
                };
                // A retry looks as closely as the reconcile that failed: only a failed
                // periodic look is retried as one (which may skip observing).
                let retry = if trigger == Trigger::Timer {
                    Trigger::Timer
                } else {
                    Trigger::Drift
                };
                self.enqueue_at(&env, retry, now + next);
            }
        }
        let failure = match outcome {
            Ok(_) => None,
            Err(error) => {
                let name = env.clone();
                self.blocking(move |inner| {
                    policy::record_failure(inner, &name, &error);
                    Ok(error.to_string())
                })
                .await
                .ok()
            }
        };
        if let Some(pending) = pending {
            let name = env.clone();
            // A forge event of this pull request must not interleave with its answer.
            let again = {
                let _turn = self.inner.forge_serial.lock().await;
                self.blocking(move |inner| {
                    pulls::answer(inner, &name, &pending, failure.as_deref())
                })
                .await
            };
            match again {
                Ok(true) => self.enqueue(&env, Trigger::Manual),
                Ok(false) => {}
                Err(e) => span.in_scope(
                    || tracing::warn!(error = %e, "answering the pull request's apply failed"),
                ),
            }
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, ControllerError> + Send + 'static,
    ) -> Result<T, ControllerError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| ControllerError::Internal(e.to_string()))?
    }

    /// Reconciles `env` now, on this task, instead of through the queue: for the CLI, which
    /// acts on a home without a running controller. If another operation holds the
    /// environment, this waits for it to end (calling `waiting` before, to say so), then
    /// reconciles.
    pub async fn reconcile_now(
        &self,
        env: &EnvName,
        waiting: fn(&EnvName),
    ) -> Result<(), ControllerError> {
        let name = env.clone();
        self.blocking(move |inner| {
            let done = settled(inner, &name, Trigger::Manual, &|| waiting(&name)).map(|_| ());
            // Recorded as the queue records a reconcile's failure (the status, and an event
            // that notifies), which the reconcile leaves to the error policy; the person is
            // told too. A change made meanwhile by someone else is no failure of it.
            if let Err(e) = &done
                && !matches!(e, ControllerError::Conflict(_))
            {
                policy::record_failure(inner, &name, e);
            }
            done
        })
        .await
    }

    /// The target `record` is planned and applied as by the reconcile: a generated or ad-hoc
    /// environment's family as the default branch sets it (deploy windows, access, idle
    /// limits), a pinned static environment's access as its branch says. For views that must
    /// say what the reconcile would do (the API's plan).
    pub fn target(&self, record: &EnvironmentRecord) -> Result<EnvTarget, ControllerError> {
        Ok(target_of(&self.inner, record)?)
    }

    /// Creates an ad-hoc environment and queues its first deployment.
    pub async fn create_environment(
        &self,
        request: CreateEnvironment,
    ) -> Result<EnvironmentRecord, ControllerError> {
        let record = self
            .blocking(move |inner| requests::create_adhoc(inner, &request))
            .await?;
        self.enqueue(&record.name, Trigger::Manual);
        Ok(record)
    }

    /// Runs `request`, a person's, about `name` on a blocking thread; on a replica, under
    /// `name`'s lease, taken here first, or refused naming the replica that works on it (see
    /// [`ControllerError::Elsewhere`]).
    async fn as_holder<T: Send + 'static>(
        &self,
        name: &EnvName,
        request: impl FnOnce(&Inner) -> Result<T, ControllerError> + Send + 'static,
    ) -> Result<T, ControllerError> {
        let name = name.clone();
        self.blocking(move |inner| {
            let claimed = requests::claim(inner, &name)?;
            let result = request(inner);
            if claimed {
                requests::release(inner, &name);
            }
            result
        })
        .await
    }

    /// Queues a reconcile of `name` now, as a person asked: on a replica, only on the one
    /// that works on it (another refuses, naming it, rather than accept work it would drop).
    pub async fn sync(&self, name: &EnvName) -> Result<(), ControllerError> {
        self.as_holder(name, |_| Ok(())).await?;
        self.enqueue(name, Trigger::Manual);
        Ok(())
    }

    /// [`Controller::sync`], overriding a deploy window that denies the change now: `who` (a
    /// person the caller checked has the deployer role) is recorded in the audit and event
    /// logs if the reconcile applies a change the windows deny.
    pub async fn sync_overriding_window(
        &self,
        name: &EnvName,
        who: &str,
    ) -> Result<(), ControllerError> {
        let (env, who) = (name.clone(), who.to_string());
        self.as_holder(name, move |inner| {
            inner
                .window_overrides
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(env, who);
            Ok(())
        })
        .await?;
        self.enqueue(name, Trigger::Manual);
        Ok(())
    }

    /// Destroys an environment now (waiting for any operation on it to finish).
    /// A protected environment is destroyed only when `options.confirm` is given.
    pub async fn destroy_environment(
        &self,
        name: &EnvName,
        options: DestroyOptions,
    ) -> Result<(), ControllerError> {
        let forget = name.clone();
        let target = name.clone();
        self.as_holder(name, move |inner| {
            reconcile::destroy(inner, &target, &options, "destroyed on request")
        })
        .await?;
        self.inner
            .queue
            .lock()
            .expect("the queue lock is never poisoned")
            .forget(&forget);
        Ok(())
    }

    /// Pushes an environment's expiry `by` later (from now if it had none).
    pub async fn extend(
        &self,
        name: &EnvName,
        by: Duration,
    ) -> Result<EnvironmentRecord, ControllerError> {
        let target = name.clone();
        self.as_holder(name, move |inner| requests::extend(inner, &target, by))
            .await
    }

    /// Pins an environment to `commit` (default: the one it runs): it stops following its ref.
    pub async fn pin(
        &self,
        name: &EnvName,
        commit: Option<String>,
    ) -> Result<EnvironmentRecord, ControllerError> {
        let n = name.clone();
        let record = self
            .as_holder(name, move |inner| requests::pin(inner, &n, commit))
            .await?;
        self.enqueue(name, Trigger::Manual);
        Ok(record)
    }

    /// Notes a request through `env`'s preview URL (the router calls it for every request):
    /// in memory, written to the state every few seconds. It puts off sleep and idle expiry.
    pub fn saw_request(&self, env: &EnvName) {
        let now = self.inner.now();
        let mut seen = self
            .inner
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match seen.get_mut(env) {
            Some(at) => *at = (*at).max(now),
            None => {
                seen.insert(env.clone(), now);
            }
        }
    }

    /// Asks for sleeping `env` to be woken, for a request through its preview URL: the wake
    /// under way when there is one (joined, never repeated), else one queued. The receiver
    /// turns `true` once the wake's reconcile ended; the caller reads the record then.
    ///
    /// # Caveats
    /// Anyone who reaches a preview URL may call it: the caller asks only for an environment
    /// it found `sleeping` on this node, so it costs at most one reconcile per sleep.
    pub fn wake_for_request(&self, env: &EnvName) -> tokio::sync::watch::Receiver<bool> {
        let mut waking = self
            .inner
            .waking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(under_way) = waking.get(env) {
            return under_way.subscribe();
        }
        let (done, wait) = tokio::sync::watch::channel(false);
        waking.insert(env.clone(), done);
        drop(waking);
        self.enqueue(env, Trigger::Wake);
        wait
    }

    /// Wakes `name` as a person asked: its processes start again (queued; the receiver turns
    /// `true` once that reconcile ended). Nothing to do for one that is awake (`None`).
    pub async fn wake(
        &self,
        name: &EnvName,
    ) -> Result<Option<tokio::sync::watch::Receiver<bool>>, ControllerError> {
        let target = name.clone();
        let record = self
            .as_holder(name, move |inner| {
                inner
                    .engine
                    .store()
                    .environment(&target)?
                    .ok_or_else(|| ControllerError::NotFound(target.to_string()))
            })
            .await?;
        Ok((record.activity == slipway_core::vocab::Activity::Sleeping)
            .then(|| self.wake_for_request(name)))
    }

    /// Wakes `name` now, on this task (for the CLI, without a running controller): the
    /// reconcile a wake is; it waits as [`Controller::reconcile_now`] does.
    pub async fn wake_now(
        &self,
        name: &EnvName,
        waiting: fn(&EnvName),
    ) -> Result<(), ControllerError> {
        let name = name.clone();
        self.blocking(move |inner| {
            settled(inner, &name, Trigger::Wake, &|| waiting(&name)).map(|_| ())
        })
        .await
    }

    /// Puts `name` to sleep now, as a person asked (waiting for an operation on it to
    /// finish): its processes stop, its data, files, databases and ports stay; the next
    /// request through its preview URL, or [`Controller::wake`], wakes it.
    pub async fn sleep(&self, name: &EnvName) -> Result<EnvironmentRecord, ControllerError> {
        let target = name.clone();
        self.as_holder(name, move |inner| {
            idle::sleep(
                inner,
                &target,
                "asked by hand",
                slipway_engine::LockWait::Block(&|| {}),
                &|| Ok(true),
            )
        })
        .await
    }

    /// Lets a pinned environment follow its ref again.
    pub async fn unpin(&self, name: &EnvName) -> Result<EnvironmentRecord, ControllerError> {
        let n = name.clone();
        let record = self
            .as_holder(name, move |inner| requests::unpin(inner, &n))
            .await?;
        self.enqueue(name, Trigger::Manual);
        Ok(record)
    }

    /// Rolls an environment back to the commit of an earlier deployment (and pins it there).
    pub async fn rollback(
        &self,
        name: &EnvName,
        deployment: i64,
    ) -> Result<EnvironmentRecord, ControllerError> {
        let n = name.clone();
        let record = self
            .as_holder(name, move |inner| {
                let d = inner.engine.store().deployment(deployment)?.filter(|d| d.environment == n && !d.commit.is_empty());
                let Some(d) = d else {
                    return Err(ControllerError::Invalid(format!("deployment #{deployment} is not a deployment of `{n}`; `slipway history --env {n}` lists them")));
                };
                requests::pin(inner, &n, Some(d.commit))
            })
            .await?;
        self.enqueue(name, Trigger::Manual);
        Ok(record)
    }
}

/// The first 12 characters of a commit id, as messages show it: the engine's spelling.
pub(crate) use slipway_engine::apply::short;

/// The target `record` is reconciled as; a generated or ad-hoc environment's `sleep_after`
/// and `idle_ttl` are at most its family's at the default branch (`EnvTarget::idle_limits`),
/// and a family private there keeps it private (`EnvTarget::access_in_force`). A static
/// environment pinned to a commit (a rollback, a pull request's `/slipway apply`) stays as
/// private as its branch says (once read): an older or unmerged commit cannot open it to
/// everyone.
pub(crate) fn target_of(
    inner: &Inner,
    record: &EnvironmentRecord,
) -> Result<EnvTarget, EngineError> {
    use slipway_core::vocab::EnvKind;
    let definition = record.definition.as_deref().unwrap_or(record.name.as_str());
    let family = match (record.kind, record.tracked_ref.as_deref()) {
        // Its branch unreadable (deleted, or its stack broken) and never read: the pinned
        // commit's own access. A rollback in an incident must not fail on it, nor make a
        // public prod private.
        (EnvKind::Static, Some(branch)) if record.pinned => slipway_engine::FamilyInForce {
            access: inner
                .family_in_force(branch, definition, EnvKind::Static)
                .ok()
                .and_then(|family| family.access),
            ..Default::default()
        },
        (EnvKind::Static, _) => Default::default(),
        (kind, _) => inner.family_in_force(&inner.options.default_ref, definition, kind)?,
    };
    Ok(EnvTarget {
        idle_limits: family.idle_limits,
        access_in_force: family.access,
        windows_in_force: family.windows,
        name: record.name.clone(),
        definition: record
            .definition
            .clone()
            .unwrap_or_else(|| record.name.to_string()),
        kind: record.kind,
        owner: record.owner.clone(),
        ttl: record
            .ttl_ms
            .map(|ms| Duration::from_millis(ms.max(0) as u64)),
    })
}

/// How many reconciles in a row [`settled`] runs while each ends superseded.
const SUPERSEDED_TRIES: u32 = 5;

/// The reconcile of `name` on the caller's task (the CLI's), run again at once when it ended
/// superseded (what the environment follows, or whether it sleeps, changed while it decided,
/// and nothing was done), as the queue runs it again. Each such end is a real change made
/// meanwhile; after [`SUPERSEDED_TRIES`] in a row the person is told that nothing was done,
/// never that it was.
fn settled(
    inner: &Inner,
    name: &EnvName,
    trigger: Trigger,
    waiting: &dyn Fn(),
) -> Result<reconcile::Action, ControllerError> {
    let mut superseded = 0;
    loop {
        match reconcile::reconcile(inner, name, trigger)? {
            reconcile::Action::Superseded if superseded + 1 < SUPERSEDED_TRIES => {
                superseded += 1;
            }
            reconcile::Action::Superseded => {
                return Err(ControllerError::Conflict(format!(
                    "`{name}` kept changing while this was decided (pinned, put to sleep, woken \
                     or given another expiry by someone else, {SUPERSEDED_TRIES} times in a \
                     row); nothing was done: run the command again"
                )));
            }
            // Another operation (a person's apply, a server's reconcile) holds it: what was
            // asked is done once that ends, not skipped. The lock is only waited for here;
            // the reconcile takes it again, and looks afresh at what the holder left.
            reconcile::Action::Busy => {
                drop(
                    inner
                        .engine
                        .lock(name, slipway_engine::LockWait::Block(waiting))?,
                );
            }
            action => return Ok(action),
        }
    }
}
