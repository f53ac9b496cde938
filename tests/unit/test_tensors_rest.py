"""The KServe OIP v2 REST form and the binary tensor data extension."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from servemesh.errors import ValidationError
from servemesh.tensors import (
    DATATYPES,
    HEADER_LENGTH,
    InferRequest,
    InferResponse,
    decode_rest_request,
    decode_rest_response,
    encode_rest_request,
    encode_rest_response,
)

from .test_tensors_samples import all_types_request, all_types_response, sample_tensor


def _model_less(request: InferRequest) -> InferRequest:
    # the REST body has no model: it is in the URL
    request.model_name, request.model_version = "", ""
    return request


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_every_datatype_round_trips(binary):
    request = all_types_request()
    body, length = encode_rest_request(request, binary=binary)
    assert (length is not None) == binary
    back = decode_rest_request(body, length, model_name="model", model_version="3")
    assert back == request
    response = all_types_response()
    body, length = encode_rest_response(response, binary=binary)
    assert decode_rest_response(body, length) == response


def test_the_specs_json_example_decodes():
    body = json.dumps({
        "id": "42",
        "inputs": [
            {"name": "input0", "shape": [2, 2], "datatype": "UINT32", "data": [1, 2, 3, 4]},
            {"name": "input1", "shape": [3], "datatype": "BOOL", "data": [True, False, True]},
        ],
        "outputs": [{"name": "output0"}],
    }).encode()
    request = decode_rest_request(body, None, model_name="mymodel")
    assert request.model_name == "mymodel" and request.id == "42"
    assert request.as_numpy("input0").tolist() == [[1, 2], [3, 4]]
    assert request.as_numpy("input0").dtype == np.uint32
    assert request.as_numpy("input1").tolist() == [True, False, True]
    assert [o.name for o in request.outputs] == ["output0"]


def test_nested_data_is_row_major():
    body = json.dumps({"inputs": [
        {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5, 6]]},
        {"name": "s", "shape": [2, 1], "datatype": "BYTES", "data": [["ab"], ["cd"]]},
    ]}).encode()
    request = decode_rest_request(body)
    assert request.as_numpy("x").tolist() == [[1, 2, 3], [4, 5, 6]]
    assert request.as_numpy("s").tolist() == [[b"ab"], [b"cd"]]


def test_the_specs_binary_example_decodes():
    # the binary extension's own example: a 16-byte FP32 input after the JSON
    head = json.dumps({"model_name": "mymodel", "inputs": [
        {"name": "input0", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}}],
        "outputs": [{"name": "output0", "parameters": {"binary_data": True}}]}).encode()
    data = np.array([1.5, 2.5, -1.0, 0.0], dtype="<f4").tobytes()
    request = decode_rest_request(head + data, str(len(head)))
    assert request.as_numpy("input0").tolist() == [[1.5, 2.5], [-1.0, 0.0]]
    assert request.inputs[0].parameters == {}  # binary_data_size is transport, not a tensor parameter
    assert request.outputs[0].parameters == {"binary_data": True}


def test_binary_layout_is_triton_s():
    request = InferRequest()
    request.add_input("s", "BYTES", [2], bytes_contents=[b"ab", b""])
    request.add_input("b", "BOOL", [2], bool_contents=[True, False])
    request.add_input("i", "INT16", [2], int_contents=[1, -2])
    body, length = encode_rest_request(request, binary=True)
    head = json.loads(body[:length])
    assert [t["parameters"]["binary_data_size"] for t in head["inputs"]] == [10, 2, 4]
    assert all("data" not in t for t in head["inputs"])
    assert body[length:] == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0) + b"\x01\x00" + \
        struct.pack("<hh", 1, -2)


def test_outputs_go_binary_as_the_request_asks():
    response = InferResponse("m")
    for name in ("a", "b", "c"):
        response.set_numpy(name, np.arange(2, dtype=np.int32))

    def binary_names(request, **kw):
        body, length = encode_rest_response(response, request, **kw)
        head = json.loads(body if length is None else body[:length])
        assert decode_rest_response(body, length) == response
        return sorted(o["name"] for o in head["outputs"] if "binary_data_size" in o.get("parameters", {}))

    plain = InferRequest()
    assert binary_names(plain) == []
    assert binary_names(plain, binary=True) == ["a", "b", "c"]
    one = InferRequest(outputs=["a", "b"])
    one.outputs[0].parameters["binary_data"] = True
    assert binary_names(one) == ["a"]
    everything = InferRequest(parameters={"binary_data_output": True})
    everything.add_requested_output("b", {"binary_data": False})
    assert binary_names(everything) == ["a", "c"]
    assert binary_names(None) == []


def test_json_that_cannot_carry_a_tensor_exactly_sends_it_binary():
    response = InferResponse("m")
    response.add_output("text", "BYTES", [1], bytes_contents=[b"fine"])
    response.add_output("blob", "BYTES", [1], bytes_contents=[b"\xff\xfe"])
    response.set_numpy("f", np.array([1.0, np.nan], dtype=np.float32))
    response.set_numpy("g", np.array([1.0, 2.0], dtype=np.float64))
    body, length = encode_rest_response(response)
    assert length is not None
    head = json.loads(body[:length])
    kinds = {o["name"]: ("binary" if "binary_data_size" in o.get("parameters", {}) else o["data"])
             for o in head["outputs"]}
    assert kinds == {"text": ["fine"], "blob": "binary", "f": "binary", "g": [1.0, 2.0]}
    back = decode_rest_response(body, length)
    assert back == response
    assert np.isnan(back.as_numpy("f")[1])


def test_fp16_and_bf16_are_numbers_in_json():
    response = InferResponse("m", outputs=[sample_tensor("FP16", "h"), sample_tensor("BF16", "b")])
    body, length = encode_rest_response(response)
    assert length is None
    outputs = json.loads(body)["outputs"]
    assert outputs[0]["data"] == [0.5, -65504.0, 5.960464477539063e-08, 1.0009765625]
    # 1e-30 is 0x0DA24260 in float32: its BF16 rounds down to 0x0DA2, 1.265625 * 2**-100
    assert outputs[1]["data"] == [1.0, -2.5, 3.140625, 1.265625 * 2**-100]
    assert decode_rest_response(body) == response


def test_response_json_leaves_out_empty_optional_fields():
    response = InferResponse("m")
    response.add_output("y", "INT8", [1], int_contents=[1])
    body, _ = encode_rest_response(response)
    assert json.loads(body) == {"model_name": "m", "outputs": [
        {"name": "y", "datatype": "INT8", "shape": [1], "data": [1]}]}


def test_shape_mismatch_names_the_tensor_in_json_and_binary():
    with pytest.raises(ValidationError, match="tensor 'x' has shape \\[3\\], which holds 3 elements, but 2") as info:
        decode_rest_request(b'{"inputs": [{"name": "x", "shape": [3], "datatype": "INT32", "data": [1, 2]}]}')
    assert info.value.field == "x"
    head = b'{"inputs": [{"name": "y", "shape": [3], "datatype": "INT32", "parameters": {"binary_data_size": 8}}]}'
    with pytest.raises(ValidationError, match="tensor 'y': raw data holds 8 bytes, but 3 INT32 elements take 12"):
        decode_rest_request(head + bytes(8), len(head))
    head = b'{"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 5}}]}'
    with pytest.raises(ValidationError, match="'s' has shape \\[2\\], which holds 2 elements, but its raw BYTES"):
        decode_rest_request(head + struct.pack("<I", 1) + b"a", len(head))


def _binary_body(size: int, extra: bytes = b"") -> tuple[bytes, int]:
    head = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": size}}]}).encode()
    return head + extra, len(head)


@pytest.mark.parametrize(("body", "length", "message"), [
    (b'{"inputs": []}', "abc", f"{HEADER_LENGTH} must be an integer"),
    (b'{"inputs": []}', 99, f"{HEADER_LENGTH} is 99, but the body has 14 bytes"),
    (b'{"inputs": []}', 0, f"{HEADER_LENGTH} is 0"),
    (*_binary_body(6, struct.pack("<I", 2) + b"ab" + b"tail"),
     "10 bytes of binary data, but its tensors' binary_data_size add up to 6"),
    (*_binary_body(10, struct.pack("<I", 2) + b"ab"), "needs 10 bytes of binary data from offset 0"),
    (*_binary_body(6, struct.pack("<I", 5) + b"ab"), "element 0 says 5 bytes, but only 2 remain"),
    (*_binary_body(2, b"ab"), "ends inside the 4-byte length of element 0"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 4}}]}',
     None, f"is the {HEADER_LENGTH} header missing"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [1], '
     b'"parameters": {"binary_data_size": 1}}]}\x01', 113, "both data and binary_data_size"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "parameters": {"binary_data_size": -1}}]}',
     None, "binary_data_size must be a byte count, got -1"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT8"}]}', None,
     "'x' has neither data nor a binary_data_size parameter"),
    (b'{"inputs": [{"name": "x", "datatype": "INT8", "data": [1]}]}', None, "inputs\\[0\\].shape is missing"),
    (b'{"inputs": [{"name": "x", "shape": [1], "data": [1]}]}', None, "inputs\\[0\\].datatype is missing"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}]}', None,
     "FP32 values must be numbers, got strings"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [1]}]}', None,
     "BYTES elements must be bytes or str, got int"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [256]}]}', None,
     "value 256 is out of the UINT8 range"),
    (b'{"id": 7, "inputs": []}', None, "id must be a string"),
    (b'{"outputs": []}', None, "inputs is missing"),
    (b'\xff', None, "the request JSON is not valid JSON"),
])
def test_bad_bodies_get_clear_errors(body, length, message):
    with pytest.raises(ValidationError, match=message):
        decode_rest_request(body, length)


def test_nan_from_pythons_json_module_is_read():
    request = decode_rest_request(b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", '
                                  b'"data": [NaN, -Infinity]}]}')
    values = request.as_numpy("x")
    assert np.isnan(values[0]) and values[1] == -np.inf


def test_parameters_round_trip_and_binary_data_size_is_not_kept():
    request = InferRequest(id="7", parameters={"priority": 2, "timeout": 1.5, "tag": "x", "sequence_start": True})
    request.add_input("x", "UINT8", [2], data=[1, 2], parameters={"unit": "px"})
    request.add_requested_output("y", {"binary_data": True, "class_count": 2})
    for binary in (False, True):
        body, length = encode_rest_request(request, binary=binary)
        assert decode_rest_request(body, length) == request


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_each_datatype_alone_in_binary(datatype):
    response = InferResponse("m", outputs=[sample_tensor(datatype, "t")])
    body, length = encode_rest_response(response, binary=True)
    size = json.loads(body[:length])["outputs"][0]["parameters"]["binary_data_size"]
    assert size == len(body) - length
    assert decode_rest_response(body, length) == response


@pytest.mark.parametrize("count", [0, 1, 63, 64, 1000])
def test_bytes_binary_layout_holds_for_few_and_many_elements(count):
    # few elements are packed one by one, many by numpy: both must write Triton's layout
    items = [bytes([i % 256]) * (i % 7) for i in range(count)]
    response = InferResponse("m")
    response.add_output("s", "BYTES", [count], bytes_contents=items)
    body, length = encode_rest_response(response, binary=True)
    assert body[length:] == b"".join(struct.pack("<I", len(item)) + item for item in items)
    assert decode_rest_response(body, length) == response
