//! API tokens and the audit log against real SQLite files and real PostgreSQL databases.

use slipway_state::{NewAudit, StateError, hash_token, new_token};

mod common;
use common::TestState;

matrix!(
    a_token_is_found_by_its_hash_and_never_stored_in_clear,
    touching_and_revoking_a_token_are_recorded_and_revoking_twice_keeps_the_first_time,
    a_token_needs_a_known_role_a_name_and_a_unique_hash,
    the_audit_log_reads_forwards_from_a_cursor,
);

fn a_token_is_found_by_its_hash_and_never_stored_in_clear(state: &TestState) {
    let store = state.open();
    let token = new_token();
    let id = store
        .create_token(&hash_token(&token), "developer", "alice", 1_000)
        .expect("record a token");
    let found = store
        .token_by_hash(&hash_token(&token))
        .expect("look it up")
        .expect("a recorded token is found by its hash");
    assert_eq!(found.id, id);
    assert_eq!(found.role, "developer");
    assert_eq!(found.name, "alice");
    assert!(found.is_active(), "a new token is active");
    assert_eq!(
        store
            .token_by_hash(&hash_token("slw_other"))
            .expect("look up"),
        None,
        "an unknown token is not found"
    );
    drop(store);
    let stored = state.stored_bytes();
    assert!(!stored.is_empty());
    assert!(
        !stored.windows(token.len()).any(|w| w == token.as_bytes()),
        "the token itself is nowhere in the database"
    );
}

fn touching_and_revoking_a_token_are_recorded_and_revoking_twice_keeps_the_first_time(
    state: &TestState,
) {
    let store = state.open();
    let id = store
        .create_token(&hash_token("slw_a"), "admin", "ci", 1_000)
        .expect("record a token");
    store.touch_token(id, 2_000).expect("touch it");
    store.revoke_token(id, 3_000).expect("revoke it");
    store.revoke_token(id, 4_000).expect("revoke it again");
    let tokens = store.tokens().expect("list tokens");
    assert_eq!(tokens.len(), 1);
    assert_eq!(
        tokens[0].last_used_at,
        Some(2_000),
        "the last use is recorded"
    );
    assert_eq!(
        tokens[0].revoked_at,
        Some(3_000),
        "the first revocation stands"
    );
    assert!(!tokens[0].is_active(), "a revoked token is not active");
    assert!(
        matches!(store.touch_token(99, 1), Err(StateError::NotFound { .. })),
        "touching an unknown token is an error"
    );
    assert!(
        matches!(store.revoke_token(99, 1), Err(StateError::NotFound { .. })),
        "revoking an unknown token is an error"
    );
}

fn a_token_needs_a_known_role_a_name_and_a_unique_hash(state: &TestState) {
    let store = state.open();
    assert!(
        matches!(
            store.create_token(&hash_token("slw_a"), "root", "x", 1),
            Err(StateError::InvalidValue { .. })
        ),
        "a role outside viewer/developer/deployer/admin is refused"
    );
    assert!(
        matches!(
            store.create_token(&hash_token("slw_a"), "viewer", " ", 1),
            Err(StateError::InvalidValue { .. })
        ),
        "a token without a holder's name is refused"
    );
    store
        .create_token(&hash_token("slw_a"), "viewer", "x", 1)
        .expect("record a token");
    assert!(
        store
            .create_token(&hash_token("slw_a"), "admin", "y", 2)
            .is_err(),
        "the same token cannot be recorded twice"
    );
}

fn the_audit_log_reads_forwards_from_a_cursor(state: &TestState) {
    let store = state.open();
    let entry = |n: i64, outcome: &str| NewAudit {
        at: n,
        who: "alice".into(),
        action: "environment.destroy".into(),
        target: Some(format!("env-{n}")),
        outcome: outcome.into(),
        detail: "200".into(),
    };
    let first = store.record_audit(&entry(1, "ok")).expect("record");
    let second = store.record_audit(&entry(2, "refused")).expect("record");
    let third = store.record_audit(&entry(3, "failed")).expect("record");
    let all = store.audit(100, None).expect("read");
    assert_eq!(
        all.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![first, second, third],
        "entries come oldest first"
    );
    let after = store.audit(1, Some(first)).expect("read");
    assert_eq!(after.len(), 1, "the limit holds");
    assert_eq!(after[0].id, second, "reading resumes after the cursor");
    assert_eq!(after[0].entry.target.as_deref(), Some("env-2"));
    assert_eq!(after[0].entry.outcome, "refused");
    assert!(
        matches!(
            store.record_audit(&entry(4, "maybe")),
            Err(StateError::InvalidValue { .. })
        ),
        "an outcome outside ok/refused/failed is refused"
    );
}
