//! What every process supervisor shares (the spec the engine sends or writes, the state file
//! the supervisor keeps, which carries a spec sent), and the per-resource supervisor of homes from before the environment's
//! supervisor ([`super::environment`]).
//!
//! `slipway __supervise <path>` runs one or the other: given the environment's run directory,
//! the environment's supervisor, which forks every process of the environment itself; given a
//! spec file (`<run>/<resource>.spec.json`, how the engine started supervisors before), a
//! supervisor of that one resource, which keeps one command running the way s6-supervise or
//! conmon do. The engine no longer starts the latter; it stays so that a home upgraded while
//! such supervisors run keeps working (their state files have `scope: resource`, and are
//! stopped by SIGTERM, as they always were) and can be tested.
//!
//! The per-resource supervisor reads a [`SupervisorSpec`], records itself in the state file,
//! then loops: start the child in its own session and process group with its output copied
//! into the resource log; when the child exits, record how, and start it again after a
//! backoff (per the restart policy). On SIGTERM it stops the child's process group (SIGTERM,
//! then SIGKILL after the grace period), removes the state file and exits 0.
//!
//! # Guarantees
//! - The state file is replaced atomically on every change, and always names the current child
//!   by pid *and* start time, so that if the supervisor itself is SIGKILLed, `delete` can still
//!   find and stop the child's group without risking a reused pid, and the next supervisor can
//!   take the child back.
//! - Before a restart, whatever the previous child left in its process group is killed, so a
//!   stale grandchild cannot hold the port the new child needs.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::RestartPolicy;
use crate::command::describe_exit;
use crate::logfile::{CappedLog, SharedLog, copy_to_log};
use crate::procinfo::ProcessIdentity;
use crate::sandbox::Confinement;

/// Everything a supervisor needs to know: sent by `create` with its `start` request and kept
/// in the state file ([`record_state`]), or written to `<run>/<resource>.spec.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SupervisorSpec {
    /// Resource name, for log notes.
    pub resource: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// The child's complete environment.
    pub env: BTreeMap<String, String>,
    /// The child's working directory.
    pub cwd: PathBuf,
    /// The resource log.
    pub log: PathBuf,
    /// Rotation size of the log.
    pub log_max_bytes: u64,
    /// Where the supervisor keeps its [`SupervisorState`].
    pub state: PathBuf,
    /// When to restart the child.
    pub restart: RestartPolicy,
    /// Time between SIGTERM and SIGKILL when stopping the child.
    pub stop_grace_ms: u64,
    /// Secret values to keep out of the log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
    /// The identity and limits the child runs under, applied on every start (absent in specs
    /// written before sandboxes: unconfined, as they were).
    #[serde(default)]
    pub confinement: Option<Confinement>,
}

/// What the supervisor is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// Recorded itself; the first child is not started yet.
    Starting,
    /// The child is running.
    Running,
    /// The child exited (or failed to start) and will be started again.
    Backoff,
    /// The child exited and the restart policy says not to start it again.
    Exited,
}

/// The supervisor's state file, `<run>/<resource>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SupervisorState {
    /// The supervisor itself.
    pub supervisor: ProcessIdentity,
    /// The current (or last) child, which leads its own session and process group.
    pub child: Option<ProcessIdentity>,
    /// What it is doing.
    pub phase: Phase,
    /// How many times the child was started again after exiting.
    pub restarts: u32,
    /// How many times the child exited or failed to start.
    pub exits: u32,
    /// How the last child ended: `"exit code 1"`, `"signal 9 (SIGKILL)"`, or why it could
    /// not start.
    pub last_exit: Option<String>,
    /// Copied from the spec, for `delete`.
    pub stop_grace_ms: u64,
    /// Which kind of supervisor keeps it (absent in state files from before, and still in
    /// those of per-resource supervisors: `resource`).
    #[serde(default, skip_serializing_if = "Scope::is_resource")]
    pub scope: Scope,
    /// The child is recorded (`Running`, so that a successor knows it) but has not reached its
    /// `exec` yet, and its supervisor writes the file again once it knows the outcome. Not
    /// ready, whatever else holds, until then. Written by supervisors before 2014eac, and by
    /// one that could not name the child (see `named_until_exec`). Absent: known.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exec_pending: bool,
    /// The child was recorded before its `exec`, and the supervisor does not write the file
    /// again when the exec succeeds: the child is past its exec once it no longer bears
    /// [`crate::procinfo::HELD_NAME`], and not ready before. A failed exec is written (an
    /// exit). A field of its own, so that a reader from before, which knows only
    /// `exec_pending`, does not wait for a second write that never comes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub named_until_exec: bool,
}

