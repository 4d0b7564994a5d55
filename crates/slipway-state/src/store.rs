//! The [`Store`] handle: opening the database and the helpers the record modules share.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::OpenFlags;
use rusqlite::config::DbConfig;
use serde::Serialize;
use serde::de::DeserializeOwned;
use slipway_core::EnvName;
use slipway_core::vocab::UnknownWord;

use crate::StateError;
use crate::db::{Conn, DbError, DecodeError, Dialect, Exec, PgConn, Row, Tx, params};
use crate::leases::Fence;
use crate::schema;

/// How long a write waits for another process holding the database lock before giving up with
/// a retryable error.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The WAL's length, in pages, past which a commit checkpoints it (see [`Store::open`]).
const WAL_PAGES: u32 = 128;

/// The state store: one connection to `<home>/state.db` (SQLite, the default) or to a
/// PostgreSQL database shared by several replicas, shared by the threads of a process.
///
/// `Store` is `Send + Sync`; calls are serialized on an internal mutex, which is cheap next to
/// the database's own locks. Several processes may open the same SQLite home at once (WAL
/// mode): their writes serialize on SQLite's lock, waiting up to five seconds.
pub struct Store {
    /// The database file, or PostgreSQL's URL without its password.
    location: String,
    path: PathBuf,
    conn: Mutex<Conn>,
    sealer: crate::seal::Sealer,
    /// With replicas sharing the state: the leases this replica holds, which every write of
    /// an environment must prove ([`Store::require_leases`]).
    fences: Option<Mutex<HashMap<EnvName, Fence>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.location)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) `home` and `home/state.db`, and migrates the schema to
    /// [`crate::SCHEMA_VERSION`].
    ///
    /// # Errors
    /// [`StateError::NewerSchema`] when the database was written by a newer Slipway;
    /// [`StateError::CreateHome`], [`StateError::Open`] or [`StateError::Migrate`] otherwise.
    pub fn open(home: &Path) -> Result<Store, StateError> {
        create_home(home)?;
        let path = home.join("state.db");
        let location = path.display().to_string();
        let open_error = |source: rusqlite::Error| StateError::Open {
            location: location.clone(),
            source: source.into(),
        };
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_error)?;
        // The busy timeout first: switching to WAL takes a lock another process may hold.
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
        // A new database's switch to WAL upgrades a read lock to an exclusive one: when
        // several connections switch at once (two commands, or a controller's threads, on a
        // new home), SQLite answers all but one `SQLITE_BUSY` at once rather than let them
        // wait for each other, so the switch is tried again, within the busy timeout.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        let mode: String = loop {
            match conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)) {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                other => break other.map_err(open_error)?,
            }
        };
        if !mode.eq_ignore_ascii_case("wal") {
            // WAL is refused on some network filesystems; running in another journal mode would
            // silently change the concurrency and durability the rest of the crate relies on.
            return Err(StateError::WalUnavailable { path, mode });
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_error)?;
        // The WAL stays when the last connection closes, not checkpointed: each short-lived
        // command (every CLI call) would otherwise checkpoint and fsync the database at its
        // exit, delete the WAL, and make the next one create it again (a new file: a sync of
        // the WAL's header and of the home's directory). The automatic checkpoint at 1,000
        // pages still bounds it; readers see the same data either way, and a backup is
        // `state backup` (VACUUM INTO), which reads through the WAL.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(open_error)?;
        // But kept short: the first connection after the others closed (every CLI call when
        // no controller runs) rebuilds the WAL's index by reading and checksumming every
        // frame in it. At SQLite's default of 1,000 pages (4 MiB, some 40 applies) that was a
        // median 2 MiB read by every command, 1.4 ms when full; at 128 pages an apply (about
        // 25 pages) checkpoints one time in five, and no command reads more than 512 KiB.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_PAGES)
            .map_err(open_error)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_error)?;
        Store::finish(home, location, path, Conn::sqlite(conn))
    }

    /// Opens the PostgreSQL database at `url` (a `postgres://` URL or libpq key/value string)
    /// as the state of the home `home` (which keeps the state key and the local directories),
    /// and migrates its schema to [`crate::SCHEMA_VERSION`]. Several replicas may open the
    /// same database at once: migrations run one at a time, each once.
    ///
    /// # Errors
    /// As [`Store::open`]; [`StateError::Open`] when the server cannot be reached.
    pub fn open_postgres(home: &Path, url: &str) -> Result<Store, StateError> {
        create_home(home)?;
        let location = slipway_core::redact::redact_url(url);
        let conn = PgConn::connect(url).map_err(|source| StateError::Open {
            location: location.clone(),
            source,
        })?;
        Store::finish(home, location, home.join("state.db"), Conn::postgres(conn))
    }

    fn finish(
        home: &Path,
        location: String,
        path: PathBuf,
        mut conn: Conn,
    ) -> Result<Store, StateError> {
        schema::migrate(&mut conn, &location)?;
        // From here on, a newer Slipway migrating the database stops this process's writes.
        conn.guard_schema(schema::understood());
        let sealer = match conn.dialect() {
            Dialect::Sqlite => crate::seal::Sealer::load_or_create(&home.join("state.key"))?,
            // Replicas of the previous release may read it during a rolling upgrade.
            Dialect::Postgres => shared_key(&mut conn, home, &location)?.sealing_with_age(),
        };
        Ok(Store {
            location,
            path,
            conn: Mutex::new(conn),
            sealer,
            fences: None,
        })
    }

    /// Seals values with this home's key (see [`crate::Sealer`]).
    pub fn sealer(&self) -> &crate::seal::Sealer {
        &self.sealer
    }

    /// The SQLite database file (`<home>/state.db`; not used when the state is in
    /// PostgreSQL).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the state is: the SQLite file, or PostgreSQL's URL without its password.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Which database holds the state.
    pub fn dialect(&self) -> Dialect {
        use crate::db::Exec;
        self.conn().dialect()
    }

    /// The schema version recorded in the database (equal to [`crate::SCHEMA_VERSION`] once
    /// opened, unless a newer Slipway migrated it since).
    pub fn schema_version(&self) -> Result<i64, StateError> {
        schema::version(&mut *self.conn()).map_err(sql("read the schema version"))
    }

    /// The newer schema version a write of this store met (refused), or a
    /// [`Store::check_schema`] found: once there is one, this store writes nothing more, and
    /// whoever runs on it steps aside. Asks nothing of the database.
    pub fn schema_moved(&self) -> Option<i64> {
        self.conn().schema_moved()
    }

    /// Reads the schema version, and returns it when a newer Slipway migrated the database
    /// past what this process understands (as [`Store::schema_moved`] will from then on).
    pub fn check_schema(&self) -> Result<Option<i64>, StateError> {
        let mut conn = self.conn();
        if let Some(found) = conn.schema_moved() {
            return Ok(Some(found));
        }
        let found = schema::version(&mut *conn).map_err(sql("read the schema version"))?;
        Ok(conn.notice_schema(found))
    }

    /// The newest schema version this process understands ([`crate::SCHEMA_VERSION`]).
    pub fn understood_schema(&self) -> i64 {
        schema::understood()
    }

    /// From now on, every write of an environment (its record, resources, ports, uid,
    /// deployments and events) proves in its transaction that this replica holds the
    /// environment's lease at the epoch [`Store::hold`] recorded (or, holding none, that no
    /// other replica holds one), and is refused with [`StateError::Fenced`] otherwise,
    /// writing nothing: for replicas sharing one state.
    pub fn require_leases(&mut self) {
        self.fences.get_or_insert_with(Mutex::default);
    }

    /// Bounds how long the store's PostgreSQL sessions may stay idle in a transaction or
    /// wait for a lock (see [`crate::db::Conn::bound_sessions`]); nothing on SQLite.
    pub fn bound_sessions(&self, limit: std::time::Duration) {
        self.conn().bound_sessions(limit);
    }

    /// Records that this replica holds `environment`'s lease as `fence` (see
    /// [`Store::acquire_lease`]); its writes of the environment are checked against it.
    pub fn hold(&self, environment: &EnvName, fence: Fence) {
        if let Some(fences) = &self.fences {
            lock(fences).insert(environment.clone(), fence);
        }
    }

    /// The lease of `environment` this replica [`Store::hold`]s, if any.
    pub fn held(&self, environment: &EnvName) -> Option<Fence> {
        self.fences
            .as_ref()
            .and_then(|fences| lock(fences).get(environment).cloned())
    }

    /// Forgets this replica's lease of `environment`: its writes of it are refused again.
    pub fn unhold(&self, environment: &EnvName) {
        if let Some(fences) = &self.fences {
            lock(fences).remove(environment);
        }
    }

    /// Runs `write` in one transaction (taking `tables`' write locks, see
    /// [`Conn::transaction`]); when leases are required and `environment` is given, the
    /// transaction first proves this replica still holds the lease it [`Store::hold`]s, or,
    /// holding none, that no other replica holds one.
    ///
    /// That proof locks the lease's row, before `tables`' locks: every fenced write locks
    /// its lease's row first and then the tables it writes, so a transaction taking a table's
    /// lock first and then a lease's row could wait for a write that waits for it (PostgreSQL
    /// breaks such a deadlock after a second by failing one of the two).
    pub(crate) fn write_env<T>(
        &self,
        environment: Option<&EnvName>,
        tables: &[&str],
        write: impl FnOnce(&mut Tx<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let check = match (&self.fences, environment) {
            (Some(fences), Some(environment)) => {
                Some((environment, lock(fences).get(environment).cloned()))
            }
            _ => None,
        };
        let upfront: &[&str] = if check.is_some() { &[] } else { tables };
        self.conn().transaction(upfront, |tx| {
            match &check {
                Some((environment, Some(fence))) => Store::check_fence(tx, environment, fence)?,
                // Not this replica's (a new environment, a person's request): allowed while
                // no other replica holds its lease.
                Some((environment, None)) => Store::check_unleased(tx, environment)?,
                None => {}
            }
            if check.is_some() {
                tx.lock_tables(tables)
                    .map_err(sql(format!("lock {}", tables.join(", "))))?;
            }
            write(tx)
        })
    }

    /// The connection. A panic in another thread while it held the lock cannot have left a
    /// transaction open (both drivers roll back on drop, also while unwinding), so a poisoned
    /// mutex is safe to reuse.
    pub(crate) fn conn(&self) -> MutexGuard<'_, Conn> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A mutex's guard; a panic elsewhere while it was held left the map whole.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The home's key for a state shared by several homes (PostgreSQL): the key every replica
/// must have, since each seals secrets and names resources with it. The first home to open
/// the state records its instance (`state_key`); any other must have the same key, and a home
/// without one is refused instead of making a new one, with what to copy where.
fn shared_key(
    conn: &mut Conn,
    home: &Path,
    location: &str,
) -> Result<crate::seal::Sealer, StateError> {
    let path = home.join("state.key");
    let read = |conn: &mut Conn| {
        conn.query_opt(
            "SELECT instance FROM state_key WHERE id = 1",
            params![],
            |row| row.get::<String>(0),
        )
        .map_err(sql("read the state's key instance"))
    };
    let mismatch = |found: Option<String>, recorded: String| StateError::KeyMismatch {
        path: path.clone(),
        location: location.to_owned(),
        found,
        recorded,
    };
    let recorded = read(conn)?;
    if let Some(recorded) = &recorded
        && !path.exists()
    {
        return Err(mismatch(None, recorded.clone()));
    }
    let made = !path.exists();
    let sealer = crate::seal::Sealer::load_or_create(&path)?;
    let recorded = match recorded {
        Some(recorded) => recorded,
        None => {
            // Two homes opening a new state at once: the first insert wins, the other reads it.
            conn.execute(
                "INSERT INTO state_key (id, instance, recorded_at) VALUES (1, ?1, ?2) \
                 ON CONFLICT (id) DO NOTHING",
                params![sealer.instance_id(), crate::now_ms()],
            )
            .map_err(sql("record the state's key instance"))?;
            read(conn)?.unwrap_or_else(|| sealer.instance_id().to_owned())
        }
    };
    if recorded != sealer.instance_id() {
        if made {
            // The key this open just made is of no use: the next start must not find it.
            let _ = std::fs::remove_file(&path);
        }
        let found = (!made).then(|| sealer.instance_id().to_owned());
        return Err(mismatch(found, recorded));
    }
    Ok(sealer)
}

fn create_home(home: &Path) -> Result<(), StateError> {
    std::fs::create_dir_all(home).map_err(|source| StateError::CreateHome {
        path: home.to_path_buf(),
        source,
    })
}

/// Wraps a database error with what the store was doing; a stored word outside its
/// vocabulary or a damaged name (see [`word`], [`env_name`]) is reported as such.
pub(crate) fn sql(operation: impl Into<String>) -> impl FnOnce(DbError) -> StateError {
    let operation = operation.into();
    move |source| match source {
        DbError::SchemaMoved { found, understood } => StateError::SchemaMoved { found, understood },
        DbError::Decode {
            reason: DecodeError::Word(word),
            ..
        } => StateError::UnknownWord { operation, word },
        DbError::Decode {
            reason: DecodeError::Name(name),
            ..
        } => StateError::InvalidName { operation, name },
        source => StateError::Database { operation, source },
    }
}

/// Reads column `index` as a word of a vocabulary (a status, a kind). A word outside it (a
/// database edited by hand or damaged) is an error, never a default.
pub(crate) fn word<T: FromStr<Err = UnknownWord>>(row: &Row, index: usize) -> Result<T, DbError> {
    row.text(index)?.parse().map_err(|word| DbError::Decode {
        index,
        reason: DecodeError::Word(word),
    })
}

/// Reads column `index` as an environment name. A row holding anything else (a database
/// edited by hand or damaged) is an error, never a name that skipped the check.
pub(crate) fn env_name(row: &Row, index: usize) -> Result<EnvName, DbError> {
    row.parse(index, EnvName::try_from, DecodeError::Name)
}

/// Like [`env_name`], for a column that may be `NULL`.
pub(crate) fn env_name_opt(row: &Row, index: usize) -> Result<Option<EnvName>, DbError> {
    let text: Option<String> = row.get(index)?;
    text.map(|t| {
        EnvName::try_from(t).map_err(|e| DbError::Decode {
            index,
            reason: DecodeError::Name(e),
        })
    })
    .transpose()
}

/// Encodes a value for a JSON column.
/// Lowercase hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value)
        .expect("JSON values and string lists always serialize: their keys are strings")
}

