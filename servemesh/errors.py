"""The one exception tree of servemesh.

::

    ServemeshError
    ├── ConfigError             settings or arguments that cannot work
    ├── ProtocolError           a malformed wire frame
    │   ├── FrameTooLarge       a frame over the size limit (size, limit)
    │   └── UpstreamProtocolError  a replica that does not speak its protocol (address, protocol, reason)
    ├── SerializationError      a value that cannot be put on the wire
    ├── DiscoveryError          the discovery backend failed or is unreachable
    ├── NoInstancesError        no live instance matches (endpoint, known)
    ├── InstanceUnavailable     the chosen instance could not be reached
    ├── StreamIncomplete        a stream ended without its end-of-stream frame
    ├── RemoteError             the remote handler raised (remote_type, message)
    ├── Cancelled               the request was cancelled
    ├── DeadlineExceeded        the request's deadline passed
    ├── ValidationError         the request failed the endpoint's validation (field)
    ├── Overloaded              the instance refused work because it is full
    ├── CapabilityNotFound      no replica serves the labels asked for (wanted, available)
    ├── DelegationRefused       a delegation would loop or go too deep (reason, chain, limit)
    ├── RegistrationConflict    a replica id registered from elsewhere (replica_id, endpoint, registered)
    ├── EventsLost              events of a subject were dropped or could not be sent (subject, dropped, reason)
    ├── SessionError            stateful sessions (servemesh.sessions); as itself: a store misused
    │   ├── SessionNotFound     no session (partition_key, app_id[, sequence_id])
    │   ├── SessionConflict     a stale step or an id taken (partition_key, app_id, expected, actual)
    │   ├── WrongAction         the action is not the session's next one (action, next_action)
    │   └── ActionFailed        the app's action raised; nothing was stored (action, error_type, message)
    └── ObjectStoreError        the object store (servemesh.objects); as itself: closed or misused
        ├── InvalidObjectRef    (+ ValidationError) not a ref: a path, a URL, garbage
        ├── ObjectNotFound      expired, deleted or never stored (ref, expired)
        ├── ObjectTooLarge      over the object size limit (size, limit)
        ├── ObjectRefused       (+ SerializationError) pickle without the operator's opt-in
        ├── ObjectCorrupted     (+ ProtocolError) stored bytes that are not a valid object
        └── ObjectStoreUnavailable  the object store's backend failed or timed out
    └── FunctionError       a typed function (servemesh.functions); as itself: misuse
        ├── FunctionInputError  (+ ValidationError) inputs or params that fail their models (field): 422
        ├── FunctionStartupError  on_startup raised (function, cause): the process exits with it
        ├── FunctionInvalid     validation found problems (problems: every one, with its location)
        └── BuildError          the image builder cannot build (a Dockerfile line, a base image)
            └── RegistryError   a registry refused or failed a request (status, url)
                └── PushRefused an overwrite without --force, or a breaking change (diff)

Workers raise these (or their own exceptions, which reach clients as
``RemoteError``); only the gateways map them to HTTP status codes.

Every class has a wire ``kind`` and the constructor arguments it is rebuilt
from (``wire_fields``), so an error keeps its class and its fields across any
number of hops; ``servemesh.runtime.errortable`` is the one place that turns
them into frames and back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar


class ServemeshError(Exception):
    """Base class of every error servemesh raises."""

    #: the error's name on the wire (``runtime.errortable``)
    kind: ClassVar[str] = "internal"

    def wire_fields(self) -> dict[str, Any]:
        """The constructor arguments this error is rebuilt from on the other side."""
        return {"message": str(self)}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> ServemeshError:
        return cls(fields.get("message", ""))


class ConfigError(ServemeshError):
    """Settings or arguments that cannot work together."""

    kind = "config"


class ProtocolError(ServemeshError):
    """A wire frame that cannot be decoded."""

    kind = "protocol"


class FrameTooLarge(ProtocolError):
    kind = "frame_too_large"

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"frame of {size} bytes exceeds the limit of {limit} bytes "
            "(raise SERVEMESH_MAX_PAYLOAD on both sides or send less)"
        )

    def wire_fields(self) -> dict[str, Any]:
        return {"size": self.size, "limit": self.limit}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> ServemeshError:
        return cls(int(fields.get("size", 0)), int(fields.get("limit", 0)))


class UpstreamProtocolError(ProtocolError):
    """A replica's endpoint answers, but not in the protocol it was registered with (say, an
    endpoint registered as OIP v2 gRPC that is a web server, or serves another gRPC
    service). A gateway answers 502."""

    kind = "upstream_protocol"

    def __init__(self, address: str, protocol: str, reason: str) -> None:
        self.address = address
        self.protocol = protocol
        self.reason = reason
        super().__init__(f"the replica at {address} does not answer {protocol} ({reason})")

    def wire_fields(self) -> dict[str, Any]:
        return {"address": self.address, "protocol": self.protocol, "reason": self.reason}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> ServemeshError:
        return cls(str(fields.get("address", "")), str(fields.get("protocol", "")), str(fields.get("reason", "")))


class SerializationError(ServemeshError, TypeError):
    """A value that the wire codec cannot encode."""

    kind = "serialization"


class DiscoveryError(ServemeshError):
    """The discovery backend failed or could not be reached."""

    kind = "discovery"


class NoInstancesError(ServemeshError):
    kind = "no_instances"

    def __init__(
        self,
        endpoint: str,
        known: Sequence[str] = (),
        capabilities: dict[str, object] | None = None,
        waited: float = 0.0,
    ) -> None:
        self.endpoint = endpoint
        self.known = list(known)
        self.capabilities = capabilities
        self.waited = waited
        namespace = endpoint.split(".", 1)[0]
        parts = [f"no live instances of {endpoint}"]
        if capabilities:
            parts[0] += f" with capabilities {capabilities}"
        if waited:
            parts[0] += f" (waited {waited:g} s for one)"
        if self.known:
            parts.append(f"endpoints that exist in namespace {namespace!r}: {', '.join(self.known)}")
        else:
            parts.append(f"namespace {namespace!r} has no live endpoints")
        parts.append(f"list instances with `servemesh ls {namespace}`")
        super().__init__("; ".join(parts))

    def wire_fields(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "known": self.known, "capabilities": self.capabilities,
                "waited": self.waited}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> ServemeshError:
        return cls(str(fields.get("endpoint", "")), list(fields.get("known") or ()),
                   fields.get("capabilities"), float(fields.get("waited") or 0.0))


class InstanceUnavailable(ServemeshError):
    kind = "unavailable"

    def __init__(self, instance_id: int, address: str, reason: str) -> None:
        self.instance_id = instance_id
        self.address = address
        self.reason = reason
        super().__init__(f"instance {instance_id:x} at {address} is unavailable: {reason}")

    def wire_fields(self) -> dict[str, Any]:
        return {"instance_id": self.instance_id, "address": self.address, "reason": self.reason}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> ServemeshError:
        return cls(int(fields.get("instance_id", 0)), str(fields.get("address", "")), str(fields.get("reason", "")))


class StreamIncomplete(ServemeshError):
    kind = "incomplete"

    def __init__(self, endpoint: str, instance_id: int, received: int, reason: str) -> None:
        self.endpoint = endpoint
        self.instance_id = instance_id
        self.received = received
        self.reason = reason
        super().__init__(
            f"stream from {endpoint} (instance {instance_id:x}) ended after {received} "
            f"items without its end-of-stream frame: {reason}"
        )

    def wire_fields(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "instance_id": self.instance_id, "received": self.received,
                "reason": self.reason}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> ServemeshError:
        return cls(str(fields.get("endpoint", "")), int(fields.get("instance_id", 0)),
                   int(fields.get("received", 0)), str(fields.get("reason", "")))


class RemoteError(ServemeshError):
    kind = "remote"

    def __init__(self, remote_type: str, message: str, endpoint: str = "") -> None:
        self.remote_type = remote_type
        self.message = message
        self.endpoint = endpoint
        where = f" in {endpoint}" if endpoint else ""
        super().__init__(f"handler{where} raised {remote_type}: {message}")

    def wire_fields(self) -> dict[str, Any]:
        return {"remote_type": self.remote_type, "message": self.message, "endpoint": self.endpoint}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> ServemeshError:
        return cls(str(fields.get("remote_type", "Exception")), str(fields.get("message", "")),
                   str(fields.get("endpoint", "")))


class Cancelled(ServemeshError):
    """The request was cancelled by its caller or by a stopped context."""

    kind = "cancelled"


class DeadlineExceeded(ServemeshError):
    """The request's deadline passed before the stream finished."""

    kind = "deadline"


