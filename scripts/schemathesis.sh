#!/usr/bin/env bash
# Tests the API against its own document: Schemathesis (PyPI) reads the OpenAPI document a real
# `slipway serve` serves, generates requests from it (valid ones, invalid ones, and sequences
# that follow the document's links: create -> get/plan/extend/pin/destroy), and checks every
# answer against the document: statuses it lists, bodies matching their schemas, invalid input
# refused and valid input accepted, no 5xx. Any failure fails the script.
#
# Schemathesis is installed once into a venv under the target dir (cached). The server runs on
# a temporary home with a small repository of file resources and an admin token; the seed and
# the example count are fixed, so a run is reproducible and takes a minute or two on 2 cores.
# Three operations are left out: the event stream and a followed log never end, which a
# request-per-example tool reads as a hang, and a webhook is a forge's signed delivery, which a generator cannot make
# (and this server has no forge: it answers 503, as documented). tests/api.rs, the forge
# tests and crates/slipway/tests/secrets.rs cover them.
#
#   bash scripts/schemathesis.sh            # builds slipway if needed, then runs
#   SCHEMATHESIS_EXAMPLES=100 bash scripts/schemathesis.sh
set -euo pipefail
cd "$(dirname "$0")/.."

version="4.32.5"
examples="${SCHEMATHESIS_EXAMPLES:-15}"
seed="${SCHEMATHESIS_SEED:-11}"
target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
venv="$target/schemathesis-venv"

if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qF "$version"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

cargo build --locked --quiet -p slipway
slipway="$target/debug/slipway"

work="$(mktemp -d)"
server=""
cleanup() {
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

git_() {
  GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null \
    GIT_AUTHOR_NAME=schemathesis GIT_AUTHOR_EMAIL=schemathesis@example.invalid \
    GIT_COMMITTER_NAME=schemathesis GIT_COMMITTER_EMAIL=schemathesis@example.invalid \
    git -C "$work/repo" "$@"
}
mkdir -p "$work/repo"
git_ init -q -b main
cat >"$work/repo/slipway.yaml" <<'YAML'
version: 1
stack: schemathesis
environments:
  main: { track: main }
  previews:
    generate: { branches: ["feature/*"] }
    ttl: 1h
resources:
  config: { type: file, path: etc/app.toml, content: "environment = \"${env.name}\"\n" }
YAML
git_ add -A
git_ commit -q -m "a stack of one file"
git_ branch feature/x

export SLIPWAY_HOME="$work/home"
token="$("$slipway" token create --role admin --name schemathesis)"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$slipway" serve --repo "$work/repo" --listen "127.0.0.1:$port" >"$work/serve.log" 2>&1 &
server=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
  python3 -c "import urllib.request; urllib.request.urlopen('$base/healthz', timeout=1)" 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { cat "$work/serve.log"; exit 1; }
  sleep 0.2
done

status=0
config="$PWD/scripts/schemathesis.toml"
# From the temporary directory: Schemathesis keeps a cache in `.schemathesis/` of where it runs.
cd "$work"
"$venv/bin/schemathesis" --no-color --config-file "$config" run "$base/api/v1/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks all \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "$examples" \
  --seed "$seed" \
  --workers 1 \
  --exclude-operation-id streamEvents \
  --exclude-operation-id followLogs \
  --exclude-operation-id receiveWebhook \
  --request-timeout 30 \
  || status=$?
if [ "$status" -ne 0 ]; then
  echo "schemathesis: failed; the server's log:" >&2
  tail -n 50 "$work/serve.log" >&2
fi
exit "$status"
