//! The `slipway` binary: the CLI interface and glue code. Everything it does is in the library
//! crates; this crate parses arguments, wires the crates together, and prints. Results go to
//! stdout, progress and errors to stderr; `--output json` shapes are documented in
//! `docs/cli.md` and are a stable contract.
//!
//! Exit codes: 0 success; 1 an error (invalid stack, failed apply, bad arguments: clap's own
//! usage errors exit 2, as every clap program does); 2 from `plan --detailed-exitcode` when
//! there are changes.

mod alloc;
mod commands;
mod config;
mod control;
mod lease;
mod remote;
mod render;
mod router;
mod secret;
mod state;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Slipway keeps every environment of a stack converged to its commit in Git.
#[derive(Parser, Debug)]
#[command(name = "slipway", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Where the engine keeps its state.
    #[arg(
        long,
        global = true,
        env = "SLIPWAY_HOME",
        default_value = ".slipway",
        value_name = "DIR"
    )]
    home: PathBuf,
    /// The engine configuration file (TOML; every key has a default).
    #[arg(long, global = true, env = "SLIPWAY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// A running controller (`slipway serve`) to act through, e.g. http://127.0.0.1:7300;
    /// `env` commands and `status` then use its API instead of the local home.
    #[arg(long, global = true, env = "SLIPWAY_SERVER", value_name = "URL")]
    server: Option<String>,
    /// The API token for --server. Prefer SLIPWAY_TOKEN: a command's arguments are readable
    /// by every process on the machine.
    #[arg(
        long,
        global = true,
        env = "SLIPWAY_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

/// Where the stack is read from.
#[derive(Args, Debug, Clone)]
pub struct RepoArgs {
    /// A local path or a git URL (file://, https://, ssh://); default: the repository around the
    /// current directory.
    #[arg(long, value_name = "R")]
    repo: Option<String>,
    /// A branch, tag or commit; default: HEAD.
    #[arg(long = "ref", value_name = "REF")]
    reference: Option<String>,
    /// The folder inside the repository that holds slipway.yaml.
    #[arg(long, value_name = "DIR", default_value = ".")]
    path: String,
}

