"""The error table: every wire error kind, its exception class, and back.

This is the one place where errors cross a process boundary. A kind is a name
from a closed set (``Kind``; the frame decoder rejects any other), and an error
travels as ``(kind, fields)`` where ``fields`` are the constructor arguments of
its class, so ``Overloaded(endpoint, limit)``, ``RemoteError(remote_type,
message)`` or ``ValidationError(field)`` arrive whole after any number of hops.

A handler's own exceptions (not servemesh errors) become ``RemoteError`` with
the exception's type name; servemesh errors a handler raises (say the
``NoInstancesError`` of its own downstream call) keep their class.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from ..errors import (
    ActionFailed,
    Cancelled,
    CapabilityNotFound,
    ConfigError,
    DeadlineExceeded,
    DelegationRefused,
    DiscoveryError,
    FrameTooLarge,
    FunctionInputError,
    InstanceUnavailable,
    NoInstancesError,
    ObjectNotFound,
    ObjectStoreUnavailable,
    ObjectTooLarge,
    Overloaded,
    ProtocolError,
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

Kind = Literal["remote", "validation", "serialization", "no_instances", "unavailable", "incomplete",
               "overloaded", "cancelled", "deadline", "protocol", "frame_too_large", "config",
               "discovery", "object_not_found", "object_too_large", "object_store_unavailable",
               "capability_not_found", "delegation_refused", "function_input", "upstream_protocol",
               "session_not_found", "session_conflict", "wrong_action", "action_failed", "internal"]

KINDS: dict[str, type[ServemeshError]] = {
    cls.kind: cls for cls in (
        RemoteError, ValidationError, SerializationError, NoInstancesError, InstanceUnavailable,
        StreamIncomplete, Overloaded, Cancelled, DeadlineExceeded, ProtocolError, FrameTooLarge,
        ConfigError, DiscoveryError, ObjectNotFound, ObjectTooLarge, ObjectStoreUnavailable, CapabilityNotFound,
        DelegationRefused, FunctionInputError, UpstreamProtocolError, SessionNotFound, SessionConflict,
        WrongAction, ActionFailed, ServemeshError,
    )
}
assert set(KINDS) == set(Kind.__args__), "errortable: Kind and KINDS disagree"  # type: ignore[attr-defined]


def as_servemesh_error(exc: BaseException, path: str) -> BaseException:
    """What a caller sees for ``exc`` raised by the handler of ``path``.

    Servemesh errors pass as themselves; any other ``Exception`` becomes
    ``RemoteError``; ``BaseException``s (cancellation, exit) are not errors of the
    handler and pass unchanged."""
    if isinstance(exc, ServemeshError):
        return exc
    if isinstance(exc, Exception):
        return RemoteError(type(exc).__name__, str(exc), path)
    return exc


def encode(exc: ServemeshError) -> tuple[str, dict[str, Any]]:
    """``(kind, fields)`` of a servemesh error; subclasses unknown to the table travel
    as their nearest known base class."""
    for cls in type(exc).__mro__:
        kind = getattr(cls, "kind", None)
        if kind is not None and KINDS.get(kind) is cls:
            try:  # the class's own fields, also for a user's subclass of it
                fields = cls.wire_fields(exc)
            except AttributeError:  # a subclass that never set its base's attributes
                fields = ServemeshError.wire_fields(exc)
            return kind, {k: _clean(v) for k, v in fields.items()}
    return "internal", {"message": str(exc)}


def _clean(value: Any) -> Any:
    """Error text must always encode: a lone surrogate in a message is replaced."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "replace").decode("utf-8")
    elif isinstance(value, list):
        return [_clean(v) for v in value]
    elif isinstance(value, dict):
        return {str(_clean(k)): _clean(v) for k, v in value.items()}
    return value


def decode(kind: str, fields: dict[str, Any] | None) -> ServemeshError:
    """The exception for a wire ``(kind, fields)``; malformed fields still give the
    right class, with what could be read."""
    cls = KINDS.get(kind, ServemeshError)
    try:
        return cls.from_wire(fields or {})
    except (TypeError, ValueError):
        return cls.from_wire({}) if cls is not ServemeshError else ServemeshError(str(fields))


def interrupted(exc: BaseException) -> bool:
    """True for the errors that mean "the caller stopped this", not a failure."""
    return isinstance(exc, (Cancelled, DeadlineExceeded, asyncio.CancelledError))
