"""What the benchmark sections (bench/sections/) share: the samples file, processes, HTTP, git,
`slipway serve`; and on the report's side the statistics, formats and the table writer.

Every sample is appended as one JSON line to the file named by $BENCH_RESULTS (record), so a
benchmark and its baseline can be interleaved run by run and summarised at the end
(bench/report.py reads them back with load)."""

import datetime
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

SLEEP_CMDLINE = b"sleep\x00100000\x00"


# --- samples -----------------------------------------------------------------------------------


def record(label, samples, unit="s", **extra):
    path = os.environ.get("BENCH_RESULTS")
    line = json.dumps({"label": label, "unit": unit, "samples": samples, **extra})
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
    shown = ", ".join(f"{s:.3f}" if unit == "s" else str(s) for s in samples)
    print(f"  {label}: {shown} {unit}", file=sys.stderr)


def skip_command(section):
    """The `X-skip REASON` command of a section: records that it did not run, and why."""
    return lambda args: record(f"{section}/skipped", [], unit="note", reason=args[0])


def options(args):
    """`--name value` pairs, as given."""
    return dict(zip(args[::2], args[1::2]))


def split_args(argv):
    """Options before `--` (without their dashes), the command after it."""
    if "--" not in argv:
        sys.exit("measure.py: missing `-- COMMAND`")
    i = argv.index("--")
    opts, cmd = argv[:i], argv[i + 1 :]
    parsed = {}
    it = iter(opts)
    for key in it:
        parsed[key.lstrip("-")] = next(it)
    return parsed, cmd


def run_checked(cmd, expect):
    """Wall time and CPU time (user + system, with the children it waited for, e.g. git)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        elapsed = time.perf_counter() - t0
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        if code != expect:
            err.seek(0)
            sys.stderr.write(err.read().decode(errors="replace")[-4000:])
            sys.exit(f"measure.py: `{' '.join(cmd)}` exited {code}, expected {expect}")
    return elapsed, usage.ru_utime + usage.ru_stime


def cmd_time(args):
    """measure.py cmd LABEL [--runs R] [--warmup W] [--expect CODE] [--meta JSON] -- ARGV..."""
    label, (opts, cmd) = args[0], split_args(args[1:])
    runs = int(opts.get("runs", 5))
    warmup = int(opts.get("warmup", 0))
    expect = int(opts.get("expect", 0))
    meta = json.loads(opts.get("meta", "{}"))
    for _ in range(warmup):
        run_checked(cmd, expect)
    runs = [run_checked(cmd, expect) for _ in range(runs)]
    record(label, [wall for wall, _ in runs], cpu=[cpu for _, cpu in runs], **meta)


def time_batch(cmds):
    """Runs the commands one after the other (each must exit 0): total wall time, and the CPU
    time (user + system) of the commands themselves."""
    cpu = 0.0
    t0 = time.perf_counter()
    for cmd in cmds:
        cpu += run_checked(cmd, 0)[1]
    return time.perf_counter() - t0, cpu


# --- processes ---------------------------------------------------------------------------------


def stat_fields(pid):
    """The fields of /proc/PID/stat after the command name (state first)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rindex(b")") + 2 :].split()


def processes():
    """(pid, ppid, cmdline) of every process we can read."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            ppid = int(stat_fields(entry)[1])
        except OSError:
            continue
        out.append((int(entry), ppid, cmdline))
    return out


def cpu_seconds(pid, children=False):
    """User + system CPU time of pid (all its threads) so far; with children, also that of the
    children it reaped (the git it runs)."""
    fields = stat_fields(pid)
    ticks = fields[11:15] if children else fields[11:13]
    return sum(int(x) for x in ticks) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid):
    """VmRSS and VmHWM (peak RSS) of pid, in KiB, from /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def zombie(pid):
    try:
        return stat_fields(pid)[0] == b"Z"
    except OSError:
        return True


