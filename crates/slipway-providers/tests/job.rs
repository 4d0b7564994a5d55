//! The `job` provider against real commands.

mod common;

use std::time::{Duration, Instant};

use common::{Reaper, TestEnv, eventually, failed, pid_running};
use serde_json::{Value, json};
use slipway_providers::{ProviderError, Registry, Retry};

fn create(env: &TestEnv, config: Value) -> Result<slipway_providers::Applied, ProviderError> {
    let registry = Registry::local();
    let job = registry.get("job").expect("job is a local provider");
    job.create(env.ctx("migrate"), &config)
}

#[test]
fn a_successful_job_reports_exit_code_zero_and_logs_its_output() {
    let env = TestEnv::new();
    let applied = create(
        &env,
        json!({"command": ["sh", "-c", "echo to-stdout; echo to-stderr >&2"]}),
    )
    .unwrap_or_else(|e| panic!("the job succeeds: {e}\n{}", env.report()));
    assert_eq!(
        applied.outputs["exit_code"],
        json!(0),
        "exit_code output is 0"
    );
    assert_eq!(
        applied.live["exit_code"],
        json!(0),
        "live records the exit code"
    );
    assert!(
        applied.live["finished_at"].as_u64().is_some_and(|t| t > 0),
        "live records when it finished: {}",
        applied.live
    );
    assert!(
        applied.live["duration_ms"].is_u64(),
        "live records how long it took: {}",
        applied.live
    );
    let log = env.log("migrate");
    assert!(
        log.contains("to-stdout\n") && log.contains("to-stderr\n"),
        "stdout and stderr are appended to the resource log:\n{log}"
    );
    create(&env, json!({"command": ["sh", "-c", "echo second-run"]})).expect("second run");
    let log = env.log("migrate");
    assert!(
        log.contains("to-stdout") && log.contains("second-run"),
        "a second run appends to the log instead of replacing it:\n{log}"
    );
}

#[test]
fn a_job_runs_in_the_source_directory_with_a_clean_environment() {
    let mut env = TestEnv::new();
    env.ports.insert("http".to_owned(), 20123);
    std::fs::create_dir_all(env.dirs.src.join("tools")).expect("mkdir");
    create(
        &env,
        json!({
            "command": ["sh", "-c", "echo cwd=$(pwd); env | sort"],
            "env": {"GREETING": "hello world"},
            "cwd": "tools",
        }),
    )
    .unwrap_or_else(|e| panic!("the job succeeds: {e}\n{}", env.report()));
    let log = env.log("migrate");
    let src = env
        .dirs
        .src
        .join("tools")
        .canonicalize()
        .expect("canonical src");
    assert!(
        log.contains(&format!("cwd={}\n", src.display())),
        "the job runs in src/<cwd>:\n{log}"
    );
    for expected in [
        "GREETING=hello world\n".to_owned(),
        "PORT_HTTP=20123\n".to_owned(),
        "SLIPWAY_ENV=qa\n".to_owned(),
        "SLIPWAY_RESOURCE=migrate\n".to_owned(),
        format!("SLIPWAY_DATA_DIR={}\n", env.dirs.data.display()),
    ] {
        assert!(
            log.contains(&expected),
            "the job's environment has {expected:?}:\n{log}"
        );
    }
    assert!(log.contains("\nPATH="), "PATH is passed through:\n{log}");
    assert!(
        !log.contains("CARGO_MANIFEST_DIR="),
        "the engine's own environment does not leak into the job:\n{log}"
    );
}

#[test]
fn a_failing_job_is_a_terminal_error_naming_the_exit_code_with_the_log_tail() {
    let env = TestEnv::new();
    let err = create(
        &env,
        json!({"command": ["sh", "-c", "echo it-broke >&2; exit 3"]}),
    )
    .expect_err("a job exiting 3 fails");
    let (message, log_tail, retry) = failed(&err, "a failed job");
    assert!(
        message.contains("exit code 3"),
        "the message names the exit code: {message}"
    );
    assert!(
        message.contains("exit 3"),
        "the message names the command: {message}"
    );
    assert_eq!(
        retry,
        Retry::Terminal,
        "a failed job is not retried by itself"
    );
    assert_eq!(
        log_tail,
        Some("it-broke"),
        "the log tail is this run's output"
    );
}

