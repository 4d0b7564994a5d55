//! `slipway state migrate` and `slipway state backup` underneath: a whole SQLite state copied
//! into a real PostgreSQL database (and into SQLite), history and ids included.

use serde_json::json;
use slipway_core::EnvName;
use slipway_core::vocab::{EnvKind, EventKind, ResourceStatus};
use slipway_state::{
    EnvironmentRecord, EventQuery, NewAudit, NewDeployment, ResourceRecord, SessionRecord,
    StateError, Store, hash_token,
};
use slipway_testkit::pg::TestDatabase;

fn env(name: &str) -> EnvName {
    EnvName::parse(name).expect("a valid name")
}

/// A SQLite state with a bit of everything: environments, a sealed resource, ports,
/// deployments, events, a token and an audit entry, a delivery and a lock.
fn populated(home: &std::path::Path) -> Store {
    let store = Store::open(home).expect("open the SQLite state");
    for name in ["prod", "pr-7"] {
        store
            .upsert_environment(&EnvironmentRecord::new(
                env(name),
                EnvKind::Static,
                "shop".into(),
                "file:///srv/shop.git".into(),
                1_000,
            ))
            .expect("record an environment");
    }
    store
        .put_resource(&ResourceRecord {
            environment: env("prod"),
            name: "db".into(),
            type_name: "postgres.database".into(),
            status: ResourceStatus::Ready,
            config: json!({}),
            resolved_hash: Some("h".into()),
            outputs: json!({"password": "hunter2", "port": 5432}),
            secret_outputs: vec!["password".into()],
            live: json!({"server": "main"}),
            depends_on: vec![],
            error: None,
            updated_at: 2_000,
            sensitive: true,
        })
        .expect("record a sealed resource");
    store
        .allocate_ports(
            &env("prod"),
            "web",
            &["http".into()],
            20_000..=20_010,
            &|_| true,
        )
        .expect("allocate a port");
    for at in [10, 20, 30] {
        store
            .begin_deployment(&NewDeployment {
                environment: env("prod"),
                commit: "0123456789abcdef0123456789abcdef01234567".into(),
                hash: "h".into(),
                reference: Some("main".into()),
                plan: json!({"changes": []}),
                rules: Some(json!({"require_pr": true})),
                who: "controller".into(),
                at,
            })
            .expect("record a deployment");
    }
    store
        .record_event(
            Some(&env("prod")),
            EventKind::ChangeHeld,
            "held",
            &json!({}),
            5,
        )
        .expect("record an event");
    store
        .create_token(&hash_token("slw_secret"), "admin", "ops", 1)
        .expect("record a token");
    store
        .record_audit(&NewAudit {
            at: 3,
            who: "ops".into(),
            action: "environment.destroy".into(),
            target: Some("pr-7".into()),
            outcome: "ok".into(),
            detail: "202".into(),
        })
        .expect("record an audit entry");
    store.record_delivery("d-1", 4).expect("record a delivery");
    store
        .lock_environment(&env("prod"), 7, "alice", 5)
        .expect("lock prod");
    store
        .start_session(SESSION, &session(), 100)
        .expect("record a browser session");
    store
}

/// The id of the browser session [`populated`] starts.
const SESSION: &str = "a-browser-session-id";

fn session() -> SessionRecord {
    SessionRecord {
        token_hash: hash_token("slw_secret"),
        csrf: "csrf".into(),
        created_at: 6,
        expires_at: i64::MAX,
    }
}

/// What a person would compare: every list the store answers.
fn everything(store: &Store) -> serde_json::Value {
    json!({
        "environments": store.environments().expect("environments"),
        "resources": store.resources(&env("prod")).expect("resources"),
        "ports": store.environment_ports(&env("prod")).expect("ports"),
        "deployments": store.deployments(&env("prod"), 100).expect("deployments"),
        "events": store.events(&EventQuery { limit: 100, ..EventQuery::default() }).expect("events"),
        "tokens": store.tokens().expect("tokens"),
        "audit": store.audit(100, None).expect("audit"),
        "locks": store.locks().expect("locks"),
    })
}

#[test]
fn a_sqlite_state_moves_into_postgres_whole_and_numbering_continues() {
    let home = tempfile::tempdir().expect("a home");
    let sqlite = populated(home.path());
    let database = TestDatabase::create("slipway_migrate");
    let pg = Store::open_postgres(home.path(), &database.url()).expect("open the PostgreSQL state");
    let copied = sqlite.copy_to(&pg).expect("copy");
    assert!(copied.total() >= 12, "rows copied: {copied:?}");
    assert_eq!(
        everything(&pg),
        everything(&sqlite),
        "every record reads back the same from PostgreSQL"
    );
    assert_eq!(
        pg.session(SESSION, 7).expect("look up the session"),
        None,
        "browser sessions are left behind on purpose: users log in again"
    );
    assert!(
        !pg.record_delivery("d-1", 9).expect("deliveries moved"),
        "a delivery seen before the move is still a redelivery after it"
    );
    let next = pg
        .begin_deployment(&NewDeployment {
            environment: env("prod"),
            commit: "89abcdef0123456789abcdef0123456789abcdef".into(),
            hash: "h2".into(),
            reference: None,
            plan: json!({}),
            rules: None,
            who: "controller".into(),
            at: 40,
        })
        .expect("a deployment after the move");
    let last_copied = sqlite.deployments(&env("prod"), 1).expect("latest")[0].id;
    assert!(
        next > last_copied,
        "ids continue after the copied history ({next} after {last_copied})"
    );
}