def cwd_of(pid):
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def under(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


def sleeps_under(parent_pred):
    procs = processes()
    by_pid = {pid: cmdline for pid, _, cmdline in procs}
    return [
        pid
        for pid, ppid, cmdline in procs
        if cmdline == SLEEP_CMDLINE and ppid in by_pid and parent_pred(ppid, by_pid[ppid])
    ]


def count_sleeps(marker):
    m = marker.encode()
    return len(sleeps_under(lambda _pid, cmdline: m in cmdline))


def python_under(root):
    """Live python processes whose working directory is under root."""
    out = []
    for pid, _, cmdline in processes():
        if cmdline.split(b"\0")[0].rsplit(b"/", 1)[-1].startswith(b"python") and under(
            cwd_of(pid), root
        ):
            out.append(pid)
    return out


def settle(count, want, timeout=3.0):
    """count() until it returns want or timeout passes: a process caught mid-exec shows an
    empty command line for a moment."""
    deadline = time.perf_counter() + timeout
    while True:
        got = count()
        if got == want or time.perf_counter() > deadline:
            return got
        time.sleep(0.02)


def kill(pid, sig=signal.SIGKILL):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop(proc, timeout=30, sig=signal.SIGTERM):
    """Signals a child we started (if it still runs; sig None: it was told otherwise) and waits
    for it; SIGKILL after timeout."""
    if proc.poll() is None:
        if sig is not None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_pids(pids, what):
    for pid in pids:
        kill(pid, signal.SIGTERM)

    def alive():
        return sum(1 for p in pids if os.path.exists(f"/proc/{p}") and not zombie(p))

    if settle(alive, 0, timeout=10):
        for pid in pids:
            kill(pid)
        sys.exit(f"measure.py: {what} did not stop on SIGTERM")


def reap(marker):
    """measure.py reap MARKER: SIGKILL every process whose command line contains MARKER or whose
    working directory is under it (a unique temp dir: only processes this benchmark started),
    and the `sleep 100000` children of those."""
    m = marker.encode()
    procs = processes()
    ours = {
        pid
        for pid, _, cmdline in procs
        if (m in cmdline or under(cwd_of(pid), marker)) and pid != os.getpid()
    }
    # The children first noted, so that none is reparented out of sight.
    children = [pid for pid, ppid, cmdline in procs if ppid in ours and cmdline == SLEEP_CMDLINE]
    for pid in sorted(ours) + children:
        kill(pid)
    if ours or children:
        print(f"  reaped {len(ours)} process(es) and {len(children)} child(ren)", file=sys.stderr)


def supervisord_conf(d, programs, loglevel):
    """DIR/supervisord.conf: a unix socket and logs in DIR, then `programs`, lines of
    [program:x] sections. Returns its path."""
    lines = [
        "[unix_http_server]", f"file={d}/supervisor.sock", "",
        "[supervisord]", f"logfile={d}/supervisord.log", f"pidfile={d}/supervisord.pid",
        f"childlogdir={d}", f"loglevel={loglevel}", "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[supervisorctl]", f"serverurl=unix://{d}/supervisor.sock", "",
        *programs,
    ]
    path = os.path.join(d, "supervisord.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


# --- HTTP --------------------------------------------------------------------------------------


def http_call(addr, method, path, headers=None, body=None, timeout=10):
    """One request on a fresh connection, the whole answer read: (seconds, status, headers with
    lower-case names, body bytes). A bytes body goes out in one send with the headers."""
    hostname, port = addr.rsplit(":", 1)
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(hostname, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        elapsed = time.perf_counter() - t0
        return elapsed, resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def request(addr, method, path, host=None, token=None, timeout=10):
    """(status, body) of one request on a fresh connection; (0, why) if it failed."""
    headers = {}
    if host:
        headers["Host"] = host
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        _, status, _, body = http_call(addr, method, path, headers,
                                  b"" if method == "POST" else None, timeout)
        return status, body.decode(errors="replace")
    except (OSError, http.client.HTTPException) as e:
        return 0, str(e)


def api(addr, token, method, path):
    status, body = request(addr, method, path, token=token, timeout=60)
    if status != 200:
        sys.exit(f"measure.py: {method} {path} answered {status}: {body[:500]}")
    return json.loads(body)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_answer(addr, host, want, poll, timeout=60, alive=None, token=None):
    """Polls GET / until it answers 200 with body `want` (with `token` as a bearer token: a
    private preview's). Returns (seconds, how many answers before were not 200: refused
    connections, 401s of a preview not made yet, 404s, 502s; the old version answering 200
    is not counted)."""
    t0 = time.perf_counter()
    errors = 0
    while True:
        status, body = request(addr, "GET", "/", host=host, token=token, timeout=5)
        if status == 200 and body.strip() == want:
            return time.perf_counter() - t0, errors
        errors += status != 200
        if alive:
            alive()
        if time.perf_counter() - t0 > timeout:
            sys.exit(f"measure.py: {host or addr} did not answer {want!r} within {timeout} s "
                     f"(last: {status} {body[:300]})")
        time.sleep(poll)


# --- git ---------------------------------------------------------------------------------------

GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo, *args, stdin=None, **env):
    return subprocess.run(
        ["git", "-C", repo, *args], check=True, capture_output=True, text=True, input=stdin,
        env=dict(os.environ, **GIT_ENV, **env),
    ).stdout.strip()


def commit_on(repo, parent, path, text, index, message):
    """A commit on top of `parent` with `path` = `text`, on no branch yet (what a push brings).
    Made with a private index so the work tree is left alone."""
    git(repo, "read-tree", parent, GIT_INDEX_FILE=index)
    blob = git(repo, "hash-object", "-w", "--stdin", stdin=text)
    git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}",
        GIT_INDEX_FILE=index)
    tree = git(repo, "write-tree", GIT_INDEX_FILE=index)
    return git(repo, "commit-tree", tree, "-p", parent, "-m", message)


