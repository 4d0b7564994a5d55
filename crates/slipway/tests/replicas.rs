//! Two `slipway serve` replicas on one PostgreSQL state: the environments are shared out, each
//! is deployed once per commit, and when one replica is killed with SIGKILL the other takes
//! its environments over once their leases expire.

mod util;

use std::time::{Duration, Instant};

use slipway_testkit::pg::TestDatabase;
use util::replicas::*;
use util::*;

const ENVS: usize = 8;
const T: Duration = Duration::from_secs(30);

fn stack(extra: &str) -> String {
    let envs: Vec<String> = (1..=ENVS)
        .map(|i| format!("e{i}: {{ track: main }}"))
        .collect();
    format!(
        "version: 1\nstack: shared\nenvironments: {{ {} }}\nresources:\n  db: {{ type: postgres.database }}\n{extra}",
        envs.join(", ")
    )
}

type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Two replicas, r1 and r2, each with its own home and the state's key, serving one
/// repository with [`ENVS`] floating environments from one PostgreSQL state, 1 s leases.
struct Pair {
    s: Sandbox,
    database: TestDatabase,
    first: String,
    home1: std::path::PathBuf,
    r1: Server,
    log1: Log,
    r2: Server,
    log2: Log,
}

impl Pair {
    fn start() -> Pair {
        Pair::start_with("300ms", "300ms", None)
    }

    /// [`Pair::start`] with each replica's `[repo] poll_interval`, and r1 reaching the state
    /// through `r1_port` (a proxy) instead of the server's own port.
    fn start_with(poll1: &str, poll2: &str, r1_port: Option<u16>) -> Pair {
        Pair::start_leased(poll1, poll2, r1_port, "1s")
    }

    /// [`Pair::start_with`] with leases of `lease`.
    fn start_leased(poll1: &str, poll2: &str, r1_port: Option<u16>, lease: &str) -> Pair {
        let database = TestDatabase::create("slipway_replicas");
        let s = Sandbox::new();
        // Each replica says where it is reached: its listener on this machine.
        s.with_local("advertise = \"127.0.0.1\"");
        s.write("slipway.yaml", &stack(""));
        let first = s.commit("eight environments");
        let start = |name: &str, poll: &str, port: u16| {
            let config = replica_config(
                &s,
                &database,
                ReplicaSettings {
                    poll,
                    port,
                    lease,
                    ..ReplicaSettings::named(name)
                },
            );
            let home = replica_home(&s, name);
            let command = serve_command(&s, &home, &config);
            (home, command)
        };
        // The first replica makes the state's key; the second gets a copy, as an operator
        // would.
        let (home1, command1) = start("r1", poll1, r1_port.unwrap_or(5432));
        let (r1, log1) = serve_from(command1, T);
        let (home2, command2) = start("r2", poll2, 5432);
        wait_for("r1 makes the state key", T, || {
            home1.join("state.key").is_file().then_some(())
        });
        std::fs::copy(home1.join("state.key"), home2.join("state.key")).expect("copy the key");
        let (r2, log2) = serve_from(command2, T);
        let pair = Pair {
            s,
            database,
            first,
            home1,
            r1,
            log1,
            r2,
            log2,
        };
        pair.wait("every environment runs the first commit", || {
            (synced_at(&pair.database, &pair.first) == ENVS as i64).then_some(())
        });
        pair
    }

    /// What the state and both replicas say, for a timeout's message.
    fn explain(&self) -> String {
        format!(
            "leases: {:?}\n--- r1\n{}\n--- r2\n{}",
            holders(&self.database),
            self.log1.lock().expect("log").join("\n"),
            self.log2.lock().expect("log").join("\n")
        )
    }

    fn wait<U>(&self, what: &str, check: impl FnMut() -> Option<U>) -> U {
        slipway_testkit::wait::wait_for_explained(what, T, || self.explain(), check)
    }

    /// The environments' leases once both replicas hold some, and no lease has changed hands
    /// for two leases (a replica joining takes its share over a few beats).
    fn shared(&self) -> Vec<(String, String)> {
        let mut last: Option<(Vec<(String, String)>, Instant)> = None;
        self.wait("both replicas hold leases, settled", || {
            let holders = holders(&self.database);
            let r1 = holders.iter().filter(|(_, h)| h == "r1").count();
            if holders.len() != ENVS || r1 == 0 || r1 == ENVS {
                last = None;
                return None;
            }
            match &last {
                Some((seen, since)) if *seen == holders => {
                    (since.elapsed() >= Duration::from_secs(2)).then_some(holders)
                }
                _ => {
                    last = Some((holders, Instant::now()));
                    None
                }
            }
        })
    }

    /// After r1 was away (stopped, cut off) while r2 deployed `second` everywhere: r1 finds
    /// the `r1_share` leases it held gone, the work is shared out again, every environment
    /// still runs `second`, and nothing was applied twice.
    fn rejoins(&self, r1_share: usize, second: &str) {
        self.wait("r1 notices the leases it lost", || {
            (metric(&self.r1, "slipway_leases_lost_total") >= r1_share as u64).then_some(())
        });
        self.shared();
        assert_eq!(synced_at(&self.database, second), ENVS as i64);
        assert_eq!(
            doubled(&self.database),
            [],
            "r1 applied nothing on coming back"
        );
    }

