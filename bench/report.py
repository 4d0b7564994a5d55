#!/usr/bin/env python3
"""Summarises the samples bench/run collected (one JSON line each) into docs/benchmarks.md:
how to reproduce, the machine, every section's verdicts, then each section's own part
(bench/sections/, in order) and where to dig further."""

import argparse
import datetime
import os
import platform

from common import Report, filesystem, load, sh
from sections import SECTIONS


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "nproc": sh("nproc"),
        "cpu": cpu,
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load": " ".join(open("/proc/loadavg").read().split()[:3]),
        "fs": filesystem(os.environ.get("TMPDIR", "/tmp")),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--slipway", required=True)
    ap.add_argument("--supervisord", required=True)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--elapsed", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--built-from", default="")
    ap.add_argument("--profile-dir", default="")
    ap.add_argument("--load-start", default="?")
    ap.add_argument("--controller-conf", default="")
    ap.add_argument("--only", default="", help="the sections run, if not all (BENCH_ONLY)")
    args = ap.parse_args()
    samples, cpu, meta = load(args.results)
    m = machine()
    head = sh("git", "-C", args.root, "rev-parse", "--short", "HEAD")
    dirty = sh("git", "-C", args.root, "status", "--porcelain", "--untracked-files=no", "--", "crates")
    revision = "release build of " + head + (
        " + uncommitted changes under crates/" if dirty.strip() else ""
    )
    if args.built_from:
        # Named when it was built (the work tree may have changed during the run): what the
        # tree was when the report was written is added only when it differs.
        revision = args.built_from
        if head not in args.built_from or (dirty.strip() and "uncommitted" not in revision):
            now = head + (" with uncommitted changes under crates/" if dirty.strip() else "")
            revision += f" (work tree at {now} when the report was written)"
    r = Report(samples, cpu, meta, args, m)
    w = r.w

    def skipped(section):
        """Why a section that can be skipped was (its `X-skip` command), or None."""
        return r.skip_reason(section.KEY) if hasattr(section, "KEY") else None

    w("# Benchmarks\n")
    w(
        "Written by `bench/run` — do not edit by hand, run it again. Every figure below comes "
        "from one run of the script, benchmarks and baselines interleaved on the same machine. "
        "Times are wall clock of the whole command (process start to exit), as a user sees "
        "them (sections 3–5, 7, 8 and 10 say where their clock starts and stops): **median** "
        f"(min–max) of {args.runs} runs unless a row says otherwise (section 6 counts "
        "rounds, its table says how many).\n"
    )
    if args.only:
        w(f"> **Partial run** (`BENCH_ONLY=\"{args.only}\"`): only {', '.join(args.only.split())} "
          "ran; the other sections are marked *not run in this run* and their goals are not "
          "judged. A development report: it was not written to docs/benchmarks.md.\n")
    w("## Reproduce\n")
    w("```sh\nbench/run                      # builds release slipway, sets up bench/.venv, runs all\n"
      "BENCH_RUNS=9 bench/run         # more repetitions\n"
      "BENCH_SIZES=\"1000 10000\" bench/run   # other stack sizes\n"
      "BENCH_ENVS=\"1000 10000\" bench/run   # the numbers of environments of sections 3 "
      "and 8 (the default;\n"
      "                               # section 10 takes the first)\n"
      "BENCH_PG_RUNS=7 bench/run      # more rounds of section 6 (default 5; a sample is 100 "
      "operations)\n"
      "BENCH_PG_URL=postgres://postgres@HOST:5432/postgres bench/run   # section 6's server "
      "(trust auth)\n"
      "BENCH_ONLY=pg bench/run        # only section 6 (also: plan procs serve push previews pr "
      "ui k8s\n"
      "                               # replicas wake); the report goes to a temp file, printed at "
      "the end\n"
      "BENCH_ONLY=pr bench/run        # only section 7 (GitHub's example payloads: fetched "
      "once with npm)\n"
      "BENCH_ONLY=serve,ui bench/run  # sections 3 and 8 (8 reuses 3's environments; "
      "CHROMEDRIVER=…\n"
      "                               # and CHROMIUM=… override Debian's paths)\n"
      "BENCH_ONLY=k8s bench/run       # only section 9 (starts and stops a test cluster under "
      "target/)\n"
      "BENCH_ONLY=replicas bench/run  # only section 10 (PostgreSQL as for section 6; "
      "BENCH_FAILOVER_ROUNDS,\n"
      "                               # BENCH_FAILOVER_LEASE, BENCH_FAILOVER_LONG: its failover "
      "rounds)\n"
      "BENCH_ONLY=wake bench/run      # only section 11 (PostgreSQL as for section 6)\n"
      "BENCH_SPLICE=1 BENCH_ONLY=…    # a partial run whose sections replace theirs here, "
      "the rest kept\n```\n")
    w(f"This run took {int(args.elapsed) // 60} min {int(args.elapsed) % 60} s in all "
      "(build, setup and the untimed first applies and destroys included).\n")

    w("## Machine\n")
    w("| | |\n|---|---|")
    w(f"| nproc | {m['nproc']} |")
    w(f"| CPU | {m['cpu']} |")
    w(f"| memory | {m['memory']} |")
    w(f"| kernel | {m['kernel']} |")
    w(f"| date | {m['date']} |")
    w(f"| load average (1, 5, 15 min) | at the start {args.load_start}; at the end {m['load']} "
      "(a shared machine: other work may have run alongside) |")
    w(f"| temp filesystem | {m['fs']} |")
    w(f"| slipway | {sh(args.slipway, '--version')}, {revision} |")
    w(f"| supervisord | {sh(args.supervisord, '--version')} (PyPI `supervisor`, in bench/.venv) |")
    for section in SECTIONS:
        for line in section.machine(r) if hasattr(section, "machine") else []:
            w(line)
    w(f"| python / git | {platform.python_version()} / {sh('git', '--version')} |\n")

    w("## Verdicts\n")
    r.table(["goal", "measured", "verdict"], ["", "", ""],
            [row for section in SECTIONS for row in section.verdicts(r) or (
                [r.not_judged(section.GOAL, section.TITLE.split(".")[0], skipped(section))]
                if skipped(section) else [])])
    w("")
    if args.only:
        w(f"Goals of the sections not run (`BENCH_ONLY=\"{args.only}\"`) are not judged here.\n")

    for section in SECTIONS:
        if skipped(section):
            r.skipped(section.TITLE, skipped(section), section.NEEDS)
        elif not section.write(r) and args.only:
            r.not_run(section.TITLE)

    w("## How to dig further\n")
    w("".join(bullet for section in SECTIONS for bullet in section.DIG))
    with open(args.out, "w") as f:
        f.write("\n".join(r.lines).rstrip() + "\n")


if __name__ == "__main__":
    main()
