"""The event plane's in-process bus, subjects, and what a runtime without NATS says."""

from __future__ import annotations

import asyncio

import pytest

from servemesh import ConfigError, DistributedRuntime
from servemesh.errors import EventsLost, FrameTooLarge, ServemeshError
from servemesh.runtime.discovery.memory import MemoryDiscovery, MemoryStore
from servemesh.runtime.events import check_subject, subject_matches, subject_token


async def read(sub, n: int) -> list[bytes]:
    it = aiter(sub)
    return [await anext(it) for _ in range(n)]


async def test_runtimes_on_one_store_share_one_bus_and_others_do_not():
    store = MemoryStore()
    async with DistributedRuntime(discovery=MemoryDiscovery(store)) as a, \
            DistributedRuntime(discovery=MemoryDiscovery(store)) as b, DistributedRuntime() as alone:
        assert a.events.kind == "memory"
        sub = await b.events.subscribe("sm.ns.events.x")
        wild = b.events.subscribe("sm.ns.events.*")
        other = alone.events.subscribe("sm.ns.events.x")
        for i in range(3):
            await a.events.publish("sm.ns.events.x", b"m%d" % i)
        await a.events.publish("sm.ns.events.y", b"y")
        assert await read(sub, 3) == [b"m0", b"m1", b"m2"]  # in publish order
        assert await read(wild, 4) == [b"m0", b"m1", b"m2", b"y"]
        assert sub.pending == 0 and other.pending == 0  # another store is another bus
        assert b.events.subscriptions == 2 and a.events.subscriptions == 0


async def test_an_overflowing_subscription_drops_and_says_so_once_then_reads_on():
    async with DistributedRuntime() as rt:
        sub = rt.events.subscribe("s.t", max_pending=3)
        for i in range(5):
            await rt.events.publish("s.t", b"%d" % i)
        # the fourth found the queue full: it and the three waiting are dropped; the fifth waits
        with pytest.raises(EventsLost) as lost:
            await anext(aiter(sub))
        assert lost.value.dropped == 4 and lost.value.subject == "s.t"
        assert "resynchronise" in str(lost.value)
        assert await read(sub, 1) == [b"4"]
        await rt.events.publish("s.t", b"5")
        assert await read(sub, 1) == [b"5"]
        assert sub.lost == 1


async def test_close_ends_the_iteration_and_shutdown_closes_every_subscription():
    rt = await DistributedRuntime().start()
    events = rt.events
    closed = events.subscribe("a.b")
    await closed.close()
    with pytest.raises(StopAsyncIteration):
        await anext(aiter(closed))
    live = events.subscribe("a.b")
    got = []
    first = asyncio.Event()

    async def consume() -> None:
        async for data in live:
            got.append(data)
            first.set()

    task = asyncio.create_task(consume())
    await events.publish("a.b", b"one")
    await asyncio.wait_for(first.wait(), 5)
    await rt.shutdown()
    await asyncio.wait_for(task, 5)  # the iteration ended with the runtime
    assert got == [b"one"] and events.subscriptions == 0
    with pytest.raises(ServemeshError, match="closed"):
        await events.publish("a.b", b"late")
    stopped = await DistributedRuntime().start()
    await stopped.shutdown()
    with pytest.raises(ServemeshError, match="stopped"):
        stopped.events  # noqa: B018


async def test_payloads_over_the_limit_and_bad_subjects_are_refused():
    async with DistributedRuntime(max_payload=1024) as rt:
        with pytest.raises(FrameTooLarge):
            await rt.events.publish("a.b", b"x" * 2000)
        for bad in ("", "a..b", "a b", "a.>.b", "a.*"):
            with pytest.raises(ConfigError):
                await rt.events.publish(bad, b"")
        with pytest.raises(ConfigError):
            rt.events.subscribe("a.>.b")
        with pytest.raises(ConfigError):
            rt.events.subscribe("a.b", max_pending=0)


def test_etcd_without_nats_has_no_event_plane():
    rt = DistributedRuntime(etcd="http://127.0.0.1:1", nats=None)
    with pytest.raises(ConfigError, match="SERVEMESH_NATS"):
        rt.events  # noqa: B018


def test_subjects():
    assert subject_token("gemma-3-270m") == "gemma-3-270m"
    assert subject_token("Qwen/Qwen2.5") == "Qwen_2fQwen2_2e5"
    assert subject_token("a_b") != subject_token("a.b") != subject_token("a b")
    assert subject_token("東京") == "_e6_9d_b1_e4_ba_ac"
    check_subject(f"sm.x.events.kv.{subject_token('any model/at all.v2')}", wildcards=False)
    assert subject_matches("a.*.c", "a.b.c") and not subject_matches("a.*.c", "a.b.d")
    assert subject_matches("a.>", "a.b.c") and not subject_matches("a.>", "a")
    assert subject_matches("a.b", "a.b") and not subject_matches("a.b", "a.b.c")