class ValidationError(ServemeshError, ValueError):
    kind = "validation"

    def __init__(self, message: str, field: str | None = None, endpoint: str = "") -> None:
        self.field = field
        self.message = message
        self.endpoint = endpoint
        where = f"{endpoint}: " if endpoint else ""
        at = f"field {field!r}: " if field else ""
        super().__init__(f"invalid request for {where}{at}{message}")

    def wire_fields(self) -> dict[str, Any]:
        return {"message": self.message, "field": self.field, "endpoint": self.endpoint}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> ServemeshError:
        field = fields.get("field")
        return cls(str(fields.get("message", "")), None if field is None else str(field),
                   str(fields.get("endpoint", "")))


class Overloaded(ServemeshError):
    kind = "overloaded"

    def __init__(self, endpoint: str, limit: int) -> None:
        self.endpoint = endpoint
        self.limit = limit
        super().__init__(f"{endpoint} is at its limit of {limit} concurrent streams; retry later")

    def wire_fields(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "limit": self.limit}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> ServemeshError:
        return cls(str(fields.get("endpoint", "")), int(fields.get("limit", 0)))


# -- capability serving (servemesh.capability) ------------------------------------------
def _labels(labels: object) -> str:
    """``{"type": "chat", "gpus": 2}`` as ``{type=chat, gpus=2}``: short, and the same
    whatever the JSON encoder."""
    if isinstance(labels, dict):
        return "{" + ", ".join(f"{k}={v}" for k, v in labels.items()) + "}"
    return str(labels)


