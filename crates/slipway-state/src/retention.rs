//! Retention: the append-only logs (audit, events) and the ids of handled webhook deliveries
//! are deleted once older than the engine's configuration says, so no table grows forever.

use crate::db::{Exec, params};

use crate::StateError;
use crate::store::{Store, sql};

/// The cut-off times of [`Store::prune`], unix milliseconds: rows older are deleted. `None`
/// keeps a table whole.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Audit entries written before this.
    pub audit_before: Option<i64>,
    /// Events recorded before this.
    pub events_before: Option<i64>,
    /// Webhook deliveries received before this, and who pushed commits seen before this
    /// (except to open pull requests and their branches, which the gate still asks about).
    pub deliveries_before: Option<i64>,
}

/// How many rows [`Store::prune`] deleted, per table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Audit entries.
    pub audit: usize,
    /// Events.
    pub events: usize,
    /// Webhook deliveries.
    pub deliveries: usize,
    /// Pushes recorded (who pushed a commit), other than to open pull requests.
    pub pushes: usize,
}

/// Rows deleted per statement: the store's lock is released between batches, so a large
/// first prune does not stall the API.
const BATCH: i64 = 5_000;

impl Store {
    /// Deletes the rows older than `retention` says, in batches.
    pub fn prune(&self, retention: &Retention) -> Result<Pruned, StateError> {
        let batches = |table: &str, column: &str, before: Option<i64>, key: &str| {
            let Some(before) = before else {
                return Ok(0);
            };
            let statement = format!(
                "DELETE FROM {table} WHERE {key} IN \
                 (SELECT {key} FROM {table} WHERE {column} < ?1 LIMIT ?2)"
            );
            let mut total = 0;
            loop {
                let deleted = self
                    .conn()
                    .execute(&statement, params![before, BATCH])
                    .map_err(sql(format!("prune old rows of {table}")))?;
                total += deleted as usize;
                if (deleted as i64) < BATCH {
                    return Ok::<usize, StateError>(total);
                }
            }
        };
        let pushes = match retention.deliveries_before {
            // Few rows (one per push webhook): one statement.
            Some(before) => {
                self.conn()
                    .execute(
                        "DELETE FROM head_pushes WHERE at < ?1 AND source NOT IN \
                     (SELECT 'pull/' || number FROM pull_requests WHERE state = 'open' \
                      UNION SELECT 'refs/heads/' || head_ref FROM pull_requests \
                      WHERE state = 'open')",
                        params![before],
                    )
                    .map_err(sql("prune old rows of head_pushes"))? as usize
            }
            None => 0,
        };
        Ok(Pruned {
            pushes,
            audit: batches("audit", "at", retention.audit_before, "id")?,
            events: batches("events", "at", retention.events_before, "id")?,
            deliveries: batches(
                "deliveries",
                "received_at",
                retention.deliveries_before,
                "id",
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewAudit;

    #[test]
    fn prune_deletes_only_what_is_older_than_the_cutoff() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        for at in [10, 20, 30] {
            store
                .record_audit(&NewAudit {
                    at,
                    who: "t".into(),
                    action: "a".into(),
                    target: None,
                    outcome: "ok".into(),
                    detail: "200".into(),
                })
                .expect("audit");
            store
                .record_event(
                    None,
                    slipway_core::vocab::EventKind::ForgeFailed,
                    "m",
                    &serde_json::json!({}),
                    at,
                )
                .expect("event");
            store
                .record_delivery(&format!("github:{at}"), at)
                .expect("delivery");
        }
        let pruned = store
            .prune(&Retention {
                audit_before: Some(25),
                events_before: Some(15),
                deliveries_before: None,
            })
            .expect("prune");
        assert_eq!(
            pruned,
            Pruned {
                audit: 2,
                events: 1,
                deliveries: 0,
                pushes: 0,
            },
            "only rows older than each table's cut-off are deleted"
        );
        assert_eq!(store.audit(100, None).expect("audit").len(), 1);
        assert!(
            !store.record_delivery("github:10", 40).expect("delivery"),
            "deliveries kept without a cut-off still count as seen"
        );
    }

    #[test]
    fn refusals_fold_into_one_entry_per_window() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let refusal = |at: i64, detail: &str, target: &str| NewAudit {
            at,
            who: "anonymous".into(),
            action: "environment.list".into(),
            target: Some(target.into()),
            outcome: "refused".into(),
            detail: detail.into(),
        };
        for i in 0..1000 {
            store
                .record_refusal(
                    &refusal(1_000 + i, "401: unknown token", &format!("t{i}")),
                    60_000,
                )
                .expect("refusal");
        }
        store
            .record_refusal(&refusal(2_000, "401: revoked", "x"), 60_000)
            .expect("refusal");
        store
            .record_refusal(&refusal(70_000, "401: unknown token", "y"), 60_000)
            .expect("refusal");
        let all = store.audit(100, None).expect("audit");
        let counts: Vec<(i64, &str)> = all
            .iter()
            .map(|e| (e.count, e.entry.detail.as_str()))
            .collect();
        assert_eq!(
            counts,
            vec![
                (1000, "401: unknown token"),
                (1, "401: revoked"),
                (1, "401: unknown token")
            ],
            "a thousand identical refusals are one entry with a count; another reason or a \
             later window is a new entry"
        );
        assert_eq!(
            all[0].entry.target.as_deref(),
            Some("t0"),
            "the first target is kept"
        );
    }
}
