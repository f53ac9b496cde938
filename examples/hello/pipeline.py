"""Two components in one process: a frontend that relays a backend's stream.

    python examples/hello/pipeline.py "your question"

With nothing configured the runtime is embedded (in-memory discovery, in-process
calls). After `servemesh up` the same file registers in etcd and talks TCP.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import servemesh
from servemesh import Context, DistributedRuntime, worker


async def backend(request: dict, context: Context) -> AsyncIterator[dict]:
    """Pretend engine: streams one word at a time, then a finish signal."""
    words = f"you asked: {request['text']} - and here is a streamed answer".split()
    for word in words:
        if context.is_stopped():
            return
        await asyncio.sleep(0.02)
        yield {"token": word}
    yield {"finish_reason": "stop"}


def make_frontend(client: servemesh.Client):
    async def frontend(request: dict, context: Context) -> AsyncIterator[dict]:
        """Relays the backend's stream, passing its context so cancellation flows down."""
        async for item in client.generate(request, context=context):
            data = item.data()
            if "token" in data:
                yield {"content": data["token"]}
            else:
                yield data

    return frontend


@worker
async def main(runtime: DistributedRuntime, question: str) -> None:
    ns = runtime.namespace("hello")
    serving = [asyncio.create_task(ns.component("backend").endpoint("generate").serve_endpoint(backend))]
    backend_client = await ns.component("backend").endpoint("generate").client()
    frontend = ns.component("frontend").endpoint("chat")
    serving.append(asyncio.create_task(frontend.serve_endpoint(make_frontend(backend_client))))

    client = await frontend.client()
    await client.wait_for_instances(timeout=10)
    async for item in client.generate({"text": question}):
        data = item.data()
        if "content" in data:
            print(data["content"], end=" ", flush=True)
        else:
            print(f"\n[finish_reason={data['finish_reason']}]")
    runtime.request_shutdown()
    await asyncio.gather(*serving)


if __name__ == "__main__":
    servemesh.configure_logging()
    servemesh.run(main(sys.argv[1] if len(sys.argv) > 1 else "what is servemesh?"))
