"""``MemoryStore``: the in-memory twin of the object store backends, for tests and
embedded use. Several twins can share one dict, as replicas share a directory or
a bucket."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import refs
from .base import (
    DEFAULT_MAX_BYTES,
    DEFAULT_TTL,
    ObjectMeta,
    ObjectStore,
    check_limits,
    check_size,
    check_ttl,
    expiry,
    later,
)
from .errors import ObjectNotFound, ObjectStoreError

Table = dict[str, tuple[bytes, ObjectMeta]]


class MemoryStore:
    """Objects in a dict. Same promises as the other backends (``base``)."""

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES, default_ttl: float = DEFAULT_TTL,
                 clock: Callable[[], float] = time.time, shared: Table | None = None) -> None:
        check_limits(max_bytes, default_ttl)
        self.max_bytes = max_bytes
        self.default_ttl = default_ttl
        self._clock = clock
        #: ref -> (payload, metadata); pass one dict to several twins to share objects
        self.objects: Table = {} if shared is None else shared
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryStore({len(self.objects)} objects)"

    async def put(self, data: bytes, *, ttl: float | None = None) -> ObjectMeta:
        self._check_open()
        ttl = check_ttl(ttl, self.default_ttl)
        ref = refs.ref_for(data)
        check_size(len(data), self.max_bytes)
        now = self._clock()
        expires = expiry(now, ttl)
        found = self.objects.get(ref)
        if found is not None and not found[1].expired(now):
            meta = found[1]
            merged = later(meta.expires, expires)
            if merged != meta.expires:
                meta = ObjectMeta(ref, meta.size, meta.created, merged)
                self.objects[ref] = (found[0], meta)
            return meta
        meta = ObjectMeta(ref, len(data), now, expires)
        self.objects[ref] = (bytes(data), meta)
        return meta

    async def get(self, ref: str) -> tuple[bytes, ObjectMeta]:
        data, meta = self._live(ref)
        check_size(meta.size, self.max_bytes, ref)
        refs.verify(ref, data)
        return data, meta

    async def stat(self, ref: str) -> ObjectMeta:
        return self._live(ref)[1]

    async def exists(self, ref: str) -> bool:
        try:
            self._live(ref)
        except ObjectNotFound:
            return False
        return True

    async def delete(self, ref: str) -> bool:
        self._check_open()
        return self.objects.pop(refs.check_ref(ref), None) is not None

    async def gc(self) -> int:
        self._check_open()
        now = self._clock()
        expired = [ref for ref, (_, meta) in self.objects.items() if meta.expired(now)]
        for ref in expired:
            del self.objects[ref]
        return len(expired)

    async def aclose(self) -> None:
        self._closed = True

    def _live(self, ref: str) -> tuple[bytes, ObjectMeta]:
        self._check_open()
        ref = refs.check_ref(ref)
        found = self.objects.get(ref)
        if found is None:
            raise ObjectNotFound(ref)
        if found[1].expired(self._clock()):
            raise ObjectNotFound(ref, expired=True)
        return found

    def _check_open(self) -> None:
        if self._closed:
            raise ObjectStoreError("this object store is closed")


if TYPE_CHECKING:  # the twin has the protocol's shape (mypy checks this)
    def _is_a_store(store: MemoryStore) -> ObjectStore:
        return store
