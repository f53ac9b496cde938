"""Error bodies below the routing layer: a surface's :data:`Shape`, as ASGI messages or raw bytes.

The middleware and the connection guard refuse requests before any route runs (401,
408, 413, 503); they still answer in the shape of the surface they protect.
"""

from __future__ import annotations

import http
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from starlette.types import Send

#: ``shape(status, message, type, code, param) -> body``: a surface's error body.
Shape = Callable[[int, str, str, str | None, str | None], Any]

_encode = msgspec.json.Encoder().encode


def plain_shape(status: int, message: str, type: str, code: str | None, param: str | None) -> dict[str, Any]:
    """``{"error": "message"}`` (KServe v2's error body, and the system port's)."""
    return {"error": message}


def error_body(shape: Shape, status: int, message: str, type: str, code: str | None = None,
               param: str | None = None) -> bytes:
    return _encode(shape(status, message, type, code, param))


def _headers(body: bytes, headers: Mapping[str, str], close: bool) -> list[tuple[bytes, bytes]]:
    out = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    out += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    if close:  # the rest of the request is not read: the connection cannot carry another one
        out.append((b"connection", b"close"))
    return out


async def send_error(send: Send, shape: Shape, status: int, message: str, type: str, code: str | None = None, *,
                     headers: Mapping[str, str] | None = None, close: bool = False) -> None:
    """Answer an ASGI request with an error in ``shape``."""
    body = error_body(shape, status, message, type, code)
    await send({"type": "http.response.start", "status": status, "headers": _headers(body, headers or {}, close)})
    await send({"type": "http.response.body", "body": body})


def raw_error(shape: Shape, status: int, message: str, type: str, code: str | None = None, *,
              headers: Mapping[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection, for the socket itself."""
    body = error_body(shape, status, message, type, code)
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}".encode()]
    lines += [k + b": " + v for k, v in _headers(body, headers or {}, close=True)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
