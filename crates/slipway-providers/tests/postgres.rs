//! The `postgres.database` and `postgres.role` providers against the real PostgreSQL server at
//! 127.0.0.1:5432 (trust authentication).
//!
//! Every test has its own random instance id, so tests run in parallel without touching each
//! other's objects (or anyone else's); a [`Pg`] fixture drops everything its id marked, and the
//! extra objects a test made itself, when it goes out of scope, even when the test fails.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::TestEnv;
use serde_json::{Value, json};
use slipway_core::EnvName;
use slipway_core::vocab::EnvKind;
use slipway_providers::postgres::{
    ConnectionLimits, DatabaseProvider, PgServers, RoleProvider, names,
};
use slipway_providers::{
    Action, Applied, DynProvider, Observation, ProviderError, Registry, ResourceContext,
};
use slipway_testkit::pg::TestRole;

const ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A name the test knows to be valid.
fn env(name: &str) -> EnvName {
    EnvName::parse(name).expect("the test's environment names are DNS labels")
}

fn admin() -> postgres::Client {
    postgres::Client::connect(ADMIN, postgres::NoTls).expect("connect to the test server as admin")
}

fn random_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("random bytes");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn database_exists(name: &str) -> bool {
    admin()
        .query_opt("select 1 from pg_database where datname = $1", &[&name])
        .expect("look up a database")
        .is_some()
}

fn role_exists(name: &str) -> bool {
    admin()
        .query_opt("select 1 from pg_roles where rolname = $1", &[&name])
        .expect("look up a role")
        .is_some()
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One test's registry, environment and instance id; drops what the test left on the server.
struct Pg {
    id: String,
    registry: Registry,
    env: TestEnv,
    /// Databases and roles the test made itself (templates, impostors).
    extra_databases: Vec<String>,
    extra_roles: Vec<String>,
}

impl Pg {
    fn new() -> Pg {
        Self::with_servers(BTreeMap::from([("main".to_owned(), ADMIN.to_owned())]))
    }

    fn with_servers(servers: BTreeMap<String, String>) -> Pg {
        let id = random_id();
        // The templates tests make (and one they never make) are allowed on `main`, as an
        // operator lists them in `[postgres.main] templates`; nothing else is.
        let servers = Arc::new(
            PgServers::new(servers, &id)
                .with_templates(
                    "main",
                    vec![
                        format!("swtest_tpl_{id}"),
                        format!("swtest_missing_{id}"),
                        long_template(&id),
                    ],
                )
                // An untrusted extension, as an operator lists it in `[postgres.lenient] extensions`.
                .with_extensions("lenient", vec!["pageinspect".to_owned()])
                // A monitoring role, as an operator lists it in `[postgres.watched] connect`.
                .with_connect("watched", vec![format!("swtest_monitor_{id}")])
                // Previews' roles get 2 connections on `main` (10 by default); static
                // environments' and a context of no kind (most tests') set nothing.
                .with_connection_limits(
                    "main",
                    ConnectionLimits {
                        reviewed: None,
                        unreviewed: 2,
                    },
                )
                // And at most 3 roles (`[environments] max_postgres_roles`).
                .with_role_cap(3),
        );
        // Exactly what the engine does to register them.
        let mut registry = Registry::local();
        registry.register(DatabaseProvider::new(Arc::clone(&servers)));
        registry.register(RoleProvider::new(Arc::clone(&servers)));
        Pg {
            id,
            registry,
            env: TestEnv::new(),
            extra_databases: Vec::new(),
            extra_roles: Vec::new(),
        }
    }

    fn database(&self) -> &dyn DynProvider {
        self.registry
            .get("postgres.database")
            .expect("postgres.database is registered")
    }

    fn role(&self) -> &dyn DynProvider {
        self.registry
            .get("postgres.role")
            .expect("postgres.role is registered")
    }

    /// The context of `resource` in environment `qa`.
    fn ctx<'a>(&'a self, resource: &'a str) -> ResourceContext<'a> {
        self.env.ctx(resource)
    }

    /// The context of `resource` in `environment`.
    fn ctx_in<'a>(&'a self, environment: &'a EnvName, resource: &'a str) -> ResourceContext<'a> {
        ResourceContext {
            environment,
            ..self.env.ctx(resource)
        }
    }

    fn names(&self, environment: &str, resource: &str) -> String {
        names(&self.id, environment, resource).database
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let Ok(mut admin) = postgres::Client::connect(ADMIN, postgres::NoTls) else {
            return;
        };
        let pattern = format!("slipway:{}:%", self.id);
        let ours_roles: Vec<String> = admin
            .query(
                "select rolname::text from pg_roles where shobj_description(oid, 'pg_authid') \
                 like $1",
                &[&pattern],
            )
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default();
        let ours_databases: Vec<String> = admin
            .query(
                "select datname::text from pg_database d \
                 where shobj_description(d.oid, 'pg_database') like $1 \
                    or pg_get_userbyid(d.datdba) = any($2)",
                &[&pattern, &ours_roles],
            )
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default();
        for db in ours_databases.iter().chain(&self.extra_databases) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote(db)
            ));
        }
        for role in ours_roles.iter().chain(&self.extra_roles) {
            let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {}", quote(role)));
        }
    }
}

fn failure(result: Result<Applied, ProviderError>, what: &str) -> ProviderError {
    match result {
        Ok(applied) => panic!("{what} should fail, but created {:?}", applied.outputs),
        Err(e) => e,
    }
}

/// Checks that the server stores, for `role`, a SCRAM-SHA-256 verifier of `password` (RFC 5802
/// and 7677: `SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY`) and not the password itself.
fn assert_scram_verifier_of(role: &str, password: &str) {
    use base64::Engine as _;
    use hmac::{KeyInit, Mac};
    type HmacSha256 = hmac::Hmac<sha2::Sha256>;
    fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(key).expect("any key length");
        mac.update(message);
        mac.finalize().into_bytes().to_vec()
    }
    let stored: String = admin()
        .query_one(
            "select rolpassword from pg_authid where rolname = $1",
            &[&role],
        )
        .expect("the role's password")
        .get(0);
    assert!(
        !stored.contains(password),
        "the server never holds the password itself: {stored}"
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    let (method, rest) = stored.split_once('$').expect("METHOD$…");
    assert_eq!(method, "SCRAM-SHA-256", "a SCRAM verifier: {stored}");
    let (iterations_salt, keys) = rest.split_once('$').expect("…$KEYS");
    let (iterations, salt) = iterations_salt.split_once(':').expect("ITERATIONS:SALT");
    let (stored_key, server_key) = keys.split_once(':').expect("STOREDKEY:SERVERKEY");
    let iterations: u32 = iterations.parse().expect("a number of iterations");
    assert_eq!(iterations, 4096, "PostgreSQL's default iteration count");
    let salt = b64.decode(salt).expect("a base64 salt");
    assert!(salt.len() >= 16, "a salt of 16 bytes or more");
    // Hi(password, salt, i): PBKDF2 with HMAC-SHA-256, one block.
    let mut block = [salt.as_slice(), &[0, 0, 0, 1]].concat();
    let mut salted = vec![0u8; 32];
    for _ in 0..iterations {
        block = hmac(password.as_bytes(), &block);
        salted.iter_mut().zip(&block).for_each(|(s, b)| *s ^= b);
    }
    let client_key = hmac(&salted, b"Client Key");
    let expected_stored: Vec<u8> = {
        use sha2::Digest;
        sha2::Sha256::digest(&client_key).to_vec()
    };
    assert_eq!(
        b64.decode(stored_key).expect("a base64 stored key"),
        expected_stored,
        "the stored key is the password's"
    );
    assert_eq!(
        b64.decode(server_key).expect("a base64 server key"),
        hmac(&salted, b"Server Key"),
        "the server key is the password's"
    );
}

fn output(applied: &Applied, name: &str) -> String {
    applied.outputs[name]
        .as_str()
        .unwrap_or_else(|| panic!("output {name} is a string: {:?}", applied.outputs))
        .to_owned()
}

#[test]
fn create_gives_a_database_owned_by_its_role_that_the_url_reaches() {
    let pg = Pg::new();
    let applied = pg
        .database()
        .create(pg.ctx("db"), &json!({}))
        .expect("create a database");
    let database = output(&applied, "database");
    let user = output(&applied, "user");
    let password = output(&applied, "password");
    assert_eq!(
        database,
        pg.names("qa", "db"),
        "the database has the derived name"
    );
    assert_eq!(user, database, "the role shares the database's name");
    assert_eq!(password.len(), 32, "a 32-character password");
    assert_scram_verifier_of(&user, &password);
    assert_eq!(
        output(&applied, "host"),
        "127.0.0.1",
        "host of the admin URL"
    );
    assert_eq!(applied.outputs["port"], json!(5432), "port is a number");
    assert_eq!(
        output(&applied, "url"),
        format!("postgres://{user}:{password}@127.0.0.1:5432/{database}"),
        "the url output"
    );
    assert_eq!(
        applied.secret_outputs,
        vec!["password".to_owned(), "url".to_owned()],
        "password and url are secret"
    );
    assert_eq!(
        applied.live["server"],
        json!("main"),
        "live names the server"
    );
    assert_eq!(
        applied.live["password"],
        json!(password),
        "live keeps the password"
    );

    let mut app = postgres::Client::connect(&output(&applied, "url"), postgres::NoTls)
        .expect("the url output connects as the generated role");
    app.batch_execute("create table items (id int primary key); insert into items values (1)")
        .expect("the role may create tables in its database");
    let who: String = app
        .query_one("select current_user::text", &[])
        .expect("current_user")
        .get(0);
    assert_eq!(who, user, "connected as the generated role");
    drop(app);

    let owner: String = admin()
        .query_one(
            "select pg_get_userbyid(datdba)::text from pg_database where datname = $1",
            &[&database],
        )
        .expect("database owner")
        .get(0);
    assert_eq!(owner, user, "the database is owned by the role");
    assert_eq!(
        pg.database()
            .observe(pg.ctx("db"), &json!({}), &applied.live)
            .expect("observe"),
        Observation::InSync,
        "a fresh database is in sync"
    );

    pg.database()
        .delete(pg.ctx("db"), Some(&applied.live))
        .expect("delete");
    assert!(!database_exists(&database), "the database is gone");
    assert!(!role_exists(&user), "the role is gone");
}

#[test]
fn the_password_reaches_the_server_only_as_a_scram_verifier_whatever_it_would_hash_into() {
    // A server (here: the admin session) whose `password_encryption` is md5 would turn a
    // plain `PASSWORD '…'` into an MD5 hash; the providers send a SCRAM-SHA-256 verifier made
    // on the client, so the plain password never crosses the connection and the stored one is
    // SCRAM whatever the server's setting.
    let md5_admin = format!("{ADMIN}?options=-c%20password_encryption%3Dmd5");
    let pg = Pg::with_servers(BTreeMap::from([("main".to_owned(), md5_admin)]));
    let database = pg
        .database()
        .create(pg.ctx("db"), &json!({}))
        .expect("create a database");
    assert_scram_verifier_of(&output(&database, "user"), &output(&database, "password"));
    let role = pg
        .role()
        .create(pg.ctx("reader"), &json!({}))
        .expect("create a role");
    assert_scram_verifier_of(&output(&role, "user"), &output(&role, "password"));
}

