"""Section 5: a new branch to its preview answering (3 processes), against the same brought up
by a hand-written script (git archive + nohup, bench/preview-by-hand.sh) and by supervisord,
interleaved round by round.

  measure.py previews --slipway S --home H --config C --repo-dir D --runs R --work DIR
                      --script FILE --supervisord FILE [--poll-ms 20]
      R rounds of: a new commit pushed as branch feature/bench-N, POST /api/v1/refresh, time
      until its preview URL answers (slipway); the same commit brought up by FILE, a shell
      script with git + nohup; and by supervisord from a git export. Each is checked (3
      processes live) and torn down (no process left) untimed.
"""

import datetime
import os
import shutil
import signal
import subprocess
import sys
import time

from common import (Serve, api, cell, destroy_all, export, finished_deployment, fmt_s,
                    free_port, git, kill, make_token, med, new_version, options, python_under,
                    reap, record, request, settle, stop, stop_pids, supervisord_conf, wait_answer,
                    wall_s, zombie)

TITLE = "5. A new branch to its preview environment answering: slipway vs by hand"
PREVIEW_GOAL_S = 2.0  # a new branch to its preview answering, 3 processes


# --- measurement -------------------------------------------------------------------------------


def preview_supervisord_conf(d, src, port):
    programs = ["[program:web]", f"command=python3 {src}/app.py --port {port}",
                f"directory={src}", ""]
    for w in ("a", "b"):
        programs += [f"[program:worker-{w}]", f"command=python3 {src}/worker.py {w}",
                     f"directory={src}", ""]
    return supervisord_conf(d, programs, "info")


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


def cmd_previews(args):
    opts = options(args)
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
            sha = new_version(repo, version, index)
            branch, env = f"feature/bench-{i}", f"br-feature-bench-{i}"
            host = f"{env}.bench-preview.localhost:{serve.port}"
            t0, w0 = time.perf_counter(), time.time()
            git(repo, "branch", branch, sha)
            branched = time.perf_counter() - t0
            api(serve.addr, token, "POST", "/api/v1/refresh")
            refreshed = time.perf_counter() - t0
            # A family's previews are private: a script or a test suite sends its API token.
            wait_answer(serve.addr, host, f"bench app {version}", poll, alive=serve.check_alive,
                        token=token)
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
            sha = new_version(repo, version, index)
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
                kill(-proc.pid, signal.SIGTERM)
            stop_pids(pids, "the script's processes")
            record("previews/script", [total])
            git(repo, "branch", "-D", f"hand/bench-{i}")
            shutil.rmtree(d_hand)

            # -- supervisord from a git export
            version = f"sv-{i}"
            sha = new_version(repo, version, index)
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
                stop(sv)
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
        envs = os.path.join(home, "envs")
        destroy_all(slipway, home, sorted(os.listdir(envs)) if os.path.isdir(envs) else [])


COMMANDS = {"previews": cmd_previews}


# --- report ------------------------------------------------------------------------------------


def verdicts(r):
    samples = r.samples
    verdicts = []
    pv = samples.get("previews/slipway")
    if pv:
        by_hand, sv = samples.get("previews/script"), samples.get("previews/supervisord")
        fig = f"slipway median {fmt_s(med(pv))} (max {fmt_s(max(pv))})"
        if by_hand:
            fig += f"; a git+nohup script {fmt_s(med(by_hand))}"
        if sv:
            fig += f"; supervisord {fmt_s(med(sv))}"
        verdicts.append((
            f"`git push` of a new branch to its preview answering under {PREVIEW_GOAL_S:g} s "
            "(3 processes)",
            fig,
            ("**met**" if med(pv) < PREVIEW_GOAL_S else "**missed**")
            + (" (every run)" if max(pv) < PREVIEW_GOAL_S else
               " by the median, not by every run" if med(pv) < PREVIEW_GOAL_S else ""),
        ))
    return verdicts


def write(r):
    samples, w = r.samples, r.w
    pv = samples.get("previews/slipway")
    if not pv:
        return False
    w("## 5. A new branch to its preview environment answering: slipway vs by hand\n")
    w(
        "A stack of 3 processes (`bench/gen.py previews`): `web` (the `app.py` above, "
        "exposed, with its health check) and two workers (`python3 worker.py`, sleeping), in "
        "a family `previews` on `feature/*`. Every run brings up a commit never seen before "
        "(made untimed with `git commit-tree`, on no branch yet). The three ways run "
        "interleaved, round by round; each is timed from the `git branch` that publishes "
        "the commit until `GET /` answers that commit's version, polled every 20 ms, "
        "and checked afterwards (3 processes live), then torn down untimed (no process "
        "left).\n\n"
        "- **slipway**: `git branch feature/bench-N <commit>` in the served repository, "
        "`POST /api/v1/refresh`, then the preview URL `http://br-feature-bench-n."
        "bench-preview.localhost:<port>/` through the serve port, with a Slipway API token "
        "(`Authorization: Bearer`, as a script or a test suite sends it: a family's previews "
        "are private by default, and answer `401` without one). Torn down by deleting the "
        "branch and refreshing again (the environment is destroyed).\n"
        "- **script**: `bench/preview-by-hand.sh`, what a team would write: `git branch`, "
        "`git archive | tar -x` into a directory, the 3 processes started with `nohup`, "
        "then `curl` every 20 ms until the web process answers on its port.\n"
        "- **supervisord**: `git branch`, `git archive | tar -x`, a `supervisord.conf` with "
        "the 3 programs (default settings), `supervisord -n -c` launched, then the web "
        "process's port polled.\n"
    )
    ways = (("slipway", "previews/slipway"), ("script (git archive + nohup)", "previews/script"),
            ("supervisord", "previews/supervisord"))
    r.table(["way", "runs", "branch → preview answering", "÷ slipway"], ["", ":", "", ":"],
            [(name, len(xs), cell(xs), f"{med(xs) / med(pv):.2f}×")
             for name, xs in ((name, samples.get(label)) for name, label in ways) if xs])
    w("")
    w("Slipway's time, split (from the same start):\n")
    r.table(["", "median (min–max)"], ["", ""])
    r.rows((
        ("`git branch` done", "previews/slipway-branch"),
        ("`POST /api/v1/refresh` returned (fetch + discover + environment recorded)",
         "previews/slipway-refresh"),
        ("the deployment started (recorded `started_at`)", "previews/slipway-deploy-started"),
        ("the deployment's recorded duration (3 processes started, web healthy; it can end "
         "after the first answer)", "previews/slipway-deploy-duration"),
    ))
    w("")
    gap = samples.get("previews/supervisord-spawn-gap")
    if gap:
        w(f"supervisord's log puts its first `spawned:` {fmt_s(med(gap))} (median) after "
          "`supervisord started`: it starts programs on a pass of its main loop, which "
          "first waits up to 1 s for an event, and nothing talks to it here. A team running "
          "one long-lived supervisord and adding programs with `supervisorctl update` "
          "would not pay that wait; that setup is not measured here.\n")
    return True


DIG = []  # (what serve-pass profiles covers this section too)