/// Text for people, or JSON for scripts.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// Human-readable text.
    #[default]
    Text,
    /// Stable JSON (see docs/cli.md).
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Scaffold a small working stack (an HTTP service, a job and a config file).
    Init {
        /// Where to write it.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Check slipway.yaml at a commit and report every problem as file:line:col.
    Validate {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Print an environment's desired state as canonical JSON, with its hash.
    Render {
        #[arg(long, value_name = "E")]
        env: String,
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Show what apply would change.
    Plan {
        #[arg(long, value_name = "E")]
        env: String,
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
        /// Exit 0 when there are no changes, 2 when there are, 1 on error.
        #[arg(long)]
        detailed_exitcode: bool,
    },
    /// Make an environment match a commit.
    Apply {
        #[arg(long, value_name = "E")]
        env: String,
        #[command(flatten)]
        repo: RepoArgs,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        /// How many resources change at once (default: [local] parallelism, 8).
        #[arg(long)]
        parallelism: Option<usize>,
        /// In a protected environment, allow this plan to destroy resources (deletes, and
        /// replacements that drop a database): repeat the environment's name to confirm.
        #[arg(long, value_name = "E")]
        confirm_destroy: Option<String>,
        /// Apply even though a deploy window (`windows:`) denies changes now; recorded with
        /// your name in the audit and event logs.
        #[arg(long)]
        override_window: bool,
        /// On a state shared with `slipway serve` replicas (PostgreSQL): when a replica works
        /// on the environment, wait until it lets go instead of refusing.
        #[arg(long)]
        wait: bool,
        /// Approve the policies' soft denials of this commit (you must be in [policies]
        /// owners; recorded in the audit log). Hard denials are never lifted.
        #[arg(long)]
        approve_policies: bool,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Delete every resource of an environment, and the environment.
    Destroy {
        #[arg(long, value_name = "E")]
        env: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        /// A protected environment is destroyed only when its name is repeated here.
        #[arg(long, value_name = "E")]
        confirm_destroy: Option<String>,
        /// On a state shared with `slipway serve` replicas (PostgreSQL): when a replica works
        /// on the environment, wait until it lets go instead of refusing.
        #[arg(long)]
        wait: bool,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show environments and their resources, observed now.
    Status {
        #[arg(long, value_name = "E")]
        env: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show an environment's deployments, newest first.
    History {
        #[arg(long, value_name = "E")]
        env: String,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Print the logs of an environment's processes and jobs.
    Logs {
        #[arg(long, value_name = "E")]
        env: String,
        /// One resource; default: all of them.
        resource: Option<String>,
        /// Keep printing as the logs grow.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only the last N lines of each log.
        #[arg(long, default_value_t = 200)]
        tail: usize,
    },
    /// Print the JSON Schema of slipway.yaml (for editors), or with --plan that of the plan
    /// document (`plan --output json`, the input of policies).
    Schema {
        /// The plan document's schema instead.
        #[arg(long)]
        plan: bool,
    },
    /// Policies on plans: `policy test [DIR]` runs the `test_*` rules of the Rego files in DIR
    /// (default: policies) as `opa test` does.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run the controller: keep every environment converged to Git, serve the API.
    Serve {
        #[command(flatten)]
        repo: RepoArgs,
        /// Where the API, webhooks and preview router listen (default: [server] listen,
        /// 127.0.0.1:7300).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Serve through a router process of its own that outlives `serve` (started when
        /// none runs for this home), so that preview URLs keep answering while `serve`
        /// restarts (also [server] router = true); see docs/previews.md.
        #[arg(long)]
        router: bool,
    },
    /// Self-service environments: list, create, destroy, extend, link, pin, unpin, rollback,
    /// sleep, wake.
    #[command(subcommand)]
    Env(EnvCommand),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Secrets in the repository, encrypted with age: set, list, and the engine's key.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// The state store: move it into PostgreSQL, back it up.
    #[command(subcommand)]
    State(StateCommand),
    /// Show how two environments differ: commit, variables and rendered resources.
    Compare {
        /// The first environment.
        a: String,
        /// The second environment.
        b: String,
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// The supervisor of an environment's processes (given its run directory), or of one
    /// process (given its spec file: how homes from before started them).
    #[command(hide = true, name = "__supervise")]
    Supervise { spec: PathBuf },
    /// A replica's lease watchdog (see slipway_providers::watchdog), reading its standard input.
    #[command(hide = true, name = "__watchdog")]
    Watchdog,
    /// The router `serve --router` starts: owns the listener, serves preview URLs, passes
    /// the rest to `serve` (see crate::router).
    #[command(hide = true, name = "__router")]
    Router {
        #[arg(long, value_name = "ADDR")]
        listen: String,
    },
    /// Evaluates policies for the engine, bounded (see slipway_policy::child): a request on
    /// standard input, results on standard output.
    #[command(hide = true, name = "__policy")]
    PolicyEval,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Run the `test_*` rules of the Rego files in DIR (and its folders) as `opa test` does;
    /// each `NAME.json` there is data at `data.fixtures.NAME` (a plan from `plan --output
    /// json`). Exit 0 when every test passes, 1 otherwise.
    Test {
        /// The folder of the policies and their tests.
        #[arg(default_value = "policies")]
        dir: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
pub enum EnvCommand {
    /// Every environment with its state.
    List {
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Make an environment from any ref (`--ref`, required).
    Create {
        /// Its name, a DNS label.
        name: String,
        /// The environment whose variables it takes (a family such as `previews`, or `prod`).
        #[arg(long, value_name = "ENV")]
        like: Option<String>,
        /// How long it lives, e.g. 8h (default: the family's ttl).
        #[arg(long, value_name = "DUR")]
        ttl: Option<String>,
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Destroy an environment.
    Destroy {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        /// A protected environment is destroyed only when its name is repeated here.
        #[arg(long, value_name = "E")]
        confirm_destroy: Option<String>,
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Push an environment's expiry later.
    Extend {
        name: String,
        /// How much later, e.g. 4h.
        #[arg(long, value_name = "DUR")]
        by: String,
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// A signed link to an environment's preview URL, opening it without a login until it
    /// expires (for `access: private` previews).
    Link {
        name: String,
        /// How long it holds, e.g. 8h (at most 30d).
        #[arg(long = "for", value_name = "DUR", default_value = "1h")]
        valid: String,
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Stop following the ref: stay on a commit (default: the one running).
    Pin {
        name: String,
        /// The ref or commit to pin to.
        #[arg(long, value_name = "REF")]
        commit: Option<String>,
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Follow the ref again.
    Unpin {
        name: String,
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Stop an environment's processes until a request through its preview URL (or `env
    /// wake`) starts them again; its data, files, databases and ports stay.
    Sleep {
        name: String,
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Start a sleeping environment's processes again (at the newest commit it follows).
    Wake {
        name: String,
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Go back to the commit of an earlier deployment (and pin it there).
    Rollback {
        name: String,
        /// The deployment number, from `slipway history`.
        #[arg(long, value_name = "ID")]
        to: i64,
        #[command(flatten)]
        repo: RepoArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Make the engine's age identity (in the home, or [secrets] identity_file) and print its
    /// recipient, to list in slipway.yaml's `secrets.recipients`.
    Keygen,
    /// Print the recipient of the engine's identity.
    Recipient,
    /// Encrypt standard input as secret NAME into the stack's secrets file (commit it after).
    Set {
        /// The secret's name, as in `${secrets.NAME}`.
        name: String,
        /// Only for this environment or family (an override).
        #[arg(long, value_name = "E")]
        env: Option<String>,
        /// The folder inside the repository that holds slipway.yaml.
        #[arg(long, value_name = "DIR", default_value = ".")]
        path: String,
    },
    /// Remove secret NAME (or only its override for --env).
    Unset {
        /// The secret's name.
        name: String,
        /// Only the override for this environment or family.
        #[arg(long, value_name = "E")]
        env: Option<String>,
        /// The folder inside the repository that holds slipway.yaml.
        #[arg(long, value_name = "DIR", default_value = ".")]
        path: String,
    },
    /// List the secrets' names and which environments override them (never the values).
    List {
        /// The folder inside the repository that holds slipway.yaml.
        #[arg(long, value_name = "DIR", default_value = ".")]
        path: String,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
pub enum StateCommand {
    /// Copy the home's SQLite state (every environment, deployment, event, token, audit entry)
    /// into an empty PostgreSQL database, which replicas then share. The SQLite file is left
    /// as it was.
    Migrate {
        /// The PostgreSQL URL; default: the engine configuration's `[state]` (prefer it: a
        /// password given here shows in the process list).
        #[arg(long, value_name = "URL")]
        to: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Write a consistent copy of the home's SQLite state to FILE while Slipway runs (restore:
    /// stop Slipway, put FILE at <home>/state.db). A PostgreSQL state is backed up with
    /// pg_dump.
    Backup {
        /// Where the copy goes; must not exist.
        file: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make an API token on the home; prints only the token, on stdout.
    Create {
        /// viewer, developer, deployer or admin.
        #[arg(long)]
        role: String,
        /// Who it is for (shown in the audit log).
        #[arg(long, default_value = "cli")]
        name: String,
    },
}

/// Logs (the controller's reconciles, warnings of the server) go to stderr, filtered by
/// `SLIPWAY_LOG`, else `RUST_LOG` (`tracing` directives, e.g. `slipway_controller=debug`),
/// else at `default`: `info` for the long-running `serve`, `warn` for a one-shot command,
/// whose own output already says what it did.
fn install_logging(default: &str) {
    use std::io::IsTerminal;
    let directives = std::env::var("SLIPWAY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.into());
    let filter = tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("slipway: ignoring the log filter {directives:?} ({e}); logging at info");
        tracing_subscriber::EnvFilter::new("info")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Keeps a long-lived `serve` process's heap close to what it holds (glibc's allocator, which
/// long-lived processes keep: see [`alloc`]; a no-op elsewhere). With its defaults, every thread that allocates may get an arena of its
/// own (up to 8 per core), and freed memory stays in them: listing ten thousand environments
/// (each range read and observed on a thread, each environment's JSON made there and freed
/// on another) left the process at 160-235 MiB resident after a few calls, against 40 MiB
/// before them. Two arenas, and large blocks (a listing's rows and JSON) mapped on their own
/// and given back when freed, keep it near 50 MiB; no measurable cost in CPU time.
fn bound_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::libc::{M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, mallopt};
        // SAFETY: mallopt only sets the allocator's parameters; it is called before any
        // thread is started.
        unsafe {
            mallopt(M_ARENA_MAX, 2);
            mallopt(M_MMAP_THRESHOLD, 128 * 1024);
            mallopt(M_TRIM_THRESHOLD, 128 * 1024);
        }
    }
}

/// mimalloc for one-shot commands, glibc's allocator for long-lived processes (see
/// [`alloc`]).
#[global_allocator]
static GLOBAL: alloc::Chosen = alloc::Chosen;

fn main() -> ExitCode {
    // Everything the engine (and a supervisor) creates is private unless it says otherwise:
    // the home holds keys, the state store and secrets, and environments' code runs on the
    // same machine.
    // SAFETY: umask cannot fail and touches no memory.
    unsafe {
        nix::libc::umask(0o077);
    }
    let cli = Cli::parse();
    if std::env::args_os().any(|a| a == "--token" || a.to_string_lossy().starts_with("--token=")) {
        // Too late to hide it, but not to say so.
        eprintln!(
            "warning: --token puts the token in this command's arguments, which every process \
             on this machine can read (/proc/PID/cmdline), environments' code included; set \
             SLIPWAY_TOKEN instead"
        );
    }
    if let Command::Supervise { spec } = &cli.command {
        // The process supervisor, detached from any CLI invocation (see
        // slipway_providers::process).
        let code = slipway_providers::process::supervise(spec);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    if let Command::PolicyEval = &cli.command {
        let code = slipway_policy::child::serve(&mut std::io::stdin(), &mut std::io::stdout());
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    if let Command::Watchdog = &cli.command {
        let code = slipway_providers::watchdog::run(std::io::BufReader::new(std::io::stdin()));
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    if matches!(cli.command, Command::Serve { .. }) {
        bound_heap();
    }
    install_logging(if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    });
    let result = match cli.command {
        Command::Secret(command) => secret::run(&cli.global, command),
        Command::State(command) => state::run(&cli.global, command),
        Command::Router { listen } => Ok(router::run(&cli.global, &listen)),
        Command::Serve { .. } | Command::Env(_) | Command::Token(_) | Command::Compare { .. } => {
            control::run(cli)
        }
        _ => commands::run(cli),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            render::error(&e);
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
