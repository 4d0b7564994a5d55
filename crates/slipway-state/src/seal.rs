//! Values that must not be readable from the database file: secret outputs (generated
//! passwords, URLs holding them) and the resolved configurations that carry secrets are stored
//! sealed, encrypted under the X25519 identity kept beside the database (`<home>/state.key`,
//! mode 0600).
//!
//! This protects copies of `state.db` (backups, a bug report, `sqlite3 .dump`, `grep`) rather
//! than a host where an attacker can already read the home directory: the key lives there too,
//! as it must for the engine to work unattended.
//!
//! Two formats, both always opened:
//! - `sealed:v2:` and the base64 of a random 24-byte nonce and the XChaCha20-Poly1305
//!   ciphertext, under a key derived from the identity for this use alone: a few microseconds
//!   each way. What a SQLite state's values are sealed as.
//! - `sealed:v1:` and the base64 of an age file to the identity's recipient: two scalar
//!   multiplications to seal and one to open, some 50 µs each (ten of them were a third of a
//!   millisecond of every destroy). What a PostgreSQL state's values are still sealed as, so
//!   that replicas of the previous release, which read only these, can read what an upgraded
//!   one writes while a rolling upgrade runs (docs/operations.md, *Upgrading*); the next
//!   release seals those as v2 too.
//!
//! Any other `sealed:` text is a format of a newer Slipway, refused by name.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit as _};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::StateError;

/// The prefix of a value sealed with XChaCha20-Poly1305.
const PREFIX: &str = "sealed:v2:";

/// The prefix of a value sealed with age.
const PREFIX_AGE: &str = "sealed:v1:";

/// What every sealed value starts with, whatever its format.
const SEALED: &str = "sealed:";

/// The length of a v2 value's nonce.
const NONCE_BYTES: usize = 24;

/// Whether a column value is sealed, in any format (one this version cannot open included,
/// which [`Sealer::open`] then names). A value that is not is JSON text, which never starts
/// with a letter.
pub(crate) fn is_sealed(text: &str) -> bool {
    text.starts_with(SEALED)
}

/// Seals and opens values with the home's key.
pub struct Sealer {
    identity: age::x25519::Identity,
    /// The v2 cipher, keyed from `identity` (see [`seal_key`]).
    cipher: XChaCha20Poly1305,
    /// Its recipient (which names the instance, see `instance_id`).
    recipient: age::x25519::Recipient,
    /// Whether values are sealed as v1, to `recipient` ([`Sealer::sealing_with_age`]).
    with_age: bool,
    /// A stable, public identifier of this home (derived from the key), for naming things
    /// that several homes may share (databases on one PostgreSQL server).
    instance_id: String,
    path: PathBuf,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("path", &self.path).finish()
    }
}

