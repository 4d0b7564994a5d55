"""Section 13: the policy gate: `slipway plan` of a 1,000-resource stack judged by 20 Rego
policies, against the same plan with no policy in force.

  measure.py policy --slipway S --home H --repo-dir D --runs R
      D is `gen.py stack D 1000` (never applied: every resource is a create, so the plan is
      judged). Writes 20 policies under D/policies (each walks every resource change, as
      real ones do), commits them, and writes two engine configurations beside H: the
      default `[policies] path` and one naming a folder that does not exist (no policy in
      force). Then R rounds (+1 warm-up), the order alternating: `slipway plan --env dev` with
      each. The difference of the two is what the policies cost, the child process
      (`slipway __policy`) and the plan document included. Checks that the plan with
      policies names all 20 and that none failed to evaluate.
"""

import os
import subprocess
import time

from common import fmt_s, git, med, options, record

TITLE = "13. Policy evaluation on a 1,000-resource plan"
N_POLICIES = 20

# Each template walks `input.resource_changes` once or more; {i} makes each file its own.
TEMPLATES = [
    # Deletes in protected environments.
    '''deny contains {{"msg": sprintf("p{i}: %s would be deleted", [c.address]), "resource": c.address}} if {{
    input.env.protected
    some c in input.resource_changes
    some a in c.actions
    a in {{"delete", "replace"}}
}}''',
    # Names.
    '''deny contains {{"msg": sprintf("p{i}: %s is not a lower-case name", [c.address]), "resource": c.address}} if {{
    some c in input.resource_changes
    not regex.match(`^[a-z][a-z0-9_-]{{0,62}}$`, c.address)
}}''',
    # Preview sizes.
    '''deny contains sprintf("p{i}: a preview runs %d processes, at most 8", [input.sizes.processes]) if {{
    input.env.kind == "generated"
    input.sizes.processes > 8
}}

warn contains sprintf("p{i}: %d resources change", [count(input.resource_changes)]) if {{
    count(input.resource_changes) > 5000
}}''',
    # A label for previews.
    '''deny contains "p{i}: a preview needs the label preview" if {{
    input.env.kind == "generated"
    input.git.pull_request != null
    not "preview" in input.git.labels
}}''',
    # Files stay inside the environment.
    '''deny contains {{"msg": sprintf("p{i}: %s writes outside its directory", [c.address]), "resource": c.address}} if {{
    some c in input.resource_changes
    c.type == "file"
    path := object.get(c.after, "path", "")
    startswith(path, "/")
}}''',
    # No secret-looking literals in file contents.
    '''deny contains {{"msg": sprintf("p{i}: %s holds what looks like a password", [c.address]), "resource": c.address}} if {{
    some c in input.resource_changes
    content := object.get(c.after, "content", "")
    is_string(content)
    contains(lower(content), "password=")
}}''',
    # Jobs have a timeout.
    '''warn contains {{"msg": sprintf("p{i}: job %s has no timeout", [c.address]), "resource": c.address}} if {{
    some c in input.resource_changes
    c.type == "job"
    not c.after.timeout
    count(c.actions) > 100
}}''',
    # Databases are never replaced.
    '''deny contains {{"msg": sprintf("p{i}: database %s would be replaced", [c.address]), "resource": c.address}} if {{
    some c in input.resource_changes
    c.type == "postgres.database"
    "replace" in c.actions
}}''',
    # Counting by type.
    '''warn contains sprintf("p{i}: %d files", [n]) if {{
    n := count([c | some c in input.resource_changes; c.type == "file"])
    n > 100000
}}''',
    # Every change has a location.
    '''deny contains {{"msg": sprintf("p{i}: %s has no location", [c.address]), "resource": c.address}} if {{
    some c in input.resource_changes
    c.actions != ["delete"]
    c.location == null
}}''',
]


def policy_text(i):
    body = TEMPLATES[i % len(TEMPLATES)].format(i=i)
    level = ("hard", "soft", "advisory")[i % 3]
    return (f"# METADATA\n# title: policy {i}\n# custom:\n#   enforcement: {level}\n"
            f"package slipway\n\n{body}\n")