class CapabilityNotFound(ServemeshError):
    """No registered replica serves the capability asked for; ``available`` lists the
    capabilities that do exist (each a label set)."""

    kind = "capability_not_found"

    def __init__(self, wanted: dict[str, Any], available: Sequence[dict[str, Any]] = ()) -> None:
        self.wanted = dict(wanted)
        self.available = [dict(a) for a in available]
        if self.available:
            have = ", ".join(_labels(a) for a in self.available)
            tail = f"capabilities that exist: {have}"
        else:
            tail = "no replica is registered (start one with `servemesh serve module:app --api-server URL`)"
        super().__init__(f"no replica serves capability {_labels(self.wanted)}; {tail}")

    def wire_fields(self) -> dict[str, Any]:
        return {"wanted": self.wanted, "available": self.available}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> ServemeshError:
        wanted = fields.get("wanted")
        available = fields.get("available")
        return cls(wanted if isinstance(wanted, dict) else {},
                   [a for a in available if isinstance(a, dict)] if isinstance(available, list) else [])


class DelegationRefused(ServemeshError):
    """A delegation that would go back to a replica already in the chain (``reason``
    ``"loop"``) or beyond the depth limit (``"depth"``)."""

    kind = "delegation_refused"

    def __init__(self, reason: str, chain: Sequence[str], limit: int = 0, wanted: dict[str, Any] | None = None) -> None:
        self.reason = reason
        self.chain = list(chain)
        self.limit = limit
        self.wanted = dict(wanted) if wanted else None
        path = " -> ".join(self.chain) or "(none)"
        what = f" of capability {_labels(self.wanted)}" if self.wanted else ""
        if reason == "loop":
            text = (f"delegation{what} refused: every replica that serves it is already in the chain {path} "
                    "(a loop)")
        else:
            text = (f"delegation{what} refused: the chain {path} is at the depth limit of {limit} "
                    "(SERVEMESH_DELEGATION_MAX_DEPTH)")
        super().__init__(text)

    def wire_fields(self) -> dict[str, Any]:
        return {"reason": self.reason, "chain": self.chain, "limit": self.limit, "wanted": self.wanted}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> ServemeshError:
        chain = fields.get("chain")
        wanted = fields.get("wanted")
        return cls(str(fields.get("reason", "")), [str(c) for c in chain] if isinstance(chain, list) else [],
                   int(fields.get("limit") or 0), wanted if isinstance(wanted, dict) else None)


