"""The capability API server and replicas over real sockets (in one process, each with its
own runtime): the seed's curl flow, routing, every error case, registrations and TTLs,
delegation, objects in tensors and the gRPC connector."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import httpx
import pytest

from servemesh.capability import App, ModelInferResponse
from servemesh.tensors.proto import grpc_predict_v2_pb2 as pb2

from .capability_apps import TEXT, api_server, replica, until


def reply(request, text: str, **extra: str) -> ModelInferResponse:
    response = ModelInferResponse(model_name=request.model_name, id=request.id)
    response.add_output(name="response", datatype="BYTES", shape=[1], bytes_contents=[text.encode()])
    for name, value in extra.items():
        response.add_output(name=name, datatype="BYTES", shape=[1], bytes_contents=[value.encode()])
    return response


def text_of(body: dict, name: str = "response") -> str:
    return next(o for o in body["outputs"] if o["name"] == name)["contents"]["bytes_contents"][0]


def make_app(tag: str = "") -> App:
    app = App()

    @app.capability(type="chat", model="demo")
    def chat(request, context):
        return reply(request, f"{tag}you said {request.inputs[0].bytes_contents[0].decode()}",
                     replica=context.replica_id)

    @app.capability(type="heavy", gpus=2)
    async def heavy(request, context):
        return reply(request, "heavy done", replica=context.replica_id)

    @app.capability(type="boom")
    def boom(request, context):
        raise KeyError("no such key")

    @app.capability(type="tokens", stream=True)
    def tokens(request, context, stream):
        for token in ("a", "b", "c"):
            message = pb2.ModelStreamInferResponse(infer_response=pb2.ModelInferResponse(model_name="t"))
            out = message.infer_response.outputs.add()
            out.name, out.datatype = "token", "BYTES"
            out.shape.append(1)
            out.contents.bytes_contents.append(token.encode())
            stream.send(message)

    @app.capability(type="early-fail", stream=True)
    def early_fail(request, context, stream):
        raise ValueError("failed before any token")

    @app.capability(type="late-fail", stream=True)
    async def late_fail(request, context, stream):
        await stream.send(reply(request, "first"))
        raise RuntimeError("failed after one token")

    return app


def sse(text: str) -> list[tuple[str, dict]]:
    """(event, data) of each SSE frame."""
    frames = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", ""
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        frames.append((name, json.loads(data)))
    return frames


async def test_the_seed_curl_flow():
    async with api_server() as (_, url), replica(make_app(), "replica-chat", url), \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        health = await http.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "healthy"
        registry = (await http.get("/registry")).json()
        assert registry["total"] == 1
        entry = registry["replicas"][0]
        assert entry["replica_id"] == "replica-chat" and entry["source"] == "http"
        assert {"type": "chat", "model": "demo"} in entry["capabilities"]
        assert set(entry) >= {"replica_id", "endpoint", "capabilities", "registered_at", "last_heartbeat"}

        answer = await http.post("/infer/json", headers={"X-Capability-Type": "chat"}, json=TEXT)
        assert answer.status_code == 200 and text_of(answer.json()) == "you said Hello"
        assert answer.headers["content-type"] == "application/json" and answer.headers["x-request-id"]
        both = await http.post("/infer/json", headers={"X-Capability-Type": "chat", "X-Capability-Model": "demo"},
                               json={**TEXT, "model_name": "chat", "id": "req-7"})
        assert both.json()["id"] == "req-7" and both.json()["model_name"] == "chat"
        gpus = await http.post("/infer/json", headers={"X-Capability-Type": "heavy", "X-Capability-Gpus": "2"},
                               json=TEXT)
        assert text_of(gpus.json()) == "heavy done"

        stream = await http.post("/infer/stream", headers={"X-Capability-Type": "tokens"}, json=TEXT)
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        frames = sse(stream.text)
        assert [text_of(data, "token") for _, data in frames] == ["a", "b", "c"]
        # a unary capability streams as one frame
        single = sse((await http.post("/infer/stream", headers={"X-Capability-Type": "chat"}, json=TEXT)).text)
        assert [text_of(d) for _, d in single] == ["you said Hello"]

        registered = await http.post("/register", json={"replica_id": "test-replica", "endpoint": "localhost:9999",
                                                         "capabilities": [{"type": "test", "model": "demo"}]})
        assert registered.status_code == 200 and registered.json()["success"] is True
        assert "test-replica" in registered.json()["message"]
        ids = {r["replica_id"] for r in (await http.get("/registry")).json()["replicas"]}
        assert ids == {"replica-chat", "test-replica"}
        gone = await http.request("DELETE", "/unregister", json={"replica_id": "test-replica"})
        assert gone.status_code == 200 and gone.json()["success"] is True
        again = await http.post("/unregister", json={"replica_id": "test-replica"})
        assert again.status_code == 404 and again.json()["code"] == "replica_not_found"


async def test_every_error_has_its_status_and_body():
    async with api_server() as (_, url), replica(make_app(), "r1", url), \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        async def post(path: str, headers: dict, **kw) -> httpx.Response:
            return await http.post(path, headers=headers, **kw)

        none = await post("/infer/json", {}, json=TEXT)
        assert none.status_code == 400 and none.json()["param"] == "X-Capability-*"

        unknown = await post("/infer/json", {"X-Capability-Type": "unknown"}, json={"inputs": []})
        body = unknown.json()
        assert unknown.status_code == 404 and body["code"] == "capability_not_found"
        assert body["capability"] == {"type": "unknown"} and {"type": "chat", "model": "demo"} in body["available"]
        assert "type=unknown" in body["error"]
        wrong_value = await post("/infer/json", {"X-Capability-Type": "heavy", "X-Capability-Gpus": "3"}, json=TEXT)
        assert wrong_value.status_code == 404

        garbage = await post("/infer/json", {"X-Capability-Type": "chat"}, content=b"{not json")
        assert garbage.status_code == 400 and garbage.json()["param"] == "body"
        no_inputs = await post("/infer/json", {"X-Capability-Type": "chat"}, json={"model_name": "x"})
        assert no_inputs.status_code == 400 and no_inputs.json()["param"] == "inputs"
        bad_type = await post("/infer/json", {"X-Capability-Type": "chat"},
                              json={"inputs": [{"name": "t", "datatype": "WORDS", "shape": [1],
                                                "contents": {"bytes_contents": ["x"]}}]})
        assert bad_type.status_code == 400 and bad_type.json()["param"] == "t" and "WORDS" in bad_type.json()["error"]

        raised = await post("/infer/json", {"X-Capability-Type": "boom"}, json=TEXT)
        assert raised.status_code == 500
        assert raised.json()["error"] == "KeyError: 'no such key'" and raised.json()["error_type"] == "KeyError"
        assert "Traceback" not in raised.text and "capability.replica" not in raised.text

        streams_only = await post("/infer/json", {"X-Capability-Type": "tokens"}, json=TEXT)
        assert streams_only.status_code == 400 and "stream" in streams_only.json()["error"]

        early = await post("/infer/stream", {"X-Capability-Type": "early-fail"}, json=TEXT)
        assert early.status_code == 500 and early.json()["error"] == "ValueError: failed before any token"
        late = await post("/infer/stream", {"X-Capability-Type": "late-fail"}, json=TEXT)
        assert late.status_code == 200
        frames = sse(late.text)
        assert [name for name, _ in frames] == ["message", "error"]
        assert frames[1][1]["error"] == "RuntimeError: failed after one token" and frames[1][1]["status"] == 500
        missing_stream = await post("/infer/stream", {"X-Capability-Type": "nothing"}, json=TEXT)
        assert missing_stream.status_code == 404

        bad_registration = await http.post("/register", json={"endpoint": "h:1", "capabilities": [{"type": "x"}]})
        assert bad_registration.status_code == 400 and bad_registration.json()["param"] == "replica_id"
        no_caps = await http.post("/register", json={"replica_id": "x", "endpoint": "h:1", "capabilities": []})
        assert no_caps.status_code == 400 and no_caps.json()["param"] == "capabilities"


async def test_no_live_replica_is_a_503_and_a_registration_expires():
    async with api_server(capability_ttl=1.0) as (_, url), httpx.AsyncClient(base_url=url, timeout=10) as http:
        # registered by hand at an address where nothing answers gRPC
        dead = await http.post("/register", json={"replica_id": "ghost", "endpoint": "127.0.0.1:9",
                                                   "capabilities": [{"type": "ghost"}]})
        assert dead.status_code == 200
        refused = await http.post("/infer/json", headers={"X-Capability-Type": "ghost"}, json=TEXT)
        assert refused.status_code == 503 and refused.json()["code"] == "instance_unavailable"
        assert "127.0.0.1:9" not in refused.text  # no internal addresses for clients

        async def dropped() -> bool:
            return (await http.get("/registry")).json()["total"] == 0

        await until(dropped, 10)  # no heartbeat: gone after the TTL
        after = await http.post("/infer/json", headers={"X-Capability-Type": "ghost"}, json=TEXT)
        assert after.status_code == 503 and after.json()["code"] == "no_instances"  # served before: not a 404


async def test_a_replica_id_cannot_be_taken_over():
    async with api_server() as (_, url), replica(make_app(), "owned", url), \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        takeover = await http.post("/register", json={"replica_id": "owned", "endpoint": "evil:1",
                                                       "capabilities": [{"type": "chat"}]})
        assert takeover.status_code == 409 and takeover.json()["code"] == "registration_conflict"
        forged = await http.post("/unregister", json={"replica_id": "owned", "token": "guessed-token"})
        assert forged.status_code == 409
        first = await http.post("/register", json={"replica_id": "mine", "endpoint": "h:1", "token": "t0ken-one",
                                                    "capabilities": [{"type": "m"}]})
        assert first.status_code == 200
        moved = await http.post("/register", json={"replica_id": "mine", "endpoint": "h:2", "token": "t0ken-one",
                                                    "capabilities": [{"type": "m"}]})
        assert moved.status_code == 200
        entry = next(r for r in (await http.get("/registry")).json()["replicas"] if r["replica_id"] == "mine")
        assert entry["endpoint"] == "h:2"


async def test_two_replicas_of_a_capability_share_the_traffic():
    async with api_server() as (api, url), replica(make_app("A:"), "ra", url), replica(make_app("B:"), "rb", url), \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        await until(lambda: len(api.router.replicas()) == 2)
        served = Counter()
        for _ in range(20):
            body = (await http.post("/infer/json", headers={"X-Capability-Type": "chat"}, json=TEXT)).json()
            served[text_of(body, "replica")] += 1
        assert served == {"ra": 10, "rb": 10}  # one at a time: least loaded ties go in turn

        async def one() -> str:
            body = (await http.post("/infer/json", headers={"X-Capability-Type": "chat"}, json=TEXT)).json()
            return text_of(body, "replica")

        concurrent = Counter(await asyncio.gather(*(one() for _ in range(40))))
        assert set(concurrent) == {"ra", "rb"} and min(concurrent.values()) >= 10


def delegating_app(me: str, to: str) -> App:
    app = App()

    @app.capability(type=me)
    def handler(request, context):
        if request.inputs and request.inputs[0].bytes_contents[0] == f"stop-at-{me}".encode():
            return reply(request, f"{me} answered", chain=",".join(context.chain))
        return context.delegate(capability={"type": to})

    return app


async def test_delegation_across_three_replicas_refuses_a_loop_and_limits_depth():
    def ask(text: str) -> dict:
        return {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "contents": {"bytes_contents": [text]}}]}

    async with api_server() as (api, url), replica(delegating_app("a", "b"), "ra", url), \
            replica(delegating_app("b", "c"), "rb", url), replica(delegating_app("c", "a"), "rc", url), \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        await until(lambda: len(api.router.replicas()) == 3)
        done = await http.post("/infer/json", headers={"X-Capability-Type": "a"}, json=ask("stop-at-c"))
        assert done.status_code == 200, done.text
        assert text_of(done.json()) == "c answered" and text_of(done.json(), "chain") == "ra,rb"

        loop = await http.post("/infer/json", headers={"X-Capability-Type": "a"}, json=ask("never"))
        assert loop.status_code == 508 and loop.json()["code"] == "delegation_refused"
        assert loop.json()["chain"] == ["ra", "rb", "rc"] and loop.json()["reason"] == "loop"

        # a client may say where a request comes from: the replicas in the chain are skipped
        skipped = await http.post("/infer/json", headers={"X-Capability-Type": "a", "X-Delegated-From": "ra"},
                                  json=ask("stop-at-a"))
        assert skipped.status_code == 508 and skipped.json()["reason"] == "loop"

    async with api_server() as (_, url), replica(delegating_app("a", "b"), "ra", url, delegation_max_depth=1), \
            replica(delegating_app("b", "c"), "rb", url, delegation_max_depth=1), \
            replica(delegating_app("c", "a"), "rc", url, delegation_max_depth=1), \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        deep = await http.post("/infer/json", headers={"X-Capability-Type": "a"}, json=ask("stop-at-c"))
        assert deep.status_code == 508 and deep.json()["reason"] == "depth"


async def test_a_replica_forwards_what_it_cannot_serve_over_grpc():
    import grpc

    from servemesh.tensors.proto import grpc_predict_v2_pb2_grpc as pb2_grpc

    async with api_server() as (_, url), replica(make_app(), "rchat", url) as (_, chat_grpc), \
            replica(delegating_app("b", "c"), "rb", url):
        async with grpc.aio.insecure_channel(chat_grpc) as channel:
            stub = pb2_grpc.GRPCInferenceServiceStub(channel)
            request = pb2.ModelInferRequest(model_name="m", id="g1")
            tensor = request.inputs.add(name="t", datatype="BYTES", shape=[1])
            tensor.contents.bytes_contents.append(b"stop-at-b")
            answer = await stub.ModelInfer(request, metadata=[("x-capability-type", "b")])
            assert answer.outputs[0].contents.bytes_contents[0] == b"b answered"
            assert answer.outputs[1].contents.bytes_contents[0] == b"rchat"  # the chain: rchat forwarded it
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ModelInfer(request, metadata=[("x-capability-type", "nothing")])
            assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_object_refs_travel_in_tensors_between_replicas(tmp_path):
    store = tmp_path / "objects"
    producer, consumer = App(), App()

    @producer.capability(type="make")
    def make(request, context):
        ref = context.objects.create({"text": "made elsewhere"})
        return reply(request, ref)

    @consumer.capability(type="use")
    def use(request, context):
        from servemesh.objects import ref_from_tensor

        value = context.objects.get(ref_from_tensor(request.inputs[0].bytes_contents))
        return reply(request, value["text"])

    async with api_server() as (_, url), replica(producer, "p", url, object_store=str(store)), \
            replica(consumer, "c", url, object_store=str(store)), httpx.AsyncClient(base_url=url, timeout=10) as http:
        ref = text_of((await http.post("/infer/json", headers={"X-Capability-Type": "make"}, json=TEXT)).json())
        assert ref.startswith("obj-") and "/" not in ref
        ask = {"inputs": [{"name": "obj_ref", "datatype": "BYTES", "shape": [1],
                           "contents": {"bytes_contents": [ref]}}]}
        used = await http.post("/infer/json", headers={"X-Capability-Type": "use"}, json=ask)
        assert used.status_code == 200 and text_of(used.json()) == "made elsewhere"
        for bad in ("/etc/passwd", "../../etc/passwd", "obj-../../etc/passwd"):
            ask["inputs"][0]["contents"]["bytes_contents"] = [bad]
            refused = await http.post("/infer/json", headers={"X-Capability-Type": "use"}, json=ask)
            assert refused.status_code == 400 and refused.json()["param"] == "obj_ref", refused.text


async def test_a_replica_registered_by_hand_is_served_over_grpc():
    async with api_server() as (_, url), replica(make_app("G:"), "servemesh-replica", None) as (_, endpoint), \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        # someone's own OIP v2 gRPC server (here a servemesh replica's port), registered with curl
        registered = await http.post("/register", json={"replica_id": "by-hand", "endpoint": endpoint,
                                                         "capabilities": [{"type": "chat", "model": "demo"},
                                                                          {"type": "tokens"}]})
        assert registered.status_code == 200
        answer = await http.post("/infer/json", headers={"X-Capability-Type": "chat"}, json=TEXT)
        assert answer.status_code == 200 and text_of(answer.json()) == "G:you said Hello"
        frames = sse((await http.post("/infer/stream", headers={"X-Capability-Type": "tokens"}, json=TEXT)).text)
        assert [text_of(d, "token") for _, d in frames] == ["a", "b", "c"]
        failed = await http.post("/infer/json", headers={"X-Capability-Type": "chat", "X-Capability-Model": "demo"},
                                 json={"inputs": []})
        assert failed.status_code == 500  # the handler's IndexError, reported by the gRPC replica


async def test_errors_of_a_delegate_come_back_to_the_original_caller():
    front = App()

    @front.capability(type="front")
    def handler(request, context):
        return context.delegate(capability={"type": "boom"})

    @front.capability(type="front-stream", stream=True)
    async def streamer(request, context, stream):
        answer = await context.adelegate(capability={"type": "chat"})
        await stream.send(answer)

    async with api_server() as (api, url), replica(front, "rf", url), replica(make_app(), "rm", url), \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        await until(lambda: len(api.router.replicas()) == 2)
        failed = await http.post("/infer/json", headers={"X-Capability-Type": "front"}, json=TEXT)
        assert failed.status_code == 500 and failed.json()["error"] == "KeyError: 'no such key'"
        frames = sse((await http.post("/infer/stream", headers={"X-Capability-Type": "front-stream"}, json=TEXT)).text)
        assert [text_of(d) for _, d in frames] == ["you said Hello"]
        assert text_of(frames[0][1], "replica") == "rm"


async def test_a_handler_s_own_mistakes_are_500s_never_the_caller_s_400s():
    """What a handler gets wrong (no answer, a dict that is no response, a bad output
    tensor, an object the store refuses) is a 500 with its type and message: the request
    was fine. A bad ref the caller sent, and a delegate's own 400, stay 400s."""
    app = App()

    @app.capability(type="none")
    def none(request, context):
        return None

    @app.capability(type="dict")
    def not_a_response(request, context):
        return {"foo": "bar"}

    @app.capability(type="bad-output")
    async def bad_output(request, context):
        response = ModelInferResponse(model_name="m")
        response.add_output(name="o", datatype="FP32", shape=[5], fp32_contents=[1.0])
        return response

    @app.capability(type="bad-stream", stream=True)
    def bad_stream(request, context, stream):
        stream.send(reply(request, "first"))
        stream.send({"outputs": [{"name": "o", "datatype": "INT8", "shape": [1], "contents": {"int_contents": [999]}}]})

    @app.capability(type="echo-id")
    def echo_id(request, context):
        response = ModelInferResponse()
        response.add_output(name="response", datatype="BYTES", shape=[1], bytes_contents=[b"ok"])
        return response

    async with api_server() as (_, url), replica(app, "rh", url), \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        async def infer(kind: str, body: dict = TEXT) -> httpx.Response:
            return await http.post("/infer/json", headers={"X-Capability-Type": kind}, json=body)

        for kind, error_type, words in (("none", "SerializationError", "returned None"),
                                         ("dict", "SerializationError", "'foo'"),
                                         ("bad-output", "ValidationError", "'o'")):
            answer = await infer(kind)
            assert answer.status_code == 500, (kind, answer.text)
            assert answer.json()["error_type"] == error_type and words in answer.json()["error"], answer.text
            assert "param" not in answer.json()

        stream = await http.post("/infer/stream", headers={"X-Capability-Type": "bad-stream"}, json=TEXT)
        frames = sse(stream.text)
        assert [name for name, _ in frames] == ["message", "error"]
        assert frames[1][1]["status"] == 500 and "999" in frames[1][1]["error"]

        echoed = await infer("echo-id", {**TEXT, "id": "req-42", "model_name": "m1"})
        assert echoed.status_code == 200 and echoed.json()["id"] == "req-42" and echoed.json()["model_name"] == "m1"


