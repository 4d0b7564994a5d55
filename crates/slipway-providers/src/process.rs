//! The `process` resource type: a long-running command, kept running by a supervisor that does
//! not depend on any Slipway command staying alive.
//!
//! Each environment has one supervisor ([`environment`]: `slipway __supervise <run dir>`,
//! started detached by the first request that finds none: its own session, standard streams
//! on `/dev/null`, double-forked so it is nobody's child) that forks and watches every process
//! of the environment. `create` writes a [`supervisor::SupervisorSpec`] to
//! `<run>/<resource>.spec.json` and asks the supervisor, over its socket, to `start` it; the
//! supervisor records each process in `<run>/<resource>.json` (pid and start time) before it
//! lets it run, answers once its exec happened (or failed) with what it recorded, and
//! restarts it with backoff whenever it exits.
//!
//! # Guarantees
//! - Processes are recognised by pid *and* start time, never by pid alone: a recorded pid now
//!   held by a process with another start time is treated as gone, and never signalled.
//! - A supervisor's death (SIGKILL included) stops none of its processes. The next request to
//!   the environment's supervisor starts a new one, which takes back every process still
//!   running and restarts those that ended meanwhile: `create` of an unchanged resource (the
//!   controller's drift pass observes every process), and `observe` itself as soon as it finds
//!   the supervisor gone: it then reports what the new supervisor found (a process still
//!   running is in sync, not missing, so the engine does not replace it), and `Missing` only
//!   when no new supervisor could start.
//! - `delete` makes the supervisor let go of the process (`release`), then stops the child's
//!   whole process group itself, even if the supervisor was SIGKILLed and only the state file
//!   remains; with `live: None` it finds it through the state file at the resource's
//!   deterministic path. Afterwards no process of the resource runs, so its ports are free.
//! - `create` of an unchanged spec whose process runs keeps that process; otherwise it first
//!   stops whatever an earlier create of the same resource left running.
//! - A home from before the environment's supervisor keeps working: a process whose state
//!   file says `scope: resource` and whose own supervisor still runs is left to it (observed
//!   the same way, stopped by SIGTERM to that supervisor); once that supervisor is gone, the
//!   environment's supervisor takes the process back like any other.
//!
//! # Caveats
//! - A program that escapes its process group (by calling `setsid` itself) escapes the
//!   supervisor's stop too.

pub(crate) mod environment;
pub(crate) mod health;
pub(crate) mod spawn;
pub(crate) mod supervisor;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use self::environment::{Answer, StartError};
use self::health::HealthCheck;
use self::supervisor::{Phase, Scope, SupervisorSpec, SupervisorState, read_state, spec_in_state};
use crate::command::{self, TAIL_LINES};
use crate::logfile::{self, log_path};
use crate::procinfo::{Liveness, ProcessIdentity, wait_until};
use crate::sandbox::Confinement;
use crate::{Applied, Observation, Provider, ProviderError, ResourceContext, Retry};

pub use self::supervisor::supervise;

/// Configuration of a `process` resource.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// Program and arguments, e.g. `["python3", "-m", "app", "--port", "20001"]`.
    pub command: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of the ports the engine allocates; their numbers are in the context, and in the
    /// child's environment as `PORT_<NAME>`.
    #[serde(default)]
    pub ports: Vec<String>,
    /// How to tell that the process is ready; without one it is ready once running.
    #[serde(default)]
    pub health: Option<HealthConfig>,
    /// The port the preview-URL router sends traffic to (used by the router, not here).
    #[serde(default)]
    pub expose: Option<String>,
    /// Working directory relative to the environment's source directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Time between SIGTERM and SIGKILL when stopping; the engine's default if absent.
    #[serde(default, deserialize_with = "slipway_core::duration::optional")]
    pub stop_grace: Option<Duration>,
    /// When the supervisor starts the command again after it exits.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// How long it may take to become healthy; the engine's default if absent.
    #[serde(default, deserialize_with = "slipway_core::duration::optional")]
    pub ready_timeout: Option<Duration>,
}

/// A health check: exactly one of `http`, `tcp` and `command`, with optional timing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Path for `GET http://127.0.0.1:<port><path>`, which must answer 2xx.
    #[serde(default)]
    pub http: Option<String>,
    /// Name of a port that must accept TCP connections.
    #[serde(default)]
    pub tcp: Option<String>,
    /// A command that must exit 0 (run in the process's working directory and environment).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// For `http`: the port name; the first port if absent.
    #[serde(default)]
    pub port: Option<String>,
    /// Time between checks; 1 s if absent.
    #[serde(default, deserialize_with = "slipway_core::duration::optional")]
    pub interval: Option<Duration>,
    /// Time one check may take; 2 s if absent.
    #[serde(default, deserialize_with = "slipway_core::duration::optional")]
    pub timeout: Option<Duration>,
}

