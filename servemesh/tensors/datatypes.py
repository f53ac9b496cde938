"""The OIP v2 datatypes: their numpy storage, their contents field, and value checks.

Every tensor keeps its elements flat, in row-major order, in the numpy dtype of
this table; BYTES tensors keep a list of ``bytes`` instead. numpy has no bfloat16,
so a BF16 tensor keeps the raw 16-bit patterns as ``uint16`` (the upper half of the
float32 with the same sign and exponent): that is lossless and is what the raw
(binary and protobuf) forms carry. ``bfloat16_to_float32`` and
``float32_to_bfloat16`` convert, and the JSON forms carry BF16 as numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ValidationError

__all__ = [
    "DATATYPES",
    "DatatypeInfo",
    "bfloat16_to_float32",
    "bytes_list",
    "datatype_of",
    "element_count",
    "float32_to_bfloat16",
    "info",
    "numeric_array",
    "tensor_shape",
]


@dataclass(frozen=True, slots=True)
class DatatypeInfo:
    """One OIP v2 datatype."""

    #: the wire name, e.g. ``"FP32"``
    name: str
    #: the numpy dtype the elements are stored in (BF16: ``uint16`` bit patterns;
    #: BYTES: ``object``, elements are ``bytes``)
    dtype: np.dtype[Any]
    #: the ``InferTensorContents`` field that carries the elements in protobuf and in
    #: the contents JSON; FP16 and BF16 have none of their own and use fp32_contents
    #: there (protobuf itself requires raw contents for them)
    contents_field: str
    #: bytes per element in the raw form (0 for BYTES: 4-byte length + the bytes)
    itemsize: int


def _info(name: str, dtype: Any, field: str) -> DatatypeInfo:
    np_dtype = np.dtype(dtype)
    return DatatypeInfo(name, np_dtype, field, 0 if name == "BYTES" else np_dtype.itemsize)


DATATYPES: dict[str, DatatypeInfo] = {
    d.name: d
    for d in (
        _info("BOOL", np.bool_, "bool_contents"),
        _info("UINT8", np.uint8, "uint_contents"),
        _info("UINT16", np.uint16, "uint_contents"),
        _info("UINT32", np.uint32, "uint_contents"),
        _info("UINT64", np.uint64, "uint64_contents"),
        _info("INT8", np.int8, "int_contents"),
        _info("INT16", np.int16, "int_contents"),
        _info("INT32", np.int32, "int_contents"),
        _info("INT64", np.int64, "int64_contents"),
        _info("FP16", np.float16, "fp32_contents"),
        _info("FP32", np.float32, "fp32_contents"),
        _info("FP64", np.float64, "fp64_contents"),
        _info("BF16", np.uint16, "fp32_contents"),
        _info("BYTES", np.object_, "bytes_contents"),
    )
}

#: the contents fields of ``InferTensorContents``, in field-number order
CONTENTS_FIELDS = ("bool_contents", "int_contents", "int64_contents", "uint_contents",
                   "uint64_contents", "fp32_contents", "fp64_contents", "bytes_contents")

_BY_DTYPE = {np.dtype(t): n for n, t in (
    ("BOOL", np.bool_), ("UINT8", np.uint8), ("UINT16", np.uint16), ("UINT32", np.uint32),
    ("UINT64", np.uint64), ("INT8", np.int8), ("INT16", np.int16), ("INT32", np.int32),
    ("INT64", np.int64), ("FP16", np.float16), ("FP32", np.float32), ("FP64", np.float64),
)}


def info(datatype: object, name: str) -> DatatypeInfo:
    """The entry for ``datatype``; ``ValidationError`` naming tensor ``name`` if there is none."""
    found = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if found is None:
        hint = ""
        if isinstance(datatype, str) and datatype.upper() in DATATYPES:
            hint = f" (datatypes are upper case: {datatype.upper()!r})"
        raise ValidationError(
            f"tensor {name!r} has unknown datatype {datatype!r}{hint}; "
            f"known: {', '.join(DATATYPES)}", field=name)
    return found


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The OIP datatype for a numpy dtype (object, bytes and str arrays are BYTES).

    ``ValidationError`` for dtypes the protocol has no datatype for (complex, datetime,
    structured, ...). numpy has no bfloat16: BF16 is never inferred, name it."""
    dtype = np.dtype(dtype)
    found = _BY_DTYPE.get(dtype.newbyteorder("=")) if dtype.kind in "biuf" else None
    if found is not None:
        return found
    if dtype.kind in "OSU":
        return "BYTES"
    raise ValidationError(f"numpy dtype {dtype} has no OIP v2 datatype; convert the array to one of "
                          f"{', '.join(sorted(_BY_DTYPE.values()))} or to bytes first")


