"""``Objects``: what handlers use (``context.objects``): values in, refs out, and back.

Async code awaits ``acreate`` / ``aget``. A synchronous handler running in a worker
thread (AnyServe's ``context.objects.create({...})``) calls ``create`` / ``get``:
those hand the store operation to the event loop that opened the store
(``asyncio.run_coroutine_threadsafe``) and wait for it for at most ``timeout``
seconds; encoding and decoding run on the calling thread, so a large value never
stalls the loop. Called on a thread that runs an event loop they would block it,
so they refuse with an error naming the async method to await instead.

An open ``Objects`` (``async with``) owns one background task: the collector that
removes expired objects every ``gc_interval`` seconds. It is cancelled and awaited
on close, and the store is closed after it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ..runtime.tasks import TaskSet, within
from . import codec, refs
from .base import ObjectMeta, ObjectStore
from .errors import ObjectStoreError, ObjectStoreUnavailable

log = logging.getLogger("servemesh.objects")

T = TypeVar("T")
Ref = str | bytes | bytearray | memoryview


class Objects:
    """Values stored by content, named by opaque refs, shared by every replica that
    uses the same store."""

    def __init__(self, store: ObjectStore, *, allow_pickle: bool = False, timeout: float = 30.0,
                 gc_interval: float | None = 60.0, owns_store: bool = True) -> None:
        #: the backend; its bytes-level methods (put / get / stat / delete / gc) are public too
        self.store = store
        self.allow_pickle = allow_pickle
        self.timeout = timeout
        self._gc_interval = gc_interval
        self._owns_store = owns_store
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._tasks = TaskSet("objects")

    def __repr__(self) -> str:
        return f"Objects({self.store!r})"

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> Objects:
        """Bind to the running loop (the one ``create`` / ``get`` hand work to) and start
        the collector."""
        if self._loop is not None or self._closed:
            raise ObjectStoreError("this Objects was already started; open one per event loop")
        self._loop = asyncio.get_running_loop()
        if self._gc_interval is not None:
            self._tasks.spawn(self._collect(self._gc_interval), name="objects-gc")
        return self

    async def aclose(self) -> None:
        """Stop the collector, then close the store if this owns it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._tasks.close()
        if self._owns_store:
            await self.store.aclose()

    async def __aenter__(self) -> Objects:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- async API --------------------------------------------------------------------------
    async def acreate(self, value: Any, *, ttl: float | None = None) -> str:
        """Store ``value`` (JSON-able, bytes, a numpy array; pickle only if allowed) for
        ``ttl`` seconds (``None``: the store's default; ``FOREVER``: no expiry); its ref."""
        return (await self.aput(self._encode(value), ttl=ttl)).ref

    async def aget(self, ref: Ref) -> Any:
        """The value stored under ``ref`` (``str`` or ASCII ``bytes``)."""
        ref = refs.check_ref(ref)
        data, _ = await self._op(self.store.get(ref))
        return codec.decode(data, allow_pickle=self.allow_pickle, ref=ref)

    async def aput(self, payload: bytes, *, ttl: float | None = None) -> ObjectMeta:
        """Store an already encoded payload (``codec.encode``)."""
        return await self._op(self.store.put(payload, ttl=ttl))

    async def astat(self, ref: Ref) -> ObjectMeta:
        return await self._op(self.store.stat(refs.check_ref(ref)))

    async def aexists(self, ref: Ref) -> bool:
        return await self._op(self.store.exists(refs.check_ref(ref)))

    async def adelete(self, ref: Ref) -> bool:
        return await self._op(self.store.delete(refs.check_ref(ref)))

    async def agc(self) -> int:
        """Remove expired objects now; how many were removed."""
        return await self._op(self.store.gc())

    # -- sync API, for handlers running in worker threads ------------------------------------
    def create(self, value: Any, *, ttl: float | None = None) -> str:
        """``acreate`` for synchronous code running outside the event loop."""
        payload = self._encode(value)  # on this thread, not the loop's
        return self._blocking("create", "acreate", lambda: self.aput(payload, ttl=ttl)).ref

    def get(self, ref: Ref) -> Any:
        """``aget`` for synchronous code running outside the event loop."""
        checked = refs.check_ref(ref)
        data, _ = self._blocking("get", "aget", lambda: self._op(self.store.get(checked)))
        return codec.decode(data, allow_pickle=self.allow_pickle, ref=checked)

    def stat(self, ref: Ref) -> ObjectMeta:
        return self._blocking("stat", "astat", lambda: self.astat(ref))

    def exists(self, ref: Ref) -> bool:
        return self._blocking("exists", "aexists", lambda: self.aexists(ref))

    def delete(self, ref: Ref) -> bool:
        return self._blocking("delete", "adelete", lambda: self.adelete(ref))

    # -- internals ---------------------------------------------------------------------------
    def _encode(self, value: Any) -> bytes:
        return codec.encode(value, allow_pickle=self.allow_pickle, max_bytes=self.store.max_bytes)

    async def _op(self, op: Coroutine[Any, Any, T]) -> T:
        """One store operation, on the loop this was started on, within ``timeout``."""
        if self._closed:
            op.close()
            raise ObjectStoreError("this object store is closed")
        if self._loop is not None and asyncio.get_running_loop() is not self._loop:
            op.close()
            raise ObjectStoreError("this object store belongs to another event loop: use it on the loop that "
                                   "opened it (from other threads, call the sync methods)")
        try:
            return await within(op, self.timeout)
        except TimeoutError as exc:
            raise ObjectStoreUnavailable(repr(self.store), f"no answer within {self.timeout:g} s") from exc

    def _blocking(self, name: str, async_name: str, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``make()`` (a coroutine factory) on the store's loop and wait for it."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise ObjectStoreError(
                f"objects.{name}() waits for the store and was called on a thread that runs an event loop, "
                f"which it would block: in async code use `await objects.{async_name}(...)`; a synchronous "
                "handler must run in a worker thread (asyncio.to_thread)")
        loop = self._loop
        if loop is None or self._closed or loop.is_closed():
            raise ObjectStoreError(f"objects.{name}() needs an open store: open it with `async with Objects(...)` "
                                   "or open_objects(...) on the event loop first")
        op = make()
        try:
            future = asyncio.run_coroutine_threadsafe(op, loop)
        except RuntimeError:  # the loop closed a moment ago
            op.close()
            raise ObjectStoreError(f"objects.{name}() needs an open store; it was closed") from None
        try:
            # the operation times out on the loop first (``_op``); this is the backstop
            return future.result(self.timeout + 1.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ObjectStoreUnavailable(repr(self.store), f"no answer within {self.timeout:g} s") from None

    async def _collect(self, interval: float) -> None:
        """The collector: expired objects removed every ``interval`` seconds."""
        while True:
            await asyncio.sleep(interval)
            try:
                removed = await self.agc()
            except ObjectStoreError as exc:  # the store may be back by the next round
                log.warning("collecting expired objects failed: %s", exc)
            else:
                if removed:
                    log.debug("removed %d expired objects from %r", removed, self.store)
