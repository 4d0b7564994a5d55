//! The `file` provider against a real data directory.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::TestEnv;
use serde_json::{Value, json};
use slipway_providers::{DynProvider, Observation, ProviderError, Registry};

fn provider(registry: &Registry) -> &dyn DynProvider {
    registry.get("file").expect("file is a local provider")
}

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn create_writes_the_file_with_its_mode_and_reports_its_absolute_path() {
    let env = TestEnv::new();
    let registry = Registry::local();
    let file = provider(&registry);
    let config = json!({"path": "etc/app.toml", "content": "level = \"info\"\n", "mode": "0600"});
    let applied = file
        .create(env.ctx("config"), &config)
        .expect("create a file");
    let path = env.dirs.data.join("etc/app.toml");
    assert_eq!(
        applied.outputs["path"],
        json!(path.display().to_string()),
        "the path output is absolute"
    );
    assert_eq!(
        std::fs::read_to_string(&path).expect("the file exists"),
        "level = \"info\"\n",
        "the content is written"
    );
    assert_eq!(
        mode_of(&path),
        0o600,
        "the mode is applied whatever the umask"
    );
    let expected: String = sha2::Digest::finalize(sha2::Digest::chain_update(
        <sha2::Sha256 as sha2::Digest>::new(),
        "level = \"info\"\n",
    ))
    .iter()
    .map(|b| format!("{b:02x}"))
    .collect();
    assert_eq!(
        applied.live["sha256"],
        json!(expected),
        "live records the content's SHA-256"
    );
    assert_eq!(
        file.observe(env.ctx("config"), &config, &applied.live)
            .expect("observe"),
        Observation::InSync,
        "a file just written is in sync"
    );
    let leftovers: Vec<_> = std::fs::read_dir(env.dirs.data.join("etc"))
        .expect("list etc")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "no temporary file is left next to it: {leftovers:?}"
    );
}

#[test]
fn observe_reports_edits_mode_changes_and_removal() {
    let env = TestEnv::new();
    let registry = Registry::local();
    let file = provider(&registry);
    let config = json!({"path": "app.toml", "content": "a = 1\n"});
    let applied = file.create(env.ctx("config"), &config).expect("create");
    let path = env.dirs.data.join("app.toml");
    assert_eq!(mode_of(&path), 0o644, "the default mode is 0644");

    std::fs::write(&path, "a = 2\n").expect("edit the file");
    assert_eq!(
        file.observe(env.ctx("config"), &config, &applied.live)
            .expect("observe"),
        Observation::Drifted {
            reason: "content changed on disk".to_owned()
        },
        "an edited file has drifted"
    );
    std::fs::write(&path, "a = 1\n").expect("restore the content");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    assert!(
        matches!(
            file.observe(env.ctx("config"), &config, &applied.live).expect("observe"),
            Observation::Drifted { reason } if reason.contains("mode")
        ),
        "a chmod-ed file has drifted"
    );
    std::fs::remove_file(&path).expect("remove the file");
    assert!(
        matches!(
            file.observe(env.ctx("config"), &config, &applied.live)
                .expect("observe"),
            Observation::Missing { .. }
        ),
        "a removed file is missing"
    );
}

#[test]
fn a_file_made_huge_by_the_environment_is_drift_and_is_not_read() {
    let env = TestEnv::new();
    let registry = Registry::local();
    let file = provider(&registry);
    let config = json!({"path": "etc/app.toml", "content": "a = 1\n"});
    let applied = file.create(env.ctx("config"), &config).expect("create");
    let path = env.dirs.data.join("etc/app.toml");
    // What the environment's own process may do to its file: a sparse 1 TiB, no disk used.
    // Read whole into memory, it would abort the controller.
    let huge = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    huge.set_len(1 << 40).expect("a sparse file");
    let drifted = Observation::Drifted {
        reason: "content changed on disk".to_owned(),
    };
    assert_eq!(
        file.observe(env.ctx("config"), &config, &applied.live)
            .expect("observe"),
        drifted
    );
    // A record kept before sizes were: the same, past the largest file it reads.
    let mut older = applied.live.clone();
    older
        .as_object_mut()
        .expect("a live record is an object")
        .remove("size")
        .expect("it keeps the size now");
    assert_eq!(
        file.observe(env.ctx("config"), &config, &older)
            .expect("observe"),
        drifted
    );
    huge.set_len(0).expect("truncated");
    std::fs::write(&path, "a = 1\n").expect("the content again");
    for live in [&applied.live, &older] {
        assert_eq!(
            file.observe(env.ctx("config"), &config, live)
                .expect("observe"),
            Observation::InSync
        );
    }
}

