#!/usr/bin/env bash
# The benchmark harness: artifactstore beside the CNCF distribution registry (Debian package
# docker-registry) and nginx, and beside the machine's own limits, in one run. Every workload
# runs on each system in alternation (A B A B …) for several rounds; the table shows medians
# and the ratios of artifactstore to the best peer and to the limit.
#   bench/run.sh            full run (~10 min)
#   bench/run.sh --quick    smaller sizes, one round (~2 min)
#   bench/run.sh --reads    W4 and W5 only, 5 rounds (~3 min)
# Downloads are driven by standard clients that reach nginx's best figure here: curl for W4,
# wrk (bench/ranges.lua) for W5. The in-house generator (crates/bench) drives what no standard
# tool covers: multipart and upload sessions, registry uploads, small files, long-polls.
# Only loopback addresses are used. Needs: cargo, curl, python3; installs docker-registry,
# nginx and wrk from Debian's packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0; READS=0
case "${1:-}" in --quick) QUICK=1 ;; --reads) READS=1 ;; esac
if [ $QUICK = 1 ]; then
  BIG_MIB=256; ROUNDS=1; SMALL=500; RANGE_SECONDS=3; POLLERS=200; PACKAGES=5000
else
  BIG_MIB=1024; ROUNDS=3; SMALL=2000; RANGE_SECONDS=6; POLLERS=1000; PACKAGES=100000
fi
[ $READS = 1 ] && ROUNDS=5

need=()
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -q -p artifactstore -p artifactstore-bench
AS_BIN=${AS_BIN:-target/release/artifactstore}  # AS_BIN=... compares another build
LG=target/release/artifactstore-bench

