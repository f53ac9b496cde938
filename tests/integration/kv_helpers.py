"""What the KV-routing tests share: conversations, turns through a router, and which
engine served a turn (from the engines' own counters, not the router's word)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from servemesh import Client, DistributedRuntime, InstanceUnavailable
from servemesh.llm.kv import KV_STATE_PATH
from servemesh.llm.processor import ENGINE_PATH
from servemesh.llm.protocol import EngineRequest, SamplingParams, engine_output
from servemesh.llm.router import ROUTER_PATH


def tokens(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1, 250) for _ in range(n)]


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "condition") -> None:
    """Wait until ``check()`` is true (each check is a call that yields); fail after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                pass
    except TimeoutError:
        raise AssertionError(f"{what} not reached within {timeout}s") from None


async def until_instances(client: Client, count: int | list[int], timeout: float = 30.0) -> list[int]:
    """Wait, on the client's own discovery changes, until it sees ``count`` instances (or
    exactly these)."""
    changed = asyncio.Event()
    unlink = client.on_change(changed.set)
    want = (lambda ids: ids == sorted(count)) if isinstance(count, list) else (lambda ids: len(ids) == count)
    try:
        async with asyncio.timeout(timeout):
            while not want(client.instance_ids()):
                changed.clear()
                await changed.wait()
    finally:
        unlink()
    return client.instance_ids()


class Engines:
    """Clients of the engines of one model: their stats and KV state, per instance."""

    def __init__(self, rt: DistributedRuntime, model: str) -> None:
        self.rt = rt
        self.model = model

    async def start(self) -> Engines:
        caps = {"model": self.model}
        self.generate = await self.rt.endpoint(ENGINE_PATH).client(capabilities=caps)
        self.stats_client = await self.rt.endpoint(ENGINE_PATH.replace("generate", "stats")).client(capabilities=caps)
        self.state_client = await self.rt.endpoint(KV_STATE_PATH).client(capabilities=caps)
        return self

    async def wait(self, count: int) -> list[int]:
        for client in (self.generate, self.stats_client, self.state_client):
            ids = await until_instances(client, count)
        return ids

    async def stats(self) -> dict[int, dict[str, int]]:
        """Each reachable engine's stats (one killed a moment ago is still listed until its
        lease expires: it is left out)."""
        found = {}
        for iid in self.stats_client.instance_ids():
            try:
                found[iid] = await self.stats_client.one({}, iid)
            except InstanceUnavailable:
                pass
        return found

    async def blocks(self, iid: int) -> int:
        return len((await self.state_client.one({}, iid))["blocks"])


class Conversation:
    """A chat whose every turn's prompt is the previous prompt plus more tokens."""

    def __init__(self, seed: int, first: int = 256, more: int = 64) -> None:
        self.seed = seed
        self.prompt = tokens(seed, first)
        self.more = more
        self.turns = 0

    def next_prompt(self) -> list[int]:
        if self.turns:
            self.prompt = self.prompt + tokens(self.seed * 1000 + self.turns, self.more)
        self.turns += 1
        return self.prompt


async def router_client(rt: DistributedRuntime, model: str) -> Client:
    client = await rt.endpoint(ROUTER_PATH).client(capabilities={"model": model})
    await client.wait_for_instances(30)
    return client


async def router_stats(rt: DistributedRuntime, model: str, instance: int | None = None) -> dict[str, Any]:
    client = await rt.endpoint(ROUTER_PATH.replace("generate", "stats")).client(capabilities={"model": model})
    await client.wait_for_instances(30)
    return await client.one({}, instance if instance is not None else client.instance_ids()[0])  # type: ignore[no-any-return]


async def turn(router: Client, engines: Engines, prompt: list[int], *, instance: int | None = None) -> int:
    """Send one turn through the router; returns the engine that served it (the one whose
    ``served`` count moved), checking it answered in full."""
    before = await engines.stats()
    # greedy, so the same prompt gets the same answer in every run
    request = EngineRequest(model=engines.model, token_ids=prompt,
                            sampling=SamplingParams(max_tokens=4, temperature=0.0))
    stream = router.generate(request, annotated=False) if instance is None else \
        router.direct(request, instance, annotated=False)
    out = [engine_output(item) async for item in stream]
    produced = sum(len(o.token_ids) for o in out)  # a whole answer: its 4 tokens, or fewer ending at EOS
    finish = out[-1].finish_reason
    assert (finish, produced) == ("length", 4) or (finish == "stop" and produced <= 4), out
    after = await engines.stats()
    moved = [iid for iid in after if after[iid]["served"] != before.get(iid, {}).get("served", 0)]
    assert len(moved) == 1, (before, after)
    return moved[0]


async def router_in_sync(rt: DistributedRuntime, model: str, engines: Engines, iid: int) -> None:
    """Wait until the router's index holds as many blocks of ``iid`` as the engine says it has."""
    async def check() -> bool:
        view = {i["instance"]: i["blocks"] for i in (await router_stats(rt, model))["instances"]}
        return view.get(iid) == await engines.blocks(iid)

    await until(check, what=f"the router's view of engine {iid:x}")
