//! What the tests of several `slipway serve` replicas on one PostgreSQL state share: each
//! replica's configuration and command, and what the state says of leases, deployments and
//! environments.

use std::path::{Path, PathBuf};
use std::process::Command;

use slipway_testkit::pg::TestDatabase;

use super::{Sandbox, Server, http_get};

/// How one replica is set up beside the sandbox's engine configuration.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaSettings<'a> {
    /// `[controller] replica`.
    pub name: &'a str,
    /// `[repo] poll_interval`.
    pub poll: &'a str,
    /// `[controller] lease`.
    pub lease: &'a str,
    /// The port it reaches PostgreSQL on (5432, or a proxy's).
    pub port: u16,
    /// Its sessions' `application_name`, which says in PostgreSQL which process wrote.
    pub session: &'a str,
}

impl ReplicaSettings<'_> {
    /// Replica `name` polling every 300 ms with 1 s leases, straight to PostgreSQL, its
    /// sessions named after it.
    pub fn named(name: &str) -> ReplicaSettings<'_> {
        ReplicaSettings {
            name,
            poll: "300ms",
            lease: "1s",
            port: 5432,
            session: name,
        }
    }
}

/// Writes `<sandbox>/<session>.toml`, the sandbox's engine configuration plus `settings`,
/// with `database` as the state, and returns its path.
pub fn replica_config(s: &Sandbox, database: &TestDatabase, settings: ReplicaSettings) -> PathBuf {
    let config = std::fs::read_to_string(&s.config).expect("config");
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?application_name={}",
        settings.port,
        database.name(),
        settings.session
    );
    let file = s.dir.path().join(format!("{}.toml", settings.session));
    std::fs::write(
        &file,
        format!(
            "{config}[controller]\nreplica = \"{}\"\nlease = \"{}\"\n\
             [repo]\npoll_interval = \"{}\"\n[state]\nurl = \"{url}\"\n",
            settings.name, settings.lease, settings.poll
        ),
    )
    .expect("config");
    file
}

/// The home of replica `name` in the sandbox (made if needed).
pub fn replica_home(s: &Sandbox, name: &str) -> PathBuf {
    let home = s.dir.path().join(format!("home-{name}"));
    std::fs::create_dir_all(&home).expect("home");
    home
}

/// `slipway serve` of the sandbox's repository (as a URL) on a free port, with `home` and
/// `config`.
pub fn serve_command(s: &Sandbox, home: &Path, config: &Path) -> Command {
    let url = format!("file://{}", s.repo.display());
    let mut command = s.cmd(&["serve", "--repo", &url, "--listen", "127.0.0.1:0"]);
    command
        .env("SLIPWAY_HOME", home)
        .env("SLIPWAY_CONFIG", config);
    command
}

/// `(environment, holder)` of every unexpired lease.
pub fn holders(db: &TestDatabase) -> Vec<(String, String)> {
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
pub fn synced_at(db: &TestDatabase, commit: &str) -> i64 {
    db.connect()
        .query_one(
            "SELECT COUNT(*) FROM environments WHERE sync = 'synced' AND current_commit = $1",
            &[&commit],
        )
        .expect("count")
        .get(0)
}

/// Succeeded deployments per environment and commit, more than one anywhere is a double apply.
pub fn doubled(db: &TestDatabase) -> Vec<(String, String, i64)> {
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

/// The value of `name` in `server`'s `/metrics`.
pub fn metric(server: &Server, name: &str) -> u64 {
    let metrics = http_get(server.port(), "/metrics").expect("/metrics answers");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics:\n{metrics}"))
}

/// Sends `signal` (`-STOP`, `-TERM`, …) to `server`.
pub fn signal(server: &Server, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &server.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal}");
}