_MAX_DIM = 2**63 - 1


def tensor_shape(shape: object, name: str) -> list[int]:
    """``shape`` as a list of non-negative ints, or a ``ValidationError`` naming the tensor."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Iterable):
        raise ValidationError(f"tensor {name!r} has shape {shape!r}; a shape is a list of ints", field=name)
    dims: list[int] = []
    for dim in shape:
        if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)):
            raise ValidationError(f"tensor {name!r} has shape {shape!r}: dimension {dim!r} is not an int",
                                  field=name)
        if dim > _MAX_DIM:
            raise ValidationError(f"tensor {name!r} has shape {list(shape)!r}: dimension {dim} is larger than "
                                  "an int64", field=name)
        if dim < 0:
            raise ValidationError(f"tensor {name!r} has shape {list(shape)!r} with a negative dimension; "
                                  "-1 (variable size) belongs in model metadata, never in a tensor",
                                  field=name)
        dims.append(int(dim))
    return dims


def element_count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def bfloat16_to_float32(bits: Any) -> np.ndarray[Any, np.dtype[np.float32]]:
    """BF16 bit patterns (``uint16``) to float32, exactly."""
    patterns = np.asarray(bits, dtype=np.uint16)
    # every operand uint32, so numpy 1.x's value-based casting cannot widen a 0-d result
    return (patterns.astype(np.uint32) << np.uint32(16)).astype(np.uint32, copy=False).view(np.float32)


def float32_to_bfloat16(values: Any) -> np.ndarray[Any, np.dtype[np.uint16]]:
    """Numbers to BF16 bit patterns (``uint16``), rounded to nearest, ties to even.

    Values go through float32 first (float64 input is rounded twice, which can be off
    by one BF16 step in rare ties). NaN stays a quiet NaN, infinities stay infinite."""
    with np.errstate(over="ignore"):
        floats = np.ascontiguousarray(values, dtype=np.float32)
    bits = floats.view(np.uint32)
    sixteen = np.uint32(16)
    rounded = ((bits + (np.uint32(0x7FFF) + ((bits >> sixteen) & np.uint32(1)))) >> sixteen).astype(np.uint16)
    nan = np.isnan(floats)
    if nan.any():
        rounded[nan] = ((bits[nan] >> sixteen) | np.uint32(0x0040)).astype(np.uint16)
    return rounded


def numeric_array(values: Any, datatype: str, name: str, *, label: str | None = None) -> np.ndarray[Any, Any]:
    """``values`` (a numpy array, or a flat or evenly nested list) as a flat array in the
    storage dtype of ``datatype``.

    No silent change of meaning: integers must fit the datatype's range, floats never
    become integers, only true/false make BOOL, and strings make nothing numeric. For
    BF16, a ``uint16`` array is taken as bit patterns (what ``as_numpy`` returns) and
    anything else as numbers to round.
    Numbers beyond a float type's range become infinities, as IEEE casts do."""
    with np.errstate(over="ignore"):
        return _numeric_array(values, datatype, name, label or datatype)


