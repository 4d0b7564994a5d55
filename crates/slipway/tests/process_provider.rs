//! The `process` provider with its real supervisor (`slipway __supervise`): real processes,
//! real ports, real signals. Every test cleans up after itself through [`Cleanup`], which kills
//! whatever the resource's state file names even when the test fails half-way.

// The providers' test environment, shared rather than copied: the process provider is tested
// here, where the binary that is its supervisor is built.
#[path = "../../slipway-providers/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{eventually, failed};
use serde_json::{Value, json};
use slipway_providers::{
    Applied, DynProvider, Observation, ProviderError, ProviderSettings, Registry, Retry,
};
use slipway_testkit::process::Process;

/// An HTTP server with a `/healthz`, answering `ok <SLIPWAY_RESOURCE> <GREETING>` on `/`.
const SERVER: &str = r#"
import http.server, os, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path in ("/", "/healthz"):
            body = f"ok {os.environ['SLIPWAY_RESOURCE']} {os.environ.get('GREETING', '')}"
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body.encode())
        else:
            self.send_response(404)
            self.end_headers()
    def log_message(self, format, *args):
        print("request", self.path, flush=True)
print("listening on", os.environ["PORT_HTTP"], flush=True)
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT_HTTP"])), Handler).serve_forever()
"#;

/// The providers' own test environment (`qa` in a temporary directory), with the process
/// provider's registry, a free `http` port, the real supervisor and the test server.
struct TestEnv {
    base: common::TestEnv,
    registry: Registry,
}

impl std::ops::Deref for TestEnv {
    type Target = common::TestEnv;
    fn deref(&self) -> &common::TestEnv {
        &self.base
    }
}

impl std::ops::DerefMut for TestEnv {
    fn deref_mut(&mut self) -> &mut common::TestEnv {
        &mut self.base
    }
}

impl TestEnv {
    fn new() -> TestEnv {
        let mut base = common::TestEnv::new();
        std::fs::write(base.dirs.src.join("server.py"), SERVER).expect("write the server");
        base.ports = BTreeMap::from([("http".to_owned(), free_port())]);
        base.settings = ProviderSettings {
            supervisor: vec![env!("CARGO_BIN_EXE_slipway").into(), "__supervise".into()],
            stop_grace: Duration::from_secs(2),
            ready_timeout: Duration::from_secs(30),
            ..ProviderSettings::default()
        };
        TestEnv {
            base,
            registry: Registry::local(),
        }
    }

    fn process(&self) -> &dyn DynProvider {
        self.registry
            .get("process")
            .expect("process is a local provider")
    }

    fn port(&self) -> u16 {
        self.ports["http"]
    }

    /// Creates `resource`, registering it for cleanup first.
    fn create(&self, cleanup: &mut Cleanup, resource: &str, config: &Value) -> Applied {
        cleanup
            .resources
            .push(self.dirs.run.join(format!("{resource}.json")));
        self.process()
            .create(self.ctx(resource), config)
            .unwrap_or_else(|e| panic!("create {resource} succeeds: {e}\n{}", self.report()))
    }

