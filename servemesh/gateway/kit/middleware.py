"""The kit's pure ASGI middleware: request ids, admission control, request metrics.

Pure ASGI (not ``BaseHTTPMiddleware``) so a streamed body passes through untouched
and a client's disconnect still reaches the response's listener: the middleware
only wraps ``send`` to stamp the request id and see the status.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from typing import TYPE_CHECKING

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import describe

if TYPE_CHECKING:
    from . import GatewayKit

REQUEST_ID_HEADER = "x-request-id"
# ids from clients are echoed in a header and logged: keep them short and plain
_VALID_ID = re.compile(r"[A-Za-z0-9._:/=+\-]{1,128}")
#: the route label of requests no route matched
UNMATCHED = "unmatched"


def request_id_of(scope: Scope) -> str:
    """The client's ``X-Request-Id`` if it is a sensible one, else a new id."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _VALID_ID.fullmatch(text):
                return text
            break
    return new_request_id()


_ids = itertools.count(1)
_prefix: list[str] = []


def new_request_id() -> str:
    """A process-unique id (a random prefix per process and a counter): cheaper than a
    uuid4 on every request, and as good for finding a request in the logs."""
    if not _prefix:
        _prefix.append(uuid.uuid4().hex[:16])
    return f"{_prefix[0]}{next(_ids):06x}"


def route_of(scope: Scope) -> str:
    """The matched route's template (``/v2/models/{name}``): bounded label values."""
    route = scope.get("route")
    return str(getattr(route, "path", UNMATCHED)) if route is not None else UNMATCHED


def match_route(scope: Scope) -> str:
    """The template of the route a request would reach (for requests refused before routing)."""
    for route in getattr(getattr(scope.get("app"), "router", None), "routes", ()):
        if route.matches(scope)[0] is Match.FULL:
            return str(getattr(route, "path", UNMATCHED))
    return UNMATCHED


class KitMiddleware:
    def __init__(self, app: ASGIApp, kit: GatewayKit) -> None:
        self.app = app
        self.kit = kit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kit = self.kit
        rid = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = rid
        header = (b"x-request-id", rid.encode("latin-1"))
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        admitted = scope["path"] not in kit.exempt
        if admitted and kit.inflight >= kit.max_inflight:
            await kit.respond(kit.overloaded(), scope, receive, send_with_id)
            kit.metrics.observe(match_route(scope), 429, time.perf_counter() - started)
            return
        if admitted:
            kit.inflight += 1
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # unhandled: answer in the surface's shape (the server logs the traceback)
            if not response_started:
                await kit.respond(describe(exc), scope, receive, send_with_id)
            raise
        finally:
            if admitted:
                kit.inflight -= 1
            kit.metrics.observe(route_of(scope), status, time.perf_counter() - started)

