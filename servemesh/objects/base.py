"""The seam between the object store's users and where the bytes live.

``ObjectStore`` is a content-addressed blob store: ``put`` takes a payload and
returns its metadata, whose ``ref`` is derived from the bytes (the caller cannot
choose it); ``get``, ``stat`` and ``delete`` take a ref. Three backends implement
it: ``MemoryStore`` (the in-memory twin), ``LocalStore`` (a directory) and
``JetStreamStore`` (a NATS JetStream object store bucket).

Every backend keeps the same promises, which ``tests/unit/test_objects_store.py``
checks against each of them:

- a ref is checked (``refs.check_ref``) before any storage is touched;
- payloads over ``max_bytes`` are refused on ``put`` and on ``get`` (before they are read);
- ``get`` verifies the bytes against the ref (``ObjectCorrupted`` otherwise);
- an object whose expiry passed is gone for ``get``/``stat``, and ``gc`` removes it;
- putting a payload that is already stored keeps one copy and extends its expiry
  to the later of the two (an object never expires earlier than any ``put`` asked).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol

from ..errors import ConfigError
from .errors import ObjectTooLarge

#: defaults of every backend (``ObjectStoreSettings`` has the same)
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_TTL = 3600.0
#: ``ttl=FOREVER``: the object never expires (only where that is asked for explicitly)
FOREVER = math.inf


@dataclasses.dataclass(frozen=True)
class ObjectMeta:
    """What a store knows about one object."""

    ref: str
    #: bytes of the encoded payload
    size: int
    #: wall-clock seconds (``time.time()``) when the object was first stored
    created: float
    #: wall-clock seconds after which the object is gone; ``None``: never
    expires: float | None

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


class ObjectStore(Protocol):
    """A content-addressed store of payloads with expiry. Methods raise the errors of
    ``servemesh.objects.errors`` and nothing else (a backend's own failures become
    ``ObjectStoreUnavailable``)."""

    #: the largest payload ``put`` stores and ``get`` reads, bytes
    max_bytes: int

    async def put(self, data: bytes, *, ttl: float | None = None) -> ObjectMeta:
        """Store ``data`` (or find it stored) for ``ttl`` seconds (``None``: the store's
        default TTL; ``FOREVER``: no expiry) and return its metadata."""
        ...

    async def get(self, ref: str) -> tuple[bytes, ObjectMeta]:
        """The payload and metadata of a live object, or ``ObjectNotFound``."""
        ...

    async def stat(self, ref: str) -> ObjectMeta:
        """The metadata of a live object, or ``ObjectNotFound``."""
        ...

    async def exists(self, ref: str) -> bool:
        """True when a live object has this ref."""
        ...

    async def delete(self, ref: str) -> bool:
        """Remove the object; False when there was none."""
        ...

    async def gc(self) -> int:
        """Remove every expired object; returns how many were removed."""
        ...

    async def aclose(self) -> None:
        """Release what the store holds (file descriptors, connections). Idempotent."""
        ...


def check_ttl(ttl: float | None, default: float) -> float:
    """The TTL to use: ``ttl``, or ``default`` for ``None``; ``FOREVER`` for no expiry."""
    value = default if ttl is None else ttl
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value <= 0:
        raise ConfigError(f"an object ttl must be a positive number of seconds (or objects.FOREVER), "
                          f"not {value!r}")
    return float(value)


def expiry(now: float, ttl: float) -> float | None:
    """The absolute expiry of an object stored at ``now`` for ``ttl`` (already checked)."""
    return None if math.isinf(ttl) else now + ttl


def later(a: float | None, b: float | None) -> float | None:
    """The later of two expiries; ``None`` (never) is the latest."""
    if a is None or b is None:
        return None
    return max(a, b)


def check_size(size: int, limit: int, ref: str | None = None) -> None:
    if size > limit:
        raise ObjectTooLarge(size, limit, ref)


def check_limits(max_bytes: int, default_ttl: float) -> None:
    """The limits every backend is built with, checked once."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ConfigError(f"the object store's max_bytes must be a positive integer, not {max_bytes!r}")
    check_ttl(default_ttl, default_ttl)
