//! Events: an append-only log of what happened, for the API's event stream and for people.

use crate::db::{DbError, Exec, Row, params};
use serde::{Deserialize, Serialize};
use slipway_core::EnvName;

use slipway_core::vocab::EventKind;

use crate::StateError;
use crate::store::{Store, env_name_opt, from_json, sql, sql_limit, to_json, word};

/// One event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Increasing with time and never reused, so it works as a resume cursor.
    pub id: i64,
    /// The environment it concerns; `None` for engine-wide events.
    pub environment: Option<EnvName>,
    /// What kind of event, e.g. `apply.started`.
    pub kind: EventKind,
    /// A sentence for people.
    pub message: String,
    /// Details for programs.
    pub data: serde_json::Value,
    /// When it happened, unix milliseconds.
    pub at: i64,
}

/// Which events to read; see [`Store::events`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only the events of this environment (engine-wide events excluded).
    pub environment: Option<EnvName>,
    /// Only events with a greater id: the last id a reader has seen.
    pub after_id: Option<i64>,
    /// At most this many events.
    pub limit: usize,
}

fn from_row(row: &Row) -> Result<(EventRecord, String), DbError> {
    Ok((
        EventRecord {
            id: row.get(0)?,
            environment: env_name_opt(row, 1)?,
            kind: word(row, 2)?,
            message: row.get(3)?,
            data: serde_json::Value::Null,
            at: row.get(5)?,
        },
        row.get(4)?,
    ))
}

impl Store {
    /// Appends an event and returns its id.
    pub fn record_event(
        &self,
        environment: Option<&EnvName>,
        kind: EventKind,
        message: &str,
        data: &serde_json::Value,
        at: i64,
    ) -> Result<i64, StateError> {
        self.write_env(environment, &[], |tx| {
            insert_event(tx, environment, kind, message, data, at)
        })
    }

    /// The newest event of `kind` about `environment` (engine-wide events when `None`).
    pub fn last_event(
        &self,
        environment: Option<&EnvName>,
        kind: EventKind,
    ) -> Result<Option<EventRecord>, StateError> {
        let operation = "read the last event of a kind";
        let row = self
            .conn()
            .query_opt(
                "SELECT id, environment, kind, message, data, at FROM events \
                 WHERE kind = ?1 AND environment IS NOT DISTINCT FROM ?2 \
                 ORDER BY id DESC LIMIT 1",
                params![kind.as_str(), environment],
                from_row,
            )
            .map_err(sql(operation))?;
        match row {
            None => Ok(None),
            Some((mut record, data)) => {
                record.data = from_json(&data, || format!("event {}", record.id), "data")?;
                Ok(Some(record))
            }
        }
    }

    /// Events matching `query`, oldest first (ascending id).
    pub fn events(&self, query: &EventQuery) -> Result<Vec<EventRecord>, StateError> {
        let operation = "read events";
        let raw = self
            .conn()
            .query(
                "SELECT id, environment, kind, message, data, at FROM events \
                 WHERE (environment = ?1 OR ?1 IS NULL) AND id > ?2 \
                 ORDER BY id LIMIT ?3",
                params![
                    query.environment,
                    query.after_id.unwrap_or(0),
                    sql_limit(query.limit)
                ],
                from_row,
            )
            .map_err(sql(operation))?;
        raw.into_iter()
            .map(|(mut event, data)| {
                event.data = from_json(&data, || format!("event {}", event.id), "data")?;
                Ok(event)
            })
            .collect()
    }
}

/// Appends an event in `tx`; returns its id.
pub(crate) fn insert_event(
    tx: &mut impl Exec,
    environment: Option<&EnvName>,
    kind: EventKind,
    message: &str,
    data: &serde_json::Value,
    at: i64,
) -> Result<i64, StateError> {
    tx.query_one(
        "INSERT INTO events (environment, kind, message, data, at) \
         VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
        params![environment, kind.as_str(), message, to_json(data), at],
        |row| row.get(0),
    )
    .map_err(sql(format!("record a {kind} event")))
}