#[test]
fn a_job_past_its_timeout_is_stopped_with_everything_it_started() {
    let env = TestEnv::new();
    let pids = env.dirs.data.join("pids");
    let script = format!(
        "sleep 300 & echo $! > {p}; echo $$ >> {p}; sleep 300",
        p = pids.display()
    );
    let started = Instant::now();
    let err = create(
        &env,
        json!({"command": ["sh", "-c", script], "timeout": "500ms"}),
    )
    .expect_err("a job past its timeout fails");
    let took = started.elapsed();
    let text = std::fs::read_to_string(&pids).expect("the job wrote its pids");
    let pids: Vec<u32> = text.lines().map(|l| l.parse().expect("a pid")).collect();
    let _reaper = Reaper(pids.clone());
    assert!(
        err.to_string().contains("did not finish within 500ms"),
        "the error names the timeout: {err}"
    );
    assert!(!err.retryable(), "a timed-out job is a terminal failure");
    assert!(
        took < Duration::from_secs(10),
        "the job is stopped soon after its timeout ({took:?})"
    );
    assert!(
        eventually(Duration::from_secs(5), || pids
            .iter()
            .all(|&p| !pid_running(p))),
        "the job and its background child are killed with its process group: {pids:?}"
    );
}

#[test]
fn a_job_whose_program_does_not_exist_fails_naming_it() {
    let env = TestEnv::new();
    let err = create(&env, json!({"command": ["no-such-program-slipway"]}))
        .expect_err("a missing program fails");
    assert!(
        err.to_string().contains("no-such-program-slipway"),
        "the error names the program: {err}"
    );
    assert!(!err.retryable(), "a missing program is a terminal failure");
}

#[test]
fn job_configuration_is_checked() {
    let env = TestEnv::new();
    for (config, why) in [
        (json!({"command": []}), "an empty command"),
        (
            json!({"command": ["true"], "colour": "red"}),
            "an unknown field",
        ),
        (
            json!({"command": ["true"], "timeout": "soon"}),
            "a malformed duration",
        ),
        (
            json!({"command": ["true"], "cwd": "../elsewhere"}),
            "a cwd outside src",
        ),
    ] {
        let err = create(&env, config).expect_err(why);
        assert!(
            matches!(err, ProviderError::Config(_)),
            "{why} is a configuration error, got {err:?}"
        );
    }
}

#[test]
fn a_job_has_nothing_to_delete_and_is_always_in_sync() {
    let env = TestEnv::new();
    let registry = Registry::local();
    let job = registry.get("job").expect("job is registered");
    let config = json!({"command": ["true"]});
    let applied = job
        .create(env.ctx("migrate"), &config)
        .expect("true succeeds");
    assert_eq!(
        job.observe(env.ctx("migrate"), &config, &applied.live)
            .expect("observe"),
        slipway_providers::Observation::InSync,
        "a finished job is in sync"
    );
    job.delete(env.ctx("migrate"), Some(&applied.live))
        .expect("delete");
    job.delete(env.ctx("migrate"), None)
        .expect("delete is idempotent");
}

#[test]
fn the_local_registry_has_the_four_local_types() {
    let types: Vec<&str> = Registry::local().types().collect();
    assert_eq!(
        types,
        ["exec", "file", "job", "process"],
        "the local providers are registered"
    );
}

