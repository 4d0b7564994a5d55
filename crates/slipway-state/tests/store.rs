//! The state store against real SQLite files in temporary directories and real PostgreSQL
//! databases: the tests listed in `matrix!` run on both.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::ops::RangeInclusive;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::json;
use slipway_core::EnvName;
use slipway_core::vocab::{
    Activity, DeploymentStatus, EnvKind, EventKind, Health, ResourceStatus, SyncState,
};
use slipway_state::{
    EnvironmentRecord, EventQuery, NewDeployment, ResourceRecord, SCHEMA_VERSION, StateError, Store,
};
use tempfile::TempDir;

mod common;
use common::TestState;

/// A name the test knows to be valid.
fn env(name: &str) -> EnvName {
    EnvName::parse(name).expect("the test's environment names are DNS labels")
}

matrix!(
    a_fresh_state_opened_from_many_threads_at_once_opens_everywhere,
    a_made_state_opens_while_another_session_holds_the_lock_that_makes_it,
    reopening_keeps_data_and_applies_no_migration_twice,
    a_database_from_a_newer_slipway_is_refused,
    a_store_open_when_a_newer_slipway_migrates_writes_nothing_more_and_still_reads,
    environments_are_listed_by_name_and_updates_keep_created_at,
    activity_round_trips_and_requests_seen_survive_whole_record_writes,
    environment_status_is_recorded_and_checked,
    a_word_outside_its_vocabulary_in_the_store_is_an_error_not_a_default,
    an_environment_name_that_is_not_one_in_the_store_is_an_error_not_a_panic,
    a_destroy_recorded_under_its_old_name_reads_as_the_one_destroy_kind,
    updating_an_environment_keeps_its_resources_and_ports,
    deleting_an_environment_removes_resources_and_ports_but_keeps_history,
    a_finished_destroy_is_recorded_whole_or_not_at_all,
    a_finished_apply_is_recorded_whole_or_not_at_all,
    a_resource_needs_its_environment,
    resources_round_trip_and_are_listed_by_name,
    secret_outputs_are_sealed_as_v2_on_sqlite_and_as_v1_on_postgresql,
    a_damaged_json_column_is_reported_with_its_record,
    deployments_are_listed_newest_first_and_finish_once,
    a_deployed_commit_is_one_that_succeeded_in_that_environment_since_it_was_made,
    mark_interrupted_closes_only_running_deployments_of_that_environment,
    ports_are_stable_across_allocations,
    ports_skip_those_taken_in_the_store_or_busy_on_the_machine,
    a_port_is_never_allocated_twice,
    an_exhausted_range_is_reported_and_allocates_nothing,
    retain_and_release_free_ports_for_reuse,
    forgetting_a_resource_releases_its_ports_and_keeps_the_others,
    events_are_read_in_order_by_environment_and_cursor,
    hostile_strings_round_trip,
    resource_types_are_read_without_the_records,
    a_listing_reads_every_environment_at_once_as_each_alone,
    a_new_environment_is_recorded_once_whoever_else_tries,
    an_update_reads_and_writes_at_once_and_a_refused_one_writes_nothing,
    names_expiries_and_counts_by_state_are_read_without_the_records,
    a_range_of_environments_and_the_queued_ones_are_read_alone,
    the_environments_that_may_idle_are_those_near_their_time_and_no_other,
    an_idle_limit_of_centuries_breaks_no_listing,
);

/// A fresh SQLite store, for what only SQLite has (its file, WAL, other processes).
fn open_store() -> (TempDir, Store) {
    let home = tempfile::tempdir().expect("create a temporary home");
    let store = Store::open(home.path()).expect("open a fresh store");
    (home, store)
}

fn environment(name: &str) -> EnvironmentRecord {
    EnvironmentRecord {
        tracked_ref: Some("main".to_owned()),
        definition: Some("prod".to_owned()),
        ..EnvironmentRecord::new(
            env(name),
            EnvKind::Static,
            "shop".to_owned(),
            "file:///srv/git/shop.git".to_owned(),
            1_000,
        )
    }
}

fn resource(environment: &str, name: &str) -> ResourceRecord {
    ResourceRecord {
        environment: env(environment),
        name: name.to_owned(),
        type_name: "process".to_owned(),
        status: ResourceStatus::Ready,
        config: json!({"command": ["python3", "-m", "app"]}),
        resolved_hash: Some("abc".to_owned()),
        outputs: json!({"url": "http://127.0.0.1:20000"}),
        secret_outputs: vec![],
        live: json!({"pid": 42}),
        depends_on: vec!["db".to_owned()],
        error: None,
        updated_at: 2_000,
        sensitive: false,
    }
}

/// A fresh store with these environments recorded (from [`environment`]).
fn store_with(state: &TestState, environments: &[&str]) -> Store {
    let store = state.open();
    for name in environments {
        store
            .upsert_environment(&environment(name))
            .expect("record an environment");
    }
    store
}

/// Allocates the named ports of `environment`/`resource` from `range`, every port free on
/// the machine.
fn allocate(
    store: &Store,
    environment: &str,
    resource: &str,
    ports: &[&str],
    range: RangeInclusive<u16>,
) -> Result<BTreeMap<String, u16>, StateError> {
    store.allocate_ports(
        &env(environment),
        resource,
        &names(ports),
        range,
        &always_free,
    )
}

/// The store's database opened directly, for what its API refuses to do.
fn raw(home: &TempDir) -> rusqlite::Connection {
    rusqlite::Connection::open(home.path().join("state.db")).expect("open the database raw")
}

fn deployment(environment: &str, at: i64) -> NewDeployment {
    NewDeployment {
        environment: env(environment),
        commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
        hash: "h1".to_owned(),
        reference: Some("main".to_owned()),
        plan: json!({"changes": []}),
        rules: None,
        who: "controller".to_owned(),
        at,
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| (*name).to_owned()).collect()
}

fn always_free(_: u16) -> bool {
    true
}

#[test]
fn the_store_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
}

#[test]
fn open_creates_missing_home_directories() {
    let root = tempfile::tempdir().expect("create a temporary directory");
    let home = root.path().join("a").join("b");
    let store = Store::open(&home).expect("open a store under missing directories");
    assert_eq!(
        store.path(),
        home.join("state.db"),
        "the database lives at <home>/state.db"
    );
    assert!(home.join("state.db").is_file(), "opening creates the file");
}

/// Any role that can connect may take an advisory lock, the one that makes a new state's
/// schema table included (an environment's role, on a shared server): a state already made
/// must open all the same. (SQLite takes no such lock.)
fn a_made_state_opens_while_another_session_holds_the_lock_that_makes_it(state: &TestState) {
    drop(state.open());
    let Some(url) = state.postgres_url() else {
        return;
    };
    let mut holder = ::postgres::Client::connect(&url, ::postgres::NoTls).expect("connect");
    holder
        .execute("SELECT pg_advisory_lock(7236832237734584697)", &[])
        .expect("take the lock");
    let store = state
        .try_open()
        .expect("a made state opens without the lock");
    assert_eq!(
        store.schema_version().expect("read the schema version"),
        SCHEMA_VERSION
    );
}

/// Replicas (and the threads of one process) starting on a new state at once: each opens
/// it, the schema is made once, and all share one key.
fn a_fresh_state_opened_from_many_threads_at_once_opens_everywhere(state: &TestState) {
    let barrier = std::sync::Barrier::new(6);
    let opened: Vec<Result<Store, StateError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    state.try_open()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an opening thread"))
            .collect()
    });
    let stores: Vec<Store> = opened
        .into_iter()
        .map(|o| o.expect("every concurrent open succeeds"))
        .collect();
    for store in &stores {
        assert_eq!(
            store.schema_version().expect("read the schema version"),
            SCHEMA_VERSION
        );
    }
    let sealed = stores[0].sealer().seal(b"one key");
    for store in &stores {
        assert_eq!(
            store.sealer().open(&sealed).expect("every store opens it"),
            b"one key",
            "every open read the same key"
        );
    }
}

fn reopening_keeps_data_and_applies_no_migration_twice(state: &TestState) {
    let store = store_with(state, &["prod"]);
    drop(store);
    for _ in 0..3 {
        let store = state.open();
        assert_eq!(
            store.schema_version().expect("read the schema version"),
            SCHEMA_VERSION,
            "a reopened store is at the binary's schema version"
        );
        assert_eq!(
            store.environment(&env("prod")).expect("read prod"),
            Some(environment("prod")),
            "data survives reopening"
        );
    }
}

/// Every command opens the state: one whose schema is current must not wait for another
/// process's write (a long apply, a controller's reconcile) just to open it.
#[test]
fn an_up_to_date_state_opens_and_reads_while_another_process_writes() {
    let (home, store) = open_store();
    drop(store);
    let mut writer = raw(&home);
    let held = writer
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .expect("take the write lock");
    // Before, each of the schema's migrations took the write lock to check its version: the
    // open waited for this one for the busy timeout, then failed.
    let store = Store::open(home.path()).expect("open while another connection writes");
    assert_eq!(
        store.environment(&env("prod")).expect("read"),
        None,
        "the store reads"
    );
    held.rollback().expect("release the lock");
}

