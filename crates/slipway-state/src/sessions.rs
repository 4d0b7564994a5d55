//! The web UI's browser sessions (not the database's own sessions): a cookie the server set
//! in exchange for an API token, kept in the state so that every replica sharing it answers
//! a session started on another, and a restarted server keeps them.
//!
//! # Guarantees
//! - A session is stored by the SHA-256 of its id ([`crate::hash_token`]), never by the id:
//!   these methods take the id and hash it themselves, so whoever reads the database cannot
//!   present a session. (Its CSRF token is stored as it is: worth nothing without the id.)
//! - [`Store::session`] answers only a session that has not ended at the time it is given.
//! - The table stays bounded: [`Store::start_session`] deletes the ended sessions, and past
//!   `keep` sessions drops those that end soonest, in the same transaction as its insert, so
//!   a flood of logins cannot grow it without end, whichever replica they reach.
//! - Sessions are not an environment's state: their writes never prove a lease, so a
//!   replica that holds none starts and ends them. They do prove the schema (as every write
//!   does): a replica that stepped aside for a newer Slipway refuses them.
//!
//! # Caveats
//! - A session is bound to its token by the token's hash only: whether that token is still
//!   valid, and its role, is the caller's to look up on every request.
//! - Times are the caller's clocks (`now`), as for tokens: replicas whose clocks disagree
//!   end a session that much apart.
//! - `slipway state migrate` does not copy sessions (users log in again on the new state);
//!   `slipway state backup` copies the whole file, sessions included, each still ending at
//!   its time and with its token.

use crate::StateError;
use crate::db::{DbError, Exec, Row, params};
use crate::store::{Store, sql, sql_limit};
use crate::tokens::hash_token;

/// One browser session as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The hash of the API token it was started with ([`crate::hash_token`]).
    pub token_hash: String,
    /// What a mutating call made with the session must send as its CSRF token.
    pub csrf: String,
    /// When it started, unix milliseconds.
    pub created_at: i64,
    /// When it ends, unix milliseconds.
    pub expires_at: i64,
}

fn from_row(row: &Row) -> Result<SessionRecord, DbError> {
    Ok(SessionRecord {
        token_hash: row.get(0)?,
        csrf: row.get(1)?,
        created_at: row.get(2)?,
        expires_at: row.get(3)?,
    })
}

/// The most sessions one token keeps: a login past it ends that token's oldest session.
pub const SESSIONS_PER_TOKEN: i64 = 32;

impl Store {
    /// Records `session` under the hash of `id`, as of its `created_at`: first deletes the
    /// sessions ended by then, its token's oldest past [`SESSIONS_PER_TOKEN`] less one and,
    /// when `keep` or more remain, the tenth of `keep` (at least as many as exceed it) that
    /// end soonest; all in one transaction.
    ///
    /// # Errors
    /// [`StateError::Database`] when `id` is already recorded (ids are random: never in
    /// practice) or the database fails; [`StateError::SchemaMoved`] on a replica that
    /// stepped aside.
    pub fn start_session(
        &self,
        id: &str,
        session: &SessionRecord,
        keep: usize,
    ) -> Result<(), StateError> {
        let id_hash = hash_token(id);
        let now = session.created_at;
        let keep = sql_limit(keep);
        self.conn().transaction(&["browser_sessions"], |tx| {
            tx.execute(
                "DELETE FROM browser_sessions WHERE expires_at <= ?1",
                params![now],
            )
            .map_err(sql("delete ended browser sessions"))?;
            // One token's logins make room among its own sessions first: at the bound, the
            // sessions that end soonest go, and a token that could log in without end (a
            // viewer's) would otherwise push everyone else's out.
            tx.execute(
                "DELETE FROM browser_sessions WHERE token_hash = ?1 AND id_hash NOT IN \
                 (SELECT id_hash FROM browser_sessions WHERE token_hash = ?1 \
                 ORDER BY created_at DESC, id_hash DESC LIMIT ?2)",
                params![session.token_hash.as_str(), SESSIONS_PER_TOKEN - 1],
            )
            .map_err(sql("drop a token's oldest browser sessions"))?;
            let count: i64 = tx
                .query_one("SELECT COUNT(*) FROM browser_sessions", params![], |row| {
                    row.get(0)
                })
                .map_err(sql("count browser sessions"))?;
            if count >= keep {
                // A tenth at once, so that logins at the bound do not each delete a row.
                let drop = (count - keep + 1).max(keep / 10).max(1);
                tx.execute(
                    "DELETE FROM browser_sessions WHERE id_hash IN (SELECT id_hash \
                     FROM browser_sessions ORDER BY expires_at, id_hash LIMIT ?1)",
                    params![drop],
                )
                .map_err(sql("drop the browser sessions that end soonest"))?;
            }
            tx.execute(
                "INSERT INTO browser_sessions (id_hash, token_hash, csrf, created_at, \
                 expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    id_hash,
                    session.token_hash.as_str(),
                    session.csrf.as_str(),
                    session.created_at,
                    session.expires_at
                ],
            )
            .map_err(sql("record a browser session"))?;
            Ok(())
        })
    }

    /// The session of `id`, if there is one that has not ended at `now`.
    pub fn session(&self, id: &str, now: i64) -> Result<Option<SessionRecord>, StateError> {
        self.conn()
            .query_opt(
                "SELECT token_hash, csrf, created_at, expires_at FROM browser_sessions \
                 WHERE id_hash = ?1 AND expires_at > ?2",
                params![hash_token(id), now],
                from_row,
            )
            .map_err(sql("look up a browser session"))
    }

    /// Ends the session of `id`, for every replica; returns whether there was one.
    pub fn end_session(&self, id: &str) -> Result<bool, StateError> {
        self.conn()
            .execute(
                "DELETE FROM browser_sessions WHERE id_hash = ?1",
                params![hash_token(id)],
            )
            .map(|deleted| deleted > 0)
            .map_err(sql("end a browser session"))
    }
}
