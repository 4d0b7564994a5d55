//! Leases and heartbeats against real SQLite files and real PostgreSQL databases: one holder
//! per environment, epochs that only grow, expiry by the database's clock, and replicas
//! racing for the same lease.

use std::collections::BTreeMap;
use std::time::Duration;

use slipway_core::EnvName;

mod common;
use common::TestState;

matrix!(
    a_lease_has_one_holder_and_its_epoch_only_grows,
    an_expired_lease_passes_to_another_replica_by_the_databases_clock,
    racing_replicas_never_share_an_epoch,
    heartbeats_say_who_is_alive_and_since_when,
    a_replica_that_lost_its_lease_writes_nothing,
    a_lease_given_back_names_its_next_holder_and_is_free,
);

fn env(name: &str) -> EnvName {
    EnvName::parse(name).expect("a valid name")
}

const MINUTE: Duration = Duration::from_secs(60);

fn a_lease_has_one_holder_and_its_epoch_only_grows(state: &TestState) {
    let store = state.open();
    let prod = env("prod");
    let a = store
        .acquire_lease(&prod, "a", MINUTE)
        .expect("acquire")
        .expect("a free lease is taken");
    assert_eq!((a.holder.as_str(), a.epoch), ("a", 1));
    assert_eq!(
        store.acquire_lease(&prod, "b", MINUTE).expect("acquire"),
        None,
        "an unexpired lease is not taken from its holder"
    );
    let renewed = store
        .acquire_lease(&prod, "a", MINUTE)
        .expect("renew")
        .expect("the holder renews");
    assert_eq!(renewed.epoch, a.epoch, "a renewal keeps the epoch");
    assert_eq!(renewed.acquired_at, a.acquired_at, "and when it was taken");
    assert!(renewed.expires_at >= a.expires_at, "and pushes the expiry");

    assert!(
        !store.release_lease(&prod, "b", a.epoch).expect("release"),
        "only the holder releases"
    );
    assert!(store.release_lease(&prod, "a", a.epoch).expect("release"));
    let b = store
        .acquire_lease(&prod, "b", MINUTE)
        .expect("acquire")
        .expect("a released lease is taken");
    assert_eq!(b.epoch, a.epoch + 1, "a new holding has the next epoch");
    let again = store.acquire_lease(&prod, "a", MINUTE).expect("acquire");
    assert_eq!(again, None, "a, having released, waits for b");

    let other = store
        .acquire_lease(&env("qa"), "a", MINUTE)
        .expect("acquire")
        .expect("leases are per environment");
    assert_eq!(other.epoch, 1);
    let listed: Vec<(String, String, i64)> = store
        .leases()
        .expect("list")
        .into_iter()
        .map(|l| (l.environment.to_string(), l.holder, l.epoch))
        .collect();
    assert_eq!(
        listed,
        [("prod".into(), "b".into(), 2), ("qa".into(), "a".into(), 1)]
    );
}

fn an_expired_lease_passes_to_another_replica_by_the_databases_clock(state: &TestState) {
    let store = state.open();
    let prod = env("prod");
    let a = store
        .acquire_lease(&prod, "a", Duration::from_millis(50))
        .expect("acquire")
        .expect("taken");
    // b asks until a's lease has run out by the database's clock (a never renews: it
    // stalled); nothing here sleeps a fixed time.
    let b = slipway_testkit::wait::wait_for(
        "a's lease to expire for b",
        Duration::from_secs(10),
        || store.acquire_lease(&prod, "b", MINUTE).expect("acquire"),
    );
    assert_eq!(b.epoch, a.epoch + 1);
    assert_eq!(
        store.acquire_lease(&prod, "a", MINUTE).expect("renew"),
        None,
        "a, waking up, cannot renew what b holds"
    );
}

