//! `GitRepository` against real repositories built with the `git` CLI in temporary directories.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use slipway_git::{EntryKind, GitError, GitRepository, Source, TreeEntry, remove_export};
use tempfile::TempDir;

/// Runs git for a fixture, isolated from the machine's configuration, with a fixed identity
/// and clock; on failure, panics with everything needed to see why.
fn git(cwd: &Path, args: &[&str]) -> String {
    slipway_testkit::git::git_with(
        cwd,
        args,
        &[
            ("GIT_AUTHOR_NAME", "Ada Lovelace"),
            ("GIT_AUTHOR_EMAIL", "ada@example.com"),
            ("GIT_COMMITTER_NAME", "Ada Lovelace"),
            ("GIT_COMMITTER_EMAIL", "ada@example.com"),
            ("GIT_AUTHOR_DATE", "1700000000 +0000"),
            ("GIT_COMMITTER_DATE", "1700000000 +0000"),
        ],
    )
}

/// A work tree with a `main` branch, in a temporary directory that also holds caches and
/// exports.
struct Fixture {
    root: TempDir,
    repo: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let root = tempfile::tempdir().expect("create a temporary directory");
        let repo = root.path().join("repo");
        git(root.path(), &["init", "-q", "-b", "main", "repo"]);
        Fixture { root, repo }
    }

    fn write(&self, path: &str, content: &str) -> &Fixture {
        let file = self.repo.join(path);
        std::fs::create_dir_all(file.parent().expect("a file has a parent"))
            .expect("create fixture directories");
        std::fs::write(&file, content).expect("write a fixture file");
        self
    }

    fn executable(&self, path: &str, content: &str) -> &Fixture {
        self.write(path, content);
        std::fs::set_permissions(self.repo.join(path), std::fs::Permissions::from_mode(0o755))
            .expect("make a fixture file executable");
        self
    }

    fn symlink(&self, link: &str, target: &str) -> &Fixture {
        let path = self.repo.join(link);
        std::fs::create_dir_all(path.parent().expect("a link has a parent"))
            .expect("create fixture directories");
        std::os::unix::fs::symlink(target, path).expect("create a fixture symlink");
        self
    }

    /// Stages everything in the work tree.
    fn stage(&self) -> &Fixture {
        git(&self.repo, &["add", "-A"]);
        self
    }

    /// Stages a submodule (a gitlink to `commit`) at `path`, without a checkout of it.
    fn gitlink(&self, path: &str, commit: &str) -> &Fixture {
        git(
            &self.repo,
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("160000,{commit},{path}"),
            ],
        );
        self
    }

    /// Commits what is staged and returns the commit id.
    fn commit_staged(&self, message: &str) -> String {
        git(
            &self.repo,
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        git(&self.repo, &["rev-parse", "HEAD"])
    }

    /// Commits everything and returns the commit id.
    fn commit(&self, message: &str) -> String {
        self.stage().commit_staged(message)
    }

    fn open(&self) -> GitRepository {
        GitRepository::open(
            self.repo.to_str().expect("temporary paths are UTF-8"),
            &self.cache(),
        )
        .expect("open the fixture repository")
    }

    fn cache(&self) -> PathBuf {
        self.root.path().join("cache")
    }

    fn dest(&self, name: &str) -> PathBuf {
        self.root.path().join("exports").join(name)
    }
}

fn read(repo: &GitRepository, commit: &str, path: &str) -> Result<Option<String>, GitError> {
    repo.read_file(commit, path, 1 << 20).map(|content| {
        content.map(|bytes| String::from_utf8(bytes).expect("fixture files are UTF-8"))
    })
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("stat an exported path")
        .permissions()
        .mode()
        & 0o777
}

