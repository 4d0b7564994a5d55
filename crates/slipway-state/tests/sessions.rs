//! The web UI's browser sessions in the state, against real SQLite files and real PostgreSQL
//! databases: what one store records, another on the same state (another replica, or the
//! same server restarted) answers.

use slipway_core::EnvName;
use slipway_state::{SCHEMA_VERSION, SessionRecord, StateError, hash_token};

mod common;
use common::TestState;

matrix!(
    a_session_is_found_by_its_id_until_it_ends_and_never_stored_by_its_id,
    a_session_one_store_starts_another_on_the_same_state_answers_and_ends,
    the_sessions_kept_are_bounded_dropping_ended_ones_then_those_that_end_soonest,
    sessions_are_written_without_a_lease_and_refused_once_the_schema_moved,
    hostile_ids_are_looked_up_without_an_error,
    one_tokens_logins_never_push_another_tokens_session_out,
);

/// A session of `token` from `at` to `at + lifetime`.
fn session(token: &str, at: i64, lifetime: i64) -> SessionRecord {
    SessionRecord {
        token_hash: hash_token(token),
        csrf: format!("csrf-of-{token}-{at}"),
        created_at: at,
        expires_at: at + lifetime,
    }
}

fn a_session_is_found_by_its_id_until_it_ends_and_never_stored_by_its_id(state: &TestState) {
    let store = state.open();
    let id = "pV3m1sY0k1aJ2cXq8nq4b7u3t0Fz9WdLrEo6hKgTjAs";
    let started = session("slw_alice", 1_000, 500);
    store
        .start_session(id, &started, 100)
        .expect("start a session");
    assert_eq!(
        store.session(id, 1_200).expect("look it up"),
        Some(started.clone()),
        "a live session is found by its id"
    );
    assert_eq!(
        store.session(id, 1_500).expect("look it up"),
        None,
        "a session has ended at its end"
    );
    assert_eq!(
        store.session("another", 1_200).expect("look it up"),
        None,
        "an unknown id is no session"
    );
    drop(store);
    let stored = state.stored_bytes();
    assert!(!stored.is_empty());
    assert!(
        !stored.windows(id.len()).any(|w| w == id.as_bytes()),
        "the session id itself is nowhere in the database"
    );
    assert!(
        stored.windows(64).any(|w| w == hash_token(id).as_bytes()),
        "its hash is what is kept"
    );

    // A restart (the store opened again) keeps it; ending it ends it for good.
    let store = state.open();
    assert_eq!(
        store.session(id, 1_200).expect("look it up"),
        Some(started),
        "a session outlives its server"
    );
    assert!(store.end_session(id).expect("end it"), "there was one");
    assert_eq!(store.session(id, 1_200).expect("look it up"), None);
    assert!(!store.end_session(id).expect("end it again"), "not twice");
}

fn a_session_one_store_starts_another_on_the_same_state_answers_and_ends(state: &TestState) {
    let r1 = state.open();
    let r2 = state.open();
    r1.start_session("shared", &session("slw_alice", 1_000, 500), 100)
        .expect("r1 starts a session");
    assert_eq!(
        r2.session("shared", 1_100)
            .expect("look it up on r2")
            .map(|s| s.token_hash),
        Some(hash_token("slw_alice")),
        "another store on the state knows the session"
    );
    assert!(r2.end_session("shared").expect("r2 ends it"));
    assert_eq!(
        r1.session("shared", 1_100).expect("look it up on r1"),
        None,
        "a session ended through one store is ended for every other"
    );
}

