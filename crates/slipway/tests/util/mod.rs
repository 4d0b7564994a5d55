//! Test harness: a real git repository and a real slipway home in a temp directory, and the
//! real `slipway` binary run against them. On failure everything is printed: the command,
//! its directory, stdout, stderr and the files of the home (ripgrep's `TestCommand` idea).
#![allow(
    dead_code,
    unused_imports,
    reason = "each test file uses a different part of the harness"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_slipway");

pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub home: PathBuf,
    pub config: PathBuf,
    /// Its slot of ports and uids, held until everything it started is killed (`Drop`).
    _slot: std::fs::File,
    /// The packet filter's table its engine writes as root (named for its uids): removed
    /// with it, so that the next sandbox of the slot does not find its rules.
    fence_table: String,
}

/// How many sandboxes may exist at once, on the whole machine: each has 20 ports from 21000
/// and 20 uids from 300000.
const SLOTS: u32 = 400;

/// A slot no other sandbox holds, in this process or another, with the lock that holds it: a
/// slot counted from a number per process and sandbox was shared when one test kept its
/// sandbox while the other thread made ten more, and the two engines then shared uids (one's
/// destroy killed the other's processes).
fn claim_slot() -> (u32, std::fs::File) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join("slipway-test-slots");
    std::fs::create_dir_all(&dir).expect("the directory of sandbox slots");
    let first = (std::process::id() % 40) * 10 + NEXT.fetch_add(1, Ordering::Relaxed);
    for n in (0..SLOTS).map(|i| (first + i) % SLOTS) {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(n.to_string()))
            .expect("a sandbox slot's lock file");
        match file.try_lock() {
            Ok(()) => return (n, file),
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(e)) => panic!("locking sandbox slot {n}: {e}"),
        }
    }
    panic!("all {SLOTS} sandbox slots are held")
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("a temp dir");
        // Environments run under their own uids when the engine is root (as tests are): they
        // must be able to traverse down to their directories in the home (not list it).
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
                .expect("make the sandbox traversable");
        }
        let repo = dir.path().join("repo");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&repo).expect("mkdir repo");
        git(&repo, &["init", "-q", "-b", "main"]);
        // Tests run in parallel: each sandbox allocates from its own port range, so that two
        // engines never both find a port free and race to bind it, and its own uids.
        let (slot, slot_lock) = claim_slot();
        let slot = slot * 20;
        let low = 21000 + slot;
        let config = dir.path().join("engine.toml");
        // Every sandbox may use this machine's PostgreSQL (the quickstart has a database);
        // each home's names carry its own id, so sandboxes never share a database.
        std::fs::write(
            &config,
            format!(
                "[local]\nports = \"{low}-{}\"\nuids = \"{}-{}\"\n[postgres.main]\nurl = \"{}\"\n",
                low + 19,
                // Each engine its own uids: two homes must never share an environment uid.
                300000 + slot,
                300000 + slot + 19,
                pg_url()
            ),
        )
        .expect("write the engine config");
        Sandbox {
            dir,
            repo,
            home,
            config,
            _slot: slot_lock,
            fence_table: format!("slipway_{}_{}", 300000 + slot, 300000 + slot + 19),
        }
    }

    pub fn write(&self, path: &str, content: &str) -> &Sandbox {
        let p = self.repo.join(path);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
        self
    }

    pub fn commit(&self, message: &str) -> String {
        git(&self.repo, &["add", "-A"]);
        git(
            &self.repo,
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        git(&self.repo, &["rev-parse", "HEAD"])
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args);
        self.engine_env(c)
    }

    /// [`Sandbox::cmd`] run as `uid` (and gid `uid`, no supplementary groups) by `setpriv`.
    pub fn cmd_as(&self, uid: u32, args: &[&str]) -> Command {
        let argv = argv_as(uid);
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]).args(args);
        self.engine_env(c)
    }

    /// `c` in the repository, with the variables that point slipway at this sandbox.
    pub fn engine_env(&self, mut c: Command) -> Command {
        c.current_dir(&self.repo)
            .env("SLIPWAY_HOME", &self.home)
            .env("NO_COLOR", "1")
            .env("SLIPWAY_USER", "tester")
            .env("SLIPWAY_CONFIG", &self.config);
        c
    }

    /// Writes `slipway.yaml`: stack `stack` with one environment, `dev`, tracking `main`, and
    /// `resources` (YAML lines indented by two spaces); then commits it with `message`.
    pub fn commit_dev_stack(&self, stack: &str, resources: &str, message: &str) -> String {
        self.write("slipway.yaml", &dev_stack(stack, resources));
        self.commit(message)
    }

    /// Writes `slipway.yaml`: stack `stack` with `environments` (a YAML flow mapping) and
    /// `resources` (YAML lines indented by two spaces); then commits it with `message`.
    pub fn commit_stack(
        &self,
        stack: &str,
        environments: &str,
        resources: &str,
        message: &str,
    ) -> String {
        self.write("slipway.yaml", &stack_file(stack, environments, resources));
        self.commit(message)
    }

    /// Adds `extra` to the `[local]` section of the engine's configuration.
    pub fn with_local(&self, extra: &str) {
        let config = std::fs::read_to_string(&self.config).expect("config");
        std::fs::write(
            &self.config,
            config.replace("[local]\n", &format!("[local]\n{extra}\n")),
        )
        .expect("config");
    }

    /// Runs slipway and returns its output, whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("slipway runs")
    }

    /// Runs slipway, which must exit with `code`.
    pub fn expect_code(&self, args: &[&str], code: i32) -> Output {
        let out = self.run(args);
        if out.status.code() != Some(code) {
            panic!(
                "{}",
                self.report(args, &out, &format!("expected exit code {code}"))
            );
        }
        out
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        self.expect_code(args, 0)
    }

    /// [`Sandbox::ok`] with more environment variables (they win over the sandbox's).
    pub fn ok_with(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        let out = self
            .cmd(args)
            .envs(envs.iter().copied())
            .output()
            .expect("slipway runs");
        if !out.status.success() {
            panic!("{}", self.report(args, &out, "expected exit code 0"));
        }
        out
    }

    /// `slipway secret set NAME [--env ENV]` with `value` on stdin, which must succeed.
    pub fn set_secret(&self, name: &str, env: Option<&str>, value: &str) -> Output {
        use std::io::Write;
        let mut args = vec!["secret", "set", name];
        if let Some(e) = env {
            args.extend(["--env", e]);
        }
        let mut child = self
            .cmd(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("slipway runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{value}\n").as_bytes())
            .expect("write the value");
        let out = child.wait_with_output().expect("slipway finishes");
        assert!(
            out.status.success(),
            "{}",
            self.report(&args, &out, "secret set")
        );
        out
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{}",
                self.report(args, &out, &format!("stdout is not JSON: {e}"))
            )
        })
    }

    pub fn report(&self, args: &[&str], out: &Output, why: &str) -> String {
        let mut listing = String::new();
        for entry in walk(&self.home) {
            listing.push_str(&format!("  {}\n", entry.display()));
        }
        format!(
            "{why}\ncommand: slipway {}\ncwd: {}\nexit: {:?}\n--- stdout\n{}\n--- stderr\n{}\n--- home\n{listing}",
            args.join(" "),
            self.repo.display(),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Pids of every process whose command line mentions this sandbox.
    pub fn processes(&self) -> Vec<(i32, String)> {
        processes_mentioning(&self.dir.path().to_string_lossy())
    }
}

impl Drop for Sandbox {
    /// Nothing a test starts outlives it: supervisors and their children are killed by group.
    fn drop(&mut self) {
        // Supervisors first: a supervisor still alive would restart a child killed before it,
        // and the new child would outlive the test.
        for (pid, _) in self.processes() {
            // SAFETY-free: plain syscalls through the kill command keep this harness simple.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .output();
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .output();
        }
        // Children run in their own sessions: kill those named in supervisor state files.
        for state in walk(&self.home.join("envs")).into_iter().filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && p.parent().is_some_and(|d| d.ends_with("run"))
        }) {
            let Ok(text) = std::fs::read_to_string(&state) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if let Some(pid) = v["child"]["pid"].as_i64() {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .output();
            }
        }
        // And whatever still runs inside the sandbox (a child that a supervisor started just
        // before it was killed, a daemon of a job).
        for pid in processes_inside(self.dir.path()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .output();
        }
        // Databases live outside the sandbox: destroy what is left, so that the server does
        // not collect one per test run.
        if self.home.join("state.db").exists() {
            let status = self.run(&["status", "--output", "json"]);
            let names: Vec<String> = serde_json::from_slice::<Value>(&status.stdout)
                .ok()
                .and_then(|v| {
                    v["environments"].as_array().map(|a| {
                        a.iter()
                            .filter(|e| {
                                e["resources"].as_array().is_some_and(|r| {
                                    r.iter().any(|r| {
                                        r["type"]
                                            .as_str()
                                            .is_some_and(|t| t.starts_with("postgres."))
                                    })
                                })
                            })
                            .filter_map(|e| e["name"].as_str().map(str::to_string))
                            .collect()
                    })
                })
                .unwrap_or_default();
            for env in names {
                let _ = self.run(&["destroy", "--env", &env, "--yes", "--confirm-destroy", &env]);
            }
        }
        // What is still left (the homes of replicas, a state on PostgreSQL, a destroy that
        // failed): every database and role a home of this sandbox made names the home's
        // instance id in its comment.
        drop_leftover_databases(self.dir.path());
        // Last: any command above (`status` runs health commands) writes it again. Only
        // root's engine writes one; elsewhere this fails, as when there is none.
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.fence_table])
            .output();
    }
}