fn running_as_root() -> bool {
    let output = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

#[test]
fn the_repository_is_usable_as_a_shared_trait_object() {
    let fixture = Fixture::new();
    fixture.write("a", "1").commit("one");
    let source: std::sync::Arc<dyn Source> = std::sync::Arc::new(fixture.open());
    let commit = source.resolve("main").expect("resolve through the trait");
    assert_eq!(commit.sha.len(), 40, "a full commit id");
}

#[test]
fn branches_tags_commit_ids_and_head_resolve() {
    let fixture = Fixture::new();
    let first = fixture
        .write("a", "1")
        .commit("first commit\n\nwith a body");
    git(&fixture.repo, &["tag", "-a", "-m", "release", "v1"]);
    git(&fixture.repo, &["tag", "light"]);
    git(&fixture.repo, &["branch", "feature/login"]);
    let second = fixture.write("a", "2").commit("second");
    let repo = fixture.open();

    let main = repo.resolve("main").expect("resolve a branch");
    assert_eq!(main.sha, second, "a branch resolves to its tip");
    assert_eq!(main.summary, "second", "the summary is the first line");
    assert_eq!(
        main.author, "Ada Lovelace <ada@example.com>",
        "author as `Name <email>`"
    );
    assert_eq!(main.time, 1_700_000_000, "committer time in unix seconds");
    assert_eq!(
        repo.resolve("HEAD").expect("resolve HEAD").sha,
        second,
        "HEAD"
    );
    let tagged = repo.resolve("v1").expect("resolve an annotated tag");
    assert_eq!(
        tagged.sha, first,
        "an annotated tag is peeled to its commit"
    );
    assert_eq!(
        tagged.summary, "first commit",
        "only the first line of the message"
    );
    assert_eq!(
        repo.resolve("light").expect("lightweight tag").sha,
        first,
        "lightweight tag"
    );
    assert_eq!(
        repo.resolve("feature/login")
            .expect("branch with a slash")
            .sha,
        first,
        "branch names with slashes"
    );
    assert_eq!(
        repo.resolve(&first).expect("full id").sha,
        first,
        "a full commit id"
    );
    assert_eq!(
        repo.resolve(&first[..10]).expect("short id").sha,
        first,
        "an abbreviated id"
    );
    assert_eq!(
        repo.resolve("main~1").expect("ancestry").sha,
        first,
        "revision suffixes"
    );
}

#[test]
fn an_unknown_reference_is_named_with_a_hint() {
    let fixture = Fixture::new();
    fixture.write("a", "1").commit("one");
    let repo = fixture.open();
    let error = repo
        .resolve("no-such-branch")
        .expect_err("an unknown branch is an error");
    assert!(
        matches!(&error, GitError::ReferenceNotFound { reference, .. } if reference == "no-such-branch"),
        "the error names the reference, got {error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("git branch -a") && message.contains("git fetch"),
        "the message says how to look further: {message}"
    );
    assert!(!error.retryable(), "a missing reference is terminal");
}

#[test]
fn hostile_references_are_refused_before_git_sees_them() {
    let fixture = Fixture::new();
    fixture.write("a", "1").commit("one");
    let repo = fixture.open();
    for reference in [
        "",
        "-h",
        "--output=/tmp/pwned",
        "main\n--all",
        "ma\u{1b}[31min",
        "main file",
        "HEAD:a",
        ":/one",
        "main..HEAD",
        &"a".repeat(2_000),
    ] {
        let result = repo.resolve(reference);
        assert!(
            matches!(result, Err(GitError::InvalidReference { .. })),
            "`{}` must be refused as invalid, got {result:?}",
            reference.escape_debug()
        );
    }
    for reference in ["main;touch pwned", "$(touch pwned)", "refs/heads/../../x"] {
        let result = repo.resolve(reference);
        assert!(
            matches!(
                result,
                Err(GitError::ReferenceNotFound { .. } | GitError::InvalidReference { .. })
            ),
            "`{reference}` is just a name that does not exist, got {result:?}"
        );
    }
    assert!(
        !fixture.repo.join("pwned").exists() && !Path::new("pwned").exists(),
        "no reference ran a command"
    );
}

#[test]
fn a_file_is_read_at_an_older_commit() {
    let fixture = Fixture::new();
    let old = fixture.write("etc/app.toml", "level = 1\n").commit("old");
    let new = fixture.write("etc/app.toml", "level = 2\n").commit("new");
    let repo = fixture.open();
    assert_eq!(
        read(&repo, &old, "etc/app.toml").expect("read at old"),
        Some("level = 1\n".to_owned()),
        "the old commit's content"
    );
    assert_eq!(
        read(&repo, &new, "etc/app.toml").expect("read at new"),
        Some("level = 2\n".to_owned()),
        "the new commit's content"
    );
    assert_eq!(
        read(&repo, &new, "etc/nope").expect("read missing"),
        None,
        "missing file"
    );
    assert_eq!(
        read(&repo, &new, "nope/x").expect("read missing dir"),
        None,
        "missing dir"
    );
    assert_eq!(
        read(&repo, &new, "etc/app.toml/x").expect("file as dir"),
        None,
        "a file used as a directory is missing"
    );
    assert!(
        matches!(
            read(&repo, &new, "etc"),
            Err(GitError::NotAFile {
                kind: "directory",
                ..
            })
        ),
        "a directory is not a file"
    );
}

#[test]
fn commit_arguments_must_be_full_commit_ids() {
    let fixture = Fixture::new();
    let commit = fixture.write("a", "1").commit("one");
    let repo = fixture.open();
    for bad in [&commit[..10], "main", "HEAD", "-p", &commit.to_uppercase()] {
        assert!(
            matches!(read(&repo, bad, "a"), Err(GitError::InvalidCommit { .. })),
            "`{bad}` is not accepted as a commit id"
        );
    }
    let absent = "0123456789abcdef0123456789abcdef01234567";
    assert!(
        matches!(
            read(&repo, absent, "a"),
            Err(GitError::CommitNotFound { .. })
        ),
        "an absent commit is reported as such"
    );
    assert!(
        matches!(
            repo.list_files(absent, ""),
            Err(GitError::CommitNotFound { .. })
        ),
        "an absent commit is reported as such when listing"
    );
}

#[test]
fn symlinks_inside_the_tree_are_followed() {
    let fixture = Fixture::new();
    let commit = fixture
        .write("etc/app.toml", "level = 1\n")
        .symlink("config.toml", "etc/app.toml")
        .symlink("conf", "etc")
        .symlink("sub/up", "..")
        .commit("links");
    let repo = fixture.open();
    for path in [
        "config.toml",
        "conf/app.toml",
        "sub/up/etc/app.toml",
        "sub/up/conf/app.toml",
    ] {
        assert_eq!(
            read(&repo, &commit, path).expect("read through a symlink"),
            Some("level = 1\n".to_owned()),
            "`{path}` leads to etc/app.toml through symlinks inside the tree"
        );
    }
}

#[test]
fn symlinks_leaving_the_tree_are_refused() {
    let fixture = Fixture::new();
    let commit = fixture
        .write("a", "1")
        .symlink("relative", "../../etc/passwd")
        .symlink("absolute", "/etc/passwd")
        .symlink("dir/up", "..")
        .symlink("sneaky", "dir/up/../etc/passwd")
        .commit("escapes");
    let repo = fixture.open();
    for (path, link, target) in [
        ("relative", "relative", "../../etc/passwd"),
        ("absolute", "absolute", "/etc/passwd"),
        ("sneaky", "sneaky", "dir/up/../etc/passwd"),
    ] {
        let result = read(&repo, &commit, path);
        assert!(
            matches!(&result, Err(GitError::SymlinkEscapes { path, target: t }) if path == link && t == target),
            "reading `{path}` is refused naming the link and its target, got {result:?}"
        );
    }
    let dest = fixture.dest("escapes");
    let result = repo.export(&commit, "", &dest);
    assert!(
        matches!(result, Err(GitError::SymlinkEscapes { .. })),
        "an export with an escaping symlink is refused, got {result:?}"
    );
    assert!(
        !dest.exists(),
        "a refused export leaves nothing at the destination"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dest.parent().expect("exports dir"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "no partial export is left behind: {leftovers:?}"
    );
}

#[test]
fn unsafe_paths_are_refused() {
    let fixture = Fixture::new();
    let commit = fixture.write("a", "1").commit("one");
    let repo = fixture.open();
    for path in [
        "../a",
        "a/../a",
        "/etc/passwd",
        "a//b",
        "./a",
        "a/",
        "",
        "a\0b",
    ] {
        let result = read(&repo, &commit, path);
        assert!(
            matches!(result, Err(GitError::UnsafePath { .. })),
            "`{}` is refused as unsafe, got {result:?}",
            path.escape_debug()
        );
    }
}

#[test]
fn a_file_over_the_limit_is_refused_without_reading_it() {
    let fixture = Fixture::new();
    let commit = fixture
        .write("big.bin", &"x".repeat(2_000))
        .symlink("big-link", "big.bin")
        .commit("big");
    let repo = fixture.open();
    for path in ["big.bin", "big-link"] {
        let result = repo.read_file(&commit, path, 1_000);
        assert!(
            matches!(&result, Err(GitError::TooLarge { size: 2_000, limit: 1_000, path: p }) if p == path),
            "`{path}` is over the limit, reported with its size, got {result:?}"
        );
    }
    let exact = repo
        .read_file(&commit, "big.bin", 2_000)
        .expect("a file exactly at the limit is read");
    assert_eq!(
        exact.map(|bytes| bytes.len()),
        Some(2_000),
        "the whole file is returned"
    );
}

#[test]
fn files_are_listed_with_kinds_and_sizes() {
    let fixture = Fixture::new();
    let inner = Fixture::new();
    let inner_commit = inner.write("x", "1").commit("inner");
    fixture
        .write("a.txt", "hello")
        .executable("bin/run.sh", "#!/bin/sh\n")
        .symlink("link", "a.txt")
        .stage()
        .gitlink("vendor/lib", &inner_commit);
    let commit = fixture.commit_staged("kinds");
    let repo = fixture.open();
    let listed = repo.list_files(&commit, "").expect("list files");
    assert!(
        listed.iter().all(|e| e.oid.len() == 40),
        "every entry carries its object id"
    );
    assert_eq!(
        listed[0].oid,
        git(&fixture.repo, &["rev-parse", &format!("{commit}:a.txt")]),
        "the oid is git's blob id"
    );
    let entry = |path: &str, kind, size| TreeEntry {
        path: path.to_owned(),
        kind,
        size,
        oid: String::new(),
    };
    let listed: Vec<TreeEntry> = listed
        .into_iter()
        .map(|e| TreeEntry {
            oid: String::new(),
            ..e
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            entry("a.txt", EntryKind::Blob, 5),
            entry("bin/run.sh", EntryKind::Executable, 10),
            entry("link", EntryKind::Symlink, 5),
            entry("vendor/lib", EntryKind::Submodule, 0),
        ],
        "every file, recursively, with its kind and size; no directories"
    );
}

#[test]
fn a_listing_under_a_folder_holds_exactly_the_files_beneath_it() {
    let fixture = Fixture::new();
    let commit = fixture
        .write("slipway.yaml", "version: 1\n")
        .write("deploy/slipway.yaml", "version: 1\n")
        .write("deploy/policies/a.rego", "package a\n")
        .write("deploy/policies/deeper/b.rego", "package b\n")
        .write("deploy/policies-old/c.rego", "package c\n")
        .write("deploy/policiesx", "not a folder\n")
        .write("policies/d.rego", "package d\n")
        .symlink("deploy/link", "policies")
        .commit("folders");
    let repo = fixture.open();
    let all = repo.list_files(&commit, "").expect("list every file");
    assert_eq!(all.len(), 8, "{all:?}");
    let paths = |under: &str| -> Vec<String> {
        repo.list_files(&commit, under)
            .expect("list under a folder")
            .into_iter()
            .map(|e| e.path)
            .collect()
    };
    assert_eq!(
        paths("deploy/policies/"),
        ["deploy/policies/a.rego", "deploy/policies/deeper/b.rego"],
        "only what is beneath the folder: not its namesakes `policies-old/` and `policiesx`, \
         nor a symlink's target"
    );
    for under in [
        "deploy/",
        "deploy/policies/deeper/",
        "policies/",
        "absent/",
        "deploy/x/",
    ] {
        let beneath: Vec<String> = all
            .iter()
            .filter(|e| e.path.starts_with(under))
            .map(|e| e.path.clone())
            .collect();
        assert_eq!(
            paths(under),
            beneath,
            "the whole listing's files under {under}"
        );
    }
}

#[test]
fn an_export_holds_the_tree_read_only_with_its_modes() {
    let fixture = Fixture::new();
    let inner = Fixture::new();
    let inner_commit = inner.write("x", "1").commit("inner");
    fixture
        .write("slipway.yaml", "version: 1\n")
        .write("app/main.py", "print('hi')\n")
        .executable("app/run.sh", "#!/bin/sh\necho hi\n")
        .symlink("app/current", "main.py")
        .symlink("docs", "app")
        .stage()
        .gitlink("vendor/lib", &inner_commit);
    let commit = fixture.commit_staged("export me");
    let repo = fixture.open();
    let dest = fixture.dest(&commit);
    repo.export(&commit, "app", &dest).expect("export the tree");

    assert_eq!(
        std::fs::read_to_string(dest.join("app/main.py")).expect("read an exported file"),
        "print('hi')\n",
        "file content is exported"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("slipway.yaml")).expect("read the root file"),
        "version: 1\n",
        "the whole tree is exported, not only the subdirectory"
    );
    assert_eq!(
        mode(&dest.join("app/main.py")),
        0o444,
        "files are read-only"
    );
    assert_eq!(
        mode(&dest.join("app/run.sh")),
        0o555,
        "executables keep the executable bit"
    );
    assert_eq!(mode(&dest.join("app")), 0o555, "directories are read-only");
    assert_eq!(mode(&dest), 0o555, "the export's root is read-only");
    assert_eq!(
        std::fs::read_link(dest.join("app/current")).expect("read an exported symlink"),
        PathBuf::from("main.py"),
        "symlinks inside the tree are recreated as they are"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("docs/main.py")).expect("read through a symlink"),
        "print('hi')\n",
        "an exported directory symlink works"
    );
    let vendor = dest.join("vendor/lib");
    assert!(
        vendor.is_dir() && std::fs::read_dir(&vendor).expect("list").next().is_none(),
        "a submodule is an empty directory"
    );
    if !running_as_root() {
        // Root ignores permissions; the modes above are the contract then.
        assert!(
            std::fs::write(dest.join("app/new.txt"), "x").is_err(),
            "nothing can be added to an export"
        );
    }

    // An export is immutable: a second export of the same commit leaves it as it is.
    let before = std::fs::metadata(dest.join("app/main.py"))
        .expect("stat")
        .modified()
        .expect("mtime");
    repo.export(&commit, "app", &dest).expect("export again");
    let after = std::fs::metadata(dest.join("app/main.py"))
        .expect("stat")
        .modified()
        .expect("mtime");
    assert_eq!(before, after, "an existing export is not rewritten");

    remove_export(&dest).expect("remove the export");
    assert!(!dest.exists(), "remove_export deletes a read-only export");
    remove_export(&dest).expect("removing a missing export is fine");
}

