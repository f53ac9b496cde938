"""Server-sent events: ``data: <json>\\n\\n`` frames, the ``[DONE]`` sentinel, the response.

Frames are encoded with msgspec (one encoder, reused): a streamed token costs one
encode and two concatenations.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping
from typing import Any

import msgspec
from starlette.responses import StreamingResponse

#: headers that keep proxies from buffering the stream
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: the OpenAI-style end of a stream
DONE = b"data: [DONE]\n\n"

_encode = msgspec.json.Encoder().encode


def event(data: Any) -> bytes:
    """One ``data:`` frame holding ``data`` as JSON (dicts, lists, msgspec Structs, ...)."""
    return b"data: " + _encode(data) + b"\n\n"


def event_stream(frames: AsyncIterable[bytes], headers: Mapping[str, str] | None = None) -> StreamingResponse:
    """A ``text/event-stream`` response of ``frames``. Starlette runs the body next to a
    disconnect listener: a client that leaves cancels the body, whose ``finally`` then
    closes whatever stream feeds it."""
    return StreamingResponse(frames, media_type="text/event-stream", headers={**SSE_HEADERS, **(headers or {})})