impl SupervisorState {
    /// The state of a supervisor that has started nothing yet.
    pub fn starting(supervisor: ProcessIdentity, stop_grace_ms: u64, scope: Scope) -> Self {
        SupervisorState {
            supervisor,
            child: None,
            phase: Phase::Starting,
            restarts: 0,
            exits: 0,
            last_exit: None,
            stop_grace_ms,
            scope,
            exec_pending: false,
            named_until_exec: false,
        }
    }
}

/// Which kind of supervisor keeps a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Scope {
    /// A supervisor of this one resource (`slipway __supervise <spec>`), of a home from before
    /// the environment's supervisor: SIGTERM stops it and its child.
    #[default]
    Resource,
    /// The environment's supervisor (`slipway __supervise <run dir>`), asked over its socket.
    Environment,
}

impl Scope {
    fn is_resource(&self) -> bool {
        *self == Scope::Resource
    }
}

/// Reads a state file; `None` if it does not exist or is unreadable (a supervisor that died
/// mid-write leaves the previous complete file, thanks to the atomic rename).
pub(crate) fn read_state(path: &Path) -> Option<SupervisorState> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Replaces a state file atomically. Not synced to disk: what it describes (running
/// processes) does not outlive the machine either.
pub(crate) fn write_state(path: &Path, state: &SupervisorState) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).expect("a supervisor state serializes");
    crate::atomic_write_runtime(path, &bytes, 0o666)
}

/// The spec a state file carries (`spec`, as the engine sent it: see [`record_state`]), if
/// it carries one.
pub(crate) fn spec_in_state(path: &Path) -> Option<Vec<u8>> {
    #[derive(Deserialize)]
    struct Carried<'a> {
        #[serde(borrow)]
        spec: Option<&'a serde_json::value::RawValue>,
    }
    let bytes = std::fs::read(path).ok()?;
    let carried: Carried<'_> = serde_json::from_slice(&bytes).ok()?;
    carried.spec.map(|raw| raw.get().as_bytes().to_vec())
}

/// Whether [`record_state`] may make the state file or only replace it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Replace {
    /// Made if missing: the engine asked for this start.
    Any,
    /// Only if it still exists: the engine removes it first when it deletes the resource, so
    /// a restart or a takeover racing the delete must not bring it back.
    Existing,
}

impl Replace {
    /// [`Replace::Any`] when the file may be made, [`Replace::Existing`] otherwise.
    pub fn making(may_create: bool) -> Replace {
        if may_create {
            Replace::Any
        } else {
            Replace::Existing
        }
    }
}

/// Replaces a state file atomically, carrying `spec` (the JSON the engine sent with `start`,
/// as `spec`) so that a successor can take the process back from this one file. It holds the
/// child's environment, secrets included: `0600`. Not synced to disk, as [`write_state`].
///
/// # Errors
/// `NotFound` when `how` is [`Replace::Existing`] and the file is gone: its resource is being
/// deleted.
pub(crate) fn record_state(
    path: &Path,
    state: &SupervisorState,
    spec: &[u8],
    how: Replace,
) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(state).expect("a supervisor state serializes");
    // The state is a JSON object: `spec` goes in before its closing brace, as sent.
    while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
        bytes.pop();
    }
    if bytes.pop() != Some(b'}') {
        return Err(io::Error::other("a supervisor state is not a JSON object"));
    }
    bytes.extend_from_slice(b",\n  \"spec\": ");
    bytes.extend_from_slice(spec);
    bytes.extend_from_slice(b"\n}");
    match how {
        Replace::Any => crate::atomic_write_runtime(path, &bytes, 0o600),
        Replace::Existing => crate::exchange_existing(path, &bytes, 0o600),
    }
}

/// The first backoff; doubled after each quick exit, up to [`MAX_BACKOFF`].
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between two starts.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A child that ran at least this long is considered to have been healthy: its next backoff
/// starts over from [`FIRST_BACKOFF`].
pub(crate) const STABLE_UPTIME: Duration = Duration::from_secs(10);
/// How often the supervisor looks at its child and at the SIGTERM flag.
const TICK: Duration = Duration::from_millis(25);

