//! The replicas' fault test, Jepsen-style on one machine: three `slipway serve` replicas on
//! one PostgreSQL of the test's own, thirty static environments and a churn of branch
//! environments, a stream of pushes and webhooks, and a nemesis, all from one seed.
//!
//! The nemesis kills a replica with SIGKILL (it comes back after a while), freezes one with
//! SIGSTOP for three to four leases (past the two leases of silence after which the others
//! take its environments over), cuts one off from PostgreSQL as long (a TCP proxy in front of
//! the server, severed), crashes and restarts PostgreSQL, and runs one replica, for the whole
//! run, under a clock five minutes behind (`libfaketime`).
//!
//! Every environment has a `postgres.database` and a `job`, the witness: each run of it
//! appends `start`, `tick` (every 100 ms for 12 s: longer than a failover, so that a run of a
//! replica frozen mid-run would overlap the next holder's unless it is killed) and `end`
//! lines to a file in the environment's data directory with the environment, the lease
//! epoch and replica it ran under
//! (`SLIPWAY_EPOCH`, `SLIPWAY_REPLICA`), the push it belongs to and the time. Checked once
//! the faults stop:
//! - no two runs of one environment's witness overlap (a killed run ends at its last line);
//! - every run ran under a lease, and epochs never decrease, nor pushes go back, run after
//!   run;
//! - no environment deployed a commit twice or deployed an older commit after a newer one;
//! - every webhook a replica accepted is recorded once, a redelivery to another replica is
//!   answered as a duplicate, and its push is deployed everywhere (or a later one is);
//! - within [`CONVERGE`] of the faults stopping, every static environment runs the head and
//!   the branch environments are exactly the branches; then nothing is left of a destroyed
//!   environment: no database or role on the server, no directory in any replica's home, no
//!   process of its uid.
//!
//! `SLIPWAY_FAULTS_SEED` replays a run (the seed is printed and journaled), and
//! `SLIPWAY_FAULTS_SECONDS` makes it longer (default 45 s of faults). The journal of every
//! run is kept in `target/tmp/faults/`.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slipway_testkit::forge::github as fake_github;
use slipway_testkit::pg::OwnServer;
use slipway_testkit::proxy::Proxy;
use util::*;

const REPLICAS: usize = 3;
const STATIC: usize = 30;
const LEASE: Duration = Duration::from_secs(3);
/// How long after the faults stop every environment must have converged.
const CONVERGE: Duration = Duration::from_secs(120);
const SECRET: &str = "faults-webhook-secret";
/// Environments' uids: a range of this test's own.
const UIDS: (u32, u32) = (330_000, 330_199);

/// SplitMix64: every choice of the run follows from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low + 1))
    }
}

/// What happened, when: printed, and kept in a file.
struct Journal {
    started: Instant,
    file: Mutex<std::fs::File>,
    path: PathBuf,
}

impl Journal {
    fn open(seed: u64) -> Journal {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults");
        std::fs::create_dir_all(&dir).expect("the journal's directory");
        let path = dir.join(format!("seed-{seed}.log"));
        let file = std::fs::File::create(&path).expect("the journal");
        Journal {
            started: Instant::now(),
            file: Mutex::new(file),
            path,
        }
    }

    /// A wall-clock time in nanoseconds as milliseconds since the journal began.
    fn at(&self, nanos: u128) -> i128 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let began = now.saturating_sub(self.started.elapsed().as_nanos());
        (nanos as i128 - began as i128) / 1_000_000
    }

    fn note(&self, text: &str) {
        let line = format!("{:8.3}s {text}", self.started.elapsed().as_secs_f64());
        eprintln!("{line}");
        let _ = writeln!(self.file.lock().expect("journal"), "{line}");
    }
}

type Log = Arc<Mutex<Vec<String>>>;

struct Replica {
    name: String,
    home: PathBuf,
    config: PathBuf,
    /// Everything it reaches PostgreSQL through (its state and its databases).
    proxy: Proxy,
    server: Option<Server>,
    logs: Vec<Log>,
    skewed: bool,
    frozen: bool,
}

impl Replica {
    fn up(&self) -> bool {
        self.server.is_some() && !self.frozen
    }

    fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(|s| s.child.id())
    }
}

/// The fault in force on a replica (or the server), and when it ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Killed,
    Frozen,
    CutOff,
}

struct World {
    s: Sandbox,
    pg: OwnServer,
    _forge: slipway_testkit::forge::FakeForge,
    forge_url: String,
    replicas: Vec<Replica>,
    journal: Journal,
    rng: Rng,
    /// Each push's commit and its number, in order.
    pushes: Vec<(String, u32)>,
    branches: BTreeSet<String>,
    next_branch: u32,
    /// Webhooks a replica accepted: delivery id and the push number.
    accepted: Vec<(String, u32)>,
    deliveries: u32,
    faults: BTreeMap<&'static str, u32>,
}

fn stack(rev: u32) -> String {
    let envs: Vec<String> = (1..=STATIC)
        .map(|i| format!("  e{i:02}: {{ track: main }}"))
        .collect();
    format!(
        "version: 1\nstack: faults\nvariables: {{ rev: \"{rev}\" }}\nenvironments:\n{}\n  \
         previews:\n    generate: {{ branches: [\"feature/*\"] }}\nresources:\n  \
         db: {{ type: postgres.database }}\n  witness:\n    type: job\n    \
         command: [\"sh\", \"witness.sh\"]\n    env: {{ REV: \"${{vars.rev}}\" }}\n    \
         timeout: 60s\n",
        envs.join("\n")
    )
}

/// The witness: a run's lines, each with the environment, epoch, push, replica, its pid and
/// the time in nanoseconds.
const WITNESS: &str = r#"w="$SLIPWAY_DATA_DIR/witness.log"
mark() {
  echo "$1 $SLIPWAY_ENV ${SLIPWAY_EPOCH:-none} $REV ${SLIPWAY_REPLICA:-none} $$ $(date +%s%N)" >> "$w"
}
mark start
i=0; while [ $i -lt 120 ]; do sleep 0.1; mark tick; i=$((i + 1)); done
mark end
"#;

fn libfaketime() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("libfaketime is needed (Debian's `faketime`; scripts/test.sh installs it)")
        })
}

impl World {
    fn start(seed: u64) -> World {
        let journal = Journal::open(seed);
        journal.note(&format!(
            "seed {seed}: {REPLICAS} replicas, {STATIC} static environments, lease {LEASE:?}"
        ));
        let pg = OwnServer::start();
        pg.connect("postgres")
            .batch_execute("CREATE DATABASE slipway")
            .expect("create the state database");
        let forge = slipway_testkit::forge::FakeForge::start(
            slipway_testkit::forge::Forge::GitHub,
            "slipway-bot",
        );
        let s = Sandbox::new();
        s.write("witness.sh", WITNESS);
        s.write("slipway.yaml", &stack(0));
        let first = s.commit("push 0");
        let mut world = World {
            forge_url: forge.url(),
            _forge: forge,
            s,
            pg,
            replicas: Vec::new(),
            journal,
            rng: Rng(seed),
            pushes: vec![(first, 0)],
            branches: BTreeSet::new(),
            next_branch: 0,
            accepted: Vec::new(),
            deliveries: 0,
            faults: BTreeMap::new(),
        };
        for i in 1..=REPLICAS {
            let replica = world.replica(&format!("r{i}"), i == REPLICAS);
            world.replicas.push(replica);
        }
        world.launch(0);
        world.wait_key();
        for i in 1..REPLICAS {
            world.launch(i);
        }
        world
    }

