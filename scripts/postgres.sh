#!/usr/bin/env bash
# Makes sure a PostgreSQL answers on 127.0.0.1:5432 with trust authentication for `postgres`,
# as the tests and the quickstart expect. When nothing answers there, a throwaway cluster is
# started with its data in target/test-postgres (installing Debian's `postgresql` when its
# binaries are missing); `bash scripts/postgres.sh stop` stops that cluster.
#
#   bash scripts/postgres.sh          # start one if none answers; exit 1 with the reason if
#                                     # something answers but refuses `postgres` without a password
#   bash scripts/postgres.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh

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

if [ "${1:-}" = "stop" ]; then
  if [ -f "$pgdata/postmaster.pid" ]; then
    as_postgres "$(pg_bin pg_ctl)" -D "$pgdata" -m fast stop
  fi
  exit 0
fi

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
    echo "scripts/postgres.sh: starting a throwaway PostgreSQL in $pgdata" >&2
    as_postgres "$initdb" -D "$pgdata" -U postgres -A trust --no-sync >/dev/null
  fi
  as_postgres "$pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p 5432 -c unix_socket_directories=$pgdata -c fsync=off" \
    start >/dev/null
fi
if ! psql -q -h 127.0.0.1 -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1; then
  echo "scripts/postgres.sh: PostgreSQL answers on 127.0.0.1:5432 but not to user postgres" >&2
  echo "without a password; trust authentication is needed there (or stop that server)." >&2
  exit 1
fi
