//! The one error type of the state store.

use std::path::PathBuf;

use crate::db::DbError;

/// Everything that can go wrong while reading or writing the state store.
///
/// [`StateError::retryable`] says whether the same call may succeed later without anyone
/// changing anything (another process held the database lock, the port range was full).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The home directory could not be created.
    #[error("failed to create the state directory {path}")]
    CreateHome {
        /// The directory that was to hold `state.db`.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },

    /// The home's state key (which seals secrets in the database) could not be made or read.
    #[error("the state key {path} is unusable: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// The home's state key is not the one the shared state was sealed with (or the home has
    /// none while the state has one): secrets sealed by one could not be opened by the other,
    /// and resources would be named after another instance.
    #[error(
        "this home's state key {} is not the key of the state in {location}, which was \
         sealed with instance {recorded}'s; copy state.key from the home of a replica already \
         on this state (the same file on every replica) to {}, then start again; nothing was \
         written",
        describe_key(.found, .path), .path.display()
    )]
    KeyMismatch {
        /// The key file this home has or would have made.
        path: PathBuf,
        /// The state, without password.
        location: String,
        /// The instance the home's key makes, `None` when the home had no key.
        found: Option<String>,
        /// The instance the state records.
        recorded: String,
    },

    /// A sealed value could not be opened.
    #[error("{record}: the sealed {column} {reason}")]
    Sealed {
        /// Which record.
        record: String,
        /// Which column.
        column: &'static str,
        /// Why.
        reason: String,
    },

    /// The database could not be opened, reached or configured.
    #[error("failed to open the state database {location}")]
    Open {
        /// The database file, or PostgreSQL's URL without its password.
        location: String,
        /// Why it failed.
        #[source]
        source: DbError,
    },

    /// The database refused write-ahead logging, which the store relies on for concurrent
    /// readers and crash safety.
    #[error(
        "the state database {path} refused WAL mode (journal mode is `{mode}`); put the slipway \
         home on a local filesystem"
    )]
    WalUnavailable {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite kept.
        mode: String,
    },

    /// The database was written by a newer Slipway whose schema this binary does not know.
    #[error(
        "the state database {location} has schema version {found}, newer than the {supported} \
         this slipway understands; upgrade slipway, or point --home at another directory"
    )]
    NewerSchema {
        /// The database file, or PostgreSQL's URL without its password.
        location: String,
        /// The schema version recorded in the database.
        found: i64,
        /// The newest schema version this binary knows.
        supported: i64,
    },

    /// A newer Slipway migrated the state's schema while this process was running: it has
    /// stepped aside and writes nothing more (it may still read).
    #[error(
        "the state's schema was migrated to version {found} by a newer slipway while this one \
         (which understands version {understood}) was running, so this process writes nothing \
         more; replace it with the newer version"
    )]
    SchemaMoved {
        /// The schema version the database has now.
        found: i64,
        /// The newest schema version this binary knows.
        understood: i64,
    },

    /// The PostgreSQL state's schema table exists but belongs to a role the state's user is
    /// not: someone made it before Slipway did, and Slipway would write to it (running its
    /// triggers with the state user's rights).
    #[error(
        "refusing the state database {location}: {schema}.slipway_schema is owned by {owner}, \
         not by this state's user (or is not a table); {}",
        if *restored {
            "if this state was restored by that role, give its tables to this user \
             (ALTER TABLE ... OWNER TO, or REASSIGN OWNED BY)"
        } else {
            "no other table of Slipway's is there: someone made it before Slipway did (on \
             PostgreSQL 14 and older any role may create in public); drop it, and run \
             `REVOKE CREATE ON SCHEMA public FROM PUBLIC` in this database \
             (docs/secrets-and-databases.md)"
        }
    )]
    ForeignSchemaTable {
        /// The state database, its password hidden.
        location: String,
        /// The role that owns the relation.
        owner: String,
        /// The state's schema.
        schema: String,
        /// Whether the state's other tables are there too (a restored state, not a planted
        /// table).
        restored: bool,
    },

    /// A schema migration failed; the database stays at the previous version.
    #[error("failed to migrate the state database {location} to schema version {version}")]
    Migrate {
        /// The database file, or PostgreSQL's URL without its password.
        location: String,
        /// The version the failed migration would have produced.
        version: i64,
        /// Why it failed.
        #[source]
        source: DbError,
    },

    /// Making the schema of a new state database failed; nothing of it was kept.
    #[error("failed to create the schema (version {version}) of the new state database {location}")]
    CreateSchema {
        /// The database file, or PostgreSQL's URL without its password.
        location: String,
        /// The version the schema would have been.
        version: i64,
        /// Why it failed (an object of that name already there: a database of something else).
        #[source]
        source: DbError,
    },

    /// A query failed.
    #[error("failed to {operation}")]
    Database {
        /// What the store was doing, e.g. "record deployment of prod".
        operation: String,
        /// Why it failed.
        #[source]
        source: DbError,
    },

    /// A JSON column did not hold valid JSON (the database was edited by hand or is damaged).
    #[error("failed to decode {column} of {record}: the stored value is not the JSON expected")]
    CorruptJson {
        /// The record, e.g. "resource prod/api".
        record: String,
        /// The column.
        column: &'static str,
        /// Why it failed.
        #[source]
        source: serde_json::Error,
    },

    /// The store holds a status or kind outside its vocabulary (a database edited by hand, or
    /// damaged).
    #[error("failed to {operation}: the store holds {word}")]
    UnknownWord {
        /// What the store was doing.
        operation: String,
        /// The word and its vocabulary.
        word: slipway_core::vocab::UnknownWord,
    },

    /// The store holds an environment name that is not one (a database edited by hand, or
    /// damaged).
    #[error("failed to {operation}: the store holds {name}")]
    InvalidName {
        /// What the store was doing.
        operation: String,
        /// The text found.
        name: slipway_core::env_name::InvalidEnvName,
    },

    /// A status or kind outside the specification's vocabulary was given.
    #[error("invalid {field} `{value}`: expected one of {}", allowed.join(", "))]
    InvalidValue {
        /// The field, e.g. "environment sync".
        field: &'static str,
        /// The value given.
        value: String,
        /// The values accepted.
        allowed: &'static [&'static str],
    },

    /// The record to update does not exist.
    #[error("{what} `{key}` does not exist")]
    NotFound {
        /// The kind of record, e.g. "environment".
        what: &'static str,
        /// Its key.
        key: String,
    },

    /// A deployment that is no longer running cannot be finished again.
    #[error(
        "deployment {id} is already {status}; only a running deployment can be finished \
         (was it marked interrupted by a restart?)"
    )]
    DeploymentNotRunning {
        /// The deployment.
        id: i64,
        /// Its current status.
        status: slipway_core::vocab::DeploymentStatus,
    },

    /// No free port is left in the configured range.
    #[error(
        "no free port left in {start}-{end} for {environment}/{resource} (needed {needed} more); \
         widen [local] ports in the engine configuration or destroy unused environments"
    )]
    PortsExhausted {
        /// The environment asking.
        environment: String,
        /// The resource asking.
        resource: String,
        /// The first port of the range.
        start: u16,
        /// The last port of the range.
        end: u16,
        /// How many new ports were needed.
        needed: usize,
    },
    /// A write of an environment by a replica that no longer holds its lease at the epoch it
    /// claims (it stalled past the lease and another replica took over): nothing was
    /// written.
    #[error(
        "{replica} no longer holds the lease of environment `{environment}` at epoch {epoch} ({}); nothing was written",
        now.as_deref().unwrap_or("no lease recorded")
    )]
    Fenced {
        /// The environment.
        environment: String,
        /// The replica that tried to write.
        replica: String,
        /// The epoch it claimed.
        epoch: i64,
        /// Who holds the lease now, as a phrase.
        now: Option<String>,
    },
    /// Every uid of the configured range is held by an environment.
    #[error(
        "no free uid in {start}-{end} for environment `{environment}`: every one is held by \
         an environment; widen `[local] uids` in the engine configuration or destroy unused \
         environments"
    )]
    UidsExhausted {
        /// The environment asking.
        environment: String,
        /// The first uid of the range.
        start: u32,
        /// The last uid of the range.
        end: u32,
    },
}

