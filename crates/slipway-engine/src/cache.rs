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
/// What the kept stacks may hold together, in YAML values (`Loaded::expanded`), a value
/// counting too for every [`BYTES_PER_VALUE`] bytes of text (`Loaded::expanded_bytes`): a
/// stack of thousands of manifests holds millions of values, one of a few aliased strings
/// hundreds of megabytes, and 64 of either would be gigabytes. The oldest go first; the
/// newest is kept whatever its size.
const WEIGHT: usize = 8_000_000;
/// See [`WEIGHT`]: about what a value takes.
const BYTES_PER_VALUE: usize = 64;

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
        let weight = |cached: &Cached| {
            let loaded = &cached.loaded.loaded;
            loaded
                .expanded
                .saturating_add(loaded.expanded_bytes / BYTES_PER_VALUE)
        };
        let mut total = entries.iter().map(|(_, c)| weight(c)).sum::<usize>() + weight(&cached);
        while entries.len() >= CAPACITY || (total > WEIGHT && !entries.is_empty()) {
            if let Some((_, oldest)) = entries.pop_front() {
                total -= weight(&oldest);
            }
        }
        entries.push_back(((sha.to_string(), folder.to_string()), cached));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expanded_to(sha: &str, expanded: usize) -> Arc<Cached> {
        text_of(sha, expanded, 0)
    }

    fn text_of(sha: &str, expanded: usize, expanded_bytes: usize) -> Arc<Cached> {
        Arc::new(Cached {
            loaded: LoadedCommit {
                commit: slipway_git::Commit {
                    sha: sha.to_owned(),
                    summary: String::new(),
                    author: String::new(),
                    time: 0,
                },
                loaded: slipway_core::stack::Loaded {
                    stack: None,
                    diagnostics: Vec::new(),
                    expanded,
                    expanded_bytes,
                },
                entry: "slipway.yaml".to_owned(),
                folder: String::new(),
            },
            sources: BTreeMap::new(),
        })
    }

    /// A few big stacks (branches of thousands of manifests each) push the oldest out: the
    /// cache holds stacks of millions of values, not 64 of them.
    #[test]
    fn the_cache_is_bounded_by_what_its_stacks_hold() {
        let cache = CommitCache::default();
        for (sha, expanded) in [("a", 10), ("b", WEIGHT / 2), ("c", WEIGHT / 2)] {
            cache.put(sha, "", expanded_to(sha, expanded));
        }
        assert!(cache.get("a", "").is_none(), "the oldest went");
        assert!(cache.get("b", "").is_some() && cache.get("c", "").is_some());
        // The newest is kept, however big.
        cache.put("d", "", expanded_to("d", WEIGHT * 2));
        assert!(cache.get("d", "").is_some());
        assert!(cache.get("c", "").is_none());
        // Small ones are kept by the number.
        for i in 0..CAPACITY + 1 {
            let sha = format!("s{i}");
            cache.put(&sha, "", expanded_to(&sha, 1));
        }
        assert!(cache.get("s0", "").is_none());
        assert!(cache.get(&format!("s{CAPACITY}"), "").is_some());
        // Few values, each a long string's copy: weighed by their text too.
        cache.put("t", "", text_of("t", 10, WEIGHT * BYTES_PER_VALUE));
        assert!(cache.get("t", "").is_some());
        assert!(
            cache.get(&format!("s{CAPACITY}"), "").is_none(),
            "pushed out"
        );
    }
}
