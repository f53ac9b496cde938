"""KV-aware routing in one process: engines, router and caller on runtimes sharing one
``MemoryStore`` (as ``serve_pipeline(engines=2)`` makes them), so the KV events travel on
the store's in-process bus and the requests over loopback TCP."""

from __future__ import annotations

import asyncio

import msgspec

from servemesh import DistributedRuntime, serve
from servemesh.apps.llm import serve_pipeline
from servemesh.llm.engines.mock import MockEngine
from servemesh.llm.kv import KV_STATE_PATH, KvEvent, kv_subject
from servemesh.llm.kv_router import KvRouting
from servemesh.llm.protocol import EngineRequest, SamplingParams
from servemesh.llm.router import ROUTER_PATH, Router
from servemesh.runtime.discovery.memory import MemoryDiscovery, MemoryStore

from .kv_helpers import Conversation, Engines, router_client, router_in_sync, router_stats, turn, until


class Mesh:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.tasks: dict[DistributedRuntime, asyncio.Task[None]] = {}

    async def runtime(self) -> DistributedRuntime:
        return await DistributedRuntime(discovery=MemoryDiscovery(self.store), instance_wait=2).start()

    async def serve(self, cls: type, path: str, **kwargs: object) -> DistributedRuntime:
        rt = await self.runtime()
        self.tasks[rt] = asyncio.create_task(serve(cls, runtime=rt, **kwargs))
        await rt.wait_served(path)
        return rt

    async def stop(self, rt: DistributedRuntime) -> None:
        rt.request_shutdown()
        await self.tasks.pop(rt)
        await rt.shutdown()

    async def close(self) -> None:
        for rt in list(self.tasks):
            await self.stop(rt)


ENGINE = {"model": "kvm", "kv_blocks": 4096, "prefill_s_per_token": 0.0005}


async def test_follow_ups_go_to_the_engine_that_cached_them_over_the_in_process_bus():
    mesh = Mesh()
    try:
        first = await mesh.serve(MockEngine, KV_STATE_PATH, **ENGINE)
        await mesh.serve(MockEngine, KV_STATE_PATH, **ENGINE)
        router_rt = await mesh.serve(Router, ROUTER_PATH, model="kvm", policy="kv")
        assert first.events.kind == "memory" and first.events.bus is router_rt.events.bus  # type: ignore[attr-defined]
        caller = await mesh.runtime()
        engines = await Engines(caller, "kvm").start()
        ids = await engines.wait(2)
        router = await router_client(caller, "kvm")
        talks = [Conversation(seed) for seed in range(4)]
        owner = {}
        for talk in talks:
            owner[talk.seed] = await turn(router, engines, talk.next_prompt())
            await router_in_sync(caller, "kvm", engines, owner[talk.seed])
        assert set(owner.values()) == set(ids)  # with nothing cached, new conversations spread
        for talk in reversed(talks):  # not the order they were spread in: a rotation would miss
            assert await turn(router, engines, talk.next_prompt()) == owner[talk.seed]
        stats = await engines.stats()
        assert sum(s["prefix_hits"] for s in stats.values()) == 4
        assert sum(s["cached_tokens"] for s in stats.values()) == 4 * 256
        routed = await router_stats(caller, "kvm")
        assert routed["kv_hits"] == 4 and routed["prefill_blocks_saved"] == 4 * 16
        assert routed["requests"] == 8 and routed["snapshots"] >= 2

        # a request's blocks count on its engine while its stream is open, and leave when it is
        # closed early (the router's window holds the rest of a long answer back meanwhile)
        long = EngineRequest(model="kvm", token_ids=talks[1].prompt, sampling=SamplingParams(max_tokens=100_000))
        stream = router.generate(long, annotated=False)
        await anext(aiter(stream))
        active = {i["instance"]: i["active_blocks"] for i in (await router_stats(caller, "kvm"))["instances"]}
        # its whole prompt is cached there: it loads its engine with the minimum, one block
        assert active == {owner[talks[1].seed]: 1, **{i: 0 for i in ids if i != owner[talks[1].seed]}}
        await stream.aclose()

        async def idle() -> bool:
            return all(i["active_blocks"] == 0 for i in (await router_stats(caller, "kvm"))["instances"])

        await until(idle, what="the closed stream's blocks leaving the router's count")

        # an engine that leaves takes its blocks out of the index; its conversations move
        gone = owner[talks[0].seed]
        victim = next(rt for rt in mesh.tasks if rt.instance_id == gone)
        await mesh.stop(victim)

        async def forgotten() -> bool:
            return gone not in {i["instance"] for i in (await router_stats(caller, "kvm"))["instances"]}

        await until(forgotten, what="the router forgetting the engine that left")
        (survivor,) = [i for i in ids if i != gone]
        assert await turn(router, engines, talks[0].next_prompt()) == survivor
        # a new engine is snapshotted on arrival (nothing cached: it is empty, and idle)
        newcomer = await mesh.serve(MockEngine, KV_STATE_PATH, **ENGINE)

        async def known() -> bool:
            view = {i["instance"] for i in (await router_stats(caller, "kvm"))["instances"]}
            return newcomer.instance_id in view

        await until(known, what="the router's snapshot of the new engine")
        assert router_rt.events.subscriptions == 1  # type: ignore[attr-defined]
        await mesh.stop(router_rt)
        assert router_rt.events.subscriptions == 0  # type: ignore[attr-defined]
        assert router_rt.events.bus.subscriptions == []  # type: ignore[attr-defined]
    finally:
        await mesh.close()


