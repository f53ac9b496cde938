"""``Client``: a live view of one endpoint's instances, and streams to them."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from ..errors import (
    Cancelled,
    DeadlineExceeded,
    InstanceUnavailable,
    NoInstancesError,
    Overloaded,
    ServemeshError,
)
from .annotated import Annotated
from .context import Context
from .records import InstanceRecord, capabilities_match, instance_prefix
from .routing import Random, RoundRobin, Router, make_router
from .serving import ANNOTATED, DATA, Call, Items, Relay
from .stream import RemoteStream
from .transport.base import ClientStream, Connector

if TYPE_CHECKING:
    from .component import Endpoint
    from .discovery.base import WatchHandle
    from .distributed import DistributedRuntime

log = logging.getLogger("servemesh.client")


class InstanceInfo(NamedTuple):
    id: int
    transport: dict[str, str]
    capabilities: dict[str, Any]


class Client:
    """Created by ``await endpoint.client(...)``. Watches discovery (never polls) and
    keeps the set of live instances whose capabilities match."""

    def __init__(self, runtime: DistributedRuntime, endpoint: Endpoint, router: str,
                 capabilities: dict[str, Any] | None) -> None:
        self.runtime = runtime
        self.endpoint = endpoint
        self.capabilities = dict(capabilities or {})
        self._router: Router = make_router(router)
        self._rr = RoundRobin()
        self._random = Random()
        self._instances: dict[int, InstanceRecord] = {}
        #: ``_instances``' ids as ``_choose`` hands them to a router (None: make them again)
        self._ids: tuple[int, ...] | None = None
        self._connectors: dict[int, tuple[InstanceRecord, Connector]] = {}
        self._quarantine: dict[int, float] = {}
        self._load: dict[int, int] = {}
        self._changed = asyncio.Event()
        self._watch: WatchHandle | None = None
        self._generation = 0
        self._listeners: list[Callable[[], None]] = []

    async def start(self) -> None:
        self._watch = await self.runtime.discovery.watch(self._prefix, self)

    @property
    def _prefix(self) -> str:
        e = self.endpoint
        return instance_prefix(e.namespace, e.component, e.name)

    # -- WatchSink ----------------------------------------------------------------
    def on_put(self, record: InstanceRecord) -> None:
        self._generation += 1
        self._ids = None
        if capabilities_match(record.capabilities, self.capabilities):
            self._instances[record.instance_id] = record
            self._quarantine.pop(record.instance_id, None)
        else:
            self._instances.pop(record.instance_id, None)
        self._changed.set()
        self._notify()

    def on_delete(self, key: str) -> None:
        try:
            iid = int(key.rsplit(":", 1)[1], 16)
        except (IndexError, ValueError):
            return
        self._generation += 1
        self._ids = None
        self._instances.pop(iid, None)
        self._quarantine.pop(iid, None)
        self._connectors.pop(iid, None)
        self._changed.set()
        self._notify()

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` each time discovery changes this client's instances (one
        appeared, changed or left), after the client took the change in; returns a
        function that stops it. Callbacks run in the discovery watch and must not block."""
        self._listeners.append(callback)

        def unlink() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unlink

    def _notify(self) -> None:
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:
                log.exception("an on_change callback of the client of %s failed", self.endpoint.path)

    # -- the live set ---------------------------------------------------------------
    def instance_ids(self) -> list[int]:
        return sorted(self._live())

    @property
    def generation(self) -> int | None:
        """A number that changes whenever the live set may have; ``None`` while an
        instance is quarantined (the set then also changes with time). What a caller
        derived from ``records()`` holds while this stays the same."""
        return None if self._quarantine else self._generation

    def records(self) -> Mapping[int, InstanceRecord]:
        """The live matching records by instance id, as they are now (do not change it).
        For callers that route themselves and then call ``direct``."""
        return self._live()

    def instances(self) -> list[InstanceInfo]:
        return [InstanceInfo(r.instance_id, dict(r.transport), dict(r.capabilities))
                for _, r in sorted(self._live().items())]

    def _live(self) -> dict[int, InstanceRecord]:
        if not self._quarantine:
            return self._instances
        now = time.monotonic()
        for iid, until in list(self._quarantine.items()):
            if until <= now:
                del self._quarantine[iid]
        return {i: r for i, r in self._instances.items() if i not in self._quarantine}

    def quarantine(self, instance_id: int) -> None:
        """Take an unreachable instance out of the live set until discovery re-announces
        it, or for one lease TTL (after which etcd would have dropped a dead one)."""
        if instance_id in self._instances and instance_id not in self._quarantine:
            log.info("instance %x of %s unreachable; routing around it", instance_id, self.endpoint.path)
        self._quarantine[instance_id] = time.monotonic() + self.runtime.settings.lease_ttl
        self._generation += 1

    async def wait_for_instances(self, timeout: float | None = None) -> list[int]:
        """Wait until at least one matching instance is live; ``NoInstancesError`` on timeout."""
        if not await self._wait_live(timeout):
            raise await self._no_instances(timeout or 0.0)
        return self.instance_ids()

    async def _wait_live(self, timeout: float | None) -> bool:
        """True once a matching instance is live, False after ``timeout`` seconds."""
        if self._live():
            return True
        if timeout is not None and timeout <= 0:
            return False
        try:
            async with asyncio.timeout(timeout):
                while not self._live():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return bool(self._live())
        return True

    async def _no_instances(self, waited: float = 0.0) -> NoInstancesError:
        e = self.endpoint
        try:
            records = await self.runtime.discovery.list(instance_prefix(e.namespace))
            known = sorted({r.path for r in records})
        except ServemeshError:
            known = []
        return NoInstancesError(e.path, known, self.capabilities or None, waited)

    # -- calls ------------------------------------------------------------------------
    def generate(self, request: Any, *, context: Context | None = None, annotated: bool = True,
                 router: Router | None = None) -> ResponseStream:
        """Stream the endpoint's response, routed by the client's router, or by ``router``
        for this call only (say a choice made for this one request; a failover asks it
        again, without the instances that failed).

        Use as ``async for item in client.generate(req)`` or
        ``stream = await client.generate(req)``."""
        return ResponseStream(self, request, context, annotated, self._router if router is None else router, None)

    def round_robin(self, request: Any, *, context: Context | None = None,
                    annotated: bool = True) -> ResponseStream:
        return ResponseStream(self, request, context, annotated, self._rr, None)

    def random(self, request: Any, *, context: Context | None = None,
               annotated: bool = True) -> ResponseStream:
        return ResponseStream(self, request, context, annotated, self._random, None)

    def direct(self, request: Any, instance_id: int, *, context: Context | None = None,
               annotated: bool = True) -> ResponseStream:
        """Send to one instance; no failover."""
        return ResponseStream(self, request, context, annotated, self._router, instance_id)

    async def one(self, request: Any, instance_id: int, *, context: Context | None = None) -> Any:
        """The one item of a unary call to one instance (its data), with the least
        machinery: no stream object, no failover (for callers that route themselves).
        Raises what the instance raised (``InstanceUnavailable`` / ``Overloaded`` when it
        refused), ``StopAsyncIteration`` if it sent nothing. Cancelling the caller's task,
        or stopping ``context``, cancels the call; the instance enforces the deadline."""
        record = self._instances.get(instance_id)
        if record is None:
            raise NoInstancesError(f"{self.endpoint.path} (instance {instance_id:x})", [])
        if context is not None:
            if context.is_stopped():
                raise Cancelled(f"context {context.id} was stopped before calling {self.endpoint.path}")
            if context.expired():
                raise DeadlineExceeded(f"deadline passed before calling {self.endpoint.path}")
        connector = self._connector(record)
        src = connector.open_nowait(record, request, context) or await connector.open(record, request, context)
        load = self._load
        load[instance_id] = load.get(instance_id, 0) + 1
        unlink = None if context is None else context.on_stop(
            lambda: src.interrupt(Cancelled(f"request {context.id} was stopped")))
        try:
            if src.refusable:
                return (await cast(RemoteStream, src).next()).data
            if type(src) is Call and src.unary_handler:  # in process, an ``async def`` handler: awaited here
                return await src.one()
            items = src.items(DATA)  # in process: the serving path's own generator
            try:
                return await items.__anext__()
            finally:
                await items.aclose()
        finally:
            if unlink is not None:
                unlink()
            if not src.finished:
                src.cancel()
            self._release(instance_id)

    def _choose(self, router: Router, exclude: set[int] | None, pinned: int | None) -> InstanceRecord | None:
        if pinned is not None:
            return self._instances.get(pinned) if not exclude or pinned not in exclude else None
        if self._quarantine:
            live = self._live()
            candidates: Sequence[int] = [i for i in live if i not in exclude] if exclude else list(live)
        else:
            live = self._instances
            if exclude:
                candidates = [i for i in live if i not in exclude]
            else:  # the live ids, made again after the set changed
                candidates = self._ids if self._ids is not None else self._cache_ids()
        if not candidates:
            return None
        return live[router.choose(candidates, self._load)]

    def _cache_ids(self) -> tuple[int, ...]:
        ids = self._ids = tuple(self._instances)
        return ids

    def _connector(self, record: InstanceRecord) -> Connector:
        """The transport connector for ``record`` (remembered while the record is live)."""
        found = self._connectors.get(record.instance_id)
        if found is None or found[0] is not record:
            found = self._connectors[record.instance_id] = (record, self.runtime.plane.connector(record))
        return found[1]

    async def _connect(self, record: InstanceRecord, request: Any, ctx: Context | None) -> ClientStream:
        connector = self._connector(record)
        source = connector.open_nowait(record, request, ctx) or await connector.open(record, request, ctx)
        self._load[record.instance_id] = self._load.get(record.instance_id, 0) + 1
        return source

    def _release(self, instance_id: int) -> None:
        left = self._load.get(instance_id, 1) - 1
        if left <= 0:
            self._load.pop(instance_id, None)
        else:
            self._load[instance_id] = left

    async def close(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            await watch.close()
        self.runtime.forget_client(self)

    def __repr__(self) -> str:
        return f"Client({self.endpoint.path}, instances={[f'{i:x}' for i in self.instance_ids()]})"


class ResponseStream:
    """One call's response: an async iterator of ``Annotated`` items (or plain data).

    While no matching instance is live, the call waits for one up to
    ``Settings.instance_wait`` (start-up, rolling restarts). Failover: if the chosen
    instance cannot be reached, or refuses, before any item arrived, the call moves
    to another instance. After items arrived, a cut stream raises
    ``StreamIncomplete``. Leaving the loop early (``break``, ``aclose()``, the
    caller's task cancelled) cancels the handler.

    An in-process call is iterated as the serving path's own items
    (``serving.Call.items``: the C relay, or its Python generator): no layer of
    the client's per item."""

    __slots__ = ("__weakref__", "_annotated", "_chosen", "_client", "_ctx", "_done", "_it", "_pinned", "_record",
                 "_refusal", "_request", "_router", "_src", "_timer", "_tried", "_unlink")

    def __init__(self, client: Client, request: Any, ctx: Context | None, annotated: bool,
                 router: Router, pinned: int | None) -> None:
        self._client = client
        self._request = request
        self._ctx = ctx
        self._annotated = annotated
        self._router = router
        self._pinned = pinned
        self._src: ClientStream | None = None
        self._record: InstanceRecord | None = None
        #: chosen by the fast path but not opened there (the connection was not up)
        self._chosen: InstanceRecord | None = None
        self._tried: set[int] | None = None  # instances tried by a failing-over call
        self._refusal: ServemeshError | None = None  # why the fast path's instance refused
        self._done = False
        self._unlink: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._it: Items | None = None

    def __await__(self) -> Any:
        return self._start().__await__()

    async def _start(self) -> ResponseStream:
        if self._src is None and not self._done:
            await self._open()
        return self

    def __aiter__(self) -> Items:
        # A fresh iterator that this object does not hold: when the caller's loop drops
        # it (break), its finalizer (a relay's) or the loop's asyncgen hook (a generator's)
        # closes it, which cancels the call.
        if self._it is not None:
            return self._it
        if self._src is None and not self._done:
            local = self._open_local()
            if local is not None:
                return local
        elif self._src is not None and not self._src.refusable:
            return self._src.items(ANNOTATED if self._annotated else DATA)
        return _iterate(self)

    def __anext__(self) -> Any:
        if self._it is None:
            # Held here while the stream runs; the reference cycle it makes is broken
            # when the stream ends or is closed. A stream dropped half-way without
            # aclose() is cancelled when the garbage collector finds it.
            self._it = self.__aiter__()
        return self._it.__anext__()

    async def __aenter__(self) -> ResponseStream:
        return await self._start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def instance_id(self) -> int | None:
        """The instance serving this stream (once opened)."""
        return None if self._record is None else self._record.instance_id

    @property
    def buffered(self) -> int:
        """Items that already arrived from a remote instance: the next ``buffered`` reads
        return without waiting (a relay can write them out together). 0 in process."""
        src = self._src
        return src.buffered if isinstance(src, RemoteStream) else 0

    def _check_context(self) -> None:
        ctx = self._ctx
        if ctx is not None:
            if ctx.is_stopped():
                raise Cancelled(f"context {ctx.id} was stopped before calling {self._client.endpoint.path}")
            if ctx.expired():
                raise DeadlineExceeded(f"deadline passed before calling {self._client.endpoint.path}")

    def _open_local(self) -> Items | None:
        """The in-process fast path: open without awaiting and hand over the serving
        path's items themselves. None when the call needs the general path."""
        client = self._client
        record = client._choose(self._router, None, self._pinned)
        if record is None:
            return None
        if self._ctx is not None:
            self._check_context()
        iid = record.instance_id
        found = client._connectors.get(iid)  # ``_connector``, inline: this runs once per call
        connector = found[1] if found is not None and found[0] is record else client._connector(record)
        try:
            src = connector.open_nowait(record, self._request, self._ctx)
        except (InstanceUnavailable, Overloaded) as exc:
            # refused: the general path fails over to another instance, or raises this
            self._tried = {iid}
            self._refusal = exc
            if isinstance(exc, InstanceUnavailable):
                client.quarantine(iid)
            return None
        except BaseException:
            self._done = True
            raise
        if src is None:
            self._chosen = record
            return None
        client._load[iid] = client._load.get(iid, 0) + 1
        if src.refusable or self._ctx is not None:
            self._opened(src, record)
            if src.refusable:  # a remote stream may still be refused: not this instance again
                self._tried = {iid}
                return None
        else:  # ``_opened`` with nothing to link
            self._src = src
            self._record = record
            src.on_close = self._finish  # type: ignore[attr-defined]
        return src.items(ANNOTATED if self._annotated else DATA)

    def _opened(self, src: ClientStream, record: InstanceRecord) -> None:
        self._src = src
        self._record = record
        if not src.refusable:
            src.on_close = self._finish  # type: ignore[attr-defined]
        ctx = self._ctx
        if ctx is not None and self._unlink is None:
            self._unlink = ctx.on_stop(self._on_stop)
            remaining = ctx.remaining()
            if remaining is not None:
                self._timer = asyncio.get_running_loop().call_later(remaining, self._on_deadline)

    async def _open(self, last_error: ServemeshError | None = None) -> ClientStream:
        self._check_context()
        client = self._client
        tried = self._tried
        if tried is None:
            tried = self._tried = set()
        waited = bool(tried)  # the grace is for a call that found nothing yet, not a failover
        while True:
            record, self._chosen = self._chosen, None
            if record is None:
                record = client._choose(self._router, tried, self._pinned)
            if record is None:
                if last_error is None and self._pinned is None and not waited:
                    waited = True  # nothing live yet: wait a bounded time for an instance to appear
                    if await client._wait_live(self._grace()):
                        continue
                self._done = True
                if last_error is not None:
                    raise last_error
                if self._pinned is not None:
                    raise NoInstancesError(f"{client.endpoint.path} (instance {self._pinned:x})", [])
                raise await client._no_instances(self._grace())
            tried.add(record.instance_id)
            try:
                src = await client._connect(record, self._request, self._ctx)
            except InstanceUnavailable as exc:
                client.quarantine(record.instance_id)
                last_error = exc
                continue
            except Overloaded as exc:
                last_error = exc
                continue
            except BaseException:
                self._done = True
                raise
            self._opened(src, record)
            return src

    def _grace(self) -> float:
        grace = self._client.runtime.settings.instance_wait
        remaining = self._ctx.remaining() if self._ctx is not None else None
        return grace if remaining is None else max(min(grace, remaining), 0.0)

    def _on_stop(self) -> None:
        if self._src is not None:
            self._src.interrupt(Cancelled(f"request {self._ctx.id if self._ctx else ''} was stopped"))

    def _on_deadline(self) -> None:
        self._timer = None
        if self._src is not None:
            path = self._client.endpoint.path
            self._src.interrupt(DeadlineExceeded(f"deadline passed while streaming {path}"))

    def _release(self) -> None:
        if self._record is not None:
            self._client._release(self._record.instance_id)
            self._record = None

    def _finish(self) -> None:
        if self._done and self._record is None and self._unlink is None and self._timer is None:
            return
        self._done = True
        record = self._record
        if record is not None:  # ``_release``, inline: this runs once per stream
            self._record = None
            load, iid = self._client._load, record.instance_id
            left = load.get(iid, 1) - 1
            if left <= 0:
                load.pop(iid, None)
            else:
                load[iid] = left
        if self._unlink is not None:
            self._unlink()
            self._unlink = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def aclose(self) -> None:
        """Stop the stream; the handler is cancelled if it is still running."""
        it, self._it = self._it, None
        if it is not None:
            await it.aclose()
        src = self._src
        if src is not None and not src.finished:
            await src.aclose()
        self._finish()

    def __del__(self) -> None:
        # An iterator we held is finalised right after us and its cleanup cancels the
        # call; our own bookkeeping (load, context link, deadline timer) ends here.
        if self._done and self._record is None and self._unlink is None and self._timer is None:
            return  # ended (the usual case): nothing left
        try:
            src = self._src
            if src is not None and not src.finished and (self._it is None or _never_ran(self._it)):
                src.cancel()  # (a generator that never ran has no cleanup that would do it)
            self._finish()
        except Exception:  # interpreter shutdown: nothing left to tell
            pass


def _never_ran(agen: Items) -> bool:
    """Whether ``agen`` never ran (``__anext__()`` made but not awaited, or closed before
    its first step): then its cleanup, which ends the call, never runs either. Only
    called while the call is unfinished, so a closed generator here is one that never ran."""
    if Relay is not None and type(agen) is Relay:
        return False  # a relay ends its call itself when it is dropped (``Call._relay_dropped``)
    state = getattr(inspect, "getasyncgenstate", None)  # Python 3.12+
    if state is not None:
        return state(agen) in ("AGEN_CREATED", "AGEN_CLOSED")  # type: ignore[no-any-return]
    gen: Any = agen
    frame = gen.ag_frame
    return frame is None or (not gen.ag_running and frame.f_lasti == 0)


async def _iterate(self: ResponseStream) -> AsyncGenerator[Any, None]:
    """The iteration of one ``ResponseStream`` over a transport that may still refuse it."""
    if self._done:
        return
    src = self._src if self._src is not None else await self._open(self._refusal)
    annotated = self._annotated
    try:
        while True:
            if not src.refusable:  # in-process, opened after waiting for an instance
                async for item in src.items(ANNOTATED if annotated else DATA):
                    yield item
                return
            remote = cast(RemoteStream, src)
            next_item = remote.next
            try:
                if annotated:
                    while True:
                        item = await next_item()
                        yield Annotated(item.data, item.event, item.comments, item.id)
                else:
                    while True:
                        yield (await next_item()).data
            except StopAsyncIteration:
                return
            except (InstanceUnavailable, Overloaded) as exc:
                record = self._record
                self._release()
                if not remote.refused or remote.received or self._pinned is not None or self._done:
                    raise
                if isinstance(exc, InstanceUnavailable) and record is not None:
                    self._client.quarantine(record.instance_id)
                self._src = None
                src = await self._open(exc)
    finally:
        if not src.finished:
            src.cancel()
        self._finish()
        self._it = None  # no cycle left once the stream is over
