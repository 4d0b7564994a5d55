//! Identities: the uid (= gid) each environment's code runs as when the engine runs as root.

use slipway_core::EnvName;
use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use crate::db::{Exec, params};

use crate::StateError;
use crate::store::{Store, env_name, sql};

impl Store {
    /// The uid of `environment`: the one recorded, or a new one recorded now: the first of
    /// `range` above the last one allocated (wrapping to the range's start at its end) that
    /// no environment holds and that `usable` accepts (the engine refuses a uid or gid the
    /// system knows as a real user or group).
    ///
    /// # Guarantees
    /// - A uid belongs to at most one environment (a `UNIQUE` constraint, in one transaction).
    /// - Stable: an environment keeps its uid across deployments (even if `range` changed)
    ///   until [`Store::release_uid`].
    /// - A released uid is allocated again only after every other free uid of the range has
    ///   been, in turn.
    ///
    /// # Errors
    /// [`StateError::UidsExhausted`] when every uid of `range` is held or refused.
    pub fn allocate_uid(
        &self,
        environment: &EnvName,
        range: RangeInclusive<u32>,
        usable: impl Fn(u32) -> bool,
    ) -> Result<u32, StateError> {
        let operation = || format!("allocate a uid for {environment}");
        self.write_env(Some(environment), &["env_uids", "uid_cursor"], |tx| {
            let known: Option<u32> = tx
                .query_opt(
                    "SELECT uid FROM env_uids WHERE environment = ?1",
                    params![environment],
                    |row| row.get(0),
                )
                .map_err(sql(operation()))?;
            if let Some(uid) = known {
                return Ok(uid);
            }
            let held: std::collections::BTreeSet<u32> = tx
                .query(
                    "SELECT uid FROM env_uids WHERE uid BETWEEN ?1 AND ?2",
                    params![range.start(), range.end()],
                    |row| row.get(0),
                )
                .map_err(sql(operation()))?
                .into_iter()
                .collect();
            let last: Option<u32> = tx
                .query_opt(
                    "SELECT last FROM uid_cursor WHERE id = 1",
                    params![],
                    |row| row.get(0),
                )
                .map_err(sql(operation()))?;
            let (start, end) = (*range.start(), *range.end());
            let from = match last {
                Some(last) if last >= start && last < end => last + 1,
                _ => start,
            };
            let Some(uid) = (from..=end)
                .chain(start..from)
                .find(|uid| !held.contains(uid) && usable(*uid))
            else {
                return Err(StateError::UidsExhausted {
                    environment: environment.to_string(),
                    start,
                    end,
                });
            };
            tx.execute(
                "INSERT INTO env_uids (environment, uid, allocated_at) VALUES (?1, ?2, ?3)",
                params![environment, uid, crate::now_ms()],
            )
            .map_err(sql(operation()))?;
            tx.execute(
                "INSERT INTO uid_cursor (id, last) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET last = excluded.last",
                params![uid],
            )
            .map_err(sql(operation()))?;
            Ok(uid)
        })
    }

    /// The uid recorded for `environment`, if any.
    pub fn environment_uid(&self, environment: &EnvName) -> Result<Option<u32>, StateError> {
        self.conn()
            .query_opt(
                "SELECT uid FROM env_uids WHERE environment = ?1",
                params![environment.as_str()],
                |row| row.get(0),
            )
            .map_err(sql(format!("read the uid of {environment}")))
    }

    /// The uid recorded for each environment that has one: [`Store::environment_uid`] of
    /// every environment in one query.
    pub fn environment_uids(&self) -> Result<BTreeMap<EnvName, u32>, StateError> {
        let rows = self
            .conn()
            .query("SELECT environment, uid FROM env_uids", params![], |row| {
                Ok((env_name(row, 0)?, row.get::<u32>(1)?))
            })
            .map_err(sql("read the environments' uids"))?;
        Ok(rows.into_iter().collect())
    }

    /// Whether `uid` is given to an environment.
    pub fn uid_given(&self, uid: u32) -> Result<bool, StateError> {
        self.conn()
            .query_opt(
                "SELECT 1 FROM env_uids WHERE uid = ?1",
                params![uid],
                |_| Ok(()),
            )
            .map(|found| found.is_some())
            .map_err(sql("look a uid up"))
    }

    /// Forgets `environment`'s uid, so that another environment may get it. Call only once
    /// nothing of the environment runs or remains on disk.
    pub fn release_uid(&self, environment: &EnvName) -> Result<(), StateError> {
        self.write_env(Some(environment), &[], |tx| release_uid_in(tx, environment))
    }
}

/// Releases `environment`'s uid, in `tx`.
pub(crate) fn release_uid_in(tx: &mut impl Exec, environment: &EnvName) -> Result<(), StateError> {
    tx.execute(
        "DELETE FROM env_uids WHERE environment = ?1",
        params![environment.as_str()],
    )
    .map(drop)
    .map_err(sql(format!("release the uid of {environment}")))
}

#[cfg(test)]
mod tests {
    use crate::Store;
    use slipway_core::EnvName;

    fn env(name: &str) -> EnvName {
        EnvName::parse(name).expect("a valid name")
    }

    #[test]
    fn uids_go_above_the_last_allocated_are_stable_and_released() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(dir.path()).expect("open");
        let range = 1000..=1003;
        let any = |_| true;
        assert_eq!(
            store
                .allocate_uid(&env("a"), range.clone(), any)
                .expect("a"),
            1000
        );
        assert_eq!(
            store
                .allocate_uid(&env("b"), range.clone(), any)
                .expect("b"),
            1001
        );
        assert_eq!(
            store
                .allocate_uid(&env("a"), range.clone(), any)
                .expect("a again"),
            1000,
            "an environment keeps its uid"
        );
        store.release_uid(&env("a")).expect("release");
        assert_eq!(store.environment_uid(&env("a")).expect("read"), None);
        assert_eq!(
            store
                .allocate_uid(&env("c"), range.clone(), any)
                .expect("c"),
            1002,
            "a released uid is not the next one given: the next goes above the last"
        );
        assert_eq!(
            store
                .allocate_uid(&env("d"), range.clone(), |uid| uid != 1003)
                .expect("d"),
            1000,
            "a refused uid (a real user's) is skipped; at the range's end it wraps to the \
             free ones"
        );
        let full = store
            .allocate_uid(&env("e"), range.clone(), |uid| uid != 1003)
            .expect_err("the range is full");
        assert!(full.to_string().contains("[local] uids"), "{full}");
        assert_eq!(
            store.allocate_uid(&env("e"), range, any).expect("e"),
            1003,
            "a uid no longer refused can be had"
        );
    }

    #[test]
    fn the_cursor_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("a temp dir");
        {
            let store = Store::open(dir.path()).expect("open");
            store.allocate_uid(&env("a"), 10..=20, |_| true).expect("a");
            store.release_uid(&env("a")).expect("release");
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(
            store.allocate_uid(&env("b"), 10..=20, |_| true).expect("b"),
            11,
            "the last allocated uid is remembered across restarts"
        );
    }
}
