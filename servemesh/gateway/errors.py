"""servemesh errors → HTTP status and an OpenAI-shaped body."""

from __future__ import annotations

from starlette.responses import JSONResponse

from ..errors import (
    Cancelled,
    DeadlineExceeded,
    InstanceUnavailable,
    NoInstancesError,
    Overloaded,
    RemoteError,
    ServemeshError,
    StreamIncomplete,
    ValidationError,
)

_REMOTE_UNAVAILABLE = {"NoInstancesError", "InstanceUnavailable", "StreamIncomplete"}


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, type_: str, code: str | None = None,
                   param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code, param), status_code=status)


def status_of(exc: ServemeshError) -> tuple[int, str, str]:
    """(HTTP status, OpenAI error type, code) for a servemesh error."""
    if isinstance(exc, ValidationError):
        return 400, "invalid_request_error", "invalid_value"
    if isinstance(exc, Overloaded):
        return 429, "rate_limit_error", "overloaded"
    if isinstance(exc, (NoInstancesError, InstanceUnavailable)):
        return 503, "service_unavailable", "no_instances"
    if isinstance(exc, StreamIncomplete):
        return 502, "upstream_error", "stream_incomplete"
    if isinstance(exc, DeadlineExceeded):
        return 504, "timeout", "deadline_exceeded"
    if isinstance(exc, Cancelled):
        return 499, "cancelled", "cancelled"
    if isinstance(exc, RemoteError) and exc.remote_type in _REMOTE_UNAVAILABLE:
        return 503, "service_unavailable", "upstream_unavailable"
    return 500, "internal_error", "internal_error"


def to_response(exc: ServemeshError) -> JSONResponse:
    status, type_, code = status_of(exc)
    param = exc.field if isinstance(exc, ValidationError) else None
    return error_response(status, str(exc), type_, code, param)