    fn wait_ready(&self, resource: &str, config: &Value, applied: &Applied) {
        self.try_wait_ready(resource, config, applied, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{resource} becomes ready: {e:?}\n{}", self.report()));
    }

    /// What `wait_ready` of `resource` answers, waiting at most `within`.
    fn try_wait_ready(
        &self,
        resource: &str,
        config: &Value,
        applied: &Applied,
        within: Duration,
    ) -> Result<(), ProviderError> {
        self.process()
            .wait_ready(self.ctx(resource), config, applied, Instant::now() + within)
    }

    /// Deletes `resource` (its record `live`, or none), which must succeed: `why` says which
    /// delete it is.
    fn delete(&self, resource: &str, live: Option<&Value>, why: &str) {
        self.process()
            .delete(self.ctx(resource), live)
            .unwrap_or_else(|e| panic!("{why} ({resource}): {e}\n{}", self.report()));
    }

    /// What the provider observes of `resource` recorded as `live`.
    fn observe(
        &self,
        resource: &str,
        config: &Value,
        live: &Value,
    ) -> Result<Observation, ProviderError> {
        self.process().observe(self.ctx(resource), config, live)
    }

    fn state(&self, resource: &str) -> Option<Value> {
        let bytes = std::fs::read(self.dirs.run.join(format!("{resource}.json"))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Everything in the environment and every log, for failure messages.
    fn report(&self) -> String {
        let mut out = String::new();
        for dir in [&self.dirs.run, &self.dirs.logs] {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let shown: String = text
                    .chars()
                    .rev()
                    .take(3000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                out.push_str(&format!("--- {} ---\n{shown}\n", entry.path().display()));
            }
        }
        out
    }
}

/// Kills, when dropped, what the named state files record (supervisor and child group), and
/// any extra process groups: no test leaves a process behind, even when it fails.
#[derive(Default)]
struct Cleanup {
    resources: Vec<PathBuf>,
    groups: Vec<Process>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut procs = self.groups.clone();
        for state_file in &self.resources {
            if let Some(state) = std::fs::read(state_file)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            {
                procs.extend(Process::from_json(&state["supervisor"]));
                procs.extend(Process::from_json(&state["child"]));
            }
        }
        for proc in procs {
            if proc.runs() {
                kill("-KILL", &format!("-{}", proc.pid));
                kill("-KILL", &proc.pid.to_string());
            }
        }
    }
}

fn kill(signal: &str, target: &str) {
    let _ = std::process::Command::new("kill")
        .args([signal, "--", target])
        .stderr(std::process::Stdio::null())
        .status();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// `GET path` on 127.0.0.1:port: `(status, body)`.
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn server_config() -> Value {
    json!({
        "command": ["python3", "server.py"],
        "ports": ["http"],
        "env": {"GREETING": "hello"},
        "health": {"http": "/healthz", "interval": "100ms"},
        "expose": "http",
    })
}

fn supervisor_of(applied: &Applied) -> Process {
    Process {
        pid: applied.live["supervisor_pid"]
            .as_u64()
            .expect("supervisor_pid") as u32,
        start: applied.live["supervisor_start"]
            .as_u64()
            .expect("supervisor_start"),
    }
}

fn child_in(state: &Value) -> Option<Process> {
    Process::from_json(&state["child"])
}

/// Sends `bytes` to the supervisor's socket `socket` as they are, and returns all it answers
/// (waiting at most 10 s for it).
fn ask_socket(socket: &std::path::Path, bytes: &[u8]) -> String {
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return String::new();
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // A refusal may come before all of it is sent.
    let _ = stream.write_all(bytes);
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// The child of `resource` that replaced `before`, once one runs (within `wait`).
fn restarted(env: &TestEnv, resource: &str, before: Process, wait: Duration) -> Option<Process> {
    let mut after = None;
    eventually(wait, || {
        after = env
            .state(resource)
            .and_then(|s| child_in(&s))
            .filter(|c| *c != before && c.runs());
        after.is_some()
    });
    after
}

#[test]
fn a_process_becomes_ready_serves_http_and_reports_its_url() {
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let config = server_config();
    let applied = env.create(&mut cleanup, "api", &config);
    env.wait_ready("api", &config, &applied);

    let port = env.port();
    assert_eq!(
        applied.outputs["url"],
        json!(format!("http://127.0.0.1:{port}")),
        "the url output points at the first port"
    );
    assert_eq!(
        applied.outputs["ports"],
        json!({"http": port}),
        "the ports output maps names to numbers"
    );
    let (status, body) = http_get(port, "/").expect("GET / after wait_ready");
    assert_eq!(status, 200, "the process serves HTTP once ready");
    assert_eq!(
        body, "ok api hello",
        "the child sees SLIPWAY_RESOURCE and its configured env"
    );
    assert_eq!(
        env.observe("api", &config, &applied.live).expect("observe"),
        Observation::InSync,
        "a running process is in sync"
    );
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_to_string(
            env.dirs.logs.join("api.log")
        )
        .is_ok_and(|log| log.contains("request /"))),
        "the child's output goes to the resource log:\n{}",
        env.report()
    );

    let child = child_in(&env.state("api").expect("state file")).expect("a child is recorded");
    env.delete("api", Some(&applied.live), "delete");
    assert!(
        eventually(Duration::from_secs(15), || !supervisor_of(&applied).runs()),
        "delete stops the supervisor"
    );
    assert!(!child.runs(), "delete stops the child");
    assert!(
        port_is_free(port),
        "after delete the resource's port is free"
    );
    assert!(
        std::fs::read_dir(&env.dirs.run)
            .expect("list run")
            .next()
            .is_none(),
        "delete removes the spec and state files:\n{}",
        env.report()
    );
    env.delete("api", Some(&applied.live), "delete is idempotent");
}

#[test]
fn a_killed_child_is_restarted_by_the_supervisor_alone() {
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let config = server_config();
    let applied = env.create(&mut cleanup, "api", &config);
    env.wait_ready("api", &config, &applied);
    let first = child_in(&env.state("api").expect("state")).expect("a first child");

    kill("-KILL", &first.pid.to_string());
    // No provider call from here on: only the supervisor can bring it back.
    let second = restarted(&env, "api", first, Duration::from_secs(15));
    assert!(
        second.is_some(),
        "a killed child is restarted by its supervisor:\n{}",
        env.report()
    );
    let state = env.state("api").expect("state");
    assert!(
        state["restarts"].as_u64() >= Some(1),
        "the restart is counted: {state}"
    );
    assert!(
        state["last_exit"]
            .as_str()
            .is_some_and(|s| s.contains("signal 9")),
        "the state records how the child died: {state}"
    );
    assert!(
        eventually(Duration::from_secs(15), || http_get(env.port(), "/")
            .is_ok_and(|(s, _)| s == 200)),
        "the restarted child serves again:\n{}",
        env.report()
    );
    env.delete("api", Some(&applied.live), "delete");
}

#[test]
fn a_delete_stops_the_child_restarted_after_the_engine_read_its_state() {
    // The engine reads a process's state, then asks its supervisor to let go of it: a restart
    // in between starts a child the state it read does not name. Made to happen here by
    // putting back the state from before a restart.
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let config = json!({"command": ["sleep", "4247000"]});
    let applied = env.create(&mut cleanup, "api", &config);
    let state_file = env.dirs.run.join("api.json");
    let before = std::fs::read(&state_file).expect("its state");
    let first = child_in(&env.state("api").expect("state")).expect("a first child");
    kill("-KILL", &first.pid.to_string());
    let second = restarted(&env, "api", first, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the supervisor restarts it:\n{}", env.report()));
    cleanup.groups.push(second);
    std::fs::write(&state_file, before).expect("the state from before the restart");

    env.delete("api", Some(&applied.live), "delete");
    assert!(
        eventually(Duration::from_secs(10), || !second.runs()),
        "the child the supervisor let go of is stopped, though no state the engine read named \
         it:\n{}",
        env.report()
    );
}

#[test]
fn observe_reports_a_restarting_child_as_drifted_and_a_dead_supervisor_as_missing() {
    let mut env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    // Exits after a moment, then waits out a backoff: observable as "restarting".
    let config = json!({"command": ["sh", "-c", "echo up; sleep 0.3; exit 4"]});
    let applied = env.create(&mut cleanup, "flaky", &config);
    let mut seen = None;
    let drifted = eventually(Duration::from_secs(10), || {
        seen = env
            .process()
            .observe(env.ctx("flaky"), &config, &applied.live)
            .ok();
        matches!(&seen, Some(Observation::Drifted { reason }) if reason.contains("exit code 4"))
    });
    assert!(
        drifted,
        "a child that exited is drifted while restarting: {seen:?}"
    );
    let Some(Observation::Drifted { reason }) = seen else {
        unreachable!("checked above")
    };
    assert!(
        reason.contains("exit code 4"),
        "the reason says how it exited: {reason}"
    );
    assert!(
        reason.contains("restart"),
        "the reason says it is restarting: {reason}"
    );

    kill("-KILL", &supervisor_of(&applied).pid.to_string());
    assert!(
        eventually(Duration::from_secs(5), || !supervisor_of(&applied).runs()),
        "the supervisor is dead"
    );
    // Observing finds it gone and has a new supervisor take the process back at once.
    let observed = env.observe("flaky", &config, &applied.live);
    let successor = env
        .state("flaky")
        .and_then(|s| Process::from_json(&s["supervisor"]))
        .filter(|s| *s != supervisor_of(&applied) && s.runs());
    assert!(
        successor.is_some() && !matches!(observed, Ok(Observation::Missing { .. })),
        "a process whose supervisor is gone is taken back by a new one: {observed:?}\n{}",
        env.report()
    );
    // When no supervisor can start, it is missing.
    kill("-KILL", &successor.expect("checked above").pid.to_string());
    env.settings.supervisor = vec!["/nonexistent/slipway".into(), "__supervise".into()];
    assert!(
        eventually(Duration::from_secs(5), || matches!(
            env.observe("flaky", &config, &applied.live),
            Ok(Observation::Missing { .. })
        )),
        "a process whose supervisor is gone, and none can start, is missing"
    );
    env.delete("flaky", Some(&applied.live), "delete");
}

#[test]
fn delete_after_the_supervisor_was_killed_stops_the_child_group_and_frees_the_port() {
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    // A shell whose own child holds the port: the whole group must go, not just the leader.
    let config = json!({
        "command": ["sh", "-c", "python3 server.py & wait"],
        "ports": ["http"],
        "health": {"tcp": "http", "interval": "100ms"},
    });
    let applied = env.create(&mut cleanup, "api", &config);
    env.wait_ready("api", &config, &applied);
    let child = child_in(&env.state("api").expect("state")).expect("a child");
    cleanup.groups.push(child);

    kill("-KILL", &supervisor_of(&applied).pid.to_string());
    assert!(
        eventually(Duration::from_secs(5), || !supervisor_of(&applied).runs()),
        "the supervisor is dead"
    );
    assert!(
        child.runs(),
        "the child outlives a SIGKILLed supervisor (nothing stopped it yet)"
    );
    assert!(
        !port_is_free(env.port()),
        "the orphaned server still holds the port"
    );

    env.delete("api", Some(&applied.live), "delete");
    assert!(
        !child.runs(),
        "delete stops the orphaned child by its recorded pid and start time"
    );
    assert!(
        port_is_free(env.port()),
        "delete stops the child's whole group, so the port is free:\n{}",
        env.report()
    );
}

#[test]
fn delete_without_a_record_finds_and_stops_what_create_started() {
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let config = server_config();
    let applied = env.create(&mut cleanup, "api", &config);
    env.wait_ready("api", &config, &applied);
    let child = child_in(&env.state("api").expect("state")).expect("a child");

    // As if the CLI was killed after create returned but before the engine recorded it.
    env.delete("api", None, "delete(None)");
    assert!(
        eventually(Duration::from_secs(15), || !supervisor_of(&applied).runs()),
        "delete(None) stops the supervisor it finds in the state file"
    );
    assert!(!child.runs(), "delete(None) stops the child");
    assert!(
        port_is_free(env.port()),
        "the port is free after delete(None)"
    );
    assert!(env.state("api").is_none(), "the state file is removed");
    env.delete("api", None, "delete(None) is idempotent");
}

#[test]
fn a_pid_with_another_start_time_is_never_adopted_or_signalled() {
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    // An unrelated process: its pid will be "recorded" with a wrong start time.
    let mut bystander = std::process::Command::new("sleep")
        .arg("300")
        .process_group(0)
        .spawn()
        .expect("start a bystander");
    let real = Process::of(bystander.id()).expect("the bystander runs");
    cleanup.groups.push(real);
    let forged = json!({
        "supervisor_pid": real.pid,
        "supervisor_start": real.start + 1,
        "child_pid": real.pid,
        "child_start": real.start + 1,
        "state_file": env.dirs.run.join("api.json"),
    });
    assert!(
        matches!(
            env.observe("api", &server_config(), &forged),
            Ok(Observation::Missing { .. })
        ),
        "a recorded pid with another start time is not our supervisor"
    );
    let forged_state = json!({
        "supervisor": {"pid": real.pid, "start": real.start + 1},
        "child": {"pid": real.pid, "start": real.start + 1},
        "phase": "running", "restarts": 0, "exits": 0, "last_exit": null, "stop_grace_ms": 100,
    });
    let state_file = env.dirs.run.join("api.json");
    std::fs::write(&state_file, forged_state.to_string()).expect("forge a state file");
    env.delete("api", None, "delete with a forged state file");
    assert!(
        real.runs(),
        "delete(None) never signals a pid whose start time differs"
    );
    std::fs::write(&state_file, forged_state.to_string()).expect("forge a state file");
    env.delete("api", Some(&forged), "delete with a forged record");
    assert!(
        real.runs(),
        "a process whose start time differs is never signalled"
    );
    assert!(
        bystander.try_wait().expect("try_wait").is_none(),
        "the bystander still runs"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
}

#[test]
fn a_crash_looping_process_fails_wait_ready_with_its_log_tail() {
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let config = json!({
        "command": ["sh", "-c", "echo booting; echo 'fatal: DATABASE_URL is not set' >&2; exit 1"],
        "health": {"command": ["true"]},
    });
    let applied = env.create(&mut cleanup, "api", &config);
    let started = Instant::now();
    let err = env
        .try_wait_ready("api", &config, &applied, Duration::from_secs(60))
        .expect_err("a crash-looping process never becomes ready");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "wait_ready gives up early on a crash loop instead of waiting for the deadline"
    );
    let (message, log_tail, retry) = failed(&err, "a crash loop");
    assert!(
        message.contains("crashed 3 times"),
        "the message counts the crashes: {message}"
    );
    assert!(
        message.contains("exit code 1"),
        "the message says how it exited: {message}"
    );
    assert_eq!(
        retry,
        Retry::Terminal,
        "a crash loop needs a change, not a retry"
    );
    assert!(
        log_tail.is_some_and(|t| t.contains("fatal: DATABASE_URL is not set")),
        "the error carries the log tail: {log_tail:?}"
    );
    env.delete("api", Some(&applied.live), "delete");
}

#[test]
fn a_process_that_never_passes_its_health_check_times_out_with_the_reason() {
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let config = json!({
        "command": ["python3", "server.py"],
        "ports": ["http"],
        "health": {"http": "/missing", "interval": "100ms"},
        "ready_timeout": "1500ms",
    });
    let applied = env.create(&mut cleanup, "api", &config);
    // Listening before the wait begins: on a busy machine its first 1.5 s could pass before
    // the server binds its port, and the last check would say "refused", not 404.
    assert!(
        eventually(Duration::from_secs(30), || {
            http_get(env.port(), "/missing").is_ok_and(|(status, _)| status == 404)
        }),
        "the server answers 404 for /missing:\n{}",
        env.report()
    );
    let err = env
        .try_wait_ready("api", &config, &applied, Duration::from_secs(60))
        .expect_err("a 404 health check never passes");
    let text = err.to_string();
    assert!(
        text.contains("did not become ready within"),
        "the error says it timed out: {text}"
    );
    assert!(
        text.contains("404"),
        "the error carries the last health check's answer: {text}"
    );
    assert!(err.retryable(), "a health timeout may pass on a retry");
    env.delete("api", Some(&applied.live), "delete");
}

/// A health check whose `timeout` (the repository's) is an hour, against a server that
/// accepts and never answers: the wait gives up at its own deadline all the same. It used to
/// wait out the hour, holding the apply, its lock and a controller's worker.
#[test]
fn a_health_checks_own_timeout_does_not_outlast_the_wait() {
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let silent = "import os, socket\n\
                  s = socket.socket()\n\
                  s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                  s.bind(('127.0.0.1', int(os.environ['PORT_HTTP'])))\n\
                  s.listen(64)\n\
                  held = []\n\
                  while True:\n    held.append(s.accept())\n";
    let config = json!({
        "command": ["python3", "-c", silent],
        "ports": ["http"],
        "health": {"http": "/", "timeout": "1h", "interval": "100ms"},
        "ready_timeout": "1500ms",
    });
    let applied = env.create(&mut cleanup, "api", &config);
    let err = env
        .try_wait_ready("api", &config, &applied, Duration::from_secs(60))
        .expect_err("a server that never answers never passes");
    assert!(
        err.to_string().contains("did not become ready within"),
        "{err}"
    );
    env.delete("api", Some(&applied.live), "delete");
}

#[test]
fn a_child_ignoring_sigterm_is_killed_after_the_stop_grace() {
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let config = json!({
        "command": ["sh", "-c", "trap '' TERM; echo stubborn; while true; do sleep 1; done"],
        "stop_grace": "300ms",
    });
    let applied = env.create(&mut cleanup, "stubborn", &config);
    env.wait_ready("stubborn", &config, &applied);
    let child = child_in(&env.state("stubborn").expect("state")).expect("a child");
    let started = Instant::now();
    env.delete("stubborn", Some(&applied.live), "delete");
    assert!(!child.runs(), "a child ignoring SIGTERM is SIGKILLed");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "delete waits about the stop grace, not forever ({:?})",
        started.elapsed()
    );
}

#[test]
fn restart_never_leaves_an_exited_process_drifted() {
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let config = json!({"command": ["sh", "-c", "exit 0"], "restart": "never"});
    let applied = env.create(&mut cleanup, "once", &config);
    let err = env
        .try_wait_ready("once", &config, &applied, Duration::from_secs(30))
        .expect_err("an exited process that is not restarted is not ready");
    assert!(
        err.to_string().contains("restart policy"),
        "the error names the restart policy: {err}"
    );
    assert!(
        matches!(
            env.observe("once", &config, &applied.live),
            Ok(Observation::Drifted { reason }) if reason.contains("exit code 0")
        ),
        "an exited process is drifted, with how it exited"
    );
    env.delete("once", Some(&applied.live), "delete");
}

/// `Applied::ready` lets the engine skip `wait_ready`: only a process that runs, past its
/// exec, with nothing left to wait for (no health check, restarted whatever its exit) may say
/// so; anything else is asked as before.
#[test]
fn a_process_is_ready_as_created_only_when_nothing_is_left_to_wait_for() {
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let cases = [
        ("plain", json!({"command": ["sleep", "4243001"]}), true),
        (
            "checked",
            json!({"command": ["sleep", "4243002"], "health": {"command": ["true"]}}),
            false,
        ),
        (
            "once",
            json!({"command": ["sleep", "4243003"], "restart": "never"}),
            false,
        ),
        (
            "ghost",
            json!({"command": ["no-such-program-slipway"]}),
            false,
        ),
    ];
    for (resource, config, ready) in &cases {
        let applied = env.create(&mut cleanup, resource, config);
        assert_eq!(
            applied.ready,
            *ready,
            "{resource}: {config}\n{}",
            env.report()
        );
        if *ready {
            // What the engine no longer asks would have said the same.
            env.wait_ready(resource, config, &applied);
        }
        env.delete(resource, Some(&applied.live), "delete");
    }
}

#[test]
fn the_process_log_is_rotated_at_its_size_cap() {
    let mut env = TestEnv::new();
    env.settings.log_max_bytes = 4096;
    let mut cleanup = Cleanup::default();
    let config = json!({
        "command": ["python3", "-c",
            "import time\nfor i in range(2000): print(f'line {i:05} of chatter', flush=True)\ntime.sleep(300)"],
    });
    let applied = env.create(&mut cleanup, "chatty", &config);
    let log = env.dirs.logs.join("chatty.log");
    let rotated = env.dirs.logs.join("chatty.log.1");
    assert!(
        eventually(Duration::from_secs(15), || std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("line 01999"))),
        "the last line reaches the log:\n{}",
        env.report()
    );
    let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    assert!(rotated.exists(), "the log was rotated to .log.1");
    assert!(
        size(&log) <= 4096,
        "the current log is within the cap: {}",
        size(&log)
    );
    assert!(
        size(&rotated) <= 4096,
        "the rotated log is within the cap: {}",
        size(&rotated)
    );
    env.delete("chatty", Some(&applied.live), "delete");
}

#[test]
fn process_configuration_is_checked_before_anything_starts() {
    let env = TestEnv::new();
    for (config, why) in [
        (json!({"command": []}), "an empty command"),
        (
            json!({"command": ["x"], "ports": ["admin"]}),
            "a port the engine did not allocate",
        ),
        (
            json!({"command": ["x"], "health": {"http": "/"}}),
            "an http check without a port",
        ),
        (
            json!({"command": ["x"], "ports": ["http"], "health": {"http": "/", "tcp": "http"}}),
            "two checks",
        ),
        (
            json!({"command": ["x"], "restart": "sometimes"}),
            "an unknown restart policy",
        ),
        (json!({"command": ["x"], "replicas": 2}), "an unknown field"),
    ] {
        let err = env
            .process()
            .create(env.ctx("bad"), &config)
            .expect_err(why);
        assert!(
            matches!(err, ProviderError::Config(_)),
            "{why} is a configuration error: {err:?}"
        );
    }
    assert!(
        std::fs::read_dir(&env.dirs.run)
            .expect("list run")
            .next()
            .is_none(),
        "a rejected configuration starts no supervisor"
    );
}

#[test]
fn a_supervisor_program_that_cannot_start_fails_create_naming_it() {
    let mut env = TestEnv::new();
    env.settings.supervisor = vec!["/nonexistent/slipway".into(), "__supervise".into()];
    let err = env
        .process()
        .create(env.ctx("api"), &server_config())
        .expect_err("create fails without a supervisor");
    let text = err.to_string();
    assert!(
        text.contains("/nonexistent/slipway"),
        "the error names the supervisor program: {text}"
    );
    assert!(
        std::fs::read_dir(&env.dirs.run)
            .expect("list run")
            .next()
            .is_none(),
        "a failed start leaves no spec behind:\n{}",
        env.report()
    );
}

#[test]
fn a_process_whose_program_does_not_exist_fails_wait_ready_saying_so() {
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let config = json!({"command": ["no-such-program-slipway"]});
    let applied = env.create(&mut cleanup, "ghost", &config);
    let err = env
        .try_wait_ready("ghost", &config, &applied, Duration::from_secs(60))
        .expect_err("a program that cannot start never becomes ready");
    let (message, log_tail, _) = failed(&err, "a failed start");
    assert!(
        message.contains("failed to start `no-such-program-slipway`"),
        "the message says the program could not start: {message}"
    );
    assert!(
        log_tail.is_some_and(|t| t.contains("no-such-program-slipway")),
        "the log tail has the supervisor's notes: {log_tail:?}"
    );
    env.delete("ghost", Some(&applied.live), "delete");
}

#[test]
fn a_killed_environment_supervisor_leaves_its_processes_running_and_the_next_takes_them_back() {
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    // Writes all along, so that it would die of SIGPIPE (or stop) if nobody held its pipe.
    let chatty = json!({"command": ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.05; done"]});
    let doomed = json!({"command": ["sleep", "4243000"]});
    let applied = env.create(&mut cleanup, "chatty", &chatty);
    let doomed_applied = env.create(&mut cleanup, "doomed", &doomed);
    let supervisor = supervisor_of(&applied);
    assert_eq!(
        supervisor,
        supervisor_of(&doomed_applied),
        "the environment's processes share one supervisor"
    );
    let chatty_child = child_in(&env.state("chatty").expect("state")).expect("a child");
    let doomed_child = child_in(&env.state("doomed").expect("state")).expect("a child");
    cleanup.groups.extend([chatty_child, doomed_child]);

    kill("-KILL", &supervisor.pid.to_string());
    assert!(
        eventually(Duration::from_secs(5), || !supervisor.runs()),
        "the supervisor is dead"
    );
    // One of its processes dies while nothing supervises it.
    kill("-KILL", &doomed_child.pid.to_string());
    assert!(
        eventually(Duration::from_secs(5), || !doomed_child.runs()),
        "the unsupervised process is dead"
    );
    let written = env.log("chatty").len();
    assert!(
        chatty_child.runs(),
        "a SIGKILLed supervisor stops none of its processes"
    );

    // Observing finds the supervisor gone: it says so, and a new supervisor takes back what
    // runs and restarts what died, without a person.
    let observed = env.observe("chatty", &chatty, &applied.live);
    assert!(
        matches!(&observed, Ok(Observation::InSync)),
        "a process whose supervisor died is taken back, and so in sync (not replaced): \
         {observed:?}\n{}",
        env.report()
    );
    let state = env.state("chatty").expect("state");
    let successor = Process::from_json(&state["supervisor"]).expect("a supervisor");
    assert!(
        successor != supervisor && successor.runs(),
        "a new supervisor keeps it: {state}"
    );
    assert_eq!(
        child_in(&state),
        Some(chatty_child),
        "the running process is taken back (same pid and start time), not restarted: {state}"
    );
    assert!(chatty_child.runs(), "and it still runs");
    assert_eq!(state["scope"], "environment", "{state}");
    let again = restarted(&env, "doomed", doomed_child, Duration::from_secs(10));
    assert!(
        again.is_some(),
        "the process that died meanwhile is started again:\n{}",
        env.report()
    );
    cleanup.groups.extend(again);
    let doomed_state = env.state("doomed").expect("state");
    assert!(
        doomed_state["last_exit"]
            .as_str()
            .is_some_and(|e| e.contains("no supervisor saw")),
        "its state says it ended unseen: {doomed_state}"
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            let log = env.log("chatty");
            log.len() > written
                && log
                    .find("taken over")
                    .is_some_and(|at| log[at..].contains("tick"))
        }),
        "its output reaches the log again once taken back:\n{}",
        env.report()
    );
    assert_eq!(
        env.observe("chatty", &chatty, &applied.live)
            .expect("observe"),
        Observation::InSync,
        "once taken back it is in sync, though the record names the dead supervisor"
    );

    env.delete("chatty", Some(&applied.live), "delete chatty");
    env.delete("doomed", Some(&doomed_applied.live), "delete doomed");
    assert!(!chatty_child.runs(), "delete stops a taken-back process");
    assert!(
        eventually(Duration::from_secs(5), || !successor.runs()),
        "the supervisor exits with its last process"
    );
}

/// A supervisor started before Slipway was upgraded runs the old binary, which knows nothing
/// of what the new one asks of a start (the environment's process limit): the next apply's
/// wake ends it, and one of the new binary takes its processes back, running.
#[test]
fn a_supervisor_of_a_replaced_binary_is_replaced_and_its_processes_taken_back() {
    let mut env = TestEnv::new();
    let bin = tempfile::tempdir().expect("a directory");
    let binary = bin.path().join("slipway");
    std::fs::copy(env!("CARGO_BIN_EXE_slipway"), &binary).expect("copy the binary");
    env.settings.supervisor = vec![binary.clone().into(), "__supervise".into()];
    let mut cleanup = Cleanup::default();
    let steady = json!({"command": ["sleep", "4244000"]});
    let applied = env.create(&mut cleanup, "steady", &steady);
    let old = supervisor_of(&applied);
    let child = child_in(&env.state("steady").expect("state")).expect("a child");
    cleanup.groups.push(child);
    env.process().expect_changes_in(&env.settings, &env.dirs);
    assert!(old.runs(), "a supervisor of the binary in place is kept");
    // The upgrade: a new file at the binary's path.
    std::fs::remove_file(&binary).expect("remove the binary");
    std::fs::copy(env!("CARGO_BIN_EXE_slipway"), &binary).expect("copy it again");
    env.process().expect_changes_in(&env.settings, &env.dirs);
    assert!(
        eventually(Duration::from_secs(5), || !old.runs()),
        "the supervisor of the replaced binary is ended"
    );
    let successor = || {
        env.state("steady")
            .and_then(|s| Process::from_json(&s["supervisor"]))
            .filter(|s| *s != old && s.runs())
    };
    assert!(
        eventually(Duration::from_secs(10), || successor().is_some()),
        "a new supervisor takes the process back:\n{}",
        env.report()
    );
    let state = env.state("steady").expect("state");
    assert_eq!(
        child_in(&state),
        Some(child),
        "the same process (pid and start time), not restarted: {state}"
    );
    assert!(child.runs(), "and it still runs");
    let new = successor().expect("a successor");
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/exe", new.pid)).expect("its binary"),
        binary,
        "the successor runs the binary now in place"
    );
    env.delete("steady", Some(&applied.live), "delete steady");
    assert!(
        !child.runs(),
        "the taken-back process is stopped by its delete"
    );
}