async def test_object_mistakes_of_a_handler_are_500s_and_a_bad_ref_from_the_caller_a_400(tmp_path):
    app = App()

    @app.capability(type="set-object")
    def set_object(request, context):
        context.objects.create({1, 2})  # a set: JSON cannot hold it, and pickle is off
        return None

    @app.capability(type="read-ref")
    def read_ref(request, context):
        return reply(request, str(context.objects.get(request.inputs[0].bytes_contents[0].decode())))

    async with api_server() as (_, url), replica(app, "ro", url, object_store=str(tmp_path / "objects")), \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        stored = await http.post("/infer/json", headers={"X-Capability-Type": "set-object"}, json=TEXT)
        assert stored.status_code == 500 and stored.json()["error_type"] == "ObjectRefused", stored.text
        bad_ref = {"inputs": [{"name": "ref", "datatype": "BYTES", "shape": [1],
                               "contents": {"bytes_contents": ["../../etc/passwd"]}}]}
        refused = await http.post("/infer/json", headers={"X-Capability-Type": "read-ref"}, json=bad_ref)
        assert refused.status_code == 400, refused.text


async def test_a_pipeline_may_come_back_to_a_replica_for_other_labels_but_a_loop_through_an_alias_is_refused():
    def ask(text: str) -> dict:
        return {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "contents": {"bytes_contents": [text]}}]}

    one = App()  # summarize -> embed on the same replica, then b -> a2 across replicas

    @one.capability(type="summarize")
    def summarize(request, context):
        return context.delegate(capability={"type": "embed"})

    @one.capability(type="embed")
    def embed(request, context):
        return reply(request, "embedded", chain=",".join(context.chain))

    @one.capability(type="a1")
    def a1(request, context):
        return context.delegate(capability={"type": "b"})

    @one.capability(type="a2")
    def a2(request, context):
        return reply(request, "a2 answered", chain=",".join(context.chain))

    other = App()

    @other.capability(type="b")
    def b(request, context):
        return context.delegate(capability={"type": "a2"})

    async with api_server() as (api, url), replica(one, "r1", url) as (_, endpoint), replica(other, "r2", url), \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        await until(lambda: len(api.router.replicas()) == 2)
        same = await http.post("/infer/json", headers={"X-Capability-Type": "summarize"}, json=ask("x"))
        assert same.status_code == 200 and text_of(same.json()) == "embedded", same.text
        assert text_of(same.json(), "chain") == "r1"
        back = await http.post("/infer/json", headers={"X-Capability-Type": "a1"}, json=ask("x"))
        assert back.status_code == 200 and text_of(back.json()) == "a2 answered", back.text
        assert text_of(back.json(), "chain") == "r1,r2"

        # an alias registration of r1's gRPC port for labels r1 lacks: r1 passes the request
        # on, it comes back to r1 through the alias, and r1 refuses it there (not 4 times)
        alias = await http.post("/register", json={"replica_id": "alias", "endpoint": endpoint,
                                                   "capabilities": [{"type": "nowhere"}]})
        assert alias.status_code == 200, alias.text
        await until(lambda: len(api.router.replicas()) == 3)
        loop = await http.post("/infer/json", headers={"X-Capability-Type": "nowhere"}, json=ask("x"))
        assert loop.status_code == 508, loop.text
        assert loop.json()["reason"] == "loop" and loop.json()["chain"] == ["r1", "r1"], loop.text


