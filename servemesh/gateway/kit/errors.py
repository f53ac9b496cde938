"""The one mapping from errors to HTTP: status, a generic type and code, and headers.

::

    describe(exc) -> Problem(status, message, type, code, param, retry_after)

    ApiError (a surface's own refusal)      its status
    ValidationError, SerializationError      400
    ObjectNotFound                           404
    ObjectTooLarge                           413
    Overloaded                               429 + Retry-After
    NoInstancesError, InstanceUnavailable,
    ObjectStoreUnavailable                   503
    StreamIncomplete                         502
    DeadlineExceeded                         504
    Cancelled                                499
    RemoteError, any other ServemeshError    500
    anything else                            500

Messages are for the client: errors that carry internal names, addresses or
instance ids (``NoInstancesError``, ``InstanceUnavailable``, ``StreamIncomplete``,
``RemoteError``, ...) get a generic text about the request's ``subject`` ("no live
replica for model 'm'; retry later"), unless ``debug`` (``SERVEMESH_DEBUG_ERRORS``).
The full text goes to the gateway's log.

Classes are matched with ``isinstance`` only: the runtime keeps an error's class
across hops, so a ``NoInstancesError`` raised three processes away is still one
here. A surface never maps errors itself; it supplies a :data:`Shape` that turns
a problem into its body (OpenAI: ``{"error": {...}}``, KServe: ``{"error": "..."}``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ...errors import (
    Cancelled,
    DeadlineExceeded,
    InstanceUnavailable,
    NoInstancesError,
    ObjectNotFound,
    ObjectStoreUnavailable,
    ObjectTooLarge,
    Overloaded,
    RemoteError,
    SerializationError,
    ServemeshError,
    StreamIncomplete,
    ValidationError,
)
from ...http.shape import Shape

__all__ = ["RETRY_AFTER", "ApiError", "Problem", "Shape", "describe", "status_of"]

#: seconds a client should wait before retrying a refused (429) request
RETRY_AFTER = 1


@dataclasses.dataclass(frozen=True)
class Problem:
    """What an error means over HTTP, before a surface gives it its shape."""

    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    retry_after: int | None = None

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}

    def body(self, shape: Shape) -> Any:
        return shape(self.status, self.message, self.type, self.code, self.param)


class ApiError(Exception):
    """A refusal decided by the gateway surface itself (unknown model, unsupported
    option). Only gateway code raises it; workers raise servemesh errors."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.problem = Problem(status, message, type, code, param, retry_after)


# (class, status, type, code): the first match wins, so subclasses come first
_TABLE: tuple[tuple[type[BaseException], int, str, str], ...] = (
    (ValidationError, 400, "invalid_request_error", "invalid_value"),
    (ObjectNotFound, 404, "not_found_error", "object_not_found"),
    (ObjectTooLarge, 413, "invalid_request_error", "object_too_large"),
    (ObjectStoreUnavailable, 503, "service_unavailable", "object_store_unavailable"),
    (SerializationError, 400, "invalid_request_error", "unserializable"),
    (Overloaded, 429, "rate_limit_error", "overloaded"),
    (NoInstancesError, 503, "service_unavailable", "no_instances"),
    (InstanceUnavailable, 503, "service_unavailable", "instance_unavailable"),
    (StreamIncomplete, 502, "upstream_error", "stream_incomplete"),
    (DeadlineExceeded, 504, "timeout", "deadline_exceeded"),
    (Cancelled, 499, "cancelled", "cancelled"),
    (RemoteError, 500, "internal_error", "remote_error"),
    (ServemeshError, 500, "internal_error", "internal_error"),
)


def describe(exc: BaseException, *, debug: bool = False, subject: str | None = None) -> Problem:
    """The HTTP meaning of ``exc`` (any exception; unknown ones are a 500). ``subject``
    names what the request was for ("model 'm'") in messages that hide internals."""
    if isinstance(exc, ApiError):
        return exc.problem
    for cls, status, type_, code in _TABLE:
        if isinstance(exc, cls):
            param = exc.field if isinstance(exc, ValidationError) else None
            retry = RETRY_AFTER if status == 429 else None
            message = str(exc) if debug else _public(exc, subject)
            return Problem(status, message, type_, code, param, retry)
    return Problem(500, str(exc) if debug else "internal error", "internal_error", "internal_error")


def _public(exc: BaseException, subject: str | None) -> str:
    """``exc``'s message for clients: no endpoint paths, addresses or instance ids."""
    about = f" for {subject}" if subject else ""
    if isinstance(exc, ValidationError):
        return f"{exc.field}: {exc.message}" if exc.field else exc.message
    if isinstance(exc, Overloaded):
        return f"the service{about} is at its limit of {exc.limit} concurrent requests; retry later"
    if isinstance(exc, NoInstancesError):
        return f"no live replica{about or ' can serve this request'}; retry later"
    if isinstance(exc, InstanceUnavailable):
        return f"the replica chosen{about} could not be reached; retry later"
    if isinstance(exc, StreamIncomplete):
        return f"the response stream{about} was cut off: a replica failed mid-stream; retry"
    if isinstance(exc, DeadlineExceeded):
        return f"the request{about} did not finish within its deadline"
    if isinstance(exc, Cancelled):
        return "the request was cancelled"
    if isinstance(exc, (ObjectNotFound, ObjectTooLarge)):
        return str(exc)  # about the client's own ref or value: nothing internal
    if isinstance(exc, ObjectStoreUnavailable):
        return "the object store is unavailable; retry later"
    if isinstance(exc, SerializationError):
        return f"the request{about} holds a value that cannot be encoded: {exc}"
    return "internal error"


def status_of(exc: BaseException) -> int:
    """The HTTP status for ``exc``."""
    return describe(exc).status
