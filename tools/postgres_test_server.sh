#!/usr/bin/env bash
# A throwaway PostgreSQL server for the key broker's storage tests (tests/test_kbs_store.py),
# from Debian's postgresql package: a new cluster in DIR listening on 127.0.0.1 at a free port,
# a role `sevsim` with a random password owning the database `sevsim_test`.
#   start DIR   prints the URL to export as SEVSIM_TEST_POSTGRES_URL
#   stop DIR    stops the server and removes DIR
# PostgreSQL refuses to run as root: as root (CI) the server runs as the `postgres` user that
# the package creates, otherwise as the caller. Nothing touches the package's own cluster.
set -euo pipefail
action=${1:?start or stop} dir=${2:?a directory}
bin=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin | sort -V | tail -n 1)
owner() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case $action in
start)
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; fi
  chmod 700 "$dir"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  password=$(openssl rand -hex 16)
  owner "$bin/initdb" -D "$dir/data" --auth-local=peer --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log"
  owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -o \
    "-c listen_addresses=127.0.0.1 -p $port -k $dir" start >/dev/null
  owner "$bin/psql" -q -h "$dir" -p "$port" -d postgres -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE sevsim LOGIN PASSWORD '$password'" -c "CREATE DATABASE sevsim_test OWNER sevsim"
  echo "postgresql+psycopg://sevsim:$password@127.0.0.1:$port/sevsim_test"
  ;;
stop)
  if [ -d "$dir/data" ]; then owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true; fi
  rm -rf "$dir"
  ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
