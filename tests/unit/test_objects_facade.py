"""``Objects``: async from async code, sync from a handler in a worker thread (AnyServe's
``context.objects.create`` / ``get``), a clear error on the loop thread, an owned collector."""

from __future__ import annotations

import asyncio
import types
from pathlib import Path

import numpy as np
import pytest

from servemesh.objects import (
    LocalStore,
    MemoryStore,
    ObjectNotFound,
    ObjectRefused,
    Objects,
    ObjectStoreError,
    ObjectStoreSettings,
    ObjectStoreUnavailable,
    ObjectTooLarge,
    open_objects,
    ref_from_tensor,
)

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def chat_handler(request: object, context: types.SimpleNamespace) -> tuple[str, object]:
    """The AnyServe seed's handler body, unchanged."""
    obj_ref = context.objects.create({"data": "value"})
    data = context.objects.get(obj_ref)
    return obj_ref, data


@pytest.fixture
async def objects():
    async with Objects(MemoryStore(clock=Clock())) as o:
        yield o


async def test_async_create_and_get_round_trip_every_codec(objects):
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    for value in ({"data": "value"}, b"\x00raw", "text", [1, 2]):
        assert await objects.aget(await objects.acreate(value)) == value
    back = await objects.aget(await objects.acreate(array))
    assert back.dtype == np.float32 and back.shape == (2, 3)
    np.testing.assert_array_equal(back, array)


async def test_the_anyserve_handler_works_unchanged_from_a_worker_thread(objects):
    ref, data = await asyncio.to_thread(chat_handler, None, types.SimpleNamespace(objects=objects))
    assert data == {"data": "value"}
    assert ref.startswith("obj-") and await objects.aget(ref) == {"data": "value"}


async def test_sync_calls_from_many_threads_at_once(objects):
    def work(i: int) -> object:
        return objects.get(objects.create({"i": i}))

    results = await asyncio.gather(*(asyncio.to_thread(work, i) for i in range(16)))
    assert results == [{"i": i} for i in range(16)]


async def test_sync_handlers_filling_the_default_thread_pool_do_not_starve_the_store(tmp_path):
    # more waiting handlers than the loop's default pool has threads (at most 32)
    async with Objects(LocalStore.open(tmp_path / "objects"), timeout=20) as objects:
        context = types.SimpleNamespace(objects=objects)
        results = await asyncio.gather(*(asyncio.to_thread(chat_handler, i, context) for i in range(40)))
    assert {data["data"] for _, data in results} == {"value"}


async def test_a_sync_call_on_the_event_loop_thread_is_a_clear_error(objects):
    with pytest.raises(ObjectStoreError, match=r"await objects\.acreate") as caught:
        objects.create({"data": "value"})
    assert "event loop" in str(caught.value)
    assert objects.store.objects == {}  # nothing was stored
    with pytest.raises(ObjectStoreError, match=r"await objects\.aget"):
        objects.get("obj-" + "0" * 64)


async def test_a_sync_call_from_a_thread_running_its_own_loop_is_refused(objects):
    async def inner() -> None:
        objects.create({"x": 1})

    with pytest.raises(ObjectStoreError, match="event loop"):
        await asyncio.to_thread(asyncio.run, inner())


async def test_sync_calls_need_an_open_store():
    unopened = Objects(MemoryStore())
    with pytest.raises(ObjectStoreError, match="open store"):
        await asyncio.to_thread(unopened.create, {"x": 1})
    opened = await Objects(MemoryStore()).start()
    await opened.aclose()
    with pytest.raises(ObjectStoreError, match="open store"):
        await asyncio.to_thread(opened.create, {"x": 1})


async def test_async_calls_from_another_loop_are_refused(objects):
    ref = await objects.acreate({"x": 1})
    with pytest.raises(ObjectStoreError, match="another event loop"):
        await asyncio.to_thread(asyncio.run, objects.aget(ref))


async def test_a_ref_from_a_tensor_resolves(objects):
    ref = await objects.acreate({"data": "value"})
    tensor = np.array([ref.encode()], dtype=object)  # a BYTES obj_ref input
    assert await objects.aget(ref_from_tensor(tensor)) == {"data": "value"}
    assert await objects.aget(ref.encode()) == {"data": "value"}
    assert await asyncio.to_thread(objects.get, ref.encode()) == {"data": "value"}


