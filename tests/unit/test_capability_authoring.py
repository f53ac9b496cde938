"""Capability authoring and the pure parts of capability serving: the decorator, labels
and their matching, the wire structs, the registry's TTL and ownership, ``Stream``."""

from __future__ import annotations

import asyncio
import json
import threading

import msgspec
import numpy as np
import pytest

from servemesh.capability import AnyServe, App, Context, ModelInferResponse, wire
from servemesh.capability.kserve import InferOutputTensor, InferTensorContents
from servemesh.capability.registry import Registry, RuntimeInfo, foreign_instance_id
from servemesh.capability.stream import Stream
from servemesh.errors import Cancelled, ConfigError, RegistrationConflict, RemoteError, ValidationError
from servemesh.runtime.discovery.memory import MemoryStore
from servemesh.tensors import bfloat16_to_float32, decode_contents_response


def test_anyserve_is_app_and_decorators_only_record():
    app = AnyServe()
    assert AnyServe is App

    def chat(request, context):
        return None

    assert app.capability(type="chat", model="demo")(chat) is chat
    assert app.get_capabilities() == [{"type": "chat", "model": "demo"}]
    spec = app.specs[0]
    assert spec.handler is chat and not spec.stream and not spec.is_async and spec.takes_context


@pytest.mark.parametrize(("labels", "text"), [
    ({}, "at least one label"),
    ({"ty pe": "x"}, "invalid"),
    ({"type": {"a": 1}}, "strings, numbers or booleans"),
])
def test_bad_labels_are_refused(labels, text):
    with pytest.raises(ConfigError, match=text):
        App().capability(**labels)


def test_handler_shapes_are_checked():
    app = App()
    with pytest.raises(ConfigError, match=r"\(request, context, stream\)"):
        app.capability(type="s", stream=True)(lambda request, context: None)
    with pytest.raises(ConfigError, match="takes 3"):
        app.capability(type="u")(lambda a, b, c: None)

    async def agen(request, context):
        yield 1

    with pytest.raises(ConfigError, match="stream=True"):
        app.capability(type="g")(agen)
    app.capability(type="g", stream=True)(agen)

    def gen(request, context, stream):
        yield 1

    with pytest.raises(ConfigError, match="generator"):
        app.capability(type="x", stream=True)(gen)
    assert [s.is_generator for s in app.specs] == [True]


def test_headers_become_labels_and_values_coerce():
    want = wire.want_from_headers([(b"x-capability-type", b"heavy"), (b"x-capability-gpus", b"2"),
                                   (b"x-capability-model-name", b"m"), (b"content-type", b"application/json")])
    assert want == {"type": "heavy", "gpus": "2", "model_name": "m"}
    labels = wire.normalized({"type": "heavy", "gpus": 2, "Model-Name": "m"})
    assert wire.matches(labels, want)
    assert not wire.matches(labels, {**want, "gpus": "3"})
    assert not wire.matches(labels, {**want, "region": "eu"})
    assert wire.matches(wire.normalized({"flag": True}), {"flag": "true"})


def test_label_headers_are_utf8_and_given_once():
    assert wire.want_from_headers([(b"x-capability-city", "wého".encode())]) == {"city": "wého"}
    assert wire.want_from_headers([(b"x-capability-a", b"\xe9")]) == {"a": "é"}  # not UTF-8: Latin-1
    assert wire.want_from_headers([(b"x-capability-gpus", b"2"), (b"x-capability-gpus", b"2")]) == {"gpus": "2"}
    with pytest.raises(ValidationError, match="twice") as twice:
        wire.want_from_headers([(b"x-capability-gpus", b"2"), (b"x-capability-gpus", b"3")])
    assert twice.value.field == "x-capability-gpus"


