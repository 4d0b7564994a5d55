//! The controller's commands: `serve`, `env ...`, `token create`, `compare`. The `env`
//! commands act through a running controller's API with `--server`, or directly on the home
//! without one (then they deploy at once, since no controller is there to do it).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;
use slipway_controller::{Controller, CreateEnvironment, Options};

use crate::commands::{confirm, engine_config, env_name, open_engine, open_repo, waiting_for, who};
use crate::lease::Wait;
use crate::{Cli, Command, EnvCommand, Global, Output, RepoArgs, TokenCommand, remote, render};
use slipway_core::EnvName;

pub fn run(cli: Cli) -> Result<ExitCode> {
    let g = cli.global;
    match cli.command {
        Command::Serve {
            repo,
            listen,
            router,
        } => serve(&g, &repo, listen, router),
        Command::Env(cmd) => env(&g, cmd),
        Command::Token(TokenCommand::Create { role, name }) => token_create(&g, &role, &name),
        Command::Compare { a, b, repo, output } => {
            compare(&g, &repo, &env_name(&a)?, &env_name(&b)?, output)
        }
        _ => unreachable!("dispatched in main"),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn duration(text: &str, what: &str) -> Result<Duration> {
    slipway_core::duration::parse(text)
        .with_context(|| format!("{what} `{text}` is not a duration such as 30m, 8h or 2d"))
}

/// What a controller is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `slipway serve`: on a PostgreSQL state, one of the replicas.
    Serve,
    /// A one-shot `slipway env` command: never a replica (it beats no heartbeat and is given
    /// no share); it holds the lease of the one environment it changes ([`crate::lease`]).
    OneShot,
}

fn controller(g: &Global, repo: &RepoArgs, role: Role) -> Result<Controller> {
    controller_listening(g, repo, role, None)
}

/// [`controller`] for `serve`, whose listener is bound to port `listening`: a replica's
/// heartbeats record its `[local] advertise` address (a host alone takes this port), where
/// the other replicas' preview routers forward requests for the environments on this node.
fn controller_listening(
    g: &Global,
    repo: &RepoArgs,
    role: Role,
    listening: Option<u16>,
) -> Result<Controller> {
    let config = engine_config(g)?;
    let mut engine = open_engine(g)?;
    if role == Role::OneShot {
        crate::lease::prepare(&mut engine, &config)?;
    }
    // On a PostgreSQL state every `serve` is one of possibly several replicas: it works on an
    // environment only under its lease, and every write of it proves the lease.
    let shared = engine.store().dialect() == slipway_state::Dialect::Postgres;
    let replica = (shared && role == Role::Serve).then(|| {
        engine.require_leases();
        let advertise = config.local.advertise.as_ref().zip(listening);
        config
            .controller
            .replica(advertise.map(|(advertise, port)| advertise.address(port)))
    });
    if let Some(replica) = &replica {
        engine.on_node(replica.name.clone());
        // What this replica starts for an environment must not outlive its lease of it, even
        // when the replica itself is frozen or cut off.
        let exe = std::env::current_exe()
            .context("cannot find the slipway binary to run the lease watchdog")?;
        let watchdog = slipway_providers::watchdog::Watchdog::start(
            &[exe.into_os_string(), "__watchdog".into()],
            replica.lease,
        )
        .context("cannot start the lease watchdog")?;
        engine.bound_by(watchdog);
        // A replica frozen inside a transaction must not hold the others up past its lease.
        engine.store().bound_sessions(replica.lease / 2);
        eprintln!(
            "slipway serve: replica {} of the state in {} (leases of {:?}); {}",
            replica.name,
            engine.store().location(),
            replica.lease,
            match &replica.advertise {
                Some(address) => format!("the other replicas forward previews to {address}"),
                None => "no [local] advertise: the other replicas cannot forward previews here"
                    .to_owned(),
            }
        );
    }
    let engine = Arc::new(engine);
    let repo = open_repo(g, repo)?;
    if let Some(why) = &repo.offline {
        eprintln!(
            "warning: cannot fetch {} ({why}); starting from the copy in the home",
            repo.spec
        );
    }
    let reference = repo.reference().to_string();
    let options = Options {
        default_ref: reference,
        replica,
        ..config
            .controller
            .options(config.repo.poll_interval, config.local.parallelism)
    };
    Ok(Controller::new(
        engine,
        Arc::new(repo.repository),
        &repo.spec,
        &repo.folder,
        options,
    ))
}

/// Where `serve` takes its requests.
enum Listening {
    /// The public listener itself: API, UI, webhooks and previews in this process.
    Alone(std::net::TcpListener),
    /// Behind this home's router (crate::router), which owns the public listener on `port`
    /// and passes what is not a preview's to this unix socket.
    Router {
        port: u16,
        host: String,
        socket: std::os::unix::net::UnixListener,
    },
}

fn serve(g: &Global, repo: &RepoArgs, listen: Option<String>, router: bool) -> Result<ExitCode> {
    let config = engine_config(g)?;
    let listen = listen.unwrap_or(config.server.listen.clone());
    // Bound (or the router found) before the controller is made: an advertised host without
    // a port takes the port really listened on (`--listen 127.0.0.1:0` included).
    let listening = if router || config.server.router {
        let files = crate::router::Files::of(&g.home)?;
        let port = crate::router::attach(g, &files, &listen)?;
        if crate::router::serve_answers(&files) {
            bail!(
                "another `slipway serve` runs behind this home's router ({}); stop it first",
                files.socket.display()
            );
        }
        // A socket left by a `serve` that was killed answers nobody: it is replaced.
        let _ = std::fs::remove_file(&files.socket);
        let socket = std::os::unix::net::UnixListener::bind(&files.socket)
            .with_context(|| format!("cannot listen on {}", files.socket.display()))?;
        socket
            .set_nonblocking(true)
            .context("cannot make the router's socket non-blocking")?;
        let host = listen
            .rsplit_once(':')
            .map_or("127.0.0.1", |(host, _)| host)
            .to_owned();
        crate::router::keep(g.clone(), files, host.clone(), port);
        Listening::Router { port, host, socket }
    } else {
        let listener = std::net::TcpListener::bind(&listen).with_context(|| {
            format!("cannot listen on {listen}; pass --listen ADDR or set [server] listen")
        })?;
        listener
            .set_nonblocking(true)
            .context("cannot make the listener non-blocking")?;
        hold_ipv6_loopback(&listener.local_addr()?);
        Listening::Alone(listener)
    };
    let port = match &listening {
        Listening::Alone(listener) => listener.local_addr()?.port(),
        Listening::Router { port, .. } => *port,
    };
    let controller = controller_listening(g, repo, Role::Serve, Some(port))?;
    if let Some(setup) =
        slipway_controller::pulls::setup_from_config(&config.forge, private_texts(g, repo, &config))
            .map_err(anyhow::Error::msg)?
    {
        eprintln!(
            "slipway serve: pull requests from {} (webhooks at /webhooks/{})",
            setup.kind.as_str(),
            setup.kind.as_str()
        );
        controller.set_forge(setup);
    }
    let receivers = slipway_controller::notify::receivers_from_config(&config.notify)
        .map_err(anyhow::Error::msg)?;
    if !receivers.is_empty() {
        // Their names only: a receiver's URL is a secret.
        eprintln!(
            "slipway serve: notifications to {}",
            receivers
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        controller.set_receivers(receivers);
    }
    let isolation = controller.engine().isolation();
    let coverage = slipway_providers::sandbox::Coverage::current();
    eprintln!(
        "slipway serve: environments' code runs isolated by {}{} ({coverage})",
        match isolation {
            slipway_providers::sandbox::Isolation::Uid => "uid (one per environment)",
            slipway_providers::sandbox::Isolation::Landlock => "landlock",
            slipway_providers::sandbox::Isolation::None => "nothing",
        },
        if isolation != slipway_providers::sandbox::Isolation::None
            && coverage.abi > 0
            && !coverage.missing().is_empty()
        {
            format!(
                "; not enforced by this kernel: {}",
                coverage.missing().join(", ")
            )
        } else {
            String::new()
        }
    );
    for (name, server) in &config.postgres {
        // Isolation keeps credentials from environments' code; a server that asks for none
        // (trust authentication) lets that code in as its superuser all the same.
        if let Ok(url) = server.resolve_url(name)
            && !url_has_password(&url)
        {
            eprintln!(
                "slipway serve: warning: [postgres.{name}] is reached without a password (trust \
                 or peer authentication): environments' code on this machine can connect to it \
                 the same way, as its superuser; require a password for local TCP connections \
                 in pg_hba.conf (scram-sha-256) and pass the URL with url_env or url_file"
            );
        }
    }
    let store = controller.engine().store();
    if store.tokens()?.is_empty() {
        let token = slipway_state::new_token();
        // The file first: a token recorded but written nowhere would be lost.
        let path = write_admin_token(controller.engine().home(), &token)?;
        store.create_token(
            &slipway_state::hash_token(&token),
            "admin",
            "first-admin",
            slipway_state::now_ms(),
        )?;
        // Never the token itself: logs are collected, shipped and shown to many.
        eprintln!(
            "No API token existed, so an admin token was made; it is in {} (readable only by \
             this user): read it, keep it somewhere safe, and delete the file",
            path.display()
        );
    }
    if controller.engine().isolation() == slipway_providers::sandbox::Isolation::Uid
        && let Some(warning) = pid_budget_warning(
            config.local.max_processes,
            config.local.max_environments,
            std::fs::read_to_string("/proc/sys/kernel/pid_max")
                .ok()
                .and_then(|s| s.trim().parse().ok()),
        )
    {
        eprintln!("slipway serve: warning: {warning}");
    }
    match controller.engine().resource_limits() {
        Ok(limits) => {
            eprintln!("slipway serve: environments' code runs in control groups ({limits})")
        }
        Err(why) => eprintln!(
            "slipway serve: warning: environments' memory and CPU are not bounded: {why} (see \
             docs/security.md, \"Limits\")"
        ),
    }
    match controller.engine().max_disk() {
        Some(max) => eprintln!(
            "slipway serve: each environment's data and temporary directories may hold {} \
             ([local] max_disk)",
            slipway_providers::disk::show(max)
        ),
        None if controller.engine().isolation() != slipway_providers::sandbox::Isolation::None => {
            eprintln!(
                "slipway serve: warning: environments' disk is not bounded ([local] max_disk = \
                 \"none\"): a branch's code may fill the disk the home is on"
            )
        }
        None => {}
    }
    // Written whole now, from the store: what a former run or a reboot left goes.
    match controller.engine().install_fence()? {
        Ok(fence) => {
            eprintln!("slipway serve: environments' connections are filtered ({fence})");
            if let Some(warning) = ephemeral_overlap(
                &config.local.ports.0,
                &std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
                    .unwrap_or_default(),
            ) {
                eprintln!("slipway serve: warning: {warning}");
            }
        }
        Err(why) if isolation != slipway_providers::sandbox::Isolation::None => eprintln!(
            "slipway serve: warning: environments' code can connect to other environments' \
             ports on this machine and to the clouds' metadata services: {why} (see \
             docs/isolation.md, \"Network\")"
        ),
        Err(_) => {}
    }
    let server_options = config.server.options();
    raise_open_file_limit(server_options.max_connections);
    let rt = runtime()?;
    rt.block_on(async move {
        let addr = match &listening {
            Listening::Alone(listener) => listener.local_addr()?.to_string(),
            Listening::Router { port, host, .. } => format!("{host}:{port}"),
        };
        eprintln!("slipway serve: API http://{addr}/api/v1  health http://{addr}/healthz  metrics http://{addr}/metrics  UI http://{addr}/");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let signals = async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM can be handled");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let _ = stop_tx.send(true);
        };
        tokio::spawn(signals);
        let mut rx1 = stop_rx.clone();
        let mut rx2 = stop_rx;
        let stopped = async move {
            let _ = rx2.wait_for(|s| *s).await;
        };
        let server = async {
            match listening {
                Listening::Alone(listener) => {
                    let listener = tokio::net::TcpListener::from_std(listener).context("cannot listen")?;
                    slipway_server::serve_with(listener, controller.clone(), server_options, stopped).await
                }
                Listening::Router { port, socket, .. } => {
                    controller.set_preview_port(port);
                    let socket = tokio::net::UnixListener::from_std(socket).context("cannot listen")?;
                    slipway_server::front::serve_behind_router(socket, controller.clone(), server_options, stopped).await
                }
            }
            .context("the API server failed")
        };
        let run = controller.run(async move {
            let _ = rx1.wait_for(|s| *s).await;
        });
        let (served, ()) = tokio::join!(server, run);
        served?;
        eprintln!("slipway serve: stopped; environments keep running");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// What `serve` must never post to a forge, with the word that stands in for it: the
/// repository's URL or path (a git error quotes it), the home (every file Slipway keeps, its
/// clones included) and the user's home directory. Paths are given as typed, absolute and
/// with symlinks resolved, since an error may quote any of them.
fn private_texts(
    g: &Global,
    repo: &RepoArgs,
    config: &crate::config::Config,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let path_forms = |path: &std::path::Path, stand_in: &str, out: &mut Vec<(String, String)>| {
        // Absolute forms only: a relative one (`.`, `repo`) is a word that text may hold
        // for other reasons.
        let mut forms = Vec::new();
        if let Ok(abs) = crate::commands::absolute(path) {
            forms.push(abs.components().collect::<std::path::PathBuf>());
        }
        if let Ok(canonical) = std::fs::canonicalize(path) {
            forms.push(canonical);
        }
        for form in forms {
            let text = form.to_string_lossy().into_owned();
            if text != "/" && !out.iter().any(|(t, _)| *t == text) {
                out.push((text, stand_in.to_owned()));
            }
        }
    };
    let spec = repo
        .repo
        .clone()
        .or(config.repo.url.clone())
        .unwrap_or_else(|| ".".into());
    if spec.contains("://") {
        out.push((spec.clone(), "[repository]".into()));
        if let Some(path) = spec.strip_prefix("file://") {
            path_forms(std::path::Path::new(path), "[repository]", &mut out);
        }
    } else if spec.contains(':') && !std::path::Path::new(&spec).exists() {
        // scp-like `git@host:acme/shop.git`.
        out.push((spec.clone(), "[repository]".into()));
    } else {
        path_forms(std::path::Path::new(&spec), "[repository]", &mut out);
    }
    path_forms(&g.home, "[home]", &mut out);
    if let Some(user_home) = std::env::var_os("HOME").filter(|h| h.len() > 1) {
        path_forms(std::path::Path::new(&user_home), "~", &mut out);
    }
    out
}

/// Writes the first admin token to `<home>/admin-token`, mode 0600 from its creation (a
/// temporary file renamed in, so that no reader ever sees it half-written or more open).
fn write_admin_token(home: &std::path::Path, token: &str) -> Result<std::path::PathBuf> {
    let path = home.join("admin-token");
    slipway_providers::atomic_write_private(&path, format!("{token}\n").as_bytes())
        .with_context(|| format!("cannot write the admin token to {}", path.display()))?;
    Ok(path)
}

/// What to say when the environments' process limits (`[local] max_processes` each) could
/// together take half the machine's pids (`pid_max`): `max_environments` of them, or 8 when
/// generated and ad-hoc environments are not capped (static environments, each with its own
/// uid and limit, and families' own caps are not counted). `None` when they could not, or
/// nothing is known.
fn pid_budget_warning(
    max_processes: u32,
    max_environments: Option<u32>,
    pid_max: Option<u64>,
) -> Option<String> {
    let pid_max = pid_max?;
    if max_processes == 0 {
        return Some(format!(
            "[local] max_processes = 0: an environment's code may take every pid of this \
             machine (kernel.pid_max = {pid_max}), a fork bomb leaving the controller unable \
             to start anything"
        ));
    }
    let environments = u64::from(max_environments.unwrap_or(8));
    let taken = environments.saturating_mul(u64::from(max_processes));
    (taken.saturating_mul(2) >= pid_max).then(|| {
        format!(
            "{} environments of [local] max_processes = {max_processes} tasks each could take \
             {taken} of this machine's {pid_max} pids (kernel.pid_max){}: lower max_processes, \
             cap [local] max_environments, or raise kernel.pid_max",
            environments,
            if max_environments.is_none() {
                " (generated and ad-hoc environments are not capped: [local] max_environments)"
            } else {
                ""
            }
        )
    })
}

/// What to say when `[local] ports` (`ports`) overlaps the kernel's ephemeral ports
/// (`ephemeral`: the text of `/proc/sys/net/ipv4/ip_local_port_range`, `"LOW\tHIGH"`): a
/// connection environments' code makes from one of them is dropped by the packet filter
/// (it sends from a port of the range that is not its environment's). `None` when they do
/// not overlap, or the text says nothing.
fn ephemeral_overlap(ports: &std::ops::RangeInclusive<u16>, ephemeral: &str) -> Option<String> {
    let mut bounds = ephemeral.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(low)), Some(Ok(high))) = (bounds.next(), bounds.next()) else {
        return None;
    };
    (low <= *ports.end() && *ports.start() <= high).then(|| {
        format!(
            "[local] ports {}-{} overlaps the ports the kernel gives outgoing connections \
             ({low}-{high}, net.ipv4.ip_local_port_range): a connection environments' code \
             makes from one of them is dropped by the packet filter (it is another \
             environment's port, or nobody's); move [local] ports below {low}",
            ports.start(),
            ports.end()
        )
    })
}

/// Raises the open-file soft limit to the hard limit: every connection is a file, and the
/// usual soft limit (1024) is below what `[server] max_connections` allows plus the store,
/// logs and repositories. Says so when even the hard limit leaves too little room.
fn raise_open_file_limit(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let limit = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                eprintln!(
                    "slipway serve: cannot raise the open-file limit from {soft} to {hard}: {e}"
                );
                soft
            }
        }
    } else {
        soft
    };
    // Room for the store, logs, repositories and the preview router's upstream connections.
    let needed = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(256);
    if limit < needed {
        eprintln!(
            "slipway serve: the open-file limit ({limit}) is low for [server] max_connections = \
             {max_connections}; raise it (`ulimit -n`, LimitNOFILE=) or lower max_connections"
        );
    }
}

