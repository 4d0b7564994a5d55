//! The supervisor of one environment's processes: one long-lived process per environment
//! (`slipway __supervise <run dir>`) that starts every `process` child of the environment
//! itself, watches them (a pidfd each, in one `poll` loop, on one thread), copies their output
//! into their logs and restarts them with backoff. Starting a process costs a clone and an exec
//! of the program, not an exec of Slipway; a hundred processes share one supervisor.
//!
//! Requests are served as they arrive, several at once: a `start` clones its child
//! ([`super::spawn`]), records it, lets it exec, and is answered (`ok` and the state recorded)
//! once the loop learns that the exec happened or failed; meanwhile the loop reads and serves
//! the other requests, so the exec of one child overlaps the start of the next. Everything a
//! start needs of the confinement that can be made once (the Landlock ruleset, the seccomp
//! filter) is kept while the paths it names resolve to the same files. A process's log file is
//! made by the first thing written to it (a process that prints nothing costs no file; its
//! start is noted when something else is written).
//!
//! # Who may talk to it
//! Its control channel is a unix socket, `<run>/supervise.sock`, inside the environment's
//! `run/` directory (`0700`, the engine's). A request is a line: `start R +LENGTH` followed by
//! R's spec (LENGTH bytes of JSON, at most [`CARRIED_MAX`]), `adopt R`, `release R`, or
//! `start R` for a spec the engine wrote beside it (`<run>/<resource>.spec.json`, `0600`: one
//! larger than the engine sends, or an engine from before). The spec sent is kept in R's state
//! file (`0600`, it holds the child's environment), which the supervisor writes anyway: one
//! file per start. Only the engine's uid reaches it:
//! - in uid mode the environment's code runs as another uid, which cannot search `run/`;
//! - in landlock mode it runs as the engine's uid, but its seccomp filter refuses every
//!   `socket(AF_UNIX)`, and Landlock grants it nothing under `run/` to read or plant;
//! - the supervisor also checks each caller's uid (`SO_PEERCRED`) and answers only its own
//!   uid's (and root's) requests, and the client checks the server's.
//!
//! With isolation `none` the code runs as the engine and can do anything the engine can,
//! this included (as it always could edit the specs).
//!
//! # Guarantees
//! - One supervisor per environment: it holds an exclusive `flock` of the run directory for
//!   its whole life (the kernel releases it when the process dies, however it dies).
//! - Its death, SIGKILL included, does not stop its processes: each child leads its own
//!   session, and writes its output into a pipe that the child itself holds open for reading
//!   too (its standard output and error are the pipe reopened read-write), so a write never
//!   fails for want of a reader: it waits once the pipe's buffer (raised to 1 MiB where
//!   allowed) is full, until a supervisor reads again. The next supervisor reads the same
//!   pipe by opening the child's `/proc/<pid>/fd/1`.
//! - The next supervisor (started by the engine's next request: a create, or an observe that
//!   found the supervisor gone, e.g. the controller's drift pass; or woken ahead by an apply
//!   about to start processes, [`wake`]) takes back every child whose
//!   state file names a supervisor that is gone and that still runs, identified by pid *and*
//!   start time, and starts again (per its restart policy) those that ended meanwhile. It
//!   cannot reap or read the exit status of a child it adopted: it learns of its death through
//!   a pidfd (`pidfd_open`, which works for any process), or, on a kernel without pidfds, by
//!   polling the pid and start time every 100 ms. A child still held before its exec (it
//!   bears `procinfo::HELD_NAME`) when its supervisor died exits by itself without running
//!   anything: the next supervisor waits for that, and starts it again, rather than take it
//!   back as running. It also removes what a writer killed mid-write left under its
//!   temporary name (`<file>.tmp.<pid>`, the pid no longer running).
//! - A child is recorded in its state file (pid and start time) before it runs anything: it
//!   waits, cloned and confined, until the supervisor has written the state file, and a
//!   supervisor killed before that leaves a child that exits without running its program.
//!   A child that could not be recorded is not run.
//! - A process whose spec is gone (its resource is being deleted: the engine removes its spec
//!   file and sets its state file aside first, as `<resource>.json.deleting`) is never
//!   started again, and its state file is not made again: after the write that a start the
//!   engine asked for makes, a supervisor only replaces the file (`renameat2`
//!   `RENAME_EXCHANGE`, which fails when it is gone; on a file system without it, a look
//!   whether it exists and a rename), and then lets the child it cloned exit without running
//!   anything. A `start` the engine asks for is written whole again, made if missing.
//! - State files keep the per-resource format of [`SupervisorState`], with `scope:
//!   environment`; a state file whose per-resource supervisor (a home from before) still runs
//!   is left to it.
//!
//! - When its run directory is removed (the environment's directory is gone), it stops every
//!   process it supervises and exits, within a second.
//!
//! # Caveats
//! - It exits once it supervises nothing: right after the last `release`, or after
//!   [`IDLE_EXIT`] without a request when it found nothing to take back.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::signal::Signal;

use super::RestartPolicy;
use super::spawn::{self, Held, Launching, Program};
use super::supervisor::{
    FIRST_BACKOFF, MAX_BACKOFF, Phase, Replace, STABLE_UPTIME, Scope, SupervisorSpec,
    SupervisorState, read_state, record_state, spec_in_state, write_state,
};
use crate::command::describe_exit;
use crate::logfile::CappedLog;
use crate::procinfo::{ProcessIdentity, wait_until};
use crate::sandbox::{Confinement, Grant, Prepared};

/// The control socket's name in the run directory.
pub(crate) const SOCKET: &str = "supervise.sock";
/// A supervisor that took nothing back and was asked nothing for this long exits.
pub(crate) const IDLE_EXIT: Duration = Duration::from_secs(5);
/// How long a supervisor that finds the run directory locked waits for the one holding it to
/// exit (it may be exiting after its last `release`).
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// What this version's supervisor does with a `start`'s spec, which it says when asked
/// (`version`, answered `ok protocol N`): raised whenever a supervisor must act on something
/// new in the spec (2: the environment's process limit, `Sandbox::max_processes`). An apply
/// replaces a supervisor of an older one ([`wake`]); one from before this request answers it
/// with an error, and counts as 1.
pub(crate) const PROTOCOL: u32 = 2;
/// Liveness polling when the kernel has no pidfds.
const POLL_WITHOUT_PIDFD: Duration = Duration::from_millis(100);
/// The pipe buffer asked for each process's output (the system's `pipe-max-size` caps it).
const OUTPUT_PIPE_BYTES: libc::c_int = 1 << 20;

fn spec_path(run: &Path, resource: &str) -> PathBuf {
    run.join(format!("{resource}.spec.json"))
}

fn state_path(run: &Path, resource: &str) -> PathBuf {
    run.join(format!("{resource}.json"))
}

/// How long a child recorded by a supervisor that is gone may still be held before its exec:
/// its supervisor's end of the link is closed, so it exits at once, without running anything.
const HELD_EXIT: Duration = Duration::from_secs(1);

/// `child`, recorded by a supervisor that is gone, if it runs its program: alive, and past its
/// exec. A child still held when its supervisor died exits by itself without running
/// anything; it is waited for (up to `wait`) rather than taken back as running. One that
/// still bears the held name after that runs a program that took the name itself: running.
fn running_program(child: ProcessIdentity, wait: Duration) -> Option<ProcessIdentity> {
    if child.is_held() {
        wait_until(Instant::now() + wait, || !child.is_held());
    }
    child.is_alive().then_some(child)
}

/// The path of `name` in the directory open as `dir`, through `/proc/self/fd`: short whatever
/// the home's path, as a unix socket's address must be (at most 107 bytes).
fn via_fd(dir: &File, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

/// Whether `name` can name a resource's files in the run directory.
fn valid_resource(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && !name.chars().any(char::is_whitespace)
}

/// The process at the other end of a unix socket.
fn peer(stream: &UnixStream) -> io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes at most `len` bytes into `cred`, a ucred we own.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred)
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// A pidfd of `identity`, if the kernel has them and it is still that process.
fn pidfd_of(identity: ProcessIdentity) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, identity.pid as libc::pid_t, 0) };
    let fd = libc::c_int::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: a descriptor the kernel just gave us, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // The pid may have been reused between reading the identity and opening: the descriptor
    // names whichever process held the pid at `pidfd_open`, so check it is still ours.
    ProcessIdentity::of_child(identity.pid)
        .is_some_and(|now| now == identity)
        .then_some(fd)
}

// --- the client: the provider's side -------------------------------------------------------

/// What the supervisor answered, and who it is.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The reply line: `ok`, `ok <state>` (to a `start`: the state it recorded, as JSON),
    /// `ok empty` (it supervises nothing more and exits), either followed by
    /// ` child <identity>` (to a `release`: the child it let go of), or `error <why>`.
    pub reply: String,
    /// The supervisor that answered (to a `release`).
    pub supervisor: Option<ProcessIdentity>,
}

impl Answer {
    /// The reason of an `error` reply.
    pub fn error(&self) -> Option<&str> {
        self.reply.strip_prefix("error ")
    }

    /// Whether it exits after this answer.
    pub fn exits(&self) -> bool {
        self.reply == "ok empty" || self.reply.starts_with("ok empty ")
    }

    /// The child it let go of, which the caller stops (to a `release`: `ok child {...}` or
    /// `ok empty child {...}`).
    pub fn released_child(&self) -> Option<ProcessIdentity> {
        let rest = self.reply.strip_prefix("ok")?;
        let rest = rest.strip_prefix(" empty").unwrap_or(rest);
        serde_json::from_str(rest.strip_prefix(" child ")?).ok()
    }

    /// The state it recorded, which it gives with its answer to a `start`
    /// (`ok {"supervisor": ...}`).
    pub fn recorded(&self) -> Option<SupervisorState> {
        let json = self.reply.strip_prefix("ok ")?;
        serde_json::from_str(json).ok()
    }
}

