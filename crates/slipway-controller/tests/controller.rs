//! The controller against a real bare repository that tests push to with the `git` CLI, a
//! real state store and real files. (Processes are covered by the binary's tests, which have
//! the supervisor.)

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use slipway_controller::clock::Clock;
use slipway_controller::{Controller, CreateEnvironment, Options};
use slipway_core::EnvName;
use slipway_core::vocab::{DeploymentStatus, EventKind, SyncState};
use slipway_engine::{Engine, EngineConfig, Origin};
use slipway_git::GitRepository;
use slipway_testkit::git::git;

/// The wall clock, moved forward by hand: times to live pass without waiting for them.
#[derive(Debug, Default)]
struct HandClock {
    ahead_ms: AtomicI64,
}

impl HandClock {
    fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).expect("a test's duration fits");
        self.ahead_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for HandClock {
    fn now_ms(&self) -> i64 {
        slipway_state::now_ms() + self.ahead_ms.load(Ordering::SeqCst)
    }
}

struct World {
    _dir: tempfile::TempDir,
    clock: Arc<HandClock>,
    work: PathBuf,
    home: PathBuf,
    controller: Controller,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: tokio::runtime::Runtime,
}

const STACK: &str = r#"version: 1
stack: ctl
variables: { greeting: hello }
environments:
  dev: { track: main }
  watch: { track: main, self_heal: false }
  previews: { generate: { branches: ["feature/*"] }, ttl: 1h }
resources:
  page: { type: file, path: page.txt, content: "${vars.greeting} from ${env.name}" }
"#;

impl World {
    fn new() -> World {
        World::polling(Duration::from_millis(200))
    }