/// Whether `text` is what [`to_json`] writes of `value`: compared as it is written, byte by
/// byte, stopping at the first difference; nothing is parsed and nothing allocated.
pub(crate) fn json_text_is<T: Serialize + ?Sized>(value: &T, text: &str) -> bool {
    /// The part of the text not compared yet.
    struct Rest<'a>(&'a [u8]);
    impl std::io::Write for Rest<'_> {
        fn write(&mut self, written: &[u8]) -> std::io::Result<usize> {
            match self.0.strip_prefix(written) {
                Some(rest) => {
                    self.0 = rest;
                    Ok(written.len())
                }
                None => Err(std::io::Error::other("the texts differ")),
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut rest = Rest(text.as_bytes());
    serde_json::to_writer(&mut rest, value).is_ok() && rest.0.is_empty()
}

/// Decodes a JSON column, naming the record and column when the stored text is not valid.
pub(crate) fn from_json<T: DeserializeOwned>(
    text: &str,
    record: impl FnOnce() -> String,
    column: &'static str,
) -> Result<T, StateError> {
    serde_json::from_str(text).map_err(|source| StateError::CorruptJson {
        record: record(),
        column,
        source,
    })
}

/// Refuses a value outside the specification's vocabulary before it reaches the database.
pub(crate) fn one_of(
    field: &'static str,
    value: &str,
    allowed: &'static [&'static str],
) -> Result<(), StateError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(StateError::InvalidValue {
            field,
            value: value.to_owned(),
            allowed,
        })
    }
}