#[test]
fn the_database_is_in_wal_mode() {
    let (home, store) = open_store();
    drop(store);
    let conn = raw(&home);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .expect("read journal mode");
    assert_eq!(mode, "wal", "WAL mode persists in the database file");
}

fn a_database_from_a_newer_slipway_is_refused(state: &TestState) {
    let store = state.open();
    drop(store);
    // Pretend a newer slipway wrote the database.
    state.set_schema_version(SCHEMA_VERSION + 1);
    let error = state
        .try_open()
        .expect_err("a newer schema must be refused");
    assert!(
        matches!(error, StateError::NewerSchema { found, supported, .. }
            if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "the error names both versions, got {error:?}"
    );
    assert!(
        error.to_string().contains("upgrade slipway"),
        "the message says how to fix it: {error}"
    );
}

fn a_store_open_when_a_newer_slipway_migrates_writes_nothing_more_and_still_reads(
    state: &TestState,
) {
    let store = store_with(state, &["prod"]);
    record_apply_started(&store, "prod", "before the upgrade");
    let other = state.open();
    assert_eq!(store.check_schema().expect("read the schema"), None);

    // A newer slipway migrates the database under the open store: additively, as every
    // migration must (a table, and a column with no default on a table the store reads).
    state
        .raw(
            "CREATE TABLE later_things (id INTEGER PRIMARY KEY);\
             ALTER TABLE environments ADD COLUMN later TEXT;",
            false,
        )
        .expect("migrate");
    state.set_schema_version(SCHEMA_VERSION + 1);

    let refused = store
        .upsert_environment(&environment("staging"))
        .expect_err("a write after the migration is refused");
    assert!(
        matches!(refused, StateError::SchemaMoved { found, understood }
            if found == SCHEMA_VERSION + 1 && understood == SCHEMA_VERSION),
        "the refusal names both versions: {refused:?}"
    );
    assert!(
        refused
            .to_string()
            .contains("replace it with the newer version"),
        "and says what to do: {refused}"
    );
    // Every kind of write, not only an environment's: events, leases, heartbeats, tokens.
    assert!(
        store
            .record_event(None, EventKind::ForgeFailed, "x", &json!({}), 2)
            .is_err_and(|e| e.is_schema_moved()),
        "an event is not written"
    );
    assert!(
        store
            .acquire_lease(&env("prod"), "r1", std::time::Duration::from_secs(5))
            .is_err_and(|e| e.is_schema_moved()),
        "no lease is taken"
    );
    assert!(
        store
            .heartbeat("r1", None)
            .is_err_and(|e| e.is_schema_moved()),
        "no heartbeat is written"
    );
    assert_eq!(store.schema_moved(), Some(SCHEMA_VERSION + 1));
    // Another store of this binary, which has written nothing since, notices by reading.
    assert_eq!(other.schema_moved(), None, "not before it looks");
    assert_eq!(
        other.check_schema().expect("read the schema"),
        Some(SCHEMA_VERSION + 1)
    );
    assert!(
        other
            .delete_environment(&env("prod"))
            .is_err_and(|e| e.is_schema_moved()),
        "and writes nothing either"
    );

    // It still reads, the column it does not know notwithstanding.
    let names: Vec<String> = store
        .environments()
        .expect("read environments")
        .into_iter()
        .map(|e| e.name.to_string())
        .collect();
    assert_eq!(names, ["prod"], "nothing was written, and it reads");
    let events = store
        .events(&EventQuery {
            limit: 100,
            ..EventQuery::default()
        })
        .expect("read events");
    assert_eq!(
        events
            .iter()
            .map(|e| e.message.as_str())
            .collect::<Vec<_>>(),
        ["before the upgrade"],
        "no event was written after the migration"
    );

    // A store opened now understands no more, and refuses to open at all.
    assert!(
        matches!(state.try_open(), Err(StateError::NewerSchema { .. })),
        "an older binary does not start on a newer schema"
    );
}

fn activity_round_trips_and_requests_seen_survive_whole_record_writes(state: &TestState) {
    let store = state.open();
    let mut queued = environment("pr-7");
    queued.activity = Activity::Queued;
    queued.activity_since = Some(2_000);
    queued.queued_at = Some(2_000);
    store.upsert_environment(&queued).expect("record pr-7");
    let read = |name: &str| {
        store
            .environment(&env(name))
            .expect("read")
            .expect("exists")
    };
    let stored = read("pr-7");
    assert_eq!(
        (stored.activity, stored.activity_since, stored.queued_at),
        (Activity::Queued, Some(2_000), Some(2_000))
    );
    assert_eq!(stored.last_request_at, None, "no request yet");

    // The routers record requests; a later, then an earlier, time: the later one stays.
    store
        .record_requests(&[(env("pr-7"), 5_000), (env("gone"), 6_000)])
        .expect("record requests, one of an environment not recorded");
    store
        .record_requests(&[(env("pr-7"), 4_000)])
        .expect("record an older request");
    assert_eq!(read("pr-7").last_request_at, Some(5_000));

    // A whole-record write made from a copy read before the request leaves it alone.
    let mut awake = stored.clone();
    awake.activity = Activity::Awake;
    awake.queued_at = None;
    store.upsert_environment(&awake).expect("wake pr-7");
    let stored = read("pr-7");
    assert_eq!(stored.activity, Activity::Awake);
    assert_eq!(stored.queued_at, None);
    assert_eq!(
        stored.last_request_at,
        Some(5_000),
        "a record written from an older read keeps the last request"
    );
}

fn environments_are_listed_by_name_and_updates_keep_created_at(state: &TestState) {
    let store = state.open();
    for name in ["qa", "prod", "main"] {
        store
            .upsert_environment(&environment(name))
            .expect("record an environment");
    }
    let listed: Vec<String> = store
        .environments()
        .expect("list environments")
        .into_iter()
        .map(|env| env.name.into_string())
        .collect();
    assert_eq!(listed, names(&["main", "prod", "qa"]), "listed by name");

    let mut update = environment("prod");
    update.commit = Some("c2".to_owned());
    update.pinned = true;
    update.created_at = 9_999;
    update.updated_at = 5_000;
    store.upsert_environment(&update).expect("update prod");
    let stored = store
        .environment(&env("prod"))
        .expect("read prod")
        .expect("prod exists");
    assert_eq!(stored.commit.as_deref(), Some("c2"), "fields are updated");
    assert!(stored.pinned, "booleans round-trip");
    assert_eq!(
        stored.created_at, 1_000,
        "created_at keeps the first record's time"
    );
    assert_eq!(stored.updated_at, 5_000, "updated_at is the caller's");
    assert_eq!(
        store
            .environment(&env("nope"))
            .expect("read a missing environment"),
        None,
        "a missing environment is None"
    );
}

fn names_expiries_and_counts_by_state_are_read_without_the_records(state: &TestState) {
    let store = store_with(state, &["qa", "prod", "main", "demo"]);
    for (name, expires_at) in [("qa", Some(5_000)), ("demo", Some(9_000)), ("main", None)] {
        store
            .modify_environment(&env(name), |r| r.expires_at = expires_at)
            .expect("set an expiry");
    }
    store
        .set_environment_status(&env("prod"), SyncState::Synced, Health::Healthy, None, 1)
        .expect("set a status");
    store
        .set_environment_status(&env("qa"), SyncState::Synced, Health::Healthy, None, 1)
        .expect("set a status");
    let listed = |list: Vec<EnvName>| -> Vec<String> {
        list.into_iter().map(EnvName::into_string).collect()
    };
    assert_eq!(
        listed(store.environment_names().expect("list the names")),
        names(&["demo", "main", "prod", "qa"]),
        "every name, by name"
    );
    assert_eq!(
        listed(store.expired_environments(5_000).expect("list the expired")),
        names(&["qa"]),
        "expired at or before the time given, and only those with an expiry"
    );
    assert_eq!(
        listed(store.expired_environments(4_999).expect("list the expired")),
        Vec::<String>::new(),
        "nothing expired before the first expiry"
    );
    assert_eq!(
        store.environment_counts().expect("count by state"),
        vec![
            (SyncState::OutOfSync, Health::Missing, 2),
            (SyncState::Synced, Health::Healthy, 2),
        ],
        "counted by sync state and health, only the pairs that have any"
    );
}

/// A listing reads the environments a range at a time, and the queue's members alone: each
/// range holds exactly the names between its ends (both included, in the order of
/// `environment_names`), so consecutive ranges of that order cover every environment once.
fn a_range_of_environments_and_the_queued_ones_are_read_alone(state: &TestState) {
    let all = ["a", "b-1", "b-10", "b-2", "main", "pr-7", "pr-70", "zz"];
    let store = store_with(state, &all);
    for name in ["pr-70", "b-1"] {
        store
            .modify_environment(&env(name), |r| {
                r.activity = Activity::Queued;
                r.queued_at = Some(7);
            })
            .expect("queue an environment");
    }
    let names = |list: Vec<EnvironmentRecord>| -> Vec<String> {
        list.into_iter().map(|r| r.name.into_string()).collect()
    };
    let order: Vec<EnvName> = store.environment_names().expect("list the names");
    let mut covered = Vec::new();
    for range in order.chunks(3) {
        let (first, last) = (&range[0], &range[range.len() - 1]);
        let got = names(
            store
                .environments_between(first, last)
                .expect("read a range"),
        );
        let want: Vec<String> = range.iter().map(|n| n.to_string()).collect();
        assert_eq!(got, want, "the range {first} to {last}");
        covered.extend(got);
    }
    assert_eq!(
        covered,
        names(store.environments().expect("list")),
        "every one, once"
    );
    assert_eq!(
        names(
            store
                .environments_between(&env("b-1"), &env("b-1"))
                .expect("one")
        ),
        vec!["b-1".to_string()],
        "a range of one"
    );
    assert_eq!(
        names(
            store
                .environments_between(&env("n"), &env("p"))
                .expect("none")
        ),
        Vec::<String>::new(),
        "a range with no environment in it"
    );
    let queued = store.queued_environments().expect("read the queued");
    assert_eq!(
        names(queued.clone()),
        vec!["b-1", "pr-70"],
        "the queued ones only"
    );
    assert!(
        queued
            .iter()
            .all(|r| r.activity == Activity::Queued && r.queued_at == Some(7)),
        "whole records, as the queue positions need them"
    );
}

fn environment_status_is_recorded_and_checked(state: &TestState) {
    let store = store_with(state, &["prod"]);
    store
        .set_environment_status(
            &env("prod"),
            SyncState::Synced,
            Health::Healthy,
            Some("all good"),
            7_000,
        )
        .expect("set status");
    let stored = store
        .environment(&env("prod"))
        .expect("read prod")
        .expect("prod exists");
    assert_eq!(
        (stored.sync.as_str(), stored.health.as_str()),
        ("synced", "healthy"),
        "status is recorded"
    );
    assert_eq!(
        stored.message.as_deref(),
        Some("all good"),
        "message is recorded"
    );
    assert_eq!(stored.updated_at, 7_000, "the injected time is recorded");

    let error = store
        .set_environment_status(
            &env("ghost"),
            SyncState::Synced,
            Health::Healthy,
            None,
            8_000,
        )
        .expect_err("an unknown environment is reported");
    assert!(
        matches!(
            error,
            StateError::NotFound {
                what: "environment",
                ..
            }
        ),
        "not found names the record kind, got {error:?}"
    );
}

/// Records that an apply started in `environment`, at time 1, with `message`.
fn record_apply_started(store: &Store, environment: &str, message: &str) {
    store
        .record_event(
            Some(&env(environment)),
            EventKind::ApplyStarted,
            message,
            &json!({}),
            1,
        )
        .expect("record an event");
}

/// A store holding `prod` with a resource `api`, one deployment (whose id it returns) and one
/// event: a row in each table that reads environments back.
fn store_with_history(state: &TestState) -> (Store, i64) {
    let store = store_with(state, &["prod"]);
    store
        .put_resource(&resource("prod", "api"))
        .expect("record api");
    let id = store
        .begin_deployment(&deployment("prod", 1))
        .expect("begin");
    record_apply_started(&store, "prod", "m");
    (store, id)
}

fn a_word_outside_its_vocabulary_in_the_store_is_an_error_not_a_default(state: &TestState) {
    let (store, id) = store_with_history(state);
    for (table, column) in [
        ("environments", "sync"),
        ("resources", "status"),
        ("deployments", "status"),
        ("events", "kind"),
    ] {
        state
            .raw(&format!("UPDATE {table} SET {column} = 'in_sync'"), false)
            .expect("damage the row");
    }
    let unknown = |result: Result<(), StateError>, what: &str| match result {
        Err(StateError::UnknownWord { word, .. }) => {
            assert_eq!((word.what, word.found.as_str()), (what, "in_sync"));
        }
        other => panic!("a stored `in_sync` {what} is refused when read, got {other:?}"),
    };
    unknown(store.environment(&env("prod")).map(drop), "sync state");
    unknown(store.environments().map(drop), "sync state");
    unknown(store.resources(&env("prod")).map(drop), "resource status");
    unknown(store.deployment(id).map(drop), "deployment status");
    let query = EventQuery {
        limit: 10,
        ..EventQuery::default()
    };
    unknown(store.events(&query).map(drop), "event kind");
}

fn an_environment_name_that_is_not_one_in_the_store_is_an_error_not_a_panic(state: &TestState) {
    let (store, id) = store_with_history(state);
    // The foreign keys would cascade a rename of the environment; damage each table alone.
    for (table, column) in [
        ("environments", "name"),
        ("deployments", "environment"),
        ("events", "environment"),
    ] {
        state
            .raw(&format!("UPDATE {table} SET {column} = '../Etc'"), true)
            .expect("damage the row");
    }
    let invalid = |result: Result<(), StateError>, what: &str| match result {
        Err(StateError::InvalidName { name, .. }) => {
            assert_eq!(
                name.found, "../Etc",
                "{what}: the refusal names the stored text"
            );
        }
        other => panic!("a stored `../Etc` in {what} is refused when read, got {other:?}"),
    };
    invalid(store.environments().map(drop), "environments");
    invalid(store.deployment(id).map(drop), "deployments");
    let query = EventQuery {
        limit: 10,
        ..EventQuery::default()
    };
    invalid(store.events(&query).map(drop), "events");
}

fn a_destroy_recorded_under_its_old_name_reads_as_the_one_destroy_kind(state: &TestState) {
    let store = store_with(state, &["prod"]);
    record_apply_started(&store, "prod", "m");
    drop(store);
    // Pretend a slipway from before the rename (schema version 9) wrote the database: its
    // destroy event, and none of the tables later versions added.
    state
        .raw(
            "UPDATE events SET kind = 'destroyed'; DROP TABLE replicas; DROP TABLE leases; \
             DROP TABLE browser_sessions; DROP TABLE handoffs; DROP TABLE state_key; \
             ALTER TABLE environments DROP COLUMN activity; \
             ALTER TABLE environments DROP COLUMN activity_since; \
             ALTER TABLE environments DROP COLUMN queued_at; \
             ALTER TABLE environments DROP COLUMN last_request_at; \
             ALTER TABLE environments DROP COLUMN access; \
             ALTER TABLE environments DROP COLUMN sleep_after_ms; \
             ALTER TABLE environments DROP COLUMN idle_ttl_ms; \
             ALTER TABLE environments DROP COLUMN touched_at; \
             ALTER TABLE environments DROP COLUMN idle_warned_at; \
             DROP TABLE notify_cursor; DROP TABLE notify_last; DROP TABLE notify_outbox; \
             DROP TABLE policy_approvals; ALTER TABLE pull_requests DROP COLUMN labels; \
             DROP TABLE sealed_formats; DROP TABLE head_pushes; \
             ALTER TABLE pull_requests DROP COLUMN head_seen_at; \
             ALTER TABLE deployments DROP COLUMN rules;",
            false,
        )
        .expect("write the engine's old destroy event");
    state.set_schema_version(9);
    let store = state.open();
    let kinds: Vec<EventKind> = store
        .events(&EventQuery {
            limit: 10,
            ..EventQuery::default()
        })
        .expect("read events")
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, [EventKind::EnvironmentDestroyed]);
}

