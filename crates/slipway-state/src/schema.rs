//! The schema, as an append-only list of migrations, numbered by `PRAGMA user_version` on
//! SQLite and by the one row of `slipway_schema` on PostgreSQL; the same list serves both (in
//! PostgreSQL's dialect there, see `db::to_postgres`).
//!
//! Migration `i` (0-based) takes the database from version `i` to `i + 1`. Never edit a
//! migration that has shipped: add a new one. SQLite cannot alter a foreign key or a column
//! constraint in place; a migration that rebuilds a table must do so with
//! `PRAGMA foreign_keys` off, which is why status vocabularies are checked in Rust and not by
//! `CHECK` constraints.
//!
//! # Upgrading replicas that share one state
//! The first process of a newer Slipway to open the database migrates it; older processes
//! still running on it step aside: their connection guards the schema (`Conn::guard_schema`),
//! so none of their writes commits after a migration they do not know, and the first write
//! (or schema check) that meets the newer version stops them writing for good. They keep
//! reading, which is why a migration must be additive: add tables, columns with defaults and
//! indexes; drop or rename only in a later release, once no running version reads them. An
//! older binary that starts on a newer schema refuses to open it ([`StateError::NewerSchema`]).
//!
//! # Rehearsing the next schema (tests only)
//! With `SLIPWAY_TEST_NEXT_SCHEMA=1` in its environment, a binary knows one migration more
//! than it ships, [`REHEARSAL`] (additive: a table of one row and a column on
//! `environments`), and so plays the next release against the binaries that do not have the
//! variable: that is how the rolling-upgrade test (`crates/slipway/tests/upgrade.rs`) gets an
//! "old" and a "new" binary from one build. A state it migrated is refused by every binary
//! without the variable, this one's successors included (their real next migration would
//! otherwise be taken as applied): it is for throwaway test states only.

use crate::StateError;
use crate::db::{Conn, DbError, Dialect, Exec, params};

/// Foreign keys only where deleting the parent must delete the child: an environment owns its
/// resources and ports. Deployments and events name their environment without a foreign key so
/// that they outlive it as history (a recreated environment of the same name continues it).
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE environments (
    name           TEXT PRIMARY KEY NOT NULL,
    kind           TEXT NOT NULL,
    stack          TEXT NOT NULL,
    repo           TEXT NOT NULL,
    tracked_ref    TEXT,
    desired_commit TEXT,
    current_commit TEXT,
    hash           TEXT,
    sync           TEXT NOT NULL,
    health         TEXT NOT NULL,
    message        TEXT,
    owner          TEXT,
    ttl_ms         INTEGER,
    expires_at     INTEGER,
    pinned         INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
) STRICT;

CREATE TABLE deployments (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    environment    TEXT NOT NULL,
    commit_sha     TEXT NOT NULL,
    hash           TEXT NOT NULL,
    reference      TEXT,
    plan           TEXT NOT NULL,
    status         TEXT NOT NULL,
    error          TEXT,
    who            TEXT NOT NULL,
    started_at     INTEGER NOT NULL,
    finished_at    INTEGER,
    summary        TEXT NOT NULL
) STRICT;
CREATE INDEX deployments_by_environment ON deployments (environment, id);

CREATE TABLE resources (
    environment    TEXT NOT NULL
                   REFERENCES environments (name) ON DELETE CASCADE ON UPDATE CASCADE,
    name           TEXT NOT NULL,
    type_name      TEXT NOT NULL,
    status         TEXT NOT NULL,
    config         TEXT NOT NULL,
    resolved_hash  TEXT,
    outputs        TEXT NOT NULL,
    secret_outputs TEXT NOT NULL,
    live           TEXT NOT NULL,
    depends_on     TEXT NOT NULL,
    error          TEXT,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (environment, name)
) STRICT;

CREATE TABLE ports (
    environment    TEXT NOT NULL
                   REFERENCES environments (name) ON DELETE CASCADE ON UPDATE CASCADE,
    resource       TEXT NOT NULL,
    name           TEXT NOT NULL,
    port           INTEGER NOT NULL UNIQUE CHECK (port BETWEEN 1 AND 65535),
    PRIMARY KEY (environment, resource, name)
) STRICT;

CREATE TABLE events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    environment    TEXT,
    kind           TEXT NOT NULL,
    message        TEXT NOT NULL,
    data           TEXT NOT NULL,
    at             INTEGER NOT NULL
) STRICT;
CREATE INDEX events_by_environment ON events (environment, id);
"#,
    r#"
