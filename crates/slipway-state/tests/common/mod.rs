//! One store per test on either database: the same tests run against SQLite and PostgreSQL
//! through [`matrix!`].

#![allow(dead_code)]

use slipway_state::{StateError, Store};
use slipway_testkit::pg::TestDatabase;
use tempfile::TempDir;

/// Which database a test's store is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `<home>/state.db`.
    Sqlite,
    /// A throwaway database on the test server.
    Postgres,
}

/// A test's state: its home and, on PostgreSQL, its database.
pub struct TestState {
    pub home: TempDir,
    pub kind: Kind,
    database: Option<TestDatabase>,
}

impl TestState {
    pub fn new(kind: Kind) -> TestState {
        TestState {
            home: tempfile::tempdir().expect("create a temporary home"),
            kind,
            database: (kind == Kind::Postgres).then(|| TestDatabase::create("slipway_state")),
        }
    }

    /// The PostgreSQL database's URL, for a PostgreSQL state.
    #[allow(dead_code, reason = "not every test binary asks")]
    pub fn postgres_url(&self) -> Option<String> {
        self.database.as_ref().map(|db| db.url())
    }

    /// Opens the store (again).
    pub fn open(&self) -> Store {
        self.try_open().expect("open the store")
    }

    pub fn try_open(&self) -> Result<Store, StateError> {
        match &self.database {
            None => Store::open(self.home.path()),
            Some(db) => Store::open_postgres(self.home.path(), &db.url()),
        }
    }

    /// Runs `sql` on the database directly, for what the store's API refuses to do; with
    /// `checks_off`, foreign keys are not enforced meanwhile.
    pub fn raw(&self, sql: &str, checks_off: bool) -> Result<(), String> {
        match &self.database {
            None => {
                let conn = rusqlite::Connection::open(self.home.path().join("state.db"))
                    .expect("open the database raw");
                let prefix = if checks_off {
                    "PRAGMA foreign_keys = OFF;"
                } else {
                    "PRAGMA foreign_keys = ON;"
                };
                conn.execute_batch(&format!("{prefix}{sql}"))
                    .map_err(|e| e.to_string())
            }
            Some(db) => {
                // Triggers (which enforce foreign keys) do not fire for a replica session.
                let prefix = if checks_off {
                    "SET session_replication_role = replica;"
                } else {
                    ""
                };
                db.connect()
                    .batch_execute(&format!("{prefix}{sql}"))
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// What the database holds, as stored: SQLite's files, or every row of PostgreSQL's
    /// tables as text.
    pub fn stored_bytes(&self) -> Vec<u8> {
        match &self.database {
            None => ["state.db", "state.db-wal"]
                .iter()
                .flat_map(|file| std::fs::read(self.home.path().join(file)).unwrap_or_default())
                .collect(),
            Some(db) => {
                let mut client = db.connect();
                let tables: Vec<String> = client
                    .query(
                        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
                        &[],
                    )
                    .expect("list the tables")
                    .iter()
                    .map(|row| row.get(0))
                    .collect();
                let mut out = Vec::new();
                for table in tables {
                    for row in client
                        .query(&format!("SELECT t::text FROM {table} t"), &[])
                        .expect("read a table")
                    {
                        out.extend(row.get::<_, String>(0).into_bytes());
                    }
                }
                out
            }
        }
    }

    /// Records `version` as the schema's, as another Slipway would have.
    pub fn set_schema_version(&self, version: i64) {
        let sql = match self.kind {
            Kind::Sqlite => format!("PRAGMA user_version = {version}"),
            Kind::Postgres => format!("UPDATE slipway_schema SET version = {version}"),
        };
        self.raw(&sql, false).expect("set the schema version");
    }
}

/// `matrix!(a, b)`: the tests `fn a(state: &TestState)` and `b` run on SQLite
/// (`sqlite::a`) and on PostgreSQL (`postgres::a`).
#[macro_export]
macro_rules! matrix {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name(&$crate::common::TestState::new($crate::common::Kind::Sqlite));
            })+
        }
        mod postgres {
            $(#[test]
            fn $name() {
                super::$name(&$crate::common::TestState::new($crate::common::Kind::Postgres));
            })+
        }
    };
}

/// A pull request as the tests record it: `number` by `author`, `state`, at `head`.
pub fn pull_request(
    number: i64,
    author: &str,
    state: &str,
    head: &str,
) -> slipway_state::PullRequestRecord {
    slipway_state::PullRequestRecord {
        number,
        title: "t".into(),
        author: author.into(),
        head_sha: head.into(),
        head_ref: format!("feature-{number}"),
        base_ref: "main".into(),
        is_fork: false,
        state: state.into(),
        preview_allowed: true,
        url: String::new(),
        updated_at: 1,
        stale_approvers: Vec::new(),
        labels: Vec::new(),
        head_seen_at: None,
    }
}