fn updating_an_environment_keeps_its_resources_and_ports(state: &TestState) {
    // Regression guard: an INSERT OR REPLACE upsert deletes the row first, and the delete
    // cascades to resources and ports.
    let store = store_with(state, &["prod"]);
    store
        .put_resource(&resource("prod", "api"))
        .expect("record api");
    allocate(&store, "prod", "api", &["http"], 20_000..=20_010).expect("allocate");
    let mut update = environment("prod");
    update.sync = SyncState::Synced;
    store.upsert_environment(&update).expect("update prod");
    assert_eq!(
        store.resources(&env("prod")).expect("list").len(),
        1,
        "resources survive an update"
    );
    assert_eq!(
        store.ports(&env("prod"), "api").expect("ports").len(),
        1,
        "ports survive an update"
    );
}

fn a_finished_apply_is_recorded_whole_or_not_at_all(state: &TestState) {
    let store = store_with(state, &["prod", "qa"]);
    let summary = json!({"created": 1});
    let data = json!({});
    let event = (EventKind::ApplySucceeded, "prod is at abc1234", &data);
    let at_commit = |sha: &'static str| {
        move |record: &mut EnvironmentRecord| {
            record.commit = Some(sha.to_owned());
            record.sync = SyncState::Synced;
        }
    };
    let id = store
        .begin_deployment(&deployment("prod", 1))
        .expect("begin the apply's deployment");
    let event_id = store
        .finish_apply(
            &env("prod"),
            id,
            &summary,
            1_000,
            at_commit("abc1234"),
            event,
        )
        .expect("finish the apply");
    let record = store
        .environment(&env("prod"))
        .expect("read")
        .expect("prod");
    assert_eq!(
        (record.commit.as_deref(), record.sync),
        (Some("abc1234"), SyncState::Synced)
    );
    let finished = store.deployment(id).expect("read").expect("recorded");
    assert_eq!(finished.status, DeploymentStatus::Succeeded);
    assert_eq!(
        events_of(&store, "prod").last().map(|e| (e.id, e.kind)),
        Some((event_id, EventKind::ApplySucceeded))
    );

    // An apply whose deployment is no longer running (marked interrupted by a later one)
    // changes nothing: the record keeps its commit, and no event is added.
    let id = store
        .begin_deployment(&deployment("prod", 2))
        .expect("begin");
    store
        .mark_interrupted(&env("prod"), 1_500)
        .expect("interrupted by the next apply");
    let before = events_of(&store, "prod").len();
    let refused = store.finish_apply(
        &env("prod"),
        id,
        &summary,
        2_000,
        at_commit("def5678"),
        event,
    );
    assert!(
        matches!(refused, Err(StateError::DeploymentNotRunning { .. })),
        "{refused:?}"
    );
    let record = store
        .environment(&env("prod"))
        .expect("read")
        .expect("prod");
    assert_eq!(
        record.commit.as_deref(),
        Some("abc1234"),
        "the commit is kept"
    );
    assert_eq!(events_of(&store, "prod").len(), before, "no event");

    // Another environment's deployment is not this one's to finish.
    let theirs = store
        .begin_deployment(&deployment("qa", 3))
        .expect("begin qa's");
    let refused = store.finish_apply(
        &env("prod"),
        theirs,
        &summary,
        3_000,
        at_commit("0000000"),
        event,
    );
    assert!(
        matches!(refused, Err(StateError::NotFound { .. })),
        "{refused:?}"
    );
    let qa = store.deployment(theirs).expect("read").expect("qa's");
    assert_eq!(
        qa.status,
        DeploymentStatus::Running,
        "qa's deployment is untouched"
    );
}