fn racing_replicas_never_share_an_epoch(state: &TestState) {
    // Each replica its own store (its own connection), racing for one lease with a lease so
    // short that it changes hands all the time.
    let seen: Vec<(String, i64)> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..6)
            .map(|i| {
                let store = state.open();
                scope.spawn(move || {
                    let name = format!("r{i}");
                    let mut got = Vec::new();
                    for _ in 0..40 {
                        if let Some(lease) = store
                            .acquire_lease(&env("prod"), &name, Duration::from_millis(2))
                            .expect("acquire")
                        {
                            got.push((lease.holder, lease.epoch));
                        }
                    }
                    got
                })
            })
            .collect();
        racers
            .into_iter()
            .flat_map(|r| r.join().expect("a racer"))
            .collect()
    });
    assert!(!seen.is_empty(), "someone got the lease");
    let mut holder_of: BTreeMap<i64, String> = BTreeMap::new();
    for (holder, epoch) in &seen {
        let first = holder_of.entry(*epoch).or_insert_with(|| holder.clone());
        assert_eq!(
            first, holder,
            "epoch {epoch} was given to {first} and to {holder}"
        );
    }
    let last = state.open().leases().expect("list")[0].epoch;
    assert_eq!(
        last,
        *holder_of.keys().last().expect("an epoch"),
        "the recorded epoch is the greatest given"
    );
}

fn heartbeats_say_who_is_alive_and_since_when(state: &TestState) {
    let store = state.open();
    store.heartbeat("r1", Some("10.0.0.5")).expect("beat");
    let first = store.replicas().expect("list");
    store.heartbeat("r1", Some("10.0.0.6")).expect("beat again");
    store.heartbeat("r2", None).expect("another replica");
    let replicas = store.replicas().expect("list");
    assert_eq!(
        replicas.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["r1", "r2"]
    );
    assert_eq!(replicas[0].advertise.as_deref(), Some("10.0.0.6"));
    assert_eq!(
        replicas[0].started_at, first[0].started_at,
        "started_at stays"
    );
    assert!(replicas[0].heartbeat_at >= first[0].heartbeat_at);
    assert!(replicas.iter().all(|r| r.silent_ms >= 0), "{replicas:?}");
}

fn record_prod(store: &slipway_state::Store) {
    store
        .upsert_environment(&slipway_state::EnvironmentRecord::new(
            env("prod"),
            slipway_core::vocab::EnvKind::Static,
            "shop".into(),
            "file:///r".into(),
            0,
        ))
        .expect("record prod");
}

fn set_message(
    store: &slipway_state::Store,
    message: &str,
) -> Result<(), slipway_state::StateError> {
    use slipway_core::vocab::{Health, SyncState};
    store.set_environment_status(
        &env("prod"),
        SyncState::Synced,
        Health::Healthy,
        Some(message),
        1,
    )
}

fn message(store: &slipway_state::Store) -> Option<String> {
    store
        .environment(&env("prod"))
        .expect("read prod")
        .expect("prod is recorded")
        .message
}

