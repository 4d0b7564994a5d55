//! `slipway-fake-forge`: the kit's fake forge as a process, for the benchmarks. See the
//! crate's documentation for its arguments and its control API under `/_fake/`.

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Weak};

use slipway_testkit::forge::control;
use slipway_testkit::forge::github;
use slipway_testkit::forge::{FakeForge, Forge};

const USAGE: &str = "usage: slipway-fake-forge --forge github|gitlab|gitea [--repo acme/shop] [--token T] \
                     [--bot LOGIN] [--listen 127.0.0.1:0]";

struct Options {
    forge: Forge,
    repo: String,
    token: Option<String>,
    bot: String,
    listen: String,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut forge = None;
    let mut options = Options {
        forge: Forge::GitHub,
        repo: github::REPO.to_owned(),
        token: None,
        bot: "slipway-bot".to_owned(),
        listen: "127.0.0.1:0".to_owned(),
    };
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--forge" => {
                let name = value()?;
                forge =
                    Some(Forge::parse(&name).ok_or_else(|| {
                        format!("unknown forge {name:?}: github, gitlab or gitea")
                    })?);
            }
            "--repo" => options.repo = value()?,
            "--token" => options.token = Some(value()?),
            "--bot" => options.bot = value()?,
            "--listen" => options.listen = value()?,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    options.forge = forge.ok_or_else(|| format!("--forge is required\n{USAGE}"))?;
    if !options.repo.eq_ignore_ascii_case(github::REPO) {
        return Err(format!(
            "the fake serves one repository, {}: --repo {} is not it",
            github::REPO,
            options.repo
        ));
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(why) => {
            eprintln!("slipway-fake-forge: {why}");
            return ExitCode::from(2);
        }
    };
    let fake = Arc::new(FakeForge::start_on(
        options.forge,
        &options.listen,
        &options.bot,
    ));
    if let Some(token) = &options.token {
        fake.require_token(token);
    }
    let weak: Weak<FakeForge> = Arc::downgrade(&fake);
    let repo = options.repo.clone();
    fake.server().set_front(move |req| {
        let fake = weak.upgrade()?;
        control::answer(fake.as_ref(), &repo, req)
    });
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{}", fake.server().url());
    let _ = out.flush();
    // Serve until killed.
    loop {
        std::thread::park();
    }
}
