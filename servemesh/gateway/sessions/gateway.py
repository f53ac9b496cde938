"""The sessions gateway: one app's session API (and its chat flavour) on the gateway kit.

Requests go to the session-service replicas over the request plane
(``RemoteSessions``), or to a :class:`~servemesh.sessions.Sessions` in this process.
Health, metrics, admission control and request ids come from the kit; the session
routes render their own errors through the kit's mapping (``router.Renderer``).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from ...errors import ConfigError
from ...runtime import DistributedRuntime
from ...sessions.acl import Principals
from ...sessions.definition import Definition
from ..kit import GatewayKit
from .chat import ChatFlavour, chat_router
from .router import Backend, session_router


class SessionsGateway:
    """``SessionsGateway(runtime, app, backend)``; serve ``.kit.http_server(host, port)``.

    The API is under ``/{app.name}`` (``prefix``); ``chat`` adds ``/v1/chat/completions``."""

    def __init__(self, runtime: DistributedRuntime, app: Definition, backend: Backend, *,
                 prefix: str | None = None, principals: Principals | None = None, chat: ChatFlavour | None = None,
                 ready: Callable[[], bool] | None = None, max_inflight: int = 256) -> None:
        settings = runtime.settings
        if principals is None and settings.sessions_principals:
            principals = Principals.from_file(settings.sessions_principals)
        if principals is not None and (settings.api_key or settings.api_key_file):
            raise ConfigError("the sessions gateway takes session principals (SERVEMESH_SESSIONS_PRINCIPALS) or "
                              "gateway API keys (SERVEMESH_API_KEY), not both: principals carry the keys")
        self.app_definition = app
        self.backend = backend
        self.principals = principals
        self.kit = GatewayKit(runtime, "sessions", max_inflight=max_inflight, ready=ready, handler_errors=True,
                              info=lambda: {"app": app.name, "actions": list(app.actions)})
        api = FastAPI(title=f"{app.name} sessions", version="1",
                      description=f"Stateful sessions of {app.name} (servemesh.sessions; docs/sessions.md)")
        api.include_router(session_router(app, backend, prefix=f"/{app.name}" if prefix is None else prefix,
                                          principals=principals, debug_errors=settings.debug_errors))
        if chat is not None:
            api.include_router(chat_router(app, backend, chat, principals=principals,
                                           debug_errors=settings.debug_errors))
        self.app = self.kit.install(api)
