"""InferTensor, InferRequest and InferResponse: construction, checks, numpy, AnyServe shapes."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import numpy as np
import pytest

from servemesh.errors import ValidationError
from servemesh.tensors import (
    DATATYPES,
    InferRequest,
    InferResponse,
    InferTensor,
    ModelInferRequest,
    ModelInferResponse,
    bfloat16_to_float32,
    datatype_of,
    float32_to_bfloat16,
)

from .test_tensors_samples import SAMPLES, sample_tensor


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_every_datatype_round_trips_through_numpy(datatype):
    array = SAMPLES[datatype].reshape(2, 2)
    response = InferResponse("m")
    response.set_numpy("y", array, datatype=datatype)
    back = response.as_numpy("y")
    assert back.shape == (2, 2)
    if datatype == "BYTES":
        assert back.dtype == object and back.tolist() == array.tolist()
    else:
        assert back.dtype == DATATYPES[datatype].dtype
        assert back.tobytes() == array.astype(DATATYPES[datatype].dtype).tobytes()


@pytest.mark.parametrize(("dtype", "datatype"), [
    (np.bool_, "BOOL"), (np.uint8, "UINT8"), (np.uint16, "UINT16"), (np.uint32, "UINT32"), (np.uint64, "UINT64"),
    (np.int8, "INT8"), (np.int16, "INT16"), (np.int32, "INT32"), (np.int64, "INT64"), (np.float16, "FP16"),
    (np.float32, "FP32"), (np.float64, "FP64"), (object, "BYTES"), ("S3", "BYTES"), ("U3", "BYTES"),
    (">i4", "INT32"),
])
def test_datatype_follows_the_numpy_dtype(dtype, datatype):
    assert datatype_of(np.dtype(dtype)) == datatype
    array = np.array([b"a", b"b"], dtype=object) if dtype is object else np.zeros(2, dtype=dtype)
    assert InferTensor.from_numpy("x", array).datatype == datatype


@pytest.mark.parametrize("dtype", [np.complex64, "datetime64[s]", [("a", "i4")]])
def test_dtypes_without_a_datatype_are_refused_with_the_choices(dtype):
    with pytest.raises(ValidationError, match=r"has no OIP v2 datatype.*FP32"):
        InferTensor.from_numpy("x", np.zeros(2, dtype=dtype))


def test_big_endian_and_strided_arrays_keep_their_values_in_row_major_order():
    array = np.arange(12, dtype=">i4").reshape(3, 4)[:, ::2]
    tensor = InferTensor.from_numpy("x", array)
    assert tensor.shape == [3, 2]
    assert tensor.as_numpy().tolist() == array.tolist()
    fortran = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert InferTensor.from_numpy("f", fortran).data.tolist() == [0, 1, 2, 3, 4, 5]


def test_element_count_must_match_the_shape_and_the_error_names_the_tensor():
    with pytest.raises(ValidationError) as info:
        InferTensor("pixels", "FP32", [2, 3], [1.0, 2.0, 3.0])
    assert info.value.field == "pixels"
    assert "'pixels'" in str(info.value) and "[2, 3]" in str(info.value) and "6 elements" in str(info.value)
    with pytest.raises(ValidationError, match=r"'names'.*holds 2 elements, but 1"):
        InferTensor("names", "BYTES", [2], [b"a"])
    assert InferTensor("scalar", "INT64", [], [5]).as_numpy().shape == ()
    assert InferTensor("empty", "FP32", [0, 3], []).as_numpy().shape == (0, 3)


def test_nested_lists_are_taken_in_row_major_order():
    tensor = InferTensor("x", "INT32", [2, 2], [[1, 2], [3, 4]])
    assert tensor.as_numpy().tolist() == [[1, 2], [3, 4]]
    with pytest.raises(ValidationError, match=r"'x'.*evenly nested"):
        InferTensor("x", "INT32", [3], [[1, 2], [3]])


@pytest.mark.parametrize(("shape", "message"), [
    ([2, -1], "negative dimension"),
    ([2, 1.5], "dimension 1.5 is not an int"),
    ([True], "dimension True is not an int"),
    ("2", "a shape is a list of ints"),
    (3, "a shape is a list of ints"),
])
def test_bad_shapes_are_refused(shape, message):
    with pytest.raises(ValidationError, match=message) as info:
        InferTensor("t", "FP32", shape, [1.0, 2.0])
    assert info.value.field == "t"


def test_unknown_datatypes_are_refused_with_a_hint():
    with pytest.raises(ValidationError, match=r"unknown datatype 'fp32'.*upper case: 'FP32'"):
        InferTensor("t", "fp32", [1], [1.0])
    with pytest.raises(ValidationError, match=r"unknown datatype 'FLOAT'.*known: BOOL, UINT8"):
        InferTensor("t", "FLOAT", [1], [1.0])
    with pytest.raises(ValidationError, match="tensor name must be a non-empty string"):
        InferTensor("", "FP32", [1], [1.0])


@pytest.mark.parametrize(("datatype", "values", "message"), [
    ("INT8", [1, 128], "value 128 is out of the INT8 range \\[-128, 127\\]"),
    ("UINT8", [-1], "value -1 is out of the UINT8 range"),
    ("UINT64", [-1, 2**64 - 1], "value -1 is out of the UINT64 range"),
    ("INT64", [2**63], "value 9223372036854775808 is out of the INT64 range"),
    ("INT32", [1.5, 2.0], "INT32 values must be integers, got 1.5"),
    ("INT32", [True, False], "INT32 values must be integers, got booleans"),
    ("INT32", ["1", "2"], "INT32 values must be integers, got strings"),
    ("FP32", ["1.0"], "FP32 values must be numbers, got strings"),
    ("FP32", [True], "FP32 values must be numbers, got booleans"),
    ("BF16", ["x"], "BF16 values must be numbers, got strings"),
    ("BOOL", [1, 0], "BOOL values must be true/false"),
    ("BYTES", [1, 2], "BYTES elements must be bytes or str, got int"),
    ("BYTES", b"abc", "BYTES values must be a list of bytes or str"),
])
def test_values_that_do_not_fit_the_datatype_are_refused(datatype, values, message):
    with pytest.raises(ValidationError, match=message) as info:
        InferTensor("v", datatype, [len(values)], values)
    assert info.value.field == "v"


def test_numpy_arrays_are_range_checked_too_and_never_truncated():
    with pytest.raises(ValidationError, match="value 300 is out of the UINT8 range"):
        InferTensor.from_numpy("x", np.array([1, 300]), "UINT8")
    with pytest.raises(ValidationError, match="must be integers, got non-integer numbers"):
        InferTensor.from_numpy("x", np.array([1.5]), "INT64")
    assert InferTensor.from_numpy("x", np.array([1, 2], dtype=np.int64), "INT8").data.dtype == np.int8
    assert InferTensor.from_numpy("x", np.array([1, 2], dtype=np.int64), "FP16").data.tolist() == [1.0, 2.0]
    big = InferTensor("x", "UINT64", [2], [2**64 - 1, 0])
    assert big.data.tolist() == [2**64 - 1, 0]
    objects = InferTensor.from_numpy("x", np.array([1, np.int64(-2)], dtype=object), "INT8")
    assert objects.data.dtype == np.int8 and objects.data.tolist() == [1, -2]
    with pytest.raises(ValidationError, match="INT8 values must be integers, got True"):
        InferTensor.from_numpy("x", np.array([1, True], dtype=object), "INT8")
    with pytest.raises(ValidationError, match="value 200 is out of the INT8 range"):
        InferTensor.from_numpy("x", np.array([1, 200], dtype=object), "INT8")
    assert InferTensor("x", "FP64", [2], [1, 2**70]).data.tolist() == [1.0, 2.0**70]


def test_bf16_is_kept_as_bit_patterns_and_converted_by_rounding_to_nearest_even():
    bits = float32_to_bfloat16(np.array([1.0, -2.5, np.inf, np.nan, 1.00390625, 1.01171875], dtype=np.float32))
    assert bits.dtype == np.uint16
    assert bits[:3].tolist() == [0x3F80, 0xC020, 0x7F80]
    assert np.isnan(bfloat16_to_float32(bits[3]))
    # 1 + 2**-8 is a tie between 1.0 and 1 + 2**-7: even wins (1.0); 1 + 3 * 2**-8 rounds up
    assert bits[4] == 0x3F80 and bits[5] == 0x3F82
    assert bfloat16_to_float32(bits[:3]).tolist() == [1.0, -2.5, np.inf]
    from_floats = InferTensor("b", "BF16", [3], [1.0, -2.5, 0.1])
    assert from_floats.data.dtype == np.uint16
    assert bfloat16_to_float32(from_floats.as_numpy()).tolist() == [1.0, -2.5, 0.10009765625]
    assert from_floats.contents.fp32_contents == [1.0, -2.5, 0.10009765625]
    as_bits = InferTensor.from_numpy("b", np.array([0x3F80], dtype=np.uint16), "BF16")
    assert as_bits.contents.fp32_contents == [1.0]


def test_tensors_are_immutable_and_say_how_to_build_one_instead():
    tensor = InferTensor("t", "BYTES", [1], [b"a"])
    with pytest.raises(TypeError, match="read-only: build tensors with add_input"):
        tensor.contents.bytes_contents.append(b"b")
    with pytest.raises(TypeError, match="tensor shape is read-only"):
        tensor.shape.append(1)
    with pytest.raises(TypeError):
        tensor.parameters["x"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        tensor.name = "u"  # type: ignore[misc]
    numeric = InferTensor.from_numpy("n", np.arange(3))
    with pytest.raises(ValueError, match="read-only"):
        numeric.as_numpy()[0] = 5


def test_arrays_are_shared_not_copied():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = InferTensor.from_numpy("x", array)
    assert np.shares_memory(tensor.data, array)
    assert np.shares_memory(tensor.as_numpy(), array)
    assert array.flags.writeable  # the caller's array stays writable


def test_anyserve_handler_code_runs_unchanged():
    # AnyServe's chat handler, as in its examples, against our classes
    request = ModelInferRequest(model_name="chat", id="r1")
    request.add_input(name="text", datatype="BYTES", shape=[1], bytes_contents=[b"Hello World"])

    def chat_handler(request: ModelInferRequest, context: object) -> ModelInferResponse:
        text_input = ""
        for inp in request.inputs:
            if inp.name == "text" and inp.bytes_contents:
                text_input = inp.bytes_contents[0].decode("utf-8")
                break
            elif inp.name == "text" and inp.contents.bytes_contents:
                text_input = inp.contents.bytes_contents[0].decode("utf-8")
                break
        response = ModelInferResponse(model_name=request.model_name, model_version=request.model_version,
                                      id=request.id)
        response.add_output(name="response", datatype="BYTES", shape=[1],
                            bytes_contents=[f"You said: {text_input}".encode()])
        return response

    response = chat_handler(request, None)
    assert response.outputs[0].contents.bytes_contents == [b"You said: Hello World"]
    assert response.outputs[0].shape == [1] and response.id == "r1" and response.model_name == "chat"
    assert ModelInferRequest is InferRequest and ModelInferResponse is InferResponse


@pytest.mark.parametrize(("datatype", "field"), [
    ("BOOL", "bool_contents"), ("INT8", "int_contents"), ("INT32", "int_contents"), ("INT64", "int64_contents"),
    ("UINT16", "uint_contents"), ("UINT64", "uint64_contents"), ("FP32", "fp32_contents"),
    ("FP64", "fp64_contents"), ("FP16", "fp32_contents"), ("BF16", "fp32_contents"), ("BYTES", "bytes_contents"),
])
def test_contents_show_the_elements_in_the_datatypes_field_only(datatype, field):
    tensor = sample_tensor(datatype)
    expected = tensor.data.tolist() if datatype not in ("BF16", "BYTES") else None
    if datatype == "BF16":
        expected = bfloat16_to_float32(tensor.data).tolist()
    if datatype == "BYTES":
        expected = list(tensor.data)
    for name in ("bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
                 "fp32_contents", "fp64_contents", "bytes_contents"):
        values = getattr(tensor.contents, name)
        assert values == (expected if name == field else []), name
        assert getattr(tensor, name) == values


def test_add_output_takes_data_or_the_one_matching_contents_field():
    response = InferResponse("m")
    response.add_output("a", "FP32", [2], fp32_contents=[1.0, 2.0])
    response.add_output("b", "INT16", [2, 1], data=np.array([[1], [2]]))
    response.add_output("c", "FP16", [1], fp32_contents=[0.5])
    assert response.as_numpy("b").dtype == np.int16 and response.as_numpy("c").dtype == np.float16
    with pytest.raises(ValidationError, match=r"'d' is FP32, so its values go in fp32_contents.*not in int_contents"):
        response.add_output("d", "FP32", [1], int_contents=[1])
    with pytest.raises(ValidationError, match="give its values once, got data and fp32_contents"):
        response.add_output("d", "FP32", [1], data=[1.0], fp32_contents=[1.0])
    with pytest.raises(ValidationError, match="already is an output named 'a'; set_numpy"):
        response.add_output("a", "FP32", [1], fp32_contents=[1.0])
    with pytest.raises(TypeError, match="unexpected keyword argument 'fp16_contents'"):
        response.add_output("d", "FP16", [1], fp16_contents=[1.0])  # type: ignore[call-arg]


def test_set_numpy_replaces_and_as_numpy_names_what_exists():
    request = InferRequest("m")
    request.set_numpy("x", np.zeros(2))
    request.set_numpy("x", np.ones(3, dtype=np.int32))
    request.set_numpy("y", ["a", "b"])
    assert [t.name for t in request.inputs] == ["x", "y"]
    assert request.as_numpy("x").tolist() == [1, 1, 1]
    assert request.as_numpy("y").tolist() == [b"a", b"b"]
    assert request.get_input("z") is None
    with pytest.raises(ValidationError, match="no input named 'z'; inputs: 'x', 'y'") as info:
        request.as_numpy("z")
    assert info.value.field == "z"
    with pytest.raises(ValidationError, match="no output named 'z'; outputs: none"):
        InferResponse().as_numpy("z")


def test_parameters_take_scalars_only():
    assert InferRequest(parameters={"a": np.int64(3), "b": np.float32(0.5), "c": np.bool_(True)}).parameters == {
        "a": 3, "b": 0.5, "c": True}
    with pytest.raises(ValidationError, match=r"parameter 'x' is list.*bool, int, float or str"):
        InferRequest(parameters={"x": [1]})
    with pytest.raises(ValidationError, match="does not fit int64 or uint64"):
        InferTensor("t", "FP32", [1], [1.0], parameters={"x": 2**64})
    with pytest.raises(ValidationError, match="parameter names are strings"):
        InferResponse(parameters={1: "x"})  # type: ignore[dict-item]


def test_tensors_pickle_copy_and_compare_bit_for_bit():
    tensor = InferTensor("x", "FP32", [3], [np.nan, -0.0, 1.0], parameters={"p": "q"})
    assert pickle.loads(pickle.dumps(tensor)) == tensor
    assert copy.deepcopy(tensor) == tensor
    assert tensor != InferTensor("x", "FP32", [3], [np.nan, 0.0, 1.0], parameters={"p": "q"})
    words = InferTensor("w", "BYTES", [2], ["a", "b"])
    assert pickle.loads(pickle.dumps(words)) == words
    assert "InferTensor(name='w', datatype='BYTES', shape=[2], data=[b'a', b'b'])" == repr(words)


def test_importing_servemesh_does_not_import_numpy_and_tensors_do_not_import_protobuf():
    code = ("import sys, servemesh; assert 'numpy' not in sys.modules, 'servemesh imported numpy'; "
            "import servemesh.tensors as t; assert 'google.protobuf' not in sys.modules, 'tensors imported protobuf'; "
            "t.to_proto(t.InferRequest('m')); assert 'google.protobuf' in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_a_dimension_beyond_int64_is_refused_even_with_no_elements():
    with pytest.raises(ValidationError, match="larger than an int64") as info:
        InferTensor("x", "FP32", [0, 10**23], [])
    assert info.value.field == "x"
