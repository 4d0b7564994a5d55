//! How the environment's supervisor starts a child: fork, confine, wait to be told to go,
//! exec; the parent records the child before telling it to go, and learns the exec's outcome
//! later, in its `poll` loop, so that the exec of one child overlaps the start of the next.
//!
//! `std::process::Command::spawn` returns only once the child's exec succeeded or failed:
//! a supervisor starting a hundred processes one after the other would wait a hundred times
//! for a child to be scheduled and reach its exec. Here [`fork_held`] returns as soon as the
//! child exists, the parent records it ([`Held::go`] after), and [`Launching::outcome`] says
//! later whether the exec happened (the child's end of a socket pair closes on exec) or
//! failed (the child writes its `errno` there, then exits).
//!
//! # Guarantees
//! - The child does what `Command::spawn` with [`Confinement::apply`] does, in the same order:
//!   standard streams, gid, no supplementary groups (as root), uid, working directory, an
//!   empty signal mask and SIGPIPE to its default, the confinement
//!   ([`crate::sandbox::Prepared::enter`]), the environment, then `execvp` (the `PATH` search
//!   and the shell fallback of the C library, with the child's environment).
//! - It never execs unless told to go: a parent that dies (SIGKILL included) before
//!   [`Held::go`] leaves a child that exits without running anything. So a child is recorded
//!   before it can run the environment's code, and nothing runs unrecorded.
//! - Between fork and exec the child makes only async-signal-safe calls and allocates nothing:
//!   everything it needs (arguments, environment, working directory) is made in the parent.
//!   Signals are blocked around the fork, and the child sets the dispositions the supervisor
//!   handles (SIGTERM, SIGINT, SIGHUP) and SIGPIPE back to their defaults before unblocking
//!   them, so a signal aimed at it before its exec acts on it as it would after, not as the
//!   supervisor's handler.
//! - Until its exec the child is named [`crate::procinfo::HELD_NAME`] (its exec names it after
//!   its program), from before its pid is known to the parent: whoever reads the state file
//!   that records it can tell whether it reached its exec, without the parent writing the
//!   file again once it knows.
//!
//! [`Confinement::apply`]: crate::sandbox::Confinement::apply

use std::ffi::{CString, c_char};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::libc;

use crate::sandbox::Prepared;

unsafe extern "C" {
    /// The C library's environment: set in the child, as std does, so that `execvp` searches
    /// the child's `PATH`.
    static mut environ: *const *const c_char;
}

/// A program to exec, made ready in the parent: NUL-terminated strings and the pointer arrays
/// `execvp` takes, so that the child allocates nothing.
pub(crate) struct Program {
    _argv: Vec<CString>,
    argv: Vec<*const c_char>,
    _envp: Vec<CString>,
    envp: Vec<*const c_char>,
    cwd: CString,
}

fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "nul byte found in provided data",
        )
    })
}

impl Program {
    /// `command[0]` with the arguments `command[1..]`, the environment `env` (nothing else),
    /// in `cwd`.
    pub fn new<'a>(
        command: &[String],
        env: impl IntoIterator<Item = (&'a String, &'a String)>,
        cwd: &Path,
    ) -> io::Result<Program> {
        let argv: Vec<CString> = command
            .iter()
            .map(|a| c_string(a.as_bytes()))
            .collect::<io::Result<_>>()?;
        if argv.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no program"));
        }
        let envp: Vec<CString> = env
            .into_iter()
            .map(|(k, v)| c_string(format!("{k}={v}").as_bytes()))
            .collect::<io::Result<_>>()?;
        let pointers = |strings: &[CString]| {
            strings
                .iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        Ok(Program {
            argv: pointers(&argv),
            envp: pointers(&envp),
            _argv: argv,
            _envp: envp,
            cwd: c_string(cwd.as_os_str().as_bytes())?,
        })
    }
}

/// A child that exists and waits to be told to go ([`Held::go`]) before its exec.
#[derive(Debug)]
pub(crate) struct Held {
    pid: u32,
    link: UnixStream,
    /// It bears [`crate::procinfo::HELD_NAME`] until its exec (naming it failed otherwise).
    named: bool,
}

/// A child told to go: its exec's outcome is not known yet.
#[derive(Debug)]
pub(crate) struct Launching {
    pid: u32,
    link: UnixStream,
}

