//! Environments: what each should run, what it runs, and how that is going.

use crate::db::{DbError, Exec, Row, params};
use serde::{Deserialize, Serialize};
use slipway_core::EnvName;

use slipway_core::vocab::{EnvKind, Health, SyncState};

use crate::StateError;
use crate::store::{Store, env_name, sql, word};

/// One environment as the store knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentRecord {
    /// A DNS label, unique: `prod`, `pr-42`.
    pub name: EnvName,
    /// Tracking a ref, generated from a pull request or branch, or created by a person.
    pub kind: EnvKind,
    /// The stack it belongs to (`stack:` in `slipway.yaml`).
    pub stack: String,
    /// The repository it deploys from, as given to the engine.
    pub repo: String,
    /// The ref it tracks, for static and generated environments.
    pub tracked_ref: Option<String>,
    /// The commit it should run.
    pub desired_commit: Option<String>,
    /// The commit it runs (last successful deployment).
    pub commit: Option<String>,
    /// The rendered desired-state hash it runs.
    pub hash: Option<String>,
    /// Whether it runs the commit it should.
    pub sync: SyncState,
    /// Its health, as the providers observe it.
    pub health: Health,
    /// A short explanation of the current state, for people.
    pub message: Option<String>,
    /// Who created it, for ad-hoc environments.
    pub owner: Option<String>,
    /// Its time to live, in milliseconds.
    pub ttl_ms: Option<i64>,
    /// When it expires, unix milliseconds.
    pub expires_at: Option<i64>,
    /// Pinned environments do not follow their tracked ref.
    pub pinned: bool,
    /// When it was first recorded, unix milliseconds.
    pub created_at: i64,
    /// When it was last written, unix milliseconds.
    pub updated_at: i64,
    /// The `environments:` entry it follows: itself for a static environment, its family for
    /// a generated or ad-hoc one (`None` in records written before this was kept).
    #[serde(default)]
    pub definition: Option<String>,
    /// Whether its `environments:` entry is `protected: true` (as of its last apply):
    /// destroying it, or a resource in it, needs an explicit confirmation.
    #[serde(default)]
    pub protected: bool,
}

impl EnvironmentRecord {
    /// The record of an environment first seen at `now` and not applied yet: out of sync,
    /// missing, with no ref, commit, owner, TTL or definition, unpinned and unprotected.
    pub fn new(
        name: EnvName,
        kind: EnvKind,
        stack: String,
        repo: String,
        now: i64,
    ) -> EnvironmentRecord {
        EnvironmentRecord {
            name,
            kind,
            stack,
            repo,
            tracked_ref: None,
            desired_commit: None,
            commit: None,
            hash: None,
            sync: SyncState::OutOfSync,
            health: Health::Missing,
            message: None,
            owner: None,
            ttl_ms: None,
            expires_at: None,
            pinned: false,
            created_at: now,
            updated_at: now,
            definition: None,
            protected: false,
        }
    }

    /// What it follows: the commit it is pinned to, or else the ref it tracks.
    pub fn follows(&self) -> Option<Follows> {
        if self.pinned {
            self.desired_commit.clone().map(Follows::Pinned)
        } else {
            self.tracked_ref.clone().map(Follows::Ref)
        }
    }
}

/// What an environment follows (see [`EnvironmentRecord::follows`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Follows {
    /// A ref (`main`), at whatever commit it points to.
    Ref(String),
    /// One commit (a pull request's head applied to it), whatever its ref does.
    Pinned(String),
}

impl Follows {
    /// The ref or commit to read.
    pub fn reference(&self) -> &str {
        match self {
            Follows::Ref(r) | Follows::Pinned(r) => r,
        }
    }
}

/// Updates every field of an existing environment but `created_at`.
const UPDATE_ALL: &str = "DO UPDATE SET \
    kind = excluded.kind, stack = excluded.stack, repo = excluded.repo, \
    tracked_ref = excluded.tracked_ref, desired_commit = excluded.desired_commit, \
    current_commit = excluded.current_commit, hash = excluded.hash, \
    sync = excluded.sync, health = excluded.health, \
    message = excluded.message, owner = excluded.owner, \
    ttl_ms = excluded.ttl_ms, expires_at = excluded.expires_at, \
    pinned = excluded.pinned, updated_at = excluded.updated_at, \
    definition = excluded.definition, protected = excluded.protected";

