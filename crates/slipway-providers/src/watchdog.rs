//! Commands bounded by a lease: what a replica starts for an environment it holds under a
//! lease is killed when that lease could have run out, even if the replica itself is frozen.
//!
//! With several replicas, a replica works on an environment only under the lease of the
//! store (`slipway_state::leases`). Its state writes prove the lease, but a job or an exec
//! program it started is a process of its own: if the replica stalls (SIGSTOP, a long pause)
//! or is cut off from the database, the program runs on while another replica takes the
//! lease over and starts the same environment's programs, two side effects at once.
//!
//! So each replica runs a watchdog, a small process of its own (`slipway __watchdog`,
//! [`run`]), and tells it, over a pipe, which process groups it started under which lease and
//! until when each lease is certainly still its own. The watchdog kills a group whose time is
//! up, by its own clock, whatever the replica is doing; and every group it watches when the
//! pipe closes (the replica died).
//!
//! The time a group may run is counted from just *before* the replica asked the database to
//! renew the lease, minus a margin ([`Watchdog::margin`]): the database sets the new expiry at
//! least that late, so the group is dead before another replica can take the lease over (the
//! clocks compared are the machine's monotonic clocks, which a skewed wall clock does not move).
//!
//! # Protocol (one line each, on the watchdog's standard input)
//! - `watch PID START MS`: watch the process group led by `PID` (started at `START` clock
//!   ticks after boot, see [`crate::procinfo`]); kill it `MS` milliseconds from now.
//! - `until PID MS`: its time is now `MS` milliseconds from now.
//! - `forget PID`: it ended; stop watching it.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::procinfo::ProcessIdentity;

/// The replica's side: the watchdog process and what it watches for which environment.
#[derive(Debug)]
pub struct Watchdog {
    process: Mutex<Process>,
    /// Per environment: until when its lease is certainly held, and the groups started under
    /// it.
    leases: Mutex<HashMap<String, Held>>,
    margin: Duration,
}

#[derive(Debug)]
struct Process {
    child: Child,
    /// Closed (taken) when the replica lets the watchdog go.
    stdin: Option<ChildStdin>,
}

#[derive(Debug, Default)]
struct Held {
    until: Option<Instant>,
    groups: Vec<u32>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis_until(until: Option<Instant>) -> u128 {
    until.map_or(0, |u| {
        u.saturating_duration_since(Instant::now()).as_millis()
    })
}

impl Watchdog {
    /// Starts the watchdog: `program` and its leading arguments run [`run`] (the `slipway`
    /// binary's `__watchdog`). `lease` is the replica's lease; a fifth of it is the margin
    /// kept between a group's end and the lease's possible expiry.
    ///
    /// # Errors
    /// When the program cannot be started.
    pub fn start(program: &[std::ffi::OsString], lease: Duration) -> io::Result<Arc<Watchdog>> {
        let (first, rest) = program
            .split_first()
            .ok_or_else(|| io::Error::other("no watchdog program given"))?;
        let mut child = Command::new(first)
            .args(rest)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("the watchdog's standard input is not a pipe"))?;
        Ok(Arc::new(Watchdog {
            process: Mutex::new(Process {
                child,
                stdin: Some(stdin),
            }),
            leases: Mutex::new(HashMap::new()),
            margin: lease / 5,
        }))
    }

    /// The time kept between the end of a group and the earliest moment its lease may expire.
    pub fn margin(&self) -> Duration {
        self.margin
    }

    fn send(&self, line: &str) -> io::Result<()> {
        let mut process = lock(&self.process);
        if let Ok(Some(status)) = process.child.try_wait() {
            return Err(io::Error::other(format!(
                "the lease watchdog has exited ({status}); commands cannot be bounded by the lease"
            )));
        }
        let stdin = process
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::other("the lease watchdog was let go"))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()
    }

    /// The lease of `environment` was taken or renewed; asked of the database at `asked`
    /// (before the request went out) for `lease`: its groups may run until then, less the
    /// margin.
    pub fn renewed(&self, environment: &str, asked: Instant, lease: Duration) {
        let until = asked + lease.saturating_sub(self.margin);
        let mut leases = lock(&self.leases);
        let held = leases.entry(environment.to_owned()).or_default();
        held.until = Some(until);
        for pid in &held.groups {
            let _ = self.send(&format!("until {pid} {}", millis_until(held.until)));
        }
    }

    /// The lease of `environment` is no longer this replica's (lost or let go): whatever
    /// still runs under it is killed now.
    pub fn released(&self, environment: &str) {
        let mut leases = lock(&self.leases);
        if let Some(held) = leases.get_mut(environment) {
            held.until = None;
            for pid in &held.groups {
                let _ = self.send(&format!("until {pid} 0"));
            }
            if held.groups.is_empty() {
                leases.remove(environment);
            }
        }
    }

    /// How long the lease of `environment` is certainly this replica's, from now (zero when
    /// it is not, or no longer).
    pub fn remaining(&self, environment: &str) -> Duration {
        lock(&self.leases)
            .get(environment)
            .and_then(|held| held.until)
            .map_or(Duration::ZERO, |until| {
                until.saturating_duration_since(Instant::now())
            })
    }

    /// Watches the group led by `group` (a command just started for `environment`) until the
    /// lease's time is up. Dropping the returned guard stops watching it.
    ///
    /// # Errors
    /// When the lease is no longer certainly held, or the watchdog is gone: the caller stops
    /// the group itself.
    pub(crate) fn watch(
        self: &Arc<Self>,
        environment: &str,
        group: ProcessIdentity,
    ) -> io::Result<Watched> {
        let mut leases = lock(&self.leases);
        let held = leases.entry(environment.to_owned()).or_default();
        let left = millis_until(held.until);
        if left == 0 {
            return Err(io::Error::other(lease_lost(environment)));
        }
        self.send(&format!("watch {} {} {left}", group.pid, group.start))?;
        held.groups.push(group.pid);
        Ok(Watched {
            watchdog: Arc::clone(self),
            environment: environment.to_owned(),
            pid: group.pid,
        })
    }

    fn forget(&self, environment: &str, pid: u32) {
        let mut leases = lock(&self.leases);
        if let Some(held) = leases.get_mut(environment) {
            held.groups.retain(|p| *p != pid);
            if held.groups.is_empty() && held.until.is_none() {
                leases.remove(environment);
            }
        }
        let _ = self.send(&format!("forget {pid}"));
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Closing its input makes it kill what it still watches and exit.
        let process = self
            .process
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        drop(process.stdin.take());
        let _ = process.child.wait();
    }
}

