//! The `exec` resource type: an external provider, a program of the user's that speaks a small
//! JSON protocol on standard input and output. It wraps terraform, helm, kubectl or a script.
//!
//! The protocol (version 1) is specified in `docs/exec-protocol.md`: the program is run once per
//! operation with one JSON request on standard input and answers with one JSON object on
//! standard output; its standard error goes to the resource log. What it returned as `state`
//! is recorded as the live object and handed back on the next operation.
//!
//! # Guarantees
//! - A program that misbehaves (exits non-zero, hangs past its timeout, prints more than 1 MiB
//!   or something that is not the expected JSON) fails the operation with an error naming the
//!   program, the operation and the problem, with the tail of its standard error. It never
//!   hangs the engine: on timeout its process group is stopped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::command::{self, Ending, Run, Stdout};
use crate::logfile::CappedLog;
use crate::sandbox::Confinement;
use crate::{Applied, Observation, Provider, ProviderError, ResourceContext, Retry};

/// The protocol version this engine speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The most a program may print on standard output for one reply.
pub const MAX_REPLY_BYTES: usize = 1024 * 1024;

/// The exit code with which a program says that retrying later may succeed (`EX_TEMPFAIL`).
pub const EXIT_RETRYABLE: i32 = 75;

/// Configuration of an `exec` resource.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// Program and arguments, run in the environment's source directory.
    pub program: Vec<String>,
    /// Passed to the program unchanged as the request's `config`.
    #[serde(default)]
    pub config: Value,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How long one operation may take; the engine's `ready_timeout` if absent (a `read` at
    /// most [`MAX_READ`], and within its pass's deadline).
    #[serde(default, deserialize_with = "slipway_core::duration::optional")]
    pub timeout: Option<Duration>,
}

/// The `exec` provider.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecProvider;

/// An operation of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Create,
    Read,
    Update,
    Delete,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Read => "read",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// The request written to the program's standard input.
#[derive(Debug, Serialize)]
struct Request<'a> {
    protocol: u32,
    op: Op,
    environment: &'a str,
    resource: &'a str,
    config: &'a Value,
    state: &'a Value,
    dirs: RequestDirs<'a>,
}

#[derive(Debug, Serialize)]
struct RequestDirs<'a> {
    src: &'a std::path::Path,
    data: &'a std::path::Path,
    logs: &'a std::path::Path,
    run: &'a std::path::Path,
}

/// The reply to `create` and `update`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyReply {
    #[serde(default)]
    outputs: BTreeMap<String, Value>,
    #[serde(default)]
    state: Value,
    #[serde(default)]
    secret_outputs: Vec<String>,
}

/// The reply to `read`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadReply {
    status: ReadStatus,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ReadStatus {
    InSync,
    Drifted,
    Missing,
}

/// The reply to `delete`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteReply {}

/// What is recorded as the live object.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LiveExec {
    state: Value,
}

impl Provider for ExecProvider {
    type Config = ExecConfig;
    const TYPE: &'static str = "exec";

    /// Nothing to wait for once made.
    fn ready_at_once(&self, _config: &Self::Config) -> bool {
        true
    }

    fn create(
        &self,
        ctx: ResourceContext<'_>,
        config: &ExecConfig,
    ) -> Result<Applied, ProviderError> {
        let reply: ApplyReply = call(ctx, config, Op::Create, &Value::Null)?;
        applied(config, Op::Create, reply)
    }

    fn update(
        &self,
        ctx: ResourceContext<'_>,
        config: &ExecConfig,
        live: &Value,
    ) -> Result<Applied, ProviderError> {
        let state = live_state(live)?;
        let reply: ApplyReply = call(ctx, config, Op::Update, &state)?;
        applied(config, Op::Update, reply)
    }