    /// [`World::new`] fetching the repository every `poll` (after the first look on start).
    fn polling(poll: Duration) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let bare = dir.path().join("origin.git");
        let work = dir.path().join("work");
        let home = dir.path().join("home");
        git(
            dir.path(),
            &[
                "init",
                "-q",
                "--bare",
                "-b",
                "main",
                bare.to_str().expect("utf-8"),
            ],
        );
        git(
            dir.path(),
            &["clone", "-q", bare.to_str().expect("utf-8"), "work"],
        );
        std::fs::write(work.join("slipway.yaml"), STACK).expect("write");
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", "first"]);
        git(&work, &["push", "-q", "origin", "main"]);
        let engine =
            Arc::new(Engine::open(&home, EngineConfig::default(), vec![]).expect("engine"));
        let url = format!("file://{}", bare.display());
        let source = Arc::new(GitRepository::open(&url, &home.join("repos")).expect("mirror"));
        let clock = Arc::new(HandClock::default());
        let options = Options {
            clock: clock.clone(),
            poll_interval: poll,
            drift_interval: Duration::from_millis(300),
            concurrency: 2,
            ..Options::default()
        };
        let controller = Controller::new(engine, source, &url, "", options);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let c = controller.clone();
        runtime.spawn(async move {
            c.run(async {
                let _ = rx.await;
            })
            .await
        });
        World {
            _dir: dir,
            clock,
            work,
            home,
            controller,
            stop: Some(tx),
            runtime,
        }
    }

    fn push(&self, branch: &str, stack: &str, message: &str) -> String {
        self.push_by(None, branch, stack, message)
    }

    /// [`World::push`] by `pusher`, recorded as the forge's push webhook would record it (here
    /// before the push, so that no discovery sees the branch without it).
    fn push_by(&self, pusher: Option<&str>, branch: &str, stack: &str, message: &str) -> String {
        git(&self.work, &["checkout", "-q", "-B", branch]);
        std::fs::write(self.work.join("slipway.yaml"), stack).expect("write");
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-qm", message, "--allow-empty"]);
        let sha = git(&self.work, &["rev-parse", "HEAD"]);
        if let Some(pusher) = pusher {
            self.controller
                .engine()
                .store()
                .record_push(&format!("refs/heads/{branch}"), &sha, pusher, 1)
                .expect("record the push");
        }
        git(&self.work, &["push", "-q", "-f", "origin", branch]);
        sha
    }

    /// Waits until `env` serves `text`; `what` says what that shows.
    fn wait_page(&self, env: &str, text: &str, what: &str) {
        wait_for(what, T, || self.page(env).filter(|p| p == text));
    }

    /// Waits until `env` is recorded in `sync`; `what` says what that shows. Its record then.
    fn wait_sync(
        &self,
        env: &str,
        sync: SyncState,
        what: &str,
    ) -> slipway_state::EnvironmentRecord {
        wait_for(what, T, || self.record(env).filter(|r| r.sync == sync))
    }

    /// Pushes `branch`, waits for its environment `env`, and makes its file undeletable: its
    /// marker made a directory, the delete fails (whoever the engine runs as). The marker,
    /// to mend it with `remove_dir_all`.
    fn undeletable(&self, branch: &str, env: &str) -> PathBuf {
        self.push(branch, STACK, "a feature");
        self.wait_page(
            env,
            &format!("hello from {env}"),
            "the branch's environment runs",
        );
        let marker = self.home.join("envs").join(env).join("run/page.file.json");
        std::fs::remove_file(&marker).expect("the marker");
        std::fs::create_dir_all(marker.join("stuck")).expect("a directory in its place");
        marker
    }

    fn page(&self, env: &str) -> Option<String> {
        std::fs::read_to_string(self.home.join("envs").join(env).join("data/page.txt")).ok()
    }

    fn record(&self, env: &str) -> Option<slipway_state::EnvironmentRecord> {
        self.controller
            .engine()
            .store()
            .environment(&env_name(env))
            .expect("store")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A name the test knows to be valid.
fn env_name(name: &str) -> EnvName {
    EnvName::parse(name).expect("the test's environment names are DNS labels")
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const T: Duration = Duration::from_secs(20);

#[test]
fn tracked_environments_follow_pushes_and_branches_come_and_go() {
    let w = World::new();
    w.wait_page("dev", "hello from dev", "dev runs the first commit");

    let second = w.push(
        "main",
        &STACK.replace("greeting: hello", "greeting: bonjour"),
        "bonjour",
    );
    w.wait_page("dev", "bonjour from dev", "dev runs the pushed commit");
    // The page is written before the deployment that wrote it is recorded as finished.
    let record = wait_for("dev's record names the pushed commit", T, || {
        w.record("dev")
            .filter(|r| r.commit.as_deref() == Some(second.as_str()))
    });
    assert_eq!(record.commit.as_deref(), Some(second.as_str()));
    assert_eq!(record.sync, SyncState::Synced);

    w.push(
        "feature/login",
        &STACK.replace("greeting: hello", "greeting: hi"),
        "a feature",
    );
    w.wait_page(
        "br-feature-login",
        "hi from br-feature-login",
        "the branch's environment serves its own version",
    );
    let generated = w.record("br-feature-login").expect("recorded");
    assert_eq!(
        (generated.kind.as_str(), generated.definition.as_deref()),
        ("generated", Some("previews"))
    );
    assert!(
        generated.expires_at.is_some(),
        "a generated environment has an expiry from its family's ttl"
    );

    git(
        &w.work,
        &["push", "-q", "origin", "--delete", "feature/login"],
    );
    wait_for(
        "the branch's environment is destroyed with the branch",
        T,
        || w.record("br-feature-login").is_none().then_some(()),
    );
    assert!(
        !w.home.join("envs/br-feature-login").exists(),
        "its directory is gone"
    );
}

#[test]
fn branches_whose_jobs_hold_every_worker_do_not_hold_up_static_environments() {
    let w = World::new();
    let branches = ["br-feature-a", "br-feature-b"];
    // A job's `HOME` is its data directory, the one place it may write.
    let data = |env: &str| w.home.join("envs").join(env).join("data");
    // Whatever happens, the jobs are let go before the world stops (its drop waits for them).
    let _release = Release(branches.iter().map(|env| data(env).join("go")).collect());
    w.wait_page("dev", "hello from dev", "dev runs the first commit");
    // Whoever pushes a branch decides how long its reconcile takes: a job that runs until
    // the test lets it go, on as many branches as there are workers (2), pushed by nobody
    // known (no limit per person holds them).
    let holding = holding_stack();
    for branch in ["feature/a", "feature/b"] {
        w.push(branch, &holding, "a job that holds its worker");
    }
    wait_for("both branches' jobs run", T, || {
        let started = |env: &&str| data(env).join("started").exists();
        branches.iter().all(started).then_some(())
    });
    // Both workers are held; dev, a static environment, deploys a push to main all the same.
    w.push(
        "main",
        &STACK.replace("greeting: hello", "greeting: bonjour"),
        "bonjour",
    );
    w.wait_page(
        "dev",
        "bonjour from dev",
        "dev deploys while branches hold the workers",
    );
    drop(_release);
    for env in branches {
        w.wait_sync(
            env,
            SyncState::Synced,
            "the branch's job finishes once let go",
        );
        let runs = std::fs::read_to_string(data(env).join("started")).expect("runs");
        assert_eq!(runs, "run\n", "{env}'s job ran once");
    }
}

/// [`STACK`] with a job that runs until the test lets it go (`go` in its `HOME`, the
/// environment's data directory, or that directory gone), having said so (`started`).
fn holding_stack() -> String {
    STACK.replace(
        "resources:\n",
        "resources:\n  hold: { type: job, timeout: 1h, depends_on: [page], command: [sh, -c, \
         'echo run >> \"$HOME/started\"; \
         until [ -e \"$HOME/go\" ] || [ ! -d \"$HOME\" ]; do sleep 0.1; done'] }\n",
    )
}

/// One person's branches take at most their share of the workers (`author_concurrency`,
/// half of the 2 here): whoever pushes branches whose jobs run for an hour does not hold up
/// the next person's preview.
#[test]
fn one_persons_branches_leave_workers_for_the_next_persons() {
    let w = World::new();
    let mallorys = ["br-feature-a", "br-feature-b"];
    let data = |env: &str| w.home.join("envs").join(env).join("data");
    let _release = Release(mallorys.iter().map(|env| data(env).join("go")).collect());
    w.wait_page("dev", "hello from dev", "dev runs the first commit");
    for branch in ["feature/a", "feature/b"] {
        w.push_by(
            Some("mallory"),
            branch,
            &holding_stack(),
            "a job that holds its worker",
        );
    }
    let started = || {
        mallorys
            .iter()
            .filter(|env| data(env).join("started").exists())
            .count()
    };
    wait_for("one of mallory's jobs runs", T, || {
        (started() > 0).then_some(())
    });
    w.push_by(Some("alice"), "feature/c", STACK, "alice's feature");
    w.wait_page(
        "br-feature-c",
        "hello from br-feature-c",
        "alice's preview deploys while mallory's branches hold their share",
    );
    assert_eq!(started(), 1, "mallory's second branch waits for her first");
    // Let go, her first ends and her second runs (its data directory made only then).
    drop(_release);
    for env in mallorys {
        wait_for("mallory's jobs run in turn once let go", T, || {
            let _ = std::fs::write(data(env).join("go"), "");
            w.record(env).filter(|r| r.sync == SyncState::Synced)
        });
    }
    assert_eq!(started(), 2);
}

/// An exec provider whose `delete` runs until the test lets it go (`go` in its `HOME`, the
/// environment's data directory, or that directory gone).
const HANGING_DELETE: &str = r#"import json, os, sys, time
request = json.load(sys.stdin)
home = os.environ["HOME"]
if request["op"] == "delete":
    open(os.path.join(home, "deleting"), "w").close()
    while os.path.isdir(home) and not os.path.exists(os.path.join(home, "go")):
        time.sleep(0.1)
    print("{}")
elif request["op"] == "read":
    print(json.dumps({"status": "in_sync"}))
else:
    print(json.dumps({"outputs": {}}))
"#;

#[test]
fn a_gone_branch_whose_delete_hangs_holds_up_no_other_branch() {
    let w = World::new();
    let stuck = "br-feature-stuck";
    let data = w.home.join("envs").join(stuck).join("data");
    let _release = Release(vec![data.join("go")]);
    std::fs::write(w.work.join("hang.py"), HANGING_DELETE).expect("write");
    let stack = STACK.replace(
        "resources:\n",
        "resources:\n  hang: { type: exec, program: [python3, hang.py], timeout: 1h }\n",
    );
    w.push("feature/stuck", &stack, "a delete that hangs");
    w.wait_sync(stuck, SyncState::Synced, "the branch's environment runs");
    git(
        &w.work,
        &["push", "-q", "origin", "--delete", "feature/stuck"],
    );
    wait_for("its destroy runs the delete", T, || {
        data.join("deleting").exists().then_some(())
    });
    // Discovery goes on meanwhile: a new branch gets its environment, and a person's
    // refresh returns.
    w.push("feature/next", STACK, "another branch");
    w.wait_page(
        "br-feature-next",
        "hello from br-feature-next",
        "a new branch is deployed while a destroy hangs",
    );
    w.runtime
        .block_on(async { tokio::time::timeout(T, w.controller.refresh()).await })
        .expect("a refresh returns while a destroy hangs")
        .expect("the refresh succeeds");
    std::fs::write(data.join("go"), "").expect("release");
    wait_for("the gone branch's environment is destroyed", T, || {
        w.record(stuck).is_none().then_some(())
    });
}

#[test]
fn a_branch_pushed_again_is_not_destroyed_on_an_older_discovery_s_word() {
    let w = World::new();
    let env = "br-feature-back";
    // Its destroy fails, and waits for its backoff.
    let marker = w.undeletable("feature/back", env);
    git(
        &w.work,
        &["push", "-q", "origin", "--delete", "feature/back"],
    );
    wait_for("the destroy fails", T, || {
        events_of(&w, env)
            .iter()
            .any(|e| e.kind == EventKind::DestroyFailed)
            .then_some(())
    });
    // The branch comes back, and main's stack turns invalid: discovery stops short of the
    // set of environments (and says so) with the branch in its fetch.
    // One push: no discovery sees the branch back while main's stack is still valid.
    let back = git(&w.work, &["rev-parse", "HEAD"]);
    git(&w.work, &["checkout", "-q", "-B", "main"]);
    std::fs::write(w.work.join("slipway.yaml"), "version: 1\nstack: [").expect("write");
    git(&w.work, &["commit", "-qam", "broken"]);
    let again = format!("{back}:refs/heads/feature/back");
    git(
        &w.work,
        &["push", "-q", "-f", "--atomic", "origin", "main", &again],
    );
    wait_for("discovery finds main's stack invalid", T, || {
        let all = w
            .controller
            .engine()
            .store()
            .events(&slipway_state::EventQuery {
                environment: None,
                after_id: None,
                limit: 1000,
            })
            .expect("events");
        all.iter()
            .any(|e| {
                e.message
                    .contains("is not valid; the set of environments is left")
            })
            .then_some(())
    });
    // Mended, and its backoff past: the destroy would succeed now.
    std::fs::remove_dir_all(&marker).expect("mended");
    w.clock.advance(Duration::from_secs(120));
    let destroyed =
        slipway_testkit::wait::poll(Duration::from_secs(4), Duration::from_millis(100), || {
            w.record(env).is_none().then_some(())
        });
    assert_eq!(
        destroyed, None,
        "a branch that is back keeps its environment"
    );
}

/// Writes its files when dropped.
struct Release(Vec<PathBuf>);

impl Drop for Release {
    fn drop(&mut self) {
        for file in &self.0 {
            let _ = std::fs::write(file, "");
        }
    }
}

#[test]
fn a_sync_that_finds_nothing_to_change_says_so_in_the_event_log() {
    let w = World::new();
    w.wait_page("dev", "hello from dev", "dev is deployed");
    let synced = w.wait_sync("dev", SyncState::Synced, "dev is recorded synced");
    let events = |w: &World| {
        w.controller
            .engine()
            .store()
            .events(&slipway_state::EventQuery {
                environment: Some(env_name("dev")),
                after_id: None,
                limit: 1000,
            })
            .expect("events")
    };
    assert!(
        !events(&w)
            .iter()
            .any(|e| e.kind == EventKind::SyncUnchanged),
        "no sync was asked for yet"
    );
    w.runtime
        .block_on(w.controller.sync(&env_name("dev")))
        .expect("ask for a sync");
    let said = wait_for("the sync says there was nothing to change", T, || {
        events(&w)
            .into_iter()
            .find(|e| e.kind == EventKind::SyncUnchanged)
    });
    let commit = synced.commit.expect("a commit runs");
    assert!(
        said.message.contains("up to date") && said.message.contains(&commit[..12]),
        "it names the commit: {}",
        said.message
    );
    assert_eq!(
        w.record("dev").and_then(|r| r.commit),
        Some(commit),
        "nothing else happened"
    );
}

#[test]
fn only_an_environment_that_runs_its_commits_desired_state_in_full_goes_unobserved() {
    let w = World::new();
    w.wait_page("dev", "hello from dev", "dev is deployed");
    let record = wait_for("dev's deployment is recorded", T, || {
        w.record("dev")
            .filter(|r| r.sync == SyncState::Synced && r.commit.is_some())
    });
    let engine = w.controller.engine();
    let source = w.controller.source();
    let commit = record.commit.clone().expect("a commit");
    let moved = "2".repeat(40);
    let origin = |tip| Origin {
        source: source.as_ref(),
        repo: "",
        reference: "main",
        folder: "",
        tip,
    };
    let target = engine.target_for(&env_name("dev")).expect("dev's target");
    assert!(
        engine.runs_as_rendered(&origin(Some(commit.as_str())), &target, &record),
        "dev runs, in full, what its commit renders to: a periodic look leaves it to the drift \
         interval"
    );
    let mut other = record.clone();
    other.hash = Some("0".repeat(64));
    let mut syncing = record.clone();
    syncing.sync = SyncState::Syncing;
    let mut behind = record.clone();
    behind.desired_commit = Some("1".repeat(40));
    for (why, record, tip) in [
        ("the branch moved", &record, Some(moved.as_str())),
        ("the tip is not known", &record, None),
        (
            "the desired state renders otherwise (a newer Slipway)",
            &other,
            Some(commit.as_str()),
        ),
        ("an apply did not finish", &syncing, Some(commit.as_str())),
        (
            "it was asked to run another commit",
            &behind,
            Some(commit.as_str()),
        ),
    ] {
        assert!(
            !engine.runs_as_rendered(&origin(tip), &target, record),
            "a look that must plan when {why}"
        );
    }
}

#[test]
fn drift_is_repaired_where_self_heal_is_on_and_only_reported_where_it_is_off() {
    let w = World::new();
    wait_for("dev and watch are deployed", T, || {
        (w.page("dev").is_some() && w.page("watch").is_some()).then_some(())
    });
    let dev_page = w.home.join("envs/dev/data/page.txt");
    let watch_page = w.home.join("envs/watch/data/page.txt");
    std::fs::write(&dev_page, "tampered").expect("tamper");
    std::fs::write(&watch_page, "tampered").expect("tamper");
    w.wait_page(
        "dev",
        "hello from dev",
        "the edited file of dev is repaired within a drift interval",
    );
    wait_for("watch reports the drift", T, || {
        w.record("watch").filter(|r| {
            r.sync == SyncState::OutOfSync
                && r.message.as_deref().is_some_and(|m| m.contains("drift"))
        })
    });
    assert_eq!(
        w.page("watch").as_deref(),
        Some("tampered"),
        "self_heal: false only reports"
    );
    // The file is rewritten during the repair's apply; the counter moves when that apply has
    // been recorded, a moment later.
    wait_for("the repair is counted", T, || {
        (w.controller.metrics().drift_repairs() >= 1).then_some(())
    });
}

#[test]
fn a_poisoned_commit_marks_the_environment_failed_and_keeps_the_running_version() {
    let w = World::new();
    w.wait_page("dev", "hello from dev", "dev is deployed");
    w.push(
        "main",
        "version: 1\nstack: ctl\nresources: { broken: { type: nope } }\n",
        "poison",
    );
    let record = w.wait_sync("dev", SyncState::Failed, "dev is marked failed");
    assert!(
        record
            .message
            .as_deref()
            .unwrap_or("")
            .contains("not valid"),
        "the reason is recorded: {:?}",
        record.message
    );
    assert_eq!(
        w.page("dev").as_deref(),
        Some("hello from dev"),
        "the running version stays up"
    );
    w.push(
        "main",
        &STACK.replace("greeting: hello", "greeting: fixed"),
        "fix",
    );
    w.wait_page("dev", "fixed from dev", "a fixed commit deploys");
}

#[test]
fn an_apply_that_failed_for_good_waits_for_a_new_commit_instead_of_retrying() {
    let w = World::new();
    w.wait_page("dev", "hello from dev", "dev is deployed");
    // A job that exits 1: its provider says retrying will not help.
    let failing = STACK.replace(
        "resources:\n",
        "resources:\n  check: { type: job, command: [\"false\"] }\n",
    );
    w.push("main", &failing, "a check that fails");
    w.wait_sync("dev", SyncState::Failed, "dev is marked failed");
    let store = w.controller.engine().store();
    let count = || {
        store
            .deployments(&env_name("dev"), 100)
            .expect("store")
            .len()
    };
    let failed = count();
    // A retryable failure would be retried within about a second (the queue's first backoff),
    // again and again; a terminal one is parked until a new commit. Watched for 4 s, and
    // failing as soon as a retry shows.
    let retried =
        slipway_testkit::wait::poll(Duration::from_secs(4), Duration::from_millis(100), || {
            let now = count();
            (now != failed).then_some(now)
        });
    assert_eq!(retried, None, "the failed commit is not applied again");
    w.push("main", STACK, "drop the check");
    w.wait_sync("dev", SyncState::Synced, "a new commit is applied");
    assert!(count() > failed, "the new commit deploys");
}

/// An expired environment whose destroy fails (a delete that fails for ever: a branch's exec
/// program may) was destroyed again every second, each time with a deployment, an
/// `environment.expired` event and its notification. Now it waits for a backoff, and the
/// expiry is announced once.
#[test]
fn an_expiry_whose_destroy_fails_is_tried_again_with_backoff_and_announced_once() {
    let w = World::new();
    let env = "br-feature-stuck";
    let marker = w.undeletable("feature/stuck", env);
    w.clock.advance(Duration::from_secs(2 * 3600));
    let store = w.controller.engine().store();
    let attempts = || {
        let destroys = store
            .deployments(&env_name(env), 100)
            .expect("store")
            .into_iter()
            .filter(|d| d.reference.as_deref() == Some("destroy"))
            .count();
        let expired = events_of(&w, env)
            .iter()
            .filter(|e| e.kind == EventKind::EnvironmentExpired)
            .count();
        (destroys, expired)
    };
    wait_for("the first destroy fails", T, || {
        w.record(env).filter(|r| {
            r.message
                .as_deref()
                .is_some_and(|m| m.contains("could not be deleted"))
        })
    });
    let first = attempts();
    assert_eq!(first, (1, 1), "one destroy, announced once");
    // The expiry ticks every second; watched for 4 s, failing as soon as a retry shows.
    let retried =
        slipway_testkit::wait::poll(Duration::from_secs(4), Duration::from_millis(100), || {
            let now = attempts();
            (now != first).then_some(now)
        });
    assert_eq!(retried, None, "no retry before the backoff");
    // Mended, and the backoff past: destroyed, with no second announcement.
    std::fs::remove_dir_all(&marker).expect("mended");
    w.clock.advance(Duration::from_secs(60));
    wait_for("the retry destroys it", T, || {
        w.record(env).is_none().then_some(())
    });
    let expired = events_of(&w, env)
        .iter()
        .filter(|e| e.kind == EventKind::EnvironmentExpired)
        .count();
    assert_eq!(expired, 1, "announced once");
}

#[test]
fn a_commit_that_cannot_be_read_for_the_moment_leaves_the_environment_running_not_failed() {
    // No poll: the test fetches into the controller's mirror itself.
    let w = World::polling(Duration::from_secs(3600));
    w.wait_page("dev", "hello from dev", "dev runs the first commit");
    let next = w.push(
        "main",
        &STACK.replace("greeting: hello", "greeting: bonjour"),
        "bonjour",
    );
    let repos = w.home.join("repos");
    let mirror = std::fs::read_dir(&repos)
        .expect("the mirrors")
        .map(|entry| entry.expect("an entry").path())
        .find(|path| path.is_dir())
        .expect("the controller's mirror");
    git(&mirror, &["fetch", "-q", "--prune", "origin"]);
    // The stack file of the new commit goes missing, as it is while a fetch is still writing
    // it, or in a damaged mirror until it is mended.
    let blob = git(&mirror, &["rev-parse", &format!("{next}:slipway.yaml")]);
    let loose = mirror.join("objects").join(&blob[..2]).join(&blob[2..]);
    let bytes = std::fs::read(&loose).expect("a fetch of one commit leaves loose objects");
    std::fs::remove_file(&loose).expect("removed");

    // What a poll does once its fetch is done: the branch moved, dev follows it.
    w.runtime.block_on(w.controller.refresh()).expect("refresh");
    let record = wait_for("dev says why it did not move", T, || {
        w.record("dev")
            .filter(|r| r.message.as_deref().is_some_and(|m| m.contains("missing")))
    });
    assert_eq!(record.sync, SyncState::Synced, "{:?}", record.message);
    assert_eq!(w.page("dev").as_deref(), Some("hello from dev"));
    assert!(
        events_of(&w, "dev")
            .iter()
            .any(|e| e.kind == EventKind::ReconcileFailed
                && e.message.contains("retried with backoff")),
        "the failure is in the event log"
    );

    std::fs::write(&loose, bytes).expect("put back");
    w.wait_page("dev", "bonjour from dev", "a retry applies the commit");
    let record = wait_for("dev records the commit", T, || {
        w.record("dev")
            .filter(|r| r.commit.as_deref() == Some(next.as_str()))
    });
    assert_eq!(record.sync, SyncState::Synced);
}

#[test]
fn a_tracked_branch_deleted_fails_its_environment_with_an_event_that_notifies() {
    let w = World::new();
    let with_release = STACK.replace(
        "  dev: { track: main }\n",
        "  dev: { track: main }\n  release: { track: release }\n",
    );
    w.push("release", &with_release, "the release branch");
    w.push("main", &with_release, "release tracks its branch");
    w.wait_page("release", "hello from release", "release runs its branch");

    git(&w.work, &["push", "-q", "origin", "--delete", "release"]);
    let record = wait_for("release fails", T, || {
        w.record("release").filter(|r| r.sync == SyncState::Failed)
    });
    let message = record.message.expect("why");
    assert!(message.contains("release"), "{message}");
    let failed: Vec<_> = events_of(&w, "release")
        .into_iter()
        .filter(|e| e.kind == EventKind::ReconcileFailed)
        .collect();
    // The event is what notifications are made of (`NotifyKind::of`).
    assert_eq!(failed.len(), 1, "one event while the failure lasts");
    assert!(
        failed[0].message.contains("not retried"),
        "{}",
        failed[0].message
    );
    assert_eq!(w.page("release").as_deref(), Some("hello from release"));
}

/// A family frozen at the default branch holds its previews whatever their branch says. A
/// `slipway.yaml` pushed broken to the default branch does not lift the freeze: what was read
/// there last holds, and a controller that never read it waits rather than deploy.
#[test]
fn a_broken_default_branch_does_not_lift_its_familys_freeze() {
    // No poll: the test says when the controller looks at the branches.
    let w = World::polling(Duration::from_secs(3600));
    w.wait_page("dev", "hello from dev", "dev runs the first commit");
    let previews = "previews: { generate: { branches: [\"feature/*\"] }, ttl: 1h }";
    let frozen = STACK.replace(
        previews,
        "previews: { generate: { branches: [\"feature/*\"] }, ttl: 1h, \
         windows: [{ kind: deny, schedule: \"0 0 * * *\", duration: 24h }] }",
    );
    assert_ne!(frozen, STACK);
    w.push("main", &frozen, "previews frozen");
    // The branch's own copy of the stack has no freeze.
    w.push("feature/x", STACK, "a feature");
    w.runtime.block_on(w.controller.refresh()).expect("refresh");
    let env = env_name("br-feature-x");
    let held = |w: &World| {
        w.record("br-feature-x").filter(|r| {
            r.message
                .as_deref()
                .is_some_and(|m| m.starts_with("held:") && m.contains("window"))
        })
    };
    wait_for("the freeze at main holds the preview", T, || held(&w));

    w.push("main", "version: 1\nstack: ctl\nresources: [", "broken");
    w.push(
        "feature/x",
        &STACK.replace("greeting: hello", "greeting: again"),
        "again",
    );
    w.runtime.block_on(w.controller.refresh()).expect("refresh");
    w.runtime
        .block_on(w.controller.reconcile_now(&env, |_| {}))
        .expect("a held change is no failure");
    assert_eq!(w.page("br-feature-x"), None, "still held");
    assert!(held(&w).is_some());

    // A controller that never read the default branch valid: the preview waits, saying why.
    let fresh = Controller::new(
        w.controller.engine().clone(),
        w.controller.source().clone(),
        w.controller.repo_label(),
        "",
        Options::default(),
    );
    let refused = w
        .runtime
        .block_on(fresh.reconcile_now(&env, |_| {}))
        .expect_err("nothing is known of the family's windows");
    assert!(
        refused
            .to_string()
            .contains("is not valid, so the deploy windows"),
        "{refused}"
    );
    assert_eq!(w.page("br-feature-x"), None, "still held");
}

/// A rollback in an incident while the tracked branch's `slipway.yaml` is broken: the pinned
/// commit deploys (whose access the branch, unreadable, cannot be asked).
#[test]
fn a_rollback_deploys_while_the_tracked_branch_is_broken() {
    let w = World::new();
    w.wait_page("dev", "hello from dev", "dev runs the first commit");
    let first = w
        .record("dev")
        .and_then(|r| r.commit)
        .expect("dev's commit");
    w.push(
        "main",
        &STACK.replace("greeting: hello", "greeting: bonjour"),
        "bonjour",
    );
    w.wait_page("dev", "bonjour from dev", "dev deploys the push");
    w.push("main", "version: 1\nstack: ctl\nresources: [", "broken");
    wait_for("dev reports the broken commit", T, || {
        w.record("dev").filter(|r| {
            r.message
                .as_deref()
                .is_some_and(|m| m.contains("not valid"))
        })
    });
    w.runtime
        .block_on(w.controller.pin(&env_name("dev"), Some(first)))
        .expect("pin");
    w.wait_page("dev", "hello from dev", "the rollback deploys");
}

#[test]
fn a_window_override_is_for_the_sync_that_asked_for_it_only() {
    // No poll: the test says when the controller looks at the branch.
    let w = World::polling(Duration::from_secs(3600));
    w.wait_page("dev", "hello from dev", "dev runs the first commit");
    // A commit that puts dev under a freeze that always holds, landed by a deployer's
    // override (the freeze holds the commit that brings it too).
    let frozen = STACK.replace(
        "dev: { track: main }",
        "dev: { track: main, windows: [{ kind: deny, schedule: \"0 0 * * *\", duration: 24h }] }",
    );
    w.push(
        "main",
        &frozen.replace("greeting: hello", "greeting: frozen"),
        "freeze",
    );
    w.runtime
        .block_on(
            w.controller
                .sync_overriding_window(&env_name("dev"), "dora"),
        )
        .expect("sync with an override");
    w.wait_page("dev", "frozen from dev", "the freeze lands");
    // A deployer overrides the freeze to sync a commit that cannot deploy anyway (invalid):
    // its reconcile is held before the window is looked at.
    w.push("main", "version: 1\nstack: ctl\nresources: [", "broken");
    w.runtime
        .block_on(
            w.controller
                .sync_overriding_window(&env_name("dev"), "dora"),
        )
        .expect("sync with an override");
    wait_for("the broken commit is refused", T, || {
        w.record("dev").filter(|r| {
            r.message
                .as_deref()
                .is_some_and(|m| m.contains("not valid"))
        })
    });
    // Then a commit nobody overrode the window for: the freeze holds it.
    w.push(
        "main",
        &frozen.replace("greeting: hello", "greeting: thawed"),
        "fix",
    );
    w.runtime.block_on(w.controller.refresh()).expect("refresh");
    let held = wait_for("the new commit is held by the window", T, || {
        w.record("dev").filter(|r| {
            r.message
                .as_deref()
                .is_some_and(|m| m.contains("inside the deploy window"))
        })
    });
    assert_eq!(
        w.page("dev").as_deref(),
        Some("frozen from dev"),
        "{held:?}"
    );
}

#[test]
fn a_controller_behind_its_branch_never_undoes_a_newer_commit_whose_apply_failed() {
    // It fetches once an hour: after its first look, its idea of `main` stays at the first
    // commit, as a replica's does that was cut off while another one applied.
    let w = World::polling(Duration::from_secs(3600));
    w.wait_page("dev", "hello from dev", "dev runs the first commit");
    let first = w
        .record("dev")
        .and_then(|r| r.commit)
        .expect("dev's commit");
    // A newer commit changes the page, then runs a check that fails: its apply fails for
    // good, half done. A person's sync fetches, so it is this commit that is applied.
    let failing = STACK
        .replace("greeting: hello", "greeting: bonjour")
        .replace(
            "resources:\n",
            "resources:\n  check: { type: job, command: [\"false\"], depends_on: [page] }\n",
        );
    let newer = w.push("main", &failing, "bonjour, and a check that fails");
    w.runtime
        .block_on(w.controller.sync(&env_name("dev")))
        .expect("sync");
    let record = w.wait_sync("dev", SyncState::Failed, "the newer commit's apply fails");
    assert_eq!(record.desired_commit.as_deref(), Some(newer.as_str()));
    assert_eq!(record.commit.as_deref(), Some(first.as_str()));
    assert_eq!(w.page("dev").as_deref(), Some("bonjour from dev"));

    // Drift checks come every 300 ms. The page differs from what the first commit renders,
    // but the first commit is older than the one last applied: the controller fetches and
    // finds the newer one, instead of "repairing" the page back to the first commit's.
    let store = w.controller.engine().store();
    let deployments = || store.deployments(&env_name("dev"), 100).expect("store");
    let attempt = deployments()
        .into_iter()
        .find(|d| d.commit == newer)
        .expect("the newer commit's deployment")
        .id;
    let undone =
        slipway_testkit::wait::poll(Duration::from_secs(3), Duration::from_millis(100), || {
            let back = deployments()
                .into_iter()
                .find(|d| d.commit == first && d.id > attempt);
            back.map(|d| (d.status, w.page("dev")))
        });
    assert_eq!(undone, None, "dev went back to the first commit");
    assert_eq!(w.page("dev").as_deref(), Some("bonjour from dev"));
}

#[test]
fn ad_hoc_environments_are_made_from_any_ref_and_expire() {
    let w = World::new();
    let first = git(&w.work, &["rev-parse", "HEAD"]);
    w.push(
        "main",
        &STACK.replace("greeting: hello", "greeting: later"),
        "later",
    );
    let request = CreateEnvironment {
        name: env_name("demo"),
        reference: first.clone(),
        like: Some("previews".into()),
        ttl: Some(Duration::from_secs(3600)),
        owner: Some("alice".into()),
    };
    let record = w
        .runtime
        .block_on(w.controller.create_environment(request))
        .expect("created");
    assert_eq!(record.owner.as_deref(), Some("alice"));
    w.wait_page(
        "demo",
        "hello from demo",
        "the ad-hoc environment runs the old commit",
    );
    // A bad name never reaches the controller: `CreateEnvironment` holds an `EnvName`, made
    // where the request enters (the CLI's arguments, the API's body).
    let err = EnvName::parse("Bad Name").expect_err("refused");
    assert!(
        err.to_string().contains("not a valid environment name"),
        "{err}"
    );
    assert!(
        w.record("demo").is_some(),
        "an hour to live has not passed yet"
    );
    w.clock.advance(Duration::from_secs(3601));
    wait_for("the ad-hoc environment expires and is destroyed", T, || {
        w.record("demo").is_none().then_some(())
    });
    let events = w
        .controller
        .engine()
        .store()
        .events(&slipway_state::EventQuery {
            environment: Some(env_name("demo")),
            after_id: None,
            limit: 100,
        })
        .expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::EnvironmentExpired),
        "the expiry is recorded: {events:?}"
    );
}

