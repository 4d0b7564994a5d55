//! The notification outbox (`[notify.NAME]`): what the controller's notifier read from the
//! event log, deduplicated per receiver, waiting to be sent; the controller decides what a
//! notification is and sends it, this keeps it across restarts and replicas.
//!
//! # Guarantees
//! - The event log is read once for all replicas: [`Store::enqueue_notifications`] moves
//!   the one cursor (`notify_cursor`) only from the value its caller read, in the same
//!   transaction as the rows it adds, so two replicas reading the same events add them once.
//! - A state seen again adds nothing: a notification with a state key is added only when its
//!   key differs from the last one added for its (receiver, environment, kind)
//!   (`notify_last`, one row each, forgotten when the caller says so).
//! - A row is sent by one replica at a time: [`Store::claim_notifications`] marks the rows it
//!   returns claimed until a time, and a claimed row is returned again only after that time
//!   (its sender died).
//! - A receiver hears about an environment in order: only the oldest pending row of a
//!   (receiver, environment) is claimed, so a later one waits for it to be delivered or
//!   given up (a deployment's `success` never overtakes its `in_progress`).
//! - Rows are deleted once delivered or given up, so the table holds only pending work.

use crate::StateError;
use crate::db::{Exec, Row, params};
use crate::store::{Store, env_name_opt, sql, sql_limit, to_json};
use slipway_core::EnvName;
use slipway_core::vocab::EventKind;

/// One step of the notifier over the event log, applied in order by
/// [`Store::enqueue_notifications`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotifyStep {
    /// Add a notification unless its state was already notified.
    Add(NewNotification),
    /// Forget the last states of `environment` for every receiver: of the `kinds` given, or
    /// of every kind when `None` (the environment is gone: one of the same name starts anew).
    Forget {
        /// The environment.
        environment: EnvName,
        /// The notification kinds whose last states are forgotten; `None`: all.
        kinds: Option<Vec<String>>,
    },
}

/// A notification to add to the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewNotification {
    /// The receiver's name (`[notify.NAME]`).
    pub receiver: String,
    /// The environment it is about.
    pub environment: Option<EnvName>,
    /// Its kind, a word of the controller's (`deployed`, `failed`, ...).
    pub kind: String,
    /// What makes it a new state: added only when this differs from the last one added for
    /// (receiver, environment, kind). `None`: always added (every such event is a change).
    pub state_key: Option<String>,
    /// The notification itself, as the controller will render it (JSON).
    pub payload: String,
}

/// A notification waiting in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingNotification {
    /// Its id.
    pub id: i64,
    /// The receiver's name.
    pub receiver: String,
    /// The environment it is about.
    pub environment: Option<EnvName>,
    /// Its kind.
    pub kind: String,
    /// The notification (JSON).
    pub payload: String,
    /// How many times sending it failed.
    pub attempts: i64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

fn pending_from_row(row: &Row) -> Result<PendingNotification, crate::db::DbError> {
    Ok(PendingNotification {
        id: row.get(0)?,
        receiver: row.get(1)?,
        environment: env_name_opt(row, 2)?,
        kind: row.get(3)?,
        payload: row.get(4)?,
        attempts: row.get(5)?,
        last_error: row.get(6)?,
    })
}

const TABLES: &[&str] = &["notify_cursor", "notify_last", "notify_outbox"];

impl Store {
    /// The last event id the notifier has read, or `None` before it first ran on this state.
    pub fn notify_cursor(&self) -> Result<Option<i64>, StateError> {
        self.conn()
            .query_opt(
                "SELECT last_event FROM notify_cursor WHERE id = 1",
                params![],
                |row| row.get(0),
            )
            .map_err(sql("read the notification cursor"))
    }

    /// The greatest event id recorded so far (0 with none): where a notifier that first
    /// starts begins, so that history is not announced.
    pub fn last_event_id(&self) -> Result<i64, StateError> {
        self.conn()
            .query_one(
                "SELECT COALESCE(MAX(id), 0) FROM events",
                params![],
                |row| row.get(0),
            )
            .map_err(sql("read the last event id"))
    }

