"""Sample tensors of every OIP v2 datatype, shared by the tensor codec tests (and checked here)."""

from __future__ import annotations

import numpy as np

from servemesh.tensors import DATATYPES, InferRequest, InferResponse, InferTensor, float32_to_bfloat16

# Four elements each (shape [2, 2]), with the edges of each type's range.
SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([True, False, False, True]),
    "UINT8": np.array([0, 1, 254, 255], dtype=np.uint8),
    "UINT16": np.array([0, 1, 65534, 65535], dtype=np.uint16),
    "UINT32": np.array([0, 1, 2**32 - 2, 2**32 - 1], dtype=np.uint32),
    "UINT64": np.array([0, 1, 2**63, 2**64 - 1], dtype=np.uint64),
    "INT8": np.array([-128, -1, 0, 127], dtype=np.int8),
    "INT16": np.array([-(2**15), -1, 0, 2**15 - 1], dtype=np.int16),
    "INT32": np.array([-(2**31), -1, 0, 2**31 - 1], dtype=np.int32),
    "INT64": np.array([-(2**63), -1, 0, 2**63 - 1], dtype=np.int64),
    "FP16": np.array([0.5, -65504.0, 6e-08, 1.0009765625], dtype=np.float16),
    "FP32": np.array([1.1, -3.4028235e38, 1e-45, -0.0], dtype=np.float32),
    "FP64": np.array([0.1, 1.7976931348623157e308, 5e-324, -2.5], dtype=np.float64),
    "BF16": float32_to_bfloat16([1.0, -2.5, 3.140625, 1e-30]),
    "BYTES": np.array([b"Hello", b"", "\u00fc\u20ac\U0001f600".encode(), b"\x00nul"], dtype=object),
}


def sample_tensor(datatype: str, name: str | None = None) -> InferTensor:
    array = SAMPLES[datatype].reshape(2, 2)
    return InferTensor.from_numpy(name or datatype.lower(), array, datatype)


def all_types_request() -> InferRequest:
    request = InferRequest("model", model_version="3", id="req-1",
                           parameters={"flag": True, "count": 7, "ratio": 0.25, "mode": "fast", "big": 2**64 - 1})
    request.inputs = [sample_tensor(d) for d in DATATYPES]
    request.add_requested_output("out", {"top_k": 3})
    return request


def all_types_response() -> InferResponse:
    response = InferResponse("model", model_version="3", id="req-1", parameters={"took_ms": 12, "neg": -5})
    response.outputs = [sample_tensor(d) for d in DATATYPES]
    return response


def test_samples_cover_every_datatype_with_its_storage_dtype():
    assert set(SAMPLES) == set(DATATYPES)
    for datatype, array in SAMPLES.items():
        tensor = sample_tensor(datatype)
        assert tensor.datatype == datatype
        assert tensor.shape == [2, 2]
        assert len(tensor.data) == array.size == 4
        if datatype != "BYTES":
            assert tensor.data.dtype == DATATYPES[datatype].dtype, datatype


def test_sample_messages_differ_when_one_element_differs():
    # the round-trip tests compare with ==; make sure == sees a single changed element
    changed = all_types_request()
    changed.inputs[3] = InferTensor("uint64", "UINT64", [2, 2], [0, 1, 2**63, 2**64 - 2])
    assert changed != all_types_request()
    assert all_types_request() == all_types_request()
