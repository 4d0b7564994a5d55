//! A rolling upgrade of three `slipway serve` replicas sharing one PostgreSQL state.
//!
//! # What is simulated
//! No older build of Slipway is at hand, so "old" and "new" are one binary: a replica started
//! with `SLIPWAY_TEST_NEXT_SCHEMA=1` knows one migration more than the build ships
//! (`slipway_state::schema::REHEARSAL`, additive: a one-row table `slipway_rehearsal` and a
//! column `environments.rehearsal`), exactly as the next release would, and is the "new"
//! binary; a replica without it is the "old" one. Nothing else differs between them: the
//! test exercises the schema's part of an upgrade (the first new replica migrating the shared
//! state while old ones run, the old ones stepping aside), not a change of behaviour.
//!
//! # What is checked
//! Three old replicas (r1, r2, r3) serve six floating environments (a `postgres.database`
//! each); each is stopped in turn (SIGTERM) and started again as new, with the same name and
//! home, as an operator upgrades one node at a time. A trigger in the test database logs
//! every row written to Slipway's tables with the writing session's `application_name`
//! (`r1-old`, `r1-new`, …). After each step a push is deployed everywhere. Checked: every
//! environment converges to every push; no environment and commit has two succeeded
//! deployments; the schema is migrated once, by the first new replica; no old replica writes
//! a row after the migration, while they keep answering reads (and `/healthz` says they
//! stepped aside); an old binary then refuses to start on the state.

mod util;

use std::time::Duration;

use slipway_testkit::pg::TestDatabase;
use util::replicas::*;
use util::*;

const ENVS: usize = 6;
const T: Duration = Duration::from_secs(60);
const NAMES: [&str; 3] = ["r1", "r2", "r3"];

/// The stack: [`ENVS`] environments with a database each, and `roles` roles (one more per
/// push, so that each push changes every environment).
fn stack(roles: usize) -> String {
    let envs: Vec<String> = (1..=ENVS)
        .map(|i| format!("e{i}: {{ track: main }}"))
        .collect();
    let roles: String = (1..=roles)
        .map(|i| format!("  reader{i}: {{ type: postgres.role, login: false }}\n"))
        .collect();
    format!(
        "version: 1\nstack: upgrade\nenvironments: {{ {} }}\nresources:\n  db: {{ type: postgres.database }}\n{roles}",
        envs.join(", ")
    )
}

