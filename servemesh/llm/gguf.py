"""A GGUF model file with its Q5_0 tensors widened to Q8_0, exactly.

llama.cpp's AMX kernels take Q8_0 (and the k-quants) but not Q5_0, and a Q4_K_M model
whose rows are not a multiple of 256 long (gemma-3-270m: 640) stores most of its
weights as Q5_0: prefill then spends ~60% of its time in AVX kernels. A Q5_0 block is a
half-precision scale ``d`` and 32 five-bit values ``q``, meaning ``d * (q - 16)``; a
Q8_0 block is ``d`` and 32 signed bytes, meaning ``d * v``. So ``v = q - 16`` with the
same ``d`` is the very same weight: the widened file holds the same model, 22 bytes of
every Q5_0 block becoming 34. Everything else (metadata, other tensors) is copied as is.
Files this does not fully understand (a tensor type it has no size for, a layout
llama.cpp would not load, a model split over several files) are refused with
``ConfigError``; the caller then loads the original.
"""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import ConfigError

Q5_0, Q8_0 = 6, 8
_Q5_0_BLOCK, _Q8_0_BLOCK, _BLOCK = 22, 34, 32
#: ggml type -> (bytes per block, values per block), for the types a GGUF model may hold
_TYPE_SIZE = {0: (4, 1), 1: (2, 1), 2: (18, 32), 3: (20, 32), 6: (22, 32), 7: (24, 32), 8: (34, 32), 9: (36, 32),
              10: (84, 256), 11: (110, 256), 12: (144, 256), 13: (176, 256), 14: (210, 256), 15: (292, 256),
              16: (66, 256), 17: (74, 256), 18: (98, 256), 19: (50, 256), 20: (18, 32), 21: (110, 256),
              22: (82, 256), 23: (136, 256), 24: (1, 1), 25: (2, 1), 26: (4, 1), 27: (8, 1), 28: (8, 1),
              29: (56, 256), 30: (2, 1)}
#: sizes of GGUF's fixed-size metadata value types (8: string, 9: array are read apart)
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
#: Q5_0 blocks widened at a time (bounds the memory a large tensor needs)
_CHUNK_BLOCKS = 1 << 16
_COPY = 8 << 20


class _Tensor:
    __slots__ = ("dims", "name", "offset", "type")

    def __init__(self, name: bytes, dims: tuple[int, ...], type_: int, offset: int) -> None:
        self.name, self.dims, self.type, self.offset = name, dims, type_, offset

    @property
    def elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    def nbytes(self, type_: int | None = None) -> int:
        kind = self.type if type_ is None else type_
        if kind not in _TYPE_SIZE:
            raise ConfigError(f"tensor {self.name.decode(errors='replace')} has a ggml type ({kind}) this cannot size")
        size, block = _TYPE_SIZE[kind]
        if self.elements % block:
            raise ConfigError(f"tensor {self.name.decode(errors='replace')} is not whole blocks of its type")
        return self.elements // block * size


class _Layout:
    __slots__ = ("alignment", "data_start", "meta_end", "splits", "tensors")

    def __init__(self, meta_end: int, alignment: int, splits: int, tensors: list[_Tensor], data_start: int) -> None:
        self.meta_end, self.alignment, self.splits, self.tensors = meta_end, alignment, splits, tensors
        self.data_start = data_start


def _name(f: BinaryIO) -> str:
    return str(getattr(f, "name", "the model"))


