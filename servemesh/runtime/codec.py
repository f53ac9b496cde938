"""Wire codec: typed frames in, bytes out, and back. No I/O.

A frame on a byte stream is ``u32 big-endian length`` + a msgpack array whose
first element is the frame tag. Every response stream ends with exactly one
``End`` or ``Error`` frame, so a stream cut short is never mistaken for a
complete one.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..errors import FrameTooLarge, ProtocolError, SerializationError
from .errortable import Kind

HEADER = 4


class Request(msgspec.Struct, tag=1, array_like=True, omit_defaults=True):
    sid: int
    path: str
    payload: Any
    request_id: str
    window: int
    timeout_ms: int | None = None
    metadata: dict[str, Any] | None = None
    #: bytes of items the server may send ahead of the caller's credit (0: the server's default)
    window_bytes: int = 0


class Item(msgspec.Struct, tag=2, array_like=True, omit_defaults=True):
    sid: int
    data: Any
    event: str | None = None
    comments: list[str] | None = None
    id: str | None = None
    #: this item is also the end of the stream (a unary reply in one frame)
    last: bool = False


class End(msgspec.Struct, tag=3, array_like=True):
    sid: int


class Error(msgspec.Struct, tag=4, array_like=True, omit_defaults=True):
    """The end of a stream that failed: an error of ``errortable`` as ``(kind, fields)``."""

    sid: int
    kind: Kind  # a closed set: any other kind is a malformed frame
    fields: dict[str, Any] | None = None
    #: the instance refused the stream before running its handler (the caller may fail over)
    refused: bool = False


class Cancel(msgspec.Struct, tag=5, array_like=True):
    sid: int


class Credit(msgspec.Struct, tag=6, array_like=True, omit_defaults=True):
    """The caller consumed ``n`` more items, ``bytes`` in all: the server may send as many more."""

    sid: int
    n: int
    bytes: int = 0


class Ping(msgspec.Struct, tag=7, array_like=True):
    """Liveness check; the peer answers with a ``Pong`` carrying the same number
    (``sid`` here is a token, not a stream)."""

    sid: int


class Pong(msgspec.Struct, tag=8, array_like=True):
    sid: int


Frame = Request | Item | End | Error | Cancel | Credit | Ping | Pong


def _enc_hook(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)  # pydantic models, without importing pydantic
    if dump is not None:
        return dump(mode="json")
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"cannot encode objects of type {type(obj).__name__}")


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_decoder: msgspec.msgpack.Decoder[Frame] = msgspec.msgpack.Decoder(Frame)  # type: ignore[arg-type]


def to_builtins(obj: Any) -> Any:
    """Turn a user value (models, structs, dataclasses) into plain JSON-like data."""
    try:
        return msgspec.to_builtins(obj, enc_hook=_enc_hook)
    except TypeError as exc:
        raise SerializationError(str(exc)) from exc


def append_frame(buf: bytearray, frame: Frame, limit: int) -> int:
    """Append ``frame`` to ``buf`` with its length prefix and return its body size;
    the buffer is unchanged on error."""
    start = len(buf)
    buf.extend(b"\0\0\0\0")
    try:
        _encoder.encode_into(frame, buf, -1)
    except Exception as exc:  # any failure (a lone surrogate, a huge int, ...) leaves no partial frame
        del buf[start:]
        raise SerializationError(f"cannot encode the message: {exc}") from exc
    size = len(buf) - start - HEADER
    if size > limit:
        del buf[start:]
        raise FrameTooLarge(size, limit)
    buf[start:start + HEADER] = size.to_bytes(HEADER, "big")
    return size


def encode(frame: Frame, limit: int = 1 << 31) -> bytes:
    buf = bytearray()
    append_frame(buf, frame, limit)
    return bytes(buf)


def decode_body(body: bytes | memoryview) -> Frame:
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"malformed frame: {exc}") from exc


def decode(data: bytes) -> Frame:
    """Decode exactly one whole frame (header included)."""
    if len(data) < HEADER:
        raise ProtocolError(f"truncated frame: {len(data)} bytes is shorter than the header")
    size = int.from_bytes(data[:HEADER], "big")
    if len(data) - HEADER != size:
        raise ProtocolError(f"truncated frame: header says {size} bytes, got {len(data) - HEADER}")
    return decode_body(memoryview(data)[HEADER:])


class FrameDecoder:
    """Incremental decoder for a byte stream: ``feed`` returns the whole frames so far,
    and ``sizes`` the body size of each (for byte-based flow control).

    An incomplete frame is kept and extended in place: a large frame arriving in
    many small reads costs one copy, not one per read."""

    __slots__ = ("_buf", "_limit", "_need", "sizes")

    def __init__(self, limit: int) -> None:
        self._buf = bytearray()
        self._limit = limit
        #: bytes ``_buf`` must hold before another frame can be decoded
        self._need = 0
        self.sizes: list[int] = []

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        if buf:
            buf.extend(data)
            if len(buf) < self._need:
                self.sizes = []
                return []
            view = memoryview(buf)
        else:
            view = memoryview(data)
        frames: list[Frame] = []
        sizes = self.sizes = []
        pos = 0
        end = len(view)
        limit = self._limit
        decode_one = _decoder.decode
        need = 0
        try:
            while end - pos >= HEADER:
                size = int.from_bytes(view[pos:pos + HEADER], "big")
                if size > limit:
                    raise FrameTooLarge(size, limit)
                stop = pos + HEADER + size
                if stop > end:
                    need = HEADER + size
                    break
                try:
                    frames.append(decode_one(view[pos + HEADER:stop]))
                    sizes.append(size)
                except msgspec.DecodeError as exc:
                    raise ProtocolError(f"malformed frame: {exc}") from exc
                pos = stop
            rest = bytes(view[pos:]) if pos < end else b""
        finally:
            view.release()
        if buf and pos == 0:
            self._need = need or HEADER
            return frames  # nothing consumed: keep extending the same buffer
        self._buf = bytearray(rest)
        self._need = need or HEADER
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)


def decode_all(data: bytes, limit: int) -> list[Frame]:
    """Decode a message that holds whole frames only (one NATS message, say)."""
    decoder = FrameDecoder(limit)
    frames = decoder.feed(data)
    if decoder.pending:
        raise ProtocolError(f"truncated frame: {decoder.pending} trailing bytes")
    return frames
