"""A replica's OIP v2 gRPC server (its ``--port``) and the API server's gRPC connector, over
real sockets: failing handlers in unary calls and in ``ModelStreamInfer`` streams, bytes
that are not a request, unknown models, servemesh errors kept whole across gRPC hops, and
an endpoint that does not speak gRPC at all."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from servemesh.capability import App, ModelInferResponse
from servemesh.tensors.proto import grpc_predict_v2_pb2 as pb2
from servemesh.tensors.proto import grpc_predict_v2_pb2_grpc as pb2_grpc

from .capability_apps import TEXT, api_server, replica, until


def reply(text: str) -> ModelInferResponse:
    response = ModelInferResponse()
    response.add_output(name="response", datatype="BYTES", shape=[1], bytes_contents=[text.encode()])
    return response


def make_app() -> App:
    app = App()

    @app.capability(type="echo")
    def echo(request, context):
        return reply(f"echo {request.id}")

    @app.capability(type="raise")
    def raising(request, context):
        raise KeyError("x")

    @app.capability(type="sraise_after", stream=True)
    def sraise_after(request, context, stream):
        stream.send(reply("one"))
        stream.send(reply("two"))
        raise ValueError("after two frames")

    @app.capability(type="front")
    def front(request, context):
        return context.delegate(capability={"type": "deep"})

    return app


def request(id: str = "r1", model_name: str = "") -> pb2.ModelInferRequest:
    message = pb2.ModelInferRequest(id=id, model_name=model_name)
    message.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"x")
    return message


def texts(message: pb2.ModelStreamInferResponse) -> list[bytes]:
    return [bytes(o.contents.bytes_contents[0]) for o in message.infer_response.outputs]


@contextlib.asynccontextmanager
async def stub_of(endpoint: str) -> AsyncIterator[pb2_grpc.GRPCInferenceServiceStub]:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        yield pb2_grpc.GRPCInferenceServiceStub(channel)


async def test_a_failing_request_of_a_stream_gets_an_error_response_and_the_stream_goes_on():
    async with replica(make_app(), "g", None) as (_, endpoint), stub_of(endpoint) as stub:
        for kind, expected in (("sraise_after", [[b"one"], [b"two"], "ValueError: after two frames"] * 2),
                               ("raise", ["KeyError: 'x'"] * 2)):
            got: list[object] = []
            ids = []
            async for message in stub.ModelStreamInfer(iter([request("s0"), request("s1")]), timeout=10,
                                                       metadata=[("x-capability-type", kind)]):
                got.append(message.error_message or texts(message))
                if message.error_message:
                    ids.append(message.infer_response.id)
            assert got == expected
            assert ids == ["s0", "s1"]  # the client can tell which request failed


async def test_a_raising_handler_over_grpc_names_its_exception():
    async with api_server() as (_, url), replica(make_app(), "g", None) as (_, endpoint), stub_of(endpoint) as stub, \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelInfer(request(), metadata=[("x-capability-type", "raise")], timeout=10)
        assert err.value.code() == grpc.StatusCode.INTERNAL and err.value.details() == "KeyError: 'x'"
        # through the API server, to a replica registered by hand (reached over gRPC)
        registered = await http.post("/register", json={"replica_id": "by-hand", "endpoint": endpoint,
                                                         "capabilities": [{"type": "raise"}]})
        assert registered.status_code == 200
        failed = await http.post("/infer/json", headers={"X-Capability-Type": "raise"}, json=TEXT)
        assert failed.status_code == 500, failed.text
        assert failed.json()["error_type"] == "KeyError" and failed.json()["error"] == "KeyError: 'x'"


async def test_delegation_refused_keeps_its_status_across_grpc_hops():
    async with api_server() as (api, url), replica(make_app(), "r1", url) as (_, front_grpc), \
            replica(make_app(), "r2", None, delegation_max_depth=1) as (_, deep_grpc), \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        # r2, registered by hand, claims a capability it does not serve: it would delegate,
        # and its depth limit refuses
        registered = await http.post("/register", json={"replica_id": "deep-by-hand", "endpoint": deep_grpc,
                                                         "capabilities": [{"type": "deep"}]})
        assert registered.status_code == 200
        await until(lambda: len(api.router.replicas()) == 2)
        async with stub_of(front_grpc) as stub:  # a client -> r1 (gRPC) -> r2 (gRPC): refused there
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ModelInfer(request(), metadata=[("x-capability-type", "front")], timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.details().startswith("delegation of capability {type=deep} refused: the chain r1 -> r2")
        # the API server -> r1 -> r2 (gRPC); the API server -> r2 (gRPC) with a chain at the limit
        # (streamed: r2's ModelStreamInfer error response carries the error's kind and fields)
        for path, headers, chain in (("/infer/json", {"X-Capability-Type": "front"}, ["r1", "r2"]),
                                     ("/infer/stream", {"X-Capability-Type": "front"}, ["r1", "r2"]),
                                     *[(path, {"X-Capability-Type": "deep", "X-Delegated-From": "elsewhere",
                                               "X-Delegation-Depth": "1"}, ["elsewhere", "r2"])
                                       for path in ("/infer/json", "/infer/stream")]):
            refused = await http.post(path, headers=headers, json=TEXT)
            assert refused.status_code == 508, refused.text
            body = refused.json()
            assert body["reason"] == "depth" and body["chain"] == chain
            assert body["error"].startswith("delegation of capability {type=deep} refused"), body


async def test_bytes_that_are_not_a_request_are_invalid_argument():
    async with replica(make_app(), "g", None) as (_, endpoint), grpc.aio.insecure_channel(endpoint) as channel:
        raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw(b"\xff\xff\xff\xff garbage", metadata=[("x-capability-type", "echo")], timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("the request is not a ModelInferRequest: ")
        # in a stream: that request gets an error response, the next one is served
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                       response_deserializer=pb2.ModelStreamInferResponse.FromString)
        call = stream(iter([b"\xff\xff\xff\xff garbage", request("ok").SerializeToString()]),
                      metadata=[("x-capability-type", "echo")], timeout=10)
        got = [m.error_message or texts(m) async for m in call]
        assert got[0].startswith("the request is not a ModelInferRequest: ") and got[1:] == [[b"echo ok"]]


async def test_metadata_of_an_unknown_model_is_not_found():
    async with replica(make_app(), "g", None) as (_, endpoint), stub_of(endpoint) as stub:
        known = await stub.ModelMetadata(pb2.ModelMetadataRequest(name="echo"), timeout=10)
        assert known.name == "echo"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelMetadata(pb2.ModelMetadataRequest(name="nope"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "'nope'" in err.value.details() and "echo" in err.value.details() and "raise" in err.value.details()


async def test_a_request_that_names_no_capability_is_told_so():
    async with replica(make_app(), "g", None) as (_, endpoint), stub_of(endpoint) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelInfer(request(), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = err.value.details()
        assert "names no capability" in details and "x-capability-" in details and "model_name" in details
        assert "{type=echo}" in details and "{model=}" not in details


async def not_grpc(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A bare HTTP/2 server that answers every request 404 (a web server, not gRPC)."""
    def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
        return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload

    try:
        await reader.readexactly(24)  # the client's connection preface
        writer.write(frame(4, 0, 0))  # our SETTINGS
        while True:
            head = await reader.readexactly(9)
            length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
            stream = int.from_bytes(head[5:], "big") & 0x7FFFFFFF
            await reader.readexactly(length)
            if kind == 4 and not flags & 1:
                writer.write(frame(4, 1, 0))  # SETTINGS ack
            elif kind == 6 and not flags & 1:
                writer.write(frame(6, 1, 0, b"\0" * 8))  # PING ack
            elif kind in (0, 1) and flags & 1:  # the request's end: ":status: 404" (HPACK static index 13)
                writer.write(frame(1, 0x5, stream, b"\x8d"))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def test_an_endpoint_that_is_not_an_oip_grpc_server_is_a_502():
    web = await asyncio.start_server(not_grpc, "127.0.0.1", 0)
    other = grpc.aio.server()  # a gRPC server of some other service
    other_address = f"127.0.0.1:{other.add_insecure_port('127.0.0.1:0')}"
    await other.start()
    try:
        async with api_server() as (_, url), httpx.AsyncClient(base_url=url, timeout=10) as http:
            for kind, address in (("web", f"127.0.0.1:{web.sockets[0].getsockname()[1]}"), ("other", other_address)):
                registered = await http.post("/register", json={"replica_id": kind, "endpoint": address,
                                                                 "capabilities": [{"type": kind}]})
                assert registered.status_code == 200
                failed = await http.post("/infer/json", headers={"X-Capability-Type": kind}, json=TEXT)
                assert failed.status_code == 502, failed.text
                expected = f"the replica at {address} does not answer OIP v2 gRPC (UNIMPLEMENTED)"
                assert failed.json()["error"] == expected
                streamed = await http.post("/infer/stream", headers={"X-Capability-Type": kind}, json=TEXT)
                assert streamed.status_code == 502 and streamed.json()["error"] == expected
    finally:
        web.close()
        await other.stop(None)
