"""The OpenAI frontend's stream relays what is ready together in one send, one chunk
per token, and never holds the first token back (the ASGI app driven directly, so
each ``send`` is seen; the pipeline in one runtime, its hops in process)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from servemesh import Context, DistributedRuntime, serve, service
from servemesh.gateway.kit import event
from servemesh.gateway.openai import Chunks, OpenAIFrontend
from servemesh.llm.engines.mock import MOCK_TEXT, MockEngine
from servemesh.llm.processor import ENGINE_PATH, PROCESSOR_PATH, Processor
from servemesh.llm.protocol import EngineOutput, EngineRequest
from servemesh.llm.text import IncrementalDetokenizer
from servemesh.llm.tokenizer import ByteTokenizer
from servemesh.sdk import endpoint

GATE = asyncio.Event()


@service(name="engine", namespace="inference", capabilities={"model": "gated"})
class GatedEngine:
    """One token, then the rest only once the test opens ``GATE``."""

    @endpoint()
    async def generate(self, request: EngineRequest, context: Context) -> AsyncIterator[EngineOutput]:
        yield EngineOutput(token_ids=[ord("a")])
        await GATE.wait()
        for t in b"bcd":
            yield EngineOutput(token_ids=[t])
        yield EngineOutput(finish_reason="length")


class AsgiCall:
    """One request to an ASGI app, recording each ``send``."""

    def __init__(self, app: Any, path: str, body: dict[str, Any]) -> None:
        self.app = app
        raw = json.dumps(body).encode()
        self.scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                      "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
                      "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
                      "server": ("127.0.0.1", 80),
                      "headers": [(b"content-type", b"application/json"),
                                  (b"content-length", str(len(raw)).encode())]}
        self.messages = [{"type": "http.request", "body": raw, "more_body": False}]
        self.bodies: list[bytes] = []
        self.status = 0
        self.sent = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        if self.messages:
            return self.messages.pop(0)
        await asyncio.Event().wait()  # the client stays
        raise AssertionError("unreachable")

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message.get("body"):
            self.bodies.append(message["body"])
            self.sent.set()

    async def run(self) -> None:
        await self.app(self.scope, self.receive, self.send)

    def events(self) -> list[dict[str, Any]]:
        text = b"".join(self.bodies).decode()
        return [json.loads(f[6:]) for f in text.split("\n\n") if f.startswith("data: {")]


def contents(events: list[dict[str, Any]]) -> list[str]:
    return [e["choices"][0]["delta"]["content"] for e in events
            if e.get("choices") and e["choices"][0]["delta"].get("content")]


async def pipeline(engine: type, model: str) -> tuple[DistributedRuntime, OpenAIFrontend, list[asyncio.Task[None]]]:
    runtime = await DistributedRuntime().start()
    tasks = [asyncio.create_task(serve(engine, runtime=runtime, **({"model": model} if engine is MockEngine
                                                                   else {}))),
             asyncio.create_task(serve(Processor, runtime=runtime, tokenizer=ByteTokenizer(model)))]
    await runtime.wait_served(ENGINE_PATH)
    await runtime.wait_served(PROCESSOR_PATH)
    return runtime, await OpenAIFrontend(runtime).start(), tasks


async def close(runtime: DistributedRuntime, front: OpenAIFrontend, tasks: list[asyncio.Task[None]]) -> None:
    await front.close()
    runtime.request_shutdown()
    await asyncio.gather(*tasks)
    await runtime.shutdown()


async def test_tokens_ready_together_go_out_in_one_send_one_chunk_per_token() -> None:
    runtime, front, tasks = await pipeline(MockEngine, "m")
    try:
        call = AsgiCall(front.kit.asgi, "/v1/chat/completions", {
            "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100, "stream": True,
            "stream_options": {"include_usage": True}})
        await call.run()
        assert call.status == 200
        events = call.events()
        # one chunk per token that completed a character, exactly as detokenized one by one
        detok = IncrementalDetokenizer(ByteTokenizer("m").token_bytes)
        pieces = [p for p in (detok.push([t]) for t in (MOCK_TEXT.encode() * 2)[:100]) if p]
        tail = detok.flush()
        assert contents(events) == pieces + ([tail] if tail else [])
        assert events[-1]["usage"]["completion_tokens"] == 100
        assert b"".join(call.bodies).endswith(b"data: [DONE]\n\n")
        # written together: a few sends, not one per token
        assert len(call.bodies) <= 6, len(call.bodies)
        # every chunk is byte for byte what the generic encoder makes of the same object
        for frame in b"".join(call.bodies).split(b"\n\n"):
            if frame.startswith(b"data: {"):
                assert frame + b"\n\n" == event(msgspec.json.decode(frame[6:]))
    finally:
        await close(runtime, front, tasks)


async def test_the_first_token_goes_out_before_the_next_is_ready() -> None:
    GATE.clear()
    runtime, front, tasks = await pipeline(GatedEngine, "gated")
    try:
        call = AsgiCall(front.kit.asgi, "/v1/chat/completions", {
            "model": "gated", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True})
        running = asyncio.create_task(call.run())
        await asyncio.wait_for(call.sent.wait(), 10)
        assert contents(call.events()) == ["a"]  # sent while the engine waits for the gate
        GATE.set()
        await asyncio.wait_for(running, 10)
        assert contents(call.events()) == ["a", "b", "c", "d"]
    finally:
        GATE.set()
        await close(runtime, front, tasks)


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_a_token_chunk_is_what_the_encoder_makes_of_the_whole_chunk(kind: str) -> None:
    chunks = Chunks(kind, "chatcmpl-1", 'model "q" \\ 東京')
    for text in ['"quoted"', "back\\slash", "tab\tnew\nline\x00\x1f", "東京 😀", "</script>", "\u2028", ""]:
        assert chunks.token(text) == chunks.chunk(text, None)


async def test_the_raw_routes_refuse_bad_bodies_as_the_fastapi_routes_do() -> None:
    """The server takes the raw routes; the FastAPI app (the same code under FastAPI's
    layers, documented in OpenAPI) must answer every bad body alike (a JSON syntax error
    is worded by each parser, with the same status and code)."""
    import httpx

    runtime, front, tasks = await pipeline(MockEngine, "m")
    ok_body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    cases = [
        (b"{nope", "application/json"),
        (b"[1, 2]", "application/json"),
        (b"", "application/json"),
        (json.dumps(ok_body).encode(), "text/plain"),
        (json.dumps(ok_body).encode(), "application/vnd.api+json"),
        (json.dumps({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}).encode(), "application/json"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}', "application/json"),
        (json.dumps({**ok_body, "max_tokens": -1}).encode(), "application/json"),
        (json.dumps({**ok_body, "n": 2}).encode(), "application/json"),
    ]
    try:
        raw = httpx.AsyncClient(transport=httpx.ASGITransport(app=front.kit.asgi), base_url="http://t")
        app = httpx.AsyncClient(transport=httpx.ASGITransport(app=front.app), base_url="http://t")
        async with raw, app:
            for body, content_type in cases:
                for path in ("/v1/chat/completions", "/v1/completions"):
                    headers = {"content-type": content_type}
                    a = await raw.post(path, content=body, headers=headers)
                    b = await app.post(path, content=body, headers=headers)
                    if a.status_code == 200:  # (a JSON media type of its own is JSON)
                        assert b.status_code == 200
                        continue
                    ea, eb = a.json()["error"], b.json()["error"]
                    assert (a.status_code, ea["code"]) == (b.status_code, eb["code"]), (body, content_type, path)
                    if ea["code"] != "json_invalid":  # (the parsers word a syntax error differently)
                        assert ea == eb, (body, content_type, path)
            answered = await raw.post("/v1/chat/completions", json=ok_body)
            assert answered.status_code == 200 and answered.json()["usage"]["completion_tokens"] == 3
    finally:
        await close(runtime, front, tasks)


class SlowClient(AsgiCall):
    """A client that reads slowly: each write of the body waits (the socket's buffer is full)."""

    async def send(self, message: dict[str, Any]) -> None:
        await super().send(message)
        if message.get("body"):
            await asyncio.sleep(1.0)


async def test_a_deadline_while_the_write_waits_ends_the_stream_with_its_error() -> None:
    """The relay has handed a batch over and waits on the client's socket while the next
    read is started; the deadline passes then: the client gets the deadline's error event
    (not a stream cut without one), and the app returns normally."""
    GATE.clear()
    runtime, _, tasks = await pipeline(GatedEngine, "gated")
    front = await OpenAIFrontend(runtime, request_timeout=0.2).start()
    try:
        call = SlowClient(front.kit.asgi, "/v1/chat/completions", {
            "model": "gated", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True})
        await asyncio.wait_for(call.run(), 10)
        assert call.status == 200
        body = b"".join(call.bodies)
        assert contents(call.events()) == ["a"]
        assert body.endswith(b"\n\n") and b'"code":"deadline_exceeded"' in body
        assert not body.endswith(b"data: [DONE]\n\n")
    finally:
        GATE.set()
        await close(runtime, front, tasks)
