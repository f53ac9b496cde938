"""The gateway kit over an in-memory ASGI transport: error mapping, request ids,
admission control, health and metrics (no sockets)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel

from servemesh import DistributedRuntime
from servemesh.errors import (
    Cancelled,
    ConfigError,
    DeadlineExceeded,
    InstanceUnavailable,
    NoInstancesError,
    Overloaded,
    RemoteError,
    SerializationError,
    ServemeshError,
    StreamIncomplete,
    ValidationError,
)
from servemesh.gateway.kit import DONE, ApiError, GatewayKit, describe, event, event_stream, status_of
from servemesh.gateway.openai import openai_error


@pytest.mark.parametrize(("exc", "status"), [
    (ValidationError("bad", field="max_tokens"), 400),
    (SerializationError("cannot encode"), 400),
    (Overloaded("ns.c.e", 4), 429),
    (NoInstancesError("ns.c.e"), 503),
    (InstanceUnavailable(1, "127.0.0.1:1", "refused"), 503),
    (StreamIncomplete("ns.c.e", 1, 3, "connection lost"), 502),
    (DeadlineExceeded("late"), 504),
    (Cancelled("gone"), 499),
    (RemoteError("KeyError", "'x'"), 500),
    (ConfigError("nope"), 500),
    (ServemeshError("other"), 500),
    (RuntimeError("not ours"), 500),
    (ApiError(404, "no such model", code="model_not_found"), 404),
])
def test_status_of_each_error(exc, status):
    assert status_of(exc) == status


def test_the_mapping_is_by_class_never_by_name():
    # a remote handler's own exception named like a servemesh error is still a plain 500
    assert status_of(RemoteError("NoInstancesError", "no live instances")) == 500

    class Narrower(NoInstancesError):
        pass

    assert status_of(Narrower("ns.c.e")) == 503


def test_describe_carries_param_retry_after_and_hides_foreign_messages():
    problem = describe(ValidationError("must be positive", field="max_tokens"))
    assert (problem.param, problem.code, problem.type) == ("max_tokens", "invalid_value", "invalid_request_error")
    overloaded = describe(Overloaded("ns.c.e", 4))
    assert overloaded.headers() == {"Retry-After": "1"} and "limit of 4" in overloaded.message
    assert describe(RuntimeError("secret path /etc/x")).message == "internal error"
    assert describe(NoInstancesError("ns.c.e")).headers() == {}


def test_sse_frames():
    assert event({"a": "東京", "b": [1, None]}) == 'data: {"a":"東京","b":[1,null]}\n\n'.encode()
    assert DONE == b"data: [DONE]\n\n"


class Body(BaseModel):
    n: int


def make_app(rt: DistributedRuntime, gate: asyncio.Event | None = None, **options) -> tuple[GatewayKit, FastAPI]:
    state = {"ready": False}
    kit = GatewayKit(rt, "test", shape=openai_error, ready=lambda: state["ready"],
                     info=lambda: {"models": ["m"] if state["ready"] else []}, **options)
    app = FastAPI()
    app.state.flags = state

    @app.get("/ctx")
    async def ctx(request: Request) -> dict[str, str]:
        return {"id": kit.context(request).id}

    @app.post("/echo")
    async def echo(body: Body) -> dict[str, int]:
        return {"n": body.n}

    @app.get("/raise/{kind}")
    async def fail(kind: str) -> None:
        raise {"overloaded": Overloaded("ns.c.e", 2), "none": NoInstancesError("ns.c.e"),
               "remote": RemoteError("KeyError", "'x'"), "api": ApiError(404, "no such thing", code="nf"),
               "bug": ZeroDivisionError("division by zero")}[kind]

    @app.get("/wait")
    async def wait() -> dict[str, bool]:
        assert gate is not None
        await gate.wait()
        return {"ok": True}

    @app.get("/stream")
    async def stream(request: Request):
        async def frames():
            yield event({"i": 0})
            yield kit.sse_error(StreamIncomplete("ns.c.e", 1, 1, "cut"))

        return event_stream(frames())

    return kit, kit.install(app)


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app, raise_app_exceptions=False), base_url="http://t")


async def test_errors_render_in_the_surface_shape_with_the_request_id():
    async with DistributedRuntime() as rt:
        _, app = make_app(rt)
        async with client(app) as http:
            over = await http.get("/raise/overloaded", headers={"X-Request-Id": "req-1"})
            assert over.status_code == 429 and over.headers["retry-after"] == "1"
            assert over.headers["x-request-id"] == "req-1"
            assert over.json()["error"]["code"] == "overloaded" and over.json()["error"]["type"] == "rate_limit_error"
            assert (await http.get("/raise/none")).status_code == 503
            assert (await http.get("/raise/remote")).json()["error"]["code"] == "remote_error"
            api = await http.get("/raise/api")
            assert api.status_code == 404 and api.json()["error"] == {
                "message": "no such thing", "type": "invalid_request_error", "param": None, "code": "nf"}
            bug = await http.get("/raise/bug")
            assert bug.status_code == 500 and bug.json()["error"]["message"] == "internal error"
            assert bug.headers["x-request-id"]
            missing = await http.get("/no/such/route")
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
            assert missing.headers["x-request-id"]


async def test_request_validation_errors_are_400_in_shape():
    async with DistributedRuntime() as rt:
        _, app = make_app(rt)
        async with client(app) as http:
            bad = await http.post("/echo", json={"n": "many"})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "n"
            assert bad.json()["error"]["message"].startswith("n: ")
            broken = await http.post("/echo", content=b"{nope", headers={"Content-Type": "application/json"})
            assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]
            assert (await http.post("/echo", json={"n": 3})).json() == {"n": 3}


async def test_request_ids_are_taken_or_made_and_reach_the_context():
    async with DistributedRuntime() as rt:
        _, app = make_app(rt)
        async with client(app) as http:
            given = await http.get("/ctx", headers={"X-Request-Id": "abc-123"})
            assert given.json() == {"id": "abc-123"} and given.headers["x-request-id"] == "abc-123"
            made = await http.get("/ctx")
            assert made.json()["id"] == made.headers["x-request-id"] and len(made.json()["id"]) >= 16
            hostile = await http.get("/ctx", headers={"X-Request-Id": "x" * 500})
            assert hostile.headers["x-request-id"] != "x" * 500
            stream = await http.get("/stream", headers={"X-Request-Id": "s-1"})
            assert stream.headers["x-request-id"] == "s-1"
            assert stream.headers["content-type"].startswith("text/event-stream")
            frames = stream.text.split("\n\n")
            assert frames[0] == 'data: {"i":0}'
            assert '"code":"stream_incomplete"' in frames[1]


async def test_admission_control_refuses_beyond_the_limit_but_never_the_probes():
    gate = asyncio.Event()
    async with DistributedRuntime() as rt:
        kit, app = make_app(rt, gate, max_inflight=1)
        async with client(app) as http:
            waiting = asyncio.create_task(http.get("/wait"))
            async with asyncio.timeout(5):
                while kit.inflight == 0:
                    await asyncio.sleep(0)  # let the first request reach its handler
            over = await http.get("/ctx", headers={"X-Request-Id": "late"})
            assert over.status_code == 429 and over.headers["retry-after"] == "1"
            assert over.headers["x-request-id"] == "late" and over.json()["error"]["code"] == "overloaded"
            assert (await http.get("/live")).status_code == 200
            assert (await http.get("/metrics")).status_code == 200
            gate.set()
            assert (await waiting).json() == {"ok": True}
            assert kit.inflight == 0
            assert (await http.get("/ctx")).status_code == 200
            metrics = (await http.get("/metrics")).text
            assert 'servemesh_http_requests_total{route="/ctx",status="429"} 1.0' in metrics


async def test_health_live_ready_follow_the_surface():
    async with DistributedRuntime() as rt:
        _, app = make_app(rt)
        async with client(app) as http:
            assert (await http.get("/live")).json() == {"status": "alive"}
            not_ready = await http.get("/ready")
            assert not_ready.status_code == 503 and not_ready.json() == {"ready": False, "models": []}
            app.state.flags["ready"] = True
            assert (await http.get("/ready")).json() == {"ready": True, "models": ["m"]}
            health = (await http.get("/health")).json()
            assert health == {"status": "ok", "gateway": "test", "inflight": 0, "models": ["m"]}


async def test_metrics_per_route_and_status_one_registry_per_gateway():
    async with DistributedRuntime() as rt:
        _, app = make_app(rt)
        _, other = make_app(rt)  # a second gateway in the same process: its own registry
        async with client(app) as http, client(other) as http2:
            await http.get("/ctx")
            await http.get("/raise/overloaded")
            await http2.get("/ctx")
            text = (await http.get("/metrics")).text
        assert 'servemesh_http_requests_total{route="/ctx",status="200"} 1.0' in text
        assert 'servemesh_http_requests_total{route="/raise/{kind}",status="429"} 1.0' in text
        assert 'servemesh_http_request_duration_seconds_count{route="/ctx"} 1.0' in text
        assert "servemesh_http_inflight 0.0" in text  # probes and scrapes are not admitted work
        assert "# TYPE servemesh_requests_total counter" in text  # the runtime's own metrics follow


def test_max_inflight_must_be_positive():
    with pytest.raises(ConfigError, match="at least 1"):
        GatewayKit(DistributedRuntime(), "x", max_inflight=0)
