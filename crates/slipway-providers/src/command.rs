//! How Slipway starts the user's commands: the environment they see, where they run, and
//! running one to completion under a deadline with its output going to the resource log.
//!
//! Every command runs in its own session and process group ([`Confinement::apply`]), so that
//! stopping it (a timeout, a delete) stops what it started too, and it has no controlling
//! terminal; and with a clean environment, so that two environments built
//! from the same commit behave the same whatever shell started the engine.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::logfile::{SharedLog, TailBuffer, copy_to_log};
use crate::procinfo::ProcessIdentity;
use crate::sandbox::Confinement;
use crate::{EnvDirs, ProviderError, ResourceContext};

/// How many lines of output an error message carries.
pub(crate) const TAIL_LINES: usize = 20;

/// Checks that `command` (the configuration field `field` of a `type_name` resource) names a
/// program.
pub(crate) fn check_command(
    type_name: &str,
    field: &str,
    command: &[String],
) -> Result<(), ProviderError> {
    match command.first() {
        None => Err(ProviderError::Config(format!(
            "{type_name}: `{field}` is empty; give the program and its arguments, \
             e.g. [\"python3\", \"app.py\"]"
        ))),
        Some(program) if program.is_empty() => Err(ProviderError::Config(format!(
            "{type_name}: the program in `{field}` is an empty string"
        ))),
        Some(_) if command.iter().any(|arg| arg.contains('\0')) => Err(ProviderError::Config(
            format!("{type_name}: `{field}` contains a NUL character"),
        )),
        Some(_) => Ok(()),
    }
}

/// `command` as a person would type it, for messages.
pub(crate) fn show_command(command: &[String]) -> String {
    command
        .iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
            if plain {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The directory a command runs in: the environment's source export, or `cwd` inside it.
pub(crate) fn working_dir(
    type_name: &str,
    dirs: &EnvDirs,
    cwd: Option<&str>,
) -> Result<PathBuf, ProviderError> {
    let Some(cwd) = cwd else {
        return Ok(dirs.src.clone());
    };
    let relative = Path::new(cwd);
    let inside = relative
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !inside || cwd.contains('\0') {
        return Err(ProviderError::Config(format!(
            "{type_name}: `cwd` {cwd:?} must be a relative path inside the repository, \
             without `..`"
        )));
    }
    Ok(dirs.src.join(relative))
}

/// The environment of a command of the resource in `ctx`: `PATH` and `LANG` from the engine's
/// own environment (nothing else of it: it may hold the engine's credentials), `HOME` (the
/// environment's data directory) and `TMPDIR` (its private temporary directory), then the
/// resource's `env`, then the variables Slipway defines (`PORT_<NAME>` for each allocated
/// port, `SLIPWAY_ENV`, `SLIPWAY_RESOURCE`, `SLIPWAY_DATA_DIR`), which the resource cannot
/// override.
pub(crate) fn child_env(
    ctx: ResourceContext<'_>,
    env: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for name in ["PATH", "LANG"] {
        if let Ok(value) = std::env::var(name) {
            vars.insert(name.to_owned(), value);
        }
    }
    vars.entry("PATH".to_owned())
        .or_insert_with(|| "/usr/local/bin:/usr/bin:/bin".to_owned());
    // The engine's HOME is not the code's to write in (and is outside its sandbox).
    vars.insert("HOME".to_owned(), ctx.dirs.data.display().to_string());
    let tmp = ctx.dirs.tmp();
    if tmp.is_dir() {
        vars.insert("TMPDIR".to_owned(), tmp.display().to_string());
    }
    vars.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (name, port) in ctx.ports {
        vars.insert(port_var(name), port.to_string());
    }
    vars.insert("SLIPWAY_ENV".to_owned(), ctx.environment.to_string());
    vars.insert("SLIPWAY_RESOURCE".to_owned(), ctx.resource.to_owned());
    vars.insert(
        "SLIPWAY_DATA_DIR".to_owned(),
        ctx.dirs.data.display().to_string(),
    );
    if let Some((replica, epoch)) = ctx.sandbox.lease.as_ref().and_then(|l| l.fence.as_ref()) {
        // A fencing token: a system outside Slipway can refuse a write from an older epoch.
        vars.insert("SLIPWAY_REPLICA".to_owned(), replica.clone());
        vars.insert("SLIPWAY_EPOCH".to_owned(), epoch.to_string());
    }
    vars
}

/// `PORT_HTTP` for the port named `http` (`-` and `.` become `_`).
pub(crate) fn port_var(name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("PORT_{upper}")
}

/// Checks that an environment variable map can be passed to a program.
pub(crate) fn check_env(
    type_name: &str,
    env: &BTreeMap<String, String>,
) -> Result<(), ProviderError> {
    for (name, value) in env {
        if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
            return Err(ProviderError::Config(format!(
                "{type_name}: environment variable {name:?} is invalid (names must be \
                 non-empty without `=`; neither may contain NUL)"
            )));
        }
    }
    Ok(())
}

/// Where a run's standard output goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stdout {
    /// Into the resource log, like standard error.
    Log,
    /// Kept in memory, up to this many bytes; more stops the program.
    Capture(usize),
}