/// Drops the databases and roles on the test PostgreSQL server whose Slipway comment names
/// the instance of a home (`state.key`) in `dir` or a directory right below it.
fn drop_leftover_databases(dir: &Path) {
    let keys: Vec<PathBuf> = std::iter::once(dir.join("state.key"))
        .chain(
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.path().join("state.key")),
        )
        .filter(|path| path.is_file())
        .collect();
    if keys.is_empty() {
        return;
    }
    let Ok(mut client) = postgres::Client::connect(&pg_url(), postgres::NoTls) else {
        return;
    };
    let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    for key in keys {
        let Ok(sealer) = slipway_state::Sealer::load_or_create(&key) else {
            continue;
        };
        let pattern = format!("slipway:{}:%", sealer.instance_id());
        let databases = client
            .query(
                "SELECT datname FROM pg_database d \
                 WHERE shobj_description(d.oid, 'pg_database') LIKE $1",
                &[&pattern],
            )
            .unwrap_or_default();
        for row in databases {
            let name: String = row.get(0);
            let _ = client.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote(&name)
            ));
        }
        let roles = client
            .query(
                "SELECT rolname FROM pg_roles r \
                 WHERE shobj_description(r.oid, 'pg_authid') LIKE $1",
                &[&pattern],
            )
            .unwrap_or_default();
        for row in roles {
            let name: String = row.get(0);
            let _ = client.batch_execute(&format!("DROP ROLE IF EXISTS {}", quote(&name)));
        }
    }
}