/// A `usize` limit as SQLite's signed integer; anything past `i64::MAX` means "all".
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::{json_text_is, to_json};
    use proptest::prelude::*;
    use serde_json::{Value as Json, json};

    fn json_value() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::from),
            any::<i64>().prop_map(Json::from),
            any::<f64>().prop_map(Json::from),
            ".{0,8}".prop_map(Json::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Json::from),
                prop::collection::btree_map(".{0,4}", inner, 0..4)
                    .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// A value's stored text is its own and no other's: not a prefix of it, not it with
        /// anything after, not another value's, not the same value written another way.
        #[test]
        fn a_stored_text_is_its_value_and_no_other(value in json_value(), other in json_value()) {
            let text = to_json(&value);
            prop_assert!(json_text_is(&value, &text));
            prop_assert_eq!(json_text_is(&value, &to_json(&other)), to_json(&other) == text);
            if !text.is_empty() {
                prop_assert!(!json_text_is(&value, &text[..text.len() - 1]));
            }
            let trailing = format!("{text} ");
            prop_assert!(!json_text_is(&value, &trailing));
            let pretty = serde_json::to_string_pretty(&value).expect("JSON");
            prop_assert_eq!(json_text_is(&value, &pretty), pretty == text);
        }
    }

    #[test]
    fn texts_of_equal_values_written_otherwise_are_not_the_stored_text() {
        let value = json!({"a": 1, "b": [true, null]});
        assert!(json_text_is(&value, r#"{"a":1,"b":[true,null]}"#));
        assert!(!json_text_is(&value, r#"{"b":[true,null],"a":1}"#));
        assert!(!json_text_is(&value, r#"{"a": 1,"b":[true,null]}"#));
        assert!(!json_text_is(&value, ""));
    }
}
