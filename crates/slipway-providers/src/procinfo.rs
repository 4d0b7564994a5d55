//! Identifying processes across time by pid *and* start time, and signalling process groups
//! only when they are still the ones we started.
//!
//! A bare pid is not an identity: pids are reused, and a supervisor recorded yesterday may now
//! be somebody's shell. The kernel's start time of a process (field 22 of `/proc/<pid>/stat`,
//! clock ticks since boot) never changes for a process and differs between two processes that
//! held the same pid, so `(pid, start time)` names one process for the life of the machine.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// One process, named so that a reused pid does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcessIdentity {
    /// The process id.
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: start time in clock ticks since boot.
    pub start: u64,
}

/// The name (`comm`) an environment's supervisor gives the child it forks, which the child keeps
/// until its exec gives it its program's: the child of a state file that says `exec_pending`
/// is still on its way to its exec while it bears this name. Under 16 bytes, the kernel's
/// limit. A program may take this name itself (`prctl`); it then only misleads about itself:
/// it is shown as starting, not ready. A confined command's child takes it too, in uid mode,
/// until its exec ([`crate::sandbox::Launch::spawn`] kills only a child that bears it).
pub(crate) const HELD_NAME: &std::ffi::CStr = c"slipway-held";

/// What `/proc/<pid>/stat` says about a process, for the fields we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 2 is [`HELD_NAME`]: a child forked by a supervisor that has not exec'd yet.
    pub held: bool,
    /// Field 3: `R`, `S`, `Z`, ...
    pub state: char,
    /// Field 5: process group id.
    pub pgrp: u32,
    /// Field 22: start time in clock ticks since boot.
    pub start: u64,
}

impl ProcStat {
    fn is_dead(&self) -> bool {
        // A zombie has exited and holds nothing (no sockets, no memory); only its parent's
        // `wait` removes it, and its parent may not be us.
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the contents of `/proc/<pid>/stat`. The command name (field 2) is in parentheses and
/// may itself contain spaces and parentheses, so fields are counted from the *last* `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let close = text.rfind(')')?;
    let comm = text.get(text.find('(')? + 1..close)?;
    let after_comm = &text[close + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    let state = fields.first()?.chars().next()?;
    let pgrp = fields.get(5 - 3)?.parse().ok()?;
    let start = fields.get(22 - 3)?.parse().ok()?;
    Some(ProcStat {
        held: comm.as_bytes() == HELD_NAME.to_bytes(),
        state,
        pgrp,
        start,
    })
}

/// The stat of `pid`, or `None` if no such process exists.
pub(crate) fn stat(pid: u32) -> Option<ProcStat> {
    use std::io::Read;
    // One read into a buffer on the stack: a stat line is a few hundred bytes (at most 52
    // numbers and a command name of at most 64), and this is read for every process looked
    // at, often.
    let mut file = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let mut buf = [0u8; 2048];
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    // The command name may be any bytes; the fields after it are ASCII.
    parse_stat(&String::from_utf8_lossy(&buf[..len]))
}

/// Whether a process runs, as [`ProcessIdentity::liveness`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// Exited (a zombie included), or its pid is another process's now.
    Gone,
    /// Alive, and bears [`HELD_NAME`]: forked by a supervisor, not past its exec.
    Held,
    /// Alive, past its exec (or never held).
    Running,
}

impl ProcessIdentity {
    /// The identity of the running process `pid`, if it exists and has not exited.
    pub fn of(pid: u32) -> Option<ProcessIdentity> {
        let stat = stat(pid)?;
        (!stat.is_dead()).then_some(ProcessIdentity {
            pid,
            start: stat.start,
        })
    }

    /// The identity of `pid`, a child of ours not yet reaped: it may already have exited
    /// (a zombie), but its pid and start time still name it, and its process group.
    pub fn of_child(pid: u32) -> Option<ProcessIdentity> {
        stat(pid).map(|stat| ProcessIdentity {
            pid,
            start: stat.start,
        })
    }

    /// The identity of the calling process.
    pub fn current() -> ProcessIdentity {
        let pid = std::process::id();
        let stat = stat(pid).expect("/proc/self/stat is readable on Linux");
        ProcessIdentity {
            pid,
            start: stat.start,
        }
    }

    /// Whether this very process is still running: the pid exists, has not exited, and has the
    /// recorded start time. A pid now held by another process is *not* alive.
    pub fn is_alive(&self) -> bool {
        ProcessIdentity::of(self.pid) == Some(*self)
    }

