"""A typed function served in-process (``serve_function``): lifecycle order, execute over HTTP
(real loopback socket) and over the runtime, metadata, OpenAPI, media refs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, Field

from servemesh import Settings
from servemesh.apps.functions import serve_function
from servemesh.errors import FunctionInputError, FunctionStartupError
from servemesh.functions import Function, FunctionContext, Media
from servemesh.runtime import DistributedRuntime
from servemesh.testing import free_port


class Person(BaseModel):
    name: str
    title: str | None = None


class Inputs(BaseModel):
    person: Person
    file: Media | None = None


class Params(BaseModel):
    times: int = Field(1, ge=1, le=5)


class Outputs(BaseModel):
    greeting: str
    size: int = 0
    copy_ref: Media | None = None


def make_function(events: list[str], gate: asyncio.Event, hold: asyncio.Event | None = None,
                  fail_startup: bool = False) -> Function:
    func = Function(description="greets", name="greeter", version="1.2.0")
    func.set_input(Inputs)
    func.set_param(Params)
    func.set_output(Outputs)

    @func.on_startup
    async def load() -> None:
        events.append("startup-begin")
        await gate.wait()
        if fail_startup:
            raise RuntimeError("weights missing")
        events.append("startup-end")

    @func.on_execute
    async def main(inputs: Inputs, params: Params, ctx: FunctionContext) -> Outputs:
        events.append("execute")
        if inputs.person.name == "crash":
            raise ZeroDivisionError("no greeting for crash")
        if hold is not None:
            await hold.wait()
        size, copy = 0, None
        if inputs.file is not None:
            data = await inputs.file.read(ctx.objects)
            size, copy = len(data), await Media.store(ctx.objects, data[::-1])
        events.append("execute-end")
        return Outputs(greeting=" ".join([f"Hello {inputs.person.name}"] * params.times), size=size, copy_ref=copy)

    @func.on_shutdown
    async def stop() -> None:
        events.append("shutdown")

    return func


async def status(url: str) -> int:
    async with httpx.AsyncClient() as client:
        try:
            return (await client.get(url)).status_code
        except httpx.TransportError:
            return 0


async def until(check: Any, what: str, timeout: float = 10.0) -> None:
    """Poll an async condition (the runtime's readiness handshake, seen from outside)."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=str(tmp_path), object_store=str(tmp_path / "objects"), drain_timeout=10)


async def test_ready_only_after_startup_and_shutdown_after_drain(settings: Settings) -> None:
    events: list[str] = []
    gate, hold = asyncio.Event(), asyncio.Event()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with DistributedRuntime(settings) as runtime:
        serving = asyncio.create_task(serve_function(runtime, make_function(events, gate, hold), port=port))
        await until(lambda: _is(status(f"{url}/ready"), 503), "/ready answers 503 while on_startup runs")

        async def startup_began() -> bool:  # the port may answer a moment before on_startup is entered
            return events == ["startup-begin"]

        await until(startup_began, "on_startup entered")
        assert await status(f"{url}/ready") == 503
        assert await status(f"{url}/health") == 200
        gate.set()
        await until(lambda: _is(status(f"{url}/ready"), 200), "/ready after on_startup")
        assert events == ["startup-begin", "startup-end"]

        async with httpx.AsyncClient(timeout=10) as client:
            slow = asyncio.create_task(client.post(f"{url}/execute", json={"inputs": {"person": {"name": "A"}}}))
            await until(lambda: _true("execute" in events), "the execution started")
            runtime.request_shutdown()  # what SIGTERM does
            await until(lambda: _is(status(f"{url}/ready"), 503), "/ready 503 while draining")
            assert "shutdown" not in events  # an execution is still in flight
            hold.set()
            response = await slow
        assert response.status_code == 200
        await serving
    assert events == ["startup-begin", "startup-end", "execute", "execute-end", "shutdown"]


async def test_a_failing_startup_never_gets_ready(settings: Settings) -> None:
    events: list[str] = []
    gate = asyncio.Event()
    gate.set()
    async with DistributedRuntime(settings) as runtime:
        with pytest.raises(FunctionStartupError, match="weights missing"):
            await serve_function(runtime, make_function(events, gate, fail_startup=True), port=free_port())
    assert events == ["startup-begin"]  # no shutdown hook for a function that never started


async def test_execute_over_http_and_the_runtime(settings: Settings) -> None:
    events: list[str] = []
    gate = asyncio.Event()
    gate.set()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with DistributedRuntime(settings) as runtime:
        ready = asyncio.Event()
        serving = asyncio.create_task(serve_function(runtime, make_function(events, gate), port=port,
                                                     on_ready=lambda _: ready.set()))
        await asyncio.wait_for(ready.wait(), 10)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            ok = await client.post("/execute", json={"inputs": {"person": {"name": "Ada"}}, "params": {"times": 2}})
            assert ok.status_code == 200
            assert ok.json()["greeting"] == "Hello Ada Hello Ada"

            bad = await client.post("/execute", json={"inputs": {"person": {}}, "params": {"times": 9}})
            assert bad.status_code == 422
            assert bad.json()["error"] == "inputs.person.name: Field required"
            too_many = await client.post("/execute", json={"inputs": {"person": {"name": "A"}},
                                                           "params": {"times": 9}})
            assert too_many.status_code == 422 and too_many.json()["error"].startswith("params.times:")
            assert (await client.post("/execute", content=b"{nope")).status_code == 400
            crashed = await client.post("/execute", json={"inputs": {"person": {"name": "crash"}}})
            assert crashed.status_code == 500
            assert crashed.json()["error"] == "ZeroDivisionError: no greeting for crash"

            meta = (await client.get("/metadata")).json()
            assert (meta["name"], meta["version"], meta["description"]) == ("greeter", "1.2.0", "greets")
            assert meta["inputs"]["$defs"]["Person"]["required"] == ["name"]
            assert meta["params"]["properties"]["times"]["maximum"] == 5
            assert "greeting" in meta["outputs"]["properties"]

            spec = (await client.get("/openapi.json")).json()
            schemas = spec["components"]["schemas"]
            assert {"ExecuteRequest", "Outputs", "Person"} <= set(schemas)
            assert "422" in spec["paths"]["/execute"]["post"]["responses"]
            assert (await client.get("/health")).json()["function"] == "greeter"
            metrics = (await client.get("/metrics")).text
            assert "servemesh" in metrics

            # media: bytes in through the store, a ref in the inputs, a ref out
            ref = (await client.post("/objects", content=b"abc")).json()["ref"]
            out = (await client.post("/execute", json={"inputs": {"person": {"name": "A"}, "file": ref}})).json()
            assert out["size"] == 3
            assert (await client.get(f"/objects/{out['copy_ref']}")).content == b"cba"
            bad_ref = await client.post("/execute", json={"inputs": {"person": {"name": "A"}, "file": "/etc/x"}})
            assert bad_ref.status_code == 422 and bad_ref.json()["error"].startswith("inputs.file")

        # the same function on the runtime: functions.greeter.execute, capabilities name + version
        records = await runtime.discovery.list("instances/functions/greeter/")
        assert [r.capabilities for r in records] == [{"function": "greeter", "version": "1.2.0"}]
        client_ = await runtime.endpoint("functions.greeter.execute").client()
        answers = [a async for a in client_.generate({"inputs": {"person": {"name": "Bo"}}}, annotated=False)]
        assert answers == [{"greeting": "Hello Bo", "size": 0, "copy_ref": None}]
        with pytest.raises(FunctionInputError) as err:
            [a async for a in client_.generate({"inputs": {}}, annotated=False)]
        assert err.value.field == "inputs.person"
        runtime.request_shutdown()
        await serving


async def _is(status_: Any, expected: int) -> bool:
    return await status_ == expected


async def _true(value: bool) -> bool:
    return value
