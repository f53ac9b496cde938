"""Settings: the one place that reads ``SERVEMESH_*`` environment variables.

Precedence: explicit arguments > environment > local stack (``servemesh up``)
> defaults. Nothing here runs at import time; call :meth:`Settings.from_env`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError

Transport = Literal["tcp", "nats", "memory"]

_PREFIX = "SERVEMESH_"


def _default_state_dir() -> str:
    return str(Path.home() / ".servemesh")


@dataclass(frozen=True)
class Settings:
    """Everything a runtime needs to know, validated on construction."""

    #: etcd endpoint, ``http://host:port``; ``None`` means in-memory discovery.
    etcd: str | None = None
    #: NATS URL, ``nats://host:port``; needed only for the nats transport.
    nats: str | None = None
    #: how this process serves its endpoints: ``tcp`` (default), ``nats``, or ``memory``
    #: (the in-process twin of a network transport, for tests).
    transport: Transport = "tcp"
    #: address the TCP request plane binds to.
    host: str = "127.0.0.1"
    #: address other processes should use to reach this one (default: host).
    advertise_host: str | None = None
    #: TCP request-plane port; 0 picks a free one.
    port: int = 0
    #: etcd lease TTL in seconds: how long a dead process stays visible at most.
    lease_ttl: int = 10
    #: when the lease is lost: re-register once etcd is back, or exit.
    on_lease_lost: Literal["reregister", "exit"] = "reregister"
    log_level: str = "info"
    #: port of the /health and /metrics HTTP server; ``None`` disables it.
    system_port: int | None = None
    #: largest frame accepted or sent, in bytes.
    max_payload: int = 16 * 1024 * 1024
    #: seconds a graceful shutdown waits for in-flight streams.
    drain_timeout: float = 30.0
    #: seconds to open a connection to an instance.
    connect_timeout: float = 3.0
    #: items a server may send on a stream before the client grants more.
    stream_window: int = 512
    #: bytes of items a server may send on a stream before the client grants more.
    stream_window_bytes: int = 4 * 1024 * 1024
    #: seconds a call waits for a matching instance to appear before ``NoInstancesError``
    #: (covers start-up and rolling restarts); 0 fails at once.
    instance_wait: float = 5.0
    #: most concurrent streams one process serves per endpoint (then Overloaded).
    max_concurrency: int = 4096
    #: frames a TCP request-plane connection queues before writing them (it also writes at the
    #: end of every event-loop turn); ``None``: 32. Fewer lets the peer start on a burst
    #: sooner, at the cost of more system calls (capability API servers use 4).
    flush_frames: int | None = None
    #: where ``servemesh up`` records the local etcd / nats-server.
    state_dir: str = field(default_factory=_default_state_dir)

    # -- deadlines and liveness (docs/security.md) -------------------------------------
    #: seconds a remote call may take when its context sets no deadline.
    request_timeout: float = 300.0
    #: seconds between liveness checks of a peer while streams to it are open.
    heartbeat_interval: float = 1.0
    #: seconds without any sign of life from a peer before its streams fail.
    heartbeat_timeout: float = 5.0
    #: seconds an incomplete frame may stay incomplete before the peer is disconnected.
    frame_timeout: float = 30.0

    # -- HTTP surfaces: limits and authentication (docs/security.md) -------------------
    #: API keys for every HTTP surface and the system port, comma-separated; none: open.
    api_key: str | None = None
    #: a file with one API key per line (added to ``api_key``).
    api_key_file: str | None = None
    #: serve ``/metrics`` without an API key.
    metrics_public: bool = False
    #: largest HTTP request body, bytes (413 above it).
    http_max_body: int = 4 * 1024 * 1024
    #: most open HTTP connections per server (then 503).
    http_max_connections: int = 1024
    #: seconds to receive a request's headers, and an idle keep-alive connection's next request.
    http_header_timeout: float = 10.0
    #: seconds to receive a request's body.
    http_body_timeout: float = 30.0
    #: show internal addresses and instance ids in HTTP error messages.
    debug_errors: bool = False

    # -- stateful sessions (docs/sessions.md) ------------------------------------------
    #: where sessions are stored: ``sqlite:///file.db`` (default ``sqlite:///servemesh-sessions.db``),
    #: ``postgresql://...``, ``memory://``.
    sessions_store: str | None = None
    #: a JSON file of session principals (hashed API keys, granted partitions, admin); none: open.
    sessions_principals: str | None = None

    # -- TLS and credentials (docs/security.md) -----------------------------------------
    #: etcd user and password (also taken from ``https://user:password@host`` in ``etcd``).
    etcd_user: str | None = None
    etcd_password: str | None = None
    #: CA bundle to verify etcd, and a client certificate and key to present to it.
    etcd_ca: str | None = None
    etcd_cert: str | None = None
    etcd_key: str | None = None
    #: NATS credentials file (JWT + NKey seed), NKey seed file, or user and password.
    nats_creds: str | None = None
    nats_nkey: str | None = None
    nats_user: str | None = None
    nats_password: str | None = None
    #: CA bundle to verify NATS, and a client certificate and key to present to it.
    nats_ca: str | None = None
    nats_cert: str | None = None
    nats_key: str | None = None
    #: TLS on the TCP request plane: this process's certificate and key (serving over TLS),
    #: and the CA that verifies peers (calling TLS instances; clients with ``tls_mutual``).
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    #: require and verify client certificates on the TCP request plane (mutual TLS).
    tls_mutual: bool = False

    # -- object store (docs/objects.md) --------------------------------------------------
    #: where objects live: an absolute directory, ``nats://host:port?bucket=name``, or
    #: ``nats`` (the NATS above); ``None``: ``{state_dir}/objects``.
    object_store: str | None = None
    #: seconds an object lives unless ``create(ttl=)`` says otherwise; ``inf``: forever.
    object_ttl: float = 3600.0
    #: largest encoded object stored or read, bytes.
    object_max_bytes: int = 64 * 1024 * 1024
    #: read and write pickle payloads (reading one runs its code: only if every writer is trusted).
    object_allow_pickle: bool = False
    #: seconds between two collections of expired objects.
    object_gc_interval: float = 60.0
    #: seconds one object store operation may take.
    object_timeout: float = 30.0

    # -- capability serving (docs/capability.md) -----------------------------------------
    #: the runtime namespace capability replicas serve in (one per set of replicas and API servers).
    capability_namespace: str = "capability"
    #: seconds an API server keeps an HTTP registration without a heartbeat.
    capability_ttl: float = 10.0
    #: seconds between a replica's heartbeats to its API server (well under the TTL).
    capability_heartbeat: float = 3.0
    #: worker threads that run one replica's synchronous handlers (bounded; then queued).
    capability_threads: int = 32
    #: requests one replica takes at once, queued ones included (then it refuses: Overloaded).
    capability_max_queue: int = 1024
    #: requests one API server serves at once (then 429).
    capability_max_inflight: int = 1024
    #: the secret a replica registers with; re-registering its id from elsewhere needs it. None: random.
    capability_token: str | None = None
    #: most replicas one request may be delegated through (the chain's length).
    delegation_max_depth: int = 4

    # -- typed functions and their images (docs/functions.md) ------------------------------
    #: the runtime namespace functions serve in (``functions.<name>.execute``).
    function_namespace: str = "functions"
    #: the base image of ``servemesh build`` when neither ``--base`` nor a Dockerfile names one
    #: (a registry reference, ``oci:DIR[:TAG]`` or a rootfs tar).
    function_base: str | None = None
    #: the base image ``servemesh build --cuda`` uses (the seed's CUDA/torch base).
    function_cuda_base: str | None = None
    #: the base image's Python (``3.12``) when its config does not say (``PYTHON_VERSION``).
    function_python: str = "3.11"
    #: wheel directories (or URLs), whitespace-separated, that ``servemesh build`` resolves the
    #: dependency layer from *instead of* an index (pip ``--no-index --find-links``): air-gapped builds.
    function_find_links: str | None = None
    #: registry credentials for ``servemesh build --push``: user and password (basic auth, or
    #: exchanged for a bearer token when the registry asks for one), or a bearer token as is.
    registry_user: str | None = None
    registry_password: str | None = None
    registry_token: str | None = None
    #: seconds one registry request may take (uploads of large layers included).
    registry_timeout: float = 300.0

    def __post_init__(self) -> None:
        if self.transport not in ("tcp", "nats", "memory"):
            raise ConfigError(f"SERVEMESH_TRANSPORT must be 'tcp', 'nats' or 'memory', not {self.transport!r}")
        if self.transport == "nats" and not self.nats:
            raise ConfigError("the nats transport needs a NATS URL: set SERVEMESH_NATS or run `servemesh up`")
        if self.on_lease_lost not in ("reregister", "exit"):
            raise ConfigError(
                f"SERVEMESH_ON_LEASE_LOST must be 'reregister' or 'exit', not {self.on_lease_lost!r}"
            )
        for name in ("lease_ttl", "max_payload", "stream_window", "stream_window_bytes", "max_concurrency",
                     "http_max_body", "http_max_connections", "object_max_bytes", "capability_threads",
                     "capability_max_queue", "capability_max_inflight", "delegation_max_depth"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"SERVEMESH_{name.upper()} must be positive, not {getattr(self, name)}")
        for name in ("drain_timeout", "connect_timeout", "request_timeout", "heartbeat_interval",
                     "heartbeat_timeout", "frame_timeout", "http_header_timeout", "http_body_timeout",
                     "object_ttl", "object_gc_interval", "object_timeout", "capability_ttl", "capability_heartbeat",
                     "registry_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"SERVEMESH_{name.upper()} must be positive, not {getattr(self, name)}")
        if self.flush_frames is not None and self.flush_frames < 1:
            raise ConfigError(f"SERVEMESH_FLUSH_FRAMES must be at least 1, not {self.flush_frames}")
        if self.instance_wait < 0:
            raise ConfigError(f"SERVEMESH_INSTANCE_WAIT must be 0 or more seconds, not {self.instance_wait}")
        if self.capability_heartbeat >= self.capability_ttl:
            raise ConfigError(f"SERVEMESH_CAPABILITY_HEARTBEAT ({self.capability_heartbeat} s) must be shorter than "
                              f"SERVEMESH_CAPABILITY_TTL ({self.capability_ttl} s), or registrations expire between "
                              "heartbeats")
        check_name_setting("SERVEMESH_CAPABILITY_NAMESPACE", self.capability_namespace)
        check_name_setting("SERVEMESH_FUNCTION_NAMESPACE", self.function_namespace)
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"SERVEMESH_PORT must be 0..65535, not {self.port}")

    @property
    def embedded(self) -> bool:
        """True when no etcd is configured: discovery stays in this process."""
        return self.etcd is None

    @property
    def public_host(self) -> str:
        return self.advertise_host or self.host

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``SERVEMESH_*`` variables, then apply ``overrides``.

        ``None`` overrides are ignored, so CLI flags can be passed through as-is.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        if "etcd" not in values:
            stack = read_local_stack(values.get("state_dir") or _default_state_dir())
            if stack is not None:
                values["etcd"] = stack.get("etcd")
                values.setdefault("nats", stack.get("nats"))
        return cls(**values)


def check_name_setting(variable: str, value: str) -> None:
    if not isinstance(value, str) or not value or not all(c.isalnum() or c in "_-" for c in value):
        raise ConfigError(f"{variable}={value!r} is invalid: use letters, digits, '_' and '-' only")


def _parse(name: str, type_: Any, raw: str) -> Any:
    text = str(type_)
    if text == "bool":
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"SERVEMESH_{name.upper()}={raw!r} is not a boolean (use true or false)")
    try:
        if "int" in text and "str" not in text:
            return int(raw)
        if "float" in text:
            return float(raw)
    except ValueError:
        raise ConfigError(f"SERVEMESH_{name.upper()}={raw!r} is not a number") from None
    if raw.lower() in ("none", "off"):
        return None
    return raw


def stack_file(state_dir: str) -> Path:
    return Path(state_dir) / "stack.json"


def read_local_stack(state_dir: str) -> dict[str, Any] | None:
    """The etcd / NATS addresses recorded by ``servemesh up``, if any."""
    path = stack_file(state_dir)
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the local stack record {path}: {exc}") from exc
    return data if isinstance(data, dict) else None
