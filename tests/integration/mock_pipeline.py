"""The embedded mock pipeline (engine, processor, OpenAI frontend) in one runtime, for HTTP tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from servemesh import DistributedRuntime, serve
from servemesh.apps.llm import start_frontend
from servemesh.llm.engines.mock import MockEngine
from servemesh.llm.processor import PROCESSOR_PATH, Processor
from servemesh.llm.tokenizer import ByteTokenizer


@contextlib.asynccontextmanager
async def mock_pipeline(tokens_per_s: float = 0.0, **settings: object) -> AsyncIterator[str]:
    """Yields the frontend's base URL; ``settings`` go to the runtime (limits, API keys)."""
    async with DistributedRuntime(**settings) as rt:  # type: ignore[arg-type]
        tasks = [asyncio.create_task(serve(MockEngine, runtime=rt, model="mock", tokens_per_s=tokens_per_s)),
                 asyncio.create_task(serve(Processor, runtime=rt, tokenizer=ByteTokenizer("mock")))]
        await rt.wait_served(PROCESSOR_PATH)
        server = await start_frontend(rt, "127.0.0.1", 0)
        try:
            yield server.url
        finally:
            await server.stop()
            rt.request_shutdown()
            await asyncio.gather(*tasks)