fn a_finished_destroy_is_recorded_whole_or_not_at_all(state: &TestState) {
    let store = store_with(state, &["prod", "qa"]);
    store
        .put_resource(&resource("prod", "api"))
        .expect("record api");
    let any = |_: u32| true;
    let uid = store
        .allocate_uid(&env("prod"), 300_000..=300_009, any)
        .expect("a uid for prod");
    let id = store
        .begin_deployment(&deployment("prod", 1))
        .expect("begin the destroy's deployment");
    let summary = json!({"deleted": 1});
    let data = json!({"deployment": id});
    let event = (EventKind::EnvironmentDestroyed, "prod was destroyed", &data);
    let event_id = store
        .finish_destroy(&env("prod"), id, &summary, 1_000, event)
        .expect("finish the destroy");

    assert_eq!(store.environment(&env("prod")).expect("read"), None);
    assert!(store.resources(&env("prod")).expect("list").is_empty());
    assert_eq!(
        store.environment_uid(&env("prod")).expect("read the uid"),
        None,
        "its uid is released"
    );
    let finished = store
        .deployment(id)
        .expect("read")
        .expect("kept as history");
    assert_eq!(finished.status, DeploymentStatus::Succeeded);
    assert_eq!(finished.finished_at, Some(1_000));
    let events = events_of(&store, "prod");
    let last = events.last().expect("the destroy's event");
    assert_eq!(
        (last.id, last.kind),
        (event_id, EventKind::EnvironmentDestroyed)
    );
    // The released uid serves the next environment.
    assert_eq!(
        store
            .allocate_uid(&env("qa"), uid..=uid, any)
            .expect("the same uid for qa"),
        uid
    );

    // A destroy whose deployment is no longer running (finished by someone else) changes
    // nothing: the environment, its uid and its events stay as they were.
    let uid = store
        .allocate_uid(&env("prod2"), 300_000..=300_009, any)
        .expect("a uid");
    store
        .insert_environment(&environment("prod2"))
        .expect("record prod2");
    let id = store
        .begin_deployment(&deployment("prod2", 2))
        .expect("begin");
    store
        .finish_deployment(id, DeploymentStatus::Failed, Some("stopped"), &summary, 900)
        .expect("finished elsewhere");
    let before = events_of(&store, "prod2").len();
    let refused = store.finish_destroy(&env("prod2"), id, &summary, 1_000, event);
    assert!(
        matches!(refused, Err(StateError::DeploymentNotRunning { .. })),
        "{refused:?}"
    );
    assert!(
        store.environment(&env("prod2")).expect("read").is_some(),
        "kept"
    );
    assert_eq!(
        store.environment_uid(&env("prod2")).expect("read"),
        Some(uid),
        "its uid is kept"
    );
    let after = events_of(&store, "prod2").len();
    assert_eq!(before, after, "no event");
}

/// The first events of `environment`, oldest first.
fn events_of(store: &Store, environment: &str) -> Vec<slipway_state::EventRecord> {
    store
        .events(&EventQuery {
            environment: Some(env(environment)),
            after_id: None,
            limit: 10,
        })
        .expect("read events")
}

fn deleting_an_environment_removes_resources_and_ports_but_keeps_history(state: &TestState) {
    let store = store_with(state, &["prod", "qa"]);
    store
        .put_resource(&resource("prod", "api"))
        .expect("record api");
    store
        .put_resource(&resource("qa", "api"))
        .expect("record qa api");
    allocate(&store, "prod", "api", &["http"], 20_000..=20_010).expect("allocate");
    let id = store
        .begin_deployment(&deployment("prod", 1))
        .expect("begin a deployment");
    record_apply_started(&store, "prod", "started");

    assert!(
        store.delete_environment(&env("prod")).expect("delete prod"),
        "prod existed"
    );
    assert!(
        !store
            .delete_environment(&env("prod"))
            .expect("delete again"),
        "already gone"
    );
    assert_eq!(
        store.environment(&env("prod")).expect("read"),
        None,
        "prod is gone"
    );
    assert!(
        store.resources(&env("prod")).expect("list").is_empty(),
        "its resources are gone"
    );
    assert!(
        store.ports(&env("prod"), "api").expect("ports").is_empty(),
        "its ports are released"
    );
    assert_eq!(
        store.resources(&env("qa")).expect("list qa").len(),
        1,
        "other environments stay"
    );
    assert!(
        store.deployment(id).expect("read").is_some(),
        "its deployments stay as history"
    );
    let events = store
        .events(&EventQuery {
            environment: Some(env("prod")),
            after_id: None,
            limit: 10,
        })
        .expect("read events");
    assert_eq!(events.len(), 1, "its events stay as history");
    // The released port is free for the next environment.
    let ports = allocate(&store, "qa", "api", &["http"], 20_000..=20_010).expect("allocate for qa");
    assert_eq!(
        ports["http"], 20_000,
        "a port released by deletion is reused"
    );
}

fn a_resource_needs_its_environment(state: &TestState) {
    let store = state.open();
    let error = store
        .put_resource(&resource("ghost", "api"))
        .expect_err("a resource of an unknown environment is refused");
    assert!(
        matches!(error, StateError::Database { .. }),
        "the foreign key refuses it, got {error:?}"
    );
}

/// A SQLite state is sealed in the fast format; a PostgreSQL one, which replicas of the
/// previous release may read during an upgrade, with age (`seal`'s docs).
fn secret_outputs_are_sealed_as_v2_on_sqlite_and_as_v1_on_postgresql(state: &TestState) {
    let store = store_with(state, &["prod"]);
    let mut db = resource("prod", "db");
    db.secret_outputs = vec!["password".to_owned()];
    db.outputs = json!({"password": "hunter2"});
    db.sensitive = true;
    store.put_resource(&db).expect("record db");
    assert_eq!(store.resource(&env("prod"), "db").expect("read"), Some(db));
    let on_disk = state.stored_bytes();
    let has = |text: &[u8]| on_disk.windows(text.len()).any(|w| w == text);
    let (written, not) = match state.postgres_url() {
        None => (b"sealed:v2:", b"sealed:v1:"),
        Some(_) => (b"sealed:v1:", b"sealed:v2:"),
    };
    assert!(
        has(written) && !has(not),
        "sealed as {}",
        String::from_utf8_lossy(written)
    );
}