/// Stands in for a supervisor of a Slipway from before `version` was asked: it holds the run
/// directory's lock and answers every request with an error, as an old one answers one it
/// does not know.
const OLD_SUPERVISOR: &str = r#"
import fcntl, os, socket, sys
run = sys.argv[1]
lock = os.open(run, os.O_RDONLY)
fcntl.flock(lock, fcntl.LOCK_EX)
path = os.path.join(run, "supervise.sock")
try:
    os.unlink(path)
except FileNotFoundError:
    pass
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen(8)
while True:
    conn, _ = server.accept()
    try:
        if conn.recv(4096):
            conn.sendall(b"error a request is one of start, adopt, release\n")
    except OSError:
        pass
    conn.close()
"#;

/// A supervisor says which protocol it speaks; an apply replaces one of an older protocol
/// (which answers the question with an error), even when its binary is still in place.
#[test]
fn a_supervisor_of_an_older_protocol_is_replaced_by_an_apply() {
    let env = TestEnv::new();
    let socket = env.dirs.run.join("supervise.sock");
    let script = env.dirs.src.join("old_supervisor.py");
    std::fs::write(&script, OLD_SUPERVISOR).expect("write the stand-in");
    /// Killed when the test ends, however it ends.
    struct Stand(std::process::Child);
    impl Drop for Stand {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut old = Stand(
        std::process::Command::new("python3")
            .arg(&script)
            .arg(&env.dirs.run)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the stand-in"),
    );
    assert!(
        eventually(Duration::from_secs(10), || ask_socket(
            &socket,
            b"version\n"
        )
        .starts_with("error")),
        "the stand-in answers"
    );
    env.process().expect_changes_in(&env.settings, &env.dirs);
    assert!(
        eventually(Duration::from_secs(10), || old
            .0
            .try_wait()
            .is_ok_and(|status| status.is_some())),
        "the old supervisor is ended"
    );
    assert!(
        eventually(Duration::from_secs(10), || ask_socket(
            &socket,
            b"version\n"
        ) == "ok protocol 2\n"),
        "one of this version answers in its place"
    );
    drop(old);
    // Idle, the new supervisor exits by itself.
}

#[test]
fn the_supervisor_answers_only_the_engines_uid() {
    if !slipway_providers::sandbox::running_as_root() {
        eprintln!("not root: no other uid to try with");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let config = json!({"command": ["sleep", "4245000"]});
    let applied = env.create(&mut cleanup, "api", &config);
    let child = child_in(&env.state("api").expect("state")).expect("a child");
    // Open the way to the socket wide (the engine's homes never are): only the supervisor's
    // own check of its caller is left.
    let socket = env.dirs.run.join("supervise.sock");
    let mut dir = env.dirs.run.clone();
    while let Some(parent) = dir.parent() {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        if dir.ends_with("envs") {
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
            break;
        }
        dir = parent.to_path_buf();
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import socket, sys\n\
             s = socket.socket(socket.AF_UNIX)\n\
             s.settimeout(5)\n\
             s.connect(sys.argv[1])\n\
             try:\n    s.sendall(b'release api\\n')\n\
             except BrokenPipeError:\n    pass\n\
             print(s.recv(200).decode() or 'closed')",
        ])
        .arg(&socket)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("python3 runs");
    let answer = String::from_utf8_lossy(&out.stdout);
    // (The refusal may come before the request is even sent: then sending it fails.)
    assert!(
        answer.contains("error refused"),
        "a request from another uid is refused: {out:?}"
    );
    assert!(
        child.runs() && env.state("api").is_some(),
        "and changes nothing"
    );
    env.delete("api", Some(&applied.live), "delete");
}

#[test]
fn a_process_of_a_per_resource_supervisor_from_before_keeps_working_and_is_taken_back() {
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let config = json!({"command": ["sleep", "4246000"]});
    // The spec this engine sends for it (its state file carries it), which is what an older
    // engine wrote to the spec file.
    env.create(&mut cleanup, "old", &config);
    let spec_file = env.dirs.run.join("old.spec.json");
    assert!(
        !spec_file.exists(),
        "a spec sent with its start has no file"
    );
    let spec = env.state("old").expect("the state")["spec"]
        .to_string()
        .into_bytes();
    env.delete("old", None, "delete the template");

    // A home from before: the process's own supervisor, `slipway __supervise <spec>`.
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&spec_file)
        .and_then(|mut f| f.write_all(&spec))
        .expect("write the spec");
    let mut legacy = std::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
        .arg("__supervise")
        .arg(&spec_file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start a per-resource supervisor");
    let mut state = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            state = env
                .state("old")
                .filter(|s| s["phase"] == "running" && child_in(s).is_some_and(|c| c.runs()));
            state.is_some()
        }),
        "the per-resource supervisor starts its process:\n{}",
        env.report()
    );
    let state = state.expect("checked above");
    assert!(
        state.get("scope").is_none(),
        "its state file is in the format from before: {state}"
    );
    let old_supervisor = Process::from_json(&state["supervisor"]).expect("its supervisor");
    let child = child_in(&state).expect("its child");
    cleanup.groups.push(child);
    // What an older engine recorded.
    let recorded = json!({
        "supervisor_pid": old_supervisor.pid,
        "supervisor_start": old_supervisor.start,
        "child_pid": child.pid,
        "child_start": child.start,
        "state_file": env.dirs.run.join("old.json"),
    });
    assert_eq!(
        env.observe("old", &config, &recorded).expect("observe"),
        Observation::InSync,
        "a process of a per-resource supervisor is observed as before"
    );
    let again = env.create(&mut cleanup, "old", &config);
    assert_eq!(
        (
            supervisor_of(&again),
            child_in(&env.state("old").expect("state"))
        ),
        (old_supervisor, Some(child)),
        "an unchanged create leaves it with its own supervisor"
    );

    // Its supervisor dies: the environment's supervisor takes the process back.
    kill("-KILL", &old_supervisor.pid.to_string());
    let _ = legacy.wait();
    assert_eq!(
        env.observe("old", &config, &recorded).expect("observe"),
        Observation::InSync,
        "its supervisor's death is seen, and the process taken back"
    );
    let state = env.state("old").expect("state");
    assert_eq!(state["scope"], "environment", "taken back: {state}");
    assert_eq!(child_in(&state), Some(child), "not restarted: {state}");
    assert!(child.runs(), "it still runs");
    assert_eq!(
        env.observe("old", &config, &recorded).expect("observe"),
        Observation::InSync,
        "and is in sync under its new supervisor"
    );
    env.delete("old", Some(&recorded), "delete");
    assert!(!child.runs(), "delete stops it");
}