/// One run of a program to completion.
pub(crate) struct Run<'a> {
    /// Program and arguments.
    pub command: &'a [String],
    /// Working directory.
    pub cwd: &'a Path,
    /// The complete environment.
    pub env: &'a BTreeMap<String, String>,
    /// Bytes written to standard input, which is then closed; `None` gives it `/dev/null`.
    pub stdin: Option<Vec<u8>>,
    /// Where standard output goes (standard error always goes to the log).
    pub stdout: Stdout,
    /// The resource log.
    pub log: &'a SharedLog,
    /// When the program is stopped if it has not finished.
    pub deadline: Instant,
    /// Time between SIGTERM and SIGKILL when stopping it.
    pub grace: Duration,
    /// The identity and limits it runs under.
    pub confinement: &'a Confinement,
    /// Whether it is refused while its environment's directories hold more than its disk
    /// limit (a job, an exec program's create and update). Otherwise (an exec program's read
    /// and delete, which must see and remove what is there) it runs, and is stopped only if
    /// they come to hold more than at its start.
    pub refused_over_disk: bool,
}

/// How a run ended.
#[derive(Debug)]
pub(crate) enum Ending {
    /// The program exited by itself.
    Exited(ExitStatus),
    /// The deadline passed; its process group was stopped.
    TimedOut,
    /// It printed more than the capture limit on standard output; its process group was stopped.
    StdoutTooLarge,
    /// The lease it ran under was no longer certainly held; its process group was killed.
    LeaseLost,
    /// Its environment's directories came to hold more than its disk limit (why, said
    /// whole); its process group was killed, and in uid mode every process of the
    /// environment's uid.
    DiskFull(String),
}

/// What a run produced.
#[derive(Debug)]
pub(crate) struct Finished {
    /// How it ended.
    pub ending: Ending,
    /// Captured standard output (empty unless [`Stdout::Capture`]).
    pub stdout: Vec<u8>,
    /// The end of what this run wrote to the log.
    pub log_tail: Option<String>,
    /// Wall time from start to end.
    pub duration: Duration,
    /// The memory limit of its environment's control group, when the kernel killed a process
    /// of the group for it while this run ran and the program died of SIGKILL.
    pub out_of_memory: Option<Option<u64>>,
}

impl Finished {
    /// How the program exited ([`describe_exit`]), saying so when the environment's memory
    /// limit ended it.
    pub fn describe_exit(&self, status: ExitStatus) -> String {
        let how = describe_exit(status);
        match self.out_of_memory {
            None => how,
            Some(limit) => out_of_memory(how, limit),
        }
    }
}

/// `how` a program ended, said to be the kernel's doing for its environment's memory limit
/// (`limit` bytes).
pub(crate) fn out_of_memory(how: String, limit: Option<u64>) -> String {
    format!(
        "{how}: its environment's processes together reached their memory limit{} \
         (`[local] max_memory`), and the kernel ended one",
        limit.map_or(String::new(), |m| format!(" of {} MiB", m >> 20))
    )
}

/// `"exit code 3"` or `"signal 9 (SIGKILL)"`.
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(name) => format!("signal {signal} ({name})"),
            Err(_) => format!("signal {signal}"),
        },
        (None, None) => "an unknown status".to_owned(),
    }
}

