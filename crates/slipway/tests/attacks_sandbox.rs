//! Attacks from branch code: a branch environment (`feature/*`, nobody reviewed it) runs a job
//! and a process that try to reach what is not theirs (the controller's environment and
//! signals, the home's keys and database, prod's secret file, directories, logs and
//! processes, ports not allocated to them, writes through symlinks planted where the engine
//! writes as root), and must fail at every one, while still getting their own secret,
//! database and port. Run against the real binary, under `slipway serve`, as root (uid mode)
//! and unprivileged (Landlock mode).

mod util;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use util::*;

const T: Duration = Duration::from_secs(60);
/// The unprivileged user the engine runs as in Landlock mode.
const NOBODY: u32 = 65534;

/// The attacker's script: every attack it tries, and what happened, into
/// `$SLIPWAY_DATA_DIR/report-<mode>.json`. "ALLOWED: ..." is a hole; "denied: EACCES" etc. is
/// the sandbox holding.
const EVIL: &str = r#"
import errno, json, os, shutil, signal, socket, subprocess, sys
mode = sys.argv[1]
data = os.environ["SLIPWAY_DATA_DIR"]
home = os.path.dirname(os.path.dirname(os.path.dirname(data)))
sandbox = os.path.dirname(home)
prod = os.path.join(home, "envs", "prod")
report = {"uid": os.getuid(), "home": home}

def attempt(name, fn):
    try:
        out = fn()
        report[name] = "ALLOWED: " + (out if isinstance(out, str) else repr(out))[:2000]
    except OSError as e:
        report[name] = "denied: " + errno.errorcode.get(e.errno, str(e.errno))
    except Exception as e:
        report[name] = "failed: " + repr(e)

def read(path):
    with open(path, "rb") as f:
        return f.read().decode("latin-1")

def cmdline(pid):
    try:
        return read("/proc/%d/cmdline" % pid).replace("\0", " ")
    except OSError:
        return ""

def write(path):
    with open(path, "w") as f:
        f.write("pwned")
    return "wrote " + path

import time
def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
# Prod is deployed beside this environment: wait for its process, to attack it.
deadline = time.time() + 40
while time.time() < deadline and not any("web-of-prod" in cmdline(p) for p in all_pids()):
    time.sleep(0.1)
pids = all_pids()
ppid = os.getppid()
report["parent"] = cmdline(ppid)
attempt("parent environ", lambda: read("/proc/%d/environ" % ppid))
attempt("parent mem", lambda: read("/proc/%d/mem" % ppid))
attempt("parent signal", lambda: os.kill(ppid, 0))
engines = [p for p in pids if "slipway serve" in cmdline(p) and sandbox in cmdline(p)]
report["engines"] = engines
for p in engines:
    attempt("engine environ", lambda: read("/proc/%d/environ" % p))
    attempt("engine signal", lambda: os.kill(p, signal.SIGTERM))
for p in pids:
    line = cmdline(p)
    if "__supervise" in line and prod + "/run" in line:
        attempt("prod supervisor environ", lambda: read("/proc/%d/environ" % p))
        attempt("prod supervisor signal", lambda: os.kill(p, signal.SIGKILL))
    if "web-of-prod" in line:
        attempt("prod web environ", lambda: read("/proc/%d/environ" % p))
        attempt("prod web signal", lambda: os.kill(p, signal.SIGKILL))
# Whatever else could be read of any process (its own included: holds only its own secrets).
leaks = []
for p in pids:
    try:
        leaks.append(read("/proc/%d/environ" % p))
    except OSError:
        pass
report["every readable environ"] = "\n".join(leaks)

for name in ["age.key", "state.key", "state.db", "state.db-wal"]:
    attempt("read home " + name, lambda: read(os.path.join(home, name)))
attempt("list home", lambda: " ".join(os.listdir(home)))
attempt("list envs", lambda: " ".join(os.listdir(os.path.join(home, "envs"))))
attempt("read prod secret file", lambda: read(os.path.join(prod, "data", "secret.txt")))
attempt("list prod", lambda: " ".join(os.listdir(prod)))
attempt("list prod data", lambda: " ".join(os.listdir(os.path.join(prod, "data"))))
attempt("list prod logs", lambda: " ".join(os.listdir(os.path.join(prod, "logs"))))
attempt("read prod log", lambda: read(os.path.join(prod, "logs", "web.log")))
# The state file carries the supervisor's spec: the child's environment, secrets included.
attempt("read prod state", lambda: read(os.path.join(prod, "run", "web.json")))
def ask_supervisor(run):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(os.path.join(run, "supervise.sock"))
    s.sendall(b"release web\n")
    return s.recv(200).decode()
