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
        // From `template0`: a test may leave something in `template1` for a moment (one that
        // tries what an environment's code could plant there).
        let mut admin = admin();
        for statement in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name} TEMPLATE template0"),
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

/// A login role made for one test on the test server, so that its sessions are the test's
/// alone to count; dropped, its sessions ended first, when this is dropped.
#[derive(Debug)]
pub struct TestRole {
    name: String,
}

impl TestRole {
    /// Creates a role with a name no other test uses (`<prefix>_<pid>_<n>`) and the
    /// attributes `with` (`"LOGIN"`, `"LOGIN SUPERUSER"`).
    pub fn create(prefix: &str, with: &str) -> TestRole {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let role = TestRole { name };
        role.drop_it();
        let statement = format!("CREATE ROLE {} {with}", role.name);
        admin()
            .batch_execute(&statement)
            .unwrap_or_else(|e| panic!("{statement}: {}", message(&e)));
        role
    }

    /// The URL of the test server's `postgres` database, as this role.
    pub fn url(&self) -> String {
        format!("postgres://{}@127.0.0.1:5432/postgres", self.name)
    }

    /// The process ids of its sessions now, in order.
    pub fn sessions(&self) -> Vec<i32> {
        admin()
            .query(
                "select pid from pg_stat_activity where usename = $1 order by pid",
                &[&self.name],
            )
            .unwrap_or_else(|e| panic!("list the sessions of {}: {}", self.name, message(&e)))
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// Its sessions, once there are `count` of them (20 s at most).
    pub fn wait_for_sessions(&self, count: usize) -> Vec<i32> {
        crate::wait::wait_for(
            &format!("{} to have {count} sessions", self.name),
            std::time::Duration::from_secs(20),
            || Some(self.sessions()).filter(|now| now.len() == count),
        )
    }

    fn drop_it(&self) {
        let mut admin = admin();
        let _ = admin.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where usename = $1",
            &[&self.name],
        );
        let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {}", self.name));
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        self.drop_it();
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

/// A PostgreSQL server of a test's own (not the shared one on 5432), for a test that must
/// crash and restart it: `initdb` into a temporary directory, listening on a free port of
/// 127.0.0.1 with trust authentication for `postgres`, stopped when dropped. Uses the
/// server binaries `scripts/postgres.sh` installs (Debian's `/usr/lib/postgresql/N/bin`, or
/// `initdb` on the PATH); as root it runs them as the `postgres` user, as they insist.
#[derive(Debug)]
pub struct OwnServer {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
}

impl OwnServer {
    /// Creates and starts the server.
    ///
    /// # Panics
    /// When the binaries are missing or the server does not start.
    pub fn start() -> OwnServer {
        let bin = server_bin();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let root = running_as_root();
        if root {
            chown_postgres(dir.path());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server = OwnServer { dir, bin, port };
        server.run(
            "initdb",
            &[
                "-D",
                &server.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        server.up();
        server
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `name` on it, as `postgres`, through `port` (its own, or a proxy's).
    pub fn url_via(&self, port: u16, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{name}")
    }

    /// A new connection to database `name`.
    pub fn connect(&self, name: &str) -> postgres::Client {
        postgres::Client::connect(&self.url_via(self.port, name), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to {name} on port {}: {e}", self.port))
    }

    /// Crashes it (`pg_ctl stop -m immediate`: no shutdown checkpoint, every connection cut)
    /// and starts it again, recovering from its log.
    pub fn crash_and_restart(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
        self.up();
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn up(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={} -c fsync=off \
             -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-w",
                "-o",
                &options,
                "start",
            ],
        );
    }

    fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let mut command = if running_as_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            std::process::Command::new(&program)
        };
        let out = command
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
        assert!(
            out.status.success(),
            "{} {args:?}: {}{}",
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let program = self.bin.join("pg_ctl");
        let mut command = if running_as_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            std::process::Command::new(&program)
        };
        let _ = command
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
    }
}

/// The directory of `initdb` and `pg_ctl`.
fn server_bin() -> std::path::PathBuf {
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .max();
    if let Some(bin) = debian {
        return bin;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL's server binaries (initdb, pg_ctl) are needed; \
                 `bash scripts/postgres.sh` installs them"
            )
        })
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Gives `dir` to the `postgres` user, and lets it through `dir`'s parents.
fn chown_postgres(dir: &std::path::Path) {
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .expect("a `postgres` user (Debian's postgresql package makes it)");
    std::os::unix::fs::chown(dir, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .expect("give the directory to postgres");
}
