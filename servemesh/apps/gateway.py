"""One gateway process, many surfaces (``servemesh gateway``).

On ``--http-port``: the capability API (``/register``, ``/registry`` always, so replicas
can register; ``/infer/json`` and ``/infer/stream`` unless switched off), KServe OIP v2
REST under ``/v2`` and the OpenAI API under ``/v1`` (when switched on; it serves the LLM
pipeline's processors found in discovery, i.e. etcd); on ``--grpc-port``, OIP v2 gRPC.
Every surface routes over the same replicas with one ``CapabilityRouter`` (least
loaded, failover), and the HTTP surfaces share one set of metrics.

A capability app given to the gateway (``servemesh gateway module:app``) is served in
its own process as a replica too; others join with ``servemesh serve module:app
--api-server http://gateway:port`` (or through etcd).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..capability import App
from ..capability.replica import Replica
from ..capability.routing import CapabilityRouter
from ..gateway.capability.api import CapabilityApiServer
from ..gateway.capability.grpc_connector import GrpcConnector
from ..gateway.kit import GatewayMetrics, PathMux
from ..gateway.kserve.rest import KServeRest
from ..gateway.kserve.service import KServeService
from ..http import HttpServer
from ..objects import ObjectStoreSettings, open_objects
from ..runtime import DistributedRuntime
from ..runtime.discovery.memory import MemoryStore
from . import settle_heap
from .capability import api_server_runtime

log = logging.getLogger("servemesh.gateway")

gateway_runtime = api_server_runtime


@dataclasses.dataclass(frozen=True)
class Surfaces:
    """Which surfaces a gateway serves."""

    #: the capability API's ``/infer/json`` and ``/infer/stream`` (its registry is always served)
    capability: bool = True
    #: KServe OIP v2 REST (``/v2``)
    kserve: bool = True
    #: KServe OIP v2 gRPC (on the gRPC port)
    kserve_grpc: bool = True
    #: the OpenAI API (``/v1``), for an LLM pipeline's processors
    openai: bool = False


@dataclasses.dataclass
class Gateway:
    """A started gateway: its servers and surfaces (``close()`` stops them)."""

    http: HttpServer
    api: CapabilityApiServer
    service: KServeService
    router: CapabilityRouter
    grpc: Any = None
    closers: list[Callable[[], Any]] = dataclasses.field(default_factory=list)

    @property
    def url(self) -> str:
        return self.http.url

    @property
    def grpc_address(self) -> str | None:
        return None if self.grpc is None else self.grpc.address

    async def close(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop(grace=1.0)
        await self.http.stop()
        for close in reversed(self.closers):
            await close()
        await self.api.close()
        await self.router.close()


async def start_gateway(runtime: DistributedRuntime, store: MemoryStore, *, host: str = "127.0.0.1",
                        http_port: int = 8000, grpc_port: int = 8001,
                        surfaces: Surfaces = Surfaces()) -> Gateway:
    """The gateway's servers, started (embeddable: ``await gateway.close()`` when done)."""
    await runtime.start()
    settings = runtime.settings
    runtime.plane.add_connector(GrpcConnector(settings.connect_timeout, settings.request_timeout))
    router = await CapabilityRouter(runtime, settings.capability_namespace).start()
    metrics = GatewayMetrics()
    api = await CapabilityApiServer(runtime, store, router=router, metrics=metrics,
                                    infer=surfaces.capability).start()
    service = KServeService(router)
    prefixes: list[tuple[str, Any]] = []
    closers: list[Callable[[], Any]] = []
    if surfaces.kserve:
        prefixes.append(("/v2", KServeRest(service, metrics=metrics).app))
    if surfaces.openai:
        from ..gateway.openai import OpenAIFrontend

        frontend = await OpenAIFrontend(runtime, metrics=metrics).start()
        closers.append(frontend.close)
        prefixes.append(("/v1", frontend.kit.asgi))
    grpc_server = None
    if surfaces.kserve_grpc:
        from ..gateway.kserve.grpc_server import KServeGrpcServer

        grpc_server = KServeGrpcServer(host, grpc_port)
        await grpc_server.start(service)
    http = HttpServer(PathMux(api.app, prefixes), host, http_port, limits=api.kit.limits, shape=api.kit.shape)
    http.start()
    gateway = Gateway(http, api, service, router, grpc_server, closers)
    on = [name for name, flag in (("capability API", surfaces.capability), ("KServe REST /v2", surfaces.kserve),
                                  ("OpenAI /v1", surfaces.openai)) if flag]
    log.info("gateway on %s (%s)%s", http.url, ", ".join(on) or "registry only",
             f", KServe gRPC on {grpc_server.address}" if grpc_server else "")
    return gateway


@contextlib.asynccontextmanager
async def local_replica(runtime: DistributedRuntime, app: App | None,
                        object_store: str | None = None) -> AsyncIterator[Replica | None]:
    """``app`` served as a replica in this process, on ``runtime`` (until the block ends).
    One per process: a runtime serves the capability endpoints once."""
    if app is None:
        yield None
        return
    replica_id = f"{socket.gethostname().split('.')[0]}-{os.getpid()}"
    async with open_objects(ObjectStoreSettings.from_settings(runtime.settings, location=object_store)) as objects:
        replica = await Replica(app, runtime, replica_id=replica_id, objects=objects).start()
        serving = asyncio.ensure_future(replica.serve())
        try:
            waiting = asyncio.ensure_future(replica.wait_served())
            await asyncio.wait([waiting, serving], return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                waiting.cancel()
                serving.result()  # it failed: say why
            await waiting
            yield replica
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            await replica.close()


async def serve_gateway(runtime: DistributedRuntime, store: MemoryStore, *, host: str = "127.0.0.1",
                        http_port: int = 8000, grpc_port: int = 8001, surfaces: Surfaces = Surfaces(),
                        app: App | None = None, object_store: str | None = None,
                        on_ready: Callable[[Gateway], Any] | None = None) -> None:
    """The gateway (and ``app``, served in this process) until the runtime stops."""
    await runtime.start()
    async with local_replica(runtime, app, object_store):
        gateway = await start_gateway(runtime, store, host=host, http_port=http_port, grpc_port=grpc_port,
                                      surfaces=surfaces)
        settle_heap()
        try:
            if on_ready is not None:
                on_ready(gateway)
            await runtime.wait_draining()
        finally:
            await gateway.close()


__all__ = ["Gateway", "Surfaces", "gateway_runtime", "local_replica", "serve_gateway", "start_gateway"]
