"""A GGUF model file with its Q5_0 tensors widened to Q8_0, exactly.

llama.cpp's AMX kernels take Q8_0 (and the k-quants) but not Q5_0, and a Q4_K_M model
whose rows are not a multiple of 256 long (gemma-3-270m: 640) stores most of its
weights as Q5_0: prefill then spends ~60% of its time in AVX kernels. A Q5_0 block is a
half-precision scale ``d`` and 32 five-bit values ``q``, meaning ``d * (q - 16)``; a
Q8_0 block is ``d`` and 32 signed bytes, meaning ``d * v``. So ``v = q - 16`` with the
same ``d`` is the very same weight: the widened file holds the same model, 22 bytes of
every Q5_0 block becoming 34. Everything else (metadata, other tensors) is copied as is.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import ConfigError

Q5_0, Q8_0 = 6, 8
_Q5_0_BLOCK, _Q8_0_BLOCK, _BLOCK = 22, 34, 32
#: sizes of GGUF's fixed-size metadata value types (8: string, 9: array are read apart)
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


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


def _read(f: BinaryIO, fmt: str) -> tuple[int, ...]:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ConfigError(f"{getattr(f, 'name', 'the model')} is not a complete GGUF file")
    return struct.unpack(fmt, data)


def _skip_value(f: BinaryIO, kind: int) -> None:
    if kind == 8:
        (n,) = _read(f, "<Q")
        f.seek(n, os.SEEK_CUR)
    elif kind == 9:
        item, count = _read(f, "<IQ")
        if item in _SCALAR:
            f.seek(_SCALAR[item] * count, os.SEEK_CUR)
        else:
            for _ in range(count):
                _skip_value(f, item)
    elif kind in _SCALAR:
        f.seek(_SCALAR[kind], os.SEEK_CUR)
    else:
        raise ConfigError(f"unknown GGUF metadata type {kind} in {getattr(f, 'name', 'the model')}")


def _layout(f: BinaryIO) -> tuple[int, int, list[_Tensor]]:
    """(end of the metadata, alignment, tensors) of the GGUF file ``f``."""
    magic, version, n_tensors, n_kv = _read(f, "<4sIQQ")
    if magic != b"GGUF" or version not in (2, 3):
        raise ConfigError(f"{getattr(f, 'name', 'the model')} is not a GGUF file of version 2 or 3")
    alignment = 32
    for _ in range(n_kv):
        (n,) = _read(f, "<Q")
        key = f.read(n)
        (kind,) = _read(f, "<I")
        if key == b"general.alignment" and kind == 4:
            (alignment,) = _read(f, "<I")
        else:
            _skip_value(f, kind)
    meta_end = f.tell()
    tensors = []
    for _ in range(n_tensors):
        (n,) = _read(f, "<Q")
        name = f.read(n)
        (n_dims,) = _read(f, "<I")
        dims = _read(f, f"<{n_dims}Q")
        type_, offset = _read(f, "<IQ")
        tensors.append(_Tensor(name, dims, type_, offset))
    return meta_end, alignment, tensors


def _align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def has_q5_0(path: Path) -> bool:
    with path.open("rb") as f:
        return any(t.type == Q5_0 for t in _layout(f)[2])


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
    """``src`` with every Q5_0 tensor stored as Q8_0, written to ``dst`` (atomically)."""
    with src.open("rb") as f:
        meta_end, alignment, tensors = _layout(f)
        data_start = _align(f.tell(), alignment)  # the tensor infos end here
        file_end = f.seek(0, os.SEEK_END)
        ends = sorted({t.offset for t in tensors} | {file_end - data_start})
        size_of = {off: ends[i + 1] - off for i, off in enumerate(ends[:-1])}
        new_offsets: list[int] = []
        sizes: list[int] = []
        at = 0
        for t in tensors:
            if t.type == Q5_0:
                if t.elements % _BLOCK:
                    raise ConfigError(f"tensor {t.name.decode()} of {src} is not whole Q5_0 blocks")
                size = t.elements // _BLOCK * _Q8_0_BLOCK
            else:
                size = size_of[t.offset]
            new_offsets.append(at)
            sizes.append(size)
            at = _align(at + size, alignment)
        tmp = dst.with_name(f"{dst.name}.{os.getpid()}.part")  # processes widening at once never share one
        with tmp.open("wb") as out:
            f.seek(0)
            out.write(f.read(meta_end))
            for t, offset in zip(tensors, new_offsets, strict=True):
                out.write(struct.pack("<Q", len(t.name)) + t.name + struct.pack("<I", len(t.dims)))
                out.write(struct.pack(f"<{len(t.dims)}Q", *t.dims))
                out.write(struct.pack("<IQ", Q8_0 if t.type == Q5_0 else t.type, offset))
            out.write(b"\0" * (_align(out.tell(), alignment) - out.tell()))
            base = out.tell()
            for t, offset, size in zip(tensors, new_offsets, sizes, strict=True):
                out.write(b"\0" * (base + offset - out.tell()))
                f.seek(data_start + t.offset)
                if t.type == Q5_0:
                    out.write(widen_q5_0(f.read(t.elements // _BLOCK * _Q5_0_BLOCK)))
                else:
                    out.write(f.read(size))
        tmp.replace(dst)