async def test_a_handler_s_exception_is_logged_with_its_traceback_and_an_oversized_answer_says_why(caplog, tmp_path):
    class LoggedBoom(Exception):  # a type of its own: the log line is throttled per exception type
        pass

    app = App()

    @app.capability(type="boom")
    def boom(request, context):
        raise LoggedBoom("no such key")

    @app.capability(type="big")
    def big(request, context):
        response = ModelInferResponse()
        response.add_output(name="blob", datatype="BYTES", shape=[1], bytes_contents=[b"x" * 200_000])
        return response

    @app.capability(type="objects-on-loop")
    async def on_loop(request, context):
        context.objects.create({"a": 1})  # the blocking form, on the event loop
        return None

    async with api_server() as (_, url), \
            replica(app, "rl", url, max_payload=100_000, object_store=str(tmp_path / "objects")), \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        with caplog.at_level("WARNING", logger="servemesh.capability"):
            failed = await http.post("/infer/json", headers={"X-Capability-Type": "boom"}, json=TEXT)
        assert failed.status_code == 500 and failed.json()["error"] == "LoggedBoom: no such key"
        logged = [rec for rec in caplog.records if rec.name == "servemesh.capability" and rec.exc_info]
        assert logged and "LoggedBoom" in logged[0].getMessage()

        too_big = await http.post("/infer/json", headers={"X-Capability-Type": "big"}, json=TEXT)
        assert too_big.status_code == 500 and "exceeds the limit" in too_big.json()["error"], too_big.text
        misused = await http.post("/infer/json", headers={"X-Capability-Type": "objects-on-loop"}, json=TEXT)
        assert misused.status_code == 500 and "acreate" in misused.json()["error"], misused.text