/// The status of `name`, from a command's async block: observing its resources blocks (a
/// `postgres.database`'s look opens a connection with a client that runs a runtime of its
/// own, which tokio refuses to start on a thread driving this one's tasks).
fn blocking_status(
    c: &slipway_controller::Controller,
    name: &slipway_core::EnvName,
) -> Result<Vec<slipway_engine::EnvironmentStatus>> {
    Ok(tokio::task::block_in_place(|| {
        c.engine().status(Some(name))
    })?)
}

fn env(g: &Global, cmd: EnvCommand) -> Result<ExitCode> {
    if let Some(server) = g.server.as_deref() {
        return env_remote(g, server, cmd);
    }
    if let EnvCommand::List { output } = cmd {
        let engine = open_engine(g)?;
        let envs = engine.status(None)?;
        match output {
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "environments": envs }))?
            ),
            Output::Text => render::status_text(&envs),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let config = engine_config(g)?;
    let rt = runtime()?;
    rt.block_on(async {
        match cmd {
            EnvCommand::List { .. } => unreachable!("handled above"),
            EnvCommand::Create { name, like, ttl, repo, output } => {
                let name = env_name(&name)?;
                let reference = required_ref(&repo)?;
                // The names and families an ad-hoc environment is checked against are the
                // default branch's (HEAD), never those of the ref it runs.
                let c = controller(g, &RepoArgs { reference: None, ..repo.clone() }, Role::OneShot)?;
                let _lease = crate::lease::take(c.engine(), &name, &config, Wait::No)?;
                let ttl = ttl.map(|t| duration(&t, "--ttl")).transpose()?;
                let record = c.create_environment(CreateEnvironment { name: name.clone(), reference, like, ttl, owner: Some(who()) }).await?;
                if record.activity == slipway_core::vocab::Activity::Queued {
                    eprintln!("created `{name}`; queued: {}", record.message.as_deref().unwrap_or("it waits for a slot"));
                } else {
                    eprintln!("created `{name}`; deploying...");
                }
                c.reconcile_now(&name, waiting_for).await?;
                let status = blocking_status(&c, &name)?;
                match output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&json!({ "environments": status }))?),
                    Output::Text => render::status_text(&status),
                }
            }
            EnvCommand::Destroy { name, yes, confirm_destroy, repo } => {
                let name = env_name(&name)?;
                confirm(&format!("destroy `{name}`"), yes)?;
                let confirmed = confirm_destroy.as_deref() == Some(name.as_str());
                let options = slipway_controller::DestroyOptions::new(&who(), confirmed.into());
                let c = controller(g, &repo, Role::OneShot)?;
                let _lease = crate::lease::take(c.engine(), &name, &config, Wait::No)?;
                c.destroy_environment(&name, options).await?;
                println!("destroyed `{name}`");
            }
            EnvCommand::Extend { name, by, repo } => {
                let name = env_name(&name)?;
                let c = controller(g, &repo, Role::OneShot)?;
                let _lease = crate::lease::take(c.engine(), &name, &config, Wait::No)?;
                let record = c.extend(&name, duration(&by, "--by")?).await?;
                println!("`{name}` now expires at {}", expiry(record.expires_at));
            }
            EnvCommand::Link { name, valid, repo, output } => {
                let name = env_name(&name)?;
                let valid = duration(&valid, "--for")?;
                let c = controller(g, &repo, Role::OneShot)?;
                // The preview URL's address is the server's: its `[server] listen` port.
                let port = config
                    .server
                    .listen
                    .rsplit_once(':')
                    .and_then(|(_, port)| port.parse::<u16>().ok())
                    .filter(|port| *port != 0)
                    .context("[server] listen names no port, so a preview URL has no address; pass --server URL to ask the running server")?;
                c.set_preview_port(port);
                let link = c.preview_link(&name, valid)?;
                print_link(&link.url, link.expires_at, output)?;
            }
            EnvCommand::Pin { name, commit, repo } => {
                let name = env_name(&name)?;
                let c = controller(g, &repo, Role::OneShot)?;
                let _lease = crate::lease::take(c.engine(), &name, &config, Wait::No)?;
                let record = c.pin(&name, commit).await?;
                c.reconcile_now(&name, waiting_for).await?;
                println!("`{name}` is pinned to {}", record.desired_commit.as_deref().map(slipway_engine::apply::short).unwrap_or("?"));
            }
            EnvCommand::Unpin { name, repo } => {
                let name = env_name(&name)?;
                let c = controller(g, &repo, Role::OneShot)?;
                let _lease = crate::lease::take(c.engine(), &name, &config, Wait::No)?;
                let record = c.unpin(&name).await?;
                c.reconcile_now(&name, waiting_for).await?;
                println!("`{name}` follows `{}` again", record.tracked_ref.as_deref().unwrap_or("?"));
            }
            EnvCommand::Sleep { name, repo, output } => {
                let name = env_name(&name)?;
                let c = controller(g, &repo, Role::OneShot)?;
                let _lease = crate::lease::take(c.engine(), &name, &config, Wait::No)?;
                c.sleep(&name).await?;
                let status = blocking_status(&c, &name)?;
                match output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&json!({ "environments": status }))?),
                    Output::Text => println!("`{name}` is asleep: its processes are stopped until a request through its preview URL or `slipway env wake {name}`"),
                }
            }
            EnvCommand::Wake { name, repo, output } => {
                let name = env_name(&name)?;
                let c = controller(g, &repo, Role::OneShot)?;
                let _lease = crate::lease::take(c.engine(), &name, &config, Wait::No)?;
                if c.engine().store().environment(&name)?.is_none() {
                    bail!("environment `{name}` does not exist; `slipway env list` shows them");
                }
                c.wake_now(&name, waiting_for).await?;
                let status = blocking_status(&c, &name)?;
                match output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&json!({ "environments": status }))?),
                    Output::Text => render::status_text(&status),
                }
            }
            EnvCommand::Rollback { name, to, repo } => {
                let name = env_name(&name)?;
                let c = controller(g, &repo, Role::OneShot)?;
                let _lease = crate::lease::take(c.engine(), &name, &config, Wait::No)?;
                let record = c.rollback(&name, to).await?;
                c.reconcile_now(&name, waiting_for).await?;
                println!("`{name}` is back at {} (deployment #{to}) and pinned there; `slipway env unpin {name}` follows its ref again", record.desired_commit.as_deref().map(slipway_engine::apply::short).unwrap_or("?"));
            }
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A signed link, as `env link` prints it.
fn print_link(url: &str, expires_at: i64, output: Output) -> Result<()> {
    let until = expiry(Some(expires_at));
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({"url": url, "expires_at": until}))?
        ),
        Output::Text => println!("{url}\n(holds until {until})"),
    }
    Ok(())
}

