"""What both ends of a byte-stream connection (TCP, memory) share: batched frame
writes, write-side flow control, liveness (``Ping`` / ``Pong``) and limits on
incomplete frames."""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import itertools
import logging

from ...log import Throttled
from .. import codec

log = logging.getLogger("servemesh.transport")
#: peers that break the protocol are logged at most a few times a minute
broken_peers = Throttled(log, per_minute=6)

#: write at once when this many frames or bytes wait, without waiting for the loop
#: turn to end: the peer starts on the first replies while this end makes the rest
#: (at 64 concurrent unary calls this doubles throughput over once-per-turn writes)
FLUSH_FRAMES = 32
FLUSH_BYTES = 1 << 16


@dataclasses.dataclass(frozen=True)
class Liveness:
    """How a connection watches its peer (``Settings.heartbeat_*``, ``frame_timeout``)."""

    #: while streams are open and the peer has been quiet this long, send a ``Ping``
    interval: float = 1.0
    #: a peer quiet this long while streams are open is gone: the connection is dropped
    timeout: float = 5.0
    #: an incomplete frame older than this drops the connection
    frame_timeout: float = 30.0


class PartialBudget:
    """Bytes of incomplete frames all connections of one listener may hold together.

    A connection that would go over stops being read (backpressure, not an error)
    until others complete their frames; if its own frame then stays incomplete past
    the frame timeout, it is dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._paused: set[FramedProtocol] = set()

    def take(self, conn: FramedProtocol, before: int, after: int) -> None:
        """Account a connection's pending bytes going from ``before`` to ``after``."""
        self.used += after - before
        if after > before and self.used > self.limit and conn.transport is not None:
            conn.transport.pause_reading()
            self._paused.add(conn)
        elif after < before and self._paused and self.used <= self.limit:
            paused, self._paused = self._paused, set()
            for other in paused:
                if other.transport is not None and not other.closed:
                    other.transport.resume_reading()

    def forget(self, conn: FramedProtocol) -> None:
        self._paused.discard(conn)