async def test_registrations_are_checked_and_a_newer_replica_s_extra_fields_are_ignored():
    async with api_server() as (_, url), httpx.AsyncClient(base_url=url, timeout=10) as http:
        for body, param in (({"replica_id": "x", "endpoint": "h:1", "capabilities": [{}]}, "capabilities"),
                            ({"replica_id": "x", "endpoint": "http://evil.example:80/../", "capabilities": [{"a": 1}]},
                             "endpoint")):
            refused = await http.post("/register", json=body)
            assert refused.status_code == 400 and refused.json()["param"].startswith(param), refused.text
        newer = {"replica_id": "newer", "endpoint": "127.0.0.1:9", "capabilities": [{"type": "x"}],
                 "from_the_future": 1,
                 "servemesh": {"namespace": "capability", "instance_id": 7, "transport": {"tcp": "127.0.0.1:9"},
                               "a_field_added_later": [1, 2]}}
        assert (await http.post("/register", json=newer)).status_code == 200

        for i in range(80):  # many label sets: a 404 lists a bounded number of them
            await http.post("/register", json={"replica_id": f"r{i}", "endpoint": "127.0.0.1:9",
                                               "capabilities": [{"type": f"t{i}"}]})
        missing = await http.post("/infer/json", headers={"X-Capability-Type": "nope"}, json=TEXT)
        assert missing.status_code == 404 and len(missing.json()["available"]) == 50


