"""Section 3: the controller (`slipway serve`) with many environments: the reconcile pass a
restart makes over them, all unchanged, and its memory once settled.

  measure.py serve-pass --slipway S --home H --config C --repo URL --n N --runs R [--poll-ms 20]
                        [--perf FILE]
      `slipway serve` over a repository that yields N environments: once untimed-ish (the
      first sync, recorded for the record), then R restarts, each timed from launch to the
      first /healthz and to the end of the start-up reconcile pass (N reconciles counted by
      /metrics, none running); the serve process's CPU time, VmRSS and VmHWM once settled,
      and the time of a POST /api/v1/refresh (fetch + discover) afterwards. With --perf, one
      more pass under `perf record` (its profile written to FILE) and one counting calls of
      the queue's scans with uprobes.
"""

import json
import os
import re
import subprocess
import sys
import time

from common import (Serve, api, cell, cpu_seconds, fmt_kib, fmt_s, goal_met, make_token, med,
                    memory_kib, options, record, synced, wait_pass)

TITLE = "3. The controller with many environments: a reconcile pass, and memory"
PASS_GOAL_S = 1.0  # a reconcile pass over 1,000 unchanged environments, on 2 cores
RSS_GOAL_BYTES = 50e6  # the controller's resident memory with 1,000 environments


# --- measurement -------------------------------------------------------------------------------


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


def cmd_serve_pass(args):
    opts = options(args)
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
        record(f"envs/first-sync/{n}", [first], cpu=[cpu_seconds(serve.pid)], **meta)
        record(f"envs/first-sync-hwm/{n}", [memory_kib(serve.pid)["VmHWM"]], unit="KiB", **meta)
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
        record(f"envs/pass/{n}", [done], cpu=[cpu], **meta)
        record(f"envs/startup/{n}", [startup], **meta)
        record(f"envs/first-reconcile/{n}", [first], **meta)
        record(f"envs/scrapes/{n}", [scrapes], unit="scrapes", **meta)
        record(f"envs/scrape-cpu/{n}", [scrape_cpu], **meta)
        record(f"envs/pass-after-startup/{n}", [done - startup], **meta)
        record(f"envs/reconcile-sum/{n}", [m["slipway_reconcile_duration_seconds_sum"]], **meta)
        record(f"envs/rss/{n}", [mem["VmRSS"]], unit="KiB", how="/proc/PID/status VmRSS", **meta)
        record(f"envs/hwm/{n}", [mem["VmHWM"]], unit="KiB", how="/proc/PID/status VmHWM", **meta)
        record(f"envs/refresh/{n}", [refresh], **meta,
               requeued=after.get("slipway_reconcile_duration_seconds_count", count) - count)
    drift_passes(slipway, home, config, repo, n, runs, meta)
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
            record(f"envs/calls-{short}/{n}", [calls], unit="calls", function=PROBED[short], **meta)


DRIFT = 'slipway_reconciles_total{trigger="drift"}'


def drift_passes(slipway, home, config, repo, n, runs, meta):
    """What the restarts above no longer do: observe every resource of every environment.
    One more `slipway serve`, its `drift_interval` set to a few seconds, runs RUNS drift
    passes (every environment queued with the drift trigger; each reconcile observes its
    files and plans); each is timed from the first drift reconcile counted to the Nth (its
    queueing, < 1 poll, is left out), with the serve process's CPU time over the same span."""
    # Room for a pass of up to ~2.5 ms per environment: at 10,000 a pass near 10 s ran into
    # the next tick on a slower machine (n / 1000 s was the interval before).
    interval = max(4.0, n / 400)
    with open(config) as f:
        text = f.read()
    drift_conf = os.path.join(home, "controller-drift.toml")
    with open(drift_conf, "w") as f:
        f.write(re.sub(r'drift_interval = "[^"]*"', f'drift_interval = "{interval:g}s"', text))
    serve = Serve(slipway, home, drift_conf, repo)
    try:
        serve.wait_healthy()
        wait_pass(serve, n, 0.05, timeout=300)
        for k in range(1, runs + 1):
            start = cpu0 = None
            deadline = time.perf_counter() + interval * 4 + 300
            while True:
                m = serve.metrics() or {}
                drift = m.get(DRIFT, 0)
                if start is None and drift > (k - 1) * n:
                    start, cpu0 = time.perf_counter(), cpu_seconds(serve.pid)
                if drift >= k * n and m.get("slipway_reconciles_running", 1) == 0:
                    took, cpu = time.perf_counter() - start, cpu_seconds(serve.pid) - cpu0
                    break
                serve.check_alive()
                if time.perf_counter() > deadline:
                    sys.exit(f"measure.py: drift pass {k} did not finish; last metrics: {m}")
                time.sleep(0.01)
            if drift > k * n:
                sys.exit(f"measure.py: drift passes overlapped (interval {interval:g} s)")
            record(f"envs/drift-pass/{n}", [took], cpu=[cpu], interval=interval, **meta)
    finally:
        serve.stop()


