"""Section 10: several `slipway serve` replicas on one PostgreSQL state (issue 13): the
reconcile pass over many environments with 1 and 3 replicas against one controller on SQLite,
failover after kill -9, and what one state write costs on PostgreSQL against SQLite.

  measure.py replicas-writes --bin B --work DIR --url URL --prefix P [--n 500] [--rounds R]
      bench/store-writes (B, built with slipway): slipway-state's own Store on SQLite (DIR's
      home) and on a fresh PostgreSQL database P+writes, a warm-up round then R rounds of N
      writes of each kind on each in turn (see bench/store-writes/src/main.rs); per kind and
      store the time per write of each round. Also notes the server's durability settings.
  measure.py replicas-pass --slipway S --work DIR --config C --url URL --prefix P --n N
                           --runs R
      The same N environments (bench/gen.py envs, as section 3) in three states: SQLite, one
      controller (the default; the baseline); PostgreSQL (database P+pass1), one replica;
      PostgreSQL (P+pass3), three replicas, each with its own home and the first one's
      state.key, started on the repository without branches, the N branches added once all
      three are alive, so the work is shared as rendezvous hashing over the three spreads it
      (the environments, of `file`s, then stay with the replica that made them). Each state's
      first sync is timed once (setup); then a warm-up and R rounds, the three states'
      order rotating, each a restart: launch (all replicas at once), until the replicas'
      /metrics count N reconciles in all and none running (as section 3's serve-pass).
  measure.py replicas-failover --slipway S --work DIR --config C --url URL --prefix P --n N
                               --rounds R --lease L [--long-lease L2]
      Three replicas with lease L on P+failover, N floating environments (bench/gen.py
      floating: a `job` each). Once every environment is synced and held as rendezvous
      hashing over the three says, R rounds: kill -9 a replica (each in turn), time until
      every environment it held is held (unexpired lease) by a live replica, from the leases
      table (`acquired_at`, the database's clock) and as polled; then start it again and wait
      until the leases settle back. With --long-lease, one more round with all three
      restarted on lease L2. Checked: no environment and commit deployed twice.
  measure.py replicas-cleanup --url URL --prefix P
      Drop the databases named P* (this section's, and only those).
  measure.py replicas-skip REASON
      Record that section 10 did not run, and why.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse

import gen
from common import (Serve, cell, cpu_seconds, fmt_s, med, options, processes, record, request,
                    skip_command, synced)
from sections.pg import Pg, new_home, qi

TITLE = ("10. Several replicas on one PostgreSQL state: the reconcile pass, failover, and a "
         "state write")
KEY = "replicas"
GOAL = ("several replicas: failover after kill -9 within the bound the docs state (about two "
        "leases plus a beat)")
NEEDS = ("It needs a PostgreSQL server whose user may create databases without a password "
         "(`BENCH_PG_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`; "
         "`bash scripts/postgres.sh` starts one) and `psql` on PATH.")
REPLICAS = ("r1", "r2", "r3")


# --- measurement: shared -----------------------------------------------------------------------


def db_url(url, db, application):
    """URL with database db, its sessions named `application` in pg_stat_activity."""
    u = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(
        (u.scheme, u.netloc, "/" + db, f"application_name={application}", ""))


def create_db(pg, name):
    pg.sql(f"DROP DATABASE IF EXISTS {qi(name)} WITH (FORCE)", f"CREATE DATABASE {qi(name)}")


def write_config(base, path, state_url=None, replica=None, lease=None):
    """The engine configuration `base` (sections 3-5's) plus the replica's name and lease under
    its [controller] table and, with state_url, a [state] table."""
    with open(base) as f:
        text = f.read()
    extra = "".join(f'{k} = "{v}"\n' for k, v in (("replica", replica), ("lease", lease)) if v)
    if "[controller]\n" in text:
        text = text.replace("[controller]\n", "[controller]\n" + extra, 1)
    elif extra:
        text += "[controller]\n" + extra
    if state_url:
        text += f'[state]\nurl = "{state_url}"\n'
    with open(path, "w") as f:
        f.write(text)
    return path


def seconds(text):
    """A duration of the configuration's grammar, as far as this section writes them."""
    for suffix, unit in (("ms", 0.001), ("s", 1), ("m", 60)):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * unit
    sys.exit(f"measure.py: a lease of {text!r}: want e.g. 3s, 500ms, 1m")


def token(slipway, home, config):
    return subprocess.run(
        [slipway, "--home", home, "--config", config, "token", "create", "--role", "admin",
         "--name", "bench"], check=True, capture_output=True, text=True).stdout.strip()


def copy_key(first_home, homes):
    """The state's key, made by the first replica, copied to the others (as an operator
    does)."""
    key = os.path.join(first_home, "state.key")
    for home in homes:
        dest = os.path.join(home, "state.key")
        shutil.copyfile(key, dest)
        os.chmod(dest, 0o600)


def stop_all(serves):
    """SIGTERM to every replica at once, then wait for each."""
    for s in serves:
        if s.proc.poll() is None:
            s.proc.send_signal(signal.SIGTERM)
    for s in serves:
        s.stop()


def wait_pass(serves, n, poll, timeout, want_synced=None):
    """common.wait_pass over several replicas: polls each one's /metrics until their
    reconciles add up to N, none runs (and, if asked, N environments are recorded synced).
    Returns (seconds since the first launch, each replica's metrics, seconds until a first
    reconcile was counted, scrapes made)."""
    t0 = min(s.t0 for s in serves)
    deadline = time.perf_counter() + timeout
    first, scrapes = None, 0
    while True:
        ms = [s.metrics() for s in serves]
        scrapes += len(serves)
        now = time.perf_counter() - t0
        count = sum((m or {}).get("slipway_reconcile_duration_seconds_count", 0) for m in ms)
        if first is None and count > 0:
            first = now
        if (
            all(ms)
            and count >= n
            and all(m.get("slipway_reconciles_running", 1) == 0 for m in ms)
            and (want_synced is None or synced(ms[0]) >= want_synced)
        ):
            return now, ms, first, scrapes
        for s in serves:
            s.check_alive()
        if time.perf_counter() > deadline:
            sys.exit(f"measure.py: no full pass within {timeout} s: {count:.0f} of {n} "
                     f"reconciles; last metrics: {ms}")
        if first is None:
            pause = 0.05
        elif count >= n:
            pause = poll
        else:
            rate = count / max(now - first, 1e-3)
            pause = min(max((n - count) / rate / 2, poll), 0.25)
        time.sleep(pause)


def backend_cpu(db):
    """CPU time (user + system) of the PostgreSQL backends connected to database db so far
    (their process titles read `postgres: USER DB HOST(PORT) STATE`)."""
    mark = f" {db} ".encode()
    total = 0.0
    for pid, _, cmdline in processes():
        if cmdline.startswith(b"postgres: ") and mark in cmdline.split(b"\0")[0]:
            try:
                total += cpu_seconds(pid)
            except OSError:
                pass
    return total


# --- measurement: the cost of a state write ------------------------------------------------------


def server_note(pg):
    names = ("server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_level",
             "shared_buffers")
    out = pg.sql("select name || '=' || current_setting(name) from pg_settings where name = "
                 "any(array['" + "','".join(names) + "'])")
    record("replicas/server", [], unit="note",
           settings=dict(line.split("=", 1) for line in out.splitlines()),
           server=f"{pg.user}@{pg.host}:{pg.port}")


def cmd_writes(args):
    opts = options(args)
    pg = Pg(opts["--url"])
    prefix = opts["--prefix"]
    n, rounds = int(opts.get("--n", 500)), int(opts.get("--rounds", 5))
    server_note(pg)
    db = prefix + "writes"
    create_db(pg, db)
    home = new_home("writes-", opts["--work"])
    proc = subprocess.run(
        [opts["--bin"], "--home", home, "--postgres", db_url(opts["--url"], db, "bench-writes"),
         "--n", str(n), "--rounds", str(rounds), "--warmup", "1"],
        capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"measure.py: store-writes failed:\n{proc.stderr[-3000:]}")
    per = {}
    for line in proc.stdout.splitlines():
        rec = json.loads(line)
        per.setdefault((rec["backend"], rec["kind"]), []).append(rec["seconds"] / rec["n"])
    for (backend, kind), xs in sorted(per.items()):
        record(f"replicas/write/{backend}/{kind}", xs, n=n)
    pg.sql(f"DROP DATABASE {qi(db)} WITH (FORCE)")
    shutil.rmtree(home, ignore_errors=True)


# --- measurement: the reconcile pass -------------------------------------------------------------


class State:
    """One of the three states of the pass benchmark: its replicas' homes and configurations
    (one home and no [state] for SQLite)."""

    def __init__(self, key, slipway, repo, homes, configs, db=None):
        self.key, self.slipway, self.repo = key, slipway, repo
        self.homes, self.configs, self.db = homes, configs, db

    def launch(self):
        return [Serve(self.slipway, h, c, self.repo) for h, c in zip(self.homes, self.configs)]


def cmd_pass(args):
    opts = options(args)
    pg = Pg(opts["--url"])
    slipway, work, base = opts["--slipway"], opts["--work"], opts["--config"]
    prefix, n, runs = opts["--prefix"], int(opts["--n"]), int(opts["--runs"])
    poll = 0.02
    meta = {"n": n}
    os.makedirs(work, exist_ok=True)

    # The repository: section 3's generator, N branches (SQLite and one replica); the three
    # replicas get the same stack without branches at first (below).
    repo = os.path.join(work, "envs")
    gen.envs_repo(repo, n)
    repo3 = os.path.join(work, "envs3")
    gen.envs_repo(repo3, 0)

    sqlite_home = new_home("sqlite-", work)
    sqlite = State("sqlite", slipway, f"file://{repo}", [sqlite_home],
                   [write_config(base, os.path.join(work, "sqlite.toml"))])
    create_db(pg, prefix + "pass1")
    pg1_home = new_home("pg1-", work)
    pg1 = State("pg1", slipway, f"file://{repo}", [pg1_home], [write_config(
        base, os.path.join(work, "pg1.toml"), db_url(opts["--url"], prefix + "pass1", "r1"),
        replica="r1")], db=prefix + "pass1")
    create_db(pg, prefix + "pass3")
    pg3 = State("pg3", slipway, f"file://{repo3}",
                [new_home(f"pg3-{r}-", work) for r in REPLICAS],
                [write_config(base, os.path.join(work, f"pg3-{r}.toml"),
                              db_url(opts["--url"], prefix + "pass3", r), replica=r)
                 for r in REPLICAS], db=prefix + "pass3")
    states = [sqlite, pg1, pg3]

    # First syncs: discover, record and create all N (setup, timed once for the record).
    for state in (sqlite, pg1):
        serves = state.launch()
        try:
            for s in serves:
                s.wait_healthy()
            done, _, _, _ = wait_pass(serves, n, 0.2, timeout=1800, want_synced=n)
            record(f"replicas/first-sync/{state.key}", [done], **meta)
        finally:
            stop_all(serves)
    # Three replicas: the first makes the state (its schema and key), the others get its key;
    # all three are started on the repository without branches and, once each has seen the
    # three alive (a beat after the last joined: every third of the default 15 s lease), the
    # N branches are pushed and each replica asked to refresh, one after the other.
    tok = token(slipway, pg3.homes[0], pg3.configs[0])
    copy_key(pg3.homes[0], pg3.homes[1:])
    serves = pg3.launch()
    try:
        for s in serves:
            s.wait_healthy()
        db = prefix + "pass3"
        deadline = time.perf_counter() + 60
        while pg.sql("select count(*) from replicas", db=db) != str(len(REPLICAS)):
            if time.perf_counter() > deadline:
                sys.exit("measure.py: the three replicas did not all beat within 60 s")
            time.sleep(0.2)
        time.sleep(15 / 3 + 1)
        gen.envs_branches(repo3, n)
        t0 = time.perf_counter()
        for s in serves:
            status, body = request(s.addr, "POST", "/api/v1/refresh", token=tok, timeout=600)
            if status != 200:
                print(f"  refresh on {s.addr}: {status} {body[:200]}", file=sys.stderr)
        done, _, _, _ = wait_pass(serves, n, 0.2, timeout=1800, want_synced=n)
        record("replicas/first-sync/pg3", [time.perf_counter() - t0], **meta)
    finally:
        stop_all(serves)
    shares = dict(line.split("|") for line in pg.sql(
        "select holder || '|' || count(*) from leases group by holder", db=db).splitlines())
    record("replicas/shares/pg3", [int(shares.get(r, 0)) for r in REPLICAS], unit="environments",
           replicas=list(REPLICAS), **meta)

    # The restarts: a warm-up, then the timed rounds, the states' order rotating.
    for rnd in range(runs + 1):
        for state in states[rnd % 3:] + states[: rnd % 3]:
            serves = state.launch()
            try:
                startup = max(s.t0 + s.wait_healthy() for s in serves) - min(
                    s.t0 for s in serves)
                done, ms, first, scrapes = wait_pass(serves, n, poll, timeout=600)
                cpu = sum(cpu_seconds(s.pid) for s in serves)
                # The server's side: its backends live as long as the replicas' connections.
                server_cpu = backend_cpu(state.db) if state.db else None
                counts = [m["slipway_reconcile_duration_seconds_count"] for m in ms]
                failed = sum(m.get("slipway_reconcile_failures_total", 0) for m in ms)
                if synced(ms[0]) != n or failed:
                    sys.exit(f"measure.py: {state.key}: after the pass {synced(ms[0]):.0f}/{n} "
                             f"synced, {failed:.0f} failed")
            finally:
                stop_all(serves)
            if rnd == 0:
                print(f"  warm-up restart of {state.key}: {done:.3f} s", file=sys.stderr)
                continue
            k = state.key
            record(f"replicas/pass/{k}", [done], cpu=[cpu], **meta)
            if server_cpu is not None:
                record(f"replicas/server-cpu/{k}", [server_cpu], **meta)
            record(f"replicas/startup/{k}", [startup], **meta)
            record(f"replicas/pass-after-startup/{k}", [done - startup], **meta)
            record(f"replicas/first-reconcile/{k}", [first], **meta)
            record(f"replicas/scrapes/{k}", [scrapes], unit="scrapes", **meta)
            record(f"replicas/reconciles/{k}", [sum(counts)], unit="reconciles",
                   per_replica=counts, **meta)
    for state in states:
        for h in state.homes:
            shutil.rmtree(h, ignore_errors=True)
    for db in ("pass1", "pass3"):
        pg.sql(f"DROP DATABASE {qi(prefix + db)} WITH (FORCE)")


# --- measurement: failover -----------------------------------------------------------------------


def rendezvous(env, live):
    """The replica rendezvous hashing ranks first for env among live, as the controller's
    replicas::rendezvous (SHA-256 of environment, a NUL and replica; ties by name)."""
    def score(r):
        digest = hashlib.sha256(env.encode() + b"\0" + r.encode()).digest()
        return (int.from_bytes(digest[:8], "big"), r)

    return max(live, key=score)


NOW_MS = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"


class Cluster:
    """Three replicas on one database, with what the leases table says."""

    def __init__(self, pg, db, slipway, repo, homes, configs):
        self.pg, self.db, self.slipway, self.repo = pg, db, slipway, repo
        self.homes, self.configs = homes, configs
        self.serves = {}

    def start(self, r):
        self.serves[r] = Serve(self.slipway, self.homes[r], self.configs[r], self.repo)
        self.serves[r].wait_healthy()

    def sql(self, statement):
        return self.pg.sql(statement, db=self.db)

    def leases(self):
        """{environment: (holder, acquired_at ms, unexpired)}."""
        out = {}
        for line in self.sql(f"select environment || '|' || holder || '|' || acquired_at || '|' "
                             f"|| (expires_at > {NOW_MS})::text from leases").splitlines():
            env, holder, acquired, live = line.split("|")
            out[env] = (holder, int(acquired), live == "true")
        return out

    def settled(self, envs, live):
        """Whether every environment is held (unexpired) by the replica rendezvous hashing
        over `live` ranks first."""
        leases = self.leases()
        return all(leases.get(e, ("", 0, False))[0] == rendezvous(e, live)
                   and leases[e][2] for e in envs)

    def wait_settled(self, envs, live, timeout):
        t0 = time.perf_counter()
        while not self.settled(envs, live):
            for r in live:
                self.serves[r].check_alive()
            if time.perf_counter() - t0 > timeout:
                sys.exit(f"measure.py: the leases did not settle on {live} within {timeout} s: "
                         f"{self.leases()}")
            time.sleep(0.1)
        return time.perf_counter() - t0

    def doubled(self):
        return self.sql("select count(*) from (select 1 from deployments where status = "
                        "'succeeded' group by environment, commit_sha having count(*) > 1) d")


def failover_round(cluster, envs, victim, lease_s, rejoin=True):
    """kill -9 `victim`; seconds until every environment it held is held by a live replica."""
    live = list(REPLICAS)
    survivors = [r for r in live if r != victim]
    held = sorted(e for e, (h, _, up) in cluster.leases().items() if h == victim and up)
    if not held:
        sys.exit(f"measure.py: {victim} holds no environment to fail over")
    last_beat = int(cluster.sql(f"select heartbeat_at from replicas where name = '{victim}'"))
    serve = cluster.serves[victim]
    t_kill = time.time()
    os.kill(serve.pid, signal.SIGKILL)
    serve.proc.wait()
    serve.log.close()
    limit = 4 * lease_s + 60
    while True:
        leases = cluster.leases()
        moved = [leases.get(e) for e in held]
        if all(m and m[0] in survivors and m[2] for m in moved):
            seen = time.time() - t_kill
            break
        for r in survivors:
            cluster.serves[r].check_alive()
        if time.time() - t_kill > limit:
            sys.exit(f"measure.py: {victim}'s environments not taken over within {limit} s: "
                     f"{ {e: leases.get(e) for e in held} }")
        time.sleep(0.05)
    taken = [m[1] / 1000 - t_kill for m in moved]
    label = f"replicas/failover/{lease_s:g}"
    record(label, [max(taken)], lease_s=lease_s, envs=len(held), victim=victim)
    record(f"replicas/failover-first/{lease_s:g}", [min(taken)], lease_s=lease_s)
    record(f"replicas/failover-seen/{lease_s:g}", [seen], lease_s=lease_s)
    record(f"replicas/failover-since-beat/{lease_s:g}", [t_kill - last_beat / 1000],
           lease_s=lease_s)
    record(f"replicas/failover-envs/{lease_s:g}", [len(held)], unit="environments",
           lease_s=lease_s)
    if rejoin:
        t0 = time.perf_counter()
        cluster.start(victim)
        cluster.wait_settled(envs, live, timeout=10 * lease_s + 60)
        record(f"replicas/rejoin/{lease_s:g}", [time.perf_counter() - t0], lease_s=lease_s)


def cmd_failover(args):
    opts = options(args)
    pg = Pg(opts["--url"])
    slipway, work, base = opts["--slipway"], opts["--work"], opts["--config"]
    prefix, n, rounds = opts["--prefix"], int(opts["--n"]), int(opts["--rounds"])
    lease = opts["--lease"]
    long_lease = opts.get("--long-lease", "")
    os.makedirs(work, exist_ok=True)
    repo = os.path.join(work, "floating")
    gen.git_repo(repo, gen.pg_envs_yaml(n, "bench-floating", gen.FLOATING_JOB, "a job"))
    envs = [f"e{i}" for i in range(n)]
    db = prefix + "failover"
    create_db(pg, db)

    def configs(lease):
        return {r: write_config(base, os.path.join(work, f"failover-{r}.toml"),
                                db_url(opts["--url"], db, r), replica=r, lease=lease)
                for r in REPLICAS}

    cluster = Cluster(pg, db, slipway, f"file://{repo}",
                      {r: new_home(f"failover-{r}-", work) for r in REPLICAS}, configs(lease))
    lease_s = seconds(lease)
    try:
        # r1 first (it makes the state and its key), then the two others with a copy.
        cluster.start("r1")
        copy_key(cluster.homes["r1"], [cluster.homes[r] for r in REPLICAS[1:]])
        for r in REPLICAS[1:]:
            cluster.start(r)
        t0 = time.perf_counter()
        deadline = t0 + 600
        while cluster.sql("select count(*) from environments where sync = 'synced'") != str(n):
            if time.perf_counter() > deadline:
                sys.exit("measure.py: the floating environments were not all synced in 600 s")
            time.sleep(0.2)
        cluster.wait_settled(envs, list(REPLICAS), timeout=10 * lease_s + 60)
        record("replicas/failover-setup", [time.perf_counter() - t0], n=n, lease_s=lease_s)
        for rnd in range(rounds):
            failover_round(cluster, envs, REPLICAS[rnd % len(REPLICAS)], lease_s)
        if long_lease:
            long_s = seconds(long_lease)
            stop_all(list(cluster.serves.values()))
            cluster.configs = configs(long_lease)
            for r in REPLICAS:
                cluster.start(r)
            cluster.wait_settled(envs, list(REPLICAS), timeout=10 * long_s + 60)
            failover_round(cluster, envs, REPLICAS[rounds % len(REPLICAS)], long_s,
                           rejoin=False)
        doubled = int(cluster.doubled())
        record("replicas/doubled", [doubled], unit="environment×commit")
        if doubled:
            sys.exit(f"measure.py: {doubled} environment(s) deployed twice at one commit")
    finally:
        stop_all([s for s in cluster.serves.values() if s.proc.poll() is None])
    pg.sql(f"DROP DATABASE {qi(db)} WITH (FORCE)")


def cmd_cleanup(args):
    opts = options(args)
    pg, prefix = Pg(opts["--url"]), opts["--prefix"]
    dbs, _ = pg.prefixed(prefix)
    if dbs:
        pg.run(*[f"DROP DATABASE IF EXISTS {qi(d)} WITH (FORCE)" for d in sorted(dbs)],
               stop=False)
        print(f"  dropped {len(dbs)} database(s) of section 10", file=sys.stderr)
    left, _ = pg.prefixed(prefix)
    if left:
        sys.exit(f"measure.py: LEFT ON THE SERVER: {sorted(left)}")


COMMANDS = {
    "replicas-writes": cmd_writes,
    "replicas-pass": cmd_pass,
    "replicas-failover": cmd_failover,
    "replicas-cleanup": cmd_cleanup,
    "replicas-skip": skip_command(KEY),
}


# --- report ------------------------------------------------------------------------------------

STATES = (
    ("sqlite", "SQLite, one controller (the default; baseline)"),
    ("pg1", "PostgreSQL, 1 replica"),
    ("pg3", "PostgreSQL, 3 replicas"),
)
WRITES = (
    ("read", "*for reference, a read:* the environment's record (`environment`)"),
    ("event", "an event (`record_event`: one INSERT)"),
    ("status", "an environment's status (`set_environment_status`: one UPDATE)"),
    ("deployment", "a deployment recorded (`begin_deployment` + `finish_deployment`: two "
                   "transactions)"),
    ("event-fenced", "an event, proving the lease (a replica's write: `check_fence` first)"),
    ("status-fenced", "a status, proving the lease"),
    ("deployment-fenced", "a deployment, proving the lease (two transactions)"),
    ("lease-renew", "a lease renewed by its holder (`acquire_lease`: one upsert, each beat per "
                    "environment held)"),
)


def fmt_t(x):
    """A time that may be microseconds."""
    if x < 1e-3:
        return f"{x * 1e6:.0f} µs"
    if x < 0.01:
        return f"{x * 1000:.2f} ms"
    return fmt_s(x)


def cell_t(xs):
    if not xs:
        return "–"
    if len(xs) == 1:
        return fmt_t(xs[0])
    return f"**{fmt_t(med(xs))}** ({fmt_t(min(xs))}–{fmt_t(max(xs))})"


def fmt_lease(lease_s):
    return f"{lease_s:g} s"


def span(xs):
    """min–max of counts, one number when they agree."""
    lo, hi = min(xs), max(xs)
    return f"{lo:.0f}" if lo == hi else f"{lo:.0f}–{hi:.0f}"


def dead_to_taken(samples, lease_s):
    """Per kill: the failover less the moment the victim was two leases silent (2L less its
    silence at the kill), i.e. the wait for a survivor's beat plus the time to act: between 0
    and a beat (L/3) plus that."""
    k = f"{lease_s:g}"
    return [f - (2 * lease_s - s) for f, s in zip(
        samples.get(f"replicas/failover/{k}", []),
        samples.get(f"replicas/failover-since-beat/{k}", []))]


def bound(lease_s):
    """What the docs state for failover: about two leases, plus a beat (a third of a lease)."""
    return 2 * lease_s + lease_s / 3


def leases(r):
    """The leases of the failover rounds, shortest first."""
    return sorted(float(k.rsplit("/", 1)[1]) for k in r.samples
                  if k.startswith("replicas/failover/"))


def machine(r):
    note = r.meta.get("replicas/server")
    if not note:
        return []
    st = note.get("settings", {})
    return [f"| PostgreSQL (section 10) | server {st.get('server_version', '?')} at "
            f"`{note.get('server', '?')}`, `fsync={st.get('fsync', '?')}`, "
            f"`synchronous_commit={st.get('synchronous_commit', '?')}`; SQLite (its baseline): "
            "WAL, `synchronous=NORMAL`, as slipway opens it |"]


def verdicts(r):
    samples, meta = r.samples, r.meta
    rows = []
    fo = leases(r)
    if fo:
        figs, ok = [], True
        for lease_s in fo:
            xs = samples[f"replicas/failover/{lease_s:g}"]
            envs = samples.get(f"replicas/failover-envs/{lease_s:g}", [0])
            ok = ok and max(xs) <= bound(lease_s)
            figs.append(f"lease {fmt_lease(lease_s)}: median {fmt_s(med(xs))}, max "
                        f"{fmt_s(max(xs))} over {len(xs)} kill{'s' if len(xs) > 1 else ''} "
                        f"({span(envs)} environments each; bound "
                        f"2L + L/3 = {fmt_s(bound(lease_s))})")
        over = [lease_s for lease_s in fo
                if max(samples[f"replicas/failover/{lease_s:g}"]) > 2 * lease_s]
        verdict = "**met** (every round)" if ok else "**missed** (a round past the bound)"
        if ok and over:
            verdict += (" — but past two leases itself with a " + ", ".join(
                fmt_lease(x) for x in over) + " lease: \"within about two leases\" means up "
                "to a beat more")
        rows.append((GOAL, "; ".join(figs), verdict))
    p1, p3 = samples.get("replicas/pass/pg1"), samples.get("replicas/pass/pg3")
    ps = samples.get("replicas/pass/sqlite")
    if p1 and p3:
        n = int(meta["replicas/pass/pg3"]["n"])
        fig = (f"launch → every environment reconciled, medians: 3 replicas {fmt_s(med(p3))}, "
               f"1 replica {fmt_s(med(p1))}: **{med(p3) / med(p1):.2f}×**")
        if ps:
            fig += (f"; one controller on SQLite {fmt_s(med(ps))} (1 replica on PostgreSQL "
                    f"{med(p1) / med(ps):.2f}× it, 3 replicas {med(p3) / med(ps):.2f}×)")
        rows.append((f"a reconcile pass over {n:,} unchanged environments with 3 replicas "
                     "on one PostgreSQL state against 1 (issue 13: the ratio; no target)", fig,
                     "reported (no target)"))
    sq, pe = samples.get("replicas/write/sqlite/event"), samples.get(
        "replicas/write/postgres/event")
    if sq and pe:
        fig = f"an event: SQLite {fmt_t(med(sq))}, PostgreSQL {fmt_t(med(pe))}: " \
              f"**{med(pe) / med(sq):.1f}×**"
        pf = samples.get("replicas/write/postgres/event-fenced")
        if pf:
            fig += (f"; proving the lease as a replica does, PostgreSQL {fmt_t(med(pf))}: "
                    f"{med(pf) / med(sq):.1f}× SQLite's plain write")
        sd, pd = (samples.get("replicas/write/sqlite/deployment"),
                  samples.get("replicas/write/postgres/deployment"))
        if sd and pd:
            fig += (f"; a deployment recorded (2 writes) {fmt_t(med(sd))} against "
                    f"{fmt_t(med(pd))}: {med(pd) / med(sd):.1f}×")
        rows.append(("the cost of one state write on PostgreSQL against SQLite (issue 13: "
                     "reported; no target)", fig, "reported (no target)"))
    return rows


def write(r):
    samples, cpu, meta, w = r.samples, r.cpu, r.meta, r.w
    have_pass = any(samples.get(f"replicas/pass/{k}") for k, _ in STATES)
    have_writes = any(k.startswith("replicas/write/") for k in samples)
    fo = leases(r)
    if not (have_pass or have_writes or fo):
        return False
    w(f"## {TITLE}\n")
    note = meta.get("replicas/server", {})
    st = note.get("settings", {})
    w("What issue 13 asks of the benchmarks: the reconcile pass over 1,000 environments with 1 "
      "and 3 `slipway serve` replicas sharing one PostgreSQL state (the ratio), failover time "
      "after `kill -9` (median, max), and the cost of a state write on PostgreSQL against "
      "SQLite. Everything on this one machine: the replicas, PostgreSQL "
      f"({st.get('server_version', '?')} at `{note.get('server', '?')}`) and the benchmark "
      f"share its {r.machine['nproc']} cores. The server runs with `fsync={st.get('fsync', '?')}`"
      f", `synchronous_commit={st.get('synchronous_commit', '?')}`"
      + (" (`scripts/postgres.sh`'s throwaway cluster: no commit waits for the disk; neither "
         "does SQLite's, in WAL mode with `synchronous=NORMAL` as slipway opens it, so both "
         "sides are measured without a disk sync per commit)" if st.get("fsync") == "off"
         else "") + ".\n")
    if have_pass:
        write_pass(r)
    if fo:
        write_failover(r, fo)
    if have_writes:
        write_writes(r)
    return True


def write_pass(r):
    samples, cpu, meta, w = r.samples, r.cpu, r.meta, r.w
    label = next(f"replicas/pass/{k}" for k, _ in STATES if samples.get(f"replicas/pass/{k}"))
    n = int(meta[label]["n"])
    runs = len(samples[label])
    w(f"**The reconcile pass over {n:,} environments** (`measure.py replicas-pass`). Section "
      f"3's stack and branches (`bench/gen.py envs`: {n:,} generated environments of 3 `file`s "
      "each) in three states: SQLite with one controller (the default, the baseline: section "
      "3's measurement again, in this section's run), PostgreSQL with one replica "
      "(`[controller] replica = \"r1\"`), and PostgreSQL with three replicas r1–r3, each with "
      "its own home (holding a copy of the first one's `state.key`) and configuration: section "
      "3's engine configuration plus `[controller] replica` and `[state] url`, the default "
      "15 s lease. Each state's first start discovers, records and creates the "
      f"{n:,} (setup, timed once); the three replicas are started on the repository without "
      "branches, and the branches are pushed once every replica has seen the three alive, so "
      "rendezvous hashing spreads the work (environments of `file`s then stay with the "
      "replica that created them, on its node). Then a warm-up round and "
      f"{runs} timed rounds, the states' order rotating: all of a state's replicas launched "
      "at once (each enqueues every recorded environment, fetches, discovers, takes the "
      "leases of its own and reconciles them; nothing has changed, so each reconcile only "
      f"plans), timed until the replicas' `/metrics` add up to {n:,} reconciles with none "
      "running (polled as in section 3). CPU time is that of all the state's `serve` "
      "processes, and beside it that of the PostgreSQL backends serving the state's database "
      "(from launch to the pass done: they live as long as the replicas' connections).\n")
    r.table(["state", "launch → every environment reconciled", "pass after start-up",
             "CPU time (all replicas)", "PostgreSQL backends' CPU time", "vs SQLite",
             "first start (setup, once)"],
            ["", "", "", "", "", ":", ":"])
    base = samples.get("replicas/pass/sqlite")
    for k, name in STATES:
        xs = samples.get(f"replicas/pass/{k}")
        if not xs:
            continue
        first = samples.get(f"replicas/first-sync/{k}")
        r.row(name, cell(xs), cell(samples.get(f"replicas/pass-after-startup/{k}", [])),
              cell(cpu.get(f"replicas/pass/{k}", [])),
              cell(samples.get(f"replicas/server-cpu/{k}", [])),
              f"{med(xs) / med(base):.2f}×" if base else "–",
              fmt_s(first[0]) if first else "–")
    w("")
    p1, p3 = samples.get("replicas/pass/pg1"), samples.get("replicas/pass/pg3")
    if p1 and p3:
        a1 = samples.get("replicas/pass-after-startup/pg1")
        a3 = samples.get("replicas/pass-after-startup/pg3")
        text = (f"**3 replicas / 1 replica: {med(p3) / med(p1):.2f}×** (medians, launch → every "
                "environment reconciled")
        if a1 and a3:
            text += f"; after start-up {med(a3) / med(a1):.2f}×"
        text += ")."
        shares = samples.get("replicas/shares/pg3")
        if shares:
            names = meta["replicas/shares/pg3"].get("replicas", [])
            text += (" The first start shared the environments out " + ", ".join(
                f"{nm} {int(x)}" for nm, x in zip(names, shares)) + ".")
        counts = meta.get("replicas/reconciles/pg3", {}).get("per_replica")
        if counts:
            text += (" In the last round each replica reconciled its own: " + ", ".join(
                f"{int(c)}" for c in counts) + f" (total {int(sum(counts)):,}).")
        c1, c3 = cpu.get("replicas/pass/pg1"), cpu.get("replicas/pass/pg3")
        if c1 and c3:
            text += (f" Three replicas used {med(c3) / med(c1):.2f}× the CPU time of one "
                     f"({fmt_s(med(c3))} against {fmt_s(med(c1))}) on "
                     f"{r.machine['nproc']} cores.")
        w(text + "\n")


def write_failover(r, fo):
    samples, meta, w = r.samples, r.meta, r.w
    setup = meta.get("replicas/failover-setup", {})
    n = f"{int(setup['n'])} " if "n" in setup else ""
    w(f"**Failover after kill -9** (`measure.py replicas-failover`). Three replicas on one "
      f"database, {n}static environments with one `job` each (`bench/gen.py floating`: no "
      "`file` or `process`, so they float: each belongs to the live replica rendezvous "
      "hashing ranks first). Once every environment is synced and held where rendezvous "
      "hashing over the three says, each round `kill -9`s one replica (each in turn) and "
      "times, from the kill, until every environment it held has an unexpired lease held by "
      "one of the two others: from the leases table, each lease's `acquired_at` (the "
      "database's clock, the same machine's) less the time of the kill, the last of them "
      "being the failover; the table was polled every 50 ms until then, which the *seen* "
      "column gives. The killed replica is then started again, and the next round waits "
      "until the leases are back where rendezvous hashing over the three puts them "
      "(*rejoin*). The bound: a replica is counted dead once silent for two leases, and its "
      "last heartbeat came up to a beat (a third of a lease) before the kill; the survivors "
      "notice at their next beat, up to a third of a lease later, and take its environments, "
      "whose leases expired a lease after their last renewal: between 2L − L/3 and 2L + L/3 "
      "after the kill, plus the time to act: the *counted dead → last taken* column is the "
      "failover less 2L less the victim's silence at the kill, the wait for a survivor's beat "
      "(0 to L/3) plus the time to take the leases. docs/operations.md states: \"the others "
      "take its floating environments within about two leases (each replica beats every "
      "third of a lease)\".\n")
    r.table(["lease L", "kills", "environments moved", "**failover** (last taken)", "max",
             "bound 2L + L/3", "first taken", "seen (polled)", "victim silent at the kill",
             "counted dead → last taken", "rejoin (start → settled)"],
            ["", ":", ":", "", ":", ":", "", "", "", "", ""])
    for lease_s in fo:
        k = f"{lease_s:g}"
        xs = samples[f"replicas/failover/{k}"]
        envs = samples.get(f"replicas/failover-envs/{k}", [])
        r.row(fmt_lease(lease_s), len(xs), span(envs) if envs else "–", cell(xs),
              fmt_s(max(xs)),
              fmt_s(bound(lease_s)), cell(samples.get(f"replicas/failover-first/{k}", [])),
              cell(samples.get(f"replicas/failover-seen/{k}", [])),
              cell(samples.get(f"replicas/failover-since-beat/{k}", [])),
              cell(dead_to_taken(samples, lease_s)),
              cell(samples.get(f"replicas/rejoin/{k}", [])))
    w("")
    doubled = samples.get("replicas/doubled")
    if doubled is not None:
        w("Checked after the rounds (succeeded deployments by environment and commit): "
          + ("no environment was deployed twice at one commit" if not doubled[0] else
             f"**{int(doubled[0])} environment(s) deployed twice at one commit**") + ".\n")


def write_writes(r):
    samples, meta, w = r.samples, r.meta, r.w
    some = next(k for k in samples if k.startswith("replicas/write/"))
    n, rounds = int(meta[some]["n"]), len(samples[some])
    w(f"**The cost of one state write** (`measure.py replicas-writes`, which runs "
      "`bench/store-writes`: a small binary of this workspace linking `slipway-state`, built "
      "with slipway). It opens a state as slipway does — SQLite (`Store::open`) in a fresh "
      "home, and a fresh PostgreSQL database (`Store::open_postgres`, over TCP to "
      "127.0.0.1) — records one environment in each, and times, per round, "
      f"{n} calls of each kind on one store then the other (the order alternating round by "
      f"round; a warm-up round, then {rounds}), through the same `Store` methods the engine "
      "and the controller call: each write is one transaction that first proves the schema's "
      "version (and, *proving the lease*, the environment's lease with `FOR UPDATE`, as a "
      "replica's writes do); times per call, median (min–max) of the rounds.\n")
    w("How to read it: SQLite's calls stay in the process (a write is its `BEGIN IMMEDIATE`, the "
      "schema's version read, the statement and the WAL append); on PostgreSQL each write is a "
      "transaction of four round trips to the server by `db.rs` (`BEGIN`; the schema guard's "
      "`LOCK TABLE slipway_schema IN SHARE MODE` and version read, sent together; the "
      "statement; `COMMIT`), five when it proves the lease (its `SELECT … FOR UPDATE`), each "
      "about what the one-round-trip read costs: local TCP and the server's own work, "
      "without a disk sync here.\n")
    r.table(["per call", "SQLite", "PostgreSQL", "PostgreSQL / SQLite"], ["", "", "", ":"])
    for kind, name in WRITES:
        sq = samples.get(f"replicas/write/sqlite/{kind}")
        pg = samples.get(f"replicas/write/postgres/{kind}")
        if not (sq or pg):
            continue
        r.row(name, cell_t(sq), cell_t(pg), f"{med(pg) / med(sq):.1f}×" if sq and pg else "–")
    w("")


DIG = [
    "- **Section 10**: `BENCH_ONLY=replicas bench/run` runs it alone; "
    "`target/release/store-writes --home DIR --postgres URL` the write micro-benchmark by "
    "itself (`bench/store-writes/src/main.rs`). While it runs, the section's databases "
    "(`sw_bench<pid>_r_*`) show who holds what (`select * from leases`, `replicas`), and each "
    "replica's log is `serve.log` in its home; the server's side of each statement with "
    "`log_min_duration_statement = 0`.\n",
]