ALTER TABLE environments ADD COLUMN definition TEXT;

CREATE TABLE tokens (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    hash           TEXT NOT NULL UNIQUE,
    role           TEXT NOT NULL,
    name           TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    last_used_at   INTEGER,
    revoked_at     INTEGER
) STRICT;

CREATE TABLE audit (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    at             INTEGER NOT NULL,
    who            TEXT NOT NULL,
    action         TEXT NOT NULL,
    target         TEXT,
    outcome        TEXT NOT NULL,
    detail         TEXT NOT NULL
) STRICT;
CREATE INDEX audit_by_time ON audit (at);
"#,
    r#"
ALTER TABLE environments ADD COLUMN protected INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
CREATE TABLE pull_requests (
    number          INTEGER PRIMARY KEY,
    title           TEXT NOT NULL,
    author          TEXT NOT NULL,
    head_sha        TEXT NOT NULL,
    head_ref        TEXT NOT NULL,
    base_ref        TEXT NOT NULL,
    is_fork         INTEGER NOT NULL,
    state           TEXT NOT NULL,
    preview_allowed INTEGER NOT NULL,
    url             TEXT NOT NULL,
    updated_at      INTEGER NOT NULL,
    stale_approvers TEXT NOT NULL DEFAULT '[]'
) STRICT;

CREATE TABLE deliveries (
    id             TEXT PRIMARY KEY,
    received_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE locks (
    environment    TEXT PRIMARY KEY,
    pull_request   INTEGER NOT NULL,
    who            TEXT NOT NULL,
    at             INTEGER NOT NULL
) STRICT;

CREATE TABLE merged_commits (
    sha            TEXT PRIMARY KEY,
    pull_request   INTEGER NOT NULL,
    approved       INTEGER NOT NULL,
    at             INTEGER NOT NULL
) STRICT;
"#,
    // Refused calls are aggregated (one row per source and reason per minute, with a count),
    // and audit, events and deliveries are pruned by age: indexes for both.
    r#"
ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
CREATE INDEX events_by_kind ON events (kind, environment, id);
CREATE INDEX events_by_time ON events (at);
CREATE INDEX deliveries_by_time ON deliveries (received_at);
"#,
    // The uid (= gid) each environment's code runs as, when the engine runs as root. No
    // foreign key: it is allocated before the environment's record and directories exist,
    // and released only after they are gone.
    r#"
CREATE TABLE env_uids (
    environment    TEXT PRIMARY KEY NOT NULL,
    uid            INTEGER NOT NULL UNIQUE,
    allocated_at   INTEGER NOT NULL
) STRICT;
"#,
    // The branch a pull request merged into when Slipway first saw it: an approval was given
    // against that base, so a pull request retargeted since is not applied on it. Existing
    // rows take the base recorded now.
    r#"
ALTER TABLE pull_requests ADD COLUMN opened_base TEXT;
UPDATE pull_requests SET opened_base = base_ref;
"#,
    // The last uid allocated: the next goes above it (wrapping at the range's end), so that a
    // released uid is the last to serve again (what an environment left in SysV IPC or
    // `/dev/shm` does not meet the next one at once).
    r#"
CREATE TABLE uid_cursor (
    id             INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    last           INTEGER NOT NULL
) STRICT;
INSERT INTO uid_cursor (id, last) SELECT 1, MAX(uid) FROM env_uids WHERE uid IS NOT NULL
    HAVING COUNT(*) > 0;
"#,
    // The branch a merged pull request was merged into: `require_pr` takes a merge only into
    // the branch the environment tracks. Rows from before have none and do not count.
    r#"
ALTER TABLE merged_commits ADD COLUMN base_ref TEXT;
"#,
    // A destroy is one event kind: the engine wrote `destroyed` where the controller wrote
    // `environment.destroyed`. Event kinds are a closed vocabulary now, read strictly.
    r#"
UPDATE events SET kind = 'environment.destroyed' WHERE kind = 'destroyed';
"#,
    // Several replicas on one PostgreSQL state: who is alive (heartbeats by the database's
    // clock) and who works on which environment (a lease with a fencing epoch that never
    // decreases: a lease's row stays after it is released or expires, so the next holder's
    // epoch continues it; no foreign key, a lease may precede its environment's record).
    r#"
CREATE TABLE replicas (
    name           TEXT PRIMARY KEY NOT NULL,
    advertise      TEXT,
    started_at     INTEGER NOT NULL,
    heartbeat_at   INTEGER NOT NULL
) STRICT;

CREATE TABLE leases (
    environment    TEXT PRIMARY KEY NOT NULL,
    holder         TEXT NOT NULL,
    epoch          INTEGER NOT NULL,
    acquired_at    INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL
) STRICT;
"#,
    // The web UI's browser sessions, in the state so that every replica knows them and a
    // restart keeps them (`sessions.rs`): by the SHA-256 of their id, never the id. No
    // foreign key to `tokens`: a session names its token's hash, looked up on every request.
    r#"
CREATE TABLE browser_sessions (
    id_hash        TEXT PRIMARY KEY NOT NULL,
    token_hash     TEXT NOT NULL,
    csrf           TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL
) STRICT;
CREATE INDEX browser_sessions_by_end ON browser_sessions (expires_at);
"#,
    // Work one replica hands to the replica that works on an environment: a pull request's
    // command about it, or a lock released, heard by a replica that does not hold it. Kept
    // until done, so that it outlives either replica (`handoffs.rs`). No foreign key: it may
    // outlive its environment, and is then done by any replica.
    r#"
CREATE TABLE handoffs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    environment    TEXT NOT NULL,
    work           TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    taken_by       TEXT,
    taken_epoch    INTEGER
) STRICT;
"#,
    // The key a shared state is sealed with, by the public instance id it makes: every
    // replica's home must hold the same `state.key` (`store::shared_key`). One row at most.
    r#"