#[test]
fn rollback_pins_an_earlier_deployment_and_unpin_follows_the_branch_again() {
    let w = World::new();
    w.wait_page("dev", "hello from dev", "dev runs the first commit");
    w.push(
        "main",
        &STACK.replace("greeting: hello", "greeting: two"),
        "two",
    );
    w.wait_page("dev", "two from dev", "dev runs the second");
    let deployments = w
        .controller
        .engine()
        .store()
        .deployments(&env_name("dev"), 10)
        .expect("deployments");
    let first = deployments
        .iter()
        .rev()
        .find(|d| d.status == DeploymentStatus::Succeeded)
        .expect("the first deployment")
        .id;
    w.runtime
        .block_on(w.controller.rollback(&env_name("dev"), first))
        .expect("rollback");
    w.wait_page("dev", "hello from dev", "dev is rolled back");
    assert!(w.record("dev").expect("dev").pinned, "a rollback pins");
    w.runtime
        .block_on(w.controller.unpin(&env_name("dev")))
        .expect("unpin");
    w.wait_page("dev", "two from dev", "unpinned, dev follows main again");
}

#[test]
fn a_protected_environment_holds_a_destroying_change_and_says_why() {
    let w = World::new();
    let guarded = "version: 1\nstack: ctl\nenvironments:\n  prod: { track: main, protected: true }\nresources:\n  page: { type: file, path: page.txt, content: \"v1\" }\n  extra: { type: file, path: extra.txt, content: \"x\" }\n";
    w.push("main", guarded, "protected prod");
    w.wait_page("prod", "v1", "prod is deployed");
    // The next commit changes page and removes extra: the controller may not delete on its own.
    w.push(
        "main",
        "version: 1\nstack: ctl\nenvironments:\n  prod: { track: main, protected: true }\nresources:\n  page: { type: file, path: page.txt, content: \"v2\" }\n",
        "drop extra",
    );
    let record = w.wait_sync("prod", SyncState::Failed, "prod's change is held");
    let message = record.message.unwrap_or_default();
    assert!(
        message.contains("protected")
            && message.contains("extra")
            && message.contains("--confirm-destroy prod"),
        "the reason and the way out are recorded: {message}"
    );
    assert_eq!(w.page("prod").as_deref(), Some("v1"), "nothing was applied");
    assert!(
        w.home.join("envs/prod/data/extra.txt").exists(),
        "extra is still there"
    );
}