COMMANDS = {"serve-pass": cmd_serve_pass}


# --- report ------------------------------------------------------------------------------------


# The goals by number of environments: issue 14 asks the 1,000's again at 10,000, with twice
# the memory.
PASS_GOALS_S = {1000: PASS_GOAL_S, 10000: 1.0}
RSS_GOALS_BYTES = {1000: RSS_GOAL_BYTES, 10000: 100e6}


def sizes(samples):
    """The numbers of environments section 3 ran with, smallest first (its labels end in
    `/N`)."""
    return sorted({int(m.group(1)) for label in samples
                   for m in [re.fullmatch(r"envs/(?:pass|rss)/(\d+)", label)] if m})


def verdicts(r):
    samples, cpu = r.samples, r.cpu
    verdicts = []
    for n_envs in sizes(samples):
        S = lambda label: samples.get(f"{label}/{n_envs}")  # noqa: E731
        passes = S("envs/pass-after-startup")
        goal = PASS_GOALS_S.get(n_envs)
        if passes:
            p = med(passes)
            full = med(S("envs/pass"))
            pcpu = med(cpu[f"envs/pass/{n_envs}"]) if cpu.get(f"envs/pass/{n_envs}") else None
            if goal is None:
                verdict = "not judged: the goals are for 1,000 and 10,000 environments"
            elif p < goal:
                verdict = goal_met(passes, goal)
            else:
                verdict = "**missed**" + (
                    f" (the serve process used {fmt_s(pcpu)} of CPU for it: CPU-bound, not "
                    "waiting; see section 3)" if pcpu else "")
            drift = S("envs/drift-pass")
            verdicts.append((
                f"a reconcile pass over {n_envs:,} unchanged environments under "
                f"{goal or PASS_GOAL_S:g} s (2 cores)",
                f"median {fmt_s(p)} after start-up ({p / (goal or PASS_GOAL_S):.2f}× the goal; "
                f"min {fmt_s(min(passes))}, max {fmt_s(max(passes))}), "
                f"{p / n_envs * 1000:.2f} ms per environment; from launch {fmt_s(full)}, of "
                f"which start-up to the first `/healthz` {fmt_s(med(S('envs/startup')))}"
                + (f". The pass checks each environment's commit and desired state and observes "
                   f"nothing; a drift pass, which observes every resource, takes "
                   f"{fmt_s(med(drift))} ({med(drift) / (goal or PASS_GOAL_S):.2f}× the "
                   "goal's time; section 3)" if drift else ""),
                verdict,
            ))
        rss = S("envs/rss")
        rss_goal = RSS_GOALS_BYTES.get(n_envs)
        if rss:
            x, h = med(rss), max(S("envs/hwm") or rss)
            ok = rss_goal is not None and x * 1024 < rss_goal
            verdicts.append((
                f"controller memory with {n_envs:,} environments under "
                f"{(rss_goal or RSS_GOAL_BYTES) / 1e6:g} MB RSS",
                f"VmRSS once settled: median {fmt_kib(x)}; peak (VmHWM) at most {fmt_kib(h)}",
                ("not judged: the goals are for 1,000 and 10,000 environments" if rss_goal is None
                 else ("**met**" if ok else "**missed**")
                 + (" (the peak too)" if ok and h * 1024 < rss_goal else "")),
            ))
    return verdicts