/// Forks a child that takes its streams (`stdin`; `output` as both standard output and
/// error), enters `confinement` and waits for [`Held::go`] before it execs `program`.
///
/// # Errors
/// When the socket pair or the fork fails; nothing is started then.
pub(crate) fn fork_held(
    program: &Program,
    stdin: BorrowedFd<'_>,
    output: BorrowedFd<'_>,
    confinement: &Prepared,
) -> io::Result<Held> {
    // The child's standard streams are made by dup2 onto 0, 1 and 2: what it dups from must
    // not be one of those (a supervisor started without standard streams could have them).
    let high = |fd: BorrowedFd<'_>| -> io::Result<Option<std::os::fd::OwnedFd>> {
        if fd.as_raw_fd() > 2 {
            return Ok(None);
        }
        fd.try_clone_to_owned().and_then(|copy| {
            // SAFETY: fcntl on a descriptor we own; the result is a new descriptor, ours.
            let moved = unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
            if moved < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: just made, owned by nobody else.
            Ok(Some(unsafe {
                <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(moved)
            }))
        })
    };
    let (stdin_high, output_high) = (high(stdin)?, high(output)?);
    let stdin = stdin_high.as_ref().map_or(stdin, |fd| fd.as_fd());
    let output = output_high.as_ref().map_or(output, |fd| fd.as_fd());
    let (link, child_link) = UnixStream::pair()?;
    // SAFETY: sigset_t is plain data, initialised by sigfillset/sigemptyset before use.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut previous: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigfillset and pthread_sigmask write only to the sets we own.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
    }
    // The child is named HELD_NAME until its exec names it after its program, so that a
    // reader of its state file tells whether it got there. Named before the fork (a fork takes
    // the forking thread's name), so that it bears the name before the parent records it.
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer we own; PR_SET_NAME reads a
    // NUL-terminated string of ours.
    let named = unsafe {
        libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) == 0
            && libc::prctl(libc::PR_SET_NAME, crate::procinfo::HELD_NAME.as_ptr()) == 0
    };
    // SAFETY: the child only runs `child`, which makes async-signal-safe calls on memory the
    // parent prepared, and never returns (it execs or exits).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the child just forked; see `child`.
        unsafe {
            child(
                program,
                stdin.as_raw_fd(),
                output.as_raw_fd(),
                confinement,
                link.as_raw_fd(),
                child_link.as_raw_fd(),
            )
        }
    }
    let forked = if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid as u32)
    };
    if named {
        // SAFETY: the name read above, NUL-terminated within its 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }
    // SAFETY: restores the mask saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
    }
    // Our copy of the child's end goes: the exec closes the child's, which is how its
    // success is seen.
    drop(child_link);
    Ok(Held {
        pid: forked?,
        link,
        named,
    })
}

/// The child's side. Never returns.
///
/// # Safety
/// Only in a child just forked by [`fork_held`]: async-signal-safe calls only, nothing
/// allocated.
unsafe fn child(
    program: &Program,
    stdin: RawFd,
    output: RawFd,
    confinement: &Prepared,
    parent_link: RawFd,
    link: RawFd,
) -> ! {
    // SAFETY: system calls on descriptors and memory prepared by the parent.
    unsafe {
        let fail = |errno: i32| -> ! {
            let bytes = errno.to_ne_bytes();
            libc::write(link, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127)
        };
        let check = |rc: libc::c_int| {
            if rc < 0 {
                fail(*libc::__errno_location());
            }
        };
        // The parent's end must not be held here: its closing is how a dead parent is seen.
        libc::close(parent_link);
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE] {
            libc::signal(signal, libc::SIG_DFL);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // The parent's descriptors are 3 and above (its own standard streams are /dev/null):
        // dup2 clears close-on-exec on the copies.
        check(libc::dup2(stdin, 0));
        check(libc::dup2(output, 1));
        check(libc::dup2(output, 2));
        if let Some((uid, gid)) = confinement.ids() {
            check(libc::setgid(gid));
            // Dropping root's privileges drops its supplementary groups too.
            if libc::getuid() == 0 {
                check(libc::setgroups(0, std::ptr::null()));
            }
            check(libc::setuid(uid));
        }
        check(libc::chdir(program.cwd.as_ptr()));
        if let Err(e) = confinement.enter() {
            fail(e.raw_os_error().unwrap_or(libc::EPERM));
        }
        // Wait to be recorded: a byte means go; the end of the stream (the parent died, or
        // gave up on this child) means exit without running anything.
        let mut go = 0u8;
        loop {
            let n = libc::read(link, (&mut go as *mut u8).cast(), 1);
            if n == 1 {
                break;
            }
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            libc::_exit(127);
        }
        environ = program.envp.as_ptr();
        libc::execvp(program.argv[0], program.argv.as_ptr());
        fail(*libc::__errno_location())
    }
}

impl Held {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it bears [`crate::procinfo::HELD_NAME`] until its exec: a reader can then tell
    /// whether it got there from its name.
    pub fn named(&self) -> bool {
        self.named
    }

