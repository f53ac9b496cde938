"""The KServe gateway (OIP v2 REST and gRPC) in front of a replica, over real sockets (each
with its own runtime in this process, so a test can see a handler observe its
cancellation): Triton's official clients (their asyncio forms here; the blocking ones in
worker threads), raw HTTP for the error bodies, and the generated gRPC stub."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
import tritonclient.http as thttp
import tritonclient.http.aio as thttp_aio
from tritonclient.utils import InferenceServerException

from servemesh.apps.gateway import Gateway
from servemesh.tensors.proto import grpc_predict_v2_pb2 as pb2
from servemesh.tensors.proto import grpc_predict_v2_pb2_grpc as pb2_grpc

from .capability_apps import gateway, replica, until
from .kserve_apps import CANCELLED, STARTED, app, vector

A, B = vector(1), vector(7)


@contextlib.asynccontextmanager
async def stack() -> AsyncIterator[tuple[Gateway, str, str]]:
    """The gateway and one replica of the test models; (gateway, HTTP url, gRPC host:port)."""
    for events in (STARTED, CANCELLED):
        for event in events.values():
            event.clear()
    async with gateway() as gw, replica(app, "kserve-r1", gw.url):
        await until(lambda: "add_sub" in gw.service.catalog.models())
        yield gw, gw.url, gw.grpc_address or ""


def http_inputs(binary: bool, module: Any = thttp) -> list[Any]:
    inputs = []
    for name, array in (("INPUT0", A), ("INPUT1", B)):
        tensor = module.InferInput(name, [16], "FP32")
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def grpc_inputs(module: Any = tgrpc) -> list[Any]:
    inputs = []
    for name, array in (("INPUT0", A), ("INPUT1", B)):
        tensor = module.InferInput(name, [16], "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


async def test_rest_with_tritonclient_http():
    async with stack() as (_, url, _grpc):
        client = thttp_aio.InferenceServerClient(url.removeprefix("http://"))
        try:
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready("add_sub") and await client.is_model_ready("add_sub", "2")
            assert not await client.is_model_ready("nope")
            meta = await client.get_server_metadata()
            assert meta["name"] == "servemesh" and "binary_tensor_data" in meta["extensions"]
            model = await client.get_model_metadata("add_sub")
            assert model["versions"] == ["1", "2"] and model["platform"] == "test_numpy"
            assert model["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [16]},
                                       {"name": "INPUT1", "datatype": "FP32", "shape": [16]}]
            config = await client.get_model_config("words")
            assert config["model_transaction_policy"] == {"decoupled": True}
            assert config["input"] == [{"name": "TEXT", "data_type": "TYPE_STRING", "dims": [1]}]
            # binary data both ways, JSON both ways, and mixed
            for binary_in in (True, False):
                for binary_out in (True, False):
                    outputs = [thttp_aio.InferRequestedOutput(n, binary_data=binary_out)
                               for n in ("OUTPUT0", "OUTPUT1")]
                    result = await client.infer("add_sub", http_inputs(binary_in, thttp_aio), outputs=outputs,
                                                request_id=f"r-{binary_in}-{binary_out}")
                    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
                    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
                    assert result.get_response()["id"] == f"r-{binary_in}-{binary_out}"
                    has_binary = "binary_data_size" in result.get_output("OUTPUT0").get("parameters", {})
                    assert has_binary == binary_out
            only = await client.infer("add_sub", http_inputs(True, thttp_aio), model_version="2",
                                      outputs=[thttp_aio.InferRequestedOutput("OUTPUT1")])
            assert only.as_numpy("OUTPUT0") is None
            np.testing.assert_array_equal(only.as_numpy("OUTPUT1"), A - B - 1000)
            assert only.get_response()["model_version"] == "2"
            # INT64 and BYTES
            x = thttp_aio.InferInput("X", [2, 3], "INT64")
            x.set_data_from_numpy(np.arange(6, dtype=np.int64).reshape(2, 3) - 3, binary_data=False)
            doubled = await client.infer("int_double", [x])
            np.testing.assert_array_equal(doubled.as_numpy("Y"), (np.arange(6).reshape(2, 3) - 3) * 2)
            text = thttp_aio.InferInput("T", [2], "BYTES")
            text.set_data_from_numpy(np.array([b"caf\xc3\xa9", b"\x00\xff binary"], dtype=object))
            echoed = await client.infer("echo", [text])
            assert list(echoed.as_numpy("T")) == [b"caf\xc3\xa9", b"\x00\xff binary"]
            index = await client.get_model_repository_index()
            assert {"name": "add_sub", "version": "2", "state": "READY", "reason": ""} in index
            stats = await client.get_inference_statistics("add_sub")
            counted = sum(s["inference_stats"]["success"]["count"] for s in stats["model_stats"])
            assert counted == 5
        finally:
            await client.close()


async def test_grpc_with_tritonclient_grpc():
    async with stack() as (_, _url, address):
        client = tgrpc_aio.InferenceServerClient(address)
        try:
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready("add_sub") and not await client.is_model_ready("nope")
            assert (await client.get_server_metadata()).name == "servemesh"
            meta = await client.get_model_metadata("add_sub", as_json=True)
            assert meta["versions"] == ["1", "2"] and [t["name"] for t in meta["outputs"]] == ["OUTPUT0", "OUTPUT1"]
            undeclared = await client.get_model_metadata("echo", as_json=True)
            assert undeclared["name"] == "echo" and undeclared["platform"] == "servemesh"
            result = await client.infer("add_sub", grpc_inputs(tgrpc_aio), request_id="g-1")
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
            assert result.get_response().id == "g-1"
            v2 = await client.infer("add_sub", grpc_inputs(tgrpc_aio), model_version="2",
                                    outputs=[tgrpc_aio.InferRequestedOutput("OUTPUT0")])
            np.testing.assert_array_equal(v2.as_numpy("OUTPUT0"), A + B + 1000)
            assert v2.as_numpy("OUTPUT1") is None
            x = tgrpc_aio.InferInput("X", [1, 4], "INT64")
            x.set_data_from_numpy(np.array([[-(2**62), -1, 0, 2**61]], dtype=np.int64))
            np.testing.assert_array_equal((await client.infer("int_double", [x])).as_numpy("Y"),
                                          [[-(2**63), -2, 0, 2**62]])
            text = tgrpc_aio.InferInput("T", [1, 2], "BYTES")
            text.set_data_from_numpy(np.array([[b"hello", b"\x00\xff"]], dtype=object))
            echoed = (await client.infer("echo", [text])).as_numpy("T")
            assert echoed.shape == (1, 2) and list(echoed.reshape(-1)) == [b"hello", b"\x00\xff"]
            # streaming, with the asyncio client: one response per word, then Triton's empty final one
            text = tgrpc_aio.InferInput("TEXT", [1], "BYTES")
            text.set_data_from_numpy(np.array([b"one two three"], dtype=object))

            async def requests() -> AsyncIterator[dict[str, Any]]:
                yield {"model_name": "words", "inputs": [text], "request_id": "w-1",
                       "enable_empty_final_response": True}

            words = []
            async for result, error in client.stream_infer(requests()):
                assert error is None, error
                response = result.get_response()
                if response.parameters["triton_final_response"].bool_param:
                    break
                words.append((result.as_numpy("OUTPUT")[0], int(result.as_numpy("INDEX")[0]), response.id))
            assert words == [(b"one", 0, "w-1"), (b"two", 1, "w-1"), (b"three", 2, "w-1")]
        finally:
            await client.close()


async def test_blocking_clients_async_infer_and_start_stream():
    """tritonclient's blocking clients (in a worker thread: the gateway shares this loop):
    ``async_infer`` over both protocols, and ``start_stream`` / ``async_stream_infer``."""
    async with stack() as (_, url, address):
        def http_async_infer() -> np.ndarray:
            client = thttp.InferenceServerClient(url.removeprefix("http://"), concurrency=2)
            try:
                pending = [client.async_infer("add_sub", http_inputs(True)) for _ in range(4)]
                return np.stack([p.get_result().as_numpy("OUTPUT0") for p in pending])
            finally:
                client.close()

        def grpc_async_infer_and_stream() -> tuple[np.ndarray, list[Any]]:
            client = tgrpc.InferenceServerClient(address)
            try:
                done: queue.Queue[Any] = queue.Queue()
                client.async_infer("add_sub", grpc_inputs(), callback=lambda result, error: done.put((result, error)))
                result, error = done.get(timeout=30)
                assert error is None, error
                stream: queue.Queue[Any] = queue.Queue()
                client.start_stream(callback=lambda result, error: stream.put((result, error)))
                text = tgrpc.InferInput("TEXT", [1], "BYTES")
                text.set_data_from_numpy(np.array([b"a b"], dtype=object))
                client.async_stream_infer("words", [text], request_id="s", enable_empty_final_response=True)
                client.async_stream_infer("boom", grpc_inputs(), request_id="e")  # fails; the stream goes on
                client.async_stream_infer("add_sub", grpc_inputs(), request_id="u", enable_empty_final_response=True)
                seen: list[Any] = []
                finals = 0
                while finals < 2 or len([s for s in seen if s[0] == "error"]) < 1:
                    item, failure = stream.get(timeout=30)
                    if failure is not None:
                        seen.append(("error", str(failure)))
                        continue
                    response = item.get_response()
                    if response.parameters["triton_final_response"].bool_param:
                        finals += 1
                        continue
                    first = response.outputs[0].name
                    seen.append((response.id, item.as_numpy(first).reshape(-1)[0]))
                client.stop_stream()
                return result.as_numpy("OUTPUT1"), seen
            finally:
                client.close()

        rest = await asyncio.to_thread(http_async_infer)
        assert rest.shape == (4, 16) and (rest == A + B).all()
        unary, seen = await asyncio.to_thread(grpc_async_infer_and_stream)
        np.testing.assert_array_equal(unary, A - B)
        assert [s for s in seen if s[0] == "s"] == [("s", b"a"), ("s", b"b")]
        assert [s[0] for s in seen if s[0] == "u"] == ["u"] and ("u", (A + B)[0]) in seen
        assert [s for s in seen if s[0] == "error"] == [("error", "KeyError: 'no such key'")]


async def test_rest_and_grpc_give_identical_outputs():
    tensors = [
        ("F32", "FP32", np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)),
        ("F64", "FP64", np.array([1e-300, -2.5, np.pi])),
        ("F16", "FP16", np.array([0.5, -1.25, 65504], dtype=np.float16)),
        ("I8", "INT8", np.array([-128, 0, 127], dtype=np.int8)),
        ("I32", "INT32", np.array([[-(2**31), 2**31 - 1]], dtype=np.int32)),
        ("I64", "INT64", np.array([-(2**63), 2**63 - 1], dtype=np.int64)),
        ("U8", "UINT8", np.array([0, 255], dtype=np.uint8)),
        ("U64", "UINT64", np.array([0, 2**64 - 1], dtype=np.uint64)),
        ("B", "BOOL", np.array([True, False, True])),
        ("S", "BYTES", np.array([b"text", b"\x00\x01", "caf\u00e9".encode()], dtype=object)),
    ]
    async with stack() as (_, url, address):
        http_client = thttp_aio.InferenceServerClient(url.removeprefix("http://"))
        grpc_client = tgrpc_aio.InferenceServerClient(address)
        try:
            for binary in (False, True):
                http_in, grpc_in = [], []
                for name, datatype, array in tensors:
                    h = thttp_aio.InferInput(name, list(array.shape), datatype)
                    h.set_data_from_numpy(array, binary_data=binary)
                    g = tgrpc_aio.InferInput(name, list(array.shape), datatype)
                    g.set_data_from_numpy(array)
                    http_in.append(h)
                    grpc_in.append(g)
                over_http = await http_client.infer("echo", http_in)
                over_grpc = await grpc_client.infer("echo", grpc_in)
                for name, _, array in tensors:
                    h, g = over_http.as_numpy(name), over_grpc.as_numpy(name)
                    assert h.shape == g.shape == array.shape, name
                    assert h.dtype == g.dtype, name
                    np.testing.assert_array_equal(h, g)
                    np.testing.assert_array_equal(h, array)
            same = [await http_client.infer("add_sub", http_inputs(True, thttp_aio)),
                    await grpc_client.infer("add_sub", grpc_inputs(tgrpc_aio))]
            for name in ("OUTPUT0", "OUTPUT1"):
                assert same[0].as_numpy(name).tobytes() == same[1].as_numpy(name).tobytes()
        finally:
            await http_client.close()
            await grpc_client.close()


def binary_body(tensors: list[dict[str, Any]], data: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps({"inputs": tensors}).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


async def test_bad_tensors_are_400s_naming_the_tensor():
    fp32 = np.arange(16, dtype=np.float32).tobytes()
    async with stack() as (_, url, address), httpx.AsyncClient(base_url=url, timeout=10) as http:
        infer = "/v2/models/add_sub/infer"

        async def refused(content: bytes, headers: dict[str, str] | None = None, path: str = infer) -> str:
            response = await http.post(path, content=content, headers=headers or {})
            assert response.status_code == 400, response.text
            body = response.json()
            assert set(body) == {"error"}, body
            return str(body["error"])

        def tensor(name: str = "INPUT0", datatype: str = "FP32", shape: Any = (16,), **more: Any) -> dict[str, Any]:
            return {"name": name, "datatype": datatype, "shape": list(shape), **more}

        ok1 = tensor("INPUT1", data=[1.0] * 16)
        short = await refused(json.dumps({"inputs": [tensor(data=[1.0] * 15), ok1]}).encode())
        assert "INPUT0" in short and "16 elements" in short and "15 values" in short
        unknown = await refused(json.dumps({"inputs": [tensor(datatype="FP33", data=[1.0] * 16), ok1]}).encode())
        assert "INPUT0" in unknown and "unknown datatype 'FP33'" in unknown
        nested = await refused(json.dumps({"inputs": [tensor(shape=(2, 2), data=[[1.0, 2.0], [3.0]]), ok1]}).encode())
        assert "INPUT0" in nested
        # binary: a truncated section, a size past the body, a header length past the body
        body, headers = binary_body([tensor(parameters={"binary_data_size": 64}),
                                     tensor("INPUT1", parameters={"binary_data_size": 64})], fp32 + fp32[:40])
        truncated = await refused(body, headers)
        assert "INPUT1" in truncated and "64 bytes" in truncated
        body, headers = binary_body([tensor(parameters={"binary_data_size": 4096}), ok1], fp32)
        past = await refused(body, headers)
        assert "INPUT0" in past and "4096" in past
        body, headers = binary_body([tensor(parameters={"binary_data_size": 60}), ok1], fp32[:60])
        assert "INPUT0" in await refused(body, headers)  # 60 bytes cannot be 16 FP32 values
        body, headers = binary_body([tensor(parameters={"binary_data_size": 64}), ok1], fp32)
        headers["Inference-Header-Content-Length"] = str(len(body) + 10)
        assert "Inference-Header-Content-Length" in await refused(body, headers)
        # the model's declared inputs: datatype, shape, names
        wrong_type = await refused(json.dumps({"inputs": [tensor(datatype="FP64", data=[1.0] * 16), ok1]}).encode())
        assert "INPUT0" in wrong_type and "FP64" in wrong_type and "FP32" in wrong_type
        wrong_shape = await refused(json.dumps({"inputs": [tensor(shape=(4, 4), data=[1.0] * 16), ok1]}).encode())
        assert "INPUT0" in wrong_shape and "[4, 4]" in wrong_shape
        missing = await refused(json.dumps({"inputs": [ok1]}).encode())
        assert "INPUT0" in missing
        assert "body" in await refused(b"{not json")
        # a streaming model over REST infer
        assert "ModelStreamInfer" in await refused(
            json.dumps({"inputs": [tensor("TEXT", "BYTES", (1,), data=["x"])]}).encode(), path="/v2/models/words/infer")
        # the same over gRPC: INVALID_ARGUMENT naming the tensor
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb2_grpc.GRPCInferenceServiceStub(channel)
            request = pb2.ModelInferRequest(model_name="add_sub")
            for name, count in (("INPUT0", 15), ("INPUT1", 16)):
                t = request.inputs.add(name=name, datatype="FP32", shape=[16])
                t.contents.fp32_contents.extend([1.0] * count)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.ModelInfer(request)
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "INPUT0" in failed.value.details()
            raw = pb2.ModelInferRequest(model_name="add_sub", raw_input_contents=[fp32, fp32[:12]])
            raw.inputs.add(name="INPUT0", datatype="FP32", shape=[16])
            raw.inputs.add(name="INPUT1", datatype="FP32", shape=[16])
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.ModelInfer(raw)
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "INPUT1" in failed.value.details()


async def test_unknown_models_failing_handlers_and_lost_replicas():
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [16], "data": [0.0] * 16},
                       {"name": "INPUT1", "datatype": "FP32", "shape": [16], "data": [0.0] * 16}]}
    async with gateway() as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        grpc_client = tgrpc_aio.InferenceServerClient(gw.grpc_address or "")
        try:
            async with replica(app, "kserve-r1", gw.url):
                await until(lambda: "add_sub" in gw.service.catalog.models())
                for path, status, text in (("/v2/models/nope/infer", 404, "model 'nope' is not served here"),
                                           ("/v2/models/add_sub/versions/9/infer", 404, "no version '9'"),
                                           ("/v2/models/echo/versions/1/infer", 404, "no version '1'")):
                    response = await http.post(path, json=body)
                    assert response.status_code == status and text in response.json()["error"], response.text
                for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v2/models/add_sub/versions/9"):
                    assert (await http.get(path)).status_code == 404
                boom = await http.post("/v2/models/boom/infer", json={"inputs": [
                    {"name": "x", "datatype": "BYTES", "shape": [1], "data": ["x"]}]})
                assert boom.status_code == 500 and boom.json()["error"] == "KeyError: 'no such key'"
                assert "Traceback" not in boom.text and "File " not in boom.text
                with pytest.raises(InferenceServerException) as failed:
                    await grpc_client.infer("nope", grpc_inputs(tgrpc_aio))
                assert failed.value.status() == "StatusCode.NOT_FOUND"
                text = tgrpc_aio.InferInput("x", [1], "BYTES")
                text.set_data_from_numpy(np.array([b"x"], dtype=object))
                with pytest.raises(InferenceServerException) as failed:
                    await grpc_client.infer("boom", [text])
                assert failed.value.status() == "StatusCode.INTERNAL"
                assert failed.value.message() == "KeyError: 'no such key'"
                with pytest.raises(InferenceServerException) as failed:
                    await grpc_client.get_model_metadata("add_sub", "9")
                assert failed.value.status() == "StatusCode.NOT_FOUND"
            # the replica is gone: its models are known, none is live
            await until(lambda: not gw.service.catalog.models())
            gone = await http.post("/v2/models/add_sub/infer", json=body)
            assert gone.status_code == 503 and "no live replica" in gone.json()["error"], gone.text
            assert (await http.get("/v2/models/add_sub/ready")).status_code == 503
            assert (await http.get("/v2/health/ready")).json() == {"ready": False}
            index = (await http.get("/v2/repository/index")).json()
            assert {"name": "add_sub", "version": "1", "state": "UNAVAILABLE", "reason": "no live replica"} in index
            with pytest.raises(InferenceServerException) as failed:
                await grpc_client.infer("add_sub", grpc_inputs(tgrpc_aio))
            assert failed.value.status() == "StatusCode.UNAVAILABLE"
            assert not await grpc_client.is_model_ready("add_sub")
        finally:
            await grpc_client.close()


async def test_clients_that_leave_stop_the_handlers():
    async with stack() as (_, url, address):
        # an HTTP client that disconnects
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            call = asyncio.create_task(http.post("/v2/models/slow/infer", json={"inputs": []}))
            await until(STARTED["slow"].is_set)
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
        await until(CANCELLED["slow"].is_set)
        STARTED["slow"].clear()
        CANCELLED["slow"].clear()
        # a gRPC client that cancels a unary call
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb2_grpc.GRPCInferenceServiceStub(channel)
            unary = stub.ModelInfer(pb2.ModelInferRequest(model_name="slow"))
            await until(STARTED["slow"].is_set)
            unary.cancel()
            await until(CANCELLED["slow"].is_set)
            # and one that cancels its streams (a `def` handler stops at its next send, an async one at once)
            for model in ("slow_words", "slow_async_words"):
                async def requests(name: str = model) -> AsyncIterator[Any]:
                    yield pb2.ModelInferRequest(model_name=name)
                    await asyncio.sleep(3600)  # the client keeps its side open

                call = stub.ModelStreamInfer(requests())
                first = await call.read()
                assert first.infer_response.outputs[0].name == "OUTPUT" and not first.error_message
                call.cancel()
                await until(CANCELLED[model].is_set)


async def test_grpc_garbage_requests_and_failing_stream_requests():
    """Bytes that are not a ModelInferRequest are INVALID_ARGUMENT (in a stream: that request's
    error response); a stream's error responses carry the request's id, and the stream goes on."""
    async with stack() as (_, _, address), grpc.aio.insecure_channel(address) as channel:
        raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw(b"\xff\xff\xff\xff garbage", timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("the request is not a ModelInferRequest: ")

        def ask(model: str, id: str) -> bytes:
            message = pb2.ModelInferRequest(model_name=model, id=id)
            tensor = message.inputs.add(name="x", datatype="BYTES", shape=[1])
            tensor.contents.bytes_contents.append(b"x")
            return message.SerializeToString()

        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                       response_deserializer=pb2.ModelStreamInferResponse.FromString)
        call = stream(iter([b"\xff\xff\xff\xff garbage", ask("boom", "e"), ask("nope", "n"), ask("echo", "ok")]),
                      timeout=10)
        got = {(m.infer_response.id, m.error_message.split(":")[0] if m.error_message else "ok") async for m in call}
        assert got == {("", "the request is not a ModelInferRequest"), ("e", "KeyError"),
                       ("n", "model 'nope' is not served here (models"), ("ok", "ok")}
