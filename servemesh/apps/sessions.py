"""Stateful sessions assembled: the session service, the gateway, or both, in one call.

::

    from servemesh.apps.sessions import serve_sessions
    asyncio.run(serve_sessions(burr_builder))       # or a StatefulApp; http://127.0.0.1:8080/docs

- :func:`serve_service` (``servemesh sessions serve --no-gateway``): one replica of the
  session service on the request plane; start several over one store to scale out.
- :func:`start_gateway` (``--no-service``): the HTTP API over the replicas.
- :func:`serve_sessions`: both in this process (embedded unless etcd is configured).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ..config import Settings
from ..errors import ConfigError
from ..gateway.sessions.chat import ChatFlavour
from ..gateway.sessions.gateway import SessionsGateway
from ..http import HttpServer
from ..runtime import DistributedRuntime
from ..sessions import Definition, Sessions, SessionStore, StatefulApp, open_store
from ..sessions.remote import NAMESPACE, RemoteSessions, endpoint_path
from ..sessions.remote import serve_sessions as serve_on_plane

log = logging.getLogger("servemesh.sessions")


def definition_of(obj: Any, name: str | None = None) -> Definition:
    """A session definition from a ``StatefulApp``, a Burr ``ApplicationBuilder`` or
    ``Application``, or a function returning one of them."""
    if isinstance(obj, StatefulApp) or (hasattr(obj, "stream") and hasattr(obj, "actions")):
        return obj  # type: ignore[no-any-return]
    module = type(obj).__module__
    if module.startswith("burr."):
        from ..sessions.burr import BurrApp

        return BurrApp(obj, name=name)
    if callable(obj):
        return definition_of(obj(), name)
    raise ConfigError(f"cannot serve {obj!r} as sessions: pass a StatefulApp, or a Burr ApplicationBuilder or "
                      "Application (or a function returning one)")


def load_definition(target: str, name: str | None = None) -> Definition:
    """``package.module:attr`` or ``path/file.py:attr`` (default attr: ``app``)."""
    from ..sdk.loader import load_module

    where, _, attr = target.rpartition(":") if ":" in target else (target, "", "app")
    module = load_module(where)
    if not hasattr(module, attr):
        raise ConfigError(f"{where} has no {attr!r}: name a StatefulApp or a Burr application (builder)")
    return definition_of(getattr(module, attr), name or (None if attr in ("app", "builder", "application")
                                                          else attr))


def _store(settings: Settings, store: SessionStore | str | None) -> SessionStore:
    return open_store(store or settings.sessions_store) if store is None or isinstance(store, str) else store


async def serve_service(runtime: DistributedRuntime, app: Definition, *, store: SessionStore | str | None = None,
                        namespace: str = NAMESPACE, action_timeout: float | None = None) -> None:
    """One replica of ``app``'s session service until the runtime stops."""
    sessions = await Sessions(app, _store(runtime.settings, store), action_timeout=action_timeout).open()
    try:
        log.info("session service for %s on %s", app.name, endpoint_path(app.name, namespace))
        await serve_on_plane(runtime, sessions, namespace=namespace)
    finally:
        await sessions.close()


async def start_gateway(runtime: DistributedRuntime, app: Definition, host: str, port: int, *,
                        namespace: str = NAMESPACE, chat: ChatFlavour | None = None,
                        prefix: str | None = None) -> tuple[SessionsGateway, HttpServer, RemoteSessions]:
    """The HTTP API on ``host:port`` over the replicas of ``app``'s session service (close all three)."""
    backend = await RemoteSessions.connect(runtime, app.name, namespace=namespace,
                                           timeout=runtime.settings.request_timeout)
    try:
        gateway = SessionsGateway(runtime, app, backend, chat=chat, prefix=prefix, ready=backend.ready)
    except BaseException:
        await backend.close()
        raise
    server = gateway.kit.http_server(host, port)
    server.start()
    log.info("sessions gateway for %s on %s (docs: %s/docs)%s", app.name, server.url, server.url,
             " with principals" if gateway.principals is not None else "")
    return gateway, server, backend


async def serve_sessions(app: Any, *, store: SessionStore | str | None = None, host: str = "127.0.0.1",
                         port: int = 8080, runtime: DistributedRuntime | None = None, service: bool = True,
                         gateway: bool = True, namespace: str = NAMESPACE, chat: ChatFlavour | None = None,
                         name: str | None = None, on_ready: Callable[[str], Any] | None = None) -> None:
    """Serve ``app`` (see :func:`definition_of`) until the runtime stops: the session
    service and its gateway in this process (``service=False`` / ``gateway=False``: one of them)."""
    definition = definition_of(app, name)
    own = runtime is None
    rt = runtime or DistributedRuntime(Settings.from_env())
    try:
        if own:
            await rt.start()
        async with asyncio.TaskGroup() as tasks:
            if service:
                tasks.create_task(serve_service(rt, definition, store=store, namespace=namespace))
                await rt.wait_served(endpoint_path(definition.name, namespace))
            if gateway:
                _, server, backend = await start_gateway(rt, definition, host, port, namespace=namespace, chat=chat)
                try:
                    if on_ready is not None:
                        on_ready(server.url)
                    await rt.wait_stopped()
                finally:
                    await server.stop()
                    await backend.close()
            elif on_ready is not None:
                on_ready("")
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:  # one part failed: its own error, not a group
            raise group.exceptions[0] from None
        raise
    finally:
        if own:
            await rt.shutdown()


__all__ = ["definition_of", "load_definition", "serve_service", "serve_sessions", "start_gateway"]
