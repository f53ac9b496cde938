"""``DistributedRuntime``: owns discovery, the request plane and every background task."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..errors import ServemeshError
from .client import Client
from .component import Component, Endpoint, Namespace
from .discovery.base import Discovery
from .discovery.memory import MemoryDiscovery
from .events import EventPlane, make_events
from .handler import Handler, adapt
from .metrics import RuntimeMetrics
from .plane import RequestPlane
from .records import InstanceRecord, split_path
from .serving import ServedEndpoint
from .tasks import TaskSet, within

if TYPE_CHECKING:
    from ..http import HttpServer

log = logging.getLogger("servemesh.runtime")


class RuntimeState(enum.Enum):
    """Where a runtime is in its life; it only moves forward."""

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"  # left discovery, refusing new streams, letting in-flight ones finish
    STOPPED = "stopped"


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
        #: background work of the runtime and its transports' users (closed at shutdown)
        self.tasks = TaskSet("runtime")
        #: the shutdown itself, which outlives ``tasks``
        self._lifecycle = TaskSet("runtime lifecycle")
        self.state = RuntimeState.CREATED
        self._served: dict[str, ServedEndpoint] = {}
        self._records: dict[str, InstanceRecord] = {}
        self._ready: dict[str, asyncio.Event] = {}
        self._clients: set[Client] = set()
        self._plane: RequestPlane | None = None
        self._events: EventPlane | None = None
        self._system: HttpServer | None = None
        self._start_lock = asyncio.Lock()
        self._draining = asyncio.Event()
        self._stopped = asyncio.Event()
        self.fatal_error: BaseException | None = None

    def _make_discovery(self) -> Discovery:
        s = self.settings
        if s.etcd:
            from .discovery.etcd import EtcdDiscovery

            return EtcdDiscovery.from_settings(s, on_fatal=self._fatal)
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

    @property
    def served(self) -> Mapping[str, ServedEndpoint]:
        """The endpoints this process serves now, by path."""
        return self._served

    @property
    def plane(self) -> RequestPlane:
        """The request plane (transports); exists once the runtime started."""
        if self._plane is None:
            raise ServemeshError("the runtime has not started: `await runtime.start()` first")
        return self._plane

    @property
    def events(self) -> EventPlane:
        """The event plane (``runtime/events.py``): ``publish(subject, data)`` and
        ``subscribe(subject)``, over NATS, or in process when discovery is in memory.
        Made on first use and closed at shutdown; a ``ConfigError`` with etcd and no NATS."""
        if self._events is None:
            if self.state is RuntimeState.STOPPED:
                raise ServemeshError("the runtime has stopped: it has no event plane")
            self._events = make_events(self.settings, self.discovery, self.instance_id, self.tasks)
        return self._events

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> DistributedRuntime:
        if self.state is RuntimeState.RUNNING:
            return self
        async with self._start_lock:
            if self.state is not RuntimeState.CREATED:
                if self.state is RuntimeState.RUNNING:
                    return self
                raise ServemeshError(f"cannot start a runtime that is {self.state.value}")
            self.state = RuntimeState.STARTING
            try:
                await self.discovery.start()
            except BaseException:
                self.state = RuntimeState.STOPPED
                self._stopped.set()
                raise
            self._plane = RequestPlane(self.settings, self._served, self.instance_id, self.tasks, self.embedded)
            if self.settings.system_port is not None:
                from ..http import HttpServer
                from ..http.limits import HttpLimits
                from .system import system_app

                self._system = HttpServer(system_app(self), self.settings.host, self.settings.system_port,
                                          limits=HttpLimits.from_settings(self.settings))
                self._system.start()
                log.info("system port: %s (/health /live /ready /metrics)", self._system.url)
            self.state = RuntimeState.RUNNING
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
        if self.state in (RuntimeState.CREATED, RuntimeState.STARTING, RuntimeState.RUNNING) \
                and not self._draining.is_set():
            self._draining.set()
            self._lifecycle.spawn(self.shutdown(), name="servemesh-shutdown")

    def _fatal(self, exc: BaseException) -> None:
        self.fatal_error = exc
        self.request_shutdown()

    @property
    def is_stopping(self) -> bool:
        return self._draining.is_set()

    async def wait_draining(self) -> None:
        """Return once a shutdown began (the runtime leaves discovery, then drains)."""
        await self._draining.wait()

    async def wait_stopped(self) -> None:
        """Return once the runtime has stopped and its shutdown task has ended."""
        await self._stopped.wait()
        await self._lifecycle.join()

    async def shutdown(self, graceful: bool = True) -> None:
        """Leave discovery, stop taking requests, let in-flight streams finish
        (``graceful``, up to ``drain_timeout``), then close everything."""
        if self.state in (RuntimeState.DRAINING, RuntimeState.STOPPED):
            await self._stopped.wait()
            return
        started = self.state is not RuntimeState.CREATED
        self.state = RuntimeState.DRAINING
        self._draining.set()
        try:
            for record in list(self._records.values()):
                await self._unregister_quietly(record)
            for served in self._served.values():
                served.accepting = False
            if graceful and self._served:
                try:
                    await within(asyncio.gather(*(s.drained() for s in self._served.values())),
                                 self.settings.drain_timeout)
                except TimeoutError:
                    log.warning("drain timeout (%ss): cancelling streams still in flight",
                                self.settings.drain_timeout)
            for client in list(self._clients):
                await client.close()
            if self._events is not None:
                await self._events.close()
            if self._plane is not None:
                await self._plane.close()
            await self.tasks.close()
            if self._system is not None:
                await self._system.stop()
            if started:
                await self.discovery.close()
        finally:
            self.state = RuntimeState.STOPPED
            self._stopped.set()

    # -- naming ------------------------------------------------------------------------
    def namespace(self, name: str) -> Namespace:
        return Namespace(self, name)

    def endpoint(self, path: str) -> Endpoint:
        """``runtime.endpoint("ns.component.endpoint")``."""
        ns, comp, ep = split_path(path)
        return Component(Namespace(self, ns), comp).endpoint(ep)

    # -- serving -----------------------------------------------------------------------
    async def serve(self, endpoint: Endpoint, handler: Handler, capabilities: dict[str, Any] | None,
                    graceful: bool) -> None:
        """Serve ``handler`` as ``endpoint`` until shutdown (``Endpoint.serve_endpoint``)."""
        path = endpoint.path
        await self.start()
        if path in self._served:
            raise ServemeshError(f"{path} is already served by this process")
        if self.is_stopping:
            raise ServemeshError(f"cannot serve {path}: the runtime is shutting down")
        adapted = adapt(handler, endpoint=path)
        record = InstanceRecord(
            component=endpoint.component, endpoint=endpoint.name, namespace=endpoint.namespace,
            instance_id=self.instance_id, transport={}, capabilities=dict(capabilities or {}),
            schema={"request": adapted.request_schema, "response": adapted.response_schema},
        )
        served = ServedEndpoint(path, adapted, self.settings.max_concurrency, self.metrics.endpoint(path),
                                self.instance_id)
        plane = self.plane
        self._served[path] = served  # callable first ...
        try:
            transport = await plane.add(served, record)
            record = InstanceRecord(**{**_fields(record), "transport": transport})
            await self.discovery.register(record)  # ... then visible
        except BaseException:
            del self._served[path]
            await plane.remove(path)
            raise
        self._records[path] = record
        self._ready_event(path).set()
        log.info("serving %s (instance %x, %s)", path, self.instance_id,
                 ", ".join(f"{k}={v}" for k, v in record.transport.items()))
        try:
            await self._draining.wait()
            if graceful:
                try:
                    await within(served.drained(), self.settings.drain_timeout)
                except TimeoutError:
                    pass
        finally:
            self._ready.pop(path, None)
            record = self._records.pop(path, record)
            if not self.is_stopping:  # a shutdown unregisters everything itself, before closing discovery
                await asyncio.shield(self._unregister_quietly(record))
            served.accepting = False
            if not self.is_stopping:
                await plane.remove(path)
                self._served.pop(path, None)

    def _ready_event(self, path: str) -> asyncio.Event:
        event = self._ready.get(path)
        if event is None:
            event = self._ready[path] = asyncio.Event()
        return event

    async def wait_served(self, path: str, timeout: float | None = None) -> None:
        """Return once this process serves ``path`` ("ns.component.endpoint"): callable
        and registered in discovery. ``TimeoutError`` after ``timeout`` seconds."""
        split_path(path)
        if path in self._records:
            return
        async with asyncio.timeout(timeout):
            await self._ready_event(path).wait()

    async def _unregister_quietly(self, record: InstanceRecord) -> None:
        try:
            await self.discovery.unregister(record)
        except ServemeshError as exc:
            log.warning("could not unregister %s: %s", record.key, exc)

    # -- calling -----------------------------------------------------------------------
    async def client(self, endpoint: Endpoint, router: str, capabilities: dict[str, Any] | None) -> Client:
        """A client of ``endpoint`` (``Endpoint.client``), closed with the runtime."""
        await self.start()
        if self.is_stopping:
            raise ServemeshError(f"cannot create a client of {endpoint.path}: the runtime is shutting down")
        client = Client(self, endpoint, router, capabilities)
        await client.start()
        self._clients.add(client)
        return client

    def forget_client(self, client: Client) -> None:
        self._clients.discard(client)

    def __repr__(self) -> str:
        mode = "embedded" if self.embedded else self.discovery.kind
        return f"DistributedRuntime({mode}, {self.state.value}, instance={self.instance_id:x})"


def _fields(record: InstanceRecord) -> dict[str, Any]:
    return {f: getattr(record, f) for f in record.__struct_fields__}


__all__ = ["DistributedRuntime", "RuntimeState"]
