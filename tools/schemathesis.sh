#!/usr/bin/env bash
# Runs schemathesis (all checks, all phases) against a fresh release server on loopback and
# prints its summary. Needs python3; installs schemathesis into .venv-tools on first use.
# Usage: tools/schemathesis.sh [--debug] [max-examples per operation, default 100]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
if [ "${1:-}" = "--debug" ]; then profile=debug; shift; fi
examples=${1:-100}
venv=.venv-tools
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q schemathesis openapi-spec-validator
fi
if [ "$profile" = release ]; then cargo build -q --release -p artifactstore; else cargo build -q -p artifactstore; fi
data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ARTIFACTSTORE_TOKENS=acme:st-token ARTIFACTSTORE_DATA_DIR="$data" ARTIFACTSTORE_LISTEN="127.0.0.1:$port" \
  ARTIFACTSTORE_MAX_WAIT_SECS=1 "target/$profile/artifactstore" serve 2>"$data/server.log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
"$venv/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" \
  -H "Authorization: Bearer st-token" --checks all --phases examples,coverage,fuzzing,stateful \
  -n "$examples" --generation-deterministic --request-timeout 10 --max-time 600 \
  --report ndjson --report-dir "${SCHEMATHESIS_REPORT_DIR:-$data/report}" || status=$?
if grep -q "panicked" "$data/server.log"; then echo "the server panicked:"; grep -A3 panicked "$data/server.log"; exit 1; fi
exit "${status:-0}"
