"""llama.cpp on the CPU (llama-cpp-python), serving a GGUF model with continuous batching."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from ...errors import ConfigError, ValidationError
from ...runtime import Context
from ...sdk import ServiceContext, async_init, endpoint, on_shutdown, service
from ..kv import BLOCK_SIZE, KvPublisher, block_hashes
from ..model import check_repack, resolve_model
from ..protocol import EngineOutput, EngineRequest
from . import GenerationStats
from .batching import Batcher, Sequence
from .metrics import EngineCollector

T = TypeVar("T")

log = logging.getLogger("servemesh.llm.llamacpp")


def _capabilities(self: LlamaCppEngine) -> dict[str, object]:
    return {"model": self.model, "engine": "llamacpp", "context_length": self.n_ctx, "slots": self.slots}


@service(name="engine", namespace="inference", capabilities=_capabilities)
class LlamaCppEngine:
    """Continuous batching on one llama.cpp context of ``slots`` sequences, each of up
    to ``n_ctx`` tokens (prompt and answer).

    Every step decodes one token for each running request plus chunks of waiting
    prompts (at most ``batch_tokens`` tokens a step); requests join and leave between
    steps, each with its own sampling (temperature, top-p, seed, stop tokens). A
    request that finds every slot busy waits; beyond ``max_waiting`` waiting it is
    refused with ``Overloaded`` (HTTP 429). A caller that leaves frees its slot at the
    next step. A finished slot keeps its KV state as a prefix cache: a prompt that
    starts like a cached one (the next turn of a chat, a shared system prompt)
    computes only the rest. The cached blocks are published (``KvPublisher``) for
    KV-aware routers, and served by ``kv_state``. ``deterministic=True`` makes greedy
    output independent of batching and cache hits (``llama_batch.py``), at a cost in
    throughput when few slots are busy. ``repack`` lets llama.cpp repack the weights
    for its faster kernels (``model.extra_buffers``). The decode loop runs in a thread of its own;
    the event loop only hands tokens over. The counters are on ``stats`` and, as
    ``servemesh_engine_*``, on the runtime's Prometheus ``/metrics``."""

    def __init__(self, ctx: ServiceContext, model: str, model_path: str | None = None, n_ctx: int = 2048,
                 n_threads: int | None = None, slots: int = 4, batch_tokens: int = 512, max_waiting: int = 64,
                 deterministic: bool = False, repack: str = "auto") -> None:
        if n_ctx < 256 or n_ctx % 256:
            raise ConfigError(f"the context length ({n_ctx}) must be a multiple of 256 for the llamacpp engine")
        if not 1 <= slots <= 256:
            raise ConfigError(f"slots must be between 1 and 256, not {slots}")
        if batch_tokens < max(slots, 64):
            raise ConfigError(f"batch_tokens ({batch_tokens}) must be at least 64 and at least slots ({slots})")
        if max_waiting < 0:
            raise ConfigError(f"max_waiting cannot be negative ({max_waiting})")
        self.ctx = ctx
        self.model = model
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.slots = slots
        self.batch_tokens = batch_tokens
        self.max_waiting = max_waiting
        self.deterministic = deterministic
        self.repack = check_repack(repack)
        self.backend: Any = None
        self.batcher: Batcher | None = None
        self.counts = GenerationStats()
        self.kv = KvPublisher(ctx.runtime, model)
        self.collector: EngineCollector | None = None

    @async_init
    async def load(self) -> None:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as exc:
            raise ConfigError("the llamacpp engine needs llama-cpp-python: pip install 'servemesh[llm]'") from exc
        from .llama_batch import LlamaBackend

        path: Path = await asyncio.to_thread(resolve_model, self.model, self.model_path)
        log.info("loading %s from %s (%d slots of %d tokens) ...", self.model, path, self.slots, self.n_ctx)
        started = time.monotonic()
        self.backend = await in_own_thread(
            LlamaBackend, path, slots=self.slots, n_ctx=self.n_ctx, batch_tokens=self.batch_tokens,
            n_threads=self.n_threads, deterministic=self.deterministic, repack=self.repack)
        self.batcher = Batcher(self.backend, asyncio.get_running_loop(), slots=self.slots,
                               batch_tokens=self.batch_tokens, max_waiting=self.max_waiting,
                               name=f"{self.ctx.namespace}.{self.ctx.name}.generate", on_cache=self._cached,
                               block=BLOCK_SIZE)
        self.batcher.start()
        self.collector = EngineCollector(self.batcher, self.model)
        self.ctx.runtime.metrics.registry.register(self.collector)
        await self.kv.start()
        log.info("model %s loaded in %.1fs", self.model, time.monotonic() - started)

    def _cached(self, slot: int, tokens: tuple[int, ...]) -> None:
        """A slot's cached tokens changed by a block: publish what it holds now."""
        self.kv.hold(slot, block_hashes(tokens))

    @endpoint()
    async def generate(self, request: EngineRequest, context: Context) -> AsyncIterator[EngineOutput]:
        batcher = self.batcher
        assert batcher is not None
        s = request.sampling
        if len(request.token_ids) + s.max_tokens > self.n_ctx:
            raise ValidationError(f"prompt ({len(request.token_ids)} tokens) plus max_tokens "
                                  f"({s.max_tokens}) exceeds the context of {self.n_ctx}", field="max_tokens")
        vocab = self.backend.n_vocab
        if any(not 0 <= t < vocab for t in request.token_ids):
            raise ValidationError(f"token ids must be between 0 and {vocab - 1}", field="token_ids")
        seq = Sequence(prompt=list(request.token_ids), max_tokens=s.max_tokens,
                       stop=frozenset(request.stop_token_ids), temperature=s.temperature, top_p=s.top_p,
                       seed=s.seed)
        batcher.submit(seq)  # Overloaded when too many wait
        with self.counts.track():
            try:
                while True:
                    await seq.wake.wait()
                    seq.wake.clear()
                    tokens, seq.ready = seq.ready, []
                    if seq.error is not None:
                        raise seq.error
                    if seq.finish is not None:
                        yield EngineOutput(token_ids=tokens, finish_reason=seq.finish)  # type: ignore[arg-type]
                        return
                    if tokens:
                        yield EngineOutput(token_ids=tokens)
            finally:
                if seq.finish is None:
                    batcher.cancel(seq)

    @endpoint()
    async def stats(self, request: dict[str, object]) -> dict[str, Any]:
        """Generations running, served and cancelled; the batcher's slots, queue, steps and
        prefix cache (``prefix_hits``, ``prompt_tokens``, ``cached_tokens``)."""
        b = self.batcher
        assert b is not None
        return {**self.counts.as_dict(), **b.stats.as_dict(), "slots": self.slots, "busy": b.busy,
                "waiting": b.waiting}

    @endpoint()
    async def kv_state(self, request: dict[str, object]) -> dict[str, Any]:
        """The KV blocks the slots hold (``KvPublisher.state()``), for KV-aware routers."""
        return self.kv.state()

    @on_shutdown
    async def close(self) -> None:
        if self.collector is not None:
            self.ctx.runtime.metrics.registry.unregister(self.collector)
            self.collector = None
        await self.kv.close()
        if self.batcher is not None:
            await asyncio.to_thread(self.batcher.close)
        if self.backend is not None and (self.batcher is None or not self.batcher.alive):
            await asyncio.to_thread(self.backend.close)


async def in_own_thread(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``func(*args, **kwargs)`` in a thread of its own that ends with it.

    llama.cpp runs its kernels in OpenMP teams, and libgomp keeps a team's threads for
    as long as the thread that started it lives. Loading a model can start one (weight
    repacking does), and a pool thread (``asyncio.to_thread``) lives on: the decode
    thread's own team then makes more OpenMP threads than cores, so libgomp stops
    spinning at its barriers and every one of a step's hundreds of barriers sleeps
    in the kernel (a decode step took twice as long, measured)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        try:
            loop.call_soon_threadsafe(_settle, done, result, error)
        except RuntimeError:  # the event loop closed while this ran: nobody takes the result
            _discard(result)

    thread = threading.Thread(target=run, name=f"load {getattr(func, '__name__', 'model')}", daemon=True)
    thread.start()
    result = await done
    await asyncio.to_thread(thread.join)  # its OpenMP team is gone before the first step
    return result


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():  # the start was given up: what was loaded is freed, not leaked
        _discard(result)
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _discard(result: Any) -> None:
    close = getattr(result, "close", None)
    if callable(close):
        close()
