//! Work handed to the replica that works on an environment, by a replica that heard of it
//! but does not hold the environment's lease: a pull request's command about it
//! (`/slipway apply ENV`), or a pull request's lock on it released. Kept in the state until
//! the holder has done it, so that it survives the death of either replica.
//!
//! The rows are written without proving a lease (the writer holds none, by definition) and
//! carry no fencing of their own: the caller takes a row under the environment's lease, with
//! that lease's epoch ([`Store::take_handoff`]), and every write the work then makes of the
//! environment proves the lease as any other. A replica that took a row and died leaves it
//! taken at its epoch; the next holder's epoch is greater, so it takes the row again.
//!
//! What the work is, is the caller's (`work`, JSON): the store keeps and returns it.

use crate::db::{DbError, Exec, Row, params};
use serde::{Deserialize, Serialize};
use slipway_core::EnvName;

use crate::StateError;
use crate::store::{Store, env_name, from_json, sql, to_json};

/// One piece of work handed to an environment's holder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffRecord {
    /// Increasing with time: work is done in this order.
    pub id: i64,
    /// The environment it is about.
    pub environment: EnvName,
    /// What to do, as the caller wrote it.
    pub work: serde_json::Value,
    /// When it was handed over, unix milliseconds.
    pub created_at: i64,
    /// The run of a replica that took it, if one did.
    pub taken_by: Option<String>,
    /// The epoch of the lease under which it was taken (0: an environment without one).
    pub taken_epoch: Option<i64>,
}

fn from_row(row: &Row) -> Result<(HandoffRecord, String), DbError> {
    Ok((
        HandoffRecord {
            id: row.get(0)?,
            environment: env_name(row, 1)?,
            work: serde_json::Value::Null,
            created_at: row.get(3)?,
            taken_by: row.get(4)?,
            taken_epoch: row.get(5)?,
        },
        row.get(2)?,
    ))
}

impl Store {
    /// Hands `work` about `environment` to whichever replica works on it; returns its id.
    pub fn hand_off(
        &self,
        environment: &EnvName,
        work: &serde_json::Value,
        at: i64,
    ) -> Result<i64, StateError> {
        self.conn()
            .query_one(
                "INSERT INTO handoffs (environment, work, created_at) VALUES (?1, ?2, ?3) \
                 RETURNING id",
                params![environment, to_json(work), at],
                |row| row.get(0),
            )
            .map_err(sql(format!("hand work on {environment} over")))
    }

    /// The work not done yet, oldest first.
    pub fn handoffs(&self) -> Result<Vec<HandoffRecord>, StateError> {
        let raw = self
            .conn()
            .query(
                "SELECT id, environment, work, created_at, taken_by, taken_epoch FROM handoffs \
                 ORDER BY id",
                params![],
                from_row,
            )
            .map_err(sql("read the work handed over"))?;
        raw.into_iter()
            .map(|(mut record, work)| {
                record.work = from_json(&work, || format!("handoff {}", record.id), "work")?;
                Ok(record)
            })
            .collect()
    }

    /// Takes work `id` for `taker`, one run of a replica that holds the work's environment's
    /// lease at `epoch` (0 for an environment without a lease): `true` unless it is done, or
    /// was taken already under a later epoch, or under this one by this `taker`, or (epoch 0)
    /// by anyone. So two replicas, or two passes of one, never both take it, and a later
    /// holder takes again what an earlier one left unfinished, as does a replica that
    /// restarted within its lease (the same epoch, another run: `taker` names the run).
    pub fn take_handoff(&self, id: i64, taker: &str, epoch: i64) -> Result<bool, StateError> {
        self.conn()
            .execute(
                "UPDATE handoffs SET taken_by = ?2, taken_epoch = ?3 \
                 WHERE id = ?1 AND (taken_epoch IS NULL OR taken_epoch < ?3 \
                   OR (?3 > 0 AND taken_epoch = ?3 AND taken_by <> ?2))",
                params![id, taker, epoch],
            )
            .map(|n| n == 1)
            .map_err(sql(format!("take handoff {id}")))
    }

    /// Work `id` is done: it is forgotten. `false` when it was already.
    pub fn finish_handoff(&self, id: i64) -> Result<bool, StateError> {
        self.conn()
            .execute("DELETE FROM handoffs WHERE id = ?1", params![id])
            .map(|n| n == 1)
            .map_err(sql(format!("finish handoff {id}")))
    }
}
