"""``Call.items`` both ways: through the C relay (``runtime/_relay.c``) and through the
Python generator it replaces where it is not built. Every test runs against both, so
the two keep one behaviour: items in each mode, errors mapped, the accounting closed
however the stream ends, the handler closed when the caller leaves, interrupts."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import sysconfig
from collections.abc import AsyncIterator
from typing import Any

import pytest

from servemesh.errors import Cancelled, DeadlineExceeded, RemoteError
from servemesh.runtime import serving
from servemesh.runtime.annotated import Annotated
from servemesh.runtime.context import Context
from servemesh.runtime.handler import adapt
from servemesh.runtime.metrics import EndpointMetrics
from servemesh.runtime.ready import ready_batches
from servemesh.runtime.serving import ANNOTATED, DATA, RAW, Call, ServedEndpoint
from servemesh.runtime.tasks import TaskSet


@pytest.fixture(params=["relay", "python"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "python":
        monkeypatch.setattr(serving, "Relay", None)
    return str(request.param)


def served(handler: Any) -> ServedEndpoint:
    return ServedEndpoint("ns.comp.ep", adapt(handler, endpoint="ns.comp.ep"), 8, EndpointMetrics("ns.comp.ep"))


def call_of(ep: ServedEndpoint, request: Any = None, ctx: Context | None = None, tasks: TaskSet | None = None) -> Call:
    call = Call(ep, request, ctx)
    call.interruptible = ctx is not None  # as the in-process transport makes it
    call._tasks = tasks
    return call


def waits_after_one(waiting: asyncio.Event, cleaned: list[str]) -> Any:
    """A handler that yields 1, then waits (long) for its second item."""
    async def gen(request: Any) -> AsyncIterator[int]:
        try:
            yield 1
            waiting.set()
            await asyncio.sleep(60)
            yield 2
        except asyncio.CancelledError:
            cleaned.append("cancelled")
            raise

    return gen


def test_the_relay_is_built_where_python_headers_are():
    # the install builds it wherever it can; the Python path is the fallback, not the norm
    headers = os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
    assert serving.Relay is not None or not headers


async def test_items_in_each_mode(path):
    async def gen(request: dict) -> AsyncIterator[Any]:
        yield {"a": 1}
        await asyncio.sleep(0)  # the caller's task waits on what the handler awaits
        yield Annotated({"b": 2}, event="e", id="7")
        yield 3

    ep = served(gen)
    raw = [item async for item in call_of(ep, {}).items(RAW)]
    data = [item async for item in call_of(ep, {}).items(DATA)]
    annotated = [item async for item in call_of(ep, {}).items(ANNOTATED)]
    assert raw == [{"a": 1}, Annotated({"b": 2}, event="e", id="7"), 3]
    assert data == [{"a": 1}, {"b": 2}, 3]
    assert annotated == [Annotated({"a": 1}), Annotated({"b": 2}, event="e", id="7"), Annotated(3)]
    assert ep.inflight == 0 and ep.metrics.outcomes == {"ok": 3}


async def test_a_handler_error_is_mapped_after_the_items_before_it(path):
    async def gen(request: Any) -> AsyncIterator[int]:
        yield 1
        raise ValueError("boom")

    ep = served(gen)
    got: list[int] = []
    with pytest.raises(RemoteError) as err:
        async for item in call_of(ep).items(DATA):
            got.append(item)
    assert got == [1] and err.value.remote_type == "ValueError" and "boom" in str(err.value)
    assert isinstance(err.value.__cause__, ValueError)
    assert ep.inflight == 0 and ep.metrics.outcomes == {"error": 1}


async def test_a_handler_that_cannot_start_is_mapped(path):
    def broken(request: Any) -> AsyncIterator[int]:
        raise KeyError("no such thing")

    async def gen(request: Any) -> AsyncIterator[int]:  # what adapt() inspects
        yield 1

    ep = served(gen)
    ep.adapted = dataclasses.replace(ep.adapted, plain=broken)
    with pytest.raises(RemoteError) as err:
        async for _ in call_of(ep).items(DATA):
            pass
    assert err.value.remote_type == "KeyError"
    assert ep.inflight == 0 and ep.metrics.outcomes == {"error": 1}


async def test_leaving_the_loop_closes_the_handler_and_accounts_it(path):
    closed = asyncio.Event()

    async def gen(request: Any) -> AsyncIterator[int]:
        try:
            for k in range(100):
                yield k
        finally:
            await asyncio.sleep(0)  # a cleanup that awaits runs too
            closed.set()

    ep = served(gen)
    tasks = TaskSet("test")
    async for item in call_of(ep, tasks=tasks).items(DATA):
        if item == 2:
            break
    gc.collect()
    await asyncio.wait_for(closed.wait(), 5)
    await tasks.join()
    assert ep.inflight == 0 and ep.metrics.outcomes == {"cancelled": 1}


async def test_aclose_closes_the_handler_before_it_returns(path):
    cleaned: list[str] = []

    async def gen(request: Any, context: Context) -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0)
            cleaned.append("done")

    ep = served(gen)
    call = call_of(ep)
    items = call.items(DATA)
    assert await items.__anext__() == 1
    await items.aclose()
    assert cleaned == ["done"] and call.ctx.is_stopped()
    assert ep.inflight == 0 and ep.metrics.outcomes == {"cancelled": 1}
    with pytest.raises(StopAsyncIteration):
        await items.__anext__()


async def test_a_stream_made_but_never_read_is_accounted_when_dropped(path):
    ran: list[int] = []

    async def gen(request: Any) -> AsyncIterator[int]:
        ran.append(1)
        yield 1

    ep = served(gen)
    call = call_of(ep, tasks=TaskSet("test"))
    items = call.items(DATA)
    assert ep.inflight == 1
    del items
    gc.collect()
    if path == "python":  # a generator that never ran has no cleanup: its owner cancels the call
        call.cancel()
    await asyncio.sleep(0)  # (the relay's finalizer only schedules)
    assert ran == [] and ep.inflight == 0 and ep.metrics.outcomes == {"cancelled": 1}


async def test_cancelling_the_callers_task_reaches_the_handler(path):
    waiting = asyncio.Event()
    cleaned: list[str] = []

    ep = served(waits_after_one(waiting, cleaned))

    async def read() -> list[int]:
        return [item async for item in call_of(ep).items(DATA)]

    task = asyncio.create_task(read())
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["cancelled"] and ep.inflight == 0 and ep.metrics.outcomes == {"cancelled": 1}


async def test_an_interrupt_while_the_handler_waits_ends_only_the_stream(path):
    waiting = asyncio.Event()
    ep = served(waits_after_one(waiting, []))
    ctx = Context()
    call = call_of(ep, ctx=ctx, tasks=TaskSet("test"))

    async def read() -> tuple[list[int], BaseException | None, int]:
        got: list[int] = []
        try:
            async for item in call.items(DATA):
                got.append(item)
        except Cancelled as exc:
            return got, exc, asyncio.current_task().cancelling()  # type: ignore[union-attr]
        return got, None, 0

    task = asyncio.create_task(read())
    await waiting.wait()
    call.interrupt(Cancelled("stopped by the caller"))
    got, exc, cancelling = await task
    assert got == [1] and "stopped by the caller" in str(exc) and cancelling == 0  # the task itself goes on
    assert ep.inflight == 0 and ep.metrics.outcomes == {"cancelled": 1}


async def test_an_interrupt_while_the_handler_is_parked_shows_on_the_next_read(path):
    cleaned: list[str] = []

    async def gen(request: Any) -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            cleaned.append("closed")

    ep = served(gen)
    call = call_of(ep, ctx=Context(), tasks=TaskSet("test"))
    items = call.items(DATA)
    assert await items.__anext__() == 1
    call.interrupt(DeadlineExceeded("deadline passed"))
    assert cleaned == ["closed"]
    with pytest.raises(DeadlineExceeded):
        await items.__anext__()
    assert ep.inflight == 0 and ep.metrics.outcomes == {"cancelled": 1}


async def test_ready_batches_reads_what_is_ready_together(path):
    async def gen(request: Any) -> AsyncIterator[int]:
        for k in range(10):
            if k in (4, 7):
                await asyncio.sleep(0)
            yield k

    ep = served(gen)
    batches = [batch async for batch in ready_batches(call_of(ep).items(DATA))]
    assert batches == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert ep.inflight == 0 and ep.metrics.outcomes == {"ok": 1}


async def test_leaving_ready_batches_early_closes_the_handler(path):
    cleaned: list[str] = []
    waiting = asyncio.Event()

    ep = served(waits_after_one(waiting, cleaned))
    items = call_of(ep).items(DATA)
    batches = ready_batches(items)
    assert await batches.__anext__() == [1]  # the read of 2 was started and left paused
    await batches.aclose()
    await items.aclose()
    assert cleaned == ["cancelled"] and ep.inflight == 0


async def test_a_handler_reading_its_own_stream_is_refused_not_crashed(path):
    holder: dict[str, Any] = {}

    async def gen(request: Any) -> AsyncIterator[Any]:
        yield 1
        try:
            await holder["items"].__anext__()
        except RuntimeError as exc:
            yield f"refused: {exc}"

    ep = served(gen)
    holder["items"] = items = call_of(ep).items(DATA)
    got = [item async for item in items]
    assert got[0] == 1 and got[1].startswith("refused:") and "already" in got[1]
    assert ep.inflight == 0 and ep.metrics.outcomes == {"ok": 1}


async def test_two_readers_at_once_are_refused(path):
    started = asyncio.Event()

    async def gen(request: Any) -> AsyncIterator[int]:
        started.set()
        await asyncio.sleep(0.01)
        yield 1

    ep = served(gen)
    items = call_of(ep).items(DATA)
    first = asyncio.create_task(items.__anext__())  # type: ignore[arg-type]
    await started.wait()
    with pytest.raises(RuntimeError, match="already"):
        await items.__anext__()
    assert await first == 1
    await items.aclose()
    assert ep.inflight == 0


async def test_generator_exit_thrown_in_is_a_cancelled_stream(path):
    async def gen(request: Any) -> AsyncIterator[int]:
        yield 1
        yield 2

    ep = served(gen)
    items = call_of(ep).items(DATA)
    assert await items.__anext__() == 1
    with pytest.raises(GeneratorExit):
        items.__anext__().__await__().throw(GeneratorExit())  # type: ignore[attr-defined]
    assert ep.inflight == 0 and ep.metrics.outcomes == {"cancelled": 1}


async def test_a_stream_dropped_in_a_reference_cycle_is_cancelled_not_failed(path):
    closed = asyncio.Event()

    async def gen(request: Any) -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0)
            closed.set()

    ep = served(gen)
    tasks = TaskSet("test")
    call = call_of(ep, tasks=tasks)
    items = call.items(DATA)
    assert await items.__anext__() == 1
    cycle: list[Any] = [items]
    call.on_close = cycle.clear  # as a ResponseStream holds its items and the call its stream
    del items, call, cycle
    gc.collect()
    await asyncio.wait_for(closed.wait(), 5)
    for _ in range(3):
        await asyncio.sleep(0)
    await tasks.join()
    assert ep.inflight == 0 and ep.metrics.outcomes == {"cancelled": 1}
