//! `slipway secret`: the engine's age identity, and the encrypted values in the repository's
//! secrets file. Values go in on stdin and never come out: there is no `get`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::json;
use slipway_core::secrets::{self, SecretEntry};
use slipway_core::stack::{FileError, Files, LoadLimits};
use slipway_engine::secrets as engine_secrets;

use crate::commands::engine_config;
use crate::{Global, Output, SecretCommand};

pub fn run(g: &Global, command: SecretCommand) -> Result<ExitCode> {
    match command {
        SecretCommand::Keygen => keygen(g),
        SecretCommand::Recipient => {
            let config = engine_config(g)?;
            let home = crate::commands::absolute(&g.home)?;
            // The age key a branch committed into the home would be the recipient printed.
            slipway_engine::refuse_tracked_home(&home)?;
            println!(
                "{}",
                engine_secrets::recipient(&config.secrets, &home).map_err(anyhow::Error::msg)?
            );
            Ok(ExitCode::SUCCESS)
        }
        SecretCommand::Set { name, env, path } => set(&name, env.as_deref(), &path),
        SecretCommand::Unset { name, env, path } => unset(&name, env.as_deref(), &path),
        SecretCommand::List { path, output } => list(&path, output),
    }
}

fn keygen(g: &Global) -> Result<ExitCode> {
    let config = engine_config(g)?;
    if config.secrets.identity_env.is_some() {
        bail!(
            "[secrets] identity_env is set: the identity comes from the environment; make one with `age-keygen` and put it there"
        );
    }
    let home = crate::commands::absolute(&g.home)?;
    slipway_engine::refuse_tracked_home(&home)?;
    let path = engine_secrets::default_identity_path(&config.secrets, &home);
    let recipient = engine_secrets::keygen(&path).map_err(anyhow::Error::msg)?;
    println!("{recipient}");
    eprintln!(
        "wrote the engine's age identity to {} (keep it secret, back it up)\nadd its recipient to slipway.yaml:\n  secrets:\n    recipients: [{recipient}]",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The work tree's files, for reading slipway.yaml as it is now (not at a commit).
struct WorkTree(PathBuf);

impl Files for WorkTree {
    fn read(&self, path: &str) -> Result<String, FileError> {
        match std::fs::read(self.0.join(path)) {
            Ok(bytes) => String::from_utf8(bytes).map_err(|_| FileError::NotUtf8),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(FileError::NotFound),
            Err(e) => Err(FileError::Other(e.to_string())),
        }
    }
}

/// The stack's recipients and secrets file, from the work tree: the git top level (or the
/// current directory) joined with `--path`.
struct Target {
    root: PathBuf,
    file: String,
    recipients: Vec<String>,
    entries: BTreeMap<String, SecretEntry>,
}

fn target(path: &str) -> Result<Target> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let root = std::process::Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .current_dir(&cwd)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or(cwd);
    let folder =
        slipway_engine::source::folder_of(path).map_err(|why| anyhow::anyhow!("--path: {why}"))?;
    let entry = format!("{folder}slipway.yaml");
    let files = WorkTree(root.clone());
    let loaded = slipway_core::stack::load(&files, &entry, &LoadLimits::default());
    let Some(stack) = loaded.stack else {
        bail!(
            "no slipway.yaml at {}; run this inside the stack's repository (or pass --path)",
            root.join(&entry).display()
        );
    };
    // Only problems of the secrets file itself stop us: a reference to the secret being set
    // is exactly what is expected to be missing.
    let broken: Vec<String> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.is_error() && d.location.file == stack.secrets.file)
        .map(|d| d.to_string())
        .collect();
    if !broken.is_empty() {
        bail!(
            "{} has errors; fix them (or restore it from Git) first:\n{}",
            stack.secrets.file,
            broken.join("\n")
        );
    }
    Ok(Target {
        root,
        file: stack.secrets.file.clone(),
        recipients: stack.secrets.recipients.clone(),
        entries: stack.secrets.entries.clone(),
    })
}

fn check_name(name: &str) -> Result<()> {
    if !secrets::is_secret_name(name) {
        bail!("`{name}` is not a valid secret name: use letters, digits, `_` and `-`");
    }
    Ok(())
}

