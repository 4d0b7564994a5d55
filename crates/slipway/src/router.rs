//! The router process (`slipway __router`) and how `serve --router` finds or starts it.
//!
//! One router runs per home. It holds an exclusive lock on `<home>/run/router/router.lock`
//! for as long as it lives, and writes its pid and port there; `serve` finds it by that lock
//! (a dead router holds no lock, whatever its file says). The router owns the public
//! listener and serves preview URLs itself, over a controller opened for routing only (the
//! engine's store and key; no reconcile loop, no heartbeat); every other request goes to
//! `serve` on `<home>/run/router/serve.sock` (slipway_server::front). The directory is mode
//! 0700: only the engine's user reaches the socket, which trusts the client address the
//! router passes.
//!
//! The router is started detached (a process group of its own, its output in
//! `router.log`), so it outlives `serve`: a `kill -9` of `serve` loses no preview request.
//! It stops on SIGTERM or SIGINT, or by itself once its home's run directory is gone.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use slipway_git::{Branch, Commit, GitError, Source, TreeEntry};

use crate::Global;
use crate::commands::{absolute, engine_config, open_engine};

/// The files a router and its `serve` share in a home.
/// (All in `<home>/run/router`, mode 0700.)
pub struct Files {
    /// Held locked by the running router; holds `PID PORT`.
    pub lock: PathBuf,
    /// Where `serve` listens for the router.
    pub socket: PathBuf,
    /// The router's output.
    pub log: PathBuf,
}

impl Files {
    /// The router's files of `home`, making their directory (0700) if needed.
    pub fn of(home: &Path) -> Result<Files> {
        let dir = absolute(home)?.join("run").join("router");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot make the router's directory {}", dir.display()))?;
        // Whatever made it, only the engine's user may reach the socket inside.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.display()))?;
        Ok(Files {
            lock: dir.join("router.lock"),
            socket: dir.join("serve.sock"),
            log: dir.join("router.log"),
        })
    }
}

/// The router of `files`: `Some(port)` when one runs and has said its port; `None` when none
/// runs. A router still starting (locked, no port yet) is `Err(Starting)`.
fn running(files: &Files) -> Result<Option<u16>, Probe> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&files.lock)
        .map_err(|e| Probe::Failed(e.into()))?;
    match file.try_lock() {
        Ok(()) => Ok(None),
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            text.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .map(Some)
                .ok_or(Probe::Starting)
        }
        Err(std::fs::TryLockError::Error(e)) => Err(Probe::Failed(e.into())),
    }
}

enum Probe {
    Starting,
    Failed(anyhow::Error),
}

/// The port of this home's router, started (detached) when none runs: `listen` is where a
/// new one listens; a running one must listen there already (or `listen`'s port is 0).
pub fn attach(g: &Global, files: &Files, listen: &str) -> Result<u16> {
    let wanted = listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(0);
    let mut child: Option<std::process::Child> = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match running(files) {
            Ok(Some(port)) => {
                if wanted != 0 && wanted != port {
                    bail!(
                        "the router of this home listens on port {port}, not {wanted}; stop it \
                         (kill -TERM the pid in {}) or pass --listen with its port",
                        files.lock.display()
                    );
                }
                if child.is_none() {
                    eprintln!(
                        "slipway serve: the router already running on port {port} serves for it"
                    );
                }
                return Ok(port);
            }
            Ok(None) if child.is_none() => child = Some(start(g, files, listen)?),
            Ok(None) | Err(Probe::Starting) => {}
            Err(Probe::Failed(e)) => {
                return Err(e.context(format!("cannot read {}", files.lock.display())));
            }
        }
        if let Some(started) = child.as_mut()
            && let Ok(Some(status)) = started.try_wait()
        {
            let log = std::fs::read_to_string(&files.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!(
                "the router stopped at once ({status}): {}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the router did not start within 30s; see {}",
                files.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start(g: &Global, files: &Files, listen: &str) -> Result<std::process::Child> {
    let exe = std::env::current_exe().context("cannot find the slipway binary for the router")?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&files.log)
        .with_context(|| format!("cannot open {}", files.log.display()))?;
    let mut command = std::process::Command::new(exe);
    command.arg("--home").arg(absolute(&g.home)?);
    if let Some(config) = &g.config {
        command.arg("--config").arg(absolute(config)?);
    }
    command
        .args(["__router", "--listen", listen])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        // Out of the terminal's process group: a Ctrl-C meant for `serve` leaves it alone.
        .process_group(0);
    command.spawn().context("cannot start the router")
}

/// Starts a new router whenever this home's is gone (killed, crashed), on the port the last
/// one had, for as long as `serve` runs: preview URLs then come back within a second or so
/// without waiting for an operator. A thread of `serve`'s; it never returns.
pub fn keep(g: Global, files: Files, host: String, port: u16) {
    std::thread::spawn(move || {
        let listen = format!("{host}:{port}");
        loop {
            std::thread::sleep(Duration::from_millis(500));
            if !files.lock.exists() {
                // The home is gone: nothing left to route.
                return;
            }
            if let Ok(None) = running(&files) {
                eprintln!("slipway serve: the router is gone; starting another on {listen}");
                if let Err(e) = attach(&g, &files, &listen) {
                    eprintln!("slipway serve: cannot start the router again: {e:#}");
                }
            }
        }
    });
}

/// Whether a `serve` answers on the socket of `files` (so another must not take it).
pub fn serve_answers(files: &Files) -> bool {
    std::os::unix::net::UnixStream::connect(&files.socket).is_ok()
}

/// Takes this home's router lock, waiting a moment for a `serve` probing it.
fn lock(files: &Files) -> Result<Option<File>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&files.lock)
        .with_context(|| format!("cannot open {}", files.lock.display()))?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
    }
}

