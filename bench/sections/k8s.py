"""Section 9: `kubernetes.manifests` against `kubectl apply --server-side` on the same cluster.

  measure.py k8s --slipway S --kubectl K --kubeconfig F --work DIR --n N --runs R
      On the cluster of kubeconfig F (a test cluster bench/run started for this section): a
      stack of N objects (ConfigMaps, Secrets, Services, ServiceAccounts, Roles, RoleBindings:
      kinds that are healthy without a kubelet) in one `kubernetes.manifests` resource, and the
      same objects rendered for kubectl. R rounds, which of the three goes first rotating, each in
      fresh namespaces: (a) the first apply (create N) `slipway apply --env bI --yes` against
      `kubectl apply --server-side -f DIR` (a Namespace and the N objects), and the same with
      `--validate=false` (kubectl's own schema work skipped; each in its namespace); (b) the
      same again, nothing changed; (c) `slipway plan --env bI --detailed-exitcode` (must exit 0) against
      `kubectl diff --server-side -f DIR` (must exit 0); (d) every object changed (a label,
      and a ConfigMap's data), applied by all three. Each step is checked untimed (N objects of
      each side's namespace carry the round's revision); the namespaces are deleted untimed
      at the end of the round, slipway's by `slipway destroy`.
  measure.py k8s-skip REASON
      Record that section 9 did not run, and why.
"""

import json
import os
import shutil
import subprocess
import sys

from common import cell, fmt_s, med, options, record, run_checked, sh, skip_command

TITLE = "9. Kubernetes: slipway against kubectl apply --server-side"
GOAL = ("`kubernetes.manifests`: plan and apply of 200 objects reported next to `kubectl apply "
        "--server-side` on the same cluster (ratio reported; no target set)")
KEY = "k8s"
NEEDS = ("It needs `kubectl` on PATH (or `KUBECTL`), the control plane's binaries "
         "(`tools/k8s/build.sh` builds them, or a per-machine copy, or `KUBEBUILDER_ASSETS`), "
         "`openssl` and `curl`, for `scripts/test-cluster.sh`.")

# The mix of kinds, in shares of N (the rest are ConfigMaps).
MIX = [("Secret", 0.2), ("Service", 0.2), ("ServiceAccount", 0.2), ("Role", 0.1),
       ("RoleBinding", 0.1)]
STEPS = [
    ("create", "first apply: create the namespace and N objects"),
    ("reapply", "apply again, nothing changed"),
    ("plan", "plan, nothing changed (`slipway plan` / `kubectl diff --server-side`)"),
    ("update", "apply a change of every object"),
]


# --- measurement -------------------------------------------------------------------------------


def kinds(n):
    counts = {kind: int(n * share) for kind, share in MIX}
    counts["ConfigMap"] = n - sum(counts.values())
    return counts


def manifests(n, rev, env, kubectl_ns=None):
    """{file name: YAML text} of the N objects. For slipway (kubectl_ns None) the revision and
    environment are `${vars.rev}` / `${env.name}` references; for kubectl they are written out
    and a Namespace comes first (kubectl reads a directory's files in name order)."""
    rev = "${vars.rev}" if kubectl_ns is None else rev
    env = "${env.name}" if kubectl_ns is None else env
    files = {}
    if kubectl_ns:
        files["00-namespace.yaml"] = f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {kubectl_ns}\n"
    meta = lambda name: (f"metadata:\n  name: {name}\n  labels:\n    app: bench\n"
                         f"    rev: \"{rev}\"\n")
    docs = {k: [] for k in ("ConfigMap", "Secret", "Service", "ServiceAccount", "Role",
                            "RoleBinding")}
    counts = kinds(n)
    for i in range(counts["ConfigMap"]):
        docs["ConfigMap"].append(
            f"apiVersion: v1\nkind: ConfigMap\n{meta(f'settings-{i}')}data:\n"
            f"  environment: \"{env}\"\n  revision: \"{rev}\"\n  index: \"{i}\"\n")
    for i in range(counts["Secret"]):
        # `data`, base64 of a fixed value (a Secret's `${secrets.S}` would go in stringData).
        docs["Secret"].append(
            f"apiVersion: v1\nkind: Secret\n{meta(f'token-{i}')}type: Opaque\ndata:\n"
            f"  token: c2VjcmV0LXZhbHVlLXtpfQ==\n")
    for i in range(counts["Service"]):
        docs["Service"].append(
            f"apiVersion: v1\nkind: Service\n{meta(f'svc-{i}')}spec:\n"
            f"  selector: {{ app: svc-{i} }}\n  ports: [{{ name: http, port: 80, targetPort: 8080 }}]\n")
    for i in range(counts["ServiceAccount"]):
        docs["ServiceAccount"].append(
            f"apiVersion: v1\nkind: ServiceAccount\n{meta(f'worker-{i}')}")
    for i in range(counts["Role"]):
        docs["Role"].append(
            f"apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\n{meta(f'reader-{i}')}rules:\n"
            f"  - apiGroups: [\"\"]\n    resources: [configmaps]\n"
            f"    resourceNames: [settings-{i}]\n    verbs: [get]\n")
    for i in range(counts["RoleBinding"]):
        docs["RoleBinding"].append(
            f"apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n{meta(f'reader-{i}')}"
            f"roleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader-{i % max(counts['Role'], 1)} }}\n"
            f"subjects: [{{ kind: ServiceAccount, name: worker-{i % max(counts['ServiceAccount'], 1)} }}]\n")
    for kind, items in docs.items():
        if items:
            files[f"{kind.lower()}s.yaml"] = "---\n".join(items)
    return files


