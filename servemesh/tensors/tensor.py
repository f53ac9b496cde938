"""``InferTensor``: one named, typed, shaped tensor, checked when it is made.

A tensor is a value: its name, datatype, shape, parameters and elements do not change
after construction, so the codecs can share its arrays without copying. The elements
are a flat, read-only numpy array in the storage dtype of ``datatypes.DATATYPES``, or
a read-only list of ``bytes`` for BYTES. ``as_numpy()`` gives them shaped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, NoReturn, TypeVar

import numpy as np

from ..errors import ValidationError
from . import raw
from .datatypes import (
    _BY_DTYPE,
    CONTENTS_FIELDS,
    DATATYPES,
    bfloat16_to_float32,
    bytes_list,
    datatype_of,
    element_count,
    info,
    numeric_array,
    tensor_shape,
)
from .params import Parameters, ParamValue, check_parameters

__all__ = ["InferTensor", "ReadOnlyList", "TensorContents"]

#: numpy dtype -> the datatype that stores its arrays as they are (``from_numpy``'s fast path)
_STORED_AS = {dtype: name for dtype, name in _BY_DTYPE.items() if DATATYPES[name].dtype == dtype}

T = TypeVar("T")


class ReadOnlyList(list[T]):
    """A list that refuses changes (it still compares equal to a plain list).

    Tensors hand these out for their shape and contents, so code written for
    protobuf messages, which appends to them, fails loudly instead of changing a copy."""

    __slots__ = ("_what",)

    def __init__(self, items: Iterable[T] = (), what: str = "this list") -> None:
        super().__init__(items)
        self._what = what

    def _refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(f"{self._what} is read-only: build tensors with add_input(...), add_output(...) "
                        "or set_numpy(...), or copy it with list(...)")

    def __reduce__(self) -> tuple[Any, ...]:
        return (ReadOnlyList, (list(self), self._what))


for _method in ("append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse",
                "__setitem__", "__delitem__", "__iadd__", "__imul__"):
    setattr(ReadOnlyList, _method, ReadOnlyList._refuse)
del _method

_NO_VALUES: ReadOnlyList[Any] = ReadOnlyList((), "tensor contents")
_NO_PARAMETERS: Mapping[str, ParamValue] = MappingProxyType({})


class TensorContents:
    """The elements by protobuf ``InferTensorContents`` field, as AnyServe handlers read
    them (``tensor.contents.bytes_contents[0]``): the datatype's field holds the
    elements as Python values, every other field is empty. FP16 and BF16 show in
    ``fp32_contents``."""

    __slots__ = ("_field", "_values")

    def __init__(self, field: str, values: ReadOnlyList[Any]) -> None:
        self._field = field
        self._values = values

    def _get(self, field: str) -> ReadOnlyList[Any]:
        return self._values if field == self._field else _NO_VALUES

    @property
    def bool_contents(self) -> ReadOnlyList[bool]:
        return self._get("bool_contents")

    @property
    def int_contents(self) -> ReadOnlyList[int]:
        return self._get("int_contents")

    @property
    def int64_contents(self) -> ReadOnlyList[int]:
        return self._get("int64_contents")

    @property
    def uint_contents(self) -> ReadOnlyList[int]:
        return self._get("uint_contents")

    @property
    def uint64_contents(self) -> ReadOnlyList[int]:
        return self._get("uint64_contents")

    @property
    def fp32_contents(self) -> ReadOnlyList[float]:
        return self._get("fp32_contents")

    @property
    def fp64_contents(self) -> ReadOnlyList[float]:
        return self._get("fp64_contents")

    @property
    def bytes_contents(self) -> ReadOnlyList[bytes]:
        return self._get("bytes_contents")

    def __repr__(self) -> str:
        return f"TensorContents({self._field}={list(self._values)!r:.200})"


class InferTensor:
    """A named tensor: ``datatype`` is an OIP v2 name (``"FP32"``, ``"BYTES"``, ...), the
    element count must equal the product of ``shape``, and ``data`` is a numpy array, a
    flat or evenly nested list of numbers, or (BYTES) a list of ``bytes`` / ``str``.
    ``ValidationError`` names the tensor when any of that does not hold."""

    __slots__ = ("_contents", "_data", "_datatype", "_name", "_parameters", "_shape")

    _name: str
    _datatype: str
    _shape: ReadOnlyList[int]
    _data: np.ndarray[Any, Any] | ReadOnlyList[bytes]
    _parameters: Mapping[str, ParamValue]
    _contents: TensorContents | None

    def __init__(self, name: str, datatype: str, shape: Iterable[int], data: Any,
                 parameters: Mapping[str, ParamValue] | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValidationError(f"a tensor name must be a non-empty string, got {name!r}", field="name")
        kind = info(datatype, name)
        dims = tensor_shape(shape, name)
        values: np.ndarray[Any, Any] | list[bytes]
        if kind.name == "BYTES":
            values = bytes_list(data, name)
        else:
            values = numeric_array(data, kind.name, name)
        count = element_count(dims)
        if len(values) != count:
            raise ValidationError(f"tensor {name!r} has shape {dims}, which holds {count} elements, "
                                  f"but {len(values)} values were given", field=name)
        params = check_parameters(parameters, f"{name}.parameters") if parameters else {}
        self._init(name, kind.name, dims, values, params)

    def _init(self, name: str, datatype: str, shape: list[int],
              data: np.ndarray[Any, Any] | list[bytes], parameters: Parameters, own: bool = False) -> None:
        self._name = name
        self._datatype = datatype
        self._shape = ReadOnlyList(shape, "tensor shape")
        if isinstance(data, np.ndarray):
            if not own:  # a read-only view: the caller's array stays the caller's
                data = data.view()
                data.flags.writeable = False
            self._data = data
        else:
            self._data = ReadOnlyList(data, "tensor contents")
        self._parameters = MappingProxyType(parameters) if parameters else _NO_PARAMETERS
        self._contents = None

    @classmethod
    def _make(cls, name: str, datatype: str, shape: list[int],
              data: np.ndarray[Any, Any] | list[bytes], parameters: Parameters, own: bool = False) -> InferTensor:
        """A tensor from parts already checked (the codecs' fast path); ``own``: ``data`` is
        a read-only array nothing else holds, kept as it is."""
        tensor = cls.__new__(cls)
        tensor._init(name, datatype, shape, data, parameters, own)
        return tensor

    @classmethod
    def from_numpy(cls, name: str, array: Any, datatype: str | None = None,
                   parameters: Mapping[str, ParamValue] | None = None) -> InferTensor:
        """A tensor with the shape of ``array`` and, unless given, the datatype of its dtype
        (object, bytes and str arrays are BYTES). The array is shared, not copied, when
        it is contiguous and already of the storage dtype."""
        array = array if isinstance(array, np.ndarray) else np.asarray(array)
        if datatype is None and not parameters and type(array) is np.ndarray and isinstance(name, str) and name:
            found = _STORED_AS.get(array.dtype)
            if found is not None:  # a numeric array in its datatype's storage dtype: nothing to check
                return cls._make(name, found, list(array.shape), array.reshape(-1), {})
        return cls(name, datatype or datatype_of(array.dtype), array.shape, array, parameters)

    @classmethod
    def from_raw(cls, name: str, datatype: str, shape: Iterable[int], data: bytes | memoryview,
                 parameters: Mapping[str, ParamValue] | None = None) -> InferTensor:
        """A tensor from its raw bytes (see ``servemesh.tensors.raw``), shared, not copied."""
        kind = info(datatype, name)
        dims = tensor_shape(shape, name)
        count = element_count(dims)
        values: np.ndarray[Any, Any] | list[bytes]
        if kind.name == "BYTES":
            values = raw.unpack_bytes(data, name)
            if len(values) != count:
                raise ValidationError(f"tensor {name!r} has shape {dims}, which holds {count} elements, "
                                      f"but its raw BYTES data holds {len(values)}", field=name)
        else:
            values = raw.array_from_raw(data, kind, count, name)  # read-only, and no one else's
        params = check_parameters(parameters, f"{name}.parameters") if parameters else {}
        return cls._make(name, kind.name, dims, values, params, own=True)

    @property
    def name(self) -> str:
        return self._name

    @property
    def datatype(self) -> str:
        return self._datatype

    @property
    def shape(self) -> ReadOnlyList[int]:
        return self._shape

    @property
    def parameters(self) -> Mapping[str, ParamValue]:
        """Read-only; give parameters when making the tensor."""
        return self._parameters

    @property
    def data(self) -> np.ndarray[Any, Any] | ReadOnlyList[bytes]:
        """The flat elements: a read-only numpy array, or a read-only list of bytes (BYTES)."""
        return self._data

    def as_numpy(self) -> np.ndarray[Any, Any]:
        """The elements in ``shape``, read-only and without a copy; BYTES as an object
        array of ``bytes``, BF16 as ``uint16`` bit patterns (``bfloat16_to_float32``)."""
        if isinstance(self._data, np.ndarray):
            return self._data.reshape(self._shape)
        array = np.empty(len(self._data), dtype=object)
        array[:] = self._data
        array.flags.writeable = False
        return array.reshape(self._shape)

    def to_raw(self) -> bytes:
        """The elements in the raw form (see ``servemesh.tensors.raw``)."""
        if isinstance(self._data, np.ndarray):
            return raw.array_bytes(self._data, info(self._datatype, self._name))
        return raw.pack_bytes(self._data, self._name)

    @property
    def contents(self) -> TensorContents:
        """The elements by protobuf contents field, as AnyServe handlers read them."""
        if self._contents is None:
            values: ReadOnlyList[Any]
            if isinstance(self._data, ReadOnlyList):
                values = self._data
            elif self._datatype == "BF16":
                values = ReadOnlyList(bfloat16_to_float32(self._data).tolist(), "tensor contents")
            else:
                values = ReadOnlyList(self._data.tolist(), "tensor contents")
            self._contents = TensorContents(info(self._datatype, self._name).contents_field, values)
        return self._contents

    # AnyServe's tensors also answer these directly (``inp.bytes_contents[0]``).
    @property
    def bool_contents(self) -> ReadOnlyList[bool]:
        return self.contents.bool_contents

    @property
    def int_contents(self) -> ReadOnlyList[int]:
        return self.contents.int_contents

    @property
    def int64_contents(self) -> ReadOnlyList[int]:
        return self.contents.int64_contents

    @property
    def uint_contents(self) -> ReadOnlyList[int]:
        return self.contents.uint_contents

    @property
    def uint64_contents(self) -> ReadOnlyList[int]:
        return self.contents.uint64_contents

    @property
    def fp32_contents(self) -> ReadOnlyList[float]:
        return self.contents.fp32_contents

    @property
    def fp64_contents(self) -> ReadOnlyList[float]:
        return self.contents.fp64_contents

    @property
    def bytes_contents(self) -> ReadOnlyList[bytes]:
        return self.contents.bytes_contents

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InferTensor):
            return NotImplemented
        if (self._name, self._datatype, self._shape, dict(self._parameters)) != (
                other._name, other._datatype, other._shape, dict(other._parameters)):
            return False
        if isinstance(self._data, np.ndarray) and isinstance(other._data, np.ndarray):
            return self._data.tobytes() == other._data.tobytes()  # bit for bit: NaN == NaN
        return self._data == other._data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        params = f", parameters={dict(self._parameters)!r}" if self._parameters else ""
        if isinstance(self._data, np.ndarray):
            data = np.array2string(self._data, threshold=8, separator=", ")
        else:
            data = f"{list(self._data[:4])!r}"[:-1] + (", ...]" if len(self._data) > 4 else "]")
        return (f"InferTensor(name={self._name!r}, datatype={self._datatype!r}, shape={list(self._shape)!r}, "
                f"data={data}{params})")

    def __reduce__(self) -> tuple[Any, ...]:
        data = self._data if isinstance(self._data, np.ndarray) else list(self._data)
        return (_restore, (self._name, self._datatype, list(self._shape), data, dict(self._parameters)))


def _restore(name: str, datatype: str, shape: list[int], data: Any, parameters: Parameters) -> InferTensor:
    return InferTensor._make(name, datatype, shape, data, parameters)


def tensor_from_fields(name: str, datatype: str, shape: Iterable[int], data: Any,
                       parameters: Mapping[str, ParamValue] | None, fields: Mapping[str, Any]) -> InferTensor:
    """A tensor from ``data=`` or from its one contents field (``bytes_contents=[...]``)."""
    unknown = sorted(set(fields) - set(CONTENTS_FIELDS))
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}; the contents fields are "
                        f"{', '.join(CONTENTS_FIELDS)}")
    given = {key: value for key, value in fields.items() if value is not None}
    sources = (["data"] if data is not None else []) + list(given)
    if len(sources) > 1:
        raise ValidationError(f"tensor {name!r}: give its values once, got {' and '.join(sources)}", field=name)
    if given:
        field, data = next(iter(given.items()))
        expected = info(datatype, name).contents_field
        if field != expected:
            raise ValidationError(f"tensor {name!r} is {datatype}, so its values go in {expected} "
                                  f"(or data=), not in {field}", field=name)
    return InferTensor(name, datatype, shape, [] if data is None else data, parameters)
