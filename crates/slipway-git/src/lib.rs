//! Slipway's read side of git: resolve a reference to a commit, then read files, list the
//! tree and export it at that commit, without a checkout and without ever writing to the
//! repository (a remote is mirrored into a cache directory first).
//!
//! Start with the [`Source`] trait, which the engine depends on, and [`GitRepository::open`],
//! its implementation: read in process (no `git` process per read), with the `git` CLI for
//! clone and fetch. [`remove_export`] deletes what [`Source::export`] wrote.
//!
//! # Guarantees
//! - Nothing from the repository or the caller reaches git as an option: specs and references
//!   starting with `-` are refused, and `--`/`--end-of-options` end options where git takes
//!   them. Hooks never run; only the file, https and ssh protocols are allowed.
//! - Nothing read can name a file outside the repository: paths with `..`, absolute paths and
//!   symlinks leaving the tree are refused ([`GitError::UnsafePath`],
//!   [`GitError::SymlinkEscapes`]).
//! - An export appears complete or not at all, read-only, and is never modified afterwards.
//!
//! # Assumptions
//! A Unix system (exports carry Unix modes and symlinks) with git 2.30 or newer on `PATH`.
//! Repository paths are UTF-8; a tree with another path is refused. A repository gitoxide can
//! open (not reftable refs; a partial clone's missing objects are not fetched on demand).
#![deny(missing_docs)]

mod command;
mod error;
mod export;
mod listing;
mod objects;
mod path;
mod repository;
mod source;
mod spec;
mod store;
mod worktree;

pub use error::GitError;
pub use export::remove_export;
pub use listing::{MAX_EXPORT_BYTES, MAX_TREE_ENTRIES};
pub use repository::{GitRepository, names_a_branch};
pub use source::{Branch, Commit, EntryKind, Source, TreeEntry};
pub use worktree::{Tracked, tracked_under};
