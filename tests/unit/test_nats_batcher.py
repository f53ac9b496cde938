"""The NATS transport's outbound batcher: ``hurry`` publishes a stream's first item in
the caller's own step when nothing is on its way, hands a publish that must wait to the
sender task, and never lets a message overtake one queued before it.

``nc`` here is a recorder in place of nats-py's client, standing for the one method the
batcher calls (``publish``); the transport over a real nats-server is tested in
tests/integration."""

from __future__ import annotations

import asyncio

from servemesh.runtime import codec
from servemesh.runtime.tasks import TaskSet
from servemesh.runtime.transport.nats import _Batcher


class Recorder:
    """``publish`` records the frames of each message; ``hold`` makes the next one wait."""

    def __init__(self) -> None:
        self.published: list[tuple[str, list[int]]] = []
        self.hold: asyncio.Future[None] | None = None
        self.fail: Exception | None = None

    async def publish(self, subject: str, data: bytes, reply: str = "") -> None:
        if self.fail is not None:
            raise self.fail
        if self.hold is not None:
            hold, self.hold = self.hold, None
            await hold
        self.published.append((subject, _items(data)))


def _items(data: bytes) -> list[int]:
    out = []
    view = memoryview(data)
    while view:
        size = int.from_bytes(view[:codec.HEADER], "big")
        frame = codec.decode_body(view[codec.HEADER:codec.HEADER + size])
        out.append(frame.data)
        view = view[codec.HEADER + size:]
    return out


def batcher(nc: Recorder, failed: list[str] | None = None) -> tuple[_Batcher, TaskSet]:
    tasks = TaskSet("test")
    return _Batcher(nc, 1 << 20, tasks, lambda subject, why: (failed if failed is not None else []).append(subject)), \
        tasks


async def test_hurry_publishes_in_the_callers_step():
    nc = Recorder()
    b, tasks = batcher(nc)
    b.write("inbox.a", codec.Item(1, 0))
    assert b.hurry() is True  # the flusher writes it once the caller yields
    assert nc.published == [("inbox.a", [0])]  # published already, no task hop
    b.write("inbox.a", codec.Item(1, 1))
    b.write("inbox.a", codec.Item(1, 2))
    await asyncio.sleep(0)  # the loop turn's flush
    await tasks.join()
    assert nc.published == [("inbox.a", [0]), ("inbox.a", [1, 2])]
    assert b.hurry() is False  # nothing waiting: nothing to hurry


async def test_a_publish_that_must_wait_is_finished_by_the_sender_in_order():
    nc = Recorder()
    b, tasks = batcher(nc)
    hold = nc.hold = asyncio.get_running_loop().create_future()
    b.write("inbox.a", codec.Item(1, 0))
    b.write("inbox.b", codec.Item(2, 0))
    assert b.hurry() is True
    assert nc.published == []  # the first publish waits: the sender task finishes it
    b.write("inbox.a", codec.Item(1, 1))
    assert b.hurry() is True  # a sender is on its way: this goes after it, not before
    await asyncio.sleep(0)
    assert nc.published == []
    hold.set_result(None)
    await tasks.join()
    assert b._queued == 0
    assert [m for m in nc.published if m[0] == "inbox.a"] == [("inbox.a", [0]), ("inbox.a", [1])]
    assert ("inbox.b", [0]) in nc.published


async def test_a_failed_hurried_publish_fails_its_streams():
    nc = Recorder()
    failed: list[str] = []
    b, tasks = batcher(nc, failed)
    nc.fail = ConnectionError("closed")
    b.write("inbox.a", codec.Item(1, 0))
    assert b.hurry() is True
    assert failed == ["inbox.a"] and b._queued == 0
    await tasks.join()


async def test_a_sender_cancelled_before_it_ran_leaves_nothing_behind():
    nc = Recorder()
    b, tasks = batcher(nc)
    nc.hold = asyncio.get_running_loop().create_future()
    b.write("inbox.a", codec.Item(1, 0))
    b.hurry()  # that publish waits: a sender task will finish it
    assert b._sender is not None
    b._sender.cancel()  # before its first step (the transport closing)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert b._sender is None and b._queued == 0  # the stepped publish closed, its bytes no longer counted
    b.write("inbox.a", codec.Item(1, 1))
    await asyncio.sleep(0)
    await tasks.join()
    assert nc.published == [("inbox.a", [1])]


async def test_hurry_after_the_transport_closed_its_tasks_does_not_raise():
    nc = Recorder()
    b, tasks = batcher(nc)
    await tasks.close()
    nc.hold = asyncio.get_running_loop().create_future()
    b.write("inbox.a", codec.Item(1, 0))
    assert b.hurry() is True
    assert b._sender is None and b._queued == 0


async def test_a_finished_sender_leaves_the_publish_of_the_next_one_alone():
    loop = asyncio.get_running_loop()
    nc = Recorder()
    b, tasks = batcher(nc)
    first = nc.hold = loop.create_future()
    b.write("inbox.a", codec.Item(1, 0))
    b.flush()  # sender A; its publish waits
    await asyncio.sleep(0)
    second: list[asyncio.Future[None]] = []

    def between_a_ending_and_its_done_callback() -> None:
        second.append(loop.create_future())
        nc.hold = second[0]
        b.write("inbox.a", codec.Item(1, 1))
        b.hurry()  # A is over: this publish is stepped here, waits, and goes to sender B

    first.set_result(None)
    loop.call_soon(between_a_ending_and_its_done_callback)
    for _ in range(3):
        await asyncio.sleep(0)
    second[0].set_result(None)
    await tasks.join()
    assert nc.published == [("inbox.a", [0]), ("inbox.a", [1])]
    assert b._queued == 0 and b._sender is None
