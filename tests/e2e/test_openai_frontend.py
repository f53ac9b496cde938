"""The OpenAI-compatible frontend, driven by the official `openai` client, over real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import httpx
import openai
import pytest

from servemesh import DistributedRuntime
from servemesh.llm.engines.mock import MOCK_TEXT
from servemesh.testing import free_port, wait_http_ok

ROOT = Path(__file__).resolve().parents[2]
LLM = ROOT / "examples" / "llm"


def wait_ready(url: str, proc, timeout: float = 60) -> None:
    """Ready = the frontend lists at least one model (a processor is up, and it registers
    only once it sees an engine)."""
    wait_http_ok(f"{url}/ready", timeout, proc)


@pytest.fixture(scope="module")
def mock_pipeline(tmp_path_factory):
    """The embedded pipeline with the mock engine, as `python3 examples/llm/pipeline.py --engine mock`."""
    import subprocess

    port = free_port()
    log = open(tmp_path_factory.mktemp("pipeline") / "pipeline.log", "wb")
    env = dict(os.environ, PYTHONUNBUFFERED="1", SERVEMESH_INSTANCE_WAIT="1")
    proc = subprocess.Popen([sys.executable, str(LLM / "pipeline.py"), "--engine", "mock", "--port", str(port),
                             "--context-length", "4096"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)


def test_models_list(mock_pipeline):
    models = client(mock_pipeline).models.list()
    assert [m.id for m in models.data] == ["mock"]


def test_chat_non_streaming_with_usage(mock_pipeline):
    resp = client(mock_pipeline).chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "hi"}], max_tokens=20)
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello from the mock "
    assert choice.finish_reason == "length"
    assert resp.usage.completion_tokens == 20
    assert resp.usage.prompt_tokens == len(b"<|user|>\nhi\n<|assistant|>\n") + 1
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 20


def test_chat_streaming_multibyte_and_usage(mock_pipeline):
    stream = client(mock_pipeline).chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "hi"}], max_tokens=60, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == MOCK_TEXT[: len(text)]
    assert "\ufffd" not in text and "東京" in text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 60


def test_stop_strings_and_completions(mock_pipeline):
    c = client(mock_pipeline)
    resp = c.chat.completions.create(model="mock", messages=[{"role": "user", "content": "x"}],
                                     max_tokens=100, stop=["mock eng"])
    assert resp.choices[0].message.content == "Hello from the "
    assert resp.choices[0].finish_reason == "stop"
    comp = c.completions.create(model="mock", prompt="Say hello", max_tokens=5)
    assert comp.choices[0].text == "Hello" and comp.usage.completion_tokens == 5
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="mock", prompt="x", max_tokens=10, stream=True) if ch.choices)
    assert streamed == "Hello from"


def test_errors_have_openai_shape(mock_pipeline):
    c = client(mock_pipeline)
    with pytest.raises(openai.NotFoundError) as nf:
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert nf.value.status_code == 404 and nf.value.body["code"] == "model_not_found"
    assert nf.value.body["message"].endswith("available: mock") and nf.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as bad:
        c.chat.completions.create(model="mock", messages=[{"role": "wizard", "content": "x"}])
    assert "messages.0.role" in bad.value.body["param"]
    with pytest.raises(openai.BadRequestError) as neg:
        c.chat.completions.create(model="mock", messages=[{"role": "user", "content": "x"}], max_tokens=-1)
    assert neg.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="mock", messages=[{"role": "user", "content": "x"}], n=2)
    raw = httpx.post(f"{mock_pipeline}/v1/chat/completions", content=b"{not json",
                     headers={"Content-Type": "application/json"})
    assert raw.status_code == 400 and "not valid JSON" in raw.json()["error"]["message"]
    missing = httpx.post(f"{mock_pipeline}/v1/chat/completions", json={"model": "mock"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"


def test_health_metrics_and_openapi(mock_pipeline):
    assert httpx.get(f"{mock_pipeline}/health").json()["models"] == ["mock"]
    assert httpx.get(f"{mock_pipeline}/ready").json() == {"ready": True, "models": ["mock"]}
    metrics = httpx.get(f"{mock_pipeline}/metrics").text
    assert 'servemesh_http_requests_total{route="/v1/chat/completions",status="200"}' in metrics
    assert 'servemesh_http_request_duration_seconds_count{route="/v1/chat/completions"}' in metrics
    assert "servemesh_http_inflight" in metrics and "servemesh_http_time_to_first_token_seconds" in metrics
    assert 'servemesh_requests_total{endpoint="inference.processor.process"' in metrics
    spec = httpx.get(f"{mock_pipeline}/openapi.json").json()
    assert "/v1/chat/completions" in spec["paths"]


def test_request_ids_are_echoed_on_every_response(mock_pipeline):
    body = {"model": "mock", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3}
    ok = httpx.post(f"{mock_pipeline}/v1/chat/completions", json=body, headers={"X-Request-Id": "req-42"})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "req-42"
    bad = httpx.post(f"{mock_pipeline}/v1/chat/completions", json={"model": "mock"},
                     headers={"X-Request-Id": "req-43"})
    assert bad.status_code == 400 and bad.headers["x-request-id"] == "req-43"
    with httpx.stream("POST", f"{mock_pipeline}/v1/chat/completions", json={**body, "stream": True},
                      headers={"X-Request-Id": "req-44"}) as streamed:
        assert streamed.headers["x-request-id"] == "req-44"
        assert list(streamed.iter_lines())[-2] == "data: [DONE]"
    made = httpx.get(f"{mock_pipeline}/v1/models").headers["x-request-id"]
    assert made and made != httpx.get(f"{mock_pipeline}/v1/models").headers["x-request-id"]


async def _engine_stats(rt: DistributedRuntime) -> list[dict]:
    stats = await rt.endpoint("inference.engine.stats").client()
    await stats.wait_for_instances(30)
    out = []
    for iid in stats.instance_ids():
        out += [i.data() async for i in stats.direct({}, iid)]
    return out


def _env(etcd) -> dict[str, str]:
    return {"SERVEMESH_ETCD": etcd.url, "SERVEMESH_LEASE_TTL": "3"}


async def test_client_disconnect_stops_the_engine(spawn, etcd):
    env = _env(etcd)
    spawn(LLM / "engine.py", "--engine", "mock", "--model", "slow", "--tokens-per-s", "50", env=env, name="engine")
    spawn(LLM / "processor.py", "--engine", "mock", "--model", "slow", env=env, name="processor")
    port = free_port()
    front = spawn(LLM / "frontend.py", "--port", str(port), env=env, name="frontend")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, front)
    async with DistributedRuntime(etcd=etcd.url) as rt:
        body = {"model": "slow", "messages": [{"role": "user", "content": "x"}], "max_tokens": 500, "stream": True}
        async with httpx.AsyncClient(timeout=30) as http, http.stream(
                "POST", f"{url}/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            got = 0
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    got += 1
                if got == 5:
                    break  # hang up mid-stream
        async with asyncio.timeout(10):
            while True:
                (stats,) = await _engine_stats(rt)
                if stats["cancelled"] == 1 and stats["generating"] == 0:
                    break
                await asyncio.sleep(0.1)


def test_models_follow_processors_and_a_lost_engine_is_a_503(spawn, etcd):
    env = {**_env(etcd), "SERVEMESH_INSTANCE_WAIT": "1"}
    spawn(LLM / "processor.py", "--engine", "mock", "--model", "orphan", env=env, name="processor")
    port = free_port()
    front = spawn(LLM / "frontend.py", "--port", str(port), env=env, name="frontend")
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/live", 60, front)
    # no engine: the processor waits for one and does not register, so nothing is listed
    assert httpx.get(f"{url}/ready").status_code == 503
    assert client(url).models.list().data == []
    with pytest.raises(openai.NotFoundError) as unknown:  # after the instance grace: never seen
        client(url).chat.completions.create(model="orphan", messages=[{"role": "user", "content": "x"}])
    assert unknown.value.body["code"] == "model_not_found"

    engine = spawn(LLM / "engine.py", "--engine", "mock", "--model", "orphan", env=env, name="engine")
    wait_ready(url, front)  # the processor registered once it saw the engine
    assert [m.id for m in client(url).models.list().data] == ["orphan"]
    resp = client(url).chat.completions.create(model="orphan", messages=[{"role": "user", "content": "x"}],
                                               max_tokens=5)
    assert resp.choices[0].message.content == "Hello"

    engine.terminate()  # graceful: its registration leaves etcd before it exits
    assert engine.wait(20) == 0
    assert etcd.etcdctl("get", "--prefix", "--keys-only", "instances/inference/engine/").strip() == ""
    # the processor's engine call finds none (after its grace) and raises NoInstancesError,
    # which keeps its class across the hop to the frontend: a 503, not a 500
    with pytest.raises(openai.APIStatusError) as err:
        client(url).chat.completions.create(model="orphan", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 503
    assert err.value.body["type"] == "service_unavailable"


async def test_kill_9_engine_behind_router_mid_traffic(spawn, etcd):
    env = _env(etcd)
    engines = [spawn(LLM / "engine.py", "--engine", "mock", "--model", "m", "--tokens-per-s", "100", env=env,
                     name="engine") for _ in range(2)]
    spawn(LLM / "router.py", "--model", "m", "--policy", "round_robin", env=env, name="router")
    spawn(LLM / "processor.py", "--engine", "mock", "--model", "m", "--via-router", env=env, name="processor")
    port = free_port()
    front = spawn(LLM / "frontend.py", "--port", str(port), env=env, name="frontend")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, front)
    async with DistributedRuntime(etcd=etcd.url) as rt:
        router = await rt.endpoint("inference.router.generate").client()
        await router.wait_for_instances(30)
        engine_client = await rt.endpoint("inference.engine.generate").client()
        async with asyncio.timeout(30):
            while len(engine_client.instance_ids()) < 2:
                await asyncio.sleep(0.1)
        aclient = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)

        async def one(i: int) -> str:
            try:
                text = ""
                stream = await aclient.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": str(i)}], max_tokens=150, stream=True)
                async for chunk in stream:
                    if chunk.choices:
                        text += chunk.choices[0].delta.content or ""
                return "ok" if len(text.encode()) >= 140 else f"short:{len(text)}"
            except openai.APIError as exc:
                return f"error:{exc}"

        traffic = [asyncio.create_task(one(i)) for i in range(6)]
        await asyncio.sleep(0.5)  # every stream is mid-way
        os.kill(engines[0].pid, signal.SIGKILL)
        results = await asyncio.gather(*traffic)
        errors = [r for r in results if r.startswith("error:")]
        assert errors, results                          # the streams on the dead engine failed visibly ...
        assert all(r == "ok" or r.startswith("error:") for r in results), results  # ... never silently short
        assert "StreamIncomplete" in errors[0] or "stream" in errors[0].lower()
        for i in range(4):                              # later requests succeed on the survivor
            assert await one(100 + i) == "ok"
        async with asyncio.timeout(30):                 # the dead engine's lease (3 s) runs out
            while len(engine_client.instance_ids()) > 1:
                await asyncio.sleep(0.1)
        restarted = spawn(LLM / "engine.py", "--engine", "mock", "--model", "m", "--tokens-per-s", "100", env=env,
                          name="engine")
        async with asyncio.timeout(30):
            while len(engine_client.instance_ids()) < 2:
                await asyncio.sleep(0.1)
        assert all(r == "ok" for r in await asyncio.gather(*(one(200 + i) for i in range(4))))
        served = {s["served"] for s in await _engine_stats(rt)}
        assert len(await _engine_stats(rt)) == 2 and min(served) >= 1  # the restarted engine is used again
        assert restarted.poll() is None


def post_raw(url: str, body: dict, **kwargs) -> httpx.Response:
    """POST ``body`` as ASCII JSON (escapes kept: a lone surrogate arrives as ``\\ud800``)."""
    return httpx.post(f"{url}/v1/chat/completions", content=json.dumps(body).encode(),
                      headers={"Content-Type": "application/json"}, timeout=30, **kwargs)


ONE = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(("extra", "param"), [
    ({"max_tokens": 10**7}, "max_tokens"),                 # above the model's context length
    ({"max_completion_tokens": 10**7}, "max_completion_tokens"),
    ({"max_tokens": 2**31}, "max_tokens"),                 # outside int32
    ({"seed": 2**64}, "seed"),                             # outside int64
    ({"stream": "yes"}, "stream"),                         # strict types: no coercion
    ({"max_tokens": "5"}, "max_tokens"),
    ({"max_tokens": 5.0}, "max_tokens"),
    ({"temperature": "0.5"}, "temperature"),
    ({"n": 2}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),         # OpenAI allows 4
    ({"stop": 5}, "stop"),
    ({"messages": ONE * 3000}, "messages"),
    ({"messages": [{"role": "user", "content": "a" * (3 * 1024 * 1024)}]}, "messages"),
    ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages.0.content"),  # lone surrogate
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]}, "messages.0.content"),
    ({"stop": "\ud800"}, "stop"),
    ({"model": "\ud800"}, "model"),
])
def test_requests_beyond_the_bounds_are_400s_naming_the_field(mock_pipeline, extra, param):
    response = post_raw(mock_pipeline, {"model": "mock", "messages": ONE, **extra})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error" and error["message"]


def test_a_17_mb_prompt_is_413_and_the_server_carries_on(mock_pipeline):
    response = post_raw(mock_pipeline, {"model": "mock", "messages": [{"role": "user", "content": "a" * 17_000_000}]})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    assert client(mock_pipeline).completions.create(model="mock", prompt="x", max_tokens=2).choices[0].text == "He"


def test_the_prompt_and_max_tokens_must_fit_the_context(mock_pipeline):
    # the mock engine's context (--context-length 4096) is known to the processor and the frontend
    over = post_raw(mock_pipeline, {"model": "mock", "messages": [{"role": "user", "content": "a" * 4000}],
                                    "max_tokens": 200})
    assert over.status_code == 400 and over.json()["error"]["param"] == "messages", over.text
    assert "4096" in over.json()["error"]["message"]
    fits = post_raw(mock_pipeline, {"model": "mock", "messages": [{"role": "user", "content": "a" * 3000}],
                                    "max_tokens": 5})
    assert fits.status_code == 200


def test_every_failure_has_the_openai_error_shape(mock_pipeline):
    def shaped(response: httpx.Response, status: int) -> None:
        assert response.status_code == status, response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    shaped(httpx.get(f"{mock_pipeline}/v1/nope"), 404)
    shaped(httpx.get(f"{mock_pipeline}/v1/chat/completions"), 405)
    shaped(httpx.post(f"{mock_pipeline}/v1/chat/completions", content=b"{", headers={
        "Content-Type": "application/json"}), 400)
    shaped(httpx.post(f"{mock_pipeline}/v1/chat/completions", content=b"\xff\xfe", headers={
        "Content-Type": "application/json"}), 400)
    shaped(post_raw(mock_pipeline, {"model": "mock", "messages": []}), 400)


def test_the_openapi_document_states_the_real_status_codes(mock_pipeline):
    spec = httpx.get(f"{mock_pipeline}/openapi.json").json()
    chat = spec["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "422" not in chat
    for status in ("200", "400", "404", "408", "413", "429", "500", "503"):
        assert status in chat, status
    ref = chat["400"]["content"]["application/json"]["schema"]["$ref"]
    error = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert error["required"] == ["error"]
    assert "422" not in spec["paths"]["/v1/models"]["get"]["responses"]


def test_a_lone_surrogate_is_a_400_and_other_streams_are_unaffected(mock_pipeline):
    with httpx.stream("POST", f"{mock_pipeline}/v1/chat/completions", timeout=30,
                      json={"model": "mock", "messages": ONE, "max_tokens": 300, "stream": True}) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("data: ")
        bad = post_raw(mock_pipeline, {"model": "mock", "messages": [{"role": "user", "content": "a\ud800b"}]})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages.0.content"
        rest = list(lines)
    assert rest[-2] == "data: [DONE]"


@pytest.fixture
def big_pipeline(tmp_path):
    """The embedded mock pipeline at full speed with a 1M-token context, behind an API key."""
    import subprocess

    port = free_port()
    log = open(tmp_path / "pipeline.log", "wb")
    env = dict(os.environ, PYTHONUNBUFFERED="1", SERVEMESH_DRAIN_TIMEOUT="3")
    proc = subprocess.Popen([sys.executable, str(LLM / "pipeline.py"), "--engine", "mock", "--port", str(port),
                             "--context-length", "1000000", "--api-key", "sk-big"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(20)


async def test_a_huge_non_streaming_request_does_not_freeze_the_embedded_pipeline(big_pipeline):
    url, proc = big_pipeline
    key = {"Authorization": "Bearer sk-big"}
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=key) as http:
        assert (await http.get("/v1/models", headers={"Authorization": "Bearer wrong"})).status_code == 401
        big = asyncio.create_task(http.post("/v1/completions", json={
            "model": "mock", "prompt": "x", "max_tokens": 999_000}))
        async with asyncio.timeout(10):  # the health endpoint answers while the big one runs
            while (await http.get("/health")).json()["inflight"] == 0:
                await asyncio.sleep(0.05)
            small = await http.post("/v1/completions", json={"model": "mock", "prompt": "x", "max_tokens": 3})
        assert small.status_code == 200 and small.json()["choices"][0]["text"] == "Hel"
        assert not big.done(), "the big request ended before the small one: the test proves nothing"
        proc.send_signal(signal.SIGTERM)  # served at once, although the big request still runs
        assert await asyncio.to_thread(proc.wait, 30) == 0
        big.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await big


async def test_a_non_streaming_client_that_leaves_stops_the_engine(spawn, etcd):
    env = _env(etcd)
    spawn(LLM / "engine.py", "--engine", "mock", "--model", "slow", "--tokens-per-s", "50", env=env, name="engine")
    spawn(LLM / "processor.py", "--engine", "mock", "--model", "slow", env=env, name="processor")
    port = free_port()
    front = spawn(LLM / "frontend.py", "--port", str(port), env=env, name="frontend")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, front)
    async with DistributedRuntime(etcd=etcd.url) as rt:
        body = {"model": "slow", "messages": ONE, "max_tokens": 3000}  # one minute of tokens
        async with httpx.AsyncClient(timeout=120) as http:
            request = asyncio.create_task(http.post(f"{url}/v1/chat/completions", json=body))
            async with asyncio.timeout(10):
                while (await _engine_stats(rt))[0]["generating"] == 0:
                    await asyncio.sleep(0.05)
            request.cancel()  # hang up before the answer
            with contextlib.suppress(asyncio.CancelledError):
                await request
        async with asyncio.timeout(10):
            while True:
                (stats,) = await _engine_stats(rt)
                if stats["cancelled"] == 1 and stats["generating"] == 0:
                    break
                await asyncio.sleep(0.1)
        # a lone surrogate over the request plane: a 400, and a stream next to it carries on
        async with httpx.AsyncClient(timeout=60) as http, http.stream("POST", f"{url}/v1/chat/completions", json={
                "model": "slow", "messages": ONE, "max_tokens": 20, "stream": True}) as stream:
            lines = stream.aiter_lines()
            assert (await lines.__anext__()).startswith("data: ")
            bad = await asyncio.to_thread(post_raw, url, {"model": "slow", "messages": [
                {"role": "user", "content": "\ud800"}]})
            assert bad.status_code == 400, bad.text
            assert [line async for line in lines][-2] == "data: [DONE]"
