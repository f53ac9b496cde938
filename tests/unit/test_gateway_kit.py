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


def test_clients_never_see_internal_addresses_or_instance_ids_unless_debugging():
    internal = [
        NoInstancesError("inference.engine.generate", known=["inference.processor.process"]),
        InstanceUnavailable(0xDEADBEEF, "10.1.2.3:4567", "refused"),
        StreamIncomplete("inference.engine.generate", 0xDEADBEEF, 3, "connection to 10.1.2.3:4567 lost"),
        RemoteError("KeyError", "'/srv/secret/path'", "inference.processor.process"),
    ]
    for exc in internal:
        public = describe(exc).message
        for leak in ("10.1.2.3", "deadbeef", "inference.", "/srv/secret"):
            assert leak not in public, (exc, public)
        assert describe(exc).status == status_of(exc)
        assert describe(exc, debug=True).message == str(exc)
    named = describe(NoInstancesError("a.b.c"), subject="model 'm'")
    assert named.message == "no live replica for model 'm'; retry later"
    bad = describe(ValidationError("must be at most 8", field="max_tokens", endpoint="inference.engine.generate"))
    assert bad.message == "max_tokens: must be at most 8" and bad.param == "max_tokens"


async def test_unknown_routes_and_wrong_methods_are_in_shape():
    async with DistributedRuntime() as rt:
        _, app = make_app(rt)
        async with client(app) as http:
            wrong = await http.delete("/echo")
            assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
            assert wrong.headers["allow"]


