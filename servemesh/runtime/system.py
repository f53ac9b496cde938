"""The system port of a worker: ``/health``, ``/live``, ``/ready`` and Prometheus ``/metrics``.

It follows the rule of every HTTP surface: with API keys configured
(``SERVEMESH_API_KEY`` / ``SERVEMESH_API_KEY_FILE``) everything but the probes needs
``Authorization: Bearer <key>``, ``/metrics`` included unless
``SERVEMESH_METRICS_PUBLIC``; and request bodies are bounded like a gateway's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..http import ApiKeys, AuthMiddleware, BodyLimitMiddleware, HttpLimits
from ..http.auth import open_paths

if TYPE_CHECKING:
    from .distributed import DistributedRuntime

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


def system_app(runtime: DistributedRuntime) -> Starlette:
    settings = runtime.settings

    def state() -> dict[str, object]:
        return {
            "status": "stopping" if runtime.is_stopping else "ok",
            "instance_id": f"{runtime.instance_id:x}",
            "discovery": runtime.discovery.kind,
            "endpoints": {path: {"inflight": ep.inflight, "accepting": ep.accepting}
                          for path, ep in sorted(runtime.served.items())},
        }

    async def health(request: Request) -> JSONResponse:
        body = state()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    async def live(request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive"})

    async def ready(request: Request) -> JSONResponse:
        ok = not runtime.is_stopping and bool(runtime.served)
        return JSONResponse(state(), status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        return Response(runtime.metrics.render(), media_type=PROMETHEUS)

    return Starlette(routes=[
        Route("/health", health), Route("/live", live), Route("/ready", ready), Route("/metrics", metrics),
    ], middleware=[
        Middleware(AuthMiddleware, keys=ApiKeys.from_settings(settings),  # type: ignore[arg-type]
                   open_paths=open_paths(settings.metrics_public)),
        Middleware(BodyLimitMiddleware, limits=HttpLimits.from_settings(settings)),  # type: ignore[arg-type]
    ])
