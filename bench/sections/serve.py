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


COMMANDS = {"serve-pass": cmd_serve_pass}


# --- report ------------------------------------------------------------------------------------


def verdicts(r):
    samples, cpu, meta = r.samples, r.cpu, r.meta
    verdicts = []
    passes = samples.get("envs/pass-after-startup")
    if passes:
        n_envs = int(meta["envs/pass"]["n"])
        p = med(passes)
        full = med(samples["envs/pass"])
        pcpu = med(cpu["envs/pass"]) if cpu.get("envs/pass") else None
        if n_envs != 1000:
            verdict = "not judged: the goal is for 1,000 environments"
        elif p < PASS_GOAL_S:
            verdict = goal_met(passes, PASS_GOAL_S)
        else:
            verdict = "**missed**" + (
                f" (the serve process used {fmt_s(pcpu)} of CPU for it: CPU-bound, not waiting; "
                "see section 3)" if pcpu else "")
        verdicts.append((
            f"a reconcile pass over {n_envs:,} unchanged environments under "
            f"{PASS_GOAL_S:g} s (2 cores)",
            f"median {fmt_s(p)} after start-up ({p / PASS_GOAL_S:.2f}× the goal; "
            f"min {fmt_s(min(passes))}, max {fmt_s(max(passes))}), "
            f"{p / n_envs * 1000:.2f} ms per environment; from launch {fmt_s(full)}, of which "
            f"start-up to the first `/healthz` {fmt_s(med(samples['envs/startup']))}",
            verdict,
        ))
    rss = samples.get("envs/rss")
    if rss:
        n_envs = int(meta["envs/rss"]["n"])
        r, h = med(rss), max(samples.get("envs/hwm", rss))
        ok = r * 1024 < RSS_GOAL_BYTES
        verdicts.append((
            f"controller memory with {n_envs:,} environments under {RSS_GOAL_BYTES / 1e6:g} MB RSS",
            f"VmRSS once settled: median {fmt_kib(r)}; peak (VmHWM) at most {fmt_kib(h)}",
            ("**met**" if ok else "**missed**")
            + ("" if n_envs == 1000 else " (not the 1,000 of the goal)")
            + (" (the peak too)" if ok and h * 1024 < RSS_GOAL_BYTES else ""),
        ))
    return verdicts