/// When the supervisor starts the command again after it exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Whatever the exit status.
    #[default]
    Always,
    /// Only after a non-zero exit or a signal.
    OnFailure,
    /// Never: an exit leaves the resource drifted.
    Never,
}

/// The `process` provider.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessProvider;

/// The live object recorded by the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LiveProcess {
    supervisor_pid: u32,
    supervisor_start: u64,
    child_pid: Option<u32>,
    child_start: Option<u64>,
    state_file: PathBuf,
    /// Which kind of supervisor started it (absent in records from before: `resource`).
    #[serde(default)]
    scope: Scope,
}

impl LiveProcess {
    fn supervisor(&self) -> ProcessIdentity {
        ProcessIdentity {
            pid: self.supervisor_pid,
            start: self.supervisor_start,
        }
    }

    fn child(&self) -> Option<ProcessIdentity> {
        Some(ProcessIdentity {
            pid: self.child_pid?,
            start: self.child_start?,
        })
    }

    fn parse(live: &Value) -> Result<LiveProcess, ProviderError> {
        serde_json::from_value(live.clone())
            .map_err(|e| ProviderError::Config(format!("process: unreadable live record: {e}")))
    }
}

/// How long a request to the environment's supervisor may take to be answered (a `start`
/// that must first stop a changed process waits out its stop grace).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a process without a health check whose exit would be final (restart `never` or
/// `on-failure`) must be seen running before it is ready.
const SETTLE_WITHOUT_RESTART: Duration = Duration::from_millis(100);
/// Exits before becoming ready after which `wait_ready` gives up early.
const CRASHES_BEFORE_READY: u32 = 3;

fn spec_path(ctx: ResourceContext<'_>) -> PathBuf {
    ctx.dirs.run.join(format!("{}.spec.json", ctx.resource))
}

fn state_path(ctx: ResourceContext<'_>) -> PathBuf {
    ctx.dirs.run.join(format!("{}.json", ctx.resource))
}

/// The spec of what runs for the resource: the one its state file carries (sent with its
/// `start`), or its spec file (a larger one, or one an engine from before wrote).
fn running_spec(ctx: ResourceContext<'_>) -> Option<Vec<u8>> {
    spec_in_state(&state_path(ctx)).or_else(|| std::fs::read(spec_path(ctx)).ok())
}

/// A checked configuration.
struct Resolved {
    cwd: PathBuf,
    env: BTreeMap<String, String>,
    health: Option<Health>,
    stop_grace: Duration,
}

struct Health {
    check: HealthCheck,
    interval: Duration,
    timeout: Duration,
}

