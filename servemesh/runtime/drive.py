"""Driving a call for a remote transport: the handler's items into a ``ResponseSink``.

A remote transport runs ``drive`` in a task it owns for each stream it serves; the
sink turns items into frames. The unary fast path answers with one ``final``; a
stream shares the event loop with the others (``FAIR_ITEMS``, ``ALONE_ITEMS``).
"""

from __future__ import annotations

import types
from collections.abc import Generator
from typing import Any, Protocol

from ..errors import ServemeshError
from .annotated import Annotated, unwrap
from .serving import Call, cause_of


class ResponseSink(Protocol):
    """Where a remote transport puts one stream's response."""

    async def wait_ready(self) -> None:
        """Wait until the sink may take another item."""

    def send(self, data: Any, event: str | None, comments: list[str] | None, id: str | None) -> bool:
        """Send one item; False if the next one must wait (``wait_ready``)."""

    def final(self, data: Any, event: str | None, comments: list[str] | None, id: str | None) -> None:
        """Send the one item of a unary reply together with the end of the stream."""

    def hurry(self) -> bool:
        """Put what was sent on its way now instead of with the items after it (a
        stream's first item). True if some of it can only leave once the caller yields
        to the event loop."""

    def end(self) -> None: ...

    def error(self, exc: ServemeshError) -> None: ...


#: after a stream's first item ``drive`` asks the sink to send it now (``hurry``) and
#: yields to the event loop if the sink needs that or other streams of its endpoint are
#: in flight; then, every this many items, it yields while other streams are in flight:
#: new streams' first items, and other streams' items, are not queued behind its whole
#: bulk (a handler that never waits would otherwise run to the end, or to its credit
#: window, in one task step)
FAIR_ITEMS = 16
#: ... and every this many items while it is alone (other tasks of the loop get a turn);
#: a multiple of FAIR_ITEMS
ALONE_ITEMS = 128


@types.coroutine
def _yield() -> Generator[None, None, None]:
    """One trip round the event loop (``asyncio.sleep(0)`` without its checks)."""
    yield


async def drive(call: Call, sink: ResponseSink) -> None:
    """Run ``call`` to completion into ``sink``. Always ends the stream with ``final``,
    ``end`` or ``error``, except when cancelled, where the cancellation propagates
    (the transport decides what the caller is told)."""
    try:
        adapted = call.ep.adapted
        unary = adapted.unary
        if unary is not None:  # the unary fast path: one await, one frame
            plain = adapted.plain
            try:
                item = await (plain(call.request) if plain is not None else unary(call.request, call.ctx))
            except BaseException as exc:
                raise call.fail(exc) from cause_of(exc)
            call.finish("ok")
            data, event, comments, id_ = unwrap(item)
            sink.final(data, event, comments, id_)
            return
        handler = call.start()
        try:
            try:
                ready = True
                ep = call.ep
                first = True
                turn = 1  # the first item goes out before any stream's bulk (see FAIR_ITEMS)
                alone = ALONE_ITEMS // FAIR_ITEMS
                async for item in handler:
                    if not ready:
                        await sink.wait_ready()
                    if type(item) is Annotated:
                        ready = sink.send(item._data, item.event, item.comments, item.id)
                    else:
                        ready = sink.send(item, None, None, None)
                    turn -= 1
                    if not turn:
                        turn = FAIR_ITEMS
                        if first:  # the first item leaves now, not with the bulk
                            first = False
                            if sink.hurry() or ep.inflight > 1:
                                await _yield()
                        elif ep.inflight > 1:
                            await _yield()
                        else:
                            alone -= 1
                            if not alone:
                                alone = ALONE_ITEMS // FAIR_ITEMS
                                await _yield()
            finally:
                await handler.aclose()
        except BaseException as exc:  # the handler's, or an item that cannot go on the wire
            raise call.fail(exc) from cause_of(exc)
        call.finish("ok")
        sink.end()
    except ServemeshError as exc:
        sink.error(exc)