    /// Applies `steps` and moves the cursor from `from` (what the caller read:
    /// [`Store::notify_cursor`]) to `to`, in one transaction; returns how many notifications
    /// were added, or `None` when the cursor was no longer at `from` (another replica read
    /// those events first: nothing is written).
    pub fn enqueue_notifications(
        &self,
        from: Option<i64>,
        to: i64,
        steps: &[NotifyStep],
        now: i64,
    ) -> Result<Option<usize>, StateError> {
        self.conn().transaction(TABLES, |tx| {
            let at: Option<i64> = tx
                .query_opt(
                    "SELECT last_event FROM notify_cursor WHERE id = 1",
                    params![],
                    |row| row.get(0),
                )
                .map_err(sql("read the notification cursor"))?;
            if at != from {
                return Ok(None);
            }
            let mut added = 0;
            for step in steps {
                match step {
                    NotifyStep::Forget {
                        environment,
                        kinds: None,
                    } => {
                        tx.execute(
                            "DELETE FROM notify_last WHERE environment = ?1",
                            params![environment],
                        )
                        .map_err(sql("forget an environment's notified states"))?;
                    }
                    NotifyStep::Forget {
                        environment,
                        kinds: Some(kinds),
                    } => {
                        for kind in kinds {
                            tx.execute(
                                "DELETE FROM notify_last WHERE environment = ?1 AND kind = ?2",
                                params![environment, kind.as_str()],
                            )
                            .map_err(sql("forget a notified state"))?;
                        }
                    }
                    NotifyStep::Add(new) => {
                        let env = new.environment.as_ref().map(ToString::to_string);
                        let env_key = env.clone().unwrap_or_default();
                        if let Some(key) = &new.state_key {
                            let last: Option<String> = tx
                                .query_opt(
                                    "SELECT state_key FROM notify_last WHERE receiver = ?1 \
                                     AND environment = ?2 AND kind = ?3",
                                    params![new.receiver.as_str(), env_key.as_str(), new.kind.as_str()],
                                    |row| row.get(0),
                                )
                                .map_err(sql("read a notified state"))?;
                            if last.as_deref() == Some(key.as_str()) {
                                continue;
                            }
                            tx.execute(
                                "INSERT INTO notify_last (receiver, environment, kind, state_key) \
                                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (receiver, environment, kind) \
                                 DO UPDATE SET state_key = excluded.state_key",
                                params![
                                    new.receiver.as_str(),
                                    env_key.as_str(),
                                    new.kind.as_str(),
                                    key.as_str()
                                ],
                            )
                            .map_err(sql("record a notified state"))?;
                        }
                        tx.execute(
                            "INSERT INTO notify_outbox (receiver, environment, kind, payload, \
                             attempts, next_attempt, created_at) VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5)",
                            params![
                                new.receiver.as_str(),
                                env,
                                new.kind.as_str(),
                                new.payload.as_str(),
                                now
                            ],
                        )
                        .map_err(sql("add a notification"))?;
                        added += 1;
                    }
                }
            }
            tx.execute(
                "INSERT INTO notify_cursor (id, last_event) VALUES (1, ?1) \
                 ON CONFLICT (id) DO UPDATE SET last_event = excluded.last_event",
                params![to],
            )
            .map_err(sql("move the notification cursor"))?;
            Ok(Some(added))
        })
    }

    /// Up to `limit` notifications due at `now` and not claimed, oldest first, claimed
    /// until `until` (by then the caller has delivered them, rescheduled them or died).
    pub fn claim_notifications(
        &self,
        now: i64,
        until: i64,
        limit: usize,
    ) -> Result<Vec<PendingNotification>, StateError> {
        self.conn().transaction(&["notify_outbox"], |tx| {
            let rows = tx
                .query(
                    "SELECT id, receiver, environment, kind, payload, attempts, last_error \
                     FROM notify_outbox n WHERE next_attempt <= ?1 \
                     AND (claimed_until IS NULL OR claimed_until <= ?1) \
                     AND NOT EXISTS (SELECT 1 FROM notify_outbox o WHERE o.id < n.id \
                       AND o.receiver = n.receiver \
                       AND o.environment IS NOT DISTINCT FROM n.environment) \
                     ORDER BY id LIMIT ?2",
                    params![now, sql_limit(limit)],
                    pending_from_row,
                )
                .map_err(sql("read due notifications"))?;
            for row in &rows {
                tx.execute(
                    "UPDATE notify_outbox SET claimed_until = ?2 WHERE id = ?1",
                    params![row.id, until],
                )
                .map_err(sql("claim a notification"))?;
            }
            Ok(rows)
        })
    }

    /// Removes a notification: delivered, or given up.
    pub fn finish_notification(&self, id: i64) -> Result<(), StateError> {
        self.conn()
            .execute("DELETE FROM notify_outbox WHERE id = ?1", params![id])
            .map(drop)
            .map_err(sql("remove a sent notification"))
    }

    /// Gives a notification up: removes it and records a `notify.failed` event about its
    /// environment with `message` and `data`, in one transaction. Written without proving a
    /// lease: it is the notifier's fact, not a change of the environment, and the replica
    /// that sends may not be the one that holds it.
    pub fn give_up_notification(
        &self,
        id: i64,
        environment: Option<&EnvName>,
        message: &str,
        data: &serde_json::Value,
        at: i64,
    ) -> Result<(), StateError> {
        self.conn().transaction(&["notify_outbox", "events"], |tx| {
            tx.execute("DELETE FROM notify_outbox WHERE id = ?1", params![id])
                .map_err(sql("remove a notification given up"))?;
            tx.execute(
                "INSERT INTO events (environment, kind, message, data, at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    environment,
                    EventKind::NotifyFailed.as_str(),
                    message,
                    to_json(data),
                    at
                ],
            )
            .map_err(sql("record a notify.failed event"))?;
            Ok(())
        })
    }

    /// Records a failed attempt of a notification and when to try again.
    pub fn retry_notification(
        &self,
        id: i64,
        next_attempt: i64,
        error: &str,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE notify_outbox SET attempts = attempts + 1, next_attempt = ?2, \
                 claimed_until = NULL, last_error = ?3 WHERE id = ?1",
                params![id, next_attempt, error],
            )
            .map(drop)
            .map_err(sql("reschedule a notification"))
    }

    /// Every notification waiting, oldest first (for people and tests).
    pub fn pending_notifications(&self) -> Result<Vec<PendingNotification>, StateError> {
        self.conn()
            .query(
                "SELECT id, receiver, environment, kind, payload, attempts, last_error \
                 FROM notify_outbox ORDER BY id",
                params![],
                pending_from_row,
            )
            .map_err(sql("read the notification outbox"))
    }
}