#[test]
fn an_export_checks_that_the_subdirectory_exists() {
    let fixture = Fixture::new();
    let commit = fixture.write("app/a", "1").write("file", "x").commit("one");
    let repo = fixture.open();
    for subdir in ["nope", "file"] {
        let dest = fixture.dest(subdir);
        let result = repo.export(&commit, subdir, &dest);
        assert!(
            matches!(result, Err(GitError::PathNotFound { .. })),
            "`{subdir}` is not a directory of the commit, got {result:?}"
        );
        assert!(!dest.exists(), "nothing is exported");
    }
    let dest = fixture.dest("whole");
    repo.export(&commit, "app", &dest)
        .expect("export with an existing subdirectory");
    assert!(
        matches!(
            repo.export(&commit, "nope", &dest),
            Err(GitError::PathNotFound { .. })
        ),
        "the subdirectory is checked even when the export already exists"
    );
    let result = repo.export(&commit, "../app", &fixture.dest("x"));
    assert!(
        matches!(result, Err(GitError::UnsafePath { .. })),
        "an unsafe subdirectory is refused, got {result:?}"
    );
}

#[test]
fn concurrent_exports_of_one_commit_both_succeed() {
    let fixture = Fixture::new();
    let commit = fixture.write("a", "1").write("b/c", "2").commit("one");
    let repo = fixture.open();
    let dest = fixture.dest("same");
    std::thread::scope(|scope| {
        let exports: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| repo.export(&commit, "", &dest)))
            .collect();
        for export in exports {
            export
                .join()
                .expect("an export thread does not panic")
                .expect("every concurrent export of the same commit succeeds");
        }
    });
    assert_eq!(
        std::fs::read_to_string(dest.join("b/c")).expect("read the export"),
        "2",
        "the export is complete"
    );
    let siblings = std::fs::read_dir(dest.parent().expect("exports dir"))
        .expect("list exports")
        .count();
    assert_eq!(siblings, 1, "the losers cleaned up their partial exports");
}