def _bytes(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ConfigError(f"{_name(f)} is not a complete GGUF file")
    return data


def _read(f: BinaryIO, fmt: str) -> tuple[int, ...]:
    return struct.unpack(fmt, _bytes(f, struct.calcsize(fmt)))


def _skip_value(f: BinaryIO, kind: int) -> None:
    if kind == 8:
        (n,) = _read(f, "<Q")
        _bytes(f, n)
    elif kind == 9:
        item, count = _read(f, "<IQ")
        if item in _SCALAR:
            _bytes(f, _SCALAR[item] * count)
        else:
            for _ in range(count):
                _skip_value(f, item)
    elif kind in _SCALAR:
        _bytes(f, _SCALAR[kind])
    else:
        raise ConfigError(f"unknown GGUF metadata type {kind} in {_name(f)}")


def _layout(f: BinaryIO) -> _Layout:
    magic, version, n_tensors, n_kv = _read(f, "<4sIQQ")
    if magic != b"GGUF" or version not in (2, 3):
        raise ConfigError(f"{_name(f)} is not a little-endian GGUF file of version 2 or 3")
    alignment, splits = 32, 1
    for _ in range(n_kv):
        (n,) = _read(f, "<Q")
        key = _bytes(f, n)
        (kind,) = _read(f, "<I")
        if key == b"general.alignment" and kind == 4:
            (alignment,) = _read(f, "<I")
        elif key == b"split.count" and kind == 2:
            (splits,) = _read(f, "<H")
        else:
            _skip_value(f, kind)
    if alignment <= 0 or alignment & (alignment - 1):
        raise ConfigError(f"{_name(f)} has an alignment of {alignment}, not a power of two")
    meta_end = f.tell()
    tensors = []
    for _ in range(n_tensors):
        (n,) = _read(f, "<Q")
        name = _bytes(f, n)
        (n_dims,) = _read(f, "<I")
        if n_dims > 4:
            raise ConfigError(f"tensor {name.decode(errors='replace')} of {_name(f)} has {n_dims} dimensions")
        dims = _read(f, f"<{n_dims}Q")
        type_, offset = _read(f, "<IQ")
        tensors.append(_Tensor(name, dims, type_, offset))
    return _Layout(meta_end, alignment, splits, tensors, _align(f.tell(), alignment))


def _align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def has_q5_0(path: Path) -> bool:
    with path.open("rb") as f:
        return any(t.type == Q5_0 for t in _layout(f).tensors)


def widen_q5_0(blocks: bytes) -> bytes:
    """Q5_0 blocks as the Q8_0 blocks of the same weights."""
    raw = np.frombuffer(blocks, dtype=np.uint8).reshape(-1, _Q5_0_BLOCK)
    qh = raw[:, 2:6].copy().view("<u4")  # bit j: the fifth bit of value j
    qs = raw[:, 6:]
    low = (qs & 0x0F) | (((qh >> np.arange(16, dtype=np.uint32)) & 1) << 4).astype(np.uint8)
    high = (qs >> 4) | (((qh >> np.arange(16, 32, dtype=np.uint32)) & 1) << 4).astype(np.uint8)
    out = np.empty((raw.shape[0], _Q8_0_BLOCK), dtype=np.uint8)
    out[:, :2] = raw[:, :2]  # the same half-precision scale
    out[:, 2:18] = (low.astype(np.int16) - 16).astype(np.int8).view(np.uint8)
    out[:, 18:] = (high.astype(np.int16) - 16).astype(np.int8).view(np.uint8)
    return out.tobytes()


def write_widened(src: Path, dst: Path) -> None:
    """``src`` with every Q5_0 tensor stored as Q8_0, written to ``dst`` (a complete file
    appears under that name, or none: written aside, flushed to disk, then renamed)."""
    with src.open("rb") as f:
        layout = _layout(f)
        if layout.splits > 1:
            raise ConfigError(f"{src} is one part of a model split over {layout.splits} files")
        file_size = f.seek(0, os.SEEK_END)
        at = 0
        for t in layout.tensors:  # the layout llama.cpp insists on: tensors back to back, each aligned
            if t.offset != at or layout.data_start + t.offset + t.nbytes() > file_size:
                raise ConfigError(f"tensor {t.name.decode(errors='replace')} of {src} is not where GGUF puts it")
            at = _align(at + t.nbytes(), layout.alignment)
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                _write(f, out, layout)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _write(f: BinaryIO, out: BinaryIO, layout: _Layout) -> None:
    f.seek(0)
    out.write(_bytes(f, layout.meta_end))
    at = 0
    for t in layout.tensors:
        kind = Q8_0 if t.type == Q5_0 else t.type
        out.write(struct.pack("<Q", len(t.name)) + t.name + struct.pack("<I", len(t.dims)))
        out.write(struct.pack(f"<{len(t.dims)}Q", *t.dims) + struct.pack("<IQ", kind, at))
        at = _align(at + t.nbytes(kind), layout.alignment)
    out.write(b"\0" * (_align(out.tell(), layout.alignment) - out.tell()))
    base = out.tell()
    for t in layout.tensors:
        written = out.tell() - base
        out.write(b"\0" * (_align(written, layout.alignment) - written))
        f.seek(layout.data_start + t.offset)
        left = t.nbytes()
        if t.type == Q5_0:
            while left:
                n = min(left, _CHUNK_BLOCKS * _Q5_0_BLOCK)
                out.write(widen_q5_0(_bytes(f, n)))
                left -= n
        else:
            while left:
                n = min(left, _COPY)
                out.write(_bytes(f, n))
                left -= n