CREATE TABLE state_key (
    id             INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    instance       TEXT NOT NULL,
    recorded_at    INTEGER NOT NULL
) STRICT;
"#,
    // Previews (issue 15): whether an environment's processes run, sleep for want of
    // requests or wait for a slot in its family (`activity`, since `activity_since`; a queued
    // one's place is its `queued_at`), and when its preview URL last answered a request
    // (`last_request_at`, written by the routers alone, never by a whole-record write).
    r#"
ALTER TABLE environments ADD COLUMN activity TEXT NOT NULL DEFAULT 'awake';
ALTER TABLE environments ADD COLUMN activity_since INTEGER;
ALTER TABLE environments ADD COLUMN queued_at INTEGER;
ALTER TABLE environments ADD COLUMN last_request_at INTEGER;
"#,
    // Who may open an environment's preview URL (`public`, `private`), as its commit's
    // `environments:` entry says; NULL for environments not applied since, which the router
    // reads by their kind (static ones public, the others private).
    r#"
ALTER TABLE environments ADD COLUMN access TEXT;
"#,
    // Notifications (issue 15, `[notify.NAME]`, `notifications.rs`): the one cursor of the
    // notifier over the event log, the last state notified per receiver, environment and kind
    // (deduplication: one notification per state change, not per poll), and the outbox of
    // notifications not yet delivered, with their retry schedule and claim. No foreign key:
    // a notification outlives its environment (`expired` is about one that is gone).
    r#"
CREATE TABLE notify_cursor (
    id             INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    last_event     INTEGER NOT NULL
) STRICT;
CREATE TABLE notify_last (
    receiver       TEXT NOT NULL,
    environment    TEXT NOT NULL,
    kind           TEXT NOT NULL,
    state_key      TEXT NOT NULL,
    PRIMARY KEY (receiver, environment, kind)
) STRICT;
CREATE TABLE notify_outbox (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    receiver       TEXT NOT NULL,
    environment    TEXT,
    kind           TEXT NOT NULL,
    payload        TEXT NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    next_attempt   INTEGER NOT NULL,
    claimed_until  INTEGER,
    last_error     TEXT,
    created_at     INTEGER NOT NULL
) STRICT;
CREATE INDEX notify_outbox_due ON notify_outbox (next_attempt);
"#,
    // Sleep and idle expiry (issue 15): the family's `sleep_after` and `idle_ttl` in force for
    // an environment, recorded at each apply from the commit it runs; when a deploy of a new
    // commit, a wake or an extension last touched it (idle time counts from the latest of that,
    // its last request and its creation); and when the warning before its idle expiry was given.
    r#"
ALTER TABLE environments ADD COLUMN sleep_after_ms INTEGER;
ALTER TABLE environments ADD COLUMN idle_ttl_ms INTEGER;
ALTER TABLE environments ADD COLUMN touched_at INTEGER;
ALTER TABLE environments ADD COLUMN idle_warned_at INTEGER;
"#,
    // The policy gate (issue 16): a policy owner's `/slipway approve-policies`, valid for the
    // pull request's head commit it was given for only; a pull request's labels, which
    // policies read.
    r#"
