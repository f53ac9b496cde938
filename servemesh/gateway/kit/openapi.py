"""The OpenAPI document states what a surface really answers.

FastAPI documents a 422 for every route with a body or parameters; the kit answers
those with 400. :func:`document_errors` replaces it and adds the statuses every
route can get from the kit (401 with API keys, 404, 429, 500, 503; 408 and 413 for
routes with a body), each with the surface's error body schema.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

_WHY = {
    "400": "The request is malformed or a field is out of range (`param` names it)",
    "401": "A valid API key is required (`Authorization: Bearer <key>`)",
    "404": "Unknown route, or unknown model",
    "408": "The request body did not arrive in time",
    "413": "The request body is over the size limit",
    "429": "Too many requests in flight; retry after `Retry-After` seconds",
    "500": "Internal error",
    "503": "No replica can serve the request now; retry later",
}
_METHODS = ("get", "put", "post", "delete", "patch", "options", "head")


def document_errors(app: FastAPI, error_model: type[BaseModel], *, auth: bool) -> Callable[[], dict[str, Any]]:
    """An ``app.openapi`` that post-processes FastAPI's document once."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = generate()
        name = error_model.__name__
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        schemas[name] = error_model.model_json_schema(ref_template="#/components/schemas/{model}")
        for nested, schema in schemas[name].pop("$defs", {}).items():
            schemas.setdefault(nested, schema)
        ref = {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}
        for operations in spec.get("paths", {}).values():
            for method, operation in operations.items():
                if method not in _METHODS:
                    continue
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                statuses = ["400", "404", "429", "500", "503"]
                if auth:
                    statuses.append("401")
                if "requestBody" in operation:
                    statuses += ["408", "413"]
                for status in sorted(statuses):
                    responses.setdefault(status, {"description": _WHY[status], **ref})
        if not _mentions(spec.get("paths", {}), "HTTPValidationError"):
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
        app.openapi_schema = spec
        return spec

    return openapi


def _mentions(node: Any, name: str) -> bool:
    if isinstance(node, dict):
        return any(_mentions(v, name) for v in node.values())
    if isinstance(node, list):
        return any(_mentions(v, name) for v in node)
    return isinstance(node, str) and node.endswith(f"/{name}")