fn resources_round_trip_and_are_listed_by_name(state: &TestState) {
    let store = store_with(state, &["prod"]);
    for name in ["web", "api", "db"] {
        store
            .put_resource(&resource("prod", name))
            .expect("record a resource");
    }
    let mut api = resource("prod", "api");
    api.status = ResourceStatus::Failed;
    api.error = Some("exit 1".to_owned());
    api.secret_outputs = vec!["password".to_owned()];
    api.outputs = json!({"password": "hunter2", "port": 5432});
    api.live = json!({"resolved": {"env": {"DB": "postgres://u:hunter2@h/db"}}});
    // A record with secret outputs is stored sealed, and reads back marked sensitive.
    api.sensitive = true;
    store.put_resource(&api).expect("update api");
    assert_eq!(
        store.resource(&env("prod"), "api").expect("read api"),
        Some(api.clone()),
        "every field round-trips"
    );
    let on_disk = state.stored_bytes();
    assert!(!on_disk.is_empty());
    assert!(
        !on_disk.windows(7).any(|w| w == b"hunter2"),
        "a secret output is never in the database file in the clear"
    );
    let listed: Vec<String> = store
        .resources(&env("prod"))
        .expect("list")
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(listed, names(&["api", "db", "web"]), "listed by name");
    assert!(
        store
            .forget_resource(&env("prod"), "web")
            .expect("delete web"),
        "web existed"
    );
    assert_eq!(
        store.resource(&env("prod"), "web").expect("read web"),
        None,
        "web is gone"
    );
}

#[test]
fn debug_output_of_a_resource_redacts_secret_outputs() {
    let mut db = resource("prod", "db");
    db.outputs = json!({"password": "hunter2", "port": 5432});
    db.secret_outputs = vec!["password".to_owned()];
    let printed = format!("{db:?}");
    assert!(
        !printed.contains("hunter2"),
        "a secret never appears in Debug: {printed}"
    );
    assert!(
        printed.contains("5432"),
        "other outputs still appear: {printed}"
    );
}

fn a_damaged_json_column_is_reported_with_its_record(state: &TestState) {
    let store = store_with(state, &["prod"]);
    store
        .put_resource(&resource("prod", "api"))
        .expect("record api");
    // What a plan reads of a record as the text stored, before any damage.
    let summaries = store.resource_summaries(&env("prod")).expect("read");
    let api = summaries.of("prod").next().expect("api is read");
    assert_eq!(api.resolved_hash, Some("abc"));
    assert_eq!(api.depends_on().expect("its dependencies"), ["db"]);
    state
        .raw(
            "UPDATE resources SET outputs = '{not json', depends_on = '[\"db\"'",
            false,
        )
        .expect("damage the columns");
    let error = store
        .resource(&env("prod"), "api")
        .expect_err("damaged JSON is an error, not a panic");
    assert!(
        matches!(&error, StateError::CorruptJson { record, column: "outputs", .. }
            if record == "resource prod/api"),
        "the error names the record and column, got {error:?}"
    );
    // Read as text, a damaged column is an error once it is parsed, naming it too.
    let summaries = store.resource_summaries(&env("prod")).expect("read");
    let api = summaries.of("prod").next().expect("api is read");
    let error = api.depends_on().expect_err("damaged JSON");
    assert!(
        matches!(&error, StateError::CorruptJson { record, column: "depends_on", .. }
            if record == "resource prod/api"),
        "the error names the record and column, got {error:?}"
    );
}

fn deployments_are_listed_newest_first_and_finish_once(state: &TestState) {
    let store = state.open();
    let first = store
        .begin_deployment(&deployment("prod", 10))
        .expect("begin");
    let second = store
        .begin_deployment(&deployment("prod", 20))
        .expect("begin");
    let other = store
        .begin_deployment(&deployment("qa", 30))
        .expect("begin");
    store
        .finish_deployment(
            first,
            DeploymentStatus::Succeeded,
            None,
            &json!({"created": 3}),
            15,
        )
        .expect("finish the first");

    let listed = store.deployments(&env("prod"), 10).expect("list");
    let ids: Vec<i64> = listed.iter().map(|d| d.id).collect();
    assert_eq!(
        ids,
        vec![second, first],
        "newest first, only this environment"
    );
    assert_eq!(
        store.deployments(&env("prod"), 1).expect("list one").len(),
        1,
        "the limit is honoured"
    );
    // Without their plans: the same deployments, in the same order, with their commits and
    // refs (a plan decides on these alone).
    let mut pinned = deployment("prod", 25);
    pinned.commit = "fedcba9876543210fedcba9876543210fedcba98".to_owned();
    pinned.reference = None;
    let third = store.begin_deployment(&pinned).expect("begin");
    let refs = store.deployment_refs(&env("prod"), 10).expect("refs");
    assert_eq!(
        refs.iter()
            .map(|d| (d.id, d.commit.as_str(), d.reference.as_deref()))
            .collect::<Vec<_>>(),
        store
            .deployments(&env("prod"), 10)
            .expect("list")
            .iter()
            .map(|d| (d.id, d.commit.as_str(), d.reference.as_deref()))
            .collect::<Vec<_>>(),
        "the refs are the deployments' own"
    );
    assert_eq!(
        refs.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![third, second, first]
    );
    assert_eq!(refs[0].reference, None, "a pinned commit has no ref");
    assert_eq!(
        store.deployment_refs(&env("prod"), 1).expect("one").len(),
        1,
        "the limit is honoured"
    );
    let finished = store
        .deployment(first)
        .expect("read")
        .expect("the first exists");
    assert_eq!(
        finished.status,
        DeploymentStatus::Succeeded,
        "status is recorded"
    );
    assert_eq!(finished.finished_at, Some(15), "finish time is recorded");
    assert_eq!(
        finished.summary,
        json!({"created": 3}),
        "summary is recorded"
    );
    assert_eq!(finished.plan, json!({"changes": []}), "plan round-trips");
    let running = store.deployment(second).expect("read").expect("exists");
    assert_eq!(
        (running.status.as_str(), running.summary.clone()),
        ("running", serde_json::Value::Null),
        "a new deployment is running with no summary"
    );

    let error = store
        .finish_deployment(
            first,
            DeploymentStatus::Failed,
            Some("boom"),
            &json!({}),
            16,
        )
        .expect_err("a finished deployment cannot finish again");
    assert!(
        matches!(&error, StateError::DeploymentNotRunning { status, .. } if *status == DeploymentStatus::Succeeded),
        "the error says what it already is, got {error:?}"
    );
    assert!(
        matches!(
            store.finish_deployment(other, DeploymentStatus::Running, None, &json!({}), 1),
            Err(StateError::InvalidValue { .. })
        ),
        "running is not a final status"
    );
    assert!(
        matches!(
            store.finish_deployment(999, DeploymentStatus::Failed, None, &json!({}), 1),
            Err(StateError::NotFound {
                what: "deployment",
                ..
            })
        ),
        "an unknown deployment is reported"
    );
}

/// What a pin of a `require_pr` environment may take without a merged pull request: a
/// commit it deployed successfully itself, since its record was made.
fn a_deployed_commit_is_one_that_succeeded_in_that_environment_since_it_was_made(
    state: &TestState,
) {
    let store = state.open();
    let commit = deployment("prod", 0).commit;
    let failed = store
        .begin_deployment(&deployment("prod", 10))
        .expect("begin");
    store
        .finish_deployment(
            failed,
            DeploymentStatus::Failed,
            Some("boom"),
            &json!({}),
            11,
        )
        .expect("finish");
    assert!(
        !store
            .deployed_commit(&env("prod"), &commit, 0)
            .expect("read"),
        "a failed deployment does not count"
    );
    let ok = store
        .begin_deployment(&deployment("prod", 20))
        .expect("begin");
    store
        .finish_deployment(ok, DeploymentStatus::Succeeded, None, &json!({}), 21)
        .expect("finish");
    assert!(
        store
            .deployed_commit(&env("prod"), &commit, 0)
            .expect("read")
    );
    assert!(
        !store
            .deployed_commit(&env("prod"), &commit, 30)
            .expect("read"),
        "a deployment before the environment was made does not count"
    );
    assert!(
        !store.deployed_commit(&env("qa"), &commit, 0).expect("read"),
        "another environment's does not count"
    );
    assert!(
        !store
            .deployed_commit(&env("prod"), &"f".repeat(40), 0)
            .expect("read"),
        "another commit"
    );
}

fn mark_interrupted_closes_only_running_deployments_of_that_environment(state: &TestState) {
    let store = state.open();
    let done = store
        .begin_deployment(&deployment("prod", 1))
        .expect("begin");
    store
        .finish_deployment(done, DeploymentStatus::Succeeded, None, &json!({}), 2)
        .expect("finish");
    let crashed_a = store
        .begin_deployment(&deployment("prod", 3))
        .expect("begin");
    let crashed_b = store
        .begin_deployment(&deployment("prod", 4))
        .expect("begin");
    let other = store.begin_deployment(&deployment("qa", 5)).expect("begin");

    assert_eq!(
        store
            .mark_interrupted(&env("prod"), 100)
            .expect("mark interrupted"),
        2,
        "both running deployments of prod are marked"
    );
    for id in [crashed_a, crashed_b] {
        let record = store.deployment(id).expect("read").expect("exists");
        assert_eq!(
            record.status,
            DeploymentStatus::Interrupted,
            "a running deployment becomes interrupted"
        );
        assert_eq!(
            record.finished_at,
            Some(100),
            "it finishes at the given time"
        );
        assert!(record.error.is_some(), "it says why");
    }
    let kept = store.deployment(done).expect("read").expect("exists");
    assert_eq!(
        kept.status,
        DeploymentStatus::Succeeded,
        "a finished deployment is untouched"
    );
    let qa = store.deployment(other).expect("read").expect("exists");
    assert_eq!(
        qa.status,
        DeploymentStatus::Running,
        "other environments are untouched"
    );
    assert_eq!(
        store
            .mark_interrupted(&env("prod"), 101)
            .expect("mark again"),
        0,
        "marking is idempotent"
    );
    assert!(
        matches!(
            store.finish_deployment(
                crashed_a,
                DeploymentStatus::Succeeded,
                None,
                &json!({}),
                102
            ),
            Err(StateError::DeploymentNotRunning { .. })
        ),
        "an interrupted deployment stays interrupted"
    );
}

