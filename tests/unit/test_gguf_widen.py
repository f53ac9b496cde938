"""servemesh.llm.gguf: Q5_0 tensors widened to Q8_0 hold exactly the same weights, and
the rest of the file (metadata, other tensors, alignment) comes through unchanged."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from servemesh.errors import ConfigError
from servemesh.llm import gguf

F32 = 0


def dequant_q5_0(raw: bytes) -> np.ndarray:
    """ggml's dequantize_row_q5_0, written out."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 22)
    out = []
    for b in blocks:
        d = np.frombuffer(b[:2].tobytes(), dtype="<f2")[0].astype(np.float32)
        qh = int.from_bytes(b[2:6].tobytes(), "little")
        qs = b[6:]
        values = [0.0] * 32
        for j in range(16):
            x0 = ((int(qs[j]) & 0x0F) | (((qh >> j) << 4) & 0x10)) - 16
            x1 = ((int(qs[j]) >> 4) | ((qh >> (j + 12)) & 0x10)) - 16
            values[j], values[j + 16] = x0 * d, x1 * d
        out.extend(values)
    return np.array(out, dtype=np.float32)


def dequant_q8_0(raw: bytes) -> np.ndarray:
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 34)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)
    return (blocks[:, 2:].copy().view(np.int8).astype(np.float32) * d).reshape(-1)


def random_q5_0(rng: np.random.Generator, n_blocks: int) -> bytes:
    blocks = rng.integers(0, 256, size=(n_blocks, 22), dtype=np.uint8)
    blocks[:, :2] = np.frombuffer(rng.uniform(-2, 2, n_blocks).astype("<f2").tobytes(), np.uint8).reshape(-1, 2)
    return blocks.tobytes()


def test_widened_blocks_are_the_same_weights():
    raw = random_q5_0(np.random.default_rng(7), 200)
    widened = gguf.widen_q5_0(raw)
    assert len(widened) == 200 * 34
    assert np.array_equal(dequant_q8_0(widened), dequant_q5_0(raw))
    assert np.abs(np.frombuffer(widened, np.uint8).reshape(-1, 34)[:, 2:].view(np.int8)).max() <= 16


def gguf_string(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


def write_model(path: Path, tensors: list[tuple[str, tuple[int, ...], int, bytes]], alignment: int = 64,
                more: bytes = b"") -> bytes:
    """A small GGUF v3 file (``more``: one more metadata entry); returns its metadata bytes."""
    kv = [*([more] if more else []),gguf_string("general.architecture") + struct.pack("<I", 8) + gguf_string("test"),
          gguf_string("general.alignment") + struct.pack("<II", 4, alignment),
          gguf_string("tokenizer.tokens") + struct.pack("<IIQ", 9, 8, 2) + gguf_string("a") + gguf_string("bc"),
          gguf_string("sizes") + struct.pack("<IIQ3i", 9, 5, 3, 1, 2, 3),
          gguf_string("nested") + struct.pack("<IIQ", 9, 9, 1) + struct.pack("<IQ", 7, 2) + b"\x01\x00"]
    meta = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)) + b"".join(kv)
    infos, data, at = b"", b"", 0
    for name, dims, kind, blob in tensors:
        infos += gguf_string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        infos += struct.pack("<IQ", kind, at)
        padded = blob + b"\x00" * (-len(blob) % alignment)
        data += padded
        at += len(padded)
    head = meta + infos
    path.write_bytes(head + b"\x00" * (-len(head) % alignment) + data)
    return meta


def tensor_data(path: Path) -> dict[str, tuple[int, bytes]]:
    raw = path.read_bytes()
    with path.open("rb") as f:
        layout = gguf._layout(f)
    out = {}
    for t in layout.tensors:
        assert (layout.data_start + t.offset) % layout.alignment == 0
        out[t.name.decode()] = (t.type, raw[layout.data_start + t.offset:layout.data_start + t.offset + t.nbytes()])
    return out


def test_a_file_is_rewritten_with_its_q5_0_tensors_widened(tmp_path, monkeypatch):
    monkeypatch.setattr(gguf, "_CHUNK_BLOCKS", 3)  # a tensor widened in pieces comes out the same
    rng = np.random.default_rng(3)
    a, c = random_q5_0(rng, 4), random_q5_0(rng, 1)
    b = np.arange(3, dtype="<f4").tobytes()
    src, dst = tmp_path / "m.gguf", tmp_path / "m.q8.gguf"
    meta = write_model(src, [("a", (64, 2), gguf.Q5_0, a), ("b", (3,), F32, b), ("c", (32,), gguf.Q5_0, c)])
    assert gguf.has_q5_0(src)
    gguf.write_widened(src, dst)
    assert dst.read_bytes().startswith(meta)  # every metadata byte as it was
    assert not gguf.has_q5_0(dst)
    got = tensor_data(dst)
    assert got["a"][0] == got["c"][0] == gguf.Q8_0 and got["b"] == (F32, b)
    assert np.array_equal(dequant_q8_0(got["a"][1]), dequant_q5_0(a))
    assert np.array_equal(dequant_q8_0(got["c"][1]), dequant_q5_0(c))
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.part"))