/// A transaction that could not begin or commit.
impl From<DbError> for StateError {
    fn from(source: DbError) -> StateError {
        if let DbError::SchemaMoved { found, understood } = source {
            return StateError::SchemaMoved { found, understood };
        }
        StateError::Database {
            operation: "run a transaction on the state database".to_owned(),
            source,
        }
    }
}

impl StateError {
    /// Whether a newer Slipway migrated the schema under this process, which writes nothing
    /// more: it must step aside.
    pub fn is_schema_moved(&self) -> bool {
        matches!(self, StateError::SchemaMoved { .. })
    }

    /// Whether a write was refused because the writer no longer holds the environment's
    /// lease: it must stop working on that environment at once.
    pub fn is_fenced(&self) -> bool {
        matches!(self, StateError::Fenced { .. })
    }

    /// Whether the same call may succeed later with nothing changed by a person: the database
    /// was locked by another process past the busy timeout, or the port range was full (ports
    /// come back when environments expire). Everything else needs a fix first.
    pub fn retryable(&self) -> bool {
        match self {
            StateError::Open { source, .. }
            | StateError::Migrate { source, .. }
            | StateError::CreateSchema { source, .. }
            | StateError::Database { source, .. } => source.retryable(),
            StateError::PortsExhausted { .. } | StateError::UidsExhausted { .. } => true,
            StateError::CreateHome { .. }
            | StateError::WalUnavailable { .. }
            | StateError::NewerSchema { .. }
            | StateError::SchemaMoved { .. }
            | StateError::ForeignSchemaTable { .. }
            | StateError::CorruptJson { .. }
            | StateError::InvalidValue { .. }
            | StateError::UnknownWord { .. }
            | StateError::InvalidName { .. }
            | StateError::NotFound { .. }
            | StateError::DeploymentNotRunning { .. }
            | StateError::Fenced { .. }
            | StateError::Key { .. }
            | StateError::KeyMismatch { .. }
            | StateError::Sealed { .. } => false,
        }
    }
}

/// How [`StateError::KeyMismatch`] names the home's key.
fn describe_key(found: &Option<String>, path: &std::path::Path) -> String {
    match found {
        Some(instance) => format!("{} (instance {instance})", path.display()),
        None => format!("{} is missing", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn a_locked_database_is_retryable_and_a_constraint_failure_is_not() {
        let busy = StateError::Database {
            operation: "record".to_owned(),
            source: sqlite(rusqlite::ffi::SQLITE_BUSY).into(),
        };
        assert!(busy.retryable(), "a busy database is worth retrying");
        let constraint = StateError::Database {
            operation: "record".to_owned(),
            source: sqlite(rusqlite::ffi::SQLITE_CONSTRAINT).into(),
        };
        assert!(
            !constraint.retryable(),
            "a constraint failure fails the same way every time"
        );
        let newer = StateError::NewerSchema {
            location: "state.db".to_owned(),
            found: 9,
            supported: 1,
        };
        assert!(
            !newer.retryable(),
            "a newer schema needs an upgrade, not a retry"
        );
    }
}
