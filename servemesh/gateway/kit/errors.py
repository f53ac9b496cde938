"""The one mapping from errors to HTTP: status, a generic type and code, and headers.

::

    describe(exc) -> Problem(status, message, type, code, param, retry_after, details)

    ApiError (a surface's own refusal)      its status
    FunctionInputError                       422
    ValidationError, SerializationError      400
    ObjectNotFound, CapabilityNotFound,
    SessionNotFound                          404
    RegistrationConflict, SessionConflict,
    WrongAction                              409
    ActionFailed                             500 (the action's error type and message)
    ObjectTooLarge                           413
    Overloaded                               429 + Retry-After
    NoInstancesError, InstanceUnavailable,
    ObjectStoreUnavailable                   503
    StreamIncomplete, UpstreamProtocolError  502
    DeadlineExceeded                         504
    Cancelled                                499
    DelegationRefused                        508 (Loop Detected)
    RemoteError, any other ServemeshError    500
    anything else                            500

Messages are for the client: errors that carry internal names, addresses or
instance ids (``NoInstancesError``, ``InstanceUnavailable``, ``StreamIncomplete``,
``RemoteError``, ...) get a generic text about the request's ``subject`` ("no live
replica for model 'm'; retry later"), unless ``debug`` (``SERVEMESH_DEBUG_ERRORS``).
The full text goes to the gateway's log. A surface whose handlers are the user's own
code (the capability API) passes ``handler_errors=True``: a ``RemoteError`` then shows
the handler's exception type and message (never a traceback, never the endpoint), and
a ``ConfigError`` (a handler's misuse of its context) its message.

Classes are matched with ``isinstance`` only: the runtime keeps an error's class
across hops, so a ``NoInstancesError`` raised three processes away is still one
here. A surface never maps errors itself; it supplies a :data:`Shape` that turns
a problem into its body (OpenAI: ``{"error": {...}}``, KServe: ``{"error": "..."}``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ...errors import (
    ActionFailed,
    Cancelled,
    CapabilityNotFound,
    ConfigError,
    DeadlineExceeded,
    DelegationRefused,
    FrameTooLarge,
    FunctionInputError,
    InstanceUnavailable,
    NoInstancesError,
    ObjectNotFound,
    ObjectStoreUnavailable,
    ObjectTooLarge,
    Overloaded,
    RegistrationConflict,
    RemoteError,
    SerializationError,
    ServemeshError,
    SessionConflict,
    SessionNotFound,
    StreamIncomplete,
    UpstreamProtocolError,
    ValidationError,
    WrongAction,
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
    #: structured fields added to a JSON object body (the capability asked for, the ones that exist)
    details: Mapping[str, Any] | None = None

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}

    def body(self, shape: Shape) -> Any:
        body = shape(self.status, self.message, self.type, self.code, self.param)
        if self.details and isinstance(body, dict):
            body = {**self.details, **body}
        return body


class ApiError(Exception):
    """A refusal decided by the gateway surface itself (unknown model, unsupported
    option). Only gateway code raises it; workers raise servemesh errors."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, retry_after: int | None = None,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.problem = Problem(status, message, type, code, param, retry_after, details)


