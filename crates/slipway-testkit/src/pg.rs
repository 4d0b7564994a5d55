//! Throwaway PostgreSQL databases on the test server (`127.0.0.1:5432`, trust authentication
//! for `postgres`, started by `scripts/postgres.sh`): one per test, dropped when it ends.

use std::sync::atomic::{AtomicU32, Ordering};

/// The test server's admin URL.
pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database made for one test, dropped (its connections closed) when this is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
}

impl TestDatabase {
    /// Creates an empty database with a name no other test uses (`<prefix>_<pid>_<n>`).
    ///
    /// # Panics
    /// When the test server cannot be reached: run `bash scripts/postgres.sh` first.
    pub fn create(prefix: &str) -> TestDatabase {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // Each alone: CREATE DATABASE refuses to run inside a multi-statement transaction.
        let mut admin = admin();
        for statement in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            admin
                .batch_execute(&statement)
                .unwrap_or_else(|e| panic!("{statement}: {}", message(&e)));
        }
        TestDatabase { name }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL, as `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    /// A new connection to it.
    pub fn connect(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to the test database {}: {e}", self.name))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // A test that failed still drops its database; one that cannot is left for the next
        // run's `DROP DATABASE IF EXISTS` of the same pid (rare) or the server's reset.
        if let Ok(mut admin) = postgres::Client::connect(ADMIN_URL, postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

fn admin() -> postgres::Client {
    postgres::Client::connect(ADMIN_URL, postgres::NoTls).unwrap_or_else(|e| {
        panic!(
            "PostgreSQL on 127.0.0.1:5432 is needed (trust authentication for `postgres`); \
             start one with `bash scripts/postgres.sh`: {e}"
        )
    })
}

/// PostgreSQL's own message, where the server sent one.
fn message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}