class RegistrationConflict(ServemeshError):
    """A replica id is registered from another endpoint, and the new registration does not
    carry its token. Raised by an API server; it never crosses the request plane."""

    def __init__(self, replica_id: str, endpoint: str, registered: str, why: str = "") -> None:
        self.replica_id = replica_id
        self.endpoint = endpoint
        self.registered = registered
        why = why or (f"it is registered from {registered}, not {endpoint}" if endpoint != registered
                      else "it was registered with a token, and this request does not carry that token")
        super().__init__(
            f"replica {replica_id!r} belongs to another registration ({why}): send the token it registered with, "
            "unregister it first, or wait until its registration expires"
        )


# -- the event plane (runtime.events) ------------------------------------------------------
class EventsLost(ServemeshError):
    """Events of ``subject`` were lost: a subscription's queue overflowed (``dropped`` of
    them) or its connection was cut, or a publish could not be sent. What was built from
    the events is stale: resynchronise (fetch a snapshot), then keep reading. Local to a
    process: it never crosses the request plane."""

    def __init__(self, subject: str, dropped: int, reason: str) -> None:
        self.subject = subject
        self.dropped = dropped
        self.reason = reason
        count = f"{dropped} event(s)" if dropped else "events"
        super().__init__(f"{count} on {subject} lost: {reason}; resynchronise from a snapshot")

    def wire_fields(self) -> dict[str, Any]:
        return {"subject": self.subject, "dropped": self.dropped, "reason": self.reason}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> ServemeshError:
        return cls(str(fields.get("subject", "")), int(fields.get("dropped", 0)), str(fields.get("reason", "")))


# -- stateful sessions (servemesh.sessions) ------------------------------------------------
class SessionError(ServemeshError):
    """Base of the session errors; raised as itself for a store that is closed or misused."""


def _session(partition_key: str, app_id: str) -> str:
    return f"session {app_id!r} in partition {partition_key!r}"


class SessionNotFound(SessionError):
    """No session under ``(partition_key, app_id)`` (or no step ``sequence_id`` of it)."""

    kind = "session_not_found"

    def __init__(self, partition_key: str, app_id: str, sequence_id: int | None = None) -> None:
        self.partition_key = partition_key
        self.app_id = app_id
        self.sequence_id = sequence_id
        at = "" if sequence_id is None else f" has no step {sequence_id}"
        what = "does not exist: create it with getOrCreate" if sequence_id is None else at
        super().__init__(f"{_session(partition_key, app_id)} {what}")

    def wire_fields(self) -> dict[str, Any]:
        return {"partition_key": self.partition_key, "app_id": self.app_id, "sequence_id": self.sequence_id}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> ServemeshError:
        seq = fields.get("sequence_id")
        return cls(str(fields.get("partition_key", "")), str(fields.get("app_id", "")),
                   None if seq is None else int(seq))


