"""The Open Inference Protocol v2 REST surface (``/v2/...``), built on the gateway kit.

- ``GET /v2/health/live``, ``/v2/health/ready``, ``GET /v2`` (server metadata);
- ``GET /v2/models/{name}[/versions/{v}]`` (model metadata), ``.../ready``;
- ``POST /v2/models/{name}[/versions/{v}]/infer``: JSON tensors (``data`` flat or nested),
  or binary tensor data (``Inference-Header-Content-Length``, ``binary_data_size``;
  outputs binary when asked with ``binary_data`` / ``binary_data_output``); request
  bodies compressed with gzip or deflate (``Content-Encoding``) are read too;
- Triton's ``GET /v2/models/{name}/config``, ``GET|POST /v2/repository/index`` and
  ``GET /v2/models[/{name}[/versions/{v}]]/stats``.

Errors are ``{"error": "..."}`` with the kit's status (400 bad tensor, naming it; 404
unknown model or version; 503 no live replica; 500 a handler's exception type and
message). The infer routes are raw routes (``kit.raw``): the hot path skips FastAPI.
"""

from __future__ import annotations

import zlib
from typing import Any

from fastapi import FastAPI
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from ... import __version__
from ...errors import ValidationError
from ...tensors import HEADER_LENGTH, decode_rest_request, encode_rest_response
from ..kit import ApiError, GatewayKit, GatewayMetrics, plain_shape
from ..kit.disconnect import unless_disconnected
from ..kit.raw import header
from .service import EXTENSIONS, KServeService

_HEADER_LENGTH = HEADER_LENGTH.lower().encode()


class KServeRest:
    """``KServeRest(service)``; serve ``.app`` (``kit.http_server(host, port)``, or behind a
    ``PathMux`` at ``/v2``). Surfaces sharing a server pass one ``metrics``."""

    def __init__(self, service: KServeService, *, max_inflight: int | None = None,
                 metrics: GatewayMetrics | None = None) -> None:
        runtime = service.router.runtime
        self.service = service
        self.max_body = runtime.settings.http_max_body
        self.kit = GatewayKit(runtime, "kserve", shape=plain_shape, max_inflight=max_inflight
                              or runtime.settings.capability_max_inflight, handler_errors=True,
                              ready=lambda: bool(service.catalog.models()),
                              info=lambda: {"models": sorted(service.catalog.models())}, metrics=metrics)
        routes = {("POST", "/v2/models/{name}/infer"): self.infer,
                  ("POST", "/v2/models/{name}/versions/{version}/infer"): self.infer}
        self.kit.install(self._build(), raw_routes=routes)
        #: the ASGI app to serve
        self.app = self.kit.asgi

    def _build(self) -> FastAPI:
        app = FastAPI(title="servemesh KServe Open Inference Protocol v2", version="2")
        service = self.service

        @app.get("/v2")
        async def server_metadata() -> dict[str, Any]:
            return {"name": "servemesh", "version": __version__, "extensions": EXTENSIONS}

        @app.get("/v2/health/live")
        async def live() -> dict[str, Any]:
            return {"live": True}

        @app.get("/v2/health/ready")
        async def ready() -> JSONResponse:
            ok = self.kit.ready()
            return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

        @app.api_route("/v2/repository/index", methods=["GET", "POST"])
        async def index() -> list[dict[str, Any]]:
            return service.index()

        @app.get("/v2/models/stats")
        async def all_stats() -> dict[str, Any]:
            return service.stats.report()

        async def metadata(name: str, version: str = "") -> dict[str, Any]:
            return service.metadata(service.model(name, version))

        async def model_ready(name: str, version: str = "") -> JSONResponse:
            ok = service.ready(name, version)
            if not ok and (name in service.catalog.models() or name not in service.catalog.known()):
                service.model(name, version)  # raises: no such model or version (404)
            return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

        async def config(name: str, version: str = "") -> dict[str, Any]:
            return service.config(service.model(name, version))

        async def stats(name: str, version: str = "") -> dict[str, Any]:
            return service.stats.report(name, version)

        for suffix, route in (("", metadata), ("/ready", model_ready), ("/config", config), ("/stats", stats)):
            app.add_api_route("/v2/models/{name}" + suffix, route, methods=["GET"])
            app.add_api_route("/v2/models/{name}/versions/{version}" + suffix, route, methods=["GET"])
        return app

    async def infer(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """``POST /v2/models/{name}[/versions/{version}]/infer`` (a raw route)."""
        params = scope["path_params"]
        name, version = params["name"], params.get("version", "")
        self.kit.about_scope(scope, f"model {name!r}")
        request = decode_rest_request(self._plain(scope, body), header(scope, b"inference-header-content-length"),
                                      model_name=name, model_version=version)
        response = await unless_disconnected(receive, self.service.infer(request, self.kit.scope_context(scope)))
        data, length = encode_rest_response(response, request)
        headers = [(b"content-length", str(len(data)).encode())]
        if length is None:
            headers.append((b"content-type", b"application/json"))
        else:
            headers += [(b"content-type", b"application/octet-stream"), (_HEADER_LENGTH, str(length).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    def _plain(self, scope: Scope, body: bytes) -> bytes:
        """The body, inflated if it came with ``Content-Encoding: gzip`` or ``deflate`` (at
        most ``SERVEMESH_HTTP_MAX_BODY`` bytes once inflated)."""
        encoding = (header(scope, b"content-encoding") or "identity").strip().lower()
        if encoding == "identity":
            return body
        if encoding not in ("gzip", "deflate"):
            raise ApiError(415, f"Content-Encoding {encoding!r} is not supported: use gzip, deflate or none",
                           code="unsupported_encoding")
        inflate = zlib.decompressobj(wbits=47)  # gzip or zlib, told by the header
        try:
            plain = inflate.decompress(body, self.max_body + 1)
        except zlib.error as exc:
            raise ValidationError(f"the {encoding} body cannot be inflated: {exc}", field="body") from None
        if len(plain) > self.max_body or inflate.unconsumed_tail:
            raise ApiError(413, f"the inflated body is larger than {self.max_body} bytes", code="body_too_large")
        return plain