fn ports_are_stable_across_allocations(state: &TestState) {
    let store = store_with(state, &["prod"]);
    let first =
        allocate(&store, "prod", "api", &["http", "admin"], 20_000..=20_100).expect("allocate");
    assert_eq!(
        first,
        BTreeMap::from([("admin".to_owned(), 20_000), ("http".to_owned(), 20_001)]),
        "new names take the lowest ports, in name order"
    );
    // Even if the port now looks busy (our own process holds it), it is returned again.
    let again = store
        .allocate_ports(
            &env("prod"),
            "api",
            &names(&["http", "admin", "grpc"]),
            20_000..=20_100,
            &|_| true,
        )
        .expect("allocate again");
    assert_eq!(again["http"], 20_001, "an allocated port is returned again");
    assert_eq!(
        again["admin"], 20_000,
        "an allocated port is returned again"
    );
    assert_eq!(again["grpc"], 20_002, "a new name takes the next free port");
    let busy_again = store
        .allocate_ports(
            &env("prod"),
            "api",
            &names(&["http"]),
            20_000..=20_100,
            &|_| false,
        )
        .expect("allocate with every port busy");
    assert_eq!(
        busy_again,
        BTreeMap::from([("http".to_owned(), 20_001)]),
        "stable ports do not consult is_free, and only the names asked are returned"
    );
    assert_eq!(
        store.ports(&env("prod"), "api").expect("ports").len(),
        3,
        "ports() lists every allocated name"
    );
}

fn ports_skip_those_taken_in_the_store_or_busy_on_the_machine(state: &TestState) {
    let store = state.open();
    for name in ["prod", "qa"] {
        store
            .upsert_environment(&environment(name))
            .expect("record an environment");
    }
    allocate(&store, "prod", "api", &["http"], 20_000..=20_010).expect("allocate for prod");
    let qa = store
        .allocate_ports(
            &env("qa"),
            "api",
            &names(&["http"]),
            20_000..=20_010,
            &|port| port != 20_001,
        )
        .expect("allocate for qa");
    assert_eq!(
        qa["http"], 20_002,
        "a port held by another environment or busy on the machine is skipped"
    );
}

fn a_port_is_never_allocated_twice(state: &TestState) {
    let store = store_with(state, &["prod"]);
    allocate(&store, "prod", "api", &["http"], 20_000..=20_000).expect("allocate");
    let duplicate = state.raw(
        "INSERT INTO ports (environment, resource, name, port) VALUES ('prod', 'web', 'http', 20000)",
        false,
    );
    assert!(
        duplicate.is_err(),
        "the database itself refuses a second holder of a port"
    );
}

fn an_exhausted_range_is_reported_and_allocates_nothing(state: &TestState) {
    let store = store_with(state, &["prod"]);
    let error = allocate(&store, "prod", "api", &["a", "b", "c"], 20_000..=20_001)
        .expect_err("three names do not fit in two ports");
    assert!(
        matches!(
            error,
            StateError::PortsExhausted {
                start: 20_000,
                end: 20_001,
                needed: 1,
                ..
            }
        ),
        "the error names the range and the shortfall, got {error:?}"
    );
    assert!(error.retryable(), "ports come back when environments go");
    assert!(
        store.ports(&env("prod"), "api").expect("ports").is_empty(),
        "a failed allocation allocates nothing"
    );
    let error = store
        .allocate_ports(&env("prod"), "api", &names(&["a"]), 0..=0, &always_free)
        .expect_err("port 0 is never allocated");
    assert!(
        matches!(error, StateError::PortsExhausted { .. }),
        "got {error:?}"
    );
}

fn forgetting_a_resource_releases_its_ports_and_keeps_the_others(state: &TestState) {
    let store = store_with(state, &["prod"]);
    for name in ["api", "web"] {
        store.put_resource(&resource("prod", name)).expect("record");
        allocate(&store, "prod", name, &["http"], 20_000..=20_010).expect("allocate");
    }
    assert!(store.forget_resource(&env("prod"), "api").expect("forget"));
    assert_eq!(store.resource(&env("prod"), "api").expect("read"), None);
    assert!(store.ports(&env("prod"), "api").expect("ports").is_empty());
    assert!(store.resource(&env("prod"), "web").expect("read").is_some());
    assert_eq!(store.ports(&env("prod"), "web").expect("ports").len(), 1);
    assert!(
        !store.forget_resource(&env("prod"), "api").expect("again"),
        "nothing left to forget"
    );
}

fn retain_and_release_free_ports_for_reuse(state: &TestState) {
    let store = store_with(state, &["prod"]);
    allocate(&store, "prod", "api", &["a", "b", "c"], 20_000..=20_010).expect("allocate");
    allocate(&store, "prod", "web", &["http"], 20_000..=20_010).expect("allocate web");
    assert_eq!(
        store
            .retain_ports(&env("prod"), "api", &names(&["b"]))
            .expect("retain b"),
        2,
        "names no longer declared are released"
    );
    assert_eq!(
        store.ports(&env("prod"), "api").expect("ports"),
        BTreeMap::from([("b".to_owned(), 20_001)]),
        "the declared name keeps its port"
    );
    assert_eq!(
        store.release_ports(&env("prod"), "api").expect("release"),
        1,
        "one left to release"
    );
    assert!(
        store.ports(&env("prod"), "api").expect("ports").is_empty(),
        "all released"
    );
    assert_eq!(
        store.ports(&env("prod"), "web").expect("ports").len(),
        1,
        "other resources keep their ports"
    );
    let reused = store
        .allocate_ports(
            &env("prod"),
            "api",
            &names(&["z"]),
            20_000..=20_010,
            &always_free,
        )
        .expect("allocate again");
    assert_eq!(
        reused["z"], 20_000,
        "released ports are reused lowest first"
    );
}

fn events_are_read_in_order_by_environment_and_cursor(state: &TestState) {
    let store = state.open();
    let mut ids = Vec::new();
    for (env, kind) in [
        (Some("prod"), EventKind::ApplyStarted),
        (None, EventKind::ForgeFailed),
        (Some("qa"), EventKind::ApplyStarted),
        (Some("prod"), EventKind::ApplySucceeded),
        (Some("prod"), EventKind::DriftDetected),
    ] {
        ids.push(
            store
                .record_event(
                    env.map(self::env).as_ref(),
                    kind,
                    "something happened",
                    &json!({"kind": kind}),
                    5,
                )
                .expect("record an event"),
        );
    }
    let all = store
        .events(&EventQuery {
            limit: 100,
            ..EventQuery::default()
        })
        .expect("read all");
    assert_eq!(
        all.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids,
        "ascending ids"
    );
    assert_eq!(
        all[1].environment, None,
        "engine-wide events have no environment"
    );
    assert_eq!(
        all[0].data,
        json!({"kind": "apply.started"}),
        "data round-trips"
    );

    let prod: Vec<EventKind> = store
        .events(&EventQuery {
            environment: Some(env("prod")),
            after_id: Some(ids[0]),
            limit: 1,
        })
        .expect("read prod")
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        prod,
        [EventKind::ApplySucceeded],
        "filtered by environment, after the cursor, within the limit"
    );
}

