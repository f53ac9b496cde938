"""``GatewayKit``: what every HTTP surface over the runtime shares.

A surface (OpenAI, KServe, capability API, ...) builds its FastAPI app, hands it to
``kit.install(app)`` and keeps only its own routes and its error :data:`Shape`.
The kit adds ``/health``, ``/live``, ``/ready`` and ``/metrics``, the middleware
(request ids, admission control, request metrics, API keys, body size and time)
and the exception handlers that render every error through :func:`describe` in the
surface's shape; ``kit.http_server(host, port)`` serves the app with the socket's
limits. Everything is configured by the runtime's settings (``docs/security.md``).

Middleware, outermost first: ``KitMiddleware`` (ids, admission, metrics: it sees
every answer, refusals included) -> ``AuthMiddleware`` -> ``BodyLimitMiddleware``
-> the app.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ...errors import ConfigError, ServemeshError
from ...http import ApiKeys, AuthMiddleware, BodyLimitMiddleware, HttpLimits, HttpServer
from ...http.auth import open_paths
from ...http.shape import plain_shape
from ...log import Throttled
from ...runtime import Context, DistributedRuntime
from .disconnect import unless_disconnected
from .errors import ApiError, Problem, Shape, describe
from .metrics import PROMETHEUS, GatewayMetrics, merge_expositions
from .middleware import KitMiddleware, request_id_of
from .openapi import document_errors
from .peers import Peers
from .raw import Endpoint, RawHandler, RawLane
from .sse import event

log = logging.getLogger("servemesh.gateway")
#: lines about failures clients can cause, at most 10 a minute per kind
throttled = Throttled(log)

T = TypeVar("T")

#: the kit's own routes; admission control never refuses them (nor the API docs)
OPS_ROUTES = ("/health", "/live", "/ready", "/metrics")


class PlainError(BaseModel):
    """``{"error": "message"}``: the schema of :func:`plain_shape` bodies."""

    error: str


# pydantic's union member tags in an error's location (``stop.list[str]``) are not fields
_TAG = re.compile(r"^(str|int|float|bool|list|dict|none|function-.*|.*\[.*)$")


class GatewayKit:
    """``GatewayKit(runtime, "openai", shape=openai_error, error_model=ErrorResponse, ready=lambda: ...)``.

    ``shape`` writes the surface's error bodies and ``error_model`` documents them in
    the OpenAPI document. ``ready`` says whether requests would be served now (``/ready``); ``info`` adds
    fields to the ``/health`` and ``/ready`` bodies. Requests beyond ``max_inflight``
    (the kit's routes and the API docs excepted) get a 429 with ``Retry-After``.
    ``handler_errors`` shows handlers' exception types and messages in error bodies (for
    surfaces whose handlers are the user's own code); ``healthy`` is the ``status`` of a
    healthy ``/health``. Surfaces served together by one server pass one ``metrics``."""

    def __init__(self, runtime: DistributedRuntime, name: str, *, shape: Shape = plain_shape,
                 error_model: type[BaseModel] = PlainError, max_inflight: int = 256,
                 ready: Callable[[], bool] | None = None,
                 info: Callable[[], Mapping[str, Any]] | None = None, handler_errors: bool = False,
                 healthy: str = "ok", metrics: GatewayMetrics | None = None) -> None:
        if max_inflight < 1:
            raise ConfigError(f"max_inflight of the {name} gateway must be at least 1, not {max_inflight}")
        settings = runtime.settings
        self.runtime = runtime
        self.name = name
        self.shape = shape
        self.error_model = error_model
        self.max_inflight = max_inflight
        self.limits = HttpLimits.from_settings(settings)
        self.keys = ApiKeys.from_settings(settings)
        self.metrics_public = settings.metrics_public
        self.debug_errors = settings.debug_errors
        self._ready = ready
        self._info = info
        #: show a handler's exception type and message in error bodies (``describe``)
        self.handler_errors = handler_errors
        #: the ``status`` of a healthy ``/health`` body ("ok"; AnyServe's clients expect "healthy")
        self.healthy = healthy
        #: requests admitted and not finished (streams until their last byte)
        self.inflight = 0
        #: shared by the surfaces one server serves together (``metrics=``), else this gateway's own
        self.metrics = metrics or GatewayMetrics()
        self.metrics.count_inflight(lambda: self.inflight)  # read when scraped, not kept per request
        self.exempt: frozenset[str] = frozenset(OPS_ROUTES)
        #: the other workers serving the same port (``join``); ``None``: this process alone
        self.peers: Peers | None = None
        #: the app ``install`` assembled
        self.app: FastAPI | None = None
        #: what the server serves: ``app``, behind the raw routes if there are any
        self.asgi: Any = None

    @property
    def registry(self) -> Any:
        """This gateway's Prometheus registry; a surface may add its own metrics to it."""
        return self.metrics.registry

    # -- assembling an app ------------------------------------------------------------------
    def install(self, app: FastAPI, raw_routes: Mapping[tuple[str, str], RawHandler] | None = None) -> FastAPI:
        """Add the kit's routes, exception handlers and middleware to ``app``.

        ``raw_routes`` (``{("POST", "/path"): handler}``) are ASGI handlers served with the
        kit's rules applied inline and without FastAPI's layers (``kit.raw``); the server
        (``http_server``) serves ``kit.asgi``, which routes to them and to ``app``."""
        app.add_api_route("/health", self._health, methods=["GET"], include_in_schema=False)
        app.add_api_route("/live", self._live, methods=["GET"], include_in_schema=False)
        app.add_api_route("/ready", self._ready_route, methods=["GET"], include_in_schema=False)
        app.add_api_route("/metrics", self._metrics, methods=["GET"], include_in_schema=False)
        app.add_exception_handler(RequestValidationError, self._invalid_request)  # type: ignore[arg-type]
        app.add_exception_handler(ServemeshError, self._failed)
        app.add_exception_handler(ApiError, self._failed)
        app.add_exception_handler(HTTPException, self._http_exception)  # type: ignore[arg-type]
        # added innermost first
        app.add_middleware(BodyLimitMiddleware, limits=self.limits, shape=self.shape)  # type: ignore[arg-type]
        app.add_middleware(AuthMiddleware, keys=self.keys, shape=self.shape,  # type: ignore[arg-type]
                           open_paths=open_paths(self.metrics_public))
        app.add_middleware(KitMiddleware, kit=self)  # type: ignore[arg-type]
        app.openapi = document_errors(app, self.error_model, auth=self.keys.enabled)  # type: ignore[method-assign]
        docs = (app.docs_url, app.redoc_url, app.openapi_url, app.swagger_ui_oauth2_redirect_url)
        self.exempt = frozenset((*OPS_ROUTES, *(p for p in docs if p)))
        self.app = app
        self.asgi = app
        if raw_routes:
            for (method, path), handler in raw_routes.items():
                app.router.add_route(path, Endpoint(handler), methods=[method],  # type: ignore[arg-type]
                                     include_in_schema=False)
            self.asgi = RawLane(app, self, raw_routes)
        return app

    def http_server(self, host: str, port: int, sock: socket.socket | None = None) -> HttpServer:
        """The installed app on ``host:port`` (or ``sock``, already listening) with the socket's
        limits, refusing in this surface's shape."""
        if self.app is None:
            raise ConfigError(f"the {self.name} gateway has no app yet: call kit.install(app) first")
        return HttpServer(self.asgi, host, port, limits=self.limits, shape=self.shape, sock=sock)

    def join(self, peers: Peers) -> None:
        """Serve as one of several workers on one port: ``/metrics`` sums every worker's
        metrics, and ``/health`` and ``/ready`` name the worker that answered."""
        self.peers = peers

    def local_metrics(self) -> bytes:
        """This process's metrics: the gateway's, then the runtime's per-endpoint ones."""
        return self.metrics.render() + self.runtime.metrics.render()

    # -- for the surface's handlers -----------------------------------------------------------
    def request_id(self, request: Request) -> str:
        """The request's id (the client's ``X-Request-Id``, or a new one), echoed in the response."""
        rid = getattr(request.state, "request_id", None)
        return rid if isinstance(rid, str) else request_id_of(request.scope)

    def context(self, request: Request, *, timeout: float | None = None) -> Context:
        """The runtime context for the calls a request makes; its id is the request id."""
        return Context(id=self.request_id(request), timeout=timeout)

    def scope_context(self, scope: Scope, *, timeout: float | None = None) -> Context:
        """``context`` for a raw route (``scope`` rather than a ``Request``)."""
        rid = scope.get("state", {}).get("request_id")
        return Context(id=rid if isinstance(rid, str) else request_id_of(scope), timeout=timeout)

    def about_scope(self, scope: Scope, subject: str) -> None:
        """``about`` for a raw route."""
        scope.setdefault("state", {})["subject"] = subject

    def about(self, request: Request, subject: str) -> None:
        """Name what ``request`` is for ("model 'm'"): error messages that hide internals use it."""
        request.state.subject = subject

    async def unless_disconnected(self, request: Request, work: Awaitable[T]) -> T:
        """``await work``, cancelled (and ``Cancelled`` raised) if the client leaves first.
        For answers that are not streamed (a streamed body has its own listener)."""
        return await unless_disconnected(request.receive, work)

    def describe(self, exc: BaseException, subject: str | None = None) -> Problem:
        return describe(exc, debug=self.debug_errors, subject=subject, handler_errors=self.handler_errors)

    def error_response(self, exc: BaseException, subject: str | None = None) -> JSONResponse:
        """``exc`` as an HTTP response in the surface's shape."""
        return self._response(self.describe(exc, subject))

    def sse_error(self, exc: BaseException, subject: str | None = None) -> bytes:
        """``exc`` as an SSE frame, for errors after a stream's headers went out."""
        if not isinstance(exc, ApiError):
            throttled.warning(type(exc).__name__, "stream failed (%s): %s", subject or "-", exc)
        return event(self.describe(exc, subject).body(self.shape))

    def overloaded(self) -> Problem:
        """The answer to a request beyond ``max_inflight``."""
        return Problem(429, f"the {self.name} gateway is at its limit of {self.max_inflight} requests in flight; "
                       "retry later", "rate_limit_error", "overloaded", retry_after=1)

    async def respond(self, problem: Problem, scope: Scope, receive: Receive, send: Send) -> None:
        """``problem`` as the ASGI response, in the surface's shape."""
        await self._response(problem)(scope, receive, send)

    def ready(self) -> bool:
        return not self.runtime.is_stopping and (self._ready is None or self._ready())

    # -- the kit's routes and handlers ----------------------------------------------------------
    def _response(self, problem: Problem) -> JSONResponse:
        return JSONResponse(problem.body(self.shape), status_code=problem.status, headers=problem.headers())

    def _info_fields(self) -> dict[str, Any]:
        fields = dict(self._info()) if self._info is not None else {}
        return fields if self.peers is None else {**fields, **self.peers.info()}

    async def _health(self) -> JSONResponse:
        ok = not self.runtime.is_stopping
        body = {"status": self.healthy if ok else "stopping", "gateway": self.name, "inflight": self.inflight,
                **self._info_fields()}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def _live(self) -> JSONResponse:
        return JSONResponse({"status": "alive"})

    async def _ready_route(self) -> JSONResponse:
        ready = self.ready()
        return JSONResponse({"ready": ready, **self._info_fields()}, status_code=200 if ready else 503)

    async def _metrics(self) -> Response:
        local = self.local_metrics()
        if self.peers is None:
            return Response(local, media_type=PROMETHEUS)
        return Response(merge_expositions([local, *await self.peers.gather()]), media_type=PROMETHEUS)

    async def _failed(self, request: Request, exc: Exception) -> JSONResponse:
        problem = self.describe(exc, getattr(request.state, "subject", None))
        if problem.status >= 500:
            throttled.warning((problem.status, type(exc).__name__), "%s %s (request %s) failed: %s",
                              request.method, request.url.path, self.request_id(request), exc)
        return self._response(problem)

    async def _invalid_request(self, request: Request, exc: RequestValidationError) -> JSONResponse:
        return self._response(invalid_request(exc.errors(), request.headers.get("content-type")))

    async def _http_exception(self, request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        response = self._response(Problem(exc.status_code, str(exc.detail), "invalid_request_error", code))
        response.headers.update(exc.headers or {})
        return response


def invalid_request(errors: Sequence[Any], content_type: str | None) -> Problem:
    """A request body that failed validation (pydantic's ``errors()``, FastAPI's or a raw
    route's own) as a 400 naming the field."""
    err: dict[str, Any] = dict(errors[0]) if errors else {}
    loc = [str(p) for p in err.get("loc", ()) if p != "body" and not _TAG.match(str(p))]
    param = ".".join(loc) or None
    message = str(err.get("msg", "invalid request"))
    if err.get("type") == "json_invalid":
        message = f"the request body is not valid JSON: {err.get('ctx', {}).get('error', message)}"
    elif not param and err.get("type") in ("model_attributes_type", "model_type", "dict_type"):
        message = (f"the request body must be a JSON object sent with Content-Type: application/json "
                   f"(this one came as {content_type or 'none'})")
        param = "body"
    elif param:
        message = f"{param}: {message}"
    code = err.get("type")
    return Problem(400, message, "invalid_request_error", "model_attributes_type" if code == "model_type" else code,
                   param)
