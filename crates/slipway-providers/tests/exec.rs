//! The `exec` provider speaking protocol 1 with real programs: the sample key/value provider in
//! `fixtures/kv_provider.py`, and a hostile one that breaks the protocol in every way it can.

mod common;

use std::time::{Duration, Instant};

use common::{Reaper, TestEnv, eventually, fixture, hostile, pid_running};
use serde_json::{Value, json};
use slipway_providers::{DynProvider, Observation, ProviderError, Registry, Retry};

fn kv(key: &str, value: &str) -> Value {
    json!({
        "program": ["python3", fixture("kv_provider.py")],
        "config": {"key": key, "value": value},
    })
}

fn with_registry<T>(f: impl FnOnce(&dyn DynProvider) -> T) -> T {
    let registry = Registry::local();
    f(registry.get("exec").expect("exec is a local provider"))
}

#[test]
fn the_sample_provider_goes_through_create_read_update_and_delete() {
    let env = TestEnv::new();
    with_registry(|exec| {
        let ctx = env.ctx("greeting");
        let created = exec
            .create(ctx, &kv("greeting", "hello"))
            .unwrap_or_else(|e| panic!("create succeeds: {e}\n{}", env.report()));
        let path = env.dirs.data.join("kv/greeting");
        assert_eq!(
            std::fs::read_to_string(&path).expect("kv file"),
            "hello",
            "create wrote the value"
        );
        assert_eq!(
            created.outputs["key"],
            json!("greeting"),
            "outputs come from the reply"
        );
        assert_eq!(
            created.secret_outputs,
            ["token"],
            "secret output names come from the reply"
        );
        assert_eq!(
            created.live,
            json!({"state": {"path": path.display().to_string(), "value": "hello"}}),
            "live is the state the program returned"
        );
        assert_eq!(
            exec.observe(ctx, &kv("greeting", "hello"), &created.live)
                .expect("read"),
            Observation::InSync,
            "read reports in_sync"
        );

        let updated = exec
            .update(ctx, &kv("salutation", "hi"), &created.live)
            .unwrap_or_else(|e| panic!("update succeeds: {e}\n{}", env.report()));
        assert!(
            !path.exists(),
            "update received the previous state and removed the old key"
        );
        assert_eq!(
            std::fs::read_to_string(env.dirs.data.join("kv/salutation")).expect("new kv file"),
            "hi",
            "update wrote the new key"
        );

        exec.delete(ctx, Some(&updated.live))
            .expect("delete succeeds");
        assert!(
            !env.dirs.data.join("kv/salutation").exists(),
            "delete removed the file"
        );
        exec.delete(ctx, None).expect("a second delete succeeds");
        let log = env.log("greeting");
        for op in ["create", "update", "delete"] {
            assert!(
                log.contains(&format!("kv_provider: {op} qa/greeting")),
                "the program's stderr for {op} is in the resource log:\n{log}"
            );
        }
    });
}

#[test]
fn read_reports_drift_and_missing_objects() {
    let env = TestEnv::new();
    with_registry(|exec| {
        let ctx = env.ctx("greeting");
        let config = kv("greeting", "hello");
        let created = exec.create(ctx, &config).expect("create");
        let path = env.dirs.data.join("kv/greeting");
        std::fs::write(&path, "tampered").expect("tamper");
        assert!(
            matches!(
                exec.observe(ctx, &config, &created.live).expect("read"),
                Observation::Drifted { reason } if reason.contains("tampered")
            ),
            "an edited value is reported drifted with the program's reason"
        );
        std::fs::remove_file(&path).expect("remove");
        assert!(
            matches!(
                exec.observe(ctx, &config, &created.live).expect("read"),
                Observation::Missing { .. }
            ),
            "a removed value is reported missing"
        );
    });
}

#[test]
fn delete_without_a_record_asks_the_program_with_a_null_state() {
    let env = TestEnv::new();
    with_registry(|exec| {
        let ctx = env.ctx("greeting");
        exec.create(ctx, &kv("greeting", "hello")).expect("create");
        exec.delete(ctx, None).expect("delete(None) succeeds");
        assert!(
            !env.dirs.data.join("kv/greeting").exists(),
            "the program found the object from its configuration:\n{}",
            env.report()
        );
    });
}

fn failure(env: &TestEnv, config: Value) -> (String, Option<String>, Retry) {
    let err = with_registry(|exec| exec.create(env.ctx("bad"), &config))
        .expect_err("a misbehaving program fails the operation");
    match err {
        ProviderError::Failed {
            message,
            log_tail,
            retry,
        } => (message, log_tail, retry),
        other => panic!("a misbehaving program is ProviderError::Failed, got {other:?}"),
    }
}

#[test]
fn garbage_on_stdout_is_a_protocol_error_naming_the_program() {
    let env = TestEnv::new();
    let (message, tail, retry) = failure(&env, hostile("garbage", &[], "20s"));
    assert!(
        message.contains("hostile_provider.py"),
        "the error names the program: {message}"
    );
    assert!(
        message.contains("invalid JSON"),
        "the error says the reply is not JSON: {message}"
    );
    assert!(
        message.contains("create"),
        "the error names the operation: {message}"
    );
    assert_eq!(retry, Retry::Terminal, "a protocol error is terminal");
    assert!(
        tail.is_some_and(|t| t.contains("hostile_provider: garbage on create")),
        "the error carries the program's stderr"
    );
}

