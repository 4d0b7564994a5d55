//! `slipway state`: moving the home's SQLite state into PostgreSQL, and backing it up.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::json;
use slipway_state::Store;

use crate::commands::{absolute, engine_config};
use crate::{Global, Output, StateCommand};

pub fn run(g: &Global, command: StateCommand) -> Result<ExitCode> {
    let home = absolute(&g.home)?;
    match command {
        StateCommand::Migrate { to, output } => {
            let url = match to {
                Some(url) => url,
                None => engine_config(g)?
                    .engine()
                    .state
                    .resolve_url()
                    .map_err(anyhow::Error::msg)?
                    .context(
                        "say where the state goes: --to postgres://…, or [state] url_env in \
                         the engine configuration",
                    )?,
            };
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                bail!("--to must be a postgres:// URL");
            }
            if !home.join("state.db").is_file() {
                bail!(
                    "{} holds no SQLite state to move (no state.db); check --home",
                    home.display()
                );
            }
            slipway_engine::refuse_tracked_home(&home)?;
            let source = Store::open(&home)?;
            let target = Store::open_postgres(&home, &url)?;
            let copied = source.copy_to(&target).with_context(|| {
                format!(
                    "cannot move {} into {}",
                    source.location(),
                    target.location()
                )
            })?;
            match output {
                Output::Json => println!(
                    "{}",
                    json!({
                        "from": source.location(),
                        "to": target.location(),
                        "rows": copied.total(),
                        "tables": copied.tables.iter().map(|(t, n)| (t.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
                    })
                ),
                Output::Text => {
                    println!(
                        "Moved {} rows from {} into {}:",
                        copied.total(),
                        source.location(),
                        target.location()
                    );
                    for (table, rows) in &copied.tables {
                        println!("  {table:<16} {rows}");
                    }
                    println!(
                        "Every replica needs this home's state.key ({}) and [state] pointing \
                         at the database; {} is left as it was.",
                        home.join("state.key").display(),
                        source.location()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        StateCommand::Backup { file, output } => {
            let file = absolute(&file)?;
            // The home's SQLite file is not the state when [state] names PostgreSQL: at most
            // the copy `state migrate` left, stale since; a backup of it restored would lose
            // every change made since.
            let state = engine_config(g)?.engine().state;
            if state.url.is_some() || state.url_env.is_some() || state.url_file.is_some() {
                bail!(
                    "this engine's state is in PostgreSQL ([state] in the engine configuration), \
                     not in {}: back it up with pg_dump (docs/operations.md)",
                    home.join("state.db").display()
                );
            }
            if file.exists() {
                bail!(
                    "{} exists; a backup never overwrites a file",
                    file.display()
                );
            }
            slipway_engine::refuse_tracked_home(&home)?;
            let store = Store::open(&home)?;
            store.backup(&file)?;
            match output {
                Output::Json => println!(
                    "{}",
                    json!({"from": store.location(), "backup": file.display().to_string()})
                ),
                Output::Text => println!(
                    "Backed up {} to {}. To restore: stop slipway, put it at {} (with this \
                     home's state.key).",
                    store.location(),
                    file.display(),
                    home.join("state.db").display()
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
