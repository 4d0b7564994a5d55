"""Section 11: wake to first byte: the quickstart's web process, asleep (`sleep_after`, here put
to sleep by hand), woken by a request through its preview URL, against the same process's cold
start by hand.

  measure.py wake --slipway S --home H --config C --repo-dir D --runs R
      `slipway serve` over D (bench/gen.py wake: examples/quickstart, `dev` alone, on the
      PostgreSQL server of C's [postgres.main]): R rounds of, interleaved: the web process's
      cold start by hand (its supervisor's own spec: command, environment and directory, on
      a free port) until the first byte of `GET /`; then `POST .../dev/sleep` (untimed) and
      `GET /` through the preview URL until its first byte (the wake) and its last.
  measure.py wake-skip REASON
      Records that the section did not run, and why (no PostgreSQL server).
"""

import json
import os
import socket
import subprocess
import sys
import time

from common import (Serve, api, destroy_all, fmt_s, free_port, make_token, med, options,
                    python_under, reap, record, request, settle, skip_command)

TITLE = "11. Wake to first byte"
KEY = "wake"
GOAL = ("wake to first byte: a sleeping environment's first request answered within 1 s plus "
        "its process's own cold start")
WAKE_GOAL_S = 1.0  # beyond the process's own cold start
NEEDS = ("It needs the PostgreSQL server of section 6 (`BENCH_PG_URL`): the quickstart's web "
         "process counts its visits in a database of its environment's own.")


# --- measurement -------------------------------------------------------------------------------


def first_byte(addr, host, path="/", timeout=120.0):
    """One `GET path` on a fresh connection: (seconds to its first byte, seconds to its end,
    status), or None if the connection is refused."""
    hostname, port = addr.rsplit(":", 1)
    t0 = time.perf_counter()
    try:
        conn = socket.create_connection((hostname, int(port)), timeout=timeout)
    except OSError:
        return None
    with conn:
        conn.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        first = conn.recv(1)
        t_first = time.perf_counter() - t0
        if not first:
            return None
        rest = [first]
        while chunk := conn.recv(65536):
            rest.append(chunk)
        t_all = time.perf_counter() - t0
    head = b"".join(rest).split(b"\r\n", 1)[0].split()
    status = int(head[1]) if len(head) > 1 and head[1].isdigit() else 0
    return t_first, t_all, status


def running_spec(home):
    """The supervisor's spec of the environment's web process (its instance slot that runs):
    what it runs, with which environment, where. The engine sends it with the start, and the
    supervisor keeps it in the process's state file (`web.json`, under `spec`); a spec file
    beside it (`web.spec.json`) is what an engine writes for a spec too large to send."""
    run = os.path.join(home, "envs", "dev", "run")
    for slot in ("web", "web@b"):
        path = os.path.join(run, f"{slot}.spec.json")
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        path = os.path.join(run, f"{slot}.json")
        if os.path.exists(path):
            with open(path) as f:
                spec = json.load(f).get("spec")
            if spec:
                return spec
    sys.exit(f"measure.py: no spec of dev's web process in {run}")