def new_version(repo, version, index):
    """A commit on top of main whose VERSION file says `version`, on no branch yet."""
    return commit_on(repo, "main", "VERSION", version + "\n", index, f"version {version}")


def export(repo, ref, dest):
    """`git archive REF | tar -x -C DEST`."""
    os.makedirs(dest, exist_ok=True)
    archive = subprocess.Popen(["git", "-C", repo, "archive", ref], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", dest], stdin=archive.stdout, check=True)
    archive.stdout.close()
    if archive.wait() != 0:
        sys.exit(f"measure.py: git archive {ref} failed")


# --- slipway serve -----------------------------------------------------------------------------

SERVE_LINE = re.compile(r"slipway serve: API http://([0-9.]+:[0-9]+)/api/v1")


def make_token(slipway, home):
    return subprocess.run(
        [slipway, "--home", home, "token", "create", "--role", "admin", "--name", "bench"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def parse_metrics(text):
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def synced(metrics):
    return sum(
        v
        for k, v in metrics.items()
        if k.startswith("slipway_environments{") and 'sync="synced"' in k
    )


class Serve:
    """`slipway serve --listen 127.0.0.1:0`, its stderr appended to HOME/serve.log."""

    def __init__(self, slipway, home, config, repo, prefix=(), extra=(), listen="127.0.0.1:0"):
        """prefix: a command the server runs under (`perf record ... --`); extra: more
        arguments of `serve`; listen: its --listen."""
        self.log_path = os.path.join(home, "serve.log")
        self.log = open(self.log_path, "ab")
        self.offset = self.log.tell()
        self.addr = None
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [*prefix, slipway, "--home", home, "--config", config, "serve", "--repo", repo,
             "--listen", listen, *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        self.pid = self.proc.pid
        if prefix:
            # The server is the wrapper's child: found once it is exec'd.
            self.pid = None
            while self.pid is None:
                kids = [pid for pid, ppid, cmd in processes()
                        if ppid == self.proc.pid and b"\0serve\0" in cmd]
                self.pid = kids[0] if kids else None
                self.check_alive()
                time.sleep(0.001)

    def log_text(self):
        with open(self.log_path, "rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def check_alive(self):
        if self.proc.poll() is not None:
            sys.exit(f"measure.py: slipway serve exited with {self.proc.returncode}:\n"
                     f"{self.log_text()[-3000:]}")

    def wait_healthy(self, timeout=120):
        """Seconds from launch to the first /healthz answered 200."""
        deadline = self.t0 + timeout
        while self.addr is None:
            m = SERVE_LINE.search(self.log_text())
            if m:
                self.addr = m.group(1)
                break
            self.check_alive()
            if time.perf_counter() > deadline:
                sys.exit("measure.py: slipway serve printed no address")
            time.sleep(0.002)
        while request(self.addr, "GET", "/healthz", timeout=5)[0] != 200:
            self.check_alive()
            if time.perf_counter() > deadline:
                sys.exit("measure.py: slipway serve's /healthz never answered")
            time.sleep(0.005)
        return time.perf_counter() - self.t0

    @property
    def port(self):
        return int(self.addr.rsplit(":", 1)[1])

    def metrics(self):
        status, body = request(self.addr, "GET", "/metrics")
        return parse_metrics(body) if status == 200 else None

    def wait_status(self, token, path, want, what, timeout=120, pause=0.02):
        """Polls GET path until it answers `want` (a 200 once an environment is recorded, a
        404 once it is gone)."""
        deadline = time.perf_counter() + timeout
        while request(self.addr, "GET", path, token=token)[0] != want:
            self.check_alive()
            if time.perf_counter() > deadline:
                sys.exit(f"measure.py: {what} (waited {timeout} s)")
            time.sleep(pause)

    def stop(self):
        if self.proc.poll() is None:
            # The server itself (under a wrapper, the wrapper then ends with it).
            kill(self.pid or self.proc.pid, signal.SIGTERM)
            stop(self.proc, timeout=60, sig=None)
        if self.pid and self.pid != self.proc.pid and not zombie(self.pid):
            os.kill(self.pid, signal.SIGKILL)
        self.log.close()


def wait_pass(serve, n, poll, timeout, want_synced=None):
    """Polls /metrics until N reconciles are counted and none runs (and, if asked, that many
    environments are recorded synced). Returns (seconds since launch, the metrics, seconds
    since launch when the first reconcile was seen counted, scrapes made).

    The polling adapts (a scrape used to read every environment's record): it sleeps half the time the pass looks likely to need
    still, at the rate seen so far, between `poll` and 0.25 s; 0.05 s until a first reconcile
    is counted."""
    deadline = time.perf_counter() + timeout
    first, scrapes = None, 0
    while True:
        m = serve.metrics()
        scrapes += 1
        now = time.perf_counter() - serve.t0
        count = (m or {}).get("slipway_reconcile_duration_seconds_count", 0)
        if first is None and count > 0:
            first = now
        if (
            m
            and count >= n
            and m.get("slipway_reconciles_running", 1) == 0
            and (want_synced is None or synced(m) >= want_synced)
        ):
            return now, m, first, scrapes
        serve.check_alive()
        if time.perf_counter() > deadline:
            sys.exit(f"measure.py: no full pass within {timeout} s; last metrics: {m}")
        if first is None:
            pause = 0.05
        elif count >= n:
            pause = poll
        else:
            rate = count / max(now - first, 1e-3)
            pause = min(max((n - count) / rate / 2, poll), 0.25)
        time.sleep(pause)


def wall_s(rfc3339):
    return datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def finished_deployment(serve, token, env, commit, timeout=60):
    """The latest deployment of env, once finished; it must be of `commit` and succeeded."""
    deadline = time.perf_counter() + timeout
    while True:
        deps = api(serve.addr, token, "GET", f"/api/v1/environments/{env}/deployments?limit=1")
        d = (deps.get("deployments") or [None])[0]
        if d and d["commit"] == commit and d["status"] != "running":
            if d["status"] != "succeeded":
                sys.exit(f"measure.py: deployment of {env} at {commit[:12]}: {d}")
            return d
        if time.perf_counter() > deadline:
            sys.exit(f"measure.py: no finished deployment of {env} at {commit[:12]}: {d}")
        time.sleep(0.05)


def destroy_all(slipway, home, envs, config=None):
    """`slipway destroy --env E --yes` of each, the polite way, whatever it answers."""
    for env in envs:
        try:
            subprocess.run([slipway, "--home", home, *(["--config", config] if config else []),
                            "destroy", "--env", env, "--yes"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        except subprocess.TimeoutExpired:
            pass


# --- the report's side: samples read back, statistics, formats, tables -------------------------


def load(path):
    samples, cpu, meta = {}, {}, {}
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            samples.setdefault(rec["label"], []).extend(rec["samples"])
            cpu.setdefault(rec["label"], []).extend(rec.get("cpu", []))
            meta.setdefault(rec["label"], {}).update(
                {k: v for k, v in rec.items() if k not in ("label", "samples", "cpu")}
            )
    return samples, cpu, meta


def med(xs):
    return statistics.median(xs)


def fmt_s(x):
    if x >= 10:
        return f"{x:.1f} s"
    if x >= 1:
        return f"{x:.2f} s"
    return f"{x * 1000:.0f} ms"


def fmt_ms(x, digits=0):
    return f"{x * 1000:.{digits}f} ms" if x is not None else "–"


def fmt_kib(kib):
    return f"{kib / 1024:.1f} MiB ({kib * 1024 / 1e6:.1f} MB)"


def fmt_bytes(b):
    return f"{b:,.0f} B ({b / 1024:.0f} KiB)" if b < 1024 * 1024 else (
        f"{b:,.0f} B ({b / 1024 / 1024:.1f} MiB)")


def cell(xs):
    """median (min–max)"""
    if not xs:
        return "–"
    if len(xs) == 1:
        return fmt_s(xs[0])
    return f"**{fmt_s(med(xs))}** ({fmt_s(min(xs))}–{fmt_s(max(xs))})"


def signed_cell(xs):
    """cell(), for figures that may be negative."""
    if not xs:
        return "–"

    def f(x):
        return ("−" if x < 0 else "") + fmt_s(abs(x))

    if len(xs) == 1:
        return f(xs[0])
    return f"**{f(med(xs))}** ({f(min(xs))} to {f(max(xs))})"


def goal_met(xs, goal):
    """The verdict of a goal on a median under `goal`, said of every run too."""
    if med(xs) >= goal:
        return "**missed**"
    return "**met**" if max(xs) < goal else "**met** by the median, not by every run"


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def filesystem(path):
    """The type of the mount holding path, from /proc/mounts."""
    path = os.path.realpath(path)
    best = ("", "?")
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            mnt, kind = parts[1], parts[2]
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best[0]):
                best = (mnt, kind)
    return best[1]


class Report:
    """The report being written (its lines), the samples it is written from, and bench/run's
    arguments. A section's report side gets it, reads `samples`, `cpu`, `meta`, and writes
    with `w` and `table`."""

    def __init__(self, samples, cpu, meta, args, machine):
        self.samples, self.cpu, self.meta = samples, cpu, meta
        self.args, self.machine = args, machine
        self.lines = []

    def w(self, line):
        self.lines.append(line)

    def table(self, head, align, rows=()):
        """A markdown table: the titles, one alignment per column ("" left, ":" right), then
        the rows (lists of cells; a row that is a string is written as is)."""
        self.w("|" + "".join(f" {h} |" if h else " |" for h in head))
        self.w("|" + "".join("---:|" if a == ":" else "---|" for a in align))
        for row in rows:
            self.row(*row) if not isinstance(row, str) else self.w(row)

    def row(self, *cells):
        self.w("| " + " | ".join(str(c) for c in cells) + " |")

    def rows(self, named, fmt=cell):
        """One `| name | fmt(samples) |` line per (name, label) whose label has samples."""
        for name, label in named:
            xs = self.samples.get(label)
            if xs:
                self.row(name, fmt(xs))

    def skip_reason(self, section):
        """Why a section did not run (its `X-skip` command), or None."""
        return self.meta.get(f"{section}/skipped", {}).get("reason")

    def not_judged(self, goal, number, reason):
        """The verdicts' row of a goal whose section was skipped."""
        return goal, "–", f"not judged: section {number} skipped ({reason})"

    def skipped(self, title, reason, needs):
        self.w(f"## {title}\n")
        self.w(f"**Skipped in this run** — {reason}\n")
        self.w(needs + "\n")

    def not_run(self, title):
        self.w(f"## {title}\n")
        self.w(f"*Not run in this run* (`BENCH_ONLY=\"{self.args.only}\"`).\n")