def write_dir(path, files):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    for name, text in files.items():
        with open(os.path.join(path, name), "w") as f:
            f.write(text)


def git(repo, *args):
    subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@x",
                        "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "b@x"})


def stack_yaml(envs, rev):
    lines = ["version: 1", "stack: kbench", f"variables: {{ rev: \"{rev}\" }}", "environments:"]
    lines += [f"  {e}: {{ track: main }}" for e in envs]
    lines += ["resources:", "  objects:", "    type: kubernetes.manifests", "    cluster: bench",
              "    manifests: [\"k8s/*.yaml\"]", "    wait: 60s", ""]
    return "\n".join(lines)


def commit_rev(repo, envs, rev):
    with open(os.path.join(repo, "slipway.yaml"), "w") as f:
        f.write(stack_yaml(envs, rev))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"revision {rev}")


def count_rev(kubectl, kubeconfig, namespace, rev):
    """How many of the bench's objects in namespace carry the label rev=REV."""
    out = subprocess.run(
        [kubectl, "--kubeconfig", kubeconfig, "get", "-n", namespace,
         "configmaps,secrets,services,serviceaccounts,roles,rolebindings",
         "-l", f"app=bench,rev={rev}", "-o", "name"],
        capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"measure.py: kubectl get in {namespace}: {out.stderr.strip()[-1000:]}")
    return len(out.stdout.split())