#[test]
fn update_rewrites_in_place_and_moves_a_renamed_file() {
    let env = TestEnv::new();
    let registry = Registry::local();
    let file = provider(&registry);
    let first = file
        .create(
            env.ctx("config"),
            &json!({"path": "a/one.txt", "content": "1"}),
        )
        .expect("create");
    let second = file
        .update(
            env.ctx("config"),
            &json!({"path": "a/one.txt", "content": "2"}),
            &first.live,
        )
        .expect("update the content");
    assert_eq!(
        std::fs::read_to_string(env.dirs.data.join("a/one.txt")).expect("read"),
        "2",
        "update rewrites the content"
    );
    assert_ne!(
        first.live["sha256"], second.live["sha256"],
        "the recorded hash follows the content"
    );
    let third = file
        .update(
            env.ctx("config"),
            &json!({"path": "b/two.txt", "content": "2"}),
            &second.live,
        )
        .expect("update the path");
    assert!(
        env.dirs.data.join("b/two.txt").is_file(),
        "the file is written at its new path"
    );
    assert!(
        !env.dirs.data.join("a").exists(),
        "the old file and its emptied directory are removed"
    );
    assert_eq!(
        third.outputs["path"],
        json!(env.dirs.data.join("b/two.txt").display().to_string()),
        "the path output follows the new path"
    );
}

#[test]
fn delete_removes_the_file_and_emptied_directories_and_is_idempotent() {
    let env = TestEnv::new();
    let registry = Registry::local();
    let file = provider(&registry);
    let applied = file
        .create(
            env.ctx("config"),
            &json!({"path": "x/y/z.txt", "content": "z"}),
        )
        .expect("create");
    std::fs::write(env.dirs.data.join("x/keep.txt"), "someone else's").expect("write a neighbour");
    file.delete(env.ctx("config"), Some(&applied.live))
        .expect("delete");
    assert!(
        !env.dirs.data.join("x/y").exists(),
        "the emptied directory y is removed"
    );
    assert!(
        env.dirs.data.join("x/keep.txt").is_file(),
        "a directory that still holds other files is kept, with them"
    );
    assert!(env.dirs.data.is_dir(), "the data directory itself is kept");
    file.delete(env.ctx("config"), Some(&applied.live))
        .expect("delete again");
    file.delete(env.ctx("config"), None)
        .expect("delete with no record");
}

#[test]
fn delete_without_a_record_removes_what_an_interrupted_create_wrote() {
    let env = TestEnv::new();
    let registry = Registry::local();
    let file = provider(&registry);
    file.create(
        env.ctx("config"),
        &json!({"path": "etc/app.toml", "content": "x"}),
    )
    .expect("create");
    file.delete(env.ctx("config"), None).expect("delete(None)");
    assert!(
        !env.dirs.data.join("etc/app.toml").exists(),
        "delete(None) finds the file through the create's marker:\n{}",
        env.report()
    );
    assert!(
        std::fs::read_dir(&env.dirs.run)
            .expect("list run")
            .next()
            .is_none(),
        "the marker is removed too:\n{}",
        env.report()
    );
}

#[test]
fn paths_leaving_the_data_directory_are_configuration_errors() {
    let env = TestEnv::new();
    let registry = Registry::local();
    let file = provider(&registry);
    for path in [
        "",
        "/etc/passwd",
        "../outside",
        "a/../../outside",
        "a\u{0}b",
        "dir/",
    ] {
        let err = file
            .create(env.ctx("config"), &json!({"path": path, "content": "x"}))
            .expect_err("a bad path is refused");
        assert!(
            matches!(err, ProviderError::Config(_)),
            "path {path:?} is a configuration error, got {err:?}"
        );
    }
    for (config, why) in [
        (
            json!({"path": "a", "content": "x", "mode": "rw"}),
            "a non-octal mode",
        ),
        (
            json!({"path": "a", "content": "x", "owner": "root"}),
            "an unknown field",
        ),
        (json!({"path": "a"}), "a missing content"),
    ] {
        let err = file.create(env.ctx("config"), &config).expect_err(why);
        assert!(
            matches!(err, ProviderError::Config(_)),
            "{why} is a configuration error, got {err:?}"
        );
    }
}

