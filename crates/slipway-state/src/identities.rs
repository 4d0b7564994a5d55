//! Identities: the uid (= gid) each environment's code runs as when the engine runs as root.

use std::ops::RangeInclusive;

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::StateError;
use crate::store::{Store, sql};

impl Store {
    /// The uid of `environment`: the one recorded, or the lowest of `range` that no
    /// environment holds, recorded now.
    ///
    /// # Guarantees
    /// - A uid belongs to at most one environment (a `UNIQUE` constraint, in one transaction).
    /// - Stable: an environment keeps its uid across deployments (even if `range` changed)
    ///   until [`Store::release_uid`].
    ///
    /// # Errors
    /// [`StateError::UidsExhausted`] when every uid of `range` is held.
    pub fn allocate_uid(
        &self,
        environment: &str,
        range: RangeInclusive<u32>,
    ) -> Result<u32, StateError> {
        let operation = || format!("allocate a uid for {environment}");
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql(operation()))?;
        let known: Option<u32> = tx
            .query_row(
                "SELECT uid FROM env_uids WHERE environment = ?1",
                [environment],
                |row| row.get(0),
            )
            .optional()
            .map_err(sql(operation()))?;
        if let Some(uid) = known {
            return Ok(uid);
        }
        // The lowest free uid: the range start if free, else the first gap after a held one.
        let free: Option<u32> = tx
            .query_row(
                "SELECT MIN(candidate) FROM (
                     SELECT ?1 AS candidate
                     UNION ALL
                     SELECT uid + 1 FROM env_uids WHERE uid BETWEEN ?1 AND ?2
                 ) WHERE candidate <= ?2
                   AND candidate NOT IN (SELECT uid FROM env_uids)",
                params![range.start(), range.end()],
                |row| row.get(0),
            )
            .map_err(sql(operation()))?;
        let Some(uid) = free else {
            return Err(StateError::UidsExhausted {
                environment: environment.to_owned(),
                start: *range.start(),
                end: *range.end(),
            });
        };
        tx.execute(
            "INSERT INTO env_uids (environment, uid, allocated_at) VALUES (?1, ?2, ?3)",
            params![environment, uid, crate::now_ms()],
        )
        .map_err(sql(operation()))?;
        tx.commit().map_err(sql(operation()))?;
        Ok(uid)
    }

    /// The uid recorded for `environment`, if any.
    pub fn environment_uid(&self, environment: &str) -> Result<Option<u32>, StateError> {
        self.conn()
            .query_row(
                "SELECT uid FROM env_uids WHERE environment = ?1",
                [environment],
                |row| row.get(0),
            )
            .optional()
            .map_err(sql(format!("read the uid of {environment}")))
    }

    /// Forgets `environment`'s uid, so that another environment may get it. Call only once
    /// nothing of the environment runs or remains on disk.
    pub fn release_uid(&self, environment: &str) -> Result<(), StateError> {
        self.conn()
            .execute("DELETE FROM env_uids WHERE environment = ?1", [environment])
            .map(drop)
            .map_err(sql(format!("release the uid of {environment}")))
    }
}

#[cfg(test)]
mod tests {
    use crate::Store;

    #[test]
    fn uids_are_the_lowest_free_stable_and_released() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(dir.path()).expect("open");
        let range = 1000..=1002;
        assert_eq!(store.allocate_uid("a", range.clone()).expect("a"), 1000);
        assert_eq!(store.allocate_uid("b", range.clone()).expect("b"), 1001);
        assert_eq!(
            store.allocate_uid("a", range.clone()).expect("a again"),
            1000,
            "an environment keeps its uid"
        );
        store.release_uid("a").expect("release");
        assert_eq!(store.environment_uid("a").expect("read"), None);
        assert_eq!(
            store.allocate_uid("c", range.clone()).expect("c"),
            1000,
            "a released uid is the lowest free again"
        );
        assert_eq!(store.allocate_uid("d", range.clone()).expect("d"), 1002);
        let full = store
            .allocate_uid("e", range)
            .expect_err("the range is full");
        assert!(full.to_string().contains("[local] uids"), "{full}");
    }
}
