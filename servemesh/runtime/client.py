"""``Client``: a live view of one endpoint's instances, and streams to them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
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
from .stream import LocalStream, RemoteStream

if TYPE_CHECKING:
    from .component import Endpoint
    from .discovery.base import WatchHandle
    from .distributed import DistributedRuntime

log = logging.getLogger("servemesh.client")


Source = RemoteStream | LocalStream


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
        self._quarantine: dict[int, float] = {}
        self._load: dict[int, int] = {}
        self._changed = asyncio.Event()
        self._watch: WatchHandle | None = None

    async def _start(self) -> None:
        self._watch = await self.runtime.discovery.watch(self._prefix, self)

    @property
    def _prefix(self) -> str:
        e = self.endpoint
        return instance_prefix(e.namespace, e.component, e.name)

    # -- WatchSink ----------------------------------------------------------------
    def on_put(self, record: InstanceRecord) -> None:
        if capabilities_match(record.capabilities, self.capabilities):
            self._instances[record.instance_id] = record
            self._quarantine.pop(record.instance_id, None)
        else:
            self._instances.pop(record.instance_id, None)
        self._changed.set()

    def on_delete(self, key: str) -> None:
        try:
            iid = int(key.rsplit(":", 1)[1], 16)
        except (IndexError, ValueError):
            return
        self._instances.pop(iid, None)
        self._quarantine.pop(iid, None)
        self._changed.set()

    # -- the live set ---------------------------------------------------------------
    def instance_ids(self) -> list[int]:
        return sorted(self._live())

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

    async def wait_for_instances(self, timeout: float | None = None) -> list[int]:
        """Wait until at least one matching instance is live; ``NoInstancesError`` on timeout."""
        try:
            async with asyncio.timeout(timeout):
                while not self._live():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise await self._no_instances() from None
        return self.instance_ids()

    async def _no_instances(self) -> NoInstancesError:
        e = self.endpoint
        try:
            records = await self.runtime.discovery.list(instance_prefix(e.namespace))
            known = sorted({r.path for r in records})
        except ServemeshError:
            known = []
        return NoInstancesError(e.path, known, self.capabilities or None)

    # -- calls ------------------------------------------------------------------------
    def generate(self, request: Any, *, context: Context | None = None,
                 annotated: bool = True) -> ResponseStream:
        """Stream the endpoint's response, routed by the client's router.

        Use as ``async for item in client.generate(req)`` or
        ``stream = await client.generate(req)``."""
        return ResponseStream(self, request, context, annotated, self._router, None)

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

    def _choose(self, router: Router, exclude: set[int], pinned: int | None) -> InstanceRecord | None:
        live = self._live()
        if pinned is not None:
            return self._instances.get(pinned) if pinned not in exclude else None
        candidates = [i for i in live if i not in exclude] if exclude else list(live)
        if not candidates:
            return None
        return live[router.choose(candidates, self._load)]

    async def _connect(self, record: InstanceRecord, request: Any, ctx: Context | None) -> Source:
        source = await self.runtime._open(record, request, ctx)
        self._load[record.instance_id] = self._load.get(record.instance_id, 0) + 1
        return source

    def _connect_nowait(self, record: InstanceRecord, request: Any, ctx: Context | None) -> Source | None:
        source = self.runtime._open_nowait(record, request, ctx)
        if source is not None:
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
        self.runtime._clients.discard(self)

    def __repr__(self) -> str:
        return f"Client({self.endpoint.path}, instances={[f'{i:x}' for i in self.instance_ids()]})"


class ResponseStream:
    """One call's response: an async iterator of ``Annotated`` items (or plain data).

    Failover: if the chosen instance cannot be reached, or refuses, before any item
    arrived, the call moves to another instance. After items arrived, a cut stream
    raises ``StreamIncomplete``. Leaving the loop early (``break``, ``aclose()``, the
    caller's task cancelled) cancels the remote handler."""

    __slots__ = ("__weakref__", "_annotated", "_client", "_ctx", "_done", "_it", "_pinned", "_record",
                 "_request", "_router", "_src", "_timer", "_tried", "_unlink")

    def __init__(self, client: Client, request: Any, ctx: Context | None, annotated: bool,
                 router: Router, pinned: int | None) -> None:
        self._client = client
        self._request = request
        self._ctx = ctx
        self._annotated = annotated
        self._router = router
        self._pinned = pinned
        self._src: Source | None = None
        self._record: InstanceRecord | None = None
        self._tried: set[int] = set()
        self._done = False
        self._unlink: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._it: AsyncGenerator[Any, None] | None = None

    def __await__(self) -> Any:
        return self._start().__await__()

    async def _start(self) -> ResponseStream:
        if self._src is None and not self._done:
            await self._open()
        return self

    def __aiter__(self) -> AsyncGenerator[Any, None]:
        # A fresh generator that this object does not hold: when the caller's loop
        # drops it (break), the loop's asyncgen hook closes it, which cancels the call.
        if self._it is not None:
            return self._it
        return _iterate(self)

    def __anext__(self) -> Any:
        if self._it is None:
            # Held here while the stream runs; the reference cycle it makes is broken
            # when the stream ends or is closed. A stream dropped half-way without
            # aclose() is cancelled when the garbage collector finds it.
            self._it = _iterate(self)
        return self._it.__anext__()

    async def __aenter__(self) -> ResponseStream:
        return await self._start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def instance_id(self) -> int | None:
        """The instance serving this stream (once opened)."""
        return None if self._record is None else self._record.instance_id

    async def _open(self) -> Source:
        ctx = self._ctx
        if ctx is not None:
            if ctx.is_stopped():
                raise Cancelled(f"context {ctx.id} was stopped before calling {self._client.endpoint.path}")
            if ctx.expired():
                raise DeadlineExceeded(f"deadline passed before calling {self._client.endpoint.path}")
        client = self._client
        last_error: ServemeshError | None = None
        while True:
            record = client._choose(self._router, self._tried, self._pinned)
            if record is None:
                self._done = True
                if last_error is not None:
                    raise last_error
                if self._pinned is not None:
                    raise NoInstancesError(f"{client.endpoint.path} (instance {self._pinned:x})", [])
                raise await client._no_instances()
            self._tried.add(record.instance_id)
            try:
                src = client._connect_nowait(record, self._request, ctx) or await client._connect(
                    record, self._request, ctx)
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
            self._src = src
            self._record = record
            if ctx is not None and self._unlink is None:
                self._unlink = ctx.on_stop(self._on_stop)
                remaining = ctx.remaining()
                if remaining is not None:
                    self._timer = asyncio.get_running_loop().call_later(remaining, self._on_deadline)
            return src

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
        self._release()
        if self._unlink is not None:
            self._unlink()
            self._unlink = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def aclose(self) -> None:
        """Stop the stream; the remote handler is cancelled if it is still running."""
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
        try:
            src = self._src
            if src is not None and not src.finished and self._it is None:
                src.cancel()
            self._finish()
        except Exception:  # interpreter shutdown: nothing left to tell
            pass


async def _iterate(self: ResponseStream) -> AsyncGenerator[Any, None]:
    """The iteration of one ``ResponseStream``."""
    if self._done:
        return
    src = self._src if self._src is not None else await self._open()
    annotated = self._annotated
    try:
        while True:
            if type(src) is LocalStream:
                # in-process hot path: the handler's own generator, two frames per item
                src.task = asyncio.current_task()
                try:
                    if annotated:
                        async for item in src.agen:
                            yield item if type(item) is Annotated else Annotated(item)
                            if src.interrupted is not None:
                                break  # stopped while the caller held the item
                    else:
                        async for item in src.agen:
                            yield item.data() if type(item) is Annotated else item
                            if src.interrupted is not None:
                                break
                except BaseException as exc:
                    mapped = await src.failed(exc)
                    if mapped is exc:
                        raise
                    raise mapped from (None if isinstance(mapped, (Cancelled, DeadlineExceeded)) else exc)
                if src.interrupted is not None:
                    await src.aclose()
                    raise src.interrupted
                src.completed()
                return
            remote = cast(RemoteStream, src)
            try:
                item = await remote.next()
            except StopAsyncIteration:
                return
            except (InstanceUnavailable, Overloaded) as exc:
                self._release()
                if remote.received or self._pinned is not None or self._done:
                    raise
                if isinstance(exc, InstanceUnavailable) and self._record is not None:
                    self._client.quarantine(self._record.instance_id)
                self._src = None
                src = await self._open()
                continue
            yield remote.wrap(item, annotated)
    finally:
        if not src.finished:
            src.cancel()
        self._finish()
        self._it = None  # no cycle left once the stream is over
