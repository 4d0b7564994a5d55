//! A temporary environment for provider tests: its directories, ports and settings, and a
//! report of everything in it for failure messages.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of this helper"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use slipway_providers::{EnvDirs, ProviderError, ProviderSettings, ResourceContext, Retry};

/// One environment's directories in a temporary directory.
pub struct TestEnv {
    _tmp: tempfile::TempDir,
    /// The environment every context names: `qa`.
    pub env: slipway_core::EnvName,
    pub dirs: EnvDirs,
    pub ports: BTreeMap<String, u16>,
    pub settings: ProviderSettings,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let tmp = tempfile::tempdir().expect("create a temporary directory");
        let root = tmp.path().join("envs").join("qa");
        let dirs = EnvDirs {
            src: root.join("src"),
            data: root.join("data"),
            logs: root.join("logs"),
            run: root.join("run"),
            root,
            opened: slipway_providers::OpenDirs::default(),
        };
        for dir in [&dirs.src, &dirs.data, &dirs.logs, &dirs.run] {
            std::fs::create_dir_all(dir).expect("create an environment directory");
        }
        TestEnv {
            _tmp: tmp,
            env: slipway_core::EnvName::parse("qa").expect("`qa` is a name"),
            dirs,
            ports: BTreeMap::new(),
            settings: ProviderSettings {
                stop_grace: Duration::from_secs(2),
                ready_timeout: Duration::from_secs(20),
                ..ProviderSettings::default()
            },
        }
    }

    pub fn ctx<'a>(&'a self, resource: &'a str) -> ResourceContext<'a> {
        ResourceContext {
            environment: &self.env,
            stack: "shop",
            resource,
            dirs: &self.dirs,
            ports: &self.ports,
            settings: &self.settings,
            redact: &[],
            sandbox: &slipway_providers::sandbox::UNCONFINED,
            kind: None,
        }
    }

    /// The resource's log, or an empty string.
    pub fn log(&self, resource: &str) -> String {
        std::fs::read_to_string(self.dirs.logs.join(format!("{resource}.log"))).unwrap_or_default()
    }

    /// Every file in the environment, with sizes, and every log: for failure messages.
    pub fn report(&self) -> String {
        let mut out = String::new();
        list(&self.dirs.root, &self.dirs.root, &mut out);
        for entry in std::fs::read_dir(&self.dirs.logs)
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            out.push_str(&format!("--- {} ---\n{text}\n", entry.path().display()));
        }
        out
    }
}

fn list(root: &Path, dir: &Path, out: &mut String) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let meta = std::fs::symlink_metadata(&path).expect("metadata of a listed file");
        let shown = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        if meta.is_dir() {
            out.push_str(&format!("{shown}/\n"));
            list(root, &path, out);
        } else {
            out.push_str(&format!("{shown} ({} bytes)\n", meta.len()));
        }
    }
}

/// The absolute path of a test fixture.
pub fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// Polls `done` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process with this pid exists and has not exited.
pub fn pid_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some(Some('Z' | 'X')))
        }
        Err(_) => false,
    }
}

/// The message, log tail and retry class of a [`ProviderError::Failed`]; any other error fails
/// the test, `what` naming the failure that should have been one.
pub fn failed<'a>(err: &'a ProviderError, what: &str) -> (&'a str, Option<&'a str>, Retry) {
    match err {
        ProviderError::Failed {
            message,
            log_tail,
            retry,
        } => (message, log_tail.as_deref(), *retry),
        other => panic!("{what} is ProviderError::Failed, got {other:?}"),
    }
}

/// Kills the given pids when dropped, so that a failing test leaves no process behind.
#[derive(Default)]
pub struct Reaper(pub Vec<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if pid_running(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// An `exec` resource's configuration running `fixtures/hostile_provider.py` in `mode` (its
/// further arguments `extra`), with `timeout`.
pub fn hostile(mode: &str, extra: &[&str], timeout: &str) -> serde_json::Value {
    let mut program = vec![
        "python3".to_owned(),
        fixture("hostile_provider.py"),
        mode.to_owned(),
    ];
    program.extend(extra.iter().map(|s| s.to_string()));
    serde_json::json!({"program": program, "timeout": timeout})
}