fn check_env(env: Option<&str>) -> Result<()> {
    if let Some(e) = env
        && !slipway_core::stack::is_dns_label(e)
    {
        bail!("`{e}` is not an environment or family name (a DNS label)");
    }
    Ok(())
}

fn write(t: &Target) -> Result<()> {
    use std::io::Write;
    let path = t.root.join(&t.file);
    let text = secrets::write_file(&t.entries);
    let temp = path.with_extension("yaml.tmp");
    // Made anew, never opened through what is there: the checkout is a branch's, which may
    // hold a symlink of that name to any file of the person running this (`~/.ssh/...`).
    match std::fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", temp.display())),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .with_context(|| format!("cannot write {}", temp.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", temp.display()))?;
    drop(file);
    std::fs::rename(&temp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn set(name: &str, env: Option<&str>, path: &str) -> Result<ExitCode> {
    check_name(name)?;
    check_env(env)?;
    let mut t = target(path)?;
    if t.recipients.is_empty() {
        bail!(
            "slipway.yaml lists no recipients to encrypt to; add the engine's (`slipway secret keygen` prints it):\n  secrets:\n    recipients: [age1...]"
        );
    }
    let mut value = Vec::new();
    std::io::stdin()
        .take(1024 * 1024 + 1)
        .read_to_end(&mut value)
        .context("cannot read the value from standard input")?;
    if value.len() > 1024 * 1024 {
        bail!("the value is larger than 1 MiB; keep large files out of secrets");
    }
    // `echo VALUE | slipway secret set` adds a newline nobody means.
    if value.ends_with(b"\n") {
        value.pop();
        if value.ends_with(b"\r") {
            value.pop();
        }
    }
    if value.is_empty() {
        bail!(
            "the value is empty; pipe it on standard input: `printf %s VALUE | slipway secret set {name}`"
        );
    }
    if std::str::from_utf8(&value).is_err() {
        bail!("the value is not UTF-8 text; base64-encode binary values");
    }
    // Bound to this secret and this environment (or the default), so that its ciphertext
    // decrypts for nothing else wherever it is copied.
    let ciphertext =
        engine_secrets::encrypt(&engine_secrets::bind(name, env, &value), &t.recipients)
            .map_err(anyhow::Error::msg)?;
    let entry = t.entries.entry(name.to_string()).or_default();
    match env {
        Some(e) => {
            entry.environments.insert(e.to_string(), ciphertext);
        }
        None => entry.value = Some(ciphertext),
    }
    write(&t)?;
    // Who can read it, by name: the recipients are the checkout's `slipway.yaml`, a branch's
    // maybe, which may have added one of its own.
    eprintln!(
        "set secret `{name}`{} in {}, encrypted to {}; commit it to deploy",
        env.map(|e| format!(" for `{e}`")).unwrap_or_default(),
        t.file,
        t.recipients.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

fn unset(name: &str, env: Option<&str>, path: &str) -> Result<ExitCode> {
    check_name(name)?;
    check_env(env)?;
    let mut t = target(path)?;
    let Some(entry) = t.entries.get_mut(name) else {
        bail!("no secret `{name}` in {}", t.file);
    };
    match env {
        Some(e) => {
            if entry.environments.remove(e).is_none() {
                bail!("secret `{name}` has no value for `{e}`");
            }
        }
        None => entry.value = None,
    }
    if entry.value.is_none() && entry.environments.is_empty() {
        t.entries.remove(name);
    }
    write(&t)?;
    eprintln!(
        "removed secret `{name}`{} from {}",
        env.map(|e| format!(" for `{e}`")).unwrap_or_default(),
        t.file
    );
    Ok(ExitCode::SUCCESS)
}

fn list(path: &str, output: Output) -> Result<ExitCode> {
    let t = target(path)?;
    if output == Output::Json {
        let secrets: Vec<_> = t
            .entries
            .iter()
            .map(|(name, e)| {
                json!({
                    "name": name,
                    "default": e.value.is_some(),
                    "environments": e.environments.keys().collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "file": t.file,
                "recipients": t.recipients,
                "secrets": secrets,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if t.entries.is_empty() {
        eprintln!("no secrets in {}", t.file);
    }
    for (name, e) in &t.entries {
        let mut scopes: Vec<String> = Vec::new();
        if e.value.is_some() {
            scopes.push("default".into());
        }
        scopes.extend(e.environments.keys().cloned());
        println!("{name}\t{}", scopes.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}