fn the_sessions_kept_are_bounded_dropping_ended_ones_then_those_that_end_soonest(
    state: &TestState,
) {
    let store = state.open();
    // Ten sessions at 1 000, ending at 2 000 + i: the bound is ten.
    for i in 0..10 {
        store
            .start_session(&format!("s{i}"), &session("slw_a", 1_000, 1_000 + i), 10)
            .expect("start a session");
    }
    let live = |store: &slipway_state::Store, now: i64| -> Vec<String> {
        (0..12)
            .map(|i| format!("s{i}"))
            .filter(|id| store.session(id, now).expect("look up").is_some())
            .collect()
    };
    assert_eq!(
        live(&store, 1_500).len(),
        10,
        "up to the bound, all are kept"
    );

    // At 2 002 three have ended: they go first, and the next one fits.
    store
        .start_session("s10", &session("slw_a", 2_002, 5_000), 10)
        .expect("start past three ended sessions");
    assert_eq!(
        live(&store, 2_002),
        ["s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10"],
        "the ended sessions were deleted, not the live ones"
    );
    store
        .start_session("s11", &session("slw_a", 2_002, 5_000), 10)
        .expect("start another");
    store
        .start_session("s0", &session("slw_b", 2_002, 5_000), 10)
        .expect("and another, reaching the bound");
    // At the bound, a login drops the tenth of it that ends soonest (one here): s3.
    store
        .start_session("s1", &session("slw_b", 2_002, 5_000), 10)
        .expect("a login at the bound");
    let kept = live(&store, 2_002);
    assert_eq!(kept.len(), 10, "the bound holds: {kept:?}");
    assert!(
        !kept.contains(&"s3".to_string()) && kept.contains(&"s1".to_string()),
        "the session that ends soonest made room for the new one: {kept:?}"
    );

    // A flood of logins never grows the table past the bound.
    for i in 0..50 {
        store
            .start_session(&format!("flood{i}"), &session("slw_a", 3_000, 5_000), 10)
            .expect("a login of the flood");
    }
    let flood = (0..50)
        .filter(|i| {
            store
                .session(&format!("flood{i}"), 3_000)
                .expect("look up")
                .is_some()
        })
        .count();
    assert!(
        flood + live(&store, 3_000).len() <= 10,
        "at most ten sessions after fifty logins"
    );
    assert!(
        store.session("flood49", 3_000).expect("look up").is_some(),
        "the newest login always gets its session"
    );
}

fn sessions_are_written_without_a_lease_and_refused_once_the_schema_moved(state: &TestState) {
    // A replica's store, proving leases for every write of an environment, holding none
    // while another replica holds one: sessions are not an environment's, and need none.
    let mut replica = state.open();
    replica.require_leases();
    let other = state.open();
    let prod = EnvName::parse("prod").expect("a name");
    other
        .acquire_lease(&prod, "r2", std::time::Duration::from_secs(60))
        .expect("r2 takes prod's lease");
    replica
        .start_session("no-lease", &session("slw_a", 1_000, 500), 100)
        .expect("a replica that holds no lease starts a session");
    assert!(
        replica.end_session("no-lease").expect("and ends it"),
        "the session was there"
    );

    replica
        .start_session("before", &session("slw_a", 1_000, 500), 100)
        .expect("start a session");
    state.set_schema_version(SCHEMA_VERSION + 1);
    let refused = replica
        .start_session("after", &session("slw_a", 1_000, 500), 100)
        .expect_err("a replica that stepped aside writes no session");
    assert!(
        matches!(refused, StateError::SchemaMoved { .. }),
        "{refused:?}"
    );
    assert!(
        replica
            .end_session("before")
            .is_err_and(|e| e.is_schema_moved()),
        "nor ends one"
    );
    assert!(
        replica
            .session("before", 1_100)
            .expect("reads go on")
            .is_some(),
        "but still answers the sessions there are"
    );
}

fn hostile_ids_are_looked_up_without_an_error(state: &TestState) {
    let store = state.open();
    let long = "A".repeat(64 * 1024);
    for id in [
        "",
        "'; DROP TABLE browser_sessions; --",
        "nul\0byte",
        "ünïcødé ☃",
        long.as_str(),
    ] {
        assert_eq!(
            store.session(id, 0).expect("a hostile id is only a miss"),
            None,
            "{:?} is no session",
            &id[..id.len().min(40)]
        );
        assert!(!store.end_session(id).expect("ending it is a no-op"));
    }
    store
        .start_session(&long, &session("slw_a", 1_000, 500), 100)
        .expect("even a long id is stored as its 64-character hash");
    assert!(store.session(&long, 1_100).expect("look up").is_some());
}

/// One token's logins (a viewer's, as many as it likes) make room among its own sessions: an
/// admin's session, the one that ends soonest, outlives a flood of them. It used to be the
/// first to go once the flood reached the bound.
fn one_tokens_logins_never_push_another_tokens_session_out(state: &TestState) {
    let store = state.open();
    store
        .start_session("admin", &session("slw_admin", 1_000, 500), 100)
        .expect("the admin logs in");
    for i in 0..300 {
        store
            .start_session(
                &format!("v{i}"),
                &session("slw_viewer", 1_000 + i, 5_000),
                100,
            )
            .expect("a viewer's login");
    }
    assert!(store.session("admin", 1_400).expect("look up").is_some());
    let kept = (0..300)
        .filter(|i| {
            store
                .session(&format!("v{i}"), 1_400)
                .expect("look up")
                .is_some()
        })
        .count();
    assert_eq!(
        kept,
        usize::try_from(slipway_state::SESSIONS_PER_TOKEN).expect("small")
    );
    assert!(
        store.session("v299", 1_400).expect("look up").is_some(),
        "the newest are kept"
    );
}
