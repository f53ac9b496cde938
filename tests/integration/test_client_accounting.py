"""A call's bookkeeping ends exactly once on every path, and a refusing instance is not
asked twice: the client's per-instance load, the endpoint's in-flight count and its
metrics gauge are back to zero however the caller leaves."""

from __future__ import annotations

import asyncio
import gc

import pytest

from servemesh import DistributedRuntime, Overloaded
from servemesh.runtime.discovery.memory import MemoryDiscovery, MemoryStore
from servemesh.runtime.transport import streams as streams_mod


async def numbers(request: dict):
    if request.get("fail"):
        raise RuntimeError("boom")
    for k in range(request.get("n", 3)):
        await asyncio.sleep(0)
        yield k


async def one(request: dict) -> int:
    if request.get("fail"):
        raise RuntimeError("boom")
    return 1


async def leave(how: str, client) -> None:
    if how == "normal":
        [x async for x in client.generate({"n": 3})]
    elif how == "error":
        with pytest.raises(Exception, match="boom"):
            [x async for x in client.generate({"fail": 1})]
    elif how == "break":
        async for _ in client.generate({"n": 3}):
            break
    elif how == "aclose":
        stream = client.generate({"n": 3})
        await stream.__anext__()
        await stream.aclose()
    elif how == "dropped after the first item":
        stream = client.generate({"n": 3})
        await stream.__anext__()
        del stream
    elif how == "iterator dropped unstarted":
        it = client.generate({"n": 3}).__aiter__()
        del it
    elif how == "awaited then dropped":
        stream = await client.generate({"n": 3})
        del stream
    elif how == "first read timed out before it ran":
        stream = client.generate({"n": 3})
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stream.__anext__(), 0)
        del stream


@pytest.mark.parametrize("path", ["acct.c.gen", "acct.c.unary"])
@pytest.mark.parametrize("how", ["normal", "error", "break", "aclose", "dropped after the first item",
                                 "iterator dropped unstarted", "awaited then dropped",
                                 "first read timed out before it ran"])
async def test_an_in_process_call_ends_its_accounting_once_whatever_the_caller_does(path, how):
    async with DistributedRuntime() as rt:
        tasks = [asyncio.create_task(rt.endpoint("acct.c.gen").serve_endpoint(numbers)),
                 asyncio.create_task(rt.endpoint("acct.c.unary").serve_endpoint(one))]
        await rt.wait_served("acct.c.gen", 5)
        await rt.wait_served("acct.c.unary", 5)
        client = await rt.endpoint(path).client()
        await leave(how, client)
        served = rt.served[path]
        for _ in range(5):  # finalizers (the loop closes dropped generators in tasks)
            gc.collect()
            await asyncio.sleep(0)
        assert (dict(client._load), served.inflight, served.metrics.inflight) == ({}, 0, 0)
        rt.request_shutdown()
        await asyncio.gather(*tasks)


@pytest.mark.parametrize("transport", ["tcp", "memory"])
async def test_an_overloaded_instance_is_asked_once_per_call(transport, monkeypatch):
    """The connection is up, so the call opens on the fast path; the instance refuses
    (it is full): the refusal reaches the caller without the request being sent again."""
    gate, entered = asyncio.Event(), asyncio.Event()

    async def handler(request: str):
        if request == "block":
            entered.set()
            await gate.wait()
        yield request

    seen: list[str] = []
    request = streams_mod.StreamTable.request

    def spy(self, key, frame, write, only_path=None):
        seen.append(frame.payload)
        return request(self, key, frame, write, only_path)

    monkeypatch.setattr(streams_mod.StreamTable, "request", spy)
    store = MemoryStore()
    async with DistributedRuntime(discovery=MemoryDiscovery(store), transport=transport, max_concurrency=1) as worker, \
            DistributedRuntime(discovery=MemoryDiscovery(store), transport=transport) as caller:
        task = asyncio.create_task(worker.endpoint("acct.c.one").serve_endpoint(handler))
        client = await caller.endpoint("acct.c.one").client()
        await client.wait_for_instances(5)
        assert [x async for x in client.generate("warm", annotated=False)] == ["warm"]  # connection up

        async def blocked() -> list[str]:
            return [x async for x in client.generate("block", annotated=False)]

        first = asyncio.create_task(blocked())
        await asyncio.wait_for(entered.wait(), 5)
        seen.clear()
        with pytest.raises(Overloaded):
            async for _ in client.generate("second", annotated=False):
                pass
        assert seen == ["second"]
        gate.set()
        assert await first == ["block"]
        assert not client._load
        worker.request_shutdown()
        await task