/// Logs every row written to the state's tables (those there now: the schema's) with the
/// writing session's name, in order.
const WRITE_LOG: &str = r#"
CREATE TABLE write_log (
    id BIGSERIAL PRIMARY KEY,
    session TEXT NOT NULL,
    tbl TEXT NOT NULL,
    op TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO write_log (session, tbl, op)
    VALUES (current_setting('application_name'), TG_TABLE_NAME, TG_OP);
    RETURN NULL;
END $$;
DO $$
DECLARE t text;
BEGIN
    FOR t IN SELECT tablename FROM pg_tables
             WHERE schemaname = 'public' AND tablename <> 'write_log' LOOP
        EXECUTE format('CREATE TRIGGER log_write AFTER INSERT OR UPDATE OR DELETE ON %I '
                       'FOR EACH ROW EXECUTE FUNCTION log_write()', t);
    END LOOP;
END $$;
"#;

/// One replica process and what it said.
struct Running {
    server: Server,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    session: String,
}

struct Cluster {
    s: Sandbox,
    database: TestDatabase,
    replicas: Vec<Running>,
    roles: usize,
}

impl Cluster {
    /// Starts replica `name` (its home kept across versions), old or new.
    fn start(&self, name: &str, new: bool) -> Running {
        let session = format!("{name}-{}", if new { "new" } else { "old" });
        let config = replica_config(
            &self.s,
            &self.database,
            ReplicaSettings {
                session: &session,
                ..ReplicaSettings::named(name)
            },
        );
        let home = replica_home(&self.s, name);
        let first = replica_home(&self.s, NAMES[0]).join("state.key");
        if name != NAMES[0] {
            // Every replica has the state's key, which the first made.
            wait_for("r1 makes the state key", T, || {
                first.is_file().then_some(())
            });
            std::fs::copy(&first, home.join("state.key")).expect("copy the key");
        }
        let mut command = serve_command(&self.s, &home, &config);
        if new {
            command.env("SLIPWAY_TEST_NEXT_SCHEMA", "1");
        }
        let (server, log) = serve_from(command, T);
        Running {
            server,
            log,
            session,
        }
    }

    fn explain(&self) -> String {
        let mut text = format!(
            "leases: {:?}\nschema: {}\n",
            holders(&self.database),
            schema_version(&self.database)
        );
        for r in &self.replicas {
            text.push_str(&format!(
                "--- {}\n{}\n",
                r.session,
                r.log.lock().expect("log").join("\n")
            ));
        }
        text
    }

    fn wait<U>(&self, what: &str, check: impl FnMut() -> Option<U>) -> U {
        slipway_testkit::wait::wait_for_explained(what, T, || self.explain(), check)
    }

    /// Pushes a commit that changes every environment and waits until each runs it.
    fn push_and_converge(&mut self, when: &str) -> String {
        self.roles += 1;
        self.s.write("slipway.yaml", &stack(self.roles));
        let commit = self.s.commit(&format!("role {} ({when})", self.roles));
        self.wait(&format!("every environment runs the push {when}"), || {
            (synced_at(&self.database, &commit) == ENVS as i64).then_some(())
        });
        assert_eq!(doubled(&self.database), [], "nothing applied twice {when}");
        commit
    }
}

fn schema_version(db: &TestDatabase) -> i64 {
    db.connect()
        .query_one("SELECT version FROM slipway_schema", &[])
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

/// `(id, session)` of every logged write of `slipway_schema` (a migration's version).
fn schema_writes(db: &TestDatabase) -> Vec<(i64, String)> {
    db.connect()
        .query(
            "SELECT id, session FROM write_log WHERE tbl = 'slipway_schema' ORDER BY id",
            &[],
        )
        .expect("read the write log")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// `(session, table, operation)` of the writes of old replicas logged after `id`.
fn old_writes_after(db: &TestDatabase, id: i64) -> Vec<(String, String, String)> {
    db.connect()
        .query(
            "SELECT session, tbl, op FROM write_log WHERE id > $1 AND session LIKE '%-old' \
             ORDER BY id",
            &[&id],
        )
        .expect("read the write log")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// `/healthz` of `server`: its status code and body.
fn health(server: &Server) -> (u16, serde_json::Value) {
    api_request(&server.addr, "GET", "/healthz", "", None)
}

#[test]
fn three_replicas_are_upgraded_one_at_a_time_and_the_old_ones_step_aside_writing_nothing() {
    let database = TestDatabase::create("slipway_upgrade");
    let s = Sandbox::new();
    s.write("slipway.yaml", &stack(0));
    let first = s.commit("six environments");
    let mut cluster = Cluster {
        s,
        database,
        replicas: Vec::new(),
        roles: 0,
    };
    for name in NAMES {
        let running = cluster.start(name, false);
        cluster.replicas.push(running);
    }
    cluster.wait("every environment runs the first commit", || {
        (synced_at(&cluster.database, &first) == ENVS as i64).then_some(())
    });
    let shipped = schema_version(&cluster.database);
    cluster
        .database
        .connect()
        .batch_execute(WRITE_LOG)
        .expect("install the write log");
    cluster.push_and_converge("before the upgrade");
    assert!(
        !old_writes_after(&cluster.database, 0).is_empty(),
        "the write log sees the old replicas' writes"
    );
    let token = std::fs::read_to_string(replica_home(&cluster.s, "r1").join("admin-token"))
        .expect("the first admin token");
    let token = token.trim();

    let mut migration = None;
    for (step, name) in NAMES.iter().enumerate() {
        // Upgrade this node: stop the old process as a service manager would, start the new.
        let mut old = cluster.replicas.remove(step);
        signal(&old.server, "-TERM");
        old.server.child.wait().expect("the old replica stops");
        let new = cluster.start(name, true);
        cluster.replicas.insert(step, new);

        if step == 0 {
            // The first new replica migrated the state, once; the old ones step aside.
            assert_eq!(
                schema_version(&cluster.database),
                shipped + 1,
                "{}",
                cluster.explain()
            );
            let writes = schema_writes(&cluster.database);
            assert!(
                matches!(writes.as_slice(), [(_, session)] if session == "r1-new"),
                "one write of the schema's version, by the first new replica: {writes:?}"
            );
            migration = Some(writes[0].0);
            for old in &cluster.replicas[1..] {
                let (code, body) = cluster.wait("an old replica says it stepped aside", || {
                    let (code, body) = health(&old.server);
                    (code == 503).then_some((code, body))
                });
                assert!(
                    body["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("stepped aside")),
                    "{code} {body:#}"
                );
                let (code, answer) = api_request(
                    &old.server.addr,
                    "POST",
                    "/api/v1/environments/e1/sync",
                    token,
                    Some(serde_json::json!({})),
                );
                assert_eq!(
                    code, 503,
                    "a change asked of a stepped-aside replica is refused: {answer}"
                );
                assert!(
                    answer["hint"]
                        .as_str()
                        .is_some_and(|h| h.contains("upgraded replica")),
                    "{answer}"
                );
                let (code, listed) =
                    api_request(&old.server.addr, "GET", "/api/v1/environments", token, None);
                assert_eq!(
                    code, 200,
                    "a stepped-aside replica still answers reads: {listed}"
                );
                assert_eq!(
                    listed["environments"].as_array().map(Vec::len),
                    Some(ENVS),
                    "{listed:#}"
                );
                cluster.wait("the old replica says why it stopped working", || {
                    old.log
                        .lock()
                        .expect("log")
                        .iter()
                        .any(|l| l.contains("steps aside"))
                        .then_some(())
                });
            }
        }
        let (code, body) = health(&cluster.replicas[step].server);
        assert_eq!(code, 200, "the new replica is healthy: {body}");
        cluster.push_and_converge(&format!("after upgrading {name}"));
        let migration = migration.expect("set at the first step");
        assert_eq!(
            old_writes_after(&cluster.database, migration),
            [],
            "no old replica wrote after the migration (step {})",
            step + 1
        );
    }

    // The migration ran once (its table has its one row), by the first new replica only.
    assert_eq!(schema_writes(&cluster.database).len(), 1);
    let rehearsed: i64 = cluster
        .database
        .connect()
        .query_one("SELECT COUNT(*) FROM slipway_rehearsal", &[])
        .expect("the rehearsed migration's table")
        .get(0);
    assert_eq!(rehearsed, 1);
    cluster.wait("the new replicas share every environment out", || {
        let held = holders(&cluster.database);
        (held.len() == ENVS && NAMES.iter().all(|n| held.iter().any(|(_, h)| h == n))).then_some(())
    });

    // An old binary no longer starts on the state.
    let old_config = cluster.s.dir.path().join("r1-old.toml");
    let out = cluster
        .s
        .cmd(&["status"])
        .env("SLIPWAY_CONFIG", &old_config)
        .env("SLIPWAY_HOME", replica_home(&cluster.s, "r1"))
        .output()
        .expect("slipway runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("upgrade slipway"),
        "an old binary refuses a newer schema: {stderr}"
    );
    // Nor would a later release that took the rehearsed version for its own.
    cluster
        .database
        .connect()
        .batch_execute(&format!("UPDATE slipway_schema SET version = {shipped}"))
        .expect("pretend");
    let out = cluster
        .s
        .cmd(&["status"])
        .env("SLIPWAY_CONFIG", &old_config)
        .env("SLIPWAY_HOME", replica_home(&cluster.s, "r1"))
        .output()
        .expect("slipway runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("rehearsing the next schema"),
        "a state migrated by a rehearsal is refused by binaries that do not rehearse: {stderr}"
    );
}
