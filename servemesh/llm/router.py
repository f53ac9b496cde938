"""Chapter 2's router: one endpoint in front of every engine of a model."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from ..runtime import Client, Context
from ..sdk import ServiceContext, async_init, endpoint, service
from .processor import ENGINE_PATH
from .protocol import EngineRequest

log = logging.getLogger("servemesh.llm.router")

ROUTER_PATH = "inference.router.generate"


def _capabilities(self: Router) -> dict[str, object]:
    caps: dict[str, object] = {"model": self.model, "router": self.policy}
    if self.context_length is not None:  # the processor reads it from here, as from an engine
        caps["context_length"] = self.context_length
    return caps


@service(name="router", namespace="inference", capabilities=_capabilities)
class Router:
    """``inference.router.generate`` load-balances engine requests over every engine of
    the model (``least_loaded``, ``round_robin`` or ``random``), failing over when one
    dies before its first token. Point a processor's ``engine_path`` at it."""

    def __init__(self, ctx: ServiceContext, model: str, policy: str = "least_loaded") -> None:
        self.ctx = ctx
        self.model = model
        self.policy = policy
        self.engines: Client | None = None
        self.context_length: int | None = None

    @async_init
    async def connect(self) -> None:
        self.engines = await self.ctx.runtime.endpoint(ENGINE_PATH).client(
            router=self.policy, capabilities={"model": self.model})  # type: ignore[arg-type]
        if not self.engines.instance_ids():
            log.info("waiting for an engine of %s before serving", self.model)
        await self.engines.wait_for_instances()  # registered only once it can route somewhere
        known = [n for i in self.engines.instances()
                 if isinstance(n := i.capabilities.get("context_length"), int) and n > 0]
        self.context_length = min(known) if known else None

    @endpoint()
    async def generate(self, request: EngineRequest, context: Context) -> AsyncIterator[object]:
        assert self.engines is not None
        async for item in self.engines.generate(request, context=context, annotated=False):
            yield item