/// Writes a blob into the fixture's object store and returns its id.
fn blob(fixture: &Fixture, content: &str) -> String {
    git_with_input(&fixture.repo, &["hash-object", "-w", "--stdin"], content)
}

/// Builds a tree by hand from `git ls-tree`-style lines, as an attacker could push it: git
/// itself never checks out such trees, but a server may still accept them.
fn mktree(fixture: &Fixture, lines: &str) -> String {
    git_with_input(&fixture.repo, &["mktree"], lines)
}

/// [`git`], with `input` on stdin.
fn git_with_input(cwd: &Path, args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("git")
        .args(args)
        .current_dir(cwd)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run git for a fixture");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .expect("write git's input");
    let output = child.wait_with_output().expect("wait for git");
    assert!(
        output.status.success(),
        "fixture command failed\ncommand: git {}\ncwd: {}\ninput: {input}\nstderr: {}",
        args.join(" "),
        cwd.display(),
        String::from_utf8_lossy(&output.stderr),
    );
    String::from_utf8(output.stdout)
        .expect("git fixture output is UTF-8")
        .trim()
        .to_owned()
}

#[test]
fn a_tree_entry_named_dot_dot_is_refused() {
    let fixture = Fixture::new();
    let owned = blob(&fixture, "owned");
    let tree = mktree(&fixture, &format!("100644 blob {owned}\t..\n"));
    let commit = git(&fixture.repo, &["commit-tree", "-m", "malformed", &tree]);
    let repo = fixture.open();
    assert!(
        matches!(
            repo.list_files(&commit, ""),
            Err(GitError::UnsafePath { .. })
        ),
        "a listing with a `..` entry is refused"
    );
    let dest = fixture.dest("dotdot");
    assert!(
        matches!(
            repo.export(&commit, "", &dest),
            Err(GitError::UnsafePath { .. })
        ),
        "an export with a `..` entry is refused"
    );
    assert!(!dest.exists(), "nothing is exported");
}

/// A tree of `width` entries, each `entry` (an `ls-tree` line without its name), named
/// `n0`, `n1`, ...
fn wide_tree(fixture: &Fixture, entry: &str, width: usize) -> String {
    let lines: String = (0..width).map(|i| format!("{entry}\tn{i}\n")).collect();
    mktree(fixture, &lines)
}

