//! One function per command: open what it needs, call the engine, print.

use slipway_core::EnvName;
use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde_json::json;
use slipway_engine::{ApplyOptions, Engine, EngineError, LogFile, Named, source};
use slipway_git::{GitRepository, Source};

use crate::config::Config;
use crate::render::{self, Reporter};
use crate::{Cli, Command, Global, Output, RepoArgs};

pub fn run(cli: Cli) -> Result<ExitCode> {
    let g = cli.global;
    match cli.command {
        Command::Init { dir } => init(&dir),
        Command::Validate { repo, output } => validate(&g, &repo, output),
        Command::Render { env, repo } => render_env(&g, &repo, &env_name(&env)?),
        Command::Plan {
            env,
            repo,
            output,
            detailed_exitcode,
        } => plan(&g, &repo, &env_name(&env)?, output, detailed_exitcode),
        Command::Apply {
            env,
            repo,
            yes,
            parallelism,
            confirm_destroy,
            override_window,
            wait,
            approve_policies,
            output,
        } => apply(
            &g,
            &repo,
            &env_name(&env)?,
            ApplyArgs {
                yes,
                parallelism,
                confirm_destroy: confirmed(&env, confirm_destroy.as_deref())?,
                override_window,
                wait: wait.into(),
                approve_policies,
                output,
            },
        ),
        Command::Destroy {
            env,
            yes,
            confirm_destroy,
            wait,
            output,
        } => destroy(
            &g,
            &env_name(&env)?,
            yes,
            confirmed(&env, confirm_destroy.as_deref())?,
            wait.into(),
            output,
        ),
        Command::Status { env, output } => {
            let env = env.as_deref().map(env_name).transpose()?;
            status(&g, env.as_ref(), output)
        }
        Command::History { env, limit, output } => history(&g, &env_name(&env)?, limit, output),
        Command::Logs {
            env,
            resource,
            follow,
            tail,
        } => logs(&g, &env_name(&env)?, resource.as_deref(), follow, tail),
        Command::Schema { plan } => {
            let schema = if plan {
                slipway_engine::policy::plan_schema()
            } else {
                slipway_core::schema::schema()
            };
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(crate::PolicyCommand::Test { dir, output }) => {
            crate::render::policy_test(&dir, output)
        }
        Command::Supervise { .. }
        | Command::PolicyEval
        | Command::Watchdog
        | Command::Router { .. }
        | Command::Serve { .. }
        | Command::Env(_)
        | Command::Token(_)
        | Command::Secret(_)
        | Command::State(_)
        | Command::Compare { .. } => {
            unreachable!("dispatched in main")
        }
    }
}

/// An environment name from the command line, parsed once here: a bad one is refused before
/// anything is opened (exit 1, like every other error), and what follows holds an [`EnvName`].
pub fn env_name(text: &str) -> Result<EnvName> {
    Ok(EnvName::parse(text)?)
}

/// Whether `--confirm-destroy` names the environment (a typed confirmation, as a person
/// would give it, not a flag a script sets by habit).
fn confirmed(env: &str, given: Option<&str>) -> Result<bool> {
    match given {
        None => Ok(false),
        Some(name) if name == env => Ok(true),
        Some(name) => bail!(
            "--confirm-destroy {name} does not name the environment `{env}`; repeat its name exactly"
        ),
    }
}

pub fn engine_config(g: &Global) -> Result<Config> {
    match &g.config {
        Some(path) => Config::load(path),
        None => Ok(Config::default()),
    }
}

/// The engine of a one-shot command that changes `env`, holding `env`'s lease on a state
/// shared with replicas (see [`crate::lease`]); keep the lease until the command is done.
pub fn open_engine_for(
    g: &Global,
    env: &EnvName,
    wait: crate::lease::Wait,
) -> Result<(Arc<Engine>, Option<crate::lease::CommandLease>)> {
    let config = engine_config(g)?;
    let mut engine = open_engine_as(g, &config)?;
    crate::lease::prepare(&mut engine, &config)?;
    let engine = Arc::new(engine);
    // A command that changes an environment runs its code: the packet filter is looked at
    // (and written if need be) while it reads the commit and plans.
    engine.look_at_fence_ahead();
    let lease = crate::lease::take(&engine, env, &config, wait)?;
    Ok((engine, lease))
}

pub fn open_engine(g: &Global) -> Result<Engine> {
    open_engine_as(g, &engine_config(g)?)
}

/// The engine of `g`'s home, as `config` (`g`'s engine config, read once) says.
fn open_engine_as(g: &Global, config: &Config) -> Result<Engine> {
    let exe = std::env::current_exe()
        .context("cannot find the slipway binary to run process supervisors")?;
    let supervisor: Vec<OsString> = vec![exe.into_os_string(), "__supervise".into()];
    let mut engine = Engine::open(&absolute(&g.home)?, config.engine(), supervisor)?;
    if engine.store().dialect() == slipway_state::Dialect::Postgres {
        engine.on_node(crate::lease::node(config));
    }
    Ok(engine)
}

pub fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Ok(std::env::current_dir()
            .context("cannot read the current directory")?
            .join(path))
    }
}