def write(r):
    samples, cpu, args, w = r.samples, r.cpu, r.args, r.w
    ns = sizes(samples)
    if not ns:
        return False
    counts = " and ".join(f"{n:,}" for n in ns)
    w(f"## 3. The controller with {counts} environments: a reconcile pass, and memory\n")
    w(
        f"A stack of 3 `file` resources (no processes: `bench/gen.py envs`) whose family "
        f"`previews` generates an environment per `feature/*` branch; {counts} branches at "
        "main's commit (one repository and home per number), made with one `git update-ref "
        "--stdin`. `slipway serve --repo "
        "file://…` discovers, records and syncs them on its first start (setup, timed once "
        "for the record). Then it is stopped and started again, once as a warm-up and "
        "then for each timed run: on start the controller enqueues every recorded "
        "environment once, fetches, discovers, and reconciles them, "
        f"`concurrency` at a time; nothing has changed, so each finds its environment "
        "recorded `synced` at the branch's tip with the desired-state hash its commit renders "
        "to, and stops there (observing every resource is the drift interval's: the drift "
        "pass below). "
        "Timed from launching the process: until `/healthz` first answers (start-up), until "
        "`/metrics` first counts a reconcile, and until it counts "
        "`slipway_reconcile_duration_seconds_count` = N with "
        "`slipway_reconciles_running` = 0 (the pass; `slipway_queue_depth` cannot be the "
        "signal: every reconciled environment is queued again for the 5-minute safety net). "
        "`/metrics` is polled every 50 ms until a first reconcile is counted, then after half "
        "the time the rest of the pass should take at the rate seen so far, 20 ms at the "
        "least (a scrape counts the environments by state in one query). Checked: every "
        "environment recorded `synced`, no failure. "
        "Memory is the serve process's `VmRSS` and `VmHWM` (/proc/PID/status) 0.5 s after the "
        "pass. **The drift pass:** one more `slipway serve` with `drift_interval` set to "
        "max(4 s, N/400 s) runs as many drift passes as there are restarts (each tick queues "
        "every environment with the drift trigger; each reconcile observes its 3 files and "
        "plans), each timed from the first drift reconcile counted "
        "(`slipway_reconciles_total{trigger=\"drift\"}`, polled every 10 ms) to the Nth.\n"
    )
    if args.controller_conf and os.path.exists(args.controller_conf):
        with open(args.controller_conf) as f:
            w("Engine configuration of sections 3–5 (the repository is fetched only on start "
              "and on `POST /api/v1/refresh`; no drift pass during a measurement):\n")
            w("```toml\n" + f.read().strip() + "\n```\n")
    for n_envs in ns:
        write_size(r, n_envs, len(ns) > 1)
    return True