const COLUMNS: &str = "name, kind, stack, repo, tracked_ref, desired_commit, current_commit, \
                       hash, sync, health, message, owner, ttl_ms, expires_at, pinned, \
                       created_at, updated_at, definition, protected";

fn from_row(row: &Row) -> Result<EnvironmentRecord, DbError> {
    Ok(EnvironmentRecord {
        name: env_name(row, 0)?,
        kind: word(row, 1)?,
        stack: row.get(2)?,
        repo: row.get(3)?,
        tracked_ref: row.get(4)?,
        desired_commit: row.get(5)?,
        commit: row.get(6)?,
        hash: row.get(7)?,
        sync: word(row, 8)?,
        health: word(row, 9)?,
        message: row.get(10)?,
        owner: row.get(11)?,
        ttl_ms: row.get(12)?,
        expires_at: row.get(13)?,
        pinned: row.get(14)?,
        created_at: row.get(15)?,
        updated_at: row.get(16)?,
        definition: row.get(17)?,
        protected: row.get(18)?,
    })
}

/// The environment called `name`, if it exists, read through `db`.
fn read_one(db: &mut impl Exec, name: &EnvName) -> Result<Option<EnvironmentRecord>, StateError> {
    db.query_opt(
        &format!("SELECT {COLUMNS} FROM environments WHERE name = ?1"),
        params![name.as_str()],
        from_row,
    )
    .map_err(sql(format!("read environment {name}")))
}

/// `INSERT` of every field of `record` in `tx`, `ON CONFLICT (name) {on_conflict}`.
fn write_row(
    tx: &mut impl Exec,
    record: &EnvironmentRecord,
    on_conflict: &str,
) -> Result<u64, StateError> {
    tx.execute(
        &format!(
            "INSERT INTO environments ({COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, \
                     ?16, ?17, ?18, ?19) \
             ON CONFLICT (name) {on_conflict}"
        ),
        params![
            record.name.as_str(),
            record.kind.as_str(),
            record.stack,
            record.repo,
            record.tracked_ref,
            record.desired_commit,
            record.commit,
            record.hash,
            record.sync.as_str(),
            record.health.as_str(),
            record.message,
            record.owner,
            record.ttl_ms,
            record.expires_at,
            record.pinned,
            record.created_at,
            record.updated_at,
            record.definition,
            record.protected,
        ],
    )
    .map_err(sql(format!("record environment {}", record.name)))
}

impl Store {
    /// Inserts the environment, or updates every field of an existing one except `created_at`,
    /// which keeps the time it was first recorded.
    ///
    /// # Guarantees
    /// Updating never touches the environment's resources or ports. (An `INSERT OR REPLACE`
    /// would: SQLite implements it as delete-then-insert, and the delete cascades.)
    pub fn upsert_environment(&self, record: &EnvironmentRecord) -> Result<(), StateError> {
        self.write_record(record, UPDATE_ALL).map(drop)
    }

    /// Records a new environment unless one of that name is recorded already (by another
    /// replica discovering it at the same time); returns whether this call recorded it.
    pub fn insert_environment(&self, record: &EnvironmentRecord) -> Result<bool, StateError> {
        self.write_record(record, "DO NOTHING").map(|n| n > 0)
    }

    /// Reads environment `name` and writes what `change` makes of it, in one transaction:
    /// nothing else writes the environment in between. `change` refusing (its `Err`) writes
    /// nothing and is handed back as the inner result.
    pub fn update_environment<E>(
        &self,
        name: &EnvName,
        change: impl FnOnce(Option<EnvironmentRecord>) -> Result<EnvironmentRecord, E>,
    ) -> Result<Result<EnvironmentRecord, E>, StateError> {
        self.write_env(Some(name), &[], |tx| {
            let current = read_one(tx, name)?;
            match change(current) {
                Ok(record) => {
                    assert_eq!(
                        &record.name, name,
                        "an update writes the environment it read"
                    );
                    write_row(tx, &record, UPDATE_ALL)?;
                    Ok(Ok(record))
                }
                Err(refused) => Ok(Err(refused)),
            }
        })
    }