attempt("prod supervisor socket", lambda: ask_supervisor(os.path.join(prod, "run")))
attempt("own supervisor socket", lambda: ask_supervisor(os.path.join(os.path.dirname(data), "run")))
attempt("write prod data", lambda: write(os.path.join(prod, "data", "pwned-" + mode)))
attempt("write home", lambda: write(os.path.join(home, "pwned-" + mode)))
attempt("read engine config", lambda: read(os.path.join(sandbox, "engine.toml")))
attempt("write tmp", lambda: write("/tmp/slipway-pwned-%d" % os.getuid()))

own = int(os.environ.get("PORT_HTTP", "0"))
other = (own or 40000) + 7919
def bind(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.close()
    return "bound %d" % port
attempt("bind another port", lambda: bind(other))

# What is its own works.
report["own secret"] = os.environ.get("TOKEN", "")
report["own home"] = os.environ.get("HOME", "")
report["own tmpdir"] = os.environ.get("TMPDIR", "")
attempt("own data write", lambda: write(os.path.join(data, "mine-" + mode)))
attempt("own tmp write", lambda: write(os.path.join(os.environ["TMPDIR"], "mine-" + mode)))
db = subprocess.run(["psql", os.environ["DATABASE_URL"], "-tAc", "select current_user"],
                    capture_output=True, text=True)
report["own database"] = "user=%s err=%s" % (db.stdout.strip(), db.stderr.strip())

if mode == "job":
    # Plant links where the engine (root) writes this environment's `file` resources.
    os.remove(os.path.join(data, "note.txt"))
    os.symlink(os.path.join(home, "age.key"), os.path.join(data, "note.txt"))
    shutil.rmtree(os.path.join(data, "etc"))
    os.symlink(os.path.join(prod, "data"), os.path.join(data, "etc"))
    report["planted"] = "yes"
    if os.getuid() >= 300000:
        # A daemon that escapes its process group (uid mode: destroy must still end it).
        subprocess.Popen(["python3", "-c", "import time; time.sleep(10**6)",
                          "daemon-of-" + home], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)

with open(os.path.join(data, "report-%s.json" % mode), "w") as f:
    json.dump(report, f)
if mode == "process":
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", own))
    s.listen(8)
    while True:
        c, _ = s.accept()
        c.recv(1024)
        c.sendall(b"HTTP/1.0 200 OK\r\n\r\nevil serves its own port")
        c.close()
"#;

fn main_stack(recipient: &str) -> String {
    format!(
        r#"version: 1
stack: gate
secrets: {{ recipients: [{recipient}] }}
environments:
  prod: {{ track: main, protected: true }}
  previews:
    generate: {{ branches: ["feature/*"] }}
resources:
  db: {{ type: postgres.database }}
  secret_file: {{ type: file, path: secret.txt, content: "${{secrets.api_token}}", mode: "0600" }}
  web:
    type: process
    # It prints a line: a process that prints nothing has no log file, and prod's log is
    # what the branch tries to read.
    command: ["python3", "-c", "import time; print('up', flush=True); time.sleep(10**6)", "web-of-${{env.name}}"]
    env: {{ TOKEN: "${{secrets.api_token}}" }}
"#
    )
}

fn evil_stack(recipient: &str, round: u32) -> String {
    main_stack(recipient)
        + &format!(
            r#"  conf: {{ type: file, path: etc/app.conf, content: "round {round}" }}
  note: {{ type: file, path: note.txt, content: "round {round}" }}
  evil:
    type: job
    command: ["python3", "evil.py", "job"]
    env: {{ TOKEN: "${{secrets.api_token}}", DATABASE_URL: "${{resources.db.url}}" }}
    depends_on: [conf, note]
  evilproc:
    type: process
    command: ["python3", "evil.py", "process"]
    ports: [http]
    restart: never
    env: {{ TOKEN: "${{secrets.api_token}}", DATABASE_URL: "${{resources.db.url}}" }}
    health: {{ tcp: http }}
    depends_on: [evil]
"#
        )
}

/// How the engine runs in a scenario.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum As {
    /// As root: environments run under their own uids (and Landlock).
    Root,
    /// As `nobody`, owning its home: environments run under Landlock only.
    Nobody,
}

/// A HOME whose git configuration lets `nobody` read the test's repository (owned by root):
/// git refuses a repository of another owner unless told it is safe.
fn nobody_home(s: &Sandbox) -> std::path::PathBuf {
    let home = s.dir.path().join("nobody-home");
    std::fs::create_dir_all(&home).expect("nobody's home");
    std::fs::write(home.join(".gitconfig"), "[safe]\n\tdirectory = *\n").expect("gitconfig");
    for path in [&home, &home.join(".gitconfig")] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    home
}

