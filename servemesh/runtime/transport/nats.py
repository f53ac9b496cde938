"""NATS request plane: one subject per served endpoint instance; each caller has one
reply inbox per subject it calls.

Frames are the same as on TCP (``codec``) and carry their stream id, so a NATS
message is a batch: all frames for one destination (requests, credits and
cancels of every stream a caller has open to one subject, or every reply frame
for one caller's inbox) go as one message per loop turn, through an outbound
queue bounded in bytes (stream senders wait while it is full); a stream's first
item is published at once instead (``hurry``), before its bulk is made. A server keys
its streams by (reply inbox, stream id). A request to a subject with no
subscriber gets NATS's "no responders" status, so a dead worker is noticed at
once; while streams are open to an instance the client
pings it every ``heartbeat_interval``, so a worker killed, stopped or cut off
mid-stream fails its streams with ``StreamIncomplete`` instead of leaving them
hanging, and the worker reaps streams whose caller went silent. The connection
itself is opened by ``nats_connect``.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import secrets
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, NamedTuple

from ...config import Settings
from ...errors import ConfigError, InstanceUnavailable, ProtocolError
from ...log import Throttled
from .. import codec, errortable
from ..context import Context
from ..ready import Resumed
from ..records import InstanceRecord
from ..serving import ServedEndpoint
from ..stream import RemoteStream
from ..tasks import TaskSet, within
from .nats_connect import connect
from .streams import StreamTable, deliver, request_frame

log = logging.getLogger("servemesh.transport.nats")
#: malformed messages come from outside: log a few a minute
garbage = Throttled(log, per_minute=6)

NO_RESPONDERS = "503"
#: bytes waiting to be published above which stream senders wait
OUTBOUND_LIMIT = 8 << 20


def instance_subject(namespace: str, component: str, endpoint: str, instance_id: int) -> str:
    """``sm.{namespace}.{component}.{endpoint}-{id}``: one NATS permission,
    ``sm.{namespace}.>``, covers a whole namespace (docs/security.md)."""
    return f"sm.{namespace}.{component}.{endpoint}-{instance_id:x}"


def _caller(key: Any) -> str:
    """The caller (its inbox prefix) of a served stream's key, (reply subject, stream id)."""
    return str(key[0]).rpartition(".")[0]


class _Started(NamedTuple):
    """A publish ``hurry`` began and the sender task finishes."""

    publish: Coroutine[Any, Any, None]
    rest: Resumed
    subject: str
    size: int


