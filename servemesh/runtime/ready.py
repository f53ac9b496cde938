"""Reading a stream by what is ready: the items that can be had without waiting, together.

A relay (a gateway writing SSE, a processor detokenizing an engine's tokens) pays a
fixed cost per write or per message it makes. When a producer is faster than the
relay, several items are ready at once, and handling them together costs one write
instead of many. :func:`ready_batches` gives a stream's items as lists: each list is
the first item the relay waited for plus every further item that was ready then,
so the first item of a burst is never held back to wait for company.

"Ready" is asked of the stream itself: the next read is started, and if it would
suspend (the item is not there yet: a remote frame not arrived, an in-process
handler awaiting its model), the batch is handed over first and the started read is
finished afterwards, in the same task, exactly as an ``await`` would have finished
it. That works for every transport alike: a remote stream's buffered frames and an
in-process handler that yields without awaiting are both ready.

Fairness: a batch holds at most ``limit`` items; after a full one the relay's task
yields to the event loop before reading on, so one stream with a long burst ready
never keeps other requests (a new request's first item) waiting for all of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable
from typing import Any

#: the most items in one batch before the reader yields to the event loop
BATCH_LIMIT = 64


class Resumed:
    """Await the rest of an awaitable that was already stepped once (it yielded ``first``)."""

    __slots__ = ("_aw", "_first")

    def __init__(self, aw: Any, first: Any) -> None:
        self._aw = aw
        self._first = first

    def __await__(self) -> Any:
        value = self._first
        while True:
            try:
                sent = yield value
            except BaseException as exc:
                try:
                    value = self._aw.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    value = self._aw.send(sent)
                except StopIteration as done:
                    return done.value

    async def cancel(self) -> None:
        """Finish it as if its task were cancelled while it waited (its cleanup runs here)."""
        waited = self._first
        if isinstance(waited, asyncio.Future):
            waited.cancel()  # as Task.cancel does: the wait ends with CancelledError
        else:
            self._first = None
            try:
                self._first = self._aw.throw(asyncio.CancelledError())
            except BaseException:
                return
        try:
            await self
        except BaseException:  # the cancellation itself, or what the cleanup raised: it is over
            return


async def ready_batches(stream: AsyncIterable[Any], limit: int = BATCH_LIMIT) -> AsyncGenerator[list[Any], None]:
    """``stream``'s items in lists of what was ready together (see the module's doc).

    Ends where the stream ends; an error the stream raises comes after the items that
    preceded it. Close this generator (``aclose``) when leaving early: a read it
    started is then cancelled, and the stream's own cleanup runs. It does not close
    ``stream``."""
    it = stream.__aiter__()
    pending: Resumed | None = None
    error: BaseException | None = None
    try:
        while True:
            try:
                if pending is not None:
                    step, pending = pending, None
                    item = await step
                else:
                    item = await it.__anext__()
            except StopAsyncIteration:
                return
            batch = [item]
            ended = False
            while len(batch) < limit:
                step_: Any = it.__anext__()  # a coroutine-like awaitable: stepped by hand
                try:
                    waits_on = step_.send(None)
                except StopIteration as done:
                    batch.append(done.value)
                    continue
                except StopAsyncIteration:
                    ended = True
                    break
                except BaseException as failure:  # the items before it go out first
                    error = failure
                    break
                pending = Resumed(step_, waits_on)
                break
            yield batch
            if error is not None:
                raised, error = error, None
                raise raised
            if ended:
                return
            if pending is None:  # a full batch: others get a turn before the rest of this burst
                await asyncio.sleep(0)
    finally:
        if pending is not None:
            step, pending = pending, None
            await step.cancel()