#[test]
fn each_environment_gets_its_own_database() {
    let pg = Pg::new();
    let qa = pg
        .database()
        .create(pg.ctx_in(&env("qa"), "db"), &json!({}))
        .expect("create in qa");
    let prod = pg
        .database()
        .create(pg.ctx_in(&env("prod"), "db"), &json!({}))
        .expect("create in prod");
    assert_ne!(
        output(&qa, "database"),
        output(&prod, "database"),
        "two environments never share a database"
    );
    assert_ne!(
        output(&qa, "password"),
        output(&prod, "password"),
        "nor a password"
    );
    assert!(database_exists(&output(&qa, "database")), "qa's exists");
    assert!(database_exists(&output(&prod, "database")), "prod's exists");
    pg.database()
        .delete(pg.ctx_in(&env("qa"), "db"), Some(&qa.live))
        .expect("delete qa's");
    assert!(
        database_exists(&output(&prod, "database")),
        "deleting qa's database leaves prod's"
    );
    pg.database()
        .delete(pg.ctx_in(&env("prod"), "db"), Some(&prod.live))
        .expect("delete prod's");
}

/// Connects with the user and password of `url` to `database` instead of its own.
fn connect_elsewhere(url: &str, database: &str) -> Result<postgres::Client, postgres::Error> {
    let mut config: postgres::Config = url.parse().expect("an output url parses");
    config.dbname(database);
    config.connect(postgres::NoTls)
}

/// Every role may connect to a new database by default: an environment's code, which holds
/// its role's password, could then read another's catalog (its functions' source), and on
/// PostgreSQL 14 and older create in its `public` what that environment's code calls.
#[test]
fn another_environments_role_cannot_connect_to_its_database() {
    let pg = Pg::new();
    let qa = pg
        .database()
        .create(pg.ctx_in(&env("qa"), "db"), &json!({}))
        .expect("create in qa");
    let prod = pg
        .database()
        .create(pg.ctx_in(&env("prod"), "db"), &json!({}))
        .expect("create in prod");
    let prod_db = output(&prod, "database");
    let refused = |what: &str| {
        let err = connect_elsewhere(&output(&qa, "url"), &prod_db)
            .err()
            .unwrap_or_else(|| panic!("qa's role connected to prod's database ({what})"));
        assert_eq!(
            err.as_db_error().map(|e| e.code().code()),
            Some("42501"),
            "permission denied ({what}): {err}"
        );
    };
    refused("after a create");
    connect_elsewhere(&output(&prod, "url"), &prod_db).expect("prod's own role connects");
    connect_elsewhere(&output(&qa, "url"), &output(&qa, "database")).expect("and qa's to its own");

    // A database made before this (every role could connect) is closed by its next update.
    admin()
        .batch_execute(&format!(
            "GRANT CONNECT ON DATABASE {} TO PUBLIC",
            quote(&prod_db)
        ))
        .expect("open it as it was");
    connect_elsewhere(&output(&qa, "url"), &prod_db).expect("open, qa's role connects");
    pg.database()
        .update(pg.ctx_in(&env("prod"), "db"), &json!({}), &prod.live)
        .expect("update");
    refused("after an update");
    pg.database()
        .delete(pg.ctx_in(&env("prod"), "db"), Some(&prod.live))
        .expect("delete prod's");
    pg.database()
        .delete(pg.ctx_in(&env("qa"), "db"), Some(&qa.live))
        .expect("delete qa's");
}

/// The URL of the role `applied` (a `postgres.role`) to `database`.
fn role_url(applied: &Applied, database: &str) -> String {
    format!(
        "postgres://{}:{}@127.0.0.1:5432/{database}",
        output(applied, "user"),
        output(applied, "password")
    )
}

/// Whether `url` is refused for want of the `CONNECT` privilege.
fn kept_out(url: &str) -> bool {
    match postgres::Client::connect(url, postgres::NoTls) {
        Ok(_) => false,
        Err(e) => e.as_db_error().is_some_and(|e| e.code().code() == "42501"),
    }
}

/// An environment's `postgres.role`s connect to its databases, made before them or after
/// (found on the server: another replica may have made the database); another
/// environment's role does not, even named in this one's records or of a name alike; and a
/// role let in still goes with its resource.
#[test]
fn the_environments_own_roles_are_let_into_its_databases_and_no_other() {
    let pg = Pg::new();
    let (qa, qa2, prod) = (env("qa"), env("qa2"), env("prod"));
    let before = pg
        .role()
        .create(pg.ctx_in(&qa, "reader"), &json!({}))
        .expect("a role of qa's");
    // A record of a role that was never made (a create interrupted before it).
    std::fs::write(
        pg.env
            .dirs
            .run
            .join("sw_qa_ghost_00000000.postgres.role.json"),
        r#"{"servers":["main"]}"#,
    )
    .expect("write a record of intent");
    let db = pg
        .database()
        .create(pg.ctx_in(&qa, "db"), &json!({}))
        .expect("qa's database");
    let name = output(&db, "database");
    // Another environment's database, whose names start alike (`sw_qa2_…`).
    let other = pg
        .database()
        .create(pg.ctx_in(&qa2, "db"), &json!({}))
        .expect("qa2's database");
    // As on a replica that did not make them, no record of either database here.
    for made in [&db, &other] {
        std::fs::remove_file(pg.env.dirs.run.join(format!(
            "{}.postgres.database.json",
            output(made, "database")
        )))
        .expect("remove a record of intent");
    }
    let after = pg
        .role()
        .create(pg.ctx_in(&qa, "late"), &json!({}))
        .expect("a role of qa's made after its database");
    // Another environment's role. (The test's environments share one `run` directory, so
    // each names the other's objects in its records: only the markers tell them apart.)
    let spy = pg
        .role()
        .create(pg.ctx_in(&prod, "spy"), &json!({}))
        .expect("a role of prod's");
    postgres::Client::connect(&role_url(&before, &name), postgres::NoTls)
        .expect("a role made before the database connects");
    postgres::Client::connect(&role_url(&after, &name), postgres::NoTls)
        .expect("and one made after it");
    assert!(kept_out(&role_url(&spy, &name)), "prod's role is kept out");
    assert!(
        kept_out(&role_url(&after, &output(&other, "database"))),
        "qa's role is kept out of qa2's database"
    );

    // An update lets them in again (a database made before this, or a role re-made).
    pg.database()
        .update(pg.ctx_in(&qa, "db"), &json!({}), &db.live)
        .expect("update");
    postgres::Client::connect(&role_url(&before, &name), postgres::NoTls)
        .expect("still in after an update");
    assert!(kept_out(&role_url(&spy, &name)), "prod's role still out");

    // A role made before a database that could not know of it (made by another replica,
    // whose records of intent are its own): its observe says so, and its update lets it in.
    let unknown = pg
        .role()
        .create(pg.ctx_in(&qa, "unknown"), &json!({}))
        .expect("a role of qa's");
    std::fs::remove_file(
        pg.env
            .dirs
            .run
            .join(format!("{}.postgres.role.json", output(&unknown, "user"))),
    )
    .expect("remove its record of intent");
    let db2 = pg
        .database()
        .create(pg.ctx_in(&qa, "db2"), &json!({}))
        .expect("another database of qa's");
    let name2 = output(&db2, "database");
    assert!(kept_out(&role_url(&unknown, &name2)), "not let in");
    let seen = pg
        .role()
        .observe(pg.ctx_in(&qa, "unknown"), &json!({}), &unknown.live)
        .expect("observe");
    assert!(
        matches!(&seen, Observation::Drifted { reason } if reason.contains(&name2)),
        "a role shut out of its environment's database is drift: {seen:?}"
    );
    pg.role()
        .update(pg.ctx_in(&qa, "unknown"), &json!({}), &unknown.live)
        .expect("update");
    postgres::Client::connect(&role_url(&unknown, &name2), postgres::NoTls)
        .expect("let in by its update");
    assert_eq!(
        pg.role()
            .observe(pg.ctx_in(&qa, "unknown"), &json!({}), &unknown.live)
            .expect("observe"),
        Observation::InSync
    );

    // A role let in goes before the database: what it was granted is taken back first,
    // wherever it was granted (here by hand, on another environment's database too).
    admin()
        .batch_execute(&format!(
            "GRANT CONNECT ON DATABASE {} TO {}",
            quote(&output(&other, "database")),
            quote(&output(&before, "user"))
        ))
        .expect("grant by hand");
    pg.role()
        .delete(pg.ctx_in(&qa, "reader"), Some(&before.live))
        .expect("delete a role let in");
    assert!(!role_exists(&output(&before, "user")), "it is gone");
    pg.database()
        .delete(pg.ctx_in(&qa, "db"), Some(&db.live))
        .expect("delete the database");
    pg.role()
        .delete(pg.ctx_in(&qa, "late"), Some(&after.live))
        .expect("delete the other after it");
    pg.role()
        .delete(pg.ctx_in(&prod, "spy"), Some(&spy.live))
        .expect("delete prod's");
    pg.database()
        .delete(pg.ctx_in(&qa2, "db"), Some(&other.live))
        .expect("delete qa2's");
    pg.role()
        .delete(pg.ctx_in(&qa, "unknown"), Some(&unknown.live))
        .expect("delete a role let into a database still there");
    pg.database()
        .delete(pg.ctx_in(&qa, "db2"), Some(&db2.live))
        .expect("delete qa's second database");
    assert!(!role_exists(&output(&after, "user")) && !role_exists(&output(&spy, "user")));
}

/// A database's update and its environment's role's update change the database's
/// privileges at once, over and over (an apply runs them side by side): each takes its turn,
/// and none fails on the other's change (`tuple concurrently updated`).
#[test]
fn a_database_and_its_environments_role_change_its_privileges_in_turn() {
    let pg = Pg::new();
    let qa = env("qa");
    let role = pg
        .role()
        .create(pg.ctx_in(&qa, "reader"), &json!({}))
        .expect("a role");
    let db = pg
        .database()
        .create(pg.ctx_in(&qa, "db"), &json!({}))
        .expect("a database");
    std::thread::scope(|scope| {
        let roles = scope.spawn(|| {
            for _ in 0..40 {
                pg.role()
                    .update(pg.ctx_in(&qa, "reader"), &json!({}), &role.live)
                    .expect("the role's update");
            }
        });
        for _ in 0..40 {
            pg.database()
                .update(pg.ctx_in(&qa, "db"), &json!({}), &db.live)
                .expect("the database's update");
        }
        roles.join().expect("the role's thread");
    });
    postgres::Client::connect(&role_url(&role, &output(&db, "database")), postgres::NoTls)
        .expect("the role is let in");
}

