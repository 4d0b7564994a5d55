#!/usr/bin/env python3
"""Timing and process bookkeeping for bench/run. Every sample is appended as one JSON line to
the file named by $BENCH_RESULTS, so a benchmark and its baseline can be interleaved run by run
and summarised at the end (bench/report.py).

  measure.py cmd LABEL [--runs R] [--warmup W] [--expect CODE] [--meta JSON] -- ARGV...
      Time ARGV (wall clock, and CPU time: user + system of it and the children it waited
      for) R times, stdout/stderr discarded; fail unless it exits CODE.
  measure.py rss LABEL [--expect CODE] -- ARGV...
      Peak resident set size of ARGV (and of the children it waited for), in KiB, through
      /usr/bin/time -f %M when installed, else wait4(2) (the same number).
  measure.py instr LABEL [--expect CODE] [--profile FILE] -- ARGV...
      Instructions executed by ARGV under valgrind's callgrind (deterministic: the machine's
      load does not change it); --profile writes the top functions to FILE.
  measure.py supervisord LABEL --conf FILE --n N [--poll-ms 20]
      Launch `supervisord -n -c FILE`, time until N programs are RUNNING (polling the
      XML-RPC interface on its unix socket, as supervisorctl does), verify with
      `supervisorctl status` and by counting live `sleep 100000` children, shut it down and
      check that no child is left.
  measure.py spawn-floor LABEL --n N
      Time forking and exec'ing N `sleep 100000` from this process (the floor), then stop them.
  measure.py count-sleeps MARKER
      How many `sleep 100000` processes run whose parent's command line contains MARKER.
  measure.py check-slipway HOME N SLIPWAY
      Fail unless `slipway status --output json` shows N ready resources in `dev` and N
      `sleep 100000` processes run under supervisors of HOME.
  measure.py serve-pass --slipway S --home H --config C --repo URL --n N --runs R [--poll-ms 20]
      `slipway serve` over a repository that yields N environments: once untimed-ish (the
      first sync, recorded for the record), then R restarts, each timed from launch to the
      first /healthz and to the end of the start-up reconcile pass (N reconciles counted by
      /metrics, none running); the serve process's CPU time, VmRSS and VmHWM once settled,
      and the time of a POST /api/v1/refresh (fetch + discover) afterwards.
  measure.py push --slipway S --home H --config C --repo-dir D --runs R [--poll-ms 20]
      `slipway serve` over D (static `dev` tracking main, an exposed process): R times, commit
      a new VERSION to main, POST /api/v1/refresh at once and time until the preview URL
      answers the new version; interleaved with the app's own start-up (python3 app.py by
      hand, time to its first answer).
  measure.py previews --slipway S --home H --config C --repo-dir D --runs R --work DIR
                      --script FILE --supervisord FILE [--poll-ms 20]
      R rounds of: a new commit pushed as branch feature/bench-N, POST /api/v1/refresh, time
      until its preview URL answers (slipway); the same commit brought up by FILE, a shell
      script with git + nohup; and by supervisord from a git export. Each is checked (3
      processes live) and torn down (no process left) untimed.
  measure.py prs --slipway S --home H --base-config C --repo-dir D --runs R --work DIR
                 --fixtures F
      A fake GitHub API in this process (FakeGitHub), then `slipway serve` over D with C plus
      `[forge.github]` pointing at it (token and webhook secret made for the run); a warm-up
      and R rounds of one pull request: a commit published as refs/pull/N/head, a signed
      `pull_request` `opened` delivery (GitHub's example from F, @octokit/webhooks-examples),
      timed until the plan comment's POST reaches the fake; another commit, `synchronize`,
      timed until its PATCH; each checked (3 environments, status success, one comment),
      settled (pr-N deployed), then, untimed for the webhook, the same 3 plans with
      `slipway plan --env E --ref SHA` on the same home, through
      `GET /api/v1/environments/E/plan`, and a `git fetch` of a mirror; then `closed`.
  measure.py pr-skip REASON
      Record that section 7 did not run, and why.
  measure.py ui --slipway S --home H --config C --repo-dir D --n N --runs R --work DIR
                --chromedriver P --chromium P
      `slipway serve` over D (N environments: section 3's home, or a fresh one, synced first),
      once the controller is idle: GET /api/v1/environments with a bearer token from Python and
      from curl (time, bytes; the gzip size it would have). Then chromedriver on a free port,
      spoken to over W3C WebDriver (urllib + JSON), and per run (+1 warm-up) a fresh headless
      Chromium session: log in through the form, open the dashboard again (a new document),
      times on the page's clock until the table holds the N rows and until the next frame is
      painted; the JS heap; a search typed key by key, the filter cleared and applied in one
      step each; a new commit on one environment's branch and POST /api/v1/refresh, until its
      row shows the commit. chromedriver and Chromium run in DIR and are checked to be gone.
  measure.py ui-skip REASON
      Record that section 8 did not run, and why.
  measure.py pg-check --url URL
      Exit 0 and describe the PostgreSQL server at URL if it answers and its user may create
      databases and roles, and the libpq tools are on PATH; else exit 1 saying why (stdout).
  measure.py pg-skip REASON
      Record that section 6 did not run, and why.
  measure.py pg-dbs --url URL --slipway S --config C --repo R --floor-repo F --homes DIR
                    --prefix P --n N --runs R
      R rounds, the order of the three ways rotating: N sequential `slipway apply --env eI`
      (stack R: one postgres.database per environment; a fresh home under DIR per round), then
      N `slipway destroy`; N `createdb P...`, then N `dropdb`; N `createuser` + `createdb -O`,
      then N `dropdb` + `dropuser`; then the floors: the same with stack F (a `file` resource),
      N `slipway validate` of F, N `slipway --version` and N `createdb --version`. One sample
      = the wall time of the N commands; each batch follows an untimed CHECKPOINT and is
      checked afterwards (N databases, or none). The libpq tools are run from their directory
      when PATH's are Debian's pg_wrapper (see pg_tools).
  measure.py pg-clones --url URL --slipway S --config C --homes DIR --prefix P --template T
                       --rows N --runs R --repo-file-copy R1 --repo-wal-log R2
      Make the template T (N rows, ~50 MB at 600,000), then a warm-up and R rounds of, per
      strategy: `slipway apply` of stack R1/R2's environment (a clone of T) and `createdb -T T
      -S STRATEGY`, each timed alone after a CHECKPOINT, checked (N rows in the clone) and
      dropped untimed.
  measure.py pg-cleanup --url URL --slipway S --config C --homes DIR --prefix P
      Destroy every environment of the homes under DIR that still records a database, then
      drop by SQL what they still record and everything named P*; exit 1 if anything is left.
  measure.py reap MARKER
      SIGKILL every process whose command line contains MARKER or whose working directory
      is under it (a unique temp dir: only processes this benchmark started), and the
      `sleep 100000` children of those.
"""

import datetime
import gzip
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

SLEEP_CMDLINE = b"sleep\x00100000\x00"


def record(label, samples, unit="s", **extra):
    path = os.environ.get("BENCH_RESULTS")
    line = json.dumps({"label": label, "unit": unit, "samples": samples, **extra})
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
    shown = ", ".join(f"{s:.3f}" if unit == "s" else str(s) for s in samples)
    print(f"  {label}: {shown} {unit}", file=sys.stderr)


def split_args(argv):
    """Options before `--`, the command after it."""
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


def cmd_time(label, argv):
    opts, cmd = split_args(argv)
    runs = int(opts.get("runs", 5))
    warmup = int(opts.get("warmup", 0))
    expect = int(opts.get("expect", 0))
    meta = json.loads(opts.get("meta", "{}"))
    for _ in range(warmup):
        run_checked(cmd, expect)
    runs = [run_checked(cmd, expect) for _ in range(runs)]
    record(label, [wall for wall, _ in runs], cpu=[cpu for _, cpu in runs], **meta)


def cmd_rss(label, argv):
    opts, cmd = split_args(argv)
    expect = int(opts.get("expect", 0))
    meta = json.loads(opts.get("meta", "{}"))
    if os.access("/usr/bin/time", os.X_OK):
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "BENCH_MAXRSS %M", *cmd],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        err = proc.stderr.decode(errors="replace")
        code = proc.returncode
        kib = [int(l.split()[1]) for l in err.splitlines() if l.startswith("BENCH_MAXRSS ")]
        if not kib:
            sys.exit(f"measure.py: /usr/bin/time gave no figure:\n{err[-2000:]}")
        kib, how = kib[-1], "/usr/bin/time -f %M"
    else:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        kib, how = usage.ru_maxrss, "wait4(2) ru_maxrss"
    if code != expect:
        sys.exit(f"measure.py: `{' '.join(cmd)}` exited {code}, expected {expect}")
    record(label, [kib], unit="KiB", how=how, **meta)


def cmd_instr(label, argv):
    """Instructions executed by ARGV (valgrind's callgrind), immune to the machine's load; with
    --profile FILE, the top functions by inclusive instructions are written to FILE as JSON."""
    opts, cmd = split_args(argv)
    expect = int(opts.get("expect", 0))
    meta = json.loads(opts.get("meta", "{}"))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if proc.returncode != expect:
            sys.stderr.write(proc.stderr[-3000:])
            sys.exit(f"measure.py: valgrind {' '.join(cmd)} exited {proc.returncode}")
        total = [int(l.split()[-1]) for l in proc.stderr.splitlines() if "Collected :" in l]
        if not total:
            sys.exit("measure.py: callgrind reported no instruction count")
        if "profile" in opts:
            annotated = subprocess.run(
                ["callgrind_annotate", "--inclusive=yes", "--threshold=100", out],
                capture_output=True,
                text=True,
            ).stdout
            with open(opts["profile"], "w") as f:
                json.dump({"total": total[0], "functions": top_functions(annotated)}, f)
    record(label, [total[0]], unit="instructions", **meta)


def top_functions(annotated, limit=40):
    """(inclusive instructions, where) of the largest entries naming this project's code, the
    state database or the allocator, one per function."""
    best = {}
    for line in annotated.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*?)(?: \[[^\]]*\])?$", line)
        if not m:
            continue
        where = m.group(2)
        fm = re.match(r"(.*?\.(?:rs|c|S|h)|\?\?\?):(.*)", where)
        path, func = (fm.group(1), fm.group(2).strip()) if fm else ("", where)
        func = re.sub(r" \([\d,]+x\)$", "", func)
        if not re.match(r"<?slipway_|sqlite3Reprepare$|sqlite3_prepare|__memcmp|malloc$|free$", func):
            continue
        count = int(m.group(1).replace(",", ""))
        # Code inlined from the standard library is listed under the library's file: keep the
        # file as a hint of what it was (e.g. slice/cmp.rs = comparisons).
        key = (func, path.rsplit("/library/", 1)[-1] if "/rustc/" in path else "")
        if count > best.get(key, 0):
            best[key] = count
    rows = sorted(((c, f, p) for (f, p), c in best.items()), reverse=True)[:limit]
    return [{"instructions": c, "function": f, "inlined_from": p} for c, f, p in rows]


