//! The caps and the queue (`max_environments`) in the store, on SQLite and PostgreSQL: who is
//! admitted, who waits and in which order, who gets a freed slot, and that two stores deciding
//! at once never fill one slot twice.

use std::collections::BTreeMap;

use slipway_core::EnvName;
use slipway_core::vocab::{Activity, EnvKind};
use slipway_state::{Caps, EnvironmentRecord, Store};

mod common;
use common::TestState;

matrix!(
    beyond_a_familys_cap_environments_queue_in_arrival_order_and_take_freed_slots,
    the_homes_cap_counts_generated_and_ad_hoc_environments_but_never_static_ones,
    a_lowered_cap_stops_nothing_and_a_raised_one_promotes,
    two_stores_promoting_at_once_never_fill_one_slot_twice,
);

fn env(name: &str) -> EnvName {
    EnvName::parse(name).expect("the test's environment names are DNS labels")
}

fn member(name: &str, kind: EnvKind, family: &str) -> EnvironmentRecord {
    EnvironmentRecord {
        tracked_ref: Some(format!("feature/{name}")),
        definition: Some(family.to_owned()),
        ttl_ms: Some(3_600_000),
        expires_at: Some(3_601_000),
        ..EnvironmentRecord::new(env(name), kind, "shop".into(), "repo".into(), 1_000)
    }
}

fn caps(families: &[(&str, u32)], total: Option<u32>) -> Caps {
    Caps {
        families: families
            .iter()
            .map(|(f, n)| (f.to_string(), *n))
            .collect::<BTreeMap<_, _>>(),
        total,
    }
}

fn activity(store: &Store, name: &str) -> (Activity, Option<u32>) {
    let record = store
        .environment(&env(name))
        .expect("read")
        .expect("recorded");
    (
        record.activity,
        store.queue_position(&env(name)).expect("position"),
    )
}

fn beyond_a_familys_cap_environments_queue_in_arrival_order_and_take_freed_slots(
    state: &TestState,
) {
    let store = state.open();
    let caps = caps(&[("previews", 2)], None);
    let admit = |name: &str, now: i64| {
        store
            .admit(&member(name, EnvKind::Generated, "previews"), &caps, now)
            .expect("admit")
            .expect("new")
    };
    assert_eq!(admit("br-b", 1_000).record.activity, Activity::Awake);
    assert_eq!(admit("br-c", 1_000).record.activity, Activity::Awake);
    let queued = admit("br-d", 1_000);
    assert_eq!(
        (
            queued.record.activity,
            queued.position,
            queued.record.expires_at
        ),
        (Activity::Queued, Some(1), None),
        "the third waits first in line, its time to live not started"
    );
    // Arriving in the same millisecond, a name sorting first still queues behind.
    let later = admit("br-a", 1_000);
    assert_eq!(later.position, Some(2), "arrival order, not name order");
    assert!(
        store
            .admit(
                &member("br-a", EnvKind::Generated, "previews"),
                &caps,
                2_000
            )
            .expect("admit again")
            .is_none(),
        "a name recorded already is not admitted twice"
    );
    // Nothing freed: nothing promoted.
    assert!(store.promote(&caps, 3_000).expect("promote").is_empty());
    // One goes: the first in line takes its slot, its time to live from now.
    assert!(store.delete_environment(&env("br-b")).expect("delete"));
    let promoted = store.promote(&caps, 5_000).expect("promote");
    assert_eq!(
        promoted.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["br-d"]
    );
    assert_eq!(promoted[0].waited_ms, 4_000);
    let d = store.environment(&env("br-d")).expect("read").expect("d");
    assert_eq!(
        (d.activity, d.queued_at, d.expires_at, d.activity_since),
        (Activity::Awake, None, Some(3_605_000), Some(5_000))
    );
    assert_eq!(activity(&store, "br-a"), (Activity::Queued, Some(1)));
    // A queued one leaves the queue with nothing to destroy; an awake one is not removed so.
    assert!(store.leave_queue(&env("br-a")).expect("leave"));
    assert!(store.environment(&env("br-a")).expect("read").is_none());
    assert!(
        !store.leave_queue(&env("br-d")).expect("leave"),
        "a running environment is destroyed, not dropped from the queue"
    );
    assert!(store.environment(&env("br-d")).expect("read").is_some());
}

fn the_homes_cap_counts_generated_and_ad_hoc_environments_but_never_static_ones(state: &TestState) {
    let store = state.open();
    let caps = caps(&[], Some(2));
    let admit = |record: EnvironmentRecord| {
        store
            .admit(&record, &caps, 1_000)
            .expect("admit")
            .expect("new")
            .record
            .activity
    };
    assert_eq!(
        admit(member("prod", EnvKind::Static, "prod")),
        Activity::Awake
    );
    assert_eq!(admit(member("qa", EnvKind::Static, "qa")), Activity::Awake);
    assert_eq!(
        admit(member("br-a", EnvKind::Generated, "previews")),
        Activity::Awake
    );
    assert_eq!(
        admit(member("demo", EnvKind::Adhoc, "previews")),
        Activity::Awake
    );
    assert_eq!(
        admit(member("br-z", EnvKind::Generated, "reviews")),
        Activity::Queued,
        "another family's environment waits too: the cap is the home's"
    );
    assert_eq!(
        admit(member("qa2", EnvKind::Static, "qa2")),
        Activity::Awake,
        "static environments never wait"
    );
    assert_eq!(activity(&store, "br-z"), (Activity::Queued, Some(1)));
}

