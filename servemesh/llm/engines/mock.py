"""A deterministic engine: configurable speed and latency, real cancellation, no model."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ...errors import ConfigError, ValidationError
from ...runtime import Context
from ...sdk import ServiceContext, async_init, endpoint, on_shutdown, service
from ..kv import BLOCK_SIZE, KvPublisher, block_hashes
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
    ``context_length`` that prompt and answer share.

    With ``kv_blocks`` > 0 it simulates a prefix cache of that many blocks (LRU): a
    prompt's leading blocks found there are not prefilled, the others cost
    ``prefill_s_per_token`` per token before the first token; the prompt's blocks are
    then cached, and published (``KvPublisher``) for KV-aware routers. ``kv_state``
    serves the snapshot; ``stats`` counts ``prefix_hits``, ``prompt_tokens`` and
    ``cached_tokens``."""

    def __init__(self, ctx: ServiceContext, model: str = "mock", tokens_per_s: float = 0.0,
                 latency_s: float = 0.0, finish_after: int | None = None,
                 context_length: int = CONTEXT_LENGTH, kv_blocks: int = 0, prefill_s_per_token: float = 0.0) -> None:
        if kv_blocks < 0 or prefill_s_per_token < 0:
            raise ConfigError(f"kv_blocks and prefill_s_per_token cannot be negative ({kv_blocks}, "
                              f"{prefill_s_per_token})")
        self.ctx = ctx
        self.model = model
        self.context_length = context_length
        self.tokens_per_s = tokens_per_s
        self.latency_s = latency_s
        self.finish_after = finish_after
        self.tokens = list(MOCK_TEXT.encode("utf-8"))
        self.counts = GenerationStats()
        self.kv_blocks = kv_blocks
        self.prefill_s_per_token = prefill_s_per_token
        self.kv = KvPublisher(ctx.runtime, model)
        self._cache: collections.OrderedDict[int, None] = collections.OrderedDict()  # block hash, LRU first
        self.prefix = {"prefix_hits": 0, "prompt_tokens": 0, "cached_tokens": 0}

    @async_init
    async def start_kv(self) -> None:
        if self.kv_blocks:
            await self.kv.start()

    @on_shutdown
    async def stop_kv(self) -> None:
        await self.kv.close()

    @endpoint()
    async def generate(self, request: EngineRequest, context: Context) -> AsyncIterator[EngineOutput]:
        if len(request.token_ids) + request.sampling.max_tokens > self.context_length:
            raise ValidationError(f"prompt ({len(request.token_ids)} tokens) plus max_tokens "
                                  f"({request.sampling.max_tokens}) exceeds the context of {self.context_length}",
                                  field="max_tokens")
        with self.counts.track():
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if self.kv_blocks or self.prefill_s_per_token:
                await self._prefill(request.token_ids)
            delay = 1.0 / self.tokens_per_s if self.tokens_per_s else 0.0
            for i in range(request.sampling.max_tokens):
                if self.finish_after is not None and i >= self.finish_after:
                    yield EngineOutput(token_ids=[ByteTokenizer.EOS], finish_reason="stop")
                    return
                if delay:
                    await asyncio.sleep(delay)
                yield EngineOutput(token_ids=[self.tokens[i % len(self.tokens)]])
            yield EngineOutput(finish_reason="length")

    async def _prefill(self, token_ids: Sequence[int]) -> None:
        """The simulated prefill: the prompt's cached leading blocks are free, the rest
        costs ``prefill_s_per_token`` a token; then the prompt's blocks are cached."""
        hashes = block_hashes(token_ids) if self.kv_blocks else []
        cache = self._cache
        cached = 0
        for h in hashes:
            if h not in cache:
                break
            cached += 1
        self.prefix["prompt_tokens"] += len(token_ids)
        if cached:
            self.prefix["prefix_hits"] += 1
            self.prefix["cached_tokens"] += cached * BLOCK_SIZE
        uncached = len(token_ids) - cached * BLOCK_SIZE
        if self.prefill_s_per_token and uncached:
            await asyncio.sleep(self.prefill_s_per_token * uncached)
        for h in hashes:
            if h in cache:
                cache.move_to_end(h)
            else:
                cache[h] = None
                self.kv.hold(h, (h,))  # each block its own owner: cached until evicted
        while len(cache) > self.kv_blocks:
            evicted, _ = cache.popitem(last=False)
            self.kv.drop(evicted)

    @endpoint()
    async def stats(self, request: dict[str, object]) -> dict[str, int]:
        """How many generations run now and how many were cancelled, and the prefix cache's
        hits (for tests and ops)."""
        return {**self.counts.as_dict(), **self.prefix}

    @endpoint()
    async def kv_state(self, request: dict[str, object]) -> dict[str, Any]:
        """The blocks the simulated KV cache holds (``KvPublisher.state()``), for routers."""
        return self.kv.state()