def by_hand(spec, poll=0.005, timeout=60):
    """Seconds from launching the spec's command by hand (on a free port) to the first byte
    of its answer to `GET /`."""
    port = free_port()
    command = list(spec["command"])
    command[command.index("--port") + 1] = str(port)
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, cwd=spec["cwd"], env=spec["env"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while True:
            got = first_byte(f"127.0.0.1:{port}", f"127.0.0.1:{port}", timeout=30)
            if got and got[2] == 200:
                return time.perf_counter() - t0
            if proc.poll() is not None or time.perf_counter() - t0 > timeout:
                sys.exit(f"measure.py: the web process by hand did not answer ({command})")
            time.sleep(poll)
    finally:
        proc.terminate()
        proc.wait()


def cmd_wake(args):
    opts = options(args)
    slipway, home, config = opts["--slipway"], opts["--home"], opts["--config"]
    runs = int(opts["--runs"])
    token = make_token(slipway, home)
    serve = Serve(slipway, home, config, f"file://{opts['--repo-dir']}")
    try:
        serve.wait_healthy()
        host = f"dev.quickstart.localhost:{serve.port}"
        deadline = time.perf_counter() + 180
        # The first deployment (database, migration, seed, web): untimed.
        while request(serve.addr, "GET", "/", host=host, timeout=10)[0] != 200:
            serve.check_alive()
            if time.perf_counter() > deadline:
                sys.exit("measure.py: dev's preview URL never answered")
            time.sleep(0.1)
        for _ in range(runs):
            record("wake/by-hand", [by_hand(running_spec(home))])
            env = api(serve.addr, token, "POST", "/api/v1/environments/dev/sleep")
            if env.get("activity") != "sleeping":
                sys.exit(f"measure.py: dev did not fall asleep: {env}")
            got = first_byte(serve.addr, host)
            if not got or got[2] != 200:
                sys.exit(f"measure.py: the request that woke dev was answered {got}")
            record("wake/first-byte", [got[0]])
            record("wake/response", [got[1]])
            time.sleep(0.3)
    finally:
        serve.stop()
        destroy_all(slipway, home, ["dev"], config=config)
        reap(os.path.join(home, "envs"))
    left = settle(lambda: len(python_under(os.path.join(home, "envs"))), 0)
    if left:
        sys.exit(f"measure.py: {left} process(es) of dev left after destroy")


COMMANDS = {"wake": cmd_wake, "wake-skip": skip_command(KEY)}


# --- report ------------------------------------------------------------------------------------


def verdicts(r):
    wake, cold = r.samples.get("wake/first-byte"), r.samples.get("wake/by-hand")
    if not (wake and cold):
        return []
    beyond = med(wake) - med(cold)
    return [(
        GOAL,
        f"median {fmt_s(med(wake))} (max {fmt_s(max(wake))}) − the cold start by hand "
        f"{fmt_s(med(cold))} = {fmt_s(beyond)} ({beyond / WAKE_GOAL_S:.2f}× the goal)",
        "**met**" if beyond < WAKE_GOAL_S else "**missed**",
    )]


def write(r):
    samples, w = r.samples, r.w
    wake, cold = samples.get("wake/first-byte"), samples.get("wake/by-hand")
    if not wake:
        return False
    w(f"## {TITLE}\n")
    w(
        "The quickstart (`examples/quickstart`, `bench/gen.py wake`: `dev` alone, with "
        "`sleep_after`) served by `slipway serve` with its database on the PostgreSQL server "
        "of section 6. Each round, interleaved: its web process's **cold start by hand** — the "
        "command, environment and working directory of its supervisor's own spec, launched "
        "on a free port, `GET /` polled every 5 ms until the first byte of an answer; then "
        "`POST /api/v1/environments/dev/sleep` (untimed: its process stops), and **one** "
        "`GET /` through its preview URL (`Host: dev.quickstart.localhost:<port>`), timed "
        "from the connection until the first byte of its answer (the router holds it while "
        "the controller starts the process and its health check passes) and until its last. "
        "Both answers count a visit in the environment's database (a `psql` each).\n"
    )
    r.table(["", "median (min–max)"], ["", ""])
    r.rows((
        ("**wake to first byte** (request through the preview URL of a sleeping `dev`)",
         "wake/first-byte"),
        ("… to its last byte", "wake/response"),
        ("the same process's cold start by hand → first byte", "wake/by-hand"),
    ))
    if cold:
        w(f"| **wake − cold start by hand** (medians) | {fmt_s(med(wake) - med(cold))} |")
    w("")
    w("What the wake adds to the process's own start: the request's lookup, a queued "
      "reconcile (plan against what the state records, the process observed gone), the "
      "apply's start of the process in its other instance slot and its health check "
      "(`health: { http: /healthz }`, polled every `interval`, 1 s by default), then the "
      "router's second lookup and the proxied request.\n")
    return True


DIG = [
    "- **Wake to first byte** (section 11): `SLIPWAY_LOG=debug` on `slipway serve` times the "
    "wake's reconcile (`trigger=Wake`) and its apply step by step; the `environment.woke` "
    "event says how long the start took.\n",
]
