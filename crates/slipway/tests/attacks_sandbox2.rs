//! Attacks from environment code that the first sandbox left open, run against the real binary
//! as root (uid mode): `isolation = "landlock"` as root, the operator's terminal, an
//! environment made indestructible by a failing delete plus a daemon, a health command's
//! leftovers, a set-uid `file`, a supervisor whose spec is gone, uids reused at once, and code
//! that takes all the memory or fills the disk.

mod util;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use util::*;

const T: Duration = Duration::from_secs(30);

fn report(s: &Sandbox, env: &str, name: &str) -> Value {
    let path = s.home.join(format!("envs/{env}/data/{name}"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the job's report {}: {e}", path.display()));
    serde_json::from_str(&text).expect("the report is JSON")
}

fn owner(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .uid()
}

/// `isolation = "landlock"` with the engine running as root used to leave the code root, with
/// every capability: it could make a block device of the disk in its own data directory.
#[test]
fn landlock_asked_of_a_root_engine_still_runs_code_under_its_own_uid() {
    let s = Sandbox::new();
    s.with_local("isolation = \"landlock\"");
    s.commit_dev_stack(
        "caps",
        r##"  evil:
    type: job
    command:
      - python3
      - -c
      - |
        import json, os, stat
        d = os.environ["SLIPWAY_DATA_DIR"]
        r = {"euid": os.geteuid()}
        try:
            os.mknod(os.path.join(d, "disk"), stat.S_IFBLK | 0o600, os.makedev(8, 0))
            r["mknod"] = "ALLOWED"
        except OSError as e:
            r["mknod"] = "denied: %s" % e
        try:
            open(os.path.join(d, "x"), "w").close()
            os.chown(os.path.join(d, "x"), 0, 0)
            r["chown to root"] = "ALLOWED"
        except OSError as e:
            r["chown to root"] = "denied: %s" % e
        json.dump(r, open(os.path.join(d, "caps.json"), "w"))
"##,
        "a job that wants root's capabilities",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let r = report(&s, "dev", "caps.json");
    assert_ne!(r["euid"], 0, "the code does not run as root: {r}");
    assert!(
        r["mknod"].as_str().is_some_and(|m| m.starts_with("denied")),
        "no block device can be made: {r}"
    );
    assert!(
        r["chown to root"]
            .as_str()
            .is_some_and(|m| m.starts_with("denied")),
        "no file can be given to root: {r}"
    );
    assert!(
        !s.home.join("envs/dev/data/disk").exists(),
        "no device node exists"
    );
    let status = s.json(&["status", "--output", "json"]);
    let dev = status_environment(&status, "dev").expect("dev");
    assert_eq!(
        dev["isolation"], "uid",
        "a root engine isolates by uid even when landlock is asked: {dev}"
    );
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

/// `sudo slipway apply` in a terminal used to leave the job in the CLI's session: it could
/// open `/dev/tty` and type into the operator's shell (TIOCSTI).
#[test]
fn code_started_from_a_terminal_cannot_reach_that_terminal() {
    let s = Sandbox::new();
    // The harness gives `script`'s command a terminal of its own.
    let probe = Command::new("script")
        .args([
            "-qec",
            "python3 -c 'open(\"/dev/tty\", \"w\").close()'",
            "/dev/null",
        ])
        .output()
        .expect("script runs");
    assert!(
        probe.status.success(),
        "under `script` a program has a controlling terminal: {probe:?}"
    );
    s.commit_dev_stack(
        "tty",
        r##"  evil:
    type: job
    command:
      - python3
      - -c
      - |
        import fcntl, json, os, termios
        r = {"leader": os.getsid(0) == os.getpid(), "sid": os.getsid(0),
             "cli sid": os.getsid(os.getppid())}
        try:
            tty = os.open("/dev/tty", os.O_RDWR)
            fcntl.ioctl(tty, termios.TIOCSTI, b"#")
            r["tty"] = "ALLOWED"
        except OSError as e:
            r["tty"] = "denied: %s" % e
        json.dump(r, open(os.path.join(os.environ["SLIPWAY_DATA_DIR"], "tty.json"), "w"))
"##,
        "a job that wants the operator's terminal",
    );
    let out = Command::new("script")
        .args(["-qec", &format!("{BIN} apply --env dev --yes"), "/dev/null"])
        .current_dir(&s.repo)
        .env("SLIPWAY_HOME", &s.home)
        .env("NO_COLOR", "1")
        .env("SLIPWAY_USER", "tester")
        .env("SLIPWAY_CONFIG", &s.config)
        .output()
        .expect("script runs");
    assert!(
        out.status.success(),
        "apply from a terminal succeeds: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r = report(&s, "dev", "tty.json");
    assert_eq!(r["leader"], true, "the job leads its own session: {r}");
    assert_ne!(
        r["sid"], r["cli sid"],
        "the job is not in the CLI's session: {r}"
    );
    assert!(
        r["tty"].as_str().is_some_and(|m| m.starts_with("denied")),
        "the job cannot open the operator's terminal: {r}"
    );
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

const UNDELETABLE: &str = r##"
import json, os, subprocess, sys
req = json.load(sys.stdin)
op = req["op"]
if op == "create":
    subprocess.Popen(["python3", "-c", "import time; time.sleep(10**6)",
                      "immortal-" + os.environ["SLIPWAY_DATA_DIR"]],
                     start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(json.dumps({"outputs": {}, "state": {}}))
elif op == "read":
    print(json.dumps({"status": "in_sync"}))
elif op == "delete":
    sys.stderr.write("this resource refuses to be deleted\n")
    sys.exit(1)
else:
    print(json.dumps({"outputs": {}, "state": {}}))
"##;

/// Branch code used to make its environment indestructible: a delete that fails left every
/// process of its uid running (a daemon outliving the environment's expiry).
#[test]
fn a_failing_delete_does_not_keep_the_environments_daemons_alive() {
    let s = Sandbox::new();
    s.write("undeletable.py", UNDELETABLE);
    s.commit_dev_stack(
        "immortal",
        r##"  stuck: { type: exec, program: ["python3", "undeletable.py"] }
"##,
        "an exec resource that refuses deletion and leaves a daemon",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let daemon = |s: &Sandbox| {
        s.processes()
            .into_iter()
            .find(|(_, line)| line.contains("immortal-"))
    };
    let (pid, _) = wait_for("the daemon runs", T, || daemon(&s));
    let daemon = Process::of(pid).expect("the daemon runs");
    let out = s.run(&["destroy", "--env", "dev", "--yes"]);
    assert!(
        !out.status.success(),
        "{}",
        s.report(&["destroy"], &out, "the failed delete is reported")
    );
    // Its command line empties before it is a zombie, and a busy machine may give its pid to
    // another process at once: what counts is that this process, pid and start, ends.
    wait_for("the daemon is killed although a delete failed", T, || {
        (!daemon.runs()).then_some(())
    });
    let status = s.json(&["status", "--output", "json"]);
    assert!(
        status_environment(&status, "dev").is_some(),
        "the environment stays recorded, so that a retry can finish: {status}"
    );
    assert!(
        s.home.join("envs/dev").exists(),
        "its directories stay for the retry"
    );
}

/// A health command that left a server running (`srv & exit 0`) kept it forever.
#[test]
fn a_health_command_leaves_nothing_behind() {
    let s = Sandbox::new();
    s.commit_dev_stack(
        "health",
        r##"  web:
    type: process
    command: ["python3", "-c", "import time; time.sleep(10**6)", "web-of-health"]
    health:
      command: ["sh", "-c", "python3 -c 'import time; time.sleep(10**6)' leftover-of-health & exit 0"]
"##,
        "a health command that starts a server",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    wait_for("the web process runs", T, || {
        processes_mentioning("web-of-health")
            .iter()
            .any(|(_, line)| line.contains("web-of-health"))
            .then_some(())
    });
    wait_for("nothing the health command started survives it", T, || {
        processes_mentioning("leftover-of-health")
            .iter()
            .all(|(_, line)| !line.starts_with("python3"))
            .then_some(())
    });
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

/// `forks.py NAME [hold]`: forks children that sleep until one fork fails or 100 run, writes
/// `{"forked": N, "error": ...}` to `NAME.json` in its data directory; with `hold`, keeps
/// them and sleeps (a process), else kills them and exits (a job). A job named after another
/// first waits for that one's report (`wait=OTHER`).
const FORKS: &str = r#"import json, os, signal, sys, time
name = sys.argv[1]
d = os.environ["SLIPWAY_DATA_DIR"]
for arg in sys.argv[2:]:
    if arg.startswith("wait="):
        other = os.path.join(d, arg[5:] + ".json")
        deadline = time.time() + 60
        while not os.path.exists(other) and time.time() < deadline:
            time.sleep(0.05)
kids, error = [], None
while len(kids) < 100:
    try:
        pid = os.fork()
    except OSError as e:
        error = str(e)
        break
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    kids.append(pid)
hold = "hold" in sys.argv[2:]
if not hold:
    for pid in kids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
with open(os.path.join(d, name + ".tmp"), "w") as f:
    json.dump({"forked": len(kids), "error": error}, f)
os.rename(os.path.join(d, name + ".tmp"), os.path.join(d, name + ".json"))
if hold:
    time.sleep(10**6)
"#;

/// A branch's code could fork until the machine had no pid left: the controller, the other
/// environments and the operator's shell could then start nothing. Each environment's uid now
/// has at most `[local] max_processes` tasks, whether its code runs under the environment's
/// supervisor (a process) or straight from the engine (a job).
#[test]
fn a_fork_bomb_stops_at_the_environments_process_limit() {
    let s = Sandbox::new();
    s.with_local("max_processes = 24");
    s.write("forks.py", FORKS);
    // A job alone: it forks until the limit, then lets its children go.
    s.commit_dev_stack(
        "forks",
        r##"  probe: { type: job, command: ["python3", "forks.py", "probe"] }
"##,
        "code that forks as much as it can",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    // Then a process that forks until the limit and keeps its children, and a job after it.
    s.commit_dev_stack(
        "forks",
        r##"  hog: { type: process, command: ["python3", "forks.py", "hog", "hold"] }
  late:
    type: job
    command: ["python3", "forks.py", "late", "wait=hog"]
    depends_on: [hog]
"##,
        "a process that keeps every task it may have",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    for name in ["probe.json", "hog.json"] {
        let r = report(&s, "dev", name);
        let forked = r["forked"].as_u64().expect("a count");
        assert!(
            (1..24).contains(&forked),
            "{name}: the code forked, and stopped short of the limit of 24 tasks: {r}"
        );
        assert!(
            r["error"]
                .as_str()
                .is_some_and(|e| e.contains("Resource temporarily unavailable")),
            "{name}: the fork past the limit failed with EAGAIN: {r}"
        );
    }
    // A job started while the hog holds every task the uid may have cannot fork at all: the
    // count is the uid's, all its resources together.
    let late = report(&s, "dev", "late.json");
    assert_eq!(late["forked"], 0, "{late}");
    assert!(
        late["error"]
            .as_str()
            .is_some_and(|e| e.contains("Resource temporarily unavailable")),
        "{late}"
    );
    // The engine, as root, is not held by the environment's limit: it still destroys it.
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

/// The "Max processes" limit of process `pid`, soft, from `/proc/PID/limits`.
fn max_processes_of(pid: u64) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("its limits");
    limits
        .lines()
        .find(|l| l.starts_with("Max processes"))
        .and_then(|l| l.split_whitespace().nth(2))
        .expect("a Max processes line")
        .to_owned()
}

/// A process started before its environment's limit (a Slipway from before, or another
/// `max_processes`) keeps the limit it started with: it is drift, and replacing it applies
/// the limit in force.
#[test]
fn a_process_started_under_another_process_limit_is_drift_that_apply_repairs() {
    let s = Sandbox::new();
    s.with_local("max_processes = 64");
    s.commit_dev_stack(
        "limits",
        r##"  web: { type: process, command: ["sleep", "4245000"] }
"##,
        "a process",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let child = |s: &Sandbox| {
        let state: Value = serde_json::from_slice(
            &std::fs::read(s.home.join("envs/dev/run/web.json")).expect("its state"),
        )
        .expect("JSON");
        state["child"]["pid"].as_u64().expect("a child")
    };
    assert_eq!(max_processes_of(child(&s)), "64", "started with the limit");
    let config = std::fs::read_to_string(&s.config).expect("config");
    std::fs::write(
        &s.config,
        config.replace("max_processes = 64", "max_processes = 128"),
    )
    .expect("config");
    let web = || dev_resource(&s, "web");
    let seen = web();
    assert_eq!(seen["status"], "drifted", "{seen}");
    assert!(
        seen["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most 64") && m.contains("at most 128")),
        "the drift says which limits: {seen}"
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    assert_eq!(
        max_processes_of(child(&s)),
        "128",
        "replaced under the limit in force"
    );
    assert_ne!(web()["status"], "drifted", "in sync once replaced");
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

/// Holds `MiB` mebibytes, then tries to leave its control group and to lift its limits, and
/// reports what it found in `data/NAME.json`; `eat` allocates more afterwards.
const MEMORY: &str = r#"import json, os, sys, time
name = sys.argv[1]
d = os.environ["SLIPWAY_DATA_DIR"]
size = os.path.join(d, "size")
if sys.argv[2] != "file":
    mib = int(sys.argv[2])
else:
    mib = int(open(size).read()) if os.path.exists(size) else 96
held = b"x" * (mib << 20)
groups = open("/proc/self/cgroup").read()
def attempt(path, value):
    try:
        with open(path, "w") as f:
            f.write(value)
        return "written"
    except OSError as e:
        return type(e).__name__
mine = [l.split(":", 2)[2] for l in groups.splitlines() if l.split(":")[1] == "memory"][0]
report = {
    "groups": groups,
    "leave": attempt("/sys/fs/cgroup/memory/cgroup.procs", str(os.getpid())),
    "lift": attempt("/sys/fs/cgroup/memory" + mine + "/memory.limit_in_bytes", "-1"),
}
with open(os.path.join(d, name + ".tmp"), "w") as f:
    json.dump(report, f)
os.rename(os.path.join(d, name + ".tmp"), os.path.join(d, name + ".json"))
if "eat" in sys.argv[3:]:
    more = [b"y" * (16 << 20) for _ in range(64)]
time.sleep(10**6)
"#;

/// How `status` shows `name` of `dev`.
fn dev_resource(s: &Sandbox, name: &str) -> Value {
    let status = s.json(&["status", "--output", "json"]);
    let dev = status_environment(&status, "dev").expect("dev");
    status_resource(dev, name).expect("the resource").clone()
}

/// The memory limit of the v1 group `group` (a path from the hierarchy's root).
fn memory_limit_of(group: &str) -> String {
    std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory{group}/memory.limit_in_bytes"
    ))
    .unwrap_or_else(|e| panic!("the limit of {group}: {e}"))
    .trim()
    .to_owned()
}

/// A branch's code could take all the machine's memory (the kernel's OOM killer then ends
/// whatever it picks, the controller or a database included) and all its CPU with as many
/// busy processes as it likes. Each environment's processes now share one control group:
/// `[local] max_memory` for all of them together (the kernel ends one of them past it, never
/// a process outside), `max_cpu` cores, which the code cannot leave or lift. This machine
/// has cgroup v1, which the test reads directly.
#[test]
fn code_that_takes_all_memory_is_stopped_at_its_environments_limit() {
    let s = Sandbox::new();
    s.with_local("max_memory = \"96MiB\"\nmax_cpu = 0.5");
    s.write("memory.py", MEMORY);
    s.commit_dev_stack(
        "memory",
        r##"  hold: { type: process, command: ["python3", "memory.py", "hold", "24"] }
"##,
        "a process holding some memory",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let uid = owner(&s.home.join("envs/dev/data"));
    let group = format!("/slipway/{uid}");
    // Ready once started: its report comes once it holds its memory.
    let written = s.home.join("envs/dev/data/hold.json");
    wait_for("its report, once it holds its memory", T, || {
        written.exists().then_some(())
    });
    let held = report(&s, "dev", "hold.json");
    assert!(
        held["groups"]
            .as_str()
            .is_some_and(|g| g.contains(&format!("memory:{group}\n"))
                && g.contains(&format!("cpu:{group}\n"))),
        "the process runs in its environment's group: {held}"
    );
    assert_eq!(held["leave"], "PermissionError", "it cannot leave: {held}");
    // Its supervisor runs in the group too, so that its children are born there (a move
    // each would cost every start a cgroup migration).
    let members = std::fs::read_to_string(format!("/sys/fs/cgroup/memory{group}/cgroup.procs"))
        .expect("the group's processes");
    assert!(
        members.lines().any(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__supervise"))
        }),
        "the supervisor is in the group: {members}"
    );
    assert_eq!(
        held["lift"], "PermissionError",
        "nor lift its limit: {held}"
    );
    assert_eq!(memory_limit_of(&group), (96u64 << 20).to_string());
    let swap = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory{group}/memory.memsw.limit_in_bytes"
    ))
    .expect("its limit of memory and swap");
    assert_eq!(swap.trim(), (96u64 << 20).to_string(), "no swap past it");
    let quota = std::fs::read_to_string(format!("/sys/fs/cgroup/cpu{group}/cpu.cfs_quota_us"))
        .expect("its CPU quota");
    assert_eq!(quota.trim(), "50000", "half a core of each 100 ms");

    // A job of the same environment that eats past the limit the two share is ended by the
    // kernel, and the failure says why; the process outside it keeps running.
    s.commit_dev_stack(
        "memory",
        r##"  hold: { type: process, command: ["python3", "memory.py", "hold", "24"] }
  eat:
    type: job
    command: ["python3", "memory.py", "eat", "48", "eat"]
    depends_on: [hold]
"##,
        "a job eating all it can",
    );
    let out = s.expect_code(&["apply", "--env", "dev", "--yes"], 1);
    let said = text(&out);
    assert!(
        said.contains("signal 9 (SIGKILL)") && said.contains("memory limit of 96 MiB"),
        "the failure says the environment's memory limit ended it: {said}"
    );
    let hold =
        supervisor_state(&s.home, "dev", "hold").expect("the process's state")["child"]["pid"]
            .as_u64()
            .expect("running");
    assert!(
        Path::new(&format!("/proc/{hold}")).exists(),
        "the process below the limit still runs"
    );

    // A process that does the same is ended likewise, and its supervisor says why.
    s.commit_dev_stack(
        "memory",
        r##"  hold: { type: process, command: ["python3", "memory.py", "hold", "24"] }
  glutton: { type: process, command: ["python3", "memory.py", "glutton", "48", "eat"] }
"##,
        "a process eating all it can",
    );
    s.run(&["apply", "--env", "dev", "--yes"]);
    let said = wait_for("the glutton's last exit", T, || {
        supervisor_state(&s.home, "dev", "glutton")
            .and_then(|state| state["last_exit"].as_str().map(str::to_owned))
    });
    assert!(
        said.contains("signal 9 (SIGKILL)") && said.contains("memory limit of 96 MiB"),
        "the process's last exit says the memory limit ended it: {said:?}"
    );

    // Another limit is drift for the process started under the first, until replaced.
    let config = std::fs::read_to_string(&s.config).expect("config");
    std::fs::write(
        &s.config,
        config.replace("max_memory = \"96MiB\"", "max_memory = \"128MiB\""),
    )
    .expect("config");
    s.commit_dev_stack(
        "memory",
        r##"  hold: { type: process, command: ["python3", "memory.py", "hold", "24"] }
"##,
        "the eater goes",
    );
    let seen = dev_resource(&s, "hold");
    assert!(
        seen["message"]
            .as_str()
            .is_some_and(|m| m.contains("96 MiB of memory") && m.contains("128 MiB of memory")),
        "the drift says which limits: {seen}"
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    assert_eq!(memory_limit_of(&group), (128u64 << 20).to_string());

    // The group goes with the environment.
    let dir = format!("/sys/fs/cgroup/memory{group}");
    assert!(Path::new(&dir).exists());
    s.ok(&["destroy", "--env", "dev", "--yes"]);
    assert!(
        !Path::new(&dir).exists(),
        "{dir} is removed with its environment"
    );
    assert!(!Path::new(&format!("/sys/fs/cgroup/cpu{group}")).exists());
}

/// A memory limit lowered below what the environment's processes hold is refused by the
/// kernel (cgroup v1) while nothing can be reclaimed: the group keeps the old one, which is
/// drift until the processes are replaced, and the apply that replaces them lowers it.
#[test]
fn a_memory_limit_lowered_below_what_the_code_holds_takes_once_it_is_replaced() {
    let s = Sandbox::new();
    s.with_local("max_memory = \"160MiB\"");
    s.write("memory.py", MEMORY);
    s.commit_dev_stack(
        "memory",
        r##"  other: { type: process, command: ["sleep", "4245001"] }
  hold:
    type: process
    command: ["python3", "memory.py", "hold", "file"]
    depends_on: [other]
"##,
        "a process holding what data/size says (96 MiB at first), and another",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let data = s.home.join("envs/dev/data");
    let written = data.join("hold.json");
    wait_for("its report, once it holds its memory", T, || {
        written.exists().then_some(())
    });
    let group = format!("/slipway/{}", owner(&data));
    // Lowered below the 96 MiB held: the kernel keeps 160 MiB for now.
    std::fs::write(data.join("size"), "8").expect("its next size");
    let config = std::fs::read_to_string(&s.config).expect("config");
    std::fs::write(
        &s.config,
        config.replace("max_memory = \"160MiB\"", "max_memory = \"64MiB\""),
    )
    .expect("config");
    let seen = dev_resource(&s, "hold");
    assert_eq!(seen["status"], "drifted", "{seen}");
    // A job, then the other process, start first, while `hold` still holds its 96 MiB:
    // the kernel refuses the lower limit, which fails neither. Then `hold` is replaced (now
    // holding 8 MiB; its supervisor does not write the limit again for the same spec), and
    // the limit takes at the end of the apply.
    s.commit_dev_stack(
        "memory",
        r##"  probe: { type: job, command: ["true"] }
  other:
    type: process
    command: ["sleep", "4245001"]
    depends_on: [probe]
  hold:
    type: process
    command: ["python3", "memory.py", "hold", "file"]
    depends_on: [other]
"##,
        "a job before the processes",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    assert_eq!(memory_limit_of(&group), (64u64 << 20).to_string());
    let seen = dev_resource(&s, "hold");
    assert_ne!(seen["status"], "drifted", "in force once replaced: {seen}");
    // A group whose limit is not the one its processes were started under (as when the
    // kernel refused it) is drift, which the next apply repairs.
    for file in ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"] {
        let path = format!("/sys/fs/cgroup/memory{group}/{file}");
        std::fs::write(&path, (160u64 << 20).to_string()).expect("the old limit back");
    }
    let seen = dev_resource(&s, "hold");
    assert!(
        seen["message"]
            .as_str()
            .is_some_and(|m| m.contains("control group does not hold the limits")),
        "{seen}"
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    assert_eq!(memory_limit_of(&group), (64u64 << 20).to_string());
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

const DISK: &str = r#"import errno, json, os, sys, time
d = os.environ["SLIPWAY_DATA_DIR"]
if sys.argv[1] == "one":
    # One file as large as it can get, then gone.
    path = os.path.join(d, "one")
    error = None
    try:
        with open(path, "wb") as f:
            for _ in range(64):
                f.write(b"x" * (1 << 20))
                f.flush()
    except OSError as e:
        error = errno.errorcode.get(e.errno, str(e.errno))
    size = os.path.getsize(path)
    os.remove(path)
    # Blocks past the file size limit, which the kernel checks only where a size grows:
    # without a size, by ioctl, by inserting a range, through io_uring; and preallocated
    # with a size, which is checked.
    import ctypes, fcntl, struct
    libc = ctypes.CDLL(None, use_errno=True)
    def tried(f):
        try:
            f()
            return "taken"
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))
    def checked(rc):
        if rc == -1:
            raise OSError(ctypes.get_errno(), "")
    fd = os.open(os.path.join(d, "pre"), os.O_CREAT | os.O_RDWR, 0o600)
    report = {"error": error, "size": size}
    report["keep_size"] = tried(lambda: checked(libc.fallocate(fd, 1, ctypes.c_long(0), ctypes.c_long(64 << 20))))
    report["resvsp"] = tried(lambda: fcntl.ioctl(fd, 0x4030582a, struct.pack("hhqqiI4i", 0, 0, 0, 64 << 20, 0, 0, 0, 0, 0, 0)))
    os.write(fd, b"x" * 8192)
    report["insert"] = tried(lambda: checked(libc.fallocate(fd, 0x20, ctypes.c_long(0), ctypes.c_long(4096))))
    report["uring"] = tried(lambda: checked(libc.syscall(425, 8, ctypes.create_string_buffer(120))))
    report["sized"] = tried(lambda: os.posix_fallocate(fd, 0, 1 << 20))
    os.close(fd)
    os.remove(os.path.join(d, "pre"))
    with open(os.path.join(d, "one.json"), "w") as f:
        json.dump(report, f)
    sys.exit(0)
# Many files, each well below the limit, until told there are enough; a job then ends.
n = 0
while n < 64 and not os.path.exists(os.path.join(d, "enough")):
    with open(os.path.join(d, "%s-%02d" % (sys.argv[1], n)), "wb") as f:
        f.write(b"x" * (1 << 20))
    n += 1
    time.sleep(0.1 if sys.argv[1] == "fill" else 0.2)
if sys.argv[1] == "many":
    time.sleep(10**6)
"#;

fn files_named(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .expect("the data directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect()
}

/// A branch's code could fill the disk the engine's home is on (the state database's writes
/// then fail, and a database server on the same disk stops). Each environment's data and
/// temporary directories now hold at most `[local] max_disk`: no file of its code grows past
/// it (`RLIMIT_FSIZE`), and past it all together its code is stopped, and none starts until
/// the directories hold less (its supervisor and the engine measure them).
#[test]
fn code_that_fills_the_disk_is_stopped_at_its_environments_limit() {
    let s = Sandbox::new();
    s.with_local("max_disk = \"16MiB\"");
    s.write("disk.py", DISK);
    s.commit_dev_stack(
        "disk",
        r##"  one: { type: job, command: ["python3", "disk.py", "one"] }
"##,
        "a job writing one file as large as it can",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let one = report(&s, "dev", "one.json");
    assert_eq!(
        one["error"], "EFBIG",
        "the write past the limit failed: {one}"
    );
    assert_eq!(
        one["size"],
        16 << 20,
        "the file stopped at the limit: {one}"
    );
    for way in ["keep_size", "resvsp", "insert", "uring"] {
        assert_eq!(
            one[way], "EPERM",
            "no blocks are taken past the file size limit ({way}): {one}"
        );
    }
    assert_eq!(
        one["sized"], "taken",
        "a file is preallocated with its size: {one}"
    );

    // A job writing many files, each small, is stopped once they hold more.
    s.commit_dev_stack(
        "disk",
        r##"  one: { type: job, command: ["python3", "disk.py", "one"] }
  fill: { type: job, command: ["python3", "disk.py", "fill"] }
"##,
        "a job writing one file after another",
    );
    let out = s.expect_code(&["apply", "--env", "dev", "--yes"], 1);
    let said = text(&out);
    assert!(
        said.contains("job command `python3 disk.py fill` was stopped")
            && said.contains("past its disk limit of 16.0 MiB"),
        "the apply says why the job was stopped: {said}"
    );
    let data = s.home.join("envs/dev/data");
    let filled = files_named(&data, "fill-");
    assert!(
        (16..64).contains(&filled.len()),
        "it was stopped past the limit, before it wrote all it meant to: {} MiB",
        filled.len()
    );
    for file in filled {
        std::fs::remove_file(file).expect("remove");
    }

    // Many files, each small: the supervisor stops the process once they hold more.
    s.commit_dev_stack(
        "disk",
        r##"  one: { type: job, command: ["python3", "disk.py", "one"] }
  many: { type: process, command: ["python3", "disk.py", "many"] }
"##,
        "a process writing one file after another",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let said = wait_for("the supervisor to stop it for its disk", T, || {
        supervisor_state(&s.home, "dev", "many")
            .and_then(|state| state["last_exit"].as_str().map(str::to_owned))
            .filter(|exit| exit.contains("disk limit"))
    });
    assert!(
        said.contains("past its disk limit of 16.0 MiB") && said.contains("max_disk"),
        "its last start says why it does not run: {said}"
    );
    let written = files_named(&data, "many-").len();
    assert!(
        (16..64).contains(&written),
        "it was stopped past the limit, before it wrote all it meant to: {written} MiB"
    );
    // Nothing of the environment runs any more (its uid owns no process), so nothing writes.
    let uid = owner(&data).to_string();
    wait_for("no process of the environment's uid", T, || {
        let listed = Command::new("ps")
            .args(["-o", "pid=", "-u", &uid])
            .output()
            .expect("ps");
        listed.stdout.is_empty().then_some(())
    });
    assert_eq!(
        files_named(&data, "many-").len(),
        written,
        "nothing of it writes on"
    );
    let seen = dev_resource(&s, "many");
    assert!(
        seen["message"]
            .as_str()
            .is_some_and(|m| m.contains("disk limit of 16.0 MiB")),
        "status says why it does not run: {seen}"
    );

    // Once they hold less (the operator removed the files), its supervisor starts it again.
    for file in files_named(&data, "many-") {
        std::fs::remove_file(file).expect("remove");
    }
    std::fs::write(data.join("enough"), "").expect("enough");
    let running = || {
        supervisor_state(&s.home, "dev", "many")
            .filter(|state| state["phase"] == "running")
            .and_then(|state| state["child"]["pid"].as_u64())
            .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
    };
    wait_for("the supervisor to start it again", T, running);

    // Over again (the operator's file this time): stopped again, and no apply starts it while
    // the directories hold more; once they hold less, the next apply does.
    let pid = running().expect("it runs");
    std::fs::write(data.join("ballast"), vec![0u8; 20 << 20]).expect("ballast");
    wait_for("the supervisor to stop it again", T, || {
        supervisor_state(&s.home, "dev", "many")
            .filter(|state| state["phase"] == "backoff")
            .and_then(|state| state["last_exit"].as_str().map(str::to_owned))
            .filter(|exit| exit.contains("its start is held") && exit.contains("disk limit"))
            .filter(|_| !Path::new(&format!("/proc/{pid}")).exists())
    });
    s.commit_dev_stack(
        "disk",
        r##"  one: { type: job, command: ["python3", "disk.py", "one"] }
  many: { type: process, command: ["python3", "disk.py", "many"] }
  other: { type: process, command: ["sleep", "4245002"] }
"##,
        "another process",
    );
    let out = s.expect_code(&["apply", "--env", "dev", "--yes"], 1);
    let said = text(&out);
    assert!(
        said.contains("process `sleep 4245002` was not started")
            && said.contains("past its disk limit of 16.0 MiB"),
        "the apply says why: {said}"
    );
    std::fs::remove_file(data.join("ballast")).expect("remove");
    s.ok(&["apply", "--env", "dev", "--yes"]);
    wait_for("its supervisor to start it again", T, running);
    assert!(
        supervisor_state(&s.home, "dev", "other").is_some_and(|state| state["phase"] == "running"),
        "the apply started the other process"
    );
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

/// A `file` resource with the set-uid bit would be a set-uid program of the environment's.
#[test]
fn a_file_resource_cannot_be_set_uid() {
    let s = Sandbox::new();
    s.commit_dev_stack(
        "setuid",
        r##"  tool: { type: file, path: tool.sh, content: "#!/bin/sh\nid\n", mode: "4755" }
"##,
        "a set-uid file",
    );
    let out = s.run(&["apply", "--env", "dev", "--yes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("set-uid"),
        "{}",
        s.report(&["apply"], &out, "a set-uid mode is refused, saying why")
    );
    let file = s.home.join("envs/dev/data/tool.sh");
    assert!(
        std::fs::metadata(&file).map_or(true, |m| m.mode() & 0o7000 == 0),
        "no set-uid file was written"
    );
    s.commit_dev_stack(
        "setuid",
        r##"  tool: { type: file, path: tool.sh, content: "#!/bin/sh\nid\n", mode: "0755" }
"##,
        "plain permissions",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    assert_eq!(
        std::fs::metadata(&file).expect("the file").mode() & 0o7777,
        0o755,
        "permission bits are applied"
    );
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

/// A process whose supervisor spec cannot be read may predate sandboxing: it is drift, not in
/// sync, and applying replaces it.
#[test]
fn a_process_whose_spec_is_gone_is_drift() {
    let s = Sandbox::new();
    s.commit_dev_stack(
        "nospec",
        r##"  web: { type: process, command: ["python3", "-c", "import time; time.sleep(10**6)", "web-nospec"] }
"##,
        "a process",
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    // Its state file carries the spec: the same file without it (and no spec file).
    let state_file = s.home.join("envs/dev/run/web.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_file).expect("the state")).expect("JSON");
    assert!(
        state["spec"].is_object(),
        "the supervisor has a spec: {state}"
    );
    state.as_object_mut().expect("an object").remove("spec");
    std::fs::write(&state_file, state.to_string()).expect("the state without its spec");
    let web_status = || {
        let status = s.json(&["status", "--output", "json"]);
        let dev = status_environment(&status, "dev").expect("dev");
        status_resource(dev, "web").expect("web").clone()
    };
    let web = web_status();
    assert_eq!(web["status"], "drifted", "{web}");
    assert!(
        web["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot be read")),
        "the drift says why: {web}"
    );
    s.ok(&["apply", "--env", "dev", "--yes"]);
    let web = web_status();
    assert_ne!(web["status"], "drifted", "replaced, it is in sync: {web}");
    s.ok(&["destroy", "--env", "dev", "--yes"]);
}

/// A destroyed environment's uid used to go to the very next environment, which met what the
/// previous one left in SysV IPC and `/dev/shm`; and a uid or gid of a real user or group
/// (nobody, docker's gid) could be given to an environment.
#[test]
fn uids_are_not_reused_at_once_nor_taken_from_real_users() {
    let s = Sandbox::new();
    s.commit_stack(
        "uids",
        "{ a: { track: main }, b: { track: main }, c: { track: main } }",
        "  note: { type: file, path: note.txt, content: \"hi\" }\n",
        "three environments",
    );
    s.ok(&["apply", "--env", "a", "--yes"]);
    let uid_a = owner(&s.home.join("envs/a/data"));
    s.ok(&["destroy", "--env", "a", "--yes"]);
    s.ok(&["apply", "--env", "b", "--yes"]);
    let uid_b = owner(&s.home.join("envs/b/data"));
    assert_ne!(
        uid_b, uid_a,
        "the next environment does not get the uid just released"
    );
    s.ok(&["destroy", "--env", "b", "--yes"]);

    // A range that holds `nobody` (65534, a real user and group) and one unused id.
    let t = Sandbox::new();
    t.with_local("");
    let config = std::fs::read_to_string(&t.config).expect("config");
    let config: String = config
        .lines()
        .map(|l| {
            if l.starts_with("uids = ") {
                "uids = \"65533-65534\"".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&t.config, config + "\n").expect("config");
    t.commit_stack(
        "uids",
        "{ a: { track: main }, b: { track: main } }",
        "  note: { type: file, path: note.txt, content: \"hi\" }\n",
        "two environments",
    );
    t.ok(&["apply", "--env", "a", "--yes"]);
    assert_eq!(
        owner(&t.home.join("envs/a/data")),
        65533,
        "the unused id is given"
    );
    let out = t.run(&["apply", "--env", "b", "--yes"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("[local] uids"),
        "{}",
        t.report(
            &["apply"],
            &out,
            "nobody's id is never given: the range is exhausted"
        )
    );
    t.ok(&["destroy", "--env", "a", "--yes"]);
}

/// Under an unprivileged engine (landlock mode) the code runs as the engine's uid: it used to
/// connect to every unix socket that uid may (its systemd user bus, `docker.sock` for a
/// member of `docker`, PostgreSQL peer authentication), `chmod` the engine's own files by
/// path, and lower the engine's limits or its scheduling (`prlimit`, `sched_setaffinity`,
/// `setpriority`; Landlock at ABI 7 covers none of these).
#[test]
fn under_an_unprivileged_engine_code_reaches_no_unix_socket_and_changes_no_mode() {
    use std::os::unix::fs::PermissionsExt;
    if slipway_providers::sandbox::landlock_abi().is_none() {
        eprintln!("this kernel has no Landlock: landlock mode cannot run here");
        return;
    }
    const NOBODY: u32 = 65534;
    let s = Sandbox::new();
    // A socket only the engine's user may use, as `docker.sock` is for a member of `docker`.
    let socket_path = s.dir.path().join("engine-user.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket_path).expect("bind");
    std::os::unix::fs::chown(&socket_path, Some(NOBODY), Some(NOBODY)).expect("chown");
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let git_home = s.dir.path().join("nobody-home");
    std::fs::create_dir_all(&git_home).expect("nobody's home");
    std::fs::write(git_home.join(".gitconfig"), "[safe]\n\tdirectory = *\n").expect("gitconfig");
    std::fs::create_dir_all(&s.home).expect("the home");
    s.write(
        "slipway.yaml",
        &format!(
            r##"version: 1
stack: sockets
environments: {{ dev: {{ track: main }} }}
resources:
  evil:
    type: job
    env: {{ SOCK: "{}" }}
    command:
      - python3
      - -c
      - |
        import json, os, socket
        d = os.environ["SLIPWAY_DATA_DIR"]
        home = os.path.dirname(os.path.dirname(os.path.dirname(d)))
        r = {{"uid": os.getuid()}}
        def attempt(name, f):
            try:
                f()
                r[name] = "ALLOWED"
            except OSError as e:
                r[name] = "denied: %s" % e
        attempt("connect to the engine user's socket",
                lambda: socket.socket(socket.AF_UNIX).connect(os.environ["SOCK"]))
        attempt("chmod the engine's database", lambda: os.chmod(os.path.join(home, "state.db"), 0o666))
        attempt("chmod the home", lambda: os.chmod(home, 0o777))
        attempt("own file written", lambda: open(os.path.join(d, "mine"), "w").close())
        import resource
        engine = os.getppid()
        attempt("lower the engine's limits",
                lambda: resource.prlimit(engine, resource.RLIMIT_CORE, (0, 0)))
        attempt("pin the engine to one CPU", lambda: os.sched_setaffinity(engine, {{0}}))
        attempt("renice the engine", lambda: os.setpriority(os.PRIO_PROCESS, engine, 1))
        attempt("renice every process of the uid", lambda: os.setpriority(os.PRIO_USER, 0, 1))
        attempt("own limit lowered", lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)))
        attempt("own priority lowered", lambda: os.setpriority(os.PRIO_PROCESS, 0, 1))
        attempt("own CPUs chosen", lambda: os.sched_setaffinity(0, os.sched_getaffinity(0)))
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        def keep_size():
            fd = os.open(os.path.join(d, "pre"), os.O_CREAT | os.O_WRONLY, 0o600)
            if libc.fallocate(fd, 1, ctypes.c_long(0), ctypes.c_long(1 << 20)) != 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        attempt("take blocks without a size", keep_size)
        r["engine"] = engine
        r["engine's name"] = open("/proc/%d/comm" % engine).read().strip()
        json.dump(r, open(os.path.join(d, "sockets.json"), "w"))
"##,
            socket_path.display()
        ),
    );
    s.commit("a job that wants the engine user's sockets and files");
    let chown = Command::new("chown")
        .args(["-R", &format!("{NOBODY}:{NOBODY}")])
        .arg(&s.home)
        .arg(&git_home)
        .status()
        .expect("chown runs");
    assert!(chown.success(), "the home is nobody's");
    let out = s
        .cmd_as(NOBODY, &["apply", "--env", "dev", "--yes"])
        .env("HOME", &git_home)
        .output()
        .expect("slipway runs");
    assert!(
        out.status.success(),
        "{}",
        s.report(&["apply"], &out, "apply as nobody")
    );
    let r = report(&s, "dev", "sockets.json");
    assert_eq!(r["uid"], NOBODY, "the code runs as the engine's uid: {r}");
    assert_eq!(
        r["engine's name"], "slipway",
        "its parent is the engine: {r}"
    );
    for attack in [
        "connect to the engine user's socket",
        "chmod the engine's database",
        "chmod the home",
        "lower the engine's limits",
        "pin the engine to one CPU",
        "renice the engine",
        "renice every process of the uid",
        "take blocks without a size",
    ] {
        assert!(
            r[attack]
                .as_str()
                .is_some_and(|m| m.starts_with("denied: [Errno 1]")),
            "{attack} is refused (EPERM, by the sandbox): {r}"
        );
    }
    for allowed in [
        "own file written",
        "own limit lowered",
        "own priority lowered",
        "own CPUs chosen",
    ] {
        assert_eq!(r[allowed], "ALLOWED", "{allowed} is still allowed: {r}");
    }
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    assert!(
        listener.accept().is_err(),
        "nothing connected to the engine user's socket"
    );
    assert_eq!(
        std::fs::metadata(s.home.join("state.db"))
            .expect("state.db")
            .permissions()
            .mode()
            & 0o777,
        0o600,
        "the database's mode is unchanged"
    );
}