fn required_ref(repo: &RepoArgs) -> Result<String> {
    repo.reference
        .clone()
        .context("say which commit the environment runs with --ref (a branch, tag or commit)")
}

fn expiry(at: Option<i64>) -> String {
    match at {
        Some(ms) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64),
        )
        .to_string(),
        None => "never".into(),
    }
}

fn env_remote(g: &Global, server: &str, cmd: EnvCommand) -> Result<ExitCode> {
    let token = g.token.as_deref();
    let print = |v: &serde_json::Value| -> Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    };
    match cmd {
        EnvCommand::List { output } => return remote::status(server, token, None, output),
        EnvCommand::Create {
            name,
            like,
            ttl,
            repo,
            ..
        } => {
            let name = env_name(&name)?;
            let reference = required_ref(&repo)?;
            print(&remote::call(
                server,
                token,
                "POST",
                "/environments",
                Some(&json!({"name": name, "ref": reference, "like": like, "ttl": ttl})),
            )?)?;
        }
        EnvCommand::Destroy {
            name,
            yes,
            confirm_destroy,
            ..
        } => {
            let name = env_name(&name)?;
            confirm(&format!("destroy `{name}`"), yes)?;
            let query = match &confirm_destroy {
                Some(c) if slipway_core::stack::is_dns_label(c) => format!("?confirm={c}"),
                _ => String::new(),
            };
            remote::call(
                server,
                token,
                "DELETE",
                &format!("/environments/{name}{query}"),
                None,
            )?;
            println!("destroyed `{name}`");
        }
        EnvCommand::Extend { name, by, .. } => print(&remote::call(
            server,
            token,
            "POST",
            &format!("/environments/{}/extend", env_name(&name)?),
            Some(&json!({"by": by})),
        )?)?,
        EnvCommand::Link {
            name,
            valid,
            output,
            ..
        } => {
            let answer = remote::call(
                server,
                token,
                "POST",
                &format!("/environments/{}/link", env_name(&name)?),
                Some(&json!({"for": valid})),
            )?;
            match output {
                Output::Json => print(&answer)?,
                Output::Text => println!(
                    "{}\n(holds until {})",
                    answer["url"].as_str().unwrap_or_default(),
                    answer["expires_at"].as_str().unwrap_or_default()
                ),
            }
        }
        EnvCommand::Pin { name, commit, .. } => print(&remote::call(
            server,
            token,
            "POST",
            &format!("/environments/{}/pin", env_name(&name)?),
            Some(&json!({"commit": commit})),
        )?)?,
        EnvCommand::Unpin { name, .. } => print(&remote::call(
            server,
            token,
            "POST",
            &format!("/environments/{}/unpin", env_name(&name)?),
            None,
        )?)?,
        EnvCommand::Sleep { name, .. } => print(&remote::call(
            server,
            token,
            "POST",
            &format!("/environments/{}/sleep", env_name(&name)?),
            None,
        )?)?,
        EnvCommand::Wake { name, .. } => print(&remote::call(
            server,
            token,
            "POST",
            &format!("/environments/{}/wake", env_name(&name)?),
            None,
        )?)?,
        EnvCommand::Rollback { name, to, .. } => print(&remote::call(
            server,
            token,
            "POST",
            &format!("/environments/{}/rollback", env_name(&name)?),
            Some(&json!({"deployment": to})),
        )?)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn token_create(g: &Global, role: &str, name: &str) -> Result<ExitCode> {
    if !["viewer", "developer", "deployer", "admin"].contains(&role) {
        bail!("unknown role `{role}`; the roles are viewer, developer, deployer and admin");
    }
    let engine = open_engine(g)?;
    let token = slipway_state::new_token();
    engine.store().create_token(
        &slipway_state::hash_token(&token),
        role,
        name,
        slipway_state::now_ms(),
    )?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// Shows how two environments differ, as rendered at the commits they run.
fn compare(
    g: &Global,
    repo: &RepoArgs,
    a: &EnvName,
    b: &EnvName,
    output: Output,
) -> Result<ExitCode> {
    let engine = open_engine(g)?;
    let repo = open_repo(g, repo)?;
    let render = |name: &EnvName| {
        engine
            .render_running(name, &repo.repository, &repo.folder)
            .map_err(|e| match e {
                slipway_engine::EngineError::Environment(why) => {
                    anyhow::anyhow!("{why}; `slipway env list` shows them")
                }
                other => other.into(),
            })
    };
    let comparison = slipway_core::compare::compare(&render(a)?, &render(b)?);
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&comparison.to_json())?),
        Output::Text => render::comparison_text(&comparison),
    }
    Ok(ExitCode::SUCCESS)
}

