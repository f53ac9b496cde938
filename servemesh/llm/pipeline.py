"""Start the pipeline's components (used by `examples/llm/*.py` and `servemesh llm ...`)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..errors import ConfigError
from ..http import HttpServer
from ..runtime import DistributedRuntime
from ..sdk import serve
from .model import DEFAULT_MODEL, resolve_model
from .processor import ENGINE_PATH, Processor, Router
from .tokenizer import ByteTokenizer, GGUFTokenizer, Tokenizer

log = logging.getLogger("servemesh.llm")

ENGINES = ("llamacpp", "mock")


def engine_class(kind: str) -> type:
    if kind == "mock":
        from .engines.mock import MockEngine

        return MockEngine
    if kind == "llamacpp":
        from .engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine
    if kind in ("vllm", "sglang"):
        raise ConfigError(f"the {kind} engine is not bundled; serve it with an @entrypoint service "
                          "that registers inference.engine.generate (see docs/llm.md)")
    raise ConfigError(f"unknown engine {kind!r}: use one of {', '.join(ENGINES)}")


def engine_kwargs(kind: str, model: str, model_path: str | None, **extra: Any) -> dict[str, Any]:
    if kind == "mock":
        return {"model": model, **{k: v for k, v in extra.items() if v is not None}}
    return {"model": model, "model_path": model_path}


def make_tokenizer(engine: str, model: str, model_path: str | None) -> Tokenizer:
    if engine == "mock":
        return ByteTokenizer(model)
    return GGUFTokenizer(str(resolve_model(model, model_path)), model)


async def start_frontend(runtime: DistributedRuntime, host: str, port: int) -> HttpServer:
    from ..gateway.openai import OpenAIFrontend

    frontend = await OpenAIFrontend(runtime).start()
    server = HttpServer(frontend.app, host, port)
    server.start()
    log.info("OpenAI-compatible frontend on %s (docs: %s/docs)", server.url, server.url)
    return server


async def serve_pipeline(runtime: DistributedRuntime, *, engine: str = "llamacpp", model: str = DEFAULT_MODEL,
                         model_path: str | None = None, host: str = "127.0.0.1", port: int = 8080,
                         engines: int = 1, on_ready: Any = None, **engine_extra: Any) -> None:
    """Engine(s), processor and frontend in this process, until the runtime stops."""
    tokenizer = await asyncio.to_thread(make_tokenizer, engine, model, model_path)
    cls = engine_class(engine)
    kwargs = engine_kwargs(engine, model, model_path, **engine_extra)
    tasks = [asyncio.create_task(serve(cls, runtime=runtime, **kwargs)) for _ in range(engines)]
    tasks.append(asyncio.create_task(serve(Processor, runtime=runtime, tokenizer=tokenizer,
                                           engine_path=ENGINE_PATH)))
    client = await runtime.endpoint(ENGINE_PATH).client(capabilities={"model": model})
    await client.wait_for_instances(timeout=600)
    server = await start_frontend(runtime, host, port)
    try:
        if on_ready is not None:
            on_ready(server.url, model)
        await runtime.wait_stopped()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await server.stop()


__all__ = ["ENGINES", "Processor", "Router", "engine_class", "make_tokenizer", "serve_pipeline",
           "start_frontend"]
