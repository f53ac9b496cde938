"""The raw form of tensor elements, shared by the binary REST extension and protobuf's
``raw_input_contents`` / ``raw_output_contents``. Pure functions, no I/O.

Numbers are the flat, row-major elements in little-endian order without padding; BOOL
is one byte per element (0 or 1); BF16 is its 16-bit patterns. A BYTES tensor is each
element as a 4-byte little-endian length followed by its bytes, as Triton writes it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ValidationError
from .datatypes import DatatypeInfo

__all__ = ["array_bytes", "array_from_raw", "array_raw", "pack_bytes", "unpack_bytes"]

_LENGTH = struct.Struct("<I")
_MAX_ELEMENT = 2**32 - 1
#: from this many BYTES elements on, numpy packs them (below, its set-up costs more)
_VECTOR_MIN = 64


def pack_bytes(items: Sequence[bytes], name: str = "") -> bytes:
    """BYTES elements, each prefixed with its 4-byte little-endian length."""
    count = len(items)
    if count < _VECTOR_MIN:
        pack = _LENGTH.pack
        try:
            return b"".join([part for item in items for part in (pack(len(item)), item)])
        except struct.error:
            raise _too_long(name) from None
    # many elements: one join of the payload, then numpy scatters it and the lengths
    lengths = np.fromiter(map(len, items), dtype=np.int64, count=count)
    if int(lengths.max()) > _MAX_ELEMENT:
        raise _too_long(name)
    payload = b"".join(items)
    starts = np.zeros(count, dtype=np.int64)
    np.cumsum(lengths[:-1] + 4, out=starts[1:])
    out = np.empty(len(payload) + 4 * count, dtype=np.uint8)
    prefix = (starts[:, None] + np.arange(4)).reshape(-1)
    out[prefix] = lengths.astype("<u4").view(np.uint8)
    body = np.ones(out.size, dtype=bool)
    body[prefix] = False
    out[body] = np.frombuffer(payload, dtype=np.uint8)
    return out.tobytes()


def _too_long(name: str) -> ValidationError:
    return ValidationError(f"tensor {name!r} has a BYTES element over {_MAX_ELEMENT} bytes, "
                           "more than a 4-byte length can say", field=name or None)


def unpack_bytes(buffer: bytes | memoryview, name: str = "") -> list[bytes]:
    """The elements of a length-prefixed BYTES buffer; ``ValidationError`` if it is cut short."""
    data = buffer if isinstance(buffer, bytes) else bytes(buffer)  # slicing bytes beats memoryviews
    size = len(data)
    unpack = _LENGTH.unpack_from
    items: list[bytes] = []
    offset = 0
    while offset < size:
        if offset + 4 > size:
            raise ValidationError(f"tensor {name!r}: raw BYTES data ends inside the 4-byte length of "
                                  f"element {len(items)}", field=name or None)
        (length,) = unpack(data, offset)
        offset += 4
        end = offset + length
        if end > size:
            raise ValidationError(f"tensor {name!r}: raw BYTES element {len(items)} says {length} bytes, "
                                  f"but only {size - offset} remain", field=name or None)
        items.append(data[offset:end])
        offset = end
    return items


def array_raw(array: np.ndarray[Any, Any], info: DatatypeInfo) -> memoryview:
    """A flat array's raw bytes as a buffer, without a copy where the array already is
    contiguous little-endian (``bytes(...)`` of it for a ``bytes``)."""
    little = _little(info)
    return np.ascontiguousarray(array).astype(little, copy=False).data.cast("B")


def array_bytes(array: np.ndarray[Any, Any], info: DatatypeInfo) -> bytes:
    """A flat array's raw bytes, as a ``bytes``."""
    if array.dtype is _little(info):  # the usual case (a little-endian host): one copy, no views
        return array.tobytes()
    return bytes(array_raw(array, info))


def array_from_raw(buffer: bytes | memoryview, info: DatatypeInfo, count: int, name: str) -> np.ndarray[Any, Any]:
    """``count`` elements of ``info``'s datatype read from ``buffer``, without a copy
    where the host is little-endian. The array is read-only."""
    expected = count * info.itemsize
    if len(buffer) != expected:
        raise ValidationError(f"tensor {name!r}: raw data holds {len(buffer)} bytes, but {count} "
                              f"{info.name} elements take {expected}", field=name)
    if info.name == "BOOL":
        array = np.frombuffer(buffer, dtype=np.uint8) != 0
        array.flags.writeable = False
        return array
    little = _little(info)
    array = np.frombuffer(buffer, dtype=little)
    if little is not info.dtype and little != info.dtype:  # a big-endian host
        array = array.astype(info.dtype)
    elif type(buffer) is bytes:  # a view of immutable bytes is read-only already
        return array
    array.flags.writeable = False
    return array


_LITTLE: dict[str, np.dtype[Any]] = {}


def _little(info: DatatypeInfo) -> np.dtype[Any]:
    """The little-endian dtype of ``info``'s raw form (BOOL: one byte each), made once."""
    found = _LITTLE.get(info.name)
    if found is None:
        if info.name == "BOOL":
            found = np.dtype(np.uint8)
        else:  # the storage dtype itself on a little-endian host (``is`` finds it then)
            little = info.dtype.newbyteorder("<")
            found = info.dtype if little == info.dtype else little
        _LITTLE[info.name] = found
    return found