/// The repository a command reads, as `--repo`, `--ref` and `--path` name it.
pub struct Repo {
    /// The repository (a URL is mirrored into the home, and fetched).
    pub repository: GitRepository,
    /// How the user named it (a URL's credentials redacted).
    pub spec: String,
    /// `--ref`, if given.
    pub reference: Option<String>,
    /// The folder of slipway.yaml: `""` or `deploy/`.
    pub folder: String,
    /// Why a URL could not be fetched: the command works offline from the home's copy.
    pub offline: Option<String>,
}

impl Repo {
    /// The ref asked for, or HEAD.
    pub fn reference(&self) -> &str {
        self.reference.as_deref().unwrap_or("HEAD")
    }

    /// The environment `env`, read from this repository.
    fn named<'a>(&'a self, env: &'a EnvName) -> Named<'a> {
        Named {
            name: env,
            source: &self.repository,
            repo: &self.spec,
            reference: self.reference.as_deref(),
            folder: &self.folder,
        }
    }

    /// Says on stderr that the command works offline, and from which commit, when it does.
    fn warn_offline(&self, commit: &slipway_git::Commit) {
        if let Some(json) = self.offline_json(commit) {
            eprintln!(
                "warning: cannot fetch {} ({}); working offline from the copy in the home, at {} of {}",
                self.spec,
                json["reason"].as_str().unwrap_or(""),
                slipway_engine::apply::short(&commit.sha),
                json["commit_date"].as_str().unwrap_or("")
            );
        }
    }

    /// `{"reason", "commit", "commit_date"}` when the command works offline.
    pub fn offline_json(&self, commit: &slipway_git::Commit) -> Option<serde_json::Value> {
        let reason = self.offline.as_ref()?;
        let date = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(commit.time.max(0) as u64),
        );
        Some(json!({"reason": reason, "commit": commit.sha, "commit_date": date.to_string()}))
    }
}

/// The repository named by `--repo` (or the engine config's `[repo] url`, or the current
/// directory), mirrored into the home and fetched when it is a URL.
pub fn open_repo(g: &Global, repo: &RepoArgs) -> Result<Repo> {
    let config = engine_config(g)?;
    let spec = repo
        .repo
        .clone()
        .or(config.repo.url.clone())
        .unwrap_or_else(|| ".".into());
    let opened = slipway_engine::open_repository(&absolute(&g.home)?, &spec)?;
    let path = if repo.path == "." {
        config.repo.path.clone()
    } else {
        repo.path.clone()
    };
    let folder = source::folder_of(&path).map_err(|why| anyhow::anyhow!("--path: {why}"))?;
    // Shown in messages and kept in every environment's record (which any viewer reads):
    // a URL's credentials redacted.
    let spec = if opened.repository.is_mirror() {
        opened.repository.location().to_owned()
    } else {
        spec
    };
    Ok(Repo {
        repository: opened.repository,
        spec,
        reference: repo.reference.clone(),
        folder,
        offline: opened.offline,
    })
}