impl Run<'_> {
    /// Runs the program, in its own session and process group, until it exits or the deadline passes.
    /// When it exits, whatever it left running in its process group is killed: a run to
    /// completion leaves nothing behind.
    ///
    /// On a replica ([`crate::sandbox::LeaseBound`]) the run is bounded by the environment's
    /// lease too: refused when it is not certainly held, and its group killed (by the
    /// watchdog if this process is frozen) once it may have run out.
    ///
    /// # Errors
    /// When the program cannot be started at all (not found, not executable), or its lease
    /// is not certainly held.
    pub fn run(self) -> io::Result<Finished> {
        let started = Instant::now();
        let lease = self.confinement.sandbox.lease.as_ref();
        let cgroup = self.confinement.sandbox.cgroup.as_ref();
        // A group not made yet (its first command) has lost none.
        let oom_kills = cgroup
            .and_then(crate::cgroup::Cgroup::oom_kills)
            .unwrap_or(0);
        if let Some(lease) = lease
            && (lease.fence.is_none() || lease.watchdog.remaining(&lease.environment).is_zero())
        {
            return Err(io::Error::other(crate::watchdog::LeaseNotHeld(
                lease.environment.clone(),
            )));
        }
        let disk = self.confinement.sandbox.disk.as_ref();
        let allowed = match disk {
            Some(disk) if self.refused_over_disk => {
                if let Some(why) = disk.exceeded() {
                    return Err(io::Error::other(crate::disk::OverLimit(why)));
                }
                disk.max
            }
            Some(disk) => disk.held().unwrap_or(u64::MAX),
            None => u64::MAX,
        };
        let (log_reader, log_writer) = io::pipe()?;
        let mut command = Command::new(&self.command[0]);
        command
            .args(&self.command[1..])
            .env_clear()
            .envs(self.env)
            .current_dir(self.cwd)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        match self.stdout {
            Stdout::Log => command.stdout(log_writer.try_clone()?),
            Stdout::Capture(_) => command.stdout(Stdio::piped()),
        };
        command.stderr(log_writer);
        // Registered by the child before it becomes the program: a replica frozen right after
        // the fork leaves nothing running that the watchdog does not bound.
        let registration = match lease {
            Some(lease) => Some(lease.watchdog.registration(&lease.environment)?),
            None => None,
        };
        let launch = self
            .confinement
            .apply_registered(&mut command, registration)?;
        let spawned = launch.spawn(&mut command);
        // The command holds our copies of the pipe's write end; the reader sees end of file
        // only once they are closed.
        drop(command);
        let mut child = spawned?;
        let pid = child.id();
        let group = ProcessIdentity::of_child(pid);
        let watched = match (lease, group) {
            (Some(lease), Some(group)) => match lease.watchdog.watch(&lease.environment, group) {
                Ok(watched) => Some(watched),
                Err(e) => {
                    group.signal_group(Signal::SIGKILL);
                    let _ = child.wait();
                    return Err(e);
                }
            },
            _ => None,
        };

        // The threads serving the pipes end once the run is over (`stop`), even when a
        // process that escaped the program's group (setsid) holds the pipes open for ever.
        let stop = Arc::new(AtomicBool::new(false));
        if let (Some(stdin), Some(bytes)) = (child.stdin.take(), self.stdin) {
            let mut stdin = Stoppable::new(stdin, Arc::clone(&stop));
            let _ = std::thread::Builder::new()
                .name(PIPE_THREAD.into())
                .spawn(move || {
                    // A program that exits without reading its input is judged by its reply,
                    // not by a broken pipe here.
                    let _ = stdin.write_all(&bytes);
                });
        }

        let tail = Arc::new(Mutex::new(TailBuffer::new(16 * 1024)));
        let (done_tx, done_rx) = mpsc::channel::<()>();
        {
            let log = Arc::clone(self.log);
            let tail = Arc::clone(&tail);
            let done = done_tx.clone();
            let log_reader = Stoppable::new(log_reader, Arc::clone(&stop));
            std::thread::Builder::new()
                .name(PIPE_THREAD.into())
                .spawn(move || {
                    copy_to_log(log_reader, &log, |chunk| {
                        tail.lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .push(chunk)
                    });
                    let _ = done.send(());
                })?;
        }
        let captured = Arc::new(Mutex::new(Vec::new()));
        let overflow = Arc::new(AtomicBool::new(false));
        let mut readers = 1;
        if let (Some(stdout), Stdout::Capture(limit)) = (child.stdout.take(), self.stdout) {
            readers += 1;
            let captured = Arc::clone(&captured);
            let overflow = Arc::clone(&overflow);
            let done = done_tx.clone();
            let stdout = Stoppable::new(stdout, Arc::clone(&stop));
            std::thread::Builder::new()
                .name(PIPE_THREAD.into())
                .spawn(move || {
                    capture(stdout, limit, &captured, &overflow);
                    let _ = done.send(());
                })?;
        }
        drop(done_tx);

        // Poll rather than block in `wait`: until we reap the child its pid cannot be reused,
        // so signalling its group by pid is safe exactly as long as we have not reaped it.
        let mut exited = false;
        // Measured each second, or ten times as long as the last walk took.
        let mut disk_due = Instant::now() + crate::disk::RUN_CHECK_EVERY;
        let ending = loop {
            if let Some(status) = child.try_wait()? {
                exited = true;
                // A program cut off for printing too much often dies of the closed pipe
                // before this loop sees the overflow: the overflow is the reason.
                if overflow.load(Ordering::SeqCst) {
                    break Ending::StdoutTooLarge;
                }
                // Killed when its lease ran out, by the watchdog before this loop saw it: the
                // lease is the reason, not the program.
                if status.signal() == Some(Signal::SIGKILL as i32)
                    && watched.as_ref().is_some_and(|w| w.lapsed())
                {
                    break Ending::LeaseLost;
                }
                break Ending::Exited(status);
            }
            if overflow.load(Ordering::SeqCst) {
                break Ending::StdoutTooLarge;
            }
            if Instant::now() >= self.deadline {
                break Ending::TimedOut;
            }
            if watched.as_ref().is_some_and(|w| w.remaining().is_zero()) {
                break Ending::LeaseLost;
            }
            if let Some(disk) = disk
                && Instant::now() >= disk_due
            {
                let began = Instant::now();
                let found = if self.refused_over_disk {
                    disk.exceeded_past(allowed)
                } else {
                    disk.grown_past(allowed)
                };
                if let Some(why) = found {
                    break Ending::DiskFull(why);
                }
                disk_due = Instant::now() + crate::disk::RUN_CHECK_EVERY.max(began.elapsed() * 10);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        match (&ending, group) {
            // The leader is gone: whatever it left in its group is killed outright.
            (_, Some(group)) if exited => {
                group.signal_group(Signal::SIGKILL);
            }
            // Another replica may be about to start this environment's commands.
            (Ending::LeaseLost, Some(group)) => {
                group.signal_group(Signal::SIGKILL);
            }
            // Every write counts: no grace. In uid mode, what escaped the group (`setsid`)
            // and the environment's other processes too: all of it holds the disk.
            (Ending::DiskFull(_), Some(group)) => {
                group.signal_group(Signal::SIGKILL);
                if let Some((uid, gid)) = self.confinement.sandbox.ids
                    && self.confinement.sandbox.isolation == crate::sandbox::Isolation::Uid
                    && let Err(e) =
                        crate::sandbox::kill_everything_of(uid, gid, disk.and_then(|d| d.killer))
                {
                    tracing::warn!(uid, error = %e, "cannot stop every process of the uid past its disk limit");
                }
            }
            (_, Some(group)) => group.stop_group(self.grace),
            (_, None) => {}
        }
        let _ = child.wait();
        drop(watched);

        // Readers finish once every holder of the pipes has exited. A process that escaped
        // the group (setsid) may hold them forever; its output is then cut off here.
        let readers_deadline = Instant::now() + Duration::from_secs(2);
        for _ in 0..readers {
            let left = readers_deadline.saturating_duration_since(Instant::now());
            if done_rx.recv_timeout(left).is_err() {
                break;
            }
        }
        // Those still reading (or writing the request) end now: they hold no thread, nor
        // the memory of the request, past the run.
        stop.store(true, Ordering::SeqCst);
        let stdout = std::mem::take(&mut *captured.lock().unwrap_or_else(|p| p.into_inner()));
        let log_tail = tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_lines(TAIL_LINES);
        let out_of_memory = match (&ending, cgroup) {
            (Ending::Exited(status), Some(cgroup))
                if status.signal() == Some(Signal::SIGKILL as i32)
                    && cgroup.oom_kills().is_some_and(|n| n > oom_kills) =>
            {
                Some(cgroup.memory_max)
            }
            _ => None,
        };
        Ok(Finished {
            ending,
            stdout,
            log_tail,
            duration: started.elapsed(),
            out_of_memory,
        })
    }
}

/// Reads `reader` into `into` until end of file, or until more than `limit` bytes came (then
/// sets `overflow` and stops reading).
/// The name of the threads that serve a run's pipes.
const PIPE_THREAD: &str = "slipway-pipe";

/// One end of a pipe to a program, served until `stop` is set: each read or write waits for
/// the pipe a tenth of a second at a time, and once `stop` is set a read ends as at the end of
/// the output and a write fails. A process that escaped the program's group (setsid) may hold
/// the other end open for ever; the thread serving this one ends with the run all the same.
struct Stoppable<F> {
    pipe: F,
    stop: Arc<AtomicBool>,
}

impl<F: std::os::fd::AsRawFd> Stoppable<F> {
    fn new(pipe: F, stop: Arc<AtomicBool>) -> Stoppable<F> {
        let fd = pipe.as_raw_fd();
        // SAFETY: fcntl on a descriptor this value owns.
        unsafe {
            let flags = nix::libc::fcntl(fd, nix::libc::F_GETFL);
            nix::libc::fcntl(fd, nix::libc::F_SETFL, flags | nix::libc::O_NONBLOCK);
        }
        Stoppable { pipe, stop }
    }

    /// Waits until the pipe is ready for `events`: `false` once `stop` is set.
    fn ready(&self, events: nix::libc::c_short) -> bool {
        let mut poll = nix::libc::pollfd {
            fd: self.pipe.as_raw_fd(),
            events,
            revents: 0,
        };
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            // SAFETY: one pollfd, ours, for 100 ms.
            if unsafe { nix::libc::poll(&mut poll, 1, 100) } != 0 {
                return true;
            }
        }
    }
}

