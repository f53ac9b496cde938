"""Limits on what one HTTP request may cost: body size (413) and body time (408).

:class:`BodyLimitMiddleware` is pure ASGI: it refuses a declared ``Content-Length``
over the limit before reading a byte, counts the body while the app reads it and
stops at the limit (so a 100 MB body is never held), and bounds the time the body
may take from the moment the request's head arrived. Header time and open
connections are the socket's business (``servemesh.http.protocol``).

After a 413 the connection stays open: the server reads the rest of the body and
throws it away (bounded by the header timeout), because closing a socket with unread
data resets it, and the client would lose the 413 it has not read yet. A 408 closes
the connection: that client stopped sending.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .shape import Shape, plain_shape, send_error

if TYPE_CHECKING:
    from ..config import Settings


@dataclasses.dataclass(frozen=True)
class HttpLimits:
    """``max_body`` bytes; ``max_connections`` open; seconds for a request's head (and an
    idle connection's next one) and for its body."""

    max_body: int
    max_connections: int
    header_timeout: float
    body_timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(settings.http_max_body, settings.http_max_connections, settings.http_header_timeout,
                   settings.http_body_timeout)

    @classmethod
    def default(cls) -> HttpLimits:
        from ..config import Settings

        return cls.from_settings(Settings())


def declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limits: HttpLimits, shape: Shape = plain_shape) -> None:
        self.app = app
        self.limits = limits
        self.shape = shape

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.max_body
        declared = declared_length(scope)
        if declared is not None and declared > limit:
            await self._too_large(send, limit)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout
        received = 0
        body_done = False
        started = False   # the app's response began
        refused = False   # we answered for the app

        async def limited_receive() -> Message:
            nonlocal received, body_done, refused
            if refused:
                return {"type": "http.disconnect"}
            if body_done:  # a disconnect listener, after the body: no limits apply
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                if not started:
                    refused = True
                    await send_error(send, self.shape, 408, f"the request body did not arrive within "
                                     f"{self.limits.body_timeout:g} s", "invalid_request_error", "request_timeout",
                                     close=True)
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if not started:
                        refused = True
                        await self._too_large(send, limit)
                    return {"type": "http.disconnect"}
                body_done = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the app's answer to a request we already refused goes nowhere
            started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _too_large(self, send: Send, limit: int) -> None:
        await _too_large(send, self.shape, limit)


async def read_limited_body(scope: Scope, receive: Receive, send: Send, limits: HttpLimits,
                            shape: Shape = plain_shape) -> bytes | None:
    """The whole request body under :class:`BodyLimitMiddleware`'s rules, for a handler
    that reads the body itself (the kit's raw routes); ``None`` when the request was
    refused (and answered here) or the client left."""
    limit = limits.max_body
    declared = declared_length(scope)
    if declared is not None and declared > limit:
        await _too_large(send, shape, limit)
        return None
    parts: list[bytes] = []
    received = 0
    try:
        async with asyncio.timeout(limits.body_timeout):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return None
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    await _too_large(send, shape, limit)
                    return None
                parts.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        await send_error(send, shape, 408, f"the request body did not arrive within {limits.body_timeout:g} s",
                         "invalid_request_error", "request_timeout", close=True)
        return None
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _too_large(send: Send, shape: Shape, limit: int) -> None:
    await send_error(send, shape, 413, f"the request body exceeds the limit of {limit} bytes "
                     "(SERVEMESH_HTTP_MAX_BODY)", "invalid_request_error", "request_too_large")