    fn replica(&self, name: &str, skewed: bool) -> Replica {
        let proxy = Proxy::start(&format!("127.0.0.1:{}", self.pg.port()));
        let home = self.s.dir.path().join(format!("home-{name}"));
        std::fs::create_dir_all(&home).expect("home");
        let config = self.s.dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[local]\nports = \"47100-47119\"\nuids = \"{}-{}\"\n\
                 [postgres.main]\nurl = \"{}\"\n\
                 [controller]\nreplica = \"{name}\"\nlease = \"{}ms\"\nconcurrency = 40\n\
                 [repo]\npoll_interval = \"5s\"\n\
                 [state]\nurl = \"{}\"\n\
                 [forge.github]\nrepository = \"acme/shop\"\napi_url = \"{}\"\n\
                 bot_login = \"slipway-bot\"\n",
                UIDS.0,
                UIDS.1,
                self.pg.url_via(proxy.port(), "postgres"),
                LEASE.as_millis(),
                self.pg.url_via(proxy.port(), "slipway"),
                self.forge_url,
            ),
        )
        .expect("config");
        Replica {
            name: name.to_owned(),
            home,
            config,
            proxy,
            server: None,
            logs: Vec::new(),
            skewed,
            frozen: false,
        }
    }

    /// Starts replica `i` (again).
    fn launch(&mut self, i: usize) {
        let url = format!("file://{}", self.s.repo.display());
        let r = &self.replicas[i];
        let mut command = self
            .s
            .cmd(&["serve", "--repo", &url, "--listen", "127.0.0.1:0"]);
        command
            .env("SLIPWAY_HOME", &r.home)
            .env("SLIPWAY_CONFIG", &r.config)
            .env("GITHUB_TOKEN", "faults-token")
            .env("SLIPWAY_WEBHOOK_SECRET", SECRET);
        if r.skewed {
            command
                .env("LD_PRELOAD", libfaketime())
                .env("FAKETIME", "-5m")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let (server, log) = serve_from(command, Duration::from_secs(60));
        let r = &mut self.replicas[i];
        r.server = Some(server);
        r.logs.push(log);
        r.frozen = false;
        let note = format!(
            "{} up (pid {}){}",
            r.name,
            r.pid().unwrap_or(0),
            if r.skewed { ", clock 5 min behind" } else { "" }
        );
        self.journal.note(&note);
    }

    /// The first replica makes the state's key; the others get a copy, as an operator would.
    fn wait_key(&self) {
        let key = self.replicas[0].home.join("state.key");
        wait_for("r1 makes the state key", Duration::from_secs(60), || {
            key.is_file().then_some(())
        });
        for r in &self.replicas[1..] {
            std::fs::copy(&key, r.home.join("state.key")).expect("copy the key");
        }
    }

    fn state(&self) -> postgres::Client {
        self.pg.connect("slipway")
    }

    fn head(&self) -> &(String, u32) {
        self.pushes.last().expect("a first push")
    }

    /// Sends GitHub's push delivery for `branch` from `before` to `after` to a replica that
    /// answers, and sometimes again to another (a redelivery); records what was accepted.
    fn webhook(&mut self, branch: &str, before: &str, after: &str, rev: u32) {
        let up: Vec<usize> = (0..REPLICAS).filter(|&i| self.replicas[i].up()).collect();
        if up.is_empty() {
            return;
        }
        self.deliveries += 1;
        let id = format!("faults-{}", self.deliveries);
        let body = fake_github::push_payload(branch, before, after);
        let headers = fake_github::webhook_headers(SECRET.as_bytes(), "push", &id, &body);
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let first = up[self.rng.below(up.len() as u64) as usize];
        let send = |i: usize| {
            let addr = &self.replicas[i].server.as_ref().expect("up").addr;
            slipway_testkit::http::http_request(addr, "POST", "/webhooks/github", &headers, &body)
        };
        match send(first) {
            Ok(answer) if answer.status == 202 => {
                let reply: serde_json::Value =
                    serde_json::from_str(&answer.body).unwrap_or_default();
                assert_eq!(reply["duplicate"], serde_json::Value::Null, "{reply}");
                self.accepted.push((id.clone(), rev));
                self.journal.note(&format!(
                    "webhook {id} (push {rev} of {branch}) accepted by {}",
                    self.replicas[first].name
                ));
                // A redelivery to another replica is recognised, wherever it lands.
                if self.rng.chance(30)
                    && let Some(&other) = up.iter().find(|&&i| i != first)
                    && let Ok(again) = send(other)
                    && again.status == 202
                {
                    let reply: serde_json::Value =
                        serde_json::from_str(&again.body).unwrap_or_default();
                    assert_eq!(
                        reply["duplicate"], true,
                        "{} took {id} again after {} had: {reply}",
                        self.replicas[other].name, self.replicas[first].name
                    );
                }
            }
            Ok(answer) => self.journal.note(&format!(
                "webhook {id} refused by {}: {} {}",
                self.replicas[first].name, answer.status, answer.body
            )),
            Err(e) => self.journal.note(&format!(
                "webhook {id} not delivered to {}: {e}",
                self.replicas[first].name
            )),
        }
    }

    fn push(&mut self) {
        let (before, rev) = self.head().clone();
        let rev = rev + 1;
        self.s.write("slipway.yaml", &stack(rev));
        let sha = self.s.commit(&format!("push {rev}"));
        self.pushes.push((sha.clone(), rev));
        self.journal
            .note(&format!("push {rev}: {}", &sha[..12.min(sha.len())]));
        self.webhook("main", &before, &sha, rev);
    }

    fn branch_churn(&mut self) {
        let zero = "0".repeat(40);
        if self.branches.len() < 4 && (self.branches.is_empty() || self.rng.chance(60)) {
            self.next_branch += 1;
            let branch = format!("feature/b{}", self.next_branch);
            git(&self.s.repo, &["branch", &branch, "main"]);
            self.branches.insert(branch.clone());
            let (head, rev) = self.head().clone();
            self.journal.note(&format!("branch {branch} created"));
            self.webhook(&branch, &zero, &head, rev);
        } else if let Some(branch) = self
            .branches
            .iter()
            .nth(self.rng.below(self.branches.len() as u64) as usize)
            .cloned()
        {
            let head = git(&self.s.repo, &["rev-parse", &branch]);
            git(&self.s.repo, &["branch", "-D", &branch]);
            self.branches.remove(&branch);
            self.journal.note(&format!("branch {branch} deleted"));
            let rev = self.head().1;
            self.webhook(&branch, &head, &zero, rev);
        }
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.replicas[i].pid().expect("running");
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Puts `fault` on replica `i`.
    fn inflict(&mut self, i: usize, fault: Fault) {
        let name = self.replicas[i].name.clone();
        match fault {
            Fault::Killed => {
                let mut server = self.replicas[i].server.take().expect("running");
                server.child.kill().expect("kill -9");
                server.child.wait().expect("reaped");
            }
            Fault::Frozen => {
                self.signal(i, "-STOP");
                self.replicas[i].frozen = true;
            }
            Fault::CutOff => self.replicas[i].proxy.cut(),
        }
        *self
            .faults
            .entry(match fault {
                Fault::Killed => "kill -9",
                Fault::Frozen => "SIGSTOP",
                Fault::CutOff => "partition",
            })
            .or_default() += 1;
        self.journal.note(&format!("nemesis: {fault:?} {name}"));
    }

    /// Ends `fault` on replica `i`.
    fn heal(&mut self, i: usize, fault: Fault) {
        match fault {
            Fault::Killed => self.launch(i),
            Fault::Frozen => {
                self.signal(i, "-CONT");
                self.replicas[i].frozen = false;
            }
            Fault::CutOff => self.replicas[i].proxy.heal(),
        }
        let name = self.replicas[i].name.clone();
        self.journal
            .note(&format!("nemesis: {name} healed of {fault:?}"));
    }

    /// The fault a watchdog exists for, struck on purpose once: a push, and once the
    /// replicas run its witnesses, the replica running most of them is frozen; another push
    /// lands while it is away, so that the replicas taking its environments over run their
    /// witnesses while the frozen ones would still be running if nothing killed them.
    fn freeze_mid_run(&mut self) {
        self.push();
        let rev = self.head().1;
        let in_flight = |world: &World, i: usize| {
            (1..=STATIC)
                .filter(|n| {
                    witness_runs(world, &format!("e{n:02}"))
                        .iter()
                        .any(|r| r.node == world.replicas[i].name && r.rev == rev && !r.ended)
                })
                .count()
        };
        let busiest = wait_for_explained_value(self, "the push's witnesses run", || {
            let counts: Vec<usize> = (0..REPLICAS).map(|i| in_flight(self, i)).collect();
            let (i, &most) = counts.iter().enumerate().max_by_key(|(_, n)| **n)?;
            (most >= 2).then_some(i)
        });
        let running = in_flight(self, busiest);
        self.inflict(busiest, Fault::Frozen);
        self.journal.note(&format!(
            "  with {running} witness runs of push {rev} in flight"
        ));
        std::thread::sleep(LEASE);
        self.push();
        let away = self.away();
        std::thread::sleep(away.saturating_sub(LEASE));
        self.heal(busiest, Fault::Frozen);
    }

    /// How long a frozen or cut-off replica stays away: three to four leases.
    fn away(&mut self) -> Duration {
        let lease = LEASE.as_millis() as u64;
        self.rng.millis(3 * lease, 4 * lease)
    }

    /// The faults, pushes, webhooks and branches for `seconds`; every fault healed at the end.
    fn run(&mut self, seconds: u64) {
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut active: Vec<(usize, Fault, Instant)> = Vec::new();
        self.freeze_mid_run();
        while Instant::now() < end {
            std::thread::sleep(self.rng.millis(1000, 3000));
            let now = Instant::now();
            let (due, later): (Vec<_>, Vec<_>) =
                active.into_iter().partition(|(_, _, until)| *until <= now);
            active = later;
            for (i, fault, _) in due {
                self.heal(i, fault);
            }
            if self.rng.chance(50) {
                self.push();
            }
            if self.rng.chance(25) {
                self.branch_churn();
            }
            // At most one replica under a fault at a time, so that two keep the work going;
            // struck a while after the push, when runs are under way.
            if active.is_empty() && self.rng.chance(45) {
                std::thread::sleep(self.rng.millis(0, 3000));
                let healthy: Vec<usize> = (0..REPLICAS).collect();
                let i = healthy[self.rng.below(healthy.len() as u64) as usize];
                match self.rng.below(4) {
                    0 => {
                        self.inflict(i, Fault::Killed);
                        let back = self.rng.millis(1000, 3 * LEASE.as_millis() as u64);
                        active.push((i, Fault::Killed, Instant::now() + back));
                    }
                    // Frozen or cut off for longer than it takes the others to call it dead
                    // (silent for two leases) and take its leases over.
                    1 => {
                        self.inflict(i, Fault::Frozen);
                        let back = self.away();
                        active.push((i, Fault::Frozen, Instant::now() + back));
                    }
                    2 => {
                        self.inflict(i, Fault::CutOff);
                        let back = self.away();
                        active.push((i, Fault::CutOff, Instant::now() + back));
                    }
                    _ => {
                        self.journal.note("nemesis: PostgreSQL crashes");
                        self.pg.crash_and_restart();
                        *self.faults.entry("PostgreSQL restart").or_default() += 1;
                        self.journal.note("nemesis: PostgreSQL back");
                    }
                }
            }
        }
        for (i, fault, _) in active {
            self.heal(i, fault);
        }
    }

    /// Every replica's log, beside the journal (`seed-N-rK.log`).
    fn save_logs(&self) {
        for r in &self.replicas {
            let path = self
                .journal
                .path
                .with_extension("")
                .with_extension(format!("{}.log", r.name));
            let mut text = String::new();
            for (n, log) in r.logs.iter().enumerate() {
                text.push_str(&format!("--- run {}\n", n + 1));
                text.push_str(&log.lock().expect("log").join("\n"));
                text.push('\n');
            }
            let _ = std::fs::write(path, text);
        }
    }

    fn explain(&self) -> String {
        self.save_logs();
        let mut out = format!("journal: {}\n", self.journal.path.display());
        for r in &self.replicas {
            for (n, log) in r.logs.iter().enumerate() {
                let lines = log.lock().expect("log");
                let tail = lines.len().saturating_sub(40);
                out.push_str(&format!(
                    "--- {} (run {}), last lines\n{}\n",
                    r.name,
                    n + 1,
                    lines[tail..].join("\n")
                ));
            }
        }
        out
    }

    /// Static environments at the head and synced, and branch environments exactly the
    /// branches.
    fn converged(&self) -> Result<(), String> {
        let (head, _) = self.head();
        let rows = self
            .state()
            .query(
                "SELECT name, current_commit, sync FROM environments ORDER BY name",
                &[],
            )
            .map_err(|e| e.to_string())?;
        let mut generated = BTreeSet::new();
        let mut behind = Vec::new();
        for row in rows {
            let (name, commit, sync): (String, Option<String>, String) =
                (row.get(0), row.get(1), row.get(2));
            if name.starts_with("br-") {
                generated.insert(name);
            } else if commit.as_deref() != Some(head.as_str()) || sync != "synced" {
                behind.push(format!("{name} {sync} at {commit:?}"));
            }
        }
        let wanted: BTreeSet<String> = self.branches.iter().map(|b| env_of_branch(b)).collect();
        if !behind.is_empty() || generated != wanted {
            return Err(format!(
                "behind: {behind:?}; branch environments {generated:?}, branches {wanted:?}"
            ));
        }
        Ok(())
    }
}

/// The environment a `feature/*` branch gets.
fn env_of_branch(branch: &str) -> String {
    format!("br-{}", branch.replace('/', "-"))
}

/// One run of the witness.
#[derive(Debug)]
struct Run {
    node: String,
    epoch: Option<i64>,
    rev: u32,
    replica: String,
    start: u128,
    last: u128,
    ended: bool,
}

/// Every witness run of `env`, from every replica's copy of its data directory, by start.
fn witness_runs(world: &World, env: &str) -> Vec<Run> {
    let mut runs = Vec::new();
    for r in &world.replicas {
        let file = r.home.join("envs").join(env).join("data/witness.log");
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let mut open: BTreeMap<String, Run> = BTreeMap::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let [mark, e, epoch, rev, replica, pid, at] = f[..] else {
                panic!("a torn witness line in {}: {line:?}", file.display());
            };
            assert_eq!(e, env, "{}: {line}", file.display());
            let at: u128 = at.parse().expect("nanoseconds");
            match mark {
                "start" => {
                    if let Some(run) = open.remove(pid) {
                        runs.push(run);
                    }
                    open.insert(
                        pid.to_owned(),
                        Run {
                            node: r.name.clone(),
                            epoch: epoch.parse().ok(),
                            rev: rev.parse().expect("a push number"),
                            replica: replica.to_owned(),
                            start: at,
                            last: at,
                            ended: false,
                        },
                    );
                }
                "tick" | "end" => {
                    let run = open
                        .get_mut(pid)
                        .unwrap_or_else(|| panic!("{line:?} without its start"));
                    run.last = at;
                    if mark == "end" {
                        run.ended = true;
                        runs.extend(open.remove(pid));
                    }
                }
                other => panic!("unknown witness mark {other:?}"),
            }
        }
        runs.extend(open.into_values());
    }
    runs.sort_by_key(|r| r.start);
    runs
}

