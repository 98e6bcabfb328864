#!/usr/bin/env bash
# The /v2/ face beside the CNCF distribution registry (Debian's docker-registry), with the
# same clients, in one run: skopeo's push and pull of an OCI artifact of one 1 GiB layer and
# of one of 2,000 4 KiB layers; the same blobs pushed by the in-house generator
# (artifactstore-bench: POST then PUT ?digest=, 8 connections for the small ones), which is
# not the bottleneck skopeo is; the 1 GiB layer's download through /v2/ beside the native
# download (W4) with curl; artifactstore's peak RSS. Each round starts both servers on empty
# data, so every push sends every blob. Only loopback addresses are used.
#   bench/oci.sh           1 GiB, 2,000 layers, 3 rounds
#   bench/oci.sh --quick   256 MiB, 500 layers, 1 round
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --quick ]; then BIG_MIB=256; LAYERS=500; ROUNDS=1; else BIG_MIB=1024; LAYERS=2000; ROUNDS=3; fi
need=()
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -q -p artifactstore -p artifactstore-bench
AS_BIN=${AS_BIN:-target/release/artifactstore}
LG=target/release/artifactstore-bench

WORK=$(mktemp -d -p "${BENCH_DIR:-$PWD/target}" oci-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { until curl -s -o /dev/null "http://127.0.0.1:$1/v2/"; do sleep 0.1; done; }
now() { date +%s.%N; }

# Two OCI layouts: one big layer, many small ones (each an artifact: empty config).
python3 - "$WORK" "$BIG_MIB" "$LAYERS" <<'PY'
import hashlib, json, os, sys
work, big_mib, layers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
EMPTY = {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
         "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}
def layout(name, blobs):
    d = f"{work}/{name}"; os.makedirs(f"{d}/blobs/sha256")
    def put(b):
        h = hashlib.sha256(b).hexdigest()
        open(f"{d}/blobs/sha256/{h}", "wb").write(b)
        return f"sha256:{h}", len(b)
    put(b"{}")
    descs = []
    for i, b in enumerate(blobs()):
        digest, size = put(b)
        descs.append({"mediaType": "application/octet-stream", "digest": digest, "size": size,
                      "annotations": {"org.opencontainers.image.title": f"f{i}"}})
    m = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
         "artifactType": "application/x-bench", "config": EMPTY, "layers": descs}
    digest, size = put(json.dumps(m).encode())
    json.dump({"schemaVersion": 2, "manifests": [{"mediaType": m["mediaType"], "digest": digest,
               "size": size, "annotations": {"org.opencontainers.image.ref.name": "v1"}}]},
              open(f"{d}/index.json", "w"))
    open(f"{d}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
big = os.urandom(big_mib << 20)
open(f"{work}/big.bin", "wb").write(big)
layout("big", lambda: [big])
layout("many", lambda: (os.urandom(4096) for _ in range(layers)))
PY
BIG_HEX=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]+"/big/index.json"))["manifests"][0]["digest"][7:]; l=json.load(open(sys.argv[1]+"/big/blobs/sha256/"+m))["layers"][0]["digest"]; print(l)' "$WORK")

start_servers() {
  AS_PORT=$(port); REG_PORT=$(port)
  rm -rf "$WORK/as" "$WORK/registry"; mkdir -p "$WORK/registry"
  ARTIFACTSTORE_TOKENS=bench:tok ARTIFACTSTORE_LISTEN=127.0.0.1:$AS_PORT ARTIFACTSTORE_DATA_DIR=$WORK/as \
    RUST_LOG=warn "$AS_BIN" serve 2>"$WORK/as.log" & AS_PID=$!; PIDS+=($AS_PID)
  cat > "$WORK/registry.yml" <<YML
version: 0.1
log: {level: error}
storage:
  filesystem: {rootdirectory: $WORK/registry}
http: {addr: 127.0.0.1:$REG_PORT}
YML
  docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 & REG_PID=$!; PIDS+=($REG_PID)
  wait_port "$AS_PORT"; wait_port "$REG_PORT"
}
stop_servers() { kill "$AS_PID" "$REG_PID"; wait "$AS_PID" "$REG_PID" 2>/dev/null || true; }