/// Retention deleted every event before the move: the ids go on after the last one SQLite
/// gave all the same (a notification cursor holds it), rather than start again at 1.
#[test]
fn numbering_continues_after_ids_retention_deleted() {
    let home = tempfile::tempdir().expect("a home");
    let sqlite = populated(home.path());
    let last = sqlite
        .record_event(
            None,
            slipway_core::vocab::EventKind::WebhookFailed,
            "m",
            &json!({}),
            8,
        )
        .expect("an event");
    let pruned = sqlite
        .prune(&slipway_state::Retention {
            events_before: Some(i64::MAX),
            ..slipway_state::Retention::default()
        })
        .expect("prune");
    assert!(pruned.events > 0, "{pruned:?}");
    let database = TestDatabase::create("slipway_migrate_ids");
    let pg = Store::open_postgres(home.path(), &database.url()).expect("open the PostgreSQL state");
    sqlite.copy_to(&pg).expect("copy");
    let next = pg
        .record_event(
            None,
            slipway_core::vocab::EventKind::WebhookFailed,
            "m",
            &json!({}),
            9,
        )
        .expect("an event after the move");
    assert!(next > last, "{next} after {last}");
}

#[test]
fn a_move_into_a_state_that_has_history_is_refused_and_changes_nothing() {
    let home = tempfile::tempdir().expect("a home");
    let sqlite = populated(home.path());
    let database = TestDatabase::create("slipway_migrate");
    let pg = Store::open_postgres(home.path(), &database.url()).expect("open");
    sqlite.copy_to(&pg).expect("the first copy");
    let before = everything(&pg);
    let error = sqlite
        .copy_to(&pg)
        .expect_err("a second copy would merge two histories");
    assert!(
        matches!(
            &error,
            StateError::InvalidValue {
                field: "migration target",
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(everything(&pg), before, "the refused copy changed nothing");
}

#[test]
fn a_state_sealed_with_another_homes_key_is_not_a_target() {
    let home = tempfile::tempdir().expect("a home");
    let other = tempfile::tempdir().expect("another home");
    let sqlite = populated(home.path());
    let database = TestDatabase::create("slipway_migrate");
    let pg = Store::open_postgres(other.path(), &database.url()).expect("open");
    let error = sqlite
        .copy_to(&pg)
        .expect_err("another key could not open the sealed rows");
    assert!(error.to_string().contains("state key"), "{error}");
}

#[test]
fn a_backup_taken_while_the_state_is_open_is_a_state_that_reads_the_same() {
    let home = tempfile::tempdir().expect("a home");
    let store = populated(home.path());
    let restored = tempfile::tempdir().expect("a home to restore into");
    store
        .backup(&restored.path().join("state.db"))
        .expect("back up the open state");
    std::fs::copy(
        home.path().join("state.key"),
        restored.path().join("state.key"),
    )
    .expect("the key goes with it");
    let copy = Store::open(restored.path()).expect("open the backup");
    assert_eq!(everything(&copy), everything(&store));
    assert_eq!(
        copy.session(SESSION, 7).expect("look up the session"),
        Some(session()),
        "a backup is the whole file, browser sessions included"
    );
    let again = store
        .backup(&restored.path().join("state.db"))
        .expect_err("a backup never overwrites a file");
    assert!(matches!(again, StateError::Database { .. }), "{again:?}");
}

/// `information_schema`'s columns are a domain, for which the system has no `=`: an `=`
/// someone made in `public` of the state database (any role may, on PostgreSQL 14 and older)
/// would be the exact match for comparing them. Opening a PostgreSQL state and moving it
/// in and out read the system's catalogs instead: the planted operators are never called.
#[test]
fn opening_and_moving_a_postgres_state_call_nothing_planted_in_public() {
    let database = TestDatabase::create("slipway_planted");
    let mut planter = database.connect();
    planter
        .batch_execute(
            "CREATE SEQUENCE public.calls; \
             CREATE FUNCTION public.spy(information_schema.sql_identifier, name) \
               RETURNS boolean LANGUAGE sql \
               AS 'SELECT nextval(''public.calls'') IS NULL OR $1::name = $2'; \
             CREATE OPERATOR public.= (LEFTARG = information_schema.sql_identifier, \
               RIGHTARG = name, FUNCTION = public.spy); \
             CREATE FUNCTION public.spy2(information_schema.sql_identifier, \
               information_schema.sql_identifier) RETURNS boolean LANGUAGE sql \
               AS 'SELECT nextval(''public.calls'') IS NULL OR $1::name = $2::name'; \
             CREATE OPERATOR public.= (LEFTARG = information_schema.sql_identifier, \
               RIGHTARG = information_schema.sql_identifier, FUNCTION = public.spy2)",
        )
        .expect("plant the operators");
    let home = tempfile::tempdir().expect("a home");
    let sqlite = populated(home.path());
    let pg = Store::open_postgres(home.path(), &database.url()).expect("open the PostgreSQL state");
    sqlite.copy_to(&pg).expect("into PostgreSQL");
    let back_home = tempfile::tempdir().expect("another home");
    std::fs::copy(
        home.path().join("state.key"),
        back_home.path().join("state.key"),
    )
    .expect("the same key");
    let back = Store::open(back_home.path()).expect("an empty SQLite state");
    pg.copy_to(&back).expect("out of PostgreSQL");
    assert_eq!(everything(&back), everything(&sqlite), "the same records");
    let calls: i64 = planter
        .query_one(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.calls",
            &[],
        )
        .expect("read the counter")
        .get(0);
    assert_eq!(calls, 0, "a planted operator was called");
}