def _numeric_array(values: Any, datatype: str, name: str, label: str) -> np.ndarray[Any, Any]:
    target = DATATYPES[datatype].dtype
    if isinstance(values, np.ndarray):
        array = values
    else:
        try:
            array = np.asarray(values)
        except (ValueError, TypeError) as exc:
            raise ValidationError(f"tensor {name!r}: {label} values must be a flat or evenly nested "
                                  f"list of numbers ({exc})", field=name) from None
    if datatype == "BF16":
        if array.dtype == np.uint16:
            return array.reshape(-1)
        return float32_to_bfloat16(_numeric_array(values, "FP32", name, label))
    if array.dtype == target:
        return array.reshape(-1)
    if array.size == 0:
        return np.empty(0, dtype=target)
    kind = array.dtype.kind
    if target.kind == "b":
        if kind != "b":
            raise _wrong_values(name, label, array, "true/false")
        return array.reshape(-1).astype(target)
    if target.kind in "iu":
        if kind in "iu":
            _check_range(array, datatype, name)
            return array.reshape(-1).astype(target)
        if kind == "O" or (kind == "f" and not isinstance(values, np.ndarray)):
            # numpy makes float64 or object of Python ints beyond int64 (or of -1 mixed
            # with ints above 2**63): check those one by one, exactly
            return _exact_ints(values, datatype, name)
        raise _wrong_values(name, label, array, "integers")
    if kind in "iuf":
        return array.reshape(-1).astype(target)
    if kind == "O":
        items = np.asarray(values, dtype=object).reshape(-1).tolist()
        if all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in items):
            return np.array(items, dtype=np.float64).astype(target)
    raise _wrong_values(name, label, array, "numbers")


def _wrong_values(name: str, datatype: str, array: np.ndarray[Any, Any], expected: str) -> ValidationError:
    got = {"b": "booleans", "f": "non-integer numbers", "U": "strings", "S": "bytes",
           "O": "mixed values"}.get(array.dtype.kind, f"values of numpy dtype {array.dtype}")
    return ValidationError(f"tensor {name!r}: {datatype} values must be {expected}, got {got}", field=name)


def _check_range(array: np.ndarray[Any, Any], datatype: str, name: str) -> None:
    limits = np.iinfo(DATATYPES[datatype].dtype)
    low, high = int(array.min()), int(array.max())
    if low < limits.min or high > limits.max:
        bad = low if low < limits.min else high
        raise ValidationError(f"tensor {name!r}: value {bad} is out of the {datatype} range "
                              f"[{limits.min}, {limits.max}]", field=name)


def _exact_ints(values: Any, datatype: str, name: str) -> np.ndarray[Any, Any]:
    items = np.asarray(values, dtype=object).reshape(-1).tolist()
    for item in items:
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)):
            raise ValidationError(f"tensor {name!r}: {datatype} values must be integers, got {item!r:.40}",
                                  field=name)
    limits = np.iinfo(DATATYPES[datatype].dtype)
    for item in items:
        if not limits.min <= item <= limits.max:
            raise ValidationError(f"tensor {name!r}: value {item} is out of the {datatype} range "
                                  f"[{limits.min}, {limits.max}]", field=name)
    return np.array(items, dtype=DATATYPES[datatype].dtype)


def bytes_list(values: Any, name: str) -> list[bytes]:
    """BYTES elements as a flat list of ``bytes``; ``str`` elements are encoded as UTF-8.

    Takes a list (flat or evenly nested), or a numpy object, bytes or str array."""
    if isinstance(values, np.ndarray):
        items: Any = values.reshape(-1).tolist()
    elif isinstance(values, (list, tuple)):
        items = values
        if items and isinstance(items[0], (list, tuple)):
            items = list(_flatten(items))
    else:
        raise ValidationError(f"tensor {name!r}: BYTES values must be a list of bytes or str, "
                              f"got {type(values).__name__}", field=name)
    if all(type(item) is bytes for item in items):
        return list(items)
    out: list[bytes] = []
    for item in items:
        if isinstance(item, bytes):
            out.append(bytes(item))
        elif isinstance(item, str):
            out.append(item.encode())
        elif isinstance(item, (bytearray, memoryview)):
            out.append(bytes(item))
        else:
            raise ValidationError(f"tensor {name!r}: BYTES elements must be bytes or str, got "
                                  f"{type(item).__name__} {item!r:.40}", field=name)
    return out


def _flatten(items: Iterable[Any]) -> Iterable[Any]:
    for item in items:
        if isinstance(item, (list, tuple)):
            yield from _flatten(item)
        else:
            yield item
