#!/usr/bin/env bash
# The embedded stores (SQLite + blob directory) beside the shared ones (PostgreSQL + S3, here
# a throwaway PostgreSQL 15 and s3s-fs from tools/with-backends.sh), one release server each,
# rounds interleaved; prints per-round figures, medians and the shared/embedded ratio.
#   bench/backends.sh            3 rounds, 1 GiB files (~5 min)
#   bench/backends.sh --quick    1 round, 256 MiB
# Workloads: W1 one 1 GiB multipart POST; W2 the same file in 16 MiB PATCHes (an upload
# session: on S3 one object per PATCH, assembled at complete); W3 2,000 files of 4 KiB,
# 8 at a time (also with every file's bytes in S3, none in PostgreSQL); W4 a 1 GiB download (curl), also through a second shared replica; W6 200
# long-polls woken by one finalize. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${ARTIFACTSTORE_TEST_POSTGRES:-}" ] || [ -z "${ARTIFACTSTORE_TEST_S3:-}" ]; then
  exec tools/with-backends.sh "$0" "$@"
fi

QUICK=0; [ "${1:-}" = "--quick" ] && QUICK=1
if [ $QUICK = 1 ]; then BIG_MIB=256; ROUNDS=1; SMALL=500; else BIG_MIB=1024; ROUNDS=3; SMALL=2000; fi
cargo build --release -q -p artifactstore -p artifactstore-bench
BIN=target/release/artifactstore
LG=target/release/artifactstore-bench

