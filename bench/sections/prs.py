"""Section 7: a pull request's webhook to its plan comment, against the plans themselves.

  measure.py prs --slipway S --home H --base-config C --repo-dir D --runs R --work DIR
                 --fixtures F --fake-forge BIN
      The test kit's fake GitHub API (BIN: slipway-fake-forge, a process), then `slipway serve` over D with C plus
      `[forge.github]` pointing at it (token and webhook secret made for the run); a warm-up
      and R rounds of one pull request: a commit published as refs/pull/N/head, a signed
      `pull_request` `opened` delivery (GitHub's example from F, @octokit/webhooks-examples),
      timed until the plan comment's POST reaches the fake; another commit, `synchronize`,
      timed until its PATCH; each checked (3 environments, status success, one comment),
      settled (pr-N deployed), then, untimed for the webhook, the same 3 plans with
      `slipway plan --env E --ref SHA` on the same home, through
      `GET /api/v1/environments/E/plan`, and a `git fetch` of a mirror; then `closed`.
  measure.py pr-skip REASON
      Record that section 7 did not run, and why.
"""

import hashlib
import hmac
import json
import os
import re
import secrets
import subprocess
import sys
import time
import uuid

from common import (Serve, api, commit_on, cpu_seconds, finished_deployment, fmt_ms, fmt_s,
                    git, http_call, make_token, med, options, record, run_checked,
                    signed_cell, skip_command, stop)

TITLE = "7. A pull request's webhook to its plan comment"
PUSH_GOAL_S = 1.0  # push to running (section 4's goal), here for file resources: no app start
PR_GOAL_S = 1.0  # a pull request's webhook to its plan comment, beyond the plans themselves
GOAL = (f"a pull request's webhook to its plan comment (3 environments) under {PR_GOAL_S:g} s "
        "plus the plans themselves")
# When `measure.py pr-skip` said why it did not run (bench/report.py writes that instead):
KEY = "pr"
NEEDS = ("It needs GitHub's example deliveries (`@octokit/webhooks-examples`), which "
         "`crates/slipway-forge/tests/fetch-fixtures.sh` fetches with `npm` into "
         "`<target dir>/forge-fixtures`, once, as the Rust tests do.")


# --- measurement -------------------------------------------------------------------------------

PR_REPO = "acme/shop"  # what the fake GitHub serves and every payload names
PR_REPO_ID = 700_000_001
PR_BOT = "slipway-bench"  # Slipway's login on the fake (`bot_login`)
PR_AUTHOR = "octo-dev"
PLAN_MARKER = "<!-- slipway:plan -->"
EXAMPLE_REPO = "Codertocat/Hello-World"  # the repository of @octokit/webhooks-examples


