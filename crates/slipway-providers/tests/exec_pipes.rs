//! The threads that serve an `exec` program's pipes, alone in their test process: it counts
//! them by name, which another test running at once would disturb.

mod common;

use std::time::Duration;

use common::{TestEnv, eventually, hostile, pid_running};
use slipway_providers::Registry;

/// The threads of this process that serve programs' pipes, by name.
fn pipe_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .flatten()
                .filter(|task| {
                    std::fs::read_to_string(task.path().join("comm"))
                        .is_ok_and(|name| name.trim() == "slipway-pipe")
                })
                .count()
        })
        .unwrap_or(0)
}

/// A program whose descendant escapes in a session of its own, holding its pipes (a daemon
/// it starts): each run's threads end with the run. They used to stay blocked on the pipes
/// for as long as the descendant lived, three of them and the request's memory per run, and a
/// status listing or a drift pass ran the program again and again.
#[test]
fn a_program_whose_descendant_keeps_its_pipes_leaves_no_thread_behind() {
    let env = TestEnv::new();
    let mut escaped = Vec::new();
    for i in 0..3 {
        let pids = env.dirs.data.join(format!("escaped-{i}"));
        let registry = Registry::local();
        let exec = registry.get("exec").expect("exec is a local provider");
        exec.create(
            env.ctx("daemon"),
            &hostile("escape", &[pids.to_str().expect("utf-8")], "20s"),
        )
        .unwrap_or_else(|e| panic!("its reply is read: {e}"));
        let pid: u32 = std::fs::read_to_string(&pids)
            .expect("the descendant's pid")
            .trim()
            .parse()
            .expect("a pid");
        escaped.push(pid);
    }
    assert!(
        escaped.iter().all(|pid| pid_running(*pid)),
        "the descendants still hold the pipes"
    );
    assert!(
        eventually(Duration::from_secs(10), || pipe_threads() == 0),
        "{} threads still serve the pipes",
        pipe_threads()
    );
    for pid in escaped {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
