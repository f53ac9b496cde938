"""Server-sent events: ``data: <json>\\n\\n`` frames, the ``[DONE]`` sentinel, the response.

Frames are encoded with msgspec (one encoder, reused): a streamed token costs one
encode and two concatenations. :class:`EventStream` writes each chunk its body
yields with one ``send``: a surface that joins the frames that were ready together
(``runtime.ready.ready_batches``) pays one write per burst, not one per token.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping
from typing import Any

import msgspec
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ...errors import Cancelled
from .disconnect import unless_disconnected

#: headers that keep proxies from buffering the stream
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: the OpenAI-style end of a stream
DONE = b"data: [DONE]\n\n"

_encode = msgspec.json.Encoder().encode


def event(data: Any) -> bytes:
    """One ``data:`` frame holding ``data`` as JSON (dicts, lists, msgspec Structs, ...)."""
    return b"data: " + _encode(data) + b"\n\n"


class EventStream(Response):
    """A ``text/event-stream`` response of ``frames`` (bytes; each one ``send``).

    The body runs in the request's own task, not beside it: a client that leaves is
    noticed by the kit's disconnect listener (started only once the stream has run a
    moment, so a short stream never pays for one), which cancels the body; its
    ``finally`` then closes whatever stream feeds it. A client that left is not an
    error: the response just ends."""

    media_type = "text/event-stream"

    def __init__(self, frames: AsyncIterable[bytes], headers: Mapping[str, str] | None = None) -> None:
        self.frames = frames
        self.status_code = 200
        self.background = None
        self.init_headers({**SSE_HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            try:
                await unless_disconnected(receive, self._body(send))
            except Cancelled:
                pass  # the client left: nobody to tell (the server drops what is sent now)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:  # whatever happened (cancelled before the body began too), the source is closed
            close = getattr(self.frames, "aclose", None)
            if close is not None:
                await close()

    async def _body(self, send: Send) -> None:
        async for chunk in self.frames:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})


def event_stream(frames: AsyncIterable[bytes], headers: Mapping[str, str] | None = None) -> EventStream:
    """A ``text/event-stream`` response of ``frames`` (see :class:`EventStream`)."""
    return EventStream(frames, headers)