class SessionConflict(SessionError):
    """A step against a sequence id that is no longer the session's (``expected`` was
    sent or read, ``actual`` is stored), or a new session id that is taken (``actual``
    is its sequence id, ``expected`` ``None``). Nothing was stored."""

    kind = "session_conflict"

    def __init__(self, partition_key: str, app_id: str, expected: int | None, actual: int | None) -> None:
        self.partition_key = partition_key
        self.app_id = app_id
        self.expected = expected
        self.actual = actual
        if expected is None:
            text = f"{_session(partition_key, app_id)} already exists: choose another app_id"
        else:
            text = (f"{_session(partition_key, app_id)} is at sequence id {actual}, not {expected}: another "
                    "step ran first; read the session again and retry with If-Match: "
                    f"{actual if actual is not None else '<sequence_id>'}")
        super().__init__(text)

    def wire_fields(self) -> dict[str, Any]:
        return {"partition_key": self.partition_key, "app_id": self.app_id, "expected": self.expected,
                "actual": self.actual}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> ServemeshError:
        expected, actual = fields.get("expected"), fields.get("actual")
        return cls(str(fields.get("partition_key", "")), str(fields.get("app_id", "")),
                   None if expected is None else int(expected), None if actual is None else int(actual))


class WrongAction(SessionError):
    """An action asked for that is not the session's next one (``next_action`` ``None``:
    the session is finished)."""

    kind = "wrong_action"

    def __init__(self, action: str, next_action: str | None, app_id: str = "", partition_key: str = "") -> None:
        self.action = action
        self.next_action = next_action
        self.app_id = app_id
        self.partition_key = partition_key
        nxt = (f"its next action is {next_action!r}" if next_action is not None
               else "it has finished (no next action)")
        super().__init__(f"cannot run {action!r} on {_session(partition_key, app_id)}: {nxt}")

    def wire_fields(self) -> dict[str, Any]:
        return {"action": self.action, "next_action": self.next_action, "app_id": self.app_id,
                "partition_key": self.partition_key}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> ServemeshError:
        nxt = fields.get("next_action")
        return cls(str(fields.get("action", "")), None if nxt is None else str(nxt),
                   str(fields.get("app_id", "")), str(fields.get("partition_key", "")))


class ActionFailed(SessionError):
    """The application's action raised; the stored session is as it was before."""

    kind = "action_failed"

    def __init__(self, action: str, error_type: str, message: str) -> None:
        self.action = action
        self.error_type = error_type
        self.message = message
        super().__init__(f"action {action!r} failed with {error_type}: {message} (the session is unchanged)")

    def wire_fields(self) -> dict[str, Any]:
        return {"action": self.action, "error_type": self.error_type, "message": self.message}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> ServemeshError:
        return cls(str(fields.get("action", "")), str(fields.get("error_type", "")), str(fields.get("message", "")))


# -- the object store (servemesh.objects) ------------------------------------------------
#: the field name AnyServe uses for a ref carried in a tensor
OBJECT_REF_FIELD = "obj_ref"