#[test]
fn a_protected_environment_is_pinned_only_to_commits_of_its_branch() {
    let w = World::new();
    let guarded = "version: 1\nstack: ctl\nenvironments:\n  prod: { track: main, protected: true }\nresources:\n  page: { type: file, path: page.txt, content: \"v1\" }\n";
    let first = w.push("main", guarded, "protected prod");
    w.wait_page("prod", "v1", "prod is deployed");
    let second = w.push("main", &guarded.replace("\"v1\"", "\"v2\""), "v2");
    w.wait_page("prod", "v2", "prod follows main");
    let elsewhere = w.push(
        "side",
        &guarded.replace("\"v1\"", "\"side\""),
        "not on main",
    );
    let refused = w
        .runtime
        .block_on(w.controller.pin(&env_name("prod"), Some(elsewhere.clone())))
        .expect_err("a commit that never reached main is refused");
    assert!(
        refused.to_string().contains("takes only commits on `main`"),
        "{refused}"
    );
    // An earlier commit of main is fine (a rollback).
    w.runtime
        .block_on(w.controller.pin(&env_name("prod"), Some(first.clone())))
        .expect("a commit of main's history");
    let _ = second;
}

/// The race a pull request's apply lost: the controller decided to deploy `main` from the
/// record it read, a `/slipway apply` pinned the environment to the pull request's head
/// meanwhile, and the deploy then wrote `main` as the pinned commit, so the pull request was
/// answered "did not finish" and the environment stayed on `main`. An apply decided on what
/// the record followed before now applies nothing, and the pin stands.
#[test]
fn an_apply_decided_before_the_environment_was_pinned_applies_nothing() {
    use slipway_engine::{ApplyOptions, Confirmation, EnvTarget, LockWait, Origin};
    use slipway_state::Follows;

    let dir = tempfile::tempdir().expect("tempdir");
    let bare = dir.path().join("origin.git");
    let work = dir.path().join("work");
    let bare_path = bare.to_str().expect("utf-8");
    git(
        dir.path(),
        &["init", "-q", "--bare", "-b", "main", bare_path],
    );
    git(dir.path(), &["clone", "-q", bare_path, "work"]);
    let commit = |content: &str| {
        let stack = format!(
            "version: 1\nstack: ctl\nenvironments:\n  dev: {{ track: main }}\nresources:\n  \
             page: {{ type: file, path: page.txt, content: \"{content}\" }}\n"
        );
        std::fs::write(work.join("slipway.yaml"), stack).expect("write");
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", content]);
        git(&work, &["push", "-q", "origin", "main"]);
        git(&work, &["rev-parse", "HEAD"])
    };
    let home = dir.path().join("home");
    let engine = Engine::open(&home, EngineConfig::default(), vec![]).expect("engine");
    let url = format!("file://{}", bare.display());
    let source = GitRepository::open(&url, &home.join("repos")).expect("mirror");
    let dev = env_name("dev");
    let page = home.join("envs/dev/data/page.txt");
    let options = |follows| ApplyOptions {
        parallelism: 1,
        who: "test".into(),
        swap_exposed: false,
        confirm_destroy: Confirmation::Absent,
        override_window: None,
        now_ms: None,
        follows: Some(follows),
        policies_approved_by: None,
    };
    let deploy = |reference: &str, follows: Follows| {
        use slipway_git::Source;
        source.fetch().expect("fetch");
        let origin = Origin {
            source: &source,
            repo: &url,
            reference,
            folder: "",
            tip: None,
        };
        let prepared = engine
            .prepare(&origin, &EnvTarget::static_env(&dev))
            .expect("prepare");
        let lock = engine.lock(&dev, LockWait::Fail).expect("lock");
        engine.apply(&lock, &prepared, &source, &options(follows), &())
    };

    let head = commit("v1");
    let report = deploy("main", Follows::Ref("main".into())).expect("the first deploy");
    assert!(report.succeeded());
    assert_eq!(std::fs::read_to_string(&page).expect("page"), "v1");
    let store = engine.store();
    let deployments = store.deployments(&dev, 10).expect("deployments").len();

    commit("v2");
    // The pull request's apply, between the controller's read and its deploy.
    store
        .modify_environment(&dev, |e| {
            e.pinned = true;
            e.desired_commit = Some(head.clone());
        })
        .expect("pin");
    let refused = deploy("main", Follows::Ref("main".into()))
        .expect_err("a deploy decided on `main` is refused once dev is pinned");
    assert!(
        matches!(refused, slipway_engine::EngineError::Superseded(_)),
        "{refused}"
    );
    assert!(refused.retryable(), "deciding again does what is asked now");
    let record = store.environment(&dev).expect("store").expect("dev");
    assert!(record.pinned, "the pin stands");
    assert_eq!(record.desired_commit.as_deref(), Some(head.as_str()));
    assert_eq!(
        store.deployments(&dev, 10).expect("deployments").len(),
        deployments,
        "no deployment was started"
    );
    assert_eq!(std::fs::read_to_string(&page).expect("page"), "v1");

    // Decided on what it follows now, it applies.
    let report = deploy(&head, Follows::Pinned(head.clone())).expect("a deploy of the pin");
    assert!(report.succeeded());
    let record = store.environment(&dev).expect("store").expect("dev");
    assert_eq!(record.commit.as_deref(), Some(head.as_str()));
    assert!(record.pinned, "still pinned");
}

