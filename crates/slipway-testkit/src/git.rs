//! Git repositories for tests, built with the real `git` CLI (no user or system config, a fixed
//! identity, `main` as the default branch, no signing).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A `git` command in `cwd`, isolated from the machine's configuration.
pub fn git_command(cwd: &Path) -> Command {
    let mut c = Command::new("git");
    c.args([
        "-c",
        "user.name=Slipway Test",
        "-c",
        "user.email=test@slipway.invalid",
        "-c",
        "init.defaultBranch=main",
        "-c",
        "commit.gpgsign=false",
    ])
    .current_dir(cwd)
    .env("GIT_CONFIG_GLOBAL", "/dev/null")
    .env("GIT_CONFIG_NOSYSTEM", "1");
    c
}

/// Runs `git args` in `cwd`, which must succeed, and returns its trimmed stdout.
pub fn git(cwd: &Path, args: &[&str]) -> String {
    git_with(cwd, args, &[])
}

/// [`git`] with more environment variables (a fixed author, committer or clock:
/// `GIT_AUTHOR_NAME`, `GIT_COMMITTER_DATE`…). On failure, panics with the command, its
/// directory, its status and everything it printed.
pub fn git_with(cwd: &Path, args: &[&str], envs: &[(&str, &str)]) -> String {
    let mut command = git_command(cwd);
    command.args(args).envs(envs.iter().copied());
    let out = command.output().expect("git runs");
    assert!(
        out.status.success(),
        "git {} failed\ncwd: {}\nstatus: {}\nstdout: {}\nstderr: {}",
        args.join(" "),
        cwd.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Clones `repo` bare into `parent/name`, which it returns.
pub fn clone_bare(repo: &Path, parent: &Path, name: &str) -> PathBuf {
    let repo = repo.to_str().expect("a UTF-8 repository path");
    git(parent, &["clone", "-q", "--bare", repo, name]);
    parent.join(name)
}

/// A repository with a work tree, on branch `main`.
#[derive(Debug, Clone)]
pub struct Repo {
    /// Its work tree.
    pub path: PathBuf,
}

impl Repo {
    /// `git init` at `path` (made if missing).
    pub fn init(path: &Path) -> Repo {
        std::fs::create_dir_all(path).expect("mkdir the repository");
        git(path, &["init", "-q", "-b", "main"]);
        Repo {
            path: path.to_path_buf(),
        }
    }

    /// Writes `content` to `rel` in the work tree (parents made).
    pub fn write(&self, rel: &str, content: &str) -> &Repo {
        let p = self.path.join(rel);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
        self
    }

    /// Stages everything and commits (empty commits allowed); returns the new commit.
    pub fn commit(&self, message: &str) -> String {
        git(&self.path, &["add", "-A"]);
        git(
            &self.path,
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        self.head()
    }

    /// `git args` in the work tree.
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.path, args)
    }

    /// The commit `HEAD` names.
    pub fn head(&self) -> String {
        self.rev_parse("HEAD")
    }

    /// The commit `rev` names.
    pub fn rev_parse(&self, rev: &str) -> String {
        git(&self.path, &["rev-parse", rev])
    }
}