#[test]
fn a_supervisor_whose_environment_directory_is_removed_stops_its_processes() {
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let config = json!({"command": ["sleep", "4247000"]});
    let applied = env.create(&mut cleanup, "gone", &config);
    let child = child_in(&env.state("gone").expect("state")).expect("a child");
    let supervisor = supervisor_of(&applied);
    cleanup.groups.extend([child, supervisor]);
    std::fs::remove_dir_all(&env.dirs.root).expect("remove the environment's directory");
    assert!(
        eventually(Duration::from_secs(10), || !child.runs()
            && !supervisor.runs()),
        "with its environment's directory gone, the supervisor stops its process and exits"
    );
}

/// The live processes (zombies not counted) with `run` among their arguments, and those
/// arguments.
fn processes_naming(run: &std::path::Path) -> Vec<(Process, Vec<Vec<u8>>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<Vec<u8>> = cmdline.split(|b| *b == 0).map(<[u8]>::to_vec).collect();
        if args
            .iter()
            .any(|arg| arg.as_slice() == run.as_os_str().as_encoded_bytes())
            && let Some(proc) = Process::of(pid)
        {
            found.push((proc, args));
        }
    }
    found
}

/// The live `slipway __supervise <run>` processes of `run`.
fn supervisors_of(run: &std::path::Path) -> Vec<Process> {
    processes_naming(run)
        .into_iter()
        .filter(|(_, args)| args.get(1).is_some_and(|verb| verb == b"__supervise"))
        .map(|(proc, _)| proc)
        .collect()
}

