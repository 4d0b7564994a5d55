"""Section 4: push to running: a commit to main, POST /api/v1/refresh at once, time until the
new version answers on the preview URL, against the app's own start-up.

  measure.py push --slipway S --home H --config C --repo-dir D --runs R [--poll-ms 20]
      `slipway serve` over D (static `dev` tracking main, an exposed process): R times, commit
      a new VERSION to main, POST /api/v1/refresh at once and time until the preview URL
      answers the new version; interleaved with the app's own start-up (python3 app.py by
      hand, time to its first answer).
"""

import os
import subprocess
import sys
import time

from common import (Serve, api, destroy_all, export, finished_deployment, fmt_s,
                    free_port, git, make_token, med, options, python_under, reap, record,
                    settle, wait_answer, wall_s)

TITLE = "4. Push to running"
PUSH_GOAL_S = 1.0  # push to running, beyond the app's own start-up


# --- measurement -------------------------------------------------------------------------------


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


def cmd_push(args):
    opts = options(args)
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
        destroy_all(slipway, home, ["dev"])
    left = settle(lambda: len(python_under(os.path.join(home, "envs"))), 0)
    if left:
        sys.exit(f"measure.py: {left} process(es) of dev left after destroy")


COMMANDS = {"push": cmd_push}


# --- report ------------------------------------------------------------------------------------


def verdicts(r):
    samples = r.samples
    verdicts = []
    push_t, app_t = samples.get("push/slipway"), samples.get("push/app-start")
    if push_t and app_t:
        beyond = med(push_t) - med(app_t)
        worst = max(push_t) - med(app_t)
        verdicts.append((
            f"push to running (file:// repository, refresh at once) under {PUSH_GOAL_S:g} s "
            "plus the app's own start-up",
            f"median {fmt_s(med(push_t))} (max {fmt_s(max(push_t))}) − the app's start-up "
            f"{fmt_s(med(app_t))} = {fmt_s(beyond)} ({beyond / PUSH_GOAL_S:.2f}× the goal)",
            ("**met**" if beyond < PUSH_GOAL_S else "**missed**")
            + (" (every run)" if beyond < PUSH_GOAL_S and worst < PUSH_GOAL_S else ""),
        ))
    return verdicts


def write(r):
    samples, w = r.samples, r.w
    push_t, app_t = samples.get("push/slipway"), samples.get("push/app-start")
    if not push_t:
        return False
    w("## 4. Push to running\n")
    w(
        "A stack with one static environment `dev` tracking `main` and one exposed "
        "`process` (`bench/gen.py push`: `app.py`, a Python HTTP server answering `bench app "
        "<VERSION>` from the repository's `VERSION` file, read at start; `health: { http: "
        "/healthz }`), served by `slipway serve --repo file://…`. Each run commits a new "
        "`VERSION` to `main` (untimed), then, timed: `POST /api/v1/refresh` at once, and "
        "`GET /` on the preview URL (`Host: dev.bench-push.localhost:<port>` to the serve "
        "port) every 20 ms until the new version answers. The deployment's own start and end "
        "come from `GET /api/v1/environments/dev/deployments` (relative to the same start). "
        "The app's own start-up is timed alongside, run by run: `python3 app.py --port P` "
        "launched by hand from a `git archive` of the repository, until its first answer, "
        "polled the same way.\n"
    )
    r.table(["", "median (min–max)"], ["", ""])
    r.rows((
        ("**commit → new version answering** (refresh at once)", "push/slipway"),
        ("… of which `POST /api/v1/refresh` returned (fetch + discover)", "push/refresh"),
        ("… the deployment started (recorded `started_at`)", "push/deploy-started"),
        ("the deployment's recorded duration (it goes on after the new version answers: "
         "the old instance is stopped last)", "push/deploy-duration"),
        ("the app's own start-up (`python3 app.py` by hand → first answer)", "push/app-start"),
    ))
    if app_t:
        w(f"| **latency − the app's start-up** (medians) | {fmt_s(med(push_t) - med(app_t))} |")
    w("")
    failed = samples.get("push/failed-requests")
    if failed is not None:
        w(f"While the new version started, the old one kept answering: {int(sum(failed))} "
          f"request(s) of the 20 ms polling failed over the {len(failed)} runs.\n")
    return True


DIG = []  # (what serve-pass profiles covers this section too)
