"""Object payloads: values to self-describing bytes and back. Pure functions, no I/O.

A payload is ``MAGIC`` (``b"SMO\\x01"``), one tag byte, then the body::

    J  JSON (UTF-8): dicts with str keys, lists (tuples come back as lists), str,
       int, finite float, bool, None
    B  raw bytes (bytearray and memoryview come back as bytes)
    N  a numpy array in the .npy format, written and read with allow_pickle=False;
       numpy scalars come back as 0-d arrays
    P  pickle: written and read only when the operator allowed it; a store that
       did not refuses a P payload before any of its bytes are unpickled

The tag says how to decode, so ``get`` needs no side channel. numpy is imported
only for an N payload (or when the caller already imported it).
"""

from __future__ import annotations

import io
import json
import math
import pickle
import sys
from typing import Any, Literal

from .errors import ObjectCorrupted, ObjectRefused, ObjectTooLarge

MAGIC = b"SMO\x01"
JSON, BYTES, NUMPY, PICKLE = b"J", b"B", b"N", b"P"
HEADER_LEN = len(MAGIC) + 1
KINDS = {JSON: "json", BYTES: "bytes", NUMPY: "numpy", PICKLE: "pickle"}
#: containers nested deeper than this are refused (and never reach json's recursion)
MAX_DEPTH = 100

_PICKLE_HINT = ("pickle runs code when it is read, so a store takes it only when the operator sets "
                "SERVEMESH_OBJECT_ALLOW_PICKLE=true on every replica (and only if every writer is trusted)")


