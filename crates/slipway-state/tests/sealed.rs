//! The opening of a sealed value (`Sealer::open`) on hostile text, on stable Rust in every
//! `cargo test`: the checks of the fuzz target `fuzz/fuzz_targets/sealed.rs`, on generated
//! inputs (see docs/fuzzing.md). The text of a `state.db` column is chosen by whoever can
//! write that file (a restored backup, a shared PostgreSQL state).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use proptest::prelude::*;
use slipway_state::Sealer;

/// A new key, its file's path, and the directory that holds it.
fn sealer() -> (Sealer, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("state.key");
    let sealer = Sealer::load_or_create(&path).expect("a new key");
    (sealer, path, dir)
}

/// Whether the refusal `why` of `text` is short and never repeats the value: at most 400
/// bytes besides the key's path, which it names, and no 16 characters of the text past its
/// first 24 (a format's name, which it quotes).
fn refused_briefly(why: &str, text: &str, key: &Path) -> Result<(), String> {
    let why = why.replace(&key.display().to_string(), "<key>");
    if why.len() >= 400 {
        return Err(format!("a refusal of {} bytes: {why}", why.len()));
    }
    let chars: Vec<char> = text.chars().collect();
    if chars.len() > 24 {
        for window in chars[24..].windows(16) {
            let window: String = window.iter().collect();
            if why.contains(&window) {
                return Err(format!("the refusal echoes {window:?}: {why}"));
            }
        }
    }
    Ok(())
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

/// Any bytes behind a known prefix, base64 as a sealed value carries them: the nonce and the
/// ciphertext of v2, the age file of v1, made up.
fn made_up_body() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["sealed:v2:", "sealed:v1:"]),
        prop::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(|(prefix, bytes)| {
            format!(
                "{prefix}{}",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any text is refused, without a panic, with a short message that does not echo it.
    #[test]
    fn any_text_is_refused_briefly(
        text in prop_oneof![sealed_like(), made_up_body(), any::<String>()],
    ) {
        let (sealer, key, _dir) = sealer();
        let why = sealer.open(&text).expect_err("nothing made up opens");
        let checked = refused_briefly(&why, &text, &key);
        prop_assert!(checked.is_ok(), "{:?}", checked);
    }

    /// Every plaintext seals and opens to itself, and so does an age file to the key's
    /// recipient (a v1 value, as earlier versions sealed); the sealed value with any one
    /// character replaced does not open.
    #[test]
    fn a_seal_opens_and_a_changed_one_does_not(
        plain in prop::collection::vec(any::<u8>(), 0..300),
        at in any::<prop::sample::Index>(),
        by in 0x20u8..0x7f,
    ) {
        let (sealer, key, _dir) = sealer();
        let sealed = sealer.seal(&plain);
        prop_assert_eq!(sealer.open(&sealed).expect("opens"), plain.clone());
        let text = std::fs::read_to_string(&key).expect("the key file");
        let line = text.lines().find(|l| l.starts_with("AGE-SECRET-KEY-")).expect("its line");
        let recipient = age::x25519::Identity::from_str(line).expect("parses").to_public();
        let v1 = format!(
            "sealed:v1:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD
                .encode(age::encrypt(&recipient, &plain).expect("age encrypts"))
        );
        prop_assert_eq!(sealer.open(&v1).expect("a v1 value opens"), plain);
        let mut changed = sealed.clone().into_bytes();
        let at = at.index(changed.len());
        changed[at] = by;
        let changed = String::from_utf8(changed).expect("ASCII");
        if changed != sealed {
            prop_assert!(sealer.open(&changed).is_err(), "{changed:?} opened");
        }
    }
}
