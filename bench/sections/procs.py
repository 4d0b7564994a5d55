"""Section 2: starting 100 supervised processes, slipway against supervisord.

  measure.py supervisord LABEL --conf FILE --n N [--poll-ms 20] [--startsecs S]
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
  measure.py supervisor-direct LABEL SLIPWAY HOME DIR
      With HOME's `dev` applied (its 100 processes running), read their specs back from their
      state files and give them other names and their own state and log files under DIR (the
      same commands, confinement and working directories), start `SLIPWAY __supervise DIR/run`
      and time one `start` request (with its spec, as the engine sends it) after the other
      until every process runs: the supervisor's own share, without the engine. Then
      SIGTERM it (it stops them all) and check that none is left.
  measure.py slipway-pss LABEL HOME N
      Sum the PSS (/proc/PID/smaps_rollup) of every Slipway supervisor of HOME (`slipway
      __supervise` processes naming it) and record it divided by N, in KiB.
  measure.py file-probe LABEL DIR N
      Time creating N empty files in a new directory under DIR (where the homes are), then
      remove them: what one new file (inode) costs on this file system now, in microseconds.

(slipway's side is timed with the shared `measure.py cmd`.)
"""

import http.client
import json
import os
import subprocess
import sys
import time

from common import (cell, count_sleeps, fmt_s, med, options, processes, record, settle,
                    sleeps_under, stop)

TITLE = "2. Starting 100 supervised processes: slipway vs supervisord"
PROCS_GOAL_X = 10.0  # slipway at least this many times faster than supervisord
FLOOR_GOAL_X = 2.0  # issue 14: slipway within this many times the fork+exec floor
PSS_GOAL_KIB = 200  # issue 14: Slipway's own memory per supervised process, PSS