class _Batcher:
    """Frames per destination subject, published as one message per loop turn, in
    order: by one sender task, or by ``hurry`` in the caller's step while no sender
    task is running (so frames of a stream never overtake each other). ``limit`` is
    the largest frame body: a frame and its header always fit one NATS message, and a
    batch never outgrows one. A publish that fails is reported to ``on_failed(subject,
    why)``."""

    def __init__(self, nc: Any, limit: int, tasks: TaskSet, on_failed: Callable[[str, str], None]) -> None:
        self.nc = nc
        self.limit = limit
        #: the largest message: one frame of ``limit`` bytes with its header
        self.max_message = limit + codec.HEADER
        self._on_failed = on_failed
        self._tasks = tasks
        self._out: dict[tuple[str, str], bytearray] = {}
        self._scheduled = False
        self._loop = asyncio.get_running_loop()
        self._queue: collections.deque[tuple[str, str, bytes]] = collections.deque()
        self._queued = 0
        self._sender: asyncio.Task[None] | None = None
        self._started: _Started | None = None
        self._drained: asyncio.Future[None] | None = None

    def write(self, subject: str, frame: codec.Frame, reply: str = "") -> int:
        key = (subject, reply)
        buf = self._out.get(key)
        if buf is None:
            buf = self._out[key] = bytearray()
        start = len(buf)
        size = codec.append_frame(buf, frame, self.limit)
        self._queued += len(buf) - start
        if len(buf) > self.max_message and start:  # it fits alone but not with the batch: send the batch first
            pending = bytes(buf[:start])
            del buf[:start]
            self._publish(subject, reply, pending)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)
        return size

    def flush(self) -> None:
        self._scheduled = False
        if self._take() or self._queue:
            self._kick()

    def _take(self) -> bool:
        """Move the batches to the outbound queue; False if there were none."""
        if not self._out:
            return False
        out, self._out = self._out, {}
        self._queue.extend((subject, reply, bytes(buf)) for (subject, reply), buf in out.items())
        return True

    def hurry(self) -> bool:
        """Publish the batches now, not at the end of the loop turn (a stream's first
        item, before its bulk is made). nats-py takes a message for its flusher task
        without waiting, so each publish is stepped here; the flusher writes them once
        the caller yields (True). A publish that must wait (nats-py's buffer is full),
        and everything after it, is finished by the sender task; while a sender task
        is running the batches wait for the end of the turn, behind what it sends.
        (nats-py's ``flush_timeout``, unset by servemesh, would time a waiting publish
        in the caller's task on Python 3.12+.)"""
        if self._sender is not None:
            return True
        if not self._take() and not self._queue:
            return False
        queue = self._queue
        while queue:
            subject, reply, data = queue.popleft()
            publish = self.nc.publish(subject, data, reply=reply)
            try:
                waits_on = publish.send(None)
            except StopIteration:
                self._published(len(data))
                continue
            except Exception as exc:
                self._failed(subject, exc)
                self._published(len(data))
                continue
            self._start_sender(_Started(publish, Resumed(publish, waits_on), subject, len(data)))
            break
        return True

    def _publish(self, subject: str, reply: str, data: bytes) -> None:
        self._queue.append((subject, reply, data))
        self._kick()

    def _kick(self) -> None:
        if self._sender is None:
            self._start_sender(None)

    def _start_sender(self, started: _Started | None) -> None:
        self._started = started
        try:
            task = self._tasks.spawn(self._send(), name="nats-publish")
        except RuntimeError:  # the transport is closing: nothing more goes out
            self._abandon()
            return
        self._sender = task
        task.add_done_callback(self._sender_done)

    def _sender_done(self, task: asyncio.Task[None]) -> None:
        if self._sender is not task:  # it ran: ``_send`` cleaned up (a later sender may be running)
            return
        self._sender = None  # cancelled before it ran (the transport closing)
        self._abandon()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _abandon(self) -> None:
        """Forget a publish ``hurry`` began that no sender task will finish."""
        started, self._started = self._started, None
        if started is not None:
            started.publish.close()
            self._published(started.size)

    # the ``Pressure`` of the stream table
    @property
    def congested(self) -> bool:
        return self._queued >= OUTBOUND_LIMIT

    def wait_uncongested(self) -> asyncio.Future[None]:
        if self._drained is None or self._drained.done():
            self._drained = self._loop.create_future()
        return self._drained

    async def _send(self) -> None:
        """Publish the queue in order (first the publish ``hurry`` began, if any)."""
        try:
            started, self._started = self._started, None
            if started is not None:
                try:
                    await started.rest
                except Exception as exc:
                    self._failed(started.subject, exc)
                self._published(started.size)
            while self._queue:
                subject, reply, data = self._queue.popleft()
                try:
                    await self.nc.publish(subject, data, reply=reply)
                except Exception as exc:
                    self._failed(subject, exc)
                self._published(len(data))
        finally:
            self._sender = None
            if self._drained is not None and not self._drained.done():
                self._drained.set_result(None)

    def _failed(self, subject: str, exc: Exception) -> None:
        """A publish failed (closed, or reconnecting with a full buffer): the frames it
        carried are lost, so their streams fail, never left hanging."""
        log.warning("nats publish to %s failed: %r", subject, exc)
        self._on_failed(subject, f"a NATS publish to {subject} failed: {exc!r}")

    def _published(self, size: int) -> None:
        self._queued = max(self._queued - size, 0)
        if self._drained is not None and self._queued < OUTBOUND_LIMIT // 2 and not self._drained.done():
            self._drained.set_result(None)


class _NatsLink:
    """The ``StreamLink`` of one stream: where its Cancel / Credit frames go."""

    __slots__ = ("reply", "subject", "transport")

    def __init__(self, transport: NatsTransport, subject: str, reply: str) -> None:
        self.transport = transport
        self.subject = subject
        self.reply = reply

    def send_cancel(self, sid: int) -> None:
        batcher = self.transport.batcher
        if self.transport._streams.pop(sid, None) is not None and batcher is not None:
            batcher.write(self.subject, codec.Cancel(sid), self.reply)

    def send_credit(self, sid: int, n: int, nbytes: int) -> None:
        batcher = self.transport.batcher
        if batcher is not None:
            batcher.write(self.subject, codec.Credit(sid, n, nbytes), self.reply)


