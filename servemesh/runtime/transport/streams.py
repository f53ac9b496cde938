"""Server side of framed transports (TCP, NATS, memory): the streams being served, by key.

A transport decodes frames and hands them here; this module admits each request
as a ``serving.Call``, runs it with ``drive.drive`` in a task it owns, enforces
its deadline, applies credits (items and bytes) and cancellations, and writes
the response frames through the transport's ``write`` function.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable, Mapping
from typing import Any, Protocol

from ...errors import Cancelled, DeadlineExceeded, InstanceUnavailable, Overloaded, ProtocolError, ServemeshError
from .. import codec, errortable
from ..context import Context
from ..drive import drive
from ..serving import Call, ServedEndpoint
from ..stream import RemoteStream

Write = Callable[[codec.Frame], int]

#: most items a caller may ask a server to send ahead of its credit
MAX_WINDOW = 4096


class Pressure(Protocol):
    """A connection's write side: ``congested`` while its outgoing buffer is full."""

    @property
    def congested(self) -> bool: ...

    def wait_uncongested(self) -> asyncio.Future[None]: ...

    def hurry(self) -> bool:
        """Send what is queued now; True if some of it only leaves once the caller yields."""


class FrameSink:
    """``ResponseSink`` that turns items into frames of one stream.

    It may send while the caller's item credit and byte budget last and the
    connection is not congested, so a slow caller bounds the memory of a fast
    handler on both sides."""

    __slots__ = ("_pressure", "_waiter", "_write", "budget", "credit", "expired", "outstanding", "sid", "window")

    def __init__(self, write: Write, sid: int, window: int, window_bytes: int, pressure: Pressure) -> None:
        self._write = write
        self._pressure = pressure
        self.sid = sid
        self.window = window
        self.credit = window
        self.budget = window_bytes
        self.outstanding = 0
        self.expired = False
        self._waiter: asyncio.Future[None] | None = None

    def ready(self) -> bool:
        return self.credit > 0 and self.outstanding < self.budget and not self._pressure.congested

    def send(self, data: Any, event: str | None, comments: list[str] | None, id: str | None) -> bool:
        outstanding = self.outstanding = self.outstanding + self._write(codec.Item(self.sid, data, event, comments, id))
        credit = self.credit = self.credit - 1
        return credit > 0 and outstanding < self.budget and not self._pressure.congested

    def final(self, data: Any, event: str | None, comments: list[str] | None, id: str | None) -> None:
        self._write(codec.Item(self.sid, data, event, comments, id, True))

    def end(self) -> None:
        self._write(codec.End(self.sid))

    def hurry(self) -> bool:
        return self._pressure.hurry()

    def error(self, exc: ServemeshError, refused: bool = False) -> None:
        kind, fields = errortable.encode(exc)
        self._write(codec.Error(self.sid, kind, fields, refused))  # type: ignore[arg-type]

    async def wait_ready(self) -> None:
        while not self.ready():
            if self.credit > 0 and self.outstanding < self.budget:
                await self._pressure.wait_uncongested()
                continue
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def grant(self, n: int, nbytes: int) -> None:
        # never beyond the window: a forged Credit cannot lift flow control
        self.credit = min(self.credit + n, self.window)
        self.outstanding = max(self.outstanding - nbytes, 0)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class StreamTable:
    """The streams one connection (or one NATS plane) serves; every task it starts is
    registered here until it ends, and ``close`` cancels and awaits them all."""

    def __init__(self, endpoints: Mapping[str, ServedEndpoint],
                 spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]], pressure: Pressure,
                 window_bytes: int, default_timeout: float) -> None:
        self.endpoints = endpoints
        self._spawn = spawn
        self._pressure = pressure
        self._window_bytes = window_bytes
        self._default_timeout = default_timeout
        self._streams: dict[Hashable, tuple[asyncio.Task[None], FrameSink, Context]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def request(self, key: Hashable, f: codec.Request, write: Write, only_path: str | None = None) -> None:
        """Start serving ``f``, or answer at once with why it is refused. A key already in
        use is a ``ProtocolError`` (the first stream is left alone)."""
        if key in self._streams:
            raise ProtocolError(f"duplicate stream id {f.sid} on one connection")
        budget = self._window_bytes if f.window_bytes <= 0 else min(f.window_bytes, self._window_bytes)
        sink = FrameSink(write, f.sid, min(max(f.window, 1), MAX_WINDOW), budget, self._pressure)
        ep = self.endpoints.get(f.path)
        if ep is None or (only_path is not None and f.path != only_path):
            sink.error(InstanceUnavailable(0, "this instance", f"it does not serve {f.path}"), refused=True)
            return
        if f.timeout_ms is None:  # every call has a deadline; this one is enforced by the sweep
            timeout = None
            ctx = Context(f.request_id or None, f.metadata, timeout=self._default_timeout)
        else:
            timeout = max(f.timeout_ms, 1) / 1000
            ctx = Context(f.request_id or None, f.metadata, timeout=timeout)
        try:
            call = Call(ep, f.payload, ctx)
            call.interruptible = False  # stopped by cancelling its task, which this table owns
        except (InstanceUnavailable, Overloaded) as exc:
            sink.error(exc, refused=True)
            return
        except ServemeshError as exc:
            sink.error(exc)
            return
        task = self._spawn(self._run(key, call, sink, timeout))
        self._streams[key] = (task, sink, ctx)
        if timeout is None and self._sweep is None:
            self._sweep = self._loop.call_later(1.0, self._expire_overdue)

    def grant(self, key: Hashable, n: int, nbytes: int) -> None:
        entry = self._streams.get(key)
        if entry is not None:
            entry[1].grant(n, nbytes)

    def cancel(self, key: Hashable, by_caller: bool = False) -> None:
        entry = self._streams.get(key)
        if entry is not None:
            entry[2].stop_generating()  # visible to the handler before it sees the cancellation
            if by_caller:
                # the stream ends with a frame even so: a caller whose stream was cancelled
                # by someone else (a forged Cancel) sees Cancelled instead of waiting forever
                entry[1].error(Cancelled("the stream was cancelled"))
            entry[0].cancel()

    def _expire_overdue(self) -> None:
        """Cancel streams past the default deadline (one timer for all of them)."""
        self._sweep = None
        for key, (_, sink, ctx) in list(self._streams.items()):
            if ctx.expired():
                sink.expired = True
                self.cancel(key)
        if self._streams:
            self._sweep = self._loop.call_later(1.0, self._expire_overdue)

    def cancel_all(self) -> list[asyncio.Task[None]]:
        tasks = []
        for key in list(self._streams):
            tasks.append(self._streams[key][0])
            self.cancel(key)
        return tasks

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        tasks = self.cancel_all()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._streams)

    def keys(self) -> list[Hashable]:
        return list(self._streams)

    async def _run(self, key: Hashable, call: Call, sink: FrameSink, timeout: float | None) -> None:
        timer = self._loop.call_later(timeout, self._expire, key) if timeout is not None else None
        try:
            await drive(call, sink)
        except asyncio.CancelledError:
            if sink.expired:
                limit = self._default_timeout if timeout is None else timeout
                sink.error(DeadlineExceeded(f"deadline of {limit:.3f} s passed"))
            raise
        finally:
            if timer is not None:
                timer.cancel()
            self._streams.pop(key, None)

    def _expire(self, key: Hashable) -> None:
        entry = self._streams.get(key)
        if entry is not None:
            entry[1].expired = True
            self.cancel(key)


