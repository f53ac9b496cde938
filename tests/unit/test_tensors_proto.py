"""The protobuf form, the generated modules, and what handlers return or stream."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from servemesh.errors import RemoteError, SerializationError, ValidationError
from servemesh.tensors import (
    DATATYPES,
    InferRequest,
    InferResponse,
    decode_contents_request,
    encode_contents_response,
    from_proto,
    raw,
    response_from_any,
    to_proto,
)
from servemesh.tensors.proto import grpc_predict_v2_pb2 as pb2

from .test_tensors_samples import all_types_request, all_types_response, sample_tensor

TYPED = [d for d in DATATYPES if d not in ("FP16", "BF16")]


@pytest.mark.parametrize("raw", [False, True], ids=["typed", "raw"])
def test_messages_round_trip_through_wire_bytes(raw):
    request = InferRequest("model", model_version="3", id="req-1", parameters={"a": 1})
    request.inputs = [sample_tensor(d) for d in TYPED]
    message = to_proto(request, raw=raw)
    assert bool(message.raw_input_contents) == raw
    assert from_proto(pb2.ModelInferRequest.FromString(message.SerializeToString())) == request
    response = InferResponse("model", id="req-1")
    response.outputs = [sample_tensor(d) for d in TYPED]
    message = to_proto(response, raw=raw)
    assert bool(message.raw_output_contents) == raw
    assert from_proto(pb2.ModelInferResponse.FromString(message.SerializeToString())) == response


def test_fp16_and_bf16_make_the_whole_message_raw():
    request = all_types_request()
    message = to_proto(request)
    assert len(message.raw_input_contents) == len(DATATYPES)
    assert not any(t.HasField("contents") for t in message.inputs)
    assert from_proto(message) == request
    assert from_proto(to_proto(all_types_response())) == all_types_response()


@pytest.mark.parametrize(("datatype", "field"), [
    ("BOOL", "bool_contents"), ("UINT8", "uint_contents"), ("UINT16", "uint_contents"),
    ("UINT32", "uint_contents"), ("UINT64", "uint64_contents"), ("INT8", "int_contents"),
    ("INT16", "int_contents"), ("INT32", "int_contents"), ("INT64", "int64_contents"),
    ("FP32", "fp32_contents"), ("FP64", "fp64_contents"), ("BYTES", "bytes_contents"),
])
def test_typed_contents_use_the_datatypes_field(datatype, field):
    tensor = sample_tensor(datatype, "t")
    entry = to_proto(InferResponse(outputs=[tensor])).outputs[0]
    assert [f.name for f, _ in entry.contents.ListFields()] == [field]
    assert list(getattr(entry.contents, field)) == (list(tensor.data) if datatype == "BYTES"
                                                     else tensor.data.tolist())
    assert list(entry.shape) == [2, 2] and entry.datatype == datatype


def test_raw_contents_are_the_binary_layout():
    request = InferRequest()
    request.add_input("s", "BYTES", [2], bytes_contents=[b"ab", b""])
    request.add_input("h", "FP16", [1], fp32_contents=[1.0])
    message = to_proto(request)
    assert list(message.raw_input_contents) == [struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0),
                                                np.float16(1.0).tobytes()]


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d != "BYTES"])
def test_raw_bytes_are_little_endian_row_major_whatever_the_array(datatype):
    info = DATATYPES[datatype]
    array = sample_tensor(datatype).data
    want = b"".join(bytes(raw.array_raw(array[i:i + 1], info)) for i in range(len(array)))
    assert raw.array_bytes(array, info) == want
    assert raw.array_bytes(array[::-1][::-1], info) == want  # a view
    if array.dtype.itemsize > 1 and datatype != "BOOL":  # the same values stored big-endian
        assert raw.array_bytes(array.astype(array.dtype.newbyteorder(">")), info) == want
    for buffer in (want, bytearray(want), memoryview(want)):  # read back, read-only, no copy needed
        back = raw.array_from_raw(buffer, info, len(array), "t")
        assert back.dtype == info.dtype and back.tolist() == array.tolist()
        assert not back.flags.writeable


def test_fp16_and_bf16_in_fp32_contents_are_read():
    message = pb2.ModelInferRequest(inputs=[
        pb2.ModelInferRequest.InferInputTensor(name="h", datatype="FP16", shape=[2],
                                               contents=pb2.InferTensorContents(fp32_contents=[0.5, 2.0])),
        pb2.ModelInferRequest.InferInputTensor(name="b", datatype="BF16", shape=[1],
                                               contents=pb2.InferTensorContents(fp32_contents=[1.0])),
    ])
    request = from_proto(message)
    assert request.as_numpy("h").dtype == np.float16 and request.as_numpy("h").tolist() == [0.5, 2.0]
    assert request.as_numpy("b").tolist() == [0x3F80]


def test_parameters_use_every_infer_parameter_member():
    params = {"b": True, "i": -3, "u": 2**64 - 1, "d": 0.5, "s": "text"}
    request = InferRequest("m", parameters=params)
    request.add_input("x", "INT8", [1], data=[1], parameters={"p": 1.5})
    request.add_requested_output("y", {"binary_data": True})
    message = to_proto(request)
    assert {k: v.WhichOneof("parameter_choice") for k, v in message.parameters.items()} == {
        "b": "bool_param", "i": "int64_param", "u": "uint64_param", "d": "double_param", "s": "string_param"}
    back = from_proto(pb2.ModelInferRequest.FromString(message.SerializeToString()))
    assert back == request
    assert back.parameters == params and type(back.parameters["b"]) is bool


def test_shape_mismatch_names_the_tensor_typed_and_raw():
    typed = pb2.ModelInferRequest(inputs=[pb2.ModelInferRequest.InferInputTensor(
        name="x", datatype="INT32", shape=[3], contents=pb2.InferTensorContents(int_contents=[1, 2]))])
    with pytest.raises(ValidationError, match="tensor 'x' has shape \\[3\\], which holds 3 elements, but 2"):
        from_proto(typed)
    raw = pb2.ModelInferResponse(outputs=[pb2.ModelInferResponse.InferOutputTensor(
        name="y", datatype="FP32", shape=[3])], raw_output_contents=[bytes(8)])
    with pytest.raises(ValidationError, match="tensor 'y': raw data holds 8 bytes, but 3 FP32 elements take 12"):
        from_proto(raw)


def _input(name: str, datatype: str, shape: list[int], **contents: list) -> pb2.ModelInferRequest.InferInputTensor:
    return pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape,
                                                  contents=pb2.InferTensorContents(**contents))


@pytest.mark.parametrize(("message", "error"), [
    (pb2.ModelInferRequest(inputs=[_input("x", "FP32", [1], int_contents=[1])]),
     "'x' is FP32, so its values go in fp32_contents, not in int_contents"),
    (pb2.ModelInferRequest(inputs=[_input("x", "INT32", [1], int_contents=[1], fp32_contents=[1.0])]),
     "'x' has values in int_contents and fp32_contents"),
    (pb2.ModelInferRequest(inputs=[_input("x", "INT8", [1], int_contents=[1000])]),
     "value 1000 is out of the INT8 range"),
    (pb2.ModelInferRequest(inputs=[_input("x", "UINT16", [1], uint_contents=[70000])]),
     "value 70000 is out of the UINT16 range"),
    (pb2.ModelInferRequest(inputs=[_input("x", "FLOAT32", [1], fp32_contents=[1.0])]), "unknown datatype 'FLOAT32'"),
    (pb2.ModelInferRequest(inputs=[_input("x", "FP32", [-1], fp32_contents=[1.0])]), "negative dimension"),
    (pb2.ModelInferRequest(inputs=[_input("x", "INT8", [1]), _input("y", "INT8", [1])], raw_input_contents=[b"\x01"]),
     "2 inputs but 1 raw contents"),
    (pb2.ModelInferRequest(inputs=[_input("x", "INT8", [1], int_contents=[1])], raw_input_contents=[b"\x01"]),
     "'x' has contents, but the message uses raw contents"),
    (pb2.ModelInferRequest(inputs=[_input("x", "INT8", [1], int_contents=[1]), _input("x", "INT8", [1],
                                                                                        int_contents=[2])]),
     "inputs has two tensors named 'x'"),
    (pb2.ModelInferRequest(parameters={"p": pb2.InferParameter()}), "parameter 'p' has no value"),
    (pb2.ModelInferRequest(inputs=[_input("", "INT8", [1], int_contents=[1])]), "tensor name must be a non-empty"),
])
def test_bad_messages_get_clear_errors(message, error):
    with pytest.raises(ValidationError, match=error):
        from_proto(message)


def test_wrong_objects_are_refused():
    with pytest.raises(SerializationError, match="to_proto takes an InferRequest or InferResponse, got dict"):
        to_proto({})  # type: ignore[call-overload]
    with pytest.raises(SerializationError, match=r"from_proto takes a ModelInferRequest.*got ServerLiveRequest"):
        from_proto(pb2.ServerLiveRequest())
    with pytest.raises(SerializationError, match="must be InferTensor objects, got str"):
        to_proto(InferResponse(outputs=["y"]))  # type: ignore[list-item]
    request = InferRequest()
    request.parameters["x"] = [1]  # type: ignore[assignment]  # the dict is the caller's: checked when encoded
    with pytest.raises(ValidationError, match="parameter 'x' is list"):
        to_proto(request)


# The streaming handler of the AnyServe seed (docs "Streaming Inference"), unchanged but
# for the import of the generated module.
def stream_handler(request, context, stream):
    tokens = ["Hello", " ", "world", "!"]

    for i, token in enumerate(tokens):
        is_last = (i == len(tokens) - 1)

        response = pb2.ModelStreamInferResponse(
            infer_response=pb2.ModelInferResponse(
                model_name="chat",
                id=request.id,
            )
        )

        # Add text_output
        text_output = response.infer_response.outputs.add()
        text_output.name = "text_output"
        text_output.datatype = "BYTES"
        text_output.shape.append(1)
        text_output.contents.bytes_contents.append(token.encode())

        # Add finish_reason
        finish_output = response.infer_response.outputs.add()
        finish_output.name = "finish_reason"
        finish_output.datatype = "BYTES"
        finish_output.shape.append(1)
        finish_output.contents.bytes_contents.append(
            b"stop" if is_last else b""
        )

        stream.send(response)


# The seed's documented SSE output of that handler.
DOCUMENTED_SSE = """\
data: {"model_name": "chat", "outputs": [{"name": "text_output", "contents": {"bytes_contents": ["Hello"]}}]}
data: {"model_name": "chat", "outputs": [{"name": "text_output", "contents": {"bytes_contents": [" "]}}]}
data: {"model_name": "chat", "outputs": [{"name": "text_output", "contents": {"bytes_contents": ["world"]}}]}
data: {"model_name": "chat", "outputs": [{"name": "text_output", "contents": {"bytes_contents": ["!"]}}, \
{"name": "finish_reason", "contents": {"bytes_contents": ["stop"]}}]}
"""


class _Stream:
    def __init__(self) -> None:
        self.items: list[object] = []

    def send(self, item: object) -> None:
        self.items.append(item)


def test_the_seeds_streaming_handler_yields_the_documented_sse_events():
    request = decode_contents_request(b'{"model_name": "chat", "inputs": [{"name": "text", "datatype": "BYTES", '
                                      b'"shape": [1], "contents": {"bytes_contents": ["Hello"]}}]}')
    stream = _Stream()
    stream_handler(request, None, stream)
    events = [json.loads(json.dumps(encode_contents_response(response_from_any(item)))) for item in stream.items]
    documented = [json.loads(line.removeprefix("data: ")) for line in DOCUMENTED_SSE.splitlines()]
    assert len(events) == len(documented) == 4
    for event, doc in zip(events, documented, strict=True):
        assert event["model_name"] == doc["model_name"]
        ours = {o["name"]: o for o in event["outputs"]}
        for output in doc["outputs"]:  # every documented output, key and value is there
            assert {k: ours[output["name"]][k] for k in output} == output
            assert ours[output["name"]]["datatype"] == "BYTES" and ours[output["name"]]["shape"] == [1]
        # the documentation leaves out the empty finish_reason of the first three events
        extra = [o for name, o in ours.items() if name not in {d["name"] for d in doc["outputs"]}]
        assert extra == ([] if doc is documented[-1] else [
            {"name": "finish_reason", "datatype": "BYTES", "shape": [1], "contents": {"bytes_contents": [""]}}])


def test_response_from_any_takes_every_form_a_handler_uses():
    ours = InferResponse("m", id="1")
    ours.add_output("y", "INT64", [2], int64_contents=[1, 2])
    assert response_from_any(ours) is ours
    assert response_from_any(to_proto(ours)) == ours
    assert response_from_any(pb2.ModelStreamInferResponse(infer_response=to_proto(ours))) == ours
    assert response_from_any(encode_contents_response(ours)) == ours
    assert response_from_any({"infer_response": encode_contents_response(ours)}) == ours


def test_stream_errors_raise_remote_error():
    with pytest.raises(RemoteError, match="handler raised InferError: model exploded") as info:
        response_from_any(pb2.ModelStreamInferResponse(error_message="model exploded"))
    assert info.value.message == "model exploded"
    with pytest.raises(RemoteError, match="out of tokens"):
        response_from_any({"error_message": "out of tokens"})  # AnyServe's stream.error(...)
    with pytest.raises(SerializationError, match="a handler returned int; it must return or stream"):
        response_from_any(42)


def _foreign_classes() -> descriptor_pool.DescriptorPool:
    # the same messages in another module, as tritonclient or kserve generate them
    pool = descriptor_pool.DescriptorPool()
    proto = descriptor_pb2.FileDescriptorProto.FromString(pb2.DESCRIPTOR.serialized_pb)
    proto.name = "tritonclient/grpc_service.proto"
    pool.Add(proto)
    return pool


def test_messages_from_other_modules_are_read_through_their_bytes():
    pool = _foreign_classes()
    foreign = message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelInferResponse"))
    message = foreign(model_name="triton")
    entry = message.outputs.add(name="y", datatype="FP32", shape=[1])
    entry.contents.fp32_contents.append(0.25)
    response = response_from_any(message)
    assert response.model_name == "triton" and response.as_numpy("y").tolist() == [0.25]
    stream = message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelStreamInferResponse"))
    assert from_proto(stream(infer_response=message)) == response


def test_generated_modules_load_beside_other_inference_protos_in_the_default_pool():
    # tritonclient, kserve and MLServer register "inference.*" in protobuf's default pool; ours must not clash
    code = """