/// A `slipway serve` with its stderr kept, started as `who`.
struct Served {
    server: Server,
    lines: Arc<Mutex<Vec<String>>>,
}

fn serve_as(s: &Sandbox, who: As, envs: &[(&str, &str)]) -> Served {
    let url = format!("file://{}", s.repo.display());
    let args = ["serve", "--repo", &url, "--listen", "127.0.0.1:0"];
    let mut command = cli_command(s, who, &args);
    command
        .env("HOME", nobody_home(s))
        .envs(envs.iter().copied());
    let (server, lines) = serve_from(command, T);
    Served { server, lines }
}

/// `slipway ...` on the sandbox as `who`, with the variables the engine needs.
fn cli_command(s: &Sandbox, who: As, args: &[&str]) -> Command {
    match who {
        As::Root => s.cmd(args),
        As::Nobody => s.cmd_as(NOBODY, args),
    }
}

/// [`cli_command`], run: its output.
fn cli(s: &Sandbox, who: As, args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    cli_command(s, who, args)
        .env("HOME", nobody_home(s))
        .envs(envs.iter().copied())
        .output()
        .expect("slipway runs")
}

fn status_of(s: &Sandbox, who: As, envs: &[(&str, &str)]) -> Value {
    let out = cli(s, who, &["status", "--output", "json"], envs);
    assert!(
        out.status.success(),
        "{}",
        s.report(&["status"], &out, "status")
    );
    serde_json::from_slice(&out.stdout).expect("status is JSON")
}

/// [`wait_for`] that shows `last` and what serve said when it times out.
fn wait_for_or<R>(
    what: &str,
    last: &std::cell::RefCell<Value>,
    sc: &Scenario,
    check: impl FnMut() -> Option<R>,
) -> R {
    util::wait_for_explained(
        what,
        T,
        || format!("last seen: {:#}\nserve said:\n{}", last.borrow(), sc.log()),
        check,
    )
}

/// Pids of the processes whose real uid is `uid`.
fn processes_of(uid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let real = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next()?.parse::<u32>().ok());
        if real == Some(uid) {
            pids.push(pid);
        }
    }
    pids
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn chown_tree(path: &Path, uid: u32) {
    let status = Command::new("chown")
        .args(["-R", &format!("{uid}:{uid}"), &path.display().to_string()])
        .status()
        .expect("chown runs");
    assert!(status.success(), "chown -R {}", path.display());
}

