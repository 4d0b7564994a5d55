//! How the environment's supervisor starts a child: clone, confine, wait to be told to go,
//! exec; the parent records the child before telling it to go, and learns the exec's outcome
//! later, in its `poll` loop, so that the exec of one child overlaps the start of the next.
//!
//! `std::process::Command::spawn` returns only once the child's exec succeeded or failed:
//! a supervisor starting a hundred processes one after the other would wait a hundred times
//! for a child to be scheduled and reach its exec. Here [`spawn_held`] returns as soon as the
//! child exists, the parent records it ([`Held::go`] after), and [`Launching::outcome`] says
//! later whether the exec happened (the child's end of a socket pair closes on exec) or
//! failed (the child writes its `errno` there, then exits).
//!
//! The child shares the supervisor's memory until its exec (`clone(CLONE_VM)`, as
//! `posix_spawn` does, but without `CLONE_VFORK`: the parent goes on while the child waits to
//! be told to go). A fork would copy the supervisor's page tables, and then every page the
//! supervisor writes while the child waits (the state file's record, the next request) would
//! be copied for a child that is about to drop them all at its exec: with forks, the copies
//! and the fork were half of the supervisor's CPU time starting 100 processes, and the held
//! children's own (mostly the teardown of their copies at exec) a quarter of Slipway's; with
//! the clone, Slipway's CPU time for those 100 starts is 23 % less (perf, 5 applies each).
//!
//! # Guarantees
//! - The child does what `Command::spawn` with [`Confinement::apply`] does: a session of
//!   its own, standard streams, gid, no supplementary groups (as root), uid, an empty signal
//!   mask and SIGPIPE to its default, working directory, the confinement
//!   ([`crate::sandbox::Prepared::enter`]), the environment, then `execvp`'s search (of the
//!   child's `PATH`, made in the parent) and its shell fallback for a file the kernel cannot
//!   exec. Taking another uid, it keeps its saved uid root's until the memory it shares is
//!   marked not dumpable (see [`child`]): no process of that uid can reach the supervisor's
//!   memory through it.
//! - It never execs unless told to go: a parent that dies (SIGKILL included) before
//!   [`Held::go`] leaves a child that exits without running anything. So a child is recorded
//!   before it can run the environment's code, and nothing runs unrecorded.
//! - Between clone and exec the child makes raw system calls only, on its own stack, reading
//!   memory the parent prepared and does not touch until the child has left it: it allocates
//!   nothing, takes no lock and writes nothing of the C library's (not even `errno`, which is
//!   the parent thread's). That memory ([`Shared`]) is freed once the child's exec or exit is
//!   known (the end of the link, or the child reaped), never before; a launch given up before
//!   that is freed when a later start finds the child out of it. Every signal a program may
//!   block is blocked around the clone (glibc keeps its two internal ones, whose handlers
//!   act only on signals the process sent itself); the child sets every signal that has a
//!   handler, and SIGPIPE, back to its default before unblocking them, so no handler of the
//!   supervisor's ever runs in it.
//! - Until its exec the child is named [`crate::procinfo::HELD_NAME`] (its exec names it after
//!   its program), from before its pid is known to the parent: whoever reads the state file
//!   that records it can tell whether it reached its exec, without the parent writing the
//!   file again once it knows.
//!
//! [`Confinement::apply`]: crate::sandbox::Confinement::apply

use std::cell::UnsafeCell;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::ptr::NonNull;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::libc;
use syscalls::{Errno, Sysno, syscall};

use crate::sandbox::Prepared;

/// The shell `execvp` runs a file with when the kernel cannot exec it (`ENOEXEC`).
const SHELL: &CStr = c"/bin/sh";
/// The search path `execvp` uses when the environment has no `PATH` (glibc's).
const DEFAULT_PATH: &[u8] = b"/bin:/usr/bin";
/// The child's stack, until its exec: what it calls there is a few raw system calls.
const STACK_BYTES: usize = 64 * 1024;
/// The longest name of a file, and of a path (`NAME_MAX`, `PATH_MAX` on Linux).
const NAME_MAX: usize = 255;
const PATH_MAX: usize = 4096;

/// A program to exec, made ready in the parent: NUL-terminated strings, the pointer arrays
/// `execve` takes and the paths `execvp` would try, so that the child allocates nothing.
pub(crate) struct Program {
    _argv: Vec<CString>,
    argv: Vec<*const c_char>,
    _envp: Vec<CString>,
    envp: Vec<*const c_char>,
    cwd: CString,
    /// The paths tried in turn: the program's name if it holds a `/`, else the name in each
    /// directory of the child's `PATH` (an empty one meaning the working directory).
    candidates: Vec<CString>,
    /// `/bin/sh CANDIDATE ARGS...`, run for a candidate the kernel cannot exec; the child
    /// sets the candidate (slot 1).
    shell_argv: UnsafeCell<Vec<*const c_char>>,
}