impl Sealer {
    /// Reads the key at `path`, creating it (mode 0600) when there is none. Two processes
    /// creating it at once agree on one key: the file appears complete or not at all.
    pub fn load_or_create(path: &Path) -> Result<Sealer, StateError> {
        let error = |reason: String| StateError::Key {
            path: path.to_path_buf(),
            reason,
        };
        if !path.exists() {
            let identity = age::x25519::Identity::generate();
            // Unique to this call: two threads of one process may open a new home at once.
            static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let temp = path.with_extension(format!("key.tmp.{}.{call}", std::process::id()));
            let written = (|| {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&temp)?;
                writeln!(
                    file,
                    "# Slipway's state key: seals secrets in state.db. Keep it with the home.\n{}",
                    identity.to_string().expose_secret()
                )?;
                file.sync_all()?;
                // A hard link never replaces an existing file: if another process won, we
                // read its key below.
                match std::fs::hard_link(&temp, path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                    Err(e) => Err(e),
                }
            })();
            let _ = std::fs::remove_file(&temp);
            written.map_err(|e| error(format!("cannot create it: {e}")))?;
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| error(format!("cannot read it: {e}")))?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .ok_or_else(|| error("it holds no AGE-SECRET-KEY line".into()))?;
        let identity = age::x25519::Identity::from_str(line)
            .map_err(|e| error(format!("its key is not valid: {e}")))?;
        let recipient = identity.to_public();
        let instance_id = crate::store::hex(&Sha256::digest(
            format!("slipway instance\0{recipient}").as_bytes(),
        ))[..16]
            .to_string();
        Ok(Sealer {
            cipher: XChaCha20Poly1305::new(&seal_key(&identity).into()),
            identity,
            recipient,
            with_age: false,
            instance_id,
            path: path.to_path_buf(),
        })
    }

    /// This key, sealing values as v1 (age) from now on: for a state that replicas of the
    /// previous release may read (see the module's docs).
    pub(crate) fn sealing_with_age(mut self) -> Sealer {
        self.with_age = true;
        self
    }

    /// A stable identifier of this home, 16 hex characters, safe to show.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// `sealed:v2:` + base64 of a random nonce and the ciphertext of `plaintext`, or a v1
    /// value if this sealer seals with age (see the module's docs).
    pub fn seal(&self, plaintext: &[u8]) -> String {
        if self.with_age {
            let age_file = age::encrypt(&self.recipient, plaintext)
                .expect("encrypting to an x25519 recipient into memory cannot fail");
            return format!(
                "{PREFIX_AGE}{}",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(age_file)
            );
        }
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce)
            .expect("the operating system's random generator fails only on a broken system");
        let ciphertext = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), plaintext)
            .expect("XChaCha20-Poly1305 seals any plaintext that fits in memory");
        let mut body = nonce.to_vec();
        body.extend_from_slice(&ciphertext);
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(body)
        )
    }

    /// The plaintext of a value [`Sealer::seal`] made with this key (either version).
    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, String> {
        let (body, age) = match (sealed.strip_prefix(PREFIX), sealed.strip_prefix(PREFIX_AGE)) {
            (Some(body), _) => (body, false),
            (None, Some(body)) => (body, true),
            (None, None) if is_sealed(sealed) => {
                // `sealed:NAME`, at most 24 characters of it (the text is the database's).
                let format: String = sealed
                    .split(':')
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(":")
                    .chars()
                    .take(24)
                    .collect();
                return Err(format!(
                    "it is sealed in a format this version of Slipway does not know \
                     ({format:?}); a newer Slipway wrote it"
                ));
            }
            (None, None) => return Err("the value is not sealed".to_owned()),
        };
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(body)
            .map_err(|e| format!("the sealed value is not base64: {e}"))?;
        let opened = if age {
            age::decrypt(&self.identity, &bytes).map_err(|e| e.to_string())
        } else if bytes.len() < NONCE_BYTES {
            Err("it is too short to be sealed".to_owned())
        } else {
            let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
            self.cipher
                .decrypt(XNonce::from_slice(nonce), ciphertext)
                .map_err(|_| "it is not authentic under this key".to_owned())
        };
        opened.map_err(|e| {
            format!(
                "it cannot be opened with {} ({e}); was state.db copied from another home \
                 without its state.key?",
                self.path.display()
            )
        })
    }

    /// A hash of `data` keyed with this home's key: comparable between runs, but it does not
    /// let anyone without the key test guesses of a secret inside `data`.
    pub fn keyed_hash(&self, data: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(self.identity.to_string().expose_secret().as_bytes());
        h.update([0]);
        h.update(data);
        crate::store::hex(&h.finalize())
    }

    /// An HMAC-SHA256 of `data` under a key derived from this home's key for `purpose` alone
    /// (a tag made for one purpose is no tag for another). Every replica of a shared state
    /// holds the same key (`store::shared_key` checks), so a tag one makes, all accept.
    pub fn mac(&self, purpose: &str, data: &[u8]) -> [u8; 32] {
        self.keyed(purpose)
            .chain_update(data)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `tag` is [`Sealer::mac`] of `data` for `purpose`, compared in constant time.
    pub fn verify_mac(&self, purpose: &str, data: &[u8], tag: &[u8]) -> bool {
        self.keyed(purpose)
            .chain_update(data)
            .verify_slice(tag)
            .is_ok()
    }

    fn keyed(&self, purpose: &str) -> Hmac<Sha256> {
        let mut key = Sha256::new();
        key.update(b"slipway mac key\0");
        key.update(self.identity.to_string().expose_secret().as_bytes());
        key.update([0]);
        key.update(purpose.as_bytes());
        <Hmac<Sha256> as KeyInit>::new_from_slice(&key.finalize())
            .expect("HMAC takes a key of any length")
    }
}

