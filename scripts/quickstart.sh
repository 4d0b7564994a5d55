#!/usr/bin/env bash
# The quickstart: build Slipway, prepare a git repository holding the example stack (with a
# feature branch, so a preview environment appears), and start `slipway serve` on it. Prints
# the web UI, API and preview URLs and where the admin token is, then leaves the controller
# running.
#
#   bash scripts/quickstart.sh            # QUICKSTART_DIR=/tmp/slipway-quickstart by default
#   kill "$(cat /tmp/slipway-quickstart/serve.pid)"   # stop the controller (services stay)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${QUICKSTART_DIR:-/tmp/slipway-quickstart}
listen=${QUICKSTART_LISTEN:-127.0.0.1:7300}
port=${listen##*:}

cargo build --release --locked -q
slipway=$PWD/target/release/slipway

if [ -f "$dir/serve.pid" ] && kill -0 "$(cat "$dir/serve.pid")" 2>/dev/null; then
  kill "$(cat "$dir/serve.pid")" || true
  sleep 1
fi
# Environments of an earlier run are destroyed before their directory goes.
if [ -d "$dir/home" ]; then
  for env in $("$slipway" --home "$dir/home" status --output json | python3 -c 'import json,sys; print(" ".join(e["name"] for e in json.load(sys.stdin)["environments"]))'); do
    "$slipway" --home "$dir/home" destroy --env "$env" --yes --confirm-destroy "$env" >/dev/null 2>&1 || true
  done
fi
rm -rf "$dir"
mkdir -p "$dir/repo"
git_() { git -C "$dir/repo" -c user.name=Quickstart -c user.email=quickstart@slipway.invalid -c commit.gpgsign=false "$@"; }
git_ init -q -b main
cp examples/quickstart/slipway.yaml examples/quickstart/app.py examples/quickstart/seed.py examples/quickstart/migrate.sql "$dir/repo/"
git_ add -A && git_ commit -qm "The quickstart stack"
git_ checkout -q -b feature/hello
sed -i 's/Hello from Slipway/Hello from a feature branch/' "$dir/repo/slipway.yaml"
git_ commit -qam "A change to preview" && git_ checkout -q main

# The example's database lives on a PostgreSQL server: QUICKSTART_PG_URL names one, otherwise
# one with trust authentication on 127.0.0.1:5432 is used, started by scripts/postgres.sh
# (a throwaway cluster in target/test-postgres) when nothing answers there.
if [ -z "${QUICKSTART_PG_URL:-}" ]; then
  bash scripts/postgres.sh
fi
pg_url=${QUICKSTART_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
if ! pg_isready -q -d "$pg_url" 2>/dev/null; then
  echo "PostgreSQL does not answer at QUICKSTART_PG_URL ($pg_url): start it, or unset the" >&2
  echo "variable to let scripts/postgres.sh start a throwaway one on 127.0.0.1:5432." >&2
  exit 1
fi
cat > "$dir/engine.toml" <<TOML
[server]
listen = "$listen"
[repo]
poll_interval = "2s"
[postgres.main]
url = "$pg_url"
TOML
nohup "$slipway" --home "$dir/home" --config "$dir/engine.toml" serve --repo "file://$dir/repo" \
  >"$dir/serve.log" 2>&1 &
echo $! >"$dir/serve.pid"

token=""
for _ in $(seq 1 100); do
  # `slipway serve` writes its first admin token to a file only its user can read, never to
  # its log.
  token=$(cat "$dir/home/admin-token" 2>/dev/null | tr -d ' \n' || true)
  [ -n "$token" ] && break
  sleep 0.1
done
[ -n "$token" ] || { cat "$dir/serve.log"; echo "slipway serve did not start" >&2; exit 1; }

echo "Waiting for dev, prod and the preview of feature/hello..."
for _ in $(seq 1 300); do
  healthy=$("$slipway" --server "http://$listen" --token "$token" status --output json 2>/dev/null \
    | python3 -c 'import json,sys; print(sum(1 for e in json.load(sys.stdin)["environments"] if e["health"]=="healthy"))' 2>/dev/null || echo 0)
  [ "$healthy" -ge 3 ] && break
  sleep 0.2
done

"$slipway" --server "http://$listen" --token "$token" status
cat <<TEXT

Slipway is running (pid $(cat "$dir/serve.pid"); log $dir/serve.log).
  Web UI:       http://$listen/   (log in with the admin token: cat $dir/home/admin-token)
  API:          http://$listen/api/v1   (OpenAPI: http://$listen/api/v1/openapi.json)
  Preview URLs: http://dev.quickstart.localhost:$port/
                http://prod.quickstart.localhost:$port/
                http://br-feature-hello.quickstart.localhost:$port/
  Admin token:  in $dir/home/admin-token (mode 0600; the log never shows it)
  Try:          export SLIPWAY_SERVER=http://$listen SLIPWAY_TOKEN=\$(cat $dir/home/admin-token)
                $slipway env create demo --ref main --like previews --ttl 1h
                git -C $dir/repo commit --allow-empty -m again   # dev and prod follow main
  Stop:         kill \$(cat $dir/serve.pid)    (environments keep running; \`slipway --home $dir/home destroy --env dev --yes\` removes one)
TEXT