def processes():
    """(pid, ppid, cmdline) of every process we can read."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        out.append((int(entry), ppid, cmdline))
    return out


def sleeps_under(parent_pred):
    procs = processes()
    by_pid = {pid: cmdline for pid, _, cmdline in procs}
    return [
        pid
        for pid, ppid, cmdline in procs
        if cmdline == SLEEP_CMDLINE and ppid in by_pid and parent_pred(ppid, by_pid[ppid])
    ]


def settle(count, want, timeout=3.0):
    """count() until it returns want or timeout passes: a process caught mid-exec shows an
    empty command line for a moment."""
    deadline = time.perf_counter() + timeout
    while True:
        got = count()
        if got == want or time.perf_counter() > deadline:
            return got
        time.sleep(0.02)


def count_sleeps(marker):
    m = marker.encode()
    return len(sleeps_under(lambda _pid, cmdline: m in cmdline))


def check_slipway(home, n, slipway):
    out = subprocess.run(
        [slipway, "--home", home, "status", "--env", "dev", "--output", "json"],
        check=True,
        capture_output=True,
    ).stdout
    envs = json.loads(out)
    envs = envs if isinstance(envs, list) else envs.get("environments", [envs])
    resources = [r for e in envs if e.get("name") == "dev" for r in e.get("resources", [])]
    ready = sum(1 for r in resources if r.get("status") == "ready")
    live = settle(lambda: count_sleeps(home), n)
    if ready != n or live != n:
        sys.exit(f"measure.py: expected {n} ready and {n} live, got {ready} ready, {live} live")
    print(f"  verified: {ready} ready in status, {live} live `sleep 100000`", file=sys.stderr)


def supervisord(label, argv):
    opts = dict(zip(argv[::2], argv[1::2]))
    conf = os.path.abspath(opts["--conf"])
    n = int(opts["--n"])
    poll = int(opts.get("--poll-ms", 20)) / 1000
    startsecs = opts.get("--startsecs")
    bindir = os.path.dirname(sys.executable)
    sock = os.path.join(os.path.dirname(conf), "supervisor.sock")
    # Imported here: only the venv that has supervisor needs it.
    import xmlrpc.client

    from supervisor.xmlrpc import SupervisorTransport

    for stale in (sock,):
        if os.path.exists(stale):
            os.unlink(stale)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [os.path.join(bindir, "supervisord"), "-n", "-c", conf],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        polls = 0
        deadline = t0 + 120
        while True:
            polls += 1
            # A fresh client per poll: a failed connection leaves the transport unusable. The
            # host in the URL is a placeholder: the transport speaks over the unix socket.
            server = xmlrpc.client.ServerProxy(
                "http://127.0.0.1",
                transport=SupervisorTransport(None, None, serverurl=f"unix://{sock}"),
            )
            try:
                infos = server.supervisor.getAllProcessInfo()
                running = sum(1 for i in infos if i["statename"] == "RUNNING")
            except (OSError, http.client.HTTPException, xmlrpc.client.Error):
                running = 0
            if running >= n:
                break
            if proc.poll() is not None:
                sys.exit(f"measure.py: supervisord exited with {proc.returncode}")
            if time.perf_counter() > deadline:
                sys.exit(f"measure.py: only {running}/{n} RUNNING after 120 s")
            time.sleep(poll)
        elapsed = time.perf_counter() - t0
        status = subprocess.run(
            [os.path.join(bindir, "supervisorctl"), "-c", conf, "status"],
            capture_output=True,
            text=True,
        ).stdout
        ctl_running = sum(1 for l in status.splitlines() if " RUNNING " in f" {l} ")
        live = settle(lambda: len(sleeps_under(lambda pid, _c: pid == proc.pid)), n)
        if ctl_running != n or live != n:
            sys.exit(
                f"measure.py: supervisorctl shows {ctl_running} RUNNING, {live} live sleeps; "
                f"expected {n}"
            )
        print(f"  verified: supervisorctl {ctl_running} RUNNING, {live} live", file=sys.stderr)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    left = settle(lambda: len(sleeps_under(lambda pid, _c: pid == proc.pid)), 0)
    if left:
        sys.exit(f"measure.py: {left} children of supervisord left after shutdown")
    record(label, [elapsed], polls=polls, startsecs=startsecs)


def spawn_floor(label, argv):
    """Fork and exec N `sleep 100000` from this process: the least any supervisor can take."""
    opts = dict(zip(argv[::2], argv[1::2]))
    n = int(opts["--n"])
    children = []
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            # Popen returns once the child's exec is under way (a failed exec raises here).
            children.append(
                subprocess.Popen(
                    ["sleep", "100000"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        elapsed = time.perf_counter() - t0
        me = os.getpid()
        live = settle(lambda: len(sleeps_under(lambda pid, _c: pid == me)), n)
        if live != n:
            sys.exit(f"measure.py: {live} of {n} sleeps live")
    finally:
        for child in children:
            child.kill()
        for child in children:
            child.wait()
    record(label, [elapsed])


def cwd_of(pid):
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def under(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


def reap(marker):
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
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if ours or children:
        print(f"  reaped {len(ours)} process(es) and {len(children)} child(ren)", file=sys.stderr)


# --- the controller: slipway serve ----------------------------------------------------------------

SERVE_LINE = re.compile(r"slipway serve: API http://([0-9.]+:[0-9]+)/api/v1")


def request(addr, method, path, host=None, token=None, timeout=10):
    """(status, body) of one request on a fresh connection; (0, why) if it failed."""
    hostname, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(hostname, int(port), timeout=timeout)
    headers = {}
    if host:
        headers["Host"] = host
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=b"" if method == "POST" else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as e:
        return 0, str(e)
    finally:
        conn.close()


def api(addr, token, method, path):
    status, body = request(addr, method, path, token=token, timeout=60)
    if status != 200:
        sys.exit(f"measure.py: {method} {path} answered {status}: {body[:500]}")
    return json.loads(body)


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


def cpu_seconds(pid):
    """User + system CPU time of pid (all its threads) so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid):
    """VmRSS and VmHWM (peak RSS) of pid, in KiB, from /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_token(slipway, home):
    return subprocess.run(
        [slipway, "--home", home, "token", "create", "--role", "admin", "--name", "bench"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


class Serve:
    """`slipway serve --listen 127.0.0.1:0`, its stderr appended to HOME/serve.log."""

    def __init__(self, slipway, home, config, repo, prefix=()):
        """prefix: a command the server runs under (`perf record ... --`)."""
        self.log_path = os.path.join(home, "serve.log")
        self.log = open(self.log_path, "ab")
        self.offset = self.log.tell()
        self.addr = None
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [*prefix, slipway, "--home", home, "--config", config, "serve", "--repo", repo,
             "--listen", "127.0.0.1:0"],
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

    def stop(self):
        if self.proc.poll() is None:
            # The server itself (under a wrapper, the wrapper then ends with it).
            try:
                os.kill(self.pid or self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.pid and self.pid != self.proc.pid and not zombie(self.pid):
            os.kill(self.pid, signal.SIGKILL)
        self.log.close()


def wait_pass(serve, n, poll, timeout, want_synced=None):
    """Polls /metrics until N reconciles are counted and none runs (and, if asked, that many
    environments are recorded synced). Returns (seconds since launch, the metrics, seconds
    since launch when the first reconcile was seen counted, scrapes made).

    A scrape is not free for the server (it reads every environment's record to count them
    by state), so the polling adapts: it sleeps half the time the pass looks likely to need
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


def perf_profile(data, out, limit=16):
    """The functions of slipway's crates (and lock waits, memcmp, sqlite) with the largest
    shares of the samples in `perf record` DATA, inclusive of callees, written to OUT."""
    text = subprocess.run(
        ["perf", "report", "-i", data, "--children", "--sort", "symbol", "--stdio",
         "-g", "none", "--percent-limit", "0.5"],
        capture_output=True, text=True,
    ).stdout
    samples = re.search(r"# Samples: (\S+)", text)
    rows = []
    for line in text.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+([\d.]+)%\s+\[\.\]\s+(.*?)\s*$", line)
        if not m or m.group(3).endswith("(inlined)"):
            continue
        name = re.sub(r"\s+-\s+-$", "", m.group(3))
        if re.match(r"<?slipway_|<std::sys::sync::mutex::futex::Mutex>::lock_contended|__memcmp|"
                    r"sqlite3_step$", name):
            rows.append({"function": name, "children": float(m.group(1)),
                         "self": float(m.group(2))})
    # The same name twice (copies of one function in several crates): one row, summed.
    merged = {}
    for r in rows:
        if r["function"] in merged:
            merged[r["function"]]["children"] += r["children"]
            merged[r["function"]]["self"] += r["self"]
        else:
            merged[r["function"]] = r
    rows = sorted(merged.values(), key=lambda r: -r["children"])[:limit]
    # Leaf functions (comparisons, lock waits, sqlite) say little alone: name their callers in
    # Slipway's crates, from the call graph.
    for r in rows:
        if r["function"].startswith("slipway_") or r["function"].startswith("<slipway_"):
            continue
        graph = subprocess.run(
            ["perf", "report", "-i", data, "--no-children", "--sort", "symbol", "--stdio",
             "-g", "caller,0.5,callee,function,percent", "--symbols", r["function"]],
            capture_output=True, text=True,
        ).stdout
        callers = {}
        for m in re.finditer(r"--([\d.]+)%--(.+)", graph):
            name = m.group(2).strip()
            if re.match(r"<?slipway_", name) and not name.endswith("(inlined)"):
                callers[name] = callers.get(name, 0.0) + float(m.group(1))
        r["callers"] = sorted(callers.items(), key=lambda c: -c[1])[:2]
    with open(out, "w") as f:
        json.dump({"samples": samples.group(1) if samples else "?", "functions": rows}, f)


def file_offsets(binary, names):
    """File offsets of functions (by demangled name) in an ELF executable, for uprobes."""
    segments = []
    for line in subprocess.run(["readelf", "-lW", binary], capture_output=True,
                               text=True).stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["LOAD"] and "E" in parts[6:-1]:
            segments.append((int(parts[1], 16), int(parts[2], 16), int(parts[4], 16)))
    out = {}
    for line in subprocess.run(["nm", "-C", binary], capture_output=True,
                               text=True).stdout.splitlines():
        addr, _, rest = line.partition(" ")
        kind, _, name = rest.partition(" ")
        if name in names and kind in ("t", "T"):
            a = int(addr, 16)
            for offset, vaddr, size in segments:
                if vaddr <= a < vaddr + size:
                    out[name] = a - vaddr + offset
    return out


PROBED = {
    "next_due": "slipway_controller::queue::Queue::next_due",
    "pop_due": "slipway_controller::queue::Queue::pop_due",
}


def probe_counts(slipway, home, config, repo, n, poll):
    """Calls of the PROBED functions during one restart pass, counted with uprobes (`perf
    probe` + `perf stat`); {} when that is not possible here. The probes are removed after."""
    group = "slipway_bench"
    offsets = file_offsets(slipway, set(PROBED.values()))
    counts = {}
    try:
        events = []
        for short, name in PROBED.items():
            if name not in offsets:
                return {}
            subprocess.run(["perf", "probe", "-q", "-x", slipway, "-a",
                            f"{group}:{short}=0x{offsets[name]:x}"],
                           check=True, capture_output=True)
            events.append(f"{group}:{short}")
        out = os.path.join(home, "perf-stat.txt")
        serve = Serve(slipway, home, config, repo, prefix=(
            "perf", "stat", "-x", ",", "-o", out, "-e", ",".join(events), "--"))
        try:
            serve.wait_healthy()
            wait_pass(serve, n, poll, timeout=300)
        finally:
            serve.stop()
        with open(out) as f:
            for line in f:
                fields = line.strip().split(",")
                if len(fields) > 2 and fields[2].startswith(group + ":"):
                    counts[fields[2].split(":", 1)[1]] = int(fields[0])
    except (subprocess.CalledProcessError, OSError, ValueError):
        return {}
    finally:
        subprocess.run(["perf", "probe", "-q", "-d", f"{group}:*"], capture_output=True)
    return counts


def serve_pass(argv):
    opts = dict(zip(argv[::2], argv[1::2]))
    slipway, home, config = opts["--slipway"], opts["--home"], opts["--config"]
    repo = opts["--repo"]
    n, runs = int(opts["--n"]), int(opts["--runs"])
    poll = int(opts.get("--poll-ms", 20)) / 1000
    token = make_token(slipway, home)
    meta = {"n": n}
    # The first start records the N environments and creates their files: setup, timed once.
    serve = Serve(slipway, home, config, repo)
    try:
        serve.wait_healthy()
        first, m, _, _ = wait_pass(serve, n, 0.2, timeout=900, want_synced=n)
        record("envs/first-sync", [first], cpu=[cpu_seconds(serve.pid)], **meta)
        record("envs/first-sync-hwm", [memory_kib(serve.pid)["VmHWM"]], unit="KiB", **meta)
    finally:
        serve.stop()
    # One warm-up restart, then the timed ones.
    for run in range(runs + 1):
        serve = Serve(slipway, home, config, repo)
        try:
            startup = serve.wait_healthy()
            done, m, first, scrapes = wait_pass(serve, n, poll, timeout=300)
            cpu = cpu_seconds(serve.pid)
            count = m["slipway_reconcile_duration_seconds_count"]
            if synced(m) != n or m.get("slipway_reconcile_failures_total", 0) or count != n:
                sys.exit(f"measure.py: after the pass {synced(m):.0f}/{n} synced, "
                         f"{count:.0f} reconciles, "
                         f"{m.get('slipway_reconcile_failures_total'):.0f} failed")
            time.sleep(0.5)  # settled: nothing runs until the requeue (5 min) or a drift tick
            mem = memory_kib(serve.pid)
            # What one scrape costs the server, to tell how much the polling disturbed.
            c0 = cpu_seconds(serve.pid)
            for _ in range(20):
                serve.metrics()
            scrape_cpu = (cpu_seconds(serve.pid) - c0) / 20
            t = time.perf_counter()
            api(serve.addr, token, "POST", "/api/v1/refresh")
            refresh = time.perf_counter() - t
            after = serve.metrics() or {}
        finally:
            serve.stop()
        if run == 0:
            print(f"  warm-up restart: {done:.3f} s", file=sys.stderr)
            continue
        record("envs/pass", [done], cpu=[cpu], **meta)
        record("envs/startup", [startup], **meta)
        record("envs/first-reconcile", [first], **meta)
        record("envs/scrapes", [scrapes], unit="scrapes", **meta)
        record("envs/scrape-cpu", [scrape_cpu], **meta)
        record("envs/pass-after-startup", [done - startup], **meta)
        record("envs/reconcile-sum", [m["slipway_reconcile_duration_seconds_sum"]], **meta)
        record("envs/rss", [mem["VmRSS"]], unit="KiB", how="/proc/PID/status VmRSS", **meta)
        record("envs/hwm", [mem["VmHWM"]], unit="KiB", how="/proc/PID/status VmHWM", **meta)
        record("envs/refresh", [refresh], **meta,
               requeued=after.get("slipway_reconcile_duration_seconds_count", count) - count)
    if "--perf" in opts:
        # One more restart under `perf record` (untimed: perf slows it): where the CPU goes.
        data = opts["--perf"] + ".data"
        serve = Serve(slipway, home, config, repo, prefix=(
            "perf", "record", "-q", "-F", "499", "--call-graph", "dwarf,16384", "-o", data, "--"))
        try:
            serve.wait_healthy()
            done, _, _, _ = wait_pass(serve, n, poll, timeout=300)
        finally:
            serve.stop()
        perf_profile(data, opts["--perf"])
        os.unlink(data)
        print(f"  profiled a pass under perf ({done:.3f} s with perf's overhead)", file=sys.stderr)
        # And one more, counting calls of the queue's scans with uprobes (untimed too).
        for short, calls in probe_counts(slipway, home, config, repo, n, poll).items():
            record(f"envs/calls-{short}", [calls], unit="calls", function=PROBED[short], **meta)


