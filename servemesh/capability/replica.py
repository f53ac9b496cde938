"""``Replica``: one process serving an ``App``'s handlers on the request plane.

It serves two runtime endpoints of the capability namespace (``wire.paths``), whose
discovery records carry its replica id, its gRPC endpoint and its handlers' label
sets; an API server (or another replica) routes to it by those. A request for
labels none of its handlers offer is delegated to a replica that has them; so is a
handler's ``context.delegate(...)``. The chain of hops travels with the request
(``InferCall.chain``: each replica with the labels it was asked for): a replica is
never asked again for labels it was already asked for on the way (a loop, refused
where it would happen and where it arrives), and the chain's length is limited
(``SERVEMESH_DELEGATION_MAX_DEPTH``). A pipeline may come back to a replica for other
labels.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Collection, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import CapabilityNotFound, ConfigError, DelegationRefused, ValidationError
from ..runtime import Context as RuntimeContext
from ..tensors import InferRequest, InferResponse, decode_contents_response
from . import wire
from .app import App, CapabilitySpec
from .context import Context
from .handlers import Runner, answer
from .routing import CapabilityRouter

if TYPE_CHECKING:
    from ..objects import Objects
    from ..runtime import DistributedRuntime

log = logging.getLogger("servemesh.capability")


class Replica:
    """``await Replica(app, runtime, replica_id=..., objects=...).start()``, then ``serve()``."""

    def __init__(self, app: App, runtime: DistributedRuntime, *, replica_id: str, endpoint: str = "",
                 objects: Objects | None = None, router: CapabilityRouter | None = None) -> None:
        if not app.specs:
            raise ConfigError(f"{app!r} declares no capability: decorate a handler with @app.capability(...)")
        settings = runtime.settings
        self.app = app
        self.specs = app.specs
        self.runtime = runtime
        self.replica_id = wire.check_replica_id(replica_id)
        #: host:port of this replica's OIP v2 gRPC server ("" without one)
        self.endpoint = endpoint
        self.objects = objects
        self.namespace = settings.capability_namespace
        self.max_depth = settings.delegation_max_depth
        self.unary_path, self.stream_path = wire.paths(self.namespace)
        self.router = router or CapabilityRouter(runtime, self.namespace)
        self.runner = Runner(self.unary_path, settings.capability_threads, settings.capability_max_queue)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise ConfigError("the replica has not started: `await replica.start()` first")
        return self._loop

    def record_capabilities(self) -> dict[str, Any]:
        return wire.record_capabilities(self.replica_id, self.endpoint, [s.labels for s in self.specs],
                                        [s.stream for s in self.specs], self.models())

    def models(self) -> list[dict[str, Any] | None]:
        """Each handler's declared model metadata, for records and registrations."""
        return [None if s.model is None else s.model.to_record() for s in self.specs]

    async def start(self) -> Replica:
        self._loop = asyncio.get_running_loop()
        await self.router.start()
        return self

    async def close(self) -> None:
        await self.router.close()
        self.runner.close()

    async def serve(self) -> None:
        """Serve both endpoints until the runtime shuts down."""
        caps = self.record_capabilities()
        async with asyncio.TaskGroup() as group:
            group.create_task(self.runtime.endpoint(self.unary_path).serve_endpoint(self._infer, capabilities=caps))
            group.create_task(self.runtime.endpoint(self.stream_path).serve_endpoint(self._stream, capabilities=caps))

    async def wait_served(self, timeout: float | None = None) -> None:
        await self.runtime.wait_served(self.unary_path, timeout)
        await self.runtime.wait_served(self.stream_path, timeout)

    # -- which handler ---------------------------------------------------------------------------
    def find(self, want: Mapping[str, Any], stream: bool) -> CapabilitySpec | None:
        """The first handler offering ``want``; a stream prefers a streaming handler and
        takes a unary one, a unary call needs a unary one."""
        fallback = None
        for spec in self.specs:
            if wire.matches(spec.keys, want):
                if spec.stream == stream:
                    return spec
                if stream and fallback is None:
                    fallback = spec
        return fallback

    def find_by_model(self, model_name: str, stream: bool) -> CapabilitySpec | None:
        """For a gRPC call without ``x-capability-*`` metadata: the only handler of the
        kind asked for, or the first whose ``model`` or ``type`` label is ``model_name``."""
        kind = [s for s in self.specs if s.stream == stream] or ([] if not stream else self.specs)
        if len(kind) == 1:
            return kind[0]
        for key in ("model", "type"):
            for spec in kind:
                if model_name and str(spec.keys.get(key)) == model_name:
                    return spec
        return None

    def streams_only(self, want: Mapping[str, Any]) -> bool:
        return any(s.stream and wire.matches(s.keys, want) for s in self.specs)

    def context(self, spec: CapabilitySpec, want: Mapping[str, Any], ctx: RuntimeContext, chain: list[str],
                depth: int, body: bytes | None) -> Context:
        self._check_loop(want, chain)
        return Context(self, spec.labels, want, ctx, chain, depth, body)

    def _check_loop(self, want: Mapping[str, Any], chain: list[str]) -> None:
        """Refuse a request this replica already passed on for the same labels (it came
        back: a loop, e.g. through an alias registration of this replica)."""
        if chain and wire.hop(self.replica_id, want) in chain:
            raise DelegationRefused("loop", [*wire.replicas_of(chain), self.replica_id], self.max_depth, dict(want))

    # -- the runtime endpoints -----------------------------------------------------------------
    async def _infer(self, call: wire.InferCall, ctx: RuntimeContext) -> bytes:
        spec = self.find(call.want, False)
        if spec is None:
            if self.streams_only(call.want):
                raise _streams(call.want)
            self._check_loop(call.want, call.chain)
            return await self.forward(call.want, call.body, call.chain, call.depth, ctx, delegate=True)
        hctx = self.context(spec, call.want, ctx, call.chain, call.depth, call.body)
        return await self.runner.unary(spec, call.body, wire.decode_request, hctx, answer(wire.encode_response, hctx))

    async def _stream(self, call: wire.InferCall, ctx: RuntimeContext) -> AsyncIterator[bytes]:
        spec = self.find(call.want, True)
        if spec is None:
            self._check_loop(call.want, call.chain)
            first, rest = await self.forward_stream(call.want, call.body, call.chain, call.depth, ctx)
            if first is None:
                return
            yield first
            async for batch in rest:
                for item in batch:
                    yield item
            return
        hctx = self.context(spec, call.want, ctx, call.chain, call.depth, call.body)
        async for item in self.runner.stream(spec, call.body, wire.decode_request, hctx,
                                             answer(wire.encode_response, hctx)):
            yield item

    # -- delegation and calls --------------------------------------------------------------------
    def _next_hop(self, want: Mapping[str, str], body: bytes, chain: list[str], depth: int,
                  delegate: bool, stream: bool, received: Mapping[str, Any]) -> tuple[wire.InferCall, Collection[str]]:
        """The call to pass on, and the replicas it must not go to. ``received``: the
        labels this replica was asked for (its hop in the chain)."""
        chain = [*chain, wire.hop(self.replica_id, received)]
        if depth >= self.max_depth:
            raise DelegationRefused("depth", wire.replicas_of(chain), self.max_depth, dict(want))
        exclude: Collection[str] = wire.excluded(chain, want) if delegate else ()
        if delegate:
            everyone = self.router.candidates(want, True if stream else False)
            if everyone and all(v.replica_id in exclude for v in everyone):
                raise DelegationRefused("loop", wire.replicas_of(chain), self.max_depth, dict(want))
        return wire.InferCall(body, dict(want), chain, depth + 1), exclude

    async def forward(self, want: Mapping[str, str], body: bytes, chain: list[str], depth: int,
                      ctx: RuntimeContext, *, delegate: bool, received: Mapping[str, Any] | None = None) -> bytes:
        """The answer of another replica that serves ``want``, to ``body`` (``delegate``:
        never one already asked for ``want`` on the way). ``received``: the labels this
        replica was asked for (default ``want``: it cannot serve them itself)."""
        call, exclude = self._next_hop(want, body, chain, depth, delegate, False,
                                       want if received is None else received)
        if delegate:
            log.debug("replica %s delegates %s to another replica (chain %s)", self.replica_id, want, call.chain)
        return await self.router.unary(call, ctx, exclude)

    async def forward_stream(self, want: Mapping[str, str], body: bytes, chain: list[str], depth: int,
                             ctx: RuntimeContext, received: Mapping[str, Any] | None = None,
                             ) -> tuple[bytes | None, AsyncIterator[list[bytes]]]:
        call, exclude = self._next_hop(want, body, chain, depth, True, True, want if received is None else received)
        return await self.router.stream(call, ctx, exclude)

    async def infer(self, request: InferRequest, want: Mapping[str, str], ctx: RuntimeContext,
                    chain: list[str] | None = None, depth: int = 0) -> InferResponse:
        """Serve ``request`` here (or delegate it): the gRPC surface's way in."""
        spec = self.find(want, False) if want else self.find_by_model(request.model_name, False)
        chain = chain or []
        if spec is None:
            if not want:
                raise CapabilityNotFound({"model": request.model_name}, self.app.get_capabilities())
            if self.streams_only(want):
                raise _streams(want)
            self._check_loop(want, chain)
            data = await self.forward(want, wire.encode_request(request), chain, depth, ctx, delegate=True)
            return decode_contents_response(data)
        hctx = self.context(spec, want, ctx, chain, depth, None)
        response: InferResponse = await self.runner.unary(spec, request, _same, hctx, answer(_same, hctx))
        return response


    async def infer_stream(self, request: InferRequest, want: Mapping[str, str], ctx: RuntimeContext,
                           chain: list[str] | None = None, depth: int = 0) -> AsyncIterator[InferResponse]:
        """Serve ``request`` here, streamed (or delegate it): the gRPC surface's way in."""
        spec = self.find(want, True) if want else self.find_by_model(request.model_name, True)
        chain = chain or []
        if spec is None:
            if not want:
                raise CapabilityNotFound({"model": request.model_name}, self.app.get_capabilities())
            self._check_loop(want, chain)
            first, rest = await self.forward_stream(want, wire.encode_request(request), chain, depth, ctx)
            if first is not None:
                yield decode_contents_response(first)
                async for batch in rest:
                    for item in batch:
                        yield decode_contents_response(item)
            return
        hctx = self.context(spec, want, ctx, chain, depth, None)
        async for response in self.runner.stream(spec, request, _same, hctx, answer(_same, hctx)):
            yield response


def _same(value: Any) -> Any:
    return value


def _streams(want: Mapping[str, Any]) -> ValidationError:
    labels = "{" + ", ".join(f"{k}={v}" for k, v in want.items()) + "}"
    return ValidationError(f"capability {labels} streams its answers: ask for a stream (/infer/stream, or "
                           "ModelStreamInfer over gRPC)", field="X-Capability-*")
