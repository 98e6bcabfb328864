#!/usr/bin/env bash
# `artifactstore push` beside plain curl against a local release server, on loopback:
# (a) 2,000 files of 4 KiB — push (default --jobs) vs a sequential curl loop of multipart POSTs;
# (b) one 1 GiB file    — push (upload session, 16 MiB chunks) vs one curl multipart POST.
# Prints wall times, files/s or MB/s, and push/curl ratios. Usage: bench/cli_push.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=2000; BIG_MIB=1024
if [ "${1:-}" = "--quick" ]; then FILES=300; BIG_MIB=256; fi
BIN=target/release/artifactstore
[ -x "$BIN" ] || cargo build --release -p artifactstore
WORK=$(mktemp -d -p "${BENCH_DIR:-target}")
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ARTIFACTSTORE_TOKENS=bench:tok ARTIFACTSTORE_LISTEN=127.0.0.1:$PORT ARTIFACTSTORE_DATA_DIR="$WORK/data" \
  "$BIN" serve 2>"$WORK/server.log" &
SERVER=$!
export ARTIFACTSTORE_URL=http://127.0.0.1:$PORT ARTIFACTSTORE_TOKEN=tok
until curl -sf "$ARTIFACTSTORE_URL/healthz" >/dev/null; do sleep 0.1; done

mkdir -p "$WORK/small" "$WORK/big"
for i in $(seq 1 "$FILES"); do head -c 4096 /dev/urandom > "$WORK/small/f$i"; done
head -c $((BIG_MIB * 1024 * 1024)) /dev/urandom > "$WORK/big/big.bin"
now() { date +%s.%N; }
new_pkg() {
  curl -sSf -H "Authorization: Bearer tok" -H 'Content-Type: application/json' \
    -d '{"producer":"bench","subject":"curl","retention_class":"standard"}' "$ARTIFACTSTORE_URL/packages" \
    | grep -o '"id":"pkg_[^"]*"' | cut -d'"' -f4
}

t0=$(now); "$BIN" push "$WORK/small" --producer bench --subject small --json >/dev/null; t1=$(now)
push_small=$(echo "$t1 - $t0" | bc)
PKG=$(new_pkg)
t0=$(now)
for i in $(seq 1 "$FILES"); do
  curl -sSf -o /dev/null -H "Authorization: Bearer tok" -F "path=f$i" -F "file=@$WORK/small/f$i" "$ARTIFACTSTORE_URL/packages/$PKG/files"
done
t1=$(now); curl_small=$(echo "$t1 - $t0" | bc)

t0=$(now); "$BIN" push "$WORK/big" --producer bench --subject big --json >/dev/null; t1=$(now)
push_big=$(echo "$t1 - $t0" | bc)
PKG=$(new_pkg)
t0=$(now)
curl -sSf -o /dev/null -H "Authorization: Bearer tok" -F "path=big.bin" -F "file=@$WORK/big/big.bin" "$ARTIFACTSTORE_URL/packages/$PKG/files"
t1=$(now); curl_big=$(echo "$t1 - $t0" | bc)

mb=$(echo "$BIG_MIB * 1.048576" | bc -l)
printf '%-34s %10s %14s\n' "workload" "wall (s)" "rate"
printf '%-34s %10.2f %10.0f files/s\n' "(a) push $FILES x 4 KiB" "$push_small" "$(echo "$FILES / $push_small" | bc -l)"
printf '%-34s %10.2f %10.0f files/s\n' "(a) curl loop, one POST per file" "$curl_small" "$(echo "$FILES / $curl_small" | bc -l)"
printf '%-34s %10.2f %10.0f MB/s\n' "(b) push 1 file of $BIG_MIB MiB" "$push_big" "$(echo "$mb / $push_big" | bc -l)"
printf '%-34s %10.2f %10.0f MB/s\n' "(b) one curl multipart POST" "$curl_big" "$(echo "$mb / $curl_big" | bc -l)"
printf 'ratio push/curl: (a) %.2fx faster   (b) %.2fx the speed\n' "$(echo "$curl_small / $push_small" | bc -l)" "$(echo "$curl_big / $push_big" | bc -l)"