    /// A push: a role in every environment.
    fn push(&self) -> String {
        self.s.write(
            "slipway.yaml",
            &stack("  reader: { type: postgres.role, login: false }\n"),
        );
        self.s.commit("a role in every environment")
    }
}

#[test]
fn two_replicas_share_the_work_and_one_takes_over_when_the_other_is_killed() {
    let mut pair = Pair::start();
    let shared = pair.shared();
    assert_eq!(doubled(&pair.database), [], "nothing applied twice");

    // r1 dies without a word; a push follows.
    pair.r1.child.kill().expect("kill -9 r1");
    pair.r1.child.wait().expect("reaped");
    let second = pair.push();
    pair.wait("r2 brings every environment to the push, r1's too", || {
        (synced_at(&pair.database, &second) == ENVS as i64).then_some(())
    });
    let after = holders(&pair.database);
    assert!(
        after.iter().all(|(_, h)| h == "r2"),
        "r2 holds every lease now: {after:?} (before: {shared:?})"
    );
    assert_eq!(
        doubled(&pair.database),
        [],
        "nothing applied twice, across the failover"
    );

    // Status through the surviving replica's API says who works on each environment.
    let token = std::fs::read_to_string(pair.home1.join("admin-token")).expect("the first token");
    let api = format!("http://{}", pair.r2.addr);
    let status = pair.s.json(&[
        "--server",
        &api,
        "--token",
        token.trim(),
        "status",
        "--output",
        "json",
    ]);
    let replicas: Vec<&str> = status["environments"]
        .as_array()
        .expect("environments")
        .iter()
        .map(|e| e["replica"].as_str().unwrap_or("none"))
        .collect();
    assert_eq!(replicas, ["r2"; ENVS], "{status:#}");

    // It lists the replicas: itself alive, r1 silent for longer than two leases.
    let (code, listed) = api_request(&pair.r2.addr, "GET", "/api/v1/replicas", token.trim(), None);
    assert_eq!(code, 200, "{listed}");
    let seen: Vec<(String, bool, bool)> = listed["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or("").to_owned(),
                r["alive"] == true,
                r["this"] == true,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("r1".to_owned(), false, false),
            ("r2".to_owned(), true, true)
        ],
        "{listed:#}"
    );

    // And its metrics count the leases it holds and took: its own share, then r1's.
    assert_eq!(metric(&pair.r2, "slipway_leases_held"), ENVS as u64);
    assert!(metric(&pair.r2, "slipway_leases_acquired_total") >= ENVS as u64);
}

#[test]
fn a_replica_stopped_past_its_leases_wakes_up_to_find_them_gone_and_changes_nothing() {
    let pair = Pair::start();
    let shared = pair.shared();
    let r1_share = shared.iter().filter(|(_, h)| h == "r1").count();

    // r1 stalls (SIGSTOP) for longer than its leases; a push comes meanwhile.
    signal(&pair.r1, "-STOP");
    let second = pair.push();
    pair.wait(
        "r2 brings every environment to the push while r1 sleeps",
        || (synced_at(&pair.database, &second) == ENVS as i64).then_some(()),
    );
    signal(&pair.r1, "-CONT");

    // r1 wakes up holding, as far as it knew, its share: it finds each lease gone.
    pair.rejoins(r1_share, &second);
}

#[test]
fn a_replica_whose_copy_of_the_repository_is_behind_never_takes_an_environment_back() {
    // r2 fetches once an hour: after taking r1's environments over, its copy of `main` is
    // older than what r1 deployed.
    let mut pair = Pair::start_with("300ms", "1h", None);
    let shared = pair.shared();
    let r1_share: Vec<String> = shared
        .iter()
        .filter(|(_, h)| h == "r1")
        .map(|(e, _)| e.clone())
        .collect();
    let second = pair.push();
    pair.wait("r1 brings its share to the push", || {
        let at: i64 = pair
            .database
            .connect()
            .query_one(
                "SELECT COUNT(*) FROM environments WHERE current_commit = $1 AND sync = 'synced' \
                 AND name = ANY($2)",
                &[&second, &r1_share],
            )
            .expect("count")
            .get(0);
        (at == r1_share.len() as i64).then_some(())
    });
    pair.r1.child.kill().expect("kill -9 r1");
    pair.r1.child.wait().expect("reaped");
    pair.wait(
        "r2 takes every environment over and reconciles them",
        || {
            let held = holders(&pair.database);
            (held.len() == ENVS && held.iter().all(|(_, h)| h == "r2")).then_some(())
        },
    );
    // Each of r1's environments reconciled on r2 (a deployment or a plan with nothing to do)
    // before this point; give r2 one more beat to have done so.
    pair.wait("r2 reconciles r1's share", || {
        (metric(&pair.r2, "slipway_reconcile_duration_seconds_count") >= ENVS as u64).then_some(())
    });
    let backwards: Vec<String> = pair
        .database
        .connect()
        .query(
            "SELECT d.environment FROM deployments d WHERE d.commit_sha = $1 AND EXISTS \
             (SELECT 1 FROM deployments e WHERE e.environment = d.environment \
              AND e.commit_sha = $2 AND e.id < d.id)",
            &[&pair.first, &second],
        )
        .expect("query")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        backwards,
        Vec::<String>::new(),
        "no environment went back to the first commit"
    );
    let at_second: i64 = pair
        .database
        .connect()
        .query_one(
            "SELECT COUNT(*) FROM environments WHERE current_commit = $1 AND name = ANY($2)",
            &[&second, &r1_share],
        )
        .expect("count")
        .get(0);
    assert_eq!(
        at_second,
        r1_share.len() as i64,
        "r1's share still runs the push"
    );
}