/// The events of `env`, oldest first.
fn events_of(w: &World, env: &str) -> Vec<slipway_state::EventRecord> {
    w.controller
        .engine()
        .store()
        .events(&slipway_state::EventQuery {
            environment: Some(env_name(env)),
            after_id: None,
            limit: 1000,
        })
        .expect("events")
}

/// The stack with `idle_ttl: 1h` for its previews instead of a `ttl`.
fn idle_stack() -> String {
    STACK.replace(
        "previews: { generate: { branches: [\"feature/*\"] }, ttl: 1h }",
        "previews: { generate: { branches: [\"feature/*\"] }, idle_ttl: 1h }",
    )
}

/// A world whose previews have `idle_ttl: 1h`, and its preview of `feature/idle`, deployed:
/// its name and record.
fn idle_preview() -> (World, &'static str, slipway_state::EnvironmentRecord) {
    let w = World::new();
    let idle = idle_stack();
    // The family is the default branch's: there first.
    w.push("main", &idle, "previews live as long as they are used");
    w.push("feature/idle", &idle, "a preview");
    let env = "br-feature-idle";
    let record = w.wait_sync(env, SyncState::Synced, "the preview is deployed");
    (w, env, record)
}

/// An environment's lock, held by another engine on the same home (as an apply by hand holds
/// it), and the inode of its lock file.
struct HeldLock {
    lock: slipway_engine::EnvLock,
    ino: u64,
    _engine: Engine,
}

