//! One function per command: open what it needs, call the engine, print.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::json;
use slipway_engine::{ApplyOptions, Engine, EngineError, Origin, source};
use slipway_git::{GitRepository, Source};

use crate::config::Config;
use crate::render::{self, Reporter};
use crate::{Cli, Command, Global, Output, RepoArgs};

pub fn run(cli: Cli) -> Result<ExitCode> {
    let g = cli.global;
    match cli.command {
        Command::Init { dir } => init(&dir),
        Command::Validate { repo, output } => validate(&g, &repo, output),
        Command::Render { env, repo } => render_env(&g, &repo, &env),
        Command::Plan {
            env,
            repo,
            output,
            detailed_exitcode,
        } => plan(&g, &repo, &env, output, detailed_exitcode),
        Command::Apply {
            env,
            repo,
            yes,
            parallelism,
            confirm_destroy,
            output,
        } => apply(
            &g,
            &repo,
            &env,
            yes,
            parallelism,
            confirmed(&env, confirm_destroy.as_deref())?,
            output,
        ),
        Command::Destroy {
            env,
            yes,
            confirm_destroy,
            output,
        } => destroy(
            &g,
            &env,
            yes,
            confirmed(&env, confirm_destroy.as_deref())?,
            output,
        ),
        Command::Status { env, output } => status(&g, env.as_deref(), output),
        Command::History { env, limit, output } => history(&g, &env, limit, output),
        Command::Logs {
            env,
            resource,
            follow,
            tail,
        } => logs(&g, &env, resource.as_deref(), follow, tail),
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&slipway_core::schema::schema())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Supervise { .. }
        | Command::Serve { .. }
        | Command::Env(_)
        | Command::Token(_)
        | Command::Secret(_)
        | Command::Compare { .. } => {
            unreachable!("dispatched in main")
        }
    }
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

