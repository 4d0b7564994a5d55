"""Section 12: preview URLs across controller restarts: a loop of requests to a preview URL
while `slipway serve` is stopped (SIGTERM) and started again, then killed (SIGKILL) and
started again, with the router process (`serve --router`) and without it.

  measure.py restart --slipway S --home H --config C --repo-dir D --runs R
      For each mode (the router, then `serve` alone on a home of its own, H-alone): `slipway
      serve` over D (static `dev` tracking main, an exposed process), a thread sending GET /
      to the preview URL back to back; R rounds of SIGTERM + start + SIGKILL + start, each
      waiting for /healthz through the listener. Records the requests sent and failed (any
      answer but 200, a refused or reset connection) per round, and how long the API took to
      answer again after each stop.
"""

import os
import shutil
import signal
import threading
import time

from common import (Serve, destroy_all, fmt_s, med, options, python_under, record, request,
                    settle, wait_answer)

TITLE = "12. Preview URLs across controller restarts"
GOAL = "requests failed across a controller restart (goal: 0)"


# --- measurement -------------------------------------------------------------------------------


class Hammer:
    """GET / on the preview URL back to back until stopped: (sent, failed)."""

    def __init__(self, addr, host):
        self.addr, self.host = addr, host
        self.sent = self.failed = 0
        self.taken = (0, 0)
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            status, _ = request(self.addr, "GET", "/", host=self.host, timeout=30)
            self.sent += 1
            self.failed += status != 200

    def take(self):
        """(sent, failed) since the last take (only the thread writes the counters)."""
        now = (self.sent, self.failed)
        delta = (now[0] - self.taken[0], now[1] - self.taken[1])
        self.taken = now
        return delta

    def finish(self):
        self.stop = True
        self.thread.join()


def back(serve):
    """Seconds until /healthz answers 200 through the listener (the new serve's)."""
    t0 = time.perf_counter()
    serve.wait_healthy()
    while request(serve.addr, "GET", "/healthz", timeout=30)[0] != 200:
        serve.check_alive()
        time.sleep(0.005)
    return time.perf_counter() - t0


def stop_router(home):
    try:
        with open(os.path.join(home, "run", "router", "router.lock")) as f:
            pid = int(f.read().split()[0])
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError, IndexError):
        pass


def one_mode(slipway, home, config, repo, runs, mode):
    extra = ("--router",) if mode == "router" else ()
    serve = Serve(slipway, home, config, f"file://{repo}", extra=extra)
    hammer = None
    try:
        serve.wait_healthy()
        # The next `serve` listens where this one did (a router keeps its port anyway).
        listen = serve.addr
        host = f"dev.bench-push.localhost:{serve.port}"
        wait_answer(serve.addr, host, "bench app v0", 0.1, timeout=120, alive=serve.check_alive)
        hammer = Hammer(serve.addr, host)
        for _ in range(runs):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                hammer.take()
                serve.proc.send_signal(sig)
                serve.proc.wait()
                serve = Serve(slipway, home, config, f"file://{repo}", extra=extra,
                              listen=listen)
                took = back(serve)
                # A few answers by the new serve's time, so the round spans the whole gap.
                time.sleep(0.2)
                sent, failed = hammer.take()
                kind = "term" if sig == signal.SIGTERM else "kill"
                record(f"restart/{mode}/{kind}-failed", [failed], unit="requests")
                record(f"restart/{mode}/{kind}-sent", [sent], unit="requests")
                record(f"restart/{mode}/{kind}-back", [took])
    finally:
        if hammer:
            hammer.finish()
        destroy_all(slipway, home, ["dev"])
        serve.proc.terminate()
        serve.proc.wait()
        stop_router(home)
    left = settle(lambda: len(python_under(os.path.join(home, "envs"))), 0)
    if left:
        raise SystemExit(f"measure.py: {left} process(es) of dev left after destroy")


def cmd_restart(args):
    opts = options(args)
    slipway, home, config = opts["--slipway"], opts["--home"], opts["--config"]
    repo, runs = opts["--repo-dir"], int(opts["--runs"])
    one_mode(slipway, home, config, repo, runs, "router")
    alone = home.rstrip("/") + "-alone"
    os.makedirs(alone, exist_ok=True)
    try:
        one_mode(slipway, alone, config, repo, runs, "alone")
    finally:
        shutil.rmtree(alone, ignore_errors=True)


COMMANDS = {"restart": cmd_restart}


# --- report ------------------------------------------------------------------------------------


def total(r, label):
    xs = r.samples.get(label)
    return None if xs is None else int(sum(xs))


def verdicts(r):
    failed = [total(r, f"restart/router/{k}-failed") for k in ("term", "kill")]
    sent = [total(r, f"restart/router/{k}-sent") for k in ("term", "kill")]
    if None in failed or None in sent:
        return []
    rounds = len(r.samples.get("restart/router/term-failed", []))
    n = sum(failed)
    return [(
        GOAL,
        f"{n} of {sum(sent)} requests failed over {rounds} SIGTERM and {rounds} SIGKILL "
        "restarts of `serve --router`",
        "**met**" if n == 0 else "**missed**",
    )]


def write(r):
    if total(r, "restart/router/term-sent") is None:
        return False
    w = r.w
    w(f"## {TITLE}\n")
    w(
        "The stack of section 4 (`dev` tracking `main`, one exposed Python process). A thread "
        "sends `GET /` to the preview URL back to back (a new connection each, 30 s timeout); "
        "meanwhile each round stops `slipway serve` with SIGTERM, starts it again and waits "
        "for `/healthz` through the listener, then the same with SIGKILL. Failed: any answer "
        "but 200, or a refused or reset connection. With the router (`serve --router`) the "
        "listener is the router process's, which serves preview URLs itself; alone, `serve` "
        "owns it (a home of its own).\n"
    )
    r.table(["", "requests failed / sent", "API back after (median, max)"], ["", ":", ":"])
    for mode, name in (("router", "`serve --router`"), ("alone", "`serve` alone")):
        for kind, what in (("term", "SIGTERM + start"), ("kill", "SIGKILL + start")):
            failed = total(r, f"restart/{mode}/{kind}-failed")
            sent = total(r, f"restart/{mode}/{kind}-sent")
            back = r.samples.get(f"restart/{mode}/{kind}-back")
            if failed is None or sent is None or not back:
                continue
            r.row(f"{name}, {what}", f"{failed} / {sent}",
                  f"{fmt_s(med(back))}, {fmt_s(max(back))}")
    w("")
    return True


DIG = []