    /// Tells the child to exec: it has been recorded.
    pub fn go(self) -> Launching {
        // A child that already failed (and exited) cannot read it: its outcome says why.
        // SAFETY: sends one byte from a buffer we own; MSG_NOSIGNAL: no SIGPIPE if it is gone.
        unsafe {
            libc::send(
                self.link.as_raw_fd(),
                b"g".as_ptr().cast(),
                1,
                libc::MSG_NOSIGNAL,
            );
        }
        let _ = self.link.set_nonblocking(true);
        Launching {
            pid: self.pid,
            link: self.link,
        }
    }

    /// Gives up on the child (it could not be recorded): it exits without running anything,
    /// and is reaped here.
    pub fn abandon(self) {
        drop(self.link);
        reap(self.pid);
    }
}

impl Launching {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What `poll` watches: readable once the outcome is known.
    pub fn fd(&self) -> RawFd {
        self.link.as_raw_fd()
    }

    /// The exec's outcome, if known: `Ok` once the child exec'd (or ended without saying why:
    /// then its exit is seen as any other), the error that made its start fail otherwise
    /// (the child has then exited, and is reaped here).
    pub fn outcome(&mut self) -> Option<io::Result<()>> {
        let mut errno = [0u8; 4];
        let mut got = 0;
        loop {
            match self.link.read(&mut errno[got..]) {
                Ok(0) if got == 0 => return Some(Ok(())),
                Ok(0) => break,
                Ok(n) => {
                    got += n;
                    if got == errno.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got == 0 => return None,
                // Four bytes are written at once: a part of them is all there is.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Some(Err(e)),
            }
        }
        reap(self.pid);
        Some(Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno))))
    }

    /// Waits up to `timeout` for the outcome ([`Launching::outcome`]); `None` if it is still
    /// not known.
    pub fn wait_outcome(&mut self, timeout: Duration) -> Option<io::Result<()>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(outcome) = self.outcome() {
                return Some(outcome);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut fd = libc::pollfd {
                fd: self.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut fd, 1, ms) };
        }
    }
}

/// Waits for the child `pid`, which has exited or is about to (it only has `_exit` left).
fn reap(pid: u32) {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is ours.
        let rc = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if rc >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// `command` in `dir`, with the test's `PATH` alone: for tests here and in the supervisor.
#[cfg(test)]
pub(crate) fn test_program(command: &[&str], dir: &Path) -> Program {
    let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_owned());
    let env = std::collections::BTreeMap::from([("PATH".to_owned(), path)]);
    Program::new(&command, &env, dir).expect("a program")
}

/// Kills and reaps `pid`, a child of the test's own.
#[cfg(test)]
pub(crate) fn test_kill_and_reap(pid: u32) {
    // SAFETY: kills and waits for the test's own child.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
        libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
    }
}