/// The message of a command refused or stopped because its lease ran out.
pub(crate) fn lease_lost(environment: &str) -> String {
    format!(
        "this replica's lease of `{environment}` is not certainly held any more (it could not \
         renew it in time); another replica takes the environment over"
    )
}

/// A command refused because its environment's lease is not certainly held: the error
/// inside the [`std::io::Error`] that [`crate::command::Run::run`] returns then, so that a
/// caller can tell it from a program that cannot start ([`refused_for_lease`]).
#[derive(Debug)]
pub(crate) struct LeaseNotHeld(pub String);

impl std::fmt::Display for LeaseNotHeld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&lease_lost(&self.0))
    }
}

impl std::error::Error for LeaseNotHeld {}

/// Whether `e` is a command refused for its lease ([`LeaseNotHeld`]): a condition that
/// passes (this replica renews or takes the lease again, or another replica takes the
/// environment over and runs it), not a fault of the command.
pub(crate) fn refused_for_lease(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<LeaseNotHeld>())
}

/// A group under watch; dropping it stops the watch.
#[derive(Debug)]
pub(crate) struct Watched {
    watchdog: Arc<Watchdog>,
    environment: String,
    pid: u32,
}

impl Watched {
    /// How long the lease certainly lasts from now.
    pub fn remaining(&self) -> Duration {
        self.watchdog.remaining(&self.environment)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.watchdog.forget(&self.environment, self.pid);
    }
}

/// One instruction of the protocol.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Watch { pid: u32, start: u64, ms: u64 },
    Until { pid: u32, ms: u64 },
    Forget { pid: u32 },
}

fn parse(line: &str) -> Option<Line> {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    match words.as_slice() {
        ["watch", pid, start, ms] => Some(Line::Watch {
            pid: pid.parse().ok()?,
            start: start.parse().ok()?,
            ms: ms.parse().ok()?,
        }),
        ["until", pid, ms] => Some(Line::Until {
            pid: pid.parse().ok()?,
            ms: ms.parse().ok()?,
        }),
        ["forget", pid] => Some(Line::Forget {
            pid: pid.parse().ok()?,
        }),
        _ => None,
    }
}

/// The watchdog process: reads instructions from `input` until it closes, kills each watched
/// group when its time is up, and every watched group when `input` closes. Returns the exit
/// code.
pub fn run(input: impl BufRead + Send + 'static) -> i32 {
    let (lines, received) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in input.lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut watched: BTreeMap<u32, (ProcessIdentity, Instant)> = BTreeMap::new();
    let kill = |group: &ProcessIdentity| {
        group.signal_group(Signal::SIGKILL);
    };
    loop {
        let now = Instant::now();
        watched.retain(|_, (group, until)| {
            if *until <= now {
                kill(group);
                false
            } else {
                true
            }
        });
        let next = watched
            .values()
            .map(|(_, until)| until.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(3600));
        match received.recv_timeout(next) {
            Ok(line) => match parse(&line) {
                Some(Line::Watch { pid, start, ms }) => {
                    let until = Instant::now() + Duration::from_millis(ms);
                    watched.insert(pid, (ProcessIdentity { pid, start }, until));
                }
                Some(Line::Until { pid, ms }) => {
                    if let Some((_, until)) = watched.get_mut(&pid) {
                        *until = Instant::now() + Duration::from_millis(ms);
                    }
                }
                Some(Line::Forget { pid }) => {
                    watched.remove(&pid);
                }
                None => eprintln!("slipway watchdog: ignoring {line:?}"),
            },
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                // The replica is gone: nothing it started may outlive its leases.
                for (group, _) in watched.values() {
                    kill(group);
                }
                return 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_parse_and_anything_else_is_refused() {
        assert_eq!(
            parse("watch 12 345 1500"),
            Some(Line::Watch {
                pid: 12,
                start: 345,
                ms: 1500
            })
        );
        assert_eq!(parse("until 12 0"), Some(Line::Until { pid: 12, ms: 0 }));
        assert_eq!(parse("forget 12"), Some(Line::Forget { pid: 12 }));
        for bad in [
            "",
            "watch 12 345",
            "watch -1 2 3",
            "until 12 soon",
            "kill 12",
            "forget 12 13",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