/// Pids of every process whose working directory is inside `dir`.
pub fn processes_inside(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect()
}

pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) && pid != std::process::id() as i32 {
            out.push((pid, cmdline.trim().to_string()));
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && !path.ends_with("src") {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A `slipway.yaml`: stack `stack` with `environments` (a YAML flow mapping) and `resources`
/// (YAML lines indented by two spaces).
pub fn stack_file(stack: &str, environments: &str, resources: &str) -> String {
    format!("version: 1\nstack: {stack}\nenvironments: {environments}\nresources:\n{resources}")
}

/// [`stack_file`] with one environment, `dev`, tracking `main`.
pub fn dev_stack(stack: &str, resources: &str) -> String {
    stack_file(stack, "{ dev: { track: main } }", resources)
}

/// The command line that runs slipway as `uid` (and gid `uid`, no supplementary groups)
/// through `setpriv`; the arguments for slipway follow it.
pub fn argv_as(uid: u32) -> Vec<String> {
    let id = uid.to_string();
    [
        "setpriv",
        "--reuid",
        &id,
        "--regid",
        &id,
        "--clear-groups",
        "--",
        BIN,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// Exactly one supervisor for the environment (its processes share it) and one process per
/// process resource of `processes` (its name, and the argument of `sleep` it runs), each
/// recorded as supervised by that supervisor: nothing duplicated, nothing orphaned.
pub fn assert_one_of_each(s: &Sandbox, processes: &[(&str, &str)], when: &str) {
    let supervisors: Vec<_> = s
        .processes()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("__supervise") && cmd.contains("/envs/dev/run"))
        .collect();
    assert_eq!(
        supervisors.len(),
        1,
        "{when}: exactly one supervisor for the environment: {supervisors:?}"
    );
    for (name, arg) in processes {
        let state = supervisor_state(&s.home, "dev", name)
            .unwrap_or_else(|| panic!("{when}: `{name}` has a state file"));
        assert_eq!(
            state["supervisor"]["pid"].as_i64(),
            Some(i64::from(supervisors[0].0)),
            "{when}: `{name}` is kept by the environment's supervisor: {state}"
        );
        // This sandbox's only: one an earlier run left (a run killed midway leaves its
        // supervised processes running, by design) works in its own sandbox.
        let here = processes_inside(s.dir.path());
        let children: Vec<_> = processes_mentioning(&format!("sleep {arg}"))
            .into_iter()
            .filter(|(pid, c)| !c.contains("slipway") && here.contains(pid))
            .collect();
        assert_eq!(
            children.len(),
            1,
            "{when}: exactly one `{name}` process, no duplicate and no orphan: {children:?}"
        );
    }
}

/// The events of `kind` the state in `s`'s home records, oldest first.
pub fn stored_events(s: &Sandbox, kind: &str) -> Vec<slipway_state::EventRecord> {
    slipway_state::Store::open(&s.home)
        .expect("open the store")
        .events(&slipway_state::EventQuery {
            limit: 10_000,
            ..slipway_state::EventQuery::default()
        })
        .expect("read events")
        .into_iter()
        .filter(|e| e.kind.as_str() == kind)
        .collect()
}

/// The admin URL of the PostgreSQL server tests use (`.ci/run` starts one when none answers).
pub fn pg_url() -> String {
    std::env::var("SLIPWAY_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A plain HTTP GET to 127.0.0.1, returning the body when the status is 200.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    http_get_host(port, "localhost", path)
}

/// A plain HTTP GET to 127.0.0.1 with a `Host` header (for preview URLs), returning the body
/// when the status is 200.
pub fn http_get_host(port: u16, host: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    (head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200")).then(|| body.to_string())
}

/// One process by pid and start time (see [`slipway_testkit::process`]).
pub use slipway_testkit::process::Process;

pub fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The JSON of a process's supervisor state file (of whichever instance runs: an exposed
/// process alternates between `NAME` and `NAME@b`).
pub fn supervisor_state(home: &Path, env: &str, resource: &str) -> Option<Value> {
    let run = home.join("envs").join(env).join("run");
    [format!("{resource}.json"), format!("{resource}@b.json")]
        .iter()
        .filter_map(|f| std::fs::read_to_string(run.join(f)).ok())
        .find_map(|text| serde_json::from_str(&text).ok())
}

/// A running `slipway serve` of a sandbox; SIGKILLed when dropped.
pub struct Server {
    pub child: std::process::Child,
    /// `127.0.0.1:PORT` of its API and preview router.
    pub addr: String,
}

impl Server {
    /// The port of its API and preview router.
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the server's address ends with its port")
    }
}

/// `METHOD path` on the API with a bearer token and an optional JSON body: (status, JSON).
pub fn api_request(
    addr: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the API");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("set a timeout");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send the request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A new API token of `role` (named after it) made on the sandbox's home.
pub fn role_token(s: &Sandbox, role: &str) -> String {
    named_token(s, role, role)
}

/// A new API token of `role` named `name`, as `slipway token create` prints it.
pub fn named_token(s: &Sandbox, role: &str, name: &str) -> String {
    let out = s.ok(&["token", "create", "--role", role, "--name", name]);
    String::from_utf8(out.stdout)
        .expect("a UTF-8 token")
        .trim()
        .to_string()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `slipway serve` on the sandbox's repository (as a `file://` URL, so it is mirrored
/// and fetched like a remote) on a free port, and waits until it says where it listens.
pub fn start_serve(s: &Sandbox) -> Server {
    start_serve_with(s, &[])
}

/// [`start_serve`] with more environment variables (a forge's token and webhook secret).
pub fn start_serve_with(s: &Sandbox, envs: &[(&str, &str)]) -> Server {
    let url = format!("file://{}", s.repo.display());
    let mut command = s.cmd(&["serve", "--repo", &url, "--listen", "127.0.0.1:0"]);
    for (k, v) in envs {
        command.env(k, v);
    }
    serve_from(command, Duration::from_secs(40)).0
}

/// Starts `command` (a `slipway serve`), and waits at most `timeout` until it says where its
/// API listens: the server, and every line it writes to stderr (kept as it runs).
pub fn serve_from(
    mut command: Command,
    timeout: Duration,
) -> (Server, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stderr = child.stderr.take().expect("stderr");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let lines = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(rest) = line.split("API http://").nth(1) {
                    let _ = tx.send(rest.split('/').next().unwrap_or("").to_string());
                }
                lines.lock().expect("lines").push(line);
            }
        });
    }
    let addr = rx.recv_timeout(timeout).unwrap_or_else(|_| {
        panic!(
            "serve prints where its API listens; it said: {:?}",
            lines.lock().expect("lines")
        )
    });
    (Server { child, addr }, lines)
}
/// What a command printed: its stdout, then its stderr.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Environment `name` in the JSON of `slipway status --output json`.
pub fn status_environment<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["environments"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

/// Resource `name` of an environment in that JSON.
pub fn status_resource<'a>(env: &'a Value, name: &str) -> Option<&'a Value> {
    env["resources"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
}

pub mod browser;
pub mod receiver;
pub mod replicas;
pub mod world;
pub use slipway_testkit::forge::{
    Comment, Delivery, Event, FakeForge, Forge, PrSpec, PrState, gitea as fake_gitea,
    github as fake_github, gitlab as fake_gitlab,
};
pub use slipway_testkit::git::git;
pub use slipway_testkit::wait::{wait_for, wait_for_explained};

/// The time a comment event says its comment was made, checked to be about now (within two
/// minutes): the fakes write it, in each forge's own form (GitLab's `… UTC`, RFC 3339), when
/// they make the delivery.
pub fn made_just_now(event: &slipway_forge::ForgeEvent) -> Option<i64> {
    let slipway_forge::ForgeEvent::Comment { created_at, .. } = event else {
        panic!("not a comment: {event:?}")
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    assert!(
        created_at.is_some_and(|at| (now - at).abs() < 120_000),
        "made just now: {created_at:?}"
    );
    *created_at
}
