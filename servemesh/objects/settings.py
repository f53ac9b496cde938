"""The object store's settings, and where it lives: a directory or a JetStream bucket.

``ObjectStoreSettings.from_settings(settings)`` reads them from the one ``Settings``
object (``servemesh.config``); this module reads no environment itself.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from ..config import Settings
from ..errors import ConfigError
from ..runtime import tls
from .base import DEFAULT_MAX_BYTES, DEFAULT_TTL, check_limits

DEFAULT_BUCKET = "servemesh_objects"
#: JetStream's rule for bucket names
_BUCKET = re.compile(r"[A-Za-z0-9_-]+")
_NATS_SCHEMES = ("nats", "tls")


def default_location() -> str:
    """``~/.servemesh/objects``: private to this user (a shared /tmp directory is not)."""
    return str(Path.home() / ".servemesh" / "objects")


@dataclasses.dataclass(frozen=True)
class ObjectStoreSettings:
    """Everything an object store needs, validated on construction."""

    #: where objects live: an absolute directory; ``nats://host:port[?bucket=name&replicas=n]``
    #: (or ``tls://``) for a JetStream bucket; or ``nats`` for the NATS of ``SERVEMESH_NATS``.
    location: str = dataclasses.field(default_factory=default_location)
    #: seconds an object lives when ``create`` names no ttl; ``math.inf``: forever.
    default_ttl: float = DEFAULT_TTL
    #: the largest encoded object stored or read, bytes.
    max_bytes: int = DEFAULT_MAX_BYTES
    #: read and write pickle payloads (arbitrary code runs when one is read: only if every
    #: replica writing to the store is trusted).
    allow_pickle: bool = False
    #: seconds between two collections of expired objects by an open store.
    gc_interval: float = 60.0
    #: seconds one store operation may take (``ObjectStoreUnavailable`` after that).
    timeout: float = 30.0
    #: seconds to open the NATS connection of a JetStream store.
    connect_timeout: float = 3.0
    #: the runtime's settings, for NATS credentials and TLS (``nats_creds``, ``nats_ca``, ...).
    nats: Settings | None = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.location, str) or not self.location.strip():
            raise ConfigError("SERVEMESH_OBJECT_STORE must name a directory or a nats:// URL")
        check_limits(self.max_bytes, self.default_ttl)
        if not isinstance(self.allow_pickle, bool):
            raise ConfigError(f"SERVEMESH_OBJECT_ALLOW_PICKLE must be true or false, not {self.allow_pickle!r}")
        for name in ("gc_interval", "timeout", "connect_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigError(f"the object store's {name} must be a positive number of seconds, not {value!r}")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ObjectStoreSettings:
        """The object store settings of ``settings`` (``SERVEMESH_OBJECT_*``), then
        ``overrides`` (``None`` ones are ignored, so CLI flags pass through as they are)."""
        def get(name: str, default: Any = None) -> Any:  # the fields exist once config.py has them
            return getattr(settings, name, default)

        values: dict[str, Any] = {
            "location": get("object_store") or str(Path(settings.state_dir) / "objects"),
            "default_ttl": get("object_ttl", DEFAULT_TTL),
            "max_bytes": get("object_max_bytes", DEFAULT_MAX_BYTES),
            "allow_pickle": get("object_allow_pickle", False),
            "gc_interval": get("object_gc_interval", 60.0),
            "timeout": get("object_timeout", 30.0),
            "connect_timeout": settings.connect_timeout,
            "nats": settings,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def where(self) -> Location:
        return parse_location(self.location, nats_url=self.nats.nats if self.nats is not None else None)


@dataclasses.dataclass(frozen=True)
class Location:
    """A parsed ``ObjectStoreSettings.location``."""

    kind: Literal["local", "jetstream"]
    #: the directory of a local store
    path: str = ""
    #: the NATS URL of a JetStream store (without the query; it may carry credentials)
    url: str = ""
    bucket: str = DEFAULT_BUCKET
    replicas: int = 1

    def __str__(self) -> str:
        if self.kind == "local":
            return self.path
        return f"{tls.redact_url(self.url)} bucket {self.bucket}"


def parse_location(text: str, *, nats_url: str | None = None) -> Location:
    """Where objects live, from a directory path or a NATS URL (``nats`` alone: ``nats_url``)."""
    text = text.strip()
    if text == "nats":
        if not nats_url:
            raise ConfigError("SERVEMESH_OBJECT_STORE=nats stores objects in the NATS of SERVEMESH_NATS, which is "
                              "not set: set it, run `servemesh up`, or give a nats://host:port URL")
        text = nats_url
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if scheme in _NATS_SCHEMES:
        return _jetstream(text)
    if scheme:
        raise ConfigError(f"object store {tls.redact_url(text)!r} is neither a directory nor a nats:// URL: give "
                          "a directory as an absolute path, or nats://host:port?bucket=name")
    path = os.path.expanduser(text)
    if not os.path.isabs(path):
        raise ConfigError(f"the object store directory must be an absolute path, not {text!r} (every replica "
                          "must name the same directory, whatever its working directory)")
    return Location("local", path=os.path.normpath(path))


def _jetstream(text: str) -> Location:
    shown = tls.redact_url(text)
    try:
        parts = urlsplit(text)
        host = parts.hostname
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError as exc:
        raise ConfigError(f"object store URL {shown!r} does not parse: {exc}") from None
    if not host:
        raise ConfigError(f"object store URL {shown!r} names no host")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"bucket", "replicas"})
    if unknown:
        raise ConfigError(f"object store URL {shown!r} has unknown parameters {', '.join(unknown)} "
                          "(it takes bucket= and replicas=)")
    bucket = query.get("bucket", [DEFAULT_BUCKET])[-1]
    try:
        replicas = int(query.get("replicas", ["1"])[-1])
    except ValueError:
        raise ConfigError(f"object store URL {shown!r}: replicas must be a number from 1 to 5") from None
    check_bucket(bucket, replicas)
    return Location("jetstream", url=parts._replace(query="", fragment="").geturl(), bucket=bucket,
                    replicas=replicas)


def check_bucket(bucket: str, replicas: int) -> None:
    if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket):
        raise ConfigError(f"{bucket!r} is not a JetStream bucket name: use letters, digits, '-' and '_'")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 5:
        raise ConfigError(f"the object store bucket's replicas must be 1 to 5, not {replicas!r}")
