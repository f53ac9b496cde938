"""The capability application: the API server, and replicas serving an ``App``.

- :func:`api_server_runtime` / :func:`serve_api_server` (``servemesh api-server``): the
  AnyServe-compatible HTTP API over the runtime. Without etcd, replicas reach it by
  registering over HTTP; with etcd, it also sees every replica registered there.
- :func:`replica_runtime` / :func:`serve_replica` (``servemesh serve module:app``): one
  process serving an app's handlers on the request plane and over OIP v2 gRPC on its
  ``--port``, registered in discovery (an etcd lease with etcd) and, given an API
  server, over HTTP with heartbeats.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

from ..capability import App, wire
from ..capability.registrar import PeerSync, Registrar, RegistrationFailed
from ..capability.replica import Replica
from ..capability.routing import CapabilityRouter
from ..config import Settings
from ..errors import ConfigError
from ..gateway.capability.api import CapabilityApiServer
from ..gateway.capability.grpc_connector import GrpcConnector
from ..gateway.capability.grpc_server import ReplicaGrpcServer
from ..http import HttpServer
from ..objects import ObjectStoreSettings, open_objects
from ..runtime import DistributedRuntime
from ..runtime.discovery.memory import MemoryDiscovery, MemoryStore
from ..runtime.discovery.overlay import OverlayDiscovery
from ..runtime.tasks import own_error
from . import settle_heap

log = logging.getLogger("servemesh.capability")


#: request-plane frames an API server queues before writing them: a burst of requests
#: reaches the replicas in slices, so they work while the API server still reads the rest
#: (about 25% more /infer/json at c=32 on two cores than with the default of 32; replicas
#: keep 32, which suits their streamed answers)
FLUSH_FRAMES = 4


#: registration answers that no retry changes (a 409 does: the other registration expires)
PERMANENT = frozenset((400, 401, 403, 404, 405, 413, 415, 422))


def tuned(settings: Settings) -> Settings:
    return settings if settings.flush_frames is not None else settings.replace(flush_frames=FLUSH_FRAMES)


# -- the API server ---------------------------------------------------------------------------
def api_server_runtime(settings: Settings) -> tuple[DistributedRuntime, MemoryStore]:
    """A runtime for an API server, and the store its HTTP registrations go to (beside
    etcd when there is one)."""
    settings = tuned(settings)
    store = MemoryStore()
    if settings.etcd:
        from ..runtime.discovery.etcd import EtcdDiscovery

        return DistributedRuntime(settings, discovery=OverlayDiscovery(EtcdDiscovery.from_settings(settings),
                                                                       store)), store
    return DistributedRuntime(settings, discovery=MemoryDiscovery(store)), store


async def start_api_server(runtime: DistributedRuntime, store: MemoryStore, host: str,
                           port: int) -> tuple[CapabilityApiServer, HttpServer]:
    """The API server on ``host:port``, started (embeddable: close both when done)."""
    await runtime.start()
    runtime.plane.add_connector(GrpcConnector(runtime.settings.connect_timeout, runtime.settings.request_timeout))
    api = await CapabilityApiServer(runtime, store).start()
    server = api.kit.http_server(host, port)
    server.start()
    log.info("capability API server on %s (namespace %s)%s", server.url, api.namespace,
             " with API keys" if api.kit.keys.enabled else "")
    return api, server


async def serve_api_server(runtime: DistributedRuntime, store: MemoryStore, host: str, port: int,
                           on_ready: Callable[[str], Any] | None = None) -> None:
    """The API server until the runtime stops."""
    api, server = await start_api_server(runtime, store, host, port)
    settle_heap()
    try:
        if on_ready is not None:
            on_ready(server.url)
        await runtime.wait_draining()
    finally:
        await server.stop()
        await api.close()


# -- replicas ---------------------------------------------------------------------------------
def replica_runtime(settings: Settings) -> tuple[DistributedRuntime, MemoryStore | None]:
    """A runtime for a replica: etcd when configured, else a discovery store of its own
    (kept up to date with its peers by its API server), served over the request plane."""
    if settings.etcd:
        return DistributedRuntime(settings), None
    store = MemoryStore()
    return DistributedRuntime(settings, discovery=MemoryDiscovery(store)), store


async def serve_replica(runtime: DistributedRuntime, app: App, *, replica_id: str, host: str = "127.0.0.1",
                        port: int = 0, api_server: str | None = None, object_store: str | None = None,
                        token: str | None = None, store: MemoryStore | None = None,
                        on_ready: Callable[[Replica, str], Any] | None = None) -> None:
    """Serve ``app`` as replica ``replica_id`` until the runtime stops: the request plane,
    OIP v2 gRPC on ``host:port``, and the registration with ``api_server``."""
    settings = runtime.settings
    await runtime.start()
    runtime.plane.add_connector(GrpcConnector(settings.connect_timeout, settings.request_timeout))
    grpc_server = ReplicaGrpcServer(host, port)
    advertise = settings.advertise_host or (host if host not in ("0.0.0.0", "::", "") else "127.0.0.1")
    endpoint = f"{advertise}:{grpc_server.port}"
    registrar: Registrar | None = None

    async def refresh() -> None:
        if registrar is not None and store is not None:
            await registrar.refresh()

    router = CapabilityRouter(runtime, settings.capability_namespace, refresh=refresh)
    objects_settings = ObjectStoreSettings.from_settings(settings, location=object_store)
    async with open_objects(objects_settings) as objects:
        replica = await Replica(app, runtime, replica_id=replica_id, endpoint=endpoint, objects=objects,
                                router=router).start()
        try:
            with own_error():  # a failed start-up (say, a refused registration): its own error
                async with asyncio.TaskGroup() as group:
                    group.create_task(replica.serve())
                    await replica.wait_served()
                    await grpc_server.start(replica)
                    log.info("replica %s serving %s (gRPC %s, object store %s)", replica_id,
                             ", ".join(wire_text(c) for c in app.get_capabilities()), endpoint, objects.store)
                    if api_server:
                        registrar = await _registrar(runtime, replica, api_server, token, store)
                        group.create_task(_keep_registered(runtime, registrar))
                    settle_heap()
                    if on_ready is not None:
                        on_ready(replica, endpoint)
        finally:
            await grpc_server.stop(grace=1.0)
            await replica.close()


async def _registrar(runtime: DistributedRuntime, replica: Replica, api_server: str, token: str | None,
                     store: MemoryStore | None) -> Registrar:
    settings = runtime.settings
    token = token or settings.capability_token or secrets.token_urlsafe(24)
    if not 8 <= len(token) <= 256:
        raise ConfigError(f"the replica's token (--token, SERVEMESH_CAPABILITY_TOKEN) must be 8 to 256 characters, "
                          f"not {len(token)}")
    records = await runtime.discovery.list(f"instances/{replica.namespace}/{wire.COMPONENT}/")
    transport = next((r.transport for r in records if r.instance_id == runtime.instance_id), {})
    payload = {
        "replica_id": replica.replica_id, "endpoint": replica.endpoint,
        "capabilities": replica.app.get_capabilities(),
        "token": token,
        "servemesh": {"namespace": replica.namespace, "instance_id": runtime.instance_id, "transport": transport,
                      "streams": [s.stream for s in replica.specs], "models": replica.models()},
    }
    # the API server's key: the first of SERVEMESH_API_KEY (the mesh shares its keys)
    keys = [k.strip() for k in (settings.api_key or "").split(",") if k.strip()]
    peers = PeerSync(store, runtime.instance_id).apply if store is not None else None
    registrar = Registrar(api_server, payload, interval=settings.capability_heartbeat,
                          timeout=settings.connect_timeout, api_key=keys[0] if keys else None, on_peers=peers)
    try:
        await registrar.register()
        log.info("registered with the API server %s as %s", api_server, replica.replica_id)
    except RegistrationFailed as exc:
        if exc.status in PERMANENT:  # retrying would only repeat it: say so and stop
            raise ConfigError(f"{exc} (the API server will refuse every retry)") from None
        log.warning("%s; retrying every %gs", exc, registrar.interval)
    return registrar


async def _keep_registered(runtime: DistributedRuntime, registrar: Registrar) -> None:
    """Heartbeats until the runtime begins to shut down, then unregister (before draining
    ends: the API server stops routing here first)."""
    beating = asyncio.ensure_future(registrar.run())
    try:
        await runtime.wait_draining()
    finally:
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
        await asyncio.shield(registrar.unregister())


def wire_text(labels: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in labels.items()) + "}"


__all__ = ["api_server_runtime", "replica_runtime", "serve_api_server", "serve_replica", "start_api_server"]