/// A database its environment's role made a template (which needs only ownership) is
/// dropped with its environment all the same: `DROP DATABASE` refuses a template, and the
/// database and its role's login outlived the environment.
#[test]
fn a_database_its_role_made_a_template_goes_with_its_environment() {
    let pg = Pg::new();
    let db = pg
        .database()
        .create(pg.ctx("db"), &json!({}))
        .expect("a database");
    let name = output(&db, "database");
    let mut owner = postgres::Client::connect(&role_url(&db, &name), postgres::NoTls)
        .expect("the role connects");
    owner
        .batch_execute(&format!("ALTER DATABASE {} IS_TEMPLATE true", quote(&name)))
        .expect("the owner may");
    drop(owner);
    pg.database()
        .delete(pg.ctx("db"), Some(&db.live))
        .expect("the delete");
    assert!(!database_exists(&name), "{name} is gone");
    assert!(!role_exists(&output(&db, "user")), "and its role");
}

/// A session that holds the lock Slipway takes to change a database's privileges (any role
/// that can connect to the admin's database may: an environment's code, with its role's
/// password): the change fails after a bounded wait, retryable, where it waited for ever.
#[test]
fn a_lock_held_by_another_session_fails_a_change_after_a_while_rather_than_hang_it() {
    let pg = Pg::new();
    let qa = env("qa");
    let db = pg
        .database()
        .create(pg.ctx_in(&qa, "db"), &json!({}))
        .expect("a database");
    let mut holder = admin();
    holder
        .execute(
            "SELECT pg_catalog.pg_advisory_lock(1397507152, pg_catalog.hashtext($1))",
            &[&output(&db, "database")],
        )
        .expect("the lock is taken");
    let error = failure(
        pg.database()
            .update(pg.ctx_in(&qa, "db"), &json!({}), &db.live),
        "the update waits for the lock",
    );
    assert!(error.retryable(), "{error}");
    drop(holder);
    pg.database()
        .update(pg.ctx_in(&qa, "db"), &json!({}), &db.live)
        .expect("the lock gone, the update goes through");
}

/// The roles the operator lists in `[postgres.NAME] connect` (a pooler, a monitoring role)
/// connect to every environment's database of that server; a role it does not list stays
/// out; a listed role that does not exist fails the change, naming it.
#[test]
fn the_roles_the_operator_lists_connect_to_every_environments_database() {
    let mut pg = Pg::with_servers(BTreeMap::from([("watched".to_owned(), ADMIN.to_owned())]));
    let monitor = format!("swtest_monitor_{}", pg.id);
    let stranger = format!("swtest_stranger_{}", pg.id);
    pg.extra_roles.extend([monitor.clone(), stranger.clone()]);
    admin()
        .batch_execute(&format!(
            "CREATE ROLE {} LOGIN; CREATE ROLE {} LOGIN",
            quote(&monitor),
            quote(&stranger)
        ))
        .expect("a monitoring role, and another");
    let db = pg
        .database()
        .create(pg.ctx("db"), &json!({}))
        .expect("create");
    let name = output(&db, "database");
    let url = |role: &str| format!("postgres://{role}@127.0.0.1:5432/{name}");
    postgres::Client::connect(&url(&monitor), postgres::NoTls).expect("the listed role connects");
    assert!(kept_out(&url(&stranger)), "another role is kept out");
    admin()
        .batch_execute(&format!(
            "DROP OWNED BY {m}; DROP ROLE {m}",
            m = quote(&monitor)
        ))
        .expect("drop the listed role");
    let err = failure(
        pg.database().update(pg.ctx("db"), &json!({}), &db.live),
        "an update while a listed role is missing",
    );
    assert!(
        err.to_string().contains(&monitor),
        "the error names it: {err}"
    );
    pg.database()
        .delete(pg.ctx("db"), Some(&db.live))
        .expect("delete");
}

/// An environment's code may connect to the admin URL's database as its role (every role may,
/// unless the operator revoked it) and leave there what would keep its role from being
/// dropped (a large object, default privileges): its destroy drops those with the role,
/// instead of failing for ever.
#[test]
fn what_an_environments_role_left_in_the_admin_database_does_not_stop_its_destroy() {
    let pg = Pg::new();
    let db = pg
        .database()
        .create(pg.ctx("db"), &json!({}))
        .expect("create");
    let reader = pg
        .role()
        .create(pg.ctx("reader"), &json!({}))
        .expect("a role");
    let mut objects = Vec::new();
    for (user, password) in [
        (output(&db, "user"), output(&db, "password")),
        (output(&reader, "user"), output(&reader, "password")),
    ] {
        let mut admin_db = postgres::Client::connect(
            &format!("postgres://{user}:{password}@127.0.0.1:5432/postgres"),
            postgres::NoTls,
        )
        .expect("the role reaches the admin URL's database");
        let object: u32 = admin_db
            .query_one("select lo_create(0)", &[])
            .expect("a large object")
            .get(0);
        admin_db
            .batch_execute("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC")
            .expect("default privileges");
        objects.push(object);
    }
    pg.database()
        .delete(pg.ctx("db"), Some(&db.live))
        .expect("the database's delete");
    pg.role()
        .delete(pg.ctx("reader"), Some(&reader.live))
        .expect("the role's delete");
    assert!(!role_exists(&output(&db, "user")) && !role_exists(&output(&reader, "user")));
    let left: i64 = admin()
        .query_one(
            "select count(*) from pg_largeobject_metadata where oid = any($1)",
            &[&objects],
        )
        .expect("count large objects")
        .get(0);
    assert_eq!(left, 0, "what they left went with them");
}

/// Large objects, each in its database, unlinked as the admin when dropped (what a test left
/// in `template1` would otherwise be in every database made after it).
struct LargeObjects(Vec<(String, u32)>);

impl LargeObjects {
    /// Whether the object `oid` exists in `database`.
    fn exists(database: &str, oid: u32) -> bool {
        postgres::Client::connect(
            &format!("postgres://postgres@127.0.0.1:5432/{database}"),
            postgres::NoTls,
        )
        .expect("connect as the admin")
        .query_opt(
            "select 1 from pg_largeobject_metadata where oid = $1",
            &[&oid],
        )
        .expect("look up a large object")
        .is_some()
    }
}

impl Drop for LargeObjects {
    fn drop(&mut self) {
        for (database, oid) in &self.0 {
            if let Ok(mut c) = postgres::Client::connect(
                &format!("postgres://postgres@127.0.0.1:5432/{database}"),
                postgres::NoTls,
            ) {
                let _ = c.execute(
                    "select lo_unlink(oid) from pg_largeobject_metadata where oid = $1",
                    &[oid],
                );
            }
        }
    }
}

/// An environment's code may connect, as its role, to `template1` and to every other database
/// that lets `PUBLIC` in, and leave there what its role owns (a large object needs no
/// privilege at all): none of it is in another environment's database made after (made from
/// `template0`), and its destroy drops it everywhere, instead of failing for ever. But not a
/// table it made where others write (what an operator's `CREATE TABLE IF NOT EXISTS` then
/// fills): that stops the destroy, named, before anything changes, until a person hands it
/// on. Nor can another database's owner stop it: not with the settings it gives its
/// sessions, nor by granting the role something in its database and closing it.
#[test]
fn what_an_environments_role_leaves_in_other_databases_reaches_no_other_environment_and_goes_with_it()
 {
    let pg = Pg::new();
    let other = slipway_testkit::pg::TestDatabase::create("swtest_other");
    let mut operator = other.connect();
    // As before PostgreSQL 15, or as an operator who lets everyone create there.
    operator
        .batch_execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        .expect("let every role create");
    let db = pg
        .database()
        .create(pg.ctx("db"), &json!({}))
        .expect("create");
    let (user, password) = (output(&db, "user"), output(&db, "password"));
    let as_role = |database: &str| {
        postgres::Client::connect(
            &format!("postgres://{user}:{password}@127.0.0.1:5432/{database}"),
            postgres::NoTls,
        )
        .unwrap_or_else(|e| panic!("the role reaches {database}: {e}"))
    };
    let mut left = LargeObjects(Vec::new());
    let mut session = as_role("template1");
    let object = |c: &mut postgres::Client| -> u32 {
        c.query_one("select lo_create(0)", &[])
            .expect("a large object")
            .get(0)
    };
    left.0.push(("template1".to_owned(), object(&mut session)));
    let mut elsewhere = as_role(other.name());
    left.0
        .push((other.name().to_owned(), object(&mut elsewhere)));
    elsewhere
        .batch_execute("create table public.sessions (id int)")
        .expect("a table where the operator writes");
    drop(elsewhere);
    operator
        .batch_execute(
            "create table if not exists sessions (id int); insert into sessions values (7)",
        )
        .expect("the operator's application writes its sessions");
    let prod = env("prod");
    let theirs = pg
        .database()
        .create(pg.ctx_in(&prod, "db"), &json!({}))
        .expect("another environment's database, made after");
    let (template1, planted) = left.0[0].clone();
    assert!(
        !LargeObjects::exists(&output(&theirs, "database"), planted),
        "what qa's role left in template1 is in prod's database"
    );

    let refused = pg
        .database()
        .delete(pg.ctx("db"), Some(&db.live))
        .expect_err("the table someone wrote to is not dropped for it")
        .to_string();
    assert!(
        refused.contains(&format!("in database {}", other.name())),
        "{refused}"
    );
    assert!(
        LargeObjects::exists(&template1, planted),
        "nothing changes while something is kept"
    );
    session
        .simple_query("select 1")
        .expect("the role's sessions go on");
    let kept: i32 = operator
        .query_one("select id from sessions", &[])
        .expect("the operator's row")
        .get(0);
    assert_eq!(kept, 7);

    // A person hands the table on (not the large object), and lets the role read it again;
    // the database's owner would have every session read-only, run as someone else, and
    // load a library that is not there.
    operator
        .batch_execute(&format!(
            "ALTER TABLE sessions OWNER TO postgres; GRANT SELECT ON sessions TO {user}; \
             ALTER DATABASE {db} SET default_transaction_read_only = on; \
             ALTER DATABASE {db} SET role = pg_monitor; \
             ALTER DATABASE {db} SET local_preload_libraries = 'swtest_nowhere'",
            user = quote(&user),
            db = quote(other.name()),
        ))
        .expect("hand it on");
    // Prod's own role grants qa's something in prod's database, then closes it.
    let prod_db = output(&theirs, "database");
    postgres::Client::connect(&output(&theirs, "url"), postgres::NoTls)
        .expect("prod's role")
        .batch_execute(&format!(
            "create table t (x int); grant select on t to {}",
            quote(&user)
        ))
        .expect("a grant");
    postgres::Client::connect(
        &format!(
            "postgres://{}:{}@127.0.0.1:5432/postgres",
            output(&theirs, "user"),
            output(&theirs, "password")
        ),
        postgres::NoTls,
    )
    .expect("prod's role, elsewhere")
    .batch_execute(&format!(
        "alter database {} allow_connections false",
        quote(&prod_db)
    ))
    .expect("then the door shut");
    pg.database()
        .delete(pg.ctx("db"), Some(&db.live))
        .expect("then the destroy passes");
    assert!(!role_exists(&user));
    assert!(
        session.simple_query("select 1").is_err(),
        "its session was ended"
    );
    assert!(
        !LargeObjects::exists(&template1, planted),
        "what it left in template1 went with it"
    );
    // The operator's session: a new one would meet the library that is not there.
    let found: i64 = operator
        .query_one(
            "select count(*) from pg_largeobject_metadata where oid = $1",
            &[&left.0[1].1],
        )
        .expect("look up")
        .get(0);
    assert_eq!(found, 0, "what it left in {} went with it", other.name());
    let kept: i32 = operator
        .query_one("select id from sessions", &[])
        .expect("the operator's row")
        .get(0);
    assert_eq!(kept, 7, "and the table stays");
    let closed: bool = admin()
        .query_one(
            "select not datallowconn from pg_database where datname = $1",
            &[&prod_db],
        )
        .expect("prod's database")
        .get(0);
    assert!(
        closed,
        "prod's database is closed again, as its owner left it"
    );
    admin()
        .batch_execute(&format!(
            "alter database {} allow_connections true",
            quote(&prod_db)
        ))
        .expect("open it to delete it");
    pg.database()
        .delete(pg.ctx_in(&prod, "db"), Some(&theirs.live))
        .expect("delete");
}

