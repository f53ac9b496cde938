"""Shared by the session tests: the example apps, and a gateway served on port 0."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from servemesh import DistributedRuntime
from servemesh.apps.sessions import serve_sessions

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "sessions"))
import burr_chat
import counter

__all__ = ["burr_chat", "counter", "parse_sse", "served"]


@contextlib.asynccontextmanager
async def served(app: Any, runtime: DistributedRuntime, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """``serve_sessions(app, ...)`` on port 0 until the block ends; a client of its gateway."""
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_sessions(app, runtime=runtime, port=0, on_ready=ready.set_result, **options))
    try:
        await asyncio.wait({ready, task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # it failed to start: its error
        url = ready.result()
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def parse_sse(text: str) -> list[Any]:
    import json

    frames = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    return [f if f == "[DONE]" else json.loads(f) for f in frames]
