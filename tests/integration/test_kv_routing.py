"""KV-aware routing across processes: two mock engines (each a process, with a simulated
prefix cache and a prefill cost) behind a ``kv`` router, discovery in a real etcd and the
KV events on a real NATS."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx

from servemesh import DistributedRuntime, serve
from servemesh.llm.kv import kv_subject
from servemesh.llm.model import resolve_model
from servemesh.llm.router import ROUTER_PATH, Router

from .kv_helpers import (
    Conversation,
    Engines,
    router_client,
    router_in_sync,
    router_stats,
    turn,
    until,
    until_instances,
)

ENGINE = Path(__file__).resolve().parents[2] / "examples" / "llm" / "engine.py"


def engine_args(model: str) -> list[str]:
    return ["--engine", "mock", "--model", model, "--kv-blocks", "4096", "--prefill-s-per-token", "0.002"]


async def subscribers(nats, subject: str) -> int:
    """Subscriptions to ``subject`` on the NATS server, from its monitoring port."""
    async with httpx.AsyncClient() as http:
        connz = (await http.get(f"http://{nats.host}:{nats.http_port}/connz?subs=1&limit=1024")).json()
    return sum(subject in (c.get("subscriptions_list") or []) for c in connz["connections"])


async def start_router(settings: dict, model: str) -> tuple[DistributedRuntime, asyncio.Task[None]]:
    rt = await DistributedRuntime(**settings).start()
    task = asyncio.create_task(serve(Router, runtime=rt, model=model, policy="kv"))
    await rt.wait_served(ROUTER_PATH, timeout=30)
    return rt, task


async def start_engines(spawn, engines: Engines, args: list[str], env: dict) -> dict:
    """Two engine processes, started one at a time to know which process is which instance."""
    procs = {}
    for count in (1, 2):
        proc = spawn(ENGINE, *args, env=env, name="engine")
        (new,) = set(await engines.wait(count)) - set(procs)
        procs[new] = proc
    return procs


async def kill_one(procs: dict, dead: int) -> int:
    """kill -9 the engine ``dead``; returns the other one."""
    (survivor,) = set(procs) - {dead}
    os.kill(procs[dead].pid, signal.SIGKILL)
    procs[dead].wait()
    return survivor


async def stop_router(rt: DistributedRuntime, task: asyncio.Task[None]) -> None:
    rt.request_shutdown()
    await task
    await rt.shutdown()


async def test_kv_router_across_processes_follows_caches_survives_restarts_and_kill_9(spawn, etcd, nats, namespace):
    model = f"kv-{namespace}"
    subject = kv_subject(model)
    settings = {"etcd": etcd.url, "nats": nats.url, "lease_ttl": 3}
    env = {"SERVEMESH_ETCD": etcd.url, "SERVEMESH_NATS": nats.url, "SERVEMESH_LEASE_TTL": "3"}
    async with DistributedRuntime(**settings) as rt:
        engines = await Engines(rt, model).start()
        procs = await start_engines(spawn, engines, engine_args(model), env)
        router_rt, router_task = await start_router(settings, model)
        router = await router_client(rt, model)
        assert await subscribers(nats, subject) == 1  # in place before the router registered

        async def no_subscriber() -> bool:
            return await subscribers(nats, subject) == 0

        talks = [Conversation(seed) for seed in range(4)]
        owner = {}
        for talk in talks:
            owner[talk.seed] = await turn(router, engines, talk.next_prompt())
            await router_in_sync(rt, model, engines, owner[talk.seed])
        assert set(owner.values()) == set(procs)  # nothing cached: spread over both
        for talk in reversed(talks):
            assert await turn(router, engines, talk.next_prompt()) == owner[talk.seed]
        stats = await engines.stats()
        assert sum(s["prefix_hits"] for s in stats.values()) == 4
        assert sum(s["cached_tokens"] for s in stats.values()) == 4 * 256
        first = await router_stats(rt, model)
        assert first["kv_hits"] == 4 and first["prefill_blocks_saved"] == 4 * 16 and first["events"] >= 4

        # a router started after the engines knows their caches from their snapshots
        await stop_router(router_rt, router_task)
        await until(no_subscriber, timeout=10, what="the stopped router's subscription leaving NATS")
        router_rt, router_task = await start_router(settings, model)
        await until_instances(router, [router_rt.instance_id])
        late = await router_stats(rt, model)
        assert late["snapshots"] == 2 and late["events"] == 0
        assert {i["instance"]: i["blocks"] for i in late["instances"]} == \
            {iid: await engines.blocks(iid) for iid in procs}
        for talk in talks:
            assert await turn(router, engines, talk.next_prompt()) == owner[talk.seed]
        assert (await router_stats(rt, model))["kv_hits"] == 4

        # kill -9 the engine of a conversation: its next turn goes to the other engine, no error
        talk = talks[0]
        dead = owner[talk.seed]
        survivor = await kill_one(procs, dead)
        assert await turn(router, engines, talk.next_prompt()) == survivor
        assert (await router_stats(rt, model))["failovers"] == 1  # the dead engine was its first choice

        async def forgotten() -> bool:  # when its lease expires, the router drops its blocks
            view = {i["instance"] for i in (await router_stats(rt, model))["instances"]}
            return dead not in view and survivor in view

        await until(forgotten, timeout=20, what="the dead engine leaving the router's index")
        await router_in_sync(rt, model, engines, survivor)
        hits = (await engines.stats())[survivor]["prefix_hits"]
        assert await turn(router, engines, talk.next_prompt()) == survivor  # now cached there
        assert (await engines.stats())[survivor]["prefix_hits"] == hits + 1

        await stop_router(router_rt, router_task)
        assert router_rt.events.subscriptions == 0  # type: ignore[attr-defined]
        await until(no_subscriber, timeout=10, what="the stopped router's subscription leaving NATS")


async def test_kv_router_over_two_llamacpp_engines_follows_the_real_prefix_cache(spawn, etcd, nats, namespace):
    """The same with the real model: two llamacpp engine processes publish what their slots
    hold; each conversation's next turn goes back to its engine and hits its prefix cache;
    after kill -9 the survivor serves the turn."""
    model = f"gemma-{namespace}"  # the packaged model under a name of this test's own
    gguf = str(resolve_model("gemma-3-270m"))
    settings = {"etcd": etcd.url, "nats": nats.url, "lease_ttl": 3}
    env = {"SERVEMESH_ETCD": etcd.url, "SERVEMESH_NATS": nats.url, "SERVEMESH_LEASE_TTL": "3"}
    async with DistributedRuntime(**settings) as rt:
        engines = await Engines(rt, model).start()
        procs = await start_engines(spawn, engines, ["--engine", "llamacpp", "--model", model, "--model-path", gguf,
                                                     "--slots", "2", "--threads", "1", "--context-length", "1024"], env)
        router_rt, router_task = await start_router(settings, model)
        router = await router_client(rt, model)
        talks = [Conversation(seed, first=200, more=40) for seed in range(2)]
        owner = {}
        for talk in talks:
            owner[talk.seed] = await turn(router, engines, talk.next_prompt())
            await router_in_sync(rt, model, engines, owner[talk.seed])
        assert set(owner.values()) == set(procs)
        for talk in talks:
            before = (await engines.stats())[owner[talk.seed]]["cached_tokens"]
            assert await turn(router, engines, talk.next_prompt()) == owner[talk.seed]
            after = (await engines.stats())[owner[talk.seed]]["cached_tokens"]
            assert after - before >= 200  # the first turn's prompt came from the cache
        assert (await router_stats(rt, model))["kv_hits"] == 2

        survivor = await kill_one(procs, owner[talks[0].seed])
        assert await turn(router, engines, talks[0].next_prompt()) == survivor
        await stop_router(router_rt, router_task)
