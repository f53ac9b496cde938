"""Baseline: the leanest length-prefixed msgpack echo / stream / relay over asyncio TCP.

Same framing idea as servemesh's tcp transport, none of its features (no routing,
no flow control, no cancellation, no validation): the physical limit to compare with.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import msgspec

ENC = msgspec.msgpack.Encoder()
DEC = msgspec.msgpack.Decoder()
ECHO, STREAM, ITEM, END = 0, 1, 2, 3


class Conn(asyncio.Protocol):
    """Both ends: buffers writes per loop turn, splits frames, hands them to ``on_frame``.

    With ``early`` it also writes as soon as that many frames wait (servemesh's
    transport does this with 32), so the peer starts on the first replies sooner."""

    def __init__(self, on_frame: Any, early: int = 0) -> None:
        self.on_frame = on_frame
        self.early = early
        self.queued = 0
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.out = bytearray()
        self.scheduled = False
        self.loop = asyncio.get_running_loop()
        self.lost = self.loop.create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def send(self, msg: Any) -> None:
        start = len(self.out)
        self.out.extend(b"\0\0\0\0")
        ENC.encode_into(msg, self.out, -1)
        self.out[start:start + 4] = (len(self.out) - start - 4).to_bytes(4, "big")
        self.queued += 1
        if self.early and self.queued >= self.early:
            self.write_out()
        elif not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        self.write_out()

    def write_out(self) -> None:
        self.queued = 0
        out, self.out = self.out, bytearray()
        assert self.transport is not None
        self.transport.write(out)

    def data_received(self, data: bytes) -> None:
        self.buf.extend(data)
        view = memoryview(self.buf)
        pos = 0
        while len(view) - pos >= 4:
            size = int.from_bytes(view[pos:pos + 4], "big")
            if len(view) - pos - 4 < size:
                break
            self.on_frame(self, DEC.decode(view[pos + 4:pos + 4 + size]))
            pos += 4 + size
        view.release()
        del self.buf[:pos]


class RawStream:
    __slots__ = ("done", "items", "waiter")

    def __init__(self) -> None:
        self.items: collections.deque[Any] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.done = False

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def __aiter__(self) -> RawStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            if self.items:
                return self.items.popleft()
            if self.done:
                raise StopAsyncIteration
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter


class RawClient:
    def __init__(self, early: int = 0) -> None:
        self.early = early
        self.streams: dict[int, RawStream] = {}
        self.next_sid = 0
        self.conn: Conn | None = None

    async def connect(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        _, self.conn = await loop.create_connection(lambda: Conn(self._on_frame, self.early), host, port)

    def _on_frame(self, conn: Conn, msg: list[Any]) -> None:
        sid, kind, payload = msg
        stream = self.streams.get(sid)
        if stream is None:
            return
        if kind == ITEM:
            stream.items.append(payload)
        else:
            stream.done = True
            del self.streams[sid]
        stream.wake()

    def call(self, kind: int, payload: Any) -> RawStream:
        self.next_sid += 1
        stream = self.streams[self.next_sid] = RawStream()
        assert self.conn is not None
        self.conn.send([self.next_sid, kind, payload])
        return stream


async def serve(port: int, upstream: tuple[str, int] | None = None, early: int = 0) -> None:
    """Echo / stream server; with ``upstream`` a relay that forwards streams there."""
    loop = asyncio.get_running_loop()
    relay_client: RawClient | None = None
    if upstream is not None:
        relay_client = RawClient(early)
        await relay_client.connect(*upstream)

    async def relay(conn: Conn, sid: int, payload: Any) -> None:
        assert relay_client is not None
        async for item in relay_client.call(STREAM, payload):
            conn.send([sid, ITEM, item])
        conn.send([sid, END, None])

    async def stream(conn: Conn, sid: int, payload: Any) -> None:
        for k in range(int(payload["n"])):
            conn.send([sid, ITEM, {"token_ids": [k]}])
        conn.send([sid, ITEM, {"finish_reason": "stop"}])
        conn.send([sid, END, None])

    tasks: set[asyncio.Task[None]] = set()

    def on_frame(conn: Conn, msg: list[Any]) -> None:
        sid, kind, payload = msg
        if kind == ECHO:
            conn.send([sid, ITEM, payload])
            conn.send([sid, END, None])
        else:
            task = loop.create_task(relay(conn, sid, payload) if relay_client else stream(conn, sid, payload))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await loop.create_server(lambda: Conn(on_frame, early), "127.0.0.1", port)
    async with server:
        await server.serve_forever()
