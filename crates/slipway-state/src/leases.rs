//! Replicas and leases: which `slipway serve` is alive, and which one works on each
//! environment, so that several replicas share one state without two of them acting on the
//! same environment at once.
//!
//! # Guarantees
//! - Time is the database's (`now_sql`), never a replica's: a replica whose clock is skewed,
//!   or that stalls (SIGSTOP, a GC pause, a partition), cannot extend its own lease.
//! - An environment's lease has one holder at a time, and an epoch that only grows: taking a
//!   free or expired lease increases it; renewing an unexpired one keeps it. A lease's row is
//!   never deleted, so the epoch continues across releases and recreated environments.
//! - With [`Store::require_leases`], every write of an environment proves in its transaction
//!   that this replica still holds the lease with the epoch [`Store::hold`] recorded
//!   (`check_fence`); on PostgreSQL it also locks the lease's row (`FOR UPDATE`), so no
//!   other replica can take it over until that transaction ends.
//!
//! # Caveats
//! - Nothing here decides who should hold what (rendezvous hashing over live replicas is the
//!   controller's); this is the mechanism, not the policy.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use slipway_core::EnvName;

use crate::StateError;
use crate::db::{Dialect, Exec, Row, params};
use crate::store::{Store, env_name, sql};

/// The database's clock in unix milliseconds, as SQL. On PostgreSQL both operands of `*`
/// are `numeric`, so that the system's operator is an exact match: with `* 1000` (an
/// `integer`) a `*(numeric, integer)` someone made in `public` (any role may, on PostgreSQL 14
/// and older) would be a better match than the system's, and compute every lease's clock.
pub(crate) fn now_sql(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
        Dialect::Postgres => {
            "CAST(CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS NUMERIC) \
             * CAST(1000 AS NUMERIC) AS BIGINT)"
        }
    }
}

/// One environment's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The environment.
    pub environment: EnvName,
    /// The replica holding it (or that last held it).
    pub holder: String,
    /// Its fencing epoch: greater for every new holding.
    pub epoch: i64,
    /// When this holding began, unix milliseconds of the database's clock.
    pub acquired_at: i64,
    /// When it expires unless renewed (0 once released).
    pub expires_at: i64,
}

/// What a writer proves it holds: checked by [`Store::check_fence`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The replica.
    pub replica: String,
    /// The epoch of its lease.
    pub epoch: i64,
}

/// A live or departed replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    /// Its name (`[controller] replica`).
    pub name: String,
    /// Where other replicas reach its node's processes (`[local] advertise`).
    pub advertise: Option<String>,
    /// When it first said it was alive, unix milliseconds.
    pub started_at: i64,
    /// Its last heartbeat, unix milliseconds of the database's clock.
    pub heartbeat_at: i64,
    /// How long ago that was, by the database's clock, in milliseconds.
    pub silent_ms: i64,
}

fn lease_from_row(row: &Row) -> Result<Lease, crate::db::DbError> {
    Ok(Lease {
        environment: env_name(row, 0)?,
        holder: row.get(1)?,
        epoch: row.get(2)?,
        acquired_at: row.get(3)?,
        expires_at: row.get(4)?,
    })
}