fn init(dir: &Path) -> Result<ExitCode> {
    const FILES: &[(&str, &str)] = &[
        (
            "slipway.yaml",
            include_str!("../../../examples/quickstart/slipway.yaml"),
        ),
        (
            "app.py",
            include_str!("../../../examples/quickstart/app.py"),
        ),
        (
            "seed.py",
            include_str!("../../../examples/quickstart/seed.py"),
        ),
        (
            "migrate.sql",
            include_str!("../../../examples/quickstart/migrate.sql"),
        ),
    ];
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, _) in FILES {
        if dir.join(name).exists() {
            bail!(
                "{} already exists; run `slipway init` in an empty folder, or move it aside",
                dir.join(name).display()
            );
        }
    }
    // Each file made anew, never written through what is there: a folder someone else
    // prepared may hold a symlink of that name to a file of the person running this.
    let create = |path: &Path, content: &str| -> Result<()> {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|mut file| file.write_all(content.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))
    };
    for (name, content) in FILES {
        create(&dir.join(name), content)?;
    }
    // The engine's default home is `.slipway/` in the current directory: keep it out of Git.
    let ignore = dir.join(".gitignore");
    if std::fs::symlink_metadata(&ignore).is_err() {
        create(&ignore, ".slipway/\n")?;
    }
    let shown = dir.display();
    eprintln!(
        "Wrote a stack to {shown}: slipway.yaml, app.py (an HTTP service), seed.py (a job) and \
         migrate.sql (its database schema)."
    );
    eprintln!("Next:");
    eprintln!("  cd {shown} && git init -q && git add . && git commit -qm 'A slipway stack'");
    eprintln!("  slipway validate");
    eprintln!(
        "  # the stack has a database: name a PostgreSQL server that may create databases and roles"
    );
    eprintln!(
        "  printf '[postgres.main]\\nurl = \"postgres://postgres@127.0.0.1:5432/postgres\"\\n' > slipway.toml"
    );
    eprintln!("  export SLIPWAY_CONFIG=$PWD/slipway.toml");
    eprintln!("  slipway apply --env dev --yes");
    eprintln!("  slipway status");
    Ok(ExitCode::SUCCESS)
}

