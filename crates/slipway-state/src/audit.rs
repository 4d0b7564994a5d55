//! The audit log: who asked the API to change what, and whether it happened. Append-only,
//! like events, but about people and their requests rather than about environments.

use rusqlite::{Row, params};
use serde::{Deserialize, Serialize};

use crate::StateError;
use crate::store::{Store, one_of, sql, sql_limit};

/// How a request ended: done, refused (no token, or a role too weak), or failed (accepted but
/// it could not be done, e.g. an unknown environment or an invalid ref).
pub const AUDIT_OUTCOMES: &[&str] = &["ok", "refused", "failed"];

/// One entry of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Increasing with time and never reused, so it works as a resume cursor.
    pub id: i64,
    /// When, unix milliseconds.
    pub at: i64,
    /// The name of the token used, or `anonymous`.
    pub who: String,
    /// What was asked, e.g. `environment.destroy`.
    pub action: String,
    /// What it was asked of, e.g. an environment's name.
    pub target: Option<String>,
    /// One of [`AUDIT_OUTCOMES`].
    pub outcome: String,
    /// More for people: the response status and, for a refusal or failure, why.
    pub detail: String,
}

/// An entry about to be written; see [`Store::record_audit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAudit {
    /// When, unix milliseconds.
    pub at: i64,
    /// The name of the token used, or `anonymous`.
    pub who: String,
    /// What was asked.
    pub action: String,
    /// What it was asked of.
    pub target: Option<String>,
    /// One of [`AUDIT_OUTCOMES`].
    pub outcome: String,
    /// More for people.
    pub detail: String,
}

const COLUMNS: &str = "id, at, who, action, target, outcome, detail";

fn from_row(row: &Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        id: row.get(0)?,
        at: row.get(1)?,
        who: row.get(2)?,
        action: row.get(3)?,
        target: row.get(4)?,
        outcome: row.get(5)?,
        detail: row.get(6)?,
    })
}

impl Store {
    /// Appends an entry to the audit log and returns its id.
    ///
    /// # Errors
    /// [`StateError::InvalidValue`] for an outcome outside [`AUDIT_OUTCOMES`].
    pub fn record_audit(&self, entry: &NewAudit) -> Result<i64, StateError> {
        one_of("audit outcome", &entry.outcome, AUDIT_OUTCOMES)?;
        let conn = self.conn();
        conn.execute(
            "INSERT INTO audit (at, who, action, target, outcome, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                entry.at,
                entry.who,
                entry.action,
                entry.target,
                entry.outcome,
                entry.detail
            ],
        )
        .map_err(sql(format!("record {} in the audit log", entry.action)))?;
        Ok(conn.last_insert_rowid())
    }

    /// At most `limit` entries with an id greater than `after_id` (all when `None`), oldest
    /// first.
    pub fn audit(
        &self,
        limit: usize,
        after_id: Option<i64>,
    ) -> Result<Vec<AuditRecord>, StateError> {
        let operation = "read the audit log";
        let conn = self.conn();
        let mut statement = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))
            .map_err(sql(operation))?;
        let rows = statement
            .query_map(params![after_id.unwrap_or(0), sql_limit(limit)], from_row)
            .map_err(sql(operation))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql(operation))
    }
}
