//! A pull request's lock of an environment against a person's pin, on SQLite and PostgreSQL:
//! a `/slipway apply` pins the environment to the pull request's head only while its lock
//! holds, and a person's pin, rollback or unpin ends the lock in the same transaction, so
//! that whichever comes second wins whole: never an environment left on the pull request's
//! head with no lock (its close would not move it back), nor a person's pin under a lock
//! (its close would undo the pin).

use slipway_core::EnvName;
use slipway_core::vocab::EnvKind;
use slipway_state::{EnvironmentRecord, Store};

mod common;
use common::{TestState, pull_request};

matrix!(
    a_persons_pin_ends_the_lock_and_an_apply_pins_only_under_it,
    an_apply_racing_a_persons_pin_never_leaves_the_head_without_its_lock,
);

const HEAD: &str = "1111111111111111111111111111111111111111";
const PERSON: &str = "2222222222222222222222222222222222222222";

fn qa() -> EnvName {
    EnvName::parse("qa").expect("a name")
}

/// Records `qa` (following `main`) and pull request #7, open.
fn recorded(store: &Store) {
    store
        .upsert_environment(&EnvironmentRecord::new(
            qa(),
            EnvKind::Static,
            "shop".into(),
            "file:///repo".into(),
            1,
        ))
        .expect("record qa");
    store
        .upsert_pull_request(&pull_request(7, "alice", "open", HEAD))
        .expect("record #7");
}

/// The apply's pin of `qa` to #7's head, while #7 holds its lock: whether it was made.
fn apply_pin(store: &Store) -> bool {
    store
        .update_environment_locked_by(&qa(), 7, |recorded| {
            let mut e = recorded.expect("qa is recorded");
            e.pinned = true;
            e.desired_commit = Some(HEAD.into());
            Ok::<_, std::convert::Infallible>(e)
        })
        .expect("write")
        .is_some()
}

/// A person's pin of `qa`: the pull request whose lock it ended.
fn person_pin(store: &Store) -> Option<i64> {
    let (_, ended) = store
        .update_environment_ending_lock(&qa(), |recorded| {
            let mut e = recorded.expect("qa is recorded");
            e.pinned = true;
            e.desired_commit = Some(PERSON.into());
            e
        })
        .expect("write");
    ended
}

fn a_persons_pin_ends_the_lock_and_an_apply_pins_only_under_it(state: &TestState) {
    let store = state.open();
    recorded(&store);
    assert!(!apply_pin(&store), "no lock, no pin");
    let qa_now = |store: &Store| store.environment(&qa()).expect("read").expect("qa");
    assert!(!qa_now(&store).pinned);

    store
        .lock_environment_while_open(&qa(), 7, "alice", 2)
        .expect("lock")
        .expect("#7 is open");
    assert!(apply_pin(&store));
    assert_eq!(qa_now(&store).desired_commit.as_deref(), Some(HEAD));

    // The person's rollback: the lock ends with it, and the apply's pin is refused after.
    assert_eq!(person_pin(&store), Some(7));
    assert_eq!(store.environment_lock(&qa()).expect("read"), None);
    assert!(!apply_pin(&store));
    let now = qa_now(&store);
    assert!(now.pinned);
    assert_eq!(
        now.desired_commit.as_deref(),
        Some(PERSON),
        "the person's stays"
    );
    assert_eq!(person_pin(&store), None, "no lock left to end");
}

fn an_apply_racing_a_persons_pin_never_leaves_the_head_without_its_lock(state: &TestState) {
    let (applier, person) = (state.open(), state.open());
    recorded(&applier);
    for round in 0..40 {
        // Both at once, each on its own connection: the apply locks then pins; the person pins.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                applier
                    .lock_environment_while_open(&qa(), 7, "alice", round)
                    .expect("lock");
                apply_pin(&applier);
            });
            scope.spawn(|| person_pin(&person));
        });
        let now = applier.environment(&qa()).expect("read").expect("qa");
        let lock = applier.environment_lock(&qa()).expect("read lock");
        match now.desired_commit.as_deref() {
            Some(HEAD) => assert!(
                lock.is_some_and(|l| l.pull_request == 7),
                "round {round}: on #7's head with no lock"
            ),
            // The person's pin last: no lock may stay under it.
            Some(PERSON) => assert_eq!(lock, None, "round {round}: the person's pin under a lock"),
            other => panic!("round {round}: {other:?}"),
        }
        // Back to the start: unlocked, unpinned.
        applier.unlock_environment(&qa(), 7).expect("unlock");
        assert!(
            applier
                .modify_environment(&qa(), |e| {
                    e.pinned = false;
                    e.desired_commit = None;
                })
                .expect("reset")
        );
    }
}
