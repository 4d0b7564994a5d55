//! The `job` resource type: a command run to completion (migrations, builds, smoke tests).
//!
//! `create` runs the command in the environment's source directory and succeeds only if it
//! exits 0 before its timeout; its output is appended to `<logs>/<resource>.log`. A job has
//! nothing to undo, so `delete` does nothing and `observe` always finds it in sync: running it
//! again when its inputs change is the engine's decision (it replaces the resource).
//!
//! # Guarantees
//! - The command runs in its own session and process group; when it exits or times out,
//!   whatever it left running in that group is killed. A job leaves no process behind (a
//!   long-running program belongs in a `process` resource).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::command::{self, Ending, Run, Stdout};
use crate::logfile::CappedLog;
use crate::sandbox::Confinement;
use crate::{Applied, Observation, Provider, ProviderError, ResourceContext, Retry};

/// Configuration of a `job` resource.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Program and arguments, e.g. `["python3", "migrate.py"]`.
    pub command: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory relative to the environment's source directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// How long the job may run; the engine's `ready_timeout` if absent.
    #[serde(default, deserialize_with = "slipway_core::duration::optional")]
    pub timeout: Option<Duration>,
}

/// The `job` provider.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobProvider;

impl Provider for JobProvider {
    type Config = JobConfig;
    const TYPE: &'static str = "job";

    /// Nothing to wait for once made.
    fn ready_at_once(&self, _config: &Self::Config) -> bool {
        true
    }

    fn create(
        &self,
        ctx: ResourceContext<'_>,
        config: &JobConfig,
    ) -> Result<Applied, ProviderError> {
        command::check_command(Self::TYPE, "command", &config.command)?;
        command::check_env(Self::TYPE, &config.env)?;
        let cwd = command::working_dir(Self::TYPE, ctx.dirs, config.cwd.as_deref())?;
        let env = command::child_env(ctx, &config.env);
        let timeout = config.timeout.unwrap_or(ctx.settings.ready_timeout);
        let shown = command::show_command(&config.command);
        let log = CappedLog::open_shared(
            ctx.dirs,
            ctx.resource,
            ctx.settings.log_max_bytes,
            ctx.redact,
        )?;
        note(&log, &format!("job started: {shown}"));

        let finished = Run {
            command: &config.command,
            cwd: &cwd,
            env: &env,
            stdin: None,
            stdout: Stdout::Log,
            log: &log,
            deadline: Instant::now() + timeout,
            grace: ctx.settings.stop_grace,
            confinement: &Confinement::of(ctx),
            refused_over_disk: true,
        }
        .run()
        .map_err(|e| ProviderError::Failed {
            message: format!(
                "failed to start job command `{shown}` in {}: {e}",
                cwd.display()
            ),
            log_tail: None,
            retry: if crate::watchdog::refused_for_lease(&e) || crate::disk::refused_for_disk(&e) {
                Retry::Retryable
            } else {
                Retry::Terminal
            },
        })?;

        let failure = match finished.ending {
            Ending::Exited(status) if status.success() => None,
            Ending::Exited(status) => Some(format!(
                "job command `{shown}` failed with {}",
                finished.describe_exit(status)
            )),
            Ending::TimedOut => Some(format!(
                "job command `{shown}` did not finish within {}; it was stopped",
                crate::duration::show(timeout)
            )),
            Ending::StdoutTooLarge => Some(format!("job command `{shown}` was stopped")),
            Ending::LeaseLost => Some(format!(
                "job command `{shown}` was stopped: {}",
                crate::watchdog::lease_lost(ctx.environment.as_str())
            )),
            Ending::DiskFull(ref why) => Some(format!("job command `{shown}` was stopped: {why}")),
        };
        let took = crate::duration::show(finished.duration);
        if let Some(message) = failure {
            note(&log, &format!("{message} (after {took})"));
            // Stopped for its lease, the job did not fail: it runs again, here once the lease
            // is renewed or taken anew, or on the replica that takes the environment over.
            let retry = if matches!(finished.ending, Ending::LeaseLost) {
                Retry::Retryable
            } else {
                Retry::Terminal
            };
            return Err(ProviderError::Failed {
                message,
                log_tail: finished.log_tail,
                retry,
            });
        }
        note(&log, &format!("job finished with exit code 0 after {took}"));
        let finished_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(Applied {
            outputs: BTreeMap::from([("exit_code".to_owned(), json!(0))]),
            secret_outputs: Vec::new(),
            live: json!({
                "exit_code": 0,
                "finished_at": finished_at,
                "duration_ms": finished.duration.as_millis() as u64,
            }),
            ready: false,
        })
    }

    fn delete(
        &self,
        _ctx: ResourceContext<'_>,
        _live: Option<&Value>,
    ) -> Result<(), ProviderError> {
        // A finished job leaves only its log, which is kept for reading.
        Ok(())
    }

    fn observe(
        &self,
        _ctx: ResourceContext<'_>,
        _config: &JobConfig,
        _live: &Value,
    ) -> Result<Observation, ProviderError> {
        Ok(Observation::InSync)
    }
}

fn note(log: &crate::logfile::SharedLog, message: &str) {
    log.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .note(message);
}