#[test]
fn a_replica_cut_off_from_the_database_loses_its_share_and_rejoins_when_the_network_heals() {
    let proxy = slipway_testkit::proxy::Proxy::start("127.0.0.1:5432");
    let pair = Pair::start_with("300ms", "300ms", Some(proxy.port()));
    let shared = pair.shared();
    let r1_share = shared.iter().filter(|(_, h)| h == "r1").count();

    // A partition between r1 and PostgreSQL; a push lands meanwhile.
    proxy.cut();
    // r1 still answers, saying the state is out of its reach for now: a 503 to retry, never
    // a 500, and nothing of the database's own words.
    let token = std::fs::read_to_string(pair.home1.join("admin-token")).expect("the first token");
    let (code, answer) = api_request(
        &pair.r1.addr,
        "GET",
        "/api/v1/environments",
        token.trim(),
        None,
    );
    assert_eq!(code, 503, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not answer this replica")),
        "{answer}"
    );
    let second = pair.push();
    pair.wait(
        "r2 brings every environment to the push while r1 is cut off",
        || (synced_at(&pair.database, &second) == ENVS as i64).then_some(()),
    );
    proxy.heal();

    // r1 reconnects, finds the leases it held gone, and takes its share back in turn.
    pair.rejoins(r1_share, &second);
}