class NatsTransport:
    """Connector and listener of the NATS request plane, on one connection opened on
    first need."""

    key = "nats_tcp"

    def __init__(self, settings: Settings, endpoints: Mapping[str, ServedEndpoint], instance_id: int) -> None:
        self.settings = settings
        self.endpoints = endpoints
        self.instance_id = instance_id
        self.tasks = TaskSet("nats transport")
        self.nc: Any = None
        self.batcher: _Batcher | None = None
        self.limit = settings.max_payload
        self._lock = asyncio.Lock()
        self._subs: dict[str, Any] = {}
        self._server_streams: StreamTable | None = None
        # client side
        self._inbox = f"_SM.{secrets.token_hex(8)}"
        self._inbox_sub: Any = None
        self._streams: dict[int, RemoteStream] = {}
        self._next_sid = 1
        #: subject -> token of this caller's reply inbox for it, and back (while the
        #: subject's probe runs, i.e. while streams to it are open)
        self._tokens: dict[str, str] = {}
        self._subjects: dict[str, str] = {}
        self._token_ids = itertools.count(1)
        self._probing: set[str] = set()
        #: when each instance subject last answered a probe
        self._answered: dict[str, float] = {}
        #: when each caller (inbox prefix) was last heard from, for reaping its streams
        self._callers: dict[str, float] = {}
        self._reaper: asyncio.Task[None] | None = None
        #: subjects nats-server refused this user a subscription to
        self._refused_subs: set[str] = set()
        self.connected = False

    async def _connection(self) -> Any:
        async with self._lock:
            if self.nc is None:
                if not self.settings.nats:
                    raise ConfigError("no NATS configured: set SERVEMESH_NATS or run `servemesh up`")
                nc = await connect(self.settings.nats, f"servemesh-{self.instance_id:x}",
                                   self.settings.connect_timeout, on_lost=self._lost, on_back=self._back,
                                   settings=self.settings, on_denied=self._denied)
                self.connected = True
                # a frame's header travels in the same NATS message as its body
                self.limit = min(self.settings.max_payload, nc.max_payload - codec.HEADER)
                self.batcher = _Batcher(nc, self.limit, self.tasks, self._unreachable)
                self.nc = nc
            return self.nc

    def _lost(self) -> None:
        """The connection dropped: calls fail now, not after the reconnect; the streams
        this process serves are stopped (their replies could not be delivered)."""
        self.connected = False
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.lost("the NATS connection was lost")
        if self._server_streams is not None:
            self._server_streams.cancel_all()

    def _back(self) -> None:
        self.connected = True

    def _denied(self, action: str, subject: str) -> None:
        """nats-server refused a subscription or a publish of this user."""
        if action == "subscribe":
            self._refused_subs.add(subject)
            return
        self._unreachable(subject, f"NATS does not let this process publish to {subject}: give its user "
                                   "publish permission there (docs/security.md)")

    def _unreachable(self, subject: str, why: str) -> None:
        """Frames for ``subject`` cannot be delivered: fail the calls to a worker there
        and stop the streams whose replies go there."""
        self._subject_gone(subject, why)
        if self._server_streams is not None:
            for key in self._server_streams.keys():
                if key[0] == subject:  # type: ignore[index]
                    self._server_streams.cancel(key)

    async def _subscribe(self, nc: Any, subject: str, cb: Any) -> Any:
        """Subscribe and wait for the server to accept it: a subscription this user may
        not make is a ``ConfigError`` now, not a silent deaf subscriber."""
        sub = await nc.subscribe(subject, cb=cb)
        # nats-server answers a refused SUB with an error that may come just after the
        # PONG of the next PING: three round trips (measured: never more than two)
        for _ in range(3):
            try:
                await within(nc.flush(), self.settings.connect_timeout)
            except Exception as exc:
                log.debug("nats flush after subscribing to %s: %r", subject, exc)
                break
            if subject in self._refused_subs:
                break
        if subject in self._refused_subs:
            self._refused_subs.discard(subject)
            try:
                await sub.unsubscribe()
            except Exception as exc:
                log.debug("unsubscribe %s: %r", subject, exc)
            scope = f"sm.{subject.split('.')[1]}.>" if subject.startswith("sm.") else "_SM.>"
            raise ConfigError(f"NATS does not let this process subscribe to {subject}: give its user subscribe "
                              f"permission for {scope} (docs/security.md)")
        return sub

    # -- listener -----------------------------------------------------------------------
    async def add(self, served: ServedEndpoint, record: InstanceRecord) -> dict[str, str]:
        nc = await self._connection()
        assert self.batcher is not None
        if self._server_streams is None:
            self._server_streams = StreamTable(self.endpoints, self.tasks.spawn, self.batcher,
                                               self.settings.stream_window_bytes, self.settings.request_timeout)
        subject = instance_subject(record.namespace, record.component, record.endpoint, record.instance_id)
        path = served.path

        async def on_msg(msg: Any) -> None:
            self._on_request(path, msg)

        self._subs[path] = await self._subscribe(nc, subject, on_msg)
        return {self.key: subject}

    async def remove(self, path: str) -> None:
        sub = self._subs.pop(path, None)
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                log.debug("unsubscribe %s: %r", path, exc)

    def _on_request(self, path: str, msg: Any) -> None:
        reply = msg.reply
        batcher = self.batcher
        streams = self._server_streams
        assert batcher is not None and streams is not None
        try:
            frames = codec.decode_all(msg.data, self.limit)
        except ProtocolError as exc:
            garbage.warning(msg.subject, "malformed message on %s: %s", msg.subject, exc)
            if reply:
                kind, fields = errortable.encode(exc)
                batcher.write(reply, codec.Error(0, kind, fields))  # type: ignore[arg-type]
            return
        if not reply:
            garbage.warning(path, "message on %s without a reply subject; dropped", path)
            return
        self._callers[reply.rpartition(".")[0]] = asyncio.get_running_loop().time()
        write = None
        for frame in frames:
            ft = type(frame)
            if ft is codec.Request:
                if write is None:
                    write = functools.partial(batcher.write, reply)
                try:
                    streams.request((reply, frame.sid), frame, write, only_path=path)  # type: ignore[arg-type]
                except ProtocolError as exc:
                    garbage.warning(path, "request on %s dropped: %s", path, exc)
                    continue
                if self._reaper is None:
                    self._reaper = self.tasks.spawn(self._reap(), name="nats reap orphans")
            elif ft is codec.Credit:
                streams.grant((reply, frame.sid), frame.n, frame.bytes)  # type: ignore[union-attr]
            elif ft is codec.Cancel:
                streams.cancel((reply, frame.sid), by_caller=True)
            elif ft is codec.Ping:
                batcher.write(reply, codec.Pong(frame.sid))

    async def _reap(self) -> None:
        """Stop the streams whose caller went silent (killed, partitioned, or never there):
        a live caller probes every ``heartbeat_interval`` while its streams are open."""
        streams = self._server_streams
        assert streams is not None
        loop = asyncio.get_running_loop()
        timeout = self.settings.heartbeat_timeout
        try:
            while len(streams):
                await asyncio.sleep(self.settings.heartbeat_interval)
                now = loop.time()
                for key in streams.keys():
                    heard = self._callers.get(_caller(key))
                    if heard is None or now - heard > timeout:
                        log.info("caller of stream %s silent for over %.0f s; stopping it", key, timeout)
                        streams.cancel(key)
                live = {_caller(k) for k in streams.keys()}
                for prefix in list(self._callers):
                    if prefix not in live and now - self._callers[prefix] > timeout:
                        del self._callers[prefix]
        finally:
            self._reaper = None

    # -- connector ----------------------------------------------------------------------
    def accepts(self, record: InstanceRecord) -> bool:
        return self.key in record.transport

    def open_nowait(self, record: InstanceRecord, request: Any, ctx: Context | None) -> RemoteStream | None:
        if self._inbox_sub is None:
            return None
        return self._open(record, request, ctx)

    def _check_connected(self, record: InstanceRecord) -> None:
        if not self.connected:
            raise InstanceUnavailable(record.instance_id, record.address,
                                      "this process is not connected to NATS (reconnecting)")

    async def open(self, record: InstanceRecord, request: Any, ctx: Context | None) -> RemoteStream:
        if not self.settings.nats:
            raise InstanceUnavailable(record.instance_id, record.address,
                                      "it serves over NATS and this process has no SERVEMESH_NATS")
        if self._inbox_sub is None:
            nc = await self._connection()
            async with self._lock:
                if self._inbox_sub is None:
                    async def on_msg(msg: Any) -> None:
                        self._on_reply(msg)

                    self._inbox_sub = await self._subscribe(nc, f"{self._inbox}.*", on_msg)
        return self._open(record, request, ctx)

    def _open(self, record: InstanceRecord, request: Any, ctx: Context | None) -> RemoteStream:
        self._check_connected(record)
        assert self.batcher is not None
        subject = record.transport[self.key]
        s = self.settings
        sid = self._next_sid
        self._next_sid += 1
        frame = request_frame(sid, record.path, request, ctx, s.stream_window, s.stream_window_bytes)
        token = self._tokens.get(subject)
        if token is None:
            token = self._tokens[subject] = f"r{next(self._token_ids)}"
            self._subjects[token] = subject
        reply = f"{self._inbox}.{token}"
        self.batcher.write(subject, frame, reply)  # FrameTooLarge / SerializationError: nothing sent
        stream = RemoteStream(_NatsLink(self, subject, reply), sid, s.stream_window, record.path,
                              record.instance_id, f"nats:{subject}", s.stream_window_bytes)
        self._streams[sid] = stream
        if subject not in self._probing:
            self._probing.add(subject)
            self._answered[subject] = asyncio.get_running_loop().time()
            self.tasks.spawn(self._probe(subject, token), name=f"probe {subject}")
        return stream

    def _on_reply(self, msg: Any) -> None:
        token = msg.subject.rpartition(".")[2]
        headers = msg.headers
        probe = token.startswith("p")
        subject = self._subjects.get(token[1:] if probe else token)
        if headers and headers.get("Status") == NO_RESPONDERS:
            # a request batch or a liveness probe found nobody: the instance is gone
            if subject is not None:
                self._subject_gone(subject, "no responders on its subject: the instance is gone")
            return
        if probe:
            if subject is not None:  # a Pong: the instance is alive
                self._answered[subject] = asyncio.get_running_loop().time()
            return
        try:
            decoder = codec.FrameDecoder(self.limit)
            frames = decoder.feed(msg.data)
            if decoder.pending:
                raise ProtocolError(f"truncated frame: {decoder.pending} trailing bytes")
        except ProtocolError as exc:
            garbage.warning(msg.subject, "malformed reply on %s: %s", msg.subject, exc)
            if subject is not None:
                self._subject_gone(subject, f"malformed reply: {exc}")
            return
        for frame, size in zip(frames, decoder.sizes, strict=True):
            if not deliver(self._streams, frame, size):
                garbage.warning(msg.subject, "unexpected %s frame on %s; ignored", type(frame).__name__, msg.subject)

    @staticmethod
    def _subject(stream: RemoteStream) -> str:
        return stream.address.removeprefix("nats:")

    def _subject_gone(self, subject: str, reason: str) -> None:
        """Fail every stream open to ``subject`` (those that got nothing yet are refused,
        so their callers fail over), and tell the worker, in case it is only slow or cut
        off for a while: it stops them instead of serving a caller that left."""
        token = self._tokens.get(subject)
        batcher = self.batcher if self.connected and token is not None else None
        for sid, stream in list(self._streams.items()):
            if self._subject(stream) == subject:
                del self._streams[sid]
                stream.lost(reason)
                if batcher is not None:
                    batcher.write(subject, codec.Cancel(sid), f"{self._inbox}.{token}")

    async def _probe(self, subject: str, token: str) -> None:
        """While streams to ``subject`` are open, ping it every ``heartbeat_interval``:
        "no responders" means the instance is gone; no answer for ``heartbeat_timeout``
        (a stopped or partitioned process) fails its streams too. The pings also tell
        the instance that this caller is alive."""
        reply = f"{self._inbox}.p{token}"
        loop = asyncio.get_running_loop()
        s = self.settings
        try:
            while any(self._subject(st) == subject for st in self._streams.values()):
                await asyncio.sleep(s.heartbeat_interval)
                silent = loop.time() - self._answered.get(subject, loop.time())
                if silent > s.heartbeat_timeout:
                    self._subject_gone(subject, f"no answer for {silent:.1f} s")
                    break
                if self.batcher is not None and self.connected:
                    self.batcher.write(subject, codec.Ping(0), reply)
        finally:
            # no stream to ``subject`` is left: forget its reply token too (a later call
            # gets a new one and a new probe; in between, the two always go together)
            self._probing.discard(subject)
            self._answered.pop(subject, None)
            if self._tokens.get(subject) == token:
                del self._tokens[subject]
                del self._subjects[token]

    async def close(self) -> None:
        for path in list(self._subs):
            await self.remove(path)
        if self._server_streams is not None:
            await self._server_streams.close()
        for stream in list(self._streams.values()):
            stream.lost("runtime closed")
        self._streams.clear()
        if self._inbox_sub is not None:
            try:
                await self._inbox_sub.unsubscribe()
            except Exception as exc:
                log.debug("unsubscribe inbox: %r", exc)
        if self.batcher is not None:
            self.batcher.flush()
        # let the last frames (ends of drained streams) go out before the connection closes
        sender = self.batcher._sender if self.batcher is not None else None
        if sender is not None:
            try:
                await within(asyncio.shield(sender), self.settings.connect_timeout)
            except TimeoutError:
                pass
        await self.tasks.close()
        if self.nc is not None:
            try:
                await within(self.nc.drain(), self.settings.connect_timeout)
            except Exception as exc:
                log.debug("nats drain: %r", exc)
                await self.nc.close()
            self.nc = None