#[test]
fn a_tree_that_names_one_object_a_million_times_is_refused_before_it_is_walked() {
    let fixture = Fixture::new();
    let repo = fixture.open();
    // A few kilobytes that name ten million files: git stores a repeated tree once.
    let mut tree = wide_tree(
        &fixture,
        &format!("100644 blob {}", blob(&fixture, "x")),
        10,
    );
    for _ in 0..6 {
        tree = wide_tree(&fixture, &format!("040000 tree {tree}"), 10);
    }
    let many = git(&fixture.repo, &["commit-tree", "-m", "many", &tree]);
    // Nine gigabytes of files from one blob of 9 MiB.
    let big = {
        let path = fixture.root.path().join("big");
        std::fs::write(&path, vec![0u8; 9 << 20]).expect("written");
        git(
            &fixture.repo,
            &["hash-object", "-w", path.to_str().expect("utf-8")],
        )
    };
    let tree = wide_tree(&fixture, &format!("100644 blob {big}"), 1024);
    let heavy = git(&fixture.repo, &["commit-tree", "-m", "heavy", &tree]);
    for (commit, what) in [(&many, "entries"), (&heavy, "bytes")] {
        let listed = repo.list_files(commit, "");
        assert!(
            matches!(&listed, Err(GitError::TreeTooLarge { detail, .. }) if detail.contains(what)),
            "{listed:?}"
        );
        assert!(!listed.unwrap_err().retryable());
        let dest = fixture.dest(what);
        let exported = repo.export(commit, "", &dest);
        assert!(
            matches!(exported, Err(GitError::TreeTooLarge { .. })),
            "{exported:?}"
        );
        assert!(!dest.exists(), "nothing is exported");
    }
}

#[test]
fn a_commit_or_a_tag_of_gigabytes_is_not_read_into_memory() {
    let fixture = Fixture::new();
    fixture.write("a", "1").commit("one");
    let repo = fixture.open();
    // A commit whose message is 33 MiB (anyone who can push may make one): refused, not
    // parsed.
    let message = fixture.root.path().join("message");
    std::fs::write(&message, vec![b'x'; 33 << 20]).expect("written");
    let tree = git(&fixture.repo, &["rev-parse", "HEAD^{tree}"]);
    let huge = git(
        &fixture.repo,
        &["commit-tree", "-F", message.to_str().expect("utf-8"), &tree],
    );
    // (Not printed when it fails: its summary would be the whole message.)
    let refused = repo
        .resolve(&huge)
        .map(|_| ())
        .expect_err("too large to read");
    assert!(
        refused.to_string().contains("more than is read at once"),
        "{refused}"
    );
    // A tag named like a branch pointing at a blob of 40 MiB: not a commit, found so by
    // its header.
    let big = fixture.root.path().join("big");
    std::fs::write(&big, vec![0u8; 40 << 20]).expect("written");
    let blob = git(
        &fixture.repo,
        &["hash-object", "-w", big.to_str().expect("utf-8")],
    );
    git(&fixture.repo, &["tag", "bigtag", &blob]);
    assert!(repo.resolve("bigtag").is_err(), "a blob is no commit");
}

#[test]
fn a_symlink_and_a_directory_of_the_same_name_are_refused() {
    // Written naively, the symlink `x -> <outside>` and then `x/passwd` would write outside
    // the export.
    let fixture = Fixture::new();
    let outside = fixture.root.path().join("outside");
    std::fs::create_dir(&outside).expect("create the outside directory");
    let owned = blob(&fixture, "owned");
    let sub = mktree(&fixture, &format!("100644 blob {owned}\tpasswd\n"));
    let link = blob(&fixture, outside.to_str().expect("UTF-8 path"));
    let tree = mktree(
        &fixture,
        &format!("120000 blob {link}\tx\n040000 tree {sub}\tx\n"),
    );
    let commit = git(&fixture.repo, &["commit-tree", "-m", "malformed", &tree]);
    let repo = fixture.open();
    let dest = fixture.dest("dup");
    let result = repo.export(&commit, "", &dest);
    assert!(
        matches!(result, Err(GitError::UnsafePath { .. })),
        "a tree naming `x` twice is refused as malformed, got {result:?}"
    );
    assert!(
        !outside.join("passwd").exists(),
        "nothing was written through the symlink"
    );
    assert!(!dest.exists(), "nothing is exported");
}

#[test]
fn a_file_url_mirror_sees_new_commits_after_fetch() {
    let fixture = Fixture::new();
    let first = fixture.write("a", "1").commit("one");
    let url = format!("file://{}", fixture.repo.display());
    let repo = GitRepository::open(&url, &fixture.cache()).expect("mirror a file:// URL");
    assert!(repo.is_mirror(), "a URL is mirrored");
    assert!(
        repo.git_dir()
            .starts_with(fixture.cache().canonicalize().expect("cache exists")),
        "the mirror lives in the cache directory"
    );
    assert_eq!(
        repo.resolve("main").expect("resolve in the mirror").sha,
        first
    );
    assert_eq!(
        repo.resolve("origin/main")
            .expect("resolve origin/main")
            .sha,
        first,
        "origin/x names the remote's branch x in a mirror"
    );

    let second = fixture.write("a", "2").commit("two");
    assert_eq!(
        repo.resolve("main").expect("resolve before fetch").sha,
        first,
        "the mirror does not change until fetched"
    );
    repo.fetch().expect("fetch the mirror");
    assert_eq!(
        repo.resolve("main").expect("resolve after fetch").sha,
        second,
        "fetch brings the new commit"
    );
    assert_eq!(
        read(&repo, &second, "a").expect("read from the mirror"),
        Some("2".into())
    );

    let again = GitRepository::open(&url, &fixture.cache()).expect("reopen the mirror");
    assert_eq!(
        again.git_dir(),
        repo.git_dir(),
        "the same URL reuses its mirror"
    );
}