fn a_replica_that_lost_its_lease_writes_nothing(state: &TestState) {
    use slipway_state::Fence;
    let mut a = state.open();
    a.require_leases();
    let mut b = state.open();
    b.require_leases();
    let prod = env("prod");

    let lease = a
        .acquire_lease(&prod, "a", MINUTE)
        .expect("acquire")
        .expect("taken");
    let refused = b.upsert_environment(&slipway_state::EnvironmentRecord::new(
        prod.clone(),
        slipway_core::vocab::EnvKind::Static,
        "shop".into(),
        "file:///r".into(),
        0,
    ));
    assert!(
        refused.as_ref().is_err_and(|e| e.is_fenced()),
        "a replica without the lease writes nothing while another holds it: {refused:?}"
    );
    a.hold(
        &prod,
        Fence {
            replica: "a".into(),
            epoch: lease.epoch,
        },
    );
    record_prod(&a);
    set_message(&a, "by a").expect("the holder writes");
    assert_eq!(message(&a).as_deref(), Some("by a"));

    // a stalls past its lease (released here: the check is the same as for an expired one);
    // b takes over.
    assert!(a.release_lease(&prod, "a", lease.epoch).expect("release"));
    let taken = b
        .acquire_lease(&prod, "b", MINUTE)
        .expect("acquire")
        .expect("taken");
    b.hold(
        &prod,
        Fence {
            replica: "b".into(),
            epoch: taken.epoch,
        },
    );

    // a wakes up, still believing it holds the lease: every kind of write is refused.
    let stale = set_message(&a, "by a, stale").expect_err("fenced");
    assert!(stale.is_fenced(), "{stale:?}");
    assert!(stale.to_string().contains("held by b"), "{stale}");
    let port = a.allocate_ports(&prod, "web", &["http".into()], 20_000..=20_010, &|_| true);
    assert!(
        port.is_err_and(|e| e.is_fenced()),
        "no port allocated by a stale replica"
    );
    let event = a.record_event(
        Some(&prod),
        slipway_core::vocab::EventKind::ChangeHeld,
        "stale",
        &serde_json::json!({}),
        2,
    );
    assert!(
        event.is_err_and(|e| e.is_fenced()),
        "no event by a stale replica"
    );
    assert!(
        a.delete_environment(&prod).is_err_and(|e| e.is_fenced()),
        "no destroy by a stale replica"
    );
    assert_eq!(
        message(&b).as_deref(),
        Some("by a"),
        "nothing a wrote after losing the lease"
    );
    assert!(b.environment_ports(&prod).expect("ports").is_empty());

    set_message(&b, "by b").expect("the new holder writes");
    assert_eq!(message(&a).as_deref(), Some("by b"));
    // Engine-wide events belong to no environment and need no lease.
    a.record_event(
        None,
        slipway_core::vocab::EventKind::ChangeHeld,
        "engine",
        &serde_json::json!({}),
        3,
    )
    .expect("an engine-wide event");
}

fn a_lease_given_back_names_its_next_holder_and_is_free(state: &TestState) {
    let store = state.open();
    let prod = env("prod");
    let node = store
        .acquire_lease(&prod, "r1", MINUTE)
        .expect("acquire")
        .expect("taken");
    assert!(
        store
            .release_lease(&prod, "r1", node.epoch)
            .expect("release")
    );
    let borrowed = store
        .acquire_lease(&prod, "r1/cli-7", MINUTE)
        .expect("acquire")
        .expect("a command takes the free lease");
    assert!(
        !store
            .return_lease(&prod, "r1/cli-7", borrowed.epoch - 1, "r1")
            .expect("give back"),
        "only at the epoch held"
    );
    assert!(
        store
            .return_lease(&prod, "r1/cli-7", borrowed.epoch, "r1")
            .expect("give back")
    );
    let lease = store.lease(&prod).expect("read").expect("the lease stays");
    assert_eq!(
        lease.holder, "r1",
        "its last holder is the node's replica again"
    );
    assert_eq!(store.holder(&prod).expect("read"), None, "and it is free");
    let again = store
        .acquire_lease(&prod, "r1", MINUTE)
        .expect("acquire")
        .expect("the replica takes it");
    assert_eq!(again.epoch, borrowed.epoch + 1, "with the next epoch");
}