pub fn open_engine(g: &Global) -> Result<Engine> {
    let config = engine_config(g)?;
    let exe = std::env::current_exe()
        .context("cannot find the slipway binary to run process supervisors")?;
    let supervisor: Vec<OsString> = vec![exe.into_os_string(), "__supervise".into()];
    Ok(Engine::open(
        &absolute(&g.home)?,
        config.engine(),
        supervisor,
    )?)
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

/// The repository named by `--repo` (or the engine config's `[repo] url`, or the current
/// directory), mirrored into the home when it is a URL.
pub fn open_repo(g: &Global, repo: &RepoArgs) -> Result<(GitRepository, String, String, String)> {
    let config = engine_config(g)?;
    let spec = repo
        .repo
        .clone()
        .or(config.repo.url.clone())
        .unwrap_or_else(|| ".".into());
    let cache = absolute(&g.home)?.join("repos");
    let repository = GitRepository::open(&spec, &cache)?;
    let reference = repo.reference.clone().unwrap_or_else(|| "HEAD".into());
    let path = if repo.path == "." {
        config.repo.path.clone()
    } else {
        repo.path.clone()
    };
    let folder = source::folder_of(&path).map_err(anyhow::Error::msg)?;
    Ok((repository, spec, reference, folder))
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
    for (name, content) in FILES {
        std::fs::write(dir.join(name), content)
            .with_context(|| format!("cannot write {}", dir.join(name).display()))?;
    }
    // The engine's default home is `.slipway/` in the current directory: keep it out of Git.
    let ignore = dir.join(".gitignore");
    if !ignore.exists() {
        std::fs::write(&ignore, ".slipway/\n")
            .with_context(|| format!("cannot write {}", ignore.display()))?;
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
    let (repository, _, reference, folder) = open_repo(g, repo)?;
    let loaded = source::load_commit(&repository, &reference, &folder)?;
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
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "valid": !errors,
                    "commit": loaded.commit.sha,
                    "files": stack.map(|s| s.files.clone()).unwrap_or_default(),
                    "resources": stack.map(|s| s.resources.len()).unwrap_or(0),
                    "environments": stack.map(|s| s.environments.keys().cloned().collect::<Vec<_>>()).unwrap_or_default(),
                    "diagnostics": diagnostics,
                }))?
            );
        }
        Output::Text => {
            render::diagnostics(&loaded.loaded.diagnostics);
            if !errors {
                let stack = loaded
                    .loaded
                    .stack
                    .as_ref()
                    .expect("a stack without errors is present");
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

fn prepare(
    engine: &Engine,
    repository: &dyn Source,
    spec: &str,
    reference: &str,
    folder: &str,
    env: &str,
) -> Result<slipway_engine::Prepared> {
    let origin = Origin {
        source: repository,
        repo: spec,
        reference,
        folder,
        tip: None,
    };
    let target = engine.target_for(env)?;
    match engine.prepare(&origin, &target) {
        Err(EngineError::Invalid {
            diagnostics,
            commit,
        }) => {
            render::diagnostics(&diagnostics);
            bail!(
                "slipway.yaml at {} is not valid; fix the errors above (`slipway validate` shows them)",
                slipway_engine::apply::short(&commit)
            )
        }
        other => Ok(other?),
    }
}

fn render_env(g: &Global, repo: &RepoArgs, env: &str) -> Result<ExitCode> {
    let (repository, _, reference, folder) = open_repo(g, repo)?;
    let loaded = source::load_commit(&repository, &reference, &folder)?;
    if loaded.loaded.has_errors() {
        render::diagnostics(&loaded.loaded.diagnostics);
        bail!("slipway.yaml is not valid; fix the errors above");
    }
    let stack = loaded
        .loaded
        .stack
        .as_ref()
        .expect("a stack without errors is present");
    let files = repository.list_files(&loaded.commit.sha)?;
    let sources = source::source_hashes(&files, &loaded.folder, &stack.files, &stack.resources);
    let kind = slipway_core::render::EnvKind::Static;
    let target = slipway_core::render::Target {
        name: env,
        definition: env,
        kind,
    };
    let desired = slipway_core::render::render(stack, target, &loaded.commit.sha, &sources)?;
    println!("{}", desired.canonical_json());
    Ok(ExitCode::SUCCESS)
}

fn plan(
    g: &Global,
    repo: &RepoArgs,
    env: &str,
    output: Output,
    detailed: bool,
) -> Result<ExitCode> {
    let engine = open_engine(g)?;
    let (repository, spec, reference, folder) = open_repo(g, repo)?;
    let prepared = prepare(&engine, &repository, &spec, &reference, &folder, env)?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&render::plan_json(&prepared))?
        ),
        Output::Text => render::plan_text(&prepared),
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

fn apply(
    g: &Global,
    repo: &RepoArgs,
    env: &str,
    yes: bool,
    parallelism: Option<usize>,
    confirm_destroy: bool,
    output: Output,
) -> Result<ExitCode> {
    let engine = open_engine(g)?;
    let (repository, spec, reference, folder) = open_repo(g, repo)?;
    let lock = engine.lock(env, true, &|| {
        eprintln!("waiting for another slipway operation on `{env}` to finish...")
    })?;
    let prepared = prepare(&engine, &repository, &spec, &reference, &folder, env)?;
    if output == Output::Text {
        render::plan_text(&prepared);
    }
    if let Some(why) = slipway_engine::apply::needs_confirmation(&prepared)
        && !confirm_destroy
    {
        bail!(
            "{why}; nothing was applied. If that is intended, run again with `--confirm-destroy {env}`"
        );
    }
    if !prepared.plan.has_changes() {
        let report = engine.apply(
            &lock,
            &prepared,
            &repository,
            &ApplyOptions {
                parallelism: 1,
                who: who(),
                swap_exposed: false,
                confirm_destroy: confirm_destroy.into(),
            },
            &(),
        )?;
        if output == Output::Json {
            println!(
                "{}",
                serde_json::to_string_pretty(&render::report_json(&report))?
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let deletes = prepared
        .plan
        .changes
        .iter()
        .filter(|c| c.action == slipway_core::plan::Action::Delete)
        .count();
    if prepared.protected && deletes > 0 {
        eprintln!("`{env}` is protected and this plan deletes {deletes} resource(s).");
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
    let report = engine.apply(
        &lock,
        &prepared,
        &repository,
        &ApplyOptions {
            parallelism,
            who: who(),
            swap_exposed: false,
            confirm_destroy: confirm_destroy.into(),
        },
        &reporter,
    )?;
    reporter.finish();
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&render::report_json(&report))?
        ),
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
    env: &str,
    yes: bool,
    confirm_destroy: bool,
    output: Output,
) -> Result<ExitCode> {
    let engine = open_engine(g)?;
    let lock = engine.lock(env, true, &|| {
        eprintln!("waiting for another slipway operation on `{env}` to finish...")
    })?;
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
    let reporter = Reporter::new(resources.len());
    let options = slipway_engine::DestroyOptions::new(&who(), confirm_destroy.into());
    let report = engine.destroy(&lock, &options, &reporter)?;
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

fn status(g: &Global, env: Option<&str>, output: Output) -> Result<ExitCode> {
    if let Some(server) = &g.server {
        return crate::remote::status(server, g.token.as_deref(), env, output);
    }
    let engine = open_engine(g)?;
    let environments = engine.status(env)?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "environments": environments }))?
        ),
        Output::Text => render::status_text(&environments),
    }
    Ok(ExitCode::SUCCESS)
}

fn history(g: &Global, env: &str, limit: usize, output: Output) -> Result<ExitCode> {
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
    env: &str,
    resource: Option<&str>,
    follow: bool,
    tail: usize,
) -> Result<ExitCode> {
    let engine = open_engine(g)?;
    let dir = engine.home().join("envs").join(env).join("logs");
    let records = engine.store().resources(env)?;
    // A program may print what it was given; secrets it was given never reach the terminal.
    let redactor = engine.redactor(env)?;
    let mut names: Vec<String> = match resource {
        Some(r) => vec![r.to_string()],
        None => records
            .iter()
            .filter(|r| slipway_core::types::capabilities(&r.type_name).logs)
            .map(|r| r.name.clone())
            .collect(),
    };
    // An exposed process may run as its second instance (`web@b`) after a blue/green swap:
    // read the log of the instance that is live.
    let instance_of = |name: &str| -> String {
        records
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| {
                r.live
                    .get("instance")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| name.to_string())
    };
    names.sort();
    if names.is_empty() {
        bail!(
            "environment `{env}` has no processes or jobs with logs; `slipway status --env {env}` lists its resources"
        );
    }
    let prefix = names.len() > 1;
    let mut offsets = Vec::new();
    for name in &names {
        let path = dir.join(format!("{}.log", instance_of(name)));
        let text = std::fs::read(&path).unwrap_or_default();
        if text.is_empty() && resource.is_some() && !path.exists() {
            bail!(
                "no log for `{name}` in `{env}`; `slipway status --env {env}` lists its resources"
            );
        }
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        for line in &lines[lines.len().saturating_sub(tail)..] {
            render::log_line(name, &redactor.redact(line), prefix);
        }
        offsets.push((name.clone(), path, text.len() as u64));
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