#[test]
fn replies_that_are_not_one_fitting_object_are_refused() {
    let env = TestEnv::new();
    for (mode, expected) in [
        ("empty", "printed nothing"),
        ("array", "not an object"),
        ("two_objects", "invalid JSON"),
        ("unknown_field", "unknown field `output`"),
        ("bad_secret", "\"b\""),
    ] {
        let (message, _, _) = failure(&env, hostile(mode, &[], "20s"));
        assert!(
            message.contains(expected),
            "mode {mode}: the error says {expected:?}: {message}"
        );
    }
}

#[test]
fn a_malformed_reply_is_never_quoted_in_the_error() {
    let env = TestEnv::new();
    let (message, tail, _) = failure(&env, hostile("secret_in_garbage", &[], "20s"));
    assert!(
        !message.contains("hunter2") && !tail.unwrap_or_default().contains("hunter2"),
        "a reply that may hold secrets is not shown: {message}"
    );
}

#[test]
fn more_than_a_mebibyte_on_stdout_stops_the_program() {
    let env = TestEnv::new();
    let (message, _, retry) = failure(&env, hostile("huge", &[], "20s"));
    assert!(
        message.contains("more than 1048576 bytes"),
        "the error names the limit: {message}"
    );
    assert_eq!(retry, Retry::Terminal, "an oversized reply is terminal");
}

#[test]
fn a_non_zero_exit_fails_with_the_stderr_tail_and_75_is_retryable() {
    let env = TestEnv::new();
    let (message, tail, retry) = failure(&env, hostile("fail", &[], "20s"));
    assert!(
        message.contains("exit code 1"),
        "the error names the exit code: {message}"
    );
    assert!(
        tail.as_deref()
            .is_some_and(|t| t.ends_with("something went badly wrong")),
        "the error carries the stderr tail: {tail:?}"
    );
    assert_eq!(retry, Retry::Terminal, "exit code 1 is terminal");
    let (_, _, retry) = failure(&env, hostile("tempfail", &[], "20s"));
    assert_eq!(
        retry,
        Retry::Retryable,
        "exit code 75 (EX_TEMPFAIL) asks for a retry"
    );
}

#[test]
fn a_hanging_program_is_stopped_at_its_timeout_with_its_children() {
    let env = TestEnv::new();
    let pid_file = env.dirs.data.join("hang.pids");
    let pid_arg = pid_file.display().to_string();
    let started = Instant::now();
    let (message, _, retry) = failure(&env, hostile("hang", &[&pid_arg], "1s"));
    let took = started.elapsed();
    let pids: Vec<u32> = std::fs::read_to_string(&pid_file)
        .expect("the program recorded its pids")
        .lines()
        .map(|l| l.parse().expect("a pid"))
        .collect();
    let _reaper = Reaper(pids.clone());
    assert!(
        message.contains("did not answer create within 1s"),
        "the error names the timeout: {message}"
    );
    assert_eq!(retry, Retry::Retryable, "a timeout may pass on a retry");
    assert!(
        took < Duration::from_secs(10),
        "the operation ends soon after the timeout ({took:?})"
    );
    assert!(
        eventually(Duration::from_secs(5), || pids
            .iter()
            .all(|&p| !pid_running(p))),
        "the program and its child are stopped with its process group: {pids:?}"
    );
}

/// A read is a look: it runs at every plan, status and drift pass (a pull request's plan while
/// the controller's forge events wait), so neither the resource's `timeout` (the branch's: an
/// hour here) nor a hanging program holds it past the pass's deadline, and a read due after
/// the deadline is not begun.
#[test]
fn a_read_ends_by_the_pass_s_deadline_whatever_the_resource_s_timeout() {
    let env = TestEnv::new();
    let pid_file = env.dirs.data.join("read.pid");
    let pid_arg = pid_file.display().to_string();
    let config = hostile("hang_on_read", &[&pid_arg], "1h");
    with_registry(|exec| {
        let created = exec
            .create(env.ctx("slow"), &config)
            .expect("created at once");
        let mut settings = env.settings.clone();
        settings.observe_until = Some(Instant::now() + Duration::from_secs(1));
        let mut ctx = env.ctx("slow");
        ctx.settings = &settings;
        let started = Instant::now();
        let err = exec
            .observe(ctx, &config, &created.live)
            .expect_err("the read is stopped");
        let took = started.elapsed();
        assert!(err.retryable(), "{err}");
        assert!(
            took < Duration::from_secs(15),
            "stopped by the deadline ({took:?})"
        );
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .expect("the read ran")
            .trim()
            .parse()
            .expect("a pid");
        let _reaper = Reaper(vec![pid]);
        assert!(eventually(Duration::from_secs(5), || !pid_running(pid)));

        // Past the deadline: not begun.
        std::fs::remove_file(&pid_file).expect("removed");
        settings.observe_until = Some(Instant::now());
        let mut ctx = env.ctx("slow");
        ctx.settings = &settings;
        let err = exec
            .observe(ctx, &config, &created.live)
            .expect_err("not read");
        assert!(err.to_string().contains("ran out of time"), "{err}");
        assert!(!pid_file.exists(), "the program was not run");
    });
}

#[test]
fn exec_configuration_is_checked() {
    let env = TestEnv::new();
    for (config, why) in [
        (json!({"program": []}), "an empty program"),
        (json!({"program": ["x"], "args": []}), "an unknown field"),
        (json!({"config": {}}), "a missing program"),
    ] {
        let err = with_registry(|exec| exec.create(env.ctx("bad"), &config)).expect_err(why);
        assert!(
            matches!(err, ProviderError::Config(_)),
            "{why} is a configuration error: {err:?}"
        );
    }
}
