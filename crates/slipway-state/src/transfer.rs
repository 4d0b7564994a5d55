//! Moving a whole state from one database to another (`slipway state migrate`), and an
//! online copy of a SQLite state (`slipway state backup`).

use std::path::Path;

use serde::Serialize;

use crate::StateError;
use crate::db::{Dialect, Exec, params};
use crate::store::{Store, sql};

/// Every table copied, parents before children (resources and ports name their environment).
/// Left out on purpose: `replicas` and `leases` (each replica's own, made again as replicas
/// start on the new state), `browser_sessions` (the web UI's logins: users log in again,
/// their tokens are copied) and `handoffs` (work in flight between running replicas: a state
/// is migrated with them stopped), and `state_key` and `sealed_formats` (each state's own,
/// made by its migrations; the key itself must be the same, which `copy_to` checks).
const TABLES: &[&str] = &[
    "environments",
    "resources",
    "ports",
    "deployments",
    "events",
    "tokens",
    "audit",
    "pull_requests",
    "deliveries",
    "locks",
    "merged_commits",
    "env_uids",
    "uid_cursor",
    "notify_cursor",
    "notify_last",
    "notify_outbox",
    "policy_approvals",
    "head_pushes",
];

/// The tables whose `id` the database numbers (a PostgreSQL identity column, whose sequence
/// must continue after the ids copied).
const NUMBERED: &[&str] = &["deployments", "events", "tokens", "audit", "notify_outbox"];

/// How many rows of each table a copy moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Copied {
    /// `(table, rows)`, in copy order.
    pub tables: Vec<(String, u64)>,
}

impl Copied {
    /// Rows moved in all.
    pub fn total(&self) -> u64 {
        self.tables.iter().map(|(_, n)| n).sum()
    }
}