# -- the calling side ----------------------------------------------------------------
_END = codec.End(0)


def request_frame(sid: int, path: str, payload: Any, ctx: Context | None, window: int,
                  window_bytes: int) -> codec.Request:
    """The Request frame of a call: the context's id, metadata and remaining deadline travel."""
    if ctx is None:
        return codec.Request(sid, path, payload, "", window, None, None, window_bytes)
    remaining = ctx.remaining()
    timeout_ms = None if remaining is None else max(int(remaining * 1000), 1)
    return codec.Request(sid, path, payload, ctx.id, window, timeout_ms, ctx.metadata or None, window_bytes)


def deliver(streams: dict[int, RemoteStream], frame: codec.Frame, size: int) -> bool:
    """Hand a response frame to its stream (dropping it from ``streams`` when it ends).
    False for a frame a caller should never receive."""
    ft = type(frame)
    if ft is codec.Item:
        if frame.last:  # type: ignore[union-attr]
            stream = streams.pop(frame.sid, None)
            if stream is not None:
                stream.push(frame, size)  # type: ignore[arg-type]
                stream.finish(_END)
        else:
            stream = streams.get(frame.sid)
            if stream is not None:
                stream.push(frame, size)  # type: ignore[arg-type]
        return True
    if ft is codec.End or ft is codec.Error:
        stream = streams.pop(frame.sid, None)
        if stream is not None:
            stream.finish(frame)  # type: ignore[arg-type]
        return True
    return False
