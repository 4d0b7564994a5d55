//! A policy owner's `/slipway approve-policies`, on SQLite and PostgreSQL: it holds for the
//! pull request's head commit it was given for, never for another commit or pull request; and
//! a pull request's labels, which policies read; and who pushed its heads, whose approvals
//! of their own push do not count.

use slipway_state::Store;

mod common;
use common::{TestState, pull_request};

matrix!(
    an_approval_holds_for_its_pull_request_and_head_commit_only,
    a_pull_requests_labels_round_trip_and_follow_the_forge,
    an_upgrade_takes_the_open_heads_as_their_authors_pushes,
    a_merge_not_recorded_is_listed_until_it_is,
);

const HEAD: &str = "1111111111111111111111111111111111111111";
const NEXT: &str = "2222222222222222222222222222222222222222";

fn an_approval_holds_for_its_pull_request_and_head_commit_only(state: &TestState) {
    let store: Store = state.open();
    assert_eq!(store.policies_approved(7, HEAD).expect("read"), None);
    store
        .approve_policies(7, HEAD, "alice", 1_000)
        .expect("approve");
    // Approving again keeps the first approval.
    store
        .approve_policies(7, HEAD, "bob", 2_000)
        .expect("again");
    assert_eq!(
        store.policies_approved(7, HEAD).expect("read").as_deref(),
        Some("alice")
    );
    assert_eq!(
        store.policies_approved(7, NEXT).expect("read"),
        None,
        "a new push"
    );
    assert_eq!(
        store.policies_approved(8, HEAD).expect("read"),
        None,
        "another PR"
    );
    // Kept across a reopen.
    drop(store);
    let store = state.open();
    assert_eq!(
        store.policies_approved(7, HEAD).expect("read").as_deref(),
        Some("alice")
    );
}

/// A state from before pushers were recorded (schema 20): the heads of the pull requests open
/// then count as their authors' pushes, so that none is held until its next push; closed ones
/// get nothing.
fn an_upgrade_takes_the_open_heads_as_their_authors_pushes(state: &TestState) {
    let store: Store = state.open();
    store
        .upsert_pull_request(&pull_request(3, "alice", "open", HEAD))
        .expect("record");
    store
        .upsert_pull_request(&pull_request(4, "bob", "closed", NEXT))
        .expect("record");
    drop(store);
    state
        .raw(
            "DROP TABLE head_pushes; ALTER TABLE pull_requests DROP COLUMN head_seen_at; \
             ALTER TABLE deployments DROP COLUMN rules;",
            false,
        )
        .expect("make the state a schema 20 one");
    state.set_schema_version(20);
    let store = state.open();
    let open = store.pushers_of(3, Some("feature-3"), HEAD).expect("read");
    assert_eq!(
        (open.of_head, open.all),
        (vec!["alice".to_owned()], vec!["alice".to_owned()])
    );
    assert_eq!(
        store.pushers_of(4, Some("feature-4"), NEXT).expect("read"),
        slipway_state::Pushers::default()
    );
    assert_eq!(
        store
            .pull_request(3)
            .expect("read")
            .expect("there")
            .head_seen_at,
        None,
        "when its head was first seen is not known"
    );
    store
        .record_push("pull/3", NEXT, "mallory", 2)
        .expect("record a push");
    let moved = store.pushers_of(3, None, NEXT).expect("read");
    assert_eq!(moved.of_head, ["mallory"]);
    assert_eq!(moved.all, ["alice", "mallory"]);
}

fn a_pull_requests_labels_round_trip_and_follow_the_forge(state: &TestState) {
    let store: Store = state.open();
    let mut pr = slipway_state::PullRequestRecord {
        number: 3,
        title: "t".into(),
        author: "alice".into(),
        head_sha: HEAD.into(),
        head_ref: "feature".into(),
        base_ref: "main".into(),
        is_fork: false,
        state: "open".into(),
        preview_allowed: true,
        url: String::new(),
        updated_at: 1,
        stale_approvers: Vec::new(),
        labels: vec!["preview".into(), "it's \"quoted\", ünïcode".into()],
        head_seen_at: None,
    };
    pr.head_seen_at = Some(1_234);
    store.upsert_pull_request(&pr).expect("record");
    let read = store.pull_request(3).expect("read").expect("there");
    assert_eq!(read.labels, pr.labels);
    assert_eq!(read.head_seen_at, Some(1_234));
    // Taken off on the forge: the next record says so.
    pr.labels.clear();
    store.upsert_pull_request(&pr).expect("again");
    assert!(
        store
            .pull_request(3)
            .expect("read")
            .expect("there")
            .labels
            .is_empty()
    );
}

/// A pull request recorded merged whose merge commit is not recorded (its record failed) is
/// listed for another try, if it was merged since the time asked; once recorded, it is not.
fn a_merge_not_recorded_is_listed_until_it_is(state: &TestState) {
    let store: Store = state.open();
    let mut merged = pull_request(5, "alice", "merged", HEAD);
    merged.updated_at = 1_000;
    store.upsert_pull_request(&merged).expect("record");
    let mut old = pull_request(6, "alice", "merged", NEXT);
    old.updated_at = 10;
    store.upsert_pull_request(&old).expect("record");
    store
        .upsert_pull_request(&pull_request(7, "alice", "open", NEXT))
        .expect("record");
    assert_eq!(store.merges_unrecorded(500).expect("read"), [5]);
    store
        .record_merged_commit(&slipway_state::MergedCommit {
            sha: "3".repeat(40),
            pull_request: 5,
            approved: false,
            at: 1_100,
            base_ref: Some("main".into()),
        })
        .expect("record the merge");
    assert!(store.merges_unrecorded(500).expect("read").is_empty());
}
