//! A policy owner's `/slipway approve-policies`, on SQLite and PostgreSQL: it holds for the
//! pull request's head commit it was given for, never for another commit or pull request; and
//! a pull request's labels, which policies read.

use slipway_state::Store;

mod common;
use common::TestState;

matrix!(
    an_approval_holds_for_its_pull_request_and_head_commit_only,
    a_pull_requests_labels_round_trip_and_follow_the_forge,
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
    };
    store.upsert_pull_request(&pr).expect("record");
    let read = store.pull_request(3).expect("read").expect("there");
    assert_eq!(read.labels, pr.labels);
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
