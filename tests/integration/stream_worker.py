"""A worker process for the integration tests: python stream_worker.py NAMESPACE."""

from __future__ import annotations

import asyncio
import os
import sys
import time

from pydantic import BaseModel

import servemesh
from servemesh import Context, DistributedRuntime, worker

NAMESPACE = sys.argv[1] if len(sys.argv) > 1 else "test"
state = {"cancelled": 0, "cancelled_at": 0.0, "stopped_seen": 0}
RUNTIME: list[DistributedRuntime] = []


class Prompt(BaseModel):
    prompt: str
    max_tokens: int


async def stream(request: dict, context: Context):
    n = int(request.get("n", 100))
    delay = float(request.get("delay", 0))
    try:
        for k in range(n):
            if delay:
                await asyncio.sleep(delay)
            yield {"k": k, "tag": request.get("tag"), "pid": os.getpid()}
    except (asyncio.CancelledError, GeneratorExit):
        state["cancelled"] += 1
        state["cancelled_at"] = time.time()
        if context.is_stopped():
            state["stopped_seen"] += 1
        raise


async def fail(request: dict):
    raise ValueError(f"cannot handle x={request.get('x')}")
    yield  # pragma: no cover


async def typed(request: Prompt):
    yield {"echo": request.prompt, "max_tokens": request.max_tokens}


async def stats(request: dict) -> dict:
    inflight = {path: ep.inflight for path, ep in RUNTIME[0].served.items()} if RUNTIME else {}
    return {**state, "pid": os.getpid(), "inflight": inflight}


async def surrogate(request: dict):
    """A few good items, then one that cannot be encoded (a lone surrogate)."""
    for k in range(int(request.get("good", 2))):
        yield {"k": k}
    yield {"text": "bad \ud800 text"}


async def sleepy(request: dict):
    await asyncio.sleep(float(request.get("seconds", 30)))
    yield {"slept": True}


async def big(request: dict):
    yield {"blob": "x" * int(request["size"])}


async def blobs(request: dict):
    """``n`` items of ``size`` bytes each, as fast as the caller lets it (never awaits)."""
    blob = b"x" * int(request["size"])
    for k in range(int(request["n"])):
        yield {"k": k, "blob": blob}


async def rss(request: dict) -> dict:
    return {"rss": _rss()}


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@worker
async def main(runtime: DistributedRuntime) -> None:
    servemesh.configure_logging()
    RUNTIME.append(runtime)
    component = runtime.namespace(NAMESPACE).component("worker")
    await component.create_service()
    await asyncio.gather(
        component.endpoint("stream").serve_endpoint(stream),
        component.endpoint("fail").serve_endpoint(fail),
        component.endpoint("typed").serve_endpoint(typed),
        component.endpoint("stats").serve_endpoint(stats),
        component.endpoint("big").serve_endpoint(big),
        component.endpoint("blobs").serve_endpoint(blobs),
        component.endpoint("rss").serve_endpoint(rss),
        component.endpoint("surrogate").serve_endpoint(surrogate),
        component.endpoint("sleepy").serve_endpoint(sleepy),
    )


if __name__ == "__main__":
    servemesh.run(main)
