"""Frame writing shared by both ends of a byte-stream connection (TCP, memory)."""

from __future__ import annotations

import abc
import asyncio
import logging

from .. import codec

log = logging.getLogger("servemesh.transport")

#: bytes queued in a connection (ours plus the transport's) above which senders wait
HIGH_WATER = 1 << 20


class FramedProtocol(asyncio.Protocol, abc.ABC):
    """Buffers outgoing frames and writes them once per loop iteration, so many
    small frames (one per stream item) cost one system call.

    Write-side flow control: while the socket cannot take more (``pause_writing``)
    or this connection's own buffer passes ``HIGH_WATER``, the connection is
    ``congested`` and stream senders wait (``wait_uncongested``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._decoder = codec.FrameDecoder(limit)
        self._wbuf = bytearray()
        self._flush_scheduled = False
        self._paused = False
        #: senders must wait: the socket is paused or our own buffer is full
        self.congested = False
        self._drained: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def write_frame(self, frame: codec.Frame) -> int:
        """Queue a frame and return its size; raises ``FrameTooLarge`` /
        ``SerializationError`` with nothing queued. Frames queued after the connection
        closed are dropped at the next flush."""
        buf = self._wbuf
        size = codec.append_frame(buf, frame, self.limit)
        if len(buf) >= HIGH_WATER:
            self.congested = True
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return size

    def _flush(self) -> None:
        self._flush_scheduled = False
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
        self.congested = len(self._wbuf) >= HIGH_WATER
        if not self.congested:
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

    # -- reading ------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except Exception as exc:  # ProtocolError: the peer is broken, this connection is done
            log.warning("closing connection from %s: %s", self.peer, exc)
            self.abort(str(exc))
            return
        for frame, size in zip(frames, self._decoder.sizes):  # noqa: B905 (same length)
            self.frame_received(frame, size)

    @abc.abstractmethod
    def frame_received(self, frame: codec.Frame, size: int) -> None:
        """Dispatch one decoded frame (each end has its own frames)."""

    def abort(self, reason: str) -> None:
        if self.transport is not None:
            self.transport.abort()

    @property
    def peer(self) -> str:
        if self.transport is None:
            return "?"
        name = self.transport.get_extra_info("peername")
        return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)
