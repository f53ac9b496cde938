"""The socket's own limits, below ASGI: open connections and the time to a request's head.

uvicorn bounds neither: a connection that sends nothing, or a head one byte at a
time (slowloris), is kept forever, and ``limit_concurrency`` answers only once a
request arrived. :class:`GuardedHttpToolsProtocol` is uvicorn's httptools protocol (the
C parser: what servers use) plus :class:`ConnectionGuard`'s rules;
:class:`GuardedH11Protocol` is the same on uvicorn's pure-Python h11 protocol (where
httptools is not installed):

- a connection waiting for a request's head (new, or idle between keep-alive
  requests) must complete it within ``header_timeout``: a partial head is answered
  with 408, a silent connection is closed;
- beyond ``max_connections`` the oldest connection that waits for a head is closed
  to make room (idle sockets never lock new clients out, busy ones are never
  touched); when every connection is busy the new one gets a 503 with
  ``Retry-After`` and is closed;
- a malformed request gets its 400 in the surface's shape, and the log line about
  it is throttled.

Whether a head is pending is h11's own state (``their_state is IDLE``); with httptools,
the count of heads parsed against responses completed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    import httptools  # noqa: F401  # uvicorn's httptools protocol needs it
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is a dependency; h11 remains the fallback
    HttpToolsProtocol = None  # type: ignore[assignment, misc]

from ..log import Throttled
from .limits import HttpLimits
from .shape import Shape, raw_error

log = Throttled(logging.getLogger("servemesh.http"))
#: seconds a connection answered with an error (408, 400, 503) is kept half-closed,
#: reading and dropping what the client still sends, before it is closed
LINGER = 1.0

#: seconds a client refused for want of a connection should wait
RETRY_AFTER = 1


class ConnectionGuard:
    """One server's connections: how many are open, which wait for a head (oldest first)."""

    def __init__(self, limits: HttpLimits, shape: Shape) -> None:
        self.limits = limits
        self.shape = shape
        self.open = 0
        self.waiting: dict[_Guarded, None] = {}  # insertion order: oldest first
        #: connections closed to make room / refused with a 503 / dropped for a slow head
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0
        self.refusal = raw_error(shape, 503, f"the server is at its limit of {limits.max_connections} open "
                                 "connections; retry later", "service_unavailable", "too_many_connections",
                                 headers={"Retry-After": str(RETRY_AFTER)})
        self.slow_head = raw_error(shape, 408, f"the request head did not arrive within {limits.header_timeout:g} s",
                                   "invalid_request_error", "request_timeout")

    def make_room(self) -> bool:
        """Close the oldest connection waiting for a head; False if every one is busy."""
        while self.waiting:
            oldest = next(iter(self.waiting))
            self.waiting.pop(oldest)
            if not oldest.transport.is_closing():
                self.evicted += 1
                oldest.drop()
                return True
        return False


