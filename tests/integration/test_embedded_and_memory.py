"""Embedded mode (in-process calls) and runtimes sharing an in-memory store over TCP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from servemesh import (
    Cancelled,
    Context,
    DeadlineExceeded,
    DistributedRuntime,
    NoInstancesError,
    RemoteError,
    ValidationError,
)
from servemesh.runtime.discovery.memory import MemoryDiscovery, MemoryStore


class Probe:
    """Records what handlers observed."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.context_stopped = False


def make_stream(probe: Probe):
    async def stream(request: dict, context: Context) -> AsyncIterator[dict]:
        try:
            for k in range(int(request.get("n", 10))):
                if request.get("delay"):
                    await asyncio.sleep(request["delay"])
                yield {"k": k}
        except (asyncio.CancelledError, GeneratorExit):
            probe.context_stopped = context.is_stopped()
            probe.cancelled.set()
            raise

    return stream


async def serve(rt: DistributedRuntime, path: str, handler) -> asyncio.Task[None]:
    task = asyncio.create_task(rt.endpoint(path).serve_endpoint(handler))
    client = await rt.endpoint(path).client()
    await client.wait_for_instances(5)
    return task


async def test_embedded_calls_pass_python_objects_without_serialisation():
    marker = object()

    async def handler(request):
        yield request
        yield marker

    async with DistributedRuntime() as rt:
        assert rt.embedded
        await serve(rt, "e.c.objects", handler)
        client = await rt.endpoint("e.c.objects").client()
        payload = {"not": "copied"}
        items = [i.data() async for i in client.generate(payload)]
        assert items[0] is payload and items[1] is marker


@pytest.mark.parametrize("how", ["break", "aclose", "task-cancel"])
async def test_embedded_early_close_cancels_the_handler(how):
    probe = Probe()
    async with DistributedRuntime() as rt:
        await serve(rt, "e.c.stream", make_stream(probe))
        client = await rt.endpoint("e.c.stream").client()
        if how == "break":
            async for item in client.generate({"n": 1000, "delay": 0.01}):
                if item.data()["k"] == 2:
                    break
        elif how == "aclose":
            stream = await client.generate({"n": 1000, "delay": 0.01})
            await stream.__anext__()
            await stream.aclose()
        else:
            async def consume() -> None:
                async for _ in client.generate({"n": 1000, "delay": 0.01}):
                    pass

            task = asyncio.create_task(consume())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await asyncio.wait_for(probe.cancelled.wait(), 1)


@pytest.mark.parametrize("mode", ["embedded", "tcp"])
async def test_stop_and_deadline_reach_the_handler_through_a_relay(mode):
    """client -> relay -> stream: stopping the client's context cancels the far end."""
    probe = Probe()
    store = MemoryStore()
    kwargs = {} if mode == "embedded" else {"discovery": MemoryDiscovery(store)}
    async with DistributedRuntime(**kwargs) as back, DistributedRuntime(
            **({} if mode == "embedded" else {"discovery": MemoryDiscovery(store)})) as front:
        if mode == "embedded":
            front = back
        await serve(back, "e.c.stream", make_stream(probe))
        downstream = await front.endpoint("e.c.stream").client()

        async def relay(request: dict, context: Context) -> AsyncIterator[dict]:
            async for item in downstream.generate(request, context=context):
                yield item.data()

        await serve(front, "e.c.relay", relay)
        client = await front.endpoint("e.c.relay").client()
        ctx = Context()
        with pytest.raises(Cancelled):
            async for item in client.generate({"n": 1000, "delay": 0.01}, context=ctx):
                if item.data()["k"] == 3:
                    ctx.stop_generating()
        await asyncio.wait_for(probe.cancelled.wait(), 1)
        assert probe.context_stopped

        probe.cancelled.clear()
        got = []
        with pytest.raises(DeadlineExceeded):
            async for item in client.generate({"n": 1000, "delay": 0.01}, context=Context(timeout=0.2)):
                got.append(item)
        assert got
        await asyncio.wait_for(probe.cancelled.wait(), 1)


