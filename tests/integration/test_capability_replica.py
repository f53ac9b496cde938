"""Replicas in depth (real sockets, one process): handlers off the loop and bounded,
``context.call`` from both kinds of handler, cancellation when the client leaves,
graceful unregistration, API keys on the registration, async generators."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx

from servemesh.capability import App, ModelInferResponse

from .capability_apps import TEXT, api_server, replica, until


def reply(request, text: str) -> ModelInferResponse:
    response = ModelInferResponse(model_name=request.model_name, id=request.id)
    response.add_output(name="response", datatype="BYTES", shape=[1], bytes_contents=[text.encode()])
    return response


def text_of(body: dict, name: str = "response") -> str:
    return next(o for o in body["outputs"] if o["name"] == name)["contents"]["bytes_contents"][0]


async def test_sync_handlers_run_off_the_loop_and_are_bounded():
    app = App()
    release = threading.Event()
    entered: list[int] = []

    @app.capability(type="slow")
    def slow(request, context):
        entered.append(1)
        release.wait(10)
        return reply(request, "slow")

    @app.capability(type="quick")
    async def quick(request, context):
        return reply(request, "quick")

    async with api_server() as (_, url), replica(app, "r", url, capability_max_queue=3), \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        def slow_call() -> asyncio.Task[httpx.Response]:
            return asyncio.create_task(http.post("/infer/json", headers={"X-Capability-Type": "slow"}, json=TEXT))

        blocked = [slow_call(), slow_call()]
        await until(lambda: len(entered) == 2)  # both in their handler, each in a worker thread
        # the event loop is free meanwhile
        quick = await asyncio.wait_for(http.post("/infer/json", headers={"X-Capability-Type": "quick"}, json=TEXT), 5)
        assert quick.status_code == 200 and not any(t.done() for t in blocked)
        blocked.append(slow_call())
        await until(lambda: len(entered) == 3)
        full = await http.post("/infer/json", headers={"X-Capability-Type": "slow"}, json=TEXT)
        assert full.status_code == 429 and full.json()["code"] == "overloaded" and full.headers["retry-after"]
        release.set()
        assert [r.status_code for r in await asyncio.gather(*blocked)] == [200, 200, 200]


async def test_context_call_from_sync_and_async_handlers():
    app = App()

    @app.capability(type="upper")
    def upper(request, context):
        return reply(request, request.inputs[0].bytes_contents[0].decode().upper())

    @app.capability(type="sync-caller")
    def sync_caller(request, context):
        answer = context.call({"type": "upper"}, {"text": "from a thread"})
        return reply(request, answer.outputs[0].bytes_contents[0].decode())

    @app.capability(type="async-caller")
    async def async_caller(request, context):
        answer = await context.acall({"type": "upper"}, {"text": "from the loop"})
        return reply(request, answer.outputs[0].bytes_contents[0].decode())

    @app.capability(type="wrong-caller")
    async def wrong_caller(request, context):
        return context.call({"type": "upper"}, {"text": "x"})  # blocks the loop: refused

    async with api_server() as (_, url), replica(app, "r", url), httpx.AsyncClient(base_url=url, timeout=10) as http:
        sync = await http.post("/infer/json", headers={"X-Capability-Type": "sync-caller"}, json=TEXT)
        assert sync.status_code == 200 and text_of(sync.json()) == "FROM A THREAD"
        asynchronous = await http.post("/infer/json", headers={"X-Capability-Type": "async-caller"}, json=TEXT)
        assert text_of(asynchronous.json()) == "FROM THE LOOP"
        wrong = await http.post("/infer/json", headers={"X-Capability-Type": "wrong-caller"}, json=TEXT)
        assert wrong.status_code == 500 and "await context.acall" in wrong.json()["error"]


async def test_a_client_that_leaves_cancels_the_handler():
    app = App()
    started, cancelled = asyncio.Event(), asyncio.Event()

    @app.capability(type="forever")
    async def forever(request, context):
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return reply(request, "never")

    async with api_server() as (_, url), replica(app, "r", url):
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            call = asyncio.create_task(http.post("/infer/json", headers={"X-Capability-Type": "forever"}, json=TEXT))
            await asyncio.wait_for(started.wait(), 10)
            call.cancel()  # the client hangs up
            await asyncio.gather(call, return_exceptions=True)
        await asyncio.wait_for(cancelled.wait(), 10)


async def test_a_replica_that_stops_unregisters_at_once():
    app = App()

    @app.capability(type="x")
    async def x(request, context):
        return reply(request, "x")

    async with api_server(capability_ttl=30.0) as (api, url), httpx.AsyncClient(base_url=url, timeout=10) as http:
        async with replica(app, "leaving", url):
            assert [r["replica_id"] for r in (await http.get("/registry")).json()["replicas"]] == ["leaving"]
        started = time.monotonic()
        await until(lambda: not api.registry.entries(), 5)  # long before the 30 s TTL
        assert time.monotonic() - started < 5
        assert (await http.get("/registry")).json()["total"] == 0


async def test_registration_and_calls_need_the_api_key_when_there_is_one():
    app = App()

    @app.capability(type="x")
    async def x(request, context):
        return reply(request, "x")

    async with api_server(api_key="s3cret") as (_, url), replica(app, "keyed", url, api_key="s3cret"):
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            refused = await http.post("/infer/json", headers={"X-Capability-Type": "x"}, json=TEXT)
            assert refused.status_code == 401
            assert (await http.post("/register", json={"replica_id": "y", "endpoint": "h:1",
                                                        "capabilities": [{"type": "y"}]})).status_code == 401
            assert (await http.get("/health")).status_code == 200  # probes stay open
        async with httpx.AsyncClient(base_url=url, timeout=10, headers={"Authorization": "Bearer s3cret"}) as http:
            registry = (await http.get("/registry")).json()
            assert [r["replica_id"] for r in registry["replicas"]] == ["keyed"]
            assert (await http.post("/infer/json", headers={"X-Capability-Type": "x"}, json=TEXT)).status_code == 200


async def test_async_generator_handlers_stream():
    app = App()

    @app.capability(type="count", stream=True)
    async def count(request, context):
        for i in range(3):
            yield reply(request, str(i))

    async with api_server() as (_, url), replica(app, "r", url), httpx.AsyncClient(base_url=url, timeout=10) as http:
        body = (await http.post("/infer/stream", headers={"X-Capability-Type": "count"}, json=TEXT)).text
        assert body.count("data: ") == 3 and '"bytes_contents":["2"]' in body