/// On a replica, a job whose environment's lease this replica does not hold is refused before
/// it starts, and the refusal is retryable: the lease passes (renewed, taken again, or the
/// environment's new holder runs it), so the environment must not wait for a new commit.
#[test]
fn a_job_refused_for_its_lease_never_starts_and_is_retried_not_failed_for_good() {
    let env = TestEnv::new();
    // The watchdog is never asked anything here (no lease is held, so nothing starts): any
    // program that reads its input stands in for `slipway __watchdog`.
    let watchdog =
        slipway_providers::watchdog::Watchdog::start(&["cat".into()], Duration::from_secs(3))
            .expect("start a stand-in watchdog");
    let sandbox = slipway_providers::sandbox::Sandbox {
        lease: Some(slipway_providers::sandbox::LeaseBound {
            environment: "qa".into(),
            fence: None,
            watchdog,
        }),
        ..slipway_providers::sandbox::Sandbox::none()
    };
    let mut ctx = env.ctx("migrate");
    ctx.sandbox = &sandbox;
    let registry = Registry::local();
    let job = registry.get("job").expect("job is a local provider");
    let err = job
        .create(ctx, &json!({"command": ["sh", "-c", "touch started"]}))
        .expect_err("no lease, no run");
    let (message, _, retry) = failed(&err, "the refused job");
    assert!(message.contains("not certainly held"), "{message}");
    assert_eq!(retry, Retry::Retryable, "{message}");
    assert!(
        !env.dirs.src.join("started").exists(),
        "the command never started"
    );
}

/// Under a lease, the job's child tells the watchdog about itself before it becomes the
/// program (`watch PID 0 AT`), then the replica confirms it with its start time, and forgets
/// it once it ended: a replica frozen between the fork and its own line leaves nothing
/// running that the watchdog does not bound. Both lines carry the lease's end, on the
/// monotonic clock, and not a moment later.
#[test]
fn a_job_under_a_lease_is_watched_before_its_program_runs() {
    let env = TestEnv::new();
    let heard = env.dirs.root.join("watchdog-heard");
    // A stand-in watchdog that keeps what it is told.
    let watchdog = slipway_providers::watchdog::Watchdog::start(
        &[
            "sh".into(),
            "-c".into(),
            format!("cat >> '{}'", heard.display()).into(),
        ],
        Duration::from_secs(30),
    )
    .expect("start a stand-in watchdog");
    let clock = || {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
        now.tv_sec() as u64 * 1000 + now.tv_nsec() as u64 / 1_000_000
    };
    let margin = watchdog.margin().as_millis() as u64;
    let earliest = clock() + 30_000 - margin - 1;
    watchdog.renewed("qa", Instant::now(), Duration::from_secs(30));
    let lease_end = clock() + 30_000 - margin;
    let sandbox = slipway_providers::sandbox::Sandbox {
        lease: Some(slipway_providers::sandbox::LeaseBound {
            environment: "qa".into(),
            fence: Some(("r1".into(), 1)),
            watchdog: watchdog.clone(),
        }),
        ..slipway_providers::sandbox::Sandbox::none()
    };
    let mut ctx = env.ctx("migrate");
    ctx.sandbox = &sandbox;
    let registry = Registry::local();
    let job = registry.get("job").expect("job is a local provider");
    job.create(ctx, &json!({"command": ["sh", "-c", "echo $$ > pid"]}))
        .expect("the job runs under its lease");
    let pid = std::fs::read_to_string(env.dirs.src.join("pid")).expect("the job ran");
    let pid = pid.trim();
    drop(sandbox);
    drop(watchdog);
    let lines = std::fs::read_to_string(&heard).expect("the watchdog heard");
    let lines: Vec<Vec<&str>> = lines.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let (first, confirmed) = (&lines[0], &lines[1]);
    assert_eq!(
        first[..3],
        ["watch", pid, "0"],
        "the child first: {lines:?}"
    );
    assert_eq!(
        confirmed[..2],
        ["watch", pid],
        "then the replica: {lines:?}"
    );
    assert_ne!(confirmed[2], "0", "with the start time: {lines:?}");
    assert_eq!(lines[2], ["forget", pid], "and it ended: {lines:?}");
    for line in [first, confirmed] {
        let at: u64 = line[3].parse().expect("a time");
        assert!(
            (earliest..=lease_end).contains(&at),
            "the lease's end, on the monotonic clock: {at} in {earliest}..={lease_end}"
        );
    }
}
