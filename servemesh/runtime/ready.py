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
import weakref
from collections.abc import AsyncGenerator, AsyncIterable
from typing import Any

#: the most items in one batch before the reader yields to the event loop
BATCH_LIMIT = 64


class Resumed:
    """Await the rest of an awaitable that was already stepped once (it yielded ``first``)."""

    __slots__ = ("_aw", "_first", "_throw")

    def __init__(self, aw: Any, first: Any) -> None:
        self._aw = aw
        self._first = first
        self._throw = False

    def __await__(self) -> Any:
        value = self._first
        if self._throw:  # cancelled while it was paused: the wait ends with CancelledError
            self._throw = False
            try:
                value = self._aw.throw(asyncio.CancelledError())
            except StopIteration as done:
                return done.value
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

    def cancel_soon(self) -> None:
        """Make its wait end with ``CancelledError`` when it is resumed, as ``Task.cancel``
        does to the future a task waits on."""
        waited = self._first
        if not (isinstance(waited, asyncio.Future) and waited.cancel()):
            self._throw = True  # a bare yield, or a wait that already ended

    async def cancel(self) -> None:
        """Finish it as if its task were cancelled while it waited (its cleanup runs here).
        A cancellation of this task itself that arrives meanwhile still propagates."""
        self.cancel_soon()
        task = asyncio.current_task()
        before = task.cancelling() if task is not None else 0
        try:
            await self
        except BaseException:  # the cancellation it was given, or what its cleanup raised: it is over
            if task is not None and task.cancelling() > before:
                raise


#: the read a ``ready_batches`` reader left paused, by the task reading (while it is paused)
_parked: weakref.WeakKeyDictionary[asyncio.Task[Any], Resumed] = weakref.WeakKeyDictionary()


def interrupt_parked(task: asyncio.Task[Any]) -> bool:
    """If ``task`` left a read paused (it handed a batch over and writes it out now), make
    that read's wait end with ``CancelledError`` when it is resumed, and return True: what
    ``task.cancel()`` would do to a read it was awaiting, without cancelling what the task
    awaits now (``serving.Call.interrupt`` for in-process calls). False if none is paused."""
    step = _parked.get(task)
    if step is None:
        return False
    step.cancel_soon()
    return True


async def ready_batches(stream: AsyncIterable[Any], limit: int = BATCH_LIMIT) -> AsyncGenerator[list[Any], None]:
    """``stream``'s items in lists of what was ready together (see the module's doc).

    Ends where the stream ends; an error the stream raises comes after the items that
    preceded it. Close this generator (``aclose``) when leaving early: a read it
    started is then cancelled, and the stream's own cleanup runs. It does not close
    ``stream``."""
    it = stream.__aiter__()
    task = asyncio.current_task()
    pending: Resumed | None = None
    error: BaseException | None = None
    try:
        while True:
            try:
                if pending is not None:
                    step, pending = pending, None
                    _parked.pop(task, None)  # type: ignore[arg-type]
                    item = await step
                else:
                    item = await it.__anext__()
            except StopAsyncIteration:
                return
            batch = [item]
            ended = False
            while len(batch) < limit:
                step_ = it.__anext__().__await__()  # stepped by hand: is the next item there?
                try:
                    waits_on = step_.send(None)
                except StopIteration as done:
                    batch.append(done.value)
                    continue
                except StopAsyncIteration:
                    ended = True
                    break
                except Exception as failure:  # the items before it go out first
                    error = failure
                    break
                pending = Resumed(step_, waits_on)
                if task is not None:
                    _parked[task] = pending
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
            _parked.pop(task, None)  # type: ignore[arg-type]
            await step.cancel()
