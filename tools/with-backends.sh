#!/usr/bin/env bash
# Runs a command with throwaway shared stores for the test suites: a PostgreSQL server of its
# own (Debian's, from /usr/lib/postgresql; installed with apt when missing and run as root),
# on a free loopback port and a data directory under target/, removed on exit.
# The command sees ARTIFACTSTORE_TEST_POSTGRES=postgres://postgres@127.0.0.1:PORT/postgres;
# each test then creates a database of its own there.
#
#   tools/with-backends.sh cargo test --workspace --test '*'
set -euo pipefail
cd "$(dirname "$0")/.."

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
if [ -z "$(pg_bin)" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing PostgreSQL (Debian's postgresql package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  else
    echo "PostgreSQL is not installed (apt-get install postgresql)" >&2
    exit 1
  fi
fi
BIN=$(pg_bin)

free_port() {
  local port
  for _ in $(seq 1 100); do
    port=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  echo "no free port found" >&2
  exit 1
}

mkdir -p target
WORK=$(mktemp -d "$PWD/target/backends.XXXXXX")
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
[ "$(id -u)" = 0 ] && chown postgres "$WORK"
stop() {
  as_pg "$BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap stop EXIT

PG_PORT=$(free_port)
as_pg "$BIN/initdb" -D "$WORK/pg" -A trust -U postgres >/dev/null
as_pg "$BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w -o \
  "-k $WORK -p $PG_PORT -c listen_addresses=127.0.0.1 -c max_connections=500" start >/dev/null
echo "== PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"
export ARTIFACTSTORE_TEST_POSTGRES="postgres://postgres@127.0.0.1:$PG_PORT/postgres"

"$@"
