"""NATS request plane: one subject per served instance, replies to a per-stream inbox.

Frames are the same as on TCP (``codec``); several frames for one destination
are batched into one NATS message per loop turn. A request to an instance with
no subscriber gets NATS's "no responders" status, so a dead worker is noticed
at once; while streams are open to an instance the client probes it every
``probe_interval`` seconds the same way, so a worker killed mid-stream fails its
streams with ``StreamIncomplete`` instead of leaving them hanging.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from ...errors import ConfigError, ProtocolError
from .. import codec
from ..context import Context
from ..serving import ServedEndpoint
from ..stream import RemoteStream
from ..tasks import TaskSet
from .streams import StreamTable, deliver, request_frame

log = logging.getLogger("servemesh.transport.nats")

NO_RESPONDERS = "503"


def instance_subject(namespace: str, component: str, endpoint: str, instance_id: int) -> str:
    return f"{namespace}_{component}.{endpoint}-{instance_id:x}"


async def connect(url: str, name: str, timeout: float) -> Any:
    import nats

    async def on_error(exc: Exception) -> None:
        log.warning("nats connection %s: %r", name, exc)

    async def on_disconnect() -> None:
        log.warning("nats connection %s lost; reconnecting", name)

    async def on_reconnect() -> None:
        log.info("nats connection %s re-established", name)

    try:
        return await nats.connect(url, name=name, connect_timeout=timeout, error_cb=on_error,
                                  disconnected_cb=on_disconnect, reconnected_cb=on_reconnect,
                                  max_reconnect_attempts=-1, allow_reconnect=True)
    except Exception as exc:
        raise ConfigError(f"cannot connect to NATS at {url}: {exc}; start it with `servemesh up` "
                          "or point SERVEMESH_NATS at a running nats-server") from exc


class _Batcher:
    """Frames per destination subject, published as one message per loop turn."""

    def __init__(self, nc: Any, limit: int, tasks: TaskSet) -> None:
        self.nc = nc
        self.limit = limit
        self._tasks = tasks
        self._out: dict[tuple[str, str], bytearray] = {}
        self._scheduled = False
        self._loop = asyncio.get_running_loop()
        self._queue: collections.deque[tuple[str, str, bytes]] = collections.deque()
        self._sender: asyncio.Task[None] | None = None

    def write(self, subject: str, frame: codec.Frame, reply: str = "") -> None:
        key = (subject, reply)
        buf = self._out.get(key)
        if buf is None:
            buf = self._out[key] = bytearray()
        start = len(buf)
        codec.append_frame(buf, frame, self.limit)
        if len(buf) > self.limit:  # this frame fits alone but not with the batch: send the batch first
            pending = bytes(buf[:start])
            del buf[:start]
            self._publish(subject, reply, pending)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._out:
            return
        out, self._out = self._out, {}
        self._queue.extend((subject, reply, bytes(buf)) for (subject, reply), buf in out.items())
        self._kick()

    def _publish(self, subject: str, reply: str, data: bytes) -> None:
        self._queue.append((subject, reply, data))
        self._kick()

    def _kick(self) -> None:
        if self._sender is None:
            self._sender = self._tasks.spawn(self._send(), name="nats-publish")

    async def _send(self) -> None:
        # one sender at a time, so frames of a stream never overtake each other
        try:
            while self._queue:
                subject, reply, data = self._queue.popleft()
                try:
                    await self.nc.publish(subject, data, reply=reply)
                except Exception as exc:  # closed, or reconnecting with a full buffer
                    log.warning("nats publish to %s failed: %r", subject, exc)
        finally:
            self._sender = None


class NatsServerPlane:
    """Serves endpoints on their instance subjects."""

    def __init__(self, nc: Any, endpoints: Mapping[str, ServedEndpoint], limit: int) -> None:
        self.nc = nc
        self.endpoints = endpoints
        self.limit = min(limit, nc.max_payload)
        self.tasks = TaskSet("nats server")
        self.batcher = _Batcher(nc, self.limit, self.tasks)
        self._subs: dict[str, Any] = {}
        self.streams = StreamTable(endpoints, self.tasks.spawn)

    async def add(self, path: str, subject: str) -> None:
        async def on_msg(msg: Any) -> None:
            self._on_msg(path, msg)

        self._subs[path] = await self.nc.subscribe(subject, cb=on_msg)

    async def remove(self, path: str) -> None:
        sub = self._subs.pop(path, None)
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                log.debug("unsubscribe %s: %r", path, exc)

    def _on_msg(self, path: str, msg: Any) -> None:
        reply = msg.reply
        try:
            frames = codec.decode_all(msg.data, self.limit)
        except ProtocolError as exc:
            log.warning("malformed message on %s: %s", msg.subject, exc)
            if reply:
                self.batcher.write(reply, codec.Error(0, "remote", "ProtocolError", str(exc)))
            return
        for frame in frames:
            ft = type(frame)
            if ft is codec.Request:
                if not reply:
                    log.warning("request on %s without a reply subject; dropped", path)
                    continue
                self.streams.request(reply, frame, functools.partial(self.batcher.write, reply),  # type: ignore[arg-type]
                                     only_path=path)
            elif ft is codec.Credit:
                self.streams.grant(reply, frame.n)  # type: ignore[union-attr]
            elif ft is codec.Cancel:
                self.streams.cancel(reply)

    async def close(self) -> None:
        for path in list(self._subs):
            await self.remove(path)
        await self.streams.close()
        await self.tasks.close()
        self.batcher.flush()


class _NatsLink:
    """The ``StreamLink`` of one stream: where its Cancel / Credit frames go."""

    __slots__ = ("plane", "reply", "subject")

    def __init__(self, plane: NatsClientPlane, subject: str, reply: str) -> None:
        self.plane = plane
        self.subject = subject
        self.reply = reply

    def send_cancel(self, sid: int) -> None:
        if self.plane._streams.pop(sid, None) is not None:
            self.plane.batcher.write(self.subject, codec.Cancel(sid), self.reply)

    def send_credit(self, sid: int, n: int) -> None:
        self.plane.batcher.write(self.subject, codec.Credit(sid, n), self.reply)


class NatsClientPlane:
    """Calls instances over NATS: one wildcard inbox subscription for every stream."""

    def __init__(self, nc: Any, limit: int, probe_interval: float) -> None:
        self.nc = nc
        self.limit = min(limit, nc.max_payload)
        self.tasks = TaskSet("nats client")
        self.batcher = _Batcher(nc, self.limit, self.tasks)
        self._inbox = f"_SM.{secrets.token_hex(8)}"
        self._streams: dict[int, RemoteStream] = {}
        self._next_sid = 1
        self._probe_interval = probe_interval
        self._probing: set[str] = set()
        self._sub: Any = None

    async def start(self) -> None:
        async def on_msg(msg: Any) -> None:
            self._on_msg(msg)

        self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=on_msg)

    def open_stream(self, subject: str, path: str, payload: Any, ctx: Context | None, window: int,
                    instance_id: int) -> RemoteStream:
        sid = self._next_sid
        self._next_sid += 1
        frame = request_frame(sid, path, payload, ctx, window)
        reply = f"{self._inbox}.{sid}"
        self.batcher.write(subject, frame, reply)  # FrameTooLarge / SerializationError: nothing sent
        stream = RemoteStream(_NatsLink(self, subject, reply), sid, window, path, instance_id,
                              f"nats:{subject}")
        self._streams[sid] = stream
        if subject not in self._probing:
            self._probing.add(subject)
            self.tasks.spawn(self._probe(subject, instance_id), name=f"probe {subject}")
        return stream

    def _on_msg(self, msg: Any) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        headers = msg.headers
        if headers and headers.get("Status") == NO_RESPONDERS:
            if token.startswith("p"):  # a liveness probe found nobody
                self._instance_gone(token[1:], "no responders: the instance is gone")
                return
            stream = self._streams.pop(int(token), None) if token.isdigit() else None
            if stream is not None:
                stream.lost("no responders on its subject: the instance is gone")
            return
        try:
            frames = codec.decode_all(msg.data, self.limit)
        except ProtocolError as exc:
            log.warning("malformed reply on %s: %s", msg.subject, exc)
            stream = self._streams.pop(int(token), None) if token.isdigit() else None
            if stream is not None:
                stream.lost(f"malformed reply: {exc}")
            return
        for frame in frames:
            if not deliver(self._streams, frame):
                log.warning("unexpected %s frame on %s; ignored", type(frame).__name__, msg.subject)

    @staticmethod
    def _subject(stream: RemoteStream) -> str:
        return stream.address.removeprefix("nats:")

    def _instance_gone(self, subject_hex: str, reason: str) -> None:
        for sid, stream in list(self._streams.items()):
            if self._subject(stream).endswith(f"-{subject_hex}"):
                del self._streams[sid]
                stream.lost(reason)

    async def _probe(self, subject: str, instance_id: int) -> None:
        reply = f"{self._inbox}.p{instance_id:x}"
        try:
            while any(self._subject(s) == subject for s in self._streams.values()):
                await asyncio.sleep(self._probe_interval)
                self.batcher.write(subject, codec.Credit(0, 0), reply)
        finally:
            self._probing.discard(subject)

    async def close(self) -> None:
        for stream in list(self._streams.values()):
            stream.lost("runtime closed")
        self._streams.clear()
        await self.tasks.close()
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:
                log.debug("unsubscribe inbox: %r", exc)