impl Store {
    /// Copies every row of this store into `target`, ids and history included, in one
    /// transaction of `target`: all or nothing. Sealed values are copied as they are, so
    /// `target` must be opened with the same home (its `state.key`). Replicas, leases and
    /// browser sessions are not copied (see `TABLES`): the web UI's users log in again.
    ///
    /// # Errors
    /// [`StateError::InvalidValue`] when `target` already holds environments, deployments,
    /// events or tokens (a copy never merges two histories); [`StateError::Database`]
    /// otherwise.
    pub fn copy_to(&self, target: &Store) -> Result<Copied, StateError> {
        if std::ptr::eq(self, target) {
            // Both ends would take the one connection's lock.
            return Err(StateError::InvalidValue {
                field: "migration target",
                value: self.location().to_owned(),
                allowed: &["another store than the source"],
            });
        }
        if target.sealer().instance_id() != self.sealer().instance_id() {
            return Err(StateError::InvalidValue {
                field: "state key",
                value: "a target opened with another home's key".to_owned(),
                allowed: &["the same home's state.key for both stores"],
            });
        }
        let mut source = self.conn();
        let mut target_conn = target.conn();
        for table in ["environments", "deployments", "events", "tokens", "audit"] {
            let rows: i64 = target_conn
                .query_one(&format!("SELECT COUNT(*) FROM {table}"), params![], |row| {
                    row.get(0)
                })
                .map_err(sql(format!("count the rows of {table} in the target")))?;
            if rows > 0 {
                return Err(StateError::InvalidValue {
                    field: "migration target",
                    value: format!("{} ({rows} rows in {table})", target.location()),
                    allowed: &["an empty state (a fresh database)"],
                });
            }
        }
        let mut copied = Vec::new();
        let mut batches = Vec::new();
        for table in TABLES {
            let columns = columns(&mut *source, table)?;
            let list = columns.join(", ");
            let rows = source
                .rows(&format!("SELECT {list} FROM {table}"), params![])
                .map_err(sql(format!("read {table}")))?;
            batches.push((*table, columns, rows));
        }
        // The last id SQLite gave each numbered table, kept even when retention deleted every
        // row: the target's numbering goes on after it, or ids that a notification cursor or
        // an API client's `after` hold would be given again, and what they name skipped.
        let mut given = std::collections::BTreeMap::new();
        if source.dialect() == Dialect::Sqlite {
            let rows = source
                .rows("SELECT name, seq FROM sqlite_sequence", params![])
                .map_err(sql("read the ids given"))?;
            for row in rows {
                let (Ok(name), Ok(seq)) = (row.get::<String>(0), row.get::<i64>(1)) else {
                    continue;
                };
                given.insert(name, seq);
            }
        }
        drop(source);
        let dialect = target_conn.dialect();
        target_conn.transaction(TABLES, |tx| {
            for (table, columns, rows) in &batches {
                let placeholders: Vec<String> =
                    (1..=columns.len()).map(|i| format!("?{i}")).collect();
                // The target's schema makes some rows itself (none today); replace them.
                tx.execute(&format!("DELETE FROM {table}"), params![])
                    .map_err(sql(format!("empty {table} in the target")))?;
                let insert = format!(
                    "INSERT INTO {table} ({}) VALUES ({})",
                    columns.join(", "),
                    placeholders.join(", ")
                );
                for row in rows {
                    tx.execute(&insert, row.values())
                        .map_err(sql(format!("copy a row of {table}")))?;
                }
                copied.push((table.to_string(), rows.len() as u64));
            }
            if dialect == Dialect::Postgres {
                for table in NUMBERED {
                    // The next id the target gives continues after the last one copied, and
                    // the last one the source gave. The functions named with their schema: a
                    // `setval(text, …)` someone made in `public` would be a better match for
                    // the text the other returns.
                    let given = given.get(*table).copied().unwrap_or(0);
                    tx.rows(
                        &format!(
                            "SELECT pg_catalog.setval(\
                             pg_catalog.pg_get_serial_sequence('{table}', 'id')::pg_catalog.regclass, \
                             GREATEST(COALESCE((SELECT MAX(id) FROM {table}), 0), {given}) + 1, \
                             false)"
                        ),
                        params![],
                    )
                    .map_err(sql(format!("continue the ids of {table}")))?;
                }
            }
            Ok::<(), StateError>(())
        })?;
        Ok(Copied { tables: copied })
    }

    /// Writes a consistent copy of this SQLite state to `file` while it is in use (SQLite's
    /// `VACUUM INTO`), which must not exist yet. A PostgreSQL state is backed up with
    /// `pg_dump` instead. The copy is whole, browser sessions included: stored by their
    /// ids' hashes, they are worth nothing to whoever reads it, and once restored each still
    /// ends at its time and with its token.
    pub fn backup(&self, file: &Path) -> Result<(), StateError> {
        let mut conn = self.conn();
        if conn.dialect() == Dialect::Postgres {
            return Err(StateError::InvalidValue {
                field: "state to back up",
                value: self.location().to_owned(),
                allowed: &["a SQLite state; back up PostgreSQL with pg_dump"],
            });
        }
        conn.execute(
            "VACUUM INTO ?1",
            params![file.to_string_lossy().into_owned()],
        )
        .map(drop)
        .map_err(sql(format!("back up the state into {}", file.display())))
    }
}

/// The columns of `table`, in the source's order.
fn columns(conn: &mut impl Exec, table: &str) -> Result<Vec<String>, StateError> {
    let names = match conn.dialect() {
        Dialect::Sqlite => conn.query(
            &format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"),
            params![],
            |row| row.get::<String>(0),
        ),
        // The catalogs, not `information_schema`: its columns are a domain, for which the
        // system has no `=`, so one someone made in `public` would be the exact match.
        Dialect::Postgres => conn.query(
            "SELECT a.attname::text FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = pg_catalog.current_schema() AND c.relname = ?1 \
             AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            params![table],
            |row| row.get::<String>(0),
        ),
    };
    names.map_err(sql(format!("read the columns of {table}")))
}
