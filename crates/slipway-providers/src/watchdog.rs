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
//! A command registers itself, from the forked child just before it becomes the program
//! (`pre_exec`), so a replica frozen between starting a command and telling the watchdog about
//! it cannot leave a program running that nobody bounds: the program never runs unwatched.
//! Times are absolute, on the machine's monotonic clock, so a line written long after it was
//! composed (its writer was frozen in between) never gives a group more time than its lease.
//!
//! # Protocol (one line each, on the watchdog's standard input)
//! - `watch PID START AT`: watch the process group led by `PID` (started at `START` clock
//!   ticks after boot, see [`crate::procinfo`]; `0` when the child registers itself and does
//!   not know it: the watchdog reads it, the pid being held by the unreaped child); kill it at
//!   `AT`, milliseconds of `CLOCK_MONOTONIC`.
//! - `until PID AT`: its time is now up at `AT`.
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
    /// How many times the lease ran out or was let go while held here: a group watched
    /// across one may have been killed by the watchdog, even if the lease was taken again.
    lapses: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Milliseconds of `CLOCK_MONOTONIC` now: one clock for every process of the machine.
fn monotonic_ms() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always readable on Linux");
    u64::try_from(now.tv_sec()).unwrap_or(0) * 1000
        + u64::try_from(now.tv_nsec()).unwrap_or(0) / 1_000_000
}

/// `until` on the monotonic clock in milliseconds (`0`, long past, for `None`). Rounded
/// down: never later than `until`.
fn monotonic_at(until: Option<Instant>) -> u64 {
    let Some(until) = until else { return 0 };
    let now = Instant::now();
    let base = monotonic_ms();
    if until >= now {
        base + u64::try_from(until.duration_since(now).as_millis()).unwrap_or(u64::MAX / 2)
    } else {
        base.saturating_sub(
            u64::try_from(now.duration_since(until).as_millis())
                .unwrap_or(u64::MAX)
                .saturating_add(1),
        )
    }
}