def _shown(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut short: a ref in a message never echoes megabytes of input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ObjectStoreError(ServemeshError):
    """Base of the object store's errors; raised as itself for a closed store or a
    blocking call made on an event loop thread. (Its kind stays ``internal``: its
    subclasses travel as their own kind or as their other base's.)"""


class InvalidObjectRef(ObjectStoreError, ValidationError):
    """Something that is not an object ref; nothing was read. Travels as ``ValidationError``."""

    def __init__(self, ref: object) -> None:
        self.ref = _shown(ref)
        ValidationError.__init__(
            self,
            f"{self.ref} is not an object ref: refs are 'obj-' and 64 lowercase hex digits, as returned "
            "by objects.create(); paths, URLs and anything else are refused",
            OBJECT_REF_FIELD,
        )


class ObjectNotFound(ObjectStoreError):
    """No live object under this ref."""

    kind = "object_not_found"

    def __init__(self, ref: str, *, expired: bool = False) -> None:
        self.ref = ref
        self.expired = expired
        why = ("it expired (objects live for their TTL: create it again, or with a longer ttl=)" if expired
               else "it expired, was deleted, or was stored in another object store (check that every "
                    "replica uses the same SERVEMESH_OBJECT_STORE)")
        super().__init__(f"no object {ref}: {why}")

    def wire_fields(self) -> dict[str, Any]:
        return {"ref": self.ref, "expired": self.expired}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> ServemeshError:
        return cls(str(fields.get("ref", "")), expired=bool(fields.get("expired", False)))


class ObjectTooLarge(ObjectStoreError):
    """A payload over the store's size limit, refused before it was stored or read."""

    kind = "object_too_large"

    def __init__(self, size: int, limit: int, ref: str | None = None) -> None:
        self.size = size
        self.limit = limit
        self.ref = ref
        what = f"object {ref}" if ref else "object"
        super().__init__(
            f"{what} of {size} bytes exceeds the object store's limit of {limit} bytes: store less "
            "(split it, or keep it elsewhere and pass a reference), or raise SERVEMESH_OBJECT_MAX_BYTES "
            "on every replica"
        )

    def wire_fields(self) -> dict[str, Any]:
        return {"size": self.size, "limit": self.limit, "ref": self.ref}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> ServemeshError:
        ref = fields.get("ref")
        return cls(int(fields.get("size", 0)), int(fields.get("limit", 0)), None if ref is None else str(ref))


class ObjectRefused(ObjectStoreError, SerializationError):
    """A value the codec does not take, or a stored payload this store will not decode
    (pickle without the operator's opt-in). Travels as ``SerializationError``."""

    def __init__(self, reason: str, ref: str | None = None) -> None:
        self.reason = reason
        self.ref = ref
        super().__init__(f"object {ref} refused: {reason}" if ref else f"object refused: {reason}")


class ObjectCorrupted(ObjectStoreError, ProtocolError):
    """Stored bytes that are not a valid object. Travels as ``ProtocolError``."""

    def __init__(self, ref: str | None, reason: str) -> None:
        self.ref = ref
        self.reason = reason
        what = f"object {ref}" if ref else "object payload"
        super().__init__(f"{what} is unusable: {reason}")


class ObjectStoreUnavailable(ObjectStoreError):
    """The object store's backend failed or did not answer in time."""

    kind = "object_store_unavailable"

    def __init__(self, location: str, reason: str) -> None:
        self.location = location
        self.reason = reason
        super().__init__(f"object store {location} is unavailable: {reason}")

    def wire_fields(self) -> dict[str, Any]:
        return {"location": self.location, "reason": self.reason}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> ServemeshError:
        return cls(str(fields.get("location", "")), str(fields.get("reason", "")))


# -- typed functions (servemesh.functions) ------------------------------------------------
class FunctionError(ServemeshError):
    """Base of the typed functions' errors; as itself: a function authored or used wrongly."""


class FunctionInputError(FunctionError, ValidationError):
    """Inputs or params that do not match the function's models (``field``: ``inputs.text``).
    A gateway answers 422."""

    kind = "function_input"


class FunctionStartupError(FunctionError):
    """The function's ``on_startup`` raised: it never becomes ready, and its process exits."""

    def __init__(self, function: str, cause: str) -> None:
        self.function = function
        self.cause = cause
        super().__init__(f"on_startup of function {function!r} failed: {cause}")


class FunctionInvalid(FunctionError):
    """``servemesh validate`` found problems; ``problems`` lists every one with its location."""

    def __init__(self, where: str, problems: Sequence[str]) -> None:
        self.where = where
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{where}: {len(self.problems)} problem(s):\n{lines}")


class BuildError(FunctionError):
    """The image builder cannot build: an instruction it cannot honour (the message names
    the Dockerfile line), a missing base image, a file outside the build context."""


class RegistryError(BuildError):
    """A registry refused or failed a request (``status`` 0: it could not be reached)."""

    def __init__(self, message: str, status: int = 0, url: str = "") -> None:
        self.status = status
        self.url = url
        super().__init__(message)


class PushRefused(RegistryError):
    """A push that would overwrite a pushed version (without ``--force``) or break its
    consumers without a major version bump; ``diff`` lists the changes."""

    def __init__(self, message: str, diff: Sequence[str] = ()) -> None:
        self.diff = list(diff)
        super().__init__(message + ("".join(f"\n  {d}" for d in self.diff)))
