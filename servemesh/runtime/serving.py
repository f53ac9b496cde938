"""Server side of a stream, shared by every transport: validate, run, stream, end."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from ..errors import Cancelled, DeadlineExceeded, Overloaded, ServemeshError, ValidationError
from .annotated import Annotated, unwrap
from .context import Context
from .handler import AdaptedHandler
from .metrics import EndpointMetrics

log = logging.getLogger("servemesh.serving")

#: errors a handler raises that reach its caller as themselves, not as RemoteError
PASSTHROUGH: dict[type[ServemeshError], str] = {
    ValidationError: "validation", DeadlineExceeded: "deadline", Cancelled: "cancelled",
    Overloaded: "overloaded",
}


class ResponseSink(Protocol):
    """Where a transport puts one stream's items. ``credit`` counts what may be sent."""

    credit: int

    def send(self, data: Any, event: str | None, comments: list[str] | None, id: str | None) -> None: ...

    async def wait_credit(self) -> None: ...

    def end(self) -> None: ...

    def final(self, data: Any, event: str | None, comments: list[str] | None, id: str | None) -> None:
        """Send the one item of a unary reply together with the end of the stream."""

    def error(self, kind: str, type_: str, message: str, field: str | None = None) -> None: ...


class ServedEndpoint:
    """An endpoint this process serves, with its in-flight accounting."""

    def __init__(self, path: str, adapted: AdaptedHandler, max_concurrency: int,
                 metrics: EndpointMetrics) -> None:
        self.path = path
        self.adapted = adapted
        self.max_concurrency = max_concurrency
        self.metrics = metrics
        self.accepting = True
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def validate(self, payload: Any) -> Any:
        validate = self.adapted.validate
        return payload if validate is None else validate(payload)

    def enter(self) -> None:
        self.inflight += 1
        self._idle.clear()
        self.metrics.started()

    def leave(self, outcome: str, started: float) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()
        self.metrics.finished(outcome, time.perf_counter() - started)

    async def drained(self) -> None:
        await self._idle.wait()

    def refusal(self) -> tuple[str, str] | None:
        """Why a new stream must be refused now, as (kind, message), or None."""
        if not self.accepting:
            return "unavailable", f"{self.path} is shutting down"
        if self.inflight >= self.max_concurrency:
            return "overloaded", f"{self.path} is at its limit of {self.max_concurrency} concurrent streams"
        return None


async def drive(ep: ServedEndpoint, payload: Any, ctx: Context, sink: ResponseSink) -> None:
    """Run one request to completion. Always ends the stream with ``end`` or ``error``,
    except when cancelled, where the cancellation propagates (the caller decides what
    the client is told)."""
    started = time.perf_counter()
    ep.enter()
    outcome = "error"
    try:
        try:
            request = ep.validate(payload)
        except ValidationError as exc:
            sink.error("validation", "ValidationError", exc.message, exc.field)
            outcome = "invalid"
            return
        try:
            unary = ep.adapted.unary
            if unary is not None:
                data, event, comments, id_ = unwrap(await unary(request, ctx))
                sink.final(data, event, comments, id_)
            else:
                await _stream(ep.adapted.call(request, ctx), sink)
        except asyncio.CancelledError:
            ctx.stop_generating()
            outcome = "cancelled"
            raise
        except Exception as exc:
            _report(ep, sink, exc)
            return
        outcome = "ok"
    finally:
        ep.leave(outcome, started)


async def _stream(agen: Any, sink: ResponseSink) -> None:
    """Send every item of a generator handler, waiting for credit, then the end."""
    try:
        async for item in agen:
            if sink.credit <= 0:
                await sink.wait_credit()
            if type(item) is Annotated:
                sink.send(item._data, item.event, item.comments, item.id)
            else:
                sink.send(item, None, None, None)
    finally:
        await agen.aclose()
    sink.end()


def _report(ep: ServedEndpoint, sink: ResponseSink, exc: Exception) -> None:
    """Tell the caller how the handler failed."""
    if isinstance(exc, ValidationError):  # a handler may validate further itself
        sink.error("validation", "ValidationError", exc.message, exc.field)
    elif isinstance(exc, ServemeshError):
        sink.error(PASSTHROUGH.get(type(exc), "remote"), type(exc).__name__, str(exc))
    else:
        log.debug("handler %s raised %r", ep.path, exc, exc_info=True)
        sink.error("remote", type(exc).__name__, str(exc))