# --- push to running, and a new branch to its preview --------------------------------------------

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


def new_commit(repo, version, index):
    """A commit on top of main whose VERSION file says `version`, on no branch yet (what a
    push brings). Made with a private index so the work tree is left alone."""
    git(repo, "read-tree", "main", GIT_INDEX_FILE=index)
    blob = git(repo, "hash-object", "-w", "--stdin", stdin=version + "\n")
    git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},VERSION",
        GIT_INDEX_FILE=index)
    tree = git(repo, "write-tree", GIT_INDEX_FILE=index)
    return git(repo, "commit-tree", tree, "-p", "main", "-m", f"version {version}")


def wait_answer(addr, host, want, poll, timeout=60, alive=None):
    """Polls GET / until it answers 200 with body `want`. Returns (seconds, how many answers
    before were not 200: refused connections, 404s, 502s; the old version answering 200 is
    not counted)."""
    t0 = time.perf_counter()
    errors = 0
    while True:
        status, body = request(addr, "GET", "/", host=host, timeout=5)
        if status == 200 and body.strip() == want:
            return time.perf_counter() - t0, errors
        errors += status != 200
        if alive:
            alive()
        if time.perf_counter() - t0 > timeout:
            sys.exit(f"measure.py: {host or addr} did not answer {want!r} within {timeout} s "
                     f"(last: {status} {body[:300]})")
        time.sleep(poll)


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


