"""The OpenAI frontend on the gateway kit, and the assembled pipeline, in one process.

Runtimes that share a ``MemoryStore`` stand for separate processes: their calls go
over the real request plane (loopback TCP), so errors cross a hop."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from servemesh import Context, DistributedRuntime, Overloaded, serve, service
from servemesh.apps.llm import serve_pipeline
from servemesh.errors import ValidationError
from servemesh.gateway.openai import OpenAIFrontend
from servemesh.http import HttpServer
from servemesh.llm.engines.mock import MockEngine
from servemesh.llm.processor import ENGINE_PATH, PROCESSOR_PATH, Processor
from servemesh.llm.protocol import ProcessorOutput, ProcessorRequest
from servemesh.llm.tokenizer import ByteTokenizer
from servemesh.runtime.discovery.memory import MemoryDiscovery, MemoryStore
from servemesh.sdk import endpoint

GRACE = 0.3  # SERVEMESH_INSTANCE_WAIT for these runtimes


@service(name="processor", namespace="inference", capabilities={"model": "echo-id"})
class EchoId:
    """Answers with the id of the context it was called with."""

    @endpoint()
    async def process(self, request: ProcessorRequest, context: Context) -> AsyncIterator[ProcessorOutput]:
        yield ProcessorOutput(text=context.id)
        yield ProcessorOutput(finish_reason="stop")


@service(name="processor", namespace="inference", capabilities={"model": "full"})
class Full:
    @endpoint()
    async def process(self, request: ProcessorRequest) -> AsyncIterator[ProcessorOutput]:
        raise Overloaded("inference.engine.generate", 3)
        yield ProcessorOutput()


class Mesh:
    """Runtimes sharing one in-memory discovery store, as processes share etcd."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.runtimes: list[DistributedRuntime] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def runtime(self) -> DistributedRuntime:
        rt = await DistributedRuntime(discovery=MemoryDiscovery(self.store), instance_wait=GRACE).start()
        self.runtimes.append(rt)
        return rt

    async def serve(self, cls: type, path: str, **kwargs) -> DistributedRuntime:
        rt = await self.runtime()
        self.tasks.append(asyncio.create_task(serve(cls, runtime=rt, **kwargs)))
        await rt.wait_served(path)
        return rt

    async def close(self) -> None:
        for rt in self.runtimes:
            rt.request_shutdown()
        await asyncio.gather(*self.tasks)
        for rt in self.runtimes:
            await rt.shutdown()


async def frontend(mesh: Mesh) -> tuple[OpenAIFrontend, HttpServer]:
    front = await OpenAIFrontend(await mesh.runtime()).start()
    server = HttpServer(front.app, "127.0.0.1", 0)
    server.start()
    return front, server


def ask(model: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 5, **extra}


async def test_models_are_the_processors_and_errors_map_by_class_across_hops():
    mesh = Mesh()
    front, server = await frontend(mesh)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await http.get("/ready")).status_code == 503  # nothing would be served yet
            await mesh.serve(MockEngine, ENGINE_PATH, model="engine-only")  # an engine without a processor
            await mesh.serve(EchoId, PROCESSOR_PATH)
            await mesh.serve(Full, PROCESSOR_PATH)
            engine_rt = await mesh.serve(MockEngine, ENGINE_PATH, model="m")
            await mesh.serve(Processor, PROCESSOR_PATH, tokenizer=ByteTokenizer("m"))
            ready = await http.get("/ready")
            assert ready.status_code == 200 and ready.json()["models"] == ["echo-id", "full", "m"]
            assert [m["id"] for m in (await http.get("/v1/models")).json()["data"]] == ["echo-id", "full", "m"]

            # the request id travels in the runtime context and comes back in a header
            echoed = await http.post("/v1/chat/completions", json=ask("echo-id"), headers={"X-Request-Id": "t-7"})
            assert echoed.json()["choices"][0]["message"]["content"] == "t-7"
            assert echoed.headers["x-request-id"] == "t-7"
            async with http.stream("POST", "/v1/chat/completions", json=ask("echo-id", stream=True),
                                   headers={"X-Request-Id": "s-8"}) as streamed:
                assert streamed.headers["x-request-id"] == "s-8"
                assert '"content":"s-8"' in "".join([line async for line in streamed.aiter_lines()])

            full = await http.post("/v1/chat/completions", json=ask("full"))
            assert full.status_code == 429 and full.headers["retry-after"] == "1"
            assert full.json()["error"]["code"] == "overloaded"

            unknown = await http.post("/v1/chat/completions", json=ask("engine-only"))
            assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
            assert "available: echo-id, full, m" in unknown.json()["error"]["message"]

            ok = await http.post("/v1/chat/completions", json=ask("m"))
            assert ok.json()["choices"][0]["message"]["content"] == "Hello"
            # the engine goes away: the processor's engine call raises NoInstancesError after
            # its grace, and that class reaches the frontend over the wire: a 503
            await engine_rt.shutdown()
            gone = await http.post("/v1/chat/completions", json=ask("m"))
            assert gone.status_code == 503, gone.json()
            assert gone.json()["error"]["code"] == "no_instances"
            # internal names and addresses stay inside (SERVEMESH_DEBUG_ERRORS shows them)
            assert gone.json()["error"]["message"] == "no live replica for model 'm'; retry later"
    finally:
        await server.stop()
        await front.close()
        await mesh.close()


