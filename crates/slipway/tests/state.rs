//! `slipway state migrate` and `slipway state backup`, and `[state]` pointing the engine at
//! PostgreSQL, through the real binary against the machine's PostgreSQL.

mod util;

use serde_json::Value;
use slipway_testkit::pg::TestDatabase;
use util::Sandbox;

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

#[test]
fn a_backup_of_a_running_home_restores_into_a_home_that_reads_the_same() {
    let s = applied_twice();
    let backup = s.dir.path().join("backup.db");
    let out: Value = s.json(&[
        "state",
        "backup",
        backup.to_str().expect("utf-8"),
        "--output",
        "json",
    ]);
    assert_eq!(out["backup"], backup.to_str().expect("utf-8"), "{out:#}");
    let before = history(&s);

    // Restore: a home with the backup as its state.db and the same key.
    let restored = s.dir.path().join("restored");
    std::fs::create_dir_all(&restored).expect("mkdir");
    std::fs::copy(&backup, restored.join("state.db")).expect("restore the file");
    std::fs::copy(s.home.join("state.key"), restored.join("state.key")).expect("the key");
    let out = s.ok_with(
        &["history", "--env", "dev", "--output", "json"],
        &[("SLIPWAY_HOME", restored.to_str().expect("utf-8"))],
    );
    let restored_history: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        restored_history["deployments"].as_array().map(Vec::len),
        Some(before.len()),
        "{restored_history:#}"
    );

    let again = s.expect_code(&["state", "backup", backup.to_str().expect("utf-8")], 1);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("never overwrites"),
        "a backup never overwrites a file"
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
