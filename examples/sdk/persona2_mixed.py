"""Persona 2, the mixed user: the runtime is injected, and the router calls the worker.

`ServiceContext` is passed to `__init__` because the parameter is annotated with it
(read `servemesh.sdk.serve.serve` to see exactly how). `@async_init` runs before
anything is served; `depends(Worker)` is another way to reach the worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from persona1_default import ChatRequest, Token, Worker

import servemesh
from servemesh import Client, Context, ServiceContext, async_init, depends, endpoint, on_shutdown, service


@service(name="router", namespace="demo")
class Router:
    backup = depends(Worker, router="least_loaded")

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.runtime = ctx.runtime
        self.worker: Client | None = None
        self.requests = 0

    @async_init
    async def connect(self) -> None:
        # a direct client to the worker's endpoint, through the injected runtime
        self.worker = await self.runtime.namespace("demo").component("worker").endpoint("generate").client()

    @endpoint()
    async def generate(self, request: ChatRequest, context: Context) -> AsyncIterator[dict[str, Any]]:
        assert self.worker is not None
        self.requests += 1
        async for item in self.worker.generate(request, context=context):
            # in-process the item is the worker's Token itself, over the wire its JSON form:
            # model_validate takes either and gives a Token
            token = Token.model_validate(item.data())
            yield {"routed_by": self.ctx.name, "text": token.text, "index": token.index}

    @endpoint()
    async def stats(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"requests": self.requests, "workers": self.backup.client("generate").instance_ids()}

    @on_shutdown
    async def goodbye(self) -> None:
        print(f"router served {self.requests} requests", flush=True)


if __name__ == "__main__":
    servemesh.configure_logging()
    servemesh.run(Router, Worker)  # both in one process; run them apart just as well
