//! The lease watchdog (`slipway __watchdog`): it kills a watched process group when its time
//! is up, keeps one whose time was extended, never kills a process that only shares a pid
//! with the one it was told about, and kills everything it watches when its replica dies
//! (its standard input closes).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

fn watchdog() -> (Child, ChildStdin) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .arg("__watchdog")
        .stdin(Stdio::piped())
        .spawn()
        .expect("start the watchdog");
    let stdin = child.stdin.take().expect("its input");
    (child, stdin)
}

/// A `sleep` leading a process group of its own, as the engine starts commands.
fn group() -> Child {
    Command::new("sleep")
        .arg("60")
        .process_group(0)
        .spawn()
        .expect("start sleep")
}

/// Field 22 of `/proc/PID/stat`: the start time that, with the pid, names a process.
fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 1..];
    after
        .split_whitespace()
        .nth(19)
        .expect("field 22")
        .parse()
        .expect("a number")
}

/// `ms` milliseconds from now on `CLOCK_MONOTONIC`, the protocol's clock.
fn at(ms: u64) -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    now.tv_sec() as u64 * 1000 + now.tv_nsec() as u64 / 1_000_000 + ms
}

fn send(stdin: &mut ChildStdin, line: &str) {
    writeln!(stdin, "{line}").expect("the watchdog reads");
    stdin.flush().expect("flush");
}

/// Waits up to 10 s for `child` to exit; whether it did.
fn exits(child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().expect("try_wait").is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn alive_after(child: &mut Child, wait: Duration) -> bool {
    std::thread::sleep(wait);
    child.try_wait().expect("try_wait").is_none()
}

#[test]
fn a_group_whose_time_is_up_is_killed_and_one_whose_time_was_extended_lives_on() {
    let (mut dog, mut input) = watchdog();
    let (mut due, mut extended) = (group(), group());
    send(
        &mut input,
        &format!("watch {} {} {}", due.id(), start_ticks(due.id()), at(300)),
    );
    // Its first lease leaves a watchdog slow to start on a busy machine time to read the
    // extension that follows before that lease is up.
    let first_lease = Instant::now() + Duration::from_secs(3);
    send(
        &mut input,
        &format!(
            "watch {} {} {}",
            extended.id(),
            start_ticks(extended.id()),
            at(3_000)
        ),
    );
    send(
        &mut input,
        &format!("until {} {}", extended.id(), at(60_000)),
    );
    assert!(exits(&mut due), "the group whose time was up is killed");
    assert!(
        alive_after(
            &mut extended,
            first_lease.saturating_duration_since(Instant::now()) + Duration::from_millis(500)
        ),
        "the group whose lease was renewed keeps running past its first lease"
    );
    // Forgotten (it ended by itself, as far as the replica knows): not killed any more,
    // even when the watchdog's input closes.
    send(&mut input, &format!("forget {}", extended.id()));
    drop(input);
    assert!(exits(&mut dog), "the watchdog exits when its input closes");
    assert!(
        alive_after(&mut extended, Duration::from_millis(200)),
        "a forgotten group is left alone"
    );
    extended.kill().expect("kill");
    extended.wait().expect("reap");
}

#[test]
fn when_its_replica_dies_every_watched_group_is_killed_but_never_a_stranger() {
    let (mut dog, mut input) = watchdog();
    let mut watched = group();
    let mut stranger = group();
    send(
        &mut input,
        &format!(
            "watch {} {} {}",
            watched.id(),
            start_ticks(watched.id()),
            at(60_000)
        ),
    );
    // The stranger's pid with another start time: a pid reused since the watch began.
    send(
        &mut input,
        &format!(
            "watch {} {} {}",
            stranger.id(),
            start_ticks(stranger.id()) + 1,
            at(1)
        ),
    );
    send(&mut input, "watch not-a-pid 1 1");
    assert!(
        alive_after(&mut stranger, Duration::from_millis(300)),
        "a process that only shares the pid is not killed"
    );
    drop(input);
    assert!(
        exits(&mut watched),
        "the watched group dies with its replica"
    );
    assert!(exits(&mut dog), "and the watchdog exits");
    assert!(
        alive_after(&mut stranger, Duration::from_millis(100)),
        "the stranger still runs"
    );
    stranger.kill().expect("kill");
    stranger.wait().expect("reap");
}

/// A child registers itself before it becomes its program (`watch PID 0 AT`, its start time
/// unknown to it): a replica frozen right after the fork never tells the watchdog about it,
/// and it is killed at its lease's end all the same. A line composed before a freeze and
/// written after it carries a time already past: the group is killed at once.
#[test]
fn a_child_that_registered_itself_is_killed_at_its_time_though_its_replica_said_nothing() {
    use std::os::fd::AsRawFd;
    let (mut dog, input) = watchdog();
    let fd = input.as_raw_fd();
    let start = |until: u64| {
        let mut command = Command::new("sleep");
        command.arg("60").process_group(0);
        // Composed around the pid without allocating: the test harness has threads, and
        // only async-signal-safe calls (getpid, write) are safe after the fork.
        let tail = format!(" 0 {until}\n");
        // SAFETY: see above; `tail` was made before the fork.
        unsafe {
            command.pre_exec(move || {
                let mut line = [0u8; 64];
                line[..6].copy_from_slice(b"watch ");
                let mut len = 6;
                let mut n = std::process::id();
                let mut digits = [0u8; 10];
                let mut count = 0;
                loop {
                    digits[count] = b'0' + (n % 10) as u8;
                    count += 1;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                for digit in digits[..count].iter().rev() {
                    line[len] = *digit;
                    len += 1;
                }
                line[len..len + tail.len()].copy_from_slice(tail.as_bytes());
                len += tail.len();
                nix::libc::write(fd, line.as_ptr().cast(), len);
                Ok(())
            });
        }
        command.spawn().expect("start sleep")
    };
    let started = Instant::now();
    let mut due = start(at(400));
    let mut stale = start(at(0).saturating_sub(5_000));
    let mut later = start(at(60_000));
    assert!(exits(&mut stale), "a time already past kills at once");
    assert!(exits(&mut due), "the group is killed at its time");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "and not before: {:?}",
        started.elapsed()
    );
    assert!(
        alive_after(&mut later, Duration::from_millis(200)),
        "a group whose time is not up runs on"
    );
    drop(input);
    assert!(exits(&mut later), "and dies with its replica");
    assert!(exits(&mut dog), "the watchdog exits");
}
