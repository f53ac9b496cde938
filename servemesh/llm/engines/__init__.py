"""Engines: ``mock`` (deterministic, for tests and benchmarks) and ``llamacpp`` (real, CPU)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ...sdk import ServiceContext


async def serve_engine(ctx: ServiceContext, generate: Callable[..., Any], stats: Callable[..., Any],
                       model: str, kind: str) -> None:
    """Serve an engine's ``generate`` and ``stats`` endpoints under its model's name.

    Engines use ``@entrypoint`` for this: the model name is only known at run time,
    and it is the capability clients select engines by."""
    caps = {"model": model, "engine": kind}
    await asyncio.gather(ctx.component.endpoint("generate").serve_endpoint(generate, capabilities=caps),
                         ctx.component.endpoint("stats").serve_endpoint(stats, capabilities=caps))
