#!/usr/bin/env bash
# Runs every test: `cargo test --workspace --locked`, after making sure what the tests talk to
# is there. The tests use real peers: git, Python 3, PostgreSQL on 127.0.0.1:5432 with trust
# authentication for `postgres` (psql too), npm (the GitHub fixtures are npm packages), and
# Chromium with chromedriver (the web UI's browser tests).
#
# When nothing answers on 127.0.0.1:5432, a throwaway PostgreSQL cluster is started there
# (installing Debian's `postgresql` when its binaries are missing), with its data under
# target/test-postgres; `bash scripts/test.sh --stop-postgres` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "$@" >/dev/null
}

pgdata=$PWD/target/test-postgres
pg_bin() {
  # Debian keeps the server binaries per major version, off the PATH.
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && [ -x "$dir/$1" ] && echo "$dir/$1"
}
as_postgres() {
  # initdb and postgres refuse to run as root.
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ "${1:-}" = "--stop-postgres" ]; then
  [ -f "$pgdata/postmaster.pid" ] && as_postgres "$(pg_bin pg_ctl)" -D "$pgdata" -m fast stop
  exit 0
fi

need git || apt_install git
need python3 || apt_install python3
need npm || apt_install nodejs npm
# The web UI's browser tests (crates/slipway/tests/ui.rs) drive Debian's headless Chromium.
{ need chromium && need chromedriver; } || apt_install chromium chromium-driver

if ! need pg_isready || ! need psql; then
  apt_install postgresql-client
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if [ -z "$(pg_bin initdb)" ]; then
    apt_install postgresql
  fi
  initdb=$(pg_bin initdb)
  pg_ctl=$(pg_bin pg_ctl)
  mkdir -p "$pgdata"
  if [ "$(id -u)" -eq 0 ]; then chown postgres "$pgdata"; fi
  if [ ! -f "$pgdata/PG_VERSION" ]; then
    echo "scripts/test.sh: starting a test PostgreSQL in $pgdata" >&2
    as_postgres "$initdb" -D "$pgdata" -U postgres -A trust --no-sync >/dev/null
  fi
  as_postgres "$pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p 5432 -c unix_socket_directories=$pgdata -c fsync=off" \
    start >/dev/null
fi
if ! psql -q -h 127.0.0.1 -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1; then
  echo "scripts/test.sh: PostgreSQL answers on 127.0.0.1:5432 but not to user postgres without a" >&2
  echo "password; the tests need trust authentication there (or stop that server)." >&2
  exit 1
fi

cargo test --workspace --locked "$@"
