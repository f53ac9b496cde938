"""A typed function over HTTP, on the gateway kit.

- ``POST /execute``: ``{"inputs": {...}, "params": {...}}`` -> the outputs; a field that fails
  its model is a 422 naming it (``inputs.text``);
- ``GET /metadata``: name, version, description and the JSON Schemas of inputs, params, outputs;
- ``POST /objects`` (bytes in, ``{"ref": ...}`` out) and ``GET /objects/{ref}``: media ports'
  bytes in the function's object store;
- OpenAPI (``/docs``, ``/openapi.json``) with the ports' schemas, and the kit's ``/health``,
  ``/live``, ``/ready`` (503 until ``on_startup`` finished, and again once draining), ``/metrics``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, create_model
from starlette.types import Receive, Scope, Send

from ...errors import ValidationError
from ...functions.media import Media
from ...functions.serving import FunctionService
from ..kit import GatewayKit
from ..kit.disconnect import unless_disconnected
from ..kit.raw import send_bytes

_ENCODE = msgspec.json.Encoder().encode
_DECODE = msgspec.json.Decoder().decode


def _json(raw: bytes) -> Any:
    try:
        return _DECODE(raw) if raw else {}
    except msgspec.DecodeError as exc:
        raise ValidationError(f"the request body is not valid JSON: {exc}") from None


class ObjectCreated(BaseModel):
    ref: str


class FunctionApi:
    """``FunctionApi(service).app``: serve it with ``api.kit.http_server(host, port)`` or any ASGI server."""

    def __init__(self, service: FunctionService) -> None:
        self.service = service
        func = service.func
        self.subject = f"function {func.name!r}"
        self.kit = GatewayKit(service.runtime, "function", handler_errors=True, ready=lambda: service.ready,
                              info=lambda: {"function": func.name, "version": func.version, "state": service.state})
        self.request_model = create_model("ExecuteRequest", inputs=(func.input_model, ...),
                                          params=(func.param_model, func.param_model.model_construct()))
        # /execute is the hot path: a raw route (the kit's rules inline, no FastAPI layers); the
        # FastAPI route of the same path stays for the OpenAPI document and for the app served alone
        self.kit.install(self._build(), raw_routes={("POST", "/execute"): self.execute_raw})
        assert self.kit.app is not None
        self.app: Any = self.kit.asgi
        fastapi_app = self.kit.app
        documented = fastapi_app.openapi

        def openapi() -> dict[str, Any]:
            # the kit documents 400 for bad input; /execute answers 422 for a port that fails its model
            spec = documented()
            responses = spec["paths"]["/execute"]["post"]["responses"]
            responses.setdefault("422", {**responses["400"], "description": "An input or param fails its model "
                                         "(`param` names it: inputs.text)"})
            return spec

        fastapi_app.openapi = openapi  # type: ignore[method-assign]

    def _build(self) -> FastAPI:
        func = self.service.func
        app = FastAPI(title=f"{func.name} {func.version}", version=func.version, description=func.description)
        body = {"requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ExecuteRequest"}}}}}
        app.add_api_route("/execute", self.execute, methods=["POST"], openapi_extra=body,
                          responses={200: {"model": func.output_model, "description": "The outputs"}},
                          summary=f"Execute {func.name}")
        app.add_api_route("/metadata", self.metadata, methods=["GET"], summary="Name, version and port schemas")
        app.add_api_route("/objects", self.put_object, methods=["POST"], response_model=ObjectCreated,
                          summary="Store bytes for a media port: its ref")
        app.add_api_route("/objects/{ref}", self.get_object, methods=["GET"], summary="The bytes behind a ref",
                          response_class=Response)
        generate = app.openapi

        def openapi() -> dict[str, Any]:
            # the request body is read by the handler (for a 422 naming the port): document its model here
            if app.openapi_schema is not None:
                return app.openapi_schema
            spec = generate()
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            schema = self.request_model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, nested in schema.pop("$defs", {}).items():
                schemas.setdefault(name, nested)
            schemas["ExecuteRequest"] = schema
            return spec

        app.openapi = openapi  # type: ignore[method-assign]
        return app

    async def execute_raw(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """``POST /execute`` (``kit.raw``): the outputs, or the kit's error answer."""
        self.kit.about_scope(scope, self.subject)
        work = self.service.execute(_json(body), self.kit.scope_context(scope))
        await send_bytes(send, 200, _ENCODE(await unless_disconnected(receive, work)))

    async def execute(self, request: Request) -> JSONResponse:
        """``POST /execute`` when the FastAPI app is served without the raw lane."""
        self.kit.about(request, self.subject)
        work = self.service.execute(_json(await request.body()), self.kit.context(request))
        return JSONResponse(await self.kit.unless_disconnected(request, work))

    async def metadata(self) -> dict[str, Any]:
        return self.service.func.metadata()

    async def put_object(self, request: Request) -> ObjectCreated:
        return ObjectCreated(ref=await Media.store(self.service.objects, await request.body()))

    async def get_object(self, ref: str) -> Response:
        data = await Media(ref).read(self.service.objects)
        return Response(data, media_type="application/octet-stream")