#[test]
fn hooks_never_run_when_fetching() {
    let fixture = Fixture::new();
    fixture.write("a", "1").commit("one");
    let url = format!("file://{}", fixture.repo.display());
    let repo = GitRepository::open(&url, &fixture.cache()).expect("mirror");
    let marker = fixture.root.path().join("hook-ran");
    let hooks = repo.git_dir().join("hooks");
    std::fs::create_dir_all(&hooks).expect("create a hooks directory");
    let hook = hooks.join("reference-transaction");
    std::fs::write(&hook, format!("#!/bin/sh\ntouch '{}'\n", marker.display()))
        .expect("plant a hook");
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))
        .expect("make the hook executable");
    fixture.write("a", "2").commit("two");
    repo.fetch().expect("fetch");
    assert!(!marker.exists(), "a hook planted in the mirror did not run");
}

#[test]
fn a_missing_remote_is_a_retryable_clone_error() {
    let fixture = Fixture::new();
    let url = format!("file://{}/nope.git", fixture.root.path().display());
    let error = GitRepository::open(&url, &fixture.cache()).expect_err("nothing to clone");
    assert!(
        matches!(
            error,
            GitError::Remote {
                action: "clone",
                ..
            }
        ),
        "a failed clone is a remote error, got {error:?}"
    );
    assert!(error.retryable(), "a remote may come back");
    let leftovers = std::fs::read_dir(fixture.cache())
        .expect("list the cache")
        .count();
    assert_eq!(leftovers, 0, "a failed clone leaves nothing in the cache");
}

#[test]
fn dangerous_specs_are_refused() {
    let fixture = Fixture::new();
    for spec in [
        "-uploadpack=touch pwned",
        "--upload-pack=touch pwned",
        "ext::sh -c touch% pwned",
        "fd::3",
        "git://example.com/repo",
        "http://example.com/repo",
    ] {
        let result = GitRepository::open(spec, &fixture.cache());
        assert!(
            matches!(result, Err(GitError::UnsupportedSpec { .. })),
            "`{spec}` is refused, got {result:?}"
        );
    }
    assert!(!Path::new("pwned").exists(), "no spec ran a command");
}

#[test]
fn local_paths_open_work_trees_subdirectories_and_bare_repositories() {
    let fixture = Fixture::new();
    let commit = fixture.write("sub/dir/a", "1").commit("one");
    let inside = GitRepository::open(
        fixture.repo.join("sub/dir").to_str().expect("UTF-8"),
        &fixture.cache(),
    )
    .expect("open from a subdirectory");
    assert_eq!(
        inside.work_tree().map(Path::to_path_buf),
        Some(fixture.repo.canonicalize().expect("canonical repo path")),
        "a subdirectory opens the repository around it"
    );
    assert!(
        !inside.is_mirror(),
        "a local path is read live, not mirrored"
    );
    inside
        .fetch()
        .expect("fetch is a no-op for a local repository");

    let bare = slipway_testkit::git::clone_bare(&fixture.repo, fixture.root.path(), "bare.git");
    let bare = GitRepository::open(bare.to_str().expect("UTF-8"), &fixture.cache())
        .expect("open a bare repository");
    assert_eq!(bare.work_tree(), None, "a bare repository has no work tree");
    assert_eq!(bare.resolve("main").expect("resolve in bare").sha, commit);

    let not_repo = fixture.root.path().join("plain");
    std::fs::create_dir(&not_repo).expect("create a plain directory");
    let result = GitRepository::open(not_repo.to_str().expect("UTF-8"), &fixture.cache());
    // The temporary directory may itself sit inside a repository on a developer's machine;
    // only assert when it does not.
    if !Path::new("/tmp/.git").exists() {
        assert!(
            matches!(result, Err(GitError::NotARepository { .. })),
            "a plain directory is not a repository, got {result:?}"
        );
    }
    assert!(
        matches!(
            GitRepository::open("/no/such/dir", &fixture.cache()),
            Err(GitError::NotARepository { .. })
        ),
        "a missing directory is not a repository"
    );
}

#[test]
fn branches_are_listed_with_their_tips_even_with_hostile_names() {
    let fixture = Fixture::new();
    let first = fixture.write("a", "1").commit("one");
    git(&fixture.repo, &["branch", "feature/login"]);
    git(&fixture.repo, &["branch", "$(touch_x)"]);
    let repo = fixture.open();
    let branches = repo.branches().expect("list branches");
    let names: Vec<&str> = branches.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["$(touch_x)", "feature/login", "main"],
        "every branch, sorted, names as they are"
    );
    assert!(
        branches.iter().all(|b| b.sha == first),
        "each branch points at its tip"
    );
}

/// A tag pushed under a tracked branch's name (`main`): git alone reads `main` as the tag
/// (`refs/tags/` comes before `refs/heads/` in its rules, with only a warning), so whoever may
/// push a tag would replace the branch. A tracked ref is the branch; a name a person gives
/// that means both is an error naming both.
#[test]
fn a_branch_named_like_a_full_ref_or_a_commit_id_stands_for_neither() {
    let fixture = Fixture::new();
    let good = fixture.write("a", "good").commit("good");
    git(&fixture.repo, &["tag", "v1", &good]);
    git(&fixture.repo, &["checkout", "-q", "-b", "evil"]);
    let evil = fixture.write("a", "evil").commit("evil");
    git(&fixture.repo, &["checkout", "-q", "main"]);
    // Branches anyone who can push may create: `refs/heads/refs/tags/v1`, and one named as
    // the good commit's id.
    for name in ["refs/tags/v1", good.as_str()] {
        git(
            &fixture.repo,
            &["update-ref", &format!("refs/heads/{name}"), &evil],
        );
    }
    let url = format!("file://{}", fixture.repo.display());
    let local = fixture.open();
    let mirror = GitRepository::open(&url, &fixture.cache()).expect("mirror a file:// URL");
    for (what, repo) in [("local", &local), ("mirror", &mirror)] {
        let names: Vec<String> = repo
            .branches()
            .expect("branches")
            .into_iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(names, ["evil", "main"], "{what}");
        for name in ["refs/tags/v1", good.as_str()] {
            assert_eq!(
                repo.resolve_tracked(name).expect("resolved").sha,
                good,
                "{what}: {name} is the tag, the commit"
            );
        }
    }
    assert!(slipway_git::names_a_branch("feature/login"));
    for name in ["HEAD", "refs/heads/main", good.as_str(), "main~1"] {
        assert!(!slipway_git::names_a_branch(name), "{name}");
    }
}