def test_delegation_headers():
    assert wire.chain_from_headers("a, b", None) == (["a", "b"], 2)
    assert wire.chain_from_headers("a", "3") == (["a"], 3)
    assert wire.chain_from_headers(None, None) == ([], 0)
    with pytest.raises(ValidationError) as bad:
        wire.chain_from_headers("a/../b", None)
    assert bad.value.field == "X-Delegated-From"
    with pytest.raises(ValidationError):
        wire.chain_from_headers("a", "many")
    for depth in ("99999999999999999999999", "-5"):
        with pytest.raises(ValidationError) as huge:
            wire.chain_from_headers(None, depth)
        assert huge.value.field == "X-Delegation-Depth"
    with pytest.raises(ValidationError, match="at most 64"):
        wire.chain_from_headers(",".join(f"r{i}" for i in range(65)), None)
    hop = wire.hop("r1", {"type": "chat"})
    assert wire.chain_from_headers(f"{hop},r2", None) == ([hop, "r2"], 2)
    assert hop == wire.hop("r1", {"type": "chat"}) != wire.hop("r1", {"type": "embed"})


def test_a_replica_is_excluded_only_for_the_labels_it_was_asked_for():
    chain = [wire.hop("r1", {"type": "a"}), wire.hop("r2", {"type": "b"}), "r3"]
    assert wire.excluded(chain, {"type": "a"}) == {"r1", "r3"}  # r3: named without labels
    assert wire.excluded(chain, {"type": "b"}) == {"r2", "r3"}
    assert wire.excluded(chain, {"type": "c"}) == {"r3"}
    assert wire.replicas_of(chain) == ["r1", "r2", "r3"]


def test_infer_call_travels_as_msgpack():
    call = wire.InferCall(b'{"inputs": []}', {"type": "chat"}, ["r1"], 1)
    back = msgspec.convert(msgspec.msgpack.decode(msgspec.msgpack.encode(call)), wire.InferCall)
    assert back == call


def test_replica_view_and_streaming_flags():
    caps = wire.record_capabilities("r1", "h:1", [{"type": "chat"}, {"type": "chat", "mode": "s"}], [False, True])
    view = wire.ReplicaView.of(7, caps)
    assert view is not None and view.replica_id == "r1"
    assert view.serves({"type": "chat"}, False) and view.serves({"type": "chat"}, True)
    assert not view.serves({"mode": "s"}, False) and view.serves({"mode": "s"}, True)
    unknown = wire.ReplicaView.of(8, wire.record_capabilities("r2", "h:2", [{"type": "x"}]))
    assert unknown is not None and unknown.serves({"type": "x"}, True) and unknown.serves({"type": "x"}, False)
    assert wire.ReplicaView.of(9, {"model": "m"}) is None


def test_nan_and_infinities_are_strings_in_valid_json_never_null():
    response = ModelInferResponse("m")
    response.add_output("x", "FP32", [4], fp32_contents=[float("nan"), 1.0, float("inf"), float("-inf")])
    response.add_output("b", "BF16", [1], fp32_contents=[float("inf")])
    data = wire.encode_response(response)
    body = json.loads(data, parse_constant=lambda token: pytest.fail(f"{token} is not JSON"))
    assert body["outputs"][0]["contents"]["fp32_contents"] == ["NaN", 1.0, "Infinity", "-Infinity"]
    assert body["outputs"][1]["contents"]["fp32_contents"] == ["Infinity"]
    back = decode_contents_response(data)
    values = back.as_numpy("x")
    assert np.isnan(values[0]) and list(values[1:]) == [1.0, np.inf, -np.inf]
    assert bfloat16_to_float32(back.as_numpy("b"))[0] == np.inf
    bare = b'{"outputs": [{"name": "x", "datatype": "FP64", "shape": [1], "contents": {"fp64_contents": [NaN]}}]}'
    assert np.isnan(decode_contents_response(bare).as_numpy("x")[0])  # what Python's json writes is read too
    with pytest.raises(ValidationError, match="NaN"):
        decode_contents_response(b'{"outputs": [{"name": "x", "datatype": "FP32", "shape": [1], '
                                 b'"contents": {"fp32_contents": ["nan?"]}}]}')


def test_kserve_compat_tensors():
    tensor = InferOutputTensor(name="o", datatype="BYTES", shape=[1],
                               contents=InferTensorContents(bytes_contents=[b"hi"]))
    assert tensor.bytes_contents == [b"hi"] and tensor.contents.bytes_contents == [b"hi"]
    with pytest.raises(ValidationError, match="one field"):
        InferOutputTensor(name="o", datatype="FP32", shape=[1],
                          contents=InferTensorContents(fp32_contents=[1.0], int_contents=[1]))