def encode(value: Any, *, allow_pickle: bool = False, max_bytes: int | None = None) -> bytes:
    """The payload of ``value``: ``ObjectRefused`` for a value no allowed codec takes,
    ``ObjectTooLarge`` when bytes or an array are over ``max_bytes`` before encoding."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        body = value.tobytes() if isinstance(value, memoryview) else value
        _check_size(len(body) + HEADER_LEN, max_bytes)
        return b"".join((MAGIC, BYTES, body))
    np = sys.modules.get("numpy")  # no array can exist unless numpy was imported
    if np is not None and isinstance(value, (np.ndarray, np.generic)):
        return _encode_numpy(np, value, allow_pickle, max_bytes)
    problem = _json_problem(value)
    if problem is None:
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            return MAGIC + JSON + text.encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError) as exc:
            problem = str(exc)
    if not allow_pickle:
        raise ObjectRefused(f"a value of type {type(value).__name__} is not JSON ({problem}), bytes or a numpy "
                            f"array: convert it to one of those; {_PICKLE_HINT}")
    return _encode_pickle(value)


def kind(data: bytes | bytearray | memoryview, ref: str | None = None) -> str:
    """``"json"``, ``"bytes"``, ``"numpy"`` or ``"pickle"``: how ``data`` decodes."""
    if len(data) < HEADER_LEN or bytes(data[: len(MAGIC)]) != MAGIC:
        raise ObjectCorrupted(ref, "it has no servemesh object header (it was not made by objects.create())")
    tag = bytes(data[len(MAGIC): HEADER_LEN])
    if tag not in KINDS:
        raise ObjectCorrupted(ref, f"unknown payload tag {tag!r} (written by a newer servemesh?)")
    return KINDS[tag]


def decode(data: bytes | bytearray | memoryview, *, allow_pickle: bool = False, ref: str | None = None) -> Any:
    """The value of a payload; ``ObjectRefused`` for pickle without ``allow_pickle``
    (checked before the body is looked at), ``ObjectCorrupted`` for bytes that do not decode."""
    how = kind(data, ref)
    body = memoryview(data)[HEADER_LEN:]
    if how == "bytes":
        return bytes(body)
    if how == "json":
        try:
            return json.loads(bytes(body).decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise ObjectCorrupted(ref, f"its JSON does not decode: {exc}") from None
    if how == "numpy":
        return _decode_numpy(body, ref)
    if not allow_pickle:
        raise ObjectRefused(f"it holds a pickle payload, which this store does not read: {_PICKLE_HINT}", ref)
    try:
        return pickle.loads(body)
    except Exception as exc:  # unpickling can raise anything; the operator opted in to that
        raise ObjectCorrupted(ref, f"its pickle does not load: {exc!r}") from exc


# -- JSON ------------------------------------------------------------------------------
def _json_problem(value: Any) -> str | None:
    """Why ``value`` would not come back from JSON as itself, or ``None``. Iterative, so
    deep nesting is a refusal, not a RecursionError; paths are built only for containers."""
    stack: list[tuple[Any, str, int]] = [(value, "value", 0)]
    while stack:
        item, where, depth = stack.pop()
        if item is None or isinstance(item, (str, bool, int)):
            continue
        if isinstance(item, float):
            if math.isfinite(item):
                continue
            return f"{where} is {item!r}, which JSON cannot hold"
        children: Any
        if isinstance(item, (list, tuple)):
            children = enumerate(item)
        elif isinstance(item, dict):
            for key in item:
                if not isinstance(key, str):
                    return f"{where} has a key {key!r} of type {type(key).__name__} (JSON keys are strings)"
            children = item.items()
        else:
            return f"{where} is a {type(item).__name__}"
        if depth >= MAX_DEPTH:
            return f"{where} is nested deeper than {MAX_DEPTH} levels"
        for key, child in children:
            kind_ = type(child)
            if child is None or kind_ is str or kind_ is int or kind_ is bool or (
                    kind_ is float and math.isfinite(child)):
                continue  # the common case: no path string made
            stack.append((child, f"{where}[{key!r}]", depth + 1))
    return None


# -- numpy -----------------------------------------------------------------------------
def _encode_numpy(np: Any, value: Any, allow_pickle: bool, max_bytes: int | None) -> bytes:
    array = np.asarray(value)
    if array.dtype.hasobject:
        if allow_pickle:
            return _encode_pickle(value)
        raise ObjectRefused(f"a numpy array of dtype {array.dtype} holds Python objects, which only pickle "
                            f"can store: convert it to a numeric, bytes or str dtype; {_PICKLE_HINT}")
    _check_size(array.nbytes + HEADER_LEN, max_bytes)
    out = io.BytesIO()
    out.write(MAGIC + NUMPY)
    np.lib.format.write_array(out, array, allow_pickle=False)
    return out.getvalue()


def _decode_numpy(body: memoryview, ref: str | None) -> Any:
    try:
        import numpy as np
    except ImportError:
        raise ObjectRefused("it holds a numpy array and numpy is not installed here: pip install numpy",
                            ref) from None
    stream = io.BytesIO(body)
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, TypeError, SyntaxError, EOFError) as exc:
        raise ObjectCorrupted(ref, f"its numpy header does not decode: {exc}") from None
    if dtype.hasobject:
        raise ObjectRefused(f"it holds a numpy array of dtype {dtype}, which only pickle can read: {_PICKLE_HINT}",
                            ref)
    # the header's shape is checked against the bytes present before anything is allocated
    if any(n < 0 for n in shape):
        raise ObjectCorrupted(ref, f"its numpy header has the shape {shape}")
    count = math.prod(shape)
    rest = body[stream.tell():]
    if count * dtype.itemsize != len(rest):
        raise ObjectCorrupted(ref, f"its numpy header promises {count} x {dtype.itemsize} bytes, "
                                   f"the payload holds {len(rest)}")
    order: Literal["C", "F"] = "F" if fortran else "C"
    if count == 0 or dtype.itemsize == 0:
        return np.empty(shape, dtype=dtype, order=order)
    return np.frombuffer(rest, dtype=dtype, count=count).reshape(shape, order=order).copy(order="K")


# -- pickle and limits -----------------------------------------------------------------
def _encode_pickle(value: Any) -> bytes:
    try:
        return MAGIC + PICKLE + pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # pickling can raise anything a __reduce__ raises
        raise ObjectRefused(f"a value of type {type(value).__name__} does not pickle: {exc!r}") from exc


def _check_size(size: int, limit: int | None) -> None:
    if limit is not None and size > limit:
        raise ObjectTooLarge(size, limit)