impl HeldLock {
    fn take(w: &World, env: &str) -> HeldLock {
        use std::os::unix::fs::MetadataExt;
        let engine = Engine::open(&w.home, EngineConfig::default(), vec![]).expect("engine");
        let lock = engine
            .lock(&env_name(env), slipway_engine::LockWait::Fail)
            .expect("the environment's lock");
        let ino = std::fs::metadata(w.home.join(format!("locks/{env}.lock")))
            .expect("its lock file")
            .ino();
        HeldLock {
            lock,
            ino,
            _engine: engine,
        }
    }

    fn wait_for_a_waiter(&self, what: &str) {
        wait_for(what, T, || lock_awaited(self.ino).then_some(()));
    }

    /// Lets it go, waits until the one waiting had it, and sees `env` kept for 3 s, with no
    /// expiry event: `what` was not destroyed.
    fn release_and_see_kept(self, w: &World, env: &str, what: &str) {
        let ino = self.ino;
        drop(self.lock);
        wait_for("the expiry has had the lock", T, || {
            (!lock_awaited(ino)).then_some(())
        });
        let kept = Instant::now();
        while kept.elapsed() < Duration::from_secs(3) {
            assert!(w.record(env).is_some(), "{what} is not destroyed");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            !events_of(w, env)
                .iter()
                .any(|e| e.kind == EventKind::EnvironmentExpired),
            "{what} is not said to be destroyed"
        );
    }
}

