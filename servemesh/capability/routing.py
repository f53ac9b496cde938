"""``CapabilityRouter``: which replica serves a request, and the call to it.

Used by the API server and by replicas (delegation, ``context.call``). It watches the
replicas' runtime records (discovery: etcd, or the API server's registrations), picks
among **every** replica whose handlers offer the labels asked for, the least loaded
first (ties in turn), calls it with ``client.direct`` and fails over to the next one
when the chosen one is unreachable or full before it answered. Nothing here is HTTP.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import (
    CapabilityNotFound,
    DelegationRefused,
    InstanceUnavailable,
    NoInstancesError,
    Overloaded,
    ServemeshError,
    ValidationError,
)
from ..runtime import Client, Context, ResponseStream
from ..runtime.ready import ready_batches
from ..runtime.records import InstanceRecord
from ..runtime.routing import LeastLoaded
from ..tensors import InferResponse
from . import wire

if TYPE_CHECKING:
    from ..runtime import DistributedRuntime

#: label sets remembered as "served before" (a 503 rather than a 404 when they vanish)
MAX_SEEN = 4096
#: label sets a "no such capability" error lists at most
MAX_AVAILABLE = 50


class CapabilityRouter:
    def __init__(self, runtime: DistributedRuntime, namespace: str, *,
                 refresh: Callable[[], Awaitable[None]] | None = None) -> None:
        self.runtime = runtime
        self.namespace = namespace
        self.unary_path, self.stream_path = wire.paths(namespace)
        #: called when no replica serves a capability, before saying so (a replica asks its
        #: API server for the replicas it knows)
        self._refresh = refresh
        self._unary: Client | None = None
        self._stream: Client | None = None
        self._views: dict[int, tuple[InstanceRecord, wire.ReplicaView | None]] = {}
        self._load: dict[int, int] = {}
        self._choice = LeastLoaded()
        self._seen: set[str] = set()
        #: candidates by (labels, stream, excluded) while the live set stays the same
        self._cache: dict[tuple[Any, ...], list[wire.ReplicaView]] = {}
        self._cache_generation: int | None = None

    async def start(self) -> CapabilityRouter:
        self._unary = await self.runtime.endpoint(self.unary_path).client()
        self._stream = await self.runtime.endpoint(self.stream_path).client()
        return self

    async def close(self) -> None:
        for client in (self._unary, self._stream):
            if client is not None:
                await client.close()
        self._unary = self._stream = None

    # -- the replicas ------------------------------------------------------------------------
    def replicas(self) -> list[wire.ReplicaView]:
        """The live replicas, by instance id."""
        if self._unary is None:
            return []
        records = self._unary.records()
        views = self._views
        out: list[wire.ReplicaView] = []
        for iid, record in records.items():
            cached = views.get(iid)
            if cached is None or cached[0] is not record:
                cached = views[iid] = (record, wire.ReplicaView.of(iid, record.capabilities))
                if cached[1] is not None:
                    self._remember(cached[1])
            if cached[1] is not None:
                out.append(cached[1])
        if len(views) > len(records) + 64:  # forget records that left
            for iid in [i for i in views if i not in records]:
                del views[iid]
        return out

    def generation(self) -> int | None:
        """Changes whenever the live set of replicas does (``None``: unknown now)."""
        return self._unary.generation if self._unary is not None else None

    def records(self) -> list[InstanceRecord]:
        """The live records of both endpoints of every replica."""
        return [r for c in (self._unary, self._stream) if c is not None for r in c.records().values()]

    def _remember(self, view: wire.ReplicaView) -> None:
        if len(self._seen) < MAX_SEEN:
            self._seen.update(json.dumps(k, sort_keys=True, default=str) for k in view.keys)

    def candidates(self, want: Mapping[str, Any], stream: bool | None,
                   exclude: Collection[str] = ()) -> list[wire.ReplicaView]:
        return [v for v in self.replicas() if v.replica_id not in exclude and v.serves(want, stream)]

    def _candidates(self, want: Mapping[str, Any], stream: bool | None,
                    exclude: Collection[str]) -> list[wire.ReplicaView]:
        """``candidates``, remembered while the live set does not change (the hot path)."""
        generation = self._unary.generation if self._unary is not None else None
        if generation is None:
            return self.candidates(want, stream, exclude)
        if generation != self._cache_generation or len(self._cache) > 1024:
            self._cache.clear()
            self._cache_generation = generation
        key = (tuple(want.items()), stream, tuple(exclude))
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self.candidates(want, stream, exclude)
        return found

    def _choose(self, want: Mapping[str, Any], stream: bool, exclude: Collection[str],
                tried: set[int]) -> wire.ReplicaView | None:
        """A unary call needs a unary handler; a stream prefers a streaming one, and takes
        a unary one (one response) when no replica streams."""
        views = [v for v in self._candidates(want, stream, exclude) if v.instance_id not in tried]
        if not views and stream:
            views = [v for v in self._candidates(want, None, exclude) if v.instance_id not in tried]
        if not views:
            return None
        if len(views) == 1:
            return views[0]
        by_id = {v.instance_id: v for v in views}
        return by_id[self._choice.choose(list(by_id), self._load)]

    async def missing(self, want: Mapping[str, Any], stream: bool, exclude: Collection[str] = ()) -> ServemeshError:
        """Why no replica can take a request for ``want`` now."""
        if not want:
            return ValidationError("say which capability to call: give at least one X-Capability-* header "
                                   "(e.g. X-Capability-Type: chat)", field="X-Capability-*")
        if not stream and self.candidates(want, True, exclude) and not self.candidates(want, False, exclude):
            return ValidationError(f"capability {_text(want)} streams its answers: ask for a stream "
                                   "(/infer/stream, or ModelStreamInfer over gRPC)", field="X-Capability-*")
        everyone = self.candidates(want, None)
        if everyone and exclude and all(v.replica_id in exclude for v in everyone):
            return DelegationRefused("loop", sorted(exclude), self.runtime.settings.delegation_max_depth, dict(want))
        if everyone:
            return NoInstancesError(f"capability {_text(want)}", [])
        seen = self._seen
        for view in self.replicas():
            self._remember(view)
        if any(wire.matches(json.loads(k), want) for k in seen):
            return NoInstancesError(f"capability {_text(want)}", [])
        available: list[dict[str, Any]] = []
        for view in self.replicas():
            for labels in view.labels:
                if labels not in available:
                    available.append(labels)
                    if len(available) == MAX_AVAILABLE:  # an error body stays small: /registry has them all
                        return CapabilityNotFound(dict(want), available)
        return CapabilityNotFound(dict(want), available)

    # -- calls --------------------------------------------------------------------------------
    async def unary(self, call: wire.InferCall, ctx: Context,
                    exclude: Collection[str] = ()) -> bytes | InferResponse:
        """The answer of a replica serving ``call.want`` (one that is not in ``exclude``):
        contents JSON, or, for a ``LocalCall`` that a replica in this process took, its
        ``InferResponse`` (``wire.response_of`` reads either)."""
        client = self._unary
        if client is None:
            raise NoInstancesError(self.unary_path, [])
        attempts = _Attempts(self, call, False, exclude, client)
        while True:
            iid, send = await attempts.next()
            try:
                return await client.one(send, iid, context=ctx)  # type: ignore[no-any-return]
            except (InstanceUnavailable, Overloaded) as exc:
                attempts.refused(exc, iid)
            except StopAsyncIteration:
                raise NoInstancesError(f"capability {_text(call.want)}", []) from None
            finally:
                self._release(iid)

    async def stream(self, call: wire.InferCall, ctx: Context,
                     exclude: Collection[str] = ()) -> tuple[Any, AsyncIterator[list[Any]]]:
        """The first response of a replica serving ``call.want`` and the rest of its
        stream (failing over until the first one arrived), in batches: each holds what had
        arrived when it was read, in order. ``None`` first: it sent nothing. Responses
        are contents JSON, or ``InferResponse`` objects where a replica in this process
        took a ``LocalCall`` (as ``unary``)."""
        client = self._stream
        if client is None:
            raise NoInstancesError(self.stream_path, [])
        attempts = _Attempts(self, call, True, exclude, client)
        while True:
            iid, send = await attempts.next()
            response = client.direct(send, iid, context=ctx, annotated=False)
            try:
                first = await response.__anext__()
            except BaseException as exc:
                self._release(iid)
                await response.aclose()
                if isinstance(exc, StopAsyncIteration):
                    return None, _empty()
                if not isinstance(exc, (InstanceUnavailable, Overloaded)):
                    raise
                attempts.refused(exc, iid)
                continue
            return first, self._rest(response, iid)

    def _release(self, iid: int) -> None:
        load = self._load
        left = load.get(iid, 1) - 1
        if left:
            load[iid] = left
        else:
            load.pop(iid, None)

    async def _rest(self, response: ResponseStream, iid: int) -> AsyncIterator[list[Any]]:
        batches = ready_batches(response)  # what arrived together goes on together
        try:
            async for batch in batches:
                yield batch
        finally:
            await batches.aclose()
            self._release(iid)
            await response.aclose()


class _Attempts:
    """One call's way through the replicas: the next one to try (least loaded, each at
    most once; after asking ``refresh`` once when none is left), counted in the router's
    load, with the request in the form that replica takes; and what to do when it refused."""

    __slots__ = ("call", "client", "exclude", "last", "refreshed", "remote", "router", "stream", "tried")

    def __init__(self, router: CapabilityRouter, call: wire.InferCall, stream: bool, exclude: Collection[str],
                 client: Client) -> None:
        self.router = router
        self.call = call
        self.stream = stream
        self.exclude = exclude
        self.client = client
        self.remote: wire.InferCall | None = None if type(call) is wire.LocalCall else call
        self.tried: set[int] = set()
        self.last: ServemeshError | None = None
        self.refreshed = False

    async def next(self) -> tuple[int, wire.InferCall]:
        router, call = self.router, self.call
        while True:
            view = router._choose(call.want, self.stream, self.exclude, self.tried)
            if view is None:
                if self.last is None and not self.refreshed and router._refresh is not None:
                    self.refreshed = True
                    await router._refresh()
                    continue
                raise self.last if self.last is not None else await router.missing(call.want, self.stream,
                                                                                   self.exclude)
            iid = view.instance_id
            self.tried.add(iid)
            if self.stream and iid not in self.client.records():  # its streaming record did not arrive yet
                continue
            load = router._load
            load[iid] = load.get(iid, 0) + 1
            if iid == router.runtime.instance_id:  # a replica in this process: called in process
                return iid, call
            if self.remote is None:
                self.remote = wire.remote_call(call)
            return iid, self.remote

    def refused(self, exc: InstanceUnavailable | Overloaded, iid: int) -> None:
        """``exc`` out of the call to ``iid``: raised again unless that replica itself refused
        (then the next attempt goes elsewhere, and a replica out of reach is quarantined)."""
        if not _refused_by(exc, iid):
            raise exc
        if isinstance(exc, InstanceUnavailable):
            self.client.quarantine(iid)
        self.last = exc


def _refused_by(exc: InstanceUnavailable | Overloaded, iid: int) -> bool:
    """The chosen replica itself refused or could not be reached (not a failure further
    down its own calls): another replica may take the request."""
    if isinstance(exc, InstanceUnavailable):
        return exc.instance_id in (iid, 0)
    return True


async def _empty() -> AsyncIterator[list[Any]]:
    return
    yield  # pragma: no cover


def _text(labels: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in labels.items()) + "}"
