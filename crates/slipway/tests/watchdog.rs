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
        &format!("watch {} {} 300", due.id(), start_ticks(due.id())),
    );
    send(
        &mut input,
        &format!("watch {} {} 300", extended.id(), start_ticks(extended.id())),
    );
    send(&mut input, &format!("until {} 60000", extended.id()));
    assert!(exits(&mut due), "the group whose time was up is killed");
    assert!(
        alive_after(&mut extended, Duration::from_millis(500)),
        "the group whose lease was renewed keeps running"
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
        &format!("watch {} {} 60000", watched.id(), start_ticks(watched.id())),
    );
    // The stranger's pid with another start time: a pid reused since the watch began.
    send(
        &mut input,
        &format!(
            "watch {} {} 1",
            stranger.id(),
            start_ticks(stranger.id()) + 1
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