impl<F: Read + std::os::fd::AsRawFd> Read for Stoppable<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.pipe.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.ready(nix::libc::POLLIN) {
                        return Ok(0);
                    }
                }
                other => return other,
            }
        }
    }
}

impl<F: Write + std::os::fd::AsRawFd> Write for Stoppable<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.pipe.write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.ready(nix::libc::POLLOUT) {
                        return Err(io::ErrorKind::BrokenPipe.into());
                    }
                }
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.pipe.flush()
    }
}

fn capture(mut reader: impl Read, limit: usize, into: &Mutex<Vec<u8>>, overflow: &AtomicBool) {
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let mut into = into.lock().unwrap_or_else(|p| p.into_inner());
                if into.len() + n > limit {
                    overflow.store(true, Ordering::SeqCst);
                    return;
                }
                into.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_command_quotes_what_a_shell_would_split() {
        let command = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "echo 'hi' there".to_owned(),
        ];
        assert_eq!(
            show_command(&command),
            r"sh -c 'echo '\''hi'\'' there'",
            "arguments with spaces or quotes are single-quoted"
        );
    }

    #[test]
    fn port_variables_are_upper_case_identifiers() {
        assert_eq!(port_var("http"), "PORT_HTTP", "a plain name is upper-cased");
        assert_eq!(
            port_var("admin-ui"),
            "PORT_ADMIN_UI",
            "a dash becomes an underscore"
        );
    }

    #[test]
    fn working_dir_stays_inside_the_source() {
        let dirs = EnvDirs {
            root: "/e".into(),
            src: "/e/src".into(),
            data: "/e/data".into(),
            logs: "/e/logs".into(),
            run: "/e/run".into(),
            opened: crate::OpenDirs::default(),
        };
        assert_eq!(
            working_dir("job", &dirs, Some("app/./web")).expect("a relative cwd"),
            PathBuf::from("/e/src/app/./web"),
            "cwd is joined to the source directory"
        );
        for bad in ["/etc", "../other", "a/../../b"] {
            assert!(
                working_dir("job", &dirs, Some(bad)).is_err(),
                "cwd {bad:?} leaving the source directory is refused"
            );
        }
    }
}