def write(r):
    samples, cpu, meta, args, w = r.samples, r.cpu, r.meta, r.args, r.w
    passes, rss = samples.get("envs/pass-after-startup"), samples.get("envs/rss")
    if not (passes or rss):
        return False
    n_envs = int(meta.get("envs/pass", meta.get("envs/rss", {})).get("n", 0))
    w(f"## 3. The controller with {n_envs:,} environments: a reconcile pass, and memory\n")
    w(
        f"A stack of 3 `file` resources (no processes: `bench/gen.py envs`) whose family "
        f"`previews` generates an environment per `feature/*` branch; {n_envs:,} branches at "
        "main's commit, made with one `git update-ref --stdin`. `slipway serve --repo "
        "file://…` discovers, records and syncs them on its first start (setup, timed once "
        "for the record). Then it is stopped and started again, once as a warm-up and "
        "then for each timed run: on start the controller enqueues every recorded "
        "environment once, fetches, discovers, and reconciles them, "
        f"`concurrency` at a time; nothing has changed, so each reconcile only plans. "
        "Timed from launching the process: until `/healthz` first answers (start-up), until "
        "`/metrics` first counts a reconcile, and until it counts "
        f"`slipway_reconcile_duration_seconds_count` = {n_envs:,} with "
        "`slipway_reconciles_running` = 0 (the pass; `slipway_queue_depth` cannot be the "
        "signal: every reconciled environment is queued again for the 5-minute safety net). "
        "A scrape of `/metrics` is not free for the server (it reads every environment's "
        "record to count them by state), so it is polled sparingly: every 50 ms until a first "
        "reconcile is counted, then after half the time the rest of the pass should take at "
        "the rate seen so far, 20 ms at the least. Checked: every environment recorded "
        "`synced`, no failure. "
        "Memory is the serve process's `VmRSS` and `VmHWM` (/proc/PID/status) 0.5 s after the "
        "pass.\n"
    )
    if args.controller_conf and os.path.exists(args.controller_conf):
        with open(args.controller_conf) as f:
            w("Engine configuration of sections 3–5 (the repository is fetched only on start "
              "and on `POST /api/v1/refresh`; no drift pass during a measurement):\n")
            w("```toml\n" + f.read().strip() + "\n```\n")
    if passes:
        pass_n = len(samples["envs/pass"])
        w(f"| phase | median (min–max) of {pass_n} restarts | per environment |")
        w("|---|---|---:|")
        rows = [
            ("launch → first `/healthz` answered (start-up)", samples["envs/startup"], False),
            ("launch → first reconcile counted (+ fetch, discover, first plan; ±50 ms)",
             samples.get("envs/first-reconcile", []), False),
            ("launch → pass done", samples["envs/pass"], True),
            ("**pass after start-up** (pass done − start-up, run by run)", passes, True),
            ("CPU time of the serve process, launch → pass done (user+sys, all threads)",
             cpu.get("envs/pass", []), True),
            ("sum of the reconcile durations (`_sum` of the histogram)",
             samples.get("envs/reconcile-sum", []), True),
            ("`POST /api/v1/refresh` afterwards (fetch + discover of "
             f"{n_envs:,} branches, nothing to do)", samples.get("envs/refresh", []), False),
        ]
        for name, xs, per in rows:
            if not xs:
                continue
            pe = f"{med(xs) / n_envs * 1000:.2f} ms" if per else ""
            w(f"| {name} | {cell(xs)} | {pe} |")
        first = samples.get("envs/first-sync")
        if first:
            w(f"| first start: discover, record and create all {n_envs:,} (setup, one run) | "
              f"{fmt_s(first[0])} | {first[0] / n_envs * 1000:.2f} ms |")
        w("")
        wall_p, cpu_p = med(samples["envs/pass"]), (
            med(cpu["envs/pass"]) if cpu.get("envs/pass") else None)
        scrapes, scrape_cpu = samples.get("envs/scrapes"), samples.get("envs/scrape-cpu")
        if scrapes and scrape_cpu:
            w(f"The polling made {med(scrapes):.0f} scrapes per pass (median); one costs the "
              f"server {med(scrape_cpu) * 1000:.1f} ms of CPU with {n_envs:,} environments "
              f"(measured after the pass), so about {fmt_s(med(scrapes) * med(scrape_cpu))} "
              "of the CPU time above is the measurement's.\n")
        if cpu_p:
            w(f"The serve process kept {cpu_p / wall_p:.2f} cores busy on average from "
              f"launch to the pass done (this machine has {r.machine['nproc']}); summed reconcile "
              "durations "
              f"{fmt_s(med(samples['envs/reconcile-sum']))} over the "
              f"{fmt_s(wall_p)} give {med(samples['envs/reconcile-sum']) / wall_p:.1f} "
              "reconciles in flight on average.\n")
    prof_path = os.path.join(args.profile_dir, "profile-serve-pass.json") if (
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
    calls = {k: v for k, v in samples.items() if k.startswith("envs/calls-")}
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
            xs = samples.get(label)
            if xs:
                w(f"| {name} | {fmt_kib(med(xs))} | {min(xs) / 1024:.1f}–"
                  f"{max(xs) / 1024:.1f} MiB |")
        w("")
    return True


DIG = [
    "- The controller: `perf record --call-graph dwarf -- slipway serve ...` as section 3 "
    "does (`measure.py serve-pass ... --perf FILE`), then `perf report --children`; "
    "`/metrics` has the reconcile count and summed duration, the queue depth and the "
    "reconciles running; `GET /api/v1/environments/NAME/deployments` times each "
    "deployment.\n",
]