CREATE TABLE policy_approvals (
    pull_request   INTEGER NOT NULL,
    head_sha       TEXT NOT NULL,
    who            TEXT NOT NULL,
    at             INTEGER NOT NULL,
    PRIMARY KEY (pull_request, head_sha)
) STRICT;
ALTER TABLE pull_requests ADD COLUMN labels TEXT NOT NULL DEFAULT '[]';
"#,
    // Sealed values v2 (`seal`'s docs), which a binary from before cannot open: the version
    // moves, so that an older binary refuses a SQLite state that may hold them instead of
    // failing on each value. (A PostgreSQL state is still sealed as v1 by this release, which
    // older replicas read.) The table lists the formats this version opens, for the record.
    r#"
CREATE TABLE sealed_formats (
    format         TEXT PRIMARY KEY NOT NULL
) STRICT;
INSERT INTO sealed_formats (format) VALUES ('v1'), ('v2');
"#,
    // Who pushed each head (security): the pull-request gate never counts an approval by
    // someone who pushed the commit it approves. `source` is where the push was seen: a
    // branch's full ref (a push webhook) or `pull/N` (a pull request's `synchronize`, or its
    // `opened` by its author). Every pusher of a commit is kept, not only the last. The heads
    // of the pull requests open when a state is upgraded are taken as their authors' pushes
    // (what the gate assumed until then), so that an upgrade does not hold every one of them
    // until its next push; a new state has none. And when each pull request's head was
    // first seen: a `/slipway preview` or `approve-policies` naming no commit does not take a
    // head newer than its author can have read.
    r#"
CREATE TABLE head_pushes (
    source         TEXT NOT NULL,
    sha            TEXT NOT NULL,
    pusher         TEXT NOT NULL,
    at             INTEGER NOT NULL,
    PRIMARY KEY (source, sha, pusher)
) STRICT;
INSERT INTO head_pushes (source, sha, pusher, at)
    SELECT 'pull/' || number, head_sha, author, updated_at FROM pull_requests
    WHERE state = 'open';
ALTER TABLE pull_requests ADD COLUMN head_seen_at INTEGER;
"#,
    // The rules a static environment's deployed commit declares (`protected`, `require_pr`,
    // `apply_requirements`, `windows`; JSON, the engine's `Rules::to_record`), recorded with
    // its deployment: they stay in force when that commit can no longer be read (a force
    // push, then the mirror's gc), rather than being passed over.
    r#"
ALTER TABLE deployments ADD COLUMN rules TEXT;
"#,
];

/// The schema version this binary writes: the number of migrations it knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The one migration past [`MIGRATIONS`] that a binary rehearsing the next schema knows (see
/// the module's documentation). It records itself in a table that a second run could not
/// create again, so a test can tell it ran exactly once.
pub(crate) const REHEARSAL: &str = r#"
CREATE TABLE slipway_rehearsal (
    id             INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    note           TEXT NOT NULL
) STRICT;
INSERT INTO slipway_rehearsal (id, note) VALUES (1, 'the next schema, rehearsed');
ALTER TABLE environments ADD COLUMN rehearsal TEXT;
"#;

/// A new SQLite state's schema and rows at version `.0`: what the first `.0` migrations make,
/// as the statements that make it again (the schema's own text, as SQLite keeps it, then the
/// rows). A new home runs these instead of the migrations: some 30 `CREATE`s against twenty-one
/// migrations, whose `ALTER TABLE`s each make SQLite read the whole schema again (2 ms against
/// 4 to 7 here). A test makes it from the migrations and compares
/// (`the_fresh_schema_is_what_the_migrations_make`); `SLIPWAY_BLESS=1` rewrites the file.
/// Behind [`SCHEMA_VERSION`], it is followed by the migrations it lacks. (So a migration
/// must make the same rows wherever it runs: no time, no random value.)
const FRESH_SQLITE: (i64, &str) = (22, include_str!("schema_fresh_sqlite.sql"));

/// The variable that makes a binary rehearse the next schema.
const REHEARSE_VARIABLE: &str = "SLIPWAY_TEST_NEXT_SCHEMA";

/// Whether this process rehearses the next schema (`SLIPWAY_TEST_NEXT_SCHEMA=1`).
fn rehearsing() -> bool {
    std::env::var_os(REHEARSE_VARIABLE).is_some_and(|v| v == "1")
}