async def test_a_model_whose_processors_left_is_a_503_not_a_404():
    mesh = Mesh()
    front, server = await frontend(mesh)
    try:
        processor_rt = await mesh.serve(EchoId, PROCESSOR_PATH)
        assert front.models() == ["echo-id"]
        await processor_rt.shutdown()
        assert front.models() == []
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            gone = await http.post("/v1/chat/completions", json=ask("echo-id"))
            assert gone.status_code == 503 and gone.json()["error"]["code"] == "no_instances"
            assert (await http.get("/ready")).status_code == 503
    finally:
        await server.stop()
        await front.close()
        await mesh.close()


async def test_serve_pipeline_with_two_engines_in_one_process():
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    async with DistributedRuntime() as rt:
        pipeline = asyncio.create_task(serve_pipeline(
            rt, engine="mock", model="mock", port=0, engines=2, on_ready=lambda url, model: ready.set_result(url)))
        url = await asyncio.wait_for(asyncio.shield(ready), 30)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{url}/ready")).json()["models"] == ["mock"]
        engines = await rt.endpoint(ENGINE_PATH).client()
        assert len(engines.instance_ids()) == 2  # both served before the frontend started
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        answers = await asyncio.gather(*(client.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "x"}], max_tokens=5) for _ in range(4)))
        assert {a.choices[0].message.content for a in answers} == {"Hello"}
        await client.close()
        rt.request_shutdown()
        await pipeline


async def _engine_stats(rt: DistributedRuntime) -> dict:
    stats = await rt.endpoint("inference.engine.stats").client()
    (only,) = [i async for i in stats.generate({}, annotated=False)]
    return only


async def test_embedded_a_non_streaming_client_that_leaves_stops_the_engine():
    async with DistributedRuntime() as rt:
        tasks = [asyncio.create_task(serve(MockEngine, runtime=rt, model="mock", tokens_per_s=50)),
                 asyncio.create_task(serve(Processor, runtime=rt, tokenizer=ByteTokenizer("mock")))]
        await rt.wait_served(PROCESSOR_PATH)
        front = await OpenAIFrontend(rt).start()
        server = HttpServer(front.app, "127.0.0.1", 0)
        server.start()
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
                request = asyncio.create_task(http.post("/v1/chat/completions", json=ask("mock", max_tokens=3000)))
                async with asyncio.timeout(10):
                    while (await _engine_stats(rt))["generating"] == 0:
                        await asyncio.sleep(0.05)
                request.cancel()  # the client hangs up before the answer
                with contextlib.suppress(asyncio.CancelledError):
                    await request
            async with asyncio.timeout(10):
                while (stats := await _engine_stats(rt))["generating"]:
                    await asyncio.sleep(0.05)
            assert stats["cancelled"] == 1
            async with asyncio.timeout(5):
                while front.inflight:
                    await asyncio.sleep(0.05)
        finally:
            await server.stop()
            await front.close()
            rt.request_shutdown()
            await asyncio.gather(*tasks)


async def test_embedded_a_lone_surrogate_is_a_400_next_to_a_healthy_stream():
    async with DistributedRuntime() as rt:
        tasks = [asyncio.create_task(serve(MockEngine, runtime=rt, model="mock", tokens_per_s=200)),
                 asyncio.create_task(serve(Processor, runtime=rt, tokenizer=ByteTokenizer("mock")))]
        await rt.wait_served(PROCESSOR_PATH)
        front = await OpenAIFrontend(rt).start()
        server = HttpServer(front.app, "127.0.0.1", 0)
        server.start()
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http, \
                    http.stream("POST", "/v1/chat/completions", json=ask("mock", max_tokens=40, stream=True)) as ok:
                lines = ok.aiter_lines()
                assert (await lines.__anext__()).startswith("data: ")
                body = json.dumps(ask("mock", messages=[{"role": "user", "content": "\ud800"}])).encode()
                bad = await http.post("/v1/chat/completions", content=body,
                                      headers={"Content-Type": "application/json"})
                assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages.0.content"
                # straight to the processor (no frontend validation): a 400-class error, never a crash
                processor = await rt.endpoint(PROCESSOR_PATH).client()
                with pytest.raises(ValidationError):
                    async for _ in processor.generate(ProcessorRequest(model="mock", prompt="a\ud800")):
                        pass
                assert [line async for line in lines][-2] == "data: [DONE]"
        finally:
            await server.stop()
            await front.close()
            rt.request_shutdown()
            await asyncio.gather(*tasks)
