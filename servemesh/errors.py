"""The one exception tree of servemesh.

::

    ServemeshError
    ├── ConfigError             settings or arguments that cannot work
    ├── ProtocolError           a malformed wire frame
    │   └── FrameTooLarge       a frame over the size limit (size, limit)
    ├── SerializationError      a value that cannot be put on the wire
    ├── DiscoveryError          the discovery backend failed or is unreachable
    ├── NoInstancesError        no live instance matches (endpoint, known)
    ├── InstanceUnavailable     the chosen instance could not be reached
    ├── StreamIncomplete        a stream ended without its end-of-stream frame
    ├── RemoteError             the remote handler raised (remote_type, message)
    ├── Cancelled               the request was cancelled
    ├── DeadlineExceeded        the request's deadline passed
    ├── ValidationError         the request failed the endpoint's validation (field)
    └── Overloaded              the instance refused work because it is full

Workers raise these (or their own exceptions, which reach clients as
``RemoteError``); only the gateways map them to HTTP status codes.
"""

from __future__ import annotations

from collections.abc import Sequence


class ServemeshError(Exception):
    """Base class of every error servemesh raises."""


class ConfigError(ServemeshError):
    """Settings or arguments that cannot work together."""


class ProtocolError(ServemeshError):
    """A wire frame that cannot be decoded."""


class FrameTooLarge(ProtocolError):
    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"frame of {size} bytes exceeds the limit of {limit} bytes "
            "(raise SERVEMESH_MAX_PAYLOAD on both sides or send less)"
        )


class SerializationError(ServemeshError, TypeError):
    """A value that the wire codec cannot encode."""


class DiscoveryError(ServemeshError):
    """The discovery backend failed or could not be reached."""


class NoInstancesError(ServemeshError):
    def __init__(
        self,
        endpoint: str,
        known: Sequence[str] = (),
        capabilities: dict[str, object] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.known = list(known)
        self.capabilities = capabilities
        namespace = endpoint.split(".", 1)[0]
        parts = [f"no live instances of {endpoint}"]
        if capabilities:
            parts[0] += f" with capabilities {capabilities}"
        if self.known:
            parts.append(f"endpoints that exist in namespace {namespace!r}: {', '.join(self.known)}")
        else:
            parts.append(f"namespace {namespace!r} has no live endpoints")
        parts.append(f"list instances with `servemesh ls {namespace}`")
        super().__init__("; ".join(parts))


class InstanceUnavailable(ServemeshError):
    def __init__(self, instance_id: int, address: str, reason: str) -> None:
        self.instance_id = instance_id
        self.address = address
        self.reason = reason
        super().__init__(f"instance {instance_id:x} at {address} is unavailable: {reason}")


class StreamIncomplete(ServemeshError):
    def __init__(self, endpoint: str, instance_id: int, received: int, reason: str) -> None:
        self.endpoint = endpoint
        self.instance_id = instance_id
        self.received = received
        self.reason = reason
        super().__init__(
            f"stream from {endpoint} (instance {instance_id:x}) ended after {received} "
            f"items without its end-of-stream frame: {reason}"
        )


class RemoteError(ServemeshError):
    def __init__(self, remote_type: str, message: str, endpoint: str = "") -> None:
        self.remote_type = remote_type
        self.message = message
        self.endpoint = endpoint
        where = f" in {endpoint}" if endpoint else ""
        super().__init__(f"handler{where} raised {remote_type}: {message}")


class Cancelled(ServemeshError):
    """The request was cancelled by its caller or by a stopped context."""


class DeadlineExceeded(ServemeshError):
    """The request's deadline passed before the stream finished."""


class ValidationError(ServemeshError, ValueError):
    def __init__(self, message: str, field: str | None = None, endpoint: str = "") -> None:
        self.field = field
        self.message = message
        self.endpoint = endpoint
        where = f"{endpoint}: " if endpoint else ""
        at = f"field {field!r}: " if field else ""
        super().__init__(f"invalid request for {where}{at}{message}")


class Overloaded(ServemeshError):
    def __init__(self, endpoint: str, limit: int) -> None:
        self.endpoint = endpoint
        self.limit = limit
        super().__init__(f"{endpoint} is at its limit of {limit} concurrent streams; retry later")
