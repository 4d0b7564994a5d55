//! The audit log: who asked the API to change what, and whether it happened. Append-only,
//! like events, but about people and their requests rather than about environments.

use crate::db::{DbError, Exec, Row, params};
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
    /// What was written.
    #[serde(flatten)]
    pub entry: NewAudit,
    /// How many calls this entry stands for: 1, or more for refusals aggregated by
    /// [`Store::record_refusal`] (the entry keeps the first one's time and target).
    pub count: i64,
}

/// An entry about to be written; see [`Store::record_audit`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

const COLUMNS: &str = "id, at, who, action, target, outcome, detail, count";

fn from_row(row: &Row) -> Result<AuditRecord, DbError> {
    Ok(AuditRecord {
        id: row.get(0)?,
        entry: NewAudit {
            at: row.get(1)?,
            who: row.get(2)?,
            action: row.get(3)?,
            target: row.get(4)?,
            outcome: row.get(5)?,
            detail: row.get(6)?,
        },
        count: row.get(7)?,
    })
}

impl Store {
    /// Appends an entry to the audit log and returns its id.
    ///
    /// # Errors
    /// [`StateError::InvalidValue`] for an outcome outside [`AUDIT_OUTCOMES`].
    pub fn record_audit(&self, entry: &NewAudit) -> Result<i64, StateError> {
        one_of("audit outcome", &entry.outcome, AUDIT_OUTCOMES)?;
        self.conn()
            .query_one(
                "INSERT INTO audit (at, who, action, target, outcome, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
                params![
                    entry.at,
                    entry.who,
                    entry.action,
                    entry.target,
                    entry.outcome,
                    entry.detail
                ],
                |row| row.get(0),
            )
            .map_err(sql(format!("record {} in the audit log", entry.action)))
    }

    /// Records a refused call, folded into the entry of the same refusal (who, action, outcome
    /// and detail) written less than `window_ms` before, whose count it increments; a new
    /// entry otherwise. Returns the entry's id.
    ///
    /// A refusal costs its caller nothing, so refusals written one row each would let anyone
    /// grow the database without bound; folded, they add at most one row per distinct
    /// refusal per window. The target is not part of the key (a caller chooses it freely):
    /// the entry keeps the first one's.
    ///
    /// # Errors
    /// [`StateError::InvalidValue`] for an outcome outside [`AUDIT_OUTCOMES`].
    pub fn record_refusal(&self, entry: &NewAudit, window_ms: i64) -> Result<i64, StateError> {
        one_of("audit outcome", &entry.outcome, AUDIT_OUTCOMES)?;
        let operation = format!("record a refused {} in the audit log", entry.action);
        let mut conn = self.conn();
        let existing: Option<i64> = conn
            .query_opt(
                "SELECT id FROM audit WHERE at > ?1 AND who = ?2 AND action = ?3 \
                 AND outcome = ?4 AND detail = ?5 ORDER BY id DESC LIMIT 1",
                params![
                    entry.at.saturating_sub(window_ms),
                    entry.who,
                    entry.action,
                    entry.outcome,
                    entry.detail
                ],
                |row| row.get(0),
            )
            .map_err(sql(operation.clone()))?;
        if let Some(id) = existing {
            conn.execute(
                "UPDATE audit SET count = count + 1 WHERE id = ?1",
                params![id],
            )
            .map_err(sql(operation))?;
            return Ok(id);
        }
        // The connection is one lock: released before the plain insert takes it again.
        drop(conn);
        self.record_audit(entry)
    }

    /// At most `limit` entries with an id greater than `after_id` (all when `None`), oldest
    /// first.
    pub fn audit(
        &self,
        limit: usize,
        after_id: Option<i64>,
    ) -> Result<Vec<AuditRecord>, StateError> {
        let operation = "read the audit log";
        self.conn()
            .query(
                &format!("SELECT {COLUMNS} FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2"),
                params![after_id.unwrap_or(0), sql_limit(limit)],
                from_row,
            )
            .map_err(sql(operation))
    }
}