#[test]
fn a_persons_change_sent_to_either_replica_is_made_by_the_one_that_works_on_the_environment() {
    // Leases of 3 s: a replica killed below keeps its leases, and is counted alive, for a few
    // seconds, which is the window this test asks the other replica in.
    let mut pair = Pair::start_leased("300ms", "300ms", None, "3s");
    let shared = pair.shared();
    let token = std::fs::read_to_string(pair.home1.join("admin-token")).expect("the first token");
    let token = token.trim();
    let env = shared
        .iter()
        .find(|(_, holder)| holder == "r2")
        .map(|(env, _)| env.clone())
        .expect("r2 holds a share");
    let (_, epoch, _) = lease_of(&pair.database, &env).expect("r2's lease");
    let at = |server: &Server, method: &str, path: &str, body: Option<serde_json::Value>| {
        api_request(
            &server.addr,
            method,
            &format!("/api/v1/environments/{env}{path}"),
            token,
            body,
        )
    };
    let pinned = || {
        pair.database
            .connect()
            .query_one("SELECT pinned FROM environments WHERE name = $1", &[&env])
            .expect("read the environment")
            .get::<_, i64>(0)
            == 1
    };
    // A pin sent to r1 with `headers` (a raw request: the test chooses every header).
    let pin_with = |headers: &[(&str, &str)]| {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        fake_github::http_request(
            &pair.r1.addr,
            "POST",
            &format!("/api/v1/environments/{env}/pin"),
            &all,
            b"{}",
        )
        .expect("r1 answers")
    };

    // The hop header is no credential: a request that says it was forwarded is still
    // authenticated, and is only never forwarded again.
    let forged = pin_with(&[("X-Slipway-Forwarded", "r2")]);
    assert_eq!(
        forged.status, 401,
        "a forged hop header without a token: {}",
        forged.body
    );
    let forged = pin_with(&[
        ("X-Slipway-Forwarded", "r2"),
        ("Authorization", "Bearer slw_forged"),
    ]);
    assert_eq!(
        forged.status, 401,
        "a forged hop header with a made-up token: {}",
        forged.body
    );
    let bearer = format!("Bearer {token}");
    let once = pin_with(&[("X-Slipway-Forwarded", "r2"), ("Authorization", &bearer)]);
    assert!(
        once.status == 409
            && once.body.contains("worked on by replica r2")
            && once.body.contains("nothing was changed"),
        "a request already forwarded once is not forwarded again: {} {}",
        once.status,
        once.body
    );
    assert!(!pinned(), "nothing was pinned by the hostile requests");

    // Asked of r1, which does not work on it: forwarded to r2, which makes the change under
    // its lease and answers.
    let (code, answer) = at(&pair.r1, "POST", "/pin", Some(serde_json::json!({})));
    assert_eq!(code, 200, "pin through r1: {answer}");
    assert!(
        answer["pinned"] == true && answer["replica"] == "r2",
        "{answer}"
    );
    assert!(pinned(), "pinned through r1");
    let second = pair.push();
    pair.wait("every other environment runs the push", || {
        (synced_at(&pair.database, &second) == ENVS as i64 - 1).then_some(())
    });
    let (code, answer) = at(&pair.r1, "POST", "/unpin", Some(serde_json::json!({})));
    assert_eq!(code, 200, "unpin through r1: {answer}");
    pair.wait("the unpinned environment catches up", || {
        (synced_at(&pair.database, &second) == ENVS as i64).then_some(())
    });
    let (code, answer) = at(&pair.r1, "POST", "/sync", Some(serde_json::json!({})));
    assert!(
        code == 202 && answer["queued"] == true,
        "sync through r1: {code} {answer}"
    );
    let latest: i64 = pair
        .database
        .connect()
        .query_one(
            "SELECT MAX(id) FROM deployments WHERE environment = $1 AND status = 'succeeded'",
            &[&env],
        )
        .expect("the latest deployment")
        .get(0);
    let (code, answer) = at(
        &pair.r1,
        "POST",
        "/rollback",
        Some(serde_json::json!({ "deployment": latest })),
    );
    assert!(
        code == 200 && answer["pinned"] == true && answer["desired_commit"] == second.as_str(),
        "rollback through r1: {code} {answer}"
    );
    let (code, answer) = at(&pair.r1, "POST", "/unpin", Some(serde_json::json!({})));
    assert_eq!(code, 200, "{answer}");

    // All of it was done by r2, under the lease it held all along (r1 cannot write the
    // environment without it), and audited once, there.
    assert_eq!(
        lease_of(&pair.database, &env),
        Some(("r2".to_owned(), epoch, true)),
        "the lease never left r2"
    );
    let audited = |action: &str| -> usize {
        let (code, log) = api_request(
            &pair.r2.addr,
            "GET",
            "/api/v1/audit?limit=1000",
            token,
            None,
        );
        assert_eq!(code, 200, "{log}");
        log["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| {
                e["action"] == action && e["target"] == env.as_str() && e["outcome"] == "ok"
            })
            .count()
    };
    assert_eq!(audited("environment.pin"), 1, "the pin is audited once");
    assert_eq!(audited("environment.unpin"), 2, "each unpin once");
    assert_eq!(doubled(&pair.database), [], "nothing applied twice");

    // r2 dies: asked of r1 while r2's lease runs, the change cannot reach it, and the caller
    // is told when to ask again; nothing is changed.
    pair.r2.child.kill().expect("kill -9 r2");
    pair.r2.child.wait().expect("reaped");
    let down = pin_with(&[("Authorization", &bearer)]);
    assert!(
        down.status == 503
            && down.body.contains("worked on by replica r2")
            && down.body.contains("nothing was changed"),
        "the holder is down: {} {}",
        down.status,
        down.body
    );
    assert_eq!(
        down.header("retry-after"),
        Some("6"),
        "ask again after two leases"
    );
    assert!(!pinned(), "nothing was pinned while r2 was down");
    // Once its lease ran out, r1 takes the environment over and makes the change itself.
    pair.wait(
        "r1 makes the change once it works on the environment",
        || {
            let (code, _) = at(&pair.r1, "POST", "/pin", Some(serde_json::json!({})));
            (code == 200).then_some(())
        },
    );
    assert!(pinned(), "pinned by r1");
    assert_eq!(
        lease_of(&pair.database, &env).map(|(holder, _, _)| holder),
        Some("r1".to_owned())
    );
}

/// Succeeded deployments of `environment` at `commit`.
fn succeeded(db: &TestDatabase, environment: &str, commit: &str) -> i64 {
    db.connect()
        .query_one(
            "SELECT COUNT(*) FROM deployments WHERE status = 'succeeded' \
             AND environment = $1 AND commit_sha = $2",
            &[&environment, &commit],
        )
        .expect("count")
        .get(0)
}

/// `(holder, epoch, unexpired)` of `environment`'s lease.
fn lease_of(db: &TestDatabase, environment: &str) -> Option<(String, i64, bool)> {
    db.connect()
        .query_opt(
            "SELECT holder, epoch, expires_at > EXTRACT(EPOCH FROM clock_timestamp()) * 1000 \
             FROM leases WHERE environment = $1",
            &[&environment],
        )
        .expect("read the lease")
        .map(|r| (r.get(0), r.get(1), r.get(2)))
}

/// Whether `environment`'s lease was given back (its expiry set to 0) rather than let lapse.
fn given_back(db: &TestDatabase, environment: &str) -> bool {
    db.connect()
        .query_opt(
            "SELECT 1 FROM leases WHERE environment = $1 AND expires_at = 0",
            &[&environment],
        )
        .expect("read the lease")
        .is_some()
}