/// Runs a supervisor; returns the process exit code (0 after a clean stop). Meant to be the
/// whole of a process's life: `slipway __supervise <path>`. `path` is an environment's run
/// directory (the environment's supervisor, [`super::environment`]) or, as homes from before
/// it started them, one resource's spec file.
pub fn supervise(path: &Path) -> i32 {
    if path.is_dir() {
        return super::environment::run(path);
    }
    supervise_resource(path)
}

/// Detaches a supervisor from whoever started it and installs its signal handlers; returns
/// the flag SIGTERM and SIGINT raise, or the exit code when a handler cannot be installed.
pub(crate) fn detach() -> Result<Arc<AtomicBool>, i32> {
    // Leave the session and process group of whoever started us, so that a Ctrl-C or a
    // group kill aimed at the CLI does not reach the supervisor.
    if nix::unistd::getsid(None).ok() != Some(nix::unistd::getpid()) {
        let _ = nix::unistd::setsid();
    }
    let stop = Arc::new(AtomicBool::new(false));
    // SIGHUP gets a handler that does nothing: a supervisor has no terminal to lose, and a
    // handler (unlike SIG_IGN) is not inherited by the child across exec.
    let hangup = Arc::new(AtomicBool::new(false));
    for (signal, flag) in [
        (signal_hook::consts::SIGTERM, &stop),
        (signal_hook::consts::SIGINT, &stop),
        (signal_hook::consts::SIGHUP, &hangup),
    ] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(flag)) {
            eprintln!("slipway supervisor: failed to handle signal {signal}: {e}");
            return Err(2);
        }
    }
    Ok(stop)
}

/// The per-resource supervisor of the spec at `spec_path`.
fn supervise_resource(spec_path: &Path) -> i32 {
    let stop = match detach() {
        Ok(stop) => stop,
        Err(code) => return code,
    };
    let spec: SupervisorSpec = match std::fs::read(spec_path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
    {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!(
                "slipway supervisor: cannot read spec {}: {e}",
                spec_path.display()
            );
            return 2;
        }
    };
    let mut supervisor = Supervisor {
        state: SupervisorState::starting(
            ProcessIdentity::current(),
            spec.stop_grace_ms,
            Scope::Resource,
        ),
        log: None,
        stop,
        spec,
    };
    // First thing: the state file is how `create` learns that we are up, and how `delete`
    // finds us.
    if let Err(e) = supervisor.save() {
        eprintln!("slipway supervisor: cannot write state: {e}");
        return 2;
    }
    match CappedLog::open(&supervisor.spec.log, supervisor.spec.log_max_bytes)
        .map(|log| log.redacting(&supervisor.spec.redact))
    {
        Ok(log) => supervisor.log = Some(Arc::new(std::sync::Mutex::new(log))),
        Err(e) => {
            // The state file is left behind on purpose: it tells `create` why we stopped.
            supervisor.state.phase = Phase::Exited;
            supervisor.state.last_exit = Some(format!(
                "the supervisor cannot open log {}: {e}",
                supervisor.spec.log.display()
            ));
            let _ = supervisor.save();
            return 2;
        }
    }
    supervisor.run();
    let _ = std::fs::remove_file(&supervisor.spec.state);
    0
}

struct Supervisor {
    spec: SupervisorSpec,
    state: SupervisorState,
    log: Option<SharedLog>,
    stop: Arc<AtomicBool>,
}

