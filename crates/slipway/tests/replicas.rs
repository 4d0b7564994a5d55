//! Two `slipway serve` replicas on one PostgreSQL state: the environments are shared out, each
//! is deployed once per commit, and when one replica is killed with SIGKILL the other takes
//! its environments over once their leases expire.

mod util;

use std::time::Duration;

use slipway_testkit::pg::TestDatabase;
use util::*;

const ENVS: usize = 8;
const T: Duration = Duration::from_secs(30);

fn stack(extra: &str) -> String {
    let envs: Vec<String> = (1..=ENVS)
        .map(|i| format!("e{i}: {{ track: main }}"))
        .collect();
    format!(
        "version: 1\nstack: shared\nenvironments: {{ {} }}\nresources:\n  db: {{ type: postgres.database }}\n{extra}",
        envs.join(", ")
    )
}

/// `(environment, holder)` of every unexpired lease.
fn holders(db: &TestDatabase) -> Vec<(String, String)> {
    db.connect()
        .query(
            "SELECT environment, holder FROM leases \
             WHERE expires_at > EXTRACT(EPOCH FROM clock_timestamp()) * 1000 ORDER BY environment",
            &[],
        )
        .expect("read leases")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// How many environments run `commit`, synced.
fn synced_at(db: &TestDatabase, commit: &str) -> i64 {
    db.connect()
        .query_one(
            "SELECT COUNT(*) FROM environments WHERE sync = 'synced' AND current_commit = $1",
            &[&commit],
        )
        .expect("count")
        .get(0)
}

/// Succeeded deployments per environment and commit, more than one anywhere is a double apply.
fn doubled(db: &TestDatabase) -> Vec<(String, String, i64)> {
    db.connect()
        .query(
            "SELECT environment, commit_sha, COUNT(*) FROM deployments WHERE status = 'succeeded' \
             GROUP BY environment, commit_sha HAVING COUNT(*) > 1",
            &[],
        )
        .expect("count")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[test]
fn two_replicas_share_the_work_and_one_takes_over_when_the_other_is_killed() {
    let database = TestDatabase::create("slipway_replicas");
    let s = Sandbox::new();
    s.write("slipway.yaml", &stack(""));
    let first = s.commit("eight environments");
    util::world::append_config(
        &s,
        &format!(
            "[repo]\npoll_interval = \"300ms\"\n[state]\nurl = \"{}\"\n",
            database.url()
        ),
    );
    let config = std::fs::read_to_string(&s.config).expect("config");
    let start = |name: &str| {
        // Each replica its own home (its node), with the state's key and its own name.
        let home = s.dir.path().join(format!("home-{name}"));
        std::fs::create_dir_all(&home).expect("home");
        let file = s.dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!("{config}[controller]\nreplica = \"{name}\"\nlease = \"1s\"\n"),
        )
        .expect("config");
        let url = format!("file://{}", s.repo.display());
        let mut command = s.cmd(&["serve", "--repo", &url, "--listen", "127.0.0.1:0"]);
        command
            .env("SLIPWAY_HOME", &home)
            .env("SLIPWAY_CONFIG", &file);
        (home, command)
    };
    // The first replica makes the state's key; the second gets a copy, as an operator would.
    let (home1, command1) = start("r1");
    let (mut r1, log1) = serve_from(command1, T);
    let (home2, command2) = start("r2");
    wait_for("r1 makes the state key", T, || {
        home1.join("state.key").is_file().then_some(())
    });
    std::fs::copy(home1.join("state.key"), home2.join("state.key")).expect("copy the key");
    let (r2, log2) = serve_from(command2, T);
    let explain = || {
        format!(
            "leases: {:?}\nreplicas: {:?}\n--- r1\n{}\n--- r2\n{}",
            holders(&database),
            database
                .connect()
                .query("SELECT name, heartbeat_at FROM replicas", &[])
                .map(|rows| rows
                    .iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                    .collect::<Vec<_>>())
                .unwrap_or_default(),
            log1.lock().expect("log").join("\n"),
            log2.lock().expect("log").join("\n")
        )
    };

    wait_for("every environment runs the first commit", T, || {
        (synced_at(&database, &first) == ENVS as i64).then_some(())
    });
    let shared =
        slipway_testkit::wait::wait_for_explained("both replicas hold leases", T, explain, || {
            let holders = holders(&database);
            let r1 = holders.iter().filter(|(_, h)| h == "r1").count();
            (holders.len() == ENVS && r1 > 0 && r1 < ENVS).then_some(holders)
        });
    assert_eq!(doubled(&database), [], "nothing applied twice");

    // r1 dies without a word; a push follows.
    r1.child.kill().expect("kill -9 r1");
    r1.child.wait().expect("reaped");
    s.write(
        "slipway.yaml",
        &stack("  reader: { type: postgres.role, login: false }\n"),
    );
    let second = s.commit("a role in every environment");
    wait_for(
        "r2 brings every environment to the push, r1's too",
        T,
        || (synced_at(&database, &second) == ENVS as i64).then_some(()),
    );
    let after = holders(&database);
    assert!(
        after.iter().all(|(_, h)| h == "r2"),
        "r2 holds every lease now: {after:?} (before: {shared:?})"
    );
    assert_eq!(
        doubled(&database),
        [],
        "nothing applied twice, across the failover"
    );

    // Status through the surviving replica's API says who works on each environment.
    let token = std::fs::read_to_string(home1.join("admin-token")).expect("the first token");
    let api = format!("http://{}", r2.addr);
    let status = s.json(&[
        "--server",
        &api,
        "--token",
        token.trim(),
        "status",
        "--output",
        "json",
    ]);
    let replicas: Vec<&str> = status["environments"]
        .as_array()
        .expect("environments")
        .iter()
        .map(|e| e["replica"].as_str().unwrap_or("none"))
        .collect();
    assert_eq!(replicas, ["r2"; ENVS], "{status:#}");

    // And its metrics count the leases it holds and took.
    let metrics = http_get(r2.port(), "/metrics").expect("r2 serves /metrics");
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics:\n{metrics}"))
    };
    assert_eq!(value("slipway_leases_held"), ENVS as u64);
    assert!(
        value("slipway_leases_acquired_total") >= ENVS as u64,
        "r2 took its own share, then r1's: {metrics}"
    );
}