/// A database made without a template is cloned from `template0` (which nothing can leave
/// anything in), with `template1`'s encoding and locale, as it had when it was cloned from
/// `template1`.
#[test]
fn a_database_without_a_template_has_template1s_encoding_and_locale() {
    let pg = Pg::new();
    let db = pg
        .database()
        .create(pg.ctx("db"), &json!({}))
        .expect("create");
    let locale = |name: &str| -> (String, String, String) {
        let row = admin()
            .query_one(
                "select pg_encoding_to_char(encoding)::text, datcollate::text, datctype::text \
                 from pg_database where datname = $1",
                &[&name],
            )
            .expect("a database's locale");
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(locale(&output(&db, "database")), locale("template1"));
    pg.database()
        .delete(pg.ctx("db"), Some(&db.live))
        .expect("delete");
}

/// What a `postgres.role` owns in its own environment's database is the environment's data (a
/// migrator's tables, its large objects): its delete never drops it, but fails, naming the
/// database, until a person reassigns or drops it there; even when the database's owner has
/// changed the database's comment, which said whose it is. What it was granted there (all
/// that is left then) goes with it.
#[test]
fn a_role_that_owns_tables_in_its_environments_database_is_not_dropped_with_them() {
    let pg = Pg::new();
    let db = pg
        .database()
        .create(pg.ctx("db"), &json!({}))
        .expect("create");
    let migrator = pg
        .role()
        .create(pg.ctx("migrator"), &json!({}))
        .expect("a role");
    let database = output(&db, "database");
    let (user, password) = (output(&migrator, "user"), output(&migrator, "password"));
    postgres::Client::connect(&output(&db, "url"), postgres::NoTls)
        .expect("the database's role")
        .batch_execute(&format!(
            "GRANT CREATE ON SCHEMA public TO {user}; COMMENT ON DATABASE {database} IS 'mine'",
            user = quote(&user),
            database = quote(&database),
        ))
        .expect("let the migrator create, and say nothing of Slipway");
    postgres::Client::connect(
        &format!("postgres://{user}:{password}@127.0.0.1:5432/{database}"),
        postgres::NoTls,
    )
    .expect("the migrator connects to its environment's database")
    .batch_execute("create table kept (x int); insert into kept values (42); select lo_create(0)")
    .expect("the migrator's table and large object");

    let refused = pg
        .role()
        .delete(pg.ctx("migrator"), Some(&migrator.live))
        .expect_err("its table is kept")
        .to_string();
    assert!(
        refused.contains(&format!("in database {database}")),
        "{refused}"
    );
    assert_eq!(admin_query_one(&database, "select x from kept"), 42);
    assert_eq!(
        admin_query_one(
            &database,
            "select count(*)::int from pg_largeobject_metadata"
        ),
        1
    );
    assert!(role_exists(&user));

    let mut person = postgres::Client::connect(
        &format!("postgres://postgres@127.0.0.1:5432/{database}"),
        postgres::NoTls,
    )
    .expect("the admin in the environment's database");
    person
        .batch_execute("ALTER TABLE kept OWNER TO postgres")
        .expect("a person hands the table on");
    let refused = pg
        .role()
        .delete(pg.ctx("migrator"), Some(&migrator.live))
        .expect_err("its large object is the environment's too")
        .to_string();
    assert!(
        refused.contains(&format!("in database {database}")),
        "{refused}"
    );
    person
        .batch_execute(&format!("REASSIGN OWNED BY {} TO postgres", quote(&user)))
        .expect("then the rest (its grant on `public` stays)");
    pg.role()
        .delete(pg.ctx("migrator"), Some(&migrator.live))
        .expect("then the role goes");
    assert_eq!(admin_query_one(&database, "select x from kept"), 42);
    pg.database()
        .delete(pg.ctx("db"), Some(&db.live))
        .expect("delete");
}

/// A database is made refusing every connection until it is marked and closed to `PUBLIC`,
/// so that no session opened in between outlives the `REVOKE`; one an interrupted create
/// left so is opened by the next try, which takes it back.
#[test]
fn a_database_an_interrupted_create_left_refusing_connections_is_opened_by_the_next_try() {
    let pg = Pg::new();
    let applied = pg
        .database()
        .create(pg.ctx("db"), &json!({}))
        .expect("create");
    let name = output(&applied, "database");
    postgres::Client::connect(&output(&applied, "url"), postgres::NoTls).expect("open once made");
    admin()
        .batch_execute(&format!(
            "ALTER DATABASE {n} ALLOW_CONNECTIONS false; COMMENT ON DATABASE {n} IS NULL",
            n = quote(&name)
        ))
        .expect("as a create interrupted before its marker left it");
    assert!(
        postgres::Client::connect(&output(&applied, "url"), postgres::NoTls).is_err(),
        "it refuses connections"
    );
    let again = pg
        .database()
        .create(pg.ctx("db"), &json!({}))
        .expect("the next try takes it back");
    postgres::Client::connect(&output(&again, "url"), postgres::NoTls)
        .expect("and opens it to its role");
    pg.database()
        .delete(pg.ctx("db"), Some(&again.live))
        .expect("delete");
}

fn extension_installed(url: &str, extension: &str) -> bool {
    postgres::Client::connect(url, postgres::NoTls)
        .expect("connect with the url output")
        .query_opt(
            "select 1 from pg_extension where extname = $1",
            &[&extension],
        )
        .expect("list extensions")
        .is_some()
}

#[test]
fn update_adds_and_removes_extensions_and_keeps_the_password() {
    let pg = Pg::new();
    let created = pg
        .database()
        .create(pg.ctx("db"), &json!({}))
        .expect("create");
    let url = output(&created, "url");
    assert!(!extension_installed(&url, "citext"), "no citext at first");

    let with_citext = json!({"extensions": ["citext"]});
    let updated = pg
        .database()
        .update(pg.ctx("db"), &with_citext, &created.live)
        .expect("update adds an extension");
    assert_eq!(
        output(&updated, "password"),
        output(&created, "password"),
        "an update keeps the password"
    );
    assert_scram_verifier_of(&output(&updated, "user"), &output(&updated, "password"));
    assert_eq!(output(&updated, "url"), url, "and so the url");
    assert!(extension_installed(&url, "citext"), "citext is created");
    assert_eq!(
        pg.database()
            .observe(pg.ctx("db"), &with_citext, &updated.live)
            .expect("observe"),
        Observation::InSync,
        "in sync with its extension"
    );

    let mut admin_db = postgres::Client::connect(
        &format!(
            "postgres://postgres@127.0.0.1:5432/{}",
            output(&created, "database")
        ),
        postgres::NoTls,
    )
    .expect("connect to the new database as admin");
    admin_db
        .batch_execute("drop extension citext")
        .expect("drop the extension behind the provider's back");
    let seen = pg
        .database()
        .observe(pg.ctx("db"), &with_citext, &updated.live)
        .expect("observe");
    assert!(
        matches!(&seen, Observation::Drifted { reason } if reason.contains("citext")),
        "a dropped extension is drift: {seen:?}"
    );
    let healed = pg
        .database()
        .update(pg.ctx("db"), &with_citext, &updated.live)
        .expect("update heals the drift");
    assert!(extension_installed(&url, "citext"), "citext is back");

    admin_db
        .batch_execute("create table t (name citext)")
        .expect("a table uses citext");
    let err = failure(
        pg.database().update(pg.ctx("db"), &json!({}), &healed.live),
        "removing an extension in use",
    );
    assert!(!err.retryable(), "an extension in use is terminal: {err}");
    assert!(
        err.to_string().contains("citext") && err.to_string().contains("2BP01"),
        "the error names the extension and SQLSTATE: {err}"
    );
    admin_db
        .batch_execute("drop table t")
        .expect("drop the table");
    drop(admin_db);
    let removed = pg
        .database()
        .update(pg.ctx("db"), &json!({}), &healed.live)
        .expect("removing an unused extension");
    assert!(!extension_installed(&url, "citext"), "citext is dropped");
    pg.database()
        .delete(pg.ctx("db"), Some(&removed.live))
        .expect("delete");
}

/// The owner and the schema of `extension` in the database at `url`, if it is there.
fn extension_owner_and_schema(database: &str, extension: &str) -> Option<(String, String)> {
    postgres::Client::connect(
        &format!("postgres://postgres@127.0.0.1:5432/{database}"),
        postgres::NoTls,
    )
    .expect("connect to the database as admin")
    .query_opt(
        "select extowner::regrole::text, extnamespace::regnamespace::text \
         from pg_extension where extname = $1",
        &[&extension],
    )
    .expect("read the extension")
    .map(|row| (row.get(0), row.get(1)))
}

/// An extension's install script runs in a database the environment's code controls: one
/// PostgreSQL marks trusted is created as the environment's role (which could create it
/// itself), one it does not only when the operator lists it for the server (then by the
/// admin), and refused otherwise, naming the setting; both in `public`.
#[test]
fn trusted_extensions_are_the_roles_own_and_untrusted_ones_need_the_operators_list() {
    let pg = Pg::with_servers(BTreeMap::from([
        ("main".to_owned(), ADMIN.to_owned()),
        ("lenient".to_owned(), ADMIN.to_owned()),
    ]));
    let created = pg
        .database()
        .create(
            pg.ctx("db"),
            &json!({"server": "main", "extensions": ["citext"]}),
        )
        .expect("create with a trusted extension");
    let (database, user) = (output(&created, "database"), output(&created, "user"));
    assert_eq!(
        extension_owner_and_schema(&database, "citext"),
        Some((user.clone(), "public".to_owned())),
        "a trusted extension is its role's"
    );

    let untrusted = json!({"server": "main", "extensions": ["citext", "pageinspect"]});
    let err = failure(
        pg.database()
            .update(pg.ctx("db"), &untrusted, &created.live),
        "an untrusted extension no one listed",
    );
    assert!(!err.retryable(), "a refusal is terminal: {err}");
    assert!(
        err.to_string()
            .contains("\"pageinspect\" is not marked trusted")
            && err.to_string().contains("`[postgres.main] extensions`"),
        "the error names the extension and the setting: {err}"
    );
    assert_eq!(extension_owner_and_schema(&database, "pageinspect"), None);

    // A trusted one first, then one the operator listed, on one session: the role is the
    // admin's again after the first.
    let other = pg
        .database()
        .create(
            pg.ctx("other"),
            &json!({"server": "lenient", "extensions": ["citext", "pageinspect"]}),
        )
        .expect("an untrusted extension the operator listed");
    let (database, user) = (output(&other, "database"), output(&other, "user"));
    assert_eq!(
        extension_owner_and_schema(&database, "citext"),
        Some((user, "public".to_owned()))
    );
    assert_eq!(
        extension_owner_and_schema(&database, "pageinspect"),
        Some(("postgres".to_owned(), "public".to_owned())),
        "made by the admin"
    );

    let err = failure(
        pg.database().create(
            pg.ctx("third"),
            &json!({"server": "lenient", "extensions": [format!("swtest_none_{}", pg.id)]}),
        ),
        "an extension the server does not have",
    );
    assert!(
        err.to_string()
            .contains("is not available on server lenient"),
        "{err}"
    );
}

/// The environment's role owns its database and may set the database's `search_path`: a
/// schema of its own first, `pg_catalog` after, so that its `pg_extension` (a view calling
/// its function) would be read in place of the system's by the admin, who looks at the
/// extensions on every observe. The admin's sessions resolve names in `pg_catalog` alone.
#[test]
fn the_admin_reads_the_systems_catalogs_whatever_search_path_the_database_sets() {
    let pg = Pg::new();
    let config = json!({"extensions": ["citext"]});
    let created = pg.database().create(pg.ctx("db"), &config).expect("create");
    let database = output(&created, "database");
    // What the environment's code may do, as its role (here as the admin, for brevity).
    let mut as_owner = postgres::Client::connect(
        &format!("postgres://postgres@127.0.0.1:5432/{database}"),
        postgres::NoTls,
    )
    .expect("connect to the environment's database");
    as_owner
        .batch_execute(&format!(
            "create schema planted; create sequence planted.calls; \
             create function planted.spy() returns bigint language sql \
               as 'select nextval(''planted.calls'')'; \
             create view planted.pg_extension as \
               select extname, planted.spy() as spied from pg_catalog.pg_extension; \
             alter database {} set search_path = planted, pg_catalog",
            quote(&database)
        ))
        .expect("plant a catalog and set the database's search_path");
    assert_eq!(
        pg.database()
            .observe(pg.ctx("db"), &config, &created.live)
            .expect("observe"),
        Observation::InSync
    );
    pg.database()
        .update(
            pg.ctx("db"),
            &json!({"extensions": ["citext", "hstore"]}),
            &created.live,
        )
        .expect("an update that adds an extension");
    let calls: i64 = as_owner
        .query_one(
            "select case when is_called then last_value else 0 end from planted.calls",
            &[],
        )
        .expect("read the counter")
        .get(0);
    assert_eq!(calls, 0, "the planted view was read by the admin");
}

#[test]
fn delete_ends_open_connections_and_removes_database_and_role() {
    let pg = Pg::new();
    let applied = pg
        .database()
        .create(pg.ctx("db"), &json!({}))
        .expect("create");
    let mut held = postgres::Client::connect(&output(&applied, "url"), postgres::NoTls)
        .expect("the application connects");
    held.batch_execute("select 1")
        .expect("the connection works");

    pg.database()
        .delete(pg.ctx("db"), Some(&applied.live))
        .expect("delete succeeds while a connection is open");
    assert!(
        held.batch_execute("select 1").is_err(),
        "the open connection was terminated"
    );
    assert!(
        !database_exists(&output(&applied, "database")),
        "the database is gone"
    );
    assert!(!role_exists(&output(&applied, "user")), "the role is gone");
    pg.database()
        .delete(pg.ctx("db"), Some(&applied.live))
        .expect("deleting again succeeds");
    pg.database()
        .delete(pg.ctx("db"), None)
        .expect("and so does deleting without a record");
}

#[test]
fn a_database_dropped_behind_the_providers_back_is_missing_and_can_be_created_again() {
    let pg = Pg::new();
    let applied = pg
        .database()
        .create(pg.ctx("db"), &json!({}))
        .expect("create");
    let database = output(&applied, "database");
    admin()
        .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", quote(&database)))
        .expect("drop the database behind the provider's back");
    let seen = pg
        .database()
        .observe(pg.ctx("db"), &json!({}), &applied.live)
        .expect("observe");
    match &seen {
        Observation::Missing { reason } => {
            assert!(
                reason.contains(&format!(
                    "database \"{database}\" was dropped on server main"
                )),
                "the reason names database and server: {reason}"
            );
            assert!(
                reason.contains("data is lost"),
                "and warns of data loss: {reason}"
            );
        }
        other => panic!("a dropped database is missing, not {other:?}"),
    }
    // What the engine does on a replace.
    pg.database()
        .delete(pg.ctx("db"), Some(&applied.live))
        .expect("delete what is left");
    pg.database()
        .delete(pg.ctx("db"), None)
        .expect("delete what an interrupted create may have left");
    let again = pg
        .database()
        .create(pg.ctx("db"), &json!({}))
        .expect("create again");
    assert_eq!(output(&again, "database"), database, "the same name again");
    postgres::Client::connect(&output(&again, "url"), postgres::NoTls)
        .expect("the new database is reachable");
    pg.database()
        .delete(pg.ctx("db"), Some(&again.live))
        .expect("delete");
}

#[test]
fn a_role_dropped_behind_the_providers_back_is_drift_healed_without_losing_data() {
    let pg = Pg::new();
    let applied = pg
        .database()
        .create(pg.ctx("db"), &json!({}))
        .expect("create");
    let url = output(&applied, "url");
    let (database, user) = (output(&applied, "database"), output(&applied, "user"));
    let mut app = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    app.batch_execute("create table kept (x int); insert into kept values (42)")
        .expect("write data");
    drop(app);
    let mut in_db = postgres::Client::connect(
        &format!("postgres://postgres@127.0.0.1:5432/{database}"),
        postgres::NoTls,
    )
    .expect("admin in the database");
    in_db
        // Reassigns the database itself too, and the role's tables in it.
        .batch_execute(&format!("REASSIGN OWNED BY {} TO postgres", quote(&user)))
        .expect("hand the role's objects to the admin");
    drop(in_db);
    admin()
        .batch_execute(&format!("DROP ROLE {}", quote(&user)))
        .expect("drop the role behind the provider's back");
    let seen = pg
        .database()
        .observe(pg.ctx("db"), &json!({}), &applied.live)
        .expect("observe");
    assert!(
        matches!(&seen, Observation::Drifted { reason } if reason.contains("data is kept")),
        "a dropped role is drift repaired in place: {seen:?}"
    );
    let healed = pg
        .database()
        .update(pg.ctx("db"), &json!({}), &applied.live)
        .expect("update recreates the role");
    assert_eq!(output(&healed, "url"), url, "with the same password");
    let mut app = postgres::Client::connect(&url, postgres::NoTls).expect("connect again");
    let kept: i32 = admin_query_one(&database, "select x from kept");
    assert_eq!(kept, 42, "the data survived");
    app.batch_execute("create table more (y int)")
        .expect("the role owns its database again");
    drop(app);
    pg.database()
        .delete(pg.ctx("db"), Some(&healed.live))
        .expect("delete");
}

/// The drift check reads whether the role may log in (the create's look-up does not).
#[test]
fn a_role_that_can_no_longer_log_in_is_drift_and_the_update_lets_it_in_again() {
    let pg = Pg::new();
    let applied = pg
        .database()
        .create(pg.ctx("db"), &json!({}))
        .expect("create");
    let user = output(&applied, "user");
    let observe = || {
        pg.database()
            .observe(pg.ctx("db"), &json!({}), &applied.live)
            .expect("observe")
    };
    assert!(matches!(observe(), Observation::InSync), "{:?}", observe());
    admin()
        .batch_execute(&format!("ALTER ROLE {} NOLOGIN", quote(&user)))
        .expect("lock the role out behind the provider's back");
    let seen = observe();
    assert!(
        matches!(&seen, Observation::Drifted { reason } if reason.contains("can no longer log in")),
        "{seen:?}"
    );
    let healed = pg
        .database()
        .update(pg.ctx("db"), &json!({}), &applied.live)
        .expect("update");
    postgres::Client::connect(&output(&healed, "url"), postgres::NoTls)
        .expect("the role logs in again");
    assert!(matches!(observe(), Observation::InSync), "{:?}", observe());
    pg.database()
        .delete(pg.ctx("db"), Some(&healed.live))
        .expect("delete");
}

/// The context of `resource` in `environment`, an environment of `kind`.
fn of_kind<'a>(
    pg: &'a Pg,
    environment: &'a EnvName,
    resource: &'a str,
    kind: EnvKind,
) -> ResourceContext<'a> {
    ResourceContext {
        kind: Some(kind),
        ..pg.ctx_in(environment, resource)
    }
}