    fn delete(&self, ctx: ResourceContext<'_>, live: Option<&Value>) -> Result<(), ProviderError> {
        // The program to run is in the configuration, which `delete` is not given; it is
        // recorded in the live object and, for an interrupted create, in a file at a path
        // derived from the resource name.
        let state = live.map(live_state).transpose()?.unwrap_or(Value::Null);
        let Some(config) = recorded_config(ctx)? else {
            // No create ever started: nothing to delete.
            return Ok(());
        };
        let _: DeleteReply = call(ctx, &config, Op::Delete, &state)?;
        let path = config_record_path(ctx);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ProviderError::Io {
                context: format!("failed to remove {}", path.display()),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    fn observe(
        &self,
        ctx: ResourceContext<'_>,
        config: &ExecConfig,
        live: &Value,
    ) -> Result<Observation, ProviderError> {
        let state = live_state(live)?;
        let reply: ReadReply = call(ctx, config, Op::Read, &state)?;
        let reason = reply.reason.unwrap_or_default();
        Ok(match reply.status {
            ReadStatus::InSync => Observation::InSync,
            ReadStatus::Drifted => Observation::Drifted {
                reason: or_default(reason, "the program reports drift"),
            },
            ReadStatus::Missing => Observation::Missing {
                reason: or_default(reason, "the program reports it missing"),
            },
        })
    }
}

fn or_default(reason: String, default: &str) -> String {
    if reason.trim().is_empty() {
        default.to_owned()
    } else {
        reason
    }
}

fn live_state(live: &Value) -> Result<Value, ProviderError> {
    serde_json::from_value::<LiveExec>(live.clone())
        .map(|live| live.state)
        .map_err(|e| ProviderError::Config(format!("exec: unreadable live record: {e}")))
}

fn applied(config: &ExecConfig, op: Op, reply: ApplyReply) -> Result<Applied, ProviderError> {
    if let Some(name) = reply
        .secret_outputs
        .iter()
        .find(|name| !reply.outputs.contains_key(*name))
    {
        return Err(protocol_error(
            config,
            op,
            format!("listed {name:?} in `secret_outputs` but returned no such output"),
            None,
        ));
    }
    Ok(Applied {
        outputs: reply.outputs,
        secret_outputs: reply.secret_outputs,
        live: crate::to_json(&LiveExec { state: reply.state }, "the exec state")?,
        ready: false,
    })
}

/// `<run>/<resource>.exec.json`: the configuration of the last create or update, so that
/// `delete` knows which program to ask.
fn config_record_path(ctx: ResourceContext<'_>) -> std::path::PathBuf {
    ctx.dirs.run.join(format!("{}.exec.json", ctx.resource))
}

/// The part of the configuration `delete` needs.
#[derive(Debug, Serialize, Deserialize)]
struct ConfigRecord {
    program: Vec<String>,
    config: Value,
    env: BTreeMap<String, String>,
    timeout_ms: Option<u64>,
}

fn record_config(ctx: ResourceContext<'_>, config: &ExecConfig) -> Result<(), ProviderError> {
    let record = ConfigRecord {
        program: config.program.clone(),
        config: config.config.clone(),
        env: config.env.clone(),
        timeout_ms: config.timeout.map(|t| t.as_millis() as u64),
    };
    let path = config_record_path(ctx);
    let bytes = serde_json::to_vec(&record).expect("a config record serializes");
    crate::atomic_write(&path, &bytes).map_err(|source| ProviderError::Io {
        context: format!("failed to write {}", path.display()),
        source,
    })
}

fn recorded_config(ctx: ResourceContext<'_>) -> Result<Option<ExecConfig>, ProviderError> {
    let path = config_record_path(ctx);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ProviderError::Io {
                context: format!("failed to read {}", path.display()),
                source,
            });
        }
    };
    let record: ConfigRecord = serde_json::from_slice(&bytes)
        .map_err(|e| ProviderError::Config(format!("exec: unreadable {}: {e}", path.display())))?;
    Ok(Some(ExecConfig {
        program: record.program,
        config: record.config,
        env: record.env,
        timeout: record.timeout_ms.map(Duration::from_millis),
    }))
}

/// The longest a `read` may take, whatever the resource's `timeout`.
pub const MAX_READ: Duration = Duration::from_secs(120);

