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
        for n in range(2, 10):
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


if __name__ == "__main__":
    unittest.main()