/// Whether a process waits for an flock on the file of inode `ino` (`/proc/locks` lists a
/// waiter after `->`).
fn lock_awaited(ino: u64) -> bool {
    let locks = std::fs::read_to_string("/proc/locks").expect("/proc/locks");
    let ino = ino.to_string();
    locks.lines().any(|line| {
        line.contains("->")
            && line
                .split_whitespace()
                .any(|field| field.rsplit(':').next() == Some(ino.as_str()))
    })
}

/// An idle expiry decided while someone held the preview's lock (an apply by hand) waited for
/// the lock and then destroyed it, though a request through its preview URL had come
/// meanwhile: what was due is now looked at again under the lock.
#[test]
fn a_request_while_an_idle_expiry_waits_for_the_lock_calls_it_off() {
    let (w, env, _) = idle_preview();
    let held = HeldLock::take(&w, env);

    // 61 minutes without a request: past its idle_ttl, the expiry waits for the lock.
    w.clock.advance(Duration::from_secs(61 * 60));
    held.wait_for_a_waiter("the idle expiry waits for the lock");
    w.controller.saw_request(&env_name(env));
    wait_for("the request is written to the state", T, || {
        w.record(env)?.last_request_at.map(|_| ())
    });
    held.release_and_see_kept(&w, env, "a preview used while its expiry waited");
}