#[test]
fn a_one_shot_command_on_the_shared_state_holds_the_lease_while_it_runs_and_never_beside_a_replica()
{
    let database = TestDatabase::create("slipway_cli_lease");
    let s = Sandbox::new();
    s.write("slipway.yaml", &stack(""));
    let first = s.commit("eight environments");
    // 2 s leases, renewed every 667 ms: a command starved of the CPU for a moment by the
    // tests beside it still renews in time (with 1 s ones, a 667 ms stall lost it in CI).
    let config = replica_config(
        &s,
        &database,
        ReplicaSettings {
            lease: "2s",
            ..ReplicaSettings::named("r1")
        },
    );
    let home = replica_home(&s, "r1");
    let (r1, log) = serve_from(serve_command(&s, &home, &config), T);
    let explain = || {
        format!(
            "leases: {:?}\n--- r1\n{}",
            holders(&database),
            log.lock().expect("log").join("\n")
        )
    };
    let wait = |what: &str, check: &mut dyn FnMut() -> bool| {
        slipway_testkit::wait::wait_for_explained(what, Duration::from_secs(90), explain, || {
            check().then_some(())
        })
    };
    wait("every environment runs the first commit", &mut || {
        synced_at(&database, &first) == ENVS as i64
    });
    let url = format!("file://{}", s.repo.display());
    // The commands run on r1's node, with its configuration and home (and its repository,
    // as a URL, for those that read one).
    let cli = |args: &[&str]| {
        let mut command = s.cmd(args);
        if args[0] != "destroy" {
            command.args(["--repo", &url]);
        }
        command
            .env("SLIPWAY_CONFIG", &config)
            .env("SLIPWAY_HOME", &home);
        command
    };

    // While r1 works on e1, a one-shot command refuses to touch it, naming r1.
    for args in [
        &["apply", "--env", "e1", "--yes"][..],
        &["destroy", "--env", "e1", "--yes"][..],
        &["env", "pin", "e1"][..],
    ] {
        let out = cli(args).output().expect("slipway runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(1)
                && stderr.contains("worked on by r1")
                && stderr.contains("nothing was changed"),
            "{args:?} is refused, naming the replica: {stderr}"
        );
    }
    assert!(
        stderr_of(cli(&["apply", "--env", "e1", "--yes"])).contains("--wait"),
        "the refusal says how to wait"
    );
    assert_eq!(succeeded(&database, "e1", &first), 1, "nothing was applied");

    // With --wait it waits until r1 lets go (r1 stops), then applies.
    let mut waiting = cli(&["apply", "--env", "e1", "--yes", "--wait"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("slipway runs");
    let said = lines_of(waiting.stderr.take().expect("stderr"));
    wait("the command says it waits for r1", &mut || {
        said.lock()
            .expect("lines")
            .iter()
            .any(|l| l.contains("waiting for r1"))
    });
    signal(&r1, "-TERM");
    let mut r1 = r1;
    r1.child.wait().expect("r1 stops");
    let status = waiting.wait().expect("the command ends");
    assert!(
        status.success(),
        "it applied once r1 let go: {:?}",
        said.lock().expect("lines")
    );
    assert_eq!(
        succeeded(&database, "e1", &first),
        2,
        "applied by the command once, after r1"
    );
    let (holder, _, live) = lease_of(&database, "e1").expect("a lease");
    assert!(
        holder.starts_with("r1/cli-") && !live,
        "the command held the lease under its own name and gave it back: {holder} {live}"
    );

    // A slow change applied by a command: it holds the lease for as long as it runs (renewed
    // past several leases), and r1, started again meanwhile, leaves e1 alone until it is
    // done.
    s.write(
        "slipway.yaml",
        &stack("  slow: { type: job, command: [\"sleep\", \"7\"] }\n"),
    );
    let second = s.commit("a slow job everywhere");
    let mut slow = cli(&["apply", "--env", "e1", "--yes"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("slipway runs");
    let me = format!("r1/cli-{}", slow.id());
    let mut epoch = None;
    wait(
        "the command holds e1's lease",
        &mut || match lease_of(&database, "e1") {
            Some((holder, e, true)) if holder == me => {
                epoch = Some(e);
                true
            }
            _ => false,
        },
    );
    let (r1, log) = serve_from(serve_command(&s, &home, &config), T);
    let mut samples = 0;
    while slow.try_wait().expect("poll the command").is_none() {
        if let Some((holder, e, live)) = lease_of(&database, "e1")
            && (holder != me || Some(e) != epoch || !live)
        {
            // The command gives it back as it ends (expiry 0 under its own name and epoch),
            // a moment before its process exits: only then may it change.
            if holder == me && Some(e) == epoch && given_back(&database, "e1") {
                break;
            }
            if slow.try_wait().expect("poll the command").is_none() {
                panic!(
                    "the lease left the running command: {holder} {e} {live}\n{}",
                    log.lock().expect("log").join("\n")
                );
            }
        }
        samples += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        slow.wait().expect("the command ends").success(),
        "the slow apply succeeds"
    );
    // Ten looks at least (a second), whatever the replica's start took of the job's 7 s.
    assert!(
        samples >= 10,
        "the lease was watched while the command ran: {samples} looks"
    );
    slipway_testkit::wait::wait_for_explained(
        "r1 brings every environment to the slow change, e1 last",
        Duration::from_secs(90),
        || log.lock().expect("log").join("\n"),
        || (synced_at(&database, &second) == ENVS as i64).then_some(()),
    );
    assert_eq!(
        succeeded(&database, "e1", &second),
        1,
        "e1 was applied once, by the command; r1 found nothing to do"
    );
    let doubled: Vec<_> = doubled(&database)
        .into_iter()
        .filter(|(env, commit, _)| !(env == "e1" && *commit == first))
        .collect();
    assert_eq!(doubled, [], "nothing else applied twice");
    drop(r1);
}

/// What `command` writes to its standard error.
fn stderr_of(mut command: std::process::Command) -> String {
    let out = command.output().expect("slipway runs");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Collects the lines `stream` gives, as they come.
fn lines_of(stream: impl std::io::Read + Send + 'static) -> Log {
    use std::io::BufRead;
    let lines = Log::default();
    let kept = std::sync::Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stream)
            .lines()
            .map_while(Result::ok)
        {
            kept.lock().expect("lines").push(line);
        }
    });
    lines
}

#[test]
fn a_refresh_asked_of_one_replica_wakes_the_others_without_waiting_for_their_poll() {
    // Neither replica polls within the test: r2 can only learn of the push from r1's
    // notification.
    let pair = Pair::start_with("1h", "1h", None);
    pair.shared();
    let second = pair.push();
    let token = std::fs::read_to_string(pair.home1.join("admin-token")).expect("the first token");
    let (code, body) = api_request(
        &pair.r1.addr,
        "POST",
        "/api/v1/refresh",
        token.trim(),
        Some(serde_json::json!({})),
    );
    assert_eq!(code, 200, "{body}");
    pair.wait("both replicas bring their shares to the push", || {
        (synced_at(&pair.database, &second) == ENVS as i64).then_some(())
    });
    assert_eq!(doubled(&pair.database), [], "nothing applied twice");
}

#[test]
fn a_one_shot_command_acts_on_a_node_bound_environment_only_from_its_node_and_gives_it_back() {
    let database = TestDatabase::create("slipway_cli_node");
    let s = Sandbox::new();
    let files = |content: &str| {
        format!(
            "version: 1\nstack: nodes\nenvironments: {{ e1: {{ track: main }}, e2: {{ track: main }} }}\n\
             resources:\n  conf: {{ type: file, path: conf.txt, content: \"{content}\" }}\n"
        )
    };
    s.write("slipway.yaml", &files("one"));
    let first = s.commit("files on r1's node");
    let config1 = replica_config(&s, &database, ReplicaSettings::named("r1"));
    let config2 = replica_config(&s, &database, ReplicaSettings::named("r2"));
    let home1 = replica_home(&s, "r1");
    let (r1, log) = serve_from(serve_command(&s, &home1, &config1), T);
    let wait = |what: &str, check: &mut dyn FnMut() -> bool| {
        slipway_testkit::wait::wait_for_explained(
            what,
            T,
            || log.lock().expect("log").join("\n"),
            || check().then_some(()),
        )
    };
    wait(
        "both environments run the first commit on r1's node",
        &mut || synced_at(&database, &first) == 2,
    );
    let mut r1 = r1;
    signal(&r1, "-TERM");
    r1.child.wait().expect("r1 stops");
    let second = {
        s.write("slipway.yaml", &files("two"));
        s.commit("a change to the files")
    };
    let url = format!("file://{}", s.repo.display());
    // --wait: the stopped r1's lease runs until it expires.
    let apply = |config: &std::path::Path, home: &std::path::Path| {
        s.cmd(&["apply", "--env", "e1", "--yes", "--wait", "--repo", &url])
            .env("SLIPWAY_CONFIG", config)
            .env("SLIPWAY_HOME", home)
            .output()
            .expect("slipway runs")
    };

    // From r2's node (its configuration and home), r1's environment is refused: its files
    // are on r1's machine.
    let home2 = replica_home(&s, "r2");
    std::fs::copy(home1.join("state.key"), home2.join("state.key")).expect("copy the key");
    let out = apply(&config2, &home2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1)
            && stderr.contains("runs on the node of replica r1")
            && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert_eq!(succeeded(&database, "e1", &second), 0);

    // From r1's node it is applied, and the lease goes back to r1.
    let out = apply(&config1, &home1);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(succeeded(&database, "e1", &second), 1);
    let (holder, _, live) = lease_of(&database, "e1").expect("a lease");
    assert!(
        holder == "r1" && !live,
        "the lease of a node-bound environment is r1's again, free: {holder} {live}"
    );

    // r1, back, takes both up again and brings e2 to the change; e1 needs nothing more.
    let (_r1, log) = serve_from(serve_command(&s, &home1, &config1), T);
    slipway_testkit::wait::wait_for_explained(
        "r1 holds both environments and runs the change",
        T,
        || log.lock().expect("log").join("\n"),
        || {
            let held = holders(&database);
            (synced_at(&database, &second) == 2
                && held.len() == 2
                && held.iter().all(|(_, h)| h == "r1"))
            .then_some(())
        },
    );
    assert_eq!(
        succeeded(&database, "e1", &second),
        1,
        "r1 found e1 done by the command"
    );
    assert_eq!(doubled(&database), []);
}

/// The webhook secret of the pull-request test.
const SECRET: &str = "webhook-secret-for-replicas";

/// The stack of the pull-request test: qa tracks main, and each pull request gets a preview;
/// everything floats (a database each). `extra` goes under `resources:`.
fn pr_stack(extra: &str) -> String {
    format!(
        "version: 1\nstack: shop\nenvironments:\n  qa: {{ track: main }}\n  \
         previews: {{ generate: {{ pull_requests: true }}, ttl: 1h }}\nresources:\n  \
         db: {{ type: postgres.database }}\n{extra}"
    )
}

#[test]
fn a_pull_request_command_heard_by_a_replica_that_does_not_work_on_the_environment_is_done_by_the_one_that_does()
 {
    let database = TestDatabase::create("slipway_replicas_prs");
    let forge = FakeForge::start(Forge::GitHub, "slipway-bot");
    let s = Sandbox::new();
    s.with_local("advertise = \"127.0.0.1\"");
    util::world::append_config(
        &s,
        &util::world::forge_section(
            "github",
            "repository = \"acme/shop\"",
            &forge.url(),
            "slipway-bot",
        ),
    );
    s.write("slipway.yaml", &pr_stack(""));
    let first = s.commit("qa and previews");
    // Three replicas, 3-second leases (a replica killed below keeps its leases a few
    // seconds: the window in which the others hand work over to it).
    let names = ["r1", "r2", "r3"];
    let homes: Vec<std::path::PathBuf> = names.iter().map(|n| replica_home(&s, n)).collect();
    let start = |i: usize| {
        let config = replica_config(
            &s,
            &database,
            ReplicaSettings {
                lease: "3s",
                ..ReplicaSettings::named(names[i])
            },
        );
        let mut command = serve_command(&s, &homes[i], &config);
        command
            .env("GITHUB_TOKEN", "test-token")
            .env("SLIPWAY_WEBHOOK_SECRET", SECRET);
        serve_from(command, T)
    };
    let mut replicas = vec![start(0)];
    wait_for("r1 makes the state key", T, || {
        homes[0].join("state.key").is_file().then_some(())
    });
    for (i, home) in homes.iter().enumerate().skip(1) {
        std::fs::copy(homes[0].join("state.key"), home.join("state.key")).expect("copy the key");
        replicas.push(start(i));
    }
    let explain = || {
        let logs: Vec<String> = replicas
            .iter()
            .zip(names)
            .map(|((_, log), name)| format!("--- {name}\n{}", log.lock().expect("log").join("\n")))
            .collect();
        format!(
            "leases: {:?}\ncomments: {:#?}\n{}",
            holders(&database),
            forge.comments(1),
            logs.join("\n")
        )
    };
    let wait = |what: &str, check: &mut dyn FnMut() -> bool| {
        slipway_testkit::wait::wait_for_explained(what, Duration::from_secs(90), explain, || {
            check().then_some(())
        })
    };
    let index = |name: &str| names.iter().position(|n| *n == name).expect("a replica");

    // Pull request #1 adds a role; it is opened (heard by r1), and gets its preview.
    let head = util::world::commit_on(
        &s,
        "main",
        "feature-1",
        "pr1",
        Some(&pr_stack(
            "  reader: { type: postgres.role, login: false }\n",
        )),
        Some("refs/pull/1/head"),
    );
    forge.add_pr(PrSpec {
        head_ref: "feature-1".into(),
        ..PrSpec::new(1, &head)
    });
    let opened = forge.delivery(&forge.pr(1), &Event::Opened);
    let (code, body) = forge.send(&replicas[0].0.addr, SECRET, &opened, "opened-1");
    assert_eq!(code, 202, "{body}");
    wait("qa runs main and pr-1 the pull request's head", &mut || {
        synced_at(&database, &first) == 1 && synced_at(&database, &head) == 1
    });
    // The three replicas share the two environments out, and settle.
    let mut last: Option<(Vec<(String, String)>, Instant)> = None;
    wait("the leases settle among the three replicas", &mut || {
        let held = holders(&database);
        let alive: i64 = database
            .connect()
            .query_one(
                "SELECT COUNT(*) FROM replicas WHERE heartbeat_at > \
                 EXTRACT(EPOCH FROM clock_timestamp()) * 1000 - 2000",
                &[],
            )
            .expect("count replicas")
            .get(0);
        if held.len() != 2 || alive != 3 {
            last = None;
            return false;
        }
        match &last {
            Some((seen, since)) if *seen == held => since.elapsed() >= Duration::from_secs(4),
            _ => {
                last = Some((held, Instant::now()));
                false
            }
        }
    });
    let holder_of = |env: &str| {
        let (holder, _, live) = lease_of(&database, env).expect("a lease");
        assert!(live, "{env}'s lease is live");
        holder
    };
    let qa_holder = holder_of("qa");
    let (_, qa_epoch, _) = lease_of(&database, "qa").expect("qa's lease");
    let others: Vec<usize> = (0..3).filter(|i| names[*i] != qa_holder).collect();
    let (hearer, third) = (others[0], others[1]);

    // `/slipway apply qa` is delivered to a replica that does not work on qa: qa is applied
    // by its holder, and the pull request answered.
    forge.set_permission("alice", "write");
    let comment = forge.add_comment(1, "alice", "/slipway apply qa");
    let command = forge.delivery(&forge.pr(1), &Event::Commented { comment });
    let (code, body) = forge.send(&replicas[hearer].0.addr, SECRET, &command, "apply-qa");
    assert!(code == 202 && body.contains("\"handled\":true"), "{body}");
    forge.wait_for_comment(1, |c| c.body.contains("Applied #1"), T);
    wait("qa runs the pull request's head", &mut || {
        synced_at(&database, &head) == 2
    });
    assert_eq!(
        lease_of(&database, "qa"),
        Some((qa_holder.clone(), qa_epoch, true)),
        "qa was applied by its holder, under the lease it held all along"
    );
    assert!(
        replicas[hearer]
            .1
            .lock()
            .expect("log")
            .iter()
            .any(|l| l.contains("handed over")),
        "the replica that heard the command handed it over"
    );

    // The same delivery again, to the third replica: a duplicate, not applied again.
    let (code, body) = forge.send(&replicas[third].0.addr, SECRET, &command, "apply-qa");
    assert!(
        code == 202 && body.contains("\"duplicate\":true") && body.contains("\"handled\":false"),
        "a redelivery is a duplicate wherever it lands: {body}"
    );
    // A preview's life is extended through a replica that does not work on it.
    let pr1_holder = holder_of("pr-1");
    let other = (0..3)
        .find(|i| names[*i] != pr1_holder)
        .expect("another replica");
    let expiry = || -> i64 {
        database
            .connect()
            .query_one(
                "SELECT expires_at FROM environments WHERE name = 'pr-1'",
                &[],
            )
            .expect("pr-1")
            .get(0)
    };
    let before = expiry();
    let token = std::fs::read_to_string(homes[0].join("admin-token")).expect("the first token");
    let (code, answer) = api_request(
        &replicas[other].0.addr,
        "POST",
        "/api/v1/environments/pr-1/extend",
        token.trim(),
        Some(serde_json::json!({"by": "2h"})),
    );
    assert_eq!(code, 200, "extend through {}: {answer}", names[other]);
    assert!(expiry() > before, "pr-1 lives longer");

    // qa's holder dies; `/slipway unlock qa` comes meanwhile, to another replica: handed
    // over in the state, it is done by whichever replica works on qa next.
    signal(&replicas[index(&qa_holder)].0, "-KILL");
    let comment = forge.add_comment(1, "alice", "/slipway unlock qa");
    let command = forge.delivery(&forge.pr(1), &Event::Commented { comment });
    let (code, body) = forge.send(&replicas[hearer].0.addr, SECRET, &command, "unlock-qa");
    assert!(code == 202 && body.contains("\"handled\":true"), "{body}");
    forge.wait_for_comment(1, |c| c.body.contains("Unlocked `qa`"), T);
    wait("qa follows main again", &mut || {
        synced_at(&database, &first) == 1
    });
    let (holder, _, _) = lease_of(&database, "qa").expect("qa's lease");
    assert_ne!(holder, qa_holder, "another replica took qa over");
    let handed: Vec<String> = replicas[hearer]
        .1
        .lock()
        .expect("log")
        .iter()
        .filter(|l| l.contains("handed over"))
        .cloned()
        .collect();
    assert_eq!(
        handed.len(),
        2,
        "the unlock was handed over too, to the dead holder's successor: {handed:#?}"
    );
    let left: i64 = database
        .connect()
        .query_one("SELECT COUNT(*) FROM handoffs", &[])
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "every piece of work handed over was done");
    let bot = forge.bot_login().to_owned();
    let answers: Vec<String> = forge
        .comments(1)
        .into_iter()
        .filter(|c| c.author == bot && !c.body.contains("<!-- slipway:plan -->"))
        .map(|c| c.body)
        .collect();
    assert_eq!(
        answers.iter().filter(|a| a.contains("Applied #1")).count(),
        1,
        "the apply was answered once: {answers:#?}"
    );
    assert!(
        !answers.iter().any(|a| a.contains("failed")),
        "{answers:#?}"
    );
}
