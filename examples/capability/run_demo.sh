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
alive() {  # every process started so far still runs (else: say which failed, and stop)
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || { echo "a demo process (pid $pid) exited: see its output above" >&2; exit 1; }
    done
}

"$PYTHON" -c 'import servemesh' 2>/dev/null || {
    echo "$PYTHON cannot import servemesh: run python3 dev.py main once, or set PYTHON=.venv/bin/python" >&2
    exit 1
}

echo "API server on $API"
sm api-server --port "$API_PORT" &
pids+=($!)

# readiness: the API server answers /health (30 s at most)
deadline=$((SECONDS + 30))
until curl -sf "$API/health" >/dev/null 2>&1; do
    alive
    [ "$SECONDS" -lt "$deadline" ] || { echo "the API server did not answer $API/health in 30 s" >&2; exit 1; }
    sleep 0.1
done

for name in chat embed heavy stream; do
    echo "replica-$name: examples.capability.${name}_app:app"
    sm serve "examples.capability.${name}_app:app" --port 0 --api-server "$API" \
        --object-store "$OBJECTS" --replica-id "replica-$name" &
    pids+=($!)
done

# readiness: all four replicas are in the registry (60 s at most)
deadline=$((SECONDS + 60))
until [ "$(curl -sf "$API/registry" | grep -o '"replica_id"' | wc -l)" = "4" ]; do
    alive
    [ "$SECONDS" -lt "$deadline" ] || { echo "not all four replicas registered in 60 s" >&2; exit 1; }
    sleep 0.2
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