WORK=$(mktemp -d -p "$PWD/target" backends-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { until curl -s -o /dev/null "http://127.0.0.1:$1/healthz"; do sleep 0.1; done; }
RESULTS=$WORK/results.jsonl
record() { python3 -c 'import json,sys; print(json.dumps({"workload":sys.argv[1],"system":sys.argv[2],"m":json.loads(sys.argv[3])}))' "$1" "$2" "$3" >> "$RESULTS"; }

DB="bench_$$"
psql -q "$ARTIFACTSTORE_TEST_POSTGRES" -c "CREATE DATABASE $DB"
PG_URL=${ARTIFACTSTORE_TEST_POSTGRES%%\?*}; PG_PARAMS=${ARTIFACTSTORE_TEST_POSTGRES#"$PG_URL"}
SHARED_DB="${PG_URL%/*}/$DB$PG_PARAMS"
SHARED_BLOBS="$ARTIFACTSTORE_TEST_S3/bench-$$"
serve() {  # serve NAME PORT [env…]
  local name=$1 port=$2; shift 2
  env ARTIFACTSTORE_TOKENS=bench:tok ARTIFACTSTORE_LISTEN=127.0.0.1:$port \
    ARTIFACTSTORE_DATA_DIR="$WORK/$name" RUST_LOG=warn "$@" "$BIN" serve 2>"$WORK/$name.log" &
  PIDS+=($!)
}
EMB_PORT=$(port); SH_PORT=$(port); SH2_PORT=$(port); SHB_PORT=$(port)
serve embedded "$EMB_PORT"
serve shared "$SH_PORT" ARTIFACTSTORE_DATABASE_URL="$SHARED_DB" ARTIFACTSTORE_BLOB_URL="$SHARED_BLOBS"
serve shared2 "$SH2_PORT" ARTIFACTSTORE_DATABASE_URL="$SHARED_DB" ARTIFACTSTORE_BLOB_URL="$SHARED_BLOBS"
# The same, with every file's bytes in S3 (none kept in PostgreSQL): is inline faster there?
serve shared-s3-only "$SHB_PORT" ARTIFACTSTORE_DATABASE_URL="$SHARED_DB" \
  ARTIFACTSTORE_BLOB_URL="$SHARED_BLOBS" ARTIFACTSTORE_INLINE_MAX_BYTES=0
wait_port "$EMB_PORT"; wait_port "$SH_PORT"; wait_port "$SH2_PORT"; wait_port "$SHB_PORT"
EMB="$LG --base http://127.0.0.1:$EMB_PORT --token tok"
SH="$LG --base http://127.0.0.1:$SH_PORT --token tok"
SHB="$LG --base http://127.0.0.1:$SHB_PORT --token tok"

head -c $((BIG_MIB * 1024 * 1024)) /dev/urandom > "$WORK/big.bin"
download() {  # curl is not the bottleneck here; MB/s
  curl -s -o /dev/null -H 'Authorization: Bearer tok' -w '{"mbps": %{speed_download}}' "$1" |
    python3 -c 'import json,sys; print(json.dumps({"mbps": json.load(sys.stdin)["mbps"]/1e6}))'
}
# Each W1/W2 round stores new content, so that neither side can skip the write.
variant() { head -c 16 /dev/urandom | dd of="$WORK/big.bin" bs=16 seek=$1 conv=notrunc status=none; }
n=0
for r in $(seq 1 $ROUNDS); do
  for w in "W1 as-multipart" "W2 as-chunked"; do
    set -- $w
    n=$((n + 1)); variant $n; record "$1" embedded "$($EMB ingest --system "$2" --file "$WORK/big.bin")"
    n=$((n + 1)); variant $n; record "$1" shared "$($SH ingest --system "$2" --file "$WORK/big.bin")"
  done
  record W3 embedded "$($EMB small --system as --count $SMALL)"
  record W3 shared "$($SH small --system as --count $SMALL)"
  record W3 shared-s3-only "$($SHB small --system as --count $SMALL)"
done
rss() { awk '/VmHWM/{print $2}' "/proc/$1/status"; }
record RSS-after-W1-W3 embedded "{\"mib\": $(( $(rss "${PIDS[0]}") / 1024 ))}"
record RSS-after-W1-W3 shared "{\"mib\": $(( $(rss "${PIDS[1]}") / 1024 ))}"
EMB_PATH=$($EMB place --system as-multipart --file "$WORK/big.bin" | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')
SH_PATH=$($SH place --system as-multipart --file "$WORK/big.bin" | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')
for r in $(seq 1 $ROUNDS); do
  record W4 embedded "$(download "http://127.0.0.1:$EMB_PORT$EMB_PATH")"
  record W4 shared "$(download "http://127.0.0.1:$SH_PORT$SH_PATH")"
  # The same file through the other replica: its own cache of pointers starts cold.
  record W4 shared-other-replica "$(download "http://127.0.0.1:$SH2_PORT$SH_PATH")"
done
# Long-poll fan-out on one replica (across replicas: crates/storage/tests/replicas.rs).
record W6 embedded "$($EMB pollers --pollers 200)"
record W6 shared "$($SH pollers --pollers 200)"
record RSS-peak embedded "{\"mib\": $(( $(rss "${PIDS[0]}") / 1024 ))}"
record RSS-peak shared "{\"mib\": $(( $(rss "${PIDS[1]}") / 1024 ))}"

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def vals(w, s, k): return [r["m"][k] for r in rows if r["workload"] == w and r["system"] == s and k in r["m"]]
print(f"{'workload':<10} {'system':<22} {'median':>10}  rounds")
for w, k, unit in [("W1", "mbps", "MB/s"), ("W2", "mbps", "MB/s"), ("W3", "files_per_s", "files/s"),
                   ("W4", "mbps", "MB/s"), ("W6", "p50_ms", "ms p50"), ("W6", "p99_ms", "ms p99"),
                   ("RSS-after-W1-W3", "mib", "MiB"), ("RSS-peak", "mib", "MiB")]:
    base = None
    for s in ["embedded", "shared", "shared-s3-only", "shared-other-replica"]:
        v = vals(w, s, k)
        if not v: continue
        m = statistics.median(v)
        base = m if s == "embedded" else base
        ratio = f"  x{m / base:.2f} of embedded" if base and s != "embedded" else ""
        print(f"{w:<10} {s:<22} {m:>10.1f} {unit}  {', '.join(f'{x:.1f}' for x in v)}{ratio}")
PY