/// The `CONNECTION LIMIT` of role `role` (`-1`: none).
fn connection_limit_of(role: &str) -> i32 {
    admin()
        .query_one(
            "select rolconnlimit from pg_roles where rolname = $1",
            &[&role],
        )
        .expect("the role exists")
        .get(0)
}

/// Whoever pushes a branch holds its preview's passwords: its code could open every
/// connection the server allows and leave production's roles none. A preview's roles get
/// `preview_connection_limit` connections at once, a static environment's none.
#[test]
fn a_previews_roles_cannot_open_more_connections_than_its_limit() {
    let pg = Pg::new();
    let (preview, prod) = (env("pr-7"), env("prod"));
    let applied = pg
        .database()
        .create(of_kind(&pg, &preview, "db", EnvKind::Generated), &json!({}))
        .expect("create a preview's database");
    let url = output(&applied, "url");
    let open: Vec<postgres::Client> = (0..2)
        .map(|_| postgres::Client::connect(&url, postgres::NoTls).expect("within the limit"))
        .collect();
    let refused = postgres::Client::connect(&url, postgres::NoTls)
        .err()
        .expect("a third connection is refused");
    assert_eq!(
        refused.as_db_error().map(|e| e.code().code()),
        Some("53300"),
        "too many connections for the role: {refused}"
    );
    drop(open);
    let role = pg
        .role()
        .create(of_kind(&pg, &preview, "app", EnvKind::Adhoc), &json!({}))
        .expect("create an ad-hoc environment's role");
    assert_eq!(connection_limit_of(&output(&role, "user")), 2, "a role too");
    let prods = pg
        .database()
        .create(of_kind(&pg, &prod, "db", EnvKind::Static), &json!({}))
        .expect("create a static environment's database");
    assert_eq!(
        connection_limit_of(&output(&prods, "user")),
        -1,
        "a static environment's role has no limit"
    );
    pg.database()
        .delete(pg.ctx_in(&preview, "db"), Some(&applied.live))
        .expect("delete");
    pg.role()
        .delete(pg.ctx_in(&preview, "app"), Some(&role.live))
        .expect("delete");
    pg.database()
        .delete(pg.ctx_in(&prod, "db"), Some(&prods.live))
        .expect("delete");
}