def export(repo, ref, dest):
    """`git archive REF | tar -x -C DEST`."""
    os.makedirs(dest, exist_ok=True)
    archive = subprocess.Popen(["git", "-C", repo, "archive", ref], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", dest], stdin=archive.stdout, check=True)
    archive.stdout.close()
    if archive.wait() != 0:
        sys.exit(f"measure.py: git archive {ref} failed")


def python_under(root):
    """Live python processes whose working directory is under root."""
    out = []
    for pid, _, cmdline in processes():
        if cmdline.split(b"\0")[0].rsplit(b"/", 1)[-1].startswith(b"python") and under(
            cwd_of(pid), root
        ):
            out.append(pid)
    return out


def app_start(src, version, poll):
    """Seconds from launching `python3 app.py` by hand to its first answer."""
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        ["python3", os.path.join(src, "app.py"), "--port", str(port)],
        cwd=src, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_answer(f"127.0.0.1:{port}", None, f"bench app {version}", poll, timeout=30)
        return time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait()


def push(argv):
    opts = dict(zip(argv[::2], argv[1::2]))
    slipway, home, config = opts["--slipway"], opts["--home"], opts["--config"]
    repo = opts["--repo-dir"]
    runs = int(opts["--runs"])
    poll = int(opts.get("--poll-ms", 20)) / 1000
    token = make_token(slipway, home)
    by_hand = os.path.join(home, "by-hand")
    export(repo, "main", by_hand)
    serve = Serve(slipway, home, config, f"file://{repo}")
    try:
        serve.wait_healthy()
        host = f"dev.bench-push.localhost:{serve.port}"
        # The first deployment (creates the environment): untimed.
        wait_answer(serve.addr, host, "bench app v0", 0.1, timeout=120, alive=serve.check_alive)
        for i in range(1, runs + 1):
            record("push/app-start", [app_start(by_hand, "v0", poll)])
            version = f"v{i}"
            with open(os.path.join(repo, "VERSION"), "w") as f:
                f.write(version + "\n")
            git(repo, "commit", "-q", "--no-gpg-sign", "-am", f"version {version}")
            commit = git(repo, "rev-parse", "HEAD")
            t0, w0 = time.perf_counter(), time.time()
            api(serve.addr, token, "POST", "/api/v1/refresh")
            refreshed = time.perf_counter() - t0
            # Until then the old version answers: a failed request would be downtime.
            _, errors = wait_answer(serve.addr, host, f"bench app {version}", poll,
                                    alive=serve.check_alive)
            total = time.perf_counter() - t0
            d = finished_deployment(serve, token, "dev", commit)
            started, finished = wall_s(d["started_at"]) - w0, wall_s(d["finished_at"]) - w0
            record("push/slipway", [total])
            record("push/failed-requests", [errors], unit="requests")
            record("push/refresh", [refreshed])
            record("push/deploy-started", [started])
            record("push/deploy-duration", [finished - started])
            time.sleep(0.3)
    finally:
        reap(by_hand)  # an app started by hand that a signal caught mid-Popen
        serve.stop()
        subprocess.run([slipway, "--home", home, "destroy", "--env", "dev", "--yes"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    left = settle(lambda: len(python_under(os.path.join(home, "envs"))), 0)
    if left:
        sys.exit(f"measure.py: {left} process(es) of dev left after destroy")


def preview_supervisord_conf(d, src, port):
    lines = [
        "[unix_http_server]", f"file={d}/supervisor.sock", "",
        "[supervisord]", f"logfile={d}/supervisord.log", f"pidfile={d}/supervisord.pid",
        f"childlogdir={d}", "loglevel=info", "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[supervisorctl]", f"serverurl=unix://{d}/supervisor.sock", "",
        "[program:web]", f"command=python3 {src}/app.py --port {port}", f"directory={src}", "",
    ]
    for w in ("a", "b"):
        lines += [f"[program:worker-{w}]", f"command=python3 {src}/worker.py {w}",
                  f"directory={src}", ""]
    path = os.path.join(d, "supervisord.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def spawn_gap(log):
    """Seconds between `supervisord started` and its first `spawned:` in its log, if both."""
    stamps = {}
    with open(log, errors="replace") as f:
        for line in f:
            for key, marker in (("started", "supervisord started"), ("spawned", "spawned: ")):
                if marker in line and key not in stamps:
                    at = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                    stamps[key] = at.timestamp()
    if len(stamps) == 2:
        return stamps["spawned"] - stamps["started"]
    return None


def stop_pids(pids, what):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    def alive():
        return sum(1 for p in pids if os.path.exists(f"/proc/{p}") and not zombie(p))

    if settle(alive, 0, timeout=10):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        sys.exit(f"measure.py: {what} did not stop on SIGTERM")


def zombie(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 :].split()[0] == b"Z"
    except OSError:
        return True


def previews(argv):
    opts = dict(zip(argv[::2], argv[1::2]))
    slipway, home, config = opts["--slipway"], opts["--home"], opts["--config"]
    repo = opts["--repo-dir"]
    runs, work, script = int(opts["--runs"]), opts["--work"], opts["--script"]
    supervisord_bin = opts["--supervisord"]
    poll = int(opts.get("--poll-ms", 20)) / 1000
    os.makedirs(work, exist_ok=True)
    index = os.path.join(work, "index")
    token = make_token(slipway, home)
    serve = Serve(slipway, home, config, f"file://{repo}")
    try:
        serve.wait_healthy()
        for i in range(1, runs + 1):
            # -- slipway: push the branch, refresh, wait for the preview URL
            version = f"slipway-{i}"
            sha = new_commit(repo, version, index)
            branch, env = f"feature/bench-{i}", f"br-feature-bench-{i}"
            host = f"{env}.bench-preview.localhost:{serve.port}"
            t0, w0 = time.perf_counter(), time.time()
            git(repo, "branch", branch, sha)
            branched = time.perf_counter() - t0
            api(serve.addr, token, "POST", "/api/v1/refresh")
            refreshed = time.perf_counter() - t0
            wait_answer(serve.addr, host, f"bench app {version}", poll, alive=serve.check_alive)
            total = time.perf_counter() - t0
            d = finished_deployment(serve, token, env, sha)
            started, finished = wall_s(d["started_at"]) - w0, wall_s(d["finished_at"]) - w0
            env_dir = os.path.join(home, "envs", env)
            live = settle(lambda: len(python_under(env_dir)), 3)
            if live != 3:
                sys.exit(f"measure.py: {live} live processes in {env}, expected 3")
            record("previews/slipway", [total])
            record("previews/slipway-branch", [branched])
            record("previews/slipway-refresh", [refreshed])
            record("previews/slipway-deploy-started", [started])
            record("previews/slipway-deploy-duration", [finished - started])
            # The branch goes: the refresh destroys the environment.
            git(repo, "branch", "-D", branch)
            api(serve.addr, token, "POST", "/api/v1/refresh")
            status, _ = request(serve.addr, "GET", f"/api/v1/environments/{env}", token=token)
            left = settle(lambda: len(python_under(env_dir)), 0)
            if status != 404 or left:
                sys.exit(f"measure.py: {env} still there after its branch went "
                         f"(GET: {status}, {left} processes)")
            print("  verified: 3 processes, then destroyed with its branch", file=sys.stderr)

            # -- by hand: a shell script with git + nohup + curl
            version = f"hand-{i}"
            sha = new_commit(repo, version, index)
            d_hand = os.path.join(work, f"hand-{i}")
            port = free_port()
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                ["bash", script, repo, f"hand/bench-{i}", sha, d_hand, str(port)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                start_new_session=True,
            )
            try:
                _, err = proc.communicate(timeout=60)
                total = time.perf_counter() - t0
                if proc.returncode != 0:
                    sys.exit(f"measure.py: {script} exited {proc.returncode}: {err[-2000:]}")
                pids = []
                for name in ("web", "worker-a", "worker-b"):
                    with open(os.path.join(d_hand, f"{name}.pid")) as f:
                        pids.append(int(f.read()))
                status, body = request(f"127.0.0.1:{port}", "GET", "/")
                if status != 200 or body.strip() != f"bench app {version}" or any(
                    zombie(p) for p in pids
                ):
                    sys.exit(f"measure.py: the script's preview is wrong: {status} {body!r}")
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            stop_pids(pids, "the script's processes")
            record("previews/script", [total])
            git(repo, "branch", "-D", f"hand/bench-{i}")
            shutil.rmtree(d_hand)

            # -- supervisord from a git export
            version = f"sv-{i}"
            sha = new_commit(repo, version, index)
            d_sv = os.path.join(work, f"sv-{i}")
            port = free_port()
            t0 = time.perf_counter()
            git(repo, "branch", f"sv/bench-{i}", sha)
            export(repo, f"sv/bench-{i}", os.path.join(d_sv, "src"))
            conf = preview_supervisord_conf(d_sv, os.path.join(d_sv, "src"), port)
            sv = subprocess.Popen([supervisord_bin, "-n", "-c", conf], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                def sv_alive():
                    if sv.poll() is not None:
                        sys.exit(f"measure.py: supervisord exited with {sv.returncode}")
                wait_answer(f"127.0.0.1:{port}", None, f"bench app {version}", poll,
                            alive=sv_alive)
                total = time.perf_counter() - t0
                kids = settle(lambda: len(python_under(d_sv)), 3)
                if kids != 3:
                    sys.exit(f"measure.py: supervisord runs {kids} programs, expected 3")
            finally:
                if sv.poll() is None:
                    sv.send_signal(signal.SIGTERM)
                    try:
                        sv.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        sv.kill()
                        sv.wait()
            if settle(lambda: len(python_under(d_sv)), 0):
                sys.exit("measure.py: programs of supervisord left after its shutdown")
            record("previews/supervisord", [total])
            gap = spawn_gap(os.path.join(d_sv, "supervisord.log"))
            if gap is not None:
                record("previews/supervisord-spawn-gap", [gap])
            git(repo, "branch", "-D", f"sv/bench-{i}")
            shutil.rmtree(d_sv)
    finally:
        # A signal that lands inside Popen can leave its child unknown to us: by directory.
        reap(work)
        serve.stop()
        # Whatever preview a failure left behind, the polite way.
        for env in sorted(os.listdir(os.path.join(home, "envs")) if os.path.isdir(
                os.path.join(home, "envs")) else []):
            subprocess.run([slipway, "--home", home, "destroy", "--env", env, "--yes"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


# --- 7. a pull request's webhook to its plan comment ------------------------------------------

PR_REPO = "acme/shop"  # what the fake GitHub serves and every payload names
PR_REPO_ID = 700_000_001
PR_BOT = "slipway-bench"  # Slipway's login on the fake (`bot_login`)
PR_AUTHOR = "octo-dev"
PLAN_MARKER = "<!-- slipway:plan -->"
EXAMPLE_REPO = "Codertocat/Hello-World"  # the repository of @octokit/webhooks-examples


class FakeGitHub:
    """The part of GitHub's REST API that `slipway serve` calls for a pull request's plan
    (crates/slipway-forge/src/github.rs), for one repository, in this process: a threaded
    http.server on 127.0.0.1:0 (HTTP/1.1 keep-alive, Nagle off, each answer written in one
    send). It checks the bearer token, keeps comments and commit statuses, answers the open
    pull requests the benchmark announced, and logs every request with the time.perf_counter()
    at which its body had been read: the same clock as the webhook's sender. Anything else is a
    404, kept in `unhandled`."""

    def __init__(self, repo, bot, token):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.repo, self.bot, self.token = repo, bot, token
        self.cond = threading.Condition()
        self.prs = {}  # number -> the pull request object of its last delivery
        self.comments = {}  # id -> {"pr", "body", "edits", "created_at", "updated_at"}
        self.next_id = 4_000_000_001
        self.log = []  # {"at", "method", "path", "status", "json"} in arrival order
        self.unhandled = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self):
                fake.handle(self, "GET")

            def do_POST(self):
                fake.handle(self, "POST")

            def do_PATCH(self):
                fake.handle(self, "PATCH")

            def do_PUT(self):
                fake.handle(self, "PUT")

            def do_DELETE(self):
                fake.handle(self, "DELETE")

            def log_message(self, fmt, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def handle(self, h, method):
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(h.rfile.readline().split(b";")[0], 16)
                chunk = h.rfile.read(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            length = int(h.headers.get("Content-Length") or 0)
            body = h.rfile.read(length) if length else b""
        at = time.perf_counter()
        path, _, query = h.path.partition("?")
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        with self.cond:
            try:
                status, answer = self.answer(method, path, query, data, h.headers)
            except Exception as e:  # a bug here must not look like Slipway's fault
                status, answer = 500, {"message": f"the fake GitHub failed: {e!r}"}
            self.log.append({"at": at, "method": method, "path": path, "status": status,
                             "json": data})
            if status == 404:
                self.unhandled.append(f"{method} {h.path}")
            self.cond.notify_all()
        out = json.dumps(answer).encode()
        reason = {200: "OK", 201: "Created", 401: "Unauthorized", 404: "Not Found",
                  422: "Unprocessable Entity"}.get(status, "Status")
        head = (f"HTTP/1.1 {status} {reason}\r\n"
                "Content-Type: application/json; charset=utf-8\r\n"
                f"Content-Length: {len(out)}\r\n"
                "X-GitHub-Api-Version-Selected: 2022-11-28\r\n"
                "X-RateLimit-Limit: 5000\r\nX-RateLimit-Remaining: 4999\r\n")
        if h.close_connection:
            head += "Connection: close\r\n"
        h.wfile.write((head + "\r\n").encode() + out)

    def now_iso(self):
        return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def user(self, login):
        return {"login": login, "id": 9_000_001, "node_id": "U_kgDOBench",
                "type": "Bot" if login.endswith("[bot]") else "User", "site_admin": False,
                "url": f"{self.url}/users/{login}", "html_url": f"https://github.com/{login}"}

    def comment_json(self, cid):
        c = self.comments[cid]
        api = f"{self.url}/repos/{self.repo}"
        return {"id": cid, "node_id": f"IC_bench{cid}", "url": f"{api}/issues/comments/{cid}",
                "html_url": f"https://github.com/{self.repo}/pull/{c['pr']}#issuecomment-{cid}",
                "issue_url": f"{api}/issues/{c['pr']}", "body": c["body"],
                "user": self.user(self.bot), "created_at": c["created_at"],
                "updated_at": c["updated_at"], "author_association": "NONE",
                "performed_via_github_app": None}

    def answer(self, method, path, query, data, headers):
        if headers.get("Authorization", "") != f"Bearer {self.token}":
            return 401, {"message": "Bad credentials"}
        if method == "GET" and path == "/user":
            return 200, self.user(self.bot)
        prefix = f"/repos/{self.repo}/"
        if not path.startswith(prefix):
            return 404, {"message": "Not Found"}
        rest = path[len(prefix):].split("/")
        writes = method in ("POST", "PATCH")
        if writes and not isinstance(data, dict):
            return 400, {"message": "Problems parsing JSON"}
        match (method, rest):
            case ("GET", ["pulls"]):
                # Every open one (GitHub's default, newest first) on one page: the adapter
                # stops at a short page.
                return 200, [self.prs[n] for n in sorted(self.prs, reverse=True)
                             if self.prs[n]["state"] == "open"]
            case ("GET", ["pulls", n]) if n.isdigit() and int(n) in self.prs:
                return 200, self.prs[int(n)]
            case ("GET", ["pulls", n, "reviews"]) if n.isdigit() and int(n) in self.prs:
                # Nobody reviews in the benchmark: Slipway asks when a head moves (approvals
                # that name no commit go stale), GitHub's always name one.
                return 200, []
            case ("GET", ["issues", n, "comments"]) if n.isdigit():
                return 200, [self.comment_json(i) for i in sorted(self.comments)
                             if self.comments[i]["pr"] == int(n)]
            case ("POST", ["issues", n, "comments"]) if n.isdigit():
                if not data.get("body"):
                    return 422, {"message": "Validation Failed"}
                cid, self.next_id = self.next_id, self.next_id + 1
                now = self.now_iso()
                self.comments[cid] = {"pr": int(n), "body": data["body"], "edits": 0,
                                      "created_at": now, "updated_at": now}
                return 201, self.comment_json(cid)
            case ("PATCH", ["issues", "comments", cid]) if cid.isdigit() and (
                    int(cid) in self.comments):
                if not data.get("body"):
                    return 422, {"message": "Validation Failed"}
                c = self.comments[int(cid)]
                c["body"], c["updated_at"] = data["body"], self.now_iso()
                c["edits"] += 1
                return 200, self.comment_json(int(cid))
            case ("POST", ["statuses", sha]) if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", sha):
                if data.get("state") not in ("pending", "success", "failure", "error"):
                    return 422, {"message": "Validation Failed"}
                sid, self.next_id = self.next_id, self.next_id + 1
                now = self.now_iso()
                return 201, {"id": sid, "node_id": f"SC_bench{sid}", "state": data["state"],
                             "description": data.get("description"),
                             "target_url": data.get("target_url"),
                             "context": data.get("context", "default"),
                             "url": f"{self.url}/repos/{self.repo}/statuses/{sha}",
                             "created_at": now, "updated_at": now,
                             "creator": self.user(self.bot)}
        return 404, {"message": "Not Found",
                     "documentation_url": "https://docs.github.com/rest"}

    def open_pr(self, pull_request):
        with self.cond:
            self.prs[pull_request["number"]] = pull_request

    def close_pr(self, pull_request):
        with self.cond:
            self.prs[pull_request["number"]] = pull_request

    def mark(self):
        with self.cond:
            return len(self.log)

    def wait(self, since, pred, what, timeout=60):
        """The first request logged from index `since` on that `pred` accepts, waiting for it."""
        deadline = time.perf_counter() + timeout
        with self.cond:
            while True:
                for r in self.log[since:]:
                    if pred(r):
                        return r
                left = deadline - time.perf_counter()
                if left <= 0:
                    recent = "\n".join(f"  {r['method']} {r['path']} -> {r['status']}"
                                       for r in self.log[-15:])
                    sys.exit(f"measure.py: the fake GitHub saw no {what} within {timeout} s; "
                             f"its last requests:\n{recent}")
                self.cond.wait(left)


def map_strings(v, f):
    if isinstance(v, str):
        return f(v)
    if isinstance(v, list):
        return [map_strings(x, f) for x in v]
    if isinstance(v, dict):
        return {k: map_strings(x, f) for k, x in v.items()}
    return v


def pr_examples(fixtures):
    """GitHub's own `pull_request` deliveries (@octokit/webhooks-examples), the first of each
    action."""
    path = os.path.join(fixtures, "webhooks-examples", "api.github.com", "index.json")
    with open(path) as f:
        index = json.load(f)
    out = {}
    for entry in index:
        if entry.get("name") == "pull_request":
            for x in entry.get("examples", []):
                out.setdefault(x.get("action"), x)
    missing = {"opened", "synchronize", "closed"} - set(out)
    if missing:
        sys.exit(f"measure.py: {path} has no pull_request example for {sorted(missing)}")
    return out


def pr_payload(examples, action, number, head_ref, sha, before=None):
    """GitHub's example `action` delivery, renamed to PR_REPO, for pull request `number` from
    branch `head_ref` (same repository: not a fork) into main, its head at `sha`."""
    x = examples[action]
    old_sha, old_n = x["pull_request"]["head"]["sha"], x["number"]
    owner, name = PR_REPO.split("/")

    def fix(s):
        s = s.replace(EXAMPLE_REPO, PR_REPO).replace(old_sha, sha)
        return re.sub(rf"/(pulls|pull|issues)/{old_n}(?!\d)", rf"/\g<1>/{number}", s)

    v = map_strings(x, fix)
    v["number"] = number
    if action == "synchronize":
        v["before"], v["after"] = before, sha
    for repo in (v["repository"], v["pull_request"]["head"]["repo"],
                 v["pull_request"]["base"]["repo"]):
        repo.update(full_name=PR_REPO, name=name, id=PR_REPO_ID, fork=False,
                    default_branch="main")
        repo["owner"]["login"] = owner
    p = v["pull_request"]
    p.update(number=number, title=f"Bench change {number}", state=(
        "closed" if action == "closed" else "open"), merged=False, merged_at=None,
        merge_commit_sha=None, html_url=f"https://github.com/{PR_REPO}/pull/{number}")
    p["user"]["login"] = v["sender"]["login"] = PR_AUTHOR
    p["head"].update(ref=head_ref, sha=sha, label=f"{owner}:{head_ref}")
    p["base"].update(ref="main", label=f"{owner}:main")
    p["head"]["user"]["login"] = p["base"]["user"]["login"] = owner
    return v


def send_webhook(addr, secret, event, delivery, body):
    """POSTs a delivery signed as GitHub signs it; (status, body) of the answer."""
    import hashlib
    import hmac

    signature = hmac.new(secret, body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/bench",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Hook-ID": "1",
        "X-GitHub-Hook-Installation-Target-Type": "repository",
        "X-GitHub-Hook-Installation-Target-ID": str(PR_REPO_ID),
        "X-Hub-Signature-256": f"sha256={signature}",
    }
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        # A bytes body goes out in one send with the headers (http.client joins them).
        conn.request("POST", "/webhooks/github", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def commit_on(repo, parent, path, text, index, message):
    """A commit on top of `parent` with `path` = `text`, on no branch (private index)."""
    git(repo, "read-tree", parent, GIT_INDEX_FILE=index)
    blob = git(repo, "hash-object", "-w", "--stdin", stdin=text)
    git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}",
        GIT_INDEX_FILE=index)
    tree = git(repo, "write-tree", GIT_INDEX_FILE=index)
    return git(repo, "commit-tree", tree, "-p", parent, "-m", message)


def cpu_with_children(pid):
    """User + system CPU time of pid and of the children it reaped (the git it runs)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def prs(argv):
    import secrets
    import uuid

    opts = dict(zip(argv[::2], argv[1::2]))
    slipway, home, repo = opts["--slipway"], opts["--home"], opts["--repo-dir"]
    runs, work, fixtures = int(opts["--runs"]), opts["--work"], opts["--fixtures"]
    os.makedirs(work, exist_ok=True)
    examples = pr_examples(fixtures)
    index = os.path.join(work, "index")
    envs = ("prod", "qa")  # + pr-N: what every pull request into main touches

    # A token and a webhook secret for this run only, to the server through its environment
    # (the CLI plans below inherit them, with the same engine configuration).
    api_token_gh, hook_secret = secrets.token_hex(20), secrets.token_hex(32)
    os.environ.update(GITHUB_TOKEN=api_token_gh, SLIPWAY_WEBHOOK_SECRET=hook_secret)
    fake = FakeGitHub(PR_REPO, PR_BOT, api_token_gh)
    config = os.path.join(work, "engine.toml")
    with open(opts["--base-config"]) as f:
        text = f.read().rstrip() + "\n"
    text += (f'[forge.github]\nrepository = "{PR_REPO}"\napi_url = "{fake.url}"\n'
             f'bot_login = "{PR_BOT}"\n# token: $GITHUB_TOKEN; webhook secret: '
             "$SLIPWAY_WEBHOOK_SECRET (both made for the run)\n")
    with open(config, "w") as f:
        f.write(text)
    record("pr/config", [], unit="note", config=re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT",
                                                       text))
    # A mirror like the controller's, to time one `git fetch` of the same refs by hand.
    mirror = os.path.join(work, "mirror.git")
    subprocess.run(["git", "clone", "--mirror", "--quiet", f"file://{repo}", mirror], check=True)
    token = make_token(slipway, home)
    main_sha = git(repo, "rev-parse", "main")
    main_yaml = git(repo, "show", "main:slipway.yaml") + "\n"
    if 'release: "main"' not in main_yaml:
        sys.exit("measure.py: the stack has no `release: \"main\"` line to change (gen.py prs)")
    serve = Serve(slipway, home, config, f"file://{repo}")

    comment_path = f"/repos/{PR_REPO}/issues/{{}}/comments"
    edit_prefix = f"/repos/{PR_REPO}/issues/comments/"
    status_path = f"/repos/{PR_REPO}/statuses/{{}}"

    def deployed(env, sha):
        """Waits until env is recorded (discovery makes it) and its latest deployment, of sha,
        has finished."""
        deadline = time.perf_counter() + 120
        while request(serve.addr, "GET", f"/api/v1/environments/{env}", token=token)[0] != 200:
            serve.check_alive()
            if time.perf_counter() > deadline:
                sys.exit(f"measure.py: {env} not recorded within 120 s")
            time.sleep(0.02)
        finished_deployment(serve, token, env, sha, timeout=120)

    def measure(n, action, sha, before, warm):
        """One delivery, timed from sending it to the plan comment arriving at the fake; then,
        once pr-N runs that commit, the three plans by the CLI and through the API, and a
        `git fetch` of the mirror."""
        payload = pr_payload(examples, action, n, f"feature/bench-{n}", sha, before)
        fake.open_pr(payload["pull_request"])
        body = json.dumps(payload).encode()
        since = fake.mark()
        cpu0 = cpu_with_children(serve.pid)
        t0 = time.perf_counter()
        status, reply = send_webhook(serve.addr, hook_secret.encode(), "pull_request",
                                     str(uuid.uuid4()), body)
        acked = time.perf_counter() - t0
        if status != 202 or '"handled":true' not in reply.replace(" ", ""):
            sys.exit(f"measure.py: the {action} webhook of #{n} answered {status}: {reply}")
        comments, statuses = comment_path.format(n), status_path.format(sha)

        def plan_write(r):
            j = r["json"]
            return (r["status"] in (200, 201) and isinstance(j, dict)
                    and PLAN_MARKER in (j.get("body") or "") and sha[:12] in j["body"]
                    and ((r["method"], r["path"]) == ("POST", comments)
                         or (r["method"] == "PATCH" and r["path"].startswith(edit_prefix))))

        def plan_status(final):
            return lambda r: (r["method"] == "POST" and r["path"] == statuses
                              and isinstance(r["json"], dict)
                              and r["json"].get("context") == "slipway/plan"
                              and (r["json"].get("state") != "pending") == final)

        write = fake.wait(since, plan_write, f"plan comment on #{n} for {sha[:12]}")
        cpu = cpu_with_children(serve.pid) - cpu0
        done = fake.wait(since, plan_status(True), f"final slipway/plan status of {sha[:12]}")
        pending = fake.wait(since, plan_status(False), f"pending status of {sha[:12]}")
        listed = fake.wait(since, lambda r: (r["method"], r["path"]) == ("GET", comments),
                           f"list of #{n}'s comments")
        with fake.cond:
            requests = fake.log[since:fake.log.index(done) + 1]
            plan_comments = [c for c in fake.comments.values()
                             if c["pr"] == n and PLAN_MARKER in c["body"]]
        # Checked, untimed: the comment covers the three environments, the status says so,
        # and there is one plan comment per pull request, created then edited.
        text = write["json"]["body"]
        if done["json"]["state"] != "success" or "3 environments" not in text or any(
                f"`{e}`" not in text and f" {e} " not in text for e in (*envs, f"pr-{n}")):
            sys.exit(f"measure.py: #{n} at {sha[:12]}: status {done['json']}, comment:\n{text}")
        want = "POST" if action == "opened" else "PATCH"
        if write["method"] != want or len(plan_comments) != 1:
            sys.exit(f"measure.py: #{n} {action}: the plan comment came by {write['method']} "
                     f"(expected {want}); {len(plan_comments)} plan comments")
        # Settled: the refresh that follows made or moved pr-N, and its deployment is done.
        deployed(f"pr-{n}", sha)
        time.sleep(0.2)
        cli = [run_checked([slipway, "--home", home, "--config", config, "plan", "--env", e,
                            "--repo", repo, "--ref", sha], 0) for e in (*envs, f"pr-{n}")]
        # What a CLI plan pays besides planning: its process start, and the commit read from
        # git, parsed and checked.
        start = run_checked([slipway, "--version"], 0)[0]
        valid = run_checked([slipway, "validate", "--repo", repo, "--ref", sha], 0)[0]
        api_t = []
        for e in (*envs, f"pr-{n}"):
            t = time.perf_counter()
            api(serve.addr, token, "GET", f"/api/v1/environments/{e}/plan")
            api_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run(["git", "-C", mirror, "fetch", "--prune", "--quiet", "origin"],
                       check=True)
        fetch = time.perf_counter() - t
        total = write["at"] - t0
        print(f"  #{n} {action}: webhook → plan comment {total:.3f} s; the 3 plans by the CLI "
              f"{sum(w for w, _ in cli):.3f} s{' (warm-up)' if warm else ''}", file=sys.stderr)
        if warm:
            return
        label = f"pr/{action}"
        record(label, [total], cpu=[cpu])
        record(f"{label}-ack", [acked])
        record(f"{label}-pending", [pending["at"] - t0])
        record(f"{label}-list", [listed["at"] - t0])
        record(f"{label}-success", [done["at"] - t0])

        def shape(path):
            path = path.replace(sha, "{sha}").replace(f"/issues/{n}/", "/issues/{n}/")
            return re.sub(r"/comments/\d+$", "/comments/{id}", path)

        record(f"{label}-requests", [len(requests)], unit="requests",
               calls=[f"{r['method']} {shape(r['path'])}" for r in requests])
        record(f"{label}-plans-cli", [sum(w for w, _ in cli)], cpu=[sum(c for _, c in cli)])
        for role, (wall, c) in zip(("prod", "qa", "preview"), cli):
            record(f"pr/plan-cli/{role}", [wall], cpu=[c])
        record(f"{label}-plans-api", [sum(api_t)])
        record(f"{label}-overhead", [total - sum(w for w, _ in cli)])
        record(f"{label}-overhead-api", [total - sum(api_t)])
        record(f"{label}-fetch", [fetch])
        record("pr/cli-version", [start])
        record("pr/cli-validate", [valid])

    def close(n, sha):
        payload = pr_payload(examples, "closed", n, f"feature/bench-{n}", sha)
        fake.close_pr(payload["pull_request"])
        status, reply = send_webhook(serve.addr, hook_secret.encode(), "pull_request",
                                     str(uuid.uuid4()), json.dumps(payload).encode())
        if status != 202:
            sys.exit(f"measure.py: the closed webhook of #{n} answered {status}: {reply}")
        deadline = time.perf_counter() + 120
        while request(serve.addr, "GET", f"/api/v1/environments/pr-{n}", token=token)[0] != 404:
            serve.check_alive()
            if time.perf_counter() > deadline:
                sys.exit(f"measure.py: pr-{n} still there 120 s after #{n} was closed")
            time.sleep(0.05)
        time.sleep(0.2)  # the refresh that destroyed it is over

    try:
        serve.wait_healthy()
        for e in envs:
            deployed(e, main_sha)
        # The start-up catch-up (the open pull requests listed: none yet) is over.
        fake.wait(0, lambda r: r["path"] == f"/repos/{PR_REPO}/pulls", "catch-up list")
        time.sleep(0.3)
        # Round 0 warms up (the first fetch of PR refs, connections to the fake): untimed.
        for rnd in range(runs + 1):
            n = rnd + 1
            print(f"  {'warm-up' if rnd == 0 else f'round {rnd}/{runs}'}: pull request #{n}",
                  file=sys.stderr)
            git_ref = f"refs/pull/{n}/head"
            first = commit_on(repo, "main", "slipway.yaml",
                              main_yaml.replace('release: "main"', f'release: "pr-{n}-a"'),
                              index, f"#{n}: first push")
            git(repo, "update-ref", git_ref, first)
            measure(n, "opened", first, None, rnd == 0)
            second = commit_on(repo, first, "slipway.yaml",
                               main_yaml.replace('release: "main"', f'release: "pr-{n}-b"'),
                               index, f"#{n}: second push")
            git(repo, "update-ref", git_ref, second)
            measure(n, "synchronize", second, first, rnd == 0)
            close(n, second)
    finally:
        serve.stop()
        fake.close()
    if fake.unhandled:
        sys.exit("measure.py: slipway called GitHub's API outside what the fake answers "
                 "(404):\n  " + "\n  ".join(fake.unhandled[:20]))


# --- 8. the web UI with many environments --------------------------------------------------------

# The dashboard's rows (crates/slipway-server/ui/app.js: `environmentRow`).
UI_ROWS = "#environments tbody tr[data-env]"

# Runs before any script of every document the session opens (CDP
# Page.addScriptToEvaluateOnNewDocument: the page's Content-Security-Policy does not apply to
# it): notes, on the page's clock (performance.now(), 0 = the navigation's start), when the
# table first holds all N rows (a MutationObserver: its callback runs right after the script
# that appended them, before layout and paint), the frame after that (requestAnimationFrame,
# then a task: style, layout and paint of that frame are done), a form's submission (the login),
# and the long tasks (> 50 ms) of the main thread.
UI_INIT = """
(() => {
  const want = %d;
  const b = window.__bench = { rows: null, painted: null, submit: null, longtasks: [] };
  const observer = new MutationObserver(() => {
    if (document.querySelectorAll(%s).length < want) return;
    b.rows = performance.now();
    observer.disconnect();
    requestAnimationFrame(() => setTimeout(() => { b.painted = performance.now(); }, 0));
  });
  observer.observe(document, { childList: true, subtree: true });
  document.addEventListener("submit", () => { b.submit = performance.now(); }, true);
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) b.longtasks.push([e.startTime, e.duration]);
    }).observe({ type: "longtask", buffered: true });
  } catch (_) {}
})();
"""

# What the page's load did, from its own timings (ms on the page's clock).
UI_LOAD_FACTS = """
const b = window.__bench;
const nav = performance.getEntriesByType("navigation")[0] || {};
const res = (suffix) => performance.getEntriesByType("resource")
  .filter((e) => new URL(e.name).pathname === suffix)
  .map((e) => ({ start: e.startTime, end: e.responseEnd, transfer: e.transferSize,
                 encoded: e.encodedBodySize, decoded: e.decodedBodySize }));
const tasks = b.longtasks.filter(([start]) => start < b.painted);  // up to the first render
return {
  rows: b.rows, painted: b.painted, submit: b.submit, dcl: nav.domContentLoadedEventEnd || null,
  list: res("/api/v1/environments"), whoami: res("/api/v1/whoami"),
  longtask_max: Math.max(0, ...tasks.map(([, d]) => d)),
  blocking: tasks.reduce((sum, [, d]) => sum + Math.max(0, d - 50), 0),
  dom_nodes: document.getElementsByTagName("*").length,
  row_count: document.querySelectorAll(%s).length,
  heap: performance.memory ? performance.memory.usedJSHeapSize : null,
};
"""

# One filter change as a keystroke makes it (the search box's `input` event, which app.js
# handles synchronously): the handler's time, and until the next frame is painted.
UI_FILTER = """
return (async () => {
  const q = document.querySelector("#filter-q");
  const frame = () => new Promise((ok) => requestAnimationFrame(() => setTimeout(ok, 0)));
  await frame();
  const t0 = performance.now();
  q.value = arguments[0];
  q.dispatchEvent(new Event("input", { bubbles: true }));
  const t1 = performance.now();
  const rows = document.querySelectorAll(%s).length;
  await frame();
  return { handler: t1 - t0, frame: performance.now() - t0, rows };
})();
"""

# Before real typing (WebDriver's Element Send Keys, one key event after another): from the
# first keydown until the table shows `want` rows, and the frame after.
UI_TYPE_ARM = """
const want = arguments[0];
const b = window.__type = { first: null, rows: null, painted: null };
const q = document.querySelector("#filter-q");
q.addEventListener("keydown", () => { if (b.first === null) b.first = performance.now(); },
                   { capture: true });
const observer = new MutationObserver(() => {
  if (b.first === null || document.querySelectorAll(%s).length !== want) return;
  b.rows = performance.now();
  observer.disconnect();
  requestAnimationFrame(() => setTimeout(() => { b.painted = performance.now(); }, 0));
});
observer.observe(document.querySelector("#environments tbody"), { childList: true });
"""

# A live update: POST /api/v1/refresh from the page (with the bearer token: no cookie, no CSRF
# token needed) after a new commit on the environment's branch; times (ms from the request
# sent) until the answer, the first event on the page's stream (#live's data-events), the
# page's own GET of that environment, its row showing the new commit, and the frame after.
UI_LIVE = """
return (async () => {
  const [token, name, sha] = arguments;
  const live = document.querySelector("#live");
  const events0 = Number(live.dataset.events || 0);
  const r = { answered: null, status: null, event: null, row: null, frame: null, epoch: null };
  const shows = () => {
    const tr = document.querySelector(`#environments tbody tr[data-env="${CSS.escape(name)}"]`);
    const code = tr && tr.querySelector('[data-col="commit"] code');
    return !!code && code.title === sha;
  };
  let t0 = performance.now();
  const observer = new MutationObserver(() => {
    const now = performance.now();
    if (r.event === null && Number(live.dataset.events || 0) > events0) r.event = now - t0;
    if (r.row === null && shows()) {
      r.row = now - t0;
      requestAnimationFrame(() => setTimeout(() => { r.frame = performance.now() - t0; }, 0));
    }
  });
  observer.observe(document.body, { childList: true, subtree: true, attributes: true,
                                    attributeFilter: ["data-events"] });
  t0 = performance.now();
  r.epoch = performance.timeOrigin + t0;
  const answer = await fetch("/api/v1/refresh", {
    method: "POST", headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
  r.answered = performance.now() - t0;
  r.status = answer.status;
  const deadline = performance.now() + 30000;
  while (r.frame === null && performance.now() < deadline) {
    await new Promise((ok) => setTimeout(ok, 10));
  }
  observer.disconnect();
  const path = `/api/v1/environments/${encodeURIComponent(name)}`;
  r.gets = performance.getEntriesByType("resource")
    .filter((e) => new URL(e.name).pathname === path && e.startTime >= t0)
    .map((e) => [e.startTime - t0, e.responseEnd - t0]);
  return r;
})();
"""


class WebDriverError(Exception):
    pass


class WebDriver:
    """Debian's chromedriver on a free port of 127.0.0.1, spoken to over the W3C WebDriver
    protocol with urllib and JSON (no client library), plus chromedriver's CDP passthrough
    (`goog/cdp/execute`). Its working directory and log are under `work`, so every process it
    and Chromium start is found there (measure.py reap)."""

    def __init__(self, chromedriver, work):
        self.work = work
        self.port = free_port()
        self.log = os.path.join(work, "chromedriver.log")
        self.base = f"http://127.0.0.1:{self.port}"
        self.sid = None
        self.proc = subprocess.Popen(
            [chromedriver, f"--port={self.port}", f"--log-path={self.log}"],
            cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.perf_counter() + 30
        while True:
            try:
                if (self.call("GET", "/status", timeout=2) or {}).get("ready"):
                    break
            except (WebDriverError, OSError):
                pass
            if self.proc.poll() is not None:
                raise WebDriverError(f"chromedriver exited with {self.proc.returncode}: "
                                     f"{self.log_tail()}")
            if time.perf_counter() > deadline:
                raise WebDriverError(f"chromedriver not ready after 30 s: {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, n=1500):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return "(no log)"

    def call(self, method, path, body=None, timeout=120):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read() or b"{}").get("value")
        except urllib.error.HTTPError as e:
            try:
                value = json.loads(e.read()).get("value", {})
                why = f"{value.get('error')}: {value.get('message', '')[:1500]}"
            except ValueError:
                why = str(e)
            raise WebDriverError(f"{method} {path}: {e.code} {why}") from None

    def session(self, chromium, profile, window="1440,900"):
        """A new session: headless Chromium on a fresh profile (as crates/slipway/tests/util/
        browser.rs starts it), its JS heap figures precise (`performance.memory`)."""
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": [
                "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--hide-scrollbars",
                "--force-device-scale-factor=1", f"--window-size={window}", "--lang=en-US",
                "--enable-precise-memory-info", f"--user-data-dir={profile}",
            ]},
        }}}
        value = self.call("POST", "/session", caps)
        self.sid = value["sessionId"]
        return value.get("capabilities", {})

    def s(self, method, path, body=None, timeout=120):
        return self.call(method, f"/session/{self.sid}{path}", body, timeout)

    def js(self, script, *args, timeout=120):
        """Runs script (a function body) in the page; a returned promise is awaited."""
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)}, timeout)

    def cdp(self, cmd, **params):
        return self.s("POST", "/goog/cdp/execute", {"cmd": cmd, "params": params})

    def goto(self, url):
        self.s("POST", "/url", {"url": url})

    def element(self, css):
        value = self.s("POST", "/element", {"using": "css selector", "value": css})
        return next(iter(value.values()))

    def type_into(self, css, text):
        self.s("POST", f"/element/{self.element(css)}/value", {"text": text})

    def click(self, css):
        self.s("POST", f"/element/{self.element(css)}/click", {})

    def wait_js(self, script, what, timeout=60, args=()):
        """Polls script until it returns a true value; returns it."""
        deadline = time.perf_counter() + timeout
        while True:
            got = self.js(script, *args)
            if got:
                return got
            if time.perf_counter() > deadline:
                state = self.js("return [location.href, document.title, "
                                "(document.querySelector('#main') || document.body)"
                                ".innerText.slice(0, 400)];")
                raise WebDriverError(f"timed out waiting for {what}; the page: {state}")
            time.sleep(0.02)

    def end_session(self):
        if self.sid:
            sid, self.sid = self.sid, None
            try:
                self.call("DELETE", f"/session/{sid}", timeout=30)
            except (WebDriverError, OSError):
                pass

    def close(self):
        self.end_session()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def ui_get(addr, token, path, accept_encoding=None):
    """(seconds, status, headers, body bytes) of one GET with a bearer token, on a fresh
    connection, the whole body read."""
    hostname, port = addr.rsplit(":", 1)
    headers = {"Authorization": f"Bearer {token}"}
    if accept_encoding:
        headers["Accept-Encoding"] = accept_encoding
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(hostname, int(port), timeout=60)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - t0
        return elapsed, resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def ui_matches(env, q):
    """app.js's text filter (`matches`), for the rows a search must leave."""
    fields = [env.get(k) for k in ("name", "kind", "tracked_ref", "commit", "desired_commit",
                                   "owner", "message", "url")]
    fields.append(env.get("family") or env.get("definition"))
    return q.lower() in " ".join(str(f) for f in fields if f).lower()


def ui_api(serve, token, runs):
    """GET /api/v1/environments from Python and from curl (the baseline: the payload without a
    browser); its size, and what gzip would make of it."""
    path = "/api/v1/environments"
    _, status, headers, body = ui_get(serve.addr, token, path, accept_encoding="gzip")
    if status != 200:
        sys.exit(f"measure.py: GET {path} answered {status}: {body[:300]!r}")
    encoding = headers.get("content-encoding", "")
    if encoding == "gzip":
        body = gzip.decompress(body)
    elif encoding:
        sys.exit(f"measure.py: GET {path} answered Content-Encoding {encoding}: not decoded here")
    envs = json.loads(body)["environments"]
    gz = len(gzip.compress(body, compresslevel=6))
    curl = shutil.which("curl")
    for run in range(runs + 1):
        t, status, _, got = ui_get(serve.addr, token, path)
        if status != 200:
            sys.exit(f"measure.py: GET {path} answered {status}")
        t0 = time.perf_counter()
        json.loads(got)
        parse = time.perf_counter() - t0
        if curl:
            out = subprocess.run(
                [curl, "-sS", "-o", "/dev/null", "-w", "%{time_total} %{size_download}",
                 "-H", f"Authorization: Bearer {token}", f"http://{serve.addr}{path}"],
                check=True, capture_output=True, text=True).stdout.split()
        # Two at once, as the page asks for it on load (see ui_run): the slower of the two.
        pair = []
        threads = [threading.Thread(target=lambda: pair.append(ui_get(serve.addr, token,
                                                                      path)[0]))
                   for _ in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if run == 0:
            continue  # warm-up
        record("ui/api-python-pair", [max(pair)])
        record("ui/api-python", [t], bytes=len(got), gzip_bytes=gz,
               content_encoding=encoding or None, n=len(envs))
        record("ui/api-python-parse", [parse])
        if curl:
            record("ui/api-curl", [float(out[0])], bytes=int(out[1]))
    return envs


def ui_metrics(wd):
    """Chromium's counters of the page's main-thread work (CDP Performance.getMetrics:
    cumulative seconds within a document), or None."""
    try:
        return {m["name"]: m["value"] for m in wd.cdp("Performance.getMetrics")["metrics"]}
    except (WebDriverError, KeyError, TypeError):
        return None


def ui_split(before, after):
    """Where the main thread's time went between two ui_metrics readings: style
    recalculation, layout, and all its tasks (which also hold scripts, paint and the rest)."""
    if not before or not after:
        return {}
    # (Its ScriptDuration is left out: it misses scripts run from a promise's continuation,
    # e.g. after a fetch, which is how app.js renders.)
    keys = {"style": "RecalcStyleDuration", "layout": "LayoutDuration", "tasks": "TaskDuration"}
    return {part: after[k] - before[k] for part, k in keys.items() if k in before and k in after}


def ui_run(wd, serve, chromium, profile, token, n, envs, q, live_env, repo, run, keep):
    """One fresh browser session: log in through the form, open the dashboard again (a new
    navigation with the session cookie), type a search, clear it, one live update. Records the
    samples when keep (else a warm-up)."""
    t0 = time.perf_counter()
    caps = wd.session(chromium, profile)
    session_start = time.perf_counter() - t0
    rec = record if keep else (lambda *a, **k: None)
    base = f"http://{serve.addr}"
    if not keep:
        record("ui/browser", [], unit="note", browser=caps.get("browserVersion", "?"),
               chromedriver=(caps.get("chrome") or {}).get("chromedriverVersion", "?")
               .split(" ")[0])
    try:
        wd.cdp("Page.addScriptToEvaluateOnNewDocument", source=UI_INIT % (n, json.dumps(UI_ROWS)))
        try:
            wd.cdp("Performance.enable")
        except WebDriverError:
            pass
        # -- log in through the form: from its submission to the N rows, in the same document
        wd.goto(base + "/")
        wd.wait_js("return !!document.querySelector('#token');", "the login form")
        wd.type_into("#token", token)
        wd.click("#login-submit")
        wd.wait_js("return window.__bench.painted !== null;", f"{n} rows after logging in")
        login = wd.js(UI_LOAD_FACTS % json.dumps(UI_ROWS))
        # -- open the dashboard again: a new document, the session cookie set (as a reload or a
        # bookmark does), from the navigation's start to the N rows in the table and painted
        wd.goto(base + "/")
        wd.wait_js("return window.__bench && window.__bench.painted !== null;",
                   f"{n} rows after opening the dashboard")
        # The page reads the list twice on load (see the report): let the second land too.
        try:
            wd.wait_js("return performance.getEntriesByType('resource').filter((e) => "
                       "new URL(e.name).pathname === '/api/v1/environments' && e.responseEnd > 0)"
                       ".length >= 2;", "the second read of the list", timeout=5)
        except WebDriverError:
            pass
        time.sleep(0.3)
        load = wd.js(UI_LOAD_FACTS % json.dumps(UI_ROWS))
        if load["row_count"] != n:
            sys.exit(f"measure.py: the dashboard shows {load['row_count']} rows, expected {n}")
        heap_gc = None
        try:
            wd.cdp("HeapProfiler.collectGarbage")
            heap_gc = wd.js("return performance.memory ? performance.memory.usedJSHeapSize "
                            ": null;")
        except WebDriverError:
            pass
        # -- the text filter: typed key by key, then one change each way
        want = sum(1 for e in envs if ui_matches(e, q))
        wd.js(UI_TYPE_ARM % json.dumps(UI_ROWS), want)
        wd.type_into("#filter-q", q)
        typed = wd.wait_js("const b = window.__type; return b.painted !== null && b;",
                           f"{want} rows after typing {q!r}", timeout=30)
        clear1 = wd.js(UI_FILTER % json.dumps(UI_ROWS), "")
        apply = wd.js(UI_FILTER % json.dumps(UI_ROWS), q)
        before = ui_metrics(wd)
        clear2 = wd.js(UI_FILTER % json.dumps(UI_ROWS), "")
        clear_split = ui_split(before, ui_metrics(wd))
        for what, got, expect in (("clear", clear1, n), ("filter", apply, want),
                                  ("clear", clear2, n)):
            if got["rows"] != expect:
                sys.exit(f"measure.py: {what} left {got['rows']} rows, expected {expect}")
        # -- a live update: a new commit on one environment's branch, POST /api/v1/refresh
        branch = "feature/" + live_env.split("feature-", 1)[1]
        tree = git(repo, "rev-parse", f"{branch}^{{tree}}")
        sha = git(repo, "commit-tree", tree, "-p", branch, "-m", f"bench ui run {run}")
        git(repo, "update-ref", f"refs/heads/{branch}", sha)
        before = ui_metrics(wd)
        upd = wd.js(UI_LIVE, token, live_env, sha, timeout=60)
        live_split = ui_split(before, ui_metrics(wd))
        if upd["status"] != 200 or upd["frame"] is None:
            sys.exit(f"measure.py: the live update of {live_env} did not show: {upd}")
        # The deployment's own times (wall clock, the server's record), against the page's
        # (performance.timeOrigin + now(): the same machine's clock).
        d = finished_deployment(serve, token, live_env, sha)
        deploy = [wall_s(d[k]) * 1000 - upd["epoch"] for k in ("started_at", "finished_at")]
        ms = 1e-3
        lst = min(load["list"], key=lambda e: e["start"]) if load["list"] else {}
        rec("ui/session-start", [session_start])
        rec("ui/login-rows", [(login["rows"] - login["submit"]) * ms])
        rec("ui/login-painted", [(login["painted"] - login["submit"]) * ms])
        rec("ui/load-rows", [load["rows"] * ms])
        rec("ui/load-painted", [load["painted"] * ms])
        rec("ui/load-dcl", [load["dcl"] * ms])
        if len(load["list"]) > 1:
            again = sorted(load["list"], key=lambda e: e["start"])[1]
            rec("ui/load-list2-start", [again["start"] * ms])
            rec("ui/load-list2-end", [again["end"] * ms])
        if lst:
            rec("ui/load-list-start", [lst["start"] * ms])
            rec("ui/load-list-end", [lst["end"] * ms])
            rec("ui/load-list-fetches", [len(load["list"])], unit="requests",
                transfer=lst["transfer"], encoded=lst["encoded"], decoded=lst["decoded"])
        if load["whoami"]:
            rec("ui/load-whoami-end", [load["whoami"][0]["end"] * ms])
        rec("ui/load-longtask-max", [load["longtask_max"] * ms])
        rec("ui/load-blocking", [load["blocking"] * ms])
        rec("ui/dom-nodes", [load["dom_nodes"]], unit="nodes")
        if load["heap"] is not None:
            rec("ui/heap", [load["heap"]], unit="B")
        if heap_gc is not None:
            rec("ui/heap-gc", [heap_gc], unit="B")
        rec("ui/filter-type", [(typed["rows"] - typed["first"]) * ms], query=q, rows=want)
        rec("ui/filter-type-painted", [(typed["painted"] - typed["first"]) * ms])
        rec("ui/filter-apply", [apply["handler"] * ms], rows=want)
        rec("ui/filter-apply-painted", [apply["frame"] * ms])
        rec("ui/filter-clear", [clear2["handler"] * ms], rows=n)
        rec("ui/filter-clear-painted", [clear2["frame"] * ms])
        for part, seconds in clear_split.items():
            rec(f"ui/filter-clear-{part}", [seconds])
        rec("ui/live-answered", [upd["answered"] * ms], environment=live_env)
        rec("ui/live-deploy-started", [deploy[0] * ms])
        rec("ui/live-deploy-finished", [deploy[1] * ms])
        if upd["event"] is not None:
            rec("ui/live-event", [upd["event"] * ms])
        if upd["gets"]:
            rec("ui/live-get-end", [upd["gets"][-1][1] * ms], gets=len(upd["gets"]))
        rec("ui/live-row", [upd["row"] * ms])
        rec("ui/live-painted", [upd["frame"] * ms])
        for part, seconds in live_split.items():
            rec(f"ui/live-{part}", [seconds])
    finally:
        wd.end_session()
        shutil.rmtree(profile, ignore_errors=True)


def ui(argv):
    opts = dict(zip(argv[::2], argv[1::2]))
    slipway, home, config = opts["--slipway"], opts["--home"], opts["--config"]
    repo = opts["--repo-dir"]
    n, runs, work = int(opts["--n"]), int(opts["--runs"]), opts["--work"]
    chromedriver, chromium = opts["--chromedriver"], opts["--chromium"]
    os.makedirs(work, exist_ok=True)
    token = make_token(slipway, home)
    serve = Serve(slipway, home, config, f"file://{repo}")
    wd = None
    try:
        serve.wait_healthy()
        # On a home section 3 left, a restart pass; on a fresh one, the first sync. Either way
        # the browser starts once the controller is idle.
        t, _, _, _ = wait_pass(serve, n, 0.05, timeout=900, want_synced=n)
        print(f"  {n} environments synced, the controller idle ({t:.1f} s after launch)",
              file=sys.stderr)
        envs = ui_api(serve, token, runs)
        if len(envs) != n:
            sys.exit(f"measure.py: the API lists {len(envs)} environments, expected {n}")
        names = sorted(e["name"] for e in envs)
        q = names[min(42, n - 1)].rsplit("-", 1)[-1]  # e.g. e0042: one row
        live_env = names[n // 2]
        try:
            wd = WebDriver(chromedriver, work)
        except WebDriverError as e:
            record("ui/skipped", [], unit="note", reason=f"chromedriver did not start: {e}")
            return
        for run in range(runs + 1):
            print(f"  {'warm-up' if run == 0 else f'run {run}/{runs}'}: a browser session",
                  file=sys.stderr)
            profile = os.path.join(work, f"profile-{run}")
            try:
                ui_run(wd, serve, chromium, profile, token, n, envs, q, live_env, repo, run,
                       keep=run > 0)
            except WebDriverError as e:
                if run == 0 and "session not created" in str(e):
                    record("ui/skipped", [], unit="note",
                           reason=f"Chromium did not start: {str(e)[:400]}")
                    return
                sys.exit(f"measure.py: WebDriver: {e}\n--- chromedriver log (tail)\n"
                         f"{wd.log_tail()}")
            serve.check_alive()
    finally:
        if wd:
            wd.close()
        serve.stop()
        # Chromium's processes run in `work` and name their profile there: give them a moment
        # to exit after their session, then kill any left (and say which).
        left = settle(lambda: len(ui_processes(work)), 0, timeout=5)
        if left:
            print(f"  still running after the sessions ended, killed: {ui_processes(work)}",
                  file=sys.stderr)
            for pid, _ in ui_processes(work):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    if settle(lambda: len(ui_processes(work)), 0):
        sys.exit(f"measure.py: browser process(es) left: {ui_processes(work)}")


def ui_processes(work):
    """(pid, command) of the live processes chromedriver and Chromium started: they run in
    work, or name its profiles or chromedriver's log (not `work` alone: this command's own
    command line, and its parents', name it too)."""
    marks = (os.path.join(work, "profile-").encode(), os.path.join(work, "chromedriver.log")
             .encode())
    return [(pid, cmd.replace(b"\0", b" ")[:120].decode(errors="replace"))
            for pid, _, cmd in processes()
            if cmd and pid != os.getpid()
            and (any(m in cmd for m in marks) or under(cwd_of(pid), work))]


# --- PostgreSQL: a database per environment ------------------------------------------------------

PG_TOOLS = ("psql", "createdb", "dropdb", "createuser", "dropuser")


def pg_tools():
    """{tool: the binary to run}, and whether PATH's are Debian's `pg_wrapper`: a Perl script
    that picks a client version and execs /usr/lib/postgresql/VERSION/bin/TOOL, tens of ms per
    call that are not createdb's. The baselines run the binaries themselves (the newest
    version installed, which is what the wrapper picks for a remote host)."""
    found = {t: shutil.which(t) for t in PG_TOOLS}
    if None in found.values():
        return found, False
    wrapped = any(os.path.basename(os.path.realpath(p)) == "pg_wrapper" for p in found.values())
    if wrapped:
        versions = sorted((d for d in os.listdir("/usr/lib/postgresql") if d.isdigit()),
                          key=int) if os.path.isdir("/usr/lib/postgresql") else []
        for v in reversed(versions):
            direct = {t: f"/usr/lib/postgresql/{v}/bin/{t}" for t in PG_TOOLS}
            if all(os.access(p, os.X_OK) for p in direct.values()):
                return direct, True
    return found, False
PG_NAME = re.compile(r"[a-z0-9_]{1,63}")
INTENT = ".postgres.database.json"


def qi(name):
    """A quoted identifier; only the plain names this benchmark makes are accepted."""
    if not PG_NAME.fullmatch(name):
        raise ValueError(f"not a benchmark name: {name!r}")
    return f'"{name}"'


class Pg:
    """The server of section 6, reached with the libpq command-line tools over TCP, as slipway
    reaches it (trust auth: a password is never given nor prompted for, `-w`)."""

    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("postgres", "postgresql") or u.password:
            sys.exit(f"measure.py: {url!r}: want postgres://USER@HOST:PORT/DB, no password")
        self.host = u.hostname or "127.0.0.1"
        self.port = str(u.port or 5432)
        self.user = urllib.parse.unquote(u.username or "postgres")
        self.dbname = u.path.lstrip("/") or "postgres"
        self.conn = ["-h", self.host, "-p", self.port, "-U", self.user, "-w"]
        self.bin, self.wrapped = pg_tools()
        # A server that does not answer fails the libpq tools in 5 s instead of hanging.
        os.environ["PGCONNECT_TIMEOUT"] = "5"

    def run(self, *statements, db=None, stop=True, timeout=600):
        """psql, one `-c` per statement (each in its own transaction, as DROP DATABASE
        needs); the CompletedProcess, output unaligned without headers."""
        cmd = [self.bin["psql"] or "psql", "-X", "-q", "-A", "-t", *self.conn, "-d",
               db or self.dbname]
        if stop:
            cmd += ["-v", "ON_ERROR_STOP=1"]
        for s in statements:
            cmd += ["-c", s]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def sql(self, *statements, db=None, timeout=600):
        """The output of the statements; exits on an error."""
        proc = self.run(*statements, db=db, timeout=timeout)
        if proc.returncode:
            sys.exit(f"measure.py: psql {statements!r} failed: {proc.stderr.strip()[-2000:]}")
        return proc.stdout.strip()

    def checkpoint(self):
        """An untimed CHECKPOINT before each timed batch: every batch starts with no dirty
        buffers to write, whatever the one before it left (a superuser's right; skipped if
        refused)."""
        self.run("CHECKPOINT", stop=False)

    def existing(self, names):
        """Which of names exist as databases, and as roles."""
        if not names:
            return set(), set()
        arr = "'{" + ",".join(qi(n)[1:-1] for n in sorted(names)) + "}'::text[]"
        dbs = self.sql(f"select datname from pg_database where datname = any({arr})")
        roles = self.sql(f"select rolname from pg_roles where rolname = any({arr})")
        return set(dbs.split()), set(roles.split())

    def prefixed(self, prefix):
        """Databases and roles whose names start with prefix (this run's own)."""
        qi(prefix)
        n = len(prefix)
        dbs = self.sql(f"select datname from pg_database where left(datname, {n}) = '{prefix}'")
        roles = self.sql(f"select rolname from pg_roles where left(rolname, {n}) = '{prefix}'")
        return set(dbs.split()), set(roles.split())


def pg_check(argv):
    """Exits 0 with a one-line description of the server when section 6 can run; else 1 with
    why not, on stdout (bench/run puts it in the report)."""
    opts = dict(zip(argv[::2], argv[1::2]))
    try:
        pg = Pg(opts["--url"])
    except SystemExit as e:
        print(e)
        sys.exit(1)
    missing = [t for t, path in pg.bin.items() if not path]
    if missing:
        print(f"{', '.join(missing)} not on PATH (Debian: postgresql-client)")
        sys.exit(1)
    where = f"{pg.user}@{pg.host}:{pg.port}"
    try:
        proc = pg.run(
            "select current_setting('server_version_num') || ' ' || (select case when "
            "rolsuper or (rolcreatedb and rolcreaterole) then 'yes' else 'no' end "
            "from pg_roles where rolname = current_user)",
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        print(f"PostgreSQL at {where} did not answer within 20 s")
        sys.exit(1)
    if proc.returncode:
        err = " ".join(proc.stderr.split())[:300]
        print(f"PostgreSQL at {where} does not answer: {err}")
        sys.exit(1)
    version, rights = proc.stdout.split()
    if rights != "yes":
        print(f"{pg.user} at {pg.host}:{pg.port} may not create databases and roles")
        sys.exit(1)
    print(f"PostgreSQL {int(version) // 10000}.{int(version) % 10000} at {where} (client tools: "
          f"{os.path.dirname(pg.bin['createdb'])})")


def pg_server_note(pg):
    """The server's version and the settings that decide what CREATE/DROP DATABASE cost."""
    names = ("server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_level",
             "shared_buffers", "max_wal_size", "checkpoint_timeout", "data_directory")
    # pg_settings lists only what this user may read (data_directory needs a superuser).
    out = pg.sql("select name || '=' || current_setting(name) from pg_settings where name = "
                 "any(array['" + "','".join(names) + "'])")
    settings = dict(line.split("=", 1) for line in out.splitlines())
    client = subprocess.run([pg.bin["createdb"], "--version"], capture_output=True,
                            text=True).stdout
    record("pg/server", [], unit="note", settings=settings, client=client.strip(),
           server=f"{pg.user}@{pg.host}:{pg.port}", bindir=os.path.dirname(pg.bin["createdb"]),
           wrapped=pg.wrapped)


def time_batch(cmds):
    """Runs the commands one after the other (each must exit 0): total wall time, and the CPU
    time (user + system) of the commands themselves."""
    cpu = 0.0
    t0 = time.perf_counter()
    for cmd in cmds:
        cpu += run_checked(cmd, 0)[1]
    return time.perf_counter() - t0, cpu


def intents(home):
    """{environment: generated name} of the databases slipway set out to create in home and
    has not dropped yet (the provider writes `<run>/<name>.postgres.database.json` before it
    touches the server, and removes it once the drop succeeded)."""
    out = {}
    envs = os.path.join(home, "envs")
    for env in sorted(os.listdir(envs)) if os.path.isdir(envs) else []:
        run = os.path.join(envs, env, "run")
        for f in sorted(os.listdir(run)) if os.path.isdir(run) else []:
            if f.endswith(INTENT):
                out[env] = f[: -len(INTENT)]
    return out


def check_slipway_dbs(pg, home, envs):
    """The generated names of envs' databases, once checked: each exists, owned by its role of
    the same name, with the ownership comment `slipway:<instance>:<env>/db`."""
    names = intents(home)
    if sorted(names) != sorted(envs):
        sys.exit(f"measure.py: {len(names)} intent records in {home}, expected {len(envs)}")
    arr = "'{" + ",".join(qi(n)[1:-1] for n in names.values()) + "}'::text[]"
    rows = pg.sql(
        "select d.datname || ' ' || r.rolname || ' ' || coalesce(shobj_description(d.oid, "
        f"'pg_database'), '-') from pg_database d join pg_roles r on r.oid = d.datdba "
        f"where d.datname = any({arr})"
    ).splitlines()
    found = {}
    for row in rows:
        db, owner, comment = row.split(" ", 2)
        found[db] = (owner, comment)
    for env, name in names.items():
        owner, comment = found.get(name, (None, None))
        if owner != name or not re.fullmatch(rf"slipway:[0-9a-f]+:{env}/db", comment or ""):
            sys.exit(f"measure.py: database {name} of {env}: owner {owner}, comment {comment!r}")
    return set(names.values())


def check_gone(pg, names, what):
    dbs, roles = pg.existing(names)
    if dbs or roles:
        sys.exit(f"measure.py: {what}: {len(dbs)} database(s) and {len(roles)} role(s) left, "
                 f"e.g. {sorted(dbs | roles)[:3]}")


def check_count(pg, prefix, n, what):
    dbs, _ = pg.prefixed(prefix)
    if len(dbs) != n:
        sys.exit(f"measure.py: {what}: {len(dbs)} databases named {prefix}*, expected {n}")


def pg_dbs(argv):
    opts = dict(zip(argv[::2], argv[1::2]))
    pg = Pg(opts["--url"])
    slipway, config = opts["--slipway"], opts["--config"]
    repo, floor_repo, homes = opts["--repo"], opts["--floor-repo"], opts["--homes"]
    prefix, n, runs = opts["--prefix"], int(opts["--n"]), int(opts["--runs"])
    qi(prefix)
    meta = {"n": n}
    envs = [f"e{i}" for i in range(n)]
    os.makedirs(homes, exist_ok=True)

    def sw(home, *args):
        return [slipway, "--home", home, "--config", config, *args]

    def batch(label, cmds, check):
        pg.checkpoint()
        wall, cpu = time_batch(cmds)
        record(label, [wall], cpu=[cpu], **meta)
        check()

    def slipway_way(rnd):
        home = tempfile.mkdtemp(prefix=f"dbs-{rnd}-", dir=homes)
        created = set()

        def check_created():
            created.update(check_slipway_dbs(pg, home, envs))

        def check_dropped():
            check_gone(pg, created, "after slipway destroy")
            if intents(home):
                sys.exit(f"measure.py: intent records left in {home} after destroy")

        batch("pg/create/slipway", [
            sw(home, "apply", "--env", e, "--yes", "--repo", repo, "--ref", "main")
            for e in envs], check_created)
        batch("pg/drop/slipway", [sw(home, "destroy", "--env", e, "--yes") for e in envs],
              check_dropped)
        shutil.rmtree(home)

    def createdb_way(rnd):
        p = f"{prefix}r{rnd}_c"
        names = [f"{p}{i}" for i in range(n)]
        batch("pg/create/createdb", [[tool["createdb"], *pg.conn, d] for d in names],
              lambda: check_count(pg, p, n, "after createdb"))
        batch("pg/drop/dropdb", [[tool["dropdb"], *pg.conn, d] for d in names],
              lambda: check_count(pg, p, 0, "after dropdb"))

    def role_way(rnd):
        p = f"{prefix}r{rnd}_o"
        names = [f"{p}{i}" for i in range(n)]

        def check_created():
            check_count(pg, p, n, "after createuser + createdb -O")
            owned = pg.sql("select count(*) from pg_database d join pg_roles r on "
                           f"r.oid = d.datdba where left(d.datname, {len(p)}) = '{p}' "
                           "and r.rolname = d.datname and r.rolcanlogin")
            if int(owned) != n:
                sys.exit(f"measure.py: {owned} of {n} databases owned by their login role")

        batch("pg/create/createuser+createdb",
              [c for d in names for c in ([tool["createuser"], *pg.conn, d],
                                          [tool["createdb"], *pg.conn, "-O", d, d])],
              check_created)
        batch("pg/drop/dropdb+dropuser",
              [c for d in names for c in ([tool["dropdb"], *pg.conn, d],
                                          [tool["dropuser"], *pg.conn, d])],
              lambda: check_gone(pg, set(names), "after dropdb + dropuser"))

    def floors(rnd):
        # What slipway pays without a server: the same environments with a `file` resource.
        home = tempfile.mkdtemp(prefix=f"floor-{rnd}-", dir=homes)
        batch("pg/create/floor-file", [
            sw(home, "apply", "--env", e, "--yes", "--repo", floor_repo, "--ref", "main")
            for e in envs], lambda: None)
        batch("pg/drop/floor-file", [sw(home, "destroy", "--env", e, "--yes") for e in envs],
              lambda: None)
        shutil.rmtree(home)
        # Reading the stack from git and checking it, without state or server.
        batch("pg/start/slipway-validate",
              [[slipway, "validate", "--repo", floor_repo, "--ref", "main"]] * n, lambda: None)
        # And the process starts alone: slipway's, createdb's, and the wrapper's if PATH has it.
        batch("pg/start/slipway-version", [[slipway, "--version"]] * n, lambda: None)
        batch("pg/start/createdb-version", [[tool["createdb"], "--version"]] * n, lambda: None)
        if pg.wrapped:
            batch("pg/start/createdb-path-version", [["createdb", "--version"]] * n,
                  lambda: None)

    tool = pg.bin
    pg_server_note(pg)
    ways = [slipway_way, createdb_way, role_way]
    try:
        for rnd in range(1, runs + 1):
            print(f"  round {rnd}/{runs}", file=sys.stderr)
            # The order rotates round by round: no way always runs first, or after another.
            k = (rnd - 1) % len(ways)
            for way in ways[k:] + ways[:k]:
                way(rnd)
            floors(rnd)
    finally:
        pg_cleanup(pg, slipway, config, homes, prefix)


def pg_clones(argv):
    opts = dict(zip(argv[::2], argv[1::2]))
    pg = Pg(opts["--url"])
    slipway, config, homes = opts["--slipway"], opts["--config"], opts["--homes"]
    prefix, runs, rows = opts["--prefix"], int(opts["--runs"]), int(opts["--rows"])
    template = opts["--template"]
    repos = {"file_copy": opts["--repo-file-copy"], "wal_log": opts["--repo-wal-log"]}
    if not template.startswith(prefix):
        sys.exit("measure.py: the template must carry the run's prefix (so that it is dropped)")
    version = int(pg.sql("show server_version_num"))
    if version < 150000:
        record("pg/clones-skipped", [], unit="note",
               reason=f"PostgreSQL {version // 10000} has no CREATE DATABASE ... STRATEGY (15+)")
        return
    os.makedirs(homes, exist_ok=True)
    home = tempfile.mkdtemp(prefix="clones-", dir=homes)

    def verify(db):
        got = pg.sql("select count(*) from t", db=db)
        if int(got) != rows:
            sys.exit(f"measure.py: the clone {db} holds {got} rows, expected {rows}")

    def slipway_side(strategy, rnd):
        env = strategy.replace("_", "-")
        pg.checkpoint()
        wall, cpu = time_batch([[slipway, "--home", home, "--config", config, "apply", "--env",
                                 env, "--yes", "--repo", repos[strategy], "--ref", "main"]])
        verify(intents(home)[env])
        run_checked([slipway, "--home", home, "--config", config, "destroy", "--env", env,
                     "--yes"], 0)
        if intents(home):
            sys.exit(f"measure.py: the clone of {env} is still recorded after destroy")
        return wall, cpu

    def createdb_side(strategy, rnd):
        name = f"{prefix}clone_{strategy}_{rnd}"
        pg.checkpoint()
        wall, cpu = time_batch([[pg.bin["createdb"], *pg.conn, "-T", template, "-S",
                                 strategy.upper(), name]])
        verify(name)
        run_checked([pg.bin["dropdb"], *pg.conn, name], 0)
        return wall, cpu

    try:
        t0 = time.perf_counter()
        pg.sql(f"CREATE DATABASE {qi(template)}")
        pg.sql(f"CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, {rows}) g",
               "VACUUM ANALYZE t", db=template)
        pg.checkpoint()
        size = int(pg.sql(f"select pg_database_size('{template}')"))
        record("pg/template", [size], unit="bytes", rows=rows, made_in=time.perf_counter() - t0)
        # Round 0 warms up (the template's files in the page cache, the home created): untimed.
        for rnd in range(runs + 1):
            print(f"  clones, {'warm-up' if rnd == 0 else f'round {rnd}/{runs}'}", file=sys.stderr)
            for strategy in ("file_copy", "wal_log"):
                sides = [("slipway", slipway_side), ("createdb", createdb_side)]
                if rnd % 2 == 0:
                    sides.reverse()
                for who, side in sides:
                    wall, cpu = side(strategy, rnd)
                    if rnd:
                        record(f"pg/clone/{strategy}/{who}", [wall], cpu=[cpu], rows=rows)
        pg.sql(f"DROP DATABASE {qi(template)}")
    finally:
        pg_cleanup(pg, slipway, config, homes, prefix)


def pg_cleanup(pg, slipway, config, homes, prefix):
    """Drops what section 6 made, and only that: every environment of the homes under `homes`
    destroyed by slipway; then, by SQL, the databases and roles those homes still record an
    intent for (a create or a drop interrupted) and those named with this run's prefix (the
    baselines and the template). Returns the names still there (none, normally)."""
    for home in sorted(os.listdir(homes)) if os.path.isdir(homes) else []:
        home = os.path.join(homes, home)
        for env in sorted(intents(home)):
            try:
                subprocess.run([slipway, "--home", home, "--config", config, "destroy", "--env",
                                env, "--yes"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=120)
            except subprocess.TimeoutExpired:
                pass
    names = set()
    for home in sorted(os.listdir(homes)) if os.path.isdir(homes) else []:
        recorded = intents(os.path.join(homes, home)).values()
        names.update(n for n in recorded if PG_NAME.fullmatch(n))
    try:
        # A statement of a client killed mid-way (CREATE DATABASE, say) runs on to its end in
        # the server: wait for those that name our objects (10 s at most).
        pattern = "|".join(sorted(names | {prefix}))
        for _ in range(50):
            busy = pg.sql("select count(*) from pg_stat_activity where pid <> pg_backend_pid() "
                          f"and state <> 'idle' and query ~ '{pattern}'", timeout=20)
            if busy == "0":
                break
            time.sleep(0.2)
        for attempt in range(5):
            if attempt:
                time.sleep(1)
            dbs, roles = pg.existing(names)
            pdbs, proles = pg.prefixed(prefix)
            dbs, roles = dbs | pdbs, roles | proles
            if not (dbs or roles):
                return set()
            # Databases first: a role cannot go while it owns one.
            pg.run(*[f"DROP DATABASE IF EXISTS {qi(d)} WITH (FORCE)" for d in sorted(dbs)],
                   *[f"DROP ROLE IF EXISTS {qi(r)}" for r in sorted(roles)], stop=False)
            print(f"  dropped {len(dbs)} database(s) and {len(roles)} role(s) left behind",
                  file=sys.stderr)
        left = set().union(*pg.existing(names), *pg.prefixed(prefix))
    except (SystemExit, subprocess.TimeoutExpired) as e:
        print(f"  PostgreSQL cleanup impossible ({e}); left, possibly: {sorted(names)} and "
              f"{prefix}*", file=sys.stderr)
        return names | {prefix + "*"}
    if left:
        print(f"  LEFT ON THE SERVER: {sorted(left)}", file=sys.stderr)
    return left


def pg_cleanup_cmd(argv):
    opts = dict(zip(argv[::2], argv[1::2]))
    left = pg_cleanup(Pg(opts["--url"]), opts["--slipway"], opts["--config"], opts["--homes"],
                      opts["--prefix"])
    sys.exit(1 if left else 0)


def main(argv):
    # SIGTERM (bench/run cleaning up) unwinds like an exception, so `finally` blocks stop
    # what this process started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if len(argv) < 2:
        sys.exit(__doc__)
    what = argv[1]
    if what == "cmd":
        cmd_time(argv[2], argv[3:])
    elif what == "instr":
        cmd_instr(argv[2], argv[3:])
    elif what == "rss":
        cmd_rss(argv[2], argv[3:])
    elif what == "supervisord":
        supervisord(argv[2], argv[3:])
    elif what == "spawn-floor":
        spawn_floor(argv[2], argv[3:])
    elif what == "count-sleeps":
        print(count_sleeps(argv[2]))
    elif what == "check-slipway":
        check_slipway(argv[2], int(argv[3]), argv[4])
    elif what == "reap":
        reap(argv[2])
    elif what == "serve-pass":
        serve_pass(argv[2:])
    elif what == "push":
        push(argv[2:])
    elif what == "previews":
        previews(argv[2:])
    elif what == "prs":
        prs(argv[2:])
    elif what == "ui":
        ui(argv[2:])
    elif what == "ui-skip":
        record("ui/skipped", [], unit="note", reason=argv[2])
    elif what == "pr-skip":
        record("pr/skipped", [], unit="note", reason=argv[2])
    elif what == "pg-check":
        pg_check(argv[2:])
    elif what == "pg-skip":
        record("pg/skipped", [], unit="note", reason=argv[2])
    elif what == "pg-dbs":
        pg_dbs(argv[2:])
    elif what == "pg-clones":
        pg_clones(argv[2:])
    elif what == "pg-cleanup":
        pg_cleanup_cmd(argv[2:])
    else:
        sys.exit(f"measure.py: unknown command {what!r}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv)