fn resolve(ctx: ResourceContext<'_>, config: &ProcessConfig) -> Result<Resolved, ProviderError> {
    const T: &str = ProcessProvider::TYPE;
    command::check_command(T, "command", &config.command)?;
    command::check_env(T, &config.env)?;
    let port_of = |name: &str, field: &str| -> Result<u16, ProviderError> {
        if !config.ports.iter().any(|p| p == name) {
            return Err(ProviderError::Config(format!(
                "process: `{field}` names port {name:?}, which is not in `ports` ({:?})",
                config.ports
            )));
        }
        ctx.ports.get(name).copied().ok_or_else(|| {
            ProviderError::Config(format!(
                "process: port {name:?} was not allocated by the engine"
            ))
        })
    };
    for name in &config.ports {
        port_of(name, "ports")?;
    }
    if let Some(name) = &config.expose {
        port_of(name, "expose")?;
    }
    let health = match &config.health {
        None => None,
        Some(h) => {
            let check = match (&h.http, &h.tcp, &h.command) {
                (Some(path), None, None) => {
                    if !health::valid_http_path(path) {
                        return Err(ProviderError::Config(format!(
                            "process: `health.http` {path:?} must be a path starting with `/`, \
                             without spaces"
                        )));
                    }
                    let port = match (&h.port, config.ports.first()) {
                        (Some(name), _) => port_of(name, "health.port")?,
                        (None, Some(first)) => port_of(first, "ports")?,
                        (None, None) => {
                            return Err(ProviderError::Config(
                                "process: `health.http` needs a port; declare one in `ports`"
                                    .to_owned(),
                            ));
                        }
                    };
                    HealthCheck::Http {
                        port,
                        path: path.clone(),
                    }
                }
                (None, Some(name), None) => HealthCheck::Tcp {
                    port: port_of(name, "health.tcp")?,
                },
                (None, None, Some(command)) => {
                    command::check_command(T, "health.command", command)?;
                    HealthCheck::Command(command.clone())
                }
                _ => {
                    return Err(ProviderError::Config(
                        "process: `health` needs exactly one of `http`, `tcp` and `command`"
                            .to_owned(),
                    ));
                }
            };
            if h.port.is_some() && !matches!(check, HealthCheck::Http { .. }) {
                return Err(ProviderError::Config(
                    "process: `health.port` only applies to `health.http`".to_owned(),
                ));
            }
            Some(Health {
                check,
                interval: h.interval.unwrap_or(Duration::from_secs(1)),
                timeout: h.timeout.unwrap_or(Duration::from_secs(2)),
            })
        }
    };
    Ok(Resolved {
        cwd: command::working_dir(T, ctx.dirs, config.cwd.as_deref())?,
        env: command::child_env(ctx, &config.env),
        health,
        stop_grace: config.stop_grace.unwrap_or(ctx.settings.stop_grace),
    })
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> ProviderError {
    move |source| ProviderError::Io { context, source }
}

impl Provider for ProcessProvider {
    type Config = ProcessConfig;
    const TYPE: &'static str = "process";

    /// Without a health check, a process its supervisor restarts is ready once running, which
    /// the state file says as soon as its start is answered (one that crashed at once, or is
    /// backing off, is not, and is waited for).
    fn ready_at_once(&self, config: &ProcessConfig) -> bool {
        config.health.is_none() && config.restart == RestartPolicy::Always
    }

    /// Starts the environment's supervisor if none answers, without waiting for it: it comes
    /// up while the engine exports the commit and records its first changes, and the first
    /// `start` finds it listening (it waited for the supervisor's start, a fifth of an apply
    /// of a hundred processes). A supervisor woken for nothing exits after its idle time.
    fn expect_changes_in(&self, settings: &crate::ProviderSettings, dirs: &crate::EnvDirs) {
        if let Some((program, args)) = settings.supervisor.split_first()
            && let Err(e) = environment::wake(&dirs.run, program, args)
        {
            // The first change asks again, and says what is wrong.
            tracing::debug!(run = %dirs.run.display(), error = %e, "cannot wake the supervisor");
        }
    }

    fn create(
        &self,
        ctx: ResourceContext<'_>,
        config: &ProcessConfig,
    ) -> Result<Applied, ProviderError> {
        let resolved = resolve(ctx, config)?;
        // Over its environment's disk limit: refused, said whole, before anything of it is
        // stopped. Its supervisor, which refuses it too, keeps it and starts it again once
        // the directories hold less. The files only: the supervisor counts what its
        // processes hold open too, a look at all of them that each of a hundred starts
        // would repeat.
        if let Some(why) = ctx
            .sandbox
            .disk
            .as_ref()
            .and_then(crate::disk::DiskLimit::exceeded_by_files)
        {
            return Err(ProviderError::Failed {
                message: format!(
                    "process `{}` was not started: {why}",
                    command::show_command(&config.command)
                ),
                log_tail: None,
                retry: Retry::Retryable,
            });
        }
        if ctx.settings.supervisor.is_empty() {
            return Err(ProviderError::Config(
                "process: no supervisor program is configured (settings.supervisor)".to_owned(),
            ));
        }
        let spec = SupervisorSpec {
            resource: ctx.resource.to_owned(),
            command: config.command.clone(),
            env: resolved.env,
            cwd: resolved.cwd,
            log: log_path(ctx.dirs, ctx.resource),
            log_max_bytes: ctx.settings.log_max_bytes,
            state: state_path(ctx),
            restart: config.restart,
            stop_grace_ms: resolved.stop_grace.as_millis() as u64,
            redact: ctx.redact.to_vec(),
            confinement: Some(Confinement::of(ctx)),
        };
        let bytes = crate::to_json(&spec, "the supervisor spec")?
            .to_string()
            .into_bytes();
        // The same spec already running (a create repeated after an interruption, or the
        // controller healing a process whose supervisor died): keep the process.
        let current = read_state(&spec.state)
            .filter(|_| running_spec(ctx).is_some_and(|running| running == bytes))
            .filter(|s| s.supervisor.is_alive() || s.child.is_some_and(|c| c.is_alive()));
        let state = match current {
            // A per-resource supervisor of a home from before keeps its process.
            Some(state) if state.scope == Scope::Resource && state.supervisor.is_alive() => state,
            Some(_) => ask_start(ctx, &spec, &bytes)?,
            None => {
                // Anything an earlier create of this resource left running is ours to replace.
                stop(ctx, None)?;
                for dir in [&ctx.dirs.run, &ctx.dirs.logs] {
                    std::fs::create_dir_all(dir)
                        .map_err(io_error(format!("failed to create {}", dir.display())))?;
                }
                ask_start(ctx, &spec, &bytes)?
            }
        };
        // What `wait_ready` would find at once, from what the supervisor (alive: it just
        // answered, or kept the process) recorded a moment ago; the child itself looked at.
        let ready = self.ready_at_once(config) && ready_without_check(&state);
        let live = LiveProcess {
            supervisor_pid: state.supervisor.pid,
            supervisor_start: state.supervisor.start,
            child_pid: state.child.map(|c| c.pid),
            child_start: state.child.map(|c| c.start),
            state_file: spec.state,
            scope: state.scope,
        };
        let mut outputs = BTreeMap::new();
        let ports: BTreeMap<&String, u16> = config
            .ports
            .iter()
            .filter_map(|name| Some((name, *ctx.ports.get(name)?)))
            .collect();
        // `url` is the exposed port's address, else the first port's (SPEC): an internal
        // port listed first (an admin port) is not what the process serves.
        let served = config.expose.as_ref().or(config.ports.first());
        if let Some(port) = served.and_then(|name| ctx.ports.get(name)) {
            outputs.insert("url".to_owned(), json!(format!("http://127.0.0.1:{port}")));
        }
        outputs.insert("ports".to_owned(), json!(ports));
        Ok(Applied {
            outputs,
            secret_outputs: Vec::new(),
            live: crate::to_json(&live, "the process record")?,
            ready,
        })
    }

    fn delete(&self, ctx: ResourceContext<'_>, live: Option<&Value>) -> Result<(), ProviderError> {
        let live = live.map(LiveProcess::parse).transpose()?;
        stop(ctx, live.as_ref())
    }

    fn observe(
        &self,
        ctx: ResourceContext<'_>,
        _config: &ProcessConfig,
        live: &Value,
    ) -> Result<Observation, ProviderError> {
        let live = LiveProcess::parse(live)?;
        let mut recorded = read_state(&state_path(ctx));
        // Whichever supervisor keeps it now: the environment's supervisor may have taken it
        // back since the engine recorded it.
        let mut supervisor = recorded
            .as_ref()
            .map_or(live.supervisor(), |state| state.supervisor);
        if !supervisor.is_alive() {
            let gone = format!("its supervisor (pid {}) is gone", supervisor.pid);
            if recorded.is_none() {
                return Ok(Observation::Missing { reason: gone });
            }
            // Take the environment's processes back now, rather than report them missing and
            // have them replaced (restarted): a new supervisor watches those still running and
            // starts again those that ended meanwhile. What it finds is what is observed.
            if let Err(e) = take_back(ctx) {
                return Ok(Observation::Missing {
                    reason: format!("{gone}, and no new supervisor could start: {e}"),
                });
            }
            recorded = read_state(&state_path(ctx));
            supervisor = recorded
                .as_ref()
                .map_or(live.supervisor(), |state| state.supervisor);
            if !supervisor.is_alive() {
                return Ok(Observation::Missing {
                    reason: format!("{gone}, and no new supervisor took it back"),
                });
            }
        }
        let state = recorded.filter(|s| s.supervisor == supervisor);
        let Some(state) = state else {
            return Ok(Observation::Drifted {
                reason: format!(
                    "its supervisor (pid {}) runs but its state file {} is missing",
                    supervisor.pid,
                    state_path(ctx).display()
                ),
            });
        };
        if let Some(reason) = describe_down(&state) {
            return Ok(Observation::Drifted { reason });
        }
        // A process started before its environment was sandboxed (an upgrade), or under
        // another isolation, is drift: replacing it starts it confined as its environment is.
        // So is one whose spec cannot be read or understood: that proves nothing (it may
        // predate sandboxing).
        if ctx.sandbox.isolation != crate::sandbox::Isolation::None {
            let spec = running_spec(ctx)
                .ok_or_else(|| "it is in neither the state file nor a spec file".to_owned())
                .and_then(|bytes| {
                    serde_json::from_slice::<SupervisorSpec>(&bytes).map_err(|e| e.to_string())
                });
            let spec = match spec {
                Ok(spec) => spec,
                Err(e) => {
                    return Ok(Observation::Drifted {
                        reason: format!(
                            "its supervisor's spec {} cannot be read ({e}), so how it is \
                             confined is unknown: replacing it starts it isolated by {}",
                            spec_path(ctx).display(),
                            ctx.sandbox.isolation
                        ),
                    });
                }
            };
            if !spec
                .confinement
                .as_ref()
                .is_some_and(|c| c.sandbox.confines_as(ctx.sandbox))
            {
                let running = spec.confinement.as_ref().map(|c| &c.sandbox);
                return Ok(Observation::Drifted {
                    reason: match running {
                        // Confined alike but for its limits (one started before them, or
                        // before `[local] max_processes`, `max_memory`, `max_cpu` or
                        // `max_disk` changed).
                        Some(sandbox)
                            if (sandbox.isolation, sandbox.ids, sandbox.landlock)
                                == (
                                    ctx.sandbox.isolation,
                                    ctx.sandbox.ids,
                                    ctx.sandbox.landlock,
                                ) =>
                        {
                            format!(
                                "it runs with {} while its environment's code gets {}: \
                                 replacing it applies that",
                                sandbox.limits(),
                                ctx.sandbox.limits()
                            )
                        }
                        _ => format!(
                            "it runs {} while its environment's code runs isolated by {}: \
                             replacing it applies that",
                            match running.map(|s| s.isolation) {
                                None => "unconfined (started before isolation)".to_owned(),
                                Some(crate::sandbox::Isolation::None) => "unconfined".to_owned(),
                                Some(other) => format!("isolated by {other}"),
                            },
                            ctx.sandbox.isolation
                        ),
                    },
                });
            }
        }
        // The limits are the group's: a lowered one the kernel refused while the group held
        // more (cgroup v1) is drift, which replacing its processes, then writing it, repairs.
        if let Some(group) = &ctx.sandbox.cgroup
            && group.limits_in_force() == Some(false)
        {
            return Ok(Observation::Drifted {
                reason: format!(
                    "its environment's control group does not hold the limits its code gets \
                     ({}): it held more memory than a lowered limit when that was written; \
                     replacing its processes applies it",
                    ctx.sandbox.limits()
                ),
            });
        }
        Ok(Observation::InSync)
    }

    fn wait_ready(
        &self,
        ctx: ResourceContext<'_>,
        config: &ProcessConfig,
        applied: &Applied,
        deadline: Instant,
    ) -> Result<(), ProviderError> {
        let resolved = resolve(ctx, config)?;
        // The record must be one of ours, though the supervisor it names may have been
        // replaced since (see the state file below).
        LiveProcess::parse(&applied.live)?;
        let started = Instant::now();
        let deadline = match config.ready_timeout {
            Some(timeout) => deadline.min(started + timeout),
            None => deadline,
        };
        let shown = command::show_command(&config.command);
        let log_file = log_path(ctx.dirs, ctx.resource);
        let fail = |message: String, retry: Retry| ProviderError::Failed {
            message,
            log_tail: logfile::tail(&log_file, TAIL_LINES),
            retry,
        };
        let mut attempt: u32 = 0;
        let mut running_since = None;
        loop {
            // The state file names whichever supervisor keeps it now (one that took it back
            // after the first died included).
            let state = read_state(&state_path(ctx)).filter(|s| s.supervisor.is_alive());
            let Some(state) = state else {
                return Err(fail(
                    format!("the supervisor of process `{shown}` exited before it became ready"),
                    Retry::Retryable,
                ));
            };
            let last_exit = state.last_exit.as_deref().unwrap_or("unknown");
            if state.phase == Phase::Exited {
                return Err(fail(
                    format!(
                        "process `{shown}` exited with {last_exit} before it became ready, and \
                         its restart policy does not start it again"
                    ),
                    Retry::Terminal,
                ));
            }
            if state.exits >= CRASHES_BEFORE_READY {
                return Err(fail(
                    format!(
                        "process `{shown}` crashed {} times before it became ready (last: \
                         {last_exit})",
                        state.exits
                    ),
                    Retry::Terminal,
                ));
            }
            let last_problem = match describe_down(&state) {
                Some(down) => down,
                None => match &resolved.health {
                    // Nothing to check: ready once running. Unless its exit would be final
                    // (its policy does not restart it): then only once it has stayed up a
                    // moment, so that a program that exits at once is not called ready.
                    None if config.restart == RestartPolicy::Always => return Ok(()),
                    None => {
                        let since = *running_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= SETTLE_WITHOUT_RESTART {
                            return Ok(());
                        }
                        "it has not run long enough yet to be called ready".to_owned()
                    }
                    Some(health) => {
                        // No longer than the wait has left: a check's own `timeout` is the
                        // repository's, and a server that accepts and never answers would
                        // hold the apply (its lock, a controller's worker) that long.
                        let left = deadline.saturating_duration_since(Instant::now());
                        match health.check.check(
                            health.timeout.min(left.max(Duration::from_millis(100))),
                            &resolved.cwd,
                            &resolved.env,
                            &Confinement::of(ctx),
                        ) {
                            // Only if the process the check answered for still runs: a
                            // program that exits at once can pass a check made meanwhile
                            // (a `command` check needs no port of it).
                            Ok(())
                                if read_state(&state_path(ctx)).is_some_and(|now| {
                                    now.child == state.child && describe_down(&now).is_none()
                                }) =>
                            {
                                return Ok(());
                            }
                            Ok(()) => "it exited right after its health check passed".to_owned(),
                            Err(problem) => problem,
                        }
                    }
                },
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(fail(
                    format!(
                        "process `{shown}` did not become ready within {}: {last_problem}",
                        crate::duration::show(now - started)
                    ),
                    Retry::Retryable,
                ));
            }
            let interval = resolved
                .health
                .as_ref()
                .map_or(Duration::from_millis(100), |h| h.interval);
            // Most services are up within a few hundred milliseconds: check quickly at first,
            // then back off to the configured interval.
            let ramp = Duration::from_millis(25) * 2u32.saturating_pow(attempt.min(10));
            attempt += 1;
            std::thread::sleep(interval.min(ramp).min(deadline - now));
        }
    }
}

/// Whether the process of `state` (its supervisor's record, the supervisor alive) counts as
/// ready when it has no health check: it runs, has not crashed too often, and its policy
/// restarts it (the caller checks that). `wait_ready` decides the same from the state file.
fn ready_without_check(state: &SupervisorState) -> bool {
    // Not down: running (so neither exited nor backing off), past its exec.
    state.exits < CRASHES_BEFORE_READY && describe_down(state).is_none()
}

/// Why the child of a live supervisor is not running, or `None` if it is.
fn describe_down(state: &SupervisorState) -> Option<String> {
    let restarts = match state.restarts {
        1 => "1 restart".to_owned(),
        n => format!("{n} restarts"),
    };
    let history = match &state.last_exit {
        Some(last_exit) => format!(" (last exit: {last_exit}; {restarts} so far)"),
        None => String::new(),
    };
    match state.phase {
        // Forked, its program not started yet (or failing to): not up until its supervisor
        // writes that it is past its exec, or, for a child named until then, until it no
        // longer bears that name.
        Phase::Running if state.exec_pending => Some("the process is starting".to_owned()),
        Phase::Running => match state.child.map_or(Liveness::Gone, |c| c.liveness()) {
            Liveness::Held if state.named_until_exec => Some("the process is starting".to_owned()),
            Liveness::Held | Liveness::Running => None,
            Liveness::Gone => Some(format!(
                "the process has just exited and its supervisor is restarting it{history}"
            )),
        },
        Phase::Backoff => Some(format!(
            "the process is not running: restarting after {} ({restarts} so far)",
            state.last_exit.as_deref().unwrap_or("an unknown status")
        )),
        Phase::Starting => Some("the process is starting".to_owned()),
        Phase::Exited => Some(format!(
            "the process exited with {} and its restart policy does not restart it",
            state.last_exit.as_deref().unwrap_or("an unknown status")
        )),
    }
}

/// Asks the environment's supervisor (starting one if none answers) to start the process of
/// `spec` (`bytes`, as JSON); returns the state it recorded. The spec goes with the request,
/// and the supervisor keeps it in the state file it writes anyway (one file per start); one
/// too large for that, or a supervisor from before, gets it in the spec file.
fn ask_start(
    ctx: ResourceContext<'_>,
    spec: &SupervisorSpec,
    bytes: &[u8],
) -> Result<SupervisorState, ProviderError> {
    let shown = command::show_command(&spec.command);
    let tail = || logfile::tail(&spec.log, TAIL_LINES);
    let unreachable = |e: SupervisorUnreachable| {
        // A start that reached a supervisor which then did not answer in time may run, and
        // be restarted: nothing of it may stay.
        let _ = stop(ctx, None);
        match e {
            SupervisorUnreachable::Config(e) => e,
            SupervisorUnreachable::Failed(message) => ProviderError::Failed {
                message: format!("{message} for process `{shown}`"),
                log_tail: tail(),
                retry: Retry::Retryable,
            },
        }
    };
    // At most `CARRIED_MAX`, which fits the socket's buffer whole: a supervisor from before,
    // which reads the request's line and no more, still answers.
    let carried = if bytes.len() <= environment::CARRIED_MAX {
        let request = format!("start {} +{}", ctx.resource, bytes.len());
        Some(ask_supervisor(ctx, &request, bytes).map_err(unreachable)?)
            // A supervisor from before knows only `start RESOURCE` (and says so).
            .filter(|answer| answer.error() != Some(environment::REFUSED_BEFORE_CARRYING))
    } else {
        None
    };
    let answer = match carried {
        Some(answer) => answer,
        None => {
            // The spec holds the child's environment, secrets included: its owner's eyes
            // only.
            let spec_file = spec_path(ctx);
            crate::atomic_write_runtime(&spec_file, bytes, 0o600)
                .map_err(io_error(format!("failed to write {}", spec_file.display())))?;
            ask_supervisor(ctx, &format!("start {}", ctx.resource), &[]).map_err(unreachable)?
        }
    };
    if let Some(why) = answer.error() {
        let _ = stop(ctx, None);
        return Err(ProviderError::Failed {
            message: format!("the supervisor could not start process `{shown}`: {why}"),
            log_tail: tail(),
            retry: Retry::Retryable,
        });
    }
    // The supervisor answers with what it recorded (one from before answers `ok` alone: its
    // state file says).
    let recorded = match answer.recorded() {
        Some(state) => Some(state),
        None => read_state(&spec.state).filter(|s| s.supervisor.is_alive()),
    };
    match recorded {
        Some(state) => Ok(state),
        None => {
            let _ = stop(ctx, None);
            Err(ProviderError::Failed {
                message: format!(
                    "the supervisor of process `{shown}` answered but recorded nothing in {}",
                    spec.state.display()
                ),
                log_tail: tail(),
                retry: Retry::Retryable,
            })
        }
    }
}

/// Starts a supervisor for the environment if none runs; it takes back every process whose
/// supervisor is gone (this one's included).
fn take_back(ctx: ResourceContext<'_>) -> Result<(), String> {
    match ask_supervisor(ctx, &format!("adopt {}", ctx.resource), &[]) {
        Ok(answer) => answer.error().map_or(Ok(()), |e| Err(e.to_owned())),
        Err(SupervisorUnreachable::Config(e)) => Err(e.to_string()),
        Err(SupervisorUnreachable::Failed(message)) => Err(message),
    }
}

/// Why the environment's supervisor could not be asked.
enum SupervisorUnreachable {
    /// No supervisor program is configured.
    Config(ProviderError),
    /// It could not be started or did not answer.
    Failed(String),
}

fn ask_supervisor(
    ctx: ResourceContext<'_>,
    request: &str,
    body: &[u8],
) -> Result<Answer, SupervisorUnreachable> {
    let Some((program, args)) = ctx.settings.supervisor.split_first() else {
        return Err(SupervisorUnreachable::Config(ProviderError::Config(
            "process: no supervisor program is configured (settings.supervisor)".to_owned(),
        )));
    };
    environment::ask_starting(&ctx.dirs.run, program, args, request, body, REQUEST_TIMEOUT).map_err(
        |e| {
            SupervisorUnreachable::Failed(match e {
                StartError::Spawn(e) => format!(
                    "failed to start the supervisor {}: {e}",
                    Path::new(program).display()
                ),
                StartError::Io(e) => format!(
                    "failed to talk to the supervisor at {}: {e}",
                    ctx.dirs.run.join(environment::SOCKET).display()
                ),
                StartError::Silent(waited) => format!(
                    "the supervisor did not answer at {} within {}; check the supervisor \
                     program (settings.supervisor) runs `{}`",
                    ctx.dirs.run.join(environment::SOCKET).display(),
                    crate::duration::show(waited),
                    ctx.settings
                        .supervisor
                        .iter()
                        .map(|a| a.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            })
        },
    )
}

/// Starts the supervisor program (`program args arg`) so that it is no process's child: in a
/// new session, with its standard streams on `/dev/null` (a CLI whose output is captured must
/// not wait for it), and double-forked, so that its exit leaves no zombie in the engine and it
/// is re-parented to init at once.
pub(super) fn spawn_detached(
    program: &std::ffi::OsStr,
    args: &[std::ffi::OsString],
    arg: &Path,
) -> std::io::Result<()> {
    let mut command = Command::new(program);
    command
        .args(args)
        .arg(arg)
        // The supervisor outlives us and its `/proc/<pid>/environ` outlives nothing: it gets
        // none of the engine's environment (credentials: forge tokens, database URLs), only
        // a PATH. Everything its children need is in their specs.
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (close_range, setsid, fork, _exit); it allocates nothing.
    unsafe {
        command.pre_exec(|| {
            // Descriptors the engine inherited without close-on-exec (a CI harness's pipes, a
            // jobserver) must not be held open for the supervisor's whole life: whoever waits
            // for them to close would wait for the process. Marking them close-on-exec rather
            // than closing them keeps std's own exec-error pipe working. Failure (a kernel
            // before 5.11) only loses this hygiene.
            nix::libc::syscall(
                nix::libc::SYS_close_range,
                3,
                u32::MAX,
                nix::libc::CLOSE_RANGE_CLOEXEC,
            );
            nix::unistd::setsid()?;
            // SAFETY: the parent side only calls `_exit`; the child side goes on to exec.
            match nix::unistd::fork()? {
                nix::unistd::ForkResult::Parent { .. } => nix::libc::_exit(0),
                nix::unistd::ForkResult::Child => Ok(()),
            }
        });
    }
    // `spawn` returns once the grandchild has exec'd (or failed to: its error comes back the
    // same way); the intermediate process has exited by then.
    let mut intermediate = command.spawn()?;
    intermediate.wait()?;
    Ok(())
}

/// Stops everything of the resource: no supervisor may start it again (its spec goes first,
/// with the state file that may carry it),
/// the environment's supervisor lets go of it, a per-resource supervisor (a home from before)
/// is stopped, then whatever survives of the children's process groups; removes its files.
fn stop(ctx: ResourceContext<'_>, live: Option<&LiveProcess>) -> Result<(), ProviderError> {
    let state_file = state_path(ctx);
    let spec_file = spec_path(ctx);
    let set_aside = ctx.dirs.run.join(format!("{}.json.deleting", ctx.resource));
    let before = read_state(&state_file);
    // What an earlier stop, interrupted, set aside.
    let earlier = read_state(&set_aside);
    let grace = before
        .as_ref()
        .map(|s| Duration::from_millis(s.stop_grace_ms))
        .unwrap_or(ctx.settings.stop_grace);
    // Whether it removed the file (`false`: there was none).
    let remove = |file: &Path| match std::fs::remove_file(file) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ProviderError::Io {
            context: format!("failed to remove {}", file.display()),
            source: e,
        }),
    };
    // A supervisor restarts nothing whose spec is gone, and starts nothing without one: the
    // spec file goes, and the state file, which carries the spec of a start that sent it
    // (a supervisor then only replaces that file, never makes it again). The state file is
    // set aside rather than removed: it names the child last recorded (restarted, maybe,
    // since `before` was read), which a supervisor killed before the `release` below would
    // never name; it goes once that child is stopped.
    let spec_existed = remove(&spec_file)?;
    let state_existed = match std::fs::rename(&state_file, &set_aside) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            return Err(ProviderError::Io {
                context: format!("failed to set {} aside", state_file.display()),
                source: e,
            });
        }
    };
    if !spec_existed && !state_existed && before.is_none() && earlier.is_none() && live.is_none() {
        // Nothing of it was ever started (a supervisor records a child in the state file
        // before it runs, and starts nothing without a spec): no supervisor to ask.
        return Ok(());
    }
    // Only a supervisor already running is asked: one started now would have nothing to
    // let go of.
    let released = environment::ask(
        &ctx.dirs.run,
        &format!("release {}", ctx.resource),
        REQUEST_TIMEOUT,
    )
    .map_err(io_error(format!(
        "failed to ask the supervisor at {} to let go of `{}`",
        ctx.dirs.run.join(environment::SOCKET).display(),
        ctx.resource
    )))?;

    // Per-resource supervisors (a home from before) stop their child on SIGTERM.
    let mut supervisors: Vec<ProcessIdentity> = live
        .filter(|l| l.scope == Scope::Resource)
        .map(LiveProcess::supervisor)
        .into_iter()
        .collect();
    supervisors.extend(
        before
            .as_ref()
            .filter(|s| s.scope == Scope::Resource)
            .map(|s| s.supervisor),
    );
    supervisors.dedup();
    for supervisor in &supervisors {
        if supervisor.signal(Signal::SIGTERM)
            && !wait_until(Instant::now() + grace + Duration::from_secs(5), || {
                !supervisor.is_alive()
            })
        {
            supervisor.signal(Signal::SIGKILL);
            wait_until(Instant::now() + Duration::from_secs(5), || {
                !supervisor.is_alive()
            });
        }
    }

    // The state file names the child last started (a per-resource supervisor that stopped
    // cleanly removed it; one that was SIGKILLed left it).
    let after = read_state(&state_file);
    let last = read_state(&set_aside);
    let mut children: Vec<ProcessIdentity> = [
        before.as_ref().and_then(|s| s.child),
        after.as_ref().and_then(|s| s.child),
        earlier.as_ref().and_then(|s| s.child),
        last.as_ref().and_then(|s| s.child),
        live.and_then(LiveProcess::child),
        // The supervisor may have restarted it after `before` was read: the child it let go
        // of is the one running now.
        released.as_ref().and_then(Answer::released_child),
    ]
    .into_iter()
    .flatten()
    .collect();
    children.sort_by_key(|c| (c.pid, c.start));
    children.dedup();
    for child in &children {
        child.stop_group(grace);
    }
    remove(&state_file)?;
    remove(&set_aside)?;
    // The last process of the environment: its supervisor exits; a destroy leaves nothing.
    if let Some(supervisor) = released
        .as_ref()
        .filter(|a| a.exits())
        .and_then(|a| a.supervisor)
    {
        wait_until(Instant::now() + Duration::from_secs(5), || {
            !supervisor.is_alive()
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_child_recorded_before_its_exec_is_starting_until_it_gets_there() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        let held = spawn::test_held(
            spawn::test_program(&["sleep", "30"], dir.path()),
            null.as_fd(),
        );
        let child = ProcessIdentity::of_child(held.pid()).expect("the child exists");
        // What an environment's supervisor writes once, before the child may exec.
        let mut state =
            SupervisorState::starting(ProcessIdentity::current(), 1000, Scope::Environment);
        state.phase = Phase::Running;
        state.child = Some(child);
        state.named_until_exec = true;
        assert_eq!(
            describe_down(&state).as_deref(),
            Some("the process is starting"),
            "held before its exec: not up"
        );
        let mut launching = held.go();
        launching
            .wait_outcome(Duration::from_secs(10))
            .expect("the outcome is known within 10 s")
            .expect("the exec happens");
        assert_eq!(
            describe_down(&state),
            None,
            "the same file, once the child is past its exec: up"
        );
        // What a supervisor from before (or one that could not name the child) writes: not
        // up, whatever the name says, until it writes the file again.
        let mut unnamed = state.clone();
        unnamed.named_until_exec = false;
        unnamed.exec_pending = true;
        assert_eq!(
            describe_down(&unnamed).as_deref(),
            Some("the process is starting")
        );
        spawn::test_kill_and_reap(child.pid);
        assert!(
            describe_down(&state).is_some_and(|why| why.contains("has just exited")),
            "and down once it is gone"
        );
    }
}
