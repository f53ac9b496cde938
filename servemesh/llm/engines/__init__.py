"""Engines: ``mock`` (deterministic, for tests and benchmarks) and ``llamacpp`` (real, CPU).

Each is a ``@service`` named ``inference.engine`` with ``generate`` and ``stats``
endpoints, registered with the capabilities ``{"model": ..., "engine": ...}``: the
model is known only at run time, and it is what clients select engines by."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

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
