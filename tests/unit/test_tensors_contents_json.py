"""The contents JSON of AnyServe's /infer/json and /infer/stream."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from servemesh.errors import ValidationError
from servemesh.tensors import (
    DATATYPES,
    InferResponse,
    InferTensor,
    decode_contents_request,
    decode_contents_response,
    encode_contents_request,
    encode_contents_response,
)

from .test_tensors_samples import all_types_request, all_types_response, sample_tensor


def test_every_datatype_round_trips_through_json_text():
    request = all_types_request()
    text = json.dumps(encode_contents_request(request))
    assert decode_contents_request(text) == request
    assert decode_contents_request(text.encode()) == request
    response = all_types_response()
    assert decode_contents_response(json.dumps(encode_contents_response(response))) == response


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_each_tensor_uses_its_datatypes_contents_field(datatype):
    encoded = encode_contents_response(InferResponse("m", outputs=[sample_tensor(datatype, "t")]))["outputs"][0]
    assert encoded["name"] == "t" and encoded["datatype"] == datatype and encoded["shape"] == [2, 2]
    assert list(encoded["contents"]) == [DATATYPES[datatype].contents_field]
    values = encoded["contents"][DATATYPES[datatype].contents_field]
    assert len(values) == 4
    expected_type = {"BOOL": bool, "BYTES": str}.get(datatype, float if datatype.startswith(("FP", "BF")) else int)
    assert all(type(v) is expected_type for v in values)


def test_the_seed_request_decodes_as_in_its_curl_example():
    body = (b'{"model_name": "chat", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], '
            b'"contents": {"bytes_contents": ["Hello World"]}}]}')
    request = decode_contents_request(body)
    assert request.model_name == "chat" and request.model_version == "" and request.id == ""
    assert request.inputs[0].contents.bytes_contents == [b"Hello World"]
    assert request.inputs[0].shape == [1] and request.inputs[0].datatype == "BYTES"


def test_the_response_json_has_the_seeds_keys():
    response = InferResponse("chat", id="r1")
    response.add_output("text_output", "BYTES", [1], bytes_contents=[b"Hello"])
    assert encode_contents_response(response) == {
        "model_name": "chat", "model_version": "", "id": "r1",
        "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [1],
                     "contents": {"bytes_contents": ["Hello"]}}],
    }


def test_non_utf8_bytes_travel_base64_under_their_own_key_and_come_back_exactly():
    blob = bytes(range(256))
    response = InferResponse("m")
    response.add_output("blob", "BYTES", [2], bytes_contents=[blob, b"text"])
    encoded = encode_contents_response(response)["outputs"][0]
    assert list(encoded["contents"]) == ["bytes_contents_base64"]
    assert encoded["contents"]["bytes_contents_base64"][1] == "dGV4dA=="
    back = decode_contents_response(json.dumps(encode_contents_response(response)))
    assert back.outputs[0].contents.bytes_contents == [blob, b"text"]
    # a request may use the same key
    request = decode_contents_request({"inputs": [{"name": "b", "contents": {"bytes_contents_base64": ["/w=="]}}]})
    assert request.inputs[0].data == [b"\xff"] and request.inputs[0].datatype == "BYTES"
    with pytest.raises(ValidationError, match="'b': bytes_contents_base64 holds a value that is not base64"):
        decode_contents_request({"inputs": [{"name": "b", "contents": {"bytes_contents_base64": ["not base64!"]}}]})


def test_datatype_and_shape_may_be_left_out_when_the_contents_say_them():
    request = decode_contents_request({"inputs": [
        {"name": "a", "contents": {"bytes_contents": ["x", "y"]}},
        {"name": "b", "contents": {"fp32_contents": [1.5]}},
        {"name": "c", "contents": {"int_contents": [1, 2, 3]}, "shape": [3, 1]},
        {"name": "d", "contents": {"uint64_contents": [2**64 - 1]}},
        {"name": "e", "contents": {"bool_contents": [True]}},
    ]})
    got = [(t.datatype, list(t.shape)) for t in request.inputs]
    assert got == [("BYTES", [2]), ("FP32", [1]), ("INT32", [3, 1]), ("UINT64", [1]), ("BOOL", [1])]
    with pytest.raises(ValidationError, match=r"inputs\[0\].datatype is missing, and no contents field says it"):
        decode_contents_request({"inputs": [{"name": "a", "contents": {}}]})


def test_nan_and_infinity_are_protobuf_json_strings():
    response = InferResponse("m")
    response.set_numpy("y", np.array([np.nan, np.inf, -np.inf, 2.5], dtype=np.float32))
    encoded = encode_contents_response(response)
    assert encoded["outputs"][0]["contents"]["fp32_contents"] == ["NaN", "Infinity", "-Infinity", 2.5]
    back = decode_contents_response(json.dumps(encoded, allow_nan=False))
    assert math.isnan(back.as_numpy("y")[0]) and list(back.as_numpy("y")[1:]) == [math.inf, -math.inf, 2.5]


def test_shape_mismatch_names_the_tensor():
    with pytest.raises(ValidationError) as info:
        decode_contents_request({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                                             "contents": {"bytes_contents": ["only one"]}}]})
    assert info.value.field == "text"
    assert "tensor 'text' has shape [2], which holds 2 elements, but 1 values were given" in str(info.value)


@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "the request body is not valid JSON"),
    (b"[1, 2]", "the request body must be a JSON object, got list"),
    (b"{}", "inputs is missing"),
    (b'{"inputs": {}}', "inputs must be a list, got dict"),
    (b'{"inputs": [3]}', "inputs\\[0\\] must be an object"),
    (b'{"inputs": [{"datatype": "FP32"}]}', "inputs\\[0\\].name must be a non-empty string"),
    (b'{"model_name": 5, "inputs": []}', "model_name must be a string"),
    (b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "contents": {"int_contents": [1]}}]}',
     "'a' is FP32, so its values go in fp32_contents, not in int_contents"),
    (b'{"inputs": [{"name": "a", "shape": [1], "contents": {"fp16_contents": [1]}}]}',
     "unknown field 'fp16_contents'; the fields are bool_contents"),
    (b'{"inputs": [{"name": "a", "contents": {"fp32_contents": [1], "int_contents": [1]}}]}',
     "'a' has values in fp32_contents and int_contents"),
    (b'{"inputs": [{"name": "a", "contents": {"fp32_contents": "1.0"}}]}', "fp32_contents must be a list"),
    (b'{"inputs": [{"name": "a", "datatype": "fp32", "contents": {"fp32_contents": [1]}}]}',
     "unknown datatype 'fp32'"),
    (b'{"inputs": [{"name": "a", "contents": {"int_contents": [1.5]}}]}', "INT32 values must be integers"),
    (b'{"inputs": [{"name": "a", "shape": [-1], "contents": {"int_contents": [1]}}]}', "negative dimension"),
    (b'{"inputs": [], "parameters": {"x": {"nested": 1}}}', "parameter 'x' is dict"),
    (b'{"inputs": [{"name": "a", "contents": {"int_contents": [1]}}, {"name": "a", "contents": {}}]}',
     "datatype is missing"),
    (b'{"inputs": [{"name": "a", "contents": {"int_contents": [1]}}, '
     b'{"name": "a", "contents": {"int_contents": [2]}}]}', "inputs has two tensors named 'a'"),
])
def test_bad_requests_get_clear_errors(body, message):
    with pytest.raises(ValidationError, match=message):
        decode_contents_request(body)


def test_requested_outputs_and_parameters_round_trip():
    body = {"model_name": "m", "parameters": {"temperature": 0.7, "max_tokens": 16, "stream": True, "stop": "\n"},
            "inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "parameters": {"unit": "tokens"},
                        "contents": {"int64_contents": [3]}}],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}]}
    request = decode_contents_request(body)
    assert request.parameters == {"temperature": 0.7, "max_tokens": 16, "stream": True, "stop": "\n"}
    assert request.inputs[0].parameters == {"unit": "tokens"}
    assert [(o.name, o.parameters) for o in request.outputs] == [("y", {"binary_data": True}), ("z", {})]
    assert decode_contents_request(encode_contents_request(request)) == request
    encoded = encode_contents_request(request)
    assert encoded["outputs"] == body["outputs"] and encoded["parameters"] == body["parameters"]


def test_tensors_built_by_hand_encode_with_their_parameters():
    response = InferResponse("m", outputs=[InferTensor("t", "INT8", [1], [1], parameters={"k": "v"})])
    assert encode_contents_response(response)["outputs"][0]["parameters"] == {"k": "v"}