async def test_embedded_errors_are_typed():
    async def boom(request):
        raise KeyError("missing thing")
        yield

    async def typed(request: int):
        yield request * 2

    async with DistributedRuntime() as rt:
        await serve(rt, "e.c.boom", boom)
        await serve(rt, "e.c.typed", typed)
        with pytest.raises(RemoteError) as info:
            async for _ in (await rt.endpoint("e.c.boom").client()).generate({}):
                pass
        assert info.value.remote_type == "KeyError" and "missing thing" in str(info.value)
        typed_client = await rt.endpoint("e.c.typed").client()
        with pytest.raises(ValidationError):
            async for _ in typed_client.generate("twelve"):
                pass
        assert [i.data() async for i in typed_client.generate("21")] == [42]
        missing = await rt.endpoint("e.nothing.here").client()
        with pytest.raises(NoInstancesError) as nie:
            async for _ in missing.generate({}):
                pass
        assert "e.c.boom" in nie.value.known and "e.c.typed" in nie.value.known
        with pytest.raises(NoInstancesError):
            await missing.wait_for_instances(timeout=0.05)


async def test_shared_store_round_robin_and_failover_on_graceful_shutdown():
    store = MemoryStore()
    probe = Probe()
    servers = [DistributedRuntime(discovery=MemoryDiscovery(store)) for _ in range(2)]
    serving = []
    async with DistributedRuntime(discovery=MemoryDiscovery(store)) as client_rt:
        for s in servers:
            await s.start()

            async def who(request, _id=s.instance_id):
                yield _id

            serving.append(asyncio.create_task(s.endpoint("m.c.who").serve_endpoint(who)))
            serving.append(asyncio.create_task(s.endpoint("m.c.stream").serve_endpoint(make_stream(probe))))
        client = await client_rt.endpoint("m.c.who").client()
        async with asyncio.timeout(5):
            while len(client.instance_ids()) < 2:
                await asyncio.sleep(0.01)
        seen = [[i.data() async for i in client.generate({})][0] for _ in range(4)]
        assert seen[0] != seen[1] and seen[:2] == seen[2:]
        assert client.instances()[0].transport["tcp"].startswith("127.0.0.1:")

        stream_client = await client_rt.endpoint("m.c.stream").client()
        stream = await stream_client.direct({"n": 20, "delay": 0.01}, servers[0].instance_id)
        await stream.__anext__()  # the stream is in flight
        await servers[0].shutdown()  # drains: the in-flight stream completes
        assert len([i async for i in stream]) == 19
        assert client.instance_ids() == [servers[1].instance_id]
        assert [i.data() async for i in client.generate({})] == [servers[1].instance_id]
        await servers[1].shutdown()
    await asyncio.gather(*serving)
    assert store.records == {}


async def test_shutdown_leaves_no_tasks_or_connections_behind():
    store = MemoryStore()
    probe = Probe()
    before = {t for t in asyncio.all_tasks()}
    server = await DistributedRuntime(discovery=MemoryDiscovery(store)).start()
    serving = asyncio.create_task(server.endpoint("l.c.stream").serve_endpoint(make_stream(probe)))
    async with DistributedRuntime(discovery=MemoryDiscovery(store)) as rt:
        client = await rt.endpoint("l.c.stream").client()
        await client.wait_for_instances(5)
        streams = [await client.generate({"n": 1000, "delay": 0.01}) for _ in range(5)]
        for s in streams:
            await s.__anext__()
        pool = rt.plane.transports["tcp"].pool
        assert pool.connections == 1
    assert pool.connections == 0
    await server.shutdown(graceful=False)
    await serving
    await asyncio.wait_for(probe.cancelled.wait(), 1)
    await asyncio.sleep(0)
    leftover = {t for t in asyncio.all_tasks() if not t.done()} - before - {asyncio.current_task()}
    assert not leftover, leftover
    assert not server.plane.transports["tcp"].connections
