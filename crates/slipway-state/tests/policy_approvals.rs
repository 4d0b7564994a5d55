//! A policy owner's `/slipway approve-policies`, on SQLite and PostgreSQL: it holds for the
//! pull request's head commit it was given for, never for another commit or pull request.

use slipway_state::Store;

mod common;
use common::TestState;

matrix!(an_approval_holds_for_its_pull_request_and_head_commit_only,);

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
