//! Environments: what each should run, what it runs, and how that is going.

use crate::db::{DbError, Exec, Row, params};
use serde::{Deserialize, Serialize};
use slipway_core::EnvName;

use slipway_core::vocab::{Access, Activity, EnvKind, Health, SyncState};

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
    /// Whether its processes run, sleep for want of requests, or wait for a slot in its
    /// family (`awake` for every environment without `sleep_after` or `max_environments`).
    #[serde(default = "awake")]
    pub activity: Activity,
    /// Since when it has that activity, unix milliseconds (`None`: since it was recorded).
    #[serde(default)]
    pub activity_since: Option<i64>,
    /// When it joined its family's queue, unix milliseconds, while it is `queued`: its place
    /// in the queue (earlier first, then by name).
    #[serde(default)]
    pub queued_at: Option<i64>,
    /// When its preview URL last answered a request, unix milliseconds. Read here, written
    /// only by [`Store::record_requests`]: a whole-record write leaves it as it is.
    #[serde(default)]
    pub last_request_at: Option<i64>,
    /// Who may open its preview URL, as its `environments:` entry said at its last apply;
    /// `None` before one, see [`EnvironmentRecord::access`].
    #[serde(default)]
    pub access: Option<Access>,
    /// Its processes are stopped after this long without a request (its definition's
    /// `sleep_after` at the commit it runs), milliseconds.
    #[serde(default)]
    pub sleep_after_ms: Option<i64>,
    /// It is destroyed after this long without a request (its family's `idle_ttl` at the
    /// commit it runs), milliseconds.
    #[serde(default)]
    pub idle_ttl_ms: Option<i64>,
    /// When a deploy of a new commit, a wake or an extension last touched it, unix
    /// milliseconds: idle time counts from the latest of this, its last request and its
    /// creation ([`EnvironmentRecord::idle_since`]).
    #[serde(default)]
    pub touched_at: Option<i64>,
    /// When the warning before its idle expiry was given (once per idle spell).
    #[serde(default)]
    pub idle_warned_at: Option<i64>,
}