class FakeForge:
    """The test kit's fake forge (`slipway-fake-forge --forge github`, crates/slipway-testkit:
    the one the Rust tests use, on the workspace's hyper) as a process of its own, on
    127.0.0.1:0, for one repository (PR_REPO), checking the bearer token. Driven through its
    control API under `/_fake/`: pull requests announced, comments read, and its request log,
    each request with the CLOCK_MONOTONIC time at which its body had been read (`at`): the
    clock of time.perf_counter(), so the webhook's sender subtracts its own times from it.
    `log` mirrors the log here, fetched as it grows."""

    def __init__(self, binary, token, bot):
        self.proc = subprocess.Popen(
            [binary, "--forge", "github", "--repo", PR_REPO, "--token", token, "--bot", bot],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True,
        )
        base = self.proc.stdout.readline().strip()
        if not base.startswith("http://127.0.0.1:"):
            stop(self.proc)
            sys.exit(f"measure.py: {binary} printed no address ({base!r})")
        self.addr = base.removeprefix("http://")
        info = self.control("GET", "/_fake/")
        self.url = info["api_url"]
        self.log = []  # {"index", "at", "method", "path", "query", "status", "json", ...}

    def control(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        _, status, _, answer = http_call(self.addr, method, path,
                                         {"Content-Type": "application/json"}, data)
        if status != 200:
            sys.exit(f"measure.py: the fake forge answered {method} {path} with {status}: "
                     f"{answer[:300]!r}")
        return json.loads(answer)

    def close(self):
        stop(self.proc)

    def open_pr(self, pull_request):
        """Announces a pull request (GitHub's object, as its delivery carries it): the fake
        lists it while it is open."""
        self.control("POST", "/_fake/prs", {"pull_request": pull_request})

    close_pr = open_pr  # a closed one's state says so

    def fetch(self):
        for r in self.control("GET", f"/_fake/requests?since={len(self.log)}"):
            if r["index"] != len(self.log):
                sys.exit(f"measure.py: the fake forge's log skipped to {r['index']}")
            self.log.append(r)

    def mark(self):
        self.fetch()
        return len(self.log)

    def wait(self, since, pred, what, timeout=60):
        """The first request logged from index `since` on that `pred` accepts, waiting for it
        (the time is the fake's `at`, not when this sees it)."""
        deadline = time.perf_counter() + timeout
        while True:
            for r in self.log[since:]:
                if pred(r):
                    return r
            if time.perf_counter() > deadline:
                recent = "\n".join(f"  {r['method']} {r['path']} -> {r['status']}"
                                   for r in self.log[-15:])
                sys.exit(f"measure.py: the fake GitHub saw no {what} within {timeout} s; "
                         f"its last requests:\n{recent}")
            time.sleep(0.005)
            self.fetch()

    def comments(self, n):
        """[{"id", "author", "body", "edits"}] of pull request n, oldest first."""
        return self.control("GET", f"/_fake/prs/{n}/comments")

    def unhandled(self):
        return [f"{r['method']} {r['path']}" + (f"?{r['query']}" if r.get("query") else "")
                for r in self.control("GET", "/_fake/unhandled")]


def map_strings(v, f):
    if isinstance(v, str):
        return f(v)
    if isinstance(v, list):
        return [map_strings(x, f) for x in v]
    if isinstance(v, dict):
        return {k: map_strings(x, f) for k, x in v.items()}
    return v


def push_example(fixtures):
    """GitHub's own `push` delivery (@octokit/webhooks-examples), the first."""
    path = os.path.join(fixtures, "webhooks-examples", "api.github.com", "index.json")
    with open(path) as f:
        index = json.load(f)
    for entry in index:
        if entry.get("name") == "push" and entry.get("examples"):
            return entry["examples"][0]
    sys.exit(f"measure.py: {path} has no push example")


def push_payload(example, branch, before, after):
    """GitHub's example `push` delivery, renamed to PR_REPO, moving `branch` from `before` to
    `after`."""
    v = map_strings(example, lambda s: s.replace(EXAMPLE_REPO, PR_REPO))
    owner, name = PR_REPO.split("/")
    v.update(ref=f"refs/heads/{branch}", before=before, after=after, created=False,
             deleted=False, forced=False)
    v["repository"].update(full_name=PR_REPO, name=name, id=PR_REPO_ID, fork=False,
                           default_branch="main")
    v["repository"]["owner"]["login"] = v["repository"]["owner"]["name"] = owner
    return v


def pr_examples(fixtures):
    """GitHub's own `pull_request` deliveries (@octokit/webhooks-examples), the first of each
    action."""
    path = os.path.join(fixtures, "webhooks-examples", "api.github.com", "index.json")
    with open(path) as f:
        index = json.load(f)
    out = {}
    for entry in index:
        if entry.get("name") == "pull_request":
            for x in entry.get("examples", []):
                out.setdefault(x.get("action"), x)
    missing = {"opened", "synchronize", "closed"} - set(out)
    if missing:
        sys.exit(f"measure.py: {path} has no pull_request example for {sorted(missing)}")
    return out


def pr_payload(examples, action, number, head_ref, sha, before=None):
    """GitHub's example `action` delivery, renamed to PR_REPO, for pull request `number` from
    branch `head_ref` (same repository: not a fork) into main, its head at `sha`."""
    x = examples[action]
    old_sha, old_n = x["pull_request"]["head"]["sha"], x["number"]
    owner, name = PR_REPO.split("/")

    def fix(s):
        s = s.replace(EXAMPLE_REPO, PR_REPO).replace(old_sha, sha)
        return re.sub(rf"/(pulls|pull|issues)/{old_n}(?!\d)", rf"/\g<1>/{number}", s)

    v = map_strings(x, fix)
    v["number"] = number
    if action == "synchronize":
        v["before"], v["after"] = before, sha
    for repo in (v["repository"], v["pull_request"]["head"]["repo"],
                 v["pull_request"]["base"]["repo"]):
        repo.update(full_name=PR_REPO, name=name, id=PR_REPO_ID, fork=False,
                    default_branch="main")
        repo["owner"]["login"] = owner
    p = v["pull_request"]
    p.update(number=number, title=f"Bench change {number}", state=(
        "closed" if action == "closed" else "open"), merged=False, merged_at=None,
        merge_commit_sha=None, html_url=f"https://github.com/{PR_REPO}/pull/{number}")
    p["user"]["login"] = v["sender"]["login"] = PR_AUTHOR
    p["head"].update(ref=head_ref, sha=sha, label=f"{owner}:{head_ref}")
    p["base"].update(ref="main", label=f"{owner}:main")
    p["head"]["user"]["login"] = p["base"]["user"]["login"] = owner
    return v


def send_webhook(addr, secret, event, delivery, body):
    """POSTs a delivery signed as GitHub signs it; (status, body) of the answer."""
    signature = hmac.new(secret, body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/bench",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Hook-ID": "1",
        "X-GitHub-Hook-Installation-Target-Type": "repository",
        "X-GitHub-Hook-Installation-Target-ID": str(PR_REPO_ID),
        "X-Hub-Signature-256": f"sha256={signature}",
    }
    _, status, _, answer = http_call(addr, "POST", "/webhooks/github", headers, body, timeout=30)
    return status, answer.decode(errors="replace")


def cmd_prs(args):
    opts = options(args)
    slipway, home, repo = opts["--slipway"], opts["--home"], opts["--repo-dir"]
    runs, work, fixtures = int(opts["--runs"]), opts["--work"], opts["--fixtures"]
    many = int(opts.get("--open", 0))
    os.makedirs(work, exist_ok=True)
    examples = pr_examples(fixtures)
    index = os.path.join(work, "index")
    envs = ("prod", "qa")  # + pr-N: what every pull request into main touches

    # A token and a webhook secret for this run only, to the server through its environment
    # (the CLI plans below inherit them, with the same engine configuration).
    api_token_gh, hook_secret = secrets.token_hex(20), secrets.token_hex(32)
    os.environ.update(GITHUB_TOKEN=api_token_gh, SLIPWAY_WEBHOOK_SECRET=hook_secret)
    fake = FakeForge(opts["--fake-forge"], api_token_gh, PR_BOT)
    config = os.path.join(work, "engine.toml")
    with open(opts["--base-config"]) as f:
        text = f.read().rstrip() + "\n"
    text += (f'[forge.github]\nrepository = "{PR_REPO}"\napi_url = "{fake.url}"\n'
             f'bot_login = "{PR_BOT}"\n# token: $GITHUB_TOKEN; webhook secret: '
             "$SLIPWAY_WEBHOOK_SECRET (both made for the run)\n")
    with open(config, "w") as f:
        f.write(text)
    record("pr/config", [], unit="note", config=re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT",
                                                       text))
    # A mirror like the controller's, to time one `git fetch` of the same refs by hand.
    mirror = os.path.join(work, "mirror.git")
    subprocess.run(["git", "clone", "--mirror", "--quiet", f"file://{repo}", mirror], check=True)
    token = make_token(slipway, home)
    main_sha = git(repo, "rev-parse", "main")
    main_yaml = git(repo, "show", "main:slipway.yaml") + "\n"
    if 'release: "main"' not in main_yaml:
        sys.exit("measure.py: the stack has no `release: \"main\"` line to change (gen.py prs)")
    serve = Serve(slipway, home, config, f"file://{repo}")

    comment_path = f"/repos/{PR_REPO}/issues/{{}}/comments"
    edit_prefix = f"/repos/{PR_REPO}/issues/comments/"
    status_path = f"/repos/{PR_REPO}/statuses/{{}}"

    def deployed(env, sha):
        """Waits until env is recorded (discovery makes it) and its latest deployment, of sha,
        has finished."""
        serve.wait_status(token, f"/api/v1/environments/{env}", 200, f"{env} not recorded")
        finished_deployment(serve, token, env, sha, timeout=120)

    def measure(n, action, sha, before, warm, prefix="pr"):
        """One delivery, timed from sending it to the plan comment arriving at the fake; then,
        once pr-N runs that commit, the three plans by the CLI and through the API, and a
        `git fetch` of the mirror."""
        payload = pr_payload(examples, action, n, f"feature/bench-{n}", sha, before)
        fake.open_pr(payload["pull_request"])
        body = json.dumps(payload).encode()
        since = fake.mark()
        cpu0 = cpu_seconds(serve.pid, children=True)
        t0 = time.perf_counter()
        status, reply = send_webhook(serve.addr, hook_secret.encode(), "pull_request",
                                     str(uuid.uuid4()), body)
        acked = time.perf_counter() - t0
        if status != 202 or '"handled":true' not in reply.replace(" ", ""):
            sys.exit(f"measure.py: the {action} webhook of #{n} answered {status}: {reply}")
        comments, statuses = comment_path.format(n), status_path.format(sha)

        def plan_write(r):
            j = r["json"]
            return (r["status"] in (200, 201) and isinstance(j, dict)
                    and PLAN_MARKER in (j.get("body") or "") and sha[:12] in j["body"]
                    and ((r["method"], r["path"]) == ("POST", comments)
                         or (r["method"] == "PATCH" and r["path"].startswith(edit_prefix))))

        def plan_status(final):
            return lambda r: (r["method"] == "POST" and r["path"] == statuses
                              and isinstance(r["json"], dict)
                              and r["json"].get("context") == "slipway/plan"
                              and (r["json"].get("state") != "pending") == final)

        write = fake.wait(since, plan_write, f"plan comment on #{n} for {sha[:12]}")
        cpu = cpu_seconds(serve.pid, children=True) - cpu0
        done = fake.wait(since, plan_status(True), f"final slipway/plan status of {sha[:12]}")
        pending = fake.wait(since, plan_status(False), f"pending status of {sha[:12]}")
        listed = fake.wait(since, lambda r: (r["method"], r["path"]) == ("GET", comments),
                           f"list of #{n}'s comments")
        requests = fake.log[since:done["index"] + 1]
        plan_comments = [c for c in fake.comments(n) if PLAN_MARKER in c["body"]]
        # Checked, untimed: the comment covers the three environments, the status says so,
        # and there is one plan comment per pull request, created then edited.
        text = write["json"]["body"]
        if done["json"]["state"] != "success" or "3 environments" not in text or any(
                f"`{e}`" not in text and f" {e} " not in text for e in (*envs, f"pr-{n}")):
            sys.exit(f"measure.py: #{n} at {sha[:12]}: status {done['json']}, comment:\n{text}")
        want = "POST" if action == "opened" else "PATCH"
        if write["method"] != want or len(plan_comments) != 1:
            sys.exit(f"measure.py: #{n} {action}: the plan comment came by {write['method']} "
                     f"(expected {want}); {len(plan_comments)} plan comments")
        # Settled: the refresh that follows made or moved pr-N, and its deployment is done.
        deployed(f"pr-{n}", sha)
        time.sleep(0.2)
        cli = [run_checked([slipway, "--home", home, "--config", config, "plan", "--env", e,
                            "--repo", repo, "--ref", sha], 0) for e in (*envs, f"pr-{n}")]
        # What a CLI plan pays besides planning: its process start, and the commit read from
        # git, parsed and checked.
        start = run_checked([slipway, "--version"], 0)[0]
        valid = run_checked([slipway, "validate", "--repo", repo, "--ref", sha], 0)[0]
        api_t = []
        for e in (*envs, f"pr-{n}"):
            t = time.perf_counter()
            api(serve.addr, token, "GET", f"/api/v1/environments/{e}/plan")
            api_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run(["git", "-C", mirror, "fetch", "--prune", "--quiet", "origin"],
                       check=True)
        fetch = time.perf_counter() - t
        total = write["at"] - t0
        print(f"  #{n} {action}: webhook → plan comment {total:.3f} s; the 3 plans by the CLI "
              f"{sum(w for w, _ in cli):.3f} s{' (warm-up)' if warm else ''}", file=sys.stderr)
        if warm:
            return
        label = f"{prefix}/{action}"
        record(label, [total], cpu=[cpu])
        record(f"{label}-ack", [acked])
        record(f"{label}-pending", [pending["at"] - t0])
        record(f"{label}-list", [listed["at"] - t0])
        record(f"{label}-success", [done["at"] - t0])

        def shape(path):
            path = path.replace(sha, "{sha}").replace(f"/issues/{n}/", "/issues/{n}/")
            return re.sub(r"/comments/\d+$", "/comments/{id}", path)

        record(f"{label}-requests", [len(requests)], unit="requests",
               calls=[f"{r['method']} {shape(r['path'])}" for r in requests])
        record(f"{label}-plans-cli", [sum(w for w, _ in cli)], cpu=[sum(c for _, c in cli)])
        for role, (wall, c) in zip(("prod", "qa", "preview"), cli):
            record(f"pr/plan-cli/{role}", [wall], cpu=[c])
        record(f"{label}-plans-api", [sum(api_t)])
        record(f"{label}-overhead", [total - sum(w for w, _ in cli)])
        record(f"{label}-overhead-api", [total - sum(api_t)])
        record(f"{label}-fetch", [fetch])
        if prefix == "pr":
            record("pr/cli-version", [start])
            record("pr/cli-validate", [valid])

    def close(n, sha):
        payload = pr_payload(examples, "closed", n, f"feature/bench-{n}", sha)
        fake.close_pr(payload["pull_request"])
        status, reply = send_webhook(serve.addr, hook_secret.encode(), "pull_request",
                                     str(uuid.uuid4()), json.dumps(payload).encode())
        if status != 202:
            sys.exit(f"measure.py: the closed webhook of #{n} answered {status}: {reply}")
        serve.wait_status(token, f"/api/v1/environments/pr-{n}", 404,
                          f"pr-{n} still there after #{n} was closed", pause=0.05)
        time.sleep(0.2)  # the refresh that destroyed it is over

    def open_many(first_n):
        """`many` pull requests opened one after the other (untimed), each waited for until
        its plan comment is in; then until every preview runs its head. Their plan comments'
        ids."""
        ids = {}
        for n in range(first_n, first_n + many):
            sha = commit_on(repo, "main", "slipway.yaml",
                            main_yaml.replace('release: "main"', f'release: "pr-{n}-a"'),
                            index, f"#{n}: open")
            git(repo, "update-ref", f"refs/pull/{n}/head", sha)
            payload = pr_payload(examples, "opened", n, f"feature/bench-{n}", sha)
            fake.open_pr(payload["pull_request"])
            since = fake.mark()
            status, reply = send_webhook(serve.addr, hook_secret.encode(), "pull_request",
                                         str(uuid.uuid4()), json.dumps(payload).encode())
            if status != 202:
                sys.exit(f"measure.py: the opened webhook of #{n} answered {status}: {reply}")
            fake.wait(since, lambda r, n=n: r["method"] == "POST"
                      and r["path"] == comment_path.format(n) and r["status"] in (200, 201),
                      f"plan comment on #{n}", timeout=120)
            plan = [c for c in fake.comments(n) if PLAN_MARKER in c["body"]]
            ids[plan[0]["id"]] = n
            if (n - first_n + 1) % 25 == 0:
                print(f"  {n - first_n + 1} of {many} pull requests open", file=sys.stderr)
            opened.append((n, sha))
        for n, sha in opened:
            deployed(f"pr-{n}", sha)
        return ids

    def at_many(base_sha):
        """With `many` pull requests open: `runs` more pull requests' webhook → plan comment
        (as section 7 times it, each left open); then `runs` pushes to main, each timed until
        prod and qa run it and until the last of the open pull requests' comments is planned
        again against it."""
        first_n = 1001
        ids = open_many(first_n)
        for n in range(first_n + many, first_n + many + runs):
            git_ref = f"refs/pull/{n}/head"
            sha = commit_on(repo, "main", "slipway.yaml",
                            main_yaml.replace('release: "main"', f'release: "pr-{n}-a"'),
                            index, f"#{n}: first push")
            git(repo, "update-ref", git_ref, sha)
            print(f"  with {len(ids)} open: pull request #{n}", file=sys.stderr)
            measure(n, "opened", sha, None, False, prefix="prmany")
            ids.update({c["id"]: n for c in fake.comments(n) if PLAN_MARKER in c["body"]})
        time.sleep(0.5)
        push = push_example(fixtures)
        for k in range(2, runs + 2):
            release = f"main-{k}"
            moved = commit_on(repo, base_sha, "slipway.yaml",
                              main_yaml.replace('release: "main"', f'release: "{release}"'),
                              index, f"main moves to {release}")
            body = json.dumps(push_payload(push, "main", base_sha, moved)).encode()
            since = fake.mark()
            t0 = time.perf_counter()
            git(repo, "update-ref", "refs/heads/main", moved)
            status, reply = send_webhook(serve.addr, hook_secret.encode(), "push",
                                         str(uuid.uuid4()), body)
            if status != 202:
                sys.exit(f"measure.py: the push webhook answered {status}: {reply}")
            for e in envs:
                finished_deployment(serve, token, e, moved, timeout=300)
            to_running = time.perf_counter() - t0
            edited = {}
            deadline = time.perf_counter() + 600
            while len(edited) < len(ids):
                fake.fetch()
                for r in fake.log[since:]:
                    cid = r["path"].removeprefix(edit_prefix)
                    if (r["method"] == "PATCH" and r["path"].startswith(edit_prefix)
                            and cid.isdigit() and int(cid) in ids and r["status"] == 200
                            and release in (r["json"] or {}).get("body", "")):
                        edited.setdefault(int(cid), r)
                if time.perf_counter() > deadline:
                    sys.exit(f"measure.py: after the push of {release}, {len(edited)} of "
                             f"{len(ids)} plan comments were planned again within 600 s")
                time.sleep(0.05)
            last = max(r["at"] for r in edited.values()) - t0
            first = min(r["at"] for r in edited.values()) - t0
            print(f"  with {len(ids)} open, push of {release}: prod and qa running "
                  f"{to_running:.3f} s; first comment planned again {first:.3f} s, the last "
                  f"{last:.3f} s", file=sys.stderr)
            record("prmany/push-running", [to_running])
            record("prmany/push-first-comment", [first])
            record("prmany/push-last-comment", [last], comments=len(ids))
            base_sha = moved
            time.sleep(0.5)
        record("prmany/open", [many], unit="pull requests")

    opened = []
    try:
        serve.wait_healthy()
        for e in envs:
            deployed(e, main_sha)
        # The start-up catch-up (the open pull requests listed: none yet) is over.
        fake.wait(0, lambda r: r["path"] == f"/repos/{PR_REPO}/pulls", "catch-up list")
        time.sleep(0.3)
        # Round 0 warms up (the first fetch of PR refs, connections to the fake): untimed.
        for rnd in range(runs + 1):
            n = rnd + 1
            print(f"  {'warm-up' if rnd == 0 else f'round {rnd}/{runs}'}: pull request #{n}",
                  file=sys.stderr)
            git_ref = f"refs/pull/{n}/head"
            first = commit_on(repo, "main", "slipway.yaml",
                              main_yaml.replace('release: "main"', f'release: "pr-{n}-a"'),
                              index, f"#{n}: first push")
            git(repo, "update-ref", git_ref, first)
            measure(n, "opened", first, None, rnd == 0)
            second = commit_on(repo, first, "slipway.yaml",
                               main_yaml.replace('release: "main"', f'release: "pr-{n}-b"'),
                               index, f"#{n}: second push")
            git(repo, "update-ref", git_ref, second)
            measure(n, "synchronize", second, first, rnd == 0)
            close(n, second)
        if many:
            at_many(main_sha)
    finally:
        serve.stop()
        unhandled = fake.unhandled() if fake.proc.poll() is None else []
        fake.close()
    if unhandled:
        sys.exit("measure.py: slipway called GitHub's API outside what the fake answers "
                 "(404):\n  " + "\n  ".join(unhandled[:20]))


