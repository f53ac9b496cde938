"""Raw routes: a surface's hot paths as plain ASGI functions, under the kit's middleware.

A FastAPI route costs its share of dependency solving, request objects and four
layers of framework middleware on every request. A surface whose few hot routes
must be fast (the capability API's ``/infer/json``) gives them to
``kit.install(app, raw_routes={("POST", "/infer/json"): handler})``: those requests
go through the kit's own middleware (request ids, admission, metrics, API keys,
body limits) straight to ``handler(scope, receive, send)``, and everything else to
the FastAPI app as before. Errors raised before the response started are rendered
by the kit's one error mapping, like any route's; the routes are also added to the
FastAPI app (so ``GET`` gets its 405 there, and the app alone still serves them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from .gateway import GatewayKit

RawHandler = Callable[[Scope, Receive, Send], Awaitable[None]]


class _RawRoute:
    """What ``scope["route"]`` holds for a raw route (the metrics read its ``path``)."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


class RawDispatch:
    """The innermost app of the raw stack: the handler, and its errors as responses."""

    def __init__(self, routes: Mapping[tuple[str, str], RawHandler], kit: GatewayKit) -> None:
        self.routes = dict(routes)
        self.kit = kit
        self._route = {path: _RawRoute(path) for _, path in routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.routes[(scope["method"], scope["path"])]
        scope["route"] = self._route[scope["path"]]
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await handler(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            response = await self.kit._failed(Request(scope, receive), exc)
            await response(scope, receive, send)


class RawRoutes:
    """The outermost app: raw routes through ``stack``, everything else to ``app``."""

    def __init__(self, app: ASGIApp, stack: ASGIApp, routes: Mapping[tuple[str, str], RawHandler]) -> None:
        self.app = app
        self.stack = stack
        self.keys = frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["method"], scope["path"]) in self.keys:
            scope["app"] = self.app  # what the metrics look routes up in
            await self.stack(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def read_body(receive: Receive) -> bytes:
    """The whole request body (the kit's body limits apply on the way)."""
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        parts.append(message.get("body", b""))
    return b"".join(parts)


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def send_bytes(send: Send, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Endpoint:
    """``handler`` as an ASGI endpoint of the FastAPI app's router (a class instance, so
    Starlette calls it as ASGI rather than as a request/response function)."""

    def __init__(self, handler: RawHandler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)
