"""Persona 3, the power user: `@entrypoint` takes total control of serving.

Nothing is served automatically; the entrypoint uses the core bindings itself.
Constructor arguments come from the command line through `serve(..., engine_args=...)`.

    python3 persona3_power.py --model tiny --temperature 0.2
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import AsyncIterator

from persona1_default import ChatRequest

import servemesh
from servemesh import ServiceContext, entrypoint, service


@dataclasses.dataclass(frozen=True)
class EngineArgs:
    model: str
    temperature: float


def parse_engine_args(argv: list[str] | None = None) -> EngineArgs:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--temperature", type=float, default=0.0)
    args = parser.parse_args(argv)
    return EngineArgs(model=args.model, temperature=args.temperature)


@service(name="power", namespace="demo")
class PowerWorker:
    def __init__(self, ctx: ServiceContext, engine_args: EngineArgs) -> None:
        self.ctx = ctx
        self.engine_args = engine_args

    @entrypoint
    async def entrypoint(self) -> None:
        # CORE BINDINGS: exactly what serve() would otherwise do for an @endpoint
        await self.ctx.component.create_service()
        await self.ctx.component.endpoint("generate").serve_endpoint(
            self.generate, capabilities={"model": self.engine_args.model})

    # no @endpoint: the entrypoint registers it
    async def generate(self, request: ChatRequest) -> AsyncIterator[dict[str, object]]:
        for i in range(request.max_tokens):
            yield {"model": self.engine_args.model, "temperature": self.engine_args.temperature, "index": i}


if __name__ == "__main__":
    servemesh.configure_logging()
    servemesh.run(PowerWorker, engine_args=parse_engine_args())