/// Homes sharing one PostgreSQL state must hold one key: the first to open the state records
/// its instance; a home without a key is refused (and gets none made), as is one with another
/// key (which is left as it was); a copy of the first home's key opens it.
#[test]
fn every_home_on_a_shared_state_must_hold_the_key_it_was_sealed_with() {
    let database = slipway_testkit::pg::TestDatabase::create("slipway_state_key");
    let url = database.url();
    let first = tempfile::tempdir().expect("a home");
    let store = slipway_state::Store::open_postgres(first.path(), &url).expect("the first home");
    let instance = store.sealer().instance_id().to_owned();
    drop(store);

    // No key: refused, and none is made (a later start after copying it must find the copy).
    let bare = tempfile::tempdir().expect("a home");
    let error = slipway_state::Store::open_postgres(bare.path(), &url)
        .expect_err("a home without the key is refused");
    let text = error.to_string();
    assert!(
        matches!(&error, slipway_state::StateError::KeyMismatch { found: None, recorded, .. } if *recorded == instance)
            && text.contains("is missing")
            && text.contains("copy state.key")
            && text.contains("nothing was written"),
        "{text}"
    );
    assert!(!bare.path().join("state.key").exists(), "no key was made");

    // Another key: refused, naming both instances, and the key is left alone.
    let other = tempfile::tempdir().expect("a home");
    let own = slipway_state::Store::open(other.path()).expect("a SQLite home of its own");
    let own_instance = own.sealer().instance_id().to_owned();
    drop(own);
    let key_before = std::fs::read(other.path().join("state.key")).expect("its key");
    let error = slipway_state::Store::open_postgres(other.path(), &url)
        .expect_err("a home with another key is refused");
    let text = error.to_string();
    assert!(
        text.contains(&own_instance) && text.contains(&instance),
        "the error names both keys' instances: {text}"
    );
    assert_eq!(
        std::fs::read(other.path().join("state.key")).expect("its key"),
        key_before
    );

    // The first home's key, copied: it opens, and seals values the first home opens.
    std::fs::copy(
        first.path().join("state.key"),
        bare.path().join("state.key"),
    )
    .expect("copy the key");
    let second = slipway_state::Store::open_postgres(bare.path(), &url).expect("the copy opens");
    let sealed = second.sealer().seal(b"shared secret");
    let first_again = slipway_state::Store::open_postgres(first.path(), &url).expect("reopen");
    assert_eq!(
        first_again
            .sealer()
            .open(&sealed)
            .expect("the first home opens it"),
        b"shared secret"
    );
}

/// A role that may log in, as an environment's on a shared server, and its name.
fn planter() -> (slipway_testkit::pg::TestRole, String) {
    let planter = slipway_testkit::pg::TestRole::create("swtest_planter", "LOGIN");
    let name = planter
        .url()
        .strip_prefix("postgres://")
        .and_then(|rest| rest.split('@').next())
        .expect("the role's name")
        .to_owned();
    (planter, name)
}

/// A `slipway_schema` table someone else made in the state's schema before Slipway did
/// (any role may create in `public` on PostgreSQL 14 and older) is refused, naming its owner:
/// Slipway would write to it, its triggers running with the state user's rights. The state's
/// user here is a superuser, for which PostgreSQL counts every role as its own.
#[test]
fn a_schema_table_someone_else_made_first_is_refused() {
    let (_planter, name) = planter();
    let database = slipway_testkit::pg::TestDatabase::create("slipway_state_planted");
    database
        .connect()
        .batch_execute(&format!("GRANT CREATE ON SCHEMA public TO {name}"))
        .expect("what PostgreSQL 14 grants every role");
    let mut as_planter = ::postgres::Client::connect(
        &format!("postgres://{name}@127.0.0.1:5432/{}", database.name()),
        ::postgres::NoTls,
    )
    .expect("connect as the planter");
    as_planter
        .batch_execute(
            "CREATE TABLE public.slipway_schema (id BIGINT PRIMARY KEY, version BIGINT NOT NULL)",
        )
        .expect("plant the table");
    drop(as_planter);

    let home = tempfile::tempdir().expect("a home");
    let error = slipway_state::Store::open_postgres(home.path(), &database.url())
        .expect_err("a planted schema table is refused");
    let text = error.to_string();
    assert!(
        matches!(&error, slipway_state::StateError::ForeignSchemaTable { owner, .. } if *owner == name)
            && text.contains("REVOKE CREATE ON SCHEMA public FROM PUBLIC"),
        "{text}"
    );
    let rows: i64 = database
        .connect()
        .query_one("SELECT COUNT(*) FROM public.slipway_schema", &[])
        .expect("count")
        .get(0);
    assert_eq!(rows, 0, "nothing was written to it");
}

