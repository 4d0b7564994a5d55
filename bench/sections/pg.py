"""Section 6: a database per environment on a real PostgreSQL, slipway against createdb/dropdb.

  measure.py pg-check --url URL
      Exit 0 and describe the PostgreSQL server at URL if it answers and its user may create
      databases and roles, and the libpq tools are on PATH; else exit 1 saying why (stdout).
  measure.py pg-skip REASON
      Record that section 6 did not run, and why.
  measure.py pg-dbs --url URL --slipway S --config C --repo R --floor-repo F --homes DIR
                    --prefix P --n N --runs R
      R rounds, the order of the three ways rotating: N sequential `slipway apply --env eI`
      (stack R: one postgres.database per environment; a fresh home under DIR per round), then
      N `slipway destroy`; N `createdb P...`, then N `dropdb`; N `createuser` + `createdb -O`,
      then N `dropdb` + `dropuser`; then the floors: the same with stack F (a `file` resource),
      N `slipway validate` of F, N `slipway --version` and N `createdb --version`. One sample
      = the wall time of the N commands; each batch follows an untimed CHECKPOINT and is
      checked afterwards (N databases, or none). The libpq tools are run from their directory
      when PATH's are Debian's pg_wrapper (see pg_tools).
  measure.py pg-clones --url URL --slipway S --config C --homes DIR --prefix P --template T
                       --rows N --runs R --repo-file-copy R1 --repo-wal-log R2
      Make the template T (N rows, ~50 MB at 600,000), then a warm-up and R rounds of, per
      strategy: `slipway apply` of stack R1/R2's environment (a clone of T) and `createdb -T T
      -S STRATEGY`, each timed alone after a CHECKPOINT, checked (N rows in the clone) and
      dropped untimed.
  measure.py pg-cleanup --url URL --slipway S --config C --homes DIR --prefix P
      Destroy every environment of the homes under DIR that still records a database, then
      drop by SQL what they still record and everything named P*; exit 1 if anything is left.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

from common import (cell, destroy_all, filesystem, fmt_ms, med, options, record,
                    run_checked, skip_command, time_batch)

TITLE = "6. A database per environment: slipway vs createdb/dropdb"
PG_GOAL_X = 1.2  # slipway's apply/destroy of a database at most this many times createdb/dropdb
GOAL = (f"a database per environment: `slipway apply` / `destroy` within {PG_GOAL_X:g}× "
        "of `createdb` / `dropdb`")
# When `measure.py pg-skip` said why it did not run (bench/report.py writes that instead):
KEY = "pg"
NEEDS = ("It needs a PostgreSQL server (15 or later for the clone strategies) whose user may "
         "create databases and roles without a password (`BENCH_PG_URL`, default "
         "`postgres://postgres@127.0.0.1:5432/postgres`), and `psql`, `createdb`, `dropdb`, "
         "`createuser`, `dropuser` on PATH.")


# --- measurement -------------------------------------------------------------------------------

PG_TOOLS = ("psql", "createdb", "dropdb", "createuser", "dropuser")


def pg_tools():
    """{tool: the binary to run}, and whether PATH's are Debian's `pg_wrapper`: a Perl script
    that picks a client version and execs /usr/lib/postgresql/VERSION/bin/TOOL, tens of ms per
    call that are not createdb's. The baselines run the binaries themselves (the newest
    version installed, which is what the wrapper picks for a remote host)."""
    found = {t: shutil.which(t) for t in PG_TOOLS}
    if None in found.values():
        return found, False
    wrapped = any(os.path.basename(os.path.realpath(p)) == "pg_wrapper" for p in found.values())
    if wrapped:
        versions = sorted((d for d in os.listdir("/usr/lib/postgresql") if d.isdigit()),
                          key=int) if os.path.isdir("/usr/lib/postgresql") else []
        for v in reversed(versions):
            direct = {t: f"/usr/lib/postgresql/{v}/bin/{t}" for t in PG_TOOLS}
            if all(os.access(p, os.X_OK) for p in direct.values()):
                return direct, True
    return found, False


PG_NAME = re.compile(r"[a-z0-9_]{1,63}")
INTENT = ".postgres.database.json"


def qi(name):
    """A quoted identifier; only the plain names this benchmark makes are accepted."""
    if not PG_NAME.fullmatch(name):
        raise ValueError(f"not a benchmark name: {name!r}")
    return f'"{name}"'


class Pg:
    """The server of section 6, reached with the libpq command-line tools over TCP, as slipway
    reaches it (trust auth: a password is never given nor prompted for, `-w`)."""

    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("postgres", "postgresql") or u.password:
            sys.exit(f"measure.py: {url!r}: want postgres://USER@HOST:PORT/DB, no password")
        self.host = u.hostname or "127.0.0.1"
        self.port = str(u.port or 5432)
        self.user = urllib.parse.unquote(u.username or "postgres")
        self.dbname = u.path.lstrip("/") or "postgres"
        self.conn = ["-h", self.host, "-p", self.port, "-U", self.user, "-w"]
        self.bin, self.wrapped = pg_tools()
        # A server that does not answer fails the libpq tools in 5 s instead of hanging.
        os.environ["PGCONNECT_TIMEOUT"] = "5"

    def run(self, *statements, db=None, stop=True, timeout=600):
        """psql, one `-c` per statement (each in its own transaction, as DROP DATABASE
        needs); the CompletedProcess, output unaligned without headers."""
        cmd = [self.bin["psql"] or "psql", "-X", "-q", "-A", "-t", *self.conn, "-d",
               db or self.dbname]
        if stop:
            cmd += ["-v", "ON_ERROR_STOP=1"]
        for s in statements:
            cmd += ["-c", s]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def sql(self, *statements, db=None, timeout=600):
        """The output of the statements; exits on an error."""
        proc = self.run(*statements, db=db, timeout=timeout)
        if proc.returncode:
            sys.exit(f"measure.py: psql {statements!r} failed: {proc.stderr.strip()[-2000:]}")
        return proc.stdout.strip()

    def checkpoint(self):
        """An untimed CHECKPOINT before each timed batch: every batch starts with no dirty
        buffers to write, whatever the one before it left (a superuser's right; skipped if
        refused)."""
        self.run("CHECKPOINT", stop=False)

    def existing(self, names):
        """Which of names exist as databases, and as roles."""
        if not names:
            return set(), set()
        arr = "'{" + ",".join(qi(n)[1:-1] for n in sorted(names)) + "}'::text[]"
        dbs = self.sql(f"select datname from pg_database where datname = any({arr})")
        roles = self.sql(f"select rolname from pg_roles where rolname = any({arr})")
        return set(dbs.split()), set(roles.split())

    def prefixed(self, prefix):
        """Databases and roles whose names start with prefix (this run's own)."""
        qi(prefix)
        n = len(prefix)
        dbs = self.sql(f"select datname from pg_database where left(datname, {n}) = '{prefix}'")
        roles = self.sql(f"select rolname from pg_roles where left(rolname, {n}) = '{prefix}'")
        return set(dbs.split()), set(roles.split())


def cmd_pg_check(args):
    """Exits 0 with a one-line description of the server when section 6 can run; else 1 with
    why not, on stdout (bench/run puts it in the report)."""
    opts = options(args)
    try:
        pg = Pg(opts["--url"])
    except SystemExit as e:
        print(e)
        sys.exit(1)
    missing = [t for t, path in pg.bin.items() if not path]
    if missing:
        print(f"{', '.join(missing)} not on PATH (Debian: postgresql-client)")
        sys.exit(1)
    where = f"{pg.user}@{pg.host}:{pg.port}"
    try:
        proc = pg.run(
            "select current_setting('server_version_num') || ' ' || (select case when "
            "rolsuper or (rolcreatedb and rolcreaterole) then 'yes' else 'no' end "
            "from pg_roles where rolname = current_user)",
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        print(f"PostgreSQL at {where} did not answer within 20 s")
        sys.exit(1)
    if proc.returncode:
        err = " ".join(proc.stderr.split())[:300]
        print(f"PostgreSQL at {where} does not answer: {err}")
        sys.exit(1)
    version, rights = proc.stdout.split()
    if rights != "yes":
        print(f"{pg.user} at {pg.host}:{pg.port} may not create databases and roles")
        sys.exit(1)
    print(f"PostgreSQL {int(version) // 10000}.{int(version) % 10000} at {where} (client tools: "
          f"{os.path.dirname(pg.bin['createdb'])})")


def pg_server_note(pg):
    """The server's version and the settings that decide what CREATE/DROP DATABASE cost."""
    names = ("server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_level",
             "shared_buffers", "max_wal_size", "checkpoint_timeout", "data_directory")
    # pg_settings lists only what this user may read (data_directory needs a superuser).
    out = pg.sql("select name || '=' || current_setting(name) from pg_settings where name = "
                 "any(array['" + "','".join(names) + "'])")
    settings = dict(line.split("=", 1) for line in out.splitlines())
    client = subprocess.run([pg.bin["createdb"], "--version"], capture_output=True,
                            text=True).stdout
    record("pg/server", [], unit="note", settings=settings, client=client.strip(),
           server=f"{pg.user}@{pg.host}:{pg.port}", bindir=os.path.dirname(pg.bin["createdb"]),
           wrapped=pg.wrapped)


def new_home(prefix, dir):
    """A fresh slipway home under dir, which environments under their own uids may traverse
    (bench/run's new_home)."""
    home = tempfile.mkdtemp(prefix=prefix, dir=dir)
    os.chmod(home, 0o711)
    return home


def intents(home):
    """{environment: generated name} of the databases slipway set out to create in home and
    has not dropped yet (the provider writes `<run>/<name>.postgres.database.json` before it
    touches the server, and removes it once the drop succeeded)."""
    out = {}
    envs = os.path.join(home, "envs")
    for env in sorted(os.listdir(envs)) if os.path.isdir(envs) else []:
        run = os.path.join(envs, env, "run")
        for f in sorted(os.listdir(run)) if os.path.isdir(run) else []:
            if f.endswith(INTENT):
                out[env] = f[: -len(INTENT)]
    return out


def check_slipway_dbs(pg, home, envs):
    """The generated names of envs' databases, once checked: each exists, owned by its role of
    the same name, with the ownership comment `slipway:<instance>:<env>/db`."""
    names = intents(home)
    if sorted(names) != sorted(envs):
        sys.exit(f"measure.py: {len(names)} intent records in {home}, expected {len(envs)}")
    arr = "'{" + ",".join(qi(n)[1:-1] for n in names.values()) + "}'::text[]"
    rows = pg.sql(
        "select d.datname || ' ' || r.rolname || ' ' || coalesce(shobj_description(d.oid, "
        f"'pg_database'), '-') from pg_database d join pg_roles r on r.oid = d.datdba "
        f"where d.datname = any({arr})"
    ).splitlines()
    found = {}
    for row in rows:
        db, owner, comment = row.split(" ", 2)
        found[db] = (owner, comment)
    for env, name in names.items():
        owner, comment = found.get(name, (None, None))
        if owner != name or not re.fullmatch(rf"slipway:[0-9a-f]+:{env}/db", comment or ""):
            sys.exit(f"measure.py: database {name} of {env}: owner {owner}, comment {comment!r}")
    return set(names.values())


def check_gone(pg, names, what):
    dbs, roles = pg.existing(names)
    if dbs or roles:
        sys.exit(f"measure.py: {what}: {len(dbs)} database(s) and {len(roles)} role(s) left, "
                 f"e.g. {sorted(dbs | roles)[:3]}")


def check_count(pg, prefix, n, what):
    dbs, _ = pg.prefixed(prefix)
    if len(dbs) != n:
        sys.exit(f"measure.py: {what}: {len(dbs)} databases named {prefix}*, expected {n}")


def vendored_count(repo):
    """How many files of the repository at `repo` are under vendor/ (gen.py's `vendored`)."""
    out = subprocess.run(["git", "-C", repo, "ls-files", "--", "vendor"], capture_output=True,
                         text=True, check=True).stdout
    return len(out.splitlines())


def cmd_pg_dbs(args):
    opts = options(args)
    pg = Pg(opts["--url"])
    slipway, config = opts["--slipway"], opts["--config"]
    repo, floor_repo, homes = opts["--repo"], opts["--floor-repo"], opts["--homes"]
    floor_big_repo = opts.get("--floor-big-repo")
    prefix, n, runs = opts["--prefix"], int(opts["--n"]), int(opts["--runs"])
    qi(prefix)
    meta = {"n": n, "vendored": vendored_count(floor_big_repo) if floor_big_repo else 0}
    envs = [f"e{i}" for i in range(n)]
    os.makedirs(homes, exist_ok=True)

    def sw(home, *args):
        return [slipway, "--home", home, "--config", config, *args]

    def batch(label, cmds, check):
        pg.checkpoint()
        wall, cpu = time_batch(cmds)
        record(label, [wall], cpu=[cpu], **meta)
        check()

    def slipway_way(rnd):
        home = new_home(prefix=f"dbs-{rnd}-", dir=homes)
        created = set()

        def check_created():
            created.update(check_slipway_dbs(pg, home, envs))

        def check_dropped():
            check_gone(pg, created, "after slipway destroy")
            if intents(home):
                sys.exit(f"measure.py: intent records left in {home} after destroy")

        batch("pg/create/slipway", [
            sw(home, "apply", "--env", e, "--yes", "--repo", repo, "--ref", "main")
            for e in envs], check_created)
        batch("pg/drop/slipway", [sw(home, "destroy", "--env", e, "--yes") for e in envs],
              check_dropped)
        shutil.rmtree(home)

    def createdb_way(rnd):
        p = f"{prefix}r{rnd}_c"
        names = [f"{p}{i}" for i in range(n)]
        batch("pg/create/createdb", [[tool["createdb"], *pg.conn, d] for d in names],
              lambda: check_count(pg, p, n, "after createdb"))
        batch("pg/drop/dropdb", [[tool["dropdb"], *pg.conn, d] for d in names],
              lambda: check_count(pg, p, 0, "after dropdb"))

    def role_way(rnd):
        p = f"{prefix}r{rnd}_o"
        names = [f"{p}{i}" for i in range(n)]

        def check_created():
            check_count(pg, p, n, "after createuser + createdb -O")
            owned = pg.sql("select count(*) from pg_database d join pg_roles r on "
                           f"r.oid = d.datdba where left(d.datname, {len(p)}) = '{p}' "
                           "and r.rolname = d.datname and r.rolcanlogin")
            if int(owned) != n:
                sys.exit(f"measure.py: {owned} of {n} databases owned by their login role")

        batch("pg/create/createuser+createdb",
              [c for d in names for c in ([tool["createuser"], *pg.conn, d],
                                          [tool["createdb"], *pg.conn, "-O", d, d])],
              check_created)
        batch("pg/drop/dropdb+dropuser",
              [c for d in names for c in ([tool["dropdb"], *pg.conn, d],
                                          [tool["dropuser"], *pg.conn, d])],
              lambda: check_gone(pg, set(names), "after dropdb + dropuser"))

    def floors(rnd):
        # What slipway pays without a server: the same environments with a `file` resource.
        home = new_home(prefix=f"floor-{rnd}-", dir=homes)
        batch("pg/create/floor-file", [
            sw(home, "apply", "--env", e, "--yes", "--repo", floor_repo, "--ref", "main")
            for e in envs], lambda: None)
        batch("pg/drop/floor-file", [sw(home, "destroy", "--env", e, "--yes") for e in envs],
              lambda: None)
        shutil.rmtree(home)
        if floor_big_repo:
            # The same in a repository holding many more files that no resource reads.
            home = new_home(prefix=f"floor-big-{rnd}-", dir=homes)
            batch("pg/create/floor-file-big", [
                sw(home, "apply", "--env", e, "--yes", "--repo", floor_big_repo, "--ref",
                   "main") for e in envs], lambda: None)
            batch("pg/drop/floor-file-big",
                  [sw(home, "destroy", "--env", e, "--yes") for e in envs], lambda: None)
            shutil.rmtree(home)
        # Reading the stack from git and checking it, without state or server.
        batch("pg/start/slipway-validate",
              [[slipway, "validate", "--repo", floor_repo, "--ref", "main"]] * n, lambda: None)
        # And the process starts alone: slipway's, createdb's, and the wrapper's if PATH has it.
        batch("pg/start/slipway-version", [[slipway, "--version"]] * n, lambda: None)
        batch("pg/start/createdb-version", [[tool["createdb"], "--version"]] * n, lambda: None)
        if pg.wrapped:
            batch("pg/start/createdb-path-version", [["createdb", "--version"]] * n,
                  lambda: None)

    tool = pg.bin
    pg_server_note(pg)
    ways = [slipway_way, createdb_way, role_way]
    try:
        for rnd in range(1, runs + 1):
            print(f"  round {rnd}/{runs}", file=sys.stderr)
            # The order rotates round by round: no way always runs first, or after another.
            k = (rnd - 1) % len(ways)
            for way in ways[k:] + ways[:k]:
                way(rnd)
            floors(rnd)
    finally:
        pg_cleanup(pg, slipway, config, homes, prefix)


def cmd_pg_clones(args):
    opts = options(args)
    pg = Pg(opts["--url"])
    slipway, config, homes = opts["--slipway"], opts["--config"], opts["--homes"]
    prefix, runs, rows = opts["--prefix"], int(opts["--runs"]), int(opts["--rows"])
    template = opts["--template"]
    repos = {"file_copy": opts["--repo-file-copy"], "wal_log": opts["--repo-wal-log"]}
    if not template.startswith(prefix):
        sys.exit("measure.py: the template must carry the run's prefix (so that it is dropped)")
    version = int(pg.sql("show server_version_num"))
    if version < 150000:
        record("pg/clones-skipped", [], unit="note",
               reason=f"PostgreSQL {version // 10000} has no CREATE DATABASE ... STRATEGY (15+)")
        return
    os.makedirs(homes, exist_ok=True)
    home = new_home(prefix="clones-", dir=homes)

    def verify(db):
        got = pg.sql("select count(*) from t", db=db)
        if int(got) != rows:
            sys.exit(f"measure.py: the clone {db} holds {got} rows, expected {rows}")

    def slipway_side(strategy, rnd):
        env = strategy.replace("_", "-")
        pg.checkpoint()
        wall, cpu = time_batch([[slipway, "--home", home, "--config", config, "apply", "--env",
                                 env, "--yes", "--repo", repos[strategy], "--ref", "main"]])
        verify(intents(home)[env])
        run_checked([slipway, "--home", home, "--config", config, "destroy", "--env", env,
                     "--yes"], 0)
        if intents(home):
            sys.exit(f"measure.py: the clone of {env} is still recorded after destroy")
        return wall, cpu

    def createdb_side(strategy, rnd):
        name = f"{prefix}clone_{strategy}_{rnd}"
        pg.checkpoint()
        wall, cpu = time_batch([[pg.bin["createdb"], *pg.conn, "-T", template, "-S",
                                 strategy.upper(), name]])
        verify(name)
        run_checked([pg.bin["dropdb"], *pg.conn, name], 0)
        return wall, cpu

    try:
        t0 = time.perf_counter()
        pg.sql(f"CREATE DATABASE {qi(template)}")
        pg.sql(f"CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, {rows}) g",
               "VACUUM ANALYZE t", db=template)
        pg.checkpoint()
        size = int(pg.sql(f"select pg_database_size('{template}')"))
        record("pg/template", [size], unit="bytes", rows=rows, made_in=time.perf_counter() - t0)
        # Round 0 warms up (the template's files in the page cache, the home created): untimed.
        for rnd in range(runs + 1):
            print(f"  clones, {'warm-up' if rnd == 0 else f'round {rnd}/{runs}'}", file=sys.stderr)
            for strategy in ("file_copy", "wal_log"):
                sides = [("slipway", slipway_side), ("createdb", createdb_side)]
                if rnd % 2 == 0:
                    sides.reverse()
                for who, side in sides:
                    wall, cpu = side(strategy, rnd)
                    if rnd:
                        record(f"pg/clone/{strategy}/{who}", [wall], cpu=[cpu], rows=rows)
        pg.sql(f"DROP DATABASE {qi(template)}")
    finally:
        pg_cleanup(pg, slipway, config, homes, prefix)


def pg_cleanup(pg, slipway, config, homes, prefix):
    """Drops what section 6 made, and only that: every environment of the homes under `homes`
    destroyed by slipway; then, by SQL, the databases and roles those homes still record an
    intent for (a create or a drop interrupted) and those named with this run's prefix (the
    baselines and the template). Returns the names still there (none, normally)."""
    for home in sorted(os.listdir(homes)) if os.path.isdir(homes) else []:
        home = os.path.join(homes, home)
        destroy_all(slipway, home, sorted(intents(home)), config)
    names = set()
    for home in sorted(os.listdir(homes)) if os.path.isdir(homes) else []:
        recorded = intents(os.path.join(homes, home)).values()
        names.update(n for n in recorded if PG_NAME.fullmatch(n))
    try:
        # A statement of a client killed mid-way (CREATE DATABASE, say) runs on to its end in
        # the server: wait for those that name our objects (10 s at most).
        pattern = "|".join(sorted(names | {prefix}))
        for _ in range(50):
            busy = pg.sql("select count(*) from pg_stat_activity where pid <> pg_backend_pid() "
                          f"and state <> 'idle' and query ~ '{pattern}'", timeout=20)
            if busy == "0":
                break
            time.sleep(0.2)
        for attempt in range(5):
            if attempt:
                time.sleep(1)
            dbs, roles = pg.existing(names)
            pdbs, proles = pg.prefixed(prefix)
            dbs, roles = dbs | pdbs, roles | proles
            if not (dbs or roles):
                return set()
            # Databases first: a role cannot go while it owns one.
            pg.run(*[f"DROP DATABASE IF EXISTS {qi(d)} WITH (FORCE)" for d in sorted(dbs)],
                   *[f"DROP ROLE IF EXISTS {qi(r)}" for r in sorted(roles)], stop=False)
            print(f"  dropped {len(dbs)} database(s) and {len(roles)} role(s) left behind",
                  file=sys.stderr)
        left = set().union(*pg.existing(names), *pg.prefixed(prefix))
    except (SystemExit, subprocess.TimeoutExpired) as e:
        print(f"  PostgreSQL cleanup impossible ({e}); left, possibly: {sorted(names)} and "
              f"{prefix}*", file=sys.stderr)
        return names | {prefix + "*"}
    if left:
        print(f"  LEFT ON THE SERVER: {sorted(left)}", file=sys.stderr)
    return left


def cmd_pg_cleanup(args):
    opts = options(args)
    left = pg_cleanup(Pg(opts["--url"]), opts["--slipway"], opts["--config"], opts["--homes"],
                      opts["--prefix"])
    sys.exit(1 if left else 0)


COMMANDS = {
    "pg-check": cmd_pg_check,
    "pg-skip": skip_command("pg"),
    "pg-dbs": cmd_pg_dbs,
    "pg-clones": cmd_pg_clones,
    "pg-cleanup": cmd_pg_cleanup,
}


# --- report ------------------------------------------------------------------------------------


def machine(r):
    """The server's line in the report's machine table."""
    pg_note = r.meta.get("pg/server")
    if not pg_note:
        return []
    st = pg_note.get("settings", {})
    return [f"| PostgreSQL (section 6) | server {st.get('server_version', '?')} at "
            f"`{pg_note.get('server', '?')}`; client tools: {pg_note.get('client', '?')} |"]


def paired(slipway, baseline):
    """Each round's slipway ÷ baseline, in round order (the i-th sample of each is round i)."""
    assert len(slipway) == len(baseline), "one sample of each way per round"
    return ", ".join(f"{a / b:.2f}×" for a, b in zip(slipway, baseline))


def verdicts(r):
    samples, meta = r.samples, r.meta
    verdicts = []
    pgc, pgd = samples.get("pg/create/slipway"), samples.get("pg/drop/slipway")
    cdb, ddb = samples.get("pg/create/createdb"), samples.get("pg/drop/dropdb")
    roc, rod = samples.get("pg/create/createuser+createdb"), samples.get("pg/drop/dropdb+dropuser")
    pg_n = int(meta.get("pg/create/slipway", {}).get("n", 0))
    if pgc and pgd and cdb and ddb:
        rc, rd = med(pgc) / med(cdb), med(pgd) / med(ddb)
        ok_c, ok_d = rc <= PG_GOAL_X, rd <= PG_GOAL_X

        def per_db(xs):
            return f"{med(xs) / pg_n * 1000:.1f} ms"

        fig = (f"{pg_n} in a row, medians per database. Create: slipway {per_db(pgc)}, "
               f"`createdb` {per_db(cdb)}: **{rc:.2f}×**")
        if roc:
            fig += f" (`createuser` + `createdb -O` {per_db(roc)}: {med(pgc) / med(roc):.2f}×)"
        fig += f". Drop: slipway {per_db(pgd)}, `dropdb` {per_db(ddb)}: **{rd:.2f}×**"
        if rod:
            fig += f" (`dropdb` + `dropuser` {per_db(rod)}: {med(pgd) / med(rod):.2f}×)"
        # Each round runs every way once, minutes apart from the next round: a round's own
        # ratio is free of the machine's drift between rounds, and their spread shows how
        # far a verdict near the goal can be trusted.
        fig += (f". Per round, create: {paired(pgc, cdb)}; drop: {paired(pgd, ddb)}")
        if ok_c and ok_d:
            verdict = f"**met** (create {rc:.2f}×, drop {rd:.2f}×)"
        else:
            verdict = (f"**missed**: create {rc:.2f}× ({'met' if ok_c else 'missed'}), "
                       f"drop {rd:.2f}× ({'met' if ok_d else 'missed'})")
        verdicts.append((GOAL, fig, verdict))
    return verdicts


def write(r):
    samples, cpu, meta, w = r.samples, r.cpu, r.meta, r.w
    if not samples.get("pg/create/slipway"):
        return False
    n = int(meta.get("pg/create/slipway", {}).get("n", 0))
    vendored = int(meta.get("pg/create/floor-file-big", {}).get("vendored", 0))
    note = meta.get("pg/server", {})
    st = note.get("settings", {})
    fs = filesystem(st["data_directory"]) if st.get("data_directory") else "?"

    def per(label, src=samples):
        xs = src.get(label)
        return med(xs) / n if xs else None

    def ms(x):
        return fmt_ms(x, 1)

    w("## 6. A database per environment: slipway vs createdb/dropdb\n")
    w(
        f"The server: PostgreSQL {st.get('server_version', '?')} at `{note.get('server', '?')}` "
        "over TCP with trust auth, the same for slipway and the baselines (slipway's engine "
        "config: `[postgres.main] url = \"postgres://…\"` and `templates` naming the clones' "
        "template, passed with `--config`); data "
        f"directory on {fs}; "
        + ", ".join(f"`{k}={st[k]}`" for k in ("fsync", "synchronous_commit", "full_page_writes",
                                              "wal_level", "shared_buffers", "max_wal_size",
                                              "checkpoint_timeout") if k in st)
        + f". Client tools: {note.get('client', '?')}, run from `{note.get('bindir', '?')}`"
        + (" — not through PATH, where Debian has `pg_wrapper`, a Perl script that picks a "
           "client version and execs that binary: it would add its own start-up (below) to "
           "every baseline call, which would flatter slipway" if note.get("wrapped") else "")
        + ". The server may be shared: other "
        "sessions can have run on it meanwhile. Every timed batch (and every timed clone) "
        "follows an untimed `CHECKPOINT`, so that none pays for the dirty buffers another "
        "left. Names made by the baselines and the template carry a prefix unique to the run "
        "(`sw_bench<pid>_`), slipway's mix in its home's id; everything is dropped at the end "
        "(on failure and Ctrl-C too) and nothing else is touched.\n"
    )
    w(
        f"**Create, then drop, {n} environment databases.** A stack (`bench/gen.py pgdbs`) with "
        f"{n} static environments `e0`…`e{n - 1}` tracking `main` and one resource "
        "`db: { type: postgres.database }`, committed with the `git` CLI. In each round the "
        "three ways run one after the other, their order rotating from round to round; each "
        f"sample is the wall time of {n} commands run one after the other from Python (the "
        "same harness for every way), checked afterwards, untimed: the databases exist "
        "(slipway's owned by their role of the same name and commented "
        "`slipway:<instance>:eN/db`), then after the drops none is left.\n\n"
        f"- **slipway**: `slipway --home H --config C apply --env eN --yes --repo R --ref main` "
        f"for N = 0…{n - 1}, in a fresh home per round (the first apply creates it). Each is a "
        "process start, the engine config read, the state database opened, the stack loaded "
        "from the git commit, rendered and planned (a database runs no code from the repository: "
        "its environment gets `run/` alone, no export of the tree), then the provider: the intent written to a file, one connection to the "
        "server, the role and the database looked up with their comments (is anything there, "
        "and is it ours?), `CREATE ROLE … LOGIN PASSWORD` with a generated password and its "
        "ownership comment in one transaction, `CREATE DATABASE … OWNER`, `COMMENT ON "
        "DATABASE`; then the deployment and the sealed (encrypted) live record written to "
        "SQLite. Drop: `slipway destroy --env eN --yes`: the same start, the ownership "
        "checked, `DROP DATABASE … WITH (FORCE)`, `DROP ROLE`, the state updated.\n"
        "- **createdb**: `createdb -h … NAME`, a unique name each: one process, one libpq "
        "connection, one `CREATE DATABASE` statement. Drop: `dropdb NAME`.\n"
        "- **createuser + createdb -O**: `createuser NAME`, then `createdb -O NAME NAME`: the "
        "role and the database slipway makes (without its password, comments, checks or "
        "records), in two processes and two connections. Drop: `dropdb` + `dropuser`.\n"
        "- **floors**, to split slipway's time: the same environments with one `file` resource "
        "instead of the database (`bench/gen.py pgfloor`: everything above but the server), "
        f"applied and destroyed the same way; `slipway validate --repo R --ref main` × {n} of "
        "that stack (the process start, the commit read with `git`, parsed and checked: no "
        f"state, no plan); and `slipway --version` × {n}, the process start alone "
        f"(`createdb --version` × {n} likewise)."
        + (f" Last, the `file` floor again in a repository holding {vendored:,} more files "
           "that no resource reads (`vendor/`, 50 per folder, packed by `git gc` as a "
           "clone's would be): what the repository's size costs a stack that runs no code."
           if vendored else "")
        + "\n"
    )
    rows = [
        ("create", "**slipway apply**", "pg/create/slipway", None),
        ("", "createdb", "pg/create/createdb", "pg/create/slipway"),
        ("", "createuser + createdb -O", "pg/create/createuser+createdb", "pg/create/slipway"),
        ("", "floor: slipway apply of a `file` resource", "pg/create/floor-file", None),
        ("", f"floor: the same, the repository holding {vendored:,} more files",
         "pg/create/floor-file-big", None),
        ("", "floor: `slipway validate` of that stack (start, git, parse, check)",
         "pg/start/slipway-validate", None),
        ("", "floor: `slipway --version` (process start)", "pg/start/slipway-version", None),
        ("", "floor: `createdb --version` (process start)", "pg/start/createdb-version", None),
        ("", "`createdb --version` through PATH's `pg_wrapper` (not used above)",
         "pg/start/createdb-path-version", None),
        ("drop", "**slipway destroy**", "pg/drop/slipway", None),
        ("", "dropdb", "pg/drop/dropdb", "pg/drop/slipway"),
        ("", "dropdb + dropuser", "pg/drop/dropdb+dropuser", "pg/drop/slipway"),
        ("", "floor: slipway destroy of the `file` environment", "pg/drop/floor-file", None),
        ("", f"floor: the same, the repository holding {vendored:,} more files",
         "pg/drop/floor-file-big", None),
    ]
    w(f"| | way | rounds | {n} in a row: median (min–max) | per database | CPU time of the "
      "commands per database (user+sys) | slipway ÷ this |")
    w("|---|---|---:|---|---:|---:|---:|")
    for op, name, label, ref in rows:
        xs = samples.get(label)
        if not xs:
            continue
        ratio = f"**{med(samples[ref]) / med(xs):.2f}×**" if ref else "–"
        w(f"| {op} | {name} | {len(xs)} | {cell(xs)} | {ms(med(xs) / n)} | "
          f"{ms(per(label, cpu))} | {ratio} |")
    w("")

    sc, sd = per("pg/create/slipway"), per("pg/drop/slipway")
    fc, fd = per("pg/create/floor-file"), per("pg/drop/floor-file")
    start = per("pg/start/slipway-version")
    valid = per("pg/start/slipway-validate")
    cc, dd = per("pg/create/createdb"), per("pg/drop/dropdb")
    rc, rd = per("pg/create/createuser+createdb"), per("pg/drop/dropdb+dropuser")
    if None not in (sc, sd, fc, fd, start):
        w("**Where slipway's time goes**, per database (differences of medians):\n")
        r.table(["part", "apply", "destroy"], ["", ":", ":"])
        w(f"| process start (`slipway --version`) | {ms(start)} | {ms(start)} |")
        if valid is not None:
            w(f"| + the stack read from git, parsed and checked (`validate` − process start; "
              f"destroy reads no commit) | {ms(valid - start)} | – |")
            w(f"| + config, state, render, plan, the `file` written, records (`file` floor − "
              f"`validate`; for destroy − the process start) | {ms(fc - valid)} | "
              f"{ms(fd - start)} |")
        else:
            w(f"| + config, state, git, render, plan, records: all but the server (`file` floor "
              f"− process start) | {ms(fc - start)} | {ms(fd - start)} |")
        w(f"| + the server's part: connection, lookups, SQL (database − `file` floor) | "
          f"{ms(sc - fc)} | {ms(sd - fd)} |")
        w(f"| = slipway | **{ms(sc)}** | **{ms(sd)}** |")
        w(f"| CPU time of the slipway process and the `git` processes it runs | "
          f"{ms(per('pg/create/slipway', cpu))} | "
          f"{ms(per('pg/drop/slipway', cpu))} |")
        if cc is not None and dd is not None:
            w(f"| `createdb` / `dropdb`, for comparison | {ms(cc)} | {ms(dd)} |")
            cstart = per("pg/start/createdb-version")
            if cstart is not None:
                w(f"| … of which their process start (`createdb --version`) | {ms(cstart)} | "
                  f"{ms(cstart)} |")
        if rc is not None and rd is not None:
            w(f"| `createuser` + `createdb -O` / `dropdb` + `dropuser` | {ms(rc)} | {ms(rd)} |")
        w("")
        if cc is not None and dd is not None:
            w(f"Slipway's apply is {sc / cc:.2f}× `createdb` and its destroy {sd / dd:.2f}× "
              f"`dropdb` (the goal: {PG_GOAL_X:g}×). Of an apply, {ms(fc)} "
              f"({fc / sc * 100:.0f} %) is what any apply costs without a server, "
              f"{ms(start)} of it the process start; the server's part, {ms(sc - fc)}, compares "
              f"with `createdb`'s whole {ms(cc)}"
              + (f" and `createuser` + `createdb -O`'s {ms(rc)}" if rc is not None else "")
              + f". Of a destroy, {ms(fd)} ({fd / sd * 100:.0f} %) is the floor; the server's "
              f"part, {ms(sd - fd)}, compares with `dropdb`'s {ms(dd)}"
              + (f" and `dropdb` + `dropuser`'s {ms(rd)}" if rd is not None else "")
              + ". The server's own work (copying a template, or removing the files, and the "
              "WAL and fsyncs of either) is the same on both sides and dominates both: "
              "since eca1053 Slipway clones `template0` and `createdb` "
              "`template1`, two empty templates within 2 % of each other's size (7.5 and "
              "7.6 MB here). "
              "Slipway's role has a password, which `createdb` makes none of: PostgreSQL "
              "checks a new password against the empty one by hashing `''` with the "
              "verifier's salt and 4,096 iterations, 3–7 ms of its backend here; since fd3648b "
              "a second session sets it while the first creates the database. A new backend "
              "costs some 2 ms to start (`pgbench -C`) and its first query loads the catalogs "
              "it reads: since 984faa3 the engine starts that connection, and its look-up, as "
              "soon as the apply (or destroy) has passed its checks, so that it overlaps the "
              "engine's records; the look-up avoids the `pg_roles` view since d246559 (0.75 "
              "against 1.5 ms on a new backend). Since 938b6a6 opening the state takes no "
              "write lock (it took it once per migration, 19 times), and since 797a55a a "
              "database is recorded made and ready in one write, not two; since f665525 the "
              "destroy of an environment that never ran code (a database's) forks no process "
              "to kill its uid's processes (1.7 ms of a destroy before). Since 642f28e a "
              "graph of one resource runs on the engine's thread (a worker thread's start and "
              "end cost about 0.4 ms of each apply and destroy); since 955028d a destroy ends "
              "in one transaction, not four, and since 73b1e41 an apply in one, not three; "
              "since 1bf4f73 the CLI's destroy starts its connection once its confirmation "
              "passed, under the lock (unless the environment's protection will refuse it); "
              "since 5ee2100 the look at every environment's directories' modes, which "
              "opening a home makes whenever an environment came or went, runs beside the "
              "command instead of before it; since 29f0502 an apply opens the repository "
              "while it opens the home. Since 5ec1b06 the connection made ahead asks the "
              "change's own first look-up, with the resource's names, and the change takes "
              "that answer while it is fresh (50 ms) and no statement of Slipway's came "
              "between, instead of a look-up of nothing first and then its own (0.9 ms on a "
              "new backend for an existing role and database); since 72e840d a SQLite state "
              "seals secret values with XChaCha20-Poly1305 instead of age, whose X25519 "
              "scalar multiplications (one per value opened, two per value sealed, some 50 µs "
              "each) a destroy paid ten and two times and an apply two after its `CREATE "
              "DATABASE`. Interleaved at 72e840d (3 rounds of 30 each way, against da26657, "
              "the stop before): apply 32.0 → 29.6 ms (1.09× `createdb`'s 27.2 ms), destroy "
              "17.6 → 16.4 ms (1.18× `dropdb`'s 13.8 ms). Since b99cc29 a first create makes "
              "the role and the database without looking first (the server refuses a second "
              "of either name; a name taken, and it looks as before), and since d2e31e0 a "
              "connection made ahead whose answer is younger than 50 ms is taken without a "
              "round trip to check it: interleaved, apply 28.3 → 27.0 ms and destroy 15.5 → "
              "15.2 ms. (That harness runs `createdb` right after slipway's batch, with no "
              "`CHECKPOINT` between, which flatters slipway's ratio; this section's are the "
              "fair ones.) What is left between the two, in a "
              "destroy's timeline (medians of 90, `SLIPWAY_TMARK`, at 34c01fd): the process "
              "start (2.1 ms to `main`), parsing the command line (0.4 ms), opening the home "
              "(0.9 ms), the lock and the reads the confirmation needs (0.35 ms), then the "
              "connection (2.1 ms) and its look-up on the new backend (1.5 ms), which the "
              "destroy waits for; after the `DROP`s, the intent file's unlink with the "
              "session's end (0.3 ms), two `rmdir`s (0.4 ms) and two transactions (0.5 ms). "
              "The connection could start sooner: started right after the engine config is "
              "read, before the home is open, it measured (interleaved, both orders, at "
              "0cdd704) 1.0–1.9 ms off an apply and 0.5–0.6 ms off a destroy. It is not done: "
              "an apply that a deploy window or a policy refuses, and a protected "
              "environment's destroy without its confirmation, never reach the server with "
              "the admin's credentials (tests/postgres.rs), and those checks come later. "
              "Measured again at 849fb2d, the connection started before the home opens and "
              "given the change's question once the checks passed (5 rounds of 20 each way, "
              "interleaved with the code as it is and with `createdb`/`dropdb`): apply 26.3 → "
              "24.6 ms (1.17× → 1.09× `createdb`), destroy 14.2 → 13.3 ms (1.22× → 1.15× "
              "`dropdb`). The same reason stands, so it is still not done. "
              "Since 3b04310 a destroy whose record keeps the role's oid (a create's, or an "
              "update's, since then) checks that oid and the database's owner instead of "
              "reading three comments: its look-up on the new backend took 0.90 against "
              "1.64 ms (`SLIPWAY_TMARK`, medians of 60), but `DROP DATABASE` then reads the "
              "comments' catalog itself (it deletes the database's comment), 0.5 ms more, so "
              "a destroy gained 0.3–0.7 ms (interleaved, 3 and 4 rounds of 20: 15.7 → 15.3 "
              "and 16.2 → 15.6 ms). A record older than the oid pays the look-up of "
              "comments after the other, until its next update. The ratio "
              "moves with the server's own speed "
              "more than with slipway's: slipway's fixed part is a few milliseconds whatever "
              "the server, so the quicker `createdb` and `dropdb` are, the larger the ratio. "
              "At e14101c this machine's `createdb` took 31.7 ms and `dropdb` 14.4 ms, and "
              "slipway's 37.6 and 18.9 ms were 1.19× and 1.32×; in this run, both sides "
              "faster, they are the ratios above. It moves with the machine as well: three "
              "runs of this section at cfd74f9 within ten minutes of each other measured "
              "apply 1.29×, 1.19× and 1.27× `createdb` and destroy 1.22×, 1.14× and 1.21× "
              "`dropdb`.\n")
            big = per("pg/create/floor-file-big")
            if big is not None:
                w(f"The repository's size: with {vendored:,} more files in it, the `file` "
                  f"floor's apply takes {ms(big)} against {ms(fc)} ({big / fc:.2f}×). An "
                  "environment whose resources run no code gets no export of the tree, and "
                  "nothing lists the repository's files for it (the policies' folder is read "
                  "alone).\n")
            need = PG_GOAL_X * cc
            w(f"Within {PG_GOAL_X:g}× of `createdb` means {ms(need)} per apply here: "
              + (f"{ms(sc - need)} less than measured, when all that slipway does besides the "
                 f"server's part and the process start takes {ms(fc - start)}."
                 if sc > need else f"{ms(need - sc)} to spare.")
              + "\n")

    clones = [k for k in samples if k.startswith("pg/clone/")]
    tpl = samples.get("pg/template")
    skipped = meta.get("pg/clones-skipped", {}).get("reason")
    if skipped:
        w(f"**Clones of a template**: not run: {skipped}.\n")
    elif clones and tpl:
        rows_n = int(meta["pg/template"]["rows"])
        w(f"**Clones of a {tpl[0] / 1e6:.0f} MB template, both strategies.** A template "
          f"database of {tpl[0] / 1e6:.1f} MB (`pg_database_size`): `CREATE TABLE t AS SELECT "
          f"g, md5(g::text) AS h FROM generate_series(1, {rows_n}) g`, then `VACUUM ANALYZE`. "
          "An untimed warm-up round, then per round and per strategy, which side goes first "
          "alternating by round, each timed alone after an untimed `CHECKPOINT`: **slipway**: "
          "`slipway apply` of an environment whose only resource is `{ type: "
          "postgres.database, template: TEMPLATE, strategy: file_copy | wal_log }` (one home "
          "for all rounds; the environment destroyed, untimed, after each); **createdb**: "
          "`createdb -T TEMPLATE -S FILE_COPY | WAL_LOG NAME` (dropped untimed). Every clone "
          f"is checked to hold the {rows_n:,} rows. `FILE_COPY` checkpoints before and after "
          "copying the files (cheap here, right after a `CHECKPOINT`; on a busy server it "
          "writes everyone's dirty buffers), `WAL_LOG` copies block by block through the "
          "WAL.\n")
        w("| strategy | rounds | slipway apply | createdb -T -S | slipway − createdb | "
          "slipway ÷ createdb |")
        w("|---|---:|---|---|---:|---:|")
        by = {}
        for strategy in ("file_copy", "wal_log"):
            slip = samples.get(f"pg/clone/{strategy}/slipway")
            base = samples.get(f"pg/clone/{strategy}/createdb")
            if not (slip and base):
                continue
            by[strategy] = (med(slip), med(base))
            w(f"| `{strategy}` | {len(slip)} | {cell(slip)} | {cell(base)} | "
              f"{ms(med(slip) - med(base))} | {med(slip) / med(base):.2f}× |")
        w("")
        if len(by) == 2:
            (sf, cf), (sl, cw) = by["file_copy"], by["wal_log"]
            faster = "file_copy" if cf < cw else "wal_log"
            w(f"Side by side: `wal_log` takes {cw / cf:.2f}× the time of `file_copy` with "
              f"createdb ({ms(cw)} vs {ms(cf)}) and {sl / sf:.2f}× with slipway ({ms(sl)} vs "
              f"{ms(sf)}): `{faster}` is the faster of the two for this template on this "
              "server. Slipway's own cost does not depend on the strategy (an apply without "
              f"a server: {ms(fc) if fc is not None else '–'}, the `file` floor above); the "
              "differences in the table move within the clones' own spread (min–max).\n")
    return True


DIG = [
    "- A database per environment: the server's side of each statement with "
    "`log_min_duration_statement = 0` (or `log_statement = all`) in a scratch server's "
    "postgresql.conf; slipway's side with `perf record --call-graph dwarf slipway apply` "
    "as for plan.\n",
]