/// `program` forked held, unconfined, reading `/dev/null` and writing `output`.
#[cfg(test)]
pub(crate) fn test_held(program: &Program, output: BorrowedFd<'_>) -> Held {
    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    let prepared = crate::sandbox::Confinement::none()
        .prepare()
        .expect("no confinement");
    fork_held(program, null.as_fd(), output, &prepared).expect("fork")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::Confinement;
    use std::fs::File;

    fn program(command: &[&str], dir: &Path) -> Program {
        test_program(command, dir)
    }

    fn start(program: &Program, output: &File) -> Held {
        test_held(program, output.as_fd())
    }

    fn settled(mut launching: Launching) -> io::Result<()> {
        launching
            .wait_outcome(Duration::from_secs(10))
            .expect("the outcome is known within 10 s")
    }

    #[test]
    fn a_held_child_runs_only_once_told_to_go() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let out = File::create(dir.path().join("out")).expect("an output file");
        let marker = dir.path().join("ran");
        let touch = program(&["touch", marker.to_str().expect("utf-8")], dir.path());
        let held = start(&touch, &out);
        std::thread::sleep(Duration::from_millis(100));
        assert!(!marker.exists(), "a held child has not run its program yet");
        let pid = held.pid();
        settled(held.go()).expect("the exec happens");
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        assert!(marker.exists(), "told to go, it runs its program");
    }

    #[test]
    fn a_child_is_named_held_until_its_exec_and_its_parent_keeps_its_name() {
        use crate::procinfo::ProcessIdentity;
        let comm = || std::fs::read_to_string("/proc/thread-self/comm").expect("our name");
        let before = comm();
        let dir = tempfile::tempdir().expect("a temp dir");
        let out = File::create(dir.path().join("out")).expect("an output file");
        let held = start(&program(&["sleep", "30"], dir.path()), &out);
        assert!(held.named(), "naming it did not fail");
        assert_eq!(comm(), before, "the parent's thread keeps its name");
        let child = ProcessIdentity::of_child(held.pid()).expect("the child exists");
        assert!(child.is_held(), "forked and not told to go: held");
        settled(held.go()).expect("the exec happens");
        assert!(child.is_alive(), "it runs its program");
        assert!(
            !child.is_held(),
            "past its exec, it bears its program's name"
        );
        assert_eq!(
            std::fs::read_to_string(format!("/proc/{}/comm", child.pid))
                .expect("its name")
                .trim(),
            "sleep"
        );
        test_kill_and_reap(child.pid);
        assert!(!child.is_held(), "a child that is gone is not held");
    }

    #[test]
    fn a_child_whose_parent_gives_up_before_go_runs_nothing() {
        // What a supervisor killed between the fork and the record leaves: the child's end of
        // the link closes, and it exits without running anything.
        let dir = tempfile::tempdir().expect("a temp dir");
        let out = File::create(dir.path().join("out")).expect("an output file");
        let marker = dir.path().join("ran");
        let touch = program(&["touch", marker.to_str().expect("utf-8")], dir.path());
        start(&touch, &out).abandon();
        assert!(!marker.exists(), "a child never told to go never runs");
    }

    #[test]
    fn a_child_whose_parent_is_killed_before_go_runs_nothing() {
        // A supervisor SIGKILLed between the fork and its record: here a process of the test's
        // own that forks a held child, says its pid, and is killed.
        let dir = tempfile::tempdir().expect("a temp dir");
        let out = File::create(dir.path().join("out")).expect("an output file");
        let marker = dir.path().join("ran");
        let touch = program(&["touch", marker.to_str().expect("utf-8")], dir.path());
        let null = File::open("/dev/null").expect("/dev/null");
        let prepared = Confinement::none().prepare().expect("no confinement");
        let (mut said, says) = UnixStream::pair().expect("a pair");
        // SAFETY: the forked process only calls fork_held (system calls on what was made
        // before the fork, nothing allocated), writes and pauses until it is killed.
        let supervisor = unsafe { libc::fork() };
        if supervisor == 0 {
            // SAFETY: see above; this process never returns into the test harness.
            unsafe {
                let pid = match fork_held(&touch, null.as_fd(), out.as_fd(), &prepared) {
                    Ok(held) => {
                        let pid = held.pid();
                        std::mem::forget(held);
                        pid
                    }
                    Err(_) => 0,
                };
                let bytes = pid.to_ne_bytes();
                libc::write(says.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
                loop {
                    libc::pause();
                }
            }
        }
        drop(says);
        let mut pid = [0u8; 4];
        said.read_exact(&mut pid).expect("the held child's pid");
        let child = u32::from_ne_bytes(pid);
        assert_ne!(child, 0, "the held child was forked");
        // SAFETY: kills and reaps the test's own child.
        unsafe {
            libc::kill(supervisor, libc::SIGKILL);
            libc::waitpid(supervisor, std::ptr::null_mut(), 0);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while crate::procinfo::ProcessIdentity::of(child).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            crate::procinfo::ProcessIdentity::of(child).is_none(),
            "the held child of a killed parent exits"
        );
        assert!(!marker.exists(), "and never ran its program");
    }

    #[test]
    fn an_exec_that_fails_says_why_through_the_link() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let out = File::create(dir.path().join("out")).expect("an output file");
        let missing = program(&["no-such-program-slipway-spawn"], dir.path());
        let err = settled(start(&missing, &out).go()).expect_err("a missing program fails");
        assert_eq!(
            err.kind(),
            io::ErrorKind::NotFound,
            "as `Command::spawn` would: {err}"
        );
        let gone = program(&["true"], &dir.path().join("no-such-dir"));
        let err = settled(start(&gone, &out).go()).expect_err("a missing directory fails");
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    #[test]
    fn the_child_gets_its_environment_streams_and_a_session_of_its_own() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let out_path = dir.path().join("out");
        let out = File::create(&out_path).expect("an output file");
        let script = program(
            &[
                "sh",
                "-c",
                "echo \"$PATH\"; pwd; ps -o sid= -p $$; echo $$; read x || echo stdin-empty; \
                 echo oops >&2",
            ],
            dir.path(),
        );
        let held = start(&script, &out);
        let pid = held.pid();
        settled(held.go()).expect("the exec happens");
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        let text = std::fs::read_to_string(&out_path).expect("its output");
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert_eq!(
            lines.first().copied(),
            std::env::var("PATH").ok().as_deref(),
            "{text}"
        );
        assert_eq!(
            lines.get(1).map(std::path::Path::new),
            Some(dir.path().canonicalize().expect("canonical").as_path()),
            "{text}"
        );
        assert_eq!(
            lines.get(2),
            lines.get(3),
            "it leads its own session: {text}"
        );
        assert_eq!(lines.get(4), Some(&"stdin-empty"), "{text}");
        assert_eq!(
            lines.get(5),
            Some(&"oops"),
            "standard error goes there too: {text}"
        );
    }
}