/// What `execvp` tries for `file`, searching `path` (the child's `PATH`).
fn candidates(file: &[u8], path: Option<&[u8]>) -> io::Result<Vec<CString>> {
    if file.is_empty() {
        return Ok(Vec::new());
    }
    if file.contains(&b'/') {
        return Ok(vec![c_string(file)?]);
    }
    // As glibc: a name no directory can hold fails at once, and a directory too long to
    // join is passed over.
    if file.len() > NAME_MAX {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    path.unwrap_or(DEFAULT_PATH)
        .split(|b| *b == b':')
        .filter(|dir| dir.len() < PATH_MAX - 1)
        .map(|dir| {
            if dir.is_empty() {
                c_string(file)
            } else {
                c_string(&[dir, b"/", file].concat())
            }
        })
        .collect()
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
        let env: Vec<(&String, &String)> = env.into_iter().collect();
        let envp: Vec<CString> = env
            .iter()
            .map(|(k, v)| c_string(format!("{k}={v}").as_bytes()))
            .collect::<io::Result<_>>()?;
        let pointers = |strings: &[CString]| {
            strings
                .iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        let path = env
            .iter()
            .find_map(|(k, v)| (k.as_str() == "PATH").then_some(v.as_bytes()));
        let candidates = candidates(argv[0].as_bytes(), path)?;
        let argv_pointers = pointers(&argv);
        let shell_argv = [SHELL.as_ptr(), std::ptr::null()]
            .into_iter()
            .chain(argv_pointers[1..].iter().copied())
            .collect();
        Ok(Program {
            argv: argv_pointers,
            envp: pointers(&envp),
            _argv: argv,
            _envp: envp,
            cwd: c_string(cwd.as_os_str().as_bytes())?,
            candidates,
            shell_argv: UnsafeCell::new(shell_argv),
        })
    }
}

/// The child's stack: mapped here, below it a page that faults.
struct Stack {
    base: NonNull<c_void>,
    len: usize,
}

impl Stack {
    fn new() -> io::Result<Stack> {
        // SAFETY: sysconf reads a constant.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = STACK_BYTES + page;
        // SAFETY: a new private anonymous mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Stack {
            base: NonNull::new(base).ok_or_else(|| io::Error::other("mmap returned null"))?,
            len,
        };
        // SAFETY: the lowest page of the mapping just made.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The stack's top (it grows down), 16-byte aligned as the mapping's end is a page's.
    fn top(&self) -> *mut c_void {
        // SAFETY: one past the end of the mapping, which is what a stack pointer starts at.
        unsafe { self.base.as_ptr().cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made by `new`, which no one uses any more (see `Shared`).
        unsafe { libc::munmap(self.base.as_ptr(), self.len) };
    }
}

/// Everything the child reads between its clone and its exec, in the memory it shares with
/// the supervisor. Made before the clone and not touched by the parent until the child has
/// left that memory (by its exec or its exit): [`Memory::release`] says when.
struct Shared {
    program: Program,
    confinement: Rc<Prepared>,
    stdin: RawFd,
    output: RawFd,
    parent_link: RawFd,
    link: RawFd,
    stack: Stack,
    /// Tests: the child stops itself (SIGSTOP) once it has taken the environment's uid, as
    /// the environment's code may stop it there.
    #[cfg(test)]
    stop_after_ids: bool,
}

/// The parent's hold of a child's [`Shared`]: freed by [`Memory::release`] once the child is
/// known to have left it; dropped without that, it stays allocated (a child still held or
/// on its way to its exec may read it).
#[derive(Debug)]
struct Memory(NonNull<Shared>);

impl Memory {
    /// Frees the child's memory.
    ///
    /// # Safety
    /// Only once the child has exec'd or exited: the end of its link seen (it closes after
    /// the kernel has switched the child to its new memory, or taken its old one away), or
    /// the child reaped.
    unsafe fn release(self) {
        // SAFETY: made by Box::leak in `spawn_held`, and given back once (self is taken).
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
        #[cfg(test)]
        LIVE.set(LIVE.get() - 1);
    }
}

#[cfg(test)]
thread_local! {
    /// How many children's memories this thread made and has not freed.
    static LIVE: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
    /// What [`suid_dumpable`] reads on this thread instead of the system's setting.
    static SUID_DUMPABLE: std::cell::Cell<Option<u8>> = const { std::cell::Cell::new(None) };
    /// Whether this thread's next children stop themselves after taking their uid.
    static STOP_AFTER_IDS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The system's `fs.suid_dumpable` (0, 1 or 2), or `None` when it cannot be read.
fn suid_dumpable() -> Option<u8> {
    #[cfg(test)]
    if let Some(value) = SUID_DUMPABLE.get() {
        return Some(value);
    }
    let mut file = std::fs::File::open("/proc/sys/fs/suid_dumpable").ok()?;
    let mut bytes = [0u8; 8];
    let read = file.read(&mut bytes).ok()?;
    std::str::from_utf8(bytes.get(..read)?)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether a child entering `confinement` may share this process's memory until its exec.
///
/// Whether a memory may be read or written through `ptrace` or `/proc/PID/mem`, or dumped,
/// is a mark of the memory, not of a process: every change of effective uid or gid of any
/// process sharing it sets the mark to `fs.suid_dumpable`. A child taking the environment's
/// uid on this memory would, for a moment, make it dumpable for every other child on it, one
/// that took the uid already and waits for its `go` included (the environment's code can
/// stop it there): with the setting at 1, a process of the uid could then open that child's
/// `/proc/PID/mem` and write the supervisor's memory. At 0 (the kernel's default) the mark
/// is only ever set to "not dumpable". So a child that changes its uid shares the memory only
/// when the setting reads 0; otherwise it gets a copy of its own, as a fork's (slower, see
/// docs/benchmarks.md section 2), on which its own drop keeps it out of reach. The setting is
/// read at each start: root changing it between the read and the child's change of uid is
/// the one case left.
fn may_share_memory(confinement: &Prepared) -> bool {
    confinement.ids().is_none() || suid_dumpable() == Some(0)
}

/// A child that exists and waits to be told to go ([`Held::go`]) before its exec.
#[derive(Debug)]
pub(crate) struct Held {
    pid: u32,
    link: UnixStream,
    /// It bears [`crate::procinfo::HELD_NAME`] until its exec (naming it failed otherwise).
    named: bool,
    /// The memory it runs on until its exec.
    memory: Option<Memory>,
}

/// A child told to go: its exec's outcome is not known yet.
#[derive(Debug)]
pub(crate) struct Launching {
    pid: u32,
    link: UnixStream,
    /// The memory it runs on until its exec, freed once the outcome is known.
    memory: Option<Memory>,
}

/// Starts a child that takes its streams (`stdin`; `output` as both standard output and
/// error), enters `confinement` and waits for [`Held::go`] before it execs `program`.
///
/// # Errors
/// When the socket pair, the child's stack or the clone fails; nothing is started then.
pub(crate) fn spawn_held(
    program: Program,
    stdin: BorrowedFd<'_>,
    output: BorrowedFd<'_>,
    confinement: &Rc<Prepared>,
) -> io::Result<Held> {
    // The child's standard streams are made by dup onto 0, 1 and 2: what it dups from must
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
    // Nor may the child's end of the link be one of those: its dup would close it, and the
    // parent, seeing its end, would free the memory the child still runs on.
    let child_link_high = high(child_link.as_fd())?;
    let child_link_fd = child_link_high
        .as_ref()
        .map_or(child_link.as_raw_fd(), |fd| fd.as_raw_fd());
    sweep_given_up();
    let share = if may_share_memory(confinement) {
        libc::CLONE_VM
    } else {
        0
    };
    let shared = Box::new(Shared {
        program,
        confinement: Rc::clone(confinement),
        stdin: stdin.as_raw_fd(),
        output: output.as_raw_fd(),
        parent_link: link.as_raw_fd(),
        link: child_link_fd,
        stack: Stack::new()?,
        #[cfg(test)]
        stop_after_ids: STOP_AFTER_IDS.get(),
    });
    let top = shared.stack.top();
    let shared = NonNull::from(Box::leak(shared));
    #[cfg(test)]
    LIVE.set(LIVE.get() + 1);
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
    // reader of its state file tells whether it got there. Named before the clone (a child
    // takes the cloning thread's name), so that it bears the name before the parent records
    // it.
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer we own; PR_SET_NAME reads a
    // NUL-terminated string of ours.
    let named = unsafe {
        libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) == 0
            && libc::prctl(libc::PR_SET_NAME, crate::procinfo::HELD_NAME.as_ptr()) == 0
    };
    // SAFETY: the child runs `child_main` on its own stack, which only makes raw system calls
    // on `shared` (left alone here until the child is known to be out of it) and never
    // returns (it execs or exits). Its exit signal is SIGCHLD, as a fork's. Without
    // CLONE_VM it runs on a copy of this memory, the stack included, as a forked child.
    let pid = unsafe {
        libc::clone(
            child_main,
            top,
            share | libc::SIGCHLD,
            shared.as_ptr().cast(),
        )
    };
    let cloned = if pid < 0 {
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
    let memory = Memory(shared);
    let pid = match cloned {
        Ok(pid) => pid,
        Err(e) => {
            // SAFETY: no child was made.
            unsafe { memory.release() };
            return Err(e);
        }
    };
    // Our copies of the child's end go: the exec closes the child's, which is how its
    // success is seen.
    drop(child_link_high);
    drop(child_link);
    Ok(Held {
        pid,
        link,
        named,
        memory: Some(memory),
    })
}

/// The child's entry on its own stack.
extern "C" fn child_main(shared: *mut c_void) -> c_int {
    // SAFETY: `spawn_held` passes its `Shared`, which it leaves alone until this child is out
    // of it.
    unsafe { child(shared.cast()) }
}

/// Ends a child before its exec (its thread group is itself alone): a raw system call.
pub(crate) fn exit(code: usize) -> ! {
    loop {
        // SAFETY: exit_group does not return.
        let _ = unsafe { syscall!(Sysno::exit_group, code) };
    }
}

/// The kernel's `struct sigaction` on the architectures Slipway builds for (x86_64, aarch64:
/// handler, flags, restorer, mask); all zeros is `SIG_DFL`, no flags, an empty mask.
type KernelSigaction = [u64; 4];
/// The size of the kernel's signal set (`_NSIG / 8`).
const KERNEL_SIGSET_BYTES: usize = 8;

/// The child's side: until its exec it shares the supervisor's memory. Never returns.
///
/// # Safety
/// Only in a child cloned by [`spawn_held`] with `shared`: raw system calls only, nothing
/// allocated, nothing of the C library's touched.
unsafe fn child(shared: *mut Shared) -> ! {
    // SAFETY: see above; the parent leaves `shared` alone while this runs, and only
    // `shell_argv` is written, through its cell.
    unsafe {
        let s = &*shared;
        let link = s.link;
        let fail = |errno: Errno| -> ! {
            let bytes = errno.into_raw().to_ne_bytes();
            let _ = syscall!(Sysno::write, link, bytes.as_ptr(), bytes.len());
            exit(127)
        };
        // The parent's end must not be held here: its closing is how a dead parent is seen.
        let _ = syscall!(Sysno::close, s.parent_link);
        // A session, so a process group, of its own before anything else: from the moment
        // the environment's code may signal it (once it takes the uid), stopping its group
        // reaches it. One stopped in the supervisor's group (setsid came after the uid
        // once) could be neither killed by its group nor waited for.
        if let Err(e) = syscall!(Sysno::setsid) {
            fail(e);
        }
        // No handler of the supervisor's may run here (it would run on the supervisor's
        // memory): every signal that has one goes back to its default, as does SIGPIPE
        // (ignored by Rust's runtime; an ignored signal stays ignored across an exec).
        let default: KernelSigaction = [0; 4];
        for signal in 1..=64usize {
            let mut current: KernelSigaction = [0; 4];
            let got = syscall!(
                Sysno::rt_sigaction,
                signal,
                0,
                current.as_mut_ptr(),
                KERNEL_SIGSET_BYTES
            );
            let handled = got.is_ok()
                && current[0] != libc::SIG_DFL as u64
                && current[0] != libc::SIG_IGN as u64;
            if handled || signal == libc::SIGPIPE as usize {
                let _ = syscall!(
                    Sysno::rt_sigaction,
                    signal,
                    default.as_ptr(),
                    0,
                    KERNEL_SIGSET_BYTES
                );
            }
        }
        // The parent's descriptors are 3 and above (its own standard streams are /dev/null):
        // the copies are made without close-on-exec.
        for (from, to) in [(s.stdin, 0), (s.output, 1), (s.output, 2)] {
            if let Err(e) = syscall!(Sysno::dup3, from, to, 0) {
                fail(e);
            }
        }
        // Its uid, never dumpable meanwhile (signals are blocked until after it).
        if let Err(e) = s.confinement.take_ids() {
            fail(e);
        }
        #[cfg(test)]
        if s.stop_after_ids && s.confinement.ids().is_some() {
            crate::sandbox::stop_self();
        }
        let _ = crate::sandbox::set_signal_mask(0);
        let program = &s.program;
        if let Err(e) = syscall!(Sysno::chdir, program.cwd.as_ptr()) {
            fail(e);
        }
        if let Err(e) = s.confinement.enter() {
            fail(e);
        }
        // Wait to be recorded: a byte means go; the end of the stream (the parent died, or
        // gave up on this child) means exit without running anything.
        let mut go = 0u8;
        loop {
            match syscall!(Sysno::read, link, &mut go as *mut u8, 1) {
                Ok(1) => break,
                Err(Errno::EINTR) => continue,
                _ => exit(127),
            }
        }
        fail(program.exec())
    }
}

impl Program {
    /// Execs the program as `execvp` would, on the paths made in the parent: a missing or
    /// unreachable candidate is passed over, any other failure ends the search; EACCES is
    /// what is said when one was refused and none ran. Returns only when none ran, with why.
    ///
    /// # Safety
    /// In a child before its exec, alone on this `Program`: raw system calls, nothing
    /// allocated; `shell_argv` is written through its cell.
    pub(crate) unsafe fn exec(&self) -> Errno {
        let (argv, envp) = (self.argv.as_ptr(), self.envp.as_ptr());
        let mut refused = false;
        let mut last = Errno::ENOENT;
        for candidate in &self.candidates {
            // SAFETY: NUL-terminated strings and null-terminated arrays made in the parent.
            let tried = unsafe { syscall!(Sysno::execve, candidate.as_ptr(), argv, envp) };
            let mut e = tried.err().unwrap_or(Errno::ENOEXEC);
            if e == Errno::ENOEXEC {
                // A file without a `#!` line: the shell runs it.
                // SAFETY: this child alone uses the cell (see above).
                let shell_argv = unsafe { &mut *self.shell_argv.get() };
                if let Some(slot) = shell_argv.get_mut(1) {
                    *slot = candidate.as_ptr();
                }
                // SAFETY: as above.
                let tried =
                    unsafe { syscall!(Sysno::execve, SHELL.as_ptr(), shell_argv.as_ptr(), envp) };
                e = tried.err().unwrap_or(Errno::ENOEXEC);
            }
            match e {
                Errno::EACCES => refused = true,
                Errno::ENOENT
                | Errno::ESTALE
                | Errno::ENOTDIR
                | Errno::ENODEV
                | Errno::ETIMEDOUT => {}
                other => return other,
            }
            last = e;
        }
        if refused { Errno::EACCES } else { last }
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
            memory: self.memory,
        }
    }

    /// Gives up on the child (it could not be recorded): it exits without running anything,
    /// and is reaped here.
    pub fn abandon(self) {
        drop(self.link);
        reap(self.pid);
        if let Some(memory) = self.memory {
            // SAFETY: the child is reaped: it has left its memory.
            unsafe { memory.release() };
        }
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
                Ok(0) if got == 0 => {
                    self.left_memory();
                    return Some(Ok(()));
                }
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
        self.left_memory();
        Some(Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno))))
    }

    /// The child has exec'd or exited (the end of its link, or reaped): its memory goes.
    fn left_memory(&mut self) {
        if let Some(memory) = self.memory.take() {
            // SAFETY: see the callers; the link closes only after the kernel has taken the
            // child off this memory (at its exec, or at its exit).
            unsafe { memory.release() };
        }
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

impl Drop for Launching {
    /// A launch given up before its outcome was read: its memory goes once the child is past
    /// its exec or gone, which is looked at again at each start if it is not yet.
    fn drop(&mut self) {
        let Some(memory) = self.memory.take() else {
            return;
        };
        // Without a way to tell when it is out (no copy of the link), it stays allocated.
        if let Ok(link) = self.link.try_clone() {
            GIVEN_UP.with_borrow_mut(|given_up| given_up.push((link, memory)));
        }
        sweep_given_up();
    }
}

thread_local! {
    /// Children whose launch was given up while they could still be on their memory: each
    /// with its link (non-blocking), to see when it is out.
    static GIVEN_UP: std::cell::RefCell<Vec<(UnixStream, Memory)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Frees the memory of every given-up child now past its exec or gone (the end of its link:
/// whatever it wrote before is read and dropped).
fn sweep_given_up() {
    GIVEN_UP.with_borrow_mut(|given_up| {
        let mut i = 0;
        while let Some((link, _)) = given_up.get_mut(i) {
            if link_ended(link) {
                let (_, memory) = given_up.swap_remove(i);
                // SAFETY: the end of its link: the child is past its exec, or gone.
                unsafe { memory.release() };
            } else {
                i += 1;
            }
        }
    });
}

/// Whether the child's end of `link` (non-blocking) is closed, reading what it wrote.
fn link_ended(link: &mut UnixStream) -> bool {
    let mut bytes = [0u8; 16];
    loop {
        match link.read(&mut bytes) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Ends and waits for the child `pid`, which never ran its program and has exited or is
/// about to (its link closed, or its failure said). Killed first: a held child runs as the
/// environment's uid, whose code may have stopped it (SIGSTOP), and a stopped child would
/// keep this wait, and the supervisor's loop, forever.
fn reap(pid: u32) {
    // SAFETY: signals our own child, not reaped yet (so its pid is still its own).
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
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

/// `program` started held, unconfined, reading `/dev/null` and writing `output`.
#[cfg(test)]
pub(crate) fn test_held(program: Program, output: BorrowedFd<'_>) -> Held {
    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    let prepared = crate::sandbox::Confinement::none()
        .prepare()
        .expect("no confinement");
    spawn_held(program, null.as_fd(), output, &Rc::new(prepared)).expect("clone")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::Confinement;
    use std::fs::File;

    fn program(command: &[&str], dir: &Path) -> Program {
        test_program(command, dir)
    }

    fn start(program: Program, output: &File) -> Held {
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
        let held = start(touch, &out);
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
        let held = start(program(&["sleep", "30"], dir.path()), &out);
        assert!(held.named(), "naming it did not fail");
        assert_eq!(comm(), before, "the parent's thread keeps its name");
        let child = ProcessIdentity::of_child(held.pid()).expect("the child exists");
        assert!(child.is_held(), "started and not told to go: held");
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
        // What a supervisor killed between the clone and the record leaves: the child's end of
        // the link closes, and it exits without running anything.
        let dir = tempfile::tempdir().expect("a temp dir");
        let out = File::create(dir.path().join("out")).expect("an output file");
        let marker = dir.path().join("ran");
        let touch = program(&["touch", marker.to_str().expect("utf-8")], dir.path());
        start(touch, &out).abandon();
        assert!(!marker.exists(), "a child never told to go never runs");
    }

    #[test]
    fn a_child_whose_parent_is_killed_before_go_runs_nothing() {
        // A supervisor SIGKILLed between the clone and its record: here a process of the
        // test's own that starts a held child, says its pid, and is killed.
        let dir = tempfile::tempdir().expect("a temp dir");
        let out = File::create(dir.path().join("out")).expect("an output file");
        let marker = dir.path().join("ran");
        let touch = program(&["touch", marker.to_str().expect("utf-8")], dir.path());
        let null = File::open("/dev/null").expect("/dev/null");
        let prepared = Rc::new(Confinement::none().prepare().expect("no confinement"));
        let (mut said, says) = UnixStream::pair().expect("a pair");
        // SAFETY: the forked process only calls spawn_held (system calls on what was made
        // before the fork, and glibc's allocator, which a fork leaves usable), writes and
        // pauses until it is killed.
        let supervisor = unsafe { libc::fork() };
        if supervisor == 0 {
            // SAFETY: see above; this process never returns into the test harness.
            unsafe {
                let pid = match spawn_held(touch, null.as_fd(), out.as_fd(), &prepared) {
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
        assert_ne!(child, 0, "the held child was started");
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
        let err = settled(start(missing, &out).go()).expect_err("a missing program fails");
        assert_eq!(
            err.kind(),
            io::ErrorKind::NotFound,
            "as `Command::spawn` would: {err}"
        );
        let gone = program(&["true"], &dir.path().join("no-such-dir"));
        let err = settled(start(gone, &out).go()).expect_err("a missing directory fails");
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    /// `command` in `dir` with the environment's `PATH` set to `path` alone.
    fn with_path(command: &[&str], dir: &Path, path: &str) -> Program {
        let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        let env = std::collections::BTreeMap::from([("PATH".to_owned(), path.to_owned())]);
        Program::new(&command, &env, dir).expect("a program")
    }

    /// Writes `text` as `path`, with the mode `mode`.
    fn script(path: &Path, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).expect("the script");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("its mode");
    }

    /// Runs `program` to its end; its output.
    fn run(program: Program, dir: &Path) -> io::Result<String> {
        let out_path = dir.join("out");
        let out = File::create(&out_path).expect("an output file");
        let held = start(program, &out);
        let pid = held.pid();
        settled(held.go())?;
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        Ok(std::fs::read_to_string(&out_path).expect("its output"))
    }

    #[test]
    fn the_search_is_execvp_s_in_the_child_s_path() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (refused, runs, bin) = (
            dir.path().join("refused"),
            dir.path().join("runs"),
            dir.path().join("bin"),
        );
        for d in [&refused, &runs, &bin] {
            std::fs::create_dir(d).expect("a directory");
        }
        // Not executable in the first directory, executable in the second: the second runs.
        script(&refused.join("hello"), "#!/bin/sh\necho refused\n", 0o644);
        script(&runs.join("hello"), "#!/bin/sh\necho runs\n", 0o755);
        // A file without a `#!` line runs under /bin/sh, as execvp runs it.
        script(&bin.join("plain"), "echo \"plain $1\"\n", 0o755);
        let path = format!(
            "/no-such-dir:{}:{}:{}",
            refused.display(),
            runs.display(),
            bin.display()
        );
        let found = run(with_path(&["hello"], dir.path(), &path), dir.path());
        assert_eq!(found.expect("it runs").trim(), "runs");
        let plain = run(with_path(&["plain", "arg"], dir.path(), &path), dir.path());
        assert_eq!(plain.expect("it runs").trim(), "plain arg");
        // Refused and nothing else found: EACCES, as execvp says.
        let only_refused = refused.display().to_string();
        let err = run(with_path(&["hello"], dir.path(), &only_refused), dir.path())
            .expect_err("nothing it may run");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        // An empty entry is the working directory; a name with a `/` is not searched for.
        script(&dir.path().join("here"), "#!/bin/sh\necho here\n", 0o755);
        let here = run(
            with_path(&["here"], dir.path(), ":/no-such-dir"),
            dir.path(),
        );
        assert_eq!(here.expect("it runs").trim(), "here");
        let relative = run(
            with_path(&["./here"], dir.path(), "/no-such-dir"),
            dir.path(),
        );
        assert_eq!(relative.expect("it runs").trim(), "here");
        let err = run(with_path(&["here"], dir.path(), "/no-such-dir"), dir.path())
            .expect_err("not in its PATH");
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        let err = run(with_path(&[""], dir.path(), ":"), dir.path()).expect_err("no name");
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    /// How many times the test's SIGUSR2 handler ran, in this process's memory.
    static HANDLED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    extern "C" fn count_signal(_: libc::c_int) {
        HANDLED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    #[test]
    fn a_handler_of_the_parent_never_runs_in_a_held_child() {
        use crate::procinfo::wait_until;
        // The held child shares the parent's memory: a handler of the parent's that ran in
        // it would change the parent (here, count in its memory). It must take the signal's
        // default action instead (SIGUSR2: the end).
        // SAFETY: installs a handler that only increments an atomic; nothing else in these
        // tests uses SIGUSR2.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = count_signal as *const () as usize;
            libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut());
        }
        let dir = tempfile::tempdir().expect("a temp dir");
        let out = File::create(dir.path().join("out")).expect("an output file");
        let marker = dir.path().join("ran");
        let touch = program(&["touch", marker.to_str().expect("utf-8")], dir.path());
        let held = start(touch, &out);
        let pid = held.pid();
        // The signal may come before or after it set its handlers back (it blocks signals
        // until then): either way the parent's must not run in it.
        let child = crate::procinfo::ProcessIdentity::of_child(pid).expect("the child exists");
        wait_until(Instant::now() + Duration::from_secs(5), || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.contains(") S "))
        });
        assert!(child.is_held(), "still held, waiting to be told to go");
        let mut status = 0;
        // SAFETY: signals our own child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR2) };
        // SAFETY: waits for our own child, without blocking.
        let ended = wait_until(Instant::now() + Duration::from_secs(5), || unsafe {
            libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) == pid as libc::pid_t
        });
        if !ended {
            // A handler ran instead: let it go (it exits without running anything).
            held.abandon();
            panic!("the held child did not end by SIGUSR2's default action");
        }
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGUSR2,
            "the held child ends by the signal's default action: status {status:#x}"
        );
        assert_eq!(
            HANDLED.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the parent's handler did not run"
        );
        // Its memory stays with `held` (it is reaped): nothing else of the parent's is freed.
        std::mem::forget(held);
        assert!(!marker.exists(), "and it never ran its program");
    }

    #[test]
    fn a_child_s_memory_is_freed_once_it_is_out_of_it_and_not_before() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let out = File::create(dir.path().join("out")).expect("an output file");
        let live = || LIVE.get();
        assert_eq!(live(), 0);
        // Exec'd, its outcome read.
        settled(start(program(&["true"], dir.path()), &out).go()).expect("the exec happens");
        assert_eq!(live(), 0, "freed once the exec is seen");
        // Failed, its outcome read (the child reaped).
        let missing = program(&["no-such-program-slipway-spawn"], dir.path());
        settled(start(missing, &out).go()).expect_err("it fails");
        assert_eq!(live(), 0, "freed once the child that failed is reaped");
        // Abandoned before go.
        start(program(&["true"], dir.path()), &out).abandon();
        assert_eq!(live(), 0, "freed once the abandoned child is reaped");
        // Given up after go, before its outcome: kept while the child is on it (here stopped
        // before it could read the go), freed once it is past its exec (looked at again at
        // the next start, or here).
        let held = start(program(&["sleep", "30"], dir.path()), &out);
        let pid = held.pid();
        let state = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat.rsplit_once(") ")?.1.chars().next())
        };
        // SAFETY: stops our own child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        crate::procinfo::wait_until(Instant::now() + Duration::from_secs(10), || {
            state() == Some('T')
        });
        assert_eq!(state(), Some('T'), "stopped while held");
        drop(held.go());
        sweep_given_up();
        assert_eq!(live(), 1, "kept while the child may still be on it");
        // SAFETY: lets our own child go on.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
        let child = crate::procinfo::ProcessIdentity::of_child(pid).expect("the child exists");
        crate::procinfo::wait_until(Instant::now() + Duration::from_secs(10), || {
            !child.is_held()
        });
        assert!(!child.is_held(), "it got past its exec");
        // The exec renames the child a moment before it closes the child's end of the link.
        crate::procinfo::wait_until(Instant::now() + Duration::from_secs(10), || {
            sweep_given_up();
            live() == 0
        });
        assert_eq!(live(), 0, "freed once past its exec");
        assert!(GIVEN_UP.with_borrow(Vec::is_empty));
        test_kill_and_reap(pid);
    }

    #[test]
    fn giving_up_on_a_child_its_environment_stopped_does_not_hang() {
        // A held child runs as the environment's uid (uid mode), whose code can stop it; a
        // supervisor giving up on it must not wait for it forever.
        let dir = tempfile::tempdir().expect("a temp dir");
        let out = File::create(dir.path().join("out")).expect("an output file");
        let held = start(program(&["true"], dir.path()), &out);
        let pid = held.pid();
        // SAFETY: stops our own child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        // A watchdog ends the child if the wait has not returned within 10 s, so that the test
        // fails rather than hangs.
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            let fired = finished.recv_timeout(Duration::from_secs(10)).is_err();
            if fired {
                // SAFETY: kills the test's own child, not reaped while the wait is stuck.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
            fired
        });
        held.abandon();
        let _ = done.send(());
        assert!(
            !watchdog.join().expect("the watchdog"),
            "abandon returned without the watchdog ending the stopped child"
        );
        assert_eq!(LIVE.get(), 0, "its memory freed");
    }

    /// `true` held under uid mode as `uid` (gid the same), or `None` (said) when this test
    /// does not run as root.
    fn held_as(uid: u32) -> Option<Held> {
        use crate::sandbox::{Isolation, Sandbox};
        if !crate::sandbox::running_as_root() {
            eprintln!("skipped: needs root (uid mode)");
            return None;
        }
        let confinement = Confinement {
            sandbox: Sandbox {
                isolation: Isolation::Uid,
                ids: Some((uid, uid)),
                landlock: false,
                max_processes: None,
                cgroup: None,
                disk: None,
                lease: None,
            },
            read: vec![],
            write: vec![],
            bind: vec![],
        };
        let prepared = Rc::new(confinement.prepare().expect("uid mode, as root"));
        let null = File::open("/dev/null").expect("/dev/null");
        let held = spawn_held(
            program(&["true"], Path::new("/")),
            null.as_fd(),
            null.as_fd(),
            &prepared,
        )
        .expect("clone");
        Some(held)
    }

    /// The value of the line `name` of `/proc/PID/status`, blanks made single spaces.
    fn status_field(pid: u32, name: &str) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            })
            .unwrap_or_default()
    }

    /// Waits until every uid of `pid` is `uid`, and says whether they got there.
    fn took_uid(pid: u32, uid: u32) -> bool {
        crate::procinfo::wait_until(Instant::now() + Duration::from_secs(10), || {
            status_field(pid, "Uid:") == format!("{uid} {uid} {uid} {uid}")
        })
    }

    #[test]
    fn a_held_child_under_another_uid_takes_it_whole_and_its_memory_is_not_dumpable() {
        let (uid, gid) = (3_999_431, 3_999_431);
        let Some(held) = held_as(uid) else {
            return;
        };
        let pid = held.pid();
        let field = |name: &str| status_field(pid, name);
        // Past its uid and confinement, it waits to be told to go.
        took_uid(pid, uid);
        assert_eq!(
            field("Uid:"),
            format!("{uid} {uid} {uid} {uid}"),
            "real, effective, saved and file-system uid are all the environment's"
        );
        assert_eq!(field("Gid:"), format!("{gid} {gid} {gid} {gid}"));
        assert_eq!(field("Groups:"), "", "no supplementary group");
        // The memory it shares is this process's: marked not dumpable, so no process of the
        // uid may read or write it through the child, whatever `fs.suid_dumpable` says.
        // SAFETY: PR_GET_DUMPABLE only reads.
        assert_eq!(unsafe { libc::prctl(libc::PR_GET_DUMPABLE) }, 0);
        held.abandon();
        assert_eq!(LIVE.get(), 0);
    }

    /// Whether `pid` shares this process's memory (`kcmp(KCMP_VM)`).
    fn shares_our_memory(pid: u32) -> bool {
        const KCMP_VM: libc::c_long = 1;
        // SAFETY: kcmp only compares two processes' kernel objects.
        let compared = unsafe {
            libc::syscall(
                libc::SYS_kcmp,
                libc::getpid() as libc::c_long,
                libc::c_long::from(pid as i32),
                KCMP_VM,
                0 as libc::c_long,
                0 as libc::c_long,
            )
        };
        assert!(compared >= 0, "kcmp: {}", io::Error::last_os_error());
        compared == 0
    }

    #[test]
    fn a_child_taking_a_uid_shares_the_memory_only_while_dumps_of_other_uids_are_off() {
        // Every change of uid on a memory marks it per `fs.suid_dumpable`: at 1 or 2 a child
        // taking the uid on the supervisor's memory would open it, for a moment, to a child
        // of the environment that took the uid already.
        for (setting, shared) in [
            (Some(0), true),
            (Some(1), false),
            (Some(2), false),
            (None, false),
        ] {
            SUID_DUMPABLE.set(setting.or(Some(9)));
            let held = held_as(3_999_433);
            SUID_DUMPABLE.set(None);
            let Some(held) = held else {
                return;
            };
            let pid = held.pid();
            assert!(
                took_uid(pid, 3_999_433),
                "setting {setting:?}: it took the uid"
            );
            assert_eq!(
                shares_our_memory(pid),
                shared,
                "setting {setting:?}: the child shares the supervisor's memory"
            );
            // Its memory, shared or its own, is not dumpable: its `/proc` files (the directory
            // aside) are root's.
            use std::os::unix::fs::MetadataExt;
            let owner = std::fs::metadata(format!("/proc/{pid}/environ")).map(|m| m.uid());
            assert_eq!(
                owner.ok(),
                Some(0),
                "setting {setting:?}: its environ is root's"
            );
            held.abandon();
        }
        // A child that keeps this process's uid shares the memory whatever the setting.
        SUID_DUMPABLE.set(Some(1));
        let dir = tempfile::tempdir().expect("a temp dir");
        let out = File::create(dir.path().join("out")).expect("an output file");
        let held = start(program(&["true"], dir.path()), &out);
        SUID_DUMPABLE.set(None);
        assert!(
            shares_our_memory(held.pid()),
            "no uid taken: the memory is shared"
        );
        held.abandon();
        assert_eq!(LIVE.get(), 0);
    }

    #[test]
    fn a_held_child_stopped_once_it_took_its_uid_is_in_a_group_of_its_own() {
        // The environment's code may stop a child as soon as the child runs as its uid: the
        // supervisor stops it by its process group, so the group must be its own by then.
        STOP_AFTER_IDS.set(true);
        let held = held_as(3_999_435);
        STOP_AFTER_IDS.set(false);
        let Some(held) = held else {
            return;
        };
        let pid = held.pid();
        let state = || status_field(pid, "State:");
        assert!(
            crate::procinfo::wait_until(Instant::now() + Duration::from_secs(10), || {
                state().starts_with('T')
            }),
            "it stopped itself: {}",
            state()
        );
        // SAFETY: getsid and killpg on our own child and its group.
        unsafe {
            assert_eq!(
                libc::getsid(pid as libc::pid_t),
                pid as libc::pid_t,
                "its session"
            );
            assert_eq!(
                libc::killpg(pid as libc::pid_t, libc::SIGKILL),
                0,
                "its group is reached: {}",
                io::Error::last_os_error()
            );
        }
        assert!(
            crate::procinfo::wait_until(Instant::now() + Duration::from_secs(10), || {
                state().starts_with('Z')
            }),
            "killed by its group: {}",
            state()
        );
        held.abandon();
        assert_eq!(LIVE.get(), 0);
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
        let held = start(script, &out);
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