async def test_the_api_server_s_request_timeout_bounds_unary_calls_and_streams():
    app = App()

    @app.capability(type="slow")
    async def slow(request, context):
        await asyncio.sleep(30)
        return reply(request, "late")

    @app.capability(type="slow-stream", stream=True)
    async def slow_stream(request, context, stream):
        await asyncio.sleep(30)

    async with api_server(request_timeout=1.0) as (_, url), replica(app, "rt", url), \
            httpx.AsyncClient(base_url=url, timeout=20) as http:
        unary = await http.post("/infer/json", headers={"X-Capability-Type": "slow"}, json=TEXT)
        assert unary.status_code == 504 and unary.json()["code"] == "deadline_exceeded", unary.text
        stream = await http.post("/infer/stream", headers={"X-Capability-Type": "slow-stream"}, json=TEXT)
        assert stream.status_code == 504, stream.text


async def test_a_registration_sent_as_a_form_is_told_to_send_json():
    async with api_server() as (_, url), httpx.AsyncClient(base_url=url, timeout=10) as http:
        body = json.dumps({"replica_id": "x", "endpoint": "h:1", "capabilities": [{"type": "x"}]})
        as_form = await http.post("/register", content=body,
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})  # curl -d
        assert as_form.status_code == 400 and as_form.json()["param"] == "body", as_form.text
        assert "Content-Type: application/json" in as_form.json()["error"]