fn hostile_strings_round_trip(state: &TestState) {
    let store = state.open();
    let long = "x'\"\\;--".repeat(1_500);
    assert!(
        long.len() > 10_000,
        "the long string is over 10k characters"
    );
    let hostile = [
        "robert'); DROP TABLE environments;--",
        "\"double\" and 'single' quotes",
        "ünïcödé ☃ 🚀 \u{202e}rtl",
        "nul\0inside",
        "line\nbreak\ttab",
        long.as_str(),
    ];
    for (index, text) in hostile.iter().enumerate() {
        // Names are checked before they reach the store (`EnvName`); everything else is free text.
        let name = env(&format!("hostile-{index}"));
        let mut env = environment(&name);
        env.message = Some((*text).to_owned());
        env.owner = Some((*text).to_owned());
        store
            .upsert_environment(&env)
            .expect("record a hostile environment");
        assert_eq!(
            store.environment(&name).expect("read it back"),
            Some(env),
            "a hostile environment message and owner round-trip exactly"
        );
        let mut res = resource(&name, text);
        res.outputs = json!({ *text: *text });
        res.depends_on = vec![(*text).to_owned()];
        store.put_resource(&res).expect("record a hostile resource");
        assert_eq!(
            store.resource(&name, text).expect("read it back"),
            Some(res),
            "hostile resource fields round-trip exactly"
        );
        let ports = store
            .allocate_ports(&name, text, &names(&[text]), 20_000..=29_999, &always_free)
            .expect("allocate a hostile port name");
        assert_eq!(
            store.ports(&name, text).expect("read ports"),
            ports,
            "hostile port names round-trip"
        );
        let id = store
            .record_event(Some(&name), EventKind::ChangeHeld, text, &json!([text]), 1)
            .expect("record a hostile event");
        let event = store
            .events(&EventQuery {
                environment: Some(name.clone()),
                after_id: Some(id - 1),
                limit: 1,
            })
            .expect("read it back");
        assert_eq!(
            event[0].message, *text,
            "a hostile event message round-trips"
        );
    }
    assert_eq!(
        store.environments().expect("list").len(),
        hostile.len(),
        "no statement was broken by its input"
    );
}

// ---- several processes ---------------------------------------------------------------------

/// Set in a child process started by a test below; names what the child does and where.
const CHILD_ENV: &str = "SLIPWAY_STATE_TEST_CHILD";

/// Starts this test binary again, running only `test`, as a child with `CHILD_ENV` set.
fn spawn_child(test: &str, mode: &str, home: &Path) -> std::process::Child {
    let exe = std::env::current_exe().expect("find the test binary");
    Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{mode}:{}", home.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the child test process")
}

/// `Some((mode, home))` when this process is a child started by `spawn_child`.
fn child_role() -> Option<(String, std::path::PathBuf)> {
    let value = std::env::var(CHILD_ENV).ok()?;
    let (mode, home) = value.split_once(':')?;
    Some((mode.to_owned(), home.into()))
}

#[test]
fn two_processes_share_one_database() {
    if let Some((mode, home)) = child_role() {
        assert_eq!(mode, "writer", "the child of this test is a writer");
        let store = Store::open(&home).expect("child opens the store");
        store
            .upsert_environment(&environment("from-child"))
            .expect("child records an environment");
        allocate(&store, "from-child", "api", &["http"], 20_000..=20_010)
            .expect("child allocates a port");
        return;
    }
    let (home, store) = open_store();
    store
        .upsert_environment(&environment("from-parent"))
        .expect("record an environment");
    allocate(&store, "from-parent", "api", &["http"], 20_000..=20_010)
        .expect("parent allocates a port");
    let status = spawn_child("two_processes_share_one_database", "writer", home.path())
        .wait()
        .expect("wait for the child");
    assert!(status.success(), "the child process wrote successfully");
    assert_eq!(
        store
            .environments()
            .expect("list")
            .into_iter()
            .map(|e| e.name)
            .collect::<Vec<_>>(),
        names(&["from-child", "from-parent"]),
        "the parent sees the child's write while holding the store open"
    );
    assert_eq!(
        store.ports(&env("from-child"), "api").expect("ports")["http"],
        20_001,
        "the child did not take the parent's port"
    );
}

#[test]
fn a_writer_killed_at_any_point_leaves_a_consistent_database() {
    if let Some((mode, home)) = child_role() {
        assert_eq!(
            mode, "looping-writer",
            "the child of this test loops writing"
        );
        let store = Store::open(&home).expect("child opens the store");
        store
            .upsert_environment(&environment("prod"))
            .expect("record prod");
        for i in 0..1_000_000 {
            let resource_name = format!("r{i}");
            let id = store
                .begin_deployment(&deployment("prod", i))
                .expect("begin");
            store
                .put_resource(&resource("prod", &resource_name))
                .expect("record a resource");
            allocate(&store, "prod", &resource_name, &["a", "b", "c"], 1..=65_535)
                .expect("allocate three ports");
            store
                .retain_ports(&env("prod"), &format!("r{}", i.saturating_sub(5)), &[])
                .expect("release old ports");
            store
                .finish_deployment(id, DeploymentStatus::Succeeded, None, &json!({ "i": i }), i)
                .expect("finish");
            println!("progress {i}");
        }
        return;
    }
    let (home, store) = open_store();
    drop(store);
    let mut child = spawn_child(
        "a_writer_killed_at_any_point_leaves_a_consistent_database",
        "looping-writer",
        home.path(),
    );
    let stdout = child.stdout.take().expect("the child's stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    // Wait on the condition (the child made progress), not on time.
    let progressed = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line == "progress 30");
    assert!(progressed, "the child made progress before being killed");
    child.kill().expect("kill -9 the child mid-write");
    child.wait().expect("reap the child");

    let store = Store::open(home.path()).expect("reopen after the kill");
    let conn = raw(&home);
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("run integrity_check");
    assert_eq!(integrity, "ok", "the database file is intact after a kill");
    let dangling: i64 = conn
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |row| {
            row.get(0)
        })
        .expect("run foreign_key_check");
    assert_eq!(dangling, 0, "no row points at a missing environment");
    let partial: i64 = conn
        .query_row(
            "SELECT count(*) FROM (SELECT resource FROM ports GROUP BY resource \
             HAVING count(*) <> 3)",
            [],
            |row| row.get(0),
        )
        .expect("count partial allocations");
    assert_eq!(
        partial, 0,
        "a multi-port allocation is all or nothing, even when killed"
    );
    assert!(
        store.deployments(&env("prod"), 1_000).expect("list").len() >= 31,
        "committed history survives the kill"
    );
}

/// What listing every environment reads, one query per table (and the resources a range of
/// environments at a time), is what reading each environment alone finds.
fn a_listing_reads_every_environment_at_once_as_each_alone(state: &TestState) {
    let names = ["a", "b-1", "b1", "c", "d"];
    let store = store_with(state, &names);
    for (i, name) in names.iter().enumerate() {
        for r in ["web", "db", "cache"].iter().take(i % 3 + 1) {
            store
                .put_resource(&resource(name, r))
                .expect("record a resource");
        }
    }
    // One sealed (a secret output), one failed.
    store
        .put_resource(&ResourceRecord {
            outputs: json!({"url": "http://127.0.0.1:20001", "password": "s3cret"}),
            secret_outputs: vec!["password".to_owned()],
            live: json!({"pid": 43, "token": "s3cret"}),
            ..resource("c", "vault")
        })
        .expect("record a sealed resource");
    store
        .put_resource(&ResourceRecord {
            status: ResourceStatus::Failed,
            error: Some("exit 1".to_owned()),
            ..resource("c", "job")
        })
        .expect("record a failed resource");
    allocate(&store, "b1", "web", &["http"], 20000..=20009).expect("ports");
    allocate(&store, "c", "db", &["pg", "admin"], 20000..=20009).expect("ports");
    store
        .allocate_uid(&env("a"), 500_000..=500_009, |_| true)
        .expect("a uid");
    store
        .acquire_lease(&env("d"), "r1", std::time::Duration::from_secs(60))
        .expect("a lease");
    store
        .lock_environment(&env("c"), 7, "octocat", 1_000)
        .expect("a lock");

    let between = store
        .resources_between(&env("b-1"), &env("c"))
        .expect("the resources of a range");
    let mut read: Vec<&str> = between.environments().collect();
    read.sort_unstable();
    assert_eq!(
        read,
        ["b-1", "b1", "c"],
        "the range holds the environments from its first to its last, both included"
    );
    let all = store
        .resources_between(&env("a"), &env("d"))
        .expect("every environment's resources");
    let ports = store.all_ports().expect("every port");
    let uids = store.environment_uids().expect("every uid");
    let holders = store.holders().expect("every holder");
    for name in names {
        let name = env(name);
        let listed: Vec<_> = all.of(name.as_str()).collect();
        let alone = store.resource_summaries(&name).expect("its resources");
        assert_eq!(
            format!("{listed:?}"),
            format!("{:?}", alone.of(name.as_str()).collect::<Vec<_>>()),
            "{name}'s resources, in the same order"
        );
        let records = store.resources(&name).expect("its records");
        assert_eq!(
            listed.len(),
            records.len(),
            "{name}: one summary per record"
        );
        for (summary, record) in listed.iter().zip(&records) {
            let what = format!("{name}/{}", record.name);
            assert_eq!(
                (
                    summary.environment,
                    summary.name,
                    summary.type_name,
                    summary.status,
                    summary.error,
                    summary.secret_outputs().expect("secret outputs")
                ),
                (
                    record.environment.as_str(),
                    record.name.as_str(),
                    record.type_name.as_str(),
                    record.status,
                    record.error.as_deref(),
                    record.secret_outputs.clone()
                ),
                "{what}: the summary's fields are the record's"
            );
            assert_eq!(summary.config().expect("config"), record.config, "{what}");
            assert_eq!(
                summary.outputs().expect("outputs"),
                record.outputs,
                "{what}: the outputs, unsealed"
            );
            assert_eq!(
                summary.live().expect("live"),
                record.live,
                "{what}: the live record, unsealed"
            );
            let shown = format!("{summary:?}");
            assert!(
                !shown.contains("s3cret"),
                "{what}: a summary's Debug shows no output or live record: {shown}"
            );
        }
        assert_eq!(
            ports.get(&name).cloned().unwrap_or_default(),
            store.environment_ports(&name).expect("its ports"),
            "{name}'s ports"
        );
        assert_eq!(
            uids.get(&name).copied(),
            store.environment_uid(&name).expect("its uid"),
            "{name}'s uid"
        );
        assert_eq!(
            holders.get(&name).cloned(),
            store.holder(&name).expect("its holder"),
            "{name}'s lease holder"
        );
    }
}

