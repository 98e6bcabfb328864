#!/usr/bin/env bash
# The cost of garbage collection to HTTP traffic: W1 (one 1 GiB multipart upload, the in-house
# client), W3 (4 KiB files, 8 at once) and W4 (a 1 GiB download with curl) against a release
# server, each measured with no collection running and again while one collects a backlog of
# BACKLOG unused blobs (a package of that many 4 KiB files, deleted just before), alternating,
# ROUNDS rounds. The server keeps every file in the blob store (ARTIFACTSTORE_INLINE_MAX_BYTES=0)
# and collects every second with a 1 s grace; /metrics tells whether the collection was still
# running when the measurements ended. Prints medians and the ratio with/without.
#
#   bench/gc.sh               (BACKLOG=20000 ROUNDS=3 BIG_MIB=1024; ~4 min)
set -euo pipefail
cd "$(dirname "$0")/.."
BACKLOG=${BACKLOG:-20000}; ROUNDS=${ROUNDS:-3}; BIG_MIB=${BIG_MIB:-1024}; SMALL=${SMALL:-2000}

cargo build --release -q -p artifactstore -p artifactstore-bench
AS_BIN=target/release/artifactstore
LG=target/release/artifactstore-bench
WORK=$(mktemp -d -p "${BENCH_DIR:-$PWD/target}" gc-bench.XXXXXX)
PID=
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BASE=http://127.0.0.1:$PORT
ARTIFACTSTORE_TOKENS=bench:tok ARTIFACTSTORE_LISTEN=127.0.0.1:$PORT ARTIFACTSTORE_DATA_DIR=$WORK/as \
  ARTIFACTSTORE_INLINE_MAX_BYTES=0 ARTIFACTSTORE_GC_INTERVAL_SECS=1 ARTIFACTSTORE_GC_GRACE_SECS=1 \
  RUST_LOG=warn "$AS_BIN" serve 2>"$WORK/as.log" & PID=$!
until curl -s -o /dev/null "$BASE/healthz"; do sleep 0.1; done
AS="$LG --base $BASE --token tok"
auth="Authorization: Bearer tok"
head -c $((BIG_MIB * 1024 * 1024)) /dev/urandom > "$WORK/big.bin"
SIZE=$((BIG_MIB * 1024 * 1024))
DL=$($AS place --system as-multipart --file "$WORK/big.bin" | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')
RESULTS=$WORK/results.jsonl
reclaimed() { curl -s "$BASE/metrics" | awk '/^artifactstore_gc_reclaimed_total\{kind="blobs"\}/{print $2}'; }

measure() {  # MODE
  local w1 w3 w4
  w1=$($AS ingest --system as-multipart --file "$WORK/big.bin")
  w3=$($AS small --system as --count "$SMALL")
  w4=$(curl -sSf -H "$auth" -o /dev/null -w '%{size_download} %{time_total}' "$BASE$DL" |
       python3 -c 'import json,sys; n,t=sys.stdin.read().split(); assert int(n)==int(sys.argv[1]); print(json.dumps({"mbps": int(n)/float(t)/1e6}))' "$SIZE")
  python3 -c 'import json,sys; print(json.dumps({"mode":sys.argv[1],"w1":json.loads(sys.argv[2])["mbps"],"w3":json.loads(sys.argv[3])["files_per_s"],"w4":json.loads(sys.argv[4])["mbps"]}))' \
    "$1" "$w1" "$w3" "$w4" >> "$RESULTS"
}

for r in $(seq 1 "$ROUNDS"); do
  measure without
  # The backlog: a package of BACKLOG 4 KiB blobs, then deleted (the newest package is it).
  $AS small --system as --count "$BACKLOG" --concurrency 16 >/dev/null
  PKG=$(curl -sSf -H "$auth" "$BASE/packages?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["id"])')
  curl -sSf -X DELETE -H "$auth" "$BASE/packages/$PKG"
  before=$(reclaimed); t0=$(date +%s.%N)
  sleep 2.5   # past the grace, into the next collection
  [ "$(reclaimed)" = "$before" ] || echo "round $r: the backlog was gone before the measurements" >&2
  t1=$(date +%s.%N)
  measure with
  t2=$(date +%s.%N)
  # The counter moves when a collection ends: wait for the one that took the backlog.
  until [ "$(( $(reclaimed) - before ))" -ge "$BACKLOG" ]; do sleep 0.1; done
  t3=$(date +%s.%N)
  python3 -c 'import sys; t0,t1,t2,t3=map(float,sys.argv[1:5]); print(f"round {sys.argv[5]}: measurements from {t1-t0:.1f} s to {t2-t0:.1f} s after the DELETE; the backlog was reclaimed at {t3-t0:.1f} s" + ("" if t3 > t2 else " (before the measurements ended)"))' "$t0" "$t1" "$t2" "$t3" "$r" >&2
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda mode, k: statistics.median(r[k] for r in rows if r["mode"] == mode)
print("garbage collection's cost to HTTP traffic (medians; ratio = with gc / without)")
for k, name, unit in [("w1", "W1 multipart 1 GiB", "MB/s"), ("w3", "W3 4 KiB files", "files/s"), ("w4", "W4 curl 1 GiB", "MB/s")]:
    a, b = med("without", k), med("with", k)
    print(f"{name:22} without {a:9.1f} {unit:8} with {b:9.1f} {unit:8} ratio {b / a:.2f}")
PY
