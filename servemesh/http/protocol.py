"""The socket's own limits, below ASGI: open connections and the time to a request's head.

uvicorn bounds neither: a connection that sends nothing, or a head one byte at a
time (slowloris), is kept forever, and ``limit_concurrency`` answers only once a
request arrived. :class:`GuardedH11Protocol` is uvicorn's h11 protocol plus
:class:`ConnectionGuard`'s rules:

- a connection waiting for a request's head (new, or idle between keep-alive
  requests) must complete it within ``header_timeout``: a partial head is answered
  with 408, a silent connection is closed;
- beyond ``max_connections`` the oldest connection that waits for a head is closed
  to make room (idle sockets never lock new clients out, busy ones are never
  touched); when every connection is busy the new one gets a 503 with
  ``Retry-After`` and is closed;
- a malformed request gets its 400 in the surface's shape, and the log line about
  it is throttled.

Whether a head is pending is h11's own state: ``their_state is IDLE``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..log import Throttled
from .limits import HttpLimits
from .shape import Shape, raw_error

log = Throttled(logging.getLogger("servemesh.http"))

#: seconds a client refused for want of a connection should wait
RETRY_AFTER = 1


class ConnectionGuard:
    """One server's connections: how many are open, which wait for a head (oldest first)."""

    def __init__(self, limits: HttpLimits, shape: Shape) -> None:
        self.limits = limits
        self.shape = shape
        self.open = 0
        self.waiting: dict[GuardedH11Protocol, None] = {}  # insertion order: oldest first
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


class GuardedH11Protocol(H11Protocol):
    """``functools.partial(GuardedH11Protocol, guard=guard)`` is uvicorn's ``http`` class."""

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        self._counted = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self.guard
        guard.open += 1
        self._counted = True
        if guard.open > guard.limits.max_connections and not guard.make_room():
            guard.refused += 1
            log.warning("refused", "refused a connection: %d open connections is the limit "
                        "(SERVEMESH_HTTP_MAX_CONNECTIONS)", guard.limits.max_connections)
            self.transport.write(guard.refusal)
            self.drop()
            return
        self._await_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
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
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self._owing():
            self._await_head()  # idle keep-alive: the next head is due within the header timeout
        else:
            self._head_arrived()  # a pipelined request was already waiting

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._head_arrived()
        self._release()

    # -- uvicorn's hooks -----------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        log.warning("invalid", "invalid HTTP request received from %s", self.client[0] if self.client else "?")
        self.transport.write(raw_error(self.guard.shape, 400, "the request is not valid HTTP/1.1",
                                       "invalid_request_error", "invalid_http"))
        self.drop()

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
        state = self.conn.their_state
        if state is h11.IDLE:
            return True
        return state is h11.SEND_BODY and self.cycle is not None and self.cycle.response_complete

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._owing():
            return
        self.guard.timed_out += 1
        if self._head_bytes and self.conn.their_state is h11.IDLE:
            # part of a head came: say why; a silent or idle connection just closes
            log.warning("slow head", "dropped a connection whose request head took over %g s "
                        "(SERVEMESH_HTTP_HEADER_TIMEOUT)", self.guard.limits.header_timeout)
            self.transport.write(self.guard.slow_head)
        self.drop()

    def drop(self) -> None:
        """Close the connection now (what was written is still sent)."""
        self._head_arrived()
        self._release()
        self.transport.close()

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self.guard.open -= 1
