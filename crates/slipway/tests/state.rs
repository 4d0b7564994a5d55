//! `slipway state migrate` and `slipway state backup`, and `[state]` pointing the engine at
//! PostgreSQL, through the real binary against the machine's PostgreSQL.

mod util;

use serde_json::Value;
use slipway_testkit::pg::TestDatabase;
use util::{Sandbox, start_serve};

/// A sandbox whose `dev` environment was applied twice on its SQLite home.
fn applied_twice() -> Sandbox {
    let s = Sandbox::new();
    s.commit_dev_stack(
        "shop",
        "  conf: { type: file, path: conf.txt, content: \"one\" }\n",
        "one",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    s.commit_dev_stack(
        "shop",
        "  conf: { type: file, path: conf.txt, content: \"two\" }\n",
        "two",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    s
}

/// The engine configuration's `[state]` set to `url`.
fn use_state(s: &Sandbox, url: &str) {
    let config = std::fs::read_to_string(&s.config).expect("config");
    std::fs::write(&s.config, format!("{config}[state]\nurl = \"{url}\"\n")).expect("config");
}

fn history(s: &Sandbox) -> Vec<(String, String)> {
    let history = s.json(&["history", "--env", "dev", "--output", "json"]);
    history["deployments"]
        .as_array()
        .unwrap_or_else(|| panic!("deployments in {history:#}"))
        .iter()
        .map(|d| {
            (
                d["id"].to_string(),
                d["commit"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_sqlite_home_moves_into_postgres_and_the_engine_goes_on_there() {
    let s = applied_twice();
    let before = history(&s);
    assert_eq!(before.len(), 2, "two deployments: {before:?}");
    let database = TestDatabase::create("slipway_cli_migrate");
    let moved = s.json(&[
        "state",
        "migrate",
        "--to",
        &database.url(),
        "--output",
        "json",
    ]);
    assert_eq!(moved["tables"]["deployments"], 2, "{moved:#}");
    assert_eq!(moved["tables"]["environments"], 1, "{moved:#}");
    assert!(
        moved["to"]
            .as_str()
            .is_some_and(|to| to.contains(database.name())),
        "{moved:#}"
    );

    use_state(&s, &database.url());
    assert_eq!(
        history(&s),
        before,
        "the history reads the same from PostgreSQL"
    );
    s.commit_dev_stack(
        "shop",
        "  conf: { type: file, path: conf.txt, content: \"three\" }\n",
        "three",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let after = history(&s);
    assert_eq!(
        after.len(),
        3,
        "a third deployment, recorded in PostgreSQL: {after:?}"
    );
    let rows: i64 = database
        .connect()
        .query_one("SELECT COUNT(*) FROM deployments", &[])
        .expect("count")
        .get(0);
    assert_eq!(
        rows, 3,
        "the deployment is in PostgreSQL, not in the SQLite file"
    );

    let again = s.expect_code(&["state", "migrate", "--to", &database.url()], 1);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("an empty state"),
        "a second move into a state with history is refused, saying why: {stderr}"
    );
}

/// One environment as `status` shows it: name, sync state, commit, and its resources'
/// `(name, status)`.
type Shown = (String, String, String, Vec<(String, String)>);

/// Every environment, as `status` shows it.
fn status(s: &Sandbox) -> Vec<Shown> {
    let status = s.json(&["status", "--output", "json"]);
    status["environments"]
        .as_array()
        .unwrap_or_else(|| panic!("environments in {status:#}"))
        .iter()
        .map(|e| {
            let resources = e["resources"]
                .as_array()
                .map(|rs| {
                    rs.iter()
                        .map(|r| {
                            (
                                r["name"].as_str().unwrap_or("").to_owned(),
                                r["status"].as_str().unwrap_or("").to_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            (
                e["name"].as_str().unwrap_or("").to_owned(),
                e["sync"].as_str().unwrap_or("").to_owned(),
                e["commit"].as_str().unwrap_or("").to_owned(),
                resources,
            )
        })
        .collect()
}

#[test]
fn a_backup_taken_while_serve_runs_restores_the_home_with_its_environments_and_history() {
    let s = applied_twice();
    let before = history(&s);
    let shown = status(&s);
    assert!(
        matches!(shown.as_slice(), [(name, sync, _, resources)]
            if name == "dev" && sync == "synced" && resources.len() == 1),
        "{shown:?}"
    );

    // The backup is taken online, while `slipway serve` works on the home.
    let server = start_serve(&s);
    let backup = s.dir.path().join("backup.db");
    let out: Value = s.json(&[
        "state",
        "backup",
        backup.to_str().expect("utf-8"),
        "--output",
        "json",
    ]);
    assert_eq!(out["backup"], backup.to_str().expect("utf-8"), "{out:#}");
    let again = s.expect_code(&["state", "backup", backup.to_str().expect("utf-8")], 1);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("never overwrites"),
        "a backup never overwrites a file"
    );
    drop(server);

    // The state is lost; restored as operations.md says: the file at <home>/state.db, the
    // WAL and shared-memory files removed, the key kept.
    for file in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(s.home.join(file));
    }
    assert!(
        !s.run(&["history", "--env", "dev"]).status.success() || history(&s).is_empty(),
        "the history is gone with the state"
    );
    for file in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(s.home.join(file));
    }
    std::fs::copy(&backup, s.home.join("state.db")).expect("restore the file");

    let restored = history(&s);
    assert_eq!(
        restored[..before.len().min(restored.len())],
        before[..],
        "the restored home has the deployments recorded before the backup"
    );
    assert_eq!(
        status(&s),
        shown,
        "status shows the environment, its commit and its resources as before"
    );
    // And the engine goes on from there: the next deployment is numbered after them.
    s.commit_dev_stack(
        "shop",
        "  conf: { type: file, path: conf.txt, content: \"three\" }\n",
        "three",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let after = history(&s);
    assert_eq!(after.len(), restored.len() + 1, "{after:?}");
}

#[test]
fn a_postgres_state_round_trips_through_pg_dump_and_pg_restore() {
    for tool in ["pg_dump", "pg_restore"] {
        assert!(
            std::process::Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is needed (Debian's postgresql-client, which scripts/postgres.sh installs)"
        );
    }
    let s = applied_twice();
    let original = TestDatabase::create("slipway_cli_dump");
    s.ok(&["state", "migrate", "--to", &original.url()]);
    let original_url = original.url();
    use_state(&s, &original_url);
    // Not `state backup`: it would copy the home's SQLite file, stale since the migration.
    let refused = s.expect_code(
        &[
            "state",
            "backup",
            s.dir.path().join("b.db").to_str().expect("utf-8"),
        ],
        1,
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("pg_dump"),
        "{refused:?}"
    );
    assert!(!s.dir.path().join("b.db").exists());
    let before = history(&s);
    let shown = status(&s);
    assert_eq!(before.len(), 2, "{before:?}");

    // Backed up as operations.md says, and restored into an empty database.
    let dump = s.dir.path().join("state.dump");
    let run = |program: &str, args: &[&str]| {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program} runs: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        "pg_dump",
        &[
            "-Fc",
            "-d",
            &original.url(),
            "-f",
            dump.to_str().expect("utf-8"),
        ],
    );
    let restored = TestDatabase::create("slipway_cli_restore");
    run(
        "pg_restore",
        &[
            "--no-owner",
            "-d",
            &restored.url(),
            dump.to_str().expect("utf-8"),
        ],
    );
    drop(original);
    let config = std::fs::read_to_string(&s.config).expect("config");
    std::fs::write(&s.config, config.replace(&original_url, &restored.url())).expect("config");

    assert_eq!(
        history(&s),
        before,
        "the history reads the same from the restored database"
    );
    assert_eq!(status(&s), shown, "and so does status");
    s.commit_dev_stack(
        "shop",
        "  conf: { type: file, path: conf.txt, content: \"three\" }\n",
        "three",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let after = history(&s);
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(
        after.iter().any(|(id, _)| id == "3"),
        "the restored database numbers the next deployment after the others: {after:?}"
    );
}

#[test]
fn hostile_state_settings_are_refused_with_the_fix() {
    let s = applied_twice();
    let wrong = s.expect_code(&["state", "migrate", "--to", "http://127.0.0.1:5432/x"], 1);
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("postgres:// URL"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    use_state(&s, "postgres://postgres:hunter2@127.0.0.1:5432/postgres");
    let out = s.expect_code(&["status"], 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("holds a password") && !stderr.contains("hunter2"),
        "a password in [state] url is refused, and not repeated: {stderr}"
    );
    let config = std::fs::read_to_string(&s.config).expect("config");
    std::fs::write(
        &s.config,
        config.replace(
            "url = \"postgres://postgres:hunter2@127.0.0.1:5432/postgres\"",
            "url = \"postgres://postgres@127.0.0.1:1/nowhere\"",
        ),
    )
    .expect("config");
    let out = s.expect_code(&["status"], 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("postgres://postgres@127.0.0.1:1/nowhere"),
        "an unreachable state says where it looked: {stderr}"
    );
}