def k8s(args):
    o = options(args)
    slipway, kubectl, kubeconfig = o["--slipway"], o["--kubectl"], o["--kubeconfig"]
    work, n, runs = o["--work"], int(o["--n"]), int(o["--runs"])
    os.makedirs(work, exist_ok=True)
    home, repo = os.path.join(work, "home"), os.path.join(work, "repo")
    config = os.path.join(work, "engine.toml")
    with open(config, "w") as f:
        f.write(f"[kubernetes.bench]\nkubeconfig = \"{kubeconfig}\"\n")
    envs = [f"b{i}" for i in range(1, runs + 1)]
    os.makedirs(repo)
    git(repo, "init", "-q", "-b", "main")
    write_dir(os.path.join(repo, "k8s"), manifests(n, None, None))
    commit_rev(repo, envs, "r0")
    base = [slipway, "--home", home, "--config", config]
    at = ["--repo", repo, "--ref", "main"]
    version = sh(kubectl, "--kubeconfig", kubeconfig, "version", "-o", "json")
    try:
        server = json.loads(version)["serverVersion"]["gitVersion"]
        client = json.loads(version)["clientVersion"]["gitVersion"]
    except (ValueError, KeyError):
        server = client = "?"
    record("k8s/setup", [], unit="note", n=n, kinds=kinds(n), server=server, client=client)

    def timed(label, cmd, expect=0):
        wall, cpu = run_checked(cmd, expect)
        record(label, [wall], cpu=[cpu], n=n)

    def check(ns, rev, what):
        got = count_rev(kubectl, kubeconfig, ns, rev)
        if got != n:
            sys.exit(f"measure.py: after {what}: {got} of {n} objects in {ns} at {rev}")

    for i, env in enumerate(envs, 1):
        print(f"  round {i}/{runs}", file=sys.stderr)
        sw_ns, kc_ns, nv_ns = f"kbench-{env}", f"kbench-kubectl-{env}", f"kbench-noval-{env}"
        # The round's revision is the one main has now (r0, or the previous round's update).
        rev = "r0" if i == 1 else f"r{i - 1}"
        new_rev = f"r{i}"
        kdir, kdir2 = os.path.join(work, f"kubectl-{env}"), os.path.join(work, f"kubectl-{env}-2")
        write_dir(kdir, manifests(n, rev, env, kc_ns))
        write_dir(kdir2, manifests(n, new_rev, env, kc_ns))
        ndir, ndir2 = os.path.join(work, f"noval-{env}"), os.path.join(work, f"noval-{env}-2")
        write_dir(ndir, manifests(n, rev, env, nv_ns))
        write_dir(ndir2, manifests(n, new_rev, env, nv_ns))
        nv = ["apply", "--server-side", "--validate=false", "-n", nv_ns, "-f"]
        kc = [kubectl, "--kubeconfig", kubeconfig]
        sides = {
            "slipway": {
                "create": base + ["apply", "--env", env, "--yes"] + at,
                "reapply": base + ["apply", "--env", env, "--yes"] + at,
                "plan": base + ["plan", "--env", env, "--detailed-exitcode"] + at,
                "update": base + ["apply", "--env", env, "--yes"] + at,
            },
            "kubectl": {
                "create": kc + ["apply", "--server-side", "-n", kc_ns, "-f", kdir],
                "reapply": kc + ["apply", "--server-side", "-n", kc_ns, "-f", kdir],
                "plan": kc + ["diff", "--server-side", "-n", kc_ns, "-f", kdir],
                "update": kc + ["apply", "--server-side", "-n", kc_ns, "-f", kdir2],
            },
            # `kubectl diff` has no --validate: no plan for this one.
            "kubectl-novalidate": {
                "create": kc + nv + [ndir],
                "reapply": kc + nv + [ndir],
                "update": kc + nv + [ndir2],
            },
        }
        names = list(sides)
        order = names[i % 3:] + names[:i % 3]  # each goes first in turn
        for step, _ in STEPS:
            if step == "update":
                commit_rev(repo, envs, new_rev)  # untimed: the change slipway applies
            for side in order:
                if step in sides[side]:
                    timed(f"k8s/{step}/{side}", sides[side][step])
            want = new_rev if step == "update" else rev
            check(sw_ns, want, f"slipway {step}")
            check(kc_ns, want, f"kubectl {step}")
            check(nv_ns, want, f"kubectl --validate=false {step}")
        # Untimed: the namespaces go, so that the cluster holds one round's objects at most.
        run_checked(base + ["destroy", "--env", env, "--yes"], 0)
        run_checked(kc + ["delete", "namespace", kc_ns, nv_ns, "--wait=true"], 0)


COMMANDS = {"k8s": k8s, "k8s-skip": skip_command(KEY)}


# --- report ------------------------------------------------------------------------------------


def ratio(r, step):
    s, k = r.samples.get(f"k8s/{step}/slipway"), r.samples.get(f"k8s/{step}/kubectl")
    return med(s) / med(k) if s and k else None


def machine(r):
    setup = r.meta.get("k8s/setup")
    if not setup:
        return []
    return [f"| Kubernetes (section 9) | a test control plane of `scripts/test-cluster.sh` on "
            f"127.0.0.1 (kube-apiserver {setup.get('server', '?')}, etcd without fsync, no "
            f"kubelet); kubectl {setup.get('client', '?')} |"]


def verdicts(r):
    if not r.samples.get("k8s/create/slipway"):
        return []
    n = r.meta.get("k8s/setup", {}).get("n", "?")
    parts = []
    for step, _ in STEPS:
        x = ratio(r, step)
        if x is not None:
            part = (f"{step} {fmt_s(med(r.samples[f'k8s/{step}/slipway']))} vs "
                    f"{fmt_s(med(r.samples[f'k8s/{step}/kubectl']))}: **{x:.2f}×**")
            nv = r.samples.get(f"k8s/{step}/kubectl-novalidate")
            if nv:
                part += (f" (vs `--validate=false` {fmt_s(med(nv))}: "
                         f"{med(r.samples[f'k8s/{step}/slipway']) / med(nv):.2f}×)")
            parts.append(part)
    return [(GOAL, f"{n} objects, medians, slipway vs kubectl: " + "; ".join(parts),
             "reported (no target)")]