/// The newest schema version this process understands: [`SCHEMA_VERSION`], or one more when
/// it rehearses the next schema.
pub(crate) fn understood() -> i64 {
    SCHEMA_VERSION + i64::from(rehearsing())
}

/// The migrations this process knows, in order.
fn migrations() -> impl Iterator<Item = &'static str> {
    MIGRATIONS
        .iter()
        .copied()
        .chain(rehearsing().then_some(REHEARSAL))
}

/// Brings the database up to [`SCHEMA_VERSION`]: every pending migration in one transaction
/// ([`apply_pending`]).
///
/// The version is read again inside the write transaction, so two processes opening a fresh
/// database at once apply each migration exactly once: the second waits for the lock, then
/// sees the version moved and applies only what is still missing (nothing). On PostgreSQL the
/// lock is `slipway_schema`'s, taken in that transaction. A state already at the version
/// takes no write lock at all.
pub(crate) fn migrate(conn: &mut Conn, location: &str) -> Result<(), StateError> {
    let open_error = |source| StateError::Open {
        location: location.to_owned(),
        source,
    };
    if conn.dialect() == Dialect::Postgres {
        // Every other table of the state is made by a plain `CREATE TABLE`, which fails on
        // one someone made first; this one alone is made `IF NOT EXISTS`, so whatever holds
        // its name must be a table of this user's: checked here, and again under the lock
        // below, between its `CREATE` and its `INSERT` (another role may hold that lock while
        // it makes one).
        let (made, foreign) = schema_table(conn).map_err(open_error)?;
        if let Some(owner) = foreign {
            return Err(foreign_schema_table(conn, location, owner));
        }
        // `IF NOT EXISTS` does not make two sessions creating the table at once safe (one
        // fails on the catalog's unique index): they take turns, under a lock of this
        // transaction's that no other statement of Slipway's takes. Any role that can connect
        // can take an advisory lock too (an environment's, on a shared server): it is taken
        // only while the table is missing, and waited for at most 30 s, then the open fails
        // rather than hang.
        let insert =
            "INSERT INTO slipway_schema (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING";
        let batch = if made == 1 {
            format!("BEGIN; SET LOCAL lock_timeout = '30s'; {insert}; COMMIT;")
        } else {
            let check = format!(
                "BEGIN IF EXISTS (SELECT {SCHEMA_TABLES} AND NOT ({OURS})) THEN \
                 RAISE EXCEPTION 'slipway_schema is not a table of this user'; END IF; END"
            );
            format!(
                "BEGIN; SET LOCAL lock_timeout = '30s';\n\
                 SELECT pg_advisory_xact_lock(7236832237734584697);\n\
                 CREATE TABLE IF NOT EXISTS slipway_schema (\n\
                 id BIGINT PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL);\n\
                 DO '{}';\n{insert};\nCOMMIT;",
                check.replace('\'', "''")
            )
        };
        conn.batch(&batch).map_err(|source| {
            // The failed statement left its transaction aborted: ended, then asked why.
            let _ = conn.batch("ROLLBACK");
            match schema_table(conn) {
                Ok((_, Some(owner))) => foreign_schema_table(conn, location, owner),
                _ => open_error(source),
            }
        })?;
    }
    let found = version(conn).map_err(open_error)?;
    refuse_newer(location, found)?;
    if !rehearsing() && rehearsed(conn).map_err(open_error)? {
        return Err(StateError::InvalidValue {
            field: "state database",
            value: format!(
                "{location}, migrated by a binary rehearsing the next schema \
                 ({REHEARSE_VARIABLE}=1, for tests only)"
            ),
            allowed: &[
                "a state migrated by released versions of slipway; restore it from a backup",
            ],
        });
    }
    let pending: Vec<&str> = migrations().collect();
    let fresh = (conn.dialect() == Dialect::Sqlite).then_some(FRESH_SQLITE);
    apply_pending(conn, location, found, &pending, fresh)
}

