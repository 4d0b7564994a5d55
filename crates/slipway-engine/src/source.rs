//! A commit of the repository as the core's [`Files`], and loading a stack from it.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use slipway_core::stack::{FileError, Files, LoadLimits, Loaded};
use slipway_core::types::SourceDir;
use slipway_git::{Commit, GitError, Source, TreeEntry};

/// Largest file of a stack definition.
pub const MAX_STACK_FILE: u64 = 4 * 1024 * 1024;

/// The files of one commit, read through a [`Source`].
pub struct CommitFiles<'a> {
    /// Where to read.
    source: &'a dyn Source,
    /// The full sha.
    commit: &'a str,
    /// The first read that failed for a reason of the moment, not of the commit's content (a
    /// fetch still writing the commit's objects, an I/O error, git that could not start).
    failed: std::cell::RefCell<Option<GitError>>,
}

impl<'a> CommitFiles<'a> {
    /// The files of `commit` (a full sha) in `source`.
    pub fn new(source: &'a dyn Source, commit: &'a str) -> CommitFiles<'a> {
        CommitFiles {
            source,
            commit,
            failed: std::cell::RefCell::new(None),
        }
    }

    /// The first read that failed for a reason of the moment: what the commit loads to is then
    /// unknown, not what the failure made of it.
    pub fn failed(self) -> Option<GitError> {
        self.failed.into_inner()
    }

    /// `error` as the core sees it, kept when it is of the moment.
    fn seen(&self, error: GitError) -> FileError {
        let text = error.to_string();
        if !of_the_commit(&error) {
            self.failed.borrow_mut().get_or_insert(error);
        }
        FileError::Other(text)
    }
}

/// Whether `error` says what the commit holds (and so what it loads to, for good), rather
/// than what reading it met this time.
fn of_the_commit(error: &GitError) -> bool {
    matches!(
        error,
        GitError::TooLarge { .. }
            | GitError::UnsafePath { .. }
            | GitError::SymlinkEscapes { .. }
            | GitError::TooManySymlinks { .. }
            | GitError::TreeTooLarge { .. }
            | GitError::NotAFile { .. }
            | GitError::PathNotFound { .. }
            // An object of another kind than its tree entry says (a tree where a blob is).
            | GitError::Protocol { .. }
    )
}

impl Files for CommitFiles<'_> {
    fn read(&self, path: &str) -> Result<String, FileError> {
        match self.source.read_file(self.commit, path, MAX_STACK_FILE) {
            Ok(Some(bytes)) => String::from_utf8(bytes).map_err(|_| FileError::NotUtf8),
            Ok(None) => Err(FileError::NotFound),
            Err(GitError::TooLarge { size, limit, .. }) => Err(FileError::TooLarge { size, limit }),
            Err(e @ (GitError::UnsafePath { .. } | GitError::SymlinkEscapes { .. })) => {
                Err(FileError::Unsafe(e.to_string()))
            }
            Err(e) => Err(self.seen(e)),
        }
    }

    fn list(&self) -> Result<Vec<String>, FileError> {
        self.source
            .list_files(self.commit, "")
            .map(|entries| {
                entries
                    .into_iter()
                    .filter(|e| e.kind != slipway_git::EntryKind::Submodule)
                    .map(|e| e.path)
                    .collect()
            })
            .map_err(|e| self.seen(e))
    }
}

/// A stack loaded from one commit.
pub struct LoadedCommit {
    /// The commit.
    pub commit: Commit,
    /// The stack and its diagnostics.
    pub loaded: Loaded,
    /// The entry file, e.g. `slipway.yaml` or `deploy/slipway.yaml`.
    pub entry: String,
    /// The stack's folder inside the repository (`""` for the root).
    pub folder: String,
}

impl LoadedCommit {
    /// The stack when it loaded without errors; otherwise the first error, rendered
    /// `file:line:col: message`, for a one-line report.
    pub fn valid_stack(&self) -> Result<&slipway_core::stack::Stack, String> {
        match self
            .loaded
            .stack
            .as_ref()
            .filter(|_| !self.loaded.has_errors())
        {
            Some(stack) => Ok(stack),
            None => Err(self
                .loaded
                .diagnostics
                .iter()
                .find(|d| d.is_error())
                .map(|d| d.to_string())
                .unwrap_or_else(|| format!("{} could not be read", self.entry))),
        }
    }
}

/// Normalizes the stack's folder (`--path`, `[repo] path`) into a folder prefix (`""` or `deploy/`).
pub fn folder_of(path: &str) -> Result<String, String> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() || trimmed == "." {
        return Ok(String::new());
    }
    slipway_core::stack::check_relative_path(trimmed)
        .map_err(|why| format!("the folder `{path}` is refused: {why}"))?;
    let parts: Vec<&str> = trimmed
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    Ok(format!("{}/", parts.join("/")))
}