#[test]
fn a_tag_named_like_a_branch_never_replaces_it() {
    let fixture = Fixture::new();
    let good = fixture.write("a", "good").commit("good");
    git(&fixture.repo, &["checkout", "-q", "-b", "evil"]);
    let evil = fixture.write("a", "evil").commit("evil");
    git(&fixture.repo, &["checkout", "-q", "main"]);
    git(&fixture.repo, &["tag", "main", &evil]);
    git(
        &fixture.repo,
        &["tag", "-a", "-m", "annotated", "evil-tag", &evil],
    );
    git(&fixture.repo, &["tag", "feature", &good]);
    git(&fixture.repo, &["branch", "feature", &good]);

    let url = format!("file://{}", fixture.repo.display());
    let local = fixture.open();
    let mirror = GitRepository::open(&url, &fixture.cache()).expect("mirror a file:// URL");
    for (what, repo) in [("local", &local), ("mirror", &mirror)] {
        assert_eq!(
            repo.resolve_tracked("main")
                .expect("the tracked branch")
                .sha,
            good,
            "{what}: a tracked `main` is the branch, not the tag `main`"
        );
        let error = repo
            .resolve("main")
            .expect_err("a name that is a branch and a tag is ambiguous");
        let message = error.to_string();
        assert!(
            matches!(error, GitError::AmbiguousReference { .. })
                && message.contains("refs/heads/main")
                && message.contains("refs/tags/main"),
            "{what}: the error names both candidates: {message}"
        );
        assert!(
            repo.resolve("main~1").is_err(),
            "{what}: a revision suffix does not hide the ambiguity"
        );
        assert_eq!(
            repo.resolve("refs/heads/main").expect("the full name").sha,
            good,
            "{what}: the full name picks one"
        );
        assert_eq!(
            repo.resolve("refs/tags/main").expect("the full name").sha,
            evil,
            "{what}: the tag by its full name"
        );
        assert_eq!(
            repo.resolve("feature").expect("same commit").sha,
            good,
            "{what}: a branch and a tag at the same commit are not ambiguous"
        );
        assert_eq!(
            repo.resolve("evil-tag").expect("a tag alone").sha,
            evil,
            "{what}: a tag alone resolves"
        );
        assert_eq!(
            repo.resolve_tracked("evil-tag")
                .expect("no such branch")
                .sha,
            evil,
            "{what}: a tracked name with no branch resolves as any ref"
        );
        assert_eq!(
            repo.resolve_tracked(&good).expect("a commit id").sha,
            good,
            "{what}: a commit id"
        );
        assert_eq!(
            repo.resolve_tracked("HEAD").expect("HEAD").sha,
            good,
            "{what}: HEAD"
        );
    }
    assert_eq!(
        mirror
            .resolve_tracked("origin/main")
            .expect("origin/main in a mirror")
            .sha,
        good,
        "origin/main in a mirror is the remote's branch"
    );

    // A branch named like an abbreviated commit id is ambiguous with the commit.
    git(&fixture.repo, &["branch", &good[..8], &evil]);
    let local = fixture.open();
    let error = local
        .resolve(&good[..8])
        .expect_err("a branch named like a commit id");
    assert!(
        error.to_string().contains(&good[..12]),
        "the commit is named: {error}"
    );
    assert_eq!(
        local.resolve(&good).expect("a full id is the commit").sha,
        good,
        "a full commit id is never a branch"
    );
}

/// `refs/replace/<id>` makes git read one object as another; a mirror fetches every ref, so
/// anyone who can push one could swap a reviewed commit's content. Objects are read as stored.
#[test]
fn a_replace_ref_never_substitutes_an_object() {
    let fixture = Fixture::new();
    let good = fixture.write("a", "good").commit("good");
    git(&fixture.repo, &["checkout", "-q", "-b", "evil"]);
    let evil = fixture.write("a", "evil").commit("evil");
    git(&fixture.repo, &["checkout", "-q", "main"]);
    git(&fixture.repo, &["replace", &good, &evil]);
    let url = format!("file://{}", fixture.repo.display());
    let mirror = GitRepository::open(&url, &fixture.cache()).expect("mirror a file:// URL");
    for (what, repo) in [("local", fixture.open()), ("mirror", mirror)] {
        let main = repo.resolve("main").expect("resolve main");
        assert_eq!(main.sha, good, "{what}: main is the commit it points at");
        assert_eq!(
            main.summary, "good",
            "{what}: its own message, not the replacement's"
        );
        assert_eq!(
            read(&repo, &good, "a").expect("read a"),
            Some("good".to_owned()),
            "{what}: its own tree, not the replacement's"
        );
    }
}

/// One repository opened for a long time (the controller's) sees commits made, packs
/// rewritten and branches moved since it was opened.
#[test]
fn an_open_repository_sees_new_commits_and_repacks() {
    let fixture = Fixture::new();
    let first = fixture.write("a", "1").commit("one");
    let repo = fixture.open();
    assert_eq!(repo.resolve("main").expect("resolve").sha, first);
    let second = fixture.write("a", "2").commit("two");
    assert_eq!(
        repo.resolve("main").expect("resolve after a commit").sha,
        second,
        "a new commit is seen without reopening"
    );
    git(&fixture.repo, &["gc", "-q", "--prune=now"]);
    let third = fixture.write("a", "3").commit("three");
    git(&fixture.repo, &["repack", "-a", "-d", "-q"]);
    git(&fixture.repo, &["pack-refs", "--all"]);
    assert_eq!(
        repo.resolve("main").expect("resolve after a repack").sha,
        third,
        "packed refs and new packs are read"
    );
    for (commit, content) in [(&first, "1"), (&second, "2"), (&third, "3")] {
        assert_eq!(
            read(&repo, commit, "a").expect("read after a repack"),
            Some(content.to_owned()),
            "objects moved into a new pack are found"
        );
    }
}