#[test]
fn a_symlink_on_the_path_is_never_followed() {
    let env = TestEnv::new();
    let registry = Registry::local();
    let file = provider(&registry);
    let outside = env.dirs.root.join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir outside");
    let victim = outside.join("victim.txt");
    std::fs::write(&victim, "precious").expect("write victim");
    std::os::unix::fs::symlink(&outside, env.dirs.data.join("link")).expect("dir symlink");
    std::os::unix::fs::symlink(&victim, env.dirs.data.join("evil.txt")).expect("file symlink");

    for path in ["link/victim.txt", "link/new.txt", "evil.txt"] {
        let err = file
            .create(
                env.ctx("config"),
                &json!({"path": path, "content": "pwned"}),
            )
            .expect_err("writing through a symlink is refused");
        assert!(
            err.to_string().contains("symlink"),
            "the error says a symlink is in the way: {err}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&victim).expect("read victim"),
        "precious",
        "nothing outside the data directory was written"
    );
    assert!(
        !outside.join("new.txt").exists(),
        "nothing was created outside the data directory"
    );
    assert!(
        env.dirs.data.join("evil.txt").is_symlink(),
        "the refused symlink is left as it was"
    );
}

#[test]
fn a_recorded_path_outside_the_data_directory_is_not_deleted() {
    let env = TestEnv::new();
    let registry = Registry::local();
    let file = provider(&registry);
    let victim = env.dirs.root.join("victim.txt");
    std::fs::write(&victim, "precious").expect("write victim");
    let forged: Value = json!({"path": victim.display().to_string(), "sha256": "00"});
    file.delete(env.ctx("config"), Some(&forged))
        .expect_err("a forged record is refused");
    assert!(
        victim.exists(),
        "a file outside the data directory is never removed"
    );
}

#[test]
fn a_file_and_the_directories_made_for_it_belong_to_the_environments_uid() {
    use std::os::unix::fs::MetadataExt;
    if !slipway_providers::sandbox::running_as_root() {
        eprintln!("not root: files cannot be given to another uid here");
        return;
    }
    let env = TestEnv::new();
    let registry = Registry::local();
    let file = provider(&registry);
    let sandbox = slipway_providers::sandbox::Sandbox::uid(65534, 65533);
    let ctx = slipway_providers::ResourceContext {
        sandbox: &sandbox,
        ..env.ctx("secret")
    };
    let config = json!({"path": "conf/deep/secret.txt", "content": "s3cret", "mode": "0600"});
    let applied = file.create(ctx, &config).expect("create a file");
    for path in ["conf", "conf/deep", "conf/deep/secret.txt"] {
        let meta = std::fs::metadata(env.dirs.data.join(path)).expect("metadata");
        assert_eq!(
            (meta.uid(), meta.gid()),
            (65534, 65533),
            "{path} belongs to the environment, so its own code can read a 0600 file"
        );
    }
    assert_eq!(mode_of(&env.dirs.data.join("conf/deep/secret.txt")), 0o600);
    // Its code (that uid) replaces the directory with a link to somewhere of root's: the
    // update is refused and writes nothing there.
    let outside = env.dirs.root.join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir outside");
    std::fs::remove_dir_all(env.dirs.data.join("conf/deep")).expect("remove");
    std::os::unix::fs::symlink(&outside, env.dirs.data.join("conf/deep")).expect("symlink");
    let err = file
        .update(
            ctx,
            &json!({"path": "conf/deep/secret.txt", "content": "v2", "mode": "0600"}),
            &applied.live,
        )
        .expect_err("writing through the planted link is refused");
    assert!(err.to_string().contains("symlink"), "{err}");
    assert!(
        std::fs::read_dir(&outside).expect("list").next().is_none(),
        "nothing was written through the link"
    );
    assert!(
        matches!(
            file.observe(ctx, &config, &applied.live).expect("observe"),
            Observation::Drifted { .. }
        ),
        "observing reports the link as drift, without following it"
    );
}

#[test]
fn delete_through_a_planted_directory_link_removes_nothing_behind_it() {
    let env = TestEnv::new();
    let registry = Registry::local();
    let file = provider(&registry);
    let config = json!({"path": "etc/app.conf", "content": "mine"});
    let applied = file.create(env.ctx("conf"), &config).expect("create");
    let outside = env.dirs.root.join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir outside");
    std::fs::write(outside.join("app.conf"), "precious").expect("write victim");
    std::fs::remove_dir_all(env.dirs.data.join("etc")).expect("remove etc");
    std::os::unix::fs::symlink(&outside, env.dirs.data.join("etc")).expect("symlink");
    file.delete(env.ctx("conf"), Some(&applied.live))
        .expect("deleting succeeds: nothing of ours is behind a link");
    assert_eq!(
        std::fs::read_to_string(outside.join("app.conf")).expect("victim"),
        "precious",
        "the file behind the link is untouched"
    );
}

/// Waits until the last change of every file in `paths` is further in the past than a look
/// may remember a fingerprint from ([`slipway_providers::file::SETTLED`]): then an observation
/// remembers the hash it reads, and the next one can reuse it.
fn wait_settled(paths: &[&std::path::Path]) {
    use std::os::unix::fs::MetadataExt;
    let settled = slipway_providers::file::SETTLED + std::time::Duration::from_millis(100);
    let deadline = std::time::Instant::now() + settled * 3;
    for path in paths {
        loop {
            let meta = std::fs::symlink_metadata(path).expect("metadata");
            let changed = std::time::UNIX_EPOCH
                + std::time::Duration::new(meta.ctime() as u64, meta.ctime_nsec() as u32);
            if changed.elapsed().is_ok_and(|age| age > settled) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} settles within {settled:?}",
                path.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Sets `path`'s modification time to `to`'s (as a hand-made forgery of an unchanged file
/// would): the change time moves on regardless.
fn copy_mtime(path: &std::path::Path, to: &std::path::Path) {
    let modified = std::fs::metadata(to)
        .expect("metadata")
        .modified()
        .expect("mtime");
    std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open")
        .set_modified(modified)
        .expect("set the modification time");
}

#[test]
fn a_file_edited_after_a_look_shows_drifted_at_the_next_one_even_with_the_same_size_and_mtime() {
    let env = TestEnv::new();
    let registry = Registry::local();
    let file = provider(&registry);
    let config = json!({"path": "etc/app.toml", "content": "a = 1\n"});
    let applied = file.create(env.ctx("config"), &config).expect("create");
    let path = env.dirs.data.join("etc/app.toml");
    wait_settled(&[&path]);
    let look = || {
        file.observe(env.ctx("config"), &config, &applied.live)
            .expect("observe")
    };
    assert_eq!(look(), Observation::InSync, "the settled file is in sync");
    assert_eq!(
        look(),
        Observation::InSync,
        "and again, from its fingerprint"
    );

    // The same size, and the modification time put back: only the change time differs.
    let before = env.dirs.root.join("before");
    std::fs::copy(&path, &before).expect("keep the old times");
    copy_mtime(&before, &path);
    std::fs::write(&path, "a = 2\n").expect("edit the file in place");
    copy_mtime(&path, &before);
    assert_eq!(
        look(),
        Observation::Drifted {
            reason: "content changed on disk".to_owned()
        },
        "an edit of the same size with the old mtime shows at the next look: {}",
        env.report()
    );
    std::fs::write(&path, "a = 1\n").expect("restore the content");
    assert_eq!(
        look(),
        Observation::InSync,
        "the content put back is in sync again"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(
        matches!(look(), Observation::Drifted { reason } if reason.contains("mode")),
        "a chmod after a look shows at the next one"
    );
}

#[test]
fn an_edit_of_the_same_size_right_after_a_look_shows_drifted() {
    // The racy case: the file changes in the same clock tick (the same second, on a file
    // system with second timestamps) as the look that hashed it. That look's fingerprint is
    // not remembered, so the next one reads the file again.
    let env = TestEnv::new();
    let registry = Registry::local();
    let file = provider(&registry);
    let config = json!({"path": "app.toml", "content": "a = 1\n"});
    let applied = file.create(env.ctx("config"), &config).expect("create");
    let path = env.dirs.data.join("app.toml");
    for round in 0..20 {
        assert_eq!(
            file.observe(env.ctx("config"), &config, &applied.live)
                .expect("observe"),
            Observation::InSync,
            "round {round}: the file as written is in sync"
        );
        std::fs::write(&path, "a = 2\n").expect("edit the file");
        assert_eq!(
            file.observe(env.ctx("config"), &config, &applied.live)
                .expect("observe"),
            Observation::Drifted {
                reason: "content changed on disk".to_owned()
            },
            "round {round}: an edit right after a look shows at the next one"
        );
        std::fs::write(&path, "a = 1\n").expect("restore the content");
    }
}

#[test]
fn a_file_replaced_by_another_inode_with_the_same_size_and_mtime_shows_drifted() {
    let env = TestEnv::new();
    let registry = Registry::local();
    let file = provider(&registry);
    let config = json!({"path": "etc/app.toml", "content": "a = 1\n"});
    let applied = file.create(env.ctx("config"), &config).expect("create");
    let path = env.dirs.data.join("etc/app.toml");
    let other = env.dirs.data.join("etc/other");
    std::fs::write(&other, "a = 9\n").expect("write another file");
    copy_mtime(&other, &path);
    wait_settled(&[&path, &other]);
    let look = || {
        file.observe(env.ctx("config"), &config, &applied.live)
            .expect("observe")
    };
    assert_eq!(look(), Observation::InSync, "the file is in sync");
    std::fs::rename(&other, &path).expect("rename another file over it");
    assert_eq!(
        look(),
        Observation::Drifted {
            reason: "content changed on disk".to_owned()
        },
        "another inode of the same size and mtime in its place has drifted: {}",
        env.report()
    );
}

#[test]
fn a_directory_replaced_by_a_symlink_to_it_shows_drifted_though_the_file_is_the_same() {
    let env = TestEnv::new();
    let registry = Registry::local();
    let file = provider(&registry);
    let config = json!({"path": "etc/app.toml", "content": "a = 1\n"});
    let applied = file.create(env.ctx("config"), &config).expect("create");
    let path = env.dirs.data.join("etc/app.toml");
    wait_settled(&[&path]);
    // Each look a pass of its own, as the engine's are: with the directories opened anew.
    let look = || {
        let dirs = env.dirs.clone();
        let ctx = slipway_providers::ResourceContext {
            dirs: &dirs,
            ..env.ctx("config")
        };
        file.observe(ctx, &config, &applied.live).expect("observe")
    };
    assert_eq!(look(), Observation::InSync, "the file is in sync");
    assert_eq!(
        look(),
        Observation::InSync,
        "and again, from its fingerprint"
    );
    // The very same inode, unchanged, reached through a link: the link is the drift.
    std::fs::rename(env.dirs.data.join("etc"), env.dirs.data.join("etc2")).expect("move etc");
    std::os::unix::fs::symlink("etc2", env.dirs.data.join("etc")).expect("link etc to it");
    assert!(
        matches!(look(), Observation::Drifted { reason } if reason.contains("symlink")),
        "a directory on the way replaced by a symlink has drifted: {}",
        env.report()
    );
    std::fs::remove_file(env.dirs.data.join("etc")).expect("remove the link");
    std::fs::rename(env.dirs.data.join("etc2"), env.dirs.data.join("etc")).expect("move back");
    assert_eq!(look(), Observation::InSync, "put back, it is in sync");
    std::fs::remove_file(&path).expect("remove the file");
    std::os::unix::fs::symlink(env.dirs.data.join("etc2"), &path).expect("a symlink in its place");
    let found = look();
    assert!(
        matches!(&found, Observation::Drifted { reason } if reason.contains("symlink")),
        "the file replaced by a symlink has drifted: {found:?}"
    );
}

#[test]
fn a_pass_keeps_a_bounded_number_of_directories_open() {
    let env = TestEnv::new();
    let registry = Registry::local();
    let file = provider(&registry);
    let most = slipway_providers::OpenDirs::MOST;
    let mut files = Vec::new();
    for i in 0..most + 8 {
        let config = json!({"path": format!("d{i}/f"), "content": "x\n"});
        let applied = file.create(env.ctx("config"), &config).expect("create");
        files.push((config, applied));
    }
    let paths: Vec<_> = (0..files.len())
        .map(|i| env.dirs.data.join(format!("d{i}/f")))
        .collect();
    wait_settled(&paths.iter().map(|p| p.as_path()).collect::<Vec<_>>());
    let dirs = env.dirs.clone();
    let ctx = slipway_providers::ResourceContext {
        dirs: &dirs,
        ..env.ctx("config")
    };
    for round in ["read and hashed", "from their fingerprints"] {
        for (config, applied) in &files {
            assert_eq!(
                file.observe(ctx, config, &applied.live).expect("observe"),
                Observation::InSync,
                "{round}"
            );
        }
    }
    assert_eq!(
        format!("{:?}", dirs.opened),
        format!("OpenDirs({most} opened)"),
        "a pass over files in {} directories holds at most {most} open",
        files.len()
    );
    std::fs::write(paths.last().expect("a file"), "y\n").expect("edit the last file");
    assert!(
        matches!(
            file.observe(
                ctx,
                &files.last().expect("a file").0,
                &files.last().expect("a file").1.live
            )
            .expect("observe"),
            Observation::Drifted { .. }
        ),
        "a file past those directories is still observed"
    );
}