impl Supervisor {
    fn save(&self) -> io::Result<()> {
        write_state(&self.spec.state, &self.state)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn note(&self, message: &str) {
        if let Some(log) = &self.log {
            log.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .note(message);
        }
    }

    fn grace(&self) -> Duration {
        Duration::from_millis(self.spec.stop_grace_ms)
    }

    /// The supervision loop; returns once asked to stop, with the child's group stopped.
    fn run(&mut self) {
        let mut backoff = FIRST_BACKOFF;
        while !self.stopping() {
            let started = Instant::now();
            let clean_exit = match self.start_child() {
                Ok((mut child, identity)) => {
                    self.state.child = identity;
                    self.state.phase = Phase::Running;
                    let _ = self.save();
                    let Some(status) = self.watch(&mut child, identity) else {
                        // Asked to stop; the child's group is stopped.
                        return;
                    };
                    let how = describe_exit(status);
                    self.note(&format!("process exited with {how}"));
                    self.state.last_exit = Some(how);
                    status.success()
                }
                Err(e) => {
                    let why = format!("failed to start `{}`: {e}", self.spec.command[0]);
                    self.note(&why);
                    self.state.child = None;
                    self.state.last_exit = Some(why);
                    false
                }
            };
            self.state.exits += 1;
            let restart = match self.spec.restart {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !clean_exit,
                RestartPolicy::Never => false,
            };
            if !restart {
                self.state.phase = Phase::Exited;
                let _ = self.save();
                self.note("not restarting it (restart policy)");
                while !self.stopping() {
                    std::thread::sleep(TICK);
                }
                return;
            }
            backoff = if started.elapsed() >= STABLE_UPTIME {
                FIRST_BACKOFF
            } else {
                backoff
            };
            self.state.phase = Phase::Backoff;
            let _ = self.save();
            self.note(&format!("restarting in {}", crate::duration::show(backoff)));
            let until = Instant::now() + backoff;
            while !self.stopping() && Instant::now() < until {
                std::thread::sleep(TICK.min(until.saturating_duration_since(Instant::now())));
            }
            if self.stopping() {
                return;
            }
            self.state.restarts += 1;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn start_child(&self) -> io::Result<(Child, Option<ProcessIdentity>)> {
        let (reader, writer) = io::pipe()?;
        let mut command = Command::new(&self.spec.command[0]);
        command
            .args(&self.spec.command[1..])
            .env_clear()
            .envs(&self.spec.env)
            .current_dir(&self.spec.cwd)
            .stdin(Stdio::null())
            .stdout(writer.try_clone()?)
            .stderr(writer);
        let spawned = match &self.spec.confinement {
            Some(confinement) => confinement.apply(&mut command)?.spawn(&mut command),
            None => command.spawn(),
        };
        // Close our copies of the pipe's write end, or the copier never sees end of file.
        drop(command);
        let child = spawned?;
        let identity = ProcessIdentity::of_child(child.id());
        self.note(&format!("process started (pid {})", child.id()));
        if let Some(log) = &self.log {
            let log = Arc::clone(log);
            std::thread::spawn(move || copy_to_log(reader, &log, |_| {}));
        }
        Ok((child, identity))
    }

    /// Waits for the child to exit (then kills what it left in its group and returns how it
    /// exited), or for a stop request (then stops its group and returns `None`).
    fn watch(
        &mut self,
        child: &mut Child,
        identity: Option<ProcessIdentity>,
    ) -> Option<std::process::ExitStatus> {
        loop {
            if self.stopping() {
                self.note("stopping");
                if let Some(identity) = identity {
                    identity.stop_group(self.grace());
                }
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            match child.try_wait() {
                Ok(Some(status)) => {
                    if let Some(identity) = identity {
                        identity.signal_group(Signal::SIGKILL);
                    }
                    return Some(status);
                }
                Ok(None) => std::thread::sleep(TICK),
                Err(_) => {
                    // Cannot happen for a child of ours; treat it as a failed exit.
                    let _ = child.kill();
                    return Some(
                        child
                            .wait()
                            .unwrap_or_else(|_| std::process::ExitStatus::from_raw(1 << 8)),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> SupervisorState {
        SupervisorState::starting(ProcessIdentity::current(), 2000, Scope::Environment)
    }

    #[test]
    fn a_state_file_carries_the_spec_as_sent_and_reads_as_a_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("web.json");
        let spec = br#"{"command":["sleep","1"],"env":{"A":"b \"quoted\" \n"}}"#;
        record_state(&path, &state(), spec, Replace::Any).expect("made");
        assert_eq!(read_state(&path), Some(state()), "it reads as the state");
        assert_eq!(
            spec_in_state(&path).as_deref(),
            Some(&spec[..]),
            "the spec comes back byte for byte"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "it holds secrets");
        // A state without a spec (a supervisor from before, or a per-resource one).
        write_state(&path, &state()).expect("written");
        assert_eq!(spec_in_state(&path), None);
    }

    #[test]
    fn a_replacement_never_makes_a_state_file_the_engine_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("web.json");
        let err = record_state(&path, &state(), b"{}", Replace::Existing)
            .expect_err("nothing to replace");
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert!(!path.exists(), "not made");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert!(left.is_empty(), "no temporary file left: {left:?}");

        record_state(&path, &state(), b"{}", Replace::Any).expect("made");
        let mut next = state();
        next.restarts = 3;
        record_state(&path, &next, b"{\"v\":2}", Replace::Existing).expect("replaced");
        assert_eq!(read_state(&path).map(|s| s.restarts), Some(3));
        assert_eq!(spec_in_state(&path).as_deref(), Some(&b"{\"v\":2}"[..]));
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("web.json")], "one file");
    }
}