/// `slipway __router --listen ADDR`: runs until SIGTERM/SIGINT or its home is gone.
pub fn run(g: &Global, listen: &str) -> ExitCode {
    match route(g, listen) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("slipway router: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn route(g: &Global, listen: &str) -> Result<ExitCode> {
    if !g.home.is_dir() {
        // Never made here: a router started as its home was removed must not bring it back.
        bail!("no home at {}", g.home.display());
    }
    let files = Files::of(&g.home)?;
    let Some(mut lock) = lock(&files)? else {
        eprintln!("slipway router: another router runs for this home");
        return Ok(ExitCode::SUCCESS);
    };
    let config = engine_config(g)?;
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    listener.set_nonblocking(true)?;
    crate::control::hold_ipv6_loopback(&listener.local_addr()?);
    let port = listener.local_addr()?.port();
    let controller = routing_controller(g, &config, port)?;
    lock.set_len(0)?;
    lock.rewind()?;
    write!(lock, "{} {port}", std::process::id())?;
    lock.flush()?;
    let options = config.server.options();
    let front = slipway_server::front::FrontOptions {
        upstream: files.socket.clone(),
        hold: Duration::from_secs(30),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    eprintln!(
        "slipway router: pid {} on {}",
        std::process::id(),
        listener.local_addr()?
    );
    let lock_path = files.lock.clone();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let stop = async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM can be handled");
            let gone = async {
                // A router whose home was removed (a test's temporary home, an uninstall)
                // has nothing left to route: it goes too.
                while lock_path.exists() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                () = gone => {}
            }
        };
        slipway_server::front::serve_router(listener, controller, options, front, stop).await
    })?;
    drop(lock);
    eprintln!("slipway router: stopped");
    Ok(ExitCode::SUCCESS)
}

/// A controller for routing only: the engine's store and key, this replica's identity on a
/// shared state (for placement), and no repository, loop or heartbeat.
fn routing_controller(
    g: &Global,
    config: &crate::config::Config,
    port: u16,
) -> Result<slipway_controller::Controller> {
    let engine = open_engine(g)?;
    let shared = engine.store().dialect() == slipway_state::Dialect::Postgres;
    if shared && config.controller.replica.is_none() {
        // The default name holds `serve`'s pid, which changes at each restart: the router
        // would take the environments of the next `serve` for another replica's.
        bail!(
            "a router on a shared PostgreSQL state routes as this node's replica across \
             restarts, so it needs a stable name: set [controller] replica"
        );
    }
    let replica = shared.then(|| {
        let advertise = config.local.advertise.as_ref().map(|a| a.address(port));
        config.controller.replica(advertise)
    });
    let options = slipway_controller::Options {
        default_ref: "HEAD".into(),
        replica,
        ..config
            .controller
            .options(config.repo.poll_interval, config.local.parallelism)
    };
    Ok(slipway_controller::Controller::new(
        Arc::new(engine),
        Arc::new(NoSource),
        "(router)",
        "",
        options,
    ))
}

/// The router reads no repository: routing needs the state alone.
struct NoSource;

impl NoSource {
    fn refused<T>() -> Result<T, GitError> {
        Err(GitError::UnsupportedSpec {
            spec: "(router)".into(),
            reason: "the router reads no repository".into(),
        })
    }
}

impl Source for NoSource {
    fn resolve(&self, _: &str) -> Result<Commit, GitError> {
        NoSource::refused()
    }
    fn resolve_tracked(&self, _: &str) -> Result<Commit, GitError> {
        NoSource::refused()
    }
    fn read_file(&self, _: &str, _: &str, _: u64) -> Result<Option<Vec<u8>>, GitError> {
        NoSource::refused()
    }
    fn list_files(&self, _: &str, _: &str) -> Result<Vec<TreeEntry>, GitError> {
        NoSource::refused()
    }
    fn export(&self, _: &str, _: &str, _: &Path) -> Result<(), GitError> {
        NoSource::refused()
    }
    fn fetch(&self) -> Result<(), GitError> {
        NoSource::refused()
    }
    fn branches(&self) -> Result<Vec<Branch>, GitError> {
        NoSource::refused()
    }
    fn is_ancestor(&self, _: &str, _: &str) -> Result<bool, GitError> {
        NoSource::refused()
    }
}