WORK=$(mktemp -d -p "${BENCH_DIR:-$PWD/target}" bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  # Every round's figures stay for a closer look at the spread.
  cp "$WORK/results.jsonl" "${BENCH_DIR:-$PWD/target}/bench-last.jsonl" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { until curl -s -o /dev/null "http://127.0.0.1:$1/"; do sleep 0.1; done; }
RESULTS=$WORK/results.jsonl
record() { python3 -c 'import json,sys; print(json.dumps({"workload":sys.argv[1],"system":sys.argv[2],"m":json.loads(sys.argv[3])}))' "$1" "$2" "$3" >> "$RESULTS"; }

# --- the systems ---------------------------------------------------------------------------
AS_PORT=$(port); REG_PORT=$(port); NGX_SF=$(port); NGX_RD=$(port)
ARTIFACTSTORE_TOKENS=bench:tok ARTIFACTSTORE_LISTEN=127.0.0.1:$AS_PORT ARTIFACTSTORE_DATA_DIR=$WORK/as \
  RUST_LOG=warn "$AS_BIN" serve 2>"$WORK/as.log" & AS_PID=$!; PIDS+=($AS_PID)
mkdir -p "$WORK/registry"
cat > "$WORK/registry.yml" <<YML
version: 0.1
log: {level: error}
storage:
  filesystem: {rootdirectory: $WORK/registry}
http: {addr: 127.0.0.1:$REG_PORT}
YML
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 & REG_PID=$!; PIDS+=($REG_PID)
mkdir -p "$WORK/nginx/dav" "$WORK/nginx/tmp" "$WORK/nginx/logs"
# Each nginx worker held to its own core, as artifactstore holds its connection threads.
cat > "$WORK/nginx.conf" <<NGX
daemon off; worker_processes 2; worker_cpu_affinity auto; $( [ "$(id -u)" = 0 ] && echo "user root;" ) pid $WORK/nginx/nginx.pid; error_log $WORK/nginx/logs/error.log;
events { worker_connections 4096; }
http {
  access_log off; client_body_temp_path $WORK/nginx/tmp; client_max_body_size 0;
  server { listen 127.0.0.1:$NGX_SF; root $WORK/nginx; sendfile on; tcp_nopush on;
           location /dav/ { dav_methods PUT; create_full_put_path on; } }
  server { listen 127.0.0.1:$NGX_RD; root $WORK/nginx; sendfile off; output_buffers 2 512k; }
}
NGX
nginx -c "$WORK/nginx.conf" -p "$WORK/nginx" & NGX_PID=$!; PIDS+=($NGX_PID)
wait_port "$AS_PORT"; wait_port "$REG_PORT"; wait_port "$NGX_SF"; wait_port "$NGX_RD"
AS="$LG --base http://127.0.0.1:$AS_PORT --token tok"
REG="$LG --base http://127.0.0.1:$REG_PORT"
NGX="$LG --base http://127.0.0.1:$NGX_SF"
NGXRD="$LG --base http://127.0.0.1:$NGX_RD"

head -c $((BIG_MIB * 1024 * 1024)) /dev/urandom > "$WORK/big.bin"
SIZE=$((BIG_MIB * 1024 * 1024))

# --- the machine's limits, in the same run -------------------------------------------------
python3 - "$WORK" "$RESULTS" <<'PY'
import hashlib, json, os, sys, threading, time
work, results = sys.argv[1], sys.argv[2]
data = open(f"{work}/big.bin", "rb").read()
t = time.perf_counter(); hashlib.sha256(data).digest(); sha = len(data) / (time.perf_counter() - t) / 1e6
t = time.perf_counter()
with open(f"{work}/plain", "wb") as f:
    for i in range(0, len(data), 1 << 20): f.write(data[i:i + (1 << 20)])
    f.flush(); os.fsync(f.fileno())
write = len(data) / (time.perf_counter() - t) / 1e6
os.remove(f"{work}/plain")
with open(results, "a") as out:
    for w, s, m in [("limit-sha256", "machine", {"mbps": sha}), ("limit-write", "machine", {"mbps": write})]:
        out.write(json.dumps({"workload": w, "system": s, "m": m}) + "\n")
PY

# Durable 4 KiB creates (write, fsync, rename, directory fsync; 8 threads): measured in every
# W3 round, beside the systems, since this rate drifts most between minutes.
limit_creates() {
  python3 - "$WORK/creates$1" "$RESULTS" "$SMALL" <<'PY'
import json, os, sys, threading, time
dir, results, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(dir)
def creates(k, n):
    d = os.open(dir, os.O_RDONLY)
    for i in range(n):
        tmp, final = f"{dir}/.t{k}-{i}", f"{dir}/f{k}-{i}"
        with open(tmp, "wb") as f:
            f.write(os.urandom(4096)); f.flush(); os.fsync(f.fileno())
        os.rename(tmp, final); os.fsync(d)
    os.close(d)
t = time.perf_counter()
threads = [threading.Thread(target=creates, args=(k, count // 8)) for k in range(8)]
[x.start() for x in threads]; [x.join() for x in threads]
files = count // 8 * 8 / (time.perf_counter() - t)
with open(results, "a") as out:
    out.write(json.dumps({"workload": "limit-creates", "system": "machine", "m": {"files_per_s": files}}) + "\n")
PY
}

# --- W1, W2: large ingest ------------------------------------------------------------------
# Each run starts with every system's stored copy deleted: this disk writes just-freed blocks
# several times faster than new ones, so every run must find the same kind, and no system may
# skip the write because it already holds the content.
fresh() {
  find "$WORK/as/blobs/blobs" -type f -delete 2>/dev/null || true
  rm -rf "$WORK/registry/docker/registry/v2/blobs" "$WORK/nginx/dav/big.bin"
  sync
}
ingest() { fresh; record "$1" "$2" "$($3 ingest --system "$4" --file "$WORK/big.bin")"; }
for r in $(seq 1 $([ $READS = 1 ] && echo 0 || echo $ROUNDS)); do
  ingest W1 artifactstore-multipart "$AS" as-multipart
  ingest W1 registry "$REG" registry-monolithic
  ingest W1 artifactstore-patch "$AS" as-patch
  ingest W1 nginx-put "$NGX" nginx-put
  ingest W2 artifactstore "$AS" as-chunked
  ingest W2 registry "$REG" registry-chunked
done
fresh
AS_W1_RSS=$(awk '/VmHWM/{print $2}' /proc/$AS_PID/status); REG_W1_RSS=$(awk '/VmHWM/{print $2}' /proc/$REG_PID/status)

# --- W4, W5: downloads ---------------------------------------------------------------------
# curl and wrk, not the in-house generator: they reach nginx's best figure on this machine,
# which that generator does not (it tops out near 27,000 req/s and 1.7 GB/s), and on two shared
# cores every cycle a client burns is taken from the server it measures.
AS_PATH=$($AS place --system as-multipart --file "$WORK/big.bin" | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')
REG_PATH=$($REG place --system registry-monolithic --file "$WORK/big.bin" | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')
cp "$WORK/big.bin" "$WORK/nginx/big.bin"
# Three fresh copies wait to be written back: flushed now, that writeback does not fall into
# some system's read rounds (it starts ~30 s after the writes, in the middle of W5).
sync
# The peak RSS of the reads alone: reset the high-water mark that the uploads left.
for p in $AS_PID $REG_PID; do echo 5 > /proc/$p/clear_refs 2>/dev/null || true; done
download() {  # URL [TOKEN] -> {"mbps": ...}; the whole file or a failure
  local auth=(); [ -n "${2:-}" ] && auth=(-H "Authorization: Bearer $2")
  curl -sSf "${auth[@]}" -o /dev/null -w '%{size_download} %{time_total}' "$1" |
    python3 -c 'import json,sys; n,t=sys.stdin.read().split(); n=int(n); assert n==int(sys.argv[1]), f"{n} bytes"; print(json.dumps({"mbps": n/float(t)/1e6}))' "$SIZE"
}
ranges() {  # URL [TOKEN] -> {"req_per_s": ..., "p99_ms": ...}; every answer a 206 or a failure
  wrk -t2 -c16 -d${RANGE_SECONDS}s -s bench/ranges.lua "$1" -- "$SIZE" 4096 ${2:-} | tail -n 1 |
    python3 -c 'import json,sys; m=json.load(sys.stdin); assert m["errors"]==0, m; print(json.dumps(m))'
}
for r in $(seq 1 $ROUNDS); do
  record W4 artifactstore "$(download "http://127.0.0.1:$AS_PORT$AS_PATH" tok)"
  record W4 registry "$(download "http://127.0.0.1:$REG_PORT$REG_PATH")"
  record W4 nginx-sendfile "$(download "http://127.0.0.1:$NGX_SF/big.bin")"
  record W4 nginx-read "$(download "http://127.0.0.1:$NGX_RD/big.bin")"
done
AS_W4_RSS=$(awk '/VmHWM/{print $2}' /proc/$AS_PID/status); REG_W4_RSS=$(awk '/VmHWM/{print $2}' /proc/$REG_PID/status)
for r in $(seq 1 $ROUNDS); do
  record W5 artifactstore "$(ranges "http://127.0.0.1:$AS_PORT$AS_PATH" tok)"
  record W5 registry "$(ranges "http://127.0.0.1:$REG_PORT$REG_PATH")"
  record W5 nginx-sendfile "$(ranges "http://127.0.0.1:$NGX_SF/big.bin")"
  record W5 nginx-read "$(ranges "http://127.0.0.1:$NGX_RD/big.bin")"
done
AS_W5_RSS=$(awk '/VmHWM/{print $2}' /proc/$AS_PID/status)
# W8: thousands of downloads that read a few hundred bytes a second, beside one at full speed.
ulimit -n 65536 2>/dev/null || true
record W8 artifactstore "$(python3 bench/slow_readers.py "http://127.0.0.1:$AS_PORT$AS_PATH" tok "$AS_PID" "$SIZE" "$([ $QUICK = 1 ] && echo 500 || echo 2000)" 20)"
rm -f "$WORK/nginx/big.bin" "$WORK/nginx/dav/big.bin"

AS_W6_RSS=0
if [ $READS = 0 ]; then
# --- W3: small files -----------------------------------------------------------------------
for r in $(seq 1 $ROUNDS); do
  limit_creates "$r"
  record W3 artifactstore "$($AS small --system as --count $SMALL)"
  record W3 registry "$($REG small --system registry --count $SMALL)"
done

# --- W6: long-pollers ----------------------------------------------------------------------
ulimit -n 65536 2>/dev/null || true
# The small-file rounds leave thousands of files to write back; W6 times fan-out, and its
# finalize's fsync should not queue behind that.
sync
for r in $(seq 1 $ROUNDS); do
  record W6 artifactstore "$($AS pollers --pollers $POLLERS)"
done
AS_W6_RSS=$(awk '/VmRSS/{print $2}' /proc/$AS_PID/status)

# --- W7: listing on many packages ----------------------------------------------------------
record W7-populate artifactstore "$($AS populate --packages $PACKAGES)"
for r in $(seq 1 $ROUNDS); do
  record W7 artifactstore "$($AS queries)"
done
fi

python3 - "$RESULTS" "$AS_W1_RSS" "$REG_W1_RSS" "$AS_W4_RSS" "$REG_W4_RSS" "$AS_W6_RSS" "$AS_W5_RSS" "$BIG_MIB" "$QUICK" "$READS" <<'PY'
import json, math, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
as_w1, reg_w1, as_w4, reg_w4, as_w6, as_w5 = (int(x) / 1024 for x in sys.argv[2:8])
big, quick, reads = sys.argv[8], sys.argv[9] == "1", sys.argv[10] == "1"
def med(workload, system, key):
    v = [r["m"][key] for r in rows if r["workload"] == workload and r["system"] == system]
    return statistics.median(v) if v else float("nan")
def vals(workload, system, key):
    return [r["m"][key] for r in rows if r["workload"] == workload and r["system"] == system]
# Ratios are medians of per-round ratios: both sides of a ratio ran in the same round, minutes
# apart at most, while the disk's speed moves several-fold between rounds.
def ratio(a, b):
    pairs = [x / y for x, y in zip(a, b) if y]
    return statistics.median(pairs) if pairs else float("nan")
def medq(system, kind, key):
    v = [r["m"][kind][key] for r in rows if r["workload"] == "W7" and r["system"] == system]
    return statistics.median(v) if v else float("nan")
sha, write, creates = med("limit-sha256", "machine", "mbps"), med("limit-write", "machine", "mbps"), med("limit-creates", "machine", "files_per_s")
print(f"artifactstore benchmark ({'reads' if reads else 'quick' if quick else 'full'}; {big} MiB file; medians; ratios are medians of per-round ratios)")
if not reads:
    print(f"limits: sha256 {sha:.0f} MB/s, write+fsync {write:.0f} MB/s, durable 4 KiB creates (8 threads, median of the W3 rounds) {creates:.0f} files/s")
print()
fmt = "{:<4} {:<26} {:>12} {:>10}   {}"
print(fmt.format("", "system", "median", "unit", "ratio"))
def line(w, s, v, unit, note=""):
    if not math.isnan(v):  # a workload this mode did not run
        print(fmt.format(w, s, f"{v:.1f}", unit, note))
for w, systems, key, unit in [("W1", ["artifactstore-multipart", "artifactstore-patch", "registry", "nginx-put"], "mbps", "MB/s"),
                              ("W2", ["artifactstore", "registry"], "mbps", "MB/s")]:
    for s in systems:
        note = ""
        if s.startswith("artifactstore"):
            mine = vals(w, s, key)
            note = f"x{ratio(mine, vals(w, 'registry', key)):.2f} registry"
            if w == "W1": note += f", {ratio(mine, vals(w, 'nginx-put', key)):.2f} of nginx PUT"
            if w == "W2": note += f", {ratio(mine, vals('W1', 'artifactstore-patch', key)):.2f} of own W1"
        line(w, s, med(w, s, key), unit, note)
w3a = vals("W3", "artifactstore", "files_per_s")
note = f"x{ratio(w3a, vals('W3', 'registry', 'files_per_s')):.2f} registry, {ratio(w3a, vals('limit-creates', 'machine', 'files_per_s')):.2f} of durable creates"
line("W3", "artifactstore", med("W3", "artifactstore", "files_per_s"), "files/s", note)
line("W3", "registry", med("W3", "registry", "files_per_s"), "files/s")
# W4 and W5 against the better nginx variant of the same round.
for w, key, unit in [("W4", "mbps", "MB/s"), ("W5", "req_per_s", "req/s")]:
    best = [max(a, b) for a, b in zip(vals(w, "nginx-sendfile", key), vals(w, "nginx-read", key))]
    for s in ["artifactstore", "registry", "nginx-sendfile", "nginx-read"]:
        note = ""
        if w == "W5": note = f"p99 {med(w, s, 'p99_ms'):.2f} ms"
        if s == "artifactstore":
            mine = vals(w, s, key)
            note += (", " if note else "") + f"{ratio(mine, best):.2f} of best nginx (rounds: " + \
                " ".join(f"{x / y:.2f}" for x, y in zip(mine, best)) + ")"
        line(w, s, med(w, s, key), unit, note)
for r in (r for r in rows if r["workload"] == "W8"):
    m = r["m"]
    line("W8", "artifactstore", m["peak_rss_mib"], "MiB peak", f"RSS with {m['attached']} slow readers attached ({m['still_served']} still served at the end), beside them one download at {m['fast_download_mbps']:.0f} MB/s")
line("W6", "artifactstore", med("W6", "artifactstore", "p99_ms"), "ms p99", f"p50 {med('W6', 'artifactstore', 'p50_ms'):.1f} ms; server RSS {as_w6:.0f} MiB with the pollers attached")
for kind in ["producer", "metadata", "contains"]:
    line("W7", f"artifactstore {kind}", medq("artifactstore", kind, "p99_ms"), "ms p99", f"p50 {medq('artifactstore', kind, 'p50_ms'):.2f} ms")
print(f"\npeak RSS: artifactstore {as_w1:.0f} MiB through W1-W2, {as_w4:.0f} MiB through W4, {as_w5:.0f} MiB through W4-W5; registry {reg_w1:.0f} / {reg_w4:.0f} MiB")
PY
