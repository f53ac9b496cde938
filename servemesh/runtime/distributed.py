"""``DistributedRuntime``: owns discovery, transports and every background task."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..errors import ConfigError, InstanceUnavailable, Overloaded, ServemeshError
from .client import Client
from .component import Component, Endpoint, Namespace
from .context import Context
from .discovery.base import Discovery
from .discovery.memory import MemoryDiscovery
from .handler import Handler, adapt
from .metrics import RuntimeMetrics
from .records import InstanceRecord, split_path
from .serving import ServedEndpoint
from .stream import LocalStream, RemoteStream
from .tasks import TaskSet, within
from .transport import nats as nats_transport
from .transport.nats import NatsClientPlane, NatsServerPlane
from .transport.tcp import TcpClientPool, TcpServer

if TYPE_CHECKING:
    from ..http import HttpServer

log = logging.getLogger("servemesh.runtime")


class DistributedRuntime:
    """The process's connection to the servemesh mesh.

    ``async with DistributedRuntime() as runtime:`` reads settings from the
    environment (``servemesh.config``); pass ``settings=`` or keyword overrides
    (``etcd=...``, ``transport=...``) to set them explicitly, and ``discovery=`` to
    supply a backend (e.g. a shared ``MemoryDiscovery`` in tests)."""

    def __init__(self, settings: Settings | None = None, *, discovery: Discovery | None = None,
                 **overrides: Any) -> None:
        if settings is None:
            settings = Settings.from_env(**overrides)
        elif overrides:
            settings = settings.replace(**{k: v for k, v in overrides.items() if v is not None})
        self.settings = settings
        self._own_discovery = discovery is None
        self.discovery: Discovery = discovery or self._make_discovery()
        self.metrics = RuntimeMetrics()
        self.tasks = TaskSet("runtime")
        self._served: dict[str, ServedEndpoint] = {}
        self._records: dict[str, InstanceRecord] = {}
        self._clients: set[Client] = set()
        self._tcp_server: TcpServer | None = None
        self._tcp_pool = TcpClientPool(limit=settings.max_payload, connect_timeout=settings.connect_timeout)
        self._nats: Any = None  # one NATS connection, opened on first need
        self._nats_server: NatsServerPlane | None = None
        self._nats_client: NatsClientPlane | None = None
        self._system: HttpServer | None = None
        self._plane_lock = asyncio.Lock()
        self._started = False
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self.fatal_error: BaseException | None = None
        self._shutting_down = False
        self._shutdown_task: asyncio.Task[None] | None = None

    def _make_discovery(self) -> Discovery:
        s = self.settings
        if s.etcd:
            from .discovery.etcd import EtcdDiscovery

            return EtcdDiscovery(s.etcd, lease_ttl=s.lease_ttl, timeout=s.connect_timeout,
                                 on_lease_lost=s.on_lease_lost, on_fatal=self._fatal)
        return MemoryDiscovery()

    @property
    def embedded(self) -> bool:
        """In-process only: private in-memory discovery, calls never leave the process."""
        return self._own_discovery and isinstance(self.discovery, MemoryDiscovery)

    @property
    def instance_id(self) -> int:
        return self.discovery.instance_id

    @property
    def system_url(self) -> str | None:
        """Base URL of this process's /health and /metrics server, if enabled."""
        return None if self._system is None else self._system.url

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> DistributedRuntime:
        if self._started:
            return self
        await self.discovery.start()
        self._started = True
        if self.settings.system_port is not None:
            from ..http import HttpServer
            from .system import system_app

            self._system = HttpServer(system_app(self), self.settings.host, self.settings.system_port)
            self._system.start()
            log.info("system port: %s (/health /live /ready /metrics)", self._system.url)
        if self.embedded:
            log.info("servemesh runtime is embedded (in-memory discovery, in-process calls); "
                     "to go multi-process run `servemesh up` or set SERVEMESH_ETCD")
        else:
            log.info("servemesh runtime connected: discovery=%s instance=%x",
                     self.discovery.kind, self.instance_id)
        return self

    async def __aenter__(self) -> DistributedRuntime:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    def request_shutdown(self) -> None:
        """Begin a graceful shutdown from synchronous code (e.g. a signal handler).
        ``wait_stopped()`` returns when it is complete."""
        if self._shutdown_task is None and not self._shutting_down:
            self._stopping.set()
            self._shutdown_task = asyncio.get_running_loop().create_task(
                self.shutdown(), name="servemesh-shutdown")

    def _fatal(self, exc: BaseException) -> None:
        self.fatal_error = exc
        self.request_shutdown()

    @property
    def is_stopping(self) -> bool:
        return self._stopping.is_set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def shutdown(self, graceful: bool = True) -> None:
        """Leave discovery, stop taking requests, let in-flight streams finish
        (``graceful``, up to ``drain_timeout``), then close everything."""
        if self._stopped.is_set():
            return
        if self._shutting_down:
            await self._stopped.wait()
            return
        self._shutting_down = True
        self._stopping.set()
        try:
            for record in list(self._records.values()):
                await self._unregister_quietly(record)
            for served in self._served.values():
                served.accepting = False
            if graceful and self._served:
                pending = [s.drained() for s in self._served.values()]
                try:
                    await within(asyncio.gather(*pending), self.settings.drain_timeout)
                except TimeoutError:
                    log.warning("drain timeout (%ss): cancelling streams still in flight",
                                self.settings.drain_timeout)
            for client in list(self._clients):
                await client.close()
            if self._tcp_server is not None:
                await self._tcp_server.close()
            await self._tcp_pool.close()
            if self._nats_server is not None:
                await self._nats_server.close()
            if self._nats_client is not None:
                await self._nats_client.close()
            if self._nats is not None:
                try:
                    await within(self._nats.drain(), self.settings.connect_timeout)
                except Exception as exc:
                    log.debug("nats drain: %r", exc)
                    await self._nats.close()
            await self.tasks.close()
            if self._system is not None:
                await self._system.stop()
            if self._started:
                await self.discovery.close()
        finally:
            self._stopped.set()

    # -- naming ------------------------------------------------------------------------
    def namespace(self, name: str) -> Namespace:
        return Namespace(self, name)

    def endpoint(self, path: str) -> Endpoint:
        """``runtime.endpoint("ns.component.endpoint")``."""
        ns, comp, ep = split_path(path)
        return Component(Namespace(self, ns), comp).endpoint(ep)

    # -- serving -----------------------------------------------------------------------
    async def _nats_connection(self) -> Any:
        async with self._plane_lock:
            if self._nats is None:
                if not self.settings.nats:
                    raise ConfigError("no NATS configured: set SERVEMESH_NATS or run `servemesh up`")
                name = f"servemesh-{self.instance_id:x}"
                timeout = self.settings.connect_timeout
                self._nats = await nats_transport.connect(self.settings.nats, name, timeout)
            return self._nats

    async def _ensure_request_plane(self) -> dict[str, str]:
        await self.start()
        if self.embedded:
            return {"inproc": f"{self.instance_id:x}"}
        if self.settings.transport == "nats":
            nc = await self._nats_connection()
            if self._nats_server is None:
                self._nats_server = NatsServerPlane(nc, self._served, self.settings.max_payload)
            return {"nats_tcp": ""}
        async with self._plane_lock:
            if self._tcp_server is None:
                s = self.settings
                server = TcpServer(self._served, host=s.host, port=s.port, public_host=s.public_host,
                                   limit=s.max_payload)
                await server.start()
                self._tcp_server = server
        return {"tcp": self._tcp_server.address}

    async def _serve(self, endpoint: Endpoint, handler: Handler, capabilities: dict[str, Any] | None,
                     graceful: bool) -> None:
        path = endpoint.path
        if path in self._served:
            raise ServemeshError(f"{path} is already served by this process")
        if self.is_stopping:
            raise ServemeshError(f"cannot serve {path}: the runtime is shutting down")
        adapted = adapt(handler, endpoint=path)
        transport = await self._ensure_request_plane()
        if "nats_tcp" in transport:
            transport = {"nats_tcp": nats_transport.instance_subject(
                endpoint.namespace, endpoint.component, endpoint.name, self.instance_id)}
        record = InstanceRecord(
            component=endpoint.component, endpoint=endpoint.name, namespace=endpoint.namespace,
            instance_id=self.instance_id, transport=transport, capabilities=dict(capabilities or {}),
            schema={"request": adapted.request_schema, "response": adapted.response_schema},
        )
        served = ServedEndpoint(path, adapted, self.settings.max_concurrency, self.metrics.endpoint(path))
        self._served[path] = served  # callable first ...
        try:
            if self._nats_server is not None and "nats_tcp" in transport:
                await self._nats_server.add(path, transport["nats_tcp"])
            await self.discovery.register(record)  # ... then visible
        except BaseException:
            del self._served[path]
            if self._nats_server is not None:
                await self._nats_server.remove(path)
            raise
        self._records[path] = record
        log.info("serving %s (instance %x, %s)", path, self.instance_id,
                 ", ".join(f"{k}={v}" for k, v in transport.items()))
        try:
            await self._stopping.wait()
            if graceful:
                try:
                    await within(served.drained(), self.settings.drain_timeout)
                except TimeoutError:
                    pass
        finally:
            record = self._records.pop(path, record)
            await asyncio.shield(self._unregister_quietly(record))
            if self._nats_server is not None and not self.is_stopping:
                await self._nats_server.remove(path)
            served.accepting = False
            if not self.is_stopping:
                self._served.pop(path, None)

    async def _unregister_quietly(self, record: InstanceRecord) -> None:
        try:
            await self.discovery.unregister(record)
        except ServemeshError as exc:
            log.warning("could not unregister %s: %s", record.key, exc)

    # -- calling -----------------------------------------------------------------------
    async def _client(self, endpoint: Endpoint, router: str, capabilities: dict[str, Any] | None) -> Client:
        await self.start()
        client = Client(self, endpoint, router, capabilities)
        await client._start()
        self._clients.add(client)
        return client

    def _open_nowait(self, record: InstanceRecord, request: Any,
                     ctx: Context | None) -> RemoteStream | None:
        """The common case without a coroutine: a remote instance whose connection is up."""
        if record.instance_id != self.instance_id:
            address = record.transport.get("tcp")
            if address is not None:
                conn = self._tcp_pool.get_nowait(address)
                if conn is not None:
                    return conn.open_stream(record.path, request, ctx, self.settings.stream_window,
                                            record.instance_id)
        return None

    async def _open(self, record: InstanceRecord, request: Any,
                    ctx: Context | None) -> RemoteStream | LocalStream:
        path = record.path
        if record.instance_id == self.instance_id:
            served = self._served.get(path)
            if served is not None:
                refusal = served.refusal()
                if refusal is not None:
                    if refusal[0] == "overloaded":
                        raise Overloaded(path, served.max_concurrency)
                    raise InstanceUnavailable(record.instance_id, "in-process", refusal[1])
                server_ctx = Context(ctx.id, ctx.metadata, deadline=ctx.deadline) if ctx else Context()
                return LocalStream(served, request, server_ctx, self.tasks)
        address = record.transport.get("tcp")
        if address is not None:
            conn = await self._tcp_pool.get(address, record.instance_id)
            return conn.open_stream(path, request, ctx, self.settings.stream_window, record.instance_id)
        subject = record.transport.get("nats_tcp")
        if subject is not None:
            if not self.settings.nats:
                raise InstanceUnavailable(record.instance_id, record.address,
                                          "it serves over NATS and this process has no SERVEMESH_NATS")
            plane = self._nats_client
            if plane is None:
                nc = await self._nats_connection()
                if self._nats_client is None:
                    plane = NatsClientPlane(nc, self.settings.max_payload, probe_interval=1.0)
                    await plane.start()
                    self._nats_client = plane
                plane = self._nats_client
            return plane.open_stream(subject, path, request, ctx, self.settings.stream_window,
                                     record.instance_id)
        raise InstanceUnavailable(record.instance_id, record.address,
                                  f"no transport this process can use ({', '.join(record.transport)})")

    def __repr__(self) -> str:
        mode = "embedded" if self.embedded else self.discovery.kind
        return f"DistributedRuntime({mode}, instance={self.instance_id:x})"