fn a_lowered_cap_stops_nothing_and_a_raised_one_promotes(state: &TestState) {
    let store = state.open();
    let three = caps(&[("previews", 3)], None);
    for name in ["br-a", "br-b", "br-c", "br-d", "br-e"] {
        store
            .admit(&member(name, EnvKind::Generated, "previews"), &three, 1_000)
            .expect("admit");
    }
    let one = caps(&[("previews", 1)], None);
    assert!(store.promote(&one, 2_000).expect("promote").is_empty());
    for name in ["br-a", "br-b", "br-c"] {
        assert_eq!(
            activity(&store, name).0,
            Activity::Awake,
            "{name} keeps running"
        );
    }
    // Under the lowered cap, one going frees nothing: two still run, above it.
    store.delete_environment(&env("br-a")).expect("delete");
    assert!(store.promote(&one, 3_000).expect("promote").is_empty());
    let five = caps(&[("previews", 5)], None);
    let promoted = store.promote(&five, 4_000).expect("promote");
    assert_eq!(
        promoted.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["br-d", "br-e"],
        "a raised cap lets the queue in, in order"
    );
}

fn two_stores_promoting_at_once_never_fill_one_slot_twice(state: &TestState) {
    let setup = state.open();
    let caps = caps(&[("previews", 2)], None);
    let names: Vec<String> = (0..12).map(|i| format!("br-{i:02}")).collect();
    for name in &names {
        setup
            .admit(&member(name, EnvKind::Generated, "previews"), &caps, 1_000)
            .expect("admit");
    }
    for round in 0..5 {
        // Free both slots, then let two stores (two replicas) race to fill them.
        let awake: Vec<EnvName> = setup
            .environments()
            .expect("list")
            .into_iter()
            .filter(|r| r.activity == Activity::Awake)
            .map(|r| r.name)
            .collect();
        for name in &awake {
            setup.delete_environment(name).expect("delete");
        }
        let stores = [state.open(), state.open()];
        let promoted: usize = std::thread::scope(|scope| {
            let racing: Vec<_> = stores
                .iter()
                .map(|store| {
                    let caps = &caps;
                    scope.spawn(move || {
                        (0..4)
                            .map(|_| store.promote(caps, 2_000 + round).expect("promote").len())
                            .sum::<usize>()
                    })
                })
                .collect();
            racing
                .into_iter()
                .map(|t| t.join().expect("no panic"))
                .sum()
        });
        let awake = setup
            .environments()
            .expect("list")
            .into_iter()
            .filter(|r| r.activity == Activity::Awake)
            .count();
        assert_eq!(
            (promoted, awake),
            (2, 2),
            "round {round}: exactly the two freed slots were filled, once each"
        );
    }
}

/// A replica's queue change of an environment (`leave_queue`, `admit`) took the table's lock,
/// then the lease's row; a fenced write of the same environment takes the row, then writes
/// the table: each waited for the other, and PostgreSQL failed one of the two after a second
/// (`deadlock detected`). The queue change now takes the row first.
#[test]
fn a_queue_change_waits_for_a_fenced_write_of_its_environment_without_a_deadlock() {
    use common::{Kind, TestState};
    use slipway_state::Fence;
    let state = TestState::new(Kind::Postgres);
    let mut store = state.open();
    store.require_leases();
    let caps = caps(&[("previews", 1)], None);
    for name in ["br-a", "br-b"] {
        store
            .admit(&member(name, EnvKind::Generated, "previews"), &caps, 1_000)
            .expect("admit");
    }
    assert_eq!(activity(&store, "br-b"), (Activity::Queued, Some(1)));
    let lease = store
        .acquire_lease(&env("br-b"), "r1", std::time::Duration::from_secs(60))
        .expect("acquire")
        .expect("free");
    store.hold(
        &env("br-b"),
        Fence {
            replica: "r1".into(),
            epoch: lease.epoch,
        },
    );
    let url = state.postgres_url().expect("a PostgreSQL state");
    let connect = || ::postgres::Client::connect(&url, ::postgres::NoTls).expect("connect");
    // Another transaction of br-b's, as a fenced write runs: its lease's row first.
    let mut writer = connect();
    let mut write = writer.transaction().expect("begin");
    write
        .batch_execute("SELECT 1 FROM leases WHERE environment = 'br-b' FOR UPDATE")
        .expect("lock the lease's row");
    std::thread::scope(|scope| {
        let leaving = scope.spawn(|| store.leave_queue(&env("br-b")));
        // Once the queue change waits for a lock, the write goes on to the table.
        let mut watcher = connect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .expect("look")
                .get(0);
            if waiting > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the queue change never waited for the lease's row"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        write
            .batch_execute("UPDATE environments SET updated_at = updated_at WHERE name = 'br-b'")
            .expect("the fenced write reaches the table");
        write.commit().expect("commit");
        let left = leaving.join().expect("no panic");
        assert!(
            matches!(left, Ok(true)),
            "the queue change waited for the write, then took br-b off the queue: {left:?}"
        );
    });
    assert!(store.environment(&env("br-b")).expect("read").is_none());
}