/// `environment`'s lease row (holder, epoch, unexpired by the database's clock), locked until
/// the transaction ends on PostgreSQL (`FOR UPDATE`; SQLite's write lock is the
/// transaction's).
fn locked_lease(
    tx: &mut impl Exec,
    environment: &EnvName,
) -> Result<Option<(String, i64, bool)>, StateError> {
    let dialect = tx.dialect();
    let lock = match dialect {
        Dialect::Postgres => " FOR UPDATE",
        Dialect::Sqlite => "",
    };
    let now = now_sql(dialect);
    tx.query_opt(
        &format!(
            "SELECT holder, epoch, expires_at > {now} FROM leases WHERE environment = ?1{lock}"
        ),
        params![environment],
        |row| {
            Ok((
                row.get::<String>(0)?,
                row.get::<i64>(1)?,
                row.get::<bool>(2)?,
            ))
        },
    )
    .map_err(sql(format!("check the lease of {environment}")))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

impl Store {
    /// Takes or renews `environment`'s lease for `replica` for `ttl` (by the database's
    /// clock): free, released or expired, it is taken with the next epoch; held by `replica`
    /// and unexpired, it is renewed with the same epoch; held by another replica and
    /// unexpired, `None`.
    pub fn acquire_lease(
        &self,
        environment: &EnvName,
        replica: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StateError> {
        let mut conn = self.conn();
        let now = now_sql(conn.dialect());
        conn.query_opt(
            &format!(
                "INSERT INTO leases (environment, holder, epoch, acquired_at, expires_at) \
                 VALUES (?1, ?2, 1, {now}, {now} + ?3) \
                 ON CONFLICT (environment) DO UPDATE SET \
                   epoch = CASE WHEN leases.holder = excluded.holder \
                                 AND leases.expires_at > {now} \
                            THEN leases.epoch ELSE leases.epoch + 1 END, \
                   acquired_at = CASE WHEN leases.holder = excluded.holder \
                                       AND leases.expires_at > {now} \
                                  THEN leases.acquired_at ELSE excluded.acquired_at END, \
                   holder = excluded.holder, \
                   expires_at = excluded.expires_at \
                 WHERE leases.holder = excluded.holder OR leases.expires_at <= {now} \
                 RETURNING environment, holder, epoch, acquired_at, expires_at"
            ),
            params![environment, replica, millis(ttl)],
            lease_from_row,
        )
        .map_err(sql(format!(
            "take the lease of {environment} for {replica}"
        )))
    }

    /// Gives up `environment`'s lease if `replica` holds it at `epoch`; returns whether it
    /// did. The epoch stays: the next holder's is greater.
    pub fn release_lease(
        &self,
        environment: &EnvName,
        replica: &str,
        epoch: i64,
    ) -> Result<bool, StateError> {
        self.conn()
            .execute(
                "UPDATE leases SET expires_at = 0 \
                 WHERE environment = ?1 AND holder = ?2 AND epoch = ?3",
                params![environment, replica, epoch],
            )
            .map(|n| n > 0)
            .map_err(sql(format!("release the lease of {environment}")))
    }

    /// Gives up `environment`'s lease like [`Store::release_lease`], leaving `to` as its last
    /// holder: a one-shot command that borrowed a node-bound environment's lease gives it back
    /// to the replica of its node, which takes it again (node-bound environments stay with
    /// their last holder).
    pub fn return_lease(
        &self,
        environment: &EnvName,
        replica: &str,
        epoch: i64,
        to: &str,
    ) -> Result<bool, StateError> {
        self.conn()
            .execute(
                "UPDATE leases SET expires_at = 0, holder = ?4 \
                 WHERE environment = ?1 AND holder = ?2 AND epoch = ?3",
                params![environment, replica, epoch, to],
            )
            .map(|n| n > 0)
            .map_err(sql(format!("give back the lease of {environment}")))
    }

    /// `environment`'s lease (expired or released included), if it ever had one.
    pub fn lease(&self, environment: &EnvName) -> Result<Option<Lease>, StateError> {
        self.conn()
            .query_opt(
                "SELECT environment, holder, epoch, acquired_at, expires_at FROM leases \
                 WHERE environment = ?1",
                params![environment],
                lease_from_row,
            )
            .map_err(sql(format!("read the lease of {environment}")))
    }

    /// The replica holding `environment`'s lease now (unexpired, by the database's clock).
    pub fn holder(&self, environment: &EnvName) -> Result<Option<String>, StateError> {
        let mut conn = self.conn();
        let now = now_sql(conn.dialect());
        conn.query_opt(
            &format!("SELECT holder FROM leases WHERE environment = ?1 AND expires_at > {now}"),
            params![environment],
            |row| row.get(0),
        )
        .map_err(sql(format!("read the holder of {environment}")))
    }

    /// The replica holding each environment's lease now (unexpired, by the database's
    /// clock): [`Store::holder`] of every environment in one query.
    pub fn holders(&self) -> Result<BTreeMap<EnvName, String>, StateError> {
        let mut conn = self.conn();
        let now = now_sql(conn.dialect());
        let rows = conn
            .query(
                &format!("SELECT environment, holder FROM leases WHERE expires_at > {now}"),
                params![],
                |row| Ok((env_name(row, 0)?, row.get::<String>(1)?)),
            )
            .map_err(sql("read the holders of the leases"))?;
        Ok(rows.into_iter().collect())
    }

    /// Every lease, expired and released ones included, by environment.
    pub fn leases(&self) -> Result<Vec<Lease>, StateError> {
        self.conn()
            .query(
                "SELECT environment, holder, epoch, acquired_at, expires_at FROM leases \
                 ORDER BY environment",
                params![],
                lease_from_row,
            )
            .map_err(sql("list leases"))
    }

    /// Fails with [`StateError::Fenced`] unless `fence` still holds `environment`'s lease,
    /// unexpired, by the database's clock. Call it first in the transaction of a write:
    /// on PostgreSQL it locks the lease's row until the transaction ends, so the lease cannot
    /// pass to another replica between the check and the write.
    pub(crate) fn check_fence(
        tx: &mut impl Exec,
        environment: &EnvName,
        fence: &Fence,
    ) -> Result<(), StateError> {
        match locked_lease(tx, environment)? {
            Some((holder, epoch, true)) if holder == fence.replica && epoch == fence.epoch => {
                Ok(())
            }
            other => Err(StateError::Fenced {
                environment: environment.to_string(),
                replica: fence.replica.clone(),
                epoch: fence.epoch,
                now: other.map(|(holder, epoch, live)| {
                    format!(
                        "{} by {holder} at epoch {epoch}",
                        if live { "held" } else { "expired, last held" }
                    )
                }),
            }),
        }
    }

    /// Fails with [`StateError::Fenced`] when a replica holds `environment`'s lease,
    /// unexpired: a write by a replica that holds none (creating the environment, a person's
    /// request) must not race the holder's. Locks the lease's row as [`Store::check_fence`].
    pub(crate) fn check_unleased(
        tx: &mut impl Exec,
        environment: &EnvName,
    ) -> Result<(), StateError> {
        match locked_lease(tx, environment)? {
            Some((holder, epoch, true)) => Err(StateError::Fenced {
                environment: environment.to_string(),
                replica: "this replica".to_owned(),
                epoch: 0,
                now: Some(format!("held by {holder} at epoch {epoch}")),
            }),
            _ => Ok(()),
        }
    }

    /// Records that `replica` is alive now (by the database's clock), reachable at
    /// `advertise`.
    pub fn heartbeat(&self, replica: &str, advertise: Option<&str>) -> Result<(), StateError> {
        let mut conn = self.conn();
        let now = now_sql(conn.dialect());
        conn.execute(
            &format!(
                "INSERT INTO replicas (name, advertise, started_at, heartbeat_at) \
                 VALUES (?1, ?2, {now}, {now}) \
                 ON CONFLICT (name) DO UPDATE SET advertise = excluded.advertise, \
                   heartbeat_at = excluded.heartbeat_at"
            ),
            params![replica, advertise],
        )
        .map(drop)
        .map_err(sql(format!("record the heartbeat of {replica}")))
    }

    /// Every replica that ever beat, with how long it has been silent, by name.
    pub fn replicas(&self) -> Result<Vec<ReplicaRecord>, StateError> {
        let mut conn = self.conn();
        let now = now_sql(conn.dialect());
        conn.query(
            &format!(
                "SELECT name, advertise, started_at, heartbeat_at, {now} - heartbeat_at \
                 FROM replicas ORDER BY name"
            ),
            params![],
            |row| {
                Ok(ReplicaRecord {
                    name: row.get(0)?,
                    advertise: row.get(1)?,
                    started_at: row.get(2)?,
                    heartbeat_at: row.get(3)?,
                    silent_ms: row.get(4)?,
                })
            },
        )
        .map_err(sql("list replicas"))
    }
}