async def test_the_openapi_document_has_the_real_status_codes_and_the_error_shape():
    async with DistributedRuntime(api_key="k") as rt:
        _, app = make_app(rt)
        spec = app.openapi()
    echo = spec["paths"]["/echo"]["post"]["responses"]
    assert "422" not in echo
    assert {"200", "400", "401", "404", "408", "413", "429", "500", "503"} <= set(echo)
    assert "408" not in spec["paths"]["/ctx"]["get"]["responses"]  # no body, no body limits
    ref = echo["401"]["content"]["application/json"]["schema"]["$ref"]
    assert spec["components"]["schemas"][ref.rsplit("/", 1)[1]]["required"] == ["error"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_api_keys_are_compared_against_every_key_in_constant_time(monkeypatch):
    from servemesh.http import auth

    keys = auth.ApiKeys(["first", "second", "third"])
    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    for presented, expected in [(b"Bearer first", True), (b"Bearer third", True), (b"Bearer nope", False),
                                (b"bearer second", True), (None, False), (b"Basic first", False), (b"first", False)]:
        calls.clear()
        assert keys.check(presented) is expected, presented
        assert len(calls) == 3, presented  # no early exit: the first key matching costs as much as none
        assert len({len(a) for a, _ in calls} | {len(b) for _, b in calls}) == 1  # digests: one length
    assert not auth.ApiKeys([]).enabled and auth.ApiKeys(["x"]).enabled


def test_api_keys_from_settings(tmp_path):
    from servemesh.config import Settings
    from servemesh.http.auth import ApiKeys

    path = tmp_path / "keys"
    path.write_text("# comment\nfrom-file\n\n")
    keys = ApiKeys.from_settings(Settings(api_key=" a , b ", api_key_file=str(path)))
    assert len(keys) == 3 and keys.check(b"Bearer b") and keys.check(b"Bearer from-file")
    assert not ApiKeys.from_settings(Settings()).enabled
    with pytest.raises(ConfigError):
        ApiKeys.from_settings(Settings(api_key=" , "))


# -- what the capability surface added -------------------------------------------------------------
def test_capability_errors_have_their_statuses_and_details():
    from servemesh.errors import CapabilityNotFound, DelegationRefused, RegistrationConflict

    missing = describe(CapabilityNotFound({"type": "x"}, [{"type": "chat"}]))
    assert missing.status == 404 and missing.code == "capability_not_found"
    assert missing.details == {"capability": {"type": "x"}, "available": [{"type": "chat"}]}
    assert "type=x" in missing.message and "type=chat" in missing.message
    loop = describe(DelegationRefused("loop", ["a", "b"], 4))
    assert loop.status == 508 and loop.details == {"chain": ["a", "b"], "reason": "loop"}
    assert describe(RegistrationConflict("r", "h:2", "h:1")).status == 409
    body = missing.body(lambda status, message, type, code, param: {"error": message, "code": code})
    assert body["available"] == [{"type": "chat"}] and body["code"] == "capability_not_found"


def test_handler_errors_are_shown_only_where_the_surface_asks():
    exc = RemoteError("KeyError", "'x'", "capability.replica.infer")
    assert describe(exc).message == "internal error"
    shown = describe(exc, handler_errors=True)
    assert shown.status == 500 and shown.message == "KeyError: 'x'" and shown.details == {"error_type": "KeyError"}
    assert "capability.replica" not in shown.message


async def test_raw_routes_run_under_the_kits_middleware():
    from servemesh.gateway.kit.raw import send_bytes

    async with DistributedRuntime(api_key="k", http_max_body=16) as rt:
        kit = GatewayKit(rt, "test", shape=openai_error, max_inflight=1)

        async def fast(scope, body, receive, send):
            if body == b"fail":
                kit.about_scope(scope, "the thing")
                raise NoInstancesError("ns.c.e")
            await send_bytes(send, 200, body[::-1])

        kit.install(FastAPI(), raw_routes={("POST", "/fast"): fast})
        async with httpx.AsyncClient(transport=httpx.ASGITransport(kit.asgi, raise_app_exceptions=False),
                                     base_url="http://t", headers={"Authorization": "Bearer k"}) as http:
            ok = await http.post("/fast", content=b"abc", headers={"X-Request-Id": "r-1"})
            assert ok.status_code == 200 and ok.content == b"cba" and ok.headers["x-request-id"] == "r-1"
            failed = await http.post("/fast", content=b"fail")
            assert failed.status_code == 503
            assert failed.json()["error"]["message"] == "no live replica for the thing; retry later"
            assert (await http.get("/fast")).status_code == 405
            assert (await http.post("/fast", content=b"x", headers={"Authorization": ""})).status_code == 401
            too_big = await http.post("/fast", content=b"x" * 17)
            assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
            kit.inflight = 1  # as if one request were in flight
            over = await http.post("/fast", content=b"x")
            assert over.status_code == 429 and over.headers["retry-after"] == "1" and over.headers["x-request-id"]
            kit.inflight = 0
            metrics = (await http.get("/metrics")).text
            assert 'servemesh_http_requests_total{route="/fast",status="200"} 1.0' in metrics
            assert 'servemesh_http_requests_total{route="/fast",status="503"} 1.0' in metrics


async def test_work_stops_when_the_client_leaves_and_a_fast_answer_needs_no_listener():
    from servemesh.errors import Cancelled
    from servemesh.gateway.kit.disconnect import unless_disconnected

    left = asyncio.Event()
    listening = asyncio.Event()

    async def receive() -> dict:
        listening.set()
        await left.wait()
        return {"type": "http.disconnect"}

    assert await unless_disconnected(receive, asyncio.sleep(0, "fast")) == "fast"
    assert not listening.is_set()  # answered before LISTEN_AFTER: no listener ran

    stopped = asyncio.Event()

    async def slow() -> str:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()
        return "never"

    async def leave_later() -> None:
        await listening.wait()
        left.set()

    leaving = asyncio.ensure_future(leave_later())
    with pytest.raises(Cancelled):
        await unless_disconnected(receive, slow())
    await leaving
    assert stopped.is_set() and asyncio.current_task().cancelling() == 0


async def test_work_that_answers_despite_the_disconnect_leaves_the_task_uncancelled():
    from servemesh.gateway.kit.disconnect import unless_disconnected

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    async def stubborn() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "answered anyway"
        return "never"

    assert await unless_disconnected(receive, stubborn()) == "answered anyway"
    assert asyncio.current_task().cancelling() == 0
    await asyncio.sleep(0)  # the task can still await: no cancellation is pending
