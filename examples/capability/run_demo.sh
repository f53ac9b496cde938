#!/usr/bin/env bash
# The capability demo: an API server and four replicas (chat, embed, heavy, stream),
# all on this machine, sharing one object store. Ctrl-C stops everything.
#
#   examples/capability/run_demo.sh            # then, in another terminal:
#   python examples/capability/test_client.py
set -euo pipefail

API_PORT="${API_PORT:-8080}"
API="http://127.0.0.1:${API_PORT}"
OBJECTS="${OBJECTS:-$HOME/.servemesh/demo-objects}"
PYTHON="${PYTHON:-python}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

pids=()
cleanup() {
    echo "stopping..."
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

sm() { "$PYTHON" -m servemesh.cli.main "$@"; }

echo "API server on $API"
sm api-server --port "$API_PORT" &
pids+=($!)

# readiness: the API server answers /health
for _ in $(seq 100); do
    curl -sf "$API/health" >/dev/null 2>&1 && break
    sleep 0.1
done

for name in chat embed heavy stream; do
    echo "replica-$name: examples.capability.${name}_app:app"
    sm serve "examples.capability.${name}_app:app" --port 0 --api-server "$API" \
        --object-store "$OBJECTS" --replica-id "replica-$name" &
    pids+=($!)
done

# readiness: all four replicas are in the registry
for _ in $(seq 300); do
    total=$(curl -sf "$API/registry" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["total"])' \
            2>/dev/null || echo 0)
    [ "$total" = "4" ] && break
    sleep 0.1
done
curl -s "$API/registry" | "$PYTHON" -m json.tool

cat <<TEXT

Try:
  curl -X POST $API/infer/json -H 'X-Capability-Type: chat' \\
    -d '{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "contents": {"bytes_contents": ["Hello World"]}}]}'
  curl -N -X POST $API/infer/stream -H 'X-Capability-Type: chat' \\
    -d '{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "contents": {"bytes_contents": ["Hello"]}}]}'
  $PYTHON examples/capability/test_client.py $API

Ctrl-C stops the demo.
TEXT
wait