struct Scenario {
    s: Sandbox,
    who: As,
    served: Served,
    envs: Vec<(&'static str, String)>,
    recipient: String,
    own_token: String,
    prod_token: String,
    forge_token: String,
}

impl Drop for Scenario {
    /// Stops the controller, then every supervisor of this home (each stops its process):
    /// nothing of the test stays running.
    fn drop(&mut self) {
        let _ = self.served.server.child.kill();
        let _ = self.served.server.child.wait();
        let home = self.s.home.display().to_string();
        for (pid, _) in processes_mentioning(&home) {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

impl Scenario {
    fn envs(&self) -> Vec<(&str, &str)> {
        self.envs.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    fn status(&self) -> Value {
        status_of(&self.s, self.who, &self.envs())
    }

    fn report(&self, env: &str, mode: &str) -> BTreeMap<String, Value> {
        let path = self
            .s
            .home
            .join(format!("envs/{env}/data/report-{mode}.json"));
        let text = std::fs::read_to_string(&path).expect("the report");
        serde_json::from_str(&text).expect("the report is JSON")
    }

    fn log(&self) -> String {
        self.served.lines.lock().expect("lines").join("\n")
    }
}

/// A repository with a protected `prod` (a secret, a file rendering it, a process holding it)
/// and a `feature/evil` branch whose environment attacks; `slipway serve` (as `who`) with a
/// forge token and the PostgreSQL superuser URL in its environment deploys both.
fn attack(who: As) -> Scenario {
    let s = Sandbox::new();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let keygen = s.ok(&["secret", "keygen"]);
    let recipient = String::from_utf8_lossy(&keygen.stdout).trim().to_string();
    s.write("slipway.yaml", &main_stack(&recipient));
    s.commit("prod");
    let own_token = format!("branch-own-secret-{stamp}");
    let prod_token = format!("PROD-ONLY-SECRET-{stamp}");
    s.set_secret("api_token", None, &own_token);
    s.set_secret("api_token", Some("prod"), &prod_token);
    s.commit("secrets");
    git(&s.repo, &["checkout", "-q", "-b", "feature/evil"]);
    s.write("evil.py", EVIL);
    s.write("slipway.yaml", &evil_stack(&recipient, 1));
    s.commit("an innocent feature");
    git(&s.repo, &["checkout", "-q", "main"]);

    // The PostgreSQL superuser URL reaches the engine through its environment, as a server
    // install does; a fake forge token too.
    let config = std::fs::read_to_string(&s.config).expect("config").replace(
        &format!("url = \"{}\"", pg_url()),
        "url_env = \"SLIPWAY_PG_MAIN_URL\"",
    ) + "[repo]\npoll_interval = \"300ms\"\n[controller]\ndrift_interval = \"500ms\"\n";
    std::fs::write(&s.config, config).expect("config");
    if who == As::Nobody {
        std::fs::create_dir_all(&s.home).expect("the home");
        chown_tree(&s.home, NOBODY);
    }
    let forge_token = format!("sekrit-forge-token-{stamp}");
    let envs = vec![
        ("GITHUB_TOKEN", forge_token.clone()),
        ("SLIPWAY_PG_MAIN_URL", pg_url()),
    ];
    let env_refs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let served = serve_as(&s, who, &env_refs);
    let scenario = Scenario {
        s,
        who,
        served,
        envs,
        recipient,
        own_token,
        prod_token,
        forge_token,
    };
    let last = std::cell::RefCell::new(Value::Null);
    wait_for_or(
        "prod and the branch environment are deployed",
        &last,
        &scenario,
        || {
            let status = scenario.status();
            *last.borrow_mut() = status.clone();
            let ready =
                |env: &str| status_environment(&status, env).is_some_and(|e| e["sync"] == "synced");
            // The branch's own `file` resources may already show the links its job planted as
            // drift: its report is the sign that it was deployed.
            (ready("prod")
                && status_environment(&status, "br-feature-evil").is_some()
                && scenario
                    .s
                    .home
                    .join("envs/br-feature-evil/data/report-process.json")
                    .exists())
            .then_some(())
        },
    );
    scenario
}

/// Every attack in `report` failed, and nothing secret of anyone else is in it.
fn assert_held(sc: &Scenario, mode: &str, report: &BTreeMap<String, Value>) {
    let text = serde_json::to_string_pretty(report).expect("json");
    // What only Landlock forbids (the files, sockets and ports open to every user).
    let landlock = slipway_providers::sandbox::landlock_abi().is_some();
    let landlock_only = ["write tmp", "read engine config", "bind another port"];
    for (name, outcome) in report {
        let outcome = outcome.as_str().unwrap_or_default();
        let own = name.starts_with("own ");
        if !own && (landlock || !landlock_only.contains(&name.as_str())) {
            assert!(
                !outcome.starts_with("ALLOWED"),
                "{mode}: the attack `{name}` must fail, but: {outcome}\nwhole report: {text}"
            );
        }
    }
    for secret in [&sc.forge_token, &sc.prod_token, &pg_url()] {
        assert!(
            !text.contains(secret.as_str()),
            "{mode}: {secret:?} (the controller's or prod's) reached the branch's code: {text}"
        );
    }
    let must_fail = [
        "parent environ",
        "engine environ",
        "engine signal",
        "prod supervisor environ",
        "prod supervisor signal",
        "prod web environ",
        "prod web signal",
        "read home age.key",
        "read home state.key",
        "read home state.db",
        "list home",
        "list envs",
        "read prod secret file",
        "list prod",
        "list prod data",
        "list prod logs",
        "read prod log",
        "read prod state",
        "prod supervisor socket",
        "own supervisor socket",
        "write prod data",
        "write home",
    ];
    for name in must_fail {
        let outcome = report
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{mode}: the attack `{name}` was tried: {text}"));
        assert!(
            outcome == "denied: EACCES" || outcome == "denied: EPERM",
            "{mode}: `{name}` is refused by the kernel (not merely absent): {outcome}\n{text}"
        );
    }
    if slipway_providers::sandbox::landlock_abi().is_some_and(|abi| abi >= 4) {
        assert_eq!(
            report["bind another port"], "denied: EACCES",
            "{mode}: binding a port not allocated to it is refused: {text}"
        );
    }
    assert_eq!(
        report["own secret"], sc.own_token,
        "{mode}: it still receives its own secret"
    );
    assert!(
        report["own database"]
            .as_str()
            .is_some_and(|d| d.starts_with("user=") && !d.starts_with("user= ")),
        "{mode}: it still connects to its own database: {}",
        report["own database"]
    );
    for name in ["own data write", "own tmp write"] {
        assert!(
            report[name]
                .as_str()
                .is_some_and(|o| o.starts_with("ALLOWED")),
            "{mode}: `{name}` works: {}",
            report[name]
        );
    }
    let data = sc.s.home.join("envs/br-feature-evil/data");
    assert_eq!(
        report["own home"],
        data.display().to_string(),
        "{mode}: HOME is its own data directory"
    );
    assert_eq!(
        report["own tmpdir"],
        sc.s.home
            .join("envs/br-feature-evil/tmp")
            .display()
            .to_string(),
        "{mode}: TMPDIR is its own private directory"
    );
}

fn assert_home_is_private(sc: &Scenario) {
    let home = &sc.s.home;
    let mut expected = vec![
        (
            home.clone(),
            0o711,
            "the home is traversable, not listable".to_owned(),
        ),
        (
            home.join("envs"),
            0o711,
            "envs is traversable only".to_owned(),
        ),
        (
            home.join("envs/prod/run/web.json"),
            0o600,
            "the state file, which carries the supervisor spec (it holds secrets), is the \
             engine's alone"
                .to_owned(),
        ),
    ];
    for file in ["state.db", "state.db-wal", "age.key", "state.key"] {
        let why = format!("{file} is private to the engine");
        expected.push((home.join(file), 0o600, why));
    }
    for dir in ["logs", "run"] {
        let why = format!("prod's {dir} is the engine's alone");
        expected.push((home.join("envs/prod").join(dir), 0o700, why));
    }
    for dir in ["data", "tmp"] {
        let why = format!("prod's {dir} is private to prod");
        expected.push((home.join("envs/prod").join(dir), 0o700, why));
    }
    for (path, mode, why) in expected {
        assert_eq!(mode_of(&path), mode, "{why} ({})", path.display());
    }
}

/// A redeploy of the branch writes its `file` resources where its job planted symlinks to
/// the home's key and to prod's data: the engine refuses, and writes nothing through them.
fn assert_symlinks_are_not_followed(sc: &Scenario) {
    let age_key = std::fs::read(sc.s.home.join("age.key")).expect("the age key");
    let prod_data = |sc: &Scenario| {
        let mut names: Vec<String> = std::fs::read_dir(sc.s.home.join("envs/prod/data"))
            .expect("prod's data")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        names
    };
    let before = prod_data(sc);
    // (The drift repair may already have met them: `note.txt`'s link removed, never
    // followed.)
    assert_eq!(
        sc.report("br-feature-evil", "job")["planted"],
        "yes",
        "the job planted its links"
    );
    git(&sc.s.repo, &["checkout", "-q", "feature/evil"]);
    sc.s.write("slipway.yaml", &evil_stack(&sc.recipient, 2));
    sc.s.commit("round 2 writes the files again");
    git(&sc.s.repo, &["checkout", "-q", "main"]);
    let round2 = git(&sc.s.repo, &["rev-parse", "feature/evil"]);
    let last = std::cell::RefCell::new(Value::Null);
    let env = wait_for_or(
        "the redeploy refuses to write through the links",
        &last,
        sc,
        || {
            let status = sc.status();
            let env = status_environment(&status, "br-feature-evil")?.clone();
            *last.borrow_mut() = env.clone();
            let refused = |name: &str| {
                status_resource(&env, name).is_some_and(|r| {
                    r["status"] == "failed"
                        && r["message"].as_str().is_some_and(|m| m.contains("symlink"))
                })
            };
            // The linked directory is refused; the link in the file's own place is either refused
            // or removed (never followed) and a plain file written in its stead.
            let note = sc.s.home.join("envs/br-feature-evil/data/note.txt");
            let note_done = refused("note")
                || (!note.is_symlink()
                    && std::fs::read_to_string(&note).is_ok_and(|t| t == "round 2"));
            (env["desired_commit"] == round2.as_str()
                && env["sync"] != "syncing"
                && refused("conf")
                && note_done)
                .then_some(env)
        },
    );
    assert_eq!(
        std::fs::read(sc.s.home.join("age.key")).expect("the age key"),
        age_key,
        "nothing was written through the link to the age key: {env}"
    );
    assert_eq!(
        prod_data(sc),
        before,
        "nothing was written into prod's data through the linked directory: {env}"
    );
    assert!(
        !sc.s.home.join("envs/prod/data/app.conf").exists(),
        "no app.conf in prod's data"
    );
}

#[test]
fn branch_code_under_a_root_engine_reaches_nothing_but_its_own() {
    let sc = attack(As::Root);
    let log = sc.log();
    assert!(
        log.contains("isolated by uid"),
        "serve says how environments are isolated: {log}"
    );
    if let Some(abi) = slipway_providers::sandbox::landlock_abi() {
        assert!(
            log.contains(&format!("Landlock ABI {abi}")),
            "serve names the Landlock ABI: {log}"
        );
    }
    assert!(
        log.contains(
            "environments' code runs in control groups (cgroup v1, under \
             /sys/fs/cgroup/memory/slipway: memory "
        ),
        "serve says where environments' control groups are: {log}"
    );
    assert!(
        log.contains("each environment's data and temporary directories may hold "),
        "serve says how much disk each environment may take: {log}"
    );
    assert!(
        log.contains("[postgres.main] is reached without a password"),
        "serve warns that a server without a password lets sandboxed code in anyway (this \
         machine's PostgreSQL trusts local TCP): {log}"
    );
    for mode in ["job", "process"] {
        let report = sc.report("br-feature-evil", mode);
        eprintln!("the {mode}'s report: {report:#?}");
        assert_held(&sc, mode, &report);
    }
    let job = sc.report("br-feature-evil", "job");
    assert!(
        job["parent"]
            .as_str()
            .is_some_and(|p| p.contains("slipway serve")),
        "the job's parent is the engine it attacked: {}",
        job["parent"]
    );
    let evil_port = {
        let status = sc.status();
        let env = status_environment(&status, "br-feature-evil").expect("the branch env");
        assert_eq!(env["isolation"], "uid", "status names the isolation: {env}");
        status_resource(env, "evilproc").expect("evilproc")["outputs"]["ports"]["http"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .expect("evilproc's port")
    };
    // It writes its report just before it binds.
    wait_for(
        "the branch's process binds and serves its own port",
        Duration::from_secs(20),
        || http_get(evil_port, "/").filter(|b| b.contains("evil serves its own port")),
    );
    assert!(
        sc.served.server.child.id() > 0 && sc.status()["environments"].is_array(),
        "the controller survived the signals"
    );
    assert_home_is_private(&sc);

    // The supervisors (root) hold none of the controller's credentials either: they start
    // with an empty environment.
    let state = supervisor_state(&sc.s.home, "prod", "web").expect("prod's supervisor");
    let pid = state["supervisor"]["pid"].as_u64().expect("its pid");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("root reads it");
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains(&sc.forge_token) && !environ.contains(&pg_url()),
        "a supervisor's environment holds no credential of the controller's: {environ}"
    );

    // Each environment has its own uid, never root's.
    let uid_of = |env: &str| {
        std::fs::metadata(sc.s.home.join("envs").join(env).join("data"))
            .expect("data dir")
            .uid()
    };
    let (prod_uid, evil_uid) = (uid_of("prod"), uid_of("br-feature-evil"));
    assert!(
        prod_uid != 0 && evil_uid != 0 && prod_uid != evil_uid,
        "prod ({prod_uid}) and the branch ({evil_uid}) run as distinct non-root uids"
    );
    assert_eq!(
        sc.report("br-feature-evil", "job")["uid"],
        u64::from(evil_uid),
        "the job ran as its environment's uid"
    );
    assert_eq!(
        std::fs::metadata(sc.s.home.join("envs/prod/data/secret.txt"))
            .expect("prod's secret file")
            .uid(),
        prod_uid,
        "prod's rendered secret file belongs to prod, so its own code can read it"
    );

    assert_symlinks_are_not_followed(&sc);

    // Destroying the branch releases its uid, but the next environment does not get it at
    // once (it would meet what the destroyed one left in SysV IPC, `/dev/shm`).
    git(&sc.s.repo, &["branch", "-q", "-D", "feature/evil"]);
    wait_for("the branch environment is destroyed", T, || {
        status_environment(&sc.status(), "br-feature-evil")
            .is_none()
            .then_some(())
    });
    wait_for(
        "nothing of the destroyed environment runs, not even the daemon that escaped its \
         process group (a killed process is gone once init reaps it)",
        Duration::from_secs(10),
        || processes_of(evil_uid).is_empty().then_some(()),
    );
    git(&sc.s.repo, &["branch", "-q", "feature/next"]);
    let next_uid = wait_for("the next branch environment runs", T, || {
        let status = sc.status();
        (status_environment(&status, "br-feature-next")?["sync"] == "synced").then_some(())?;
        Some(uid_of("br-feature-next"))
    });
    assert!(
        next_uid > evil_uid,
        "the next environment gets a uid above the last given ({next_uid}), not the one just \
         released ({evil_uid})"
    );
    let _ = std::fs::remove_file(format!("/tmp/slipway-pwned-{evil_uid}"));
}

#[test]
fn branch_code_under_an_unprivileged_engine_is_held_by_landlock() {
    if slipway_providers::sandbox::landlock_abi().is_none() {
        eprintln!("this kernel has no Landlock: landlock mode cannot run here");
        return;
    }
    let sc = attack(As::Nobody);
    let log = sc.log();
    assert!(
        log.contains("isolated by landlock"),
        "serve says how environments are isolated: {log}"
    );
    assert!(
        log.contains(
            "warning: environments' memory and CPU are not bounded: isolation is landlock"
        ),
        "serve says that an unprivileged engine makes no control groups: {log}"
    );
    assert!(
        log.contains("each environment's data and temporary directories may hold "),
        "an unprivileged engine bounds their disk all the same: {log}"
    );
    for mode in ["job", "process"] {
        let report = sc.report("br-feature-evil", mode);
        assert_eq!(
            report["uid"],
            u64::from(NOBODY),
            "everything runs as the engine's own uid"
        );
        assert_held(&sc, mode, &report);
    }
    let status = sc.status();
    let env = status_environment(&status, "br-feature-evil").expect("the branch env");
    assert_eq!(
        env["isolation"], "landlock",
        "status names the isolation: {env}"
    );
    let port = status_resource(env, "evilproc").expect("evilproc")["outputs"]["ports"]["http"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .expect("evilproc's port");
    // It writes its report just before it binds.
    wait_for(
        "the branch's process binds and serves its own port",
        Duration::from_secs(20),
        || http_get(port, "/").filter(|b| b.contains("evil serves its own port")),
    );
    assert_home_is_private(&sc);
    assert_symlinks_are_not_followed(&sc);
    let _ = std::fs::remove_file(format!("/tmp/slipway-pwned-{NOBODY}"));
}

/// Runs `command` with the Landlock system calls answering ENOSYS, exactly as a kernel
/// without Landlock does (a seccomp filter; the engine's own detection is unchanged).
fn without_landlock(command: &[String]) -> Command {
    const FILTER: &str = r#"
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
def ins(code, jt, jf, k): return struct.pack("HBBI", code, jt, jf, k)
prog = b"".join([
    ins(0x20, 0, 0, 4), ins(0x15, 0, 4, 0xc000003e),
    ins(0x20, 0, 0, 0),
    ins(0x15, 3, 0, 444), ins(0x15, 2, 0, 445), ins(0x15, 1, 0, 446),
    ins(0x06, 0, 0, 0x7fff0000), ins(0x06, 0, 0, 0x00050000 | 38),
])
buf = ctypes.create_string_buffer(prog)
fprog = struct.pack("HxxxxxxQ", len(prog) // 8, ctypes.addressof(buf))
fbuf = ctypes.create_string_buffer(fprog)
assert libc.prctl(38, 1, 0, 0, 0) == 0
assert libc.prctl(22, 2, fbuf, 0, 0) == 0, ctypes.get_errno()
os.execvp(sys.argv[1], sys.argv[1:])
"#;
    let mut c = Command::new("/usr/bin/python3");
    c.args(["-c", FILTER]).args(command);
    c
}

#[test]
fn without_isolation_unreviewed_environments_need_isolation_none_said_explicitly() {
    let s = Sandbox::new();
    s.write(
        "slipway.yaml",
        r#"version: 1
stack: bare
environments:
  main: { track: main }
  previews:
    generate: { branches: ["feature/*"] }
resources:
  hello: { type: job, command: ["sh", "-c", "echo hello from $SLIPWAY_ENV"] }
"#,
    );
    s.commit("a stack");
    std::fs::create_dir_all(&s.home).expect("the home");
    chown_tree(&s.home, NOBODY);
    let run = |args: &[&str]| {
        let mut full = argv_as(NOBODY);
        full.extend(args.iter().map(|a| a.to_string()));
        s.engine_env(without_landlock(&full))
            .env("HOME", nobody_home(&s))
            .output()
            .expect("slipway runs")
    };
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    // A static environment is the operator's own: it runs (unisolated) as before.
    let main = run(&["apply", "--env", "main", "--yes"]);
    assert!(main.status.success(), "{}", text(&main));
    // An ad-hoc environment from a family is refused, naming why and the fix.
    let refused = run(&[
        "env", "create", "scratch", "--like", "previews", "--ref", "main",
    ]);
    let said = text(&refused);
    assert!(
        !refused.status.success()
            && said.contains("without isolation")
            && said.contains("isolation = \"none\""),
        "the refusal names the reason and the fix: {said}"
    );
    assert!(
        !s.home.join("envs/scratch/logs/hello.log").exists(),
        "nothing of the refused environment ran: {said}"
    );
    // Landlock asked for explicitly, on a kernel without it: a clear error.
    let config = std::fs::read_to_string(&s.config).expect("config");
    let with = |isolation: &str| {
        config.replace(
            "[local]\n",
            &format!("[local]\nisolation = \"{isolation}\"\n"),
        )
    };
    std::fs::write(&s.config, with("landlock")).expect("config");
    std::fs::write(&s.config, with("uid")).expect("config");
    let not_root = run(&["status"]);
    assert!(
        !not_root.status.success() && text(&not_root).contains("needs the engine to run as root"),
        "{}",
        text(&not_root)
    );
    std::fs::write(&s.config, with("landlock")).expect("config");
    let no_landlock = run(&["status"]);
    assert!(
        !no_landlock.status.success()
            && text(&no_landlock).contains("needs a kernel with Landlock"),
        "{}",
        text(&no_landlock)
    );
    // Said explicitly, it runs.
    std::fs::write(&s.config, with("none")).expect("config");
    let created = run(&[
        "env", "create", "scratch2", "--like", "previews", "--ref", "main",
    ]);
    assert!(created.status.success(), "{}", text(&created));
    let log =
        std::fs::read_to_string(s.home.join("envs/scratch2/logs/hello.log")).unwrap_or_default();
    assert!(
        log.contains("hello from scratch2"),
        "with isolation = \"none\" the environment runs: {log}\n{}",
        text(&created)
    );
    let status = run(&["status", "--output", "json"]);
    let status: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(
        status_environment(&status, "scratch2").expect("scratch2")["isolation"],
        "none",
        "status says it runs unisolated"
    );
}

#[test]
fn an_existing_home_is_made_private_and_an_unreachable_one_is_named_with_the_fix() {
    let s = Sandbox::new();
    s.commit_dev_stack(
        "modes",
        r#"  hello: { type: job, command: ["sh", "-c", "echo hello"] }
"#,
        "a stack",
    );
    s.ok(&["status"]);
    // A home as an older Slipway (or another umask) left it: readable by everyone.
    for (path, mode) in [
        (s.home.clone(), 0o755),
        (s.home.join("state.db"), 0o644),
        (s.home.join("state.key"), 0o644),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    s.ok(&["status"]);
    assert_eq!(mode_of(&s.home), 0o711, "the home is made traversable only");
    for file in ["state.db", "state.key"] {
        assert_eq!(
            mode_of(&s.home.join(file)),
            0o600,
            "{file} is made private on open"
        );
    }
    // Above the home, a directory environments' uids cannot traverse: named, with the fix.
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let out = s.expect_code(&["apply", "--env", "dev", "--yes"], 1);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    let dir = s.dir.path().display().to_string();
    assert!(
        said.contains(&format!("chmod o+x {dir}")),
        "the error names the directory and the fix: {said}"
    );
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    s.ok(&["apply", "--env", "dev", "--yes"]);
}

#[test]
fn a_process_started_before_isolation_is_drift_and_is_replaced_confined() {
    let s = Sandbox::new();
    s.commit_dev_stack(
"upgrade",
r#"  web: { type: process, command: ["python3", "-c", "import time; time.sleep(10**6)", "upgrade-web"] }
"#,
"a stack",
);
    let config = std::fs::read_to_string(&s.config).expect("config");
    // As an engine before isolation ran it: as root.
    s.with_local("isolation = \"none\"");
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let child_uid = |s: &Sandbox| {
        let state = supervisor_state(&s.home, "dev", "web")?;
        let pid = state["child"]["pid"].as_u64()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next()?.parse::<u32>().ok())
    };
    assert_eq!(child_uid(&s), Some(0), "unisolated, it runs as root");
    // The engine now isolates (the default): the running process is drift.
    std::fs::write(&s.config, &config).expect("config");
    let status = s.json(&["status", "--output", "json"]);
    let env = status_environment(&status, "dev").expect("dev");
    let web = status_resource(env, "web").expect("web");
    assert_eq!(web["status"], "drifted", "{web}");
    assert!(
        web["message"]
            .as_str()
            .is_some_and(|m| m.contains("unconfined")),
        "the drift says why: {web}"
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let uid = wait_for("the replaced process runs", Duration::from_secs(20), || {
        child_uid(&s)
    });
    assert!(
        uid != 0,
        "replaced, it runs under its environment's uid ({uid})"
    );
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}