/// The leases' clock is the database's, computed with the system's operators: a
/// `*(numeric, integer)` someone made in `public` (any role may, on PostgreSQL 14 and older)
/// is never the better match, and never sets a heartbeat's time.
#[test]
fn the_database_clock_is_read_with_the_systems_operators() {
    let database = slipway_testkit::pg::TestDatabase::create("slipway_state_clock");
    database
        .connect()
        .batch_execute(
            "CREATE FUNCTION public.stopped(numeric, integer) RETURNS numeric \
               LANGUAGE sql AS 'SELECT 7::numeric'; \
             CREATE OPERATOR public.* (LEFTARG = numeric, RIGHTARG = integer, \
               FUNCTION = public.stopped); \
             CREATE FUNCTION public.stopped_too(double precision, integer) \
               RETURNS double precision LANGUAGE sql AS 'SELECT 7::double precision'; \
             CREATE OPERATOR public.* (LEFTARG = double precision, RIGHTARG = integer, \
               FUNCTION = public.stopped_too)",
        )
        .expect("plant an operator");
    let home = tempfile::tempdir().expect("a home");
    let store =
        slipway_state::Store::open_postgres(home.path(), &database.url()).expect("the state");
    store.heartbeat("r1", None).expect("beat");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    let beat = store.replicas().expect("list")[0].heartbeat_at;
    assert!(
        (beat - now_ms).abs() < 60_000,
        "the heartbeat's time is the clock's, not the planted operator's: {beat}"
    );
}

/// The planter's other moves: a view of that name (or anything but a table) is refused as
/// well; and a table made while the planter holds the lock the first open takes (any role
/// may take it), after the open looked and before it creates the table `IF NOT EXISTS`, is
/// refused under that lock, before anything is written to it.
#[test]
fn a_schema_view_or_a_table_made_under_the_open_lock_is_refused() {
    let (_planter, name) = planter();
    let connect_as_planter = |database: &slipway_testkit::pg::TestDatabase| {
        database
            .connect()
            .batch_execute(&format!("GRANT CREATE ON SCHEMA public TO {name}"))
            .expect("what PostgreSQL 14 grants every role");
        ::postgres::Client::connect(
            &format!("postgres://{name}@127.0.0.1:5432/{}", database.name()),
            ::postgres::NoTls,
        )
        .expect("connect as the planter")
    };

    let viewed = slipway_testkit::pg::TestDatabase::create("slipway_state_view");
    connect_as_planter(&viewed)
        .batch_execute("CREATE VIEW public.slipway_schema AS SELECT 1::bigint AS id")
        .expect("plant a view");
    let home = tempfile::tempdir().expect("a home");
    let error = slipway_state::Store::open_postgres(home.path(), &viewed.url())
        .expect_err("a view is refused");
    assert!(
        matches!(&error, slipway_state::StateError::ForeignSchemaTable { owner, restored: false, .. } if *owner == name),
        "{error}"
    );

    let raced = slipway_testkit::pg::TestDatabase::create("slipway_state_race");
    let mut as_planter = connect_as_planter(&raced);
    as_planter
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(7236832237734584697)")
        .expect("hold the lock of the first open");
    let url = raced.url();
    let opening = std::thread::spawn(move || {
        let home = tempfile::tempdir().expect("a home");
        slipway_state::Store::open_postgres(home.path(), &url).map(drop)
    });
    let mut watcher = raced.connect();
    slipway_testkit::wait::wait_for(
        "the open to wait for the lock",
        std::time::Duration::from_secs(20),
        || {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                    &[],
                )
                .ok()?
                .get(0);
            (waiting > 0).then_some(())
        },
    );
    as_planter
        .batch_execute(
            "CREATE TABLE public.slipway_schema (id BIGINT PRIMARY KEY, version BIGINT NOT NULL); \
             COMMIT",
        )
        .expect("make the table, then let the open go on");
    let error = opening
        .join()
        .expect("the opening thread")
        .expect_err("the table made meanwhile is refused");
    assert!(
        matches!(&error, slipway_state::StateError::ForeignSchemaTable { owner, .. } if *owner == name),
        "{error}"
    );
    let rows: i64 = watcher
        .query_one("SELECT COUNT(*) FROM public.slipway_schema", &[])
        .expect("count")
        .get(0);
    assert_eq!(rows, 0, "nothing was written to it");
}
