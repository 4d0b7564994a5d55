//! Loaded stacks by commit (Argo CD's repo-server idea): a commit never changes, so what it
//! loads to never does either. A controller reconciling a thousand environments at one
//! commit reads and parses it once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::source::LoadedCommit;

/// One commit's stack, loaded, with its resources' source hashes.
pub struct Cached {
    /// The stack loaded from the commit.
    pub loaded: LoadedCommit,
    /// The source hash of each resource that runs repository code.
    pub sources: BTreeMap<String, String>,
}

/// How many (commit, folder) pairs are kept; the oldest goes first.
const CAPACITY: usize = 64;

/// `(commit, folder)`: the cache's key.
type Key = (String, String);

#[derive(Default)]
pub(crate) struct CommitCache {
    entries: Mutex<VecDeque<(Key, Arc<Cached>)>>,
}

impl CommitCache {
    pub(crate) fn get(&self, sha: &str, folder: &str) -> Option<Arc<Cached>> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .iter()
            .find(|((s, f), _)| s == sha && f == folder)
            .map(|(_, c)| c.clone())
    }

    pub(crate) fn put(&self, sha: &str, folder: &str, cached: Arc<Cached>) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.iter().any(|((s, f), _)| s == sha && f == folder) {
            return;
        }
        if entries.len() >= CAPACITY {
            entries.pop_front();
        }
        entries.push_back(((sha.to_string(), folder.to_string()), cached));
    }
}