/// Sends `request` to the supervisor serving `run`, if one does (`Ok(None)`: none answers;
/// one that was exiting counts as none).
pub(crate) fn ask(run: &Path, request: &str, timeout: Duration) -> io::Result<Option<Answer>> {
    ask_carrying(run, request, &[], timeout)
}

/// [`ask`], the request followed by `body` (a `start`'s spec, announced in `request` as
/// `+LENGTH`).
pub(crate) fn ask_carrying(
    run: &Path,
    request: &str,
    body: &[u8],
    timeout: Duration,
) -> io::Result<Option<Answer>> {
    let gone = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::NotFound
                | io::ErrorKind::ConnectionRefused
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        )
    };
    let dir = match File::open(run) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let stream = match UnixStream::connect(via_fd(&dir, SOCKET)) {
        Ok(stream) => stream,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let server = peer(&stream)?;
    if server.uid != euid() && server.uid != 0 {
        return Err(io::Error::other(format!(
            "{} is served by a process of uid {}, not this engine's: refusing to use it",
            run.join(SOCKET).display(),
            server.uid
        )));
    }
    // Who answered matters to a `release` (whose answer may say it exits); the others need
    // not read its identity.
    let supervisor = request
        .starts_with("release ")
        .then(|| u32::try_from(server.pid).ok().and_then(ProcessIdentity::of))
        .flatten();
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut reply = String::new();
    let mut message = Vec::with_capacity(request.len() + 1 + body.len());
    message.extend_from_slice(request.as_bytes());
    message.push(b'\n');
    message.extend_from_slice(body);
    let sent = (&stream).write_all(&message);
    // A supervisor from before, which knows no body, answers the line and closes without
    // reading the rest: its answer is read all the same.
    let exchanged = match sent {
        Err(e) if !body.is_empty() && gone(&e) => {
            BufReader::new(&stream).read_line(&mut reply).map_err(|_| e)
        }
        Err(e) => Err(e),
        Ok(()) => BufReader::new(&stream).read_line(&mut reply),
    };
    match exchanged {
        Ok(0) => Ok(None),
        Ok(_) => Ok(Some(Answer {
            reply: reply.trim_end().to_owned(),
            supervisor,
        })),
        Err(e) if gone(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The run directories whose supervisor this process is starting, or started without
/// waiting for it ([`wake`]): each with the lock its starters take, and when one was last
/// woken there. One start at a time per directory (a parallel apply's threads would otherwise
/// each start a supervisor for the same environment: all but one would find the run
/// directory locked and exit, but each costs an exec); other environments' starts do not
/// wait for it (a controller applies several at once).
type StartLock = Arc<std::sync::Mutex<Option<Instant>>>;
static STARTS: std::sync::Mutex<Vec<(PathBuf, StartLock)>> = std::sync::Mutex::new(Vec::new());

/// How long after it was woken a supervisor that does not answer yet is waited for rather
/// than started again: it listens a few milliseconds after its exec, and exits for want of
/// requests only after [`IDLE_EXIT`], far later. One that died or left meanwhile (after the
/// release of the last process it took back) costs a wait this long.
const WOKEN_FRESH: Duration = Duration::from_secs(1);

/// The start lock of `run` (see [`STARTS`]); those nobody holds and that have no fresh wake
/// are dropped on the way.
fn start_lock(run: &Path) -> StartLock {
    let fresh = |woken: Option<Instant>| woken.is_some_and(|at| at.elapsed() < WOKEN_FRESH);
    let mut starts = STARTS.lock().unwrap_or_else(|p| p.into_inner());
    starts.retain(|(dir, lock)| {
        dir == run
            || Arc::strong_count(lock) > 1
            || match lock.try_lock() {
                Ok(woken) => fresh(*woken),
                // A caller that panicked holding it left what it had: judged the same.
                Err(std::sync::TryLockError::Poisoned(woken)) => fresh(*woken.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => true,
            }
    });
    if let Some((_, lock)) = starts.iter().find(|(dir, _)| dir == run) {
        return Arc::clone(lock);
    }
    let lock = StartLock::default();
    starts.push((run.to_owned(), Arc::clone(&lock)));
    lock
}

/// Whether a supervisor answers on the socket of the run directory `dir`: a connection that
/// sends nothing, which the supervisor drops.
fn answers(dir: &File) -> io::Result<bool> {
    answering(dir).map(|server| server.is_some())
}

/// The process that answers on the socket of the run directory `dir`, if one does.
fn answering(dir: &File) -> io::Result<Option<libc::ucred>> {
    match UnixStream::connect(via_fd(dir, SOCKET)) {
        Ok(stream) => peer(&stream).map(Some),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Whether process `pid` runs a binary that has since been replaced or removed on disk (its
/// `/proc/PID/exe` says `(deleted)`): a supervisor started before Slipway was upgraded in
/// place.
fn runs_a_replaced_binary(pid: libc::pid_t) -> bool {
    use std::os::unix::ffi::OsStrExt;
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|exe| exe.as_os_str().as_bytes().ends_with(b" (deleted)"))
}

/// The protocol the supervisor of `run` says it speaks ([`PROTOCOL`]): 1 for one from before
/// the question (it answers it as a request it does not know); `None` when none answers, it
/// answers nothing readable in time, or anything else (a refusal: it is not ours to judge).
fn protocol_of(run: &Path) -> Option<u32> {
    let answer = ask(run, "version", Duration::from_secs(2)).ok()??;
    parse_protocol(&answer.reply)
}

/// The protocol an answer to `version` gives: `ok protocol N`, or 1 for the answers of a
/// supervisor from before the question to a request it does not know.
fn parse_protocol(reply: &str) -> Option<u32> {
    if let Some(n) = reply.strip_prefix("ok protocol ") {
        return n.parse().ok();
    }
    (reply.starts_with("error a request is") || reply == "error unknown request").then_some(1)
}

/// Whether `server`, which answers on `run`'s socket, is a supervisor of `run` older than
/// this version: of a binary since replaced on disk, or of an older [`PROTOCOL`]. Its command
/// line must name `run` (a supervisor's does): nothing else is ever ended.
fn outdated(run: &Path, server: &libc::ucred) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let names_run = std::fs::read(format!("/proc/{}/cmdline", server.pid)).is_ok_and(|line| {
        line.split(|b| *b == 0)
            .any(|arg| arg == run.as_os_str().as_bytes())
    });
    names_run
        && (runs_a_replaced_binary(server.pid)
            || protocol_of(run).is_some_and(|protocol| protocol < PROTOCOL))
}

/// Ends the supervisor `pid` (SIGKILL, through a pidfd, so a pid reused meanwhile is never
/// signalled; by pid and start time without pidfds) and waits, 5 seconds at most, until it is
/// gone. Its processes keep running, and the next supervisor takes them back, as after any
/// death of a supervisor (see the module's guarantees).
fn retire(pid: libc::pid_t) -> io::Result<()> {
    let Some(identity) = u32::try_from(pid).ok().and_then(ProcessIdentity::of) else {
        return Ok(());
    };
    match pidfd_of(identity) {
        Some(fd) => {
            // SAFETY: pidfd_send_signal takes a descriptor we own, a signal, no siginfo and
            // no flags.
            let sent = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            if sent != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(e);
                }
            }
        }
        None => {
            identity.signal(Signal::SIGKILL);
        }
    }
    wait_until(Instant::now() + Duration::from_secs(5), || {
        ProcessIdentity::of(identity.pid) != Some(identity)
    });
    Ok(())
}

/// Starts the supervisor of `run` (`program args <run>`, detached) when none answers there
/// and nobody in this process is starting one, and returns without waiting for it to listen:
/// a caller that asks it something next ([`ask_starting`]) waits for that one, for
/// [`WOKEN_FRESH`], rather than start another.
///
/// One that answers but is older than this version ([`outdated`]: Slipway was upgraded while
/// it ran) is replaced, once `program` is there to start its successor: the successor is
/// started first (it waits for the run directory's lock), then the old one is ended, and the
/// successor takes back its processes and starts what this version asks.
///
/// # Errors
/// When `run` cannot be opened (the environment's directories are not made), its socket
/// cannot be tried, or the supervisor program cannot be started.
pub(crate) fn wake(
    run: &Path,
    program: &std::ffi::OsStr,
    args: &[std::ffi::OsString],
) -> io::Result<()> {
    let dir = File::open(run)?;
    let old = match answering(&dir)? {
        None => None,
        Some(server)
            if (server.uid == euid() || server.uid == 0)
                && Path::new(program).is_file()
                && outdated(run, &server) =>
        {
            Some(server)
        }
        Some(_) => return Ok(()),
    };
    let lock = start_lock(run);
    let mut woken = match lock.try_lock() {
        Ok(woken) => woken,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        // Another thread is starting it.
        Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
    };
    match old {
        Some(server) => {
            tracing::info!(
                run = %run.display(),
                pid = server.pid,
                "the environment's supervisor is of an older Slipway: replacing it, its \
                 processes kept running"
            );
            super::spawn_detached(program, args, run)?;
            *woken = Some(Instant::now());
            retire(server.pid)
        }
        None => {
            // Woken a moment ago, or started by another thread between the look above and
            // the lock.
            if woken.is_some_and(|at| at.elapsed() < WOKEN_FRESH) || answers(&dir)? {
                return Ok(());
            }
            super::spawn_detached(program, args, run)?;
            *woken = Some(Instant::now());
            Ok(())
        }
    }
}

/// Why [`ask_starting`] got no answer.
#[derive(Debug)]
pub(crate) enum StartError {
    /// The supervisor program could not be started.
    Spawn(io::Error),
    /// Talking to it failed.
    Io(io::Error),
    /// It did not answer in time.
    Silent(Duration),
}

/// Sends `request` to the environment's supervisor, starting one (`program args <run>`,
/// detached) when none answers.
pub(crate) fn ask_starting(
    run: &Path,
    program: &std::ffi::OsStr,
    args: &[std::ffi::OsString],
    request: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Answer, StartError> {
    const START_TIMEOUT: Duration = Duration::from_secs(15);
    if let Some(answer) = ask_carrying(run, request, body, timeout).map_err(StartError::Io)? {
        return Ok(answer);
    }
    let lock = start_lock(run);
    let mut woken = lock.lock().unwrap_or_else(|p| p.into_inner());
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(answer) = ask_carrying(run, request, body, timeout).map_err(StartError::Io)? {
            return Ok(answer);
        }
        if Instant::now() >= deadline {
            return Err(StartError::Silent(START_TIMEOUT));
        }
        // One woken for this directory a moment ago is waited for, not started again. One
        // started here answers once it holds the directory's lock and listens: a few
        // milliseconds, or up to LOCK_WAIT when the previous one is still exiting.
        let wait_until_at = match *woken {
            Some(at) if at.elapsed() < WOKEN_FRESH => at + WOKEN_FRESH,
            _ => {
                super::spawn_detached(program, args, run).map_err(StartError::Spawn)?;
                let now = Instant::now();
                *woken = Some(now);
                now + LOCK_WAIT + Duration::from_secs(1)
            }
        };
        let mut answer = None;
        let mut failed = None;
        wait_until(wait_until_at.min(deadline), || {
            match ask_carrying(run, request, body, timeout) {
                Ok(found) => answer = found,
                Err(e) => failed = Some(e),
            }
            answer.is_some() || failed.is_some()
        });
        // Failing here keeps the wake: the next caller waits for the supervisor on its way
        // rather than start another.
        if let Some(e) = failed {
            return Err(StartError::Io(e));
        }
        if let Some(answer) = answer {
            return Ok(answer);
        }
        // The one woken did not answer in time: the next turn starts one.
        *woken = None;
    }
}

// --- the supervisor ------------------------------------------------------------------------

/// A child being watched.
struct Watched {
    identity: ProcessIdentity,
    /// Becomes readable when it exits; `None` on a kernel without pidfds.
    pidfd: Option<OwnedFd>,
    /// Ours to reap (we cloned it); false if it was taken over from a supervisor that died.
    own: bool,
}

/// One supervised resource.
struct Slot {
    spec: SupervisorSpec,
    /// The spec as the engine sent or wrote it, to tell a repeated `start` from a changed one.
    spec_bytes: Vec<u8>,
    /// Where the spec is kept: in the state file (sent with `start`), or in the spec file
    /// beside it (written by an engine from before).
    carried: bool,
    /// Whether the next write of the state file may make it (a start the engine asked for,
    /// until its first write); otherwise it only replaces it ([`Replace`]).
    may_create: bool,
    state: SupervisorState,
    log: CappedLog,
    /// The read end of the child's output pipe.
    output: Option<File>,
    /// Whether the pipe may have writers (false after end of file, until the next start).
    output_open: bool,
    child: Option<Watched>,
    /// The child's exec, while whether it happened is not known yet.
    launching: Option<Launching>,
    /// `start` requests answered once the launch is settled.
    waiting: Vec<UnixStream>,
    backoff: Duration,
    restart_at: Option<Instant>,
    started: Instant,
    /// How many processes its environment's control group had lost to its memory limit when
    /// the child was started ([`crate::cgroup::Cgroup::oom_kills`]; 0 before it exists).
    oom_kills: u64,
    /// Not started for its environment's disk ([`EnvironmentSupervisor::hold`]), until the
    /// directories hold less.
    held: bool,
}

impl Slot {
    /// Its environment's control group, if its spec has one.
    fn cgroup(&self) -> Option<&crate::cgroup::Cgroup> {
        self.spec
            .confinement
            .as_ref()
            .and_then(|c| c.sandbox.cgroup.as_ref())
    }

    /// Writes the state file (only replacing it, unless this is the first write of a start
    /// the engine asked for: see [`Replace`]).
    ///
    /// # Errors
    /// `NotFound` when only a replacement was allowed and the file is gone: the engine is
    /// deleting the resource.
    fn record(&mut self) -> io::Result<()> {
        let how = Replace::making(self.may_create);
        let written = record(&self.spec, &self.spec_bytes, self.carried, &self.state, how);
        if written.is_ok() {
            self.may_create = false;
        }
        written
    }
}

/// Writes `state` for the resource of `spec`, carrying `spec_bytes` when `carried`; a spec
/// kept in its own file (an engine from before wrote it) leaves the state file alone, whose
/// every write replaces or makes it, as before.
fn record(
    spec: &SupervisorSpec,
    spec_bytes: &[u8],
    carried: bool,
    state: &SupervisorState,
    how: Replace,
) -> io::Result<()> {
    if carried {
        record_state(&spec.state, state, spec_bytes, how)
    } else {
        write_state(&spec.state, state)
    }
}

/// A request accepted, not yet read in full.
struct Incoming {
    stream: UnixStream,
    /// What arrived: the request's line, then its body (a `start` with its spec).
    line: Vec<u8>,
    deadline: Instant,
}

/// The longest request line.
const LINE_MAX: usize = 4096;
/// The largest spec a `start` may carry (the engine writes a larger one to a spec file): it
/// bounds what a request being read holds.
pub(crate) const CARRIED_MAX: usize = 64 * 1024;
/// What a supervisor from before a `start` could carry its spec answers one that does.
pub(crate) const REFUSED_BEFORE_CARRYING: &str = "a request is `start|adopt|release RESOURCE`";

/// The length of the body that the request `line` announces (`start R +LENGTH`), if it
/// announces one; `Err` when it announces one that is malformed or too large.
fn body_length(line: &[u8]) -> Result<Option<usize>, ()> {
    let Some(length) = line
        .split(|b| *b == b' ')
        .filter(|w| !w.is_empty())
        .nth(2)
        .and_then(|w| w.strip_prefix(b"+"))
    else {
        return Ok(None);
    };
    if length.is_empty() || length.len() > 8 || !length.iter().all(u8::is_ascii_digit) {
        return Err(());
    }
    let length: usize = std::str::from_utf8(length)
        .map_err(drop)?
        .parse()
        .map_err(drop)?;
    if length == 0 || length > CARRIED_MAX {
        return Err(());
    }
    Ok(Some(length))
}

/// A confinement made ready once for every child started under it ([`Confinement::prepare`]),
/// and what its ruleset was built from ([`Confinement::rules_key`]).
type PreparedEntry = (Confinement, Vec<(PathBuf, Grant, u64, u64)>, Rc<Prepared>);

struct EnvironmentSupervisor {
    run: PathBuf,
    /// The run directory, locked for our life.
    dir: File,
    listener: UnixListener,
    me: ProcessIdentity,
    slots: BTreeMap<String, Slot>,
    /// Children let go of (`release`), reaped when they exit.
    released: Vec<u32>,
    stop: Arc<AtomicBool>,
    last_request: Instant,
    /// Requests being read.
    incoming: Vec<Incoming>,
    /// `/dev/null`, every child's standard input.
    null: File,
    /// Confinements made ready, most recent last.
    prepared: Vec<PreparedEntry>,
    /// What the loop polls, and for what (the slot's place in `slots`).
    poll_fds: Vec<libc::pollfd>,
    poll_watched: Vec<(Watch, usize)>,
    /// Why no child may run now: the environment's directories hold more than its disk limit
    /// ([`crate::disk`]). While it is set every child is stopped and none starts.
    disk_over: Option<String>,
    /// When the environment's directories are measured next.
    disk_due: Instant,
    /// When they were measured last.
    disk_measured: Option<Instant>,
}

/// How long a request may take to arrive in full once its connection is accepted.
const REQUEST_READ: Duration = Duration::from_secs(2);
/// How long a child told to go may take to reach its exec before a stop gives up waiting for
/// it (it then stops whatever the child became).
const SETTLE: Duration = Duration::from_secs(5);
/// Confinements kept made ready (an environment has one, plus one per set of ports).
const PREPARED_KEPT: usize = 32;

/// Runs the supervisor of the environment whose run directory is `run`; returns the process
/// exit code. Meant to be the whole of a process's life: `slipway __supervise <run dir>`.
pub(crate) fn run(run: &Path) -> i32 {
    let stop = match super::supervisor::detach() {
        Ok(stop) => stop,
        Err(code) => return code,
    };
    let dir = match File::open(run) {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("slipway supervisor: cannot open {}: {e}", run.display());
            return 2;
        }
    };
    let null = match File::open("/dev/null") {
        Ok(null) => null,
        Err(e) => {
            eprintln!("slipway supervisor: cannot open /dev/null: {e}");
            return 2;
        }
    };
    // One supervisor per environment. A previous one may be exiting (after its last release):
    // wait for it a little; one that keeps it is serving, and we are not needed.
    let locked = wait_until(Instant::now() + LOCK_WAIT, || {
        // SAFETY: flock on a descriptor we own.
        unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    });
    if !locked {
        return 0;
    }
    let socket = via_fd(&dir, SOCKET);
    let _ = std::fs::remove_file(&socket);
    let listener = match UnixListener::bind(&socket).and_then(|l| {
        l.set_nonblocking(true)?;
        Ok(l)
    }) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "slipway supervisor: cannot listen on {}: {e}",
                run.join(SOCKET).display()
            );
            return 2;
        }
    };
    let mut supervisor = EnvironmentSupervisor {
        run: run.to_owned(),
        dir,
        listener,
        me: ProcessIdentity::current(),
        slots: BTreeMap::new(),
        released: Vec::new(),
        stop,
        last_request: Instant::now(),
        incoming: Vec::new(),
        null,
        prepared: Vec::new(),
        poll_fds: Vec::new(),
        poll_watched: Vec::new(),
        disk_over: None,
        disk_due: Instant::now(),
        disk_measured: None,
    };
    supervisor.adopt_all();
    supervisor.serve();
    0
}