/// Readers on many threads at once, each at its own commit: no answer reaches another
/// thread's question.
#[test]
fn concurrent_reads_never_mix_answers() {
    let fixture = Fixture::new();
    let commits: Vec<(String, String)> = (0..8)
        .map(|n| {
            let content = format!("content {n}\n").repeat(n + 1);
            let commit = fixture.write("f", &content).commit(&format!("c{n}"));
            (commit, content)
        })
        .collect();
    let repo = fixture.open();
    std::thread::scope(|scope| {
        for (commit, content) in &commits {
            let repo = &repo;
            scope.spawn(move || {
                for _ in 0..50 {
                    assert_eq!(
                        read(repo, commit, "f")
                            .expect("read concurrently")
                            .as_deref(),
                        Some(content.as_str()),
                        "each thread reads its own commit's file"
                    );
                    assert_eq!(
                        repo.list_files(commit, "").expect("list concurrently")[0].size,
                        content.len() as u64,
                        "each thread lists its own commit"
                    );
                }
            });
        }
    });
}

#[test]
fn revision_suffixes_and_abbreviations_resolve_as_git_reads_them() {
    let fixture = Fixture::new();
    let base = fixture.write("a", "1").commit("base");
    git(&fixture.repo, &["checkout", "-q", "-b", "side"]);
    let side = fixture.write("b", "1").commit("side");
    git(&fixture.repo, &["checkout", "-q", "main"]);
    let main = fixture.write("a", "2").commit("main");
    git(
        &fixture.repo,
        &["merge", "-q", "--no-ff", "-m", "merge", "side"],
    );
    let merge = git(&fixture.repo, &["rev-parse", "HEAD"]);
    git(&fixture.repo, &["tag", "-a", "-m", "release", "v1"]);
    let repo = fixture.open();
    for (reference, expected) in [
        ("main", &merge),
        ("main^", &main),
        ("main^1", &main),
        ("main^2", &side),
        ("main~2", &base),
        ("main^2~1", &base),
        ("main^0", &merge),
        ("v1^{commit}", &merge),
        ("v1^{}", &merge),
        ("v1~1", &main),
        ("HEAD~1", &main),
        ("HEAD@{0}", &merge),
    ] {
        assert_eq!(
            &repo.resolve(reference).expect("a revision git reads").sha,
            expected,
            "`{reference}` names the commit git names"
        );
    }
    for reference in ["main~10", "main^3", "v1^{tree}", "main^{/nothing}"] {
        assert!(
            matches!(
                repo.resolve(reference),
                Err(GitError::ReferenceNotFound { .. })
            ),
            "`{reference}` names no commit"
        );
    }
    let tree = git(&fixture.repo, &["rev-parse", "HEAD^{tree}"]);
    assert!(
        matches!(repo.resolve(&tree), Err(GitError::ReferenceNotFound { .. })),
        "a tree's id is no commit"
    );
    assert_eq!(
        repo.resolve(&format!("{}~1", &merge[..8]))
            .expect("an abbreviated id with a suffix")
            .sha,
        main,
        "suffixes apply to abbreviated ids"
    );
}

/// Blobs over what is read into memory at once are streamed into an export, whole.
#[test]
fn a_large_file_is_exported_whole() {
    let fixture = Fixture::new();
    let size = 33 * 1024 * 1024;
    let mut content = "0123456789abcdef".repeat(size / 16);
    content.push_str("end");
    let commit = fixture
        .write("big.bin", &content)
        .write("small", "s")
        .commit("big");
    let repo = fixture.open();
    let dest = fixture.dest("big");
    repo.export(&commit, "", &dest)
        .expect("export a large file");
    let exported = std::fs::read_to_string(dest.join("big.bin")).expect("read the large file");
    assert!(
        exported.len() == content.len() && exported == content,
        "the large file is exported whole ({} of {} bytes)",
        exported.len(),
        content.len()
    );
    assert_eq!(
        mode(&dest.join("big.bin")),
        0o444,
        "a streamed file is read-only too"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("small")).expect("read the small file"),
        "s"
    );
    let result = repo.read_file(&commit, "big.bin", 1 << 20);
    assert!(
        matches!(result, Err(GitError::TooLarge { .. })),
        "a read under its limit refuses it, got {:?}",
        result.map(|content| content.map(|bytes| bytes.len()))
    );
}

/// A repository of SHA-256 object ids reads as one of SHA-1 ids does.
#[test]
fn a_sha256_repository_is_read() {
    let root = tempfile::tempdir().expect("create a temporary directory");
    git(
        root.path(),
        &["init", "-q", "-b", "main", "--object-format=sha256", "repo"],
    );
    let fixture = Fixture {
        repo: root.path().join("repo"),
        root,
    };
    let commit = fixture
        .write("etc/app.toml", "level = 1\n")
        .symlink("link", "etc/app.toml")
        .commit("sha-256");
    assert_eq!(commit.len(), 64, "git made a SHA-256 commit");
    let repo = fixture.open();
    assert_eq!(repo.resolve("main").expect("resolve main").sha, commit);
    assert_eq!(
        repo.resolve(&commit[..10]).expect("an abbreviated id").sha,
        commit
    );
    assert_eq!(
        read(&repo, &commit, "link").expect("read through a symlink"),
        Some("level = 1\n".to_owned())
    );
    let listed = repo.list_files(&commit, "").expect("list");
    assert!(
        listed.iter().all(|entry| entry.oid.len() == 64),
        "ids are SHA-256 ids"
    );
    let dest = fixture.dest("sha256");
    repo.export(&commit, "etc", &dest).expect("export");
    assert_eq!(
        std::fs::read_to_string(dest.join("etc/app.toml")).expect("read the export"),
        "level = 1\n"
    );
    assert_eq!(
        repo.branches().expect("branches")[0].sha,
        commit,
        "branches carry SHA-256 ids"
    );
}
