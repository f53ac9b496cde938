"""Engines: ``mock`` (deterministic, for tests and benchmarks) and ``llamacpp`` (real, CPU)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from ...sdk import ServiceContext

log = logging.getLogger("servemesh.llm.engine")


class GenerationStats:
    """What an engine's ``stats`` endpoint reports: generations running, served, cancelled."""

    def __init__(self) -> None:
        self.generating = 0
        self.served = 0
        self.cancelled = 0

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Wrap one generation; a caller that leaves early counts as a cancellation."""
        self.generating += 1
        self.served += 1
        try:
            yield
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            log.info("generation cancelled by the caller")
            raise
        finally:
            self.generating -= 1

    def as_dict(self) -> dict[str, int]:
        return {"generating": self.generating, "served": self.served, "cancelled": self.cancelled}


async def serve_engine(ctx: ServiceContext, generate: Callable[..., Any], stats: Callable[..., Any],
                       model: str, kind: str) -> None:
    """Serve an engine's ``generate`` and ``stats`` endpoints under its model's name.

    Engines use ``@entrypoint`` for this: the model name is only known at run time,
    and it is the capability clients select engines by."""
    caps = {"model": model, "engine": kind}
    await asyncio.gather(ctx.component.endpoint("generate").serve_endpoint(generate, capabilities=caps),
                         ctx.component.endpoint("stats").serve_endpoint(stats, capabilities=caps))
