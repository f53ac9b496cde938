"""Capabilities known only at run time reach discovery, over real etcd."""

from __future__ import annotations

import asyncio

import pytest

from servemesh import DistributedRuntime, async_init, endpoint, serve, service
from servemesh.errors import ConfigError
from servemesh.llm.engines.mock import MockEngine
from servemesh.llm.processor import ENGINE_PATH, PROCESSOR_PATH, Processor
from servemesh.llm.protocol import ProcessorRequest, SamplingParams, processor_output
from servemesh.llm.router import ROUTER_PATH, Router
from servemesh.llm.tokenizer import ByteTokenizer


async def test_capabilities_set_in_async_init_reach_discovery_and_select_instances(etcd, namespace):
    @service(name="loader", namespace=namespace, capabilities=lambda self: {"model": self.loaded})
    class Loader:
        def __init__(self) -> None:
            self.loaded: str | None = None

        @async_init
        async def load(self) -> None:
            self.loaded = "tiny-v2"  # known only once loaded

        @endpoint(capabilities=lambda self: {"gpus": 2})
        async def generate(self, request: str) -> str:
            return f"{self.loaded}:{request}"

    path = f"{namespace}.loader.generate"
    async with DistributedRuntime(etcd=etcd.url) as server, DistributedRuntime(etcd=etcd.url) as caller:
        task = asyncio.create_task(serve(Loader, runtime=server))
        await server.wait_served(path)
        (record,) = await caller.discovery.list(f"instances/{namespace}/")
        assert record.capabilities == {"model": "tiny-v2", "gpus": 2}
        client = await caller.endpoint(path).client(capabilities={"model": "tiny-v2", "gpus": "2"})
        await client.wait_for_instances(10)
        assert [i.data() async for i in client.generate("x")] == ["tiny-v2:x"]
        server.request_shutdown()
        await task


async def test_a_capabilities_function_that_fails_registers_nothing():
    @service(name="broken", namespace="caps", capabilities=lambda self: {"model": self.missing})
    class Broken:
        @endpoint()
        async def generate(self, request: str) -> str:
            return request

    async with DistributedRuntime() as rt:
        with pytest.raises(AttributeError, match="missing"):
            await serve(Broken, runtime=rt)
        assert await rt.discovery.list("instances/") == []

    @service(name="wrong", namespace="caps", capabilities=lambda self: None)
    class Wrong:
        @endpoint()
        async def generate(self, request: str) -> str:
            return request

    async with DistributedRuntime() as rt:
        with pytest.raises(ConfigError, match="must return a dict"):
            await serve(Wrong, runtime=rt)
        assert await rt.discovery.list("instances/") == []


async def test_llm_services_register_their_model_and_wait_for_engines(etcd):
    async with DistributedRuntime(etcd=etcd.url) as rt, DistributedRuntime(etcd=etcd.url) as engines_rt:
        processor = asyncio.create_task(serve(Processor, runtime=rt, tokenizer=ByteTokenizer("caps-m"),
                                              engine_path=ROUTER_PATH))
        router = asyncio.create_task(serve(Router, runtime=rt, model="caps-m", policy="round_robin"))
        # no engine yet: neither the router nor the processor behind it registers
        with pytest.raises(TimeoutError):
            await rt.wait_served(PROCESSOR_PATH, timeout=0.5)
        assert await rt.discovery.list("instances/inference/") == []
        engine = asyncio.create_task(serve(MockEngine, runtime=engines_rt, model="caps-m"))
        await rt.wait_served(ROUTER_PATH)
        await rt.wait_served(PROCESSOR_PATH)
        caps = {(r.component, r.endpoint): r.capabilities for r in await rt.discovery.list("instances/inference/")}
        # the engine's context length travels through the router to the processor
        ctx = {"context_length": 131072}
        assert caps == {("engine", "generate"): {"model": "caps-m", "engine": "mock", **ctx},
                        ("engine", "stats"): {"model": "caps-m", "engine": "mock", **ctx},
                        ("engine", "kv_state"): {"model": "caps-m", "engine": "mock", **ctx},
                        ("router", "generate"): {"model": "caps-m", "router": "round_robin", **ctx},
                        ("router", "stats"): {"model": "caps-m", "router": "round_robin", **ctx},
                        ("processor", "process"): {"model": "caps-m", **ctx}}
        client = await rt.endpoint(PROCESSOR_PATH).client(capabilities={"model": "caps-m"})
        request = ProcessorRequest(model="caps-m", prompt="x", sampling=SamplingParams(max_tokens=5))
        out = [processor_output(i.data()) async for i in client.generate(request)]
        assert "".join(o.text for o in out) == "Hello" and out[-1].finish_reason == "length"
        assert ENGINE_PATH in {r.path for r in await rt.discovery.list("instances/inference/")}
        rt.request_shutdown()
        engines_rt.request_shutdown()
        await asyncio.gather(processor, router, engine)
