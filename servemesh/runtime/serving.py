"""The serving path, one for every transport: admit, validate, run, account, map errors.

A ``Call`` is the server side of one stream. Remote transports run it in a task
they own (``drive.drive``) and turn what it yields into frames; the in-process
transport hands its ``items`` straight to the caller, so a local call runs the
handler in the caller's task with no serialisation and no task hop.
Either way the same code admits the request, validates it, takes the unary fast
path, keeps the endpoint's accounting and maps the handler's errors
(``errortable``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import InstanceUnavailable, Overloaded, ServemeshError, ValidationError
from .annotated import Annotated
from .context import Context
from .errortable import as_servemesh_error
from .handler import AdaptedHandler
from .metrics import EndpointMetrics
from .ready import Resumed, interrupt_parked
from .tasks import TaskSet

if TYPE_CHECKING:
    from . import _relay

Relay: type[_relay.Relay] | None
try:  # the per-item step of in-process calls in C (built with the package where it can be)
    from ._relay import Relay
except ImportError:  # no compiler where it was installed: the same path in Python (``Call._items``)
    Relay = None

log = logging.getLogger("servemesh.serving")


class Items(Protocol):
    """What ``Call.items`` returns: an async iterator that can be closed early."""

    def __aiter__(self) -> AsyncIterator[Any]: ...

    def __anext__(self) -> Awaitable[Any]: ...

    def aclose(self) -> Awaitable[None]: ...

#: what ``Call.items`` yields: handler items as they are, their data, or ``Annotated``
RAW, DATA, ANNOTATED = 0, 1, 2


class ServedEndpoint:
    """An endpoint this process serves, with its in-flight accounting."""

    def __init__(self, path: str, adapted: AdaptedHandler, max_concurrency: int,
                 metrics: EndpointMetrics, instance_id: int = 0) -> None:
        self.path = path
        self.adapted = adapted
        self.max_concurrency = max_concurrency
        self.metrics = metrics
        self.instance_id = instance_id
        self.accepting = True
        self.inflight = 0
        #: what ``drained`` waits on; made only while someone waits (``Call.finish`` wakes it)
        self.idle: asyncio.Future[None] | None = None

    def admit(self) -> None:
        """Raise why a new stream must be refused now (``InstanceUnavailable`` while
        shutting down, ``Overloaded`` when full); the caller may try another instance."""
        if not self.accepting:
            raise InstanceUnavailable(self.instance_id, "this instance", f"{self.path} is shutting down")
        if self.inflight >= self.max_concurrency:
            raise Overloaded(self.path, self.max_concurrency)

    def wake(self) -> None:
        """No stream is in flight any more: ``drained`` returns."""
        idle, self.idle = self.idle, None
        if idle is not None and not idle.done():
            idle.set_result(None)

    async def drained(self) -> None:
        """Return once no stream of this endpoint is in flight."""
        while self.inflight:
            if self.idle is None:
                self.idle = asyncio.get_running_loop().create_future()
            await asyncio.shield(self.idle)


class Call:
    """One request being served. Creating it admits and validates the request (raising
    the refusal or ``ValidationError``, accounted); then one of ``one()`` (a unary
    handler, in process), ``items()`` or ``start()`` / ``drive.drive`` runs the handler, exactly once."""

    __slots__ = ("_closing", "_ctx", "_handler", "_interrupt", "_scoped", "_task", "_tasks", "closed", "ep",
                 "interruptible", "on_close", "outcome", "request", "started")

    def __init__(self, ep: ServedEndpoint, payload: Any, ctx: Context | None) -> None:
        if not ep.accepting or ep.inflight >= ep.max_concurrency:
            ep.admit()  # raises the refusal
        self.ep = ep
        #: None: a fresh one is made if the handler asks for it (an in-process call
        #: without a caller's context, to a handler that takes none, never makes one)
        self._ctx = ctx
        self.closed = False
        self.outcome = "cancelled"
        self.on_close: Callable[[], None] | None = None
        self._handler: Any = None
        self._interrupt: ServemeshError | None = None
        self._task: asyncio.Task[Any] | None = None
        self._scoped = False
        #: something may call ``interrupt`` (a remote call, or a local one with a context)
        self.interruptible = True
        self._closing: asyncio.Task[Any] | None = None
        #: where an interrupted in-process call closes its handler (set by that transport)
        self._tasks: TaskSet | None = None
        self.started = time.perf_counter()
        ep.inflight += 1  # (taken back in ``finish``)
        ep.metrics.inflight += 1
        adapted = ep.adapted
        validate = adapted.validate
        if validate is None or type(payload) is adapted.exact:
            self.request = payload
            return
        try:
            self.request = validate(payload)
        except BaseException as exc:
            self.finish("invalid" if isinstance(exc, ValidationError) else "error")
            raise

    #: refusals are raised when the call is created, never after
    refusable = False

    @property
    def ctx(self) -> Context:
        """The handler's context."""
        ctx = self._ctx
        if ctx is None:
            ctx = self._ctx = Context()
        return ctx

    @property
    def unary_handler(self) -> bool:
        return self.ep.adapted.unary is not None

    async def one(self) -> Any:
        """The data of a unary handler's one item (``unary_handler``), awaited in the
        caller's task: what ``items(DATA)`` yields, without a generator to make and close
        (``Client.one``'s in-process path). Interrupts and errors as in ``items``."""
        unary = self.ep.adapted.unary
        assert unary is not None
        if self.interruptible:
            self._task = asyncio.current_task()
        plain = self.ep.adapted.plain
        self._scoped = True  # an interrupt now ends the wait below
        try:
            item = await (plain(self.request) if plain is not None else unary(self.request, self.ctx))
        except BaseException as exc:
            raise self._failed(exc) from cause_of(exc)
        self._scoped = False
        self.finish("ok")
        return item if item.__class__ is not Annotated else item._data

    def start(self) -> Any:
        """Start a generator handler and return its async generator (remote transports
        iterate it themselves; map its errors with ``fail`` and end with ``finish``)."""
        adapted = self.ep.adapted
        plain = adapted.plain
        handler = self._handler = plain(self.request) if plain is not None else adapted.call(self.request, self.ctx)
        return handler

    def fail(self, exc: BaseException) -> BaseException:
        """What the caller sees for ``exc`` out of the handler (closes the accounting)."""
        return self._failed(exc)

    def items(self, mode: int = RAW) -> Items:
        """The handler's items (``mode``: RAW, DATA or ANNOTATED), ending with its errors
        mapped, for the caller's task to iterate (in-process calls). A generator
        handler's items come through the C relay where it is built (``_relay.c``: no
        frame of ours per item), else through ``_items``; both keep the same accounting,
        interrupts and error mapping (the relay calls back the ``_relay_*`` methods)."""
        adapted = self.ep.adapted
        if adapted.unary is not None or Relay is None:
            return self._items(mode)
        try:
            handler = self.start()
        except BaseException as exc:  # the handler could not even start
            return self._raising(exc)
        return Relay(self, handler, mode, Annotated, self.interruptible)  # type: ignore[no-any-return]

    async def _raising(self, exc: BaseException) -> AsyncGenerator[Any, None]:
        raise self._failed(exc) from cause_of(exc)
        yield  # (an async generator)

    # -- the relay's calls back (see _relay.c) --------------------------------------
    def _relay_started(self) -> None:
        self._task = asyncio.current_task()

    def _relay_end(self, exc: BaseException | None) -> Awaitable[None] | None:
        """The handler ended (``exc`` None) or raised ``exc``: None if the stream is over
        now, else what the last read finishes with."""
        if exc is None and self._closing is None and self._interrupt is None:
            self.finish("ok")
            return None
        return self._relay_tail(exc)

    async def _relay_tail(self, exc: BaseException | None) -> None:
        if exc is None:
            try:
                if self._closing is not None:
                    await asyncio.shield(self._closing)
                if self._interrupt is not None:  # the handler was closed by ``interrupt``
                    raise self._interrupt
            except GeneratorExit:  # this read was abandoned (the relay's close())
                raise
            except BaseException as failure:
                raise self._failed(failure) from cause_of(failure)
            self.finish("ok")
            return
        try:  # the handler failed, or the caller's task was cancelled: let it clean up now
            await self._close_handler()
        except GeneratorExit:
            raise
        except BaseException as failure:
            exc = failure
        if isinstance(exc, GeneratorExit):  # thrown in by a caller closing the stream
            self.ctx.stop_generating()
            self.finish("cancelled")
            raise exc
        raise self._failed(exc) from cause_of(exc)

    async def _relay_aclose(self) -> None:
        """The caller closed the stream before its end."""
        if self.closed:
            return
        try:
            await self._close_handler()
        except BaseException as exc:
            raise self._failed(exc) from cause_of(exc)
        self.ctx.stop_generating()
        self.finish("cancelled")

    def _relay_dropped(self, started: bool) -> None:
        """The caller dropped the stream before its end (``break``). Called by the
        relay's finalizer, so it only schedules: as the event loop does for an async
        generator dropped half-way, a handler that ran is closed in a task (here, of the
        runtime), then the call is accounted as cancelled."""
        if self.closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop runs here: account it now (nothing can run a cleanup)
            self._dropped()
            return
        if started and self._handler is not None and self._tasks is not None:
            loop.call_soon_threadsafe(self._close_dropped)
        else:
            loop.call_soon_threadsafe(self._dropped)

    def _close_dropped(self) -> None:
        if self._tasks is not None:
            self._tasks.spawn(self._aclose_dropped(), name=f"close {self.ep.path}")

    async def _aclose_dropped(self) -> None:
        handler = self._handler
        try:
            if self._closing is not None:  # ``interrupt`` is closing it already
                await asyncio.shield(self._closing)
            elif handler is not None and not handler.ag_running:  # (running: the loop's own
                await handler.aclose()  # hook closes a handler collected in the same cycle)
        except Exception as exc:  # its cleanup failed; nobody reads this stream any more
            log.debug("closing %s raised %r", self.ep.path, exc)
        self._dropped()

    def _dropped(self) -> None:
        if not self.closed:
            if self._ctx is not None:
                self._ctx.stop_generating()
            self.finish("cancelled")

    async def _items(self, mode: int = RAW) -> AsyncGenerator[Any, None]:
        """``items`` as a Python generator (unary handlers, or where the relay is not built)."""
        if self.interruptible:
            self._task = asyncio.current_task()
        adapted = self.ep.adapted
        plain = adapted.plain
        try:
            unary = adapted.unary
            if unary is not None:
                self._scoped = True  # an interrupt now ends the wait below
                item = await (plain(self.request) if plain is not None else unary(self.request, self.ctx))
                self._scoped = False
                if mode == DATA:
                    yield item if item.__class__ is not Annotated else item._data
                elif mode == ANNOTATED:
                    yield item if type(item) is Annotated else Annotated(item)
                else:
                    yield item
            else:
                handler = self.start()
                try:
                    # three copies of one loop: the per-item cost is the point of this path
                    if mode == DATA:
                        async for item in handler:
                            yield item if item.__class__ is not Annotated else item._data
                    elif mode == ANNOTATED:
                        async for item in handler:
                            yield item if type(item) is Annotated else Annotated(item)
                    else:
                        async for item in handler:
                            yield item
                except BaseException:  # the caller left, or the handler failed: let it clean up now
                    await self._close_handler()
                    raise
                if self._closing is not None:
                    await asyncio.shield(self._closing)
                if self._interrupt is not None:  # the handler was closed by ``interrupt``
                    raise self._interrupt
            self.finish("ok")
        except GeneratorExit:
            self.ctx.stop_generating()
            self.finish("cancelled")
            raise
        except BaseException as exc:
            raise self._failed(exc) from cause_of(exc)

    def _failed(self, exc: BaseException) -> BaseException:
        """What the caller sees for ``exc`` out of the handler; closes the accounting."""
        if isinstance(exc, asyncio.CancelledError):
            task = self._task
            if self._scoped and self._interrupt is not None and task is not None and task.uncancel() == 0:
                # the cancellation was this stream's own interrupt (see ``interrupt``)
                self.finish("cancelled")
                return self._interrupt
            self.ctx.stop_generating()
            self.finish("cancelled")
            return exc
        if self._interrupt is not None:  # whatever the closed handler raised after that
            self.finish("cancelled")
            return self._interrupt
        mapped = as_servemesh_error(exc, self.ep.path)
        if isinstance(exc, ValidationError):
            self.finish("invalid")
        else:
            if not isinstance(exc, ServemeshError):
                log.debug("handler %s raised %r", self.ep.path, exc, exc_info=exc)
            self.finish("error")
        return mapped

    def interrupt(self, exc: ServemeshError) -> None:
        """Stop the handler and make the caller see ``exc`` (context stopped, deadline).

        For an in-process call the handler runs in the caller's task. If that task is
        waiting inside the handler now, the wait is ended the way ``asyncio.timeout``
        ends one: a cancellation scoped to this stream's own frame, taken back
        (``uncancel``) where the stream catches it, so it never escapes to the
        caller's code. If the handler is parked at a ``yield``, it is closed now (its
        cleanup finishing in a task of the runtime if it awaits), and the caller sees
        ``exc`` on its next read."""
        if self.closed or self._interrupt is not None:
            return
        self._interrupt = exc
        self.ctx.stop_generating()
        handler = self._handler
        running = self._scoped or (handler is not None and handler.ag_running)
        if running and self._task is not None:
            self._scoped = True
            if not interrupt_parked(self._task):  # a read paused by ready_batches ends at once
                self._task.cancel(msg=str(exc))
        elif handler is not None and self._closing is None:
            self._close_parked(handler)

    def _close_parked(self, handler: Any) -> None:
        """Close a handler parked at a ``yield``: at once if its cleanup does not await,
        else the rest of the cleanup runs in a task of the runtime."""
        closing = handler.aclose()
        try:
            first = closing.send(None)
        except StopIteration:
            return
        except BaseException as exc:  # the cleanup raised: nothing left to run
            log.debug("closing %s raised %r", self.ep.path, exc)
            return
        if self._tasks is None:
            closing.close()
            return
        self._closing = self._tasks.spawn(_finish(Resumed(closing, first)), name=f"close {self.ep.path}")

    async def _close_handler(self) -> None:
        closing = self._closing
        if closing is not None:
            await asyncio.shield(closing)
        elif self._handler is not None:
            await self._handler.aclose()

    def cancel(self) -> None:
        """The caller left without closing: stop the handler's work and the accounting
        (started ``items`` are finalised when dropped: the relay by itself, the Python
        generator by the event loop)."""
        self.ctx.stop_generating()
        if self._handler is None and not self._scoped:
            self.finish("cancelled")

    async def aclose(self) -> None:
        """The caller closes the stream: close a handler parked at a ``yield`` now."""
        self.ctx.stop_generating()
        if self.closed:
            return
        handler = self._handler
        if handler is not None and not handler.ag_running and not self._scoped:
            await self._close_handler()
        if not self._scoped:
            self.finish("cancelled")

    def finish(self, outcome: str) -> None:
        """Close the endpoint's accounting of this stream (once)."""
        if not self.closed:
            self.closed = True
            self.outcome = outcome
            ep = self.ep
            ep.inflight -= 1
            if not ep.inflight and ep.idle is not None:
                ep.wake()
            ep.metrics.finished(outcome, time.perf_counter() - self.started)
            on_close = self.on_close
            if on_close is not None:
                self.on_close = None
                on_close()

    @property
    def finished(self) -> bool:
        return self.closed

    @property
    def interrupted(self) -> ServemeshError | None:
        return self._interrupt


async def _finish(resumed: Resumed) -> None:
    await resumed


def cause_of(exc: BaseException) -> BaseException | None:
    """What a mapped handler error is raised ``from``: the handler's own exception, not
    a cancellation or an error that is already servemesh's."""
    return None if isinstance(exc, (asyncio.CancelledError, ServemeshError)) else exc