async def test_pickle_is_refused_by_default_and_allowed_by_the_operator():
    shared: dict = {}
    async with Objects(MemoryStore(shared=shared)) as strict, \
            Objects(MemoryStore(shared=shared), allow_pickle=True) as trusting:
        with pytest.raises(ObjectRefused, match="SERVEMESH_OBJECT_ALLOW_PICKLE"):
            await strict.acreate({1, 2})
        assert shared == {}
        ref = await trusting.acreate({1, 2})
        assert await trusting.aget(ref) == {1, 2}
        with pytest.raises(ObjectRefused, match="pickle"):
            await strict.aget(ref)  # a replica without the opt-in never unpickles
        with pytest.raises(ObjectRefused):
            await asyncio.to_thread(strict.get, ref)


async def test_ttl_is_passed_to_the_store():
    clock = Clock()
    async with Objects(MemoryStore(clock=clock, default_ttl=60)) as objects:
        short = await objects.acreate("short", ttl=5)
        default = await objects.acreate("default")
        assert (await objects.astat(short)).expires == T0 + 5
        assert (await objects.astat(default)).expires == T0 + 60
        clock.now = T0 + 5
        with pytest.raises(ObjectNotFound):
            await objects.aget(short)
        with pytest.raises(ObjectNotFound):
            await asyncio.to_thread(objects.get, short)
        assert await objects.agc() == 1


async def test_a_value_over_the_limit_is_refused_before_it_reaches_the_store():
    async with Objects(MemoryStore(max_bytes=100)) as objects:
        with pytest.raises(ObjectTooLarge):
            await objects.acreate(b"x" * 200)
        with pytest.raises(ObjectTooLarge):
            await asyncio.to_thread(objects.create, {"text": "y" * 200})
        assert objects.store.objects == {}


class HangingStore(MemoryStore):
    """A backend that never answers ``get``: stands for an unreachable NATS."""

    async def get(self, ref):
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_an_operation_that_does_not_answer_times_out():
    async with Objects(HangingStore(), timeout=0.05) as objects:
        ref = await objects.acreate({"x": 1})
        with pytest.raises(ObjectStoreUnavailable, match="no answer"):
            await objects.aget(ref)
        with pytest.raises(ObjectStoreUnavailable, match="no answer"):
            await asyncio.to_thread(objects.get, ref)


class CountingStore(MemoryStore):
    """Records collections; the first one fails, as a store briefly down would."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls = 0
        self.second = asyncio.Event()

    async def gc(self) -> int:
        self.calls += 1
        if self.calls == 1:
            raise ObjectStoreUnavailable("test", "down for a moment")
        if self.calls == 2:
            self.second.set()
        return await super().gc()


async def test_the_collector_runs_periodically_survives_a_failure_and_is_owned():
    clock = Clock()
    store = CountingStore(clock=clock)
    async with Objects(store, gc_interval=0.001) as objects:
        ref = await objects.acreate("old", ttl=1)
        clock.now = T0 + 2
        await asyncio.wait_for(store.second.wait(), 10)
        assert ref not in store.objects
        assert [t for t in asyncio.all_tasks() if t.get_name() == "objects-gc"]
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "objects-gc"]
    with pytest.raises(ObjectStoreError, match="closed"):
        await store.get(ref)  # the store was closed with the Objects that owned it


async def test_a_borrowed_store_stays_open():
    store = MemoryStore()
    async with Objects(store, owns_store=False) as objects:
        ref = await objects.acreate("x")
    assert (await store.get(ref))[1].ref == ref


async def test_open_objects_from_settings_on_a_local_directory(tmp_path: Path):
    settings = ObjectStoreSettings(location=str(tmp_path / "objects"), gc_interval=3600)
    async with open_objects(settings) as objects:
        ref, data = await asyncio.to_thread(chat_handler, None, types.SimpleNamespace(objects=objects))
        assert data == {"data": "value"}
    assert (tmp_path / "objects" / ref).is_file()
    async with open_objects(settings) as again:
        assert await again.aget(ref) == {"data": "value"}
