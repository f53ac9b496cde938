"""Helpers for the capability tests: an API server and replicas in this process, each
with its own runtime, over real loopback sockets (HTTP registration, the TCP request
plane, gRPC), exactly as separate processes would talk."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from servemesh.apps.capability import api_server_runtime, replica_runtime, serve_replica, start_api_server
from servemesh.apps.gateway import Gateway, Surfaces, gateway_runtime, start_gateway
from servemesh.capability import App
from servemesh.capability.replica import Replica
from servemesh.config import Settings
from servemesh.gateway.capability.api import CapabilityApiServer

TEXT = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "contents": {"bytes_contents": ["Hello"]}}]}


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"capability_ttl": 3.0, "capability_heartbeat": 0.5, "instance_wait": 0.5}
    return Settings.from_env(**{**base, **overrides})


@contextlib.asynccontextmanager
async def api_server(**overrides: Any) -> AsyncIterator[tuple[CapabilityApiServer, str]]:
    runtime, store = api_server_runtime(settings(**overrides))
    async with runtime:
        api, http = await start_api_server(runtime, store, "127.0.0.1", 0)
        try:
            yield api, http.url
        finally:
            await http.stop()
            await api.close()


@contextlib.asynccontextmanager
async def gateway(surfaces: Surfaces = Surfaces(), **overrides: Any) -> AsyncIterator[Gateway]:
    """``servemesh gateway`` in this process: HTTP (capability API, /v2) and OIP gRPC on free ports."""
    runtime, store = gateway_runtime(settings(**overrides))
    async with runtime:
        started = await start_gateway(runtime, store, http_port=0, grpc_port=0, surfaces=surfaces)
        try:
            yield started
        finally:
            await started.close()


@contextlib.asynccontextmanager
async def replica(app: App, replica_id: str, api_url: str | None, *, object_store: str | None = None,
                  **overrides: Any) -> AsyncIterator[tuple[Replica, str]]:
    """A replica serving ``app``, registered with ``api_url``; yields it and its gRPC endpoint."""
    runtime, store = replica_runtime(settings(**overrides))
    ready: asyncio.Future[tuple[Replica, str]] = asyncio.get_running_loop().create_future()
    async with runtime:
        task = asyncio.create_task(serve_replica(
            runtime, app, replica_id=replica_id, port=0, api_server=api_url, object_store=object_store,
            store=store, on_ready=lambda r, endpoint: ready.set_result((r, endpoint))))
        done, _ = await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # it failed: say why
        try:
            yield ready.result()
        finally:
            runtime.request_shutdown()
            await task


async def until(check: Any, timeout: float = 10.0) -> None:
    """Wait for ``check()`` (sync or async) to be true, polling state (never a fixed sleep)."""
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.02)
