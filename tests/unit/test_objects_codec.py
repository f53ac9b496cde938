"""Object payloads: JSON, bytes and numpy by default; pickle only with the opt-in."""

from __future__ import annotations

import io
import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from servemesh.errors import SerializationError
from servemesh.objects import ObjectCorrupted, ObjectRefused, ObjectTooLarge, codec


@pytest.mark.parametrize("value", [
    {"data": "value"},
    {"nested": {"list": [1, 2.5, None, True, False, "ü€😀"], "empty": {}}, "n": -(2 ** 70)},
    [1, [2, [3, [4]]]],
    "plain text",
    42,
    0.1,
    None,
    [],
])
def test_json_values_round_trip(value):
    data = codec.encode(value)
    assert codec.kind(data) == "json"
    assert codec.decode(data) == value


def test_json_key_order_is_kept_and_tuples_come_back_as_lists():
    assert list(codec.decode(codec.encode({"b": 1, "a": 2}))) == ["b", "a"]
    assert codec.decode(codec.encode({"t": (1, 2)})) == {"t": [1, 2]}


@pytest.mark.parametrize("value", [b"", b"\x00\xffraw", bytearray(b"abc"), memoryview(b"xyz")])
def test_bytes_round_trip_as_bytes(value):
    data = codec.encode(value)
    assert codec.kind(data) == "bytes"
    back = codec.decode(data)
    assert type(back) is bytes and back == bytes(value)


@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
    np.array([True, False]),
    np.array(3.5),
    np.zeros((0, 4), dtype=np.uint8),
    np.array(["a", "bcd"]),
    np.array([b"x", b"yz"]),
    np.arange(4, dtype=">i4"),
    np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
    np.arange(10)[::2],
], ids=lambda a: f"{a.dtype}{a.shape}")
def test_numpy_arrays_round_trip_with_dtype_and_shape(array):
    data = codec.encode(array)
    assert codec.kind(data) == "numpy"
    back = codec.decode(data)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable


def test_a_numpy_scalar_comes_back_as_a_0d_array():
    back = codec.decode(codec.encode(np.float64(2.5)))
    assert back.shape == () and back.dtype == np.float64 and float(back) == 2.5


@pytest.mark.parametrize("value, why", [
    ({1, 2}, "set"),
    ({1: "a"}, "key 1"),
    ({"x": [1, float("nan")]}, "nan"),
    ({"x": math.inf}, "inf"),
    (object(), "object"),
    ({"deep": [[[{"x": b"bytes inside json"}]]]}, "bytes"),
    ("\ud800", "surrogate"),
])
def test_values_json_cannot_hold_are_refused_without_pickle(value, why):
    with pytest.raises(ObjectRefused) as caught:
        codec.encode(value)
    assert why in str(caught.value) and "SERVEMESH_OBJECT_ALLOW_PICKLE" in str(caught.value)
    assert isinstance(caught.value, SerializationError)


def test_deep_nesting_is_a_refusal_not_a_recursion_error():
    value: list = []
    for _ in range(10_000):
        value = [value]
    with pytest.raises(ObjectRefused, match="nested deeper"):
        codec.encode(value)


def test_object_arrays_are_refused_without_pickle():
    with pytest.raises(ObjectRefused, match="dtype object"):
        codec.encode(np.array([{"a": 1}, None], dtype=object))


def test_pickle_with_the_opt_in_round_trips():
    data = codec.encode({1, 2}, allow_pickle=True)
    assert codec.kind(data) == "pickle"
    assert codec.decode(data, allow_pickle=True) == {1, 2}
    array = np.array([{"a": 1}, None], dtype=object)
    assert list(codec.decode(codec.encode(array, allow_pickle=True), allow_pickle=True)) == [{"a": 1}, None]


def _touch(path: str) -> str:
    Path(path).touch()
    return "ran"


class Trap:
    """Unpickling this runs ``_touch(path)``: the marker file shows whether it ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (_touch, (self.path,))


def test_a_pickle_payload_is_refused_by_default_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    data = codec.encode(Trap(str(marker)), allow_pickle=True)
    with pytest.raises(ObjectRefused, match="pickle") as caught:
        codec.decode(data, ref="obj-x")
    assert "SERVEMESH_OBJECT_ALLOW_PICKLE" in str(caught.value)
    assert not marker.exists()
    # the trap is live: a store with the opt-in does run it
    assert codec.decode(data, allow_pickle=True) == "ran" and marker.exists()


def test_encoding_refuses_pickle_unless_allowed():
    with pytest.raises(ObjectRefused):
        codec.encode(Trap("/nonexistent"))


def test_bytes_and_arrays_over_the_limit_are_refused_before_encoding():
    with pytest.raises(ObjectTooLarge) as caught:
        codec.encode(b"x" * 100, max_bytes=99)
    assert caught.value.size == 105 and caught.value.limit == 99
    assert "105 bytes" in str(caught.value) and "99 bytes" in str(caught.value)
    with pytest.raises(ObjectTooLarge):
        codec.encode(np.zeros(100, dtype=np.uint8), max_bytes=100)
    assert codec.decode(codec.encode(b"x" * 94, max_bytes=99)) == b"x" * 94


@pytest.mark.parametrize("data, why", [
    (b"", "no servemesh object header"),
    (b"SMO", "no servemesh object header"),
    (b"root:x:0:0:root:/root:/bin/bash\n", "no servemesh object header"),
    (codec.MAGIC + b"Z" + b"{}", "unknown payload tag"),
    (codec.MAGIC + codec.JSON + b"{not json", "JSON does not decode"),
    (codec.MAGIC + codec.JSON + b"\xff\xfe", "JSON does not decode"),
    (codec.MAGIC + codec.NUMPY + b"not npy", "numpy header"),
])
def test_bytes_that_are_not_a_payload_are_corrupted(data, why):
    with pytest.raises(ObjectCorrupted, match=why):
        codec.decode(data)


def test_a_numpy_header_promising_more_than_the_payload_holds_is_refused_before_allocating():
    out = io.BytesIO()
    # 10**12 float64 (8 TB) promised, 32 bytes present: refused, nothing allocated
    np.lib.format.write_array_header_1_0(out, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    with pytest.raises(ObjectCorrupted, match="promises"):
        codec.decode(codec.MAGIC + codec.NUMPY + out.getvalue() + bytes(32))


def test_a_numpy_header_with_a_negative_shape_is_refused():
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": "<f8", "fortran_order": False, "shape": (-1, 4)})
    with pytest.raises(ObjectCorrupted):
        codec.decode(codec.MAGIC + codec.NUMPY + out.getvalue())


def test_a_truncated_array_is_corrupted():
    data = codec.encode(np.arange(100, dtype=np.int32))
    with pytest.raises(ObjectCorrupted, match="promises"):
        codec.decode(data[:-4])


def test_an_object_array_payload_is_refused_without_pickle():
    out = io.BytesIO()
    np.lib.format.write_array(out, np.array([None], dtype=object), allow_pickle=True)
    with pytest.raises(ObjectRefused, match="pickle"):
        codec.decode(codec.MAGIC + codec.NUMPY + out.getvalue())


def test_the_tag_is_checked_before_the_body():
    pickled = codec.MAGIC + codec.PICKLE + pickle.dumps({"harmless": 1})
    with pytest.raises(ObjectRefused):
        codec.decode(pickled)
    assert codec.decode(pickled, allow_pickle=True) == {"harmless": 1}