fn awake() -> Activity {
    Activity::Awake
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
            activity: Activity::Awake,
            activity_since: None,
            queued_at: None,
            last_request_at: None,
            access: None,
            sleep_after_ms: None,
            idle_ttl_ms: None,
            touched_at: None,
            idle_warned_at: None,
        }
    }

    /// Who may open its preview URL: as recorded at its last apply, else by its kind (a
    /// static environment's is public, a generated or ad-hoc one's private).
    pub fn access(&self) -> Access {
        self.access.unwrap_or(match self.kind {
            EnvKind::Static => Access::Public,
            EnvKind::Generated | EnvKind::Adhoc => Access::Private,
        })
    }

    /// Since when it has had no request, no new commit, no wake and no extension (unix
    /// milliseconds), given the requests `seen` meanwhile that are not recorded yet.
    pub fn idle_since(&self, seen: Option<i64>) -> i64 {
        [self.last_request_at, self.touched_at, seen]
            .into_iter()
            .flatten()
            .fold(self.created_at, i64::max)
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
pub(crate) const UPDATE_ALL: &str = "DO UPDATE SET \
    kind = excluded.kind, stack = excluded.stack, repo = excluded.repo, \
    tracked_ref = excluded.tracked_ref, desired_commit = excluded.desired_commit, \
    current_commit = excluded.current_commit, hash = excluded.hash, \
    sync = excluded.sync, health = excluded.health, \
    message = excluded.message, owner = excluded.owner, \
    ttl_ms = excluded.ttl_ms, expires_at = excluded.expires_at, \
    pinned = excluded.pinned, updated_at = excluded.updated_at, \
    definition = excluded.definition, protected = excluded.protected, \
    activity = excluded.activity, activity_since = excluded.activity_since, \
    queued_at = excluded.queued_at, access = excluded.access, \
    sleep_after_ms = excluded.sleep_after_ms, \
    idle_ttl_ms = excluded.idle_ttl_ms, touched_at = excluded.touched_at, \
    idle_warned_at = excluded.idle_warned_at";

pub(crate) const COLUMNS: &str = "name, kind, stack, repo, tracked_ref, desired_commit, current_commit, \
                       hash, sync, health, message, owner, ttl_ms, expires_at, pinned, \
                       created_at, updated_at, definition, protected, activity, \
                       activity_since, queued_at, last_request_at, access, sleep_after_ms, \
                       idle_ttl_ms, touched_at, idle_warned_at";

/// The row read by [`COLUMNS`], its texts taken rather than copied (a listing reads every
/// environment's).
pub(crate) fn from_row(mut row: Row) -> Result<EnvironmentRecord, DbError> {
    Ok(EnvironmentRecord {
        name: env_name(&row, 0)?,
        kind: word(&row, 1)?,
        sync: word(&row, 8)?,
        health: word(&row, 9)?,
        stack: row.take(2)?,
        repo: row.take(3)?,
        tracked_ref: row.take(4)?,
        desired_commit: row.take(5)?,
        commit: row.take(6)?,
        hash: row.take(7)?,
        message: row.take(10)?,
        owner: row.take(11)?,
        ttl_ms: row.take(12)?,
        expires_at: row.take(13)?,
        pinned: row.take(14)?,
        created_at: row.take(15)?,
        updated_at: row.take(16)?,
        definition: row.take(17)?,
        protected: row.take(18)?,
        activity: word(&row, 19)?,
        activity_since: row.take(20)?,
        queued_at: row.take(21)?,
        last_request_at: row.take(22)?,
        access: match row.get::<Option<String>>(23)? {
            Some(_) => Some(word(&row, 23)?),
            None => None,
        },
        sleep_after_ms: row.take(24)?,
        idle_ttl_ms: row.take(25)?,
        touched_at: row.take(26)?,
        idle_warned_at: row.take(27)?,
    })
}

/// The environment called `name`, if it exists, read through `db`.
pub(crate) fn read_one(
    db: &mut impl Exec,
    name: &EnvName,
) -> Result<Option<EnvironmentRecord>, StateError> {
    db.rows(
        &format!("SELECT {COLUMNS} FROM environments WHERE name = ?1"),
        params![name.as_str()],
    )
    .and_then(|rows| rows.into_iter().next().map(from_row).transpose())
    .map_err(sql(format!("read environment {name}")))
}

/// The environments waiting in a queue (`activity` is `queued`), by name, read through `db`.
pub(crate) fn read_queued(db: &mut impl Exec) -> Result<Vec<EnvironmentRecord>, StateError> {
    db.query_owned(
        &format!("SELECT {COLUMNS} FROM environments WHERE activity = ?1 ORDER BY name"),
        params![Activity::Queued.as_str()],
        from_row,
    )
    .map_err(sql("read the queued environments"))
}

/// `INSERT` of every field of `record` in `tx`, `ON CONFLICT (name) {on_conflict}`.
pub(crate) fn write_row(
    tx: &mut impl Exec,
    record: &EnvironmentRecord,
    on_conflict: &str,
) -> Result<u64, StateError> {
    tx.execute(
        &format!(
            "INSERT INTO environments ({COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, \
                     ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28) \
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
            record.activity.as_str(),
            record.activity_since,
            record.queued_at,
            record.last_request_at,
            record.access.map(Access::as_str),
            record.sleep_after_ms,
            record.idle_ttl_ms,
            record.touched_at,
            record.idle_warned_at,
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
        self.write_env(Some(name), &[], |tx| update_in(tx, name, change))
    }

    /// Changes environment `name` with `change`, read and written in one transaction (see
    /// [`Store::update_environment`]); returns whether it exists (nothing is written if not).
    pub fn modify_environment(
        &self,
        name: &EnvName,
        change: impl FnOnce(&mut EnvironmentRecord),
    ) -> Result<bool, StateError> {
        self.write_env(Some(name), &[], |tx| modify_in(tx, name, change))
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
            .query_owned(
                &format!("SELECT {COLUMNS} FROM environments ORDER BY name"),
                params![],
                from_row,
            )
            .map_err(sql("list environments"))
    }

    /// The environments named from `first` to `last`, both included, ordered by name: what a
    /// listing reads a range at a time, on as many threads as it has ranges at once.
    pub fn environments_between(
        &self,
        first: &EnvName,
        last: &EnvName,
    ) -> Result<Vec<EnvironmentRecord>, StateError> {
        self.conn()
            .query_owned(
                &format!(
                    "SELECT {COLUMNS} FROM environments \
                     WHERE name >= ?1 AND name <= ?2 ORDER BY name"
                ),
                params![first.as_str(), last.as_str()],
                from_row,
            )
            .map_err(sql(format!("list the environments {first} to {last}")))
    }

    /// The environments waiting in a queue (`activity` is `queued`), ordered by name: all
    /// that [`crate::queue_positions`] looks at, without reading every record.
    pub fn queued_environments(&self) -> Result<Vec<EnvironmentRecord>, StateError> {
        read_queued(&mut *self.conn())
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

    /// The names of the static environments (declared with `track:`), by name.
    pub fn static_environment_names(&self) -> Result<Vec<EnvName>, StateError> {
        self.conn()
            .query(
                "SELECT name FROM environments WHERE kind = ?1 ORDER BY name",
                params![EnvKind::Static.as_str()],
                |row| env_name(row, 0),
            )
            .map_err(sql("list the static environments' names"))
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

    /// The environments that may have something due at `now` for want of requests: past the
    /// point where they would sleep (`sleep_after`, awake) or be warned of their idle expiry
    /// (at least 80% of `idle_ttl`), counted from the latest of creation, last request and
    /// last touch, as recorded. A superset of what is due (the warning point may be later,
    /// and a request not recorded yet moves it): the controller decides which are
    /// ([`EnvironmentRecord::idle_since`]). The database picks them, so that a controller of
    /// 10,000 previews reads only those near their time every second, not every record.
    pub fn idling_environments(&self, now: i64) -> Result<Vec<EnvironmentRecord>, StateError> {
        // `since + limit <= now` for `since` the latest of three columns, written as each
        // column `<= now - limit` (portable: no GREATEST/MAX(a, b) across dialects).
        let past = |limit: &str| {
            format!(
                "(created_at <= ?1 - {limit} \
                 AND (last_request_at IS NULL OR last_request_at <= ?1 - {limit}) \
                 AND (touched_at IS NULL OR touched_at <= ?1 - {limit}))"
            )
        };
        self.conn()
            .query_owned(
                &format!(
                    "SELECT {COLUMNS} FROM environments WHERE current_commit IS NOT NULL AND \
                     ((idle_ttl_ms IS NOT NULL AND {}) \
                      OR (sleep_after_ms IS NOT NULL AND activity = 'awake' AND {})) \
                     ORDER BY name",
                    // Divided first: a limit of millions of years, which a branch may write,
                    // multiplied first overflows PostgreSQL's bigint (and fails the whole
                    // listing). Rounded down, the point is never later than 80%.
                    past("(idle_ttl_ms / 5 * 4)"),
                    past("sleep_after_ms"),
                ),
                params![now],
                from_row,
            )
            .map_err(sql("list the environments that may idle"))
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
        self.write_env(Some(name), &[], |tx| delete_environment_in(tx, name))
    }

    /// Records that the preview URLs of these environments answered requests, the last at
    /// the time given with each (unix milliseconds). A time earlier than the one recorded
    /// changes nothing, so routers of several replicas may write in any order; a name not
    /// recorded is skipped. Written without a lease (any replica's router serves any
    /// environment) and never by a whole-record write, which leaves the column alone.
    pub fn record_requests(&self, seen: &[(EnvName, i64)]) -> Result<(), StateError> {
        if seen.is_empty() {
            return Ok(());
        }
        self.write_env(None, &[], |tx| {
            for (name, at) in seen {
                tx.execute(
                    "UPDATE environments SET last_request_at = ?2 WHERE name = ?1 \
                     AND (last_request_at IS NULL OR last_request_at < ?2)",
                    params![name.as_str(), *at],
                )
                .map_err(sql(format!("record the requests of environment {name}")))?;
            }
            Ok(())
        })
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

/// Deletes the environment `name` (its resources and ports with it), in `tx`; whether it
/// existed. One statement: SQLite applies the cascade inside it.
/// [`Store::update_environment`] through `tx`.
pub(crate) fn update_in<E>(
    tx: &mut impl Exec,
    name: &EnvName,
    change: impl FnOnce(Option<EnvironmentRecord>) -> Result<EnvironmentRecord, E>,
) -> Result<Result<EnvironmentRecord, E>, StateError> {
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
}

pub(crate) fn delete_environment_in(
    tx: &mut impl Exec,
    name: &EnvName,
) -> Result<bool, StateError> {
    tx.execute(
        "DELETE FROM environments WHERE name = ?1",
        params![name.as_str()],
    )
    .map(|deleted| deleted > 0)
    .map_err(sql(format!("delete environment {name}")))
}

/// Changes environment `name` with `change`, read and written in `tx`; whether it exists
/// (nothing is written if not).
pub(crate) fn modify_in(
    tx: &mut impl Exec,
    name: &EnvName,
    change: impl FnOnce(&mut EnvironmentRecord),
) -> Result<bool, StateError> {
    let Some(mut record) = read_one(tx, name)? else {
        return Ok(false);
    };
    change(&mut record);
    assert_eq!(&record.name, name, "a change keeps the environment's name");
    write_row(tx, &record, UPDATE_ALL)?;
    Ok(true)
}
