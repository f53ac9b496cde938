"""A deterministic engine: configurable speed and latency, real cancellation, no model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ...errors import ValidationError
from ...runtime import Context
from ...sdk import ServiceContext, endpoint, service
from ..protocol import EngineOutput, EngineRequest
from ..tokenizer import ByteTokenizer
from . import GenerationStats

#: what the mock "model" says, as byte tokens (with multi-byte characters on purpose)
MOCK_TEXT = "Hello from the mock engine. Café, naïve, 東京, 😀 — all streamed byte by byte. "


#: the mock model's context length unless told otherwise (prompt and answer together)
CONTEXT_LENGTH = 131072


@service(name="engine", namespace="inference", capabilities=lambda self: {
    "model": self.model, "engine": "mock", "context_length": self.context_length})
class MockEngine:
    """Streams the bytes of ``MOCK_TEXT`` (repeated) as tokens, ``tokens_per_s`` at a time
    (0: as fast as it can), after ``latency_s``; stops at ``max_tokens`` or, if
    ``finish_after`` tokens are produced first, with EOS. Like a real model it has a
    ``context_length`` that prompt and answer share."""

    def __init__(self, ctx: ServiceContext, model: str = "mock", tokens_per_s: float = 0.0,
                 latency_s: float = 0.0, finish_after: int | None = None,
                 context_length: int = CONTEXT_LENGTH) -> None:
        self.ctx = ctx
        self.model = model
        self.context_length = context_length
        self.tokens_per_s = tokens_per_s
        self.latency_s = latency_s
        self.finish_after = finish_after
        self.tokens = list(MOCK_TEXT.encode("utf-8"))
        self.counts = GenerationStats()

    @endpoint()
    async def generate(self, request: EngineRequest, context: Context) -> AsyncIterator[EngineOutput]:
        if len(request.token_ids) + request.sampling.max_tokens > self.context_length:
            raise ValidationError(f"prompt ({len(request.token_ids)} tokens) plus max_tokens "
                                  f"({request.sampling.max_tokens}) exceeds the context of {self.context_length}",
                                  field="max_tokens")
        with self.counts.track():
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            delay = 1.0 / self.tokens_per_s if self.tokens_per_s else 0.0
            for i in range(request.sampling.max_tokens):
                if self.finish_after is not None and i >= self.finish_after:
                    yield EngineOutput(token_ids=[ByteTokenizer.EOS], finish_reason="stop")
                    return
                if delay:
                    await asyncio.sleep(delay)
                yield EngineOutput(token_ids=[self.tokens[i % len(self.tokens)]])
            yield EngineOutput(finish_reason="length")

    @endpoint()
    async def stats(self, request: dict[str, object]) -> dict[str, int]:
        """How many generations run now and how many were cancelled (for tests and ops)."""
        return self.counts.as_dict()
