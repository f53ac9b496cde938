"""Baseline: plain nats-py request/reply and a minimal streamed reply, no servemesh."""

from __future__ import annotations

import asyncio
import collections
import itertools
from typing import Any

import msgspec
import nats

ENC = msgspec.msgpack.Encoder()
DEC = msgspec.msgpack.Decoder()
END = b""


async def serve(url: str, subject: str) -> None:
    nc = await nats.connect(url)

    async def on_msg(msg: Any) -> None:
        request = DEC.decode(msg.data)
        if request.get("op") == "echo":
            await nc.publish(msg.reply, msg.data)
            return
        for k in range(int(request["n"])):
            await nc.publish(msg.reply, ENC.encode({"token_ids": [k]}))
        await nc.publish(msg.reply, ENC.encode({"finish_reason": "stop"}))
        await nc.publish(msg.reply, END)

    await nc.subscribe(subject, cb=on_msg)
    await asyncio.Event().wait()


class _Stream:
    __slots__ = ("done", "items", "waiter")

    def __init__(self) -> None:
        self.items: collections.deque[bytes] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.done = False

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> Any:
        while True:
            if self.items:
                return DEC.decode(self.items.popleft())
            if self.done:
                raise StopAsyncIteration
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter


class RawNatsClient:
    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.streams: dict[str, _Stream] = {}
        self.ids = itertools.count()
        self.nc: Any = None
        self.inbox = ""

    async def connect(self, url: str) -> None:
        self.nc = await nats.connect(url)
        self.inbox = self.nc.new_inbox()

        async def on_msg(msg: Any) -> None:
            stream = self.streams.get(msg.subject)
            if stream is None:
                return
            if msg.data == END:
                stream.done = True
                del self.streams[msg.subject]
            else:
                stream.items.append(msg.data)
            if stream.waiter is not None and not stream.waiter.done():
                stream.waiter.set_result(None)

        await self.nc.subscribe(f"{self.inbox}.*", cb=on_msg)

    async def echo(self, payload: Any) -> Any:
        msg = await self.nc.request(self.subject, ENC.encode({"op": "echo", **payload}), timeout=10)
        return DEC.decode(msg.data)

    async def stream(self, payload: Any) -> _Stream:
        reply = f"{self.inbox}.{next(self.ids)}"
        stream = self.streams[reply] = _Stream()
        await self.nc.publish(self.subject, ENC.encode(payload), reply=reply)
        return stream
