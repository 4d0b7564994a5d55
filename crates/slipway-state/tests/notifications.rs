//! The notification outbox, against real SQLite files and real PostgreSQL databases: the
//! event log is read once for every replica, a state seen again adds nothing, a row is
//! claimed by one sender at a time, and what waits survives a restart.

use slipway_core::EnvName;
use slipway_state::{NewNotification, NotifyStep};

mod common;
use common::TestState;

matrix!(
    a_state_seen_again_is_not_notified_again_until_it_is_forgotten,
    two_readers_of_the_same_events_add_them_once,
    a_claimed_notification_is_sent_by_one_sender_until_its_claim_ends,
    pending_notifications_outlive_the_store_that_added_them,
    a_receiver_hears_about_an_environment_in_order,
);

fn env(name: &str) -> EnvName {
    name.parse().expect("a valid environment name")
}

fn add(receiver: &str, environment: &str, kind: &str, key: Option<&str>) -> NotifyStep {
    NotifyStep::Add(NewNotification {
        receiver: receiver.into(),
        environment: Some(env(environment)),
        kind: kind.into(),
        state_key: key.map(Into::into),
        payload: format!(r#"{{"event":"{kind}","key":{key:?}}}"#),
    })
}

fn a_state_seen_again_is_not_notified_again_until_it_is_forgotten(state: &TestState) {
    let store = state.open();
    assert_eq!(store.notify_cursor().expect("cursor"), None);
    let first = [
        add("chat", "pr-1", "deployed", Some("abc")),
        add("ops", "pr-1", "deployed", Some("abc")),
    ];
    assert_eq!(
        store
            .enqueue_notifications(None, 5, &first, 1_000)
            .expect("enqueue"),
        Some(2),
        "one notification per receiver"
    );
    let again = [
        add("chat", "pr-1", "deployed", Some("abc")),
        add("chat", "pr-2", "deployed", Some("abc")),
    ];
    assert_eq!(
        store
            .enqueue_notifications(Some(5), 9, &again, 1_000)
            .expect("enqueue"),
        Some(1),
        "the same commit deployed again is no new state; another environment's is"
    );
    let forgotten = [
        NotifyStep::Forget {
            environment: env("pr-1"),
            kinds: None,
        },
        add("chat", "pr-1", "deployed", Some("abc")),
        add("chat", "pr-1", "woke", None),
        add("chat", "pr-1", "woke", None),
    ];
    assert_eq!(
        store
            .enqueue_notifications(Some(9), 12, &forgotten, 1_000)
            .expect("enqueue"),
        Some(3),
        "a forgotten state is new again, and a notification without a key is always added"
    );
    assert_eq!(store.notify_cursor().expect("cursor"), Some(12));
    assert_eq!(store.pending_notifications().expect("pending").len(), 6);
}

fn two_readers_of_the_same_events_add_them_once(state: &TestState) {
    let (one, two) = (state.open(), state.open());
    let steps = [add("chat", "pr-1", "failed", None)];
    assert_eq!(
        one.enqueue_notifications(None, 3, &steps, 1_000)
            .expect("enqueue"),
        Some(1)
    );
    assert_eq!(
        two.enqueue_notifications(None, 3, &steps, 1_000)
            .expect("enqueue"),
        None,
        "a reader whose cursor moved meanwhile writes nothing"
    );
    assert_eq!(one.pending_notifications().expect("pending").len(), 1);
}

fn a_claimed_notification_is_sent_by_one_sender_until_its_claim_ends(state: &TestState) {
    let (one, two) = (state.open(), state.open());
    let steps = [add("chat", "pr-1", "drift", Some("x"))];
    one.enqueue_notifications(None, 1, &steps, 1_000)
        .expect("enqueue");
    let claimed = one.claim_notifications(1_000, 31_000, 10).expect("claim");
    assert_eq!(claimed.len(), 1);
    assert!(
        two.claim_notifications(2_000, 32_000, 10)
            .expect("claim")
            .is_empty(),
        "a claimed notification is not handed to a second sender"
    );
    two.retry_notification(claimed[0].id, 5_000, "HTTP 500")
        .expect("reschedule");
    assert!(
        one.claim_notifications(4_000, 34_000, 10)
            .expect("claim")
            .is_empty(),
        "a rescheduled notification waits for its next attempt"
    );
    let again = two.claim_notifications(5_000, 35_000, 10).expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    assert_eq!(again[0].last_error.as_deref(), Some("HTTP 500"));
    assert_eq!(
        one.claim_notifications(40_000, 70_000, 10)
            .expect("claim")
            .len(),
        1,
        "a sender that died with its claim leaves the notification to another once the claim ends"
    );
    one.finish_notification(again[0].id).expect("finish");
    assert!(one.pending_notifications().expect("pending").is_empty());
}

fn pending_notifications_outlive_the_store_that_added_them(state: &TestState) {
    let store = state.open();
    store
        .enqueue_notifications(None, 7, &[add("chat", "pr-3", "held", Some("why"))], 1_000)
        .expect("enqueue");
    drop(store);
    let store = state.open();
    assert_eq!(store.notify_cursor().expect("cursor"), Some(7));
    let pending = store.pending_notifications().expect("pending");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].receiver, "chat");
    assert_eq!(pending[0].environment, Some(env("pr-3")));
    assert_eq!(pending[0].kind, "held");
}

fn a_receiver_hears_about_an_environment_in_order(state: &TestState) {
    let store = state.open();
    let steps = [
        add("forge", "pr-1", "in_progress", Some("a")),
        add("forge", "pr-1", "success", Some("a")),
        add("forge", "pr-2", "success", Some("a")),
        add("chat", "pr-1", "deployed", Some("a")),
    ];
    store
        .enqueue_notifications(None, 4, &steps, 1_000)
        .expect("enqueue");
    let kinds = |rows: &[slipway_state::PendingNotification]| {
        rows.iter()
            .map(|r| format!("{}:{}", r.receiver, r.kind))
            .collect::<Vec<_>>()
    };
    let first = store
        .claim_notifications(1_000, 100_000, 10)
        .expect("claim");
    assert_eq!(
        kinds(&first),
        ["forge:in_progress", "forge:success", "chat:deployed"].map(String::from),
        "the second row of (forge, pr-1) waits for the first"
    );
    store
        .retry_notification(first[0].id, 5_000, "HTTP 502")
        .expect("reschedule");
    assert!(
        store
            .claim_notifications(3_000, 4_000, 10)
            .expect("claim")
            .is_empty(),
        "a row being retried holds back the ones after it"
    );
    store.finish_notification(first[0].id).expect("finish");
    let next = store.claim_notifications(3_000, 4_000, 10).expect("claim");
    assert_eq!(kinds(&next), ["forge:success".to_owned()]);
}
