//! Fuzzes the opening of a sealed value (`Sealer::open`), the one parser of text read back
//! from `state.db`'s columns: whoever can write that file (a restored backup, a shared
//! PostgreSQL state) chooses it.
//!
//! For each input:
//! 1. The input as a column's text, and as the base64 body of a v1 and a v2 value (the
//!    fuzzer then shapes an age header, a nonce and a ciphertext byte by byte): opening it does
//!    not panic; a refusal is a short message (under 400 bytes besides the key's path); a
//!    made-up value never opens.
//! 2. The input as a plaintext: sealed (v2) and sealed with age to the key's recipient (v1,
//!    as an earlier version wrote it), both open to it.
//! 3. The v2 value with one character replaced (where and by what, from the input): unless the
//!    text is unchanged, it does not open. A value is authentic or refused, never another
//!    plaintext.

#![no_main]

use std::str::FromStr;
use std::sync::OnceLock;

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use slipway_state::Sealer;

struct Key {
    sealer: Sealer,
    recipient: age::x25519::Recipient,
    path: String,
    _dir: tempfile::TempDir,
}

/// A refusal is short: at most 400 bytes besides the key's `path`, which it names, so that a
/// long value is never repeated. (Whether any of a value is repeated is the proptest's to
/// check, `crates/slipway-state/tests/sealed.rs`: a fuzzer learns the refusals' own words
/// from that comparison, and soon writes them into its input.)
fn refused_briefly(why: &str, path: &str) {
    let why = why.replace(path, "<key>");
    assert!(why.len() < 400, "a refusal of {} bytes: {why}", why.len());
}

fn key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("state.key");
        let sealer = Sealer::load_or_create(&path).expect("a new key");
        let text = std::fs::read_to_string(&path).expect("the key file");
        let line = text
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .expect("the key's line");
        let recipient = age::x25519::Identity::from_str(line)
            .expect("the key parses")
            .to_public();
        Key {
            sealer,
            recipient,
            path: path.display().to_string(),
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let key = key();

    let text = String::from_utf8_lossy(data);
    if let Err(why) = key.sealer.open(&text) {
        refused_briefly(&why, &key.path);
    }
    // The bytes as a value's body, which the fuzzer then shapes byte by byte: an age file's
    // header (v1), a nonce and ciphertext (v2).
    for prefix in ["sealed:v1:", "sealed:v2:"] {
        let body = base64::engine::general_purpose::STANDARD_NO_PAD.encode(data);
        let made_up = format!("{prefix}{body}");
        let why = key
            .sealer
            .open(&made_up)
            .expect_err("a made-up value never opens");
        refused_briefly(&why, &key.path);
    }

    let sealed = key.sealer.seal(data);
    assert_eq!(key.sealer.open(&sealed).expect("its own seal opens"), data);
    let age_file = age::encrypt(&key.recipient, data).expect("age encrypts into memory");
    let v1 = format!(
        "sealed:v1:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(age_file)
    );
    assert_eq!(key.sealer.open(&v1).expect("a v1 value opens"), data);

    let (Some(&at), Some(&by)) = (data.first(), data.last()) else {
        return;
    };
    let mut changed = sealed.clone().into_bytes();
    let at = usize::from(at) * changed.len() / 256;
    changed[at] = by & 0x7f;
    let changed = String::from_utf8(changed).expect("ASCII stays UTF-8");
    if changed != sealed {
        if let Ok(opened) = key.sealer.open(&changed) {
            panic!("a changed value opened: {changed:?} to {opened:?}");
        }
    }
});