import sys
from google.protobuf import descriptor_pb2, descriptor_pool
def register_theirs():
    proto = descriptor_pb2.FileDescriptorProto.FromString(bytes.fromhex(sys.argv[2]))
    proto.name = "tritonclient/grpc_service.proto"
    descriptor_pool.Default().Add(proto)
if sys.argv[1] == "theirs-first":
    register_theirs()
from servemesh.tensors.proto import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
if sys.argv[1] == "ours-first":
    register_theirs()
assert descriptor_pool.Default().FindMessageTypeByName("inference.ModelInferRequest")
print(grpc_predict_v2_pb2.ModelInferRequest(model_name="ok").model_name, grpc_predict_v2_pb2_grpc.__name__)
"""
    for order in ("theirs-first", "ours-first"):
        out = subprocess.run([sys.executable, "-W", "error", "-c", code, order, pb2.DESCRIPTOR.serialized_pb.hex()],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["ok", "servemesh.tensors.proto.grpc_predict_v2_pb2_grpc"]


def test_generated_service_has_the_kserve_rpcs_and_the_stream():
    service = pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    methods = {m.name: (m.input_type.name, m.output_type.name) for m in service.methods}
    assert methods["ModelInfer"] == ("ModelInferRequest", "ModelInferResponse")
    assert methods["ModelStreamInfer"] == ("ModelInferRequest", "ModelStreamInferResponse")
    assert {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
            "RepositoryModelLoad", "RepositoryModelUnload"} <= set(methods)
    stream = service.methods_by_name["ModelStreamInfer"]
    assert stream.client_streaming and stream.server_streaming
    fields = {f.name: f.number for f in pb2.InferParameter.DESCRIPTOR.fields}
    assert fields == {"bool_param": 1, "int64_param": 2, "string_param": 3, "double_param": 4, "uint64_param": 5}
    assert {f.name: f.number for f in pb2.ModelStreamInferResponse.DESCRIPTOR.fields} == {
        "error_message": 1, "infer_response": 2}
    assert pb2.ModelInferResponse.__module__ == "servemesh.tensors.proto.grpc_predict_v2_pb2"