#[test]
fn a_supervisor_woken_ahead_serves_the_creates_that_follow_and_no_second_one_starts() {
    let mut env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    // A supervisor that listens only once the test says so (a busy machine), so that the
    // creates below find it woken but not answering yet: `sh` waits for the file `go`, then
    // becomes `slipway __supervise <run>`.
    let go = env.dirs.root.join("go");
    env.settings.supervisor = vec![
        "/bin/sh".into(),
        "-c".into(),
        "while [ ! -e \"$2\" ]; do sleep 0.01; done; exec \"$1\" __supervise \"$3\"".into(),
        "sh".into(),
        env!("CARGO_BIN_EXE_slipway").into(),
        go.clone().into(),
    ];
    // What an apply does once the environment's directories are made: it returns without
    // waiting for the supervisor, and the creates follow at once, eight at a time.
    env.process().expect_changes_in(&env.settings, &env.dirs);
    assert!(
        supervisors_of(&env.dirs.run).is_empty(),
        "woken, it does not listen yet"
    );
    let names: Vec<String> = (0..8).map(|i| format!("woken{i}")).collect();
    for name in &names {
        cleanup
            .resources
            .push(env.dirs.run.join(format!("{name}.json")));
    }
    let config = json!({"command": ["sleep", "4248001"]});
    // The creates start together, and the supervisor may listen only once they did.
    let together = std::sync::Barrier::new(names.len() + 1);
    let applied: Vec<Applied> = std::thread::scope(|scope| {
        let creating: Vec<_> = names
            .iter()
            .map(|name| {
                let (env, config, together) = (&env, &config, &together);
                scope.spawn(move || {
                    together.wait();
                    env.process()
                        .create(env.ctx(name), config)
                        .unwrap_or_else(|e| panic!("create {name} succeeds: {e}\n{}", env.report()))
                })
            })
            .collect();
        // The creates ask while it does not listen (its `sh` polls for `go` every 10 ms,
        // then execs it), well within the second a woken supervisor is waited for.
        together.wait();
        std::fs::write(&go, "").expect("write go");
        creating
            .into_iter()
            .map(|c| c.join().expect("a creating thread"))
            .collect()
    });
    let supervisor = supervisor_of(&applied[0]);
    cleanup.groups.push(supervisor);
    for (name, applied) in names.iter().zip(&applied) {
        let child = child_in(&env.state(name).expect("a state file")).expect("a child");
        cleanup.groups.push(child);
        assert_eq!(
            supervisor_of(applied),
            supervisor,
            "{name} is kept by the one supervisor"
        );
    }
    // The creates waited for the one woken rather than start another (which would still be
    // waiting for the run directory's lock now, or sleeping in its `sh`).
    assert_eq!(
        supervisors_of(&env.dirs.run),
        vec![supervisor],
        "no second supervisor was started"
    );
    assert_eq!(
        processes_naming(&env.dirs.run).len(),
        1,
        "nor one on its way (its `sh` sleeping)"
    );
    // Woken again while it runs: it answers, and nothing else starts.
    env.process().expect_changes_in(&env.settings, &env.dirs);
    assert_eq!(
        processes_naming(&env.dirs.run).len(),
        1,
        "still the one supervisor, and none on its way"
    );
    for (name, applied) in names.iter().zip(&applied) {
        env.delete(name, Some(&applied.live), "delete");
    }
}