def test_files_that_are_not_whole_gguf_are_refused(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + b"\x00" * 40)
    with pytest.raises(ConfigError, match="not a little-endian GGUF file"):
        gguf.has_q5_0(bad)
    src = tmp_path / "m.gguf"
    write_model(src, [("a", (32,), gguf.Q5_0, random_q5_0(np.random.default_rng(1), 1))])
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(src.read_bytes()[:60])
    with pytest.raises(ConfigError, match="not a complete GGUF file"):
        gguf.write_widened(cut, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_the_widened_copy_is_made_once_and_only_for_amx_kernels(tmp_path, monkeypatch):
    from servemesh.llm import model

    monkeypatch.setattr(Path, "home", lambda: tmp_path / "home")
    src = tmp_path / "m.gguf"
    write_model(src, [("a", (32,), gguf.Q5_0, random_q5_0(np.random.default_rng(5), 1))])
    monkeypatch.setattr(model, "amx_kernels", lambda: False)
    assert model.weights_for(src, "on") == (src, True)  # no AMX kernels: nothing to gain
    assert model.weights_for(src, "off") == (src, False)
    monkeypatch.setattr(model, "amx_kernels", lambda: True)
    assert model.weights_for(src, "off") == (src, False)
    path, repack = model.weights_for(src, "on")
    assert repack and path.parent == tmp_path / "home" / ".cache" / "servemesh" / "models"
    assert not gguf.has_q5_0(path)
    made = path.stat().st_mtime_ns
    assert model.weights_for(src, "on") == (path, True) and path.stat().st_mtime_ns == made  # made once
    write_model(src, [("a", (64,), gguf.Q5_0, random_q5_0(np.random.default_rng(6), 2))])  # the model changed
    again, _ = model.weights_for(src, "on")
    assert again != path and tensor_data(again)["a"][0] == gguf.Q8_0
    plain = tmp_path / "plain.gguf"
    write_model(plain, [("b", (3,), F32, np.zeros(3, "<f4").tobytes())])
    assert model.weights_for(plain, "on") == (plain, True)  # nothing to widen


def test_layouts_llama_cpp_would_not_load_are_refused_and_leave_nothing(tmp_path):
    block = random_q5_0(np.random.default_rng(2), 1)
    write_model(tmp_path / "split.gguf", [("a", (32,), gguf.Q5_0, block)],
                more=gguf_string("split.count") + struct.pack("<IH", 2, 2))
    write_model(tmp_path / "type.gguf", [("a", (32,), gguf.Q5_0, block), ("x", (32,), 99, b"?" * 64)])
    src = tmp_path / "offset.gguf"
    write_model(src, [("a", (32,), gguf.Q5_0, block)])
    raw = bytearray(src.read_bytes())
    at = raw.index(struct.pack("<QIQ", 32, gguf.Q5_0, 0))  # its one dimension, type and offset
    raw[at + 12:at + 20] = struct.pack("<Q", 64)  # its data said to start elsewhere
    src.write_bytes(bytes(raw))
    for name, match in (("split", "split over 2 files"), ("type", "ggml type .99."), ("offset", "not where GGUF")):
        with pytest.raises(ConfigError, match=match):
            gguf.write_widened(tmp_path / f"{name}.gguf", tmp_path / "out.gguf")
    data_cut = tmp_path / "data-cut.gguf"
    write_model(data_cut, [("a", (64,), gguf.Q5_0, random_q5_0(np.random.default_rng(4), 2))])
    data_cut.write_bytes(data_cut.read_bytes()[:-30])
    with pytest.raises(ConfigError, match="not where GGUF puts it"):
        gguf.write_widened(data_cut, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists() and not list(tmp_path.glob("*.part"))


def test_when_no_copy_can_be_made_the_original_is_loaded(tmp_path, monkeypatch, caplog):
    import logging

    from servemesh.llm import model

    home = tmp_path / "home"
    home.write_text("a file where the home directory should be")  # nothing can be made under it
    monkeypatch.setattr(Path, "home", lambda: home)
    monkeypatch.setattr(model, "amx_kernels", lambda: True)
    src = tmp_path / "m.gguf"
    write_model(src, [("a", (32,), gguf.Q5_0, random_q5_0(np.random.default_rng(8), 1))])
    with caplog.at_level(logging.WARNING, logger="servemesh.llm"):
        assert model.weights_for(src, "on") == (src, True)
    assert any("loading" in r.getMessage() and "as it is" in r.getMessage() for r in caplog.records)
    odd = tmp_path / "odd.gguf"
    write_model(odd, [("a", (32,), gguf.Q5_0, b"\0" * 22), ("x", (32,), 99, b"?" * 64)])
    monkeypatch.setattr(Path, "home", lambda: tmp_path / "home2")
    assert model.weights_for(odd, "on") == (odd, True)  # a tensor type it cannot size: loaded as it is
