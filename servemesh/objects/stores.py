"""Opening a store from its settings: a directory becomes a ``LocalStore``, a NATS URL
a ``JetStreamStore`` (nats-py is imported only then)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from .base import ObjectStore
from .facade import Objects
from .local import LocalStore
from .settings import ObjectStoreSettings


async def open_store(settings: ObjectStoreSettings, *, clock: Callable[[], float] = time.time) -> ObjectStore:
    """The backend ``settings.location`` names, open; the caller closes it (``aclose``)."""
    where = settings.where()
    if where.kind == "local":
        return await asyncio.to_thread(LocalStore.open, where.path, max_bytes=settings.max_bytes,
                                       default_ttl=settings.default_ttl, clock=clock)
    from .jetstream import JetStreamStore

    return await JetStreamStore.connect(where.url, bucket=where.bucket, replicas=where.replicas,
                                        settings=settings.nats, connect_timeout=settings.connect_timeout,
                                        timeout=settings.timeout, max_bytes=settings.max_bytes,
                                        default_ttl=settings.default_ttl, clock=clock)


@contextlib.asynccontextmanager
async def open_objects(settings: ObjectStoreSettings | None = None, *,
                       clock: Callable[[], float] = time.time) -> AsyncIterator[Objects]:
    """``async with open_objects(ObjectStoreSettings.from_settings(s)) as objects:`` an
    open store with its collector running, closed (collector first) on exit."""
    settings = settings or ObjectStoreSettings()
    store = await open_store(settings, clock=clock)
    objects = Objects(store, allow_pickle=settings.allow_pickle, timeout=settings.timeout,
                      gc_interval=settings.gc_interval)
    try:
        await objects.start()
    except BaseException:
        await store.aclose()
        raise
    try:
        yield objects
    finally:
        await objects.aclose()
