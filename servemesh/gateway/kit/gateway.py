"""``GatewayKit``: what every HTTP surface over the runtime shares.

A surface (OpenAI, KServe, capability API, ...) builds its FastAPI app, hands it to
``kit.install(app)`` and keeps only its own routes and its error :data:`Shape`.
The kit adds ``/health``, ``/live``, ``/ready`` and ``/metrics``, the middleware
(request ids, admission control, request metrics) and the exception handlers that
render every error through :func:`describe` in the surface's shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from ...errors import ConfigError, ServemeshError
from ...runtime import Context, DistributedRuntime
from .errors import ApiError, Problem, Shape, describe
from .metrics import PROMETHEUS, GatewayMetrics
from .middleware import KitMiddleware, request_id_of
from .sse import event

log = logging.getLogger("servemesh.gateway")

#: the kit's own routes; admission control never refuses them (nor the API docs)
OPS_ROUTES = ("/health", "/live", "/ready", "/metrics")


def plain_shape(status: int, message: str, type: str, code: str | None, param: str | None) -> dict[str, Any]:
    """``{"error": "message"}`` (KServe v2's error body)."""
    return {"error": message}


class GatewayKit:
    """``GatewayKit(runtime, "openai", shape=openai_error, max_inflight=256, ready=lambda: ...)``.

    ``ready`` says whether requests would be served now (``/ready``); ``info`` adds
    fields to the ``/health`` and ``/ready`` bodies. Requests beyond ``max_inflight``
    (the kit's routes and the API docs excepted) get a 429 with ``Retry-After``."""

    def __init__(self, runtime: DistributedRuntime, name: str, *, shape: Shape = plain_shape,
                 max_inflight: int = 256, ready: Callable[[], bool] | None = None,
                 info: Callable[[], Mapping[str, Any]] | None = None) -> None:
        if max_inflight < 1:
            raise ConfigError(f"max_inflight of the {name} gateway must be at least 1, not {max_inflight}")
        self.runtime = runtime
        self.name = name
        self.shape = shape
        self.max_inflight = max_inflight
        self._ready = ready
        self._info = info
        #: requests admitted and not finished (streams until their last byte)
        self.inflight = 0
        self.metrics = GatewayMetrics()
        self.exempt: frozenset[str] = frozenset(OPS_ROUTES)

    @property
    def registry(self) -> Any:
        """This gateway's Prometheus registry; a surface may add its own metrics to it."""
        return self.metrics.registry

    # -- assembling an app ------------------------------------------------------------------
    def install(self, app: FastAPI) -> FastAPI:
        """Add the kit's routes, exception handlers and middleware to ``app``."""
        app.add_api_route("/health", self._health, methods=["GET"], include_in_schema=False)
        app.add_api_route("/live", self._live, methods=["GET"], include_in_schema=False)
        app.add_api_route("/ready", self._ready_route, methods=["GET"], include_in_schema=False)
        app.add_api_route("/metrics", self._metrics, methods=["GET"], include_in_schema=False)
        app.add_exception_handler(RequestValidationError, self._invalid_request)  # type: ignore[arg-type]
        app.add_exception_handler(ServemeshError, self._failed)
        app.add_exception_handler(ApiError, self._failed)
        app.add_exception_handler(HTTPException, self._http_exception)  # type: ignore[arg-type]
        app.add_middleware(KitMiddleware, kit=self)  # type: ignore[arg-type]
        docs = (app.docs_url, app.redoc_url, app.openapi_url, app.swagger_ui_oauth2_redirect_url)
        self.exempt = frozenset((*OPS_ROUTES, *(p for p in docs if p)))
        return app

    # -- for the surface's handlers -----------------------------------------------------------
    def request_id(self, request: Request) -> str:
        """The request's id (the client's ``X-Request-Id``, or a new one), echoed in the response."""
        rid = getattr(request.state, "request_id", None)
        return rid if isinstance(rid, str) else request_id_of(request.scope)

    def context(self, request: Request, *, timeout: float | None = None) -> Context:
        """The runtime context for the calls a request makes; its id is the request id."""
        return Context(id=self.request_id(request), timeout=timeout)

    def error_response(self, exc: BaseException) -> JSONResponse:
        """``exc`` as an HTTP response in the surface's shape."""
        return self._response(describe(exc))

    def sse_error(self, exc: BaseException) -> bytes:
        """``exc`` as an SSE frame, for errors after a stream's headers went out."""
        return event(describe(exc).body(self.shape))

    def ready(self) -> bool:
        return not self.runtime.is_stopping and (self._ready is None or self._ready())

    # -- the kit's routes and handlers ----------------------------------------------------------
    def _response(self, problem: Problem) -> JSONResponse:
        return JSONResponse(problem.body(self.shape), status_code=problem.status, headers=problem.headers())

    def _info_fields(self) -> dict[str, Any]:
        return dict(self._info()) if self._info is not None else {}

    async def _health(self) -> JSONResponse:
        ok = not self.runtime.is_stopping
        body = {"status": "ok" if ok else "stopping", "gateway": self.name, "inflight": self.inflight,
                **self._info_fields()}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def _live(self) -> JSONResponse:
        return JSONResponse({"status": "alive"})

    async def _ready_route(self) -> JSONResponse:
        ready = self.ready()
        return JSONResponse({"ready": ready, **self._info_fields()}, status_code=200 if ready else 503)

    async def _metrics(self) -> Response:
        return Response(self.metrics.render() + self.runtime.metrics.render(), media_type=PROMETHEUS)

    async def _failed(self, request: Request, exc: Exception) -> JSONResponse:
        problem = describe(exc)
        if problem.status >= 500:
            log.warning("%s %s (request %s) failed: %s", request.method, request.url.path,
                        self.request_id(request), exc)
        return self._response(problem)

    async def _invalid_request(self, request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        err: dict[str, Any] = dict(errors[0]) if errors else {}
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = str(err.get("msg", "invalid request"))
        if err.get("type") == "json_invalid":
            message = f"the request body is not valid JSON: {err.get('ctx', {}).get('error', message)}"
        elif param:
            message = f"{param}: {message}"
        return self._response(Problem(400, message, "invalid_request_error", err.get("type"), param))

    async def _http_exception(self, request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        response = self._response(Problem(exc.status_code, str(exc.detail), "invalid_request_error", code))
        response.headers.update(exc.headers or {})
        return response