/// How a process ended, for its restart policy.
#[derive(Clone, Copy)]
enum Ended {
    /// Exit status 0.
    Success,
    /// Any other status, a signal, or a failed start.
    Failure,
    /// While no supervisor watched it: how is unknown (counted as a failure).
    Unseen,
}

/// What `poll` watches a descriptor for.
#[derive(Clone, Copy)]
enum Watch {
    Requests,
    Incoming,
    Launch,
    Output,
    Exit,
}

impl EnvironmentSupervisor {
    fn serve(&mut self) {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                self.stop_everything();
                return;
            }
            if self.slots.is_empty()
                && self.incoming.is_empty()
                && self.last_request.elapsed() >= IDLE_EXIT
            {
                self.close();
                return;
            }
            if self.directory_gone() {
                // The environment's directory was removed (its environment is gone, or a
                // test's home): nothing of it may keep running, nor be started again.
                for slot in self.slots.values_mut() {
                    slot.log
                        .note("stopping: the environment's directory is gone");
                }
                self.stop_everything();
                return;
            }
            if Instant::now() >= self.disk_due {
                self.measure_disk();
            }
            // Made anew each time round, in buffers kept from one round to the next.
            let mut fds = std::mem::take(&mut self.poll_fds);
            let mut watched = std::mem::take(&mut self.poll_watched);
            fds.clear();
            watched.clear();
            let mut watch = |fd: libc::c_int, what: Watch, slot: usize| {
                fds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
                watched.push((what, slot));
            };
            watch(self.listener.as_raw_fd(), Watch::Requests, 0);
            for incoming in &self.incoming {
                watch(incoming.stream.as_raw_fd(), Watch::Incoming, 0);
            }
            let mut without_pidfd = false;
            for (i, slot) in self.slots.values().enumerate() {
                if let Some(launching) = &slot.launching {
                    watch(launching.fd(), Watch::Launch, i);
                }
                if let (Some(output), true) = (&slot.output, slot.output_open) {
                    watch(output.as_raw_fd(), Watch::Output, i);
                }
                if let Some(child) = &slot.child {
                    match &child.pidfd {
                        Some(pidfd) => watch(pidfd.as_raw_fd(), Watch::Exit, i),
                        None => without_pidfd = true,
                    }
                }
            }
            let now = Instant::now();
            let mut wake = now + Duration::from_secs(1);
            if without_pidfd {
                wake = wake.min(now + POLL_WITHOUT_PIDFD);
            }
            for slot in self.slots.values() {
                if let Some(at) = slot.restart_at {
                    wake = wake.min(at);
                }
            }
            for incoming in &self.incoming {
                wake = wake.min(incoming.deadline);
            }
            wake = wake.min(self.disk_due);
            let timeout = wake.saturating_duration_since(now).as_millis();
            let timeout = libc::c_int::try_from(timeout).unwrap_or(1000);
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures.
            let polled =
                unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            // What is ready, by slot name (the slots change as they are handled).
            let mut ready: Vec<(Watch, String)> = Vec::new();
            let mut requests = false;
            if polled > 0 {
                let names: Vec<&String> = self.slots.keys().collect();
                for (fd, (what, slot)) in fds.iter().zip(&watched) {
                    if fd.revents == 0 {
                        continue;
                    }
                    match what {
                        Watch::Requests => requests = true,
                        Watch::Incoming => {}
                        Watch::Launch | Watch::Output | Watch::Exit => {
                            ready.push((*what, names[*slot].clone()));
                        }
                    }
                }
            }
            self.poll_fds = fds;
            self.poll_watched = watched;
            if polled < 0 {
                // EINTR (a signal): the loop looks at the flags again.
                continue;
            }
            // Launches first, so that a child's start is noted before its first words; then
            // output before exits, so that its last words precede the note of its end.
            for (what, name) in &ready {
                if matches!(what, Watch::Launch) {
                    self.settle(name, Duration::ZERO);
                }
            }
            for (what, name) in &ready {
                if matches!(what, Watch::Output) {
                    self.drain(name);
                }
            }
            for (what, name) in &ready {
                if matches!(what, Watch::Exit) {
                    self.exited(name);
                }
            }
            if without_pidfd {
                let dead: Vec<String> = self
                    .slots
                    .iter()
                    .filter(|(_, s)| {
                        s.child
                            .as_ref()
                            .is_some_and(|c| c.pidfd.is_none() && !c.identity.is_alive())
                    })
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in dead {
                    self.exited(&name);
                }
            }
            if requests {
                self.accept();
            }
            if self.read_requests() {
                return;
            }
            let due: Vec<String> = self
                .slots
                .iter()
                .filter(|(_, s)| s.restart_at.is_some_and(|at| at <= Instant::now()))
                .map(|(name, _)| name.clone())
                .collect();
            for name in due {
                self.restart(&name);
            }
            self.released.retain(|pid| {
                // SAFETY: polls our own child; no status is wanted.
                let rc = unsafe {
                    libc::waitpid(*pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG)
                };
                rc == 0
            });
        }
    }

    /// Accepts every pending connection: a caller of another uid is refused at once; the
    /// others' requests are read as they arrive ([`EnvironmentSupervisor::read_requests`]).
    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            self.last_request = Instant::now();
            match peer(&stream) {
                Ok(cred) if cred.uid == euid() || cred.uid == 0 => {}
                // Only the engine's uid (and root) may ask anything. Nothing else reaches the
                // socket (see the module's docs); this is the belt to those braces.
                _ => {
                    reply(&stream, "error refused: not the engine's uid");
                    continue;
                }
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            self.incoming.push(Incoming {
                stream,
                line: Vec::new(),
                deadline: Instant::now() + REQUEST_READ,
            });
        }
    }

    /// Reads what arrived of the requests being read, and answers each one read in full
    /// (a `start` once its process's exec is settled); returns whether to exit now (the last
    /// release).
    fn read_requests(&mut self) -> bool {
        let mut i = 0;
        while i < self.incoming.len() {
            let incoming = &mut self.incoming[i];
            let mut buf = [0u8; 16 * 1024];
            // `Some(true)`: read in full; `Some(false)`: more to come; `None`: dropped.
            let complete = loop {
                match (&incoming.stream).read(&mut buf) {
                    // The caller went away before its request ended.
                    Ok(0) => break None,
                    Ok(n) => {
                        incoming.line.extend_from_slice(&buf[..n]);
                        match request_read(&incoming.line) {
                            Ok(true) => break Some(true),
                            Ok(false) => {}
                            Err(why) => {
                                reply(&incoming.stream, &format!("error {why}"));
                                break None;
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        break (Instant::now() < incoming.deadline).then_some(false);
                    }
                    Err(_) => break None,
                }
            };
            match complete {
                Some(false) => i += 1,
                None => {
                    self.incoming.swap_remove(i);
                }
                Some(true) => {
                    let incoming = self.incoming.swap_remove(i);
                    let bytes = incoming.line;
                    let end = bytes
                        .iter()
                        .position(|b| *b == b'\n')
                        .unwrap_or(bytes.len());
                    let line = String::from_utf8_lossy(&bytes[..end]).into_owned();
                    let body = bytes.get(end + 1..).filter(|b| !b.is_empty());
                    if self.answer(incoming.stream, &line, body) {
                        self.close();
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Answers the request `line` of `stream` (now, or once the exec it waits for is
    /// settled); returns whether to exit.
    fn answer(&mut self, stream: UnixStream, line: &str, body: Option<&[u8]>) -> bool {
        let mut words = line.split_whitespace();
        let (verb, name) = (words.next(), words.next());
        if line.trim_end() == "version" && body.is_none() {
            reply(&stream, &format!("ok protocol {PROTOCOL}"));
            return false;
        }
        if body.is_some() {
            if verb != Some("start") {
                reply(&stream, "error only a `start` carries a spec");
                return false;
            }
            // Its `+LENGTH`, which announced `body`.
            words.next();
        }
        let Some(name) = name.filter(|n| valid_resource(n) && words.next().is_none()) else {
            if verb.is_some() {
                reply(
                    &stream,
                    "error a request is one of `start RESOURCE +LENGTH` (its spec follows), \
                     `start RESOURCE`, `adopt RESOURCE`, `release RESOURCE`",
                );
            }
            return false;
        };
        match verb {
            Some("start") => match self.start(name, body) {
                Err(e) => reply(&stream, &format!("error {e}")),
                Ok(()) => match self.slots.get_mut(name) {
                    Some(slot) if slot.launching.is_some() => slot.waiting.push(stream),
                    slot => reply(&stream, &started(slot.map(|s| &s.state))),
                },
            },
            Some("adopt") => {
                if !self.slots.contains_key(name) {
                    self.adopt(name);
                }
                reply(&stream, "ok");
            }
            Some("release") => {
                // Only the release of its last process ends it: a release of what it does
                // not supervise (a create clearing the way) must not stop it under another
                // create's feet.
                let released = self.release(name);
                // The child it let go of is named: the caller stops it, though it may have
                // read R's state before a restart started this one.
                let child = match released.flatten().map(|c| serde_json::to_string(&c)) {
                    Some(Ok(json)) => format!(" child {json}"),
                    _ => String::new(),
                };
                if released.is_some() && self.slots.is_empty() {
                    // Gone from the directory before the answer: whoever asks next starts
                    // a new supervisor, which waits for our lock.
                    let _ = std::fs::remove_file(via_fd(&self.dir, SOCKET));
                    reply(&stream, &format!("ok empty{child}"));
                    return true;
                }
                reply(&stream, &format!("ok{child}"));
            }
            _ => reply(&stream, "error unknown request"),
        }
        false
    }

    /// Takes back every resource whose state file names a supervisor that is gone.
    fn adopt_all(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.run) else {
            return;
        };
        let files: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        // A writer killed between writing a file and putting it in place (a supervisor before
        // us, most likely) left it under its temporary name, the state it held included:
        // nobody will, now that its writer is gone.
        for file in &files {
            let writer = file
                .split_once(".json.tmp.")
                .and_then(|(_, pid)| pid.parse::<u32>().ok());
            if writer.is_some_and(|pid| ProcessIdentity::of(pid).is_none()) {
                let _ = std::fs::remove_file(self.run.join(file));
            }
        }
        let names: Vec<String> = files
            .iter()
            .filter_map(|f| {
                let name = f.strip_suffix(".json")?;
                (!name.ends_with(".spec") && !name.contains(".tmp.")).then(|| name.to_owned())
            })
            .collect();
        for name in names {
            self.adopt(&name);
        }
    }

    /// Takes `name` back from a supervisor that is gone: watches its child if it still runs,
    /// or starts it again (per its restart policy) if it ended meanwhile.
    fn adopt(&mut self, name: &str) {
        let Some(previous) = read_state(&state_path(&self.run, name)) else {
            return;
        };
        // A per-resource supervisor of a home from before keeps its process while it lives.
        // An environment's supervisor before us is gone, whatever its pid still shows: we
        // hold the run directory's lock, which it held until its files were closed, a moment
        // before the kernel marks it exited (a successor started ahead of its end, `wake`,
        // gets the lock in that moment).
        if previous.scope == Scope::Resource && previous.supervisor.is_alive() {
            return;
        }
        // The spec the state file carries, or (written by an engine from before) its file.
        let (spec_bytes, carried) = match spec_in_state(&state_path(&self.run, name)) {
            Some(bytes) => (bytes, true),
            None => match std::fs::read(spec_path(&self.run, name)) {
                Ok(bytes) => (bytes, false),
                Err(_) => return,
            },
        };
        let Ok(spec) = serde_json::from_slice::<SupervisorSpec>(&spec_bytes) else {
            return;
        };
        let Some(mut slot) = self.slot(spec, spec_bytes, carried, false, Some(previous.clone()))
        else {
            return;
        };
        let live = previous.child.and_then(|c| running_program(c, HELD_EXIT));
        match (previous.phase, live) {
            (Phase::Exited, _) => {}
            (_, Some(child)) => {
                slot.state.phase = Phase::Running;
                slot.state.exec_pending = false;
                slot.state.named_until_exec = false;
                slot.log.note(&format!(
                    "taken over (pid {}) from supervisor pid {}, which is gone",
                    child.pid, previous.supervisor.pid
                ));
                slot.child = Some(Watched {
                    identity: child,
                    pidfd: pidfd_of(child),
                    own: false,
                });
            }
            (_, None) => {
                slot.log.note(&format!(
                    "supervisor pid {} is gone, and so is the process",
                    previous.supervisor.pid
                ));
                if previous.child.is_some() {
                    slot.state.exits += 1;
                    slot.state.last_exit =
                        Some("an end no supervisor saw (its supervisor was gone)".to_owned());
                }
                self.decide(&mut slot, Ended::Unseen);
            }
        }
        if slot
            .record()
            .is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
        {
            // Its resource is being deleted (the engine removed the state file since we read
            // it): what runs of it is the engine's to stop, and nothing is started again.
            slot.log
                .note("not taken over: its resource is being deleted");
            return;
        }
        self.slots.insert(name.to_owned(), slot);
        if self.slots[name]
            .restart_at
            .is_some_and(|at| at <= Instant::now())
        {
            self.restart(name);
        }
    }

    /// A new slot for `spec`, its log open; `None` (noted in the state file) when the log
    /// cannot be opened.
    fn slot(
        &self,
        spec: SupervisorSpec,
        spec_bytes: Vec<u8>,
        carried: bool,
        may_create: bool,
        previous: Option<SupervisorState>,
    ) -> Option<Slot> {
        let previous_child = previous
            .as_ref()
            .and_then(|p| p.child)
            .filter(|c| c.is_alive());
        let mut state = previous.unwrap_or_else(|| {
            SupervisorState::starting(self.me, spec.stop_grace_ms, Scope::Environment)
        });
        state.supervisor = self.me;
        state.scope = Scope::Environment;
        state.stop_grace_ms = spec.stop_grace_ms;
        // Created by the first thing written to it: a process that prints nothing and does
        // not end costs no file.
        let log = match CappedLog::open_lazy(&spec.log, spec.log_max_bytes) {
            Ok(log) => log.redacting(&spec.redact),
            Err(e) => {
                state.phase = Phase::Exited;
                state.last_exit = Some(format!(
                    "the supervisor cannot open log {}: {e}",
                    spec.log.display()
                ));
                let how = Replace::making(may_create);
                let _ = record(&spec, &spec_bytes, carried, &state, how);
                return None;
            }
        };
        let output = previous_child.and_then(output_of);
        Some(Slot {
            spec,
            spec_bytes,
            carried,
            may_create,
            state,
            log,
            output_open: output.is_some(),
            output,
            child: None,
            launching: None,
            waiting: Vec::new(),
            backoff: FIRST_BACKOFF,
            restart_at: None,
            started: Instant::now(),
            oom_kills: 0,
            held: false,
        })
    }

    /// `start R`: supervise R as `carried` (the spec sent with the request, kept in the state
    /// file from then on) or, without one, its spec file says (a repeated start of an
    /// unchanged spec whose process runs keeps it).
    fn start(&mut self, name: &str, carried: Option<&[u8]>) -> Result<(), String> {
        let spec_file = spec_path(&self.run, name);
        let (spec_bytes, origin) = match carried {
            Some(bytes) => (bytes.to_vec(), "the spec sent".to_owned()),
            None => (
                std::fs::read(&spec_file)
                    .map_err(|e| format!("cannot read {}: {e}", spec_file.display()))?,
                spec_file.display().to_string(),
            ),
        };
        let spec: SupervisorSpec = serde_json::from_slice(&spec_bytes)
            .map_err(|e| format!("cannot understand {origin}: {e}"))?;
        if spec.resource != name || spec.command.is_empty() {
            return Err(format!("{origin} is not the spec of {name}"));
        }
        // What the spec names to write is this environment's own: its state file in the run
        // directory, its log in the logs directory beside it. The supervisor writes outside
        // any sandbox: a spec naming another path (only the engine can reach this socket, and
        // nothing can that should not) would have it replace or append to any file of its
        // user's.
        let logs = self.run.parent().map(|root| root.join("logs"));
        if name.contains('/')
            || name.starts_with('.')
            || spec.state != state_path(&self.run, name)
            || logs.is_none_or(|logs| spec.log != logs.join(format!("{name}.log")))
        {
            return Err(format!(
                "{origin} names files that are not {name}'s own (its state, its log)"
            ));
        }
        if let Some(slot) = self.slots.get_mut(name) {
            if slot.spec_bytes == spec_bytes && slot.state.phase != Phase::Exited {
                // The engine asked: its state file is written again, made if it went missing
                // (a stop of the engine's that was cut short may have removed it).
                slot.may_create = true;
                let _ = slot.record();
                return Ok(());
            }
            // Another spec: the old process goes first (the provider stops it before writing
            // a new spec, so this is a repeated create racing a change).
            self.replace(name);
        } else {
            self.adopt(name);
            if self
                .slots
                .get(name)
                .is_some_and(|s| s.spec_bytes == spec_bytes)
            {
                return Ok(());
            }
            self.replace(name);
        }
        if carried.is_some() {
            // A spec file left by an engine from before would outlive this start, and speak for
            // the resource once its state file is gone.
            let _ = std::fs::remove_file(&spec_file);
        }
        let Some(slot) = self.slot(spec, spec_bytes, carried.is_some(), true, None) else {
            let state = read_state(&state_path(&self.run, name));
            return Err(state
                .and_then(|s| s.last_exit)
                .unwrap_or_else(|| "cannot open its log".to_owned()));
        };
        self.slots.insert(name.to_owned(), slot);
        self.launch(name);
        Ok(())
    }

    /// Stops the process of `name` and forgets its slot, to start it anew under another spec.
    fn replace(&mut self, name: &str) {
        self.settle(name, SETTLE);
        let Some(slot) = self.slots.remove(name) else {
            return;
        };
        answer_waiting(slot.waiting, &slot.state);
        if let Some(child) = slot.child {
            child
                .identity
                .stop_group(Duration::from_millis(slot.spec.stop_grace_ms));
            if child.own {
                self.released.push(child.identity.pid);
            }
        }
    }

    /// `release R`: forget R (its process is the caller's to stop) and its files; returns
    /// `None` if it did not supervise R, else the child it let go of, if one ran.
    fn release(&mut self, name: &str) -> Option<Option<ProcessIdentity>> {
        let _ = std::fs::remove_file(spec_path(&self.run, name));
        // A child still on its way to its exec is let go of once it got there (or failed
        // to): then its session and process group are its own, and the caller can stop them.
        self.settle(name, SETTLE);
        let mut slot = self.slots.remove(name)?;
        slot.log.flush_pending();
        answer_waiting(std::mem::take(&mut slot.waiting), &slot.state);
        let child = slot.child.map(|child| {
            if child.own {
                self.released.push(child.identity.pid);
            }
            child.identity
        });
        let _ = std::fs::remove_file(state_path(&self.run, name));
        Some(child)
    }

    /// The restart of `name` is due.
    fn restart(&mut self, name: &str) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        slot.restart_at = None;
        // Its resource is being deleted (the engine removes the file that holds the spec
        // first): never start it again. A delete that comes after this look is caught when
        // the child is recorded (`launch`).
        let kept_in = if slot.carried {
            state_path(&self.run, name)
        } else {
            spec_path(&self.run, name)
        };
        if !kept_in.exists() {
            self.slots.remove(name);
            return;
        }
        slot.state.restarts += 1;
        slot.backoff = (slot.backoff * 2).min(MAX_BACKOFF);
        self.launch(name);
    }

    /// The confinement of `confinement` made ready: the one made for an earlier child while
    /// its rules resolve to the same files, else a new one.
    fn prepared(&mut self, confinement: &Confinement) -> io::Result<Rc<Prepared>> {
        if let Some((_, _, prepared)) = self.prepared.iter().find(|(c, key, prepared)| {
            c == confinement && c.rules_match(key) && prepared.cgroup_current()
        }) {
            return Ok(Rc::clone(prepared));
        }
        // The key first: a path that appears meanwhile is then seen as a change next time.
        let key = confinement.rules_key();
        let mut prepared = confinement.prepare()?;
        // The supervisor joins its environment's group itself: its children are born there,
        // with no move each (a cgroup migration takes the kernel's global lock of them).
        prepared.enter_cgroup()?;
        let prepared = Rc::new(prepared);
        if self.prepared.len() >= PREPARED_KEPT {
            self.prepared.remove(0);
        }
        self.prepared
            .push((confinement.clone(), key, Rc::clone(&prepared)));
        Ok(prepared)
    }

    /// Starts the child of `name` (its slot exists), confined as its spec says: clones it,
    /// records it in the state file, and only then lets it exec. Whether the exec happened
    /// is learnt in the loop ([`EnvironmentSupervisor::settle`]).
    fn launch(&mut self, name: &str) {
        // Measured first when never yet (a supervisor that took its children back), and, held
        // for the disk, again when the last look is a second old (files may have gone).
        let stale = self
            .disk_measured
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if stale && (self.disk_over.is_some() || self.disk_measured.is_none()) {
            self.measure_disk();
        }
        if let Some(why) = self.disk_over.clone() {
            self.hold(name, why);
            return;
        }
        let confinement = self.slots[name]
            .spec
            .confinement
            .clone()
            // Specs from before sandboxes: their own session all the same.
            .unwrap_or_else(Confinement::none);
        let prepared = self.prepared(&confinement);
        let slot = self
            .slots
            .get_mut(name)
            .expect("launch is called for a slot");
        slot.started = Instant::now();
        slot.oom_kills = slot
            .cgroup()
            .and_then(crate::cgroup::Cgroup::oom_kills)
            .unwrap_or(0);
        let held = prepared.and_then(|prepared| spawn_child(slot, &self.null, &prepared));
        let failed = match held {
            Ok(held) => {
                let pid = held.pid();
                let identity =
                    ProcessIdentity::of_child(pid).unwrap_or(ProcessIdentity { pid, start: 0 });
                slot.state.child = Some(identity);
                slot.state.phase = Phase::Running;
                // Named: its name says when it is past its exec, and this is the only write.
                // Not named (prctl failed): the file says so until it is written again.
                slot.state.named_until_exec = held.named();
                slot.state.exec_pending = !held.named();
                // Recorded before it may run anything: a supervisor killed from here on
                // leaves a child its successor knows.
                match slot.record() {
                    Ok(()) => {
                        slot.launching = Some(held.go());
                        slot.output_open = true;
                        slot.child = Some(Watched {
                            identity,
                            pidfd: pidfd_of_child(pid),
                            own: true,
                        });
                        None
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound && slot.carried => {
                        // The engine removed the state file: it is deleting the resource,
                        // and the child goes without running anything.
                        held.abandon();
                        slot.log
                            .note("not started again: its resource is being deleted");
                        slot.log.flush_pending();
                        self.slots.remove(name);
                        return;
                    }
                    Err(e) => {
                        held.abandon();
                        Some(io::Error::other(format!(
                            "it could not be recorded in {}: {e}",
                            slot.spec.state.display()
                        )))
                    }
                }
            }
            Err(e) => Some(e),
        };
        if let Some(e) = failed {
            self.start_failed(name, &e);
        }
    }

    /// The start of `name`'s child failed with `e` (before or at its exec).
    fn start_failed(&mut self, name: &str, e: &io::Error) {
        let Some(mut slot) = self.slots.remove(name) else {
            return;
        };
        let why = format!("failed to start `{}`: {e}", slot.spec.command[0]);
        slot.log.note(&why);
        slot.child = None;
        slot.output_open = false;
        slot.state.child = None;
        slot.state.exec_pending = false;
        slot.state.named_until_exec = false;
        slot.state.last_exit = Some(why);
        slot.state.exits += 1;
        self.decide(&mut slot, Ended::Failure);
        let _ = slot.record();
        answer_waiting(std::mem::take(&mut slot.waiting), &slot.state);
        self.slots.insert(name.to_owned(), slot);
    }

    /// Settles the launch of `name`'s child if its outcome is known (waiting up to `wait` for
    /// it): notes the start and answers the requests waiting for it, or records the failed
    /// start.
    fn settle(&mut self, name: &str, wait: Duration) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        let Some(launching) = &mut slot.launching else {
            return;
        };
        let outcome = if wait.is_zero() {
            launching.outcome()
        } else {
            launching.wait_outcome(wait)
        };
        let Some(outcome) = outcome else {
            return;
        };
        let pid = launching.pid();
        slot.launching = None;
        match outcome {
            Ok(()) => {
                slot.log
                    .note_deferred(&format!("process started (pid {pid})"));
                // A named child's state file stays as it is: its reader tells the exec from
                // the child's name (`procinfo::HELD_NAME`), and a start writes one file.
                if slot.state.exec_pending {
                    slot.state.exec_pending = false;
                    let _ = slot.record();
                }
                slot.state.named_until_exec = false;
                answer_waiting(std::mem::take(&mut slot.waiting), &slot.state);
            }
            Err(e) => self.start_failed(name, &e),
        }
    }

    /// The child of `name` exited (its pidfd is readable, or its pid is gone).
    fn exited(&mut self, name: &str) {
        // A child that ended before its exec was settled: the outcome is there by now.
        self.settle(name, SETTLE);
        let Some(mut slot) = self.slots.remove(name) else {
            return;
        };
        let Some(child) = slot.child.take() else {
            self.slots.insert(name.to_owned(), slot);
            return;
        };
        let (how, clean) = if child.own {
            match wait_for(child.identity.pid) {
                Ok(status) => {
                    let how = describe_exit(status);
                    // Ended by the kernel for its environment's memory limit: said so.
                    let limit = slot.cgroup().filter(|group| {
                        std::os::unix::process::ExitStatusExt::signal(&status)
                            == Some(libc::SIGKILL)
                            && group.oom_kills().is_some_and(|n| n > slot.oom_kills)
                    });
                    let how = match limit {
                        Some(group) => crate::command::out_of_memory(how, group.memory_max),
                        None => how,
                    };
                    (how, status.success())
                }
                Err(e) => (format!("an unknown status ({e})"), false),
            }
        } else {
            (
                "an unknown status (taken over from a supervisor that died, so not this \
                 supervisor's child)"
                    .to_owned(),
                false,
            )
        };
        // Whatever it left in its group must not hold the port the next child needs.
        child.identity.signal_group(Signal::SIGKILL);
        drain(&mut slot);
        slot.log.note(&format!("process exited with {how}"));
        slot.state.last_exit = Some(how);
        slot.state.exits += 1;
        self.decide(
            &mut slot,
            if clean {
                Ended::Success
            } else {
                Ended::Failure
            },
        );
        let _ = slot.record();
        self.slots.insert(name.to_owned(), slot);
    }

    /// After an exit (or a failed start): exited for good, or a restart after the backoff.
    fn decide(&self, slot: &mut Slot, ended: Ended) {
        let restart = match slot.spec.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !matches!(ended, Ended::Success),
            RestartPolicy::Never => false,
        };
        if !restart {
            slot.state.phase = Phase::Exited;
            slot.log.note("not restarting it (restart policy)");
            return;
        }
        if slot.started.elapsed() >= STABLE_UPTIME {
            slot.backoff = FIRST_BACKOFF;
        }
        slot.state.phase = Phase::Backoff;
        // One that ended unseen has been down for who knows how long already.
        let wait = match ended {
            Ended::Unseen => Duration::ZERO,
            Ended::Success | Ended::Failure => slot.backoff,
        };
        slot.log
            .note(&format!("restarting in {}", crate::duration::show(wait)));
        slot.restart_at = Some(Instant::now() + wait);
    }

    fn drain(&mut self, name: &str) {
        if let Some(slot) = self.slots.get_mut(name) {
            drain(slot);
        }
    }

    /// SIGTERM: stop every child's group (SIGKILL after the longest grace), remove the state
    /// files and the socket.
    fn stop_everything(&mut self) {
        // Children on their way to their exec get there first (their group is theirs then).
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in &names {
            self.settle(name, SETTLE);
        }
        let children: Vec<ProcessIdentity> = self
            .slots
            .values()
            .filter_map(|s| s.child.as_ref().map(|c| c.identity))
            .collect();
        let grace = self
            .slots
            .values()
            .map(|s| Duration::from_millis(s.spec.stop_grace_ms))
            .max()
            .unwrap_or_default();
        for child in &children {
            child.signal_group(Signal::SIGTERM);
        }
        if !wait_until(Instant::now() + grace, || {
            children.iter().all(|c| !c.group_alive())
        }) {
            for child in &children {
                child.signal_group(Signal::SIGKILL);
            }
        }
        for (_, mut slot) in std::mem::take(&mut self.slots) {
            drain(&mut slot);
            slot.log.note("stopped (the supervisor was asked to stop)");
            slot.log.flush_pending();
            if let Some(child) = slot.child
                && child.own
            {
                let _ = wait_for(child.identity.pid);
            }
            let _ = std::fs::remove_file(&slot.spec.state);
        }
        self.close();
    }

    /// Measures the environment's directories against the disk limit of its most recently
    /// started child's spec. Past it: every child is killed (in uid mode every process of the
    /// environment's uid, what escaped its group included), again at each measure while it
    /// lasts, and no child starts ([`EnvironmentSupervisor::hold`]); once they hold less, the
    /// children held are started. Measured again after [`crate::disk::CHECK_EVERY`], or ten
    /// times as long as this walk took, so that walking a large tree takes at most a tenth
    /// of a core.
    fn measure_disk(&mut self) {
        let began = Instant::now();
        let limit = self
            .slots
            .values()
            .filter_map(|slot| {
                let sandbox = &slot.spec.confinement.as_ref()?.sandbox;
                Some((slot.started, sandbox.disk.as_ref()?, sandbox))
            })
            .max_by_key(|(started, _, _)| *started)
            .map(|(_, limit, sandbox)| (limit.clone(), sandbox.isolation, sandbox.ids));
        let over = limit.as_ref().and_then(|(limit, _, _)| limit.exceeded());
        self.disk_measured = Some(Instant::now());
        self.disk_due = Instant::now() + crate::disk::CHECK_EVERY.max(began.elapsed() * 10);
        match over {
            Some(why) => {
                let names: Vec<String> = self.slots.keys().cloned().collect();
                for name in &names {
                    self.settle(name, SETTLE);
                }
                for slot in self.slots.values_mut() {
                    if let Some(child) = &slot.child {
                        slot.log.note(&format!("stopping: {why}"));
                        child.identity.signal_group(Signal::SIGKILL);
                    }
                }
                // What escaped its group (`setsid`) holds the disk too.
                if let Some((limit, crate::sandbox::Isolation::Uid, Some((uid, gid)))) = &limit
                    && let Err(e) = crate::sandbox::kill_everything_of(*uid, *gid, limit.killer)
                {
                    for slot in self.slots.values_mut() {
                        slot.log.note(&format!(
                            "could not stop every process of uid {uid} (past its disk \
                             limit): {e}"
                        ));
                    }
                }
                self.disk_over = Some(why);
            }
            None if self.disk_over.take().is_some() => {
                let now = Instant::now();
                for slot in self.slots.values_mut() {
                    if std::mem::take(&mut slot.held) {
                        slot.log.note(
                            "its environment's directories hold less than its disk limit \
                             again: starting it",
                        );
                        slot.backoff = FIRST_BACKOFF;
                        slot.restart_at = Some(now);
                    }
                }
            }
            None => {}
        }
    }

    /// `name` may not start: its environment's directories hold more than its disk limit
    /// (`why`). Not a crash: it waits, without a restart of its own, until they hold less
    /// ([`EnvironmentSupervisor::measure_disk`] starts it then), and its state says why.
    fn hold(&mut self, name: &str, why: String) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        let why = format!("its start is held: {why}");
        if !slot.held {
            slot.log.note(&why);
        }
        slot.held = true;
        slot.restart_at = None;
        slot.child = None;
        slot.output_open = false;
        slot.state.child = None;
        slot.state.exec_pending = false;
        slot.state.named_until_exec = false;
        slot.state.phase = Phase::Backoff;
        slot.state.last_exit = Some(why);
        let _ = slot.record();
        answer_waiting(std::mem::take(&mut slot.waiting), &slot.state);
    }

    /// Whether the run directory has been removed (a directory's link count drops to zero).
    fn directory_gone(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.dir.metadata().is_ok_and(|m| m.nlink() == 0)
    }

    /// Leaves the directory: no socket once we are gone (the lock goes with the process).
    fn close(&mut self) {
        let _ = std::fs::remove_file(via_fd(&self.dir, SOCKET));
        for slot in self.slots.values_mut() {
            slot.log.flush_pending();
        }
    }
}

/// Whether `bytes`, what arrived of a request, hold all of it: its line and, when the line
/// announces one (`start R +LENGTH`), its body of that many bytes. `Err` says why it is
/// refused (a line too long, a body announced wrongly or longer than announced).
fn request_read(bytes: &[u8]) -> Result<bool, &'static str> {
    let Some(end) = bytes.iter().position(|b| *b == b'\n') else {
        return if bytes.len() > LINE_MAX {
            Err("a request line is at most 4096 bytes")
        } else {
            Ok(false)
        };
    };
    if end > LINE_MAX {
        return Err("a request line is at most 4096 bytes");
    }
    let Ok(length) = body_length(&bytes[..end]) else {
        return Err("a start's spec is announced as `+LENGTH`, 1 byte to 64 KiB");
    };
    let have = bytes.len() - end - 1;
    match length {
        None if have == 0 => Ok(true),
        None => Err("a request is one line"),
        Some(length) if have < length => Ok(false),
        Some(length) if have == length => Ok(true),
        Some(_) => Err("a start's spec is longer than announced"),
    }
}

/// Writes `text` and a newline to the caller. A short answer fits the socket's buffer; a
/// caller that lets it fill up gets the rest within two seconds, or nothing.
fn reply(stream: &UnixStream, text: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(REQUEST_READ));
    let _ = (&*stream).write_all(format!("{text}\n").as_bytes());
}

/// The answer to a `start`: `ok` and the state recorded (so that the caller need not read
/// the state file).
fn started(state: Option<&SupervisorState>) -> String {
    match state.and_then(|s| serde_json::to_string(s).ok()) {
        Some(json) => format!("ok {json}"),
        None => "ok".to_owned(),
    }
}

/// Answers the `start` requests that waited for a launch to settle.
fn answer_waiting(waiting: Vec<UnixStream>, state: &SupervisorState) {
    let answer = started(Some(state));
    for stream in waiting {
        reply(&stream, &answer);
    }
}

/// Reaps our child `pid`, waiting for it to exit.
fn wait_for(pid: u32) -> io::Result<std::process::ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is ours.
        let rc = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if rc >= 0 {
            return Ok(std::process::ExitStatus::from_raw(status));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A pidfd of our own child `pid` (not reaped, so the pid is still it), if the kernel has
/// them.
fn pidfd_of_child(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    let fd = libc::c_int::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: a descriptor the kernel just gave us, owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Copies what the child of `slot` wrote into its log, without blocking.
fn drain(slot: &mut Slot) {
    let Some(output) = &mut slot.output else {
        return;
    };
    let mut buf = [0u8; 16 * 1024];
    // A bounded share per wake-up: one chatty child must not starve the others.
    for _ in 0..16 {
        match output.read(&mut buf) {
            Ok(0) => {
                // No writer left (the child and all it started are gone): nothing more until
                // the next start opens it again.
                slot.output_open = false;
                slot.log.flush_pending();
                return;
            }
            // A full disk loses output but must not leave the child blocked on a full pipe.
            Ok(n) => {
                let _ = slot.log.write_all(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => {
                slot.output_open = false;
                return;
            }
        }
    }
}

/// A read end of the output pipe of `child` (a process we did not start: taken over), through
/// `/proc/<pid>/fd/1`; `None` if its standard output is not an unnamed pipe (or it is gone).
///
/// What the child holds as its output is the environment's code's to choose: it could have
/// put there a named FIFO of another environment's, or a device (reopened by the supervisor,
/// outside any sandbox, it would be read into this log, or opened with the supervisor's
/// rights). So it is first taken as a path only (`O_PATH`: nothing is opened), and reopened
/// for reading only if it is a pipe of the kernel's pipe file system, as the one a supervisor
/// makes for its child is, never a FIFO of some directory.
fn output_of(child: ProcessIdentity) -> Option<File> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let held = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(format!("/proc/{}/fd/1", child.pid))
        .ok()?;
    let found = held.metadata().ok()?;
    let pipes = {
        let (reader, _writer) = io::pipe().ok()?;
        File::from(OwnedFd::from(reader)).metadata().ok()?.dev()
    };
    if !found.file_type().is_fifo() || found.dev() != pipes {
        // A file, a named FIFO, a device: a child whose output went there keeps it.
        return None;
    }
    let output = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", held.as_raw_fd()))
        .ok()?;
    // The pid must still be that child's.
    child.is_alive().then_some(output)
}

/// Clones the child of `slot`, held before its exec ([`spawn::spawn_held`]), confined as
/// `prepared`, its output into a pipe whose read end the slot keeps.
fn spawn_child(slot: &mut Slot, null: &File, prepared: &Rc<Prepared>) -> io::Result<Held> {
    let spec = &slot.spec;
    let program = Program::new(&spec.command, &spec.env, &spec.cwd)?;
    let (reader, writer) = io::pipe()?;
    let reader = File::from(OwnedFd::from(reader));
    // SAFETY: fcntl on descriptors we own; failure of F_SETPIPE_SZ only keeps the default
    // size.
    unsafe {
        let flags = libc::fcntl(reader.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(reader.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, OUTPUT_PIPE_BYTES);
    }
    // The child's end, reopened for reading *and* writing: while the child lives the pipe has
    // a reader, so its writes never fail (or raise SIGPIPE) when the supervisor dies.
    let both = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{}", writer.as_raw_fd()))?;
    drop(writer);
    let held = spawn::spawn_held(program, null.as_fd(), both.as_fd(), prepared)?;
    // Our copy of the child's end goes now (with `both`): the child holds its own.
    slot.output = Some(reader);
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a supervisor's own answer, or an old one's to a request it does not know, says
    /// its protocol: a refusal (another uid's supervisor) says nothing, and is never replaced.
    #[test]
    fn the_protocol_is_read_from_a_supervisors_answers_only() {
        assert_eq!(parse_protocol("ok protocol 2"), Some(2));
        assert_eq!(parse_protocol("ok protocol 17"), Some(17));
        assert_eq!(
            parse_protocol(&format!("error {REFUSED_BEFORE_CARRYING}")),
            Some(1),
            "one from before carried specs"
        );
        assert_eq!(
            parse_protocol(
                "error a request is one of `start RESOURCE +LENGTH` (its spec follows), \
                 `start RESOURCE`, `adopt RESOURCE`, `release RESOURCE`"
            ),
            Some(1)
        );
        assert_eq!(parse_protocol("error unknown request"), Some(1));
        assert_eq!(parse_protocol("error refused: not the engine's uid"), None);
        assert_eq!(parse_protocol("ok protocol two"), None);
        assert_eq!(parse_protocol(""), None);
    }

    /// A temporary directory with `run/`, and a "supervisor" (`sh -c 'echo start >>
    /// MARKER'`) that only counts its starts in `MARKER`.
    struct Counting {
        dir: tempfile::TempDir,
        run: PathBuf,
        marker: PathBuf,
        program: std::ffi::OsString,
        args: Vec<std::ffi::OsString>,
    }

    impl Counting {
        fn new() -> Counting {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let run = dir.path().join("run");
            std::fs::create_dir(&run).expect("run/");
            let marker = dir.path().join("started");
            let args = vec![
                "-c".into(),
                format!("echo start >> '{}'", marker.display()).into(),
            ];
            Counting {
                dir,
                run,
                marker,
                program: "/bin/sh".into(),
                args,
            }
        }

        fn wake(&self, run: &Path) -> io::Result<()> {
            wake(run, &self.program, &self.args)
        }

        /// How many times it was started, once every start has written: `wake` returns
        /// after the exec, so a start not written yet is a live process naming the marker.
        fn starts(&self) -> usize {
            let marker = self.marker.as_os_str().as_encoded_bytes();
            let running = || {
                std::fs::read_dir("/proc")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|entry| {
                        std::fs::read(entry.path().join("cmdline"))
                            .is_ok_and(|cmdline| cmdline.windows(marker.len()).any(|w| w == marker))
                    })
            };
            assert!(
                wait_until(Instant::now() + Duration::from_secs(5), || !running()),
                "the counting supervisors end"
            );
            std::fs::read_to_string(&self.marker).map_or(0, |text| text.lines().count())
        }
    }

    #[test]
    fn only_an_unnamed_pipe_is_taken_back_as_a_childs_output() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let fifo = dir.path().join("other-env.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("a FIFO");
        // Opened for reading and writing, so that the open does not wait for a peer.
        let named = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .expect("the FIFO opened");
        let (reader, writer) = io::pipe().expect("a pipe");
        for (stdout, taken) in [
            (std::process::Stdio::from(named), false),
            (std::process::Stdio::from(OwnedFd::from(writer)), true),
        ] {
            let mut child = std::process::Command::new("sleep")
                .arg("30")
                .stdout(stdout)
                .spawn()
                .expect("sleep runs");
            let identity = crate::procinfo::ProcessIdentity::of(child.id()).expect("known");
            assert_eq!(output_of(identity).is_some(), taken, "taken: {taken}");
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(reader);
    }

    #[test]
    fn a_wake_starts_the_supervisor_once_and_never_for_a_directory_that_is_not_there() {
        let counting = Counting::new();
        let e = counting
            .wake(&counting.dir.path().join("gone/run"))
            .expect_err("no run directory");
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert_eq!(counting.starts(), 0, "nothing started for it");
        // Nothing listens in run/: started, once however often it is woken meanwhile.
        for _ in 0..3 {
            counting.wake(&counting.run).expect("woken");
        }
        assert_eq!(counting.starts(), 1, "one start for three wakes");
    }

    #[test]
    fn a_start_lock_left_poisoned_is_dropped_like_any_other() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (poisoned, other) = (dir.path().join("a/run"), dir.path().join("b/run"));
        let lock = start_lock(&poisoned);
        let held = Arc::clone(&lock);
        // A caller that panicked holding it (with no fresh wake).
        let _ = std::thread::spawn(move || {
            let _guard = held.lock().expect("not poisoned yet");
            panic!("a caller panics holding the start lock");
        })
        .join();
        assert!(lock.is_poisoned());
        drop(lock);
        let known = |run: &Path| {
            STARTS
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|(dir, _)| dir == run)
        };
        assert!(known(&poisoned));
        // Another directory's start prunes what nobody holds.
        drop(start_lock(&other));
        assert!(
            !known(&poisoned),
            "the poisoned lock is dropped, not kept forever"
        );
    }

    #[test]
    fn a_wake_starts_nothing_where_a_supervisor_answers() {
        let counting = Counting::new();
        let _listening = UnixListener::bind(counting.run.join(SOCKET)).expect("a socket");
        counting.wake(&counting.run).expect("woken");
        assert_eq!(counting.starts(), 0, "it answers: nothing started");
    }

    fn held(command: &[&str], dir: &Path) -> Held {
        let null = File::open("/dev/null").expect("/dev/null");
        spawn::test_held(spawn::test_program(command, dir), null.as_fd())
    }

    #[test]
    fn a_request_is_whole_once_its_line_and_the_body_it_announces_arrived() {
        assert_eq!(request_read(b"start web"), Ok(false), "no newline yet");
        assert_eq!(request_read(b"start web\n"), Ok(true));
        assert_eq!(request_read(b"release web\n"), Ok(true));
        assert_eq!(request_read(b"start web +5\n{\"a\""), Ok(false), "4 of 5");
        assert_eq!(request_read(b"start web +5\n{\"a\"}"), Ok(true));
        assert!(request_read(b"start web +5\n{\"a\"}x").is_err(), "longer");
        assert!(
            request_read(b"start web\nmore").is_err(),
            "a line, then more"
        );
        for bad in [
            &b"start web +\n"[..],
            b"start web +0\n",
            b"start web +x1\n",
            b"start web +-1\n",
            b"start web +65537\n",
            b"start web +123456789\n",
            b"start web +\xff\n",
        ] {
            assert!(
                request_read(bad).is_err(),
                "{:?} is refused",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            request_read(b"start web +65536\n"),
            Ok(false),
            "64 KiB may come"
        );
        assert!(request_read(&[b'a'; 4097]).is_err(), "a line too long");
        let mut long = vec![b'a'; 4097];
        long.push(b'\n');
        assert!(request_read(&long).is_err(), "a line too long, ended");
    }

    proptest::proptest! {
        #[test]
        fn no_request_bytes_make_the_reader_panic_or_claim_a_wrong_length(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            line in "(start|adopt) [a-z]{1,8}( \\+[0-9]{1,3})?\n",
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        ) {
            let _ = request_read(&bytes);
            let mut request = line.clone().into_bytes();
            request.extend_from_slice(&body);
            if let Ok(true) = request_read(&request) {
                let announced = line
                    .split_whitespace()
                    .nth(2)
                    .and_then(|w| w.strip_prefix('+'))
                    .map_or(0, |n| n.parse::<usize>().unwrap_or(usize::MAX));
                proptest::prop_assert_eq!(announced, body.len());
            }
        }
    }

    #[test]
    fn a_release_answer_says_whether_it_exits_and_which_child_it_let_go_of() {
        let answer = |reply: &str| Answer {
            reply: reply.to_owned(),
            supervisor: None,
        };
        let child = ProcessIdentity { pid: 42, start: 7 };
        let json = serde_json::to_string(&child).expect("serializes");
        for (reply, exits, released) in [
            ("ok".to_owned(), false, None),
            ("ok empty".to_owned(), true, None),
            (format!("ok child {json}"), false, Some(child)),
            (format!("ok empty child {json}"), true, Some(child)),
            ("ok child {\"pid\": -1}".to_owned(), false, None),
            ("ok childish".to_owned(), false, None),
            (format!("error child {json}"), false, None),
        ] {
            assert_eq!(answer(&reply).exits(), exits, "{reply}");
            assert_eq!(answer(&reply).released_child(), released, "{reply}");
        }
    }

    #[test]
    fn a_successor_takes_back_a_running_program_and_not_a_child_left_held() {
        let dir = tempfile::tempdir().expect("a temp dir");
        // Recorded, then its supervisor died before letting it exec: the child sees its link
        // close and exits without running anything.
        let left = held(&["sleep", "30"], dir.path());
        let child = ProcessIdentity::of_child(left.pid()).expect("the child exists");
        drop(left);
        assert_eq!(
            running_program(child, Duration::from_secs(10)),
            None,
            "a child its dead supervisor never let exec runs nothing: not taken back as running"
        );
        spawn::test_kill_and_reap(child.pid);

        // Past its exec when its supervisor died: running.
        let mut launching = held(&["sleep", "30"], dir.path()).go();
        launching
            .wait_outcome(Duration::from_secs(10))
            .expect("known within 10 s")
            .expect("the exec happens");
        let child = ProcessIdentity::of_child(launching.pid()).expect("the child exists");
        assert_eq!(running_program(child, Duration::from_secs(10)), Some(child));
        spawn::test_kill_and_reap(child.pid);

        // A program that took the held name itself: still running after the wait.
        let mut launching = held(
            &["sh", "-c", "printf slipway-held > /proc/$$/comm; sleep 30"],
            dir.path(),
        )
        .go();
        launching
            .wait_outcome(Duration::from_secs(10))
            .expect("known within 10 s")
            .expect("the exec happens");
        let child = ProcessIdentity::of_child(launching.pid()).expect("the child exists");
        assert!(
            wait_until(Instant::now() + Duration::from_secs(10), || child.is_held()),
            "the program named itself"
        );
        assert_eq!(
            running_program(child, Duration::from_millis(200)),
            Some(child),
            "a program bearing the name after the wait is a program, running"
        );
        spawn::test_kill_and_reap(child.pid);
    }
}
