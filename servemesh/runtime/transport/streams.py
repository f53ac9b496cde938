"""Server side of framed transports (TCP, NATS): the streams being served, by key.

A transport decodes frames and hands them here; this module runs each request with
``serving.drive``, enforces its deadline, applies credits and cancellations, and
writes the response frames through the transport's ``write`` function.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable, Mapping
from typing import Any

from .. import codec
from ..context import Context
from ..serving import ServedEndpoint, drive
from ..stream import RemoteStream

Write = Callable[[codec.Frame], None]


class FrameSink:
    """``ResponseSink`` that turns items into frames of one stream."""

    __slots__ = ("_waiter", "_write", "credit", "expired", "sid")

    def __init__(self, write: Write, sid: int, window: int) -> None:
        self._write = write
        self.sid = sid
        self.credit = window
        self.expired = False
        self._waiter: asyncio.Future[None] | None = None

    def send(self, data: Any, event: str | None, comments: list[str] | None, id: str | None) -> None:
        self._write(codec.Item(self.sid, data, event, comments, id))
        self.credit -= 1

    def final(self, data: Any, event: str | None, comments: list[str] | None, id: str | None) -> None:
        self._write(codec.Item(self.sid, data, event, comments, id, True))

    def end(self) -> None:
        self._write(codec.End(self.sid))

    def error(self, kind: str, type_: str, message: str, field: str | None = None) -> None:
        self._write(codec.Error(self.sid, kind, type_, message, field))

    async def wait_credit(self) -> None:
        while self.credit <= 0:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def grant(self, n: int) -> None:
        self.credit += n
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class StreamTable:
    """The streams one connection (or one NATS plane) serves; every task it starts is
    registered here until it ends, and ``close`` cancels and awaits them all."""

    def __init__(self, endpoints: Mapping[str, ServedEndpoint],
                 spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]) -> None:
        self.endpoints = endpoints
        self._spawn = spawn
        self._streams: dict[Hashable, tuple[asyncio.Task[None], FrameSink, Context]] = {}
        self._loop = asyncio.get_running_loop()

    def request(self, key: Hashable, f: codec.Request, write: Write, only_path: str | None = None) -> None:
        """Start serving ``f``, or answer at once with why it is refused."""
        ep = self.endpoints.get(f.path)
        if ep is None or (only_path is not None and f.path != only_path):
            write(codec.Error(f.sid, "no_endpoint", "NoEndpoint", f"this instance does not serve {f.path}"))
            return
        refusal = ep.refusal()
        if refusal is not None:
            write(codec.Error(f.sid, refusal[0], refusal[0].title(), refusal[1]))
            return
        timeout = None if f.timeout_ms is None else max(f.timeout_ms, 1) / 1000
        ctx = Context(f.request_id or None, f.metadata, timeout=timeout)
        sink = FrameSink(write, f.sid, max(f.window, 1))
        task = self._spawn(self._run(key, ep, f.payload, ctx, sink, timeout))
        self._streams[key] = (task, sink, ctx)

    def grant(self, key: Hashable, n: int) -> None:
        entry = self._streams.get(key)
        if entry is not None:
            entry[1].grant(n)

    def cancel(self, key: Hashable) -> None:
        entry = self._streams.get(key)
        if entry is not None:
            entry[2].stop_generating()  # visible to the handler before it sees the cancellation
            entry[0].cancel()

    def cancel_all(self) -> list[asyncio.Task[None]]:
        tasks = []
        for key in list(self._streams):
            tasks.append(self._streams[key][0])
            self.cancel(key)
        return tasks

    async def close(self) -> None:
        tasks = self.cancel_all()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._streams)

    async def _run(self, key: Hashable, ep: ServedEndpoint, payload: Any, ctx: Context, sink: FrameSink,
                   timeout: float | None) -> None:
        timer = self._loop.call_later(timeout, self._expire, key) if timeout is not None else None
        try:
            await drive(ep, payload, ctx, sink)
        except asyncio.CancelledError:
            if sink.expired:
                sink.error("deadline", "DeadlineExceeded", f"deadline of {timeout:.3f} s passed")
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


def request_frame(sid: int, path: str, payload: Any, ctx: Context | None, window: int) -> codec.Request:
    """The Request frame of a call: the context's id, metadata and remaining deadline travel."""
    if ctx is None:
        return codec.Request(sid, path, payload, "", window)
    remaining = ctx.remaining()
    timeout_ms = None if remaining is None else max(int(remaining * 1000), 1)
    return codec.Request(sid, path, payload, ctx.id, window, timeout_ms, ctx.metadata or None)


def deliver(streams: dict[int, RemoteStream], frame: codec.Frame) -> bool:
    """Hand a response frame to its stream (dropping it from ``streams`` when it ends).
    False for a frame a caller should never receive."""
    ft = type(frame)
    if ft is codec.Item:
        if frame.last:  # type: ignore[union-attr]
            stream = streams.pop(frame.sid, None)
            if stream is not None:
                stream.push(frame)  # type: ignore[arg-type]
                stream.finish(_END)
        else:
            stream = streams.get(frame.sid)
            if stream is not None:
                stream.push(frame)  # type: ignore[arg-type]
        return True
    if ft is codec.End or ft is codec.Error:
        stream = streams.pop(frame.sid, None)
        if stream is not None:
            stream.finish(frame)  # type: ignore[arg-type]
        return True
    return False