def write_size(r, n_envs, several):
    """Section 3's figures for one number of environments (under a heading of its own when
    the section ran with several)."""
    samples, cpu, meta, args, w = r.samples, r.cpu, r.meta, r.args, r.w
    S = lambda label: samples.get(f"{label}/{n_envs}")  # noqa: E731
    C = lambda label: cpu.get(f"{label}/{n_envs}")  # noqa: E731
    passes, rss = S("envs/pass-after-startup"), S("envs/rss")
    if several:
        w(f"### {n_envs:,} environments\n")
    if passes:
        pass_n = len(S("envs/pass"))
        w(f"| phase | median (min–max) of {pass_n} restarts | per environment |")
        w("|---|---|---:|")
        rows = [
            ("launch → first `/healthz` answered (start-up)", S("envs/startup"), False),
            ("launch → first reconcile counted (+ fetch, discover, first plan; ±50 ms)",
             S("envs/first-reconcile") or [], False),
            ("launch → pass done", S("envs/pass"), True),
            ("**pass after start-up** (pass done − start-up, run by run)", passes, True),
            ("CPU time of the serve process, launch → pass done (user+sys, all threads)",
             C("envs/pass") or [], True),
            ("sum of the reconcile durations (`_sum` of the histogram)",
             S("envs/reconcile-sum") or [], True),
            ("`POST /api/v1/refresh` afterwards (fetch + discover of "
             f"{n_envs:,} branches, nothing to do)", S("envs/refresh") or [], False),
            ("**a drift pass** (every environment observed and planned: first drift "
             "reconcile counted → the last)", S("envs/drift-pass") or [], True),
            ("CPU time of the serve process during the drift pass",
             C("envs/drift-pass") or [], True),
        ]
        for name, xs, per in rows:
            if not xs:
                continue
            pe = f"{med(xs) / n_envs * 1000:.2f} ms" if per else ""
            w(f"| {name} | {cell(xs)} | {pe} |")
        first = S("envs/first-sync")
        if first:
            w(f"| first start: discover, record and create all {n_envs:,} (setup, one run) | "
              f"{fmt_s(first[0])} | {first[0] / n_envs * 1000:.2f} ms |")
        w("")
        wall_p, cpu_p = med(S("envs/pass")), (med(C("envs/pass")) if C("envs/pass") else None)
        scrapes, scrape_cpu = S("envs/scrapes"), S("envs/scrape-cpu")
        if scrapes and scrape_cpu:
            w(f"The polling made {med(scrapes):.0f} scrapes per pass (median); one costs the "
              f"server {med(scrape_cpu) * 1000:.1f} ms of CPU with {n_envs:,} environments "
              f"(measured after the pass), so about {fmt_s(med(scrapes) * med(scrape_cpu))} "
              "of the CPU time above is the measurement's.\n")
        if cpu_p and S("envs/reconcile-sum"):
            w(f"The serve process kept {cpu_p / wall_p:.2f} cores busy on average from "
              f"launch to the pass done (this machine has {r.machine['nproc']}); summed "
              "reconcile durations "
              f"{fmt_s(med(S('envs/reconcile-sum')))} over the "
              f"{fmt_s(wall_p)} give {med(S('envs/reconcile-sum')) / wall_p:.1f} "
              "reconciles in flight on average.\n")
    prof_path = os.path.join(args.profile_dir, f"profile-serve-pass-{n_envs}.json") if (
        args.profile_dir) else ""
    if prof_path and os.path.exists(prof_path):
        with open(prof_path) as f:
            prof = json.load(f)
        w("**Where the pass spends its CPU** (one more restart under `perf record -F 499 "
          "--call-graph dwarf`, untimed; share of the serve process's samples, from launch "
          f"to the pass done, {prof['samples']} samples; *inclusive* counts what the function "
          "and its callees ran, *self* the function alone; functions of Slipway's crates, lock "
          "waits, `memcmp` and sqlite; a sample perf could not unwind out of a libc "
          "function counts for that function only, and its caller column stays empty):\n")
        w("| function | inclusive | self | called from (share of all samples) |")
        w("|---|---:|---:|---|")
        for f in prof["functions"][:14]:
            callers = ", ".join(f"`{name}` ({pct:.1f} %)" for name, pct in f.get("callers", []))
            w(f"| `{f['function']}` | {f['children']:.1f} % | {f['self']:.1f} % | {callers} |")
        w("")
    calls = {k: v for k, v in samples.items()
             if k.startswith("envs/calls-") and k.endswith(f"/{n_envs}")}
    if calls:
        w("**Calls counted** with uprobes (`perf probe` + `perf stat`) during one more "
          f"restart (untimed), for its {n_envs:,} reconciles: "
          + "; ".join(f"`{meta[k]['function']}` {int(v[0]):,}"
                      for k, v in sorted(calls.items()))
          + ".\n")
    if rss:
        w("**Memory of the serve process once the pass settled:**\n")
        r.table(["", "median", "min–max"], ["", ":", ":"])
        for name, label in (("VmRSS (resident now)", "envs/rss"),
                            ("VmHWM (peak resident)", "envs/hwm"),
                            ("VmHWM of the first start, which created them all (one run)",
                             "envs/first-sync-hwm")):
            xs = S(label)
            if xs:
                w(f"| {name} | {fmt_kib(med(xs))} | {min(xs) / 1024:.1f}–"
                  f"{max(xs) / 1024:.1f} MiB |")
        w("")


DIG = [
    "- The controller: `perf record --call-graph dwarf -- slipway serve ...` as section 3 "
    "does (`measure.py serve-pass ... --perf FILE`), then `perf report --children`; "
    "`/metrics` has the reconcile count and summed duration, the queue depth and the "
    "reconciles running; `GET /api/v1/environments/NAME/deployments` times each "
    "deployment.\n",
]