/// Takes the database from version `found` to `list.len()` by applying `list[found..]`, all
/// in one transaction: a fresh state is made with one commit, not one per migration, and an
/// upgrade that fails half way leaves the schema it found. Nothing (no write lock) when the
/// database is already there. A database at version 0 runs `fresh`'s statements, which make
/// what `list[..fresh.0]` would (see [`FRESH_SQLITE`]), then the rest of `list`.
fn apply_pending(
    conn: &mut Conn,
    location: &str,
    found: i64,
    list: &[&str],
    fresh: Option<(i64, &str)>,
) -> Result<(), StateError> {
    let target = i64::try_from(list.len()).expect("the migration list is short");
    if found >= target {
        return Ok(());
    }
    let failed = |version: i64| {
        move |source| StateError::Migrate {
            location: location.to_owned(),
            version,
            source,
        }
    };
    conn.transaction(&["slipway_schema"], |tx| {
        let current = version(tx).map_err(failed(found + 1))?;
        refuse_newer(location, current)?;
        let mut done = current;
        if let Some((made, sql)) = fresh.filter(|(made, _)| current == 0 && *made <= target) {
            tx.batch(sql).map_err(|source| StateError::CreateSchema {
                location: location.to_owned(),
                version: made,
                source,
            })?;
            done = made;
        }
        for (index, sql) in list.iter().enumerate() {
            let made = i64::try_from(index + 1).expect("the migration list is short");
            if made > done {
                tx.batch(sql).map_err(failed(made))?;
            }
        }
        if current < target {
            set_version(tx, target).map_err(failed(target))?;
        }
        Ok(())
    })
    .map_err(|e| match e {
        // Beginning or committing the transaction failed (busy, or the connection lost): no
        // migration in particular did.
        StateError::Database { source, .. } => StateError::Open {
            location: location.to_owned(),
            source,
        },
        other => other,
    })
}

/// The schema version recorded in the database.
pub(crate) fn version(conn: &mut impl Exec) -> Result<i64, DbError> {
    match conn.dialect() {
        Dialect::Sqlite => conn.query_one("PRAGMA user_version", params![], |row| row.get(0)),
        Dialect::Postgres => conn.query_one(
            "SELECT version FROM slipway_schema WHERE id = 1",
            params![],
            |row| row.get(0),
        ),
    }
}

fn set_version(conn: &mut impl Exec, version: i64) -> Result<(), DbError> {
    match conn.dialect() {
        // PRAGMA takes no parameter; the version is a number.
        Dialect::Sqlite => conn.batch(&format!("PRAGMA user_version = {version}")),
        Dialect::Postgres => conn
            .execute(
                "UPDATE slipway_schema SET version = ?1 WHERE id = 1",
                params![version],
            )
            .map(drop),
    }
}

fn refuse_newer(location: &str, found: i64) -> Result<(), StateError> {
    let supported = understood();
    if found > supported {
        return Err(StateError::NewerSchema {
            location: location.to_owned(),
            found,
            supported,
        });
    }
    Ok(())
}

