//! Health checks of a `process`: an HTTP GET, a TCP connect, or a command, each with a timeout.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::command::{describe_exit, show_command};
use crate::procinfo::ProcessIdentity;
use crate::sandbox::Confinement;

/// A resolved health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HealthCheck {
    /// `GET http://127.0.0.1:<port><path>` answers 2xx.
    Http {
        /// The allocated port number.
        port: u16,
        /// Absolute path, e.g. `/healthz`.
        path: String,
    },
    /// A TCP connection to `127.0.0.1:<port>` is accepted.
    Tcp {
        /// The allocated port number.
        port: u16,
    },
    /// The command exits 0.
    Command(Vec<String>),
}

impl HealthCheck {
    /// Runs the check once. `Err` says why it did not pass.
    pub fn check(
        &self,
        timeout: Duration,
        cwd: &Path,
        env: &BTreeMap<String, String>,
        confinement: &Confinement,
    ) -> Result<(), String> {
        match self {
            HealthCheck::Http { port, path } => http_get(*port, path, timeout),
            HealthCheck::Tcp { port } => {
                let addr = SocketAddr::from(([127, 0, 0, 1], *port));
                TcpStream::connect_timeout(&addr, timeout)
                    .map(drop)
                    .map_err(|e| format!("tcp connect to {addr} failed: {e}"))
            }
            HealthCheck::Command(command) => run_check(command, timeout, cwd, env, confinement),
        }
    }
}

/// Whether `path` can go into a request line as is.
pub(crate) fn valid_http_path(path: &str) -> bool {
    path.starts_with('/') && !path.chars().any(|c| c.is_ascii_control() || c == ' ')
}

/// A minimal HTTP/1.0 GET that only reads the status line: a health check needs nothing more,
/// and this keeps an HTTP client (and its TLS) out of the supervisor's path.
fn http_get(port: u16, path: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let url = format!("http://{addr}{path}");
    let fail = |what: String| format!("GET {url} {what}");
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| fail(format!("failed to connect: {e}")))?;
    stream
        .set_write_timeout(Some(timeout))
        .and_then(|()| {
            stream.write_all(
                format!(
                    "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: slipway-health\r\n\
                     Connection: close\r\n\r\n"
                )
                .as_bytes(),
            )
        })
        .map_err(|e| fail(format!("failed to send the request: {e}")))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(fail(format!("timed out after {timeout:?}")));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| fail(format!("failed: {e}")))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail(format!("failed to read the response: {e}"))),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let status = match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => code.parse::<u16>().ok(),
        _ => None,
    };
    match status {
        Some(code) if (200..300).contains(&code) => Ok(()),
        Some(code) => Err(fail(format!("answered {code}, not 2xx"))),
        None => Err(fail(format!(
            "got no HTTP status line (got {:?})",
            status_line.chars().take(80).collect::<String>()
        ))),
    }
}

/// Runs a health check command with its output discarded, killing its process group if it
/// outlives `timeout`.
fn run_check(
    command: &[String],
    timeout: Duration,
    cwd: &Path,
    env: &BTreeMap<String, String>,
    confinement: &Confinement,
) -> Result<(), String> {
    let shown = show_command(command);
    let mut check = Command::new(&command[0]);
    check
        .args(&command[1..])
        .env_clear()
        .envs(env)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = confinement
        .apply(&mut check)
        .and_then(|launch| launch.spawn(&mut check))
        .map_err(|e| format!("health command `{shown}` failed to start: {e}"))?;
    let group = ProcessIdentity::of_child(child.id());
    // Whatever the check left in its group (`sh -c 'srv & exit 0'`) is killed once it has
    // exited, while it is not yet reaped (its pid, so its group id, cannot be reused).
    let kill_leftovers = |child: &mut std::process::Child| {
        if let Some(group) = &group {
            group.signal_group(Signal::SIGKILL);
        }
        let _ = child.wait();
    };
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => {
                kill_leftovers(&mut child);
                return Ok(());
            }
            Ok(Some(status)) => {
                kill_leftovers(&mut child);
                return Err(format!(
                    "health command `{shown}` failed with {}",
                    describe_exit(status)
                ));
            }
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(None) | Err(_) => {
                kill_leftovers(&mut child);
                return Err(format!(
                    "health command `{shown}` timed out after {timeout:?}"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(response: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("local addr").port();
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(response.as_bytes());
            }
        });
        port
    }

    #[test]
    fn http_check_passes_on_2xx_and_fails_otherwise() {
        let ok = serve_once("HTTP/1.0 204 No Content\r\n\r\n");
        assert_eq!(
            http_get(ok, "/healthz", Duration::from_secs(2)),
            Ok(()),
            "a 204 answer is healthy"
        );
        let bad = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let err = http_get(bad, "/healthz", Duration::from_secs(2)).expect_err("503 fails");
        assert!(err.contains("503"), "the failure names the status: {err}");
    }

    #[test]
    fn a_health_command_leaves_nothing_running_after_it_exits() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let pidfile = dir.path().join("pid");
        let command: Vec<String> = [
            "sh",
            "-c",
            &format!("sleep 1000 & echo $! > {}; exit 0", pidfile.display()),
        ]
        .map(String::from)
        .to_vec();
        run_check(
            &command,
            Duration::from_secs(10),
            dir.path(),
            &BTreeMap::new(),
            &Confinement::none(),
        )
        .expect("the check passes");
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .expect("the check wrote its survivor's pid")
            .trim()
            .parse()
            .expect("a pid");
        // Killed at once; gone (or a zombie waiting for init) within moments.
        let deadline = Instant::now() + Duration::from_secs(5);
        let running = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|r| !r.trim_start().starts_with('Z'))
            })
        };
        while running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !running(),
            "what the health command started in its group (pid {pid}) is killed when it exits"
        );
    }

    #[test]
    fn http_paths_cannot_inject_into_the_request() {
        assert!(
            valid_http_path("/healthz?x=1"),
            "a path with a query is fine"
        );
        assert!(!valid_http_path("healthz"), "a path must start with /");
        assert!(
            !valid_http_path("/a HTTP/1.0\r\nX: y"),
            "spaces and CR/LF are refused"
        );
    }
}
