"""``ready_batches``: a stream's items in lists of what was ready together (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from servemesh.runtime.ready import ready_batches


async def burst_then_wait(gate: asyncio.Event, log: list[str]) -> AsyncIterator[int]:
    """Three items ready at once, then one that needs the gate."""
    for i in range(3):
        yield i
    log.append("waiting")
    try:
        await gate.wait()
    except asyncio.CancelledError:
        log.append("cancelled")
        raise
    finally:
        log.append("cleanup")
    yield 3


async def test_items_ready_together_come_together_and_the_first_is_not_held() -> None:
    gate = asyncio.Event()
    log: list[str] = []
    batches = ready_batches(burst_then_wait(gate, log))
    assert await batches.__anext__() == [0, 1, 2]  # handed over while the next read waits
    assert log == ["waiting"]
    gate.set()
    assert await batches.__anext__() == [3]
    with pytest.raises(StopAsyncIteration):
        await batches.__anext__()
    assert log == ["waiting", "cleanup"]


async def test_a_batch_is_bounded_and_a_full_one_yields_to_other_tasks() -> None:
    async def many() -> AsyncIterator[int]:
        for i in range(10):
            yield i

    order: list[str] = []

    async def other() -> None:
        order.append("other ran")

    got = []
    task = asyncio.ensure_future(other())  # ready now: runs at this task's first yield
    async for batch in ready_batches(many(), limit=4):
        order.append(f"batch {batch}")
        got.extend(batch)
    await task
    assert got == list(range(10))
    assert order == ["batch [0, 1, 2, 3]", "other ran", "batch [4, 5, 6, 7]", "batch [8, 9]"]


async def test_an_error_comes_after_the_items_before_it() -> None:
    async def failing() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise ValueError("broken")

    batches = ready_batches(failing())
    assert await batches.__anext__() == [1, 2]
    with pytest.raises(ValueError, match="broken"):
        await batches.__anext__()


async def test_closing_early_cancels_the_read_it_started() -> None:
    gate = asyncio.Event()
    log: list[str] = []
    batches = ready_batches(burst_then_wait(gate, log))
    assert await batches.__anext__() == [0, 1, 2]
    await batches.aclose()  # the read of item 3 was started and waits on the gate
    assert log == ["waiting", "cancelled", "cleanup"]


async def test_cancelling_the_reader_while_it_waits_for_a_started_read() -> None:
    gate = asyncio.Event()
    log: list[str] = []
    seen: list[list[int]] = []

    async def reader() -> None:
        batches = ready_batches(burst_then_wait(gate, log))
        try:
            async for batch in batches:
                seen.append(batch)
        finally:
            await batches.aclose()

    task = asyncio.ensure_future(reader())
    while not log:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [[0, 1, 2]]
    assert log == ["waiting", "cancelled", "cleanup"]


async def test_a_read_that_waits_on_a_plain_yield_is_resumed() -> None:
    async def yields_to_the_loop() -> AsyncIterator[int]:
        yield 1
        await asyncio.sleep(0)  # a bare yield, not a future
        yield 2

    assert [b async for b in ready_batches(yields_to_the_loop())] == [[1], [2]]


async def test_a_stream_of_one_item_and_an_empty_one() -> None:
    async def one() -> AsyncIterator[str]:
        yield "only"

    async def empty() -> AsyncIterator[str]:
        return
        yield  # pragma: no cover

    assert [b async for b in ready_batches(one())] == [["only"]]
    assert [b async for b in ready_batches(empty())] == []


async def test_closing_cancels_a_started_read_whose_wait_already_ended() -> None:
    """The item the started read waited for arrived while the batch was being written:
    closing still cancels the read (it must not run on to the handler's next wait)."""
    gate, never = asyncio.Event(), asyncio.Event()
    log: list[str] = []

    async def gen() -> AsyncIterator[int]:
        yield 0
        try:
            await gate.wait()
            log.append("past the gate")
            await never.wait()
            yield 1
        except asyncio.CancelledError:
            log.append("cancelled")
            raise
        finally:
            log.append("cleanup")

    batches = ready_batches(gen())
    assert await batches.__anext__() == [0]
    gate.set()
    await asyncio.sleep(0)  # the gate's waiter is woken: the started read's wait has ended
    await asyncio.wait_for(batches.aclose(), 5)
    assert log == ["cancelled", "cleanup"]


async def test_a_cancellation_of_the_reader_during_the_cleanup_is_not_lost() -> None:
    gate = asyncio.Event()
    cleanup_started, release = asyncio.Event(), asyncio.Event()

    async def gen() -> AsyncIterator[int]:
        yield 0
        try:
            await gate.wait()
            yield 1
        finally:
            cleanup_started.set()
            await release.wait()  # a slow cleanup

    async def reader() -> None:
        batches = ready_batches(gen())
        await batches.__anext__()
        await batches.aclose()
        await asyncio.sleep(3600)  # reached only if the cancellation below was swallowed

    task = asyncio.ensure_future(reader())
    await asyncio.wait_for(cleanup_started.wait(), 5)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
