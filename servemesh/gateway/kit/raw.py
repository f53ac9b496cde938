"""Raw routes: a surface's hot paths as plain ASGI handlers, with the kit's rules inline.

A FastAPI route costs its share of dependency solving, request objects and layers of
framework middleware on every request; the kit's own middleware adds three more
layers, each wrapping ``receive`` and ``send``. A surface whose few hot routes must
be fast (the capability API's ``/infer/json``) hands them to
``kit.install(app, raw_routes={("POST", "/infer/json"): handler})``. :class:`RawLane`
then serves them in one layer that applies the same rules as the middleware:

- request ids (``X-Request-Id`` taken or made, echoed), admission (429 with
  ``Retry-After`` beyond ``max_inflight``), API keys (401), body size and time
  (413 / 408, ``http.limits.read_limited_body``), the request metrics;
- errors raised before the response started are rendered by the kit's one error
  mapping, in the surface's shape.

``handler(scope, body, receive, send)`` gets the whole body; everything else goes to
the FastAPI app as before. A path may hold ``{name}`` parameters (one path segment
each: ``/v2/models/{name}/infer``); their values are in ``scope["path_params"]``. The
routes are also added to the app (so ``GET`` gets its 405 there, and the app alone
still serves them, under the middleware).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...http.auth import open_paths
from ...http.limits import read_limited_body
from ...http.shape import send_error
from ...log import Throttled
from .middleware import request_id_of

if TYPE_CHECKING:
    from .gateway import GatewayKit

#: ``handler(scope, body, receive, send)``
RawHandler = Callable[[Scope, bytes, Receive, Send], Awaitable[None]]

throttled = Throttled(logging.getLogger("servemesh.gateway"))


class _RawRoute:
    """What ``scope["route"]`` holds for a raw route (the metrics read its ``path``)."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


class RawLane:
    """The server's app: raw routes served here, anything else by ``app``."""

    def __init__(self, app: ASGIApp, kit: GatewayKit, routes: Mapping[tuple[str, str], RawHandler]) -> None:
        self.app = app
        self.kit = kit
        self.routes = {key: h for key, h in routes.items() if "{" not in key[1]}
        #: (method, compiled template, template, handler) of the routes with parameters
        self.templates = [(method, _compile(path), path, h) for (method, path), h in routes.items() if "{" in path]
        self._route = {path: _RawRoute(path) for _, path in routes}
        self._open = open_paths(kit.metrics_public)

    def _match(self, scope: Scope) -> tuple[RawHandler | None, str]:
        method, path = scope["method"], scope["path"]
        handler = self.routes.get((method, path))
        if handler is not None:
            return handler, path
        for want, pattern, template, candidate in self.templates:
            found = pattern.match(path) if want == method else None
            if found is not None:
                scope["path_params"] = found.groupdict()
                return candidate, template
        return None, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler, path = self._match(scope) if scope["type"] == "http" else (None, "")
        if handler is None:
            await self.app(scope, receive, send)
            return
        kit = self.kit
        started = time.perf_counter()
        scope["route"] = self._route[path]
        scope["app"] = self.app
        rid = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = rid
        rid_header = (b"x-request-id", rid.encode("latin-1"))
        status = 499  # until something is sent: the client left
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        if kit.inflight >= kit.max_inflight:
            await kit.respond(kit.overloaded(), scope, receive, send_with_id)
            kit.metrics.observe(path, status, time.perf_counter() - started)
            return
        keys = kit.keys
        if keys.enabled and path not in self._open:
            header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
            if not keys.check(header):
                message = ("an API key is required: send `Authorization: Bearer <key>`" if header is None
                           else "the API key is not valid")
                await send_error(send_with_id, kit.shape, 401, message, "invalid_request_error", "invalid_api_key",
                                 headers={"WWW-Authenticate": "Bearer"})
                kit.metrics.observe(path, status, time.perf_counter() - started)
                return
        kit.inflight += 1
        try:
            body = await read_limited_body(scope, receive, send_with_id, kit.limits, kit.shape)
            if body is not None:
                await handler(scope, body, receive, send_with_id)
        except Exception as exc:
            if response_started:
                raise
            problem = kit.describe(exc, scope["state"].get("subject"))
            if problem.status >= 500:
                throttled.warning((problem.status, type(exc).__name__), "%s %s (request %s) failed: %s",
                                  scope["method"], path, rid, exc)
            await kit.respond(problem, scope, receive, send_with_id)
        finally:
            kit.inflight -= 1
            kit.metrics.observe(path, status, time.perf_counter() - started)



def _compile(template: str) -> re.Pattern[str]:
    """``/v2/models/{name}/infer`` as a pattern: each parameter is one non-empty segment."""
    parts = re.split(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", template)
    pattern = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)" for i, p in enumerate(parts))
    return re.compile(pattern + "$")


class Endpoint:
    """A raw handler as an ASGI endpoint of the FastAPI app's router (a class instance, so
    Starlette calls it as ASGI): the body is read under the app's middleware."""

    def __init__(self, handler: RawHandler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await self.handler(scope, b"".join(parts), receive, send)


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def send_bytes(send: Send, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