fn validate(g: &Global, repo: &RepoArgs, output: Output) -> Result<ExitCode> {
    let engine = open_engine(g)?;
    let repo = open_repo(g, repo)?;
    let cached = engine.load_ref(&repo.repository, repo.reference(), &repo.folder)?;
    let loaded = &cached.loaded;
    repo.warn_offline(&loaded.commit);
    let errors = loaded.loaded.has_errors();
    match output {
        Output::Json => {
            let diagnostics: Vec<_> = loaded
                .loaded
                .diagnostics
                .iter()
                .map(render::diagnostic_json)
                .collect();
            let stack = loaded.loaded.stack.as_ref();
            let mut out = json!({
                "valid": !errors,
                "commit": loaded.commit.sha,
                "files": stack.map(|s| s.files.clone()).unwrap_or_default(),
                "resources": stack.map(|s| s.resources.len()).unwrap_or(0),
                "environments": stack.map(|s| s.environments.keys().cloned().collect::<Vec<_>>()).unwrap_or_default(),
                "diagnostics": diagnostics,
            });
            render::add_offline(&mut out, repo.offline_json(&loaded.commit));
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Output::Text => {
            render::diagnostics(&loaded.loaded.diagnostics);
            if let Ok(stack) = loaded.valid_stack() {
                println!(
                    "{} is valid at {}: {} resources, {} environments ({})",
                    loaded.entry,
                    slipway_engine::apply::short(&loaded.commit.sha),
                    stack.resources.len(),
                    stack.environments.len(),
                    stack
                        .environments
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    Ok(if errors {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// An engine error as the command line says it: invalid stacks with every diagnostic, and
/// the flags that answer a refusal.
fn explain(e: EngineError) -> anyhow::Error {
    match e {
        EngineError::Invalid {
            diagnostics,
            commit,
        } => {
            render::diagnostics(&diagnostics);
            anyhow::anyhow!(
                "slipway.yaml at {} is not valid; fix the errors above (`slipway validate` shows them)",
                slipway_engine::apply::short(&commit)
            )
        }
        EngineError::Family {
            ref family,
            ref members,
        } => {
            let example = members
                .first()
                .and_then(|m| m.split_whitespace().next())
                .unwrap_or("br-BRANCH");
            anyhow::anyhow!(
                "{e}; name a member of it (`--env {example}`, the name `slipway serve` gives a matching branch), or make one with `slipway env create NAME --like {family}`"
            )
        }
        EngineError::NeedsConfirmation(why) => anyhow::anyhow!(
            "{why}; nothing was changed. If that is intended, run again with `--confirm-destroy {}`",
            why.environment
        ),
        EngineError::OutsideWindow(denied) => anyhow::anyhow!(
            "{denied}; nothing was changed. A deployer who means to deploy now runs again with `--override-window` (recorded)"
        ),
        other => other.into(),
    }
}

fn render_env(g: &Global, repo: &RepoArgs, env: &EnvName) -> Result<ExitCode> {
    let engine = open_engine(g)?;
    let repo = open_repo(g, repo)?;
    let desired = engine.render_named(&repo.named(env)).map_err(explain)?;
    if repo.offline.is_some() {
        repo.warn_offline(&repo.repository.resolve(&desired.commit)?);
    }
    println!("{}", desired.canonical_json());
    Ok(ExitCode::SUCCESS)
}

fn plan(
    g: &Global,
    repo: &RepoArgs,
    env: &EnvName,
    output: Output,
    detailed: bool,
) -> Result<ExitCode> {
    let engine = open_engine(g)?;
    let repo = open_repo(g, repo)?;
    let prepared = engine.prepare_named(&repo.named(env)).map_err(explain)?;
    repo.warn_offline(&prepared.commit);
    match output {
        Output::Json => {
            let mut out = render::plan_json(&engine, &prepared);
            render::add_offline(&mut out, repo.offline_json(&prepared.commit));
            println!("{}", serde_json::to_string_pretty(&out)?)
        }
        Output::Text => {
            render::plan_text(&prepared);
            render::policies_text(&prepared);
        }
    }
    Ok(if detailed && prepared.plan.has_changes() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Who is acting, recorded with each deployment: `SLIPWAY_USER`, else the login name, else
/// the name of the user id in /etc/passwd (CI jobs often have no `USER`).
pub fn who() -> String {
    let from_env = ["SLIPWAY_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()));
    if let Some(name) = from_env {
        return name;
    }
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        });
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    uid.and_then(|uid| {
        passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 2 && f[2] == uid)
            .map(|f| f[0].to_string())
    })
    .unwrap_or_else(|| "unknown".into())
}

pub fn confirm(question: &str, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "not run from a terminal, so nothing was changed; pass --yes to {question} without asking"
        );
    }
    eprint!("Do you want to {question}? Only 'yes' will be accepted: ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    if answer.trim() != "yes" {
        bail!("cancelled; nothing was changed");
    }
    Ok(())
}

/// What `slipway apply` was asked, beside the environment and repository.
struct ApplyArgs {
    yes: bool,
    parallelism: Option<usize>,
    confirm_destroy: bool,
    override_window: bool,
    wait: crate::lease::Wait,
    approve_policies: bool,
    output: Output,
}

fn apply(g: &Global, repo: &RepoArgs, env: &EnvName, args: ApplyArgs) -> Result<ExitCode> {
    let ApplyArgs {
        yes,
        parallelism,
        confirm_destroy,
        override_window,
        wait,
        approve_policies,
        output,
    } = args;
    let override_window = override_window.then(who);
    // The repository is opened while the home is: neither needs the other.
    let (opened, repo) = std::thread::scope(|scope| {
        let repo = scope.spawn(|| open_repo(g, repo));
        let opened = open_engine_for(g, env, wait);
        (opened, repo.join())
    });
    let (engine, _lease) = opened?;
    let repo = repo.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
    let lock = engine.lock(env, slipway_engine::LockWait::Block(&|| waiting_for(env)))?;
    let prepared = engine.prepare_named(&repo.named(env)).map_err(explain)?;
    repo.warn_offline(&prepared.commit);
    if output == Output::Text {
        render::plan_text(&prepared);
        render::policies_text(&prepared);
    }
    let approved_by = approve_policies.then(who);
    // Before asking anything: a plan the policies block is refused whatever the answer.
    engine
        .policies_allow(&prepared, approved_by.as_deref())
        .map_err(explain)?;
    let confirmation = prepared.needs_confirmation();
    if let Some(why) = confirmation.clone()
        && !confirm_destroy
    {
        return Err(explain(EngineError::NeedsConfirmation(why)));
    }
    // Refused before asking: a deploy window that denies it now, unless overridden.
    match engine.window_denial(&prepared, slipway_state::now_ms())? {
        Some(denied) if override_window.is_none() => {
            return Err(explain(EngineError::OutsideWindow(denied)));
        }
        Some(denied) => eprintln!("{denied} (overridden with --override-window)."),
        None => {}
    }
    if !prepared.plan.has_changes() {
        let report = engine
            .apply(
                &lock,
                &prepared,
                &repo.repository,
                &ApplyOptions {
                    parallelism: 1,
                    who: who(),
                    swap_exposed: false,
                    confirm_destroy: confirm_destroy.into(),
                    follows: None,
                    policies_approved_by: approved_by.clone(),
                    override_window: override_window.clone(),
                    now_ms: None,
                },
                &(),
            )
            .map_err(explain)?;
        if output == Output::Json {
            let mut out = render::report_json(&report);
            render::add_offline(&mut out, repo.offline_json(&prepared.commit));
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(why) = confirmation {
        eprintln!("{why} (confirmed with --confirm-destroy).");
    }
    confirm(&format!("apply these changes to `{env}`"), yes)?;
    let parallelism = parallelism.unwrap_or(engine.config().local.parallelism);
    let reporter = Reporter::new(
        prepared
            .plan
            .changes
            .iter()
            .filter(|c| c.action != slipway_core::plan::Action::Noop)
            .count(),
    );
    let report = engine
        .apply(
            &lock,
            &prepared,
            &repo.repository,
            &ApplyOptions {
                parallelism,
                who: who(),
                swap_exposed: false,
                confirm_destroy: confirm_destroy.into(),
                // A person's apply: of what was asked, whatever the record follows.
                follows: None,
                policies_approved_by: approved_by,
                override_window,
                now_ms: None,
            },
            &reporter,
        )
        .map_err(explain)?;
    reporter.finish();
    match output {
        Output::Json => {
            let mut out = render::report_json(&report);
            render::add_offline(&mut out, repo.offline_json(&prepared.commit));
            println!("{}", serde_json::to_string_pretty(&out)?)
        }
        Output::Text => render::report_text(&report, "Apply"),
    }
    Ok(if report.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn destroy(
    g: &Global,
    env: &EnvName,
    yes: bool,
    confirm_destroy: bool,
    wait: crate::lease::Wait,
    output: Output,
) -> Result<ExitCode> {
    let (engine, _lease) = open_engine_for(g, env, wait)?;
    let lock = engine.lock(env, slipway_engine::LockWait::Block(&|| waiting_for(env)))?;
    // With `--yes` nothing of the CLI's own can refuse the destroy any more (an environment
    // that does not exist gets nothing started): what the deletes need starts now, while the
    // CLI reads and says what goes (see `Engine::expect_destroy`).
    if yes {
        engine.expect_destroy(&lock, confirm_destroy.into());
    }
    let resources = engine.store().resources(env)?;
    if engine.store().environment(env)?.is_none() {
        bail!("environment `{env}` does not exist here; `slipway status` lists the environments");
    }
    eprintln!(
        "Destroying `{env}` deletes {} resource(s): {}",
        resources.len(),
        resources
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    confirm(&format!("destroy `{env}`"), yes)?;
    // Without `--yes`, once the person has confirmed: past every refusal of the CLI's own,
    // what the deletes need (a database connection) starts now, unless the engine will refuse
    // the destroy (see `Engine::expect_destroy`).
    if !yes {
        engine.expect_destroy(&lock, confirm_destroy.into());
    }
    let reporter = Reporter::new(resources.len());
    let options = slipway_engine::DestroyOptions::new(&who(), confirm_destroy.into());
    let report = engine
        .destroy(&lock, &options, &reporter)
        .map_err(explain)?;
    reporter.finish();
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&render::report_json(&report))?
        ),
        Output::Text => render::report_text(&report, "Destroy"),
    }
    Ok(if report.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn status(g: &Global, env: Option<&EnvName>, output: Output) -> Result<ExitCode> {
    if let Some(server) = &g.server {
        return crate::remote::status(server, g.token.as_deref(), env.map(EnvName::as_str), output);
    }
    let engine = open_engine(g)?;
    let environments = engine.status(env).map_err(|e| match (e, env) {
        (EngineError::Environment(why), Some(name)) => anyhow::anyhow!(
            "{why}; `slipway status` lists them, `slipway apply --env {name}` creates it"
        ),
        (other, _) => other.into(),
    })?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "environments": environments }))?
        ),
        Output::Text => render::status_text(&environments),
    }
    Ok(ExitCode::SUCCESS)
}

fn history(g: &Global, env: &EnvName, limit: usize, output: Output) -> Result<ExitCode> {
    let engine = open_engine(g)?;
    let deployments = engine.store().deployments(env, limit)?;
    match output {
        Output::Json => {
            let items: Vec<_> = deployments.iter().map(render::deployment_json).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "environment": env, "deployments": items }))?
            );
        }
        Output::Text => render::history_text(env, &deployments),
    }
    Ok(ExitCode::SUCCESS)
}

fn logs(
    g: &Global,
    env: &EnvName,
    resource: Option<&str>,
    follow: bool,
    tail: usize,
) -> Result<ExitCode> {
    let engine = open_engine(g)?;
    let logs = engine.log_files(env, resource)?;
    // A program may print what it was given; secrets it was given never reach the terminal.
    let redactor = engine.redactor(env)?;
    if logs.is_empty() {
        bail!(
            "environment `{env}` has no processes or jobs with logs; `slipway status --env {env}` lists its resources"
        );
    }
    let prefix = logs.len() > 1;
    let mut offsets = Vec::new();
    for LogFile {
        resource: name,
        path,
    } in logs
    {
        let text = std::fs::read(&path).unwrap_or_default();
        // A process that has printed nothing yet has no log file: that is no error, but a
        // resource that has no log at all is.
        if text.is_empty()
            && resource.is_some()
            && !path.exists()
            && !engine
                .log_files(env, None)?
                .iter()
                .any(|log| log.resource == name)
        {
            bail!(
                "no log for `{name}` in `{env}`; `slipway status --env {env}` lists its resources"
            );
        }
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        for line in &lines[lines.len().saturating_sub(tail)..] {
            render::log_line(&name, &redactor.redact(line), prefix);
        }
        let len = text.len() as u64;
        offsets.push((name, path, len));
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        for (name, path, offset) in offsets.iter_mut() {
            let len = std::fs::metadata(&*path).map(|m| m.len()).unwrap_or(0);
            if len < *offset {
                *offset = 0; // rotated
            }
            if len > *offset {
                let bytes = std::fs::read(&*path).unwrap_or_default();
                let start = usize::try_from(*offset).unwrap_or(0).min(bytes.len());
                let chunk = String::from_utf8_lossy(&bytes[start..]);
                for line in chunk.lines() {
                    render::log_line(name, &redactor.redact(line), prefix);
                }
                *offset = bytes.len() as u64;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// Says that a command waits for another operation on `env` (an apply, a server's
/// reconcile) to finish before it does what was asked.
pub(crate) fn waiting_for(env: &EnvName) {
    eprintln!("waiting for another slipway operation on `{env}` to finish...");
}
