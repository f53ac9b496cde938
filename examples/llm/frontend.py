"""Terminal 3: the OpenAI-compatible HTTP frontend.

    python3 examples/llm/frontend.py --port 8080
    python3 examples/llm/frontend.py --api-key sk-mine     # or SERVEMESH_API_KEY=k1,k2
    python3 examples/llm/frontend.py --workers 4           # 4 processes on one port
"""

from __future__ import annotations

import argparse
import sys

import servemesh
from servemesh import DistributedRuntime, Settings, worker
from servemesh.apps import settle_heap
from servemesh.apps.llm import frontend_worker, start_frontend
from servemesh.apps.workers import serve_workers


async def main(runtime: DistributedRuntime, host: str, port: int) -> None:
    server = await start_frontend(runtime, host, port)
    settle_heap()
    try:
        await runtime.wait_stopped()
    finally:
        await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--api-key", help="require `Authorization: Bearer <key>` (several: comma-separated; "
                        "default: SERVEMESH_API_KEY)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes serving the port, each a client of the same processors (default 1); "
                        "/metrics sums them all, a worker that dies is replaced (docs/llm.md)")
    args = parser.parse_args()
    servemesh.configure_logging()
    if args.workers == 1:
        servemesh.run(worker(api_key=args.api_key)(main)(args.host, args.port))
    else:
        try:
            sys.exit(serve_workers(frontend_worker, args.workers, args.host, args.port,
                                   Settings.from_env(api_key=args.api_key)))
        except servemesh.ConfigError as exc:
            sys.exit(f"error: {exc}")