# (class, status, type, code): the first match wins, so subclasses come first
_TABLE: tuple[tuple[type[BaseException], int, str, str], ...] = (
    (FunctionInputError, 422, "invalid_request_error", "invalid_port"),
    (ValidationError, 400, "invalid_request_error", "invalid_value"),
    (ObjectNotFound, 404, "not_found_error", "object_not_found"),
    (CapabilityNotFound, 404, "not_found_error", "capability_not_found"),
    (RegistrationConflict, 409, "conflict_error", "registration_conflict"),
    (SessionNotFound, 404, "not_found_error", "session_not_found"),
    (SessionConflict, 409, "conflict_error", "stale_session"),
    (WrongAction, 409, "conflict_error", "wrong_action"),
    (ActionFailed, 500, "action_error", "action_failed"),
    (DelegationRefused, 508, "delegation_error", "delegation_refused"),
    (ObjectTooLarge, 413, "invalid_request_error", "object_too_large"),
    (ObjectStoreUnavailable, 503, "service_unavailable", "object_store_unavailable"),
    (SerializationError, 400, "invalid_request_error", "unserializable"),
    (Overloaded, 429, "rate_limit_error", "overloaded"),
    (NoInstancesError, 503, "service_unavailable", "no_instances"),
    (InstanceUnavailable, 503, "service_unavailable", "instance_unavailable"),
    (StreamIncomplete, 502, "upstream_error", "stream_incomplete"),
    (UpstreamProtocolError, 502, "upstream_error", "upstream_protocol"),
    (DeadlineExceeded, 504, "timeout", "deadline_exceeded"),
    (Cancelled, 499, "cancelled", "cancelled"),
    (RemoteError, 500, "internal_error", "remote_error"),
    (FrameTooLarge, 500, "internal_error", "frame_too_large"),
    (ServemeshError, 500, "internal_error", "internal_error"),
)


def describe(exc: BaseException, *, debug: bool = False, subject: str | None = None,
             handler_errors: bool = False) -> Problem:
    """The HTTP meaning of ``exc`` (any exception; unknown ones are a 500). ``subject``
    names what the request was for ("model 'm'") in messages that hide internals;
    ``handler_errors`` shows a ``RemoteError``'s exception type and message."""
    if isinstance(exc, ApiError):
        return exc.problem
    for cls, status, type_, code in _TABLE:
        if isinstance(exc, cls):
            param = exc.field if isinstance(exc, ValidationError) else None
            retry = RETRY_AFTER if status == 429 else None
            message = str(exc) if debug else _public(exc, subject, handler_errors)
            return Problem(status, message, type_, code, param, retry, _details(exc, handler_errors))
    return Problem(500, str(exc) if debug else "internal error", "internal_error", "internal_error")


def _details(exc: BaseException, handler_errors: bool) -> dict[str, Any] | None:
    if isinstance(exc, CapabilityNotFound):
        return {"capability": exc.wanted, "available": exc.available}
    if isinstance(exc, DelegationRefused):
        return {"chain": exc.chain, "reason": exc.reason}
    if isinstance(exc, RemoteError) and handler_errors:
        return {"error_type": exc.remote_type}
    if isinstance(exc, WrongAction):
        return {"next_action": exc.next_action}
    if isinstance(exc, SessionConflict):
        return {"sequence_id": exc.actual}
    if isinstance(exc, ActionFailed):
        return {"action": exc.action, "error_type": exc.error_type}
    return None


def _public(exc: BaseException, subject: str | None, handler_errors: bool = False) -> str:
    """``exc``'s message for clients: no endpoint paths, addresses or instance ids."""
    about = f" for {subject}" if subject else ""
    if isinstance(exc, RemoteError) and handler_errors:
        return f"{exc.remote_type}: {exc.message}"
    if isinstance(exc, ConfigError) and handler_errors:
        return str(exc)  # a handler's misuse of its context (say, a blocking call on the loop)
    if isinstance(exc, (CapabilityNotFound, DelegationRefused, RegistrationConflict, UpstreamProtocolError)):
        return str(exc)  # labels, replica ids and registered endpoints, as /registry shows them
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
    if isinstance(exc, (ObjectNotFound, ObjectTooLarge, FrameTooLarge, SessionNotFound, SessionConflict,
                        WrongAction, ActionFailed)):
        return str(exc)  # about the client's own ref, value or session, or an answer's size: nothing internal
    if isinstance(exc, ObjectStoreUnavailable):
        return "the object store is unavailable; retry later"
    if isinstance(exc, SerializationError):
        return f"the request{about} holds a value that cannot be encoded: {exc}"
    return "internal error"


def status_of(exc: BaseException) -> int:
    """The HTTP status for ``exc``."""
    return describe(exc).status
