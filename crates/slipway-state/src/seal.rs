//! Values that must not be readable from the database file: secret outputs (generated
//! passwords, URLs holding them) and the resolved configurations that carry secrets are stored
//! sealed, encrypted with age to a key kept beside the database (`<home>/state.key`, mode 0600).
//!
//! This protects copies of `state.db` (backups, a bug report, `sqlite3 .dump`, `grep`) rather
//! than a host where an attacker can already read the home directory: the key lives there too,
//! as it must for the engine to work unattended.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::StateError;

/// The prefix of a sealed column value.
pub(crate) const PREFIX: &str = "sealed:v1:";

/// Seals and opens values with the home's key.
pub struct Sealer {
    identity: age::x25519::Identity,
    recipient: age::x25519::Recipient,
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
            identity,
            recipient,
            instance_id,
            path: path.to_path_buf(),
        })
    }

    /// A stable identifier of this home, 16 hex characters, safe to show.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// `PREFIX` + base64 of the age ciphertext of `plaintext`.
    pub fn seal(&self, plaintext: &[u8]) -> String {
        let ciphertext = age::encrypt(&self.recipient, plaintext)
            .expect("encrypting to an x25519 recipient into memory cannot fail");
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(ciphertext)
        )
    }

    /// The plaintext of a value [`Sealer::seal`] made with this key.
    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, String> {
        let body = sealed
            .strip_prefix(PREFIX)
            .ok_or("the value is not sealed")?;
        let ciphertext = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(body)
            .map_err(|e| format!("the sealed value is not base64: {e}"))?;
        age::decrypt(&self.identity, &ciphertext).map_err(|e| {
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
}
