//! Stack files in memory: a map of paths to contents, written into a repository (or any
//! directory) in one call, and committed.

use std::collections::BTreeMap;
use std::path::Path;

use crate::git::Repo;

/// The files of a stack, by path relative to the repository's root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Files(pub BTreeMap<String, String>);

impl Files {
    /// No files.
    pub fn new() -> Files {
        Files::default()
    }

    /// With `rel` holding `content`.
    pub fn with(mut self, rel: &str, content: &str) -> Files {
        self.0.insert(rel.to_owned(), content.to_owned());
        self
    }

    /// Writes every file under `dir` (parents made).
    pub fn write_to(&self, dir: &Path) {
        for (rel, content) in &self.0 {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
            std::fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        }
    }

    /// Writes every file into `repo` and commits them; returns the commit.
    pub fn commit(&self, repo: &Repo, message: &str) -> String {
        self.write_to(&repo.path);
        repo.commit(message)
    }
}

/// A stack file named `stack` whose environments are `main`, tracking the branch `main`, and
/// the family `previews`, generated for every `feature/*` branch and living 72 hours; `rest`
/// (top-level YAML: `resources:` and whatever else the stack declares) follows them.
pub fn main_and_previews(stack: &str, rest: &str) -> String {
    format!(
        "version: 1\nstack: {stack}\nenvironments:\n  main: {{ track: main }}\n  previews:\n    \
         generate: {{ branches: [\"feature/*\"] }}\n    ttl: 72h\n{rest}"
    )
}