# -- the registry --------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_registrations_become_records_and_expire():
    store, clock = MemoryStore(), Clock()
    registry = Registry(store, "capability", ttl=10, clock=clock)
    entry, created = registry.register("r1", "h:1", [{"type": "chat"}])
    assert created and len(store.records) == 2
    record = next(iter(store.records.values()))
    assert record.transport == {"grpc": "h:1"} and record.instance_id == foreign_instance_id("r1")
    clock.now += 6
    _, created = registry.register("r1", "h:1", [{"type": "chat"}])  # a heartbeat
    assert not created and entry.last_heartbeat == clock.now
    clock.now += 6
    assert registry.expire() == []
    clock.now += 5
    assert registry.expire() == ["r1"] and not store.records and registry.get("r1") is None


def test_runtime_registrations_use_the_replicas_transport():
    store = MemoryStore()
    registry = Registry(store, "capability", ttl=10)
    registry.register("r1", "h:1", [{"type": "chat"}],
                      runtime=RuntimeInfo("capability", 42, {"tcp": "127.0.0.1:5"}, [False]))
    assert {r.instance_id for r in store.records.values()} == {42}
    assert all(r.transport == {"tcp": "127.0.0.1:5"} for r in store.records.values())
    with pytest.raises(ValidationError, match="namespace"):
        registry.register("r2", "h:2", [{"type": "chat"}], runtime=RuntimeInfo("other", 43, {"tcp": "x:1"}))


def test_a_replica_id_belongs_to_its_endpoint_or_token():
    store = MemoryStore()
    registry = Registry(store, "capability", ttl=10)
    registry.register("open", "h:1", [{"type": "a"}])
    with pytest.raises(RegistrationConflict, match="registered from h:1"):
        registry.register("open", "evil:9", [{"type": "a"}])
    registry.register("owned", "h:2", [{"type": "a"}], token="secret-token")
    with pytest.raises(RegistrationConflict):
        registry.register("owned", "evil:9", [{"type": "a"}], token="wrong-token")
    with pytest.raises(RegistrationConflict):
        registry.register("owned", "h:2", [{"type": "b"}])  # no token: not the owner
    with pytest.raises(RegistrationConflict):
        registry.unregister("owned", "wrong-token")
    entry, _ = registry.register("owned", "h:3", [{"type": "a"}], token="secret-token")  # moved by its owner
    assert entry.endpoint == "h:3"
    assert {r.transport["grpc"] for r in store.records.values()} == {"h:1", "h:3"}
    assert registry.unregister("owned", "secret-token") and not registry.unregister("owned", "secret-token")


# -- Stream -----------------------------------------------------------------------------------------
async def test_stream_from_a_thread_keeps_order_and_bounds_memory():
    loop = asyncio.get_running_loop()
    stream = Stream(loop, lambda x: x, maxsize=4)
    high_water = []

    def produce() -> None:
        for i in range(50):
            stream.send(i)
            high_water.append(len(stream._items))

    worker = loop.run_in_executor(None, produce)
    worker.add_done_callback(lambda f: stream.finish(f.exception()))
    got = []
    while True:
        try:
            got.append(await stream.get())
        except StopAsyncIteration:
            break
        await asyncio.sleep(0)
    assert got == list(range(50)) and max(high_water) <= 4


async def test_stream_close_stops_a_blocked_sender():
    loop = asyncio.get_running_loop()
    stream = Stream(loop, lambda x: x, maxsize=1)
    raised = threading.Event()

    def produce() -> None:
        try:
            for i in range(10):
                stream.send(i)
        except Cancelled:
            raised.set()

    worker = loop.run_in_executor(None, produce)
    assert await stream.get() == 0
    stream.close()
    await worker
    assert raised.is_set()


async def test_stream_error_ends_after_what_was_sent():
    stream = Stream(asyncio.get_running_loop(), lambda x: x)
    stream.send("a")
    stream.error("went wrong")
    assert await stream.get() == "a"
    with pytest.raises(RemoteError, match="went wrong"):
        await stream.get()


def test_context_is_exported():
    assert Context.__name__ == "Context"
