"""Checks of the benchmark harness that need no slipway binary: every command bench/run calls
exists, and the report of partial or skipped runs says what ran. Run with
`python3 -m unittest discover -s bench/tests` from the repository's root."""

import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, BENCH)

import measure  # noqa: E402


def report(records, only=""):
    """The report bench/report.py writes from these samples (one dict per JSON line)."""
    with tempfile.TemporaryDirectory() as tmp:
        results, out = os.path.join(tmp, "results.jsonl"), os.path.join(tmp, "report.md")
        with open(results, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        subprocess.run(
            [sys.executable, os.path.join(BENCH, "report.py"), "--results", results, "--out",
             out, "--slipway", "true", "--supervisord", "true", "--runs", "3", "--elapsed", "60",
             "--root", os.path.dirname(BENCH), "--only", only],
            check=True, capture_output=True,
        )
        with open(out) as f:
            return f.read()


def section(text, number):
    """The part of a report from its section `number`'s heading to the next heading."""
    m = re.search(rf"^## {number}\. .*?(?=^## )", text, re.M | re.S)
    return m.group(0) if m else ""


class Harness(unittest.TestCase):
    def test_every_command_bench_run_calls_exists(self):
        with open(os.path.join(BENCH, "run")) as f:
            called = set(re.findall(r'"\$\{MEASURE\[@\]\}" ([a-z0-9-]+)', f.read()))
        self.assertGreater(len(called), 15)
        self.assertEqual(called - set(measure.COMMANDS), set())

    def test_a_partial_run_marks_what_did_not_run(self):
        # Section 1 alone (its peak RSS samples once made section 3 appear, with 0
        # environments, in a report where it had not run).
        plan = [{"label": f"{what}/{n}", "unit": unit, "samples": [v * n], "cpu": [v * n],
                 "n": n}
                for n in (1000, 2000)
                for what, unit, v in (("plan", "s", 3e-5), ("validate", "s", 1e-5),
                                      ("render", "s", 2e-5), ("rss-plan", "KiB", 3))]
        text = report(plan, only="plan")
        self.assertIn("| 2,000 |", section(text, 1))
        for n in range(2, 11):
            self.assertIn("*Not run in this run*", section(text, n), f"section {n}")

    def test_skipped_sections_say_why(self):
        notes = [{"label": f"{key}/skipped", "unit": "note", "samples": [],
                  "reason": f"no {key} here"} for key in ("pg", "pr", "ui", "k8s")]
        text = report(notes)
        for n, key in ((6, "pg"), (7, "pr"), (8, "ui"), (9, "k8s")):
            self.assertIn(f"**Skipped in this run** — no {key} here", section(text, n))
            self.assertIn(f"not judged: section {n} skipped (no {key} here)", text)

    def test_the_kubernetes_section_reports_ratios(self):
        recs = [{"label": "k8s/setup", "unit": "note", "samples": [], "n": 200,
                 "kinds": {"ConfigMap": 40, "Secret": 40}, "server": "v1.34.4",
                 "client": "v1.32.0"}]
        for step, s, k in (("create", 2.0, 4.0), ("reapply", 1.0, 4.0), ("plan", 0.5, 1.0),
                           ("update", 1.5, 3.0)):
            recs += [{"label": f"k8s/{step}/slipway", "unit": "s", "samples": [s], "cpu": [0.1]},
                     {"label": f"k8s/{step}/kubectl", "unit": "s", "samples": [k], "cpu": [0.2]}]
        text = report(recs, only="k8s")
        self.assertIn("| first apply: create the namespace and N objects | 2.00 s | 4.00 s | "
                      "**0.50×** |", section(text, 9))
        self.assertIn("plan 500 ms vs 1.00 s: **0.50×**", text)
        self.assertIn("kube-apiserver v1.34.4", text)

    def test_the_floor_verdict_reports_what_the_issue_derived_from_it(self):
        # Within 2× the floor, yet only 3× faster than a supervisord that takes 6× the floor:
        # the ≥ 4× the issue expected from the floor goal is reported missed, not hidden.
        recs = [{"label": label, "unit": "s", "samples": [v], "cpu": [v]}
                for label, v in (("procs/slipway-p32", 0.12), ("procs/floor-spawn", 0.07),
                                 ("procs/supervisord-startsecs0", 0.36),
                                 ("procs/supervisord-startsecs1", 1.56))]
        text = report(recs, only="procs")
        row = next(line for line in text.splitlines() if "the fork+exec floor (issue 14" in line)
        self.assertIn("**1.71×**", row)
        self.assertIn("3.0× faster than supervisord `startsecs=0` (the issue's ≥ 4×: missed)", row)
        self.assertIn("13.0× faster than supervisord `startsecs=1` (the issue's ≥ 12×: met)", row)
        self.assertIn("| **met**; what the issue derived from it", row)
        self.assertIn("**missed** here: 3.0× against `startsecs=0` |", row)

    def test_the_database_verdict_is_the_ratio_of_medians_with_each_rounds_own(self):
        recs = [{"label": "pg/server", "unit": "note", "samples": [],
                 "settings": {"server_version": "15.18"}, "server": "postgres@127.0.0.1"}]
        for label, xs in (("pg/create/slipway", [2.2, 2.6, 2.4]),
                          ("pg/create/createdb", [2.0, 2.0, 2.0]),
                          ("pg/drop/slipway", [1.1, 1.0, 1.3]),
                          ("pg/drop/dropdb", [1.0, 1.0, 1.0])):
            recs.append({"label": label, "unit": "s", "samples": xs, "cpu": xs, "n": 100})
        text = report(recs, only="pg")
        self.assertIn("Per round, create: 1.10×, 1.30×, 1.20×; drop: 1.10×, 1.00×, 1.30×", text)
        self.assertIn("**met** (create 1.20×, drop 1.10×)", text)

    def test_the_replicas_section_reports_ratios_and_the_failover_bound(self):
        recs = [{"label": "replicas/server", "unit": "note", "samples": [],
                 "settings": {"server_version": "15.18", "fsync": "off",
                              "synchronous_commit": "on"}, "server": "postgres@127.0.0.1:5432"}]
        for state, t in (("sqlite", 0.5), ("pg1", 2.0), ("pg3", 3.0)):
            recs += [{"label": f"replicas/pass/{state}", "unit": "s", "samples": [t],
                      "cpu": [t], "n": 1000},
                     {"label": f"replicas/pass-after-startup/{state}", "unit": "s",
                      "samples": [t - 0.1], "n": 1000}]
        recs += [{"label": "replicas/failover/3", "unit": "s", "samples": [5.5, 6.5, 8.0],
                  "lease_s": 3.0, "envs": 10},
                 {"label": "replicas/failover/15", "unit": "s", "samples": [31.0],
                  "lease_s": 15.0, "envs": 10},
                 {"label": "replicas/write/sqlite/event", "unit": "s", "samples": [1e-4],
                  "n": 500},
                 {"label": "replicas/write/postgres/event", "unit": "s", "samples": [4e-4],
                  "n": 500}]
        text = report(recs, only="replicas")
        self.assertIn("3 replicas 3.00 s, 1 replica 2.00 s: **1.50×**", text)
        self.assertIn("an event: SQLite 100 µs, PostgreSQL 400 µs: **4.0×**", text)
        # 8 s is past 2L + L/3 = 7 s for a 3 s lease.
        self.assertIn("**missed** (a round past the bound)", text)
        self.assertIn("| 3 s | 3 | ", section(text, 10))
        self.assertIn("`fsync=off`", text)


    def test_sections_3_and_8_report_each_number_of_environments_with_its_goals(self):
        recs = []
        for n, t in ((1000, 0.5), (10000, 4.0)):
            for label, v in (("pass", t + 0.05), ("pass-after-startup", t), ("startup", 0.05)):
                recs.append({"label": f"envs/{label}/{n}", "unit": "s", "samples": [v],
                             "cpu": [v], "n": n})
            recs.append({"label": f"envs/rss/{n}", "unit": "KiB", "samples": [30000 * n / 1000],
                         "n": n})
            for label, v in (("load-painted", 0.4), ("filter-apply-painted", 0.02),
                             ("filter-clear-painted", 0.03), ("api-python", t / 20)):
                recs.append({"label": f"ui/{label}/{n}", "unit": "s", "samples": [v],
                             **({"n": n, "bytes": 800 * n} if label == "api-python" else {})})
        text = report(recs, only="serve ui")
        self.assertIn("| a reconcile pass over 1,000 unchanged environments under 1 s (2 cores) |",
                      text)
        self.assertIn("| a reconcile pass over 10,000 unchanged environments under 1 s (2 cores) |",
                      text)
        self.assertIn("controller memory with 10,000 environments under 100 MB RSS", text)
        self.assertIn("| dashboard with 1,000 environments: first render under 1 s", text)
        self.assertIn("| dashboard with 10,000 environments: first render under 1 s, any filter "
                      "change under 100 ms", text)
        self.assertRegex(text, r"\| `GET /api/v1/environments` for 10,000 environments under "
                               r"200 ms \(issue 14\) \| median 200 ms .*\| \*\*missed\*\*")
        self.assertIn("### 10,000 environments", section(text, 3))
        self.assertIn("### 1,000 environments", section(text, 8))


class Splice(unittest.TestCase):
    def test_a_partial_run_replaces_its_section_and_keeps_the_others(self):
        full = ("# Benchmarks\n\nWritten by `bench/run`.\n\n## Reproduce\n\n```sh\nold\n```\n\n"
                "## Machine\n\n| | |\n|---|---|\n| date | 2026-12-01 |\n| python / git | x |\n\n"
                "## Verdicts\n\n| goal | measured | verdict |\n|---|---|---|\n"
                "| plan fast | 1 s | **met** |\n\n## 1. Plan\n\nold figures 1\n\n"
                "## 9. K8s\n\nold figures 9\n\n## How to dig further\n\n- one\n")
        partial = ("# Benchmarks\n\n## Reproduce\n\n```sh\nnew\n```\n\n## Machine\n\n"
                   "| | |\n|---|---|\n| date | 2026-12-02 |\n| load average (1, 5, 15 min) | at "
                   "the start 1; at the end 2 (shared) |\n| slipway | v |\n"
                   "| PostgreSQL (section 10) | pg |\n| python / git | x |\n\n"
                   "## Verdicts\n\n| goal | measured | verdict |\n|---|---|---|\n"
                   "| failover | 6 s | **met** |\n\n## 1. Plan\n\n*Not run in this run* (x).\n\n"
                   "## 10. Replicas\n\nnew figures 10\n\n## How to dig further\n\n- one\n"
                   "- **Section 10**: here\n")
        with tempfile.TemporaryDirectory() as tmp:
            paths = [os.path.join(tmp, f) for f in ("full.md", "partial.md")]
            for path, text in zip(paths, (full, partial)):
                with open(path, "w") as f:
                    f.write(text)
            for _ in range(2):  # twice: the second splice replaces the first
                subprocess.run([sys.executable, os.path.join(BENCH, "splice.py"), "--partial",
                                paths[1], "--into", paths[0], "--only", "replicas"],
                               check=True, capture_output=True)
            with open(paths[0]) as f:
                text = f.read()
        self.assertIn("old figures 1", section(text, 1))
        self.assertIn("old figures 9", section(text, 9))
        self.assertIn("new figures 10", section(text, 10))
        self.assertIn("Section 10 from a partial run on 2026-12-02", section(text, 10))
        self.assertLess(text.index("## 9."), text.index("## 10."))
        self.assertLess(text.index("## 10."), text.index("## How to dig further"))
        self.assertEqual(text.count("| failover *(partial run of 2026-12-02)* | 6 s |"), 1)
        self.assertIn("| plan fast | 1 s | **met** |", text)
        self.assertEqual(text.count("| PostgreSQL (section 10) | pg |"), 1)
        self.assertEqual(text.count("> **Spliced in:** section 10"), 1)
        self.assertNotIn("\n\n\n", text, "the splices leave no run of blank lines")
        self.assertIn("```sh\nnew\n```", text)
        self.assertEqual(text.count("- **Section 10**: here"), 1)
        self.assertIn("| date | 2026-12-01 |", text)
        # The load at the partial run's end, not its start again.
        self.assertIn("at the end 2;", text)


if __name__ == "__main__":
    unittest.main()
