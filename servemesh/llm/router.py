"""Chapter 2's router: one endpoint in front of every engine of a model."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from ..errors import ConfigError
from ..runtime import Client, Context
from ..sdk import ServiceContext, async_init, endpoint, on_shutdown, service
from .kv import BLOCK_SIZE
from .kv_router import KvRouting
from .processor import ENGINE_PATH
from .protocol import EngineRequest

log = logging.getLogger("servemesh.llm.router")

ROUTER_PATH = "inference.router.generate"
POLICIES = ("least_loaded", "round_robin", "random", "kv")


def _capabilities(self: Router) -> dict[str, object]:
    caps: dict[str, object] = {"model": self.model, "router": self.policy}
    if self.context_length is not None:  # the processor reads it from here, as from an engine
        caps["context_length"] = self.context_length
    return caps


@service(name="router", namespace="inference", capabilities=_capabilities)
class Router:
    """``inference.router.generate`` routes engine requests over every engine of the
    model, failing over when one dies before its first token. Policies:
    ``least_loaded``, ``round_robin``, ``random``, and ``kv``: to the engine with the
    best trade-off between the prompt's prefix it has cached and its load
    (``overlap_weight`` per block to prefill, against blocks in flight; docs/llm.md).
    Point a processor's ``engine_path`` at it. ``stats`` tells what it did."""

    def __init__(self, ctx: ServiceContext, model: str, policy: str = "least_loaded", block_size: int = BLOCK_SIZE,
                 overlap_weight: float = 1.0) -> None:
        if policy not in POLICIES:
            raise ConfigError(f"unknown router policy {policy!r}: use one of {', '.join(POLICIES)}")
        if block_size < 1 or overlap_weight < 0:
            raise ConfigError(f"block_size must be at least 1 and overlap_weight at least 0, not {block_size} "
                              f"and {overlap_weight}")
        self.ctx = ctx
        self.model = model
        self.policy = policy
        self.block_size = block_size
        self.overlap_weight = overlap_weight
        self.engines: Client | None = None
        self.kv: KvRouting | None = None
        self.context_length: int | None = None
        self.requests = 0

    @async_init
    async def connect(self) -> None:
        self.engines = await self.ctx.runtime.endpoint(ENGINE_PATH).client(
            router="least_loaded" if self.policy == "kv" else self.policy,  # type: ignore[arg-type]
            capabilities={"model": self.model})
        if not self.engines.instance_ids():
            log.info("waiting for an engine of %s before serving", self.model)
        await self.engines.wait_for_instances()  # registered only once it can route somewhere
        known = [n for i in self.engines.instances()
                 if isinstance(n := i.capabilities.get("context_length"), int) and n > 0]
        self.context_length = min(known) if known else None
        if self.policy == "kv":
            self.kv = KvRouting(self.ctx.runtime, self.model, block_size=self.block_size,
                                overlap_weight=self.overlap_weight)
            await self.kv.start()

    @endpoint()
    async def generate(self, request: EngineRequest, context: Context) -> AsyncIterator[object]:
        assert self.engines is not None
        kv = self.kv
        if kv is None:
            self.requests += 1
            async for item in self.engines.generate(request, context=context, annotated=False):
                yield item
            return
        chooser = kv.route(request.token_ids)
        try:
            async for item in self.engines.generate(request, context=context, annotated=False, router=chooser):
                yield item
        finally:  # however the stream ended: its blocks are no longer in flight
            kv.finished(chooser)

    @endpoint()
    async def stats(self, request: dict[str, object]) -> dict[str, Any]:
        """What the router did: ``requests``; with ``kv``, also cache hits, blocks matched and
        saved, events, snapshots and its view of each engine (docs/llm.md)."""
        if self.kv is None:
            return {"policy": self.policy, "requests": self.requests}
        return {"policy": self.policy, **self.kv.stats()}

    @on_shutdown
    async def close(self) -> None:
        if self.kv is not None:
            await self.kv.close()