/// Resolves `reference` and loads the stack at that commit.
pub fn load_commit(
    source: &dyn Source,
    reference: &str,
    folder: &str,
) -> Result<LoadedCommit, GitError> {
    let commit = source.resolve(reference)?;
    load_at(source, commit, folder)
}

/// [`load_commit`] for a tracked ref (the controller's default ref, an environment's
/// `track:`): the branch of that name, never a tag named like it
/// ([`Source::resolve_tracked`]).
pub fn load_tracked(
    source: &dyn Source,
    reference: &str,
    folder: &str,
) -> Result<LoadedCommit, GitError> {
    let commit = source.resolve_tracked(reference)?;
    load_at(source, commit, folder)
}

/// Loads the stack at an already resolved commit.
///
/// # Errors
/// The first read that failed for a reason of the moment (a missing object, an I/O error): the
/// stack's diagnostics would otherwise blame the commit for it ("`slipway.yaml` cannot be
/// read"), and a cache keep that for good. What the commit holds (a file too large, a
/// symlink out of the repository, invalid YAML) is a diagnostic.
pub fn load_at(
    source: &dyn Source,
    commit: Commit,
    folder: &str,
) -> Result<LoadedCommit, GitError> {
    let entry = format!("{folder}slipway.yaml");
    let files = CommitFiles::new(source, &commit.sha);
    let loaded = slipway_core::stack::load(&files, &entry, &LoadLimits::default());
    if let Some(failed) = files.failed() {
        return Err(failed);
    }
    Ok(LoadedCommit {
        commit,
        loaded,
        entry,
        folder: folder.to_string(),
    })
}

/// Whether any of `resources` runs code from the repository (and so has a source hash).
pub fn runs_code(resources: &BTreeMap<String, slipway_core::stack::ResourceDef>) -> bool {
    resources
        .values()
        .any(|r| slipway_core::types::capabilities(&r.type_name).source != SourceDir::None)
}

