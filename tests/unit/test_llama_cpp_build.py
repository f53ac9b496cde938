"""tools/llama_cpp_build.py (the AMX fix built into llama-cpp-python) and the engine's
choice of llama.cpp's weight repacking (``servemesh.llm.model.extra_buffers``)."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from packaging.specifiers import SpecifierSet

from servemesh.errors import ConfigError
from servemesh.llm import model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def build() -> Any:
    spec = importlib.util.spec_from_file_location("llama_cpp_build", ROOT / "tools" / "llama_cpp_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("llama_cpp_build", module)
    spec.loader.exec_module(module)
    return module


def kernel_file(build: Any, root: Path) -> Path:
    """A stand-in for llama.cpp's amx/mmq.cpp with the parts the patch rewrites."""
    path = root / build.MMQ
    path.parent.mkdir(parents=True)
    path.write_text("#include <algorithm>\n#include <type_traits>\n\nstruct tile_config_t{};\n\n"
                    "inline void ggml_tile_config_init(void) {\n    static thread_local bool done = false;\n\n"
                    f"{build._STACK_CONFIG}\n    done = true;\n}}\n")
    return path


def test_the_patch_moves_the_tile_config_off_the_stack_once(build, tmp_path):
    path = kernel_file(build, tmp_path)
    assert not build.patched(tmp_path)
    assert build.patch_source(tmp_path) is True
    text = path.read_text()
    assert "alignas(64) tile_config_t tc = {};" not in text  # the stack copy GCC 12 half-drops
    assert "alignas(64) static const tile_config_t tc" in text and text.count("_tile_loadconfig(&tc);") == 1
    assert f"int {build.MARKER}(void)" in text  # what extra_buffers looks for in the built library
    assert build.patched(tmp_path)
    assert build.patch_source(tmp_path) is False  # applied already: nothing changes
    assert path.read_text() == text


def test_sources_the_patch_does_not_know_are_refused(build, tmp_path):
    path = tmp_path / build.MMQ
    path.parent.mkdir(parents=True)
    path.write_text("#include <type_traits>\n// a rewritten kernel file\n")
    with pytest.raises(build.PatchError, match="not the AMX kernel file"):
        build.patch_source(tmp_path)
    assert path.read_text() == "#include <type_traits>\n// a rewritten kernel file\n"


def test_the_fixed_build_still_satisfies_the_pin(build):
    version = build.local_version("0.3.36")
    assert version.startswith("0.3.36+servemesh")
    assert SpecifierSet("==0.3.36").contains(version)  # constraints.txt keeps working


def test_repack_choices():
    assert model.extra_buffers("on") is True
    assert model.extra_buffers("off") is False
    with pytest.raises(ConfigError, match="repack must be one of auto, on, off"):
        model.extra_buffers("always")


def fake_library(monkeypatch, **symbols: Any) -> None:
    from llama_cpp import llama_cpp as bindings

    monkeypatch.setattr(bindings, "_lib", SimpleNamespace(**symbols))
    monkeypatch.setattr(model, "_warned", False)


def test_auto_repacks_unless_amx_kernels_lack_the_fix(monkeypatch, caplog):
    fake_library(monkeypatch, ggml_cpu_has_amx_int8=lambda: 0)
    assert model.extra_buffers() is True  # no AMX kernels built: nothing can crash
    fake_library(monkeypatch, ggml_cpu_has_amx_int8=lambda: 1, servemesh_amx_tile_config_fix=lambda: 1)
    assert model.extra_buffers() is True
    fake_library(monkeypatch, ggml_cpu_has_amx_int8=lambda: 1)
    with caplog.at_level(logging.WARNING, logger="servemesh.llm"):
        assert model.extra_buffers() is False
        assert model.extra_buffers() is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "built without servemesh's fix" in warnings[0]
    fake_library(monkeypatch)
    assert model.extra_buffers() is False  # a library layout this does not know: the plain kernels


def test_this_llama_cpp_python_may_repack():
    """dev.py installs the fixed build: on an AMX machine its kernels are allowed, and
    without AMX kernels there is nothing to fix. Either way ``auto`` repacks."""
    assert model.extra_buffers() is True


async def test_a_model_loads_in_a_thread_that_is_gone_before_decoding():
    """libgomp keeps an OpenMP team as long as the thread that started it: loading in a
    thread that lives on slows every decode step (see ``in_own_thread``)."""
    import threading

    from servemesh.llm.engines.llamacpp import in_own_thread

    seen: list[threading.Thread] = []

    def load(value: int) -> int:
        seen.append(threading.current_thread())
        return value * 2

    assert await in_own_thread(load, 21) == 42
    assert seen[0] is not threading.main_thread() and not seen[0].is_alive()

    def broken() -> None:
        raise ConfigError("no such model")

    with pytest.raises(ConfigError, match="no such model"):
        await in_own_thread(broken)

    class Model:
        closed = threading.Event()

        def close(self) -> None:
            self.closed.set()

    release = threading.Event()

    def slow() -> Model:
        release.wait(10)
        return Model()

    import asyncio

    start = asyncio.create_task(in_own_thread(slow))
    await asyncio.sleep(0)
    start.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await start
    await asyncio.to_thread(Model.closed.wait, 10)
    assert Model.closed.is_set()  # a start given up frees what it loaded


def test_the_command_lines_pass_repack_to_the_llamacpp_engine_only():
    import argparse

    from servemesh.apps.llm import add_engine_arguments, engine_kwargs, engine_options

    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    options = engine_options(parser.parse_args(["--repack", "off", "--slots", "8"]))
    assert engine_kwargs("llamacpp", "m", None, **options) == {"model": "m", "model_path": None, "repack": "off",
                                                               "slots": 8}
    assert "repack" not in engine_kwargs("mock", "m", None, **options)
    with pytest.raises(SystemExit):
        parser.parse_args(["--repack", "sometimes"])
