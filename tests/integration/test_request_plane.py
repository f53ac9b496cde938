"""The request plane seam: the in-memory twin (real codec, no sockets), one serving path
for in-process and remote calls, errors that keep their fields across hops, the grace
for empty live sets, the readiness handshake and the runtime's lifecycle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from servemesh import (
    Cancelled,
    Context,
    DeadlineExceeded,
    DistributedRuntime,
    NoInstancesError,
    Overloaded,
    RemoteError,
    ValidationError,
)
from servemesh.errors import SerializationError
from servemesh.runtime.discovery.memory import MemoryDiscovery, MemoryStore
from servemesh.runtime.distributed import RuntimeState


def runtimes(store: MemoryStore, n: int, **settings) -> list[DistributedRuntime]:
    return [DistributedRuntime(discovery=MemoryDiscovery(store), transport="memory", **settings) for _ in range(n)]


async def numbers(request: dict) -> AsyncIterator[dict]:
    for k in range(int(request.get("n", 3))):
        yield {"k": k}


async def test_memory_transport_runs_the_codec_between_runtimes():
    store = MemoryStore()
    server, caller = runtimes(store, 2)
    async with server, caller:
        task = asyncio.create_task(server.endpoint("m.w.numbers").serve_endpoint(numbers))
        await server.wait_served("m.w.numbers")
        client = await caller.endpoint("m.w.numbers").client()
        items = [i async for i in client.generate({"n": 5}, annotated=False)]
        assert items == [{"k": k} for k in range(5)]
        record = (await caller.discovery.list("instances/m/"))[0]
        assert set(record.transport) == {"memory"}
        # a value the codec cannot encode fails only that call, with a typed error
        with pytest.raises(SerializationError):
            [i async for i in client.generate({"text": "\ud800"})]
        assert [i async for i in client.generate({"n": 2}, annotated=False)] == [{"k": 0}, {"k": 1}]
        server.request_shutdown()
        await task


async def test_errors_keep_class_and_fields_across_two_hops():
    """caller -> relay -> worker over the memory transport, and the same embedded."""
    store = MemoryStore()
    (worker_rt,) = runtimes(store, 1, max_concurrency=1)
    relay_rt, caller = runtimes(store, 2)

    async def worker(request: dict) -> AsyncIterator[dict]:
        if request["what"] == "slow":
            await asyncio.sleep(30)
        if request["what"] == "raise":
            raise KeyError("missing")
        yield {"ok": True}

    async def relay(request: dict, context: Context) -> AsyncIterator[dict]:
        async for item in downstream.generate(request, context=context, annotated=False):
            yield item

    async with worker_rt, relay_rt, caller:
        tasks = [asyncio.create_task(worker_rt.endpoint("e.w.work").serve_endpoint(worker))]
        downstream = await relay_rt.endpoint("e.w.work").client()
        tasks.append(asyncio.create_task(relay_rt.endpoint("e.r.relay").serve_endpoint(relay)))
        await worker_rt.wait_served("e.w.work")
        await relay_rt.wait_served("e.r.relay")
        client = await caller.endpoint("e.r.relay").client()

        with pytest.raises(RemoteError) as remote:
            [i async for i in client.generate({"what": "raise"})]
        assert remote.value.remote_type == "KeyError" and remote.value.endpoint == "e.w.work"

        # the worker is full (max_concurrency=1): Overloaded arrives with its limit, via the relay
        slow = client.generate({"what": "slow"})
        first = asyncio.create_task(slow.__anext__())
        async with asyncio.timeout(5):
            while worker_rt.served["e.w.work"].inflight == 0:
                await asyncio.sleep(0.01)
        relay2 = await caller.endpoint("e.r.relay").client()
        with pytest.raises(Overloaded) as over:
            [i async for i in relay2.generate({"what": "ok"}, context=Context(timeout=5))]
        assert over.value.limit == 1 and over.value.endpoint == "e.w.work"
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await slow.aclose()

        # a downstream NoInstancesError stays a NoInstancesError (not RemoteError) upstream
        worker_rt.request_shutdown()
        await tasks[0]
        relay_rt.settings = relay_rt.settings.replace(instance_wait=0.2)
        with pytest.raises(NoInstancesError) as none:
            [i async for i in client.generate({"what": "ok"})]
        assert none.value.endpoint == "e.w.work"
        for rt in (relay_rt,):
            rt.request_shutdown()
        await asyncio.gather(*tasks[1:])


async def test_in_process_calls_take_the_same_serving_path():
    async def unary(request: dict) -> dict:
        return {"echo": request}

    async def typed(request: int) -> AsyncIterator[int]:
        yield request + 1

    async def boom(request: dict) -> AsyncIterator[dict]:
        raise ValueError("no")
        yield {}  # pragma: no cover

    async with DistributedRuntime(max_concurrency=2) as rt:
        tasks = [asyncio.create_task(rt.endpoint(f"l.c.{name}").serve_endpoint(h))
                 for name, h in (("unary", unary), ("typed", typed), ("boom", boom))]
        for name in ("unary", "typed", "boom"):
            await rt.wait_served(f"l.c.{name}")
        u = await rt.endpoint("l.c.unary").client()
        t = await rt.endpoint("l.c.typed").client()
        b = await rt.endpoint("l.c.boom").client()
        assert [i async for i in u.generate({"a": 1}, annotated=False)] == [{"echo": {"a": 1}}]
        assert [i async for i in t.generate(1, annotated=False)] == [2]
        with pytest.raises(ValidationError):
            [i async for i in t.generate("not a number")]
        with pytest.raises(RemoteError, match="ValueError"):
            [i async for i in b.generate({})]
        # accounting is the serving path's: every outcome counted, nothing left in flight
        m = rt.metrics.endpoint("l.c.typed")
        assert m.outcomes == {"ok": 1, "invalid": 1} and m.inflight == 0
        assert rt.metrics.endpoint("l.c.boom").outcomes == {"error": 1}
        assert rt.metrics.endpoint("l.c.unary").outcomes == {"ok": 1}
        # admission: at the limit the in-process call is refused with Overloaded(limit)
        held = [t.generate(1), t.generate(2)]
        for s in held:
            await s.__anext__()
        with pytest.raises(Overloaded) as over:
            [i async for i in t.generate(3)]
        assert over.value.limit == 2
        for s in held:
            await s.aclose()
        assert rt.served["l.c.typed"].inflight == 0
        rt.request_shutdown()
        await asyncio.gather(*tasks)


async def test_in_process_deadline_is_scoped_to_the_stream():
    """An in-process handler waiting inside the caller's task is interrupted by the
    deadline; the cancellation never escapes, and an outside cancellation still wins."""
    entered = asyncio.Event()

    async def sleepy(request: dict) -> AsyncIterator[int]:
        entered.set()
        await asyncio.sleep(30)
        yield 1

    async with DistributedRuntime() as rt:
        task = asyncio.create_task(rt.endpoint("s.c.sleepy").serve_endpoint(sleepy))
        await rt.wait_served("s.c.sleepy")
        client = await rt.endpoint("s.c.sleepy").client()
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            [i async for i in client.generate({}, context=Context(timeout=0.2))]
        assert time.monotonic() - started < 5
        me = asyncio.current_task()
        assert me is not None and me.cancelling() == 0

        ctx = Context()
        caller = asyncio.create_task(_drain(client.generate({}, context=ctx)))
        await entered.wait()
        ctx.stop_generating()
        with pytest.raises(Cancelled):
            await caller

        entered.clear()
        outside = asyncio.create_task(_drain(client.generate({}, context=Context(timeout=30))))
        await entered.wait()
        outside.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outside
        assert rt.served["s.c.sleepy"].inflight == 0
        rt.request_shutdown()
        await task


async def _drain(stream) -> list:
    return [i async for i in stream]


async def test_a_call_waits_for_an_instance_to_appear_within_the_grace():
    store = MemoryStore()
    server, caller = runtimes(store, 2)
    async with server, caller:
        client = await caller.endpoint("g.w.numbers").client()
        call = asyncio.create_task(_drain(client.generate({"n": 2}, annotated=False)))
        await asyncio.sleep(0.2)
        assert not call.done()  # waiting, not failed
        task = asyncio.create_task(server.endpoint("g.w.numbers").serve_endpoint(numbers))
        assert await asyncio.wait_for(call, 5) == [{"k": 0}, {"k": 1}]
        server.request_shutdown()
        await task


async def test_no_instances_after_the_grace():
    async with DistributedRuntime(instance_wait=0.3) as rt:
        client = await rt.endpoint("g.none.here").client()
        started = time.monotonic()
        with pytest.raises(NoInstancesError) as info:
            [i async for i in client.generate({})]
        assert 0.25 <= time.monotonic() - started < 3
        assert info.value.waited == pytest.approx(0.3)
        assert "waited 0.3 s" in str(info.value)
    async with DistributedRuntime(instance_wait=0) as rt:
        client = await rt.endpoint("g.none.here").client()
        with pytest.raises(NoInstancesError):
            [i async for i in client.generate({})]


async def test_wait_served_is_a_handshake():
    async with DistributedRuntime() as rt:
        with pytest.raises(TimeoutError):
            await rt.wait_served("h.c.numbers", timeout=0.05)
        waiter = asyncio.create_task(rt.wait_served("h.c.numbers"))
        task = asyncio.create_task(rt.endpoint("h.c.numbers").serve_endpoint(numbers))
        await asyncio.wait_for(waiter, 5)
        assert [r.path for r in await rt.discovery.list("instances/h/")] == ["h.c.numbers"]
        client = await rt.endpoint("h.c.numbers").client()
        assert client.instance_ids()  # registered, so a client sees it at once
        rt.request_shutdown()
        await task


async def test_lifecycle_is_one_state_and_shutdown_is_owned():
    rt = DistributedRuntime()
    assert rt.state is RuntimeState.CREATED
    await rt.start()
    assert rt.state is RuntimeState.RUNNING
    task = asyncio.create_task(rt.endpoint("lc.c.numbers").serve_endpoint(numbers))
    await rt.wait_served("lc.c.numbers")
    rt.request_shutdown()
    rt.request_shutdown()  # idempotent
    assert rt.state in (RuntimeState.RUNNING, RuntimeState.DRAINING)
    await rt.wait_stopped()
    await task
    assert rt.state is RuntimeState.STOPPED
    assert len(rt._lifecycle) == 0 and len(rt.tasks) == 0
    with pytest.raises(Exception, match="stopped"):
        await rt.start()


@pytest.mark.parametrize("cleanup_awaits", [False, True])
async def test_a_parked_in_process_handler_is_closed_when_its_context_stops(cleanup_awaits):
    cleaned = asyncio.Event()

    async def gen(request: dict) -> AsyncIterator[int]:
        try:
            for k in range(100):
                yield k
        finally:
            if cleanup_awaits:
                await asyncio.sleep(0.01)
            cleaned.set()

    async with DistributedRuntime() as rt:
        task = asyncio.create_task(rt.endpoint("p.c.gen").serve_endpoint(gen))
        await rt.wait_served("p.c.gen")
        client = await rt.endpoint("p.c.gen").client()
        ctx = Context()
        stream = client.generate({}, context=ctx, annotated=False)
        assert await stream.__anext__() == 0
        ctx.stop_generating()
        await asyncio.wait_for(cleaned.wait(), 5)  # closed without the caller reading again
        with pytest.raises(Cancelled):
            await stream.__anext__()
        assert rt.served["p.c.gen"].inflight == 0
        assert rt.metrics.endpoint("p.c.gen").outcomes == {"cancelled": 1}
        rt.request_shutdown()
        await task


async def until_outcome(runtime: DistributedRuntime, path: str, outcome: str) -> None:
    async with asyncio.timeout(5):
        while runtime.metrics.endpoint(path).outcomes != {outcome: 1}:
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("transport", ["memory", "tcp", "inproc"])
async def test_client_one_is_a_unary_call_without_a_stream_object(transport):
    """``Client.one``: routed by the caller, the same answers and errors as ``direct``."""
    store = MemoryStore()
    started, stopped = asyncio.Event(), asyncio.Event()

    async def echo(request: dict) -> dict:
        if request.get("fail"):
            raise KeyError("nope")
        if request.get("wait"):
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                stopped.set()
                raise
        return {"echo": request}

    if transport == "inproc":
        server = caller = DistributedRuntime()
    else:
        server, caller = runtimes(store, 2, max_concurrency=2) if transport == "memory" else [
            DistributedRuntime(discovery=MemoryDiscovery(store), transport="tcp", max_concurrency=2)
            for _ in range(2)]
    async with server, caller:
        task = asyncio.create_task(server.endpoint("o.w.echo").serve_endpoint(echo))
        await server.wait_served("o.w.echo")
        client = await caller.endpoint("o.w.echo").client()
        (iid,) = await client.wait_for_instances(5)
        assert await client.one({"x": 1}, iid) == {"echo": {"x": 1}}
        await until_outcome(server, "o.w.echo", "ok")  # an answer is counted ok (in process too)
        with pytest.raises(RemoteError) as failed:
            await client.one({"fail": True}, iid)
        assert failed.value.remote_type == "KeyError"
        with pytest.raises(NoInstancesError):
            await client.one({}, iid + 1)
        ctx = Context()
        ctx.stop_generating()
        with pytest.raises(Cancelled):
            await client.one({}, iid, context=ctx)
        call = asyncio.create_task(client.one({"wait": True}, iid))
        await asyncio.wait_for(started.wait(), 5)
        call.cancel()  # the caller leaves: the handler is cancelled
        await asyncio.gather(call, return_exceptions=True)
        await asyncio.wait_for(stopped.wait(), 5)
        started.clear()
        ctx = Context()
        call = asyncio.create_task(client.one({"wait": True}, iid, context=ctx))
        await asyncio.wait_for(started.wait(), 5)
        ctx.stop_generating()
        with pytest.raises(Cancelled):
            await call
        server.request_shutdown()
        await task


@pytest.mark.parametrize("transport", ["memory", "tcp"])
async def test_a_second_stream_is_not_queued_behind_a_first_streams_bulk(transport):
    """Two streams opened together on one connection, the first with many items ready:
    the second's first item is made (and sent) before the first stream's bulk."""
    store = MemoryStore()
    made: list[tuple[str, int]] = []

    async def bulk(request: dict) -> AsyncIterator[int]:
        for k in range(int(request["n"])):
            made.append((request["name"], k))
            yield k

    server, caller = [DistributedRuntime(discovery=MemoryDiscovery(store), transport=transport) for _ in range(2)]
    async with server, caller:
        task = asyncio.create_task(server.endpoint("f.w.bulk").serve_endpoint(bulk))
        await server.wait_served("f.w.bulk")
        client = await caller.endpoint("f.w.bulk").client()
        await client.wait_for_instances(5)

        async def read(name: str, n: int) -> list[int]:
            return [i async for i in client.generate({"name": name, "n": n}, annotated=False)]

        first, second = await asyncio.gather(read("first", 300), read("second", 3))
        assert first == list(range(300)) and second == [0, 1, 2]
        assert made.index(("second", 0)) < made.index(("first", 100))
        server.request_shutdown()
        await task