fn resource_types_are_read_without_the_records(state: &TestState) {
    let store = store_with(state, &["prod", "qa"]);
    store.put_resource(&resource("prod", "web")).expect("web");
    let mut db = resource("prod", "db");
    db.type_name = "postgres.database".into();
    store.put_resource(&db).expect("db");
    store.put_resource(&resource("qa", "web")).expect("qa web");
    let all = store.resource_types(None).expect("all");
    assert_eq!(
        all.get(&env("prod"))
            .map(|t| t.iter().map(String::as_str).collect::<Vec<_>>()),
        Some(vec!["postgres.database", "process"])
    );
    assert_eq!(all.len(), 2, "{all:?}");
    let qa = store.resource_types(Some(&env("qa"))).expect("qa");
    assert_eq!(qa.keys().collect::<Vec<_>>(), [&env("qa")]);
}

fn a_new_environment_is_recorded_once_whoever_else_tries(state: &TestState) {
    let store = state.open();
    let mut first = environment("prod");
    first.message = Some("first".into());
    assert!(
        store.insert_environment(&first).expect("insert"),
        "recorded"
    );
    let mut second = environment("prod");
    second.message = Some("second".into());
    assert!(
        !store.insert_environment(&second).expect("insert again"),
        "a second insert of the same name records nothing"
    );
    assert_eq!(
        store
            .environment(&env("prod"))
            .expect("read")
            .and_then(|e| e.message)
            .as_deref(),
        Some("first"),
        "the first record stands"
    );
}

/// A reconcile and a pull request's apply both change one environment's record: each reads
/// and writes it in one transaction, so neither undoes the other; an update its caller
/// refuses (the environment follows something else now) writes nothing.
fn an_update_reads_and_writes_at_once_and_a_refused_one_writes_nothing(state: &TestState) {
    let store = std::sync::Arc::new(state.open());
    let mut prod = environment("prod");
    prod.ttl_ms = Some(0);
    store.upsert_environment(&prod).expect("record prod");

    // Two writers, each adding one to a different field a hundred times: with a read then a
    // separate write, each would lose some of the other's.
    let writers: Vec<_> = [true, false]
        .into_iter()
        .map(|ttl| {
            let store = store.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    store
                        .modify_environment(&env("prod"), |e| {
                            if ttl {
                                e.ttl_ms = Some(e.ttl_ms.unwrap_or(0) + 1);
                            } else {
                                e.updated_at += 1;
                            }
                        })
                        .expect("update prod");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("a writer");
    }
    let stored = store
        .environment(&env("prod"))
        .expect("read")
        .expect("prod");
    assert_eq!(stored.ttl_ms, Some(100), "no update of one writer is lost");
    assert_eq!(stored.updated_at, prod.updated_at + 100, "nor of the other");

    let refused = store
        .update_environment(&env("prod"), |recorded| {
            let mut e = recorded.expect("prod exists");
            if e.follows() != Some(slipway_state::Follows::Pinned("c1".into())) {
                return Err("prod follows something else");
            }
            e.commit = Some("c1".into());
            Ok(e)
        })
        .expect("the store answers");
    assert_eq!(refused, Err("prod follows something else"));
    let after = store
        .environment(&env("prod"))
        .expect("read")
        .expect("prod");
    assert_eq!(after, stored, "a refused update writes nothing");
    assert!(
        !store
            .modify_environment(&env("gone"), |e| e.pinned = true)
            .expect("the store answers"),
        "an environment that does not exist is not made by an update"
    );
    assert!(store.environment(&env("gone")).expect("read").is_none());
}

/// Every combination of the columns that decide an idle: the database picks exactly those
/// past 80% of `idle_ttl`, or awake past `sleep_after`, counted from the latest of creation,
/// last request and last touch, and deployed; on both dialects.
fn the_environments_that_may_idle_are_those_near_their_time_and_no_other(state: &TestState) {
    let store = state.open();
    let mut expected_at: Vec<(i64, Vec<String>)> = [9_000, 20_000, 60_000]
        .into_iter()
        .map(|now| (now, Vec::new()))
        .collect();
    let mut n = 0;
    for last_request in [None, Some(5_000)] {
        for touched in [None, Some(8_000)] {
            for (sleep_after, idle_ttl) in [
                (None, None),
                (Some(3_000), None),
                (None, Some(10_000)),
                (Some(30_000), Some(40_000)),
            ] {
                for activity in [Activity::Awake, Activity::Sleeping] {
                    for deployed in [true, false] {
                        n += 1;
                        let name = format!("e{n}");
                        let mut record = environment(&name);
                        record.kind = EnvKind::Generated;
                        record.created_at = 1_000;
                        record.commit = deployed.then(|| "a".repeat(40));
                        record.sleep_after_ms = sleep_after;
                        record.idle_ttl_ms = idle_ttl;
                        record.activity = activity;
                        record.touched_at = touched;
                        store.upsert_environment(&record).expect("record");
                        if let Some(at) = last_request {
                            store
                                .record_requests(&[(env(&name), at)])
                                .expect("record a request");
                        }
                        let since = [last_request, touched]
                            .into_iter()
                            .flatten()
                            .fold(1_000, i64::max);
                        for (now, names) in &mut expected_at {
                            let near_expiry = idle_ttl.is_some_and(|t| *now >= since + t * 4 / 5);
                            let sleepy = sleep_after.is_some_and(|t| *now >= since + t)
                                && activity == Activity::Awake;
                            if deployed && (near_expiry || sleepy) {
                                names.push(name.clone());
                            }
                        }
                    }
                }
            }
        }
    }
    for (now, mut expected) in expected_at {
        expected.sort();
        let picked: Vec<String> = store
            .idling_environments(now)
            .expect("list those that may idle")
            .into_iter()
            .map(|r| r.name.to_string())
            .collect();
        assert_eq!(picked, expected, "at {now}");
    }
}

/// A branch may write an `idle_ttl` of millions of years (the duration grammar allows it):
/// its 80% point was computed in SQL by multiplying first, which overflowed PostgreSQL's
/// bigint and failed the listing for every environment, every second (none slept or
/// expired again). Listed as any other.
fn an_idle_limit_of_centuries_breaks_no_listing(state: &TestState) {
    let store = state.open();
    for (name, limit) in [("forever", i64::MAX), ("eons", 2_592_000_000_000_000_000)] {
        let mut record = environment(name);
        record.kind = EnvKind::Generated;
        record.commit = Some("a".repeat(40));
        record.idle_ttl_ms = Some(limit);
        record.sleep_after_ms = Some(limit);
        store.upsert_environment(&record).expect("record");
    }
    let mut soon = environment("soon");
    soon.kind = EnvKind::Generated;
    soon.commit = Some("a".repeat(40));
    soon.idle_ttl_ms = Some(1_000);
    store.upsert_environment(&soon).expect("record");
    let picked: Vec<String> = store
        .idling_environments(soon.created_at + 5_000)
        .expect("listed")
        .into_iter()
        .map(|r| r.name.to_string())
        .collect();
    assert_eq!(picked, ["soon"]);
}

/// The WAL stays short: every command that opens the store first (each CLI call, when no
/// controller holds it open) reads and checksums every frame of it. A thousand small writes,
/// each its own transaction, leave it at a fraction of SQLite's default 4 MiB, and everything
/// they wrote is read back by the next opener.
#[test]
fn the_wal_stays_short_across_many_writes() {
    let (home, store) = open_store();
    let text = "x".repeat(2_000);
    for i in 0..1_000 {
        store
            .record_event(None, EventKind::ForgeFailed, &text, &json!({ "i": i }), i)
            .expect("record an event");
    }
    drop(store);
    let wal = std::fs::metadata(home.path().join("state.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(
        wal < 1 << 20,
        "the WAL holds {wal} bytes after 1,000 writes; at most 128 pages are kept"
    );
    let store = Store::open(home.path()).expect("open again");
    let events = store
        .events(&EventQuery {
            limit: 2_000,
            ..EventQuery::default()
        })
        .expect("read the events");
    assert_eq!(events.len(), 1_000, "every write is read back");
}