/// A preview's role made before its limit (by a Slipway from before, or before the operator
/// lowered it) gets it at its next update. It is not drift: a database's update runs again
/// what uses it, which an upgrade should not do to every environment at once.
#[test]
fn a_role_made_without_its_environments_connection_limit_gets_it_at_its_next_update() {
    let pg = Pg::new();
    let preview = env("pr-8");
    let unknown = pg.ctx_in(&preview, "db");
    let applied = pg
        .database()
        .create(unknown, &json!({}))
        .expect("create without a kind: no limit set");
    let user = output(&applied, "user");
    assert_eq!(connection_limit_of(&user), -1);
    let ctx = of_kind(&pg, &preview, "db", EnvKind::Generated);
    let seen = pg
        .database()
        .observe(ctx, &json!({}), &applied.live)
        .expect("observe");
    assert!(matches!(seen, Observation::InSync), "{seen:?}");
    let updated = pg
        .database()
        .update(ctx, &json!({}), &applied.live)
        .expect("update");
    assert_eq!(connection_limit_of(&user), 2, "the update set it");
    let role = pg
        .role()
        .create(
            ResourceContext {
                resource: "app",
                ..unknown
            },
            &json!({}),
        )
        .expect("a role without a kind");
    let app = of_kind(&pg, &preview, "app", EnvKind::Generated);
    pg.role()
        .update(app, &json!({}), &role.live)
        .expect("update");
    assert_eq!(
        connection_limit_of(&output(&role, "user")),
        2,
        "a role's too"
    );
    // A static environment's update, with no `connection_limit` configured, leaves a role's
    // limit as it is (one an operator set by hand on production's stays).
    let prod = of_kind(&pg, &preview, "app", EnvKind::Static);
    pg.role()
        .update(prod, &json!({}), &role.live)
        .expect("update");
    assert_eq!(
        connection_limit_of(&output(&role, "user")),
        2,
        "left as it was"
    );
    pg.database()
        .delete(unknown, Some(&updated.live))
        .expect("delete");
    pg.role().delete(app, Some(&role.live)).expect("delete");
}

/// A generated or ad-hoc environment's roles are counted on the server when one is made: a
/// role its delete could not drop (it owns a table its code made) still counts, whatever the
/// branch's `slipway.yaml` declares now, so renaming roles cannot pile them up.
#[test]
fn a_previews_roles_past_the_cap_are_refused_counting_those_left_on_the_server() {
    let pg = Pg::new();
    let (preview, prod) = (env("pr-9"), env("prod"));
    let ctx = |name| of_kind(&pg, &preview, name, EnvKind::Generated);
    let db = pg
        .database()
        .create(ctx("db"), &json!({}))
        .expect("the first role");
    let a = pg.role().create(ctx("a"), &json!({})).expect("the second");
    let b = pg.role().create(ctx("b"), &json!({})).expect("the third");
    let refused = failure(pg.role().create(ctx("c"), &json!({})), "a fourth");
    assert!(
        refused.to_string().contains("max_postgres_roles") && !refused.retryable(),
        "{refused}"
    );
    let c_name = names(&pg.id, "pr-9", "c").role;
    assert!(!role_exists(&c_name), "nothing was made");
    // A create of the database again (one interrupted, tried again) meets its own role, not
    // the cap: it takes both back.
    let again = pg
        .database()
        .create(ctx("db"), &json!({}))
        .expect("its own role is not counted against it");
    assert_eq!(output(&again, "user"), output(&db, "user"));
    // b comes to own a table in the environment's database: its delete cannot drop it.
    let (b_name, database) = (output(&b, "user"), output(&db, "database"));
    connect_elsewhere(ADMIN, &database)
        .expect("the admin connects")
        .batch_execute(&format!(
            "CREATE TABLE swtest_kept (); ALTER TABLE swtest_kept OWNER TO {}",
            quote(&b_name)
        ))
        .expect("a table of b's");
    assert!(
        pg.role().delete(ctx("b"), Some(&b.live)).is_err(),
        "b owns a table: it is not dropped"
    );
    assert!(role_exists(&b_name));
    let refused = failure(pg.role().create(ctx("c"), &json!({})), "c instead of b");
    assert!(
        refused.to_string().contains("max_postgres_roles"),
        "{refused}"
    );
    // Static environments are not capped.
    let statics: Vec<Applied> = ["p1", "p2", "p3", "p4"]
        .iter()
        .map(|name| {
            pg.role()
                .create(of_kind(&pg, &prod, name, EnvKind::Static), &json!({}))
                .expect("a static environment's role")
        })
        .collect();
    connect_elsewhere(ADMIN, &database)
        .expect("the admin connects")
        .batch_execute("DROP TABLE swtest_kept")
        .expect("the table goes");
    pg.role()
        .delete(ctx("b"), Some(&b.live))
        .expect("now b goes");
    let c = pg
        .role()
        .create(ctx("c"), &json!({}))
        .expect("with b gone, c fits");
    for (name, applied) in [("a", &a), ("c", &c)] {
        pg.role()
            .delete(ctx(name), Some(&applied.live))
            .expect("delete");
    }
    pg.database()
        .delete(ctx("db"), Some(&db.live))
        .expect("delete");
    for (name, applied) in ["p1", "p2", "p3", "p4"].iter().zip(&statics) {
        pg.role()
            .delete(pg.ctx_in(&prod, name), Some(&applied.live))
            .expect("delete");
    }
}

fn admin_query_one(database: &str, sql: &str) -> i32 {
    postgres::Client::connect(
        &format!("postgres://postgres@127.0.0.1:5432/{database}"),
        postgres::NoTls,
    )
    .expect("admin in the database")
    .query_one(sql, &[])
    .expect("query")
    .get(0)
}

/// Makes a template database with a table holding one row; the fixture drops it.
fn make_template(pg: &mut Pg) -> String {
    let template = format!("swtest_tpl_{}", pg.id);
    admin()
        .batch_execute(&format!("CREATE DATABASE {}", quote(&template)))
        .expect("create the template");
    pg.extra_databases.push(template.clone());
    postgres::Client::connect(
        &format!("postgres://postgres@127.0.0.1:5432/{template}"),
        postgres::NoTls,
    )
    .expect("connect to the template")
    .batch_execute("create table seed (id int); insert into seed values (7)")
    .expect("fill the template");
    template
}

#[test]
fn templates_are_cloned_with_either_strategy() {
    let mut pg = Pg::new();
    let template = make_template(&mut pg);
    for strategy in ["file_copy", "wal_log"] {
        let config = json!({"template": template, "strategy": strategy});
        let applied = pg
            .database()
            .create(pg.ctx(strategy), &config)
            .unwrap_or_else(|e| panic!("clone with {strategy}: {e}"));
        let seeded = admin_query_one(&output(&applied, "database"), "select id from seed");
        assert_eq!(seeded, 7, "the {strategy} clone has the template's row");
        pg.database()
            .delete(pg.ctx(strategy), Some(&applied.live))
            .expect("delete");
    }
    let applied = pg
        .database()
        .create(pg.ctx("default"), &json!({"template": template}))
        .expect("clone with the default strategy");
    assert_eq!(
        admin_query_one(&output(&applied, "database"), "select id from seed"),
        7,
        "the default clone has the row"
    );
    assert!(database_exists(&template), "the template stays");
}

#[test]
fn only_listed_templates_are_cloned_and_never_another_environments_database() {
    let mut pg = Pg::new();
    // Not listed: refused before anything is made, naming the configuration key.
    let unlisted = format!("swtest_unlisted_{}", pg.id);
    admin()
        .batch_execute(&format!("CREATE DATABASE {}", quote(&unlisted)))
        .expect("create an unlisted database");
    pg.extra_databases.push(unlisted.clone());
    let err = failure(
        pg.database()
            .create(pg.ctx("db"), &json!({"template": unlisted})),
        "cloning a database the configuration does not list",
    );
    assert!(
        err.to_string().contains("[postgres.main] templates")
            && err.to_string().contains(&unlisted),
        "the refusal names the template and the key that allows it: {err}"
    );
    assert!(
        !role_exists(&pg.names("qa", "db")),
        "nothing is made for a refused template"
    );
    // Another environment's database, even under a listed name (here: `prod`'s database
    // renamed to the listed template's name), is refused by its Slipway marker.
    let prod = pg
        .database()
        .create(pg.ctx_in(&env("prod"), "db"), &json!({}))
        .expect("prod's database");
    let listed = format!("swtest_tpl_{}", pg.id);
    admin()
        .batch_execute(&format!(
            "ALTER DATABASE {} RENAME TO {}",
            quote(&output(&prod, "database")),
            quote(&listed)
        ))
        .expect("rename prod's database to a listed template name");
    pg.extra_databases.push(listed.clone());
    let err = failure(
        pg.database()
            .create(pg.ctx("copy"), &json!({"template": listed})),
        "cloning another environment's database",
    );
    assert!(
        err.to_string().contains("database Slipway made"),
        "a Slipway-made database is never a template: {err}"
    );
    assert!(!err.retryable(), "{err}");
    assert!(
        !database_exists(&pg.names("qa", "copy")),
        "no clone of prod's database exists"
    );
}

/// A template name an operator allowed that PostgreSQL would cut short (64 bytes and more):
/// the database it names is not the one checked.
fn long_template(id: &str) -> String {
    let name = format!("swtest_long_{id}_");
    format!("{name}{}", "x".repeat(64 - name.len().min(63)))
}

#[test]
fn a_template_name_postgresql_would_cut_short_is_refused_before_anything_is_made() {
    let pg = Pg::new();
    let template = long_template(&pg.id);
    assert!(template.len() > 63, "{template}");
    let err = failure(
        pg.database()
            .create(pg.ctx("db"), &json!({"template": template})),
        "a template name over 63 bytes",
    );
    assert!(!err.retryable(), "terminal: {err}");
    assert!(err.to_string().contains("at most 63"), "it says why: {err}");
    assert!(!role_exists(&pg.names("qa", "db")), "no role made");
    assert!(!database_exists(&pg.names("qa", "db")), "no database made");
}

