#!/usr/bin/env bash
# Issue 21's attacks with a probe beside them (BENCHMARKS.md, "Hardening, second round"): what a
# normal client sees while 200 HTTP/2 connections grant no window, and while 8 clients send
# listings with 990 filters. Loopback only.   bench/attacks.sh BINARY LABEL
set -u
cd "$(dirname "$0")/.."
VENV=target/attack-venv
[ -x $VENV/bin/python ] || { python3 -m venv $VENV && $VENV/bin/pip install -q h2; }
BIN=$1; LABEL=$2; PORT=18555
W=$(mktemp -d -p "$PWD/target" atk.XXXX)
start() {
  ARTIFACTSTORE_TOKENS=acme:tok ARTIFACTSTORE_LISTEN=127.0.0.1:$PORT ARTIFACTSTORE_DATA_DIR=$W/d \
    RUST_LOG=error $BIN serve "$@" >$W/out 2>$W/log & echo $!
}
wait_up() { until curl -s -o /dev/null http://127.0.0.1:$PORT/healthz; do sleep 0.1; done; }
echo "== $LABEL: 200 HTTP/2 connections granting window 0 (--max-connections 200)"
P=$(start --max-connections 200); wait_up
$VENV/bin/python bench/attack.py h2starve $PORT 200
kill $P; wait $P 2>/dev/null; rm -rf $W/d
echo "== $LABEL: 8 clients x 990 metadata filters on 2,000 packages"
P=$(start); wait_up
$VENV/bin/python - <<'PY'
import http.client, json
c = http.client.HTTPConnection("127.0.0.1", 18555)
for i in range(2000):
    body = json.dumps({"producer": "p", "subject": f"s{i}", "retention_class": "standard",
                       "metadata": {f"k{j}": f"v{j}" for j in range(8)}})
    c.request("POST", "/packages", body, {"Authorization": "Bearer tok", "Content-Type": "application/json"})
    c.getresponse().read()
PY
$VENV/bin/python bench/attack.py filters $PORT
kill $P; wait $P 2>/dev/null; rm -rf $W