# --- 8. the web UI with many environments --------------------------------------------------------


COMMANDS = {"prs": cmd_prs, "pr-skip": skip_command("pr")}


# --- report ------------------------------------------------------------------------------------


def verdicts(r):
    samples = r.samples
    verdicts = []
    pr_actions = [a for a in ("opened", "synchronize") if samples.get(f"pr/{a}")]
    if pr_actions:
        figs, worst_over, worst_total = [], [], []
        for a in pr_actions:
            t, o = samples[f"pr/{a}"], samples.get(f"pr/{a}-overhead", [])
            oa = samples.get(f"pr/{a}-overhead-api", [])
            figs.append(
                f"`{a}`: median {fmt_s(med(t))} (max {fmt_s(max(t))}) − the 3 plans by "
                f"the CLI {fmt_s(med(samples[f'pr/{a}-plans-cli']))} = "
                f"{signed_cell(o).replace('**', '')}"
                + (f"; − the same plans in-process = {signed_cell(oa).replace('**', '')}"
                   if oa else ""))
            worst_over.append(max(o + oa) if o or oa else max(t))
            worst_total.append(max(t))
        if max(worst_total) < PR_GOAL_S:
            verdict = ("**met** (every run), even counting the plans as overhead: the whole "
                       f"webhook → comment stays under {PR_GOAL_S:g} s")
        elif max(med(samples[f"pr/{a}-overhead"]) for a in pr_actions) < PR_GOAL_S:
            verdict = ("**met**" + ("" if max(worst_over) < PR_GOAL_S
                                     else " by the median, not by every run"))
        else:
            verdict = "**missed**"
        verdicts.append((GOAL, "; ".join(figs), verdict))
    many = samples.get("prmany/open")
    if many and samples.get("prmany/opened"):
        n = int(many[0])
        t, o = samples["prmany/opened"], samples["prmany/opened-overhead"]
        oa = samples.get("prmany/opened-overhead-api", [])
        worst = max(o + oa)
        verdicts.append((
            f"the same at {n} open pull requests",
            f"`opened` with {n} open: {fmt_s(med(t))} − the 3 plans by the CLI "
            f"{fmt_s(med(samples['prmany/opened-plans-cli']))} = {fmt_s(med(o))}"
            + (f"; − the same plans in-process = {fmt_s(med(oa))}" if oa else ""),
            "**met**" if max(t) < PR_GOAL_S or worst < PR_GOAL_S else "**missed**"))
    if many and samples.get("prmany/push-running"):
        n = int(many[0])
        run = samples["prmany/push-running"]
        last = samples["prmany/push-last-comment"]
        meta = r.meta.get("prmany/push-last-comment", {})
        verdicts.append((
            f"push to running (under {PUSH_GOAL_S:g} s) at {n} open pull requests, and the time "
            "until the last of their plan comments is planned again against it",
            f"a push to main (signed `push` delivery) → prod and qa run it: {fmt_s(med(run))}; "
            f"→ the last of {meta.get('comments', n + 1)} plan comments edited: "
            f"{fmt_s(med(last))} ({fmt_s(med(last) / max(1, meta.get('comments', n + 1)))} "
            "per pull request)",
            ("**met**" if max(run) < PUSH_GOAL_S else "**missed**")
            + " for push to running; the re-plan of every open pull request is reported, the "
            "issue sets it no goal"))
    return verdicts