#[test]
fn a_missing_template_is_a_clear_terminal_error() {
    let pg = Pg::new();
    let missing = format!("swtest_missing_{}", pg.id);
    let err = failure(
        pg.database()
            .create(pg.ctx("db"), &json!({"template": missing})),
        "cloning a missing template",
    );
    assert!(!err.retryable(), "a missing template is terminal: {err}");
    assert!(
        err.to_string()
            .contains(&format!("template database \"{missing}\" does not exist")),
        "the error names the template: {err}"
    );
    assert!(
        !role_exists(&pg.names("qa", "db")),
        "the role created for it is removed again"
    );
    pg.database()
        .delete(pg.ctx("db"), None)
        .expect("nothing left to delete");
}

#[test]
fn a_template_in_use_is_a_retryable_error() {
    let mut pg = Pg::new();
    let template = make_template(&mut pg);
    let held = postgres::Client::connect(
        &format!("postgres://postgres@127.0.0.1:5432/{template}"),
        postgres::NoTls,
    )
    .expect("someone is connected to the template");
    let err = failure(
        pg.database()
            .create(pg.ctx("db"), &json!({"template": template})),
        "cloning a template in use",
    );
    assert!(err.retryable(), "a busy template is retryable: {err}");
    assert!(
        err.to_string().contains("being accessed by other users"),
        "the error says why: {err}"
    );
    // The role was made first, and its password set by a second session meanwhile: the
    // failed create leaves neither behind.
    assert!(
        !role_exists(&pg.names("qa", "db")),
        "the role made for the database that could not be made is dropped"
    );
    drop(held);
    let applied = pg
        .database()
        .create(pg.ctx("db"), &json!({"template": template}))
        .expect("the retry succeeds once the template is idle");
    pg.database()
        .delete(pg.ctx("db"), Some(&applied.live))
        .expect("delete");
}

