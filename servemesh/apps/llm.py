"""The LLM application: engines, processor and the OpenAI frontend, assembled.

Used by ``examples/llm/*.py``: the whole pipeline in one process
(:func:`serve_pipeline`), or each part in its own process.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ..gateway.kit import Peers
from ..gateway.openai import OpenAIFrontend
from ..http import HttpServer
from ..llm.model import DEFAULT_MODEL, REPACK_CHOICES, resolve_model
from ..llm.processor import ENGINE_PATH, PROCESSOR_PATH, Processor
from ..llm.tokenizer import ByteTokenizer, GGUFTokenizer, Tokenizer
from ..runtime import DistributedRuntime
from ..runtime.discovery.memory import MemoryDiscovery
from ..runtime.tasks import own_error
from ..sdk import serve
from . import settle_heap
from .workers import Seat

log = logging.getLogger("servemesh.llm")

ENGINES = ("llamacpp", "mock")


def engine_class(kind: str) -> type:
    if kind == "mock":
        from ..llm.engines.mock import MockEngine

        return MockEngine
    if kind == "llamacpp":
        from ..llm.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine
    if kind in ("vllm", "sglang"):
        raise ConfigError(f"the {kind} engine is not bundled; serve it as a @service with a `generate` endpoint "
                          "at inference.engine.generate and a `model` capability (see docs/llm.md)")
    raise ConfigError(f"unknown engine {kind!r}: use one of {', '.join(ENGINES)}")


#: the llamacpp engine's options, by the names the command lines use (``--slots`` ...)
LLAMACPP_OPTIONS = {"context_length": "n_ctx", "slots": "slots", "threads": "n_threads",
                    "batch_tokens": "batch_tokens", "max_waiting": "max_waiting", "deterministic": "deterministic",
                    "repack": "repack"}


def engine_kwargs(kind: str, model: str, model_path: str | None, **extra: Any) -> dict[str, Any]:
    """Constructor arguments of an engine from command-line options (``None``: the default);
    ``context_length`` is llama.cpp's ``n_ctx``."""
    given = {k: v for k, v in extra.items() if v is not None}
    if kind == "mock":
        return {"model": model, **{k: v for k, v in given.items() if k not in LLAMACPP_OPTIONS or
                                   k == "context_length"}}
    kwargs: dict[str, Any] = {"model": model, "model_path": model_path}
    kwargs.update({LLAMACPP_OPTIONS[k]: v for k, v in given.items() if k in LLAMACPP_OPTIONS})
    return kwargs


def add_engine_arguments(parser: Any) -> None:
    """The llamacpp engine's batching options on an ``argparse`` parser."""
    group = parser.add_argument_group("llamacpp engine (continuous batching)")
    group.add_argument("--slots", type=int, help="sequences decoded together (default 4); each has the "
                       "context length")
    group.add_argument("--threads", type=int, help="llama.cpp threads (default: all cores)")
    group.add_argument("--batch-tokens", type=int, help="most tokens decoded in one step (default 512)")
    group.add_argument("--max-waiting", type=int, help="requests that may wait for a slot before 429 (default 64)")
    group.add_argument("--deterministic", action="store_true", default=None,
                       help="greedy output independent of batching and prefix-cache hits (slower when few "
                            "slots are busy)")
    group.add_argument("--repack", choices=REPACK_CHOICES, help="let llama.cpp repack the weights for its faster "
                       "kernels (AMX on Intel Xeon); auto (the default): unless its AMX kernels could crash "
                       "(docs/llm.md)")


def engine_options(args: Any) -> dict[str, Any]:
    """What ``add_engine_arguments`` parsed, for :func:`engine_kwargs`."""
    return {k: getattr(args, k, None) for k in ("slots", "threads", "batch_tokens", "max_waiting", "deterministic",
                                                "repack")}


def make_tokenizer(engine: str, model: str, model_path: str | None) -> Tokenizer:
    if engine == "mock":
        return ByteTokenizer(model)
    return GGUFTokenizer(str(resolve_model(model, model_path)), model)


