#!/usr/bin/env bash
# Runs a command with throwaway shared stores for the test suites, each on a free loopback
# port with its data under target/, all removed on exit:
# - a PostgreSQL server of its own (Debian's, from /usr/lib/postgresql; installed with apt
#   when missing, run as the postgres user when we are root);
#   with TLS on (a CA and certificate made with openssl here); the command sees
#   ARTIFACTSTORE_TEST_POSTGRES=postgres://postgres@127.0.0.1:PORT/postgres?sslmode=verify-full…
#   and each test creates a database of its own there;
# - s3s-fs (crates.io, 0.14.1), an S3 server over a directory that checks SigV4 and S3's part
#   rules; installed once into ~/.cache/artifactstore-tools (S3S_FS names another binary);
#   the command sees ARTIFACTSTORE_TEST_S3=s3://artifactstore-test and the AWS_* settings,
#   and each test uses a prefix of its own.
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

# Below the kernel's ephemeral range (usually from 32768): a port that some outgoing
# connection uses as its own looks free to a connect probe but cannot be bound.
free_port() {
  local port low
  low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  for _ in $(seq 1 100); do
    port=$((10000 + RANDOM % (low - 10000)))
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
S3_PID=
stop() {
  [ -n "$S3_PID" ] && kill "$S3_PID" 2>/dev/null
  as_pg "$BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap stop EXIT

as_pg "$BIN/initdb" -D "$WORK/pg" -A trust -U postgres >/dev/null
# TLS on, with a certificate for 127.0.0.1 from a CA of its own: the suites connect with
# sslmode=verify-full against that CA, so every PostgreSQL byte of theirs crosses TLS.
TLS="$WORK/pg-tls"
mkdir -p "$TLS"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=artifactstore test CA" \
  -keyout "$TLS/ca.key" -out "$TLS/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$TLS/server.key" -out "$TLS/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$TLS/ext"
openssl x509 -req -in "$TLS/server.csr" -CA "$TLS/ca.crt" -CAkey "$TLS/ca.key" \
  -CAcreateserial -days 2 -extfile "$TLS/ext" -out "$TLS/server.crt" 2>/dev/null
chmod 600 "$TLS/server.key"
[ "$(id -u)" = 0 ] && chown -R postgres "$TLS"
# A port found free can be taken before the server binds it: try a few.
for attempt in 1 2 3; do
  PG_PORT=$(free_port)
  if as_pg "$BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w -o \
    "-k $WORK -p $PG_PORT -c listen_addresses=127.0.0.1 -c max_connections=500 \
     -c ssl=on -c ssl_cert_file=$TLS/server.crt -c ssl_key_file=$TLS/server.key" \
    start >/dev/null; then
    break
  fi
  echo "PostgreSQL did not start on port $PG_PORT (attempt $attempt):" >&2
  tail -5 "$WORK/pg.log" >&2
  [ "$attempt" = 3 ] && exit 1
done
echo "== PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT (TLS)"
export ARTIFACTSTORE_TEST_POSTGRES="postgres://postgres@127.0.0.1:$PG_PORT/postgres?sslmode=verify-full&sslrootcert=$TLS/ca.crt"

S3S_FS=${S3S_FS:-}
TOOLS="$HOME/.cache/artifactstore-tools"
if [ -z "$S3S_FS" ]; then
  S3S_FS=$(command -v s3s-fs || echo "$TOOLS/bin/s3s-fs")
fi
if [ ! -x "$S3S_FS" ]; then
  echo "== installing s3s-fs 0.14.1 into $TOOLS (once)"
  cargo install --quiet --locked s3s-fs --version 0.14.1 --features binary --root "$TOOLS"
  S3S_FS="$TOOLS/bin/s3s-fs"
fi
mkdir -p "$WORK/s3/artifactstore-test"
S3_KEY=artifactstore-test
S3_SECRET=artifactstore-test-secret
# As for PostgreSQL: a port found free can be taken before s3s-fs binds it.
for attempt in 1 2 3; do
  S3_PORT=$(free_port)
  "$S3S_FS" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_KEY" --secret-key "$S3_SECRET" \
    "$WORK/s3" >"$WORK/s3.log" 2>&1 &
  S3_PID=$!
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null && break 2
    kill -0 "$S3_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "s3s-fs did not start on port $S3_PORT (attempt $attempt):" >&2
  tail -3 "$WORK/s3.log" >&2
  kill "$S3_PID" 2>/dev/null || true
  S3_PID=
  [ "$attempt" = 3 ] && exit 1
done
echo "== s3s-fs $("$S3S_FS" --version | awk '{print $2}') on 127.0.0.1:$S3_PORT"
export ARTIFACTSTORE_TEST_S3=s3://artifactstore-test
# Where s3s-fs keeps the objects: tests backdate an object there (its mtime is its
# Last-Modified), as AWS dates a multipart object from when its upload began.
export ARTIFACTSTORE_TEST_S3_DIR="$WORK/s3"
export AWS_ENDPOINT="http://127.0.0.1:$S3_PORT" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID="$S3_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET"

"$@"
