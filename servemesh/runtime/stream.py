"""Client-side stream sources: ``RemoteStream`` (frames from a transport) and
``LocalStream`` (the handler's generator, driven in the caller's task)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncGenerator
from typing import Any, Protocol

from ..errors import (
    Cancelled,
    DeadlineExceeded,
    InstanceUnavailable,
    Overloaded,
    RemoteError,
    ServemeshError,
    StreamIncomplete,
    ValidationError,
)
from . import codec
from .annotated import Annotated
from .context import Context
from .serving import PASSTHROUGH, ServedEndpoint
from .tasks import TaskSet


class StreamLink(Protocol):
    """What a ``RemoteStream`` needs from its connection."""

    def send_cancel(self, sid: int) -> None: ...

    def send_credit(self, sid: int, n: int) -> None: ...


class _Lost:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def error_from_frame(frame: codec.Error, path: str, instance_id: int, address: str) -> ServemeshError:
    kind = frame.kind
    if kind == "remote":
        return RemoteError(frame.error_type, frame.message, path)
    if kind == "validation":
        return ValidationError(frame.message, frame.field, path)
    if kind in ("unavailable", "no_endpoint"):
        return InstanceUnavailable(instance_id, address, frame.message)
    if kind == "overloaded":
        return Overloaded(path, 0)
    if kind == "deadline":
        return DeadlineExceeded(f"{path}: {frame.message}")
    if kind == "cancelled":
        return Cancelled(f"{path}: {frame.message}")
    return RemoteError(frame.error_type, frame.message, path)


class RemoteStream:
    """Items pushed by a transport connection, pulled by the caller.

    Flow control: the server may send ``window`` items ahead; each half window the
    caller consumes is granted back with a ``Credit`` frame, so a slow caller
    bounds the memory a fast producer can use."""

    __slots__ = (
        "_consumed",
        "_done",
        "_items",
        "_link",
        "_waiter",
        "_window",
        "address",
        "instance_id",
        "path",
        "received",
        "sid",
    )

    def __init__(self, link: StreamLink, sid: int, window: int, path: str, instance_id: int,
                 address: str) -> None:
        self.sid = sid
        self.path = path
        self.instance_id = instance_id
        self.address = address
        self.received = 0
        self._link = link
        self._items: collections.deque[codec.Item] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._done: codec.End | codec.Error | _Lost | ServemeshError | None = None
        self._window = window
        self._consumed = 0

    # -- producer side, called by the connection --------------------------------
    def push(self, item: codec.Item) -> None:
        self._items.append(item)
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
                if self._consumed * 2 >= self._window and self._done is None:
                    self._link.send_credit(self.sid, self._consumed)
                    self._consumed = 0
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
            return error_from_frame(done, self.path, self.instance_id, self.address)
        if isinstance(done, _Lost):
            if self.received == 0:
                return InstanceUnavailable(self.instance_id, self.address, done.reason)
            return StreamIncomplete(self.path, self.instance_id, self.received, done.reason)
        return done  # type: ignore[no-any-return]

    def wrap(self, item: codec.Item, annotated: bool) -> Any:
        if annotated:
            return Annotated(item.data, item.event, item.comments, item.id)
        return item.data

    def interrupt(self, exc: ServemeshError) -> None:
        """Stop waiting: tell the server to stop and make the caller see ``exc``."""
        if self._done is None:
            self._link.send_cancel(self.sid)
            self._items.clear()
            self.finish(exc)  # type: ignore[arg-type]

    def cancel(self) -> None:
        if self._done is None:
            self._done = Cancelled("stream closed by the caller")
            self._items.clear()
            self._link.send_cancel(self.sid)

    async def aclose(self) -> None:
        self.cancel()

    @property
    def finished(self) -> bool:
        return self._done is not None


class LocalStream:
    """A same-process call: the handler's generator runs in the caller's task, with
    no serialisation and no task hop (``ResponseStream`` iterates ``agen`` itself).
    Stopping the context or the deadline cancels the caller's wait inside the
    handler and surfaces as ``Cancelled`` / ``DeadlineExceeded``."""

    __slots__ = ("_closed", "_closing", "_ctx", "_ep", "_interrupt", "_outcome", "_started", "_tasks",
                 "agen", "received", "task")

    def __init__(self, ep: ServedEndpoint, request: Any, server_ctx: Context, tasks: TaskSet) -> None:
        self.received = 0
        self._ep = ep
        self._tasks = tasks
        self._ctx = server_ctx
        self._started = time.perf_counter()
        self._interrupt: ServemeshError | None = None
        self._closed = False
        self._closing = False
        self._outcome = "cancelled"
        #: the task iterating the stream, set by the iterator when it starts
        self.task: asyncio.Task[Any] | None = None
        ep.enter()
        try:
            self.agen: AsyncGenerator[Any, None] = ep.adapted.call(ep.validate(request), server_ctx)  # type: ignore[assignment]
        except BaseException as exc:
            self._outcome = "invalid" if isinstance(exc, ValidationError) else "error"
            self._close_accounting()
            raise

    @property
    def interrupted(self) -> ServemeshError | None:
        return self._interrupt

    def completed(self) -> None:
        self._outcome = "ok"
        self._close_accounting()

    async def failed(self, exc: BaseException) -> BaseException:
        """What the caller should see for ``exc`` raised while iterating the handler."""
        if isinstance(exc, asyncio.CancelledError):
            task = self.task
            if self._interrupt is not None and task is not None and task.uncancel() == 0:
                await self.aclose()
                return self._interrupt
            self._close_accounting()
            return exc
        if isinstance(exc, GeneratorExit):
            await self.aclose()
            return exc
        self._outcome = "error"
        self._close_accounting()
        if isinstance(exc, ServemeshError) and type(exc) in PASSTHROUGH:
            return exc
        if isinstance(exc, Exception):
            return RemoteError(type(exc).__name__, str(exc), self._ep.path)
        return exc

    def interrupt(self, exc: ServemeshError) -> None:
        if self._closed or self._interrupt is not None:
            return
        self._interrupt = exc
        self._ctx.stop_generating()
        if self.agen.ag_running and self.task is not None:  # type: ignore[attr-defined]
            self.task.cancel()  # the caller is waiting inside the handler: wake it there
        else:
            # the handler is parked at a yield: close it now rather than when (if ever)
            # the caller asks for the next item
            self._tasks.spawn(self.aclose(), name=f"close {self._ep.path}")

    def cancel(self) -> None:
        self._ctx.stop_generating()
        self._close_accounting()  # the generator itself is finalised by the loop's asyncgen hook

    async def aclose(self) -> None:
        self._ctx.stop_generating()
        if self._closing:
            return
        self._closing = True
        try:
            await self.agen.aclose()
        finally:
            self._close_accounting()

    def _close_accounting(self) -> None:
        if not self._closed:
            self._closed = True
            self._ep.leave(self._outcome, self._started)

    @property
    def finished(self) -> bool:
        return self._closed
