//! The opening of a sealed value (`Sealer::open`) on hostile text, on stable Rust in every
//! `cargo test`: the checks of the fuzz target `fuzz/fuzz_targets/sealed.rs`, on generated
//! inputs (see docs/fuzzing.md). The text of a `state.db` column is chosen by whoever can
//! write that file (a restored backup, a shared PostgreSQL state).

use proptest::prelude::*;
use slipway_state::Sealer;

fn sealer() -> (Sealer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let sealer = Sealer::load_or_create(&dir.path().join("state.key")).expect("a new key");
    (sealer, dir)
}

/// Text shaped like a sealed value: a known or unknown prefix, then base64-like soup.
fn sealed_like() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "sealed:v2:",
            "sealed:v1:",
            "sealed:v9:",
            "sealed:",
            "sealed",
            "",
        ]),
        "[A-Za-z0-9+/=!:\u{e9}\u{1F600} ]{0,200}",
    )
        .prop_map(|(prefix, body)| format!("{prefix}{body}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any text opens or is refused, without a panic, with a short message that does not
    /// echo it.
    #[test]
    fn any_text_is_refused_briefly(text in prop_oneof![sealed_like(), any::<String>()]) {
        let (sealer, _dir) = sealer();
        if let Err(why) = sealer.open(&text) {
            prop_assert!(why.len() < 400, "{why}");
            // The refusal quotes at most the first 24 characters (a format's name).
            let chars: Vec<char> = text.chars().collect();
            if chars.len() > 60 {
                let tail: String = chars[chars.len() - 20..].iter().collect();
                prop_assert!(!why.contains(&tail), "the refusal echoes the value: {why}");
            }
        }
    }

    /// Every plaintext seals and opens to itself; the sealed value with any one character
    /// replaced does not open.
    #[test]
    fn a_seal_opens_and_a_changed_one_does_not(
        plain in prop::collection::vec(any::<u8>(), 0..300),
        at in any::<prop::sample::Index>(),
        by in 0x20u8..0x7f,
    ) {
        let (sealer, _dir) = sealer();
        let sealed = sealer.seal(&plain);
        prop_assert_eq!(sealer.open(&sealed).expect("opens"), plain);
        let mut changed = sealed.clone().into_bytes();
        let at = at.index(changed.len());
        changed[at] = by;
        let changed = String::from_utf8(changed).expect("ASCII");
        if changed != sealed {
            prop_assert!(sealer.open(&changed).is_err(), "{changed:?} opened");
        }
    }
}