/// The source hash of each resource that runs code from the repository: a hash of every file
/// under its working directory, except the stack's own definition files (changing a variable
/// in `slipway.yaml` must not restart everything).
pub fn source_hashes(
    files: &[TreeEntry],
    folder: &str,
    stack_files: &[String],
    resources: &BTreeMap<String, slipway_core::stack::ResourceDef>,
) -> BTreeMap<String, String> {
    let mut by_dir: BTreeMap<String, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (name, res) in resources {
        let field = match slipway_core::types::capabilities(&res.type_name).source {
            SourceDir::None => continue,
            SourceDir::Folder => None,
            SourceDir::Field(field) => res.fields.get(field).map(|n| &n.value),
        };
        let cwd = match field {
            Some(slipway_core::yaml::Value::Str(s)) => format!("{folder}{}/", s.trim_matches('/')),
            _ => folder.to_string(),
        };
        let hash = by_dir
            .entry(cwd.clone())
            .or_insert_with(|| {
                let mut h = Sha256::new();
                for entry in files
                    .iter()
                    .filter(|e| e.path.starts_with(&cwd) && !stack_files.contains(&e.path))
                {
                    h.update(entry.path.as_bytes());
                    h.update([0]);
                    h.update(entry.oid.as_bytes());
                    h.update([0]);
                }
                slipway_core::render::hex(&h.finalize())
            })
            .clone();
        out.insert(name.clone(), hash);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use slipway_git::GitRepository;

    use super::*;

    const STACK: &str = "version: 1\nstack: shop\nenvironments:\n  qa: { track: main }\n";

    /// `git -C dir args…`, which must succeed; its output, trimmed.
    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    }

    /// Commits everything in the work tree at `dir`.
    fn commit_all(dir: &Path, message: &str) {
        git(dir, &["add", "."]);
        let identity = ["-c", "user.name=A", "-c", "user.email=a@example.com"];
        git(dir, &[&identity[..], &["commit", "-qm", message]].concat());
    }

    /// A repository in `dir` with `slipway.yaml` = [`STACK`], committed (loose objects).
    fn repository(dir: &Path) -> (GitRepository, Commit) {
        git(dir, &["init", "-q", "-b", "main"]);
        std::fs::write(dir.join("slipway.yaml"), STACK).expect("written");
        commit_all(dir, "one");
        let repository =
            GitRepository::open(dir.to_str().expect("utf-8"), &dir.join("cache")).expect("opened");
        let commit = repository.resolve("main").expect("resolved");
        (repository, commit)
    }

    /// The file of loose object `oid` in the repository at `dir`.
    fn loose(dir: &Path, oid: &str) -> PathBuf {
        dir.join(".git/objects").join(&oid[..2]).join(&oid[2..])
    }

    /// A commit whose tree is not there yet (a fetch still writing it) fails to load, as a
    /// failure of the moment: loaded, it would say the stack cannot be read, and a cache would
    /// keep that for the commit. Once the tree is there, the stack loads.
    #[test]
    fn a_missing_object_fails_the_load_rather_than_the_stack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (repository, commit) = repository(dir.path());
        let tree = loose(dir.path(), &git(dir.path(), &["rev-parse", "HEAD^{tree}"]));
        let aside = dir.path().join("tree-aside");
        std::fs::rename(&tree, &aside).expect("moved");
        match load_at(&repository, commit.clone(), "") {
            Err(GitError::MissingObject { .. }) => {}
            Err(other) => panic!("failed otherwise: {other}"),
            Ok(loaded) => panic!("loaded: {:?}", loaded.valid_stack().err()),
        }
        std::fs::rename(&aside, &tree).expect("moved back");
        let loaded = load_at(&repository, commit, "").expect("loaded");
        assert!(
            loaded.valid_stack().is_ok(),
            "{:?}",
            loaded.valid_stack().err()
        );
    }

    /// The engine's commit cache keeps no load that failed this way: once the tree is there,
    /// the same commit loads.
    #[test]
    fn the_commit_cache_keeps_no_failed_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).expect("made");
        let (repository, commit) = repository(&repo);
        let engine = crate::Engine::open(
            &dir.path().join("home"),
            crate::EngineConfig::default(),
            Vec::new(),
        )
        .expect("an engine");
        let origin = crate::Origin {
            source: &repository,
            repo: "repo",
            reference: &commit.sha,
            folder: "",
            tip: Some(&commit.sha),
        };
        let tree = loose(&repo, &git(&repo, &["rev-parse", "HEAD^{tree}"]));
        let aside = dir.path().join("tree-aside");
        std::fs::rename(&tree, &aside).expect("moved");
        assert!(engine.load(&origin).is_err(), "the tree is missing");
        std::fs::rename(&aside, &tree).expect("moved back");
        let cached = engine.load(&origin).expect("loaded");
        assert!(
            cached.loaded.valid_stack().is_ok(),
            "{:?}",
            cached.loaded.valid_stack().err()
        );
    }

    /// A repository whose `qa` requires pull requests in its first commit and no longer in
    /// the second (main's head), and an engine whose `qa` runs the first: the repository's
    /// directory, the repository, the engine, `qa` and the commit it runs.
    /// The repository read at `main`, whose tip is `tip`.
    fn at_main<'a>(repository: &'a GitRepository, tip: &'a str) -> crate::Origin<'a> {
        crate::Origin {
            source: repository,
            repo: "repo",
            reference: "main",
            folder: "",
            tip: Some(tip),
        }
    }

    /// A deployment of `commit` to `qa` from `main` that recorded `rules`.
    fn deployed(
        qa: &slipway_core::EnvName,
        commit: &str,
        rules: serde_json::Value,
    ) -> slipway_state::NewDeployment {
        slipway_state::NewDeployment {
            environment: qa.clone(),
            commit: commit.to_owned(),
            hash: "h".into(),
            reference: Some("main".into()),
            plan: serde_json::json!({}),
            rules: Some(rules),
            who: "controller".into(),
            at: 0,
        }
    }

    fn qa_running_require_pr(
        dir: &Path,
    ) -> (
        PathBuf,
        GitRepository,
        crate::Engine,
        slipway_core::EnvName,
        Commit,
    ) {
        let repo = dir.join("repo");
        std::fs::create_dir(&repo).expect("made");
        let (repository, _) = repository(&repo);
        std::fs::write(
            repo.join("slipway.yaml"),
            STACK.replace("{ track: main }", "{ track: main, require_pr: true }"),
        )
        .expect("written");
        commit_all(&repo, "qa requires pull requests");
        let running = repository.resolve("main").expect("resolved");
        std::fs::write(repo.join("slipway.yaml"), STACK).expect("written");
        commit_all(&repo, "no more");
        let engine = crate::Engine::open(
            &dir.join("home"),
            crate::EngineConfig::default(),
            Vec::new(),
        )
        .expect("an engine");
        let qa = slipway_core::EnvName::parse("qa").expect("a name");
        let mut record = slipway_state::EnvironmentRecord::new(
            qa.clone(),
            slipway_core::render::EnvKind::Static,
            "shop".into(),
            String::new(),
            0,
        );
        record.commit = Some(running.sha.clone());
        engine.store.upsert_environment(&record).expect("recorded");
        (repo, repository, engine, qa, running)
    }

    /// The rules in force are never judged without a commit in force that cannot be read
    /// for the moment: `qa` runs a commit that requires pull requests, and the branch's head
    /// (whoever pushed it) drops the rule; while the running commit's tree is missing (a
    /// fetch still writing it), the judgement fails, to be made again, rather than
    /// going by the head's rules alone.
    #[test]
    fn rules_in_force_wait_for_a_commit_in_force_that_cannot_be_read_for_the_moment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (repo, repository, engine, qa, running) = qa_running_require_pr(dir.path());
        let head = repository.resolve("main").expect("resolved");
        let origin = at_main(&repository, &head.sha);
        let tree = loose(
            &repo,
            &git(&repo, &["rev-parse", &format!("{}^{{tree}}", running.sha)]),
        );
        let aside = dir.path().join("tree-aside");
        std::fs::rename(&tree, &aside).expect("moved");
        match engine.rules_in_force(&origin, &qa, "qa") {
            Err(e) => assert!(e.retryable(), "{e}"),
            Ok(rules) => panic!("judged without the commit in force: {rules:?}"),
        }
        std::fs::rename(&aside, &tree).expect("moved back");
        let rules = engine
            .rules_in_force(&origin, &qa, "qa")
            .expect("read")
            .expect("in force");
        assert!(rules.require_pr, "{rules:?}");
    }

    /// A commit in force gone for good (a force push, then the mirror's gc), or whose stack
    /// no longer loads, is not passed over: the rules its deployment recorded hold, whatever
    /// the branch's head says.
    #[test]
    fn rules_in_force_of_a_commit_gone_for_good_are_those_its_deployment_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (repo, repository, engine, qa, running) = qa_running_require_pr(dir.path());
        let declared = crate::rules::Rules {
            require_pr: true,
            ..Default::default()
        };
        let deployment = deployed(&qa, &running.sha, declared.to_record());
        engine
            .store
            .begin_deployment(&deployment)
            .expect("a deployment");
        let head = repository.resolve("main").expect("resolved");
        let origin = at_main(&repository, &head.sha);
        // The running commit itself is gone.
        std::fs::remove_file(loose(&repo, &running.sha)).expect("removed");
        let rules = engine
            .rules_in_force(&origin, &qa, "qa")
            .expect("judged")
            .expect("in force");
        assert!(rules.require_pr, "{rules:?}");
        // Or it is there, and its stack no longer loads (this version refuses it).
        std::fs::write(repo.join("slipway.yaml"), "version: 1\nstack: [").expect("written");
        commit_all(&repo, "a stack this version refuses");
        let refused = repository.resolve("main").expect("resolved");
        let mut record = engine.store.environment(&qa).expect("read").expect("there");
        record.commit = Some(refused.sha.clone());
        engine.store.upsert_environment(&record).expect("recorded");
        engine
            .store
            .begin_deployment(&slipway_state::NewDeployment {
                commit: refused.sha.clone(),
                rules: Some(declared.to_record()),
                at: 1,
                ..deployment
            })
            .expect("a deployment");
        let rules = engine
            .rules_in_force(&origin, &qa, "qa")
            .expect("judged")
            .expect("in force");
        assert!(rules.require_pr, "{rules:?}");
    }

    /// A commit in force gone for good whose deployment recorded rules this version cannot
    /// read (another version wrote them) is not judged as if it had none: the judgement fails.
    #[test]
    fn rules_recorded_in_a_form_this_version_cannot_read_fail_the_judgement() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (repo, repository, engine, qa, running) = qa_running_require_pr(dir.path());
        engine
            .store
            .begin_deployment(&deployed(
                &qa,
                &running.sha,
                serde_json::json!({"require_pr": "always", "windows": 7}),
            ))
            .expect("a deployment");
        let head = repository.resolve("main").expect("resolved");
        let origin = at_main(&repository, &head.sha);
        std::fs::remove_file(loose(&repo, &running.sha)).expect("removed");
        let error = engine
            .rules_in_force(&origin, &qa, "qa")
            .expect_err("not judged without its rules");
        assert!(
            error.to_string().contains("cannot read that record"),
            "{error}"
        );
    }

    /// What the commit holds stays a diagnostic of the stack: `slipway.yaml` a directory.
    #[test]
    fn what_the_commit_holds_is_a_diagnostic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (repository, _) = repository(dir.path());
        git(dir.path(), &["rm", "-q", "slipway.yaml"]);
        std::fs::create_dir(dir.path().join("slipway.yaml")).expect("made");
        std::fs::write(dir.path().join("slipway.yaml/x"), STACK).expect("written");
        commit_all(dir.path(), "two");
        let commit = repository.resolve("main").expect("resolved");
        let loaded = load_at(&repository, commit, "").expect("loaded");
        let error = loaded.valid_stack().expect_err("not a stack");
        assert!(error.contains("directory"), "{error}");
    }
}
