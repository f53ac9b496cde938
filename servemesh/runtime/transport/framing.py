"""Frame writing shared by both ends of a byte-stream connection."""

from __future__ import annotations

import abc
import asyncio
import logging

from .. import codec

log = logging.getLogger("servemesh.transport")


class FramedProtocol(asyncio.Protocol, abc.ABC):
    """Buffers outgoing frames and writes them once per loop iteration, so many
    small frames (one per stream item) cost one system call."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._decoder = codec.FrameDecoder(limit)
        self._wbuf = bytearray()
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def write_frame(self, frame: codec.Frame) -> None:
        """Queue a frame; raises ``FrameTooLarge`` / ``SerializationError`` with nothing queued."""
        codec.append_frame(self._wbuf, frame, self.limit)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._wbuf:
            return
        buf, self._wbuf = self._wbuf, bytearray()
        if self.transport is not None and not self.closed:
            self.transport.write(buf)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except Exception as exc:  # ProtocolError: the peer is broken, this connection is done
            log.warning("closing connection from %s: %s", self.peer, exc)
            self.abort(str(exc))
            return
        for frame in frames:
            self.frame_received(frame)

    @abc.abstractmethod
    def frame_received(self, frame: codec.Frame) -> None:
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