fn seed() -> u64 {
    std::env::var("SLIPWAY_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

#[test]
fn three_replicas_under_kills_freezes_partitions_restarts_and_skew_apply_each_change_once() {
    let seed = seed();
    let seconds = std::env::var("SLIPWAY_FAULTS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    let mut world = World::start(seed);
    let behind = std::cell::RefCell::new(String::new());
    slipway_testkit::wait::wait_for_explained(
        "every environment runs the first push",
        Duration::from_secs(180),
        || format!("not converged: {}\n{}", behind.borrow(), world.explain()),
        || match world.converged() {
            Ok(()) => Some(()),
            Err(why) => {
                *behind.borrow_mut() = why;
                None
            }
        },
    );
    world
        .journal
        .note("converged on push 0; the nemesis starts");

    world.run(seconds);

    // Faults over: one last push, then everything converges within the bound.
    world.push();
    let healed = Instant::now();
    world.journal.note("faults over, all healed");
    let mut last = String::new();
    let deadline = healed + CONVERGE;
    while let Err(why) = world.converged() {
        last = why;
        if Instant::now() > deadline {
            panic!(
                "not converged {CONVERGE:?} after the faults stopped: {last}\n{}",
                world.explain()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let took = healed.elapsed();
    world.journal.note(&format!(
        "converged {:.1} s after the faults stopped",
        took.as_secs_f64()
    ));
    let _ = last;

    let mut failures = Vec::new();
    check_witness(&world, &mut failures);
    check_deployments(&world, &mut failures);
    check_webhooks(&world, &mut failures);
    check_orphans(&world, &mut failures);
    world.journal.note(&format!(
        "faults: {:?}; pushes: {}; webhooks accepted: {}; branches made: {}",
        world.faults,
        world.pushes.len() - 1,
        world.accepted.len(),
        world.next_branch
    ));
    assert!(
        failures.is_empty(),
        "seed {seed}: {}\n{}",
        failures.join("\n"),
        world.explain()
    );
    world.save_logs();
    check_watchdogs_go_with_their_replicas(&mut world);
}

fn wait_for_explained_value<T>(world: &World, what: &str, check: impl FnMut() -> Option<T>) -> T {
    slipway_testkit::wait::wait_for_explained(
        what,
        Duration::from_secs(180),
        || world.explain(),
        check,
    )
}

fn check_witness(world: &World, failures: &mut Vec<String>) {
    let mut total = 0;
    let mut killed = 0;
    let leases: BTreeMap<String, i64> = world
        .state()
        .query("SELECT environment, epoch FROM leases", &[])
        .expect("leases")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for i in 1..=STATIC {
        let env = format!("e{i:02}");
        let runs = witness_runs(world, &env);
        for run in &runs {
            world.journal.note(&format!(
                "witness {env}: {} epoch {:?} push {} {}..{} ms{}",
                run.node,
                run.epoch,
                run.rev,
                world.journal.at(run.start),
                world.journal.at(run.last),
                if run.ended { "" } else { ", cut short" }
            ));
        }
        total += runs.len();
        killed += runs.iter().filter(|r| !r.ended).count();
        if runs.is_empty() {
            failures.push(format!("{env}: its witness never ran"));
        }
        for (a, run) in runs.iter().enumerate() {
            let Some(epoch) = run.epoch else {
                failures.push(format!("{env}: a run without a lease: {run:?}"));
                continue;
            };
            if leases.get(&env).is_none_or(|&current| epoch > current) {
                failures.push(format!(
                    "{env}: a run under epoch {epoch}, beyond the lease's {:?}",
                    leases.get(&env)
                ));
            }
            if run.replica != run.node {
                failures.push(format!("{env}: a run on {} says {}", run.node, run.replica));
            }
            for later in &runs[a + 1..] {
                if later.start <= run.last {
                    failures.push(format!("{env}: overlapping runs:\n  {run:?}\n  {later:?}"));
                }
                if later.epoch.is_some_and(|e| e < epoch) {
                    failures.push(format!("{env}: epoch went back:\n  {run:?}\n  {later:?}"));
                }
                if later.rev < run.rev {
                    failures.push(format!("{env}: push went back:\n  {run:?}\n  {later:?}"));
                }
            }
        }
    }
    world.journal.note(&format!(
        "witness: {total} runs in {STATIC} environments, {killed} of them cut short"
    ));
}

fn check_deployments(world: &World, failures: &mut Vec<String>) {
    let rev: BTreeMap<&str, u32> = world
        .pushes
        .iter()
        .map(|(sha, rev)| (sha.as_str(), *rev))
        .collect();
    let rows = world
        .state()
        .query(
            "SELECT environment, commit_sha FROM deployments WHERE status = 'succeeded' \
             AND environment NOT LIKE 'br-%' ORDER BY id",
            &[],
        )
        .expect("deployments");
    let mut seen: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for row in &rows {
        let (env, commit): (String, String) = (row.get(0), row.get(1));
        let Some(&n) = rev.get(commit.as_str()) else {
            failures.push(format!("{env}: deployed {commit}, which was never pushed"));
            continue;
        };
        let revs = seen.entry(env.clone()).or_default();
        if revs.contains(&n) {
            failures.push(format!("{env}: push {n} deployed twice"));
        }
        if revs.last().is_some_and(|&last| n < last) {
            failures.push(format!(
                "{env}: deployed push {n} after push {:?}",
                revs.last()
            ));
        }
        revs.push(n);
    }
    world.journal.note(&format!(
        "deployments: {} succeeded in {} static environments",
        rows.len(),
        seen.len()
    ));
}

fn check_webhooks(world: &World, failures: &mut Vec<String>) {
    let recorded: BTreeSet<String> = world
        .state()
        .query("SELECT id FROM deliveries", &[])
        .expect("deliveries")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let head = world.head().1;
    for (id, rev) in &world.accepted {
        if !recorded.iter().any(|r| r.ends_with(id.as_str())) {
            failures.push(format!(
                "accepted webhook {id} is not recorded: {recorded:?}"
            ));
        }
        // Its push is deployed everywhere, or superseded by a later one that is: the head.
        if *rev > head {
            failures.push(format!("webhook {id} names push {rev}, beyond the head"));
        }
    }
}

fn check_orphans(world: &World, failures: &mut Vec<String>) {
    let existing: BTreeSet<String> = world
        .state()
        .query("SELECT name FROM environments", &[])
        .expect("environments")
        .iter()
        .map(|r| r.get(0))
        .collect();
    // The replicas sweep their copies of destroyed environments each beat: what is left
    // after a few beats more than two leases is an orphan.
    let deadline = Instant::now() + 2 * LEASE + Duration::from_secs(10);
    loop {
        let found = leftovers(world, &existing);
        if found.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            failures.extend(found);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every job has ended: nothing runs under an environment's uid.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let running: Vec<String> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let status = std::fs::read_to_string(e.path().join("status")).ok()?;
                let uid: u32 = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Uid:"))?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()?;
                (UIDS.0..=UIDS.1)
                    .contains(&uid)
                    .then(|| format!("pid {} uid {uid}", e.file_name().to_string_lossy()))
            })
            .collect();
        if running.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            failures.push(format!("processes of environments still run: {running:?}"));
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    world.journal.note(&format!(
        "orphans checked: {} environments, {} homes",
        existing.len(),
        world.replicas.len()
    ));
}

/// Databases and roles on the server, and directories in the replicas' homes, of
/// environments that are not in `existing`.
fn leftovers(world: &World, existing: &BTreeSet<String>) -> Vec<String> {
    let mut found = Vec::new();
    let mut admin = world.pg.connect("postgres");
    for (what, query) in [
        (
            "database",
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database",
        ),
        (
            "role",
            "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles",
        ),
    ] {
        for row in admin.query(query, &[]).expect("catalog") {
            let (name, comment): (String, Option<String>) = (row.get(0), row.get(1));
            // `slipway:<instance>:<environment>/<resource>`
            let Some(env) = comment
                .as_deref()
                .and_then(|c| c.strip_prefix("slipway:"))
                .and_then(|c| c.split_once(':'))
                .and_then(|(_, rest)| rest.split_once('/'))
                .map(|(env, _)| env.to_owned())
            else {
                continue;
            };
            if !existing.contains(&env) {
                found.push(format!("orphan {what} {name} of {env}"));
            }
        }
    }
    for r in &world.replicas {
        for entry in std::fs::read_dir(r.home.join("envs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().to_string();
            if !existing.contains(&name) {
                found.push(format!("orphan directory {}", entry.path().display()));
            }
        }
    }
    found
}

/// Each replica's watchdog exits with it (SIGKILL here: nothing of it may stay behind).
fn check_watchdogs_go_with_their_replicas(world: &mut World) {
    let mut watchdogs = Vec::new();
    for r in &world.replicas {
        let pid = r.pid().expect("running");
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("tasks")
            .flatten()
        {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace() {
                let cmdline =
                    std::fs::read_to_string(format!("/proc/{child}/cmdline")).unwrap_or_default();
                if cmdline.contains("__watchdog") {
                    watchdogs.push(child.to_owned());
                }
            }
        }
    }
    assert_eq!(
        watchdogs.len(),
        REPLICAS,
        "one watchdog per replica: {watchdogs:?}"
    );
    for r in &mut world.replicas {
        let mut server = r.server.take().expect("running");
        server.child.kill().expect("kill");
        server.child.wait().expect("reap");
    }
    wait_for(
        "the watchdogs exit with their replicas",
        Duration::from_secs(20),
        || {
            watchdogs
                .iter()
                .all(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .map_or(true, |s| s.contains(") Z"))
                })
                .then_some(())
        },
    );
}