/// When Slipway listens on IPv4's loopback, holds the same port of IPv6's (`[::1]`) for the
/// life of the process, bound and never listening. Browsers reach `localhost` and
/// `*.localhost` at `::1` first: a program of an environment that took that port there (on a
/// kernel whose sandbox does not confine binds) would be the UI's origin and every preview's,
/// with the session's token and the preview links sent to it. Bound without listening, it
/// refuses connections, and browsers go on to 127.0.0.1. Taken already by another program:
/// said on stderr.
pub(crate) fn hold_ipv6_loopback(listening: &std::net::SocketAddr) {
    use nix::libc;
    if listening.ip() != std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST) {
        return;
    }
    let port = listening.port();
    // SAFETY: a new socket of ours; on failure (no IPv6 here: no `::1` to take either) there
    // is nothing to hold.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return;
    }
    let mut at: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    at.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    at.sin6_port = port.to_be();
    at.sin6_addr.s6_addr = std::net::Ipv6Addr::LOCALHOST.octets();
    // SAFETY: `at` is a sockaddr_in6 of its own size, for the socket made above.
    let bound = unsafe {
        libc::bind(
            fd,
            std::ptr::from_ref(&at).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if bound == 0 {
        // Held until the process ends.
        return;
    }
    let error = std::io::Error::last_os_error();
    // SAFETY: closing the socket made above, held by nothing else.
    unsafe { libc::close(fd) };
    if error.raw_os_error() == Some(libc::EADDRINUSE) {
        eprintln!(
            "warning: [::1]:{port} is taken by another program: browsers that reach \
             `localhost` at ::1 reach it instead of Slipway; stop it, or listen on another port"
        );
    }
}

/// Whether a `postgres://user:password@host/db` URL carries a password.
fn url_has_password(url: &str) -> bool {
    let authority = url.split_once("://").map_or("", |(_, rest)| rest);
    let userinfo = authority.split(['/', '?']).next().unwrap_or("");
    userinfo
        .rsplit_once('@')
        .is_some_and(|(user, _)| user.contains(':'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_overlapping_the_ephemeral_range_are_warned_of() {
        use super::ephemeral_overlap;
        assert_eq!(
            ephemeral_overlap(&(20_000..=29_999), "32768\t60999\n"),
            None
        );
        let warning = ephemeral_overlap(&(30_000..=40_000), "32768\t60999\n")
            .expect("an overlap is warned of");
        assert!(
            warning.contains("30000-40000") && warning.contains("32768-60999"),
            "{warning}"
        );
        assert!(ephemeral_overlap(&(60_999..=61_000), "32768 60999").is_some());
        for unreadable in ["", "32768", "a b", "70000 80000"] {
            assert_eq!(
                ephemeral_overlap(&(30_000..=40_000), unreadable),
                None,
                "{unreadable}"
            );
        }
    }

    use super::pid_budget_warning;

    #[test]
    fn the_pid_budget_warns_when_the_environments_could_take_half_the_machines_pids() {
        // This machine's pid_max: 8 previews of 4096 take every pid.
        let uncapped = pid_budget_warning(4096, None, Some(32_768)).expect("a warning");
        assert!(
            uncapped.contains("32768") && uncapped.contains("not capped"),
            "{uncapped}"
        );
        assert!(
            pid_budget_warning(4096, Some(3), Some(32_768)).is_none(),
            "3 × 4096 is under half"
        );
        assert!(pid_budget_warning(4096, Some(4), Some(32_768)).is_some());
        assert!(
            pid_budget_warning(4096, None, Some(4_194_304)).is_none(),
            "most 64-bit systems"
        );
        assert!(
            pid_budget_warning(0, Some(1), Some(4_194_304)).is_some(),
            "no limit"
        );
        assert!(
            pid_budget_warning(4096, None, None).is_none(),
            "nothing known"
        );
    }
}