def write(r):
    samples, cpu, meta, w = r.samples, r.cpu, r.meta, r.w
    actions = [a for a in ("opened", "synchronize") if samples.get(f"pr/{a}")]
    if not actions:
        return False

    def col(label_fmt, src=samples):
        return [src.get(label_fmt.format(a), []) for a in actions]

    ms = fmt_ms

    w("## 7. A pull request's webhook to its plan comment\n")
    w(
        "A stack (`bench/gen.py prs`) with `prod` (`protected: true`) and `qa` tracking `main`, "
        "a family `previews` with `generate: { pull_requests: true }`, and five `file` "
        "resources (cheap: what is measured is Slipway's own path, not an apply), served by "
        "`slipway serve --repo file://…` with `[forge.github]` pointing at a fake GitHub API. "
        "The fake is the test kit's, the one the Rust tests use (`slipway-fake-forge --forge "
        "github`, `crates/slipway-testkit`: hyper on tokio, a process of its own on "
        "`127.0.0.1:0`, built by `bench/run`; it checks the bearer token), and answers what "
        "`crates/slipway-forge/src/github.rs` calls: `GET /user`, the open pull requests, a pull "
        "request's reviews, an issue's comments (list, create, edit), commit statuses; anything "
        "else would be a `404`, and the run fails if one happens. It logs every request with the "
        "time its body had been read, on `CLOCK_MONOTONIC`: the clock of `time.perf_counter()` "
        "in the sender of the webhook, which reads the log through the fake's control API "
        "(`GET /_fake/requests`).\n\n"
        "Each round is one new pull request N: a commit on top of `main` that changes "
        "`variables.release` (so prod and qa plan four file updates, one of them through a "
        "`${resources.config.path}` reference, and pr-N its five creations, on `synchronize` "
        "its updates) is published as `refs/pull/N/head` (`git update-ref`, as GitHub keeps "
        "it), "
        "then a `pull_request` `opened` delivery — GitHub's own example from "
        "`@octokit/webhooks-examples` (the fixtures of the Rust tests), renamed to "
        "`acme/shop` and this pull request — is signed (`X-Hub-Signature-256`, HMAC-SHA256 with "
        "a secret made for the run) and POSTed to `/webhooks/github`. **Timed: from just before "
        "the POST until the fake has received the plan comment** (`POST …/issues/N/comments` "
        "with `<!-- slipway:plan -->` and the head's sha). Then a second commit, published the "
        "same way, and a `synchronize` delivery, timed until the comment's `PATCH "
        "…/issues/comments/ID`. Checked each time, untimed: the comment covers `prod`, `qa` and "
        "`pr-N` (3 environments, none failed), the `slipway/plan` status ends `success`, and "
        "there is one plan comment per pull request (created, then edited). Then, once pr-N "
        "runs that commit (the refresh that follows the comment deploys it), the baselines, "
        "untimed for the webhook: **the plans themselves**, `slipway plan --env E --repo R "
        "--ref SHA` for `prod`, `qa` and `pr-N` one after the other with the same binary, "
        "the same home (read-only) and engine configuration; the same three plans in-process, "
        "`GET /api/v1/environments/E/plan` on the running controller; and one `git fetch "
        "--prune` of a mirror of the same repository, as the controller's mirror fetches the "
        "new ref. The pull request is then closed (its `closed` delivery; pr-N destroyed) "
        "before the next round. One untimed warm-up round first.\n"
    )
    conf = meta.get("pr/config", {}).get("config")
    if conf:
        w("Engine configuration of section 7 (`api_url` points at the fake):\n")
        w("```toml\n" + conf.strip() + "\n```\n")
    heads = [f"`{a}` ({len(samples['pr/' + a])} runs)" for a in actions]
    w("| | " + " | ".join(heads) + " |")
    w("|---|" + "---|" * len(actions))
    rows = [
        ("**webhook sent → plan comment received** (a)", "pr/{}", samples),
        ("… `202` answered (signature checked, delivery recorded and audited)", "pr/{}-ack",
         samples),
        ("… `slipway/plan` `pending` status received", "pr/{}-pending", samples),
        ("… the comments listed (`GET …/issues/N/comments`): the repository fetched, the "
         "commit loaded, the 3 plans made, the comment rendered", "pr/{}-list", samples),
        ("… the `slipway/plan` `success` status received (after the comment)", "pr/{}-success",
         samples),
        ("CPU time of the serve process and the `git` it ran, webhook → comment "
         "(clock ticks of 10 ms)", "pr/{}", cpu),
        ("**the plans themselves**: the 3 `slipway plan --env E --ref SHA` (b)",
         "pr/{}-plans-cli", samples),
        ("**(a) − (b)**, run by run", "pr/{}-overhead", samples),
        ("the same 3 plans in-process (`GET /api/v1/environments/E/plan`, one after the "
         "other; each environment's own ref)", "pr/{}-plans-api", samples),
        ("(a) − the in-process plans, run by run", "pr/{}-overhead-api", samples),
        ("one `git fetch --prune` of a mirror, by hand (the new ref)", "pr/{}-fetch", samples),
    ]
    for name, fmt, src in rows:
        xs = col(fmt, src)
        if not any(xs):
            continue
        w(f"| {name} | " + " | ".join(signed_cell(x) for x in xs) + " |")
    w("")
    calls = meta.get(f"pr/{actions[0]}-requests", {}).get("calls")
    if calls:
        w("Requests the fake received per delivery (last run): " + ", ".join(
            f"`{c}`" for c in calls)
          + ("; `synchronize`: " + ", ".join(
              f"`{c}`" for c in meta.get("pr/synchronize-requests", {}).get("calls", []))
             if "synchronize" in actions else "")
          + ". `bot_login` is configured, so `GET /user` is never needed.\n")
    per = {r: samples.get(f"pr/plan-cli/{r}") for r in ("prod", "qa", "preview")}
    start, valid = samples.get("pr/cli-version"), samples.get("pr/cli-validate")
    if all(per.values()):
        w("**The baseline, split** (one `slipway plan` each, medians over both deliveries): "
          + ", ".join(f"`{r if r != 'preview' else 'pr-N'}` {ms(med(xs))}"
                      for r, xs in per.items())
          + (f"; of one plan, the process start (`slipway --version`) is {ms(med(start))} and "
             f"reading, parsing and checking the commit (`slipway validate --ref SHA` − the "
             f"start) {ms(med(valid) - med(start))}" if start and valid else "")
          + ". The controller pays none of that three times: it is running, its state is open, "
          "and its engine reads the new commit from git for the first plan and keeps it for "
          "the next two (its commit cache). So (b) overstates what the plans cost the "
          "controller, and (a) − (b) understates its overhead (it can even go below zero); the "
          "in-process plans are the closer measure, though they plan each "
          "environment's own ref (`main`, already loaded, for prod and qa) rather than the "
          "pull request's head.\n")
    # Where the time goes: medians of the steps, each taken run by run.
    def step(later, earlier):
        return med([x - y for x, y in zip(samples[later], samples[earlier])])

    lines = []
    for a in actions:
        ack = med(samples[f"pr/{a}-ack"])
        to_pending = step(f"pr/{a}-pending", f"pr/{a}-ack")
        to_list = step(f"pr/{a}-list", f"pr/{a}-pending")
        to_write = step(f"pr/{a}", f"pr/{a}-list")
        fetch = samples.get(f"pr/{a}-fetch")
        plans = samples.get(f"pr/{a}-plans-api")
        part = (f"`{a}`: {ms(ack)} to the `202`, {ms(to_pending)} more to the `pending` "
                f"status (the event handed to a blocking thread, the pull request recorded), "
                f"**{ms(to_list)}** from there to the comments listed")
        if fetch and plans:
            rest = to_list - med(fetch) - med(plans)
            part += (f" (about {ms(med(fetch))} of it a `git fetch`, as timed by hand, "
                     f"{ms(med(plans))} the three plans as the API makes them, leaving "
                     f"{ms(rest)} for reading the new commit from git and parsing it, "
                     "rendering the comment, and the rest)")
        part += f", and {ms(to_write)} to the comment's write"
        lines.append(part)
    many = samples.get("prmany/open")
    if many and samples.get("prmany/push-last-comment"):
        n = int(many[0])
        meta = r.meta.get("prmany/push-last-comment", {})
        w(f"**At {n} open pull requests.** After the rounds above, {n} more pull requests are "
          "opened one after the other (each its own commit changing `variables.release`, its "
          "`opened` delivery, its plan comment waited for; untimed), and every preview `pr-N` "
          "waited for until it runs its head. Then as many more pull requests as there are "
          f"rounds are timed as above (webhook → plan comment, with {n} and more open), and a "
          "commit changing `release` on `main` "
          "is pushed with GitHub's `push` delivery, as many times as there are rounds: **timed "
          "until prod and qa have finished "
          "deploying it** (push to running; their resources are files, so there is no app "
          "start-up to subtract), **and until the last of the open pull requests' plan "
          "comments has been edited** (each re-planned against what prod and qa run now: "
          "`pulls::base_moved` queues them, one worker plans them one at a time between "
          f"webhooks). The timed pull requests stay open, so the pushes find {n} plus the "
          "rounds' pull requests open.\n")
        w("| | with " + str(n) + " open |")
        w("|---|---|")
        for name, key in (
                ("**webhook sent → plan comment received** for one more pull request",
                 "prmany/opened"),
                ("… the 3 plans by the CLI", "prmany/opened-plans-cli"),
                ("… the same 3 plans in-process", "prmany/opened-plans-api"),
                ("**push → prod and qa run it**", "prmany/push-running"),
                ("push → the first plan comment edited", "prmany/push-first-comment"),
                (f"**push → the last of {meta.get('comments', n + 1)} plan comments edited**",
                 "prmany/push-last-comment")):
            if samples.get(key):
                w(f"| {name} | {signed_cell(samples[key])} |")
        w("")
        w("An edit counts only when its body names the new `release` of main in prod's and "
          "qa's plans (and the fake logs a `PATCH` only for a changed body: Slipway leaves an "
          "unchanged comment alone).\n")
    w("**Where the time goes** (medians of each step, run by run; the fetch and the plans "
      "from their own timings, so the remainder is an estimate): " + "; ".join(lines)
      + ". Reading the commit: "
      "`post_plans` (crates/slipway-controller/src/pulls.rs) loads it with "
      "`source::load_commit` to find the environments, then the first `Engine::prepare` "
      "misses the engine's commit cache and reads it again (`load_at`, plus `list_files` for "
      "the source hashes): twice per delivery, by reading the code. The remainder above is "
      "what both reads, the rendering and the rest cost together, roughly: the API's plans "
      "(an HTTP request, its token checked, the plan serialised) and the fetch by hand (a "
      "`git` started from Python) carry costs of their own, which is how it can come out "
      "under two reads as `slipway validate` times one"
      + (f" ({ms(med(valid) - med(start))})" if start and valid else "") + ".\n")
    return True


DIG = [
    "- A pull request's webhook: the fake forge keeps every request it received with its "
    "time (`GET /_fake/requests` on `slipway-fake-forge`, `measure.py prs` keeps a copy in "
    "`FakeForge.log`); the controller's side with `perf record "
    "--call-graph dwarf -- slipway serve ...` around a few deliveries, and its events "
    "(`GET /api/v1/events`: `pull_request.updated`).\n",
]