    /// Whether this very process is alive and still held before its exec (it bears
    /// [`HELD_NAME`]).
    pub fn is_held(&self) -> bool {
        self.liveness() == Liveness::Held
    }

    /// Whether this very process runs, and whether it is still held before its exec: one
    /// read of its stat.
    pub fn liveness(&self) -> Liveness {
        match stat(self.pid) {
            Some(s) if s.start == self.start && !s.is_dead() && s.held => Liveness::Held,
            Some(s) if s.start == self.start && !s.is_dead() => Liveness::Running,
            _ => Liveness::Gone,
        }
    }

    /// Sends `signal` to this process if it is still this process. Returns whether it was sent.
    pub fn signal(&self, signal: Signal) -> bool {
        self.is_alive() && kill(Pid::from_raw(self.pid as i32), signal).is_ok()
    }

    /// Whether anything of the process group this process led is still running: the leader
    /// itself, or members of the group started after it (the group outlives its leader, and the
    /// kernel does not reuse a pid while a group of that id exists).
    ///
    /// # Caveats
    /// If the pid now belongs to another live process (a different start time), the group is
    /// someone else's and this returns `false`.
    pub fn group_alive(&self) -> bool {
        match stat(self.pid) {
            Some(leader) if leader.start != self.start => false,
            Some(leader) if !leader.is_dead() => true,
            _ => !self.group_members().is_empty(),
        }
    }

    /// Live processes in the group this process led, other than the leader.
    fn group_members(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != self.pid)
            .filter(|&pid| {
                stat(pid)
                    .is_some_and(|s| !s.is_dead() && s.pgrp == self.pid && s.start >= self.start)
            })
            .collect()
    }

    /// Sends `signal` to the process group this process led, if the group is still ours (see
    /// [`ProcessIdentity::group_alive`]). Returns whether anything was signalled.
    pub fn signal_group(&self, signal: Signal) -> bool {
        self.group_alive() && killpg(Pid::from_raw(self.pid as i32), signal).is_ok()
    }

    /// Stops the process group this process led: SIGTERM, then SIGKILL for whatever is still
    /// running after `grace`. Returns once nothing of the group runs, or after a last SIGKILL
    /// and a short wait if the kernel is slow to reap.
    pub fn stop_group(&self, grace: Duration) {
        if !self.signal_group(Signal::SIGTERM) {
            return;
        }
        if wait_until(Instant::now() + grace, || !self.group_alive()) {
            return;
        }
        self.signal_group(Signal::SIGKILL);
        wait_until(Instant::now() + Duration::from_secs(5), || {
            !self.group_alive()
        });
    }
}

/// Polls `done` until it returns true (then `true`) or `deadline` passes (then `false`, after
/// one last check). The first checks come quickly (from 250 µs, doubling to 20 ms): most of
/// what is waited for here (a supervisor writing its state or starting to listen, a process
/// exiting) takes a few milliseconds, and a fixed 20 ms tick made starting 100 processes take
/// half a second.
pub(crate) fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    let mut tick = Duration::from_micros(250);
    loop {
        if done() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep((deadline - now).min(tick));
        tick = (tick * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_counts_fields_after_the_last_parenthesis() {
        let line = "4242 (my (weird) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 100 18446744073709551615";
        let stat = parse_stat(line).expect("a well-formed stat line parses");
        assert_eq!(
            stat,
            ProcStat {
                held: false,
                state: 'S',
                pgrp: 4242,
                start: 987654
            },
            "state, group and start time are read from fields 3, 5 and 22"
        );
        let held = "77 (slipway-held) S 1 77 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 5 1 1";
        assert!(
            parse_stat(held).is_some_and(|s| s.held),
            "a child named {HELD_NAME:?} is held"
        );
        let lookalike = "77 (x) (slipway-held) S 1 77 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 5";
        assert!(
            parse_stat(lookalike).is_some_and(|s| !s.held),
            "a name that only ends like it is not the name"
        );
    }

    #[test]
    fn parse_stat_rejects_truncated_lines() {
        assert_eq!(
            parse_stat("12 (sh) S 1 12"),
            None,
            "a short line has no start time"
        );
        for bad in ["", ")(", "12 ) S (", "(", ")", "12 (sh"] {
            assert_eq!(parse_stat(bad), None, "{bad:?} is no stat line");
        }
    }

    #[test]
    fn current_process_is_alive_and_a_different_start_time_is_not() {
        let me = ProcessIdentity::current();
        assert!(me.is_alive(), "the test process is alive");
        let impostor = ProcessIdentity {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(
            !impostor.is_alive(),
            "the same pid with another start time is a different process"
        );
    }
}
