//! Slipway's state store: what the engine knows about environments, deployments, resources,
//! allocated ports and events, kept in one embedded SQLite database (`<home>/state.db`).
//!
//! Start with [`Store::open`]; every other operation is a method on [`Store`], grouped by the
//! record it reads or writes ([`EnvironmentRecord`], [`DeploymentRecord`], [`ResourceRecord`],
//! ports, [`EventRecord`]), and the web UI's browser sessions ([`SessionRecord`]).
//!
//! # Guarantees
//! - Every write that touches more than one row runs in one SQLite transaction, so a process
//!   killed at any instant leaves the database as it was before or after that write, never
//!   between (WAL journal, `synchronous=NORMAL`: a power loss may lose the last commits, never
//!   consistency).
//! - Deleting an environment removes its resources and ports with it (foreign keys with
//!   `ON DELETE CASCADE`); its deployments and events stay, as history.
//! - A port allocated to `(environment, resource, name)` is returned again on every later
//!   allocation until it is released: previews keep their URLs across deployments.
//! - The schema is versioned by `PRAGMA user_version`; a database written by a newer Slipway is
//!   refused rather than misread.
//!
//! # Assumptions
//! - Times are unix milliseconds chosen by the caller (`at: i64`), so the clock can be injected;
//!   [`now_ms`] is the real clock.
//! - Statuses and kinds are the enums of `slipway_core::vocab`, stored as their words; a row
//!   holding a word outside its vocabulary is refused when read ([`StateError::UnknownWord`]),
//!   never read as a default.
//!
//! SQL stays inside this crate: callers see plain records (serde-serializable) and
//! [`StateError`].
#![deny(missing_docs)]

mod audit;
mod db;
mod deployments;
mod environments;
mod error;
mod events;
mod handoffs;
mod identities;
mod leases;
mod notifications;
mod notify;
mod ports;
mod pulls;
mod resources;
mod retention;
mod schema;
mod seal;
mod sessions;
mod slots;
mod store;
mod tokens;
mod transfer;

pub use pulls::{LockRecord, MergedCommit, PULL_REQUEST_STATES, PullRequestRecord, Pushers};
pub use seal::Sealer;

pub use audit::{AUDIT_OUTCOMES, AuditRecord, NewAudit};
pub use db::{DbError, Dialect};
pub use deployments::{DeploymentRecord, DeploymentRef, NewDeployment, OperationEvent};
pub use environments::{EnvironmentRecord, Follows};
pub use error::StateError;
pub use events::{EventQuery, EventRecord};
pub use handoffs::HandoffRecord;
pub use leases::{Fence, Lease, ReplicaRecord};
pub use notifications::{NewNotification, NotifyStep, PendingNotification};
pub use notify::{Listener, Wake};
pub use resources::{ResourceRecord, ResourceSummaries, ResourceSummary};
pub use retention::{Pruned, Retention};
pub use schema::SCHEMA_VERSION;
pub use sessions::{SESSIONS_PER_TOKEN, SessionRecord};
pub use slots::{Admitted, Caps, Promoted, queue_positions};
pub use store::Store;
pub use tokens::{ROLES, TOKEN_PREFIX, TokenRecord, hash_token, new_token};
pub use transfer::Copied;

/// The current time in unix milliseconds, the unit of every timestamp in the store.
///
/// A clock set before 1970 gives a negative number rather than an error: the store only
/// compares and records times, it never rejects them.
pub fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}
