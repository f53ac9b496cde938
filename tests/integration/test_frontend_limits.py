"""Overload at the frontend is an explicit 429, and the slot frees when a client leaves."""

from __future__ import annotations

import asyncio

import httpx

from servemesh import DistributedRuntime, serve
from servemesh.gateway.openai import OpenAIFrontend
from servemesh.http import HttpServer
from servemesh.llm.engines.mock import MockEngine
from servemesh.llm.processor import PROCESSOR_PATH, Processor
from servemesh.llm.tokenizer import ByteTokenizer

BODY = {"model": "mock", "messages": [{"role": "user", "content": "x"}], "max_tokens": 200, "stream": True}


async def test_requests_over_the_limit_get_429_until_a_slot_frees():
    async with DistributedRuntime() as rt:
        tasks = [asyncio.create_task(serve(MockEngine, runtime=rt, model="mock", tokens_per_s=50)),
                 asyncio.create_task(serve(Processor, runtime=rt, tokenizer=ByteTokenizer("mock")))]
        await rt.wait_served(PROCESSOR_PATH)
        frontend = await OpenAIFrontend(rt, max_inflight=1).start()
        server = HttpServer(frontend.app, "127.0.0.1", 0)
        server.start()
        try:
            assert frontend.models() == ["mock"]
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                async with http.stream("POST", "/v1/chat/completions", json=BODY) as first:
                    assert first.status_code == 200
                    await first.aiter_lines().__anext__()  # streaming: the one slot is taken
                    over = await http.post("/v1/chat/completions", json=BODY, headers={"X-Request-Id": "r-429"})
                    assert over.status_code == 429
                    assert over.json()["error"]["code"] == "overloaded"
                    assert over.headers["retry-after"] == "1" and over.headers["x-request-id"] == "r-429"
                    assert (await http.get("/ready")).status_code == 200  # probes are never refused
                async with asyncio.timeout(5):  # the client left: its slot frees
                    while frontend.inflight:
                        await asyncio.sleep(0.02)
                ok = await http.post("/v1/chat/completions", json={**BODY, "stream": False, "max_tokens": 3})
                assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3
        finally:
            await server.stop()
            await frontend.close()
            rt.request_shutdown()
            await asyncio.gather(*tasks)
