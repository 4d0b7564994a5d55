#!/usr/bin/env bash
# Runs every test: `cargo test --workspace --locked`, after making sure what the tests talk to
# is there. The tests use real peers: git, Python 3, PostgreSQL on 127.0.0.1:5432 with trust
# authentication for `postgres` (psql too), npm (the GitHub fixtures are npm packages),
# Chromium with chromedriver (the web UI's browser tests), and Python's venv and PyPI (for
# Schemathesis, run by scripts/schemathesis.sh against the served API document), and a real
# Kubernetes control plane to start (docs/kubernetes.md, "A test cluster").
#
# When nothing answers on 127.0.0.1:5432, scripts/postgres.sh starts a throwaway PostgreSQL
# cluster there (installing Debian's `postgresql` when its binaries are missing), with its data
# under target/test-postgres; `bash scripts/test.sh --stop-postgres` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh

if [ "${1:-}" = "--stop-postgres" ]; then
  exec bash scripts/postgres.sh stop
fi

need git || apt_install git
need python3 || apt_install python3
python3 -c "import ensurepip, venv" 2>/dev/null || apt_install python3-venv
need npm || apt_install nodejs npm
# The web UI's browser tests (crates/slipway/tests/ui.rs) drive Debian's headless Chromium.
{ need chromium && need chromedriver; } || apt_install chromium chromium-driver

bash scripts/postgres.sh
# The replicas' fault test (crates/slipway/tests/replica_faults.rs) runs one replica under a
# skewed clock with libfaketime.
ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1 || apt_install faketime

# Kubernetes: kubectl, and etcd, kube-apiserver and kube-controller-manager built from the Go
# module proxy with the machine's Go when they are not built yet (tools/k8s/build.sh: about 9
# minutes cold on a busy 2-core machine; a second when built before on this machine, in any
# clone; docs/kubernetes.md). No cluster is started here: a
# test starts its own with `bash "$SLIPWAY_TEST_CLUSTER_SCRIPT" up DIR --owner PID` and stops it
# with `down DIR`; SLIPWAY_K8S_BIN spares that script even the cache check.
# kubectl: the machine's (this kind has one) or its Debian package; where neither is (Debian's
# bookworm has only kubernetes-client 1.20), one built beside the control plane, same version.
if ! need kubectl && ! apt_install kubectl 2>/dev/null; then
  PATH="$(bash tools/k8s/build.sh kubectl):$PATH"
  export PATH
fi
{ need openssl && need curl; } || apt_install openssl curl
# `ip`, for the server's test of a client that vanishes (its loopback taken down).
need ip || apt_install iproute2
# `nft`, with which an engine running as root keeps environments' code from one another's ports
# (crates/slipway/tests/attacks_network.rs; docs/isolation.md, "Network").
need nft || [ -x /usr/sbin/nft ] || apt_install nftables
SLIPWAY_K8S_BIN="$(bash tools/k8s/build.sh)"
export SLIPWAY_K8S_BIN
# The control plane's Go build cache (about 3 GB after a cold build) serves only a rebuild
# after its go.mod changes: emptied, so that the tests' own build has the disk (a CI run once
# failed on a full disk). SLIPWAY_K8S_KEEP_GOCACHE=1 keeps it. (Done here, not in build.sh,
# whose text is part of the binaries' stamp.)
if [ -z "${SLIPWAY_K8S_KEEP_GOCACHE:-}" ]; then
  rm -rf target/k8s/go/cache
fi
export SLIPWAY_TEST_CLUSTER_SCRIPT="$PWD/scripts/test-cluster.sh"

cargo test --workspace --locked "$@"

# The API against its own OpenAPI document (Schemathesis, from PyPI into target/).
bash scripts/schemathesis.sh

# The benchmark harness's own checks (bench/tests: the report it writes from samples, and that
# every command bench/run calls exists); no slipway binary, Python's standard library only.
python3 -m unittest discover -s bench/tests