class FramedProtocol(asyncio.Protocol, abc.ABC):
    """Buffers outgoing frames and writes them at the end of the loop iteration, or
    sooner once ``flush_frames`` frames (``FLUSH_FRAMES`` unless
    ``SERVEMESH_FLUSH_FRAMES`` says) or ``FLUSH_BYTES`` bytes wait: many small
    frames (one per stream item) cost one system call, and the peer never idles
    while this end fills a large batch.

    Write-side flow control: while the socket cannot take more (``pause_writing``)
    the connection is ``congested`` and stream senders wait (``wait_uncongested``)."""

    def __init__(self, limit: int, liveness: Liveness | None = None, budget: PartialBudget | None = None,
                 flush_frames: int | None = None) -> None:
        self.limit = limit
        self.flush_frames = flush_frames or FLUSH_FRAMES
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.liveness = liveness or Liveness()
        self._budget = budget
        self._pending = 0
        self._partial_timer: asyncio.TimerHandle | None = None
        self._beat_timer: asyncio.TimerHandle | None = None
        self._pings = itertools.count(1)
        #: why this end dropped the connection (for the streams that fail with it)
        self.abort_reason: str | None = None
        self._decoder = codec.FrameDecoder(limit)
        self._wbuf = bytearray()
        self._flush_scheduled = False
        self._queued = 0
        self._paused = False
        #: senders must wait: the socket is paused or our own buffer is full
        self.congested = False
        self._drained: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._last_rx = self._loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def write_frame(self, frame: codec.Frame) -> int:
        """Queue a frame and return its size; raises ``FrameTooLarge`` /
        ``SerializationError`` with nothing queued. Frames queued after the connection
        closed are dropped at the next flush."""
        buf = self._wbuf
        size = codec.append_frame(buf, frame, self.limit)
        self._queued += 1
        if self._queued >= self.flush_frames or len(buf) >= FLUSH_BYTES:
            self._write_out()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return size

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._write_out()

    def hurry(self) -> bool:
        """Write what is queued now (a stream's first item: it does not wait for the
        bulk); True if the transport still holds some of it (it leaves on a later turn)."""
        self._write_out()
        transport = self.transport
        return transport is not None and transport.get_write_buffer_size() > 0

    def _write_out(self) -> None:
        self._queued = 0
        if self._wbuf:
            buf, self._wbuf = self._wbuf, bytearray()
            if self.transport is not None and not self.closed:
                self.transport.write(buf)  # may call pause_writing
        if not self._paused:
            self.congested = False
            self._wake()

    # -- write-side flow control --------------------------------------------------------
    def wait_uncongested(self) -> asyncio.Future[None]:
        if self._drained is None or self._drained.done():
            self._drained = self._loop.create_future()
        if self.closed:
            self._drained.set_result(None)
        return self._drained

    def pause_writing(self) -> None:
        self._paused = True
        self.congested = True

    def resume_writing(self) -> None:
        self._paused = False
        self.congested = False
        self._wake()

    def _wake(self) -> None:
        drained = self._drained
        if drained is not None and not drained.done():
            self._drained = None
            drained.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._paused = False
        self.congested = False
        self._wake()
        for timer in (self._partial_timer, self._beat_timer):
            if timer is not None:
                timer.cancel()
        self._partial_timer = self._beat_timer = None
        self._account_pending(0)
        if self._budget is not None:
            self._budget.forget(self)
        # free buffers now, not when the cyclic GC finds this protocol
        self._decoder = codec.FrameDecoder(self.limit)
        self._wbuf = bytearray()

    # -- reading ------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._last_rx = self._loop.time()
        decoder = self._decoder
        try:
            frames = decoder.feed(data)
        except Exception as exc:  # ProtocolError: the peer is broken, this connection is done
            broken_peers.warning(self.peer, "closing connection from %s: %s", self.peer, exc)
            self.abort(str(exc))
            return
        if decoder.pending or self._pending:
            self._watch_partial(decoder.pending)
        for frame, size in zip(frames, decoder.sizes):  # noqa: B905 (same length)
            self.frame_received(frame, size)

    @abc.abstractmethod
    def frame_received(self, frame: codec.Frame, size: int) -> None:
        """Dispatch one decoded frame (each end has its own frames)."""

    def control_frame(self, frame: codec.Frame) -> bool:
        """Handle a frame either end may get (``Ping``, ``Pong``); False for others."""
        ft = type(frame)
        if ft is codec.Ping:
            self.write_frame(codec.Pong(frame.sid))
            return True
        return ft is codec.Pong

    def protocol_violation(self, what: str) -> None:
        broken_peers.warning(self.peer, "closing connection from %s: %s", self.peer, what)
        self.abort(what)

    def abort(self, reason: str) -> None:
        if self.abort_reason is None:
            self.abort_reason = reason
        if self.transport is not None:
            self.transport.abort()

    # -- limits on incomplete frames ------------------------------------------------------
    def _watch_partial(self, pending: int) -> None:
        self._account_pending(pending)
        if pending and self._partial_timer is None:
            self._partial_timer = self._loop.call_later(self.liveness.frame_timeout, self._partial_expired)
        elif not pending and self._partial_timer is not None:
            self._partial_timer.cancel()
            self._partial_timer = None

    def _account_pending(self, pending: int) -> None:
        before, self._pending = self._pending, pending
        if self._budget is not None and before != pending:
            self._budget.take(self, before, pending)

    def _partial_expired(self) -> None:
        self._partial_timer = None
        if self._decoder.pending:
            self.protocol_violation(f"a frame stayed incomplete for {self.liveness.frame_timeout:g} s")

    # -- liveness -----------------------------------------------------------------------
    @abc.abstractmethod
    def has_streams(self) -> bool:
        """True while streams are open on this connection (then the peer is watched)."""

    def watch_peer(self) -> None:
        """Start checking the peer's liveness (called when a stream opens)."""
        if self._beat_timer is None and not self.closed:
            self._last_rx = max(self._last_rx, self._loop.time() - self.liveness.interval)
            self._beat_timer = self._loop.call_later(self.liveness.interval, self._beat)

    def _beat(self) -> None:
        self._beat_timer = None
        if self.closed or not self.has_streams():
            return
        quiet = self._loop.time() - self._last_rx
        if quiet >= self.liveness.timeout:
            log.warning("peer %s silent for %.1f s with streams open; dropping the connection", self.peer, quiet)
            self.abort(f"the peer did not answer for {quiet:.1f} s")
            return
        if quiet >= self.liveness.interval:
            self.write_frame(codec.Ping(next(self._pings)))
        self._beat_timer = self._loop.call_later(self.liveness.interval, self._beat)

    @property
    def peer(self) -> str:
        if self.transport is None:
            return "?"
        name = self.transport.get_extra_info("peername")
        return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)
