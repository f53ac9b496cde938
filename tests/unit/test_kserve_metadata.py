"""Model metadata declared on capability handlers (inputs, outputs, platform, versions), how
it travels in records, the checks of requests against it, and the gateway pieces that
need no socket (raw routes with path parameters, the path mux)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from servemesh.capability import App, InferRequest, ModelSpec, TensorSpec, wire
from servemesh.capability.registry import Registry, RuntimeInfo
from servemesh.errors import ConfigError, ValidationError
from servemesh.gateway.kit import PathMux
from servemesh.gateway.kit.raw import _compile
from servemesh.runtime.discovery.memory import MemoryStore


def test_tensor_specs_are_checked():
    assert TensorSpec("x", "FP32", [16, -1]).shape == (16, -1)
    assert TensorSpec.of({"name": "x", "datatype": "BYTES", "shape": [1]}) == TensorSpec("x", "BYTES", (1,))
    assert TensorSpec.of(("x", "INT64", [2])) == TensorSpec("x", "INT64", [2])
    for bad in (("", "FP32", [1]), ("x", "FP33", [1]), ("x", "FP32", [-2]), ("x", "FP32", [1.5]),
                ("x", "FP32", [True])):
        with pytest.raises(ConfigError):
            TensorSpec(*bad)


def test_a_declaration_becomes_metadata_and_a_version_label():
    app = App()

    @app.capability(model="m", versions=["1", 2], platform="onnx", inputs=[TensorSpec("a", "FP32", [4])],
                    outputs=[("b", "FP32", [4])])
    def handler(request):
        return None

    @app.capability(model="plain")
    def plain(request):
        return None

    declared, undeclared = app.specs
    assert declared.labels == {"model": "m", "version": ["1", "2"]}
    assert declared.model == ModelSpec((TensorSpec("a", "FP32", [4]),), (TensorSpec("b", "FP32", [4]),), "onnx",
                                       ("1", "2"))
    assert undeclared.model is None and undeclared.labels == {"model": "plain"}
    record = declared.model.to_record()
    assert ModelSpec.from_record(record) == declared.model
    assert ModelSpec.from_record({"inputs": [{"name": "a", "datatype": "NOPE", "shape": [1]}]}) is None
    assert ModelSpec.from_record("garbage") is None
    with pytest.raises(ConfigError):
        app.capability(model="m", versions=["1"], version="1")
    with pytest.raises(ConfigError):
        app.capability(model="m", versions=["a/b"])
    with pytest.raises(ConfigError):
        app.capability(model="m", inputs=[TensorSpec("a", "FP32", [1]), TensorSpec("a", "FP32", [1])])
    with pytest.raises(ConfigError):
        app.capability(model="m", inputs="a")


def test_requests_are_checked_against_declared_inputs():
    spec = ModelSpec(inputs=(TensorSpec("a", "FP32", [-1, 2]), TensorSpec("b", "INT64", [1])))

    def request(**tensors: np.ndarray) -> list[Any]:
        r = InferRequest("m")
        for name, array in tensors.items():
            r.set_numpy(name, array)
        return r.inputs

    good = request(a=np.zeros((3, 2), np.float32), b=np.zeros(1, np.int64))
    spec.check_inputs("m", good)
    cases = [
        (request(a=np.zeros((3, 3), np.float32), b=np.zeros(1, np.int64)), "a", "shape [3, 3]"),
        (request(a=np.zeros((3, 2), np.float64), b=np.zeros(1, np.int64)), "a", "FP64"),
        (request(a=np.zeros((3, 2), np.float32)), "b", "needs input 'b'"),
        (request(a=np.zeros((3, 2), np.float32), b=np.zeros(1, np.int64), c=np.zeros(1)), "c", "no input 'c'"),
        (request(a=np.zeros(6, np.float32), b=np.zeros(1, np.int64)), "a", "shape [6]"),
    ]
    for inputs, field, text in cases:
        with pytest.raises(ValidationError) as refused:
            spec.check_inputs("m", inputs)
        assert refused.value.field == field and text in str(refused.value)
    ModelSpec().check_inputs("m", good)  # nothing declared: nothing checked


def test_records_and_registrations_carry_the_metadata():
    declared = ModelSpec(inputs=(TensorSpec("a", "FP32", [1]),)).to_record()
    caps = wire.record_capabilities("r", "", [{"model": "m"}, {"model": "n"}], [False, True], [declared, None])
    view = wire.ReplicaView.of(1, caps)
    assert view is not None and view.models == (declared, None)
    assert "models" not in wire.record_capabilities("r", "", [{"model": "m"}], [False], [None])
    assert wire.ReplicaView.of(1, wire.record_capabilities("r", "", [{"model": "m"}])).models == (None,)
    registry = Registry(MemoryStore(), "ns", 10)
    entry, _ = registry.register("r", "h:1", [{"model": "m"}],
                                 runtime=RuntimeInfo("ns", 7, {"tcp": "h:2"}, [False], [declared]))
    assert entry.records[0].capabilities["models"] == [declared]
    with pytest.raises(ValidationError):
        registry.register("q", "h:1", [{"model": "m"}],
                          runtime=RuntimeInfo("ns", 8, {"tcp": "h:2"}, [False], [declared, None]))


def test_raw_route_templates():
    pattern = _compile("/v2/models/{name}/versions/{version}/infer")
    found = pattern.match("/v2/models/my.model/versions/3/infer")
    assert found is not None and found.groupdict() == {"name": "my.model", "version": "3"}
    assert pattern.match("/v2/models/a/b/versions/3/infer") is None
    assert pattern.match("/v2/models//versions/3/infer") is None
    assert _compile("/v2/models/{name}/infer").match("/v2/models/m/infer/extra") is None


def test_the_path_mux_routes_by_prefix():
    calls: list[str] = []

    def app(name: str) -> Any:
        async def serve(scope: Any, receive: Any, send: Any) -> None:
            calls.append(name)
        return serve

    mux = PathMux(app("default"), [("/v2", app("kserve")), ("/v1/", app("openai"))])
    for path in ("/v2", "/v2/models/m/infer", "/v1/models", "/v2x", "/health", "/v1"):
        asyncio.run(mux({"type": "http", "path": path}, None, None))
    asyncio.run(mux({"type": "lifespan"}, None, None))
    assert calls == ["kserve", "kserve", "openai", "default", "default", "openai", "default"]