async def test_serve_pipeline_engines_share_one_bus_and_a_kv_router_sees_both():
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    async with DistributedRuntime() as rt:
        pipeline = asyncio.create_task(serve_pipeline(
            rt, engine="mock", model="kvp", port=0, engines=2, kv_blocks=512,
            on_ready=lambda url, model: ready.set_result(url)))
        await asyncio.wait_for(asyncio.shield(ready), 30)
        # the pipeline's own runtime is embedded (in-process calls), so the router joins it
        router = asyncio.create_task(serve(Router, runtime=rt, model="kvp", policy="kv"))
        try:
            await rt.wait_served(ROUTER_PATH, timeout=30)
            engines = await Engines(rt, "kvp").start()
            ids = await engines.wait(2)
            client = await router_client(rt, "kvp")
            talks = [Conversation(seed, first=64, more=16) for seed in (10, 11)]
            owners = []
            for talk in talks:
                owners.append(await turn(client, engines, talk.next_prompt()))
                await router_in_sync(rt, "kvp", engines, owners[-1])
            assert sorted(owners) == sorted(ids)  # the other engine's events came over the store's bus
            for talk, owner in reversed(list(zip(talks, owners, strict=True))):
                assert await turn(client, engines, talk.next_prompt()) == owner
        finally:
            rt.request_shutdown()
            await router
            await pipeline


async def test_a_gap_or_lost_events_bring_a_snapshot_and_garbage_is_ignored():
    mesh = Mesh()
    try:
        engine = await mesh.serve(MockEngine, KV_STATE_PATH, model="kvl", kv_blocks=64)
        caller = await mesh.runtime()
        routing = KvRouting(caller, "kvl", max_pending=2)
        await routing.start()  # the engine's snapshot is taken before start() returns
        iid = engine.instance_id
        assert routing.counts["snapshots"] == 1 and routing.index.instances() == {iid: 0}
        subject = kv_subject("kvl")
        seq = routing.index.seq(iid)
        assert seq is not None

        def at_least(key: str, n: int):
            async def check() -> bool:
                await asyncio.sleep(0)  # yield a turn to the reader task (until() bounds the wait)
                return routing.counts[key] >= n
            return check

        # seq jumps ahead: applied, then the snapshot (which does not have block 123) replaces it
        await caller.events.publish(subject, msgspec.msgpack.encode(KvEvent(iid, seq + 5, 16, [123], [])))
        await until(at_least("snapshots", 2), what="a snapshot after the gap")
        assert routing.counts["gaps"] == 1 and routing.index.overlaps([123]) == {}
        # garbage is dropped; a stale event (at or before the snapshot's seq) changes nothing
        seq = routing.index.seq(iid)
        assert seq is not None
        await caller.events.publish(subject, b"\xc1garbage")
        await caller.events.publish(subject, msgspec.msgpack.encode(KvEvent(iid, seq, 16, [7], [])))
        await until(at_least("events", 2), what="the stale event")
        assert routing.counts["events"] == 2 and routing.index.overlaps([7]) == {}
        # more than max_pending in one turn: events lost, every engine's snapshot again
        for _ in range(5):
            await caller.events.publish(subject, msgspec.msgpack.encode(KvEvent(iid, seq, 16, [], [])))
        await until(at_least("snapshots", 3), what="a snapshot after lost events")
        assert routing.counts["events_lost"] == 1
        await routing.close()
        assert caller.events.subscriptions == 0  # type: ignore[attr-defined]
    finally:
        await mesh.close()
