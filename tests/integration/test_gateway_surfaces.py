"""One gateway process, many surfaces: the capability API, KServe REST (/v2) and gRPC, and
the OpenAI API (/v1) from one HTTP port over the same replicas; each switchable; one
/metrics counting them all; compressed KServe bodies."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import AsyncIterator

import httpx
import numpy as np

from servemesh import DistributedRuntime, serve, service
from servemesh.apps.gateway import Surfaces
from servemesh.llm.processor import PROCESSOR_PATH
from servemesh.llm.protocol import ProcessorOutput, ProcessorRequest
from servemesh.runtime.discovery.memory import MemoryDiscovery
from servemesh.sdk import endpoint
from servemesh.tensors import decode_contents_response

from .capability_apps import TEXT, gateway, replica, until
from .kserve_apps import app

ADD_SUB = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [16], "data": list(range(16))},
                      {"name": "INPUT1", "datatype": "FP32", "shape": [16], "data": [1.0] * 16}]}


@service(name="processor", namespace="inference", capabilities={"model": "tiny-llm"})
class Tiny:
    @endpoint()
    async def process(self, request: ProcessorRequest) -> AsyncIterator[ProcessorOutput]:
        yield ProcessorOutput(text="hello from the same gateway")
        yield ProcessorOutput(finish_reason="stop")


async def test_every_surface_from_one_port():
    async with gateway(Surfaces(openai=True)) as gw, replica(app, "r1", gw.url), \
            httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        # an LLM processor, in another runtime of the same discovery (as another process with etcd)
        store = gw.router.runtime.discovery.store  # type: ignore[attr-defined]
        llm = await DistributedRuntime(discovery=MemoryDiscovery(store)).start()
        serving = asyncio.create_task(serve(Tiny, runtime=llm))
        try:
            await llm.wait_served(PROCESSOR_PATH)
            await until(lambda: "add_sub" in gw.service.catalog.models())
            kserve = await http.post("/v2/models/add_sub/infer", json=ADD_SUB)
            assert kserve.status_code == 200 and kserve.json()["outputs"][0]["data"][:2] == [1.0, 2.0]
            capability = await http.post("/infer/json", headers={"X-Capability-Model": "add_sub"}, json={
                "inputs": [{"name": n, "datatype": "FP32", "shape": [16], "contents": {"fp32_contents": [2.0] * 16}}
                           for n in ("INPUT0", "INPUT1")]})
            assert capability.status_code == 200
            assert decode_contents_response(capability.content).as_numpy("OUTPUT0").tolist() == [4.0] * 16
            models = (await http.get("/v1/models")).json()
            assert [m["id"] for m in models["data"]] == ["tiny-llm"]
            chat = await http.post("/v1/chat/completions", json={
                "model": "tiny-llm", "messages": [{"role": "user", "content": "hi"}]})
            assert chat.status_code == 200, chat.text
            assert chat.json()["choices"][0]["message"]["content"] == "hello from the same gateway"
            # each surface keeps its error shape: OpenAI's object, KServe's string
            missing_llm = (await http.post("/v1/chat/completions", json={"model": "nope", "messages": []})).json()
            assert isinstance(missing_llm["error"], dict)
            missing_model = await http.post("/v2/models/nope/infer", json=ADD_SUB)
            assert missing_model.status_code == 404 and set(missing_model.json()) == {"error"}
            # the kit's routes, once, counting every surface
            assert (await http.get("/health")).json()["status"] == "healthy"
            metrics = (await http.get("/metrics")).text
            for route in ("/v2/models/{name}/infer", "/infer/json", "/v1/chat/completions"):
                assert f'route="{route}",status="200"' in metrics, route
            assert metrics.count("# TYPE servemesh_http_requests_total counter") == 1
        finally:
            llm.request_shutdown()
            await serving
            await llm.shutdown()


async def test_surfaces_switch_off():
    off = Surfaces(capability=False, kserve=False, kserve_grpc=False)
    async with gateway(off) as gw, replica(app, "r1", gw.url), httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        assert gw.grpc is None
        registry = (await http.get("/registry")).json()  # replicas still register here
        assert [r["replica_id"] for r in registry["replicas"]] == ["r1"]
        assert (await http.post("/v2/models/add_sub/infer", json=ADD_SUB)).status_code == 404
        assert (await http.get("/v2/health/live")).status_code == 404
        assert (await http.post("/infer/json", headers={"X-Capability-Model": "echo"}, json=TEXT)).status_code == 404
        assert (await http.get("/v1/models")).status_code == 404
    async with gateway(Surfaces(capability=False)) as gw, replica(app, "r1", gw.url), \
            httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        await until(lambda: "add_sub" in gw.service.catalog.models())
        assert (await http.post("/v2/models/add_sub/infer", json=ADD_SUB)).status_code == 200
        assert (await http.post("/infer/json", headers={"X-Capability-Model": "echo"}, json=TEXT)).status_code == 404


async def test_compressed_request_bodies():
    body = json.dumps(ADD_SUB).encode()
    async with gateway() as gw, replica(app, "r1", gw.url), httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        await until(lambda: "add_sub" in gw.service.catalog.models())
        for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
            answer = await http.post("/v2/models/add_sub/infer", content=packed, headers={"Content-Encoding": encoding})
            assert answer.status_code == 200, answer.text
            assert np.array(answer.json()["outputs"][1]["data"]).tolist() == [float(i - 1) for i in range(16)]
        broken = await http.post("/v2/models/add_sub/infer", content=b"not gzip", headers={"Content-Encoding": "gzip"})
        assert broken.status_code == 400 and "cannot be inflated" in broken.json()["error"]
        unknown = await http.post("/v2/models/add_sub/infer", content=body, headers={"Content-Encoding": "br"})
        assert unknown.status_code == 415 and set(unknown.json()) == {"error"}
        bomb = gzip.compress(b" " * (gw.router.runtime.settings.http_max_body + 10))
        too_big = await http.post("/v2/models/add_sub/infer", content=bomb, headers={"Content-Encoding": "gzip"})
        assert too_big.status_code == 413
