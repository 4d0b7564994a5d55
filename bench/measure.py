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
  measure.py reap MARKER
      SIGKILL every process whose command line contains MARKER (a unique temp dir: only
      processes this benchmark started), and the `sleep 100000` children of those.
"""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

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


def reap(marker):
    m = marker.encode()
    procs = processes()
    ours = {pid for pid, _, cmdline in procs if m in cmdline and pid != os.getpid()}
    # The children first noted, so that none is reparented out of sight.
    children = [pid for pid, ppid, cmdline in procs if ppid in ours and cmdline == SLEEP_CMDLINE]
    for pid in sorted(ours) + children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if ours or children:
        print(f"  reaped {len(ours)} process(es) and {len(children)} child(ren)", file=sys.stderr)


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
    else:
        sys.exit(f"measure.py: unknown command {what!r}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv)
