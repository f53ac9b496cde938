"""``RemoteStream``: the client side of one stream over a framed transport (TCP, NATS, memory)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncGenerator
from typing import Any, Protocol

from ..errors import Cancelled, InstanceUnavailable, ServemeshError, StreamIncomplete
from . import codec, errortable
from .annotated import Annotated
from .serving import ANNOTATED, DATA


class StreamLink(Protocol):
    """What a ``RemoteStream`` needs from its connection."""

    def send_cancel(self, sid: int) -> None: ...

    def send_credit(self, sid: int, n: int, nbytes: int) -> None: ...


class _Lost:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class RemoteStream:
    """Items pushed by a transport connection, pulled by the caller.

    Flow control: the server may send ``window`` items and ``window_bytes`` bytes
    ahead; what the caller consumes is granted back with a ``Credit`` frame once
    half of either window is used, so a slow caller bounds the memory a fast
    producer can use, in items and in bytes."""

    __slots__ = (
        "_consumed",
        "_consumed_bytes",
        "_done",
        "_half",
        "_half_bytes",
        "_items",
        "_link",
        "_sizes",
        "_waiter",
        "address",
        "instance_id",
        "path",
        "received",
        "refused",
        "sid",
    )

    #: a remote stream may still be refused by its instance after it was opened
    refusable = True

    def __init__(self, link: StreamLink, sid: int, window: int, path: str, instance_id: int,
                 address: str, window_bytes: int = 1 << 62) -> None:
        self.sid = sid
        self.path = path
        self.instance_id = instance_id
        self.address = address
        self.received = 0
        #: the stream ended before its handler ran (refusal, or the instance unreachable)
        self.refused = False
        self._link = link
        self._items: collections.deque[codec.Item] = collections.deque()
        self._sizes: collections.deque[int] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._done: codec.End | codec.Error | _Lost | ServemeshError | None = None
        self._half = max(window // 2, 1)
        self._half_bytes = max(window_bytes // 2, 1)
        self._consumed = 0
        self._consumed_bytes = 0

    # -- producer side, called by the connection --------------------------------
    def push(self, item: codec.Item, size: int) -> None:
        self._items.append(item)
        self._sizes.append(size)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def finish(self, frame: codec.End | codec.Error | _Lost) -> None:
        if self._done is None:
            self._done = frame
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def lost(self, reason: str) -> None:
        self.finish(_Lost(reason))

    # -- consumer side ----------------------------------------------------------
    async def next(self) -> codec.Item:
        while True:
            items = self._items
            if items:
                item = items.popleft()
                self.received += 1
                self._consumed += 1
                self._consumed_bytes += self._sizes.popleft()
                if (self._consumed >= self._half or self._consumed_bytes >= self._half_bytes) and self._done is None:
                    self._link.send_credit(self.sid, self._consumed, self._consumed_bytes)
                    self._consumed = 0
                    self._consumed_bytes = 0
                return item
            done = self._done
            if done is not None:
                raise self._terminal(done)
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def _terminal(self, done: Any) -> BaseException:
        if type(done) is codec.End:
            return StopAsyncIteration()
        if isinstance(done, codec.Error):
            self.refused = done.refused
            return errortable.decode(done.kind, done.fields)
        if isinstance(done, _Lost):
            if self.received == 0:
                self.refused = True
                return InstanceUnavailable(self.instance_id, self.address, done.reason)
            return StreamIncomplete(self.path, self.instance_id, self.received, done.reason)
        return done  # type: ignore[no-any-return]

    def wrap(self, item: codec.Item, annotated: bool) -> Any:
        if annotated:
            return Annotated(item.data, item.event, item.comments, item.id)
        return item.data

    async def items(self, mode: int) -> AsyncGenerator[Any, None]:
        """The stream's items, for callers that want a plain iterator."""
        try:
            while True:
                item = await self.next()
                if mode == ANNOTATED:
                    yield Annotated(item.data, item.event, item.comments, item.id)
                elif mode == DATA:
                    yield item.data
                else:
                    yield item
        except StopAsyncIteration:
            return
        finally:
            self.cancel()

    def interrupt(self, exc: ServemeshError) -> None:
        """Stop waiting: tell the server to stop and make the caller see ``exc``."""
        if self._done is None:
            self._link.send_cancel(self.sid)
            self._items.clear()
            self._sizes.clear()
            self.finish(exc)  # type: ignore[arg-type]

    def cancel(self) -> None:
        if self._done is None:
            self._done = Cancelled("stream closed by the caller")
            self._items.clear()
            self._sizes.clear()
            self._link.send_cancel(self.sid)

    async def aclose(self) -> None:
        self.cancel()

    @property
    def finished(self) -> bool:
        return self._done is not None

    @property
    def buffered(self) -> int:
        """Items that arrived and wait to be read (reading them does not wait)."""
        return len(self._items)