/// The v2 key: SHA-256 of its own label and the identity, used for nothing else (unlike
/// [`Sealer::mac`]'s keys, whose purposes callers name).
fn seal_key(identity: &age::x25519::Identity) -> [u8; 32] {
    let mut key = Sha256::new();
    key.update(b"slipway seal key v2\0");
    key.update(identity.to_string().expose_secret().as_bytes());
    key.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mac_holds_for_its_purpose_and_key_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Sealer::load_or_create(&dir.path().join("a.key")).expect("a");
        let b = Sealer::load_or_create(&dir.path().join("b.key")).expect("b");
        let tag = a.mac("links", b"pr-1");
        assert!(a.verify_mac("links", b"pr-1", &tag));
        assert!(!a.verify_mac("links", b"pr-2", &tag), "other data");
        assert!(!a.verify_mac("cookies", b"pr-1", &tag), "another purpose");
        assert!(!b.verify_mac("links", b"pr-1", &tag), "another home's key");
        assert!(!a.verify_mac("links", b"pr-1", &tag[..31]), "a cut tag");
    }

    #[test]
    fn a_key_is_made_once_and_seals_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.key");
        let a = Sealer::load_or_create(&path).expect("created");
        let b = Sealer::load_or_create(&path).expect("read back");
        assert_eq!(a.instance_id(), b.instance_id());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is private to its owner");
        let sealed = a.seal(b"hunter2-password");
        assert!(sealed.starts_with(PREFIX));
        assert!(!sealed.contains("hunter2"));
        assert_eq!(b.open(&sealed).expect("opens"), b"hunter2-password");
        assert_eq!(a.keyed_hash(b"x"), b.keyed_hash(b"x"));

        let other = Sealer::load_or_create(&dir.path().join("other.key")).expect("another");
        assert_ne!(other.instance_id(), a.instance_id());
        let e = other.open(&sealed).expect_err("another key cannot open it");
        assert!(e.contains("state.key"), "{e}");
        assert_ne!(other.keyed_hash(b"x"), a.keyed_hash(b"x"));
    }

    #[test]
    fn each_seal_is_new_and_a_changed_or_cut_value_does_not_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sealer = Sealer::load_or_create(&dir.path().join("state.key")).expect("key");
        let (a, b) = (sealer.seal(b"same"), sealer.seal(b"same"));
        assert_ne!(a, b, "a fresh nonce each time");
        assert_eq!(sealer.open(&b).expect("opens"), b"same");
        let body = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(a.strip_prefix(PREFIX).expect("v2"))
            .expect("base64");
        let reseal = |bytes: &[u8]| {
            format!(
                "{PREFIX}{}",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
            )
        };
        for at in [0, NONCE_BYTES, body.len() - 1] {
            let mut changed = body.clone();
            changed[at] ^= 1;
            let e = sealer.open(&reseal(&changed)).expect_err("a changed byte");
            assert!(e.contains("not authentic"), "{e}");
        }
        for cut in [0, NONCE_BYTES - 1, NONCE_BYTES, body.len() - 1] {
            assert!(sealer.open(&reseal(&body[..cut])).is_err(), "cut at {cut}");
        }
        for hostile in [
            "",
            "sealed:",
            "sealed:v2:",
            "sealed:v2:!!",
            "sealed:v1:AAAA",
            "{}",
        ] {
            assert!(sealer.open(hostile).is_err(), "{hostile:?}");
        }
        assert!(!is_sealed("{\"sealed:v2:\": 1}") && is_sealed(&a));
        let newer = format!("sealed:v3:{}", "A".repeat(100));
        assert!(is_sealed(&newer), "a newer format is sealed, not JSON");
        let e = sealer.open(&newer).expect_err("a newer format");
        assert!(
            e.contains("\"sealed:v3\"") && e.contains("newer Slipway"),
            "{e}"
        );
    }

    /// A value an earlier version sealed with age to the key's recipient still opens.
    #[test]
    fn a_value_sealed_with_age_before_v2_still_opens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.key");
        let sealer = Sealer::load_or_create(&path).expect("key");
        let text = std::fs::read_to_string(&path).expect("read");
        let line = text
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .expect("key line");
        let recipient = age::x25519::Identity::from_str(line)
            .expect("identity")
            .to_public();
        let age_file = age::encrypt(&recipient, b"from v1").expect("age encrypts");
        let v1 = format!(
            "{PREFIX_AGE}{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(age_file)
        );
        assert!(is_sealed(&v1));
        assert_eq!(sealer.open(&v1).expect("opens"), b"from v1");
        // And a sealer for a state older replicas read seals so, and opens both.
        let with_age = Sealer::load_or_create(&path)
            .expect("key")
            .sealing_with_age();
        let sealed = with_age.seal(b"for v1 readers");
        assert!(sealed.starts_with(PREFIX_AGE), "{sealed}");
        assert_eq!(sealer.open(&sealed).expect("opens"), b"for v1 readers");
        assert_eq!(with_age.open(&sealer.seal(b"v2")).expect("opens"), b"v2");
        let other = Sealer::load_or_create(&dir.path().join("other.key")).expect("another");
        let e = other.open(&v1).expect_err("another key cannot open it");
        assert!(e.contains("other.key"), "{e}");
    }
}
