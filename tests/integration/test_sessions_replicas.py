"""Several session-service replicas over one store, behind one gateway (real etcd, TCP):
concurrent steps on one session never lose an update."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from servemesh import DistributedRuntime
from servemesh.apps.sessions import definition_of, serve_service
from servemesh.gateway.sessions.gateway import SessionsGateway
from servemesh.sessions.remote import RemoteSessions, endpoint_path

from .sessions_helpers import burr_chat, counter

CLIENTS = 8
STEPS_EACH = 4


@contextlib.asynccontextmanager
async def replicas_and_gateway(etcd: Any, namespace: str, app: Any, store: str,
                               replicas: int = 2) -> AsyncIterator[httpx.AsyncClient]:
    definition = definition_of(app, "app")
    async with contextlib.AsyncExitStack() as stack:
        runtimes = [await stack.enter_async_context(DistributedRuntime(etcd=etcd.url)) for _ in range(replicas + 1)]
        *services, front = runtimes
        tasks = [asyncio.create_task(serve_service(rt, definition, store=store, namespace=namespace))
                 for rt in services]
        for rt in services:
            await rt.wait_served(endpoint_path(definition.name, namespace))
        backend = await RemoteSessions.connect(front, definition.name, namespace=namespace, timeout=30)
        async with asyncio.timeout(20):  # the gateway's client sees every replica (etcd watch)
            while len(backend.client.instance_ids()) < replicas:
                await asyncio.sleep(0.05)
        gateway = SessionsGateway(front, definition, backend)
        server = gateway.kit.http_server("127.0.0.1", 0)
        server.start()
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                yield client
        finally:
            await server.stop()
            await backend.close()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def hammer(c: httpx.AsyncClient, prefix: str, action_for: Callable[[dict], tuple[str, dict]]) -> int:
    """CLIENTS clients, each taking STEPS_EACH steps on one session, re-reading and
    retrying on 409; the number of steps that succeeded."""
    key = {"app_id": "shared", "partition_key": "p"}
    done = 0

    async def client() -> None:
        nonlocal done
        for _ in range(STEPS_EACH):
            while True:
                session = (await c.get(f"{prefix}/exists", params=key)).json()
                action, inputs = action_for(session)
                r = await c.post(f"{prefix}/{action}", json={**key, **inputs},
                                 headers={"If-Match": str(session["sequence_id"])})
                if r.status_code == 409:
                    continue
                assert r.status_code == 200, r.text
                done += 1
                break

    await c.post(f"{prefix}/getOrCreate", json=key)
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return done


async def test_plain_app_two_replicas_no_lost_update(etcd, namespace, tmp_path):
    async with replicas_and_gateway(etcd, namespace, counter.app, f"sqlite:///{tmp_path}/s.db") as c:
        done = await hammer(c, "/counter", lambda s: ("add", {"amount": 1}))
        final = (await c.get("/counter/exists", params={"app_id": "shared", "partition_key": "p"})).json()
        assert done == CLIENTS * STEPS_EACH == final["state"]["total"] == final["sequence_id"]
        steps = (await c.get("/counter/history", params={"app_id": "shared", "partition_key": "p",
                                                         "limit": 500})).json()["steps"]
        assert [s["sequence_id"] for s in steps] == list(range(done + 1))
        assert [s["state"]["total"] for s in steps] == list(range(done + 1))


async def test_burr_app_two_replicas_no_lost_update(etcd, namespace, tmp_path):
    def next_step(session: dict) -> tuple[str, dict]:
        return (session["next_method"], {"message": "hi"} if session["next_method"] == "ask" else {})

    async with replicas_and_gateway(etcd, namespace, burr_chat.builder, f"sqlite:///{tmp_path}/s.db") as c:
        done = await hammer(c, "/app", next_step)
        final = (await c.get("/app/exists", params={"app_id": "shared", "partition_key": "p"})).json()
        assert done == CLIENTS * STEPS_EACH == final["sequence_id"]
        assert final["state"]["turns"] == done // 2 and len(final["state"]["history"]) == done
