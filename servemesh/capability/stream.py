"""``Stream``: how a streaming handler sends its responses (``stream.send(response)``).

A synchronous handler runs in a worker thread: ``send`` converts the response there
(off the event loop) and blocks while ``maxsize`` responses wait to be sent, so a
fast handler never fills memory faster than the client reads. An ``async def``
handler runs on the event loop, where ``send`` cannot block: it returns a future to
``await`` for the same backpressure (``await stream.send(r)``); a handler that never
awaits it still has its responses sent, in order.

The consumer side (``get``, ``finish``, ``close``) belongs to the replica and runs on
the event loop. When the caller leaves, ``close`` wakes a handler blocked in ``send``,
which then raises ``Cancelled``: the handler stops instead of computing for nobody.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable
from typing import Any

from ..errors import Cancelled, RemoteError

#: responses a handler may send ahead of the client
DEFAULT_MAXSIZE = 64


class Stream:
    __slots__ = ("_blocked", "_cond", "_done", "_encode", "_failure", "_items", "_loop", "_loop_thread",
                 "_maxsize", "_space", "_waiter", "_waiting", "sent")

    def __init__(self, loop: asyncio.AbstractEventLoop, encode: Callable[[Any], Any],
                 maxsize: int = DEFAULT_MAXSIZE) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._encode = encode
        self._maxsize = maxsize
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._blocked = 0  # threads waiting in send for space
        self._waiting = False  # the consumer waits for an item
        self._waiter: asyncio.Future[None] | None = None
        self._space: asyncio.Future[None] | None = None  # loop-side senders waiting for space
        self._done = False  # the handler finished (or the stream was closed)
        self._failure: BaseException | None = None
        #: responses sent so far
        self.sent = 0

    # -- the handler's side ---------------------------------------------------------------
    def send(self, response: Any) -> asyncio.Future[None]:
        """Send one response (an ``InferResponse``, a protobuf ``ModelInferResponse`` or
        ``ModelStreamInferResponse``, or a contents JSON dict)."""
        if self._done:
            raise Cancelled("the stream is closed (the caller left, or the handler already returned)")
        item = self._encode(response)
        if threading.get_ident() == self._loop_thread:
            return self._send_on_loop(item)
        with self._cond:
            while len(self._items) >= self._maxsize and not self._done:
                self._blocked += 1
                try:
                    self._cond.wait()
                finally:
                    self._blocked -= 1
            if self._done:
                raise Cancelled("the stream is closed: the caller left")
            self._items.append(item)
            self.sent += 1
            wake = self._waiting
            self._waiting = False
        if wake:
            self._loop.call_soon_threadsafe(self._wake)
        return _DONE

    def error(self, message: str) -> None:
        """End the stream with an error (AnyServe's ``stream.error(msg)``): the caller gets
        the responses sent so far, then the error."""
        with self._cond:
            if self._failure is None:
                self._failure = RemoteError("StreamError", str(message))
        self._finish_from_anywhere()

    def _send_on_loop(self, item: Any) -> asyncio.Future[None]:
        self._items.append(item)
        self.sent += 1
        if self._waiting:
            self._waiting = False
            self._wake()
        if len(self._items) < self._maxsize:
            return _DONE
        if self._space is None or self._space.done():
            self._space = self._loop.create_future()
        return self._space

    # -- the replica's side (on the event loop) -------------------------------------------------
    async def get(self) -> Any:
        """The next response; ``StopAsyncIteration`` once the handler finished and every
        response was taken; the handler's failure after that, if it failed."""
        while True:
            with self._cond:
                if self._items:
                    item = self._items.popleft()
                    if self._blocked:
                        self._cond.notify()
                    space = self._space
                    if space is not None and len(self._items) < self._maxsize:
                        self._space = None
                        if not space.done():
                            space.set_result(None)
                    return item
                if self._done:
                    if self._failure is not None:
                        raise self._failure
                    raise StopAsyncIteration
                self._waiting = True
                waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def finish(self, failure: BaseException | None = None) -> None:
        """The handler returned (or raised ``failure``): the consumer ends after the
        responses already sent."""
        with self._cond:
            if failure is not None and self._failure is None:
                self._failure = failure
        self._finish_from_anywhere()

    def close(self) -> None:
        """The caller left: drop what waits, and make the handler's next ``send`` raise."""
        with self._cond:
            self._items.clear()
        self._finish_from_anywhere()

    def _finish_from_anywhere(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()
        if threading.get_ident() == self._loop_thread:
            self._wake()
        else:
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        space = self._space
        if space is not None and self._done:
            self._space = None
            if not space.done():
                space.set_result(None)


class _Done:
    """An already finished awaitable (what ``send`` returns when there is room)."""

    __slots__ = ()

    def __await__(self) -> Any:
        return
        yield  # pragma: no cover

    def done(self) -> bool:
        return True


_DONE: Any = _Done()