/// The same for a time to live: an extension while the expiry waits for the lock (an apply
/// by hand held it) keeps the preview.
#[test]
fn an_extension_while_an_expiry_waits_for_the_lock_calls_it_off() {
    let w = World::new();
    w.push("main", STACK, "previews live an hour");
    w.push("feature/ttl", STACK, "a preview");
    let env = "br-feature-ttl";
    w.wait_sync(env, SyncState::Synced, "the preview is deployed");
    let held = HeldLock::take(&w, env);

    w.clock.advance(Duration::from_secs(61 * 60));
    held.wait_for_a_waiter("the expiry waits for the lock");
    w.runtime
        .block_on(
            w.controller
                .extend(&env_name(env), Duration::from_secs(3600)),
        )
        .expect("extend");
    held.release_and_see_kept(&w, env, "a preview extended while its expiry waited");
}

#[test]
fn idle_expiry_warns_first_and_a_request_or_an_extension_puts_it_off() {
    let (w, env, record) = idle_preview();
    let idle = idle_stack();
    assert_eq!(
        record.idle_ttl_ms,
        Some(3_600_000),
        "the family's idle_ttl is in force on its environment"
    );
    assert_eq!(record.expires_at, None, "idle_ttl is no time to live");
    let warnings = |w: &World| {
        events_of(w, env)
            .into_iter()
            .filter(|e| e.kind == EventKind::EnvironmentIdle)
            .count()
    };

    // 50 minutes without a request: past the warning point (12 minutes before), one warning.
    w.clock.advance(Duration::from_secs(50 * 60));
    wait_for("a warning comes before the idle expiry", T, || {
        (warnings(&w) == 1).then_some(())
    });

    // A request through its preview URL puts the expiry off: 20 minutes later it is 70 minutes
    // old but only 20 minutes idle.
    w.controller.saw_request(&env_name(env));
    w.clock.advance(Duration::from_secs(20 * 60));
    wait_for("the request is written to the state", T, || {
        w.record(env)?.last_request_at.map(|_| ())
    });
    assert!(
        w.record(env).is_some(),
        "a request resets the idle time: not destroyed an hour after its last deploy"
    );

    // An extension resets it too; the next idle spell is warned of again.
    w.runtime
        .block_on(
            w.controller
                .extend(&env_name(env), Duration::from_secs(3600)),
        )
        .expect("extend");
    assert_eq!(
        w.record(env).expect("recorded").expires_at,
        None,
        "extending an environment without a ttl gives it none"
    );
    w.clock.advance(Duration::from_secs(50 * 60));
    wait_for("the next idle spell is warned of again", T, || {
        (warnings(&w) == 2).then_some(())
    });
    assert!(w.record(env).is_some(), "not destroyed before its idle_ttl");

    w.clock.advance(Duration::from_secs(11 * 60));
    wait_for("the idle preview is destroyed", T, || {
        w.record(env).is_none().then_some(())
    });
    let events = events_of(&w, env);
    let expired = events
        .iter()
        .position(|e| e.kind == EventKind::EnvironmentExpired)
        .expect("the idle expiry is an expiry event");
    let warned = events
        .iter()
        .rposition(|e| e.kind == EventKind::EnvironmentIdle)
        .expect("warned");
    assert!(warned < expired, "the warning comes first: {events:?}");
    assert!(
        events[expired].message.contains("idle_ttl"),
        "the expiry says why: {}",
        events[expired].message
    );

    // Its branch still there, discovery does not make it again for the same commit: it stays
    // gone until the branch moves.
    for _ in 0..3 {
        w.runtime
            .block_on(w.controller.refresh())
            .expect("a refresh");
        assert!(
            w.record(env).is_none(),
            "an expired preview is not made again for the commit it expired at"
        );
    }
    w.push("feature/idle", &idle, "a new commit");
    w.runtime
        .block_on(w.controller.refresh())
        .expect("a refresh");
    wait_for("a new commit makes the preview again", T, || {
        w.record(env).map(|_| ())
    });
}
