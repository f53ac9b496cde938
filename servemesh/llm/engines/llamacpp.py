"""llama.cpp on the CPU (llama-cpp-python), serving a GGUF model."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import AsyncIterator, Generator
from typing import Any

from ...errors import ConfigError, Overloaded, ValidationError
from ...runtime import Context
from ...sdk import ServiceContext, async_init, endpoint, on_shutdown, service
from ..model import load_llama, resolve_model
from ..protocol import EngineOutput, EngineRequest
from . import GenerationStats

log = logging.getLogger("servemesh.llm.llamacpp")


@service(name="engine", namespace="inference",
         capabilities=lambda self: {"model": self.model, "engine": "llamacpp", "context_length": self.n_ctx})
class LlamaCppEngine:
    """One llama.cpp context; requests take turns on it (at most ``max_waiting`` wait,
    then ``Overloaded``). Tokens are produced in a worker thread, one step per await, so
    a cancelled request stops after the token being computed."""

    def __init__(self, ctx: ServiceContext, model: str, model_path: str | None = None, n_ctx: int = 2048,
                 n_threads: int | None = None, max_waiting: int = 32) -> None:
        self.ctx = ctx
        self.model = model
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.max_waiting = max_waiting
        self.llm: Any = None
        self._turn = asyncio.Lock()
        self._waiting = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="llama")
        self.counts = GenerationStats()

    @async_init
    async def load(self) -> None:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as exc:
            raise ConfigError("the llamacpp engine needs llama-cpp-python: pip install 'servemesh[llm]'") from exc
        path = await asyncio.to_thread(resolve_model, self.model, self.model_path)
        log.info("loading %s from %s ...", self.model, path)
        started = time.monotonic()
        self.llm = await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: load_llama(path, n_ctx=self.n_ctx, n_threads=self.n_threads, verbose=False))
        log.info("model %s loaded in %.1fs", self.model, time.monotonic() - started)

    @endpoint()
    async def generate(self, request: EngineRequest, context: Context) -> AsyncIterator[EngineOutput]:
        if len(request.token_ids) + request.sampling.max_tokens > self.n_ctx:
            raise ValidationError(f"prompt ({len(request.token_ids)} tokens) plus max_tokens "
                                  f"({request.sampling.max_tokens}) exceeds the context of {self.n_ctx}",
                                  field="max_tokens")
        if self._waiting >= self.max_waiting:
            raise Overloaded(f"{self.ctx.namespace}.{self.ctx.name}.generate", self.max_waiting)
        self._waiting += 1
        try:
            await self._turn.acquire()
        finally:
            self._waiting -= 1
        loop = asyncio.get_running_loop()
        tokens = self._tokens(request)
        try:
            with self.counts.track():
                stops = set(request.stop_token_ids) | {self.llm.token_eos()}
                for _ in range(request.sampling.max_tokens):
                    token = await loop.run_in_executor(self._pool, next, tokens, None)
                    if token is None:
                        break
                    if token in stops:
                        yield EngineOutput(token_ids=[token], finish_reason="stop")
                        return
                    yield EngineOutput(token_ids=[token])
                yield EngineOutput(finish_reason="length")
        finally:
            await asyncio.shield(loop.run_in_executor(self._pool, tokens.close))
            self._turn.release()

    def _tokens(self, request: EngineRequest) -> Generator[int, None, None]:
        s = request.sampling
        if s.seed is not None:
            self.llm.set_seed(s.seed)
        return self.llm.generate(request.token_ids, temp=s.temperature, top_p=s.top_p, reset=True)  # type: ignore[no-any-return]

    @endpoint()
    async def stats(self, request: dict[str, object]) -> dict[str, int]:
        return {**self.counts.as_dict(), "waiting": self._waiting}

    @on_shutdown
    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