/// Runs the program for one operation and decodes its reply.
fn call<R: serde::de::DeserializeOwned>(
    ctx: ResourceContext<'_>,
    config: &ExecConfig,
    op: Op,
    state: &Value,
) -> Result<R, ProviderError> {
    command::check_command(ExecProvider::TYPE, "program", &config.program)?;
    command::check_env(ExecProvider::TYPE, &config.env)?;
    if matches!(op, Op::Create | Op::Update) {
        record_config(ctx, config)?;
    }
    let request = Request {
        protocol: PROTOCOL_VERSION,
        op,
        environment: ctx.environment,
        resource: ctx.resource,
        config: &config.config,
        state,
        dirs: RequestDirs {
            src: &ctx.dirs.src,
            data: &ctx.dirs.data,
            logs: &ctx.dirs.logs,
            run: &ctx.dirs.run,
        },
    };
    let mut stdin = crate::to_json(&request, "the exec request")?
        .to_string()
        .into_bytes();
    stdin.push(b'\n');
    let env = command::child_env(ctx, &config.env);
    let mut timeout = config.timeout.unwrap_or(ctx.settings.ready_timeout);
    if op == Op::Read {
        // A look, not a change: bounded whatever the resource says (its `timeout` is the
        // branch's, and a read runs at every plan, status and drift pass, a pull request's
        // plan while the controller's forge events wait), and within the pass's deadline.
        timeout = timeout.min(MAX_READ);
        if let Some(until) = ctx.settings.observe_until {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProviderError::Failed {
                    message: format!(
                        "exec program `{}` was not asked to read: the pass of observations ran \
                         out of time",
                        command::show_command(&config.program)
                    ),
                    log_tail: None,
                    retry: Retry::Retryable,
                });
            }
            timeout = timeout.min(left);
        }
    }
    let log = CappedLog::open_shared(
        ctx.dirs,
        ctx.resource,
        ctx.settings.log_max_bytes,
        ctx.redact,
    )?;
    let shown = command::show_command(&config.program);
    log.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .note(&format!("exec {}: {shown}", op.name()));

    let finished = Run {
        command: &config.program,
        cwd: &ctx.dirs.src,
        env: &env,
        stdin: Some(stdin),
        stdout: Stdout::Capture(MAX_REPLY_BYTES),
        log: &log,
        deadline: Instant::now() + timeout,
        grace: ctx.settings.stop_grace,
        confinement: &Confinement::of(ctx),
        refused_over_disk: matches!(op, Op::Create | Op::Update),
    }
    .run()
    .map_err(|e| ProviderError::Failed {
        message: format!(
            "failed to start exec program `{shown}` for {} in {}: {e}",
            op.name(),
            ctx.dirs.src.display()
        ),
        log_tail: None,
        retry: if crate::watchdog::refused_for_lease(&e) || crate::disk::refused_for_disk(&e) {
            Retry::Retryable
        } else {
            Retry::Terminal
        },
    })?;

    match finished.ending {
        Ending::Exited(status) if status.success() => {}
        Ending::Exited(status) => {
            let retry = if status.code() == Some(EXIT_RETRYABLE) {
                Retry::Retryable
            } else {
                Retry::Terminal
            };
            return Err(ProviderError::Failed {
                message: format!(
                    "exec program `{shown}` failed on {} with {}",
                    op.name(),
                    finished.describe_exit(status)
                ),
                log_tail: finished.log_tail,
                retry,
            });
        }
        Ending::TimedOut => {
            return Err(ProviderError::Failed {
                message: format!(
                    "exec program `{shown}` did not answer {} within {}; it was stopped",
                    op.name(),
                    crate::duration::show(timeout)
                ),
                log_tail: finished.log_tail,
                retry: Retry::Retryable,
            });
        }
        Ending::DiskFull(why) => {
            return Err(ProviderError::Failed {
                message: format!("exec program `{shown}` was stopped on {}: {why}", op.name()),
                log_tail: finished.log_tail,
                retry: Retry::Retryable,
            });
        }
        Ending::LeaseLost => {
            return Err(ProviderError::Failed {
                message: format!(
                    "exec program `{shown}` was stopped on {}: {}",
                    op.name(),
                    crate::watchdog::lease_lost(ctx.environment.as_str())
                ),
                log_tail: finished.log_tail,
                retry: Retry::Retryable,
            });
        }
        Ending::StdoutTooLarge => {
            return Err(protocol_error(
                config,
                op,
                format!(
                    "printed more than {} bytes on standard output; it was stopped (a reply \
                     is one JSON object; send diagnostics to standard error)",
                    MAX_REPLY_BYTES
                ),
                finished.log_tail,
            ));
        }
    }

    if finished.stdout.iter().all(u8::is_ascii_whitespace) {
        return Err(protocol_error(
            config,
            op,
            "printed nothing on standard output; it must reply with one JSON object".to_owned(),
            finished.log_tail,
        ));
    }
    // The reply is not quoted in errors: it may hold secret outputs.
    let reply: Value = serde_json::from_slice(&finished.stdout).map_err(|e| {
        protocol_error(
            config,
            op,
            format!(
                "replied with invalid JSON ({e}; {} bytes on standard output); it must reply \
                 with exactly one JSON object",
                finished.stdout.len()
            ),
            finished.log_tail.clone(),
        )
    })?;
    if !reply.is_object() {
        return Err(protocol_error(
            config,
            op,
            "replied with JSON that is not an object".to_owned(),
            finished.log_tail,
        ));
    }
    serde_json::from_value(reply).map_err(|e| {
        protocol_error(
            config,
            op,
            format!("replied with an object that does not fit the protocol: {e}"),
            finished.log_tail,
        )
    })
}

fn protocol_error(
    config: &ExecConfig,
    op: Op,
    problem: String,
    log_tail: Option<String>,
) -> ProviderError {
    ProviderError::Failed {
        message: format!(
            "exec program `{}` {problem} (operation {}, protocol {PROTOCOL_VERSION}; see \
             docs/exec-protocol.md)",
            command::show_command(&config.program),
            op.name()
        ),
        log_tail,
        retry: Retry::Terminal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_have_the_documented_shape() {
        let dirs = RequestDirs {
            src: "/e/src".as_ref(),
            data: "/e/data".as_ref(),
            logs: "/e/logs".as_ref(),
            run: "/e/run".as_ref(),
        };
        let request = Request {
            protocol: 1,
            op: Op::Update,
            environment: "qa",
            resource: "dns",
            config: &json!({"zone": "example"}),
            state: &json!({"id": 7}),
            dirs,
        };
        assert_eq!(
            serde_json::to_value(&request).expect("serializes"),
            json!({
                "protocol": 1, "op": "update", "environment": "qa", "resource": "dns",
                "config": {"zone": "example"}, "state": {"id": 7},
                "dirs": {"src": "/e/src", "data": "/e/data", "logs": "/e/logs", "run": "/e/run"}
            }),
            "the request is the one docs/exec-protocol.md describes"
        );
    }
}