/// The instant of `at`, monotonic milliseconds (now, when it has passed).
fn instant_of(at: u64) -> Instant {
    Instant::now() + Duration::from_millis(at.saturating_sub(monotonic_ms()))
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
        // One write of a line shorter than PIPE_BUF: atomic, so never interleaved with a
        // line a child writes itself (see [`Registration`]).
        stdin.write_all(format!("{line}\n").as_bytes())
    }

    /// The lease of `environment` was taken or renewed; asked of the database at `asked`
    /// (before the request went out) for `lease`: its groups may run until then, less the
    /// margin.
    pub fn renewed(&self, environment: &str, asked: Instant, lease: Duration) {
        let until = asked + lease.saturating_sub(self.margin);
        let mut leases = lock(&self.leases);
        let held = leases.entry(environment.to_owned()).or_default();
        if held.until.is_some_and(|before| before <= Instant::now()) {
            held.lapses += 1;
        }
        held.until = Some(until);
        for pid in &held.groups {
            let _ = self.send(&format!("until {pid} {}", monotonic_at(held.until)));
        }
    }

    /// The lease of `environment` is no longer this replica's (lost or let go): whatever
    /// still runs under it is killed now.
    pub fn released(&self, environment: &str) {
        let mut leases = lock(&self.leases);
        if let Some(held) = leases.get_mut(environment) {
            held.until = None;
            held.lapses += 1;
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
        if held.until.is_none_or(|until| until <= Instant::now()) {
            let _ = self.send(&format!("forget {}", group.pid));
            // Typed, as `registration` refuses: the lease may lapse between the two (the
            // command is spawned in between), and a caller must still tell it from a
            // program that cannot start. An untyped error here made a job refused so a
            // terminal failure, parked until a new commit.
            return Err(io::Error::other(LeaseNotHeld(environment.to_owned())));
        }
        self.send(&format!(
            "watch {} {} {}",
            group.pid,
            group.start,
            monotonic_at(held.until)
        ))?;
        held.groups.push(group.pid);
        Ok(Watched {
            watchdog: Arc::clone(self),
            environment: environment.to_owned(),
            pid: group.pid,
            lapses: held.lapses,
        })
    }

    /// What a command about to start for `environment` needs to register itself from the
    /// forked child ([`Registration::register`]), with the time its lease is certainly held.
    ///
    /// # Errors
    /// When the lease is not certainly held now, or the watchdog was let go.
    pub(crate) fn registration(&self, environment: &str) -> io::Result<Registration> {
        use std::os::fd::AsRawFd;
        let until = lock(&self.leases)
            .get(environment)
            .and_then(|held| held.until);
        if until.is_none_or(|until| until <= Instant::now()) {
            return Err(io::Error::other(LeaseNotHeld(environment.to_owned())));
        }
        let fd = lock(&self.process)
            .stdin
            .as_ref()
            .map(AsRawFd::as_raw_fd)
            .ok_or_else(|| io::Error::other("the lease watchdog was let go"))?;
        Ok(Registration {
            fd,
            at: monotonic_at(until),
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

/// A command's registration with the watchdog, written by the forked child itself before it
/// becomes the program (see the module's documentation). The descriptor stays open while the
/// [`Watchdog`] lives, which the command's caller holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Registration {
    fd: std::os::fd::RawFd,
    /// When the lease may run out, monotonic milliseconds.
    at: u64,
}

impl Registration {
    /// The descriptor it writes to, which a child must keep until it registers.
    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        self.fd
    }

    /// Writes `watch PID 0 AT` for the calling process, in one `write`. Async-signal-safe: no
    /// allocation, no lock, so it may run in a child forked from a threaded process.
    ///
    /// # Errors
    /// When the watchdog cannot be told (it has exited): the program must not start.
    pub fn register(&self) -> io::Result<()> {
        let mut line = [0u8; 64];
        let mut len = 0;
        for part in [
            Part::Text(b"watch "),
            Part::Number(u64::from(std::process::id())),
            Part::Text(b" 0 "),
            Part::Number(self.at),
            Part::Text(b"\n"),
        ] {
            len += part.write(&mut line[len..]);
        }
        // SAFETY: `write` is async-signal-safe, and `line[..len]` is initialised.
        let written = unsafe { nix::libc::write(self.fd, line.as_ptr().cast(), len) };
        if usize::try_from(written).is_ok_and(|n| n == len) {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// A piece of a line composed without allocating.
enum Part {
    Text(&'static [u8]),
    Number(u64),
}

impl Part {
    /// Writes itself at the start of `out`; returns how many bytes. `out` has room: the line
    /// is at most 6 + 20 + 3 + 20 + 1 bytes.
    fn write(&self, out: &mut [u8]) -> usize {
        match self {
            Part::Text(text) => {
                out[..text.len()].copy_from_slice(text);
                text.len()
            }
            Part::Number(n) => {
                let mut n = *n;
                let mut digits = [0u8; 20];
                let mut count = 0;
                loop {
                    digits[count] = b'0' + (n % 10) as u8;
                    count += 1;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                for (i, digit) in digits[..count].iter().rev().enumerate() {
                    out[i] = *digit;
                }
                count
            }
        }
    }
}

/// A group under watch; dropping it stops the watch.
#[derive(Debug)]
pub(crate) struct Watched {
    watchdog: Arc<Watchdog>,
    environment: String,
    pid: u32,
    /// [`Held::lapses`] when the watch began.
    lapses: u64,
}

impl Watched {
    /// How long the lease certainly lasts from now.
    pub fn remaining(&self) -> Duration {
        self.watchdog.remaining(&self.environment)
    }

    /// Whether the lease has run out (or was let go) at some moment since the watch began:
    /// the watchdog may have killed the group then, whatever the lease is now.
    pub fn lapsed(&self) -> bool {
        let leases = lock(&self.watchdog.leases);
        leases.get(&self.environment).is_none_or(|held| {
            held.lapses != self.lapses || held.until.is_none_or(|u| u <= Instant::now())
        })
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
    Watch { pid: u32, start: u64, at: u64 },
    Until { pid: u32, at: u64 },
    Forget { pid: u32 },
}

fn parse(line: &str) -> Option<Line> {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    match words.as_slice() {
        ["watch", pid, start, at] => Some(Line::Watch {
            pid: pid.parse().ok()?,
            start: start.parse().ok()?,
            at: at.parse().ok()?,
        }),
        ["until", pid, at] => Some(Line::Until {
            pid: pid.parse().ok()?,
            at: at.parse().ok()?,
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
                Some(Line::Watch { pid, start, at }) => {
                    // A child registering itself does not know its start time; its parent
                    // has not reaped it (it is waiting for it to exec), so the pid is still
                    // its own to read.
                    let start = match start {
                        0 => crate::procinfo::stat(pid).map(|stat| stat.start),
                        known => Some(known),
                    };
                    if let Some(start) = start {
                        watched.insert(pid, (ProcessIdentity { pid, start }, instant_of(at)));
                    }
                }
                Some(Line::Until { pid, at }) => {
                    if let Some((_, until)) = watched.get_mut(&pid) {
                        *until = instant_of(at);
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

    /// A group watched while its lease ran out may have been killed by the watchdog then:
    /// it stays lapsed after the lease is taken again; a group watched after is not.
    #[test]
    fn a_lease_that_ran_out_while_a_group_ran_counts_as_lapsed_after_it_is_renewed() {
        // Nothing here reads what the watchdog is told: `cat` stands in for it.
        // 3 s: a busy machine may stall the test between two lines for a good part of it.
        let lease = Duration::from_secs(3);
        let watchdog = Watchdog::start(&["cat".into()], lease).expect("a stand-in watchdog");
        let renewed = Instant::now();
        watchdog.renewed("qa", renewed, lease);
        let group = ProcessIdentity::current();
        let watched = watchdog.watch("qa", group).expect("the lease is held");
        assert!(!watched.lapsed(), "the lease is held");
        let deadline = renewed + lease + Duration::from_secs(10);
        while !watched.lapsed() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(watched.lapsed(), "its time is up");
        watchdog.renewed("qa", Instant::now(), Duration::from_secs(30));
        assert!(!watched.remaining().is_zero(), "held again");
        assert!(watched.lapsed(), "but it ran out while the group ran");
        let fresh = watchdog.watch("qa", group).expect("held again");
        assert!(
            !fresh.lapsed(),
            "a group watched since has not seen it run out"
        );
        watchdog.released("qa");
        assert!(fresh.lapsed(), "let go");
    }

    /// A lease that lapses after `registration` and before `watch` (while the command is
    /// spawned) refuses the command as a lapsed lease, which passes, not as a command that
    /// cannot start: a job refused so is retried, never parked.
    #[test]
    fn a_lease_lapsed_between_registration_and_watch_is_a_refusal_for_the_lease() {
        // 2 s: time enough on a busy machine for the first registration below.
        let lease = Duration::from_secs(2);
        let watchdog = Watchdog::start(&["cat".into()], lease).expect("a stand-in watchdog");
        watchdog.renewed("qa", Instant::now(), lease);
        let registration = watchdog.registration("qa");
        assert!(
            registration.is_ok(),
            "held when the command is about to start"
        );
        // Until it has lapsed: no command could be registered any more.
        let deadline = Instant::now() + Duration::from_secs(10);
        while watchdog.registration("qa").is_ok() {
            assert!(Instant::now() < deadline, "the lease never lapsed");
            std::thread::sleep(Duration::from_millis(10));
        }
        let Err(refused) = watchdog.watch("qa", ProcessIdentity::current()) else {
            panic!("lapsed by the time it is watched, yet watched");
        };
        assert!(
            refused_for_lease(&refused),
            "a refusal for the lease, which the job provider retries: {refused}"
        );
        assert!(
            refused.to_string().contains("not certainly held"),
            "and says so: {refused}"
        );
        let Err(never) = watchdog.registration("prod") else {
            panic!("never held, yet registered");
        };
        assert!(refused_for_lease(&never), "{never}");
    }

    #[test]
    fn instructions_parse_and_anything_else_is_refused() {
        assert_eq!(
            parse("watch 12 345 1500"),
            Some(Line::Watch {
                pid: 12,
                start: 345,
                at: 1500
            })
        );
        assert_eq!(parse("until 12 0"), Some(Line::Until { pid: 12, at: 0 }));
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