#[test]
fn hostile_environment_and_resource_names_are_safe() {
    let pg = Pg::new();
    let long = "x".repeat(200);
    let cases: Vec<(&str, &str)> = vec![
        ("qa", "'; drop database postgres; --"),
        ("'; drop database postgres; --", "db"),
        ("qa", "\""),
        ("\"", "a\"b"),
        (&long, &long),
        ("数据库", "Ünïcödé"),
        ("qa", "back\\slash'"),
        ("", ""),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (env, resource) in &cases {
        let name = pg.names(env, resource);
        assert!(name.len() <= 63, "{name} fits in NAMEDATALEN");
        assert!(seen.insert(name.clone()), "{name} is distinct");
        // A hostile environment name stops at `EnvName` and never reaches a provider (its
        // tests are the core's); the derived identifiers above still handle one.
        let Ok(env) = EnvName::parse(env) else {
            continue;
        };
        let ctx = pg.ctx_in(&env, resource);
        let applied = pg
            .database()
            .create(ctx, &json!({}))
            .unwrap_or_else(|e| panic!("create for ({env:?}, {resource:?}): {e}"));
        assert_eq!(
            output(&applied, "database"),
            name,
            "the derived name is used"
        );
        postgres::Client::connect(&output(&applied, "url"), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to {name}: {e}"));
        assert_eq!(
            pg.database()
                .observe(ctx, &json!({}), &applied.live)
                .expect("observe"),
            Observation::InSync,
            "the marker round-trips for ({env:?}, {resource:?})"
        );
        pg.database()
            .delete(ctx, Some(&applied.live))
            .expect("delete");
        assert!(!database_exists(&name), "{name} is gone");
        assert!(!role_exists(&name), "role {name} is gone");
    }
    assert!(
        database_exists("postgres"),
        "the postgres database survived"
    );
}

#[test]
fn a_foreign_database_or_role_of_our_name_is_refused_and_left_untouched() {
    let mut pg = Pg::new();
    let name = pg.names("qa", "db");
    admin()
        .batch_execute(&format!("CREATE DATABASE {}", quote(&name)))
        .expect("someone else's database with our name");
    pg.extra_databases.push(name.clone());
    let err = failure(
        pg.database().create(pg.ctx("db"), &json!({})),
        "creating over a foreign database",
    );
    assert!(!err.retryable(), "refusal is terminal: {err}");
    assert!(
        err.to_string()
            .contains(&format!("database \"{name}\" already exists")),
        "the error names it: {err}"
    );
    assert!(!role_exists(&name), "no role was created next to it");
    // With a template that does not exist, which the server checks before the name: the
    // database is still the refusal.
    let missing = format!("swtest_missing_{}", pg.id);
    let err = failure(
        pg.database()
            .create(pg.ctx("db"), &json!({ "template": missing })),
        "creating over a foreign database from a missing template",
    );
    assert!(!err.retryable(), "refusal is terminal: {err}");
    assert!(
        err.to_string()
            .contains(&format!("database \"{name}\" already exists")),
        "the error names the database, not the template: {err}"
    );
    assert!(!role_exists(&name), "no role was left next to it");
    pg.database()
        .delete(pg.ctx("db"), None)
        .expect("delete without a record leaves it alone");
    assert!(database_exists(&name), "the foreign database is untouched");
    admin()
        .batch_execute(&format!("DROP DATABASE {}", quote(&name)))
        .expect("remove it");

    admin()
        .batch_execute(&format!(
            "CREATE ROLE {r}; COMMENT ON ROLE {r} IS 'someone else''s'",
            r = quote(&name)
        ))
        .expect("someone else's role with our name");
    pg.extra_roles.push(name.clone());
    let err = failure(
        pg.database().create(pg.ctx("db"), &json!({})),
        "creating over a foreign role",
    );
    assert!(
        err.to_string()
            .contains(&format!("role \"{name}\" already exists"))
            && err.to_string().contains("someone else's"),
        "the error names the role and its comment: {err}"
    );
    assert!(!database_exists(&name), "no database was created");
    let role_err = failure(
        pg.role().create(pg.ctx("db"), &json!({})),
        "a role resource over a foreign role",
    );
    assert!(!role_err.retryable(), "refusal is terminal: {role_err}");
    pg.database()
        .delete(pg.ctx("db"), None)
        .expect("delete leaves the foreign role");
    pg.role()
        .delete(pg.ctx("db"), None)
        .expect("so does the role provider's");
    assert!(role_exists(&name), "the foreign role is untouched");
}

/// The oid of the role `name`.
fn role_oid(name: &str) -> u32 {
    admin()
        .query_one("select oid from pg_roles where rolname = $1", &[&name])
        .expect("the role's oid")
        .get(0)
}

/// `live` as a Slipway older than the role's oid in the record wrote it.
fn without_role_oid(live: &Value) -> Value {
    let mut live = live.clone();
    live.as_object_mut()
        .expect("a record is an object")
        .remove("role_oid")
        .expect("the record has the role's oid");
    live
}

/// A delete with its record checks the role's oid the record keeps, not the markers; what
/// it finds replaced since (a database or a role of the same name, made by someone else)
/// it leaves alone all the same.
#[test]
fn a_delete_drops_by_the_recorded_oid_only_what_is_still_ours() {
    let mut pg = Pg::new();
    // An update records the oid too: a record older than it gets it on the next update.
    let created = pg
        .database()
        .create(pg.ctx("db"), &json!({}))
        .expect("create");
    let name = output(&created, "database");
    assert_eq!(
        created.live["role_oid"],
        json!(role_oid(&name)),
        "the create's record"
    );
    let updated = pg
        .database()
        .update(pg.ctx("db"), &json!({}), &without_role_oid(&created.live))
        .expect("update");
    assert_eq!(
        updated.live["role_oid"],
        json!(role_oid(&name)),
        "the update's record"
    );

    // Our database dropped, and another made with its name, by another owner.
    let impostor = format!("swtest_impostor_{}", pg.id);
    pg.extra_roles.push(impostor.clone());
    pg.extra_databases.push(name.clone());
    let mut admin_session = admin();
    for statement in [
        format!("DROP DATABASE {} WITH (FORCE)", quote(&name)),
        format!("CREATE ROLE {}", quote(&impostor)),
        format!(
            "CREATE DATABASE {} OWNER {}",
            quote(&name),
            quote(&impostor)
        ),
    ] {
        admin_session
            .batch_execute(&statement)
            .expect("someone else's database of our name");
    }
    pg.database()
        .delete(pg.ctx("db"), Some(&updated.live))
        .expect("delete");
    assert!(
        database_exists(&name),
        "the other owner's database is left alone"
    );
    assert!(!role_exists(&name), "our role is gone");
    admin()
        .batch_execute(&format!("DROP DATABASE {}", quote(&name)))
        .expect("remove the impostor's database");

    // Our role dropped (its database given away first), and another made with its name.
    let created = pg
        .database()
        .create(pg.ctx("db"), &json!({}))
        .expect("create again");
    pg.extra_roles.push(name.clone());
    admin()
        .batch_execute(&format!(
            "ALTER DATABASE {n} OWNER TO postgres; DROP ROLE {n}; CREATE ROLE {n}; \
             COMMENT ON ROLE {n} IS 'someone else''s'",
            n = quote(&name)
        ))
        .expect("replace our role");
    pg.database()
        .delete(pg.ctx("db"), Some(&created.live))
        .expect("delete");
    assert!(role_exists(&name), "the other role is left alone");
    assert!(
        !database_exists(&name),
        "our database, marked ours, is gone"
    );
    admin()
        .batch_execute(&format!("DROP ROLE {}", quote(&name)))
        .expect("remove the other role");

    // A record naming another resource's objects, with their oid: the markers decide.
    let other = pg
        .database()
        .create(pg.ctx("other"), &json!({}))
        .expect("create another resource");
    let other_name = output(&other, "database");
    pg.database()
        .delete(pg.ctx("db"), Some(&other.live))
        .expect("delete with a record of another resource's");
    assert!(
        database_exists(&other_name) && role_exists(&other_name),
        "another resource's objects are left alone"
    );

    // Our role re-commented since, its oid the same: the role Slipway made goes.
    let created = pg
        .database()
        .create(pg.ctx("db"), &json!({}))
        .expect("create a third time");
    admin()
        .batch_execute(&format!("COMMENT ON ROLE {} IS 'detached'", quote(&name)))
        .expect("re-comment our role");
    pg.database()
        .delete(pg.ctx("db"), Some(&created.live))
        .expect("delete");
    assert!(
        !database_exists(&name) && !role_exists(&name),
        "the role of the recorded oid and its database are gone"
    );
}

/// An environment's role owns its database, so its code may change the database's comment:
/// that does not make the database outlive the environment, whether the record has the
/// role's oid or is older than it (then the markers decide: the owner role carries ours).
#[test]
fn a_database_whose_role_changed_its_comment_is_dropped_with_its_environment() {
    let pg = Pg::new();
    for old_record in [false, true] {
        let applied = pg
            .database()
            .create(pg.ctx("db"), &json!({}))
            .expect("create");
        let name = output(&applied, "database");
        postgres::Client::connect(&output(&applied, "url"), postgres::NoTls)
            .expect("the environment's code connects")
            .batch_execute(&format!(
                "COMMENT ON DATABASE {} IS 'mine now'",
                quote(&name)
            ))
            .expect("its role may comment on its database");
        let seen = pg
            .database()
            .observe(pg.ctx("db"), &json!({}), &applied.live)
            .expect("observe");
        assert_eq!(seen, Observation::InSync, "still ours");
        let live = if old_record {
            without_role_oid(&applied.live)
        } else {
            applied.live.clone()
        };
        pg.database()
            .delete(pg.ctx("db"), Some(&live))
            .expect("delete");
        assert!(
            !database_exists(&name),
            "the database is gone (old record: {old_record})"
        );
        assert!(
            !role_exists(&name),
            "and its role (old record: {old_record})"
        );
    }
}

#[test]
fn delete_without_a_record_removes_what_an_interrupted_create_left() {
    let pg = Pg::new();
    let applied = pg
        .database()
        .create(pg.ctx("db"), &json!({"extensions": ["citext"]}))
        .expect("create");
    let name = output(&applied, "database");
    // A crash between CREATE DATABASE and COMMENT ON DATABASE leaves no comment.
    admin()
        .batch_execute(&format!("COMMENT ON DATABASE {} IS NULL", quote(&name)))
        .expect("remove the comment");
    drop(applied); // never recorded
    pg.database()
        .delete(pg.ctx("db"), None)
        .expect("delete without a record");
    assert!(!database_exists(&name), "the unrecorded database is gone");
    assert!(!role_exists(&name), "the unrecorded role is gone");

    pg.database()
        .create(pg.ctx("db"), &json!({}))
        .expect("create again");
    let again = pg
        .database()
        .create(pg.ctx("db"), &json!({}))
        .expect("a create over our own unrecorded database takes it back");
    postgres::Client::connect(&output(&again, "url"), postgres::NoTls)
        .expect("with the new password");
    pg.database()
        .delete(pg.ctx("db"), None)
        .expect("delete without a record");
    assert!(!database_exists(&name), "gone again");
}

#[test]
fn a_role_left_unable_to_log_in_by_an_interrupted_create_gets_its_login_and_password() {
    // A first create makes the role (with its marker, without its login), then sets its login
    // and password on a second session while the first makes the database. A crash in between
    // leaves a role of ours that cannot log in.
    let pg = Pg::new();
    let name = pg.names("qa", "db");
    admin()
        .batch_execute(&format!(
            "CREATE ROLE {role} NOLOGIN; COMMENT ON ROLE {role} IS 'slipway:{}:qa/db'",
            pg.id,
            role = quote(&name)
        ))
        .expect("the role an interrupted create left");
    let applied = pg
        .database()
        .create(pg.ctx("db"), &json!({}))
        .expect("a create takes our role back");
    let mut app = postgres::Client::connect(&output(&applied, "url"), postgres::NoTls)
        .expect("the role logs in with the new password");
    let who: String = app
        .query_one("select current_user::text", &[])
        .expect("current_user")
        .get(0);
    assert_eq!(who, name, "connected as the role");
    drop(app);
    assert_scram_verifier_of(&name, &output(&applied, "password"));
    pg.database()
        .delete(pg.ctx("db"), Some(&applied.live))
        .expect("delete");
    assert!(!role_exists(&name), "the role is gone");
}

fn config_error(pg: &Pg, config: Value) -> String {
    match pg.database().create(pg.ctx("db"), &config) {
        Err(ProviderError::Config(message)) => message,
        other => panic!("a configuration error expected, got {other:?}"),
    }
}

#[test]
fn server_choice_errors_say_how_to_fix_them() {
    let none = Pg::with_servers(BTreeMap::new());
    let message = config_error(&none, json!({}));
    assert!(
        message.contains("[postgres.main]") && message.contains("url_env"),
        "with no server, the error says what to add: {message}"
    );
    let one = Pg::new();
    let message = config_error(&one, json!({"server": "analytics"}));
    assert!(
        message.contains("analytics") && message.contains("main"),
        "an unknown server is named with the configured ones: {message}"
    );
    let two = Pg::with_servers(BTreeMap::from([
        ("main".to_owned(), ADMIN.to_owned()),
        ("other".to_owned(), ADMIN.to_owned()),
    ]));
    let message = config_error(&two, json!({}));
    assert!(
        message.contains("main, other") && message.contains("server:"),
        "with several servers, the error lists them: {message}"
    );
    let message = config_error(&one, json!({"strategy": "rsync"}));
    assert!(
        message.contains("strategy") || message.contains("rsync"),
        "{message}"
    );
    two.database()
        .create(two.ctx("db"), &json!({"server": "other"}))
        .and_then(|a| two.database().delete(two.ctx("db"), Some(&a.live)))
        .expect("a named server among several works");
}

/// What the engine does once an apply passed its checks: the provider opens a connection to
/// the server the resource names, which the create then takes (so none stays open after it).
#[test]
fn a_change_expected_opens_a_connection_to_its_server_which_the_create_takes() {
    let (main, other) = (
        TestRole::create("swtest_admin", "LOGIN SUPERUSER"),
        TestRole::create("swtest_admin", "LOGIN SUPERUSER"),
    );
    let pg = Pg::with_servers(BTreeMap::from([
        ("main".to_owned(), main.url()),
        ("other".to_owned(), other.url()),
    ]));
    let config = json!({"server": "other"});
    pg.database()
        .expect_change(pg.ctx("db").into(), Action::Create, &config);
    other.wait_for_sessions(1);
    // A reference names no server yet, and with two configured none is the default.
    pg.database().expect_change(
        pg.ctx("db").into(),
        Action::Create,
        &json!({"server": "${vars.server}"}),
    );
    pg.database()
        .expect_change(pg.ctx("db").into(), Action::Create, &json!({}));
    pg.role().expect_change(
        pg.ctx("app").into(),
        Action::Create,
        &json!({"server": "nowhere"}),
    );
    // A connection wrongly made would have begun by now: give it time to show.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!((main.sessions().len(), other.sessions().len()), (0, 1));

    let applied = pg
        .database()
        .create(pg.ctx("db"), &config)
        .expect("create on the server made ready");
    assert!(database_exists(&pg.names("qa", "db")));
    other.wait_for_sessions(0);
    assert!(main.sessions().is_empty());

    // The same for a role, and for the update of a database.
    pg.role().expect_change(
        pg.ctx("app").into(),
        Action::Create,
        &json!({"server": "main"}),
    );
    main.wait_for_sessions(1);
    let role = pg
        .role()
        .create(pg.ctx("app"), &json!({"server": "main"}))
        .expect("create a role on the server made ready");
    main.wait_for_sessions(0);
    pg.database()
        .expect_change(pg.ctx("db").into(), Action::Update, &config);
    other.wait_for_sessions(1);
    pg.database()
        .update(pg.ctx("db"), &config, &applied.live)
        .expect("update");
    other.wait_for_sessions(0);
    pg.role()
        .delete(pg.ctx("app"), Some(&role.live))
        .expect("delete the role");
    pg.database()
        .delete(pg.ctx("db"), Some(&applied.live))
        .expect("delete the database");
}

#[test]
fn an_unreachable_server_is_retryable_and_never_shows_the_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("postgres://postgres:s3cret-pw@127.0.0.1:{port}/postgres");
    let pg = Pg::with_servers(BTreeMap::from([("main".to_owned(), url)]));
    let err = failure(
        pg.database().create(pg.ctx("db"), &json!({})),
        "creating on a closed port",
    );
    let message = err.to_string();
    assert!(err.retryable(), "unreachable is retryable: {message}");
    assert!(
        message.contains("main"),
        "the error names the server: {message}"
    );
    assert!(
        !message.contains("s3cret-pw"),
        "and hides the password: {message}"
    );
    assert!(message.contains("***"), "showing where it was: {message}");

    let live = json!({"server": "main", "database": "sw_x", "role": "sw_x", "password": "p"});
    match pg.database().observe(pg.ctx("db"), &json!({}), &live) {
        Err(e) => {
            assert!(e.retryable(), "observe fails retryably: {e}");
            assert!(
                !e.to_string().contains("s3cret-pw"),
                "without the password: {e}"
            );
        }
        Ok(seen) => panic!("an unreachable server is not drift: {seen:?}"),
    }
    let err = pg
        .role()
        .delete(
            pg.ctx("db"),
            Some(&json!({"server": "main", "role": "sw_x", "password": "p", "login": true})),
        )
        .expect_err("delete cannot reach it either");
    assert!(err.retryable(), "retryable: {err}");
}

#[test]
fn a_role_resource_has_a_password_login_and_drift() {
    let pg = Pg::new();
    let applied = pg
        .role()
        .create(pg.ctx("reader"), &json!({}))
        .expect("create a role");
    let user = output(&applied, "user");
    let password = output(&applied, "password");
    assert_eq!(user, pg.names("qa", "reader"), "the derived name");
    assert_eq!(
        applied.secret_outputs,
        vec!["password".to_owned()],
        "password is secret"
    );
    assert_eq!(applied.outputs["port"], json!(5432), "port");
    assert_eq!(output(&applied, "host"), "127.0.0.1", "host");
    let url = format!("postgres://{user}:{password}@127.0.0.1:5432/postgres");
    postgres::Client::connect(&url, postgres::NoTls).expect("the role logs in");
    assert_scram_verifier_of(&user, &password);

    let updated = pg
        .role()
        .update(pg.ctx("reader"), &json!({"login": false}), &applied.live)
        .expect("update login");
    assert_eq!(output(&updated, "password"), password, "same password");
    let can_login: bool = admin()
        .query_one(
            "select rolcanlogin from pg_roles where rolname = $1",
            &[&user],
        )
        .expect("role")
        .get(0);
    assert!(!can_login, "login is off");
    assert_eq!(
        pg.role()
            .observe(pg.ctx("reader"), &json!({"login": false}), &updated.live)
            .expect("observe"),
        Observation::InSync,
        "in sync"
    );
    admin()
        .batch_execute(&format!("ALTER ROLE {} LOGIN", quote(&user)))
        .expect("turn login on behind its back");
    assert!(
        matches!(
            pg.role()
                .observe(pg.ctx("reader"), &json!({"login": false}), &updated.live),
            Ok(Observation::Drifted { .. })
        ),
        "a changed login is drift"
    );
    admin()
        .batch_execute(&format!("DROP ROLE {}", quote(&user)))
        .expect("drop it behind its back");
    assert!(
        matches!(
            pg.role()
                .observe(pg.ctx("reader"), &json!({"login": false}), &updated.live),
            Ok(Observation::Missing { .. })
        ),
        "a dropped role is missing"
    );
    pg.role()
        .delete(pg.ctx("reader"), Some(&updated.live))
        .expect("delete what is already gone");
    let again = pg
        .role()
        .create(
            pg.ctx("reader"),
            &json!({"description": "tolerated", "depends_on": ["db"]}),
        )
        .expect("create again, with the common fields");
    pg.role()
        .delete(pg.ctx("reader"), Some(&again.live))
        .expect("delete");
    assert!(!role_exists(&user), "the role is gone");
}