/// How many relations named `slipway_schema` the state's schema holds, and the owner of one
/// that is not a table of the current user's (a view, a partitioned table, anything
/// another role made: only the user's own are trusted, not those of roles it is granted,
/// since the providers' admin may be granted every environment's role). Every comparison is
/// exact, so nothing planted in `public` is called.
fn schema_table(conn: &mut Conn) -> Result<(i64, Option<String>), DbError> {
    conn.query_one(
        &format!(
            "SELECT COUNT(*), MAX(CASE WHEN {OURS} THEN NULL \
             ELSE pg_catalog.pg_get_userbyid(c.relowner)::text END) {SCHEMA_TABLES}"
        ),
        params![],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
}

/// The relations (`c`) named `slipway_schema` in the state's schema, as SQL.
const SCHEMA_TABLES: &str = "FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = pg_catalog.current_schema() AND c.relname = 'slipway_schema'";

/// Whether the relation `c` is a table of the current user's own, as SQL.
const OURS: &str = "c.relkind = 'r' \
     AND c.relowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)";

/// [`StateError::ForeignSchemaTable`] for `owner`'s `slipway_schema`, saying whether the
/// state's other tables are there (a state restored by another role, to hand over) or not
/// (a table planted before the first open, to drop).
fn foreign_schema_table(conn: &mut Conn, location: &str, owner: String) -> StateError {
    let restored = conn
        .query_one(
            "SELECT COUNT(*) FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = pg_catalog.current_schema() AND c.relname = 'environments'",
            params![],
            |row| row.get::<i64>(0),
        )
        .is_ok_and(|n| n > 0);
    let schema = conn
        .query_one(
            "SELECT pg_catalog.current_schema()::text",
            params![],
            |row| row.get::<String>(0),
        )
        .unwrap_or_else(|_| "public".to_owned());
    StateError::ForeignSchemaTable {
        location: location.to_owned(),
        owner,
        schema,
        restored,
    }
}

/// Whether a binary rehearsing the next schema migrated this database.
fn rehearsed(conn: &mut impl Exec) -> Result<bool, DbError> {
    let sql = match conn.dialect() {
        Dialect::Sqlite => {
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'slipway_rehearsal'"
        }
        // The catalogs, not `information_schema`: its columns are a domain, for which the
        // system has no `=`, so one someone made in `public` would be the exact match.
        Dialect::Postgres => {
            "SELECT COUNT(*) FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = pg_catalog.current_schema() \
             AND c.relname = 'slipway_rehearsal' AND c.relkind = 'r'"
        }
    };
    conn.query_one(sql, params![], |row| row.get::<i64>(0))
        .map(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Conn {
        Conn::sqlite(rusqlite::Connection::open_in_memory().expect("open an in-memory database"))
    }

    fn tables(conn: &mut Conn) -> Vec<String> {
        conn.query(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
            params![],
            |row| row.get(0),
        )
        .expect("list the tables")
    }

    const FIRST: &str = "CREATE TABLE one (a INTEGER) STRICT;";
    const SECOND: &str = "CREATE TABLE two (a INTEGER) STRICT; INSERT INTO one VALUES (1);";

    #[test]
    fn pending_migrations_are_applied_from_the_version_found() {
        let mut conn = memory();
        apply_pending(&mut conn, "test", 0, &[FIRST], None).expect("migrate to 1");
        assert_eq!(version(&mut conn).expect("read the version"), 1);
        apply_pending(&mut conn, "test", 1, &[FIRST, SECOND], None).expect("migrate to 2");
        assert_eq!(version(&mut conn).expect("read the version"), 2);
        assert_eq!(
            tables(&mut conn),
            ["one", "two"],
            "the first ran once, then the second"
        );
        apply_pending(&mut conn, "test", 2, &[FIRST, SECOND], None).expect("nothing to do");
        let rows: i64 = conn
            .query_one("SELECT COUNT(*) FROM one", params![], |row| row.get(0))
            .expect("count");
        assert_eq!(rows, 1, "an up-to-date database runs no migration again");
    }

    #[test]
    fn an_upgrade_that_fails_half_way_leaves_the_schema_it_found() {
        let mut conn = memory();
        apply_pending(&mut conn, "test", 0, &[FIRST], None).expect("migrate to 1");
        let broken = "CREATE TABLE three (a INTEGER) STRICT; INSERT INTO nowhere VALUES (1);";
        let error = apply_pending(&mut conn, "test", 1, &[FIRST, SECOND, broken], None)
            .expect_err("the third migration fails");
        assert!(
            matches!(error, StateError::Migrate { version: 3, .. }),
            "the error names the migration that failed: {error:?}"
        );
        assert_eq!(version(&mut conn).expect("read the version"), 1);
        assert_eq!(
            tables(&mut conn),
            ["one"],
            "the second migration, which succeeded, is rolled back with the third"
        );
    }

    /// What `conn` holds, as statements that make it again: its schema's own text in the
    /// order SQLite keeps it, then every row of every table (`sqlite_sequence` as the
    /// `AUTOINCREMENT` tables' rows make it).
    fn dump(conn: &mut Conn) -> String {
        let mut out: Vec<String> = conn
            .query(
                "SELECT sql || ';' FROM sqlite_master \
                 WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid",
                params![],
                |row| row.get(0),
            )
            .expect("read the schema");
        let tables: Vec<String> = conn
            .query(
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid",
                params![],
                |row| row.get(0),
            )
            .expect("list the tables");
        for table in tables {
            let columns: Vec<String> = conn
                .query(
                    "SELECT name FROM pragma_table_info(?1) ORDER BY cid",
                    params![table.as_str()],
                    |row| row.get(0),
                )
                .expect("list the columns");
            let values = columns
                .iter()
                .map(|c| format!("quote(\"{c}\")"))
                .collect::<Vec<_>>()
                .join(" || ', ' || ");
            let rows: Vec<String> = conn
                .query(
                    &format!("SELECT {values} FROM \"{table}\" ORDER BY rowid"),
                    params![],
                    |row| row.get(0),
                )
                .expect("read the rows");
            out.extend(
                rows.iter()
                    .map(|row| format!("INSERT INTO \"{table}\" VALUES ({row});")),
            );
        }
        out.join("\n") + "\n"
    }

    /// Everything `conn` holds, `sqlite_sequence` included, to compare two databases.
    fn contents(conn: &mut Conn) -> (String, Vec<String>, i64) {
        let sequence = if tables(conn).iter().any(|t| t == "sqlite_sequence") {
            conn.query(
                "SELECT name || '=' || seq FROM sqlite_sequence ORDER BY name",
                params![],
                |row| row.get(0),
            )
            .expect("read sqlite_sequence")
        } else {
            Vec::new()
        };
        (
            dump(conn),
            sequence,
            version(conn).expect("read the version"),
        )
    }

    /// A new SQLite state is made by [`FRESH_SQLITE`]'s statements, not by the migrations:
    /// they must make exactly what the migrations make, schema and rows, at the version they
    /// say. Run with `SLIPWAY_BLESS=1` to write the file again after adding a migration (and
    /// set `FRESH_SQLITE`'s version to the new [`SCHEMA_VERSION`]).
    #[test]
    fn the_fresh_schema_is_what_the_migrations_make() {
        let (made, fresh) = FRESH_SQLITE;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/schema_fresh_sqlite.sql");
        let mut migrated = memory();
        apply_pending(&mut migrated, "test", 0, MIGRATIONS, None).expect("migrate");
        let expected = format!(
            "-- What the {SCHEMA_VERSION} migrations of schema.rs make (FRESH_SQLITE), written by\n\
             -- `SLIPWAY_BLESS=1 cargo test -p slipway-state fresh_schema`, never by hand.\n{}",
            dump(&mut migrated)
        );
        // Never on CI, where it would pass without checking anything.
        if std::env::var_os("SLIPWAY_BLESS").is_some_and(|v| v == "1")
            && std::env::var_os("CI").is_none()
        {
            std::fs::write(path, &expected).expect("write the fresh schema");
            return;
        }
        assert_eq!(
            made, SCHEMA_VERSION,
            "FRESH_SQLITE is at version {made} and the migrations at {SCHEMA_VERSION}: run \
             `SLIPWAY_BLESS=1 cargo test -p slipway-state fresh_schema` and set its version"
        );
        assert!(
            fresh == expected,
            "{path} is not what the migrations make: run \
             `SLIPWAY_BLESS=1 cargo test -p slipway-state fresh_schema`"
        );
        // Made by the statements, the database is the migrated one, sequences included; with
        // foreign keys enforced, as every store has them.
        let mut new = memory();
        new.batch("PRAGMA foreign_keys = ON")
            .expect("enforce foreign keys");
        apply_pending(&mut new, "test", 0, MIGRATIONS, Some(FRESH_SQLITE)).expect("make fresh");
        assert_eq!(
            contents(&mut new),
            contents(&mut migrated),
            "the file's database is the migrated one"
        );
        // Behind the migrations, the statements are followed by those they lack.
        let next = "CREATE TABLE after_fresh (a INTEGER) STRICT;";
        let longer: Vec<&str> = MIGRATIONS.iter().copied().chain([next]).collect();
        let mut behind = memory();
        apply_pending(&mut behind, "test", 0, &longer, Some(FRESH_SQLITE))
            .expect("make fresh, then the next migration");
        assert_eq!(
            version(&mut behind).expect("read the version"),
            SCHEMA_VERSION + 1
        );
        assert!(
            tables(&mut behind).iter().any(|t| t == "after_fresh"),
            "the migration past the file ran"
        );
        // A database at version 0 that has one of the tables already (another program's)
        // is not one whose migration to version `made` failed: it says so, and keeps nothing.
        let mut foreign = memory();
        foreign
            .batch("CREATE TABLE environments (theirs INTEGER)")
            .expect("another program's table");
        let error = apply_pending(&mut foreign, "theirs.db", 0, MIGRATIONS, Some(FRESH_SQLITE))
            .expect_err("the schema cannot be made over it");
        assert_eq!(
            error.to_string(),
            format!(
                "failed to create the schema (version {}) of the new state database theirs.db",
                FRESH_SQLITE.0
            )
        );
        assert_eq!(tables(&mut foreign), ["environments"], "nothing was kept");
        // Past them (a list shorter than the statements know), they are not used.
        let mut short = memory();
        apply_pending(&mut short, "test", 0, &[FIRST], Some(FRESH_SQLITE)).expect("migrate");
        assert_eq!(
            tables(&mut short),
            ["one"],
            "a shorter list does not use the file"
        );
    }
}