def write(r):
    samples, cpu, meta, w = r.samples, r.cpu, r.meta, r.w
    if not samples.get("k8s/create/slipway"):
        return False
    setup = meta.get("k8s/setup", {})
    n = setup.get("n", "?")
    mix = ", ".join(f"{v} {k}s" for k, v in setup.get("kinds", {}).items())
    w(f"## {TITLE}\n")
    w(
        f"One stack with one `kubernetes.manifests` resource of {n} objects ({mix}: kinds "
        "that are healthy without a kubelet, which the test cluster does not run), in six "
        "multi-document files read by a glob, each object labelled `rev: \"${vars.rev}\"` and "
        "each ConfigMap holding `${env.name}` and the revision. The baseline is the same "
        "objects written out (plus a Namespace, first) applied with "
        "`kubectl apply --server-side -n NS -f DIR`, and again with `--validate=false`. All talk to the same cluster: a test "
        "control plane (`scripts/test-cluster.sh up`, under the target directory) that bench/run "
        "starts for this section and stops at the end, on failure too. Each round uses a fresh "
        "environment `bI` (namespace `kbench-bI`) and a fresh namespace for each kubectl way; "
        "which of the three goes first rotates round by round; every step is checked untimed afterwards (all "
        f"{n} objects of each namespace carry the expected revision), and the namespaces are "
        "deleted untimed at the end of the round. Medians (min–max) over the rounds; CPU is "
        "user + system time of the command (slipway's or kubectl's client only, not the API "
        "server's).\n")
    r.table(["step", "slipway", "kubectl", "slipway / kubectl", "kubectl `--validate=false`",
             "slipway / that", "CPU slipway", "CPU kubectl", "CPU kubectl `--validate=false`"],
            ["", ":", ":", ":", ":", ":", ":", ":", ":"])

    def cpu_cell(label):
        xs = cpu.get(label)
        return fmt_s(med(xs)) if xs else "–"

    for step, what in STEPS:
        s, k = samples.get(f"k8s/{step}/slipway"), samples.get(f"k8s/{step}/kubectl")
        nv = samples.get(f"k8s/{step}/kubectl-novalidate")
        if not s or not k:
            continue
        r.row(what, cell(s), cell(k), f"**{med(s) / med(k):.2f}×**", cell(nv) if nv else "–",
              f"**{med(s) / med(nv):.2f}×**" if nv else "–", cpu_cell(f"k8s/{step}/slipway"),
              cpu_cell(f"k8s/{step}/kubectl"), cpu_cell(f"k8s/{step}/kubectl-novalidate"))
    w("")
    w(
        "Where kubectl's time goes: `kubectl apply --server-side` sends one PATCH per object "
        "(201 for 200 objects and the Namespace, counted with `-v=6`) after three OpenAPI v3 "
        "GETs, but with its default `--validate=strict` most of its wall time is its own CPU "
        "(the CPU column), spent on the schema before it sends; with `--validate=false` it "
        "sends the same requests and leaves the checking to the API server, as slipway does, "
        "so that column is the closer baseline for the cost of the requests themselves. "
        "(kubectl here is the machine's, a Google Cloud SDK build: `kubectl version` says "
        "`-dispatcher`.)\n")
    w(
        "What slipway sends besides the objects: an apply first plans, and the plan observes "
        "every object (a GET and a server-side dry-run PATCH each, to see drift; for an update "
        "the plan's per-object preview does that again); then one apply PATCH per object, a "
        "LIST by label per kind for prune, and a GET per object for health. So about four "
        "requests per object against kubectl's one, sent 16 at a time (one kind's objects at a "
        "time when applying). kubectl, for its part, neither prunes, nor waits for health, nor "
        "sees drift.\n")
    w(
        "What each side does. `slipway apply`: loads the stack from the commit (the manifests "
        "read and rendered for the environment), plans against its state, makes and labels "
        "the namespace, applies every object by server-side apply (field manager `slipway`) in "
        "kind order, 16 requests in flight within a kind, lists what carries its labels for pruning, "
        "reads every object back for health, and records the deployment and its inventory. "
        "With nothing changed, `slipway apply` is its plan (below) finding no change, and sends "
        "nothing; `kubectl apply` sends every object again (the API server then finds nothing "
        "to change). `slipway plan` asks the API server for a server-side dry run of every object and "
        "compares it with the live object, as `kubectl diff --server-side` does. kubectl "
        "applies and diffs the files as they are, with no pruning, no health check and no "
        "record.\n")
    return True


DIG = [
    "- **Section 9**: `BENCH_ONLY=k8s bench/run` runs it alone (a cluster is started under "
    "`target/bench-k8s`, ~10 s, and stopped); the API server's log is in "
    "`target/bench-k8s/logs/kube-apiserver.log` while it runs. `slipway plan --env bI` shows "
    "per-object diffs.\n",
]
