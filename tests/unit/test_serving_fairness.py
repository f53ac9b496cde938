"""``serving.drive`` shares the event loop: a stream whose items are all ready does not
send its whole bulk before a stream started next to it sends its first item."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from servemesh.runtime.context import Context
from servemesh.runtime.handler import adapt
from servemesh.runtime.metrics import EndpointMetrics
from servemesh.runtime.serving import FAIR_ITEMS, Call, ServedEndpoint, drive


class RecordingSink:
    """Takes every item at once (no flow control) and records the order of sends."""

    def __init__(self, name: str, sent: list[tuple[str, Any]]) -> None:
        self.name = name
        self.sent = sent

    async def wait_ready(self) -> None:
        return None

    def send(self, data: Any, event: str | None, comments: list[str] | None, id: str | None) -> bool:
        self.sent.append((self.name, data))
        return True

    def final(self, data: Any, event: str | None, comments: list[str] | None, id: str | None) -> None:
        self.sent.append((self.name, data))

    def end(self) -> None:
        self.sent.append((self.name, "end"))

    def error(self, exc: Exception) -> None:
        raise AssertionError(f"unexpected error {exc!r}")


async def ready_items(request: dict) -> AsyncIterator[int]:
    for k in range(request["n"]):
        yield k  # never waits: every item is ready at once


def endpoint() -> ServedEndpoint:
    return ServedEndpoint("t.w.bulk", adapt(ready_items), 8, EndpointMetrics("t.w.bulk"))


async def test_a_new_stream_sends_its_first_item_before_the_old_streams_bulk():
    ep = endpoint()
    sent: list[tuple[str, Any]] = []
    old = asyncio.create_task(drive(Call(ep, {"n": 10 * FAIR_ITEMS}, Context()), RecordingSink("old", sent)))
    await asyncio.sleep(0)  # the old stream is running (its first item is out)
    assert ("old", 0) in sent
    new = asyncio.create_task(drive(Call(ep, {"n": 3}, Context()), RecordingSink("new", sent)))
    await asyncio.gather(old, new)
    assert sent.index(("new", 0)) < sent.index(("old", 2 * FAIR_ITEMS))
    # each stream's own items stay in order, and both end
    assert [d for n, d in sent if n == "old"] == [*range(10 * FAIR_ITEMS), "end"]
    assert [d for n, d in sent if n == "new"] == [0, 1, 2, "end"]


async def test_streams_started_together_all_send_a_first_item_before_any_bulk():
    ep = endpoint()
    sent: list[tuple[str, Any]] = []
    names = [f"s{i}" for i in range(4)]
    await asyncio.gather(*(drive(Call(ep, {"n": 5 * FAIR_ITEMS}, Context()), RecordingSink(name, sent))
                           for name in names))
    assert sorted(sent[:4]) == [(name, 0) for name in names]
    assert ep.inflight == 0 and ep.metrics.outcomes == {"ok": 4}
