"""The event plane: fire-and-forget publish/subscribe between processes, beside the
request plane (``runtime.events``).

- ``NatsEvents``: NATS core pub/sub when ``Settings.nats`` is set, on a connection of
  its own (credentials and TLS as the request plane's, ``transport/nats_connect.py``);
- ``MemoryEvents``: an in-process bus, when discovery is a ``MemoryDiscovery``. The bus
  hangs on the discovery's ``MemoryStore``, so every runtime sharing one store (the
  embedded pipeline's engines, tests) shares one bus.

With etcd but no NATS there is no event plane: ``runtime.events`` is a ``ConfigError``.

Delivery is at most once and in publish order per publisher, with no history: a
subscriber that joins late builds its state from a snapshot, and one that lost events
(its bounded queue overflowed, the connection was cut) rebuilds it. Its
``Subscription`` says so by raising ``EventsLost`` from the iterator, once per loss,
and then goes on delivering what arrives after it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, Protocol

from ..config import Settings
from ..errors import ConfigError, EventsLost, FrameTooLarge, ServemeshError
from .tasks import TaskSet, within

if TYPE_CHECKING:
    from .discovery.base import Discovery
    from .discovery.memory import MemoryStore

log = logging.getLogger("servemesh.runtime.events")

_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_PLAIN = re.compile(r"[A-Za-z0-9-]")


def subject_token(text: str) -> str:
    """``text`` as one subject token: letters, digits and ``-`` stay, every other
    character (``_`` included) becomes ``_`` and the hex of its UTF-8 bytes, so two
    different texts never share a token (``Qwen/Qwen2.5`` -> ``Qwen_2fQwen2_2e5``)."""
    return "".join(c if _PLAIN.match(c) else "".join(f"_{b:02x}" for b in c.encode()) for c in text) or "_"


def check_subject(subject: str, *, wildcards: bool) -> str:
    """A subject: tokens of letters, digits, ``_`` and ``-`` joined by dots; a
    subscription may use NATS's wildcards (``*`` one token, ``>`` the rest)."""
    tokens = subject.split(".") if isinstance(subject, str) else []
    ok = bool(tokens) and all(
        _TOKEN.fullmatch(t) or (wildcards and (t == "*" or (t == ">" and i == len(tokens) - 1)))
        for i, t in enumerate(tokens))
    if not ok:
        what = "tokens of letters, digits, '_' and '-' joined by '.'" + (" ('*' and a last '>' allowed)"
                                                                          if wildcards else "")
        raise ConfigError(f"event subject {subject!r} is invalid: use {what}")
    return subject


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether a subscription to ``pattern`` receives ``subject`` (NATS's rules)."""
    if "*" not in pattern and ">" not in pattern:
        return pattern == subject
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


class Subscription:
    """The events of one subject, as an async iterator of ``bytes``.

    At most ``max_pending`` events wait to be read; when one more arrives they are all
    dropped and the next read raises ``EventsLost`` (the reader resynchronises and
    reads on). ``await sub`` (or ``await sub.ready()``) returns once the subscription
    is in place, so that whatever is published afterwards arrives; iterating waits for
    that too. ``close()`` ends the iteration."""

    __slots__ = ("_detach", "_dropped", "_error", "_lost", "_queue", "_ready", "_waiter", "closed", "lost",
                 "max_pending", "received", "subject")

    def __init__(self, subject: str, max_pending: int,
                 detach: Callable[[Subscription], Awaitable[None]]) -> None:
        if max_pending < 1:
            raise ConfigError(f"max_pending must be at least 1, not {max_pending}")
        self.subject = subject
        self.max_pending = max_pending
        self.closed = False
        #: events delivered to this subscription, and losses reported (for stats)
        self.received = 0
        self.lost = 0
        self._detach = detach
        self._queue: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ready.add_done_callback(_retrieve)
        self._dropped = 0
        self._lost: str | None = None
        self._error: BaseException | None = None

    # -- the backend's side -----------------------------------------------------------
    def _started(self) -> None:
        if not self._ready.done():
            self._ready.set_result(None)

    def _failed(self, exc: BaseException) -> None:
        """The subscription could not be made (or was refused): reads raise ``exc``."""
        if self.closed:
            return
        self._error = exc
        if not self._ready.done():
            self._ready.set_exception(exc)
        self._wake()

    def _put(self, data: bytes) -> None:
        if self.closed:
            return
        self.received += 1
        if len(self._queue) >= self.max_pending:
            self._dropped += len(self._queue) + 1
            self._queue.clear()
            self._lost = f"more than {self.max_pending} events waited to be read (a slow subscriber)"
        else:
            self._queue.append(data)
        self._wake()

    def _lose(self, reason: str) -> None:
        """Events may have been lost upstream (a connection cut): tell the reader."""
        if not self.closed:
            self._lost = reason
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the subscriber's side ---------------------------------------------------------
    @property
    def pending(self) -> int:
        """Events received and not read yet."""
        return len(self._queue)

    async def ready(self) -> Subscription:
        await self._ready
        return self

    def __await__(self) -> Generator[Any, None, Subscription]:
        return self.ready().__await__()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> bytes:
        if not self._ready.done():
            await self._ready
        while True:
            if self.closed:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            if self._lost is not None:
                reason, dropped = self._lost, self._dropped
                self._lost, self._dropped = None, 0
                self.lost += 1
                raise EventsLost(self.subject, dropped, reason)
            if self._queue:
                return self._queue.popleft()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        self._started()  # a reader still waiting for the subscription to be in place ends too
        self._wake()
        await self._detach(self)

    def __repr__(self) -> str:
        return f"Subscription({self.subject!r}, pending={len(self._queue)}, closed={self.closed})"


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # a failure nobody awaited is not "never retrieved"


class EventPlane(Protocol):
    """What ``runtime.events`` is."""

    kind: str

    async def publish(self, subject: str, data: bytes) -> None: ...

    def subscribe(self, subject: str, *, max_pending: int = 4096) -> Subscription: ...

    async def close(self) -> None: ...


# -- in process ---------------------------------------------------------------------------
class MemoryBus:
    """The subscriptions of every runtime on one ``MemoryStore``; delivery is a call."""

    def __init__(self) -> None:
        self.subscriptions: list[Subscription] = []

    def publish(self, subject: str, data: bytes) -> None:
        for sub in self.subscriptions:
            if subject_matches(sub.subject, subject):
                sub._put(data)


def memory_bus(store: MemoryStore) -> MemoryBus:
    """The bus of ``store`` (made on first use)."""
    if store.bus is None:
        store.bus = MemoryBus()
    return store.bus


class MemoryEvents:
    """The in-process event plane of one runtime, on its store's shared bus."""

    kind = "memory"

    def __init__(self, bus: MemoryBus, max_payload: int) -> None:
        self.bus = bus
        self.max_payload = max_payload
        self.closed = False
        self._mine: set[Subscription] = set()

    async def publish(self, subject: str, data: bytes) -> None:
        _check_open(self.closed)
        check_subject(subject, wildcards=False)
        if len(data) > self.max_payload:
            raise FrameTooLarge(len(data), self.max_payload)
        self.bus.publish(subject, bytes(data))

    def subscribe(self, subject: str, *, max_pending: int = 4096) -> Subscription:
        _check_open(self.closed)
        sub = Subscription(check_subject(subject, wildcards=True), max_pending, self._detach)
        self.bus.subscriptions = [*self.bus.subscriptions, sub]  # a copy: publish may be iterating
        self._mine.add(sub)
        sub._started()
        return sub

    async def _detach(self, sub: Subscription) -> None:
        self._mine.discard(sub)
        self.bus.subscriptions = [s for s in self.bus.subscriptions if s is not sub]

    @property
    def subscriptions(self) -> int:
        return len(self._mine)

    async def close(self) -> None:
        self.closed = True
        for sub in list(self._mine):
            await sub.close()


# -- over NATS ----------------------------------------------------------------------------
class NatsEvents:
    """NATS core pub/sub on a connection of its own, opened on first use."""

    kind = "nats"

    def __init__(self, settings: Settings, instance_id: int, tasks: TaskSet) -> None:
        self.settings = settings
        self.instance_id = instance_id
        self.closed = False
        self._tasks = tasks
        self._lock = asyncio.Lock()
        self._nc: Any = None
        #: every open subscription, with nats-py's once it is in place
        self._subs: dict[Subscription, Any] = {}

    async def _connection(self) -> Any:
        async with self._lock:
            _check_open(self.closed)
            if self._nc is None:
                from .transport.nats_connect import connect

                assert self.settings.nats is not None
                self._nc = await connect(self.settings.nats, f"servemesh-events-{self.instance_id:x}",
                                         self.settings.connect_timeout, on_back=self._back,
                                         settings=self.settings, on_denied=self._denied)
            return self._nc

    def _back(self) -> None:
        # whatever was published while the connection was down never reached us
        for sub in self._subs:
            sub._lose("the NATS connection was cut and re-established")

    def _denied(self, action: str, subject: str) -> None:
        if action == "publish":
            log.warning("NATS does not let this process publish events to %s: give its user publish "
                        "permission there (docs/security.md)", subject)
            return
        for sub in list(self._subs):
            if sub.subject == subject:
                self._subs.pop(sub, None)
                sub._failed(ConfigError(f"NATS does not let this process subscribe to {subject}: give its user "
                                        "subscribe permission there (docs/security.md)"))

    async def publish(self, subject: str, data: bytes) -> None:
        check_subject(subject, wildcards=False)
        nc = await self._connection()
        if len(data) > nc.max_payload:
            raise FrameTooLarge(len(data), nc.max_payload)
        try:
            await nc.publish(subject, data)
        except Exception as exc:  # closed, or reconnecting with a full buffer
            raise EventsLost(subject, 1, f"the NATS publish failed: {exc!r}") from exc

    def subscribe(self, subject: str, *, max_pending: int = 4096) -> Subscription:
        _check_open(self.closed)
        sub = Subscription(check_subject(subject, wildcards=True), max_pending, self._detach)
        self._subs[sub] = None
        self._tasks.spawn(self._subscribe(sub), name=f"events-subscribe {subject}")
        return sub

    async def _subscribe(self, sub: Subscription) -> None:
        try:
            nc = await self._connection()

            async def deliver(msg: Any) -> None:
                sub._put(msg.data)

            handle = await nc.subscribe(sub.subject, cb=deliver)
            # once the server has answered a PING sent after the SUB, it has the subscription
            await within(nc.flush(), self.settings.connect_timeout)
        except Exception as exc:
            self._subs.pop(sub, None)
            sub._failed(exc if isinstance(exc, ServemeshError) else
                        EventsLost(sub.subject, 0, f"subscribing over NATS failed: {exc!r}"))
            return
        if sub.closed or sub not in self._subs:
            await _unsubscribe(handle)
            return
        self._subs[sub] = handle
        sub._started()

    async def _detach(self, sub: Subscription) -> None:
        handle = self._subs.pop(sub, None)
        if handle is not None:
            await _unsubscribe(handle)

    @property
    def subscriptions(self) -> int:
        return len(self._subs)

    async def close(self) -> None:
        self.closed = True
        for sub in list(self._subs):
            await sub.close()
        async with self._lock:
            nc, self._nc = self._nc, None
        if nc is not None:
            try:
                await within(nc.close(), self.settings.connect_timeout)
            except Exception as exc:
                log.debug("closing the events connection: %r", exc)


async def _unsubscribe(handle: Any) -> None:
    try:
        await handle.unsubscribe()
    except Exception as exc:  # the connection is closing or closed: the subscription goes with it
        log.debug("unsubscribe %s: %r", getattr(handle, "subject", "?"), exc)


def _check_open(closed: bool) -> None:
    if closed:
        raise ServemeshError("the event plane is closed (its runtime shut down)")


def make_events(settings: Settings, discovery: Discovery, instance_id: int, tasks: TaskSet) -> EventPlane:
    """The event plane a runtime with these settings and discovery has."""
    from .discovery.memory import MemoryDiscovery

    if isinstance(discovery, MemoryDiscovery):  # every peer is in this process: a call reaches it
        return MemoryEvents(memory_bus(discovery.store), settings.max_payload)
    if settings.nats:
        return NatsEvents(settings, instance_id, tasks)
    raise ConfigError("the event plane needs NATS when discovery is etcd: set SERVEMESH_NATS (or run "
                      "`servemesh up`, which starts one)")


__all__ = ["EventPlane", "MemoryBus", "MemoryEvents", "NatsEvents", "Subscription", "check_subject",
           "make_events", "memory_bus", "subject_matches", "subject_token"]
