"""``JetStreamStore``: objects in a NATS JetStream object store bucket, shared by replicas
on any number of machines.

An object is stored under its ref as the object name, in the bucket named by the
URL (``nats://host:4222?bucket=name``, default ``servemesh_objects``); its creation
time and expiry travel in the object's metadata headers (``Servemesh-Created``,
``Servemesh-Expires``). The bucket itself has no max age: a stream's age limit
cannot follow an expiry that a later ``put`` extended, so expired objects are
refused by ``get`` and removed by ``gc``.

Changes to an existing object's metadata (extending its expiry, deleting it) are
compare-and-set: the new metadata message is published with the sequence number
of the one it replaces (``Nats-Expected-Last-Subject-Sequence``), so a replica's
collector never deletes an object that another replica extended a moment before.
A deleted object's tombstone is purged, so a bucket does not grow by one message
per object ever stored. Links (objects pointing into other buckets) are refused.
The connection is opened by ``runtime.transport.nats_connect`` (credentials, TLS).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
from nats.js import api
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import MSG_ROLLUP_SUBJECT
from nats.js.object_store import (
    OBJ_CHUNKS_PRE_TEMPLATE,
    OBJ_DEFAULT_CHUNK_SIZE,
    OBJ_META_PRE_TEMPLATE,
    OBJ_STREAM_TEMPLATE,
)

from ..config import Settings
from ..errors import ConfigError
from ..runtime import tls
from ..runtime.tasks import within
from ..runtime.transport import nats_connect
from . import refs
from .base import DEFAULT_MAX_BYTES, DEFAULT_TTL, ObjectMeta, check_limits, check_size, check_ttl, expiry, later
from .errors import ObjectCorrupted, ObjectNotFound, ObjectStoreError, ObjectStoreUnavailable
from .settings import DEFAULT_BUCKET, check_bucket

log = logging.getLogger("servemesh.objects")

T = TypeVar("T")

CREATED = "Servemesh-Created"
EXPIRES = "Servemesh-Expires"
#: JetStream's error code for a publish whose expected last subject sequence did not match
_WRONG_LAST_SEQUENCE = 10071
#: compare-and-set attempts before a put or delete gives up on a contended object
_ATTEMPTS = 8


class JetStreamStore:
    """A JetStream object store bucket. Build it with :meth:`connect` (its own
    connection) or :meth:`attach` (a connection the caller owns)."""

    def __init__(self, nc: Any, js: Any, bucket_store: Any, bucket: str, *, location: str, max_bytes: int,
                 default_ttl: float, clock: Callable[[], float], timeout: float, owns_connection: bool) -> None:
        check_limits(max_bytes, default_ttl)
        self.bucket = bucket
        self.location = location
        self.max_bytes = max_bytes
        self.default_ttl = default_ttl
        self._nc = nc
        self._js = js
        self._store = bucket_store
        self._stream = OBJ_STREAM_TEMPLATE.format(bucket=bucket)
        self._clock = clock
        self._timeout = timeout
        self._owns_connection = owns_connection
        self._closed = False
        # chunks fit in one NATS message, whatever max_payload the server allows
        self._chunk = max(1024, min(OBJ_DEFAULT_CHUNK_SIZE, int(getattr(nc, "max_payload", 0) or 0) - 4096))

    @classmethod
    async def connect(cls, url: str, *, bucket: str = DEFAULT_BUCKET, replicas: int = 1,
                      settings: Settings | None = None, connect_timeout: float = 3.0, timeout: float = 30.0,
                      max_bytes: int = DEFAULT_MAX_BYTES, default_ttl: float = DEFAULT_TTL,
                      clock: Callable[[], float] = time.time) -> JetStreamStore:
        """Connect to NATS at ``url`` (credentials and TLS from ``settings``) and open the
        bucket, creating it if missing."""
        check_limits(max_bytes, default_ttl)
        nc = await nats_connect.connect(url, "servemesh-objects", connect_timeout, settings=settings)
        try:
            return await cls.attach(nc, bucket=bucket, replicas=replicas, timeout=timeout, max_bytes=max_bytes,
                                    default_ttl=default_ttl, clock=clock, owns_connection=True,
                                    location=tls.redact_url(url))
        except BaseException:
            try:
                await within(nc.close(), connect_timeout)
            except Exception as exc:  # the first error is the one to report
                log.debug("closing the object store's NATS connection failed: %r", exc)
            raise

    @classmethod
    async def attach(cls, nc: Any, *, bucket: str = DEFAULT_BUCKET, replicas: int = 1, timeout: float = 30.0,
                     max_bytes: int = DEFAULT_MAX_BYTES, default_ttl: float = DEFAULT_TTL,
                     clock: Callable[[], float] = time.time, owns_connection: bool = False,
                     location: str = "nats") -> JetStreamStore:
        """The bucket ``bucket`` over the connected client ``nc``, created if missing."""
        check_bucket(bucket, replicas)
        location = f"{location} bucket {bucket}"
        js = nc.jetstream(timeout=timeout)
        try:
            try:
                store = await within(js.object_store(bucket), timeout)
            except BucketNotFoundError:
                try:
                    store = await within(js.create_object_store(
                        bucket, description="servemesh objects (servemesh.objects)", replicas=replicas), timeout)
                except BadRequestError:  # another replica made it first, maybe with other settings
                    store = await within(js.object_store(bucket), timeout)
        except (ServiceUnavailableError, nats.errors.NoRespondersError) as exc:
            raise ConfigError(f"NATS at {location} has no JetStream, which the object store needs: start "
                              "nats-server with -js (servemesh up does)") from exc
        except (TimeoutError, nats.errors.Error) as exc:
            raise ConfigError(f"cannot open the object store {location}: {exc!r}") from exc
        return cls(nc, js, store, bucket, location=location, max_bytes=max_bytes, default_ttl=default_ttl,
                   clock=clock, timeout=timeout, owns_connection=owns_connection)

    def __repr__(self) -> str:
        return f"JetStreamStore({self.location!r})"

    # -- the ObjectStore protocol ---------------------------------------------------------
    async def put(self, data: bytes, *, ttl: float | None = None) -> ObjectMeta:
        ttl = check_ttl(ttl, self.default_ttl)
        check_size(len(data), self.max_bytes)
        return await self._guard("put", self._put, refs.ref_for(data), bytes(data), ttl)

    async def get(self, ref: str) -> tuple[bytes, ObjectMeta]:
        return await self._guard("get", self._get, refs.check_ref(ref))

    async def stat(self, ref: str) -> ObjectMeta:
        return await self._guard("stat", self._stat, refs.check_ref(ref))

    async def exists(self, ref: str) -> bool:
        try:
            await self.stat(ref)
        except ObjectNotFound:
            return False
        return True

    async def delete(self, ref: str) -> bool:
        return await self._guard("delete", self._delete, refs.check_ref(ref))

    async def gc(self) -> int:
        return await self._guard("gc", self._gc)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_connection:
            try:
                await within(self._nc.close(), self._timeout)
            except (TimeoutError, nats.errors.Error) as exc:
                log.warning("closing the object store's NATS connection failed: %r", exc)

    # -- operations -----------------------------------------------------------------------
    async def _guard(self, what: str, op: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``op(*args)`` within the store's timeout, NATS's errors translated at this boundary."""
        if self._closed:
            raise ObjectStoreError(f"the object store {self.location} is closed")
        try:
            return await within(op(*args), self._timeout)
        except ObjectStoreError:
            raise
        except TimeoutError as exc:
            raise ObjectStoreUnavailable(self.location, f"{what} did not finish within {self._timeout:g} s "
                                                        "(is NATS reachable?)") from exc
        except (nats.errors.Error, OSError) as exc:
            raise ObjectStoreUnavailable(self.location, f"{what} failed: {exc!r}") from exc

    async def _put(self, ref: str, data: bytes, ttl: float) -> ObjectMeta:
        for _ in range(_ATTEMPTS):
            now = self._clock()
            expires = expiry(now, ttl)
            found = await self._read(ref)
            meta = self._usable(ref, found[0]) if found is not None else None
            if found is not None and meta is not None and not meta.expired(now):
                merged = later(meta.expires, expires)
                if merged == meta.expires:
                    return meta
                info = dataclasses.replace(found[0], headers=_headers(meta.created, merged))
                if await self._publish_meta(ref, info, found[1]) is not None:
                    return ObjectMeta(ref, meta.size, meta.created, merged)
                continue  # another replica changed it meanwhile: decide again
            options = api.ObjectMetaOptions(max_chunk_size=self._chunk)
            await self._store.put(ref, data, meta=api.ObjectMeta(name=ref, headers=_headers(now, expires),
                                                                 options=options))
            return ObjectMeta(ref, len(data), now, expires)
        raise ObjectStoreUnavailable(self.location, f"object {ref} kept changing during {_ATTEMPTS} attempts")

    async def _get(self, ref: str) -> tuple[bytes, ObjectMeta]:
        info, meta = await self._live(ref)
        check_size(meta.size, self.max_bytes, ref)
        data = await self._download(ref, info)
        refs.verify(ref, data)
        return data, meta

    async def _download(self, ref: str, info: api.ObjectInfo) -> bytes:
        """The object's chunks, joined once at the end (nats-py's own ``get`` copies the
        growing payload per chunk, or writes through the default thread pool); the
        subscription is removed however the download ends."""
        size = int(info.size or 0)
        if size == 0:
            return b""
        sub = await self._js.subscribe(OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=self.bucket, obj=info.nuid),
                                       ordered_consumer=True)
        parts: list[bytes] = []
        received = 0
        try:
            async for msg in sub.messages:
                parts.append(msg.data)
                received += len(msg.data)
                if received > size:
                    raise ObjectCorrupted(ref, f"its chunks hold more than the {size} bytes its metadata says")
                if msg.metadata.num_pending == 0:
                    break
        finally:
            with contextlib.suppress(nats.errors.Error):  # a closed connection has dropped it already
                await sub.unsubscribe()
        if received != size:
            raise ObjectCorrupted(ref, f"its chunks hold {received} of the {size} bytes its metadata says")
        return b"".join(parts)

    async def _stat(self, ref: str) -> ObjectMeta:
        return (await self._live(ref))[1]

    async def _live(self, ref: str) -> tuple[api.ObjectInfo, ObjectMeta]:
        found = await self._read(ref)
        if found is None:
            raise ObjectNotFound(ref)
        meta = _meta(ref, found[0])
        if meta.expired(self._clock()):
            raise ObjectNotFound(ref, expired=True)
        return found[0], meta

    async def _delete(self, ref: str) -> bool:
        for _ in range(_ATTEMPTS):
            found = await self._read(ref)
            if found is None:
                return False
            if await self._remove(ref, *found):
                return True
        raise ObjectStoreUnavailable(self.location, f"object {ref} kept changing during {_ATTEMPTS} attempts")

    async def _gc(self) -> int:
        try:
            listed = await self._store.list(ignore_deletes=True)
        except NotFoundError:  # nats-py's answer for an empty bucket
            return 0
        now = self._clock()
        removed = 0
        for info in listed:
            if not refs.is_ref(info.name):
                continue
            meta = self._usable(info.name, info)
            if meta is None or not meta.expired(now):
                continue  # objects servemesh did not write are left alone
            found = await self._read(info.name)  # again, for the sequence to compare with
            if found is None:
                continue
            current = self._usable(info.name, found[0])
            if current is not None and current.expired(self._clock()) and await self._remove(info.name, *found):
                removed += 1
        return removed

    # -- metadata messages ----------------------------------------------------------------
    def _meta_subject(self, ref: str) -> str:
        return OBJ_META_PRE_TEMPLATE.format(bucket=self.bucket, obj=base64.urlsafe_b64encode(ref.encode()).decode())

    async def _read(self, ref: str) -> tuple[api.ObjectInfo, int] | None:
        """The object's live metadata and its message's sequence, or ``None``."""
        try:
            msg = await self._js.get_last_msg(self._stream, self._meta_subject(ref))
        except NotFoundError:
            return None
        try:
            info = api.ObjectInfo.from_response(json.loads(msg.data or b""))
        except (ValueError, TypeError, KeyError) as exc:
            raise ObjectCorrupted(ref, f"its JetStream metadata does not decode: {exc!r}") from None
        if info.deleted:
            return None
        return info, int(msg.seq or 0)

    def _usable(self, ref: str, info: api.ObjectInfo) -> ObjectMeta | None:
        try:
            return _meta(ref, info)
        except ObjectCorrupted as exc:
            log.debug("object store %s: %s", self.location, exc)
            return None

    async def _publish_meta(self, ref: str, info: api.ObjectInfo, seq: int) -> Any:
        """Replace the metadata message ``seq`` by ``info``; ``None`` when another message
        replaced it first."""
        headers = {api.Header.ROLLUP: MSG_ROLLUP_SUBJECT, api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(seq)}
        try:
            return await self._js.publish(self._meta_subject(ref), json.dumps(info.as_dict()).encode(),
                                          headers=headers)
        except APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                return None
            raise

    async def _remove(self, ref: str, info: api.ObjectInfo, seq: int) -> bool:
        """Delete the object if its metadata is still message ``seq``: a tombstone, then
        its chunks, then the tombstone itself."""
        tomb = dataclasses.replace(info, deleted=True, size=0, chunks=0, digest="", mtime="")
        ack = await self._publish_meta(ref, tomb, seq)
        if ack is None:
            return False
        if info.nuid:
            await self._js.purge_stream(self._stream, subject=OBJ_CHUNKS_PRE_TEMPLATE.format(
                bucket=self.bucket, obj=info.nuid))
        # only up to the tombstone: an object stored again since then stays
        await self._js.purge_stream(self._stream, subject=self._meta_subject(ref), seq=ack.seq + 1)
        return True


def _headers(created: float, expires: float | None) -> dict[str, list[str]]:
    # lists of strings: the Go clients (and the nats CLI) read headers as map[string][]string
    return {CREATED: [repr(created)], EXPIRES: ["never" if expires is None else repr(expires)]}


def _header(headers: dict[str, Any], name: str) -> str | None:
    value = headers.get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) else None


def _meta(ref: str, info: api.ObjectInfo) -> ObjectMeta:
    """Our metadata of a stored object, or ``ObjectCorrupted`` for one servemesh did not write."""
    if info.is_link():
        raise ObjectCorrupted(ref, "it is a link to another bucket or object; the object store never follows links")
    headers = info.headers if isinstance(info.headers, dict) else {}
    created, expires = _header(headers, CREATED), _header(headers, EXPIRES)
    try:
        if created is None or expires is None:
            raise ValueError("missing")
        when = float(created)
        until = None if expires == "never" else float(expires)
        if not math.isfinite(when) or (until is not None and not math.isfinite(until)):
            raise ValueError("not finite")
    except ValueError:
        raise ObjectCorrupted(ref, "it has no servemesh metadata: it was not stored by servemesh") from None
    return ObjectMeta(ref, int(info.size or 0), when, until)
