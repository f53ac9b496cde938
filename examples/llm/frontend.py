"""Terminal 3: the OpenAI-compatible HTTP frontend.

    python3 examples/llm/frontend.py --port 8080
    python3 examples/llm/frontend.py --api-key sk-mine     # or SERVEMESH_API_KEY=k1,k2
"""

from __future__ import annotations

import argparse

import servemesh
from servemesh import DistributedRuntime, worker
from servemesh.apps import settle_heap
from servemesh.apps.llm import start_frontend


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
    args = parser.parse_args()
    servemesh.configure_logging()
    servemesh.run(worker(api_key=args.api_key)(main)(args.host, args.port))