RESULTS=$WORK/results.txt; : > "$RESULTS"
# copy SYSTEM LAYOUT WHAT: one skopeo copy, timed; appends "system what seconds".
copy() {
  local system=$1 layout=$2 what=$3 creds=() host
  if [ "$system" = artifactstore ]; then host=127.0.0.1:$AS_PORT/bench; creds=(--creds x:tok); else host=127.0.0.1:$REG_PORT/bench; fi
  local t0; t0=$(now)
  if [ "$what" = push ]; then
    skopeo copy -q --preserve-digests --dest-tls-verify=false ${creds[@]/#--creds/--dest-creds} \
      "oci:$WORK/$layout:v1" "docker://$host/$layout:v1"
  else
    rm -rf "$WORK/out"
    skopeo copy -q --preserve-digests --src-tls-verify=false ${creds[@]/#--creds/--src-creds} \
      "docker://$host/$layout:v1" "oci:$WORK/out:v1"
  fi
  echo "$system $layout-$what $(python3 -c "print($(now) - $t0)")" >> "$RESULTS"
}
# download SYSTEM WHAT URL: curl of the big layer, timed.
download() {
  local t0; t0=$(now)
  curl -sSf -H 'Authorization: Bearer tok' -o /dev/null "$3"
  echo "$1 $2 $(python3 -c "print($(now) - $t0)")" >> "$RESULTS"
}

for round in $(seq "$ROUNDS"); do
  start_servers
  for layout in big many; do
    for system in artifactstore docker-registry; do copy $system $layout push; done
    for system in artifactstore docker-registry; do copy $system $layout pull; done
  done
  # The same blobs from the in-house generator, into a repository of their own.
  for system in artifactstore docker-registry; do
    if [ $system = artifactstore ]; then base=(--base "http://127.0.0.1:$AS_PORT" --token tok); else base=(--base "http://127.0.0.1:$REG_PORT"); fi
    secs=$("$LG" "${base[@]}" small --system registry --count "$LAYERS" | python3 -c 'import json,sys; print(json.load(sys.stdin)["secs"])')
    echo "$system gen-many-push $secs" >> "$RESULTS"
    secs=$("$LG" "${base[@]}" ingest --system registry-monolithic --file "$WORK/big.bin" | python3 -c 'import json,sys; print(json.load(sys.stdin)["secs"])')
    echo "$system gen-big-push $secs" >> "$RESULTS"
  done
  # The big layer through /v2/ and through the native download of the same package's file.
  FILE=$(curl -sSf -H 'Authorization: Bearer tok' "http://127.0.0.1:$AS_PORT/packages?producer=oci" \
    | python3 -c 'import json,sys; print([p["id"] for p in json.load(sys.stdin)["items"]][-1])')
  FILE=$(curl -sSf -H 'Authorization: Bearer tok' "http://127.0.0.1:$AS_PORT/packages/$FILE/files" \
    | python3 -c 'import json,sys; print([f["id"] for f in json.load(sys.stdin)["items"] if f["size"] > 4096][0])')
  # One read each to warm the page cache, then alternating reads.
  curl -sSf -H 'Authorization: Bearer tok' -o /dev/null "http://127.0.0.1:$AS_PORT/files/$FILE/download"
  curl -sSf -o /dev/null "http://127.0.0.1:$REG_PORT/v2/bench/big/blobs/$BIG_HEX"
  for i in 1 2 3; do
    download artifactstore v2-blob "http://127.0.0.1:$AS_PORT/v2/bench/big/blobs/$BIG_HEX"
    download artifactstore native "http://127.0.0.1:$AS_PORT/files/$FILE/download"
    download docker-registry v2-blob "http://127.0.0.1:$REG_PORT/v2/bench/big/blobs/$BIG_HEX"
  done
  echo "artifactstore peak-rss-kib $(awk '/VmHWM/ {print $2}' /proc/$AS_PID/status)" >> "$RESULTS"
  stop_servers
done

python3 - "$RESULTS" "$BIG_MIB" "$LAYERS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
big, layers = int(sys.argv[2]), int(sys.argv[3])
med = lambda s, w: statistics.median(float(v) for sy, wo, v in rows if sy == s and wo == w)
print(f"OCI face, {big} MiB layer and {layers} x 4 KiB layers, medians")
print(f"{'workload':<22}{'artifactstore':>16}{'docker-registry':>18}{'ratio':>9}")
for w, unit in [("big-push", "MB/s"), ("big-pull", "MB/s"), ("many-push", "layers/s"),
                ("many-pull", "layers/s"), ("gen-big-push", "MB/s"), ("gen-many-push", "layers/s")]:
    amount = big * 1.048576 if w.startswith("big") else layers
    a, r = amount / med("artifactstore", w), amount / med("docker-registry", w)
    print(f"{w:<22}{a:>12.1f} {unit:<4}{r:>13.1f} {unit:<4}{a / r:>8.2f}x")
v2, native, reg = (big * 1.048576 / med(s, w) for s, w in
                   [("artifactstore", "v2-blob"), ("artifactstore", "native"), ("docker-registry", "v2-blob")])
print(f"{'layer GET (curl)':<22}{v2:>12.1f} MB/s{reg:>13.1f} MB/s{v2 / reg:>8.2f}x")
print(f"{'  /v2/ over native W4':<22}{v2 / native:>16.2f}  (native {native:.1f} MB/s)")
rss = max(int(v) for s, w, v in rows if w == "peak-rss-kib")
print(f"artifactstore peak RSS {rss / 1024:.1f} MiB")
PY
