"""The SDK: personas, lifecycle, injection and dependencies, embedded and multi-process."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from servemesh import (
    DistributedRuntime,
    ServiceContext,
    ValidationError,
    async_init,
    endpoint,
    entrypoint,
    on_shutdown,
    serve,
    service,
)
from servemesh.errors import ConfigError

from ..conftest import read_log

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "sdk"
sys.path.insert(0, str(EXAMPLES))

import persona1_default  # noqa: E402
import persona2_mixed  # noqa: E402
import persona3_power  # noqa: E402


async def call(rt: DistributedRuntime, path: str, request, wait: float = 10) -> list:
    client = await rt.endpoint(path).client()
    await client.wait_for_instances(wait)
    return [item.data() async for item in client.generate(request)]


async def start(rt: DistributedRuntime, *classes, **kwargs) -> asyncio.Task[None]:
    task = asyncio.create_task(serve(*classes, runtime=rt, **kwargs))
    await asyncio.sleep(0)
    return task


async def test_persona1_default_user_embedded():
    async with DistributedRuntime() as rt:
        await start(rt, persona1_default.Worker)
        tokens = await call(rt, "demo.worker.generate", {"prompt": "hi there", "max_tokens": 3})
        assert [t.text for t in tokens] == ["echo:", "hi", "there"]  # in-process: the models themselves


async def test_persona2_context_injection_async_init_and_depends_embedded():
    async with DistributedRuntime() as rt:
        await start(rt, persona2_mixed.Router, persona1_default.Worker)
        out = await call(rt, "demo.router.generate", {"prompt": "a b", "max_tokens": 2})
        assert out == [{"routed_by": "router", "text": "echo:", "index": 0},
                       {"routed_by": "router", "text": "a", "index": 1}]
        stats = await call(rt, "demo.router.stats", {})
        assert stats == [{"requests": 1, "workers": [rt.instance_id]}]


async def test_persona3_entrypoint_and_kwargs_embedded():
    args = persona3_power.EngineArgs(model="tiny", temperature=0.5)
    async with DistributedRuntime() as rt:
        await start(rt, persona3_power.PowerWorker, engine_args=args)
        client = await rt.endpoint("demo.power.generate").client(capabilities={"model": "tiny"})
        await client.wait_for_instances(10)
        out = [i.data() async for i in client.generate({"prompt": "x", "max_tokens": 2})]
        assert out == [{"model": "tiny", "temperature": 0.5, "index": 0},
                       {"model": "tiny", "temperature": 0.5, "index": 1}]


async def test_lifecycle_order_injection_and_shutdown_hooks():
    events: list[str] = []

    @service(name="life", namespace="sdk")
    class Life:
        def __init__(self, context: ServiceContext, greeting: str, *, punctuation: str = "!") -> None:
            events.append(f"init {context.namespace}.{context.name} {[e.name for e in context.endpoints]}")
            self.greeting = greeting + punctuation

        @async_init
        async def first(self) -> None:
            events.append("first")

        @async_init
        async def second(self) -> None:
            events.append("second")

        @endpoint()
        async def hello(self, request: str) -> str:
            return f"{self.greeting} {request}"

        @on_shutdown
        async def bye(self) -> None:
            events.append("bye")

    async with DistributedRuntime() as rt:
        task = await start(rt, Life, greeting="hello")
        assert await call(rt, "sdk.life.hello", "you") == ["hello! you"]
        rt.request_shutdown()
        await task
    assert events == ["init sdk.life ['hello']", "first", "second", "bye"]


async def test_failing_async_init_registers_nothing_and_still_shuts_down():
    events: list[str] = []

    @service(name="broken", namespace="sdk")
    class Broken:
        @async_init
        async def setup(self) -> None:
            raise RuntimeError("no GPU here")

        @endpoint()
        async def generate(self, request):
            yield request

        @on_shutdown
        async def cleanup(self) -> None:
            events.append("cleanup")

    async with DistributedRuntime() as rt:
        with pytest.raises(RuntimeError, match="no GPU here"):
            await serve(Broken, runtime=rt)
        assert await rt.discovery.list("instances/") == []
    assert events == ["cleanup"]


async def test_entrypoint_serves_nothing_automatically():
    @service(name="manual", namespace="sdk")
    class Manual:
        def __init__(self, ctx: ServiceContext) -> None:
            self.ctx = ctx

        @entrypoint
        async def main(self) -> None:
            await self.ctx.component.endpoint("chosen").serve_endpoint(self.chosen)

        async def chosen(self, request: str) -> str:
            return request.upper()

        async def not_served(self, request):
            yield request

    async with DistributedRuntime() as rt:
        await start(rt, Manual)
        assert await call(rt, "sdk.manual.chosen", "x") == ["X"]
        assert [r.endpoint for r in await rt.discovery.list("instances/sdk/")] == ["chosen"]


async def test_missing_constructor_kwargs_fail_at_serve_time():
    async with DistributedRuntime() as rt:
        with pytest.raises(ConfigError, match="engine_args"):
            await serve(persona3_power.PowerWorker, runtime=rt)
        assert await rt.discovery.list("instances/") == []


async def test_bad_requests_are_validation_errors_and_the_service_keeps_serving():
    async with DistributedRuntime() as rt:
        await start(rt, persona1_default.Worker)
        client = await rt.endpoint("demo.worker.generate").client()
        await client.wait_for_instances(10)
        cases = [({"prompt": 5}, "prompt"), ({"max_tokens": 3}, "prompt"),
                 ({"prompt": "x", "max_tokens": 10_000}, "max_tokens"), ("{not json", None)]
        for payload, field in cases:
            with pytest.raises(ValidationError) as info:
                async for _ in client.generate(payload):
                    pass
            assert info.value.field == field, payload
        assert len([i async for i in client.generate({"prompt": "ok", "max_tokens": 2})]) == 2


def _env(etcd, nats, transport="tcp"):
    return {"SERVEMESH_ETCD": etcd.url, "SERVEMESH_NATS": nats.url, "SERVEMESH_TRANSPORT": transport}


@pytest.mark.parametrize("transport", ["tcp", "nats"])
async def test_each_persona_runs_as_a_process_and_answers(spawn, etcd, nats, transport):
    spawn(EXAMPLES / "persona1_default.py", env=_env(etcd, nats, transport), name="p1")
    spawn(EXAMPLES / "persona3_power.py", "--model", "m1", env=_env(etcd, nats, transport), name="p3")
    async with DistributedRuntime(etcd=etcd.url, nats=nats.url) as rt:
        tokens = await call(rt, "demo.worker.generate", {"prompt": "over the wire", "max_tokens": 3}, 30)
        assert tokens == [{"text": "echo:", "index": 0}, {"text": "over", "index": 1},
                          {"text": "the", "index": 2}]
        power = await call(rt, "demo.power.generate", {"prompt": "x", "max_tokens": 1}, 30)
        assert power == [{"model": "m1", "temperature": 0.0, "index": 0}]
        for r in await rt.discovery.list("instances/demo/"):
            assert r.schema and r.schema["request"]["required"] == ["prompt"]
            assert ("nats_tcp" if transport == "nats" else "tcp") in r.transport


async def test_depends_across_two_processes_and_on_shutdown_on_sigterm(spawn, etcd, nats):
    env = _env(etcd, nats)
    spawn(EXAMPLES / "persona1_default.py", env=env, name="worker")
    async with DistributedRuntime(etcd=etcd.url) as rt:
        # the router answers NoInstancesError until a worker exists: start it once one does
        await (await rt.endpoint("demo.worker.generate").client()).wait_for_instances(30)
        router = spawn(Path(sys.executable).parent / "servemesh", "run",
                       str(EXAMPLES / "persona2_mixed.py") + ":Router", env=env, name="router")
        out = await call(rt, "demo.router.generate", {"prompt": "x y", "max_tokens": 2}, 30)
        assert [o["text"] for o in out] == ["echo:", "x"]
        worker_client = await rt.endpoint("demo.worker.generate").client()
        await worker_client.wait_for_instances(10)
        stats = await call(rt, "demo.router.stats", {})
        assert stats == [{"requests": 1, "workers": worker_client.instance_ids()}]
        router_ids = (await rt.endpoint("demo.router.generate").client()).instance_ids()
        assert router_ids and router_ids != worker_client.instance_ids()  # two processes
    router.send_signal(signal.SIGTERM)
    assert router.wait(15) == 0
    assert "router served 1 requests" in read_log(router)