#[test]
fn concurrent_creates_each_get_a_recorded_process_of_one_supervisor() {
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let names: Vec<String> = (0..16).map(|i| format!("many{i:02}")).collect();
    for name in &names {
        cleanup
            .resources
            .push(env.dirs.run.join(format!("{name}.json")));
    }
    let config = json!({"command": ["sleep", "4248000"]});
    // Eight at a time, as `apply --parallelism 8` asks: the supervisor answers each once its
    // process's exec is known, serving the others meanwhile.
    let applied: Vec<(String, Applied)> = std::thread::scope(|scope| {
        let creating: Vec<_> =
            names
                .chunks(2)
                .map(|chunk| {
                    let (env, config) = (&env, &config);
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|name| {
                                let applied =
                                    env.process().create(env.ctx(name), config).unwrap_or_else(
                                        |e| panic!("create {name} succeeds: {e}\n{}", env.report()),
                                    );
                                (name.clone(), applied)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
        creating
            .into_iter()
            .flat_map(|c| c.join().expect("a creating thread"))
            .collect()
    });
    let supervisor = supervisor_of(&applied[0].1);
    let mut children = Vec::new();
    for (name, applied) in &applied {
        assert_eq!(
            supervisor_of(applied),
            supervisor,
            "{name} is kept by the environment's one supervisor"
        );
        let state = env.state(name).expect("a state file");
        let child = child_in(&state).expect("a child");
        assert_eq!(
            Process::from_json(
                &json!({"pid": applied.live["child_pid"], "start": applied.live["child_start"]})
            ),
            Some(child),
            "what create returned is what the state file records: {state}"
        );
        assert!(child.runs(), "{name}'s process runs: {state}");
        children.push(child);
    }
    children.sort_by_key(|c| c.pid);
    children.dedup();
    assert_eq!(children.len(), names.len(), "one process each");
    cleanup.groups.extend(children.iter().copied());
    for (name, applied) in &applied {
        env.delete(name, Some(&applied.live), "delete");
    }
    assert!(
        children.iter().all(|c| !c.runs()),
        "delete stops every one of them"
    );
}

#[test]
fn a_process_is_recorded_before_it_runs() {
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    // It looks for its own pid in its state file as soon as it runs (the test's sandbox
    // lets it read the run directory).
    let state_file = env.dirs.run.join("probe.json");
    let probe = json!({"command": ["sh", "-c", format!(
        "if grep -q \"\\\"pid\\\": $$,\" {}; then echo recorded-before-running; \
         else echo not-recorded; fi; sleep 4249000",
        state_file.display()
    )]});
    let applied = env.create(&mut cleanup, "probe", &probe);
    cleanup
        .groups
        .extend(child_in(&env.state("probe").expect("state")));
    assert!(
        eventually(Duration::from_secs(10), || env
            .log("probe")
            .contains("recorded")),
        "it says what it found:\n{}",
        env.report()
    );
    let log = env.log("probe");
    assert!(
        log.contains("recorded-before-running") && !log.contains("not-recorded"),
        "the supervisor records a process before letting it run:\n{log}"
    );
    assert!(
        log.find("process started")
            .is_some_and(|at| at < log.find("recorded").expect("found")),
        "the note of its start comes before its first words:\n{log}"
    );

    env.delete("probe", Some(&applied.live), "delete probe");
}

#[test]
fn a_process_that_prints_nothing_costs_no_log_file_until_it_does() {
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let silent = json!({"command": ["sleep", "4249001"]});
    let quiet = env.create(&mut cleanup, "quiet", &silent);
    let child = child_in(&env.state("quiet").expect("state")).expect("a child");
    cleanup.groups.push(child);
    assert!(
        !env.dirs.logs.join("quiet.log").exists(),
        "a process that has printed nothing has no log file yet:\n{}",
        env.report()
    );
    // Its end is worth a note: the file is made, with the start held back first.
    kill("-KILL", &child.pid.to_string());
    assert!(
        eventually(Duration::from_secs(10), || env
            .log("quiet")
            .contains("exited")),
        "its end is noted:\n{}",
        env.report()
    );
    let log = env.log("quiet");
    assert!(
        log.find(&format!("process started (pid {})", child.pid))
            .is_some_and(|at| at < log.find("exited").expect("found")),
        "the note of its start comes first:\n{log}"
    );
    env.delete("quiet", Some(&quiet.live), "delete quiet");
}

#[test]
fn a_start_sends_its_spec_which_only_the_state_file_keeps_and_a_successor_reads() {
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let config = json!({"command": ["sleep", "4247000"], "env": {"TOKEN": "s3cr3t-carried"}});
    let applied = env.create(&mut cleanup, "api", &config);
    let child = child_in(&env.state("api").expect("state")).expect("a child");
    cleanup.groups.push(child);
    assert!(
        !env.dirs.run.join("api.spec.json").exists(),
        "no spec file: one file per start"
    );
    let state = env.state("api").expect("state");
    assert_eq!(
        state["spec"]["env"]["TOKEN"], "s3cr3t-carried",
        "the state file carries the spec: {state}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(env.dirs.run.join("api.json"))
        .expect("the state file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "and holds secrets: 0600, not {mode:o}");

    // Its supervisor dies: the next one has nothing but the state file to go by.
    let supervisor = supervisor_of(&applied);
    kill("-KILL", &supervisor.pid.to_string());
    assert!(eventually(Duration::from_secs(5), || !supervisor.runs()));
    assert_eq!(
        env.observe("api", &config, &applied.live).expect("observe"),
        Observation::InSync,
        "taken back from the state file alone:\n{}",
        env.report()
    );
    let state = env.state("api").expect("state");
    assert_ne!(Process::from_json(&state["supervisor"]), Some(supervisor));
    assert_eq!(child_in(&state), Some(child), "the same child: {state}");
    assert_eq!(
        state["spec"]["env"]["TOKEN"], "s3cr3t-carried",
        "whose spec it keeps carrying: {state}"
    );
    // An unchanged create keeps it; a changed one replaces it.
    env.create(&mut cleanup, "api", &config);
    assert_eq!(child_in(&env.state("api").expect("state")), Some(child));
    let changed = json!({"command": ["sleep", "4247001"]});
    let replaced = env.create(&mut cleanup, "api", &changed);
    let new_child = child_in(&env.state("api").expect("state")).expect("a child");
    cleanup.groups.push(new_child);
    assert!(new_child != child && !child.runs(), "replaced");
    env.delete("api", Some(&replaced.live), "delete");
    assert!(!new_child.runs(), "stopped by the delete");
}

#[test]
fn a_process_whose_state_file_the_engine_removed_is_never_started_again() {
    // A delete removes the state file (which carries the spec) before it asks the supervisor
    // to let go: a restart falling due meanwhile must not start the process again, nor make
    // the file again.
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let starts = env.dirs.data.join("starts");
    let config = json!({
        "command": ["sh", "-c", format!("echo start >> {}; sleep 0.2; exit 1", starts.display())],
    });
    let applied = env.create(&mut cleanup, "loop", &config);
    let count = || {
        std::fs::read_to_string(&starts)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    assert!(
        eventually(Duration::from_secs(10), || count() >= 2),
        "it crash-loops:\n{}",
        env.report()
    );
    std::fs::remove_file(env.dirs.run.join("loop.json")).expect("remove the state file");
    let removed_at = count();
    // Its next restart falls due within 0.5 s to 2 s. A supervisor that lets go of it
    // supervises nothing, and exits once idle for `IDLE_EXIT` (5 s); one that restarts it
    // never does.
    let supervisor = supervisor_of(&applied);
    eventually(Duration::from_secs(20), || !supervisor.runs());
    assert_eq!(
        count(),
        removed_at,
        "not started again once its state file is gone:\n{}",
        env.report()
    );
    assert!(
        env.state("loop").is_none(),
        "and the supervisor did not make the file again"
    );
    env.delete("loop", Some(&applied.live), "delete");
}

#[test]
fn hostile_requests_get_an_error_and_the_supervisor_serves_on() {
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let config = json!({"command": ["sleep", "4248000"]});
    let applied = env.create(&mut cleanup, "api", &config);
    let child = child_in(&env.state("api").expect("state")).expect("a child");
    cleanup.groups.push(child);
    let socket = env.dirs.run.join("supervise.sock");
    let ask = |bytes: &[u8]| ask_socket(&socket, bytes);
    let spec = env.state("api").expect("state")["spec"].to_string();
    // A spec whose state file or log is not the resource's own: the supervisor, which writes
    // outside any sandbox, would replace or append to any file of its user's.
    let elsewhere = env.dirs.root.join("elsewhere");
    let naming = |field: &str, path: &std::path::Path| {
        let mut spec = env.state("api").expect("state")["spec"].clone();
        spec[field] = json!(path.display().to_string());
        let spec = spec.to_string();
        format!("start api +{}\n{spec}", spec.len()).into_bytes()
    };
    let mut cases: Vec<(Vec<u8>, &str)> = vec![
        (naming("state", &elsewhere), "not api's own"),
        (naming("log", &elsewhere), "not api's own"),
    ];
    cases.extend(vec![
        (b"start api +abc\n{}".to_vec(), "+LENGTH"),
        (b"start api +0\n".to_vec(), "+LENGTH"),
        (b"start api +99999999\n{}".to_vec(), "+LENGTH"),
        (b"start api +-3\n{}".to_vec(), "+LENGTH"),
        (b"start api +2\n{}}".to_vec(), "longer than announced"),
        (b"adopt api +2\n{}".to_vec(), "only a `start`"),
        (b"release api +2\n{}".to_vec(), "only a `start`"),
        (b"start api\n{}".to_vec(), "one line"),
        (
            b"start api +2\nno".to_vec(),
            "cannot understand the spec sent",
        ),
        (
            b"start api +2\n{}".to_vec(),
            "cannot understand the spec sent",
        ),
        (
            format!("start other +{}\n{spec}", spec.len()).into_bytes(),
            "is not the spec of other",
        ),
        (
            format!("start ../api +{}\n{spec}", spec.len()).into_bytes(),
            "a request is",
        ),
        (vec![b'x'; 5000], "at most 4096 bytes"),
    ]);
    for (request, expected) in &cases {
        let answer = ask(request);
        assert!(
            answer.starts_with("error ") && answer.contains(expected),
            "{:?} is refused saying {expected:?}: {answer:?}",
            String::from_utf8_lossy(&request[..request.len().min(60)])
        );
    }
    // A body shorter than announced: the supervisor gives up on it after its read deadline.
    let answer = ask(b"start api +100\n{\"half\":");
    assert_eq!(answer, "", "a request never finished is dropped");
    // None of it touched the process, and the supervisor still serves the engine.
    assert!(child.runs(), "the process runs on");
    assert_eq!(
        child_in(&env.state("api").expect("state")),
        Some(child),
        "and is still the one recorded"
    );
    assert!(
        !env.dirs.run.join("other.json").exists(),
        "nothing was started for another resource"
    );
    assert!(!elsewhere.exists(), "nothing was written elsewhere");
    env.create(&mut cleanup, "api", &config);
    assert_eq!(child_in(&env.state("api").expect("state")), Some(child));
    env.delete("api", Some(&applied.live), "delete");
    assert!(!child.runs());
}

/// A supervisor as they were before a `start` could carry its spec: it reads the request's
/// line and no more (512 bytes at a time, cut at the newline), refuses any line but
/// `VERB RESOURCE`, and reads the spec from `<run>/<resource>.spec.json`. It logs each line.
/// Like every supervisor since there is one per environment, it holds the lock on `<run>`,
/// so that a supervisor started meanwhile (an apply that found it slow) leaves it serving.
const SUPERVISOR_FROM_BEFORE: &str = r#"
import fcntl, json, os, socket, subprocess, sys
run, log = sys.argv[1], sys.argv[2]
held = os.open(run, os.O_RDONLY)
fcntl.flock(held, fcntl.LOCK_EX)
def start_time(pid):
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19])
path = os.path.join(run, "supervise.sock")
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen(8)
while True:
    conn, _ = server.accept()
    line = b""
    while b"\n" not in line:
        chunk = conn.recv(512)
        if not chunk:
            break
        line += chunk
    line = line.split(b"\n")[0].decode()
    with open(log, "a") as f:
        f.write(line + "\n")
    words = line.split()
    if len(words) != 2:
        conn.sendall(b"error a request is `start|adopt|release RESOURCE`\n")
    elif words[0] == "start":
        spec = json.load(open(os.path.join(run, words[1] + ".spec.json")))
        child = subprocess.Popen(spec["command"], start_new_session=True)
        me = os.getpid()
        state = {"supervisor": {"pid": me, "start": start_time(me)},
                 "child": {"pid": child.pid, "start": start_time(child.pid)},
                 "phase": "running", "restarts": 0, "exits": 0, "last_exit": None,
                 "stop_grace_ms": spec["stop_grace_ms"], "scope": "environment"}
        with open(spec["state"] + ".tmp", "w") as f:
            json.dump(state, f)
        os.rename(spec["state"] + ".tmp", spec["state"])
        conn.sendall(b"ok\n")
    elif words[0] == "release":
        conn.sendall(b"ok empty\n")
        conn.close()
        os.unlink(path)
        sys.exit(0)
    else:
        conn.sendall(b"ok\n")
    conn.close()
"#;

#[test]
fn a_supervisor_from_before_gets_the_spec_in_its_file() {
    // Supervisors outlive an upgrade of the engine: one from before still serves the
    // environment, and must get the spec the way it reads it.
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    std::fs::create_dir_all(&env.dirs.run).expect("the run directory");
    let log = env.dirs.data.join("requests");
    let mut old = std::process::Command::new("python3")
        .args(["-c", SUPERVISOR_FROM_BEFORE])
        .arg(&env.dirs.run)
        .arg(&log)
        .process_group(0)
        .spawn()
        .expect("python3 runs");
    let socket = env.dirs.run.join("supervise.sock");
    assert!(
        eventually(Duration::from_secs(10), || socket.exists()),
        "the supervisor from before listens"
    );
    let config = json!({"command": ["sleep", "4249000"], "env": {"TOKEN": "s3cr3t-filed"}});
    let applied = env.create(&mut cleanup, "api", &config);
    let state = env.state("api").expect("its state");
    let child = child_in(&state).expect("a child");
    cleanup.groups.push(child);
    assert_eq!(
        Process::from_json(&state["supervisor"]),
        Process::of(old.id()),
        "started by the supervisor from before: {state}"
    );
    let requests = std::fs::read_to_string(&log).expect("its log");
    let lines: Vec<&str> = requests.lines().collect();
    assert_eq!(lines.len(), 2, "two requests: {lines:?}");
    assert!(
        lines[0].starts_with("start api +"),
        "the spec offered first: {lines:?}"
    );
    assert_eq!(
        lines[1], "start api",
        "then the request it knows: {lines:?}"
    );
    let spec_file = env.dirs.run.join("api.spec.json");
    let spec: Value =
        serde_json::from_slice(&std::fs::read(&spec_file).expect("the spec file")).expect("JSON");
    assert_eq!(spec["env"]["TOKEN"], "s3cr3t-filed", "{spec}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&spec_file)
        .expect("spec")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the spec file holds secrets: 0600");
    assert!(child.runs(), "its process runs");

    env.delete("api", Some(&applied.live), "delete");
    assert!(!child.runs(), "stopped by the delete");
    assert!(!spec_file.exists(), "its spec file is removed");
    // It exits on the `release` of its last process: waited for, not forever.
    let released = eventually(Duration::from_secs(20), || {
        old.try_wait().is_ok_and(|status| status.is_some())
    });
    if !released {
        let _ = old.kill();
        let _ = old.wait();
    }
    let requests = std::fs::read_to_string(&log).expect("its log");
    assert!(
        released,
        "the supervisor from before was asked to let go: {requests}"
    );
    assert!(requests.ends_with("release api\n"), "{requests}");
}

#[test]
fn a_delete_cut_short_leaves_the_state_file_set_aside_and_the_next_one_stops_its_child() {
    // A delete sets the state file aside (`R.json.deleting`) before it asks the supervisor to
    // let go, and removes it once the children it names are stopped. One cut short there,
    // its supervisor killed too, leaves the only record of the child in that file.
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let config = json!({"command": ["sleep", "4250000"]});
    let applied = env.create(&mut cleanup, "api", &config);
    let state = env.state("api").expect("state");
    let child = child_in(&state).expect("a child");
    cleanup.groups.push(child);
    let supervisor = supervisor_of(&applied);
    kill("-KILL", &supervisor.pid.to_string());
    assert!(eventually(Duration::from_secs(5), || !supervisor.runs()));
    std::fs::rename(
        env.dirs.run.join("api.json"),
        env.dirs.run.join("api.json.deleting"),
    )
    .expect("set aside, as the delete did");
    // The engine's record of it is lost too (a create that never recorded it).
    env.delete("api", None, "delete again");
    assert!(
        eventually(Duration::from_secs(10), || !child.runs()),
        "the child named only in the file set aside is stopped"
    );
    assert!(
        !env.dirs.run.join("api.json.deleting").exists(),
        "and the file is gone"
    );
}

#[test]
fn a_start_of_the_same_spec_writes_its_state_file_again_if_it_went_missing() {
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let config = json!({"command": ["sleep", "4251000"]});
    let applied = env.create(&mut cleanup, "api", &config);
    let state = env.state("api").expect("state");
    let child = child_in(&state).expect("a child");
    cleanup.groups.push(child);
    let spec = state["spec"].to_string();
    std::fs::remove_file(env.dirs.run.join("api.json")).expect("remove the state file");
    let request = format!("start api +{}\n{spec}", spec.len());
    let answer = ask_socket(&env.dirs.run.join("supervise.sock"), request.as_bytes());
    assert!(answer.starts_with("ok "), "{answer}");
    let state = env.state("api").expect("the state file is written again");
    assert_eq!(child_in(&state), Some(child), "the same child: {state}");
    assert_eq!(state["spec"].to_string(), spec, "carrying its spec");
    env.delete("api", Some(&applied.live), "delete");
    assert!(!child.runs());
}

#[test]
fn a_successor_removes_what_a_writer_killed_mid_write_left_under_its_temporary_name() {
    // A supervisor killed between writing a state file under its temporary name and putting
    // it in place leaves that file, the state (and spec) it held included.
    let env = TestEnv::new();
    let mut cleanup = Cleanup::default();
    let config = json!({"command": ["sleep", "4252000"]});
    let applied = env.create(&mut cleanup, "api", &config);
    let child = child_in(&env.state("api").expect("state")).expect("a child");
    cleanup.groups.push(child);
    let supervisor = supervisor_of(&applied);
    kill("-KILL", &supervisor.pid.to_string());
    assert!(eventually(Duration::from_secs(5), || !supervisor.runs()));
    let dead = env
        .dirs
        .run
        .join(format!("api.json.tmp.{}", supervisor.pid));
    let living = env
        .dirs
        .run
        .join(format!("api.spec.json.tmp.{}", std::process::id()));
    for file in [&dead, &living] {
        std::fs::write(file, "{}").expect("a file under a temporary name");
    }
    assert_eq!(
        env.observe("api", &config, &applied.live).expect("observe"),
        Observation::InSync,
        "taken back"
    );
    assert!(!dead.exists(), "the dead writer's file is removed");
    assert!(living.exists(), "a living writer's is left to it");
    std::fs::remove_file(&living).expect("remove");
    env.delete("api", Some(&applied.live), "delete");
}