async def start_frontend(runtime: DistributedRuntime, host: str, port: int, *, sock: socket.socket | None = None,
                         peers: Peers | None = None, **options: Any) -> HttpServer:
    """The OpenAI frontend on ``host:port`` (``options`` go to ``OpenAIFrontend``), with the
    runtime's HTTP limits and API keys. One of several workers serves ``sock`` (a socket
    the group shares) and joins its ``peers`` (started here; the caller closes them)."""
    frontend = await OpenAIFrontend(runtime, **options).start()
    if peers is not None:
        frontend.kit.join(await peers.start(frontend.kit.local_metrics))
    server = frontend.kit.http_server(host, port, sock)
    server.start()
    log.info("OpenAI-compatible frontend on %s (docs: %s/docs)%s%s", server.url, server.url,
             " with API keys" if frontend.kit.keys.enabled else "",
             f" as worker {peers.index}" if peers is not None else "")
    return server


async def frontend_worker(runtime: DistributedRuntime, seat: Seat, **options: Any) -> None:
    """One of the frontend's worker processes (``serve_workers``), until the runtime stops."""
    host, port = seat.sock.getsockname()[:2]
    peers = Peers(seat.index, seat.directory)
    try:
        server = await start_frontend(runtime, host, port, sock=seat.sock, peers=peers, **options)
        settle_heap()
        try:
            seat.started()
            await runtime.wait_stopped()
        finally:
            await server.stop()
    finally:
        await peers.close()


async def serve_pipeline(runtime: DistributedRuntime, *, engine: str = "llamacpp", model: str = DEFAULT_MODEL,
                         model_path: str | None = None, host: str = "127.0.0.1", port: int = 8080,
                         engines: int = 1, on_ready: Callable[[str, str], Any] | None = None,
                         **engine_extra: Any) -> None:
    """Engine(s), processor and frontend in this process, until the runtime stops.

    The frontend starts once every engine and the processor are served (the processor
    serves only once it sees an engine), so its first ``/ready`` is a true one. A
    component that fails to start stops the whole pipeline with its error."""
    if engines < 1:
        raise ConfigError(f"the pipeline needs at least one engine, not {engines}")
    tokenizer = await asyncio.to_thread(make_tokenizer, engine, model, model_path)
    cls = engine_class(engine)
    kwargs = engine_kwargs(engine, model, model_path, **engine_extra)
    # each further engine is another instance: a runtime of its own in the same discovery
    others = [DistributedRuntime(runtime.settings, discovery=_shared(runtime)) for _ in range(engines - 1)]
    try:
        with own_error():  # one component failed: its own error, not a group
            async with asyncio.TaskGroup() as services:
                for rt in (runtime, *others):
                    services.create_task(serve(cls, runtime=rt, **kwargs))
                services.create_task(serve(Processor, runtime=runtime, tokenizer=tokenizer, engine_path=ENGINE_PATH))
                for rt in (runtime, *others):
                    await rt.wait_served(ENGINE_PATH)
                await runtime.wait_served(PROCESSOR_PATH)
                server = await start_frontend(runtime, host, port)
                settle_heap()
                try:
                    if on_ready is not None:
                        on_ready(server.url, model)
                    await runtime.wait_stopped()
                finally:
                    await server.stop()
                    for rt in others:
                        rt.request_shutdown()
    finally:
        for rt in others:
            await rt.shutdown()


def _shared(runtime: DistributedRuntime) -> MemoryDiscovery | None:
    """Discovery for another runtime next to ``runtime``: the same in-memory store when
    embedded; ``None`` (from the settings, e.g. etcd) otherwise."""
    return MemoryDiscovery(runtime.discovery.store) if isinstance(runtime.discovery, MemoryDiscovery) else None


__all__ = ["ENGINES", "LLAMACPP_OPTIONS", "add_engine_arguments", "engine_class", "engine_kwargs", "engine_options",
           "frontend_worker", "make_tokenizer", "serve_pipeline", "start_frontend"]
