//! Work handed to the replica that works on an environment, on both databases: written by a
//! replica that holds no lease of it, taken once per holding, and again by a later holder or
//! a later run of the same one.

use std::time::Duration;

use slipway_core::EnvName;
use slipway_state::StateError;

mod common;
use common::TestState;

matrix!(
    work_is_taken_once_per_holding_and_again_by_a_later_holder_or_run,
    work_is_handed_over_by_a_replica_that_holds_no_lease_of_the_environment,
);

fn qa() -> EnvName {
    EnvName::parse("qa").expect("a name")
}

fn work_is_taken_once_per_holding_and_again_by_a_later_holder_or_run(state: &TestState) {
    let store = state.open();
    let work = serde_json::json!({"kind": "released", "number": 7});
    let first = store.hand_off(&qa(), &work, 1).expect("hand off");
    let second = store.hand_off(&qa(), &work, 2).expect("hand off");
    let listed = store.handoffs().expect("list");
    assert_eq!(
        listed.iter().map(|h| h.id).collect::<Vec<_>>(),
        [first, second],
        "oldest first"
    );
    assert_eq!(listed[0].work, work, "the work reads back as written");
    assert_eq!(listed[0].taken_epoch, None);

    assert!(store.take_handoff(first, "r1#a", 3).expect("take"));
    assert!(
        !store.take_handoff(first, "r1#a", 3).expect("take"),
        "not twice by one run under one holding"
    );
    assert!(
        !store.take_handoff(first, "r2#b", 2).expect("take"),
        "not by an older holding"
    );
    assert!(
        store.take_handoff(first, "r1#c", 3).expect("take"),
        "again by another run of the holder (restarted within its lease)"
    );
    assert!(
        store.take_handoff(first, "r2#b", 4).expect("take"),
        "again by a later holder"
    );
    let taken = &store.handoffs().expect("list")[0];
    assert_eq!(
        (taken.taken_by.as_deref(), taken.taken_epoch),
        (Some("r2#b"), Some(4))
    );
    assert!(
        store.take_handoff(second, "r1#a", 0).expect("take"),
        "work about an environment without a lease is taken at epoch 0"
    );
    assert!(
        !store.take_handoff(second, "r2#b", 0).expect("take"),
        "once, by anyone"
    );

    assert!(store.finish_handoff(first).expect("finish"));
    assert!(!store.finish_handoff(first).expect("finish"), "done once");
    assert!(!store.take_handoff(first, "r3#d", 9).expect("take"), "done");
    assert_eq!(store.handoffs().expect("list").len(), 1);
}

fn work_is_handed_over_by_a_replica_that_holds_no_lease_of_the_environment(state: &TestState) {
    let holder = state.open();
    holder
        .acquire_lease(&qa(), "r2", Duration::from_secs(60))
        .expect("acquire")
        .expect("r2 holds qa");
    let mut other = state.open();
    other.require_leases();
    let refused = other.record_event(
        Some(&qa()),
        slipway_core::vocab::EventKind::LockReleased,
        "a write of qa",
        &serde_json::json!({}),
        1,
    );
    assert!(
        matches!(refused, Err(StateError::Fenced { .. })),
        "the other replica may not write qa: {refused:?}"
    );
    let id = other
        .hand_off(
            &qa(),
            &serde_json::json!({"kind": "released", "number": 1}),
            1,
        )
        .expect("it hands work on qa over all the same");
    assert_eq!(
        holder.handoffs().expect("list")[0].id,
        id,
        "the holder sees it"
    );
}
