//! API tokens: who may call the controller's HTTP API, and with which role.
//!
//! Only a token's SHA-256 is stored. Tokens are 256 random bits, so a plain (unsalted) hash is
//! enough: there is no dictionary to try, and an exact-match lookup by hash stays one index
//! probe. Whoever reads `state.db` learns which tokens exist, never a token itself.

use crate::db::{DbError, Exec, Row, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::StateError;
use crate::store::{Store, one_of, sql};

/// Roles, weakest first: each may do everything the ones before it may.
///
/// `viewer` reads; `developer` also changes ad-hoc and generated environments and creates
/// ad-hoc ones; `deployer` changes every environment; `admin` also manages tokens.
pub const ROLES: &[&str] = &["viewer", "developer", "deployer", "admin"];

/// What every token starts with, so that one pasted in the wrong place is recognisable (and
/// secret scanners can find it).
pub const TOKEN_PREFIX: &str = "slw_";

/// One API token as the store knows it. The token itself is never stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Increasing with time; never reused.
    pub id: i64,
    /// One of [`ROLES`].
    pub role: String,
    /// Who or what holds it, e.g. `alice` or `ci`; recorded as the author of what it does.
    pub name: String,
    /// When it was made, unix milliseconds.
    pub created_at: i64,
    /// When it was last used, unix milliseconds.
    pub last_used_at: Option<i64>,
    /// When it was revoked; a revoked token is refused.
    pub revoked_at: Option<i64>,
}

impl TokenRecord {
    /// Whether the token may still be used.
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }
}

/// A new token: [`TOKEN_PREFIX`] and 32 bytes of the operating system's randomness in
/// unpadded base64url (47 characters in all). Store only its [`hash_token`].
///
/// # Panics
/// When the operating system has no random source to read (`getrandom` fails only on
/// platforms without one, or before the kernel's pool is initialised at early boot). A token
/// made from anything weaker would be worse than none.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .expect("the operating system's random source is readable (getrandom)");
    format!("{TOKEN_PREFIX}{}", base64url(&bytes))
}

/// The SHA-256 of `token` in lowercase hex: what [`Store::create_token`] keeps and
/// [`Store::token_by_hash`] looks up.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(64);
    for byte in digest.iter() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";
const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Unpadded base64url (RFC 4648 §5). A dozen lines rather than a dependency.
fn base64url(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        // 2, 3 or 4 characters for 1, 2 or 3 bytes.
        for i in 0..=chunk.len() {
            let sextet = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(BASE64URL[sextet as usize]));
        }
    }
    out
}

const COLUMNS: &str = "id, role, name, created_at, last_used_at, revoked_at";

fn from_row(row: &Row) -> Result<TokenRecord, DbError> {
    Ok(TokenRecord {
        id: row.get(0)?,
        role: row.get(1)?,
        name: row.get(2)?,
        created_at: row.get(3)?,
        last_used_at: row.get(4)?,
        revoked_at: row.get(5)?,
    })
}

impl Store {
    /// Records a token by its [`hash_token`], with a role and the name of its holder, and
    /// returns its id.
    ///
    /// # Errors
    /// [`StateError::InvalidValue`] for a role outside [`ROLES`] or an empty name;
    /// [`StateError::Database`] when the hash is already recorded.
    pub fn create_token(
        &self,
        hash: &str,
        role: &str,
        name: &str,
        at: i64,
    ) -> Result<i64, StateError> {
        one_of("token role", role, ROLES)?;
        if name.trim().is_empty() {
            return Err(StateError::InvalidValue {
                field: "token name",
                value: name.to_owned(),
                allowed: &["a non-empty name of who holds the token"],
            });
        }
        self.conn()
            .query_one(
                "INSERT INTO tokens (hash, role, name, created_at) VALUES (?1, ?2, ?3, ?4) \
                 RETURNING id",
                params![hash, role, name, at],
                |row| row.get(0),
            )
            .map_err(sql(format!("record a {role} token for {name}")))
    }

    /// The token whose hash is `hash`, revoked or not (callers check
    /// [`TokenRecord::is_active`]).
    pub fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StateError> {
        self.conn()
            .query_opt(
                &format!("SELECT {COLUMNS} FROM tokens WHERE hash = ?1"),
                params![hash],
                from_row,
            )
            .map_err(sql("look up a token"))
    }

    /// Records that token `id` was used at `at`.
    ///
    /// # Errors
    /// [`StateError::NotFound`] for an unknown id.
    pub fn touch_token(&self, id: i64, at: i64) -> Result<(), StateError> {
        let updated = self
            .conn()
            .execute(
                "UPDATE tokens SET last_used_at = ?2 WHERE id = ?1",
                params![id, at],
            )
            .map_err(sql(format!("record the use of token {id}")))?;
        if updated == 0 {
            return Err(StateError::NotFound {
                what: "token",
                key: id.to_string(),
            });
        }
        Ok(())
    }

    /// Revokes token `id` as of `at`. Revoking it again keeps the first time.
    ///
    /// # Errors
    /// [`StateError::NotFound`] for an unknown id.
    pub fn revoke_token(&self, id: i64, at: i64) -> Result<(), StateError> {
        let updated = self
            .conn()
            .execute(
                "UPDATE tokens SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1",
                params![id, at],
            )
            .map_err(sql(format!("revoke token {id}")))?;
        if updated == 0 {
            return Err(StateError::NotFound {
                what: "token",
                key: id.to_string(),
            });
        }
        Ok(())
    }

    /// Every token, revoked ones included, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StateError> {
        self.conn()
            .query(
                &format!("SELECT {COLUMNS} FROM tokens ORDER BY id"),
                params![],
                from_row,
            )
            .map_err(sql("list tokens"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc_4648_test_vectors_without_padding() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(
                base64url(input.as_bytes()),
                expected,
                "base64url of {input:?}"
            );
        }
        assert_eq!(
            base64url(&[0xfb, 0xff]),
            "-_8",
            "the url alphabet uses - and _"
        );
    }

    #[test]
    fn a_new_token_is_prefixed_url_safe_and_unique() {
        let a = new_token();
        let b = new_token();
        assert_eq!(
            a.len(),
            TOKEN_PREFIX.len() + 43,
            "32 bytes are 43 characters"
        );
        assert!(a.starts_with(TOKEN_PREFIX), "tokens are recognisable: {a}");
        assert!(
            a[TOKEN_PREFIX.len()..]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "tokens need no quoting in a header or a shell: {a}"
        );
        assert_ne!(a, b, "two tokens are never the same");
    }

    #[test]
    fn the_hash_of_a_token_is_its_sha256_in_hex() {
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "the SHA-256 test vector of `abc`"
        );
    }
}
