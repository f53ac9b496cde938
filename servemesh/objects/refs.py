"""Object refs: opaque, content-addressed names, checked before any backend sees them.

A ref is ``obj-`` and the 64 lowercase hex digits of the SHA-256 of the object's
encoded payload, nothing else. It names an object in any backend (a file name in
the local directory, an object name in the JetStream bucket), and it is never a
path: the strict pattern leaves no room for ``/``, ``..``, a scheme or a NUL, so
no ref can point outside the store. Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import re
import sys
from typing import Any

from .errors import InvalidObjectRef, ObjectCorrupted

PREFIX = "obj-"
#: exactly what :func:`ref_for` makes; ``fullmatch`` only (``$`` would allow a trailing newline)
PATTERN = re.compile(r"obj-[0-9a-f]{64}")
LENGTH = len(PREFIX) + 64
#: list or array levels ref_from_tensor unwraps ([[ref]] is a tensor of shape [1, 1])
_MAX_NESTING = 8


def ref_for(data: bytes | bytearray | memoryview) -> str:
    """The ref of an encoded payload."""
    return PREFIX + hashlib.sha256(data).hexdigest()


def is_ref(value: object) -> bool:
    """True when ``value`` is a well-formed ref (a ``str``)."""
    return isinstance(value, str) and len(value) == LENGTH and PATTERN.fullmatch(value) is not None


def check_ref(value: object) -> str:
    """``value`` as a ref (``str``; ASCII ``bytes`` are accepted, as tensors carry
    them), or ``InvalidObjectRef``. Refs are compared as they are: no stripping,
    no case folding, no decoding of escapes."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if len(raw) != LENGTH:
            raise InvalidObjectRef(raw)
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidObjectRef(raw) from None
    elif isinstance(value, str):
        text = value
    else:
        raise InvalidObjectRef(value)
    if not is_ref(text):
        raise InvalidObjectRef(text)
    return text


def verify(ref: str, data: bytes | bytearray | memoryview) -> None:
    """``ObjectCorrupted`` unless ``data`` is the payload ``ref`` names."""
    actual = ref_for(data)
    if actual != ref:
        raise ObjectCorrupted(ref, f"its content hashes to {actual}: the stored bytes were changed or "
                                   "truncated; delete it and create the object again")


def ref_from_tensor(value: Any) -> str:
    """The ref carried by a tensor input such as AnyServe's ``obj_ref``: a ``str`` or
    ``bytes``, or a one-element list, tuple or numpy array of one (``BYTES``
    tensors arrive as ``[b"obj-..."]`` or ``np.array([b"obj-..."], dtype=object)``)."""
    np = sys.modules.get("numpy")  # an array can only exist if numpy was imported
    for _ in range(_MAX_NESTING):
        if np is not None and isinstance(value, np.ndarray):
            if value.size != 1:
                raise InvalidObjectRef(f"a tensor of shape {list(value.shape)} (a ref tensor holds one element)")
            value = value.reshape(-1)[0]
        elif isinstance(value, (list, tuple)):
            if len(value) != 1:
                raise InvalidObjectRef(f"a list of {len(value)} elements (a ref tensor holds one element)")
            value = value[0]
        else:
            break
    if np is not None and isinstance(value, np.bytes_):
        value = bytes(value)
    elif np is not None and isinstance(value, np.str_):
        value = str(value)
    return check_ref(value)