class _Guarded:
    """The guard's rules on a uvicorn HTTP/1.1 protocol (mixed in before it); the protocol
    says whether the client owes a head (``_owing``) and whether one is half sent
    (``_partial_head``)."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    client: tuple[str, int] | None

    def _guard_init(self, guard: ConnectionGuard) -> None:
        self.guard = guard
        self._counted = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._lingering = False

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        guard = self.guard
        guard.open += 1
        self._counted = True
        if guard.open > guard.limits.max_connections and not guard.make_room():
            guard.refused += 1
            log.warning("refused", "refused a connection: %d open connections is the limit "
                        "(SERVEMESH_HTTP_MAX_CONNECTIONS)", guard.limits.max_connections)
            self.transport.write(guard.refusal)
            self.drop(linger=True)
            return
        self._await_head()

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # answered and closing: what still arrives is read and dropped
            return
        super().data_received(data)  # type: ignore[misc]
        if self.transport.is_closing():
            return
        if not self._owing():
            self._head_arrived()
        elif self._head_timer is None:  # a keep-alive connection's next request has begun
            self._await_head()
            self._head_bytes = len(data)
        else:
            self._head_bytes += len(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if self.transport.is_closing():
            return
        if self._owing():
            self._await_head()  # idle keep-alive: the next head is due within the header timeout
        else:
            self._head_arrived()  # a pipelined request was already waiting

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # type: ignore[misc]
        self._head_arrived()
        self._release()

    # -- uvicorn's hooks -----------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        log.warning("invalid", "invalid HTTP request received from %s", self.client[0] if self.client else "?")
        self.transport.write(raw_error(self.guard.shape, 400, "the request is not valid HTTP/1.1",
                                       "invalid_request_error", "invalid_http"))
        self.drop(linger=True)

    # -- the guard's rules ---------------------------------------------------------------------
    def _await_head(self) -> None:
        self.guard.waiting.pop(self, None)
        self.guard.waiting[self] = None
        self._head_bytes = 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.guard.limits.header_timeout, self._head_too_slow)

    def _head_arrived(self) -> None:
        self.guard.waiting.pop(self, None)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _owing(self) -> bool:
        """No request is being served, and the client owes one: a head, or the rest of a body
        that was answered without being read."""
        raise NotImplementedError

    def _partial_head(self) -> bool:
        """Part of a request head arrived (not yet all of it)."""
        raise NotImplementedError

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._owing():
            return
        self.guard.timed_out += 1
        if self._head_bytes and self._partial_head():
            # part of a head came: say why; a silent or idle connection just closes
            log.warning("slow head", "dropped a connection whose request head took over %g s "
                        "(SERVEMESH_HTTP_HEADER_TIMEOUT)", self.guard.limits.header_timeout)
            self.transport.write(self.guard.slow_head)
            self.drop(linger=True)
            return
        self.drop()

    def drop(self, linger: bool = False) -> None:
        """Close the connection now (what was written is still sent). ``linger``: after an
        error answer to a client that may still be sending, close our side first and read
        (and drop) what arrives for up to ``LINGER`` seconds: closing a socket with unread
        data makes the kernel reset the connection, which can destroy the answer before
        the client reads it."""
        self._head_arrived()
        self._release()
        transport = self.transport
        if linger and not transport.is_closing() and transport.can_write_eof():
            self._lingering = True
            transport.write_eof()
            self.loop.call_later(LINGER, transport.close)
            return
        transport.close()

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self.guard.open -= 1


class GuardedHttpToolsProtocol(_Guarded, HttpToolsProtocol):  # type: ignore[misc, valid-type]
    """``functools.partial(GuardedHttpToolsProtocol, guard=guard)`` is uvicorn's ``http``
    class (httptools: the C parser)."""

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard_init(guard)
        #: heads parsed, responses completed, and whether the last request's body is still coming
        self._heads = 0
        self._answered = 0
        self._in_body = False

    # -- httptools' callbacks ------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self._heads += 1
        self._in_body = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._answered += 1
        super().on_response_complete()

    def _unsupported_upgrade_warning(self) -> None:
        """An ``Upgrade`` (none is supported) is answered as a plain request, without a log
        line each time; httptools parses nothing after it, so the connection then closes."""
        if self.cycle is not None:
            self.cycle.keep_alive = False

    def _owing(self) -> bool:
        # every head parsed was answered: the next head is due (or the rest of a body that
        # was answered without being read)
        return self._heads == self._answered

    def _partial_head(self) -> bool:
        return not self._in_body


class GuardedH11Protocol(_Guarded, H11Protocol):
    """``functools.partial(GuardedH11Protocol, guard=guard)`` is uvicorn's ``http`` class
    (h11: pure Python, the fallback without httptools)."""

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard_init(guard)

    def _owing(self) -> bool:
        state = self.conn.their_state
        if state is h11.IDLE:
            return True
        return state is h11.SEND_BODY and self.cycle is not None and self.cycle.response_complete

    def _partial_head(self) -> bool:
        return self.conn.their_state is h11.IDLE


#: the guarded protocol servers use: httptools where it is installed, else h11
GuardedProtocol: type[_Guarded] = GuardedHttpToolsProtocol if HttpToolsProtocol is not None else GuardedH11Protocol