    /// Changes environment `name` with `change`, read and written in one transaction (see
    /// [`Store::update_environment`]); returns whether it exists (nothing is written if not).
    pub fn modify_environment(
        &self,
        name: &EnvName,
        change: impl FnOnce(&mut EnvironmentRecord),
    ) -> Result<bool, StateError> {
        let updated = self.update_environment(name, |recorded| match recorded {
            Some(mut record) => {
                change(&mut record);
                Ok(record)
            }
            None => Err(()),
        })?;
        Ok(updated.is_ok())
    }

    /// `INSERT` of every field of `record`, `ON CONFLICT (name) {on_conflict}`.
    fn write_record(
        &self,
        record: &EnvironmentRecord,
        on_conflict: &str,
    ) -> Result<u64, StateError> {
        self.write_env(Some(&record.name), &[], |tx| {
            write_row(tx, record, on_conflict)
        })
    }

    /// The environment called `name`, if it exists.
    pub fn environment(&self, name: &EnvName) -> Result<Option<EnvironmentRecord>, StateError> {
        read_one(&mut *self.conn(), name)
    }

    /// Every environment, ordered by name.
    pub fn environments(&self) -> Result<Vec<EnvironmentRecord>, StateError> {
        self.conn()
            .query(
                &format!("SELECT {COLUMNS} FROM environments ORDER BY name"),
                params![],
                from_row,
            )
            .map_err(sql("list environments"))
    }

    /// Every environment's name, ordered: what queuing each of them needs, without reading
    /// (and decoding) every record.
    pub fn environment_names(&self) -> Result<Vec<EnvName>, StateError> {
        self.conn()
            .query(
                "SELECT name FROM environments ORDER BY name",
                params![],
                |row| env_name(row, 0),
            )
            .map_err(sql("list the environments' names"))
    }

    /// The environments whose expiry is at or before `now` (unix milliseconds), by name:
    /// what the controller looks for every second, without reading every record.
    pub fn expired_environments(&self, now: i64) -> Result<Vec<EnvName>, StateError> {
        self.conn()
            .query(
                "SELECT name FROM environments WHERE expires_at IS NOT NULL AND expires_at <= ?1 \
                 ORDER BY name",
                params![now],
                |row| env_name(row, 0),
            )
            .map_err(sql("list the expired environments"))
    }

    /// How many environments are in each pair of sync state and health that has any: what
    /// `/metrics` shows, counted by the database rather than by reading every record.
    pub fn environment_counts(&self) -> Result<Vec<(SyncState, Health, u64)>, StateError> {
        self.conn()
            .query(
                "SELECT sync, health, COUNT(*) FROM environments GROUP BY sync, health \
                 ORDER BY sync, health",
                params![],
                |row| {
                    let n: i64 = row.get(2)?;
                    Ok((word(row, 0)?, word(row, 1)?, u64::try_from(n).unwrap_or(0)))
                },
            )
            .map_err(sql("count the environments by state"))
    }

    /// Deletes the environment with its resources and ports; its deployments and events stay as
    /// history. Returns whether it existed.
    pub fn delete_environment(&self, name: &EnvName) -> Result<bool, StateError> {
        // One statement: SQLite applies the cascade inside it, so it is atomic on its own.
        let deleted = self.write_env(Some(name), &[], |tx| {
            tx.execute(
                "DELETE FROM environments WHERE name = ?1",
                params![name.as_str()],
            )
            .map_err(sql(format!("delete environment {name}")))
        })?;
        Ok(deleted > 0)
    }

    /// Records the environment's sync state, health and message at time `at`.
    ///
    /// # Errors
    /// [`StateError::NotFound`] when no such environment exists.
    pub fn set_environment_status(
        &self,
        name: &EnvName,
        sync: SyncState,
        health: Health,
        message: Option<&str>,
        at: i64,
    ) -> Result<(), StateError> {
        let updated = self.write_env(Some(name), &[], |tx| {
            tx.execute(
                "UPDATE environments SET sync = ?2, health = ?3, message = ?4, updated_at = ?5 \
                 WHERE name = ?1",
                params![name.as_str(), sync.as_str(), health.as_str(), message, at],
            )
            .map_err(sql(format!("record the status of environment {name}")))
        })?;
        if updated == 0 {
            return Err(StateError::NotFound {
                what: "environment",
                key: name.to_string(),
            });
        }
        Ok(())
    }
}
