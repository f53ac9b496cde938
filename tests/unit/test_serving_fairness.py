"""``drive.drive`` shares the event loop: a stream whose items are all ready does not
send its whole bulk before a stream started next to it sends its first item, and its
first item is put on its way (``hurry``) before its bulk is made."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from servemesh.runtime.context import Context
from servemesh.runtime.drive import ALONE_ITEMS, FAIR_ITEMS, drive
from servemesh.runtime.handler import adapt
from servemesh.runtime.metrics import EndpointMetrics
from servemesh.runtime.serving import Call, ServedEndpoint


class RecordingSink:
    """Takes every item at once (no flow control) and records the order of sends."""

    def __init__(self, name: str, sent: list[tuple[str, Any]], hurry_yields: bool = False) -> None:
        self.name = name
        self.sent = sent
        self.hurry_yields = hurry_yields

    async def wait_ready(self) -> None:
        return None

    def send(self, data: Any, event: str | None, comments: list[str] | None, id: str | None) -> bool:
        self.sent.append((self.name, data))
        return True

    def final(self, data: Any, event: str | None, comments: list[str] | None, id: str | None) -> None:
        self.sent.append((self.name, data))

    def end(self) -> None:
        self.sent.append((self.name, "end"))

    def hurry(self) -> bool:
        self.sent.append((self.name, "hurry"))
        return self.hurry_yields

    def error(self, exc: Exception) -> None:
        raise AssertionError(f"unexpected error {exc!r}")


async def ready_items(request: dict) -> AsyncIterator[int]:
    for k in range(request["n"]):
        yield k  # never waits: every item is ready at once


def endpoint() -> ServedEndpoint:
    return ServedEndpoint("t.w.bulk", adapt(ready_items), 8, EndpointMetrics("t.w.bulk"))


def items(sent: list[tuple[str, Any]], name: str) -> list[Any]:
    return [d for n, d in sent if n == name and d != "hurry"]


async def test_a_new_stream_sends_its_first_item_before_the_old_streams_bulk():
    ep = endpoint()
    sent: list[tuple[str, Any]] = []
    n_old = 1 + ALONE_ITEMS + 10 * FAIR_ITEMS
    old = asyncio.create_task(drive(Call(ep, {"n": n_old}, Context()), RecordingSink("old", sent)))
    await asyncio.sleep(0)
    # alone, it sent its first item, hurried it out, then ALONE_ITEMS more before yielding
    assert sent == [("old", 0), ("old", "hurry"), *(("old", k) for k in range(1, 1 + ALONE_ITEMS))]
    new = asyncio.create_task(drive(Call(ep, {"n": 3}, Context()), RecordingSink("new", sent)))
    await asyncio.gather(old, new)
    # once another stream is in flight, it yields every FAIR_ITEMS
    assert sent.index(("new", 0)) < sent.index(("old", 1 + ALONE_ITEMS + FAIR_ITEMS))
    # each stream's own items stay in order, and both end
    assert items(sent, "old") == [*range(n_old), "end"]
    assert items(sent, "new") == [0, 1, 2, "end"]
    assert sent.count(("old", "hurry")) == 1 and sent.count(("new", "hurry")) == 1


async def test_a_stream_alone_yields_to_other_tasks_every_alone_items():
    ep = endpoint()
    sent: list[tuple[str, Any]] = []
    turns = 0
    done = False

    async def other_task() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(other_task())
    await asyncio.sleep(0)
    before = turns
    await drive(Call(ep, {"n": 1 + 4 * ALONE_ITEMS}, Context()), RecordingSink("s", sent))
    done = True
    await ticker
    assert turns - before >= 4  # not one step for the whole bulk
    assert items(sent, "s") == [*range(1 + 4 * ALONE_ITEMS), "end"]


async def test_a_sink_whose_hurried_item_leaves_on_the_next_loop_turn_gets_that_turn():
    ep = endpoint()
    sent: list[tuple[str, Any]] = []
    stream = asyncio.create_task(drive(Call(ep, {"n": 50}, Context()), RecordingSink("s", sent, hurry_yields=True)))
    await asyncio.sleep(0)
    assert sent == [("s", 0), ("s", "hurry")]  # nothing after the first item until the loop turned
    await stream
    assert items(sent, "s") == [*range(50), "end"]


async def test_streams_started_together_all_send_a_first_item_before_any_bulk():
    ep = endpoint()
    sent: list[tuple[str, Any]] = []
    names = [f"s{i}" for i in range(4)]
    await asyncio.gather(*(drive(Call(ep, {"n": 5 * FAIR_ITEMS}, Context()), RecordingSink(name, sent))
                           for name in names))
    firsts = [(n, d) for n, d in sent if d != "hurry"][:4]
    assert sorted(firsts) == [(name, 0) for name in names]
    assert ep.inflight == 0 and ep.metrics.outcomes == {"ok": 4}
