"""The promises every object store backend keeps (``servemesh.objects.base``), checked
against the in-memory twin and the local directory. The JetStream backend runs the
same checks in tests/integration/test_objects_jetstream.py."""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from servemesh.errors import ConfigError
from servemesh.objects import (
    FOREVER,
    InvalidObjectRef,
    LocalStore,
    MemoryStore,
    ObjectCorrupted,
    ObjectNotFound,
    ObjectStoreError,
    ObjectTooLarge,
)
from servemesh.objects.refs import ref_for

T0 = 1_700_000_000.0
TRAVERSALS = ["../secret", "../../secret", "/etc/passwd", "obj-../../secret", "file:///etc/passwd",
              "obj-" + "0" * 63 + "/", ".", "..", "", "objects/../secret"]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Backend:
    """Opens replicas' views of one store (same dict / same directory) and tampers with it."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.root = root
        self.shared: dict = {}
        self.opened: list = []

    def open(self, clock: Callable[[], float], *, max_bytes: int = 1 << 20, default_ttl: float = 3600.0):
        if self.kind == "memory":
            store = MemoryStore(max_bytes=max_bytes, default_ttl=default_ttl, clock=clock, shared=self.shared)
        else:
            store = LocalStore.open(self.root, max_bytes=max_bytes, default_ttl=default_ttl, clock=clock)
        self.opened.append(store)
        return store

    def tamper(self, ref: str) -> None:
        """Flip one byte of the stored payload, keeping its length."""
        if self.kind == "memory":
            data, meta = self.shared[ref]
            self.shared[ref] = (data[:-1] + bytes([data[-1] ^ 1]), meta)
        else:
            path = self.root / ref
            raw = bytearray(path.read_bytes())
            raw[-1] ^= 1
            path.write_bytes(bytes(raw))

    def count(self) -> int:
        if self.kind == "memory":
            return len(self.shared)
        return sum(1 for name in os.listdir(self.root) if name.startswith("obj-"))


@pytest.fixture(params=["memory", "local"])
async def backend(request, tmp_path) -> AsyncIterator[Backend]:
    b = Backend(request.param, tmp_path / "objects")
    yield b
    for store in b.opened:
        await store.aclose()


async def test_put_then_get_returns_the_bytes_and_their_metadata(backend):
    clock = Clock()
    store = backend.open(clock)
    meta = await store.put(b"hello", ttl=10)
    assert meta.ref == ref_for(b"hello") and meta.size == 5
    assert meta.created == T0 and meta.expires == T0 + 10
    data, got = await store.get(meta.ref)
    assert data == b"hello" and got == meta
    assert await store.stat(meta.ref) == meta
    assert await store.exists(meta.ref)


async def test_identical_payloads_are_stored_once(backend):
    store = backend.open(Clock())
    first = await store.put(b"same")
    second = await store.put(b"same")
    other = await backend.open(Clock()).put(b"same")  # another replica
    assert first.ref == second.ref == other.ref
    assert backend.count() == 1
    assert await store.delete(first.ref) is True
    assert await store.delete(first.ref) is False


async def test_an_object_is_gone_once_its_ttl_passed(backend):
    clock = Clock()
    store = backend.open(clock)
    ref = (await store.put(b"short", ttl=10)).ref
    clock.now = T0 + 9.999
    assert (await store.get(ref))[0] == b"short"
    clock.now = T0 + 10
    for call in (store.get, store.stat):
        with pytest.raises(ObjectNotFound) as caught:
            await call(ref)
        assert caught.value.expired and "expired" in str(caught.value)
    assert not await store.exists(ref)


async def test_the_default_ttl_applies_when_none_is_given(backend):
    clock = Clock()
    store = backend.open(clock, default_ttl=60)
    assert (await store.put(b"x")).expires == T0 + 60


async def test_forever_means_no_expiry_only_when_asked(backend):
    clock = Clock()
    store = backend.open(clock)
    meta = await store.put(b"kept", ttl=FOREVER)
    assert meta.expires is None
    clock.now = T0 + 1e9
    assert await store.gc() == 0
    assert (await store.get(meta.ref))[0] == b"kept"


async def test_storing_again_extends_the_expiry_to_the_later_one(backend):
    clock = Clock()
    store = backend.open(clock)
    ref = (await store.put(b"shared", ttl=10)).ref
    clock.now = T0 + 5
    longer = await backend.open(clock).put(b"shared", ttl=100)  # another replica asks for longer
    assert longer.expires == T0 + 105 and longer.created == T0
    shorter = await store.put(b"shared", ttl=1)  # a shorter ttl never shortens it
    assert shorter.expires == T0 + 105
    clock.now = T0 + 50
    assert (await store.get(ref))[0] == b"shared"
    forever = await store.put(b"shared", ttl=FOREVER)
    assert forever.expires is None
    assert (await store.put(b"shared", ttl=10)).expires is None


async def test_storing_an_expired_object_again_starts_it_afresh(backend):
    clock = Clock()
    store = backend.open(clock)
    await store.put(b"again", ttl=10)
    clock.now = T0 + 20
    meta = await store.put(b"again", ttl=10)
    assert meta.created == T0 + 20 and meta.expires == T0 + 30
    assert (await store.get(meta.ref))[0] == b"again"


async def test_gc_removes_expired_objects_only(backend):
    clock = Clock()
    store = backend.open(clock)
    short = (await store.put(b"short", ttl=10)).ref
    long = (await store.put(b"long", ttl=100)).ref
    kept = (await store.put(b"kept", ttl=FOREVER)).ref
    assert await store.gc() == 0
    clock.now = T0 + 50
    assert await store.gc() == 1
    clock.now = T0  # removed, not merely hidden
    with pytest.raises(ObjectNotFound):
        await store.get(short)
    assert await store.exists(long) and await store.exists(kept)
    assert backend.count() == 2


@pytest.mark.parametrize("ttl", [0, -1, math.nan, "10", True, None])
async def test_a_bad_ttl_is_refused_and_nothing_is_stored(backend, ttl):
    store = backend.open(Clock(), default_ttl=3600.0)
    if ttl is None:  # None is the default ttl: fine
        await store.put(b"x", ttl=ttl)
        return
    with pytest.raises(ConfigError, match="ttl"):
        await store.put(b"x", ttl=ttl)
    assert backend.count() == 0


async def test_a_payload_over_the_limit_is_refused_on_put(backend):
    store = backend.open(Clock(), max_bytes=100)
    with pytest.raises(ObjectTooLarge) as caught:
        await store.put(b"x" * 101)
    assert (caught.value.size, caught.value.limit) == (101, 100)
    assert "101 bytes" in str(caught.value) and "limit of 100 bytes" in str(caught.value)
    assert backend.count() == 0
    await store.put(b"x" * 100)


async def test_a_payload_over_the_limit_is_refused_on_get(backend):
    big = backend.open(Clock(), max_bytes=1000)
    ref = (await big.put(b"y" * 500)).ref
    small = backend.open(Clock(), max_bytes=100)
    with pytest.raises(ObjectTooLarge) as caught:
        await small.get(ref)
    assert caught.value.size == 500 and caught.value.ref == ref
    assert (await small.stat(ref)).size == 500


@pytest.mark.parametrize("bad", TRAVERSALS)
async def test_traversal_attempts_are_refused_before_any_storage_is_touched(backend, bad, tmp_path):
    (tmp_path / "secret").write_bytes(b"secret")
    store = backend.open(Clock())
    for call in (store.get, store.stat, store.delete, store.exists):
        with pytest.raises(InvalidObjectRef):
            await call(bad)
    assert (tmp_path / "secret").read_bytes() == b"secret"


async def test_changed_bytes_are_detected_on_get(backend):
    store = backend.open(Clock())
    ref = (await store.put(b"original payload")).ref
    backend.tamper(ref)
    with pytest.raises(ObjectCorrupted, match="hashes to"):
        await store.get(ref)


async def test_a_closed_store_refuses_work(backend):
    store = backend.open(Clock())
    ref = (await store.put(b"x")).ref
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(ObjectStoreError, match="closed"):
        await store.get(ref)
    with pytest.raises(ObjectStoreError, match="closed"):
        await store.put(b"y")