def cmd_policy(args):
    opts = options(args)
    slipway, home, repo, runs = opts["--slipway"], opts["--home"], opts["--repo-dir"], int(opts["--runs"])
    os.makedirs(os.path.join(repo, "policies"), exist_ok=True)
    for i in range(N_POLICIES):
        with open(os.path.join(repo, "policies", f"p{i:02}.rego"), "w") as f:
            f.write(policy_text(i))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"{N_POLICIES} policies")
    confs = {}
    for mode, extra in (("with", ""), ("without", 'path = "no-policies-here"\n')):
        conf = os.path.join(os.path.dirname(home.rstrip("/")), f"policy-{mode}.toml")
        with open(conf, "w") as f:
            f.write(f"[policies]\nbranch = \"main\"\n{extra}")
        confs[mode] = conf

    def plan(mode):
        cmd = [slipway, "--home", home, "--config", confs[mode], "plan", "--env", "dev",
               "--repo", repo, "--ref", "main"]
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        took = time.perf_counter() - start
        if out.returncode != 0:
            raise SystemExit(f"policy: {' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}")
        return took, out.stdout

    _, text = plan("with")
    if f"Policies ({N_POLICIES} at" not in text or "error:" in text:
        raise SystemExit(f"policy: the plan did not judge {N_POLICIES} policies cleanly:\n{text[-3000:]}")
    _, text = plan("without")
    if "Policies (" in text:
        raise SystemExit("policy: the baseline plan was judged by policies")
    samples = {"with": [], "without": []}
    for round_ in range(runs):
        order = ("with", "without") if round_ % 2 == 0 else ("without", "with")
        for mode in order:
            samples[mode].append(plan(mode)[0])
    record("policy/with", samples["with"])
    record("policy/without", samples["without"])
    record("policy/cost", [w - o for w, o in zip(samples["with"], samples["without"])])


COMMANDS = {"policy": cmd_policy}


# --- report ------------------------------------------------------------------------------------


def verdicts(r):
    w, o = r.samples.get("policy/with"), r.samples.get("policy/without")
    if not w or not o:
        return []
    cost = med(w) - med(o)
    return [(
        f"policy evaluation of a 1,000-resource plan with {N_POLICIES} policies (issue 16; "
        "reported, no goal set)",
        f"plan with the policies {fmt_s(med(w))}, without {fmt_s(med(o))}: the policies cost "
        f"{fmt_s(max(cost, 0))} ({med(w) / med(o):.2f}×)",
        "reported",
    )]


def write(r):
    w_, o = r.samples.get("policy/with"), r.samples.get("policy/without")
    if not w_ or not o:
        return False
    w = r.w
    w(f"## {TITLE}\n")
    w(
        f"Section 1's stack of 1,000 resources (`gen.py stack`), never applied, so `slipway plan "
        f"--env dev` plans 1,000 creates and the policy gate judges them: {N_POLICIES} Rego "
        "policies under `policies/` (hard, soft and advisory in turn), each walking every "
        "resource change (deletes in protected environments, names by regular expression, "
        "preview sizes, a label, file paths, secret-looking contents, job timeouts, database "
        "replacements, counts, locations; bench/sections/policy.py). The baseline is the same "
        "plan with `[policies] path` naming a folder that does not exist. Rounds alternate the "
        "order. The difference is the gate's whole cost as a user sees it: the plan document "
        "built, the `slipway __policy` child started, 20 policies parsed and evaluated.\n"
    )
    r.table(["", "median", "min–max"], ["", ":", ":"])
    for label, name in (("policy/with", f"plan, {N_POLICIES} policies"),
                        ("policy/without", "plan, no policy (baseline)"),
                        ("policy/cost", "difference, round by round")):
        xs = r.samples.get(label)
        if xs:
            r.row(name, fmt_s(med(xs)), f"{fmt_s(min(xs))}–{fmt_s(max(xs))}")
    w("")
    return True


DIG = [
    "- **Section 13**: `BENCH_ONLY=policy bench/run` runs it alone (~1 min). The gate runs in "
    "the child `slipway __policy`; `perf record -g --call-graph dwarf -- slipway plan --env dev` "
    "over its stack shows regorus's share beside the plan's.\n",
]