def pss_kib(pid):
    """(PSS, RSS) of a process in KiB from /proc/PID/smaps_rollup, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = dict(
                (line.split(":")[0], int(line.split()[1]))
                for line in f
                if line.startswith(("Pss:", "Rss:"))
            )
        return fields["Pss"], fields["Rss"]
    except (OSError, KeyError, ValueError, IndexError):
        return None


# --- measurement -------------------------------------------------------------------------------


def cmd_check_slipway(args):
    home, n, slipway = args[0], int(args[1]), args[2]
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


def cmd_slipway_pss(args):
    label, home, n = args[0], args[1], int(args[2])
    marker = home.encode()
    total = rss = count = 0
    for pid, _, cmdline in processes():
        if b"__supervise" in cmdline and marker in cmdline:
            got = pss_kib(pid)
            if got:
                total += got[0]
                rss += got[1]
                count += 1
    if not count:
        sys.exit(f"measure.py: no supervisor of {home} runs")
    record(label, [total / n], unit="KiB", supervisors=count, rss_kib=rss, pss_kib=total)


def cmd_supervisor_direct(args):
    label, slipway, home, work = args[0], args[1], args[2], args[3]
    import glob
    import shutil
    import signal
    import socket

    run_dir, logs = os.path.join(work, "run"), os.path.join(work, "logs")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(run_dir, mode=0o700)
    os.makedirs(logs, mode=0o700)
    # The engine sends each process's spec with its `start` (`start NAME +LEN` and LEN bytes
    # of JSON); the supervisor keeps it in the process's state file, where it is read back.
    specs = {}
    for path in sorted(glob.glob(os.path.join(home, "envs", "dev", "run", "*.json"))):
        with open(path) as f:
            spec = json.load(f).get("spec")
        if spec is None:
            continue
        name = "direct-" + spec["resource"]
        spec.update(resource=name, state=os.path.join(run_dir, name + ".json"),
                    log=os.path.join(logs, name + ".log"))
        specs[name] = json.dumps(spec).encode()
    if not specs:
        sys.exit(f"measure.py: no process state with a spec under {home}/envs/dev/run")
    names = list(specs)
    sock = os.path.join(run_dir, "supervise.sock")
    proc = subprocess.Popen([slipway, "__supervise", run_dir], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def ask(line, body=b""):
        c = socket.socket(socket.AF_UNIX)
        try:
            c.connect(sock)
            c.sendall(line.encode() + b"\n" + body)
            return c.makefile().readline().strip()
        finally:
            c.close()

    try:
        # Listening once a connection is accepted (the socket's file comes a moment before).
        deadline = time.perf_counter() + 10
        while True:
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(sock)
                break
            except OSError:
                if time.perf_counter() > deadline:
                    sys.exit("measure.py: the supervisor did not listen within 10 s")
                time.sleep(0.001)
            finally:
                probe.close()
        t0 = time.perf_counter()
        for name in names:
            # `ok`, and the state it recorded.
            answer = ask(f"start {name} +{len(specs[name])}", specs[name])
            if answer.split(" ", 1)[0] != "ok":
                sys.exit(f"measure.py: start {name}: {answer}")
        elapsed = time.perf_counter() - t0
        live = settle(lambda: len(sleeps_under(lambda pid, _c: pid == proc.pid)), len(names))
        if live != len(names):
            sys.exit(f"measure.py: {live} of {len(names)} started directly are live")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    left = settle(lambda: len(sleeps_under(lambda pid, _c: pid == proc.pid)), 0)
    if left:
        sys.exit(f"measure.py: {left} left after the supervisor stopped")
    shutil.rmtree(work, ignore_errors=True)
    record(label, [elapsed], n=len(names))


def cmd_file_probe(args):
    label, base, n = args[0], args[1], int(args[2])
    import shutil
    import tempfile

    probe = tempfile.mkdtemp(dir=base, prefix="file-probe.")
    try:
        t0 = time.perf_counter()
        for i in range(n):
            os.close(os.open(os.path.join(probe, f"f{i}"), os.O_WRONLY | os.O_CREAT, 0o600))
        elapsed = time.perf_counter() - t0
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    record(label, [elapsed / n * 1e6], unit="us")


def cmd_supervisord(args):
    label, opts = args[0], options(args[1:])
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
        # supervisord's own memory, per program, for reference beside slipway's.
        got = pss_kib(proc.pid)
        if got:
            record(label.replace("procs/", "procs/pss-"), [got[0] / n], unit="KiB",
                   rss_kib=got[1], pss_kib=got[0])
    finally:
        stop(proc)
    left = settle(lambda: len(sleeps_under(lambda pid, _c: pid == proc.pid)), 0)
    if left:
        sys.exit(f"measure.py: {left} children of supervisord left after shutdown")
    record(label, [elapsed], polls=polls, startsecs=startsecs)


def cmd_spawn_floor(args):
    """Fork and exec N `sleep 100000` from this process: the least any supervisor can take."""
    label, opts = args[0], options(args[1:])
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


COMMANDS = {
    "supervisord": cmd_supervisord,
    "spawn-floor": cmd_spawn_floor,
    "count-sleeps": lambda args: print(count_sleeps(args[0])),
    "check-slipway": cmd_check_slipway,
    "slipway-pss": cmd_slipway_pss,
    "supervisor-direct": cmd_supervisor_direct,
    "file-probe": cmd_file_probe,
}


# --- report ------------------------------------------------------------------------------------


def verdicts(r):
    samples = r.samples
    verdicts = []
    sv0 = samples.get("procs/supervisord-startsecs0")
    sv1 = samples.get("procs/supervisord-startsecs1")
    slip = {k: v for k, v in samples.items() if k.startswith("procs/slipway-")}
    if sv0 and slip:
        best_label = min(slip, key=lambda k: med(slip[k]))
        best = med(slip[best_label])
        r0 = med(sv0) / best
        r1 = med(sv1) / best if sv1 else None
        verdicts.append(
            (
                f"start 100 processes at least {PROCS_GOAL_X:g}× faster than supervisord",
                f"{r0:.1f}× vs supervisord `startsecs=0`"
                + (f", {r1:.1f}× vs default `startsecs=1`" if r1 else "")
                + f" (slipway {best_label.split('-')[-1]}: {fmt_s(best)})",
                "**met**" if r0 >= PROCS_GOAL_X else "**missed** against `startsecs=0`"
                + (
                    f"; {'met' if r1 and r1 >= PROCS_GOAL_X else 'missed'} against the default "
                    "`startsecs=1`"
                    if r1
                    else ""
                ),
            )
        )
    floor = samples.get("procs/floor-spawn")
    if floor and slip:
        best_label = min(slip, key=lambda k: med(slip[k]))
        best = med(slip[best_label])
        x = best / med(floor)
        # The issue reads the floor goal as "so ≥ 4× faster than supervisord `startsecs=0`,
        # ≥ 12× its default": true where supervisord takes 8× the floor, as where the issue
        # was measured. Both are reported against this run's supervisord, met or not.
        derived = [
            (name, med(runs) / best, want)
            for name, runs, want in (("`startsecs=0`", sv0, 4.0), ("`startsecs=1`", sv1, 12.0))
            if runs
        ]
        faster = "".join(
            f"; {got:.1f}× faster than supervisord {name} (the issue's ≥ {want:g}×: "
            f"{'met' if got >= want else 'missed'})"
            for name, got, want in derived
        )
        if sv0:
            faster += f"; supervisord `startsecs=0` took {med(sv0) / med(floor):.1f}× the floor here"
        missed = [f"{got:.1f}× against {name}" for name, got, want in derived if got < want]
        verdict = "**met**" if x <= FLOOR_GOAL_X else "**missed** (section 2 says where the time goes)"
        if missed:
            verdict += (
                "; what the issue derived from it (≥ 4× / ≥ 12× faster than supervisord) is "
                f"**missed** here: {', '.join(missed)}"
            )
        verdicts.append(
            (
                f"start 100 processes within {FLOOR_GOAL_X:g}× the fork+exec floor (issue 14, "
                "which reads it as ≥ 4× faster than supervisord `startsecs=0`, ≥ 12× than its "
                "default)",
                f"slipway {best_label.split('-')[-1]} {fmt_s(best)} against the floor "
                f"{fmt_s(med(floor))}: **{x:.2f}×**{faster}",
                verdict,
            )
        )
    pss = samples.get("procs/pss-slipway")
    if pss:
        worst = max(pss)
        verdicts.append(
            (
                f"Slipway's own memory per supervised process at 100 processes ≤ "
                f"{PSS_GOAL_KIB} KiB PSS (issue 14)",
                f"median {med(pss):.0f} KiB, at most {worst:.0f} KiB per process (the PSS of "
                "the home's supervisors from `/proc/PID/smaps_rollup`, summed, ÷ 100)",
                "**met**" if worst <= PSS_GOAL_KIB else "**missed**",
            )
        )
    return verdicts


def write(r):
    samples, w = r.samples, r.w
    sv0 = samples.get("procs/supervisord-startsecs0")
    sv1 = samples.get("procs/supervisord-startsecs1")
    slip = {k: v for k, v in samples.items() if k.startswith("procs/slipway-")}
    if not (slip or sv0):
        return False
    w("## 2. Starting 100 supervised processes: slipway vs supervisord\n")
    w(
        "100 × `sleep 100000`, no health check, from nothing to all running. The variants "
        "run interleaved, round by round, so machine noise hits them alike.\n\n"
        "- **slipway**: a stack of 100 `process` resources; timed: `slipway apply --env dev "
        "--yes --parallelism P` on a fresh home (it returns once every process is started). "
        "Checked after each run, untimed: `status --output json` shows 100 ready and 100 live "
        "`sleep 100000` run under the home's supervisors; then `slipway destroy` and no "
        "process is left.\n"
        "- **supervisord**: 100 `[program:pN]` with `command=sleep 100000`, `autostart=true`, "
        "default logging, a unix socket in a temp dir; timed: from launching "
        "`supervisord -n -c FILE` until all 100 are `RUNNING`, polled every 20 ms through "
        "its XML-RPC interface on the socket (what `supervisorctl status` calls, without "
        "paying a Python start per poll, which favours supervisord). Checked after each "
        "run, untimed: `supervisorctl status` shows 100 RUNNING and 100 live children; "
        "then SIGTERM and no child is left. `startsecs=0` counts a program RUNNING as "
        "soon as it is spawned, like slipway without a health check; `startsecs=1` (the "
        "default, what users run) waits for it to stay up 1 s.\n"
        "- **floor**: forking and exec'ing 100 `sleep 100000` from one Python process "
        "(`subprocess.Popen`), nothing else.\n"
    )
    rows = [
        ("slipway apply, parallelism 8", "procs/slipway-p8"),
        ("slipway apply, parallelism 32", "procs/slipway-p32"),
        ("the environment's supervisor alone: 100 `start` requests in a row, no engine",
         "procs/supervisor-direct"),
        ("supervisord, startsecs=0", "procs/supervisord-startsecs0"),
        ("supervisord, startsecs=1 (default)", "procs/supervisord-startsecs1"),
        ("floor: 100 × fork+exec from Python", "procs/floor-spawn"),
    ]
    floor = samples.get("procs/floor-spawn")
    w("| variant | runs | time to 100 running | this ÷ floor | supervisord `startsecs=0` ÷ "
      "this | supervisord `startsecs=1` ÷ this |")
    w("|---|---:|---|---:|---:|---:|")
    for name, label in rows:
        s = samples.get(label)
        if not s:
            continue
        x = med(s)
        rf = f"{x / med(floor):.2f}×" if floor else "–"
        r0 = f"{med(sv0) / x:.1f}×" if sv0 else "–"
        r1 = f"{med(sv1) / x:.1f}×" if sv1 else "–"
        w(f"| {name} | {len(s)} | {cell(s)} | {rf} | {r0} | {r1} |")
    w("")
    if floor and slip:
        w("The floor waits for each child's exec before it forks the next; slipway's "
          "supervisor serves the next start meanwhile. On a busy machine each of the floor's "
          "100 waits for a child to be scheduled grows, and slipway's do not add up the same "
          "way: its ratio to the floor is better on a busy machine than on a quiet one "
          f"(this run's floor: {cell(floor)}; in quiet runs on this machine it took 46-77 ms).\n")
    pss_rows = [
        ("slipway: the home's supervisors (`slipway __supervise`)", "procs/pss-slipway"),
        ("supervisord, startsecs=0 (the daemon)", "procs/pss-supervisord-startsecs0"),
        ("supervisord, startsecs=1 (the daemon)", "procs/pss-supervisord-startsecs1"),
    ]
    if any(samples.get(label) for _, label in pss_rows):
        w("**Memory of the supervision itself** with the 100 processes running (the "
          "supervised `sleep`s not counted): PSS from `/proc/PID/smaps_rollup` (a page shared "
          "by k processes counts 1/k in each), summed over the supervisor processes, ÷ 100; "
          "measured after each run's check, before it is torn down. Goal (issue 14): ≤ "
          f"{PSS_GOAL_KIB} KiB per process (s6-supervise needs about 100 KiB).\n")
        w("| supervisor | runs | its processes | PSS per supervised process, median (min–max) | "
          "total PSS | total RSS |")
        w("|---|---:|---:|---:|---:|---:|")
        for name, label in pss_rows:
            xs = samples.get(label)
            if not xs:
                continue
            m = r.meta.get(label, {})
            w(f"| {name} | {len(xs)} | {m.get('supervisors', 1)} | **{med(xs):.0f} KiB** "
              f"({min(xs):.0f}–{max(xs):.0f}) | {m.get('pss_kib', 0) / 1024:.1f} MiB | "
              f"{m.get('rss_kib', 0) / 1024:.1f} MiB |")
        w("")
    direct = samples.get("procs/supervisor-direct")
    probe = samples.get("procs/file-probe")
    if floor and slip:
        w("Each round applies into a new home, whose state is made before the first process "
          "starts: since a362337 a new SQLite state runs the migrations' result at once "
          "(`schema_fresh_sqlite.sql`) instead of the twenty migrations, whose `ALTER "
          "TABLE`s each made SQLite read the whole schema again (interleaved, 10 rounds at "
          "a362337 against 3b04310: 101.2 → 97.5 ms). The floor itself moves from run to run "
          "(54–65 ms on the same day), and the ratio with it. Where `nft` is installed (as "
          "here since 5f6b5ca), each round's apply, in a new home, also writes the packet "
          "filter's table whole (docs/isolation.md, \"Network\"; 16–36 ms of wall time, about "
          "5 ms of CPU, started on a thread of its own as the command opens the home, since "
          "b6a668a); an apply in a home that has one pays one `nft list` (2–3 ms). Measured "
          "outside the benchmark before b6a668a (6 interleaved rounds, 2026-12-08): 163 ms "
          "with the filter, 130 ms with `network = \"off\"`.\n")
    if floor and slip and direct:
        best = min(med(v) for v in slip.values())
        # Said whatever the verdict: on this machine it moves across the bound from run to
        # run (see the end of this paragraph).
        verdict = "missed" if best / med(floor) > FLOOR_GOAL_X else "met in this run"
        w(f"**Where the time goes** (issue 14's {FLOOR_GOAL_X:g}× the floor is {verdict}): of "
          f"slipway's {fmt_s(best)}, the environment's supervisor starting the same 100 "
          f"processes on its own, request after request, takes {fmt_s(med(direct))} "
          f"({med(direct) / med(floor):.2f}× the floor): each `start` is answered once its "
          "child is past its exec, so in a row they add up the supervisor's latency per "
          "start (about 1 ms), not its throughput; the engine's 8 requests at a time "
          "overlap them. A start there is a clone of the supervisor that shares its "
          "memory until its exec (since 13513fc; a fork before, see below), the child's "
          "confinement (session, uid, Landlock; the ruleset and the "
          "seccomp filter made once and kept; the environment's control group, which the "
          "supervisor entered once, since 89b7952, so that its children are born in it "
          "rather than each moved there, a cgroup migration of about a millisecond here), "
          "the state file written (the child waits "
          "for it before its exec, so that nothing runs unrecorded), the exec, and a "
          "socket round trip; the exec's outcome is read in the supervisor's loop while it "
          "serves the other requests, so the engine's parallel requests overlap, and a "
          "process that prints nothing gets no log file. Per process, slipway makes one "
          "new file (written whole to a temporary name and renamed, so a new inode): the "
          "state file the supervisor writes once, before the exec, which carries the spec "
          "the engine sent with its `start` (the child bears the name `slipway-held` until "
          "its exec, which is how a reader of that file tells whether it got there; before "
          "2014eac the supervisor wrote the file a second time once it knew, and before "
          "d6d98c6 the engine wrote the spec to a file of its own). On this "
          "machine's ext4, mounted without a journal, a new inode is "
          "looked for past every inode freed in the last minute or more "
          "(`recently_deleted` in `find_inode_bit`), so a file costs what the machine "
          "deleted lately: ")
        if probe:
            us = f"{med(probe):.0f} µs ({min(probe):.0f}–{max(probe):.0f})"
            w(f"creating a file in the benchmark's directory took a median {us} "
              "per file this run (measured once a round; each round's `destroy` frees some "
              "200 inodes, so it grows from round to round, which is also why a quiet "
              "first round can be much faster than the median). ")
        else:
            w("from about 15 µs on a quiet file system to 0.3-0.9 ms after the machine "
              "churned `/tmp`. ")
        w("A profile of one apply at 797a55a (`perf record --call-graph dwarf`, "
          "2026-12-05, 100 processes, parallelism 8, a new home): the CLI used 66 ms of "
          "CPU and the supervisor 54 ms. Of the CLI's: SQLite's commits 22% (two per "
          "process since 797a55a, ownership and then handle and readiness together; three "
          "before; the commit's write of its pages to the WAL is most of it), making the "
          "new home's schema 11% (one transaction since 938b6a6), asking the supervisor "
          "12%, the process provider's own work around it 21% (the spec, reading the state "
          "file back, checking the supervisor is alive), reading the commit and planning "
          "9%. ")
        w("A profile of five applies (`perf record -a`, 2026-12-04, at cf88199, 100 "
          "processes, parallelism 8, each into a new home), by process, of the CPU used "
          "(medians of the five): the CLI 25%, the `sleep`s 28% (their exec and loading, "
          "which the floor pays too), the children between their fork and their exec 11% "
          "(mostly the exec tearing down the supervisor's address space, which the fork "
          "copied), the supervisor 36% (at 2014eac, when the engine still wrote a spec "
          "file per process: 33%, 31%, 11% and 23%). ext4's inode allocation, 10-20% of "
          "the CLI and of the supervisor with two files per process, is now a few percent "
          "of the supervisor; in the CLI, the first touches of fresh memory by each of its "
          "8 worker threads (the kernel zeroing huge pages) are about 10%, and SQLite "
          "(three write transactions per resource: ownership, handle, ready) about 5%. "
          "For its first 20 ms one core "
          "is idle: the CLI starts, reads the commit and plans before the first process "
          "starts. On 2 cores the apply cannot take less than half that CPU: the floor "
          "forks and execs from a process that does nothing else. ")
        w("A profile of one apply at 64c8fc4 (`perf record -a -g`, 2026-12-06, 100 "
          "processes, parallelism 8, a new home right after another's destroy): the "
          "supervisor spent 47% of its CPU in ext4's search for a free inode "
          "(`recently_deleted`: 486 of its 1,028 samples, some 0.3 ms a file). On 2 cores "
          "the apply takes about the CPU of everything it runs (the `sleep`s' exec, the "
          "CLI, the supervisor, the held children) divided by two, so moving work from "
          "one thread or process to another does not shorten it; only doing less does. "
          "Tried and not kept: a helper thread of the supervisor making unnamed files "
          "ahead (`O_TMPFILE`, each named with `linkat` by a start): the search left the "
          "supervisor's thread but not the 2 cores (21 interleaved rounds: 114.6 against "
          "112.3 ms). Its first version was slower (92.6 against 115.9 ms): a descriptor "
          "table that two threads share grows only after a grace period of RCU "
          "(`synchronize_rcu` in `expand_files`, 22 ms of waiting on the way to the "
          "supervisor's 200 descriptors). Since 1daa548 a process its start's answer shows "
          "running is recorded ready without `wait_ready`, which read the state file back "
          "(10% of the CLI's CPU): interleaved, 15 rounds each way, 98.5 → 94.9 and "
          "105.7 → 104.1 ms. ")
        w("A profile of one apply at ab0767d (`perf record -a --call-graph dwarf`, "
          "2026-12-06, 100 processes, parallelism 8, a new home): of the samples on the 2 "
          "cores, the `sleep`s' exec 32%, the supervisor and its held children 27%, the "
          "CLI 24%, idle 15%. The CLI runs alone for its first 16 ms (its exec, the new "
          "schema, the commit, the plan, the environment's record and directories, after "
          "which it wakes the supervisor); from then on both cores are busy. The inode "
          "search was 32% of the supervisor's CPU. Measured and not kept: the run "
          "directory on a tmpfs (one mounted on `envs/dev/run`, 15 interleaved rounds: "
          "130.1 → 119.1 ms, 2.09× → 1.91× the floor). Runtime state belongs on a tmpfs "
          "(`/run`, `$XDG_RUNTIME_DIR`, as containerd keeps its `state` directory), but on "
          "this machine neither is one: the only tmpfs is `/dev/shm`, which every user "
          "shares and where state files carrying an environment's secrets do not belong. "
          "How much the file system's recent deletions decide: three partial runs of this "
          "section back to back (`BENCH_ONLY=procs`, 2026-12-06, at 0f33a69) gave 1.80×, "
          "2.56× and 2.88× the floor, slipway's median rising 105 → 125 → 141 ms and the "
          "supervisor's alone 98 → 115 → 136 ms while the floor stayed at 49–58 ms, and a "
          "new file costing 379 then 595 µs in the last two (each run's rounds free "
          "thousands of inodes). Running `sync` and waiting 5.5 s before each timed apply "
          "and each floor did not take it away (7 rounds each way, outside the benchmark: "
          "2.10× settled against 2.21× and 1.98× not), so the benchmark does not do it. "
          "Also measured and not kept (2026-12-06, at 00d6713): ext4's `T` attribute on "
          "`<home>/envs` (`chattr +T`, the top of unrelated trees), by which the allocator "
          "puts each environment's directory in the flex group with the fewest directories "
          "rather than beside its home. Against files deleted elsewhere it helped "
          "(interleaved, 10 rounds each way after 10,000 files were made and deleted next to "
          "the homes: 176.9 → 101.7 ms, 3.59× → 2.06× the floor), but every environment then "
          "goes to the same few emptiest groups, where the environments' own deletions "
          "gather: in a whole run, after section 1's environment of 10,000 files was "
          "destroyed, slipway took 157–201 ms a round (7 rounds; 108 ms in the run at "
          "8b0eb1c), with the supervisor alone, which the attribute does not touch, slower "
          "too (93–162 ms; 98 then): no gain to be seen, and a state file then lands where "
          "the last environment's files were freed. "
          "What one state record per process in a file that is not new each time (a per-"
          "environment log or SQLite in the run directory, long named the lever for this "
          "goal) would gain at most, measured (2026-12-06, at 58e9936): a build whose "
          "supervisor appended each start's record to one file of the run directory "
          "instead of writing a new file (for timing only: nothing could read it back), "
          "against the same commit unchanged, 12 interleaved rounds outside the "
          "benchmark: 106.6 → 102.9 ms (1.96× → 1.89× the floor), about 4 ms, within the "
          "noise. So that rewrite, with its crash-safety and takeover changes, is not "
          "worth making for this goal. Also measured and not kept, the same day: a create"
          " looking for leftovers of an earlier one without an `unlink` and a `rename` of"
          " files that are not there (each holds the run directory's lock, which the "
          "supervisor's new state files take too): no gain to be seen in 16 interleaved "
          "rounds (133.5 against 141.3 ms, both rising from about 110 to 160 ms as the "
          "rounds' deletions piled up). ")
        w("Since 13513fc the supervisor clones each child sharing its memory instead of "
          "forking it (in uid mode, since 6a07355, only while `fs.suid_dumpable` reads 0, "
          "as on this machine; at 1 or 2 a child gets a copy, as a fork): with forks, the copy of its page tables and the copy-on-write "
          "faults of every page it wrote while a child waited to be recorded were half "
          "of the supervisor's CPU, and the children's teardown of their copies at exec "
          "most of theirs. A profile of five applies each (`perf record -a`, 2026-12-06, "
          "100 processes, parallelism 32), e2beb08 against 13513fc: Slipway's CPU "
          "(the CLI, the supervisor, the held children) 23% less (2,315 against 2,991 "
          "samples), the held children's 57% less (319 against 748). The `sleep`s' own "
          "exec and loading are then the largest part (45% of the CPU), and three fifths "
          "of theirs is the dynamic loader, most of it glibc's CPU detection "
          "(`init_cpu_features`: `cpuid`, which a virtual machine may trap), which the "
          "floor pays as well.\n")
    if sv0 and slip:
        need = med(sv0) / PROCS_GOAL_X
        w(f"To be {PROCS_GOAL_X:g}× faster than supervisord (`startsecs=0`) here, slipway "
          f"would need to start the 100 processes in {fmt_s(need)}"
          + (f"; the fork+exec floor alone took {fmt_s(med(samples['procs/floor-spawn']))}"
             if "procs/floor-spawn" in samples else "")
          + ".\n")
    return True


DIG = [
    "- Process starts: `perf record --call-graph dwarf` of `slipway apply` follows the "
    "supervisor it starts and the children (`perf script`, grouped by process; `strace -f` "
    "would follow the detached supervisor and never return); `perf trace -s -p` of a "
    "supervisor for its system calls. `measure.py file-probe` says what a new file costs "
    "at the moment.\n",
]
