"""llama-cpp-python, built from its sdist with servemesh's fix to llama.cpp's AMX kernels.

llama.cpp built with ``-march=native`` on a CPU with AMX (Intel Xeon since Sapphire
Rapids) repacks weights for its AMX matrix kernels. Built with GCC up to 13.2 (Debian
12 has GCC 12), those kernels crash (SIGSEGV at ``ldtilecfg``): that GCC's
``_tile_loadconfig`` tells the compiler it reads the first 8 bytes of the 64-byte tile
configuration, so the stores that fill in the rest of it, on the stack, are dropped as
dead, and the CPU is handed garbage. (The same bug upstream: ggml-org/llama.cpp#20824;
#26954 proposes this fix together with a per-thread ``arch_prctl``, which Linux does not
need: the AMX permission ggml asks for is the whole process's.) The fix keeps the
configuration in static storage, where every byte is written; the build also exports
``servemesh_amx_tile_config_fix`` so that servemesh can tell a fixed library from one
that would crash (``servemesh.llm.model.extra_buffers``). With the fix, the AMX kernels
make a decode step of gemma-3-270m 1.5-1.8x faster on a 2-core Xeon.

Standard library only: ``dev.py`` runs this before anything is installed, and the
benchmarks use ``patch_source`` for the llama-server they build.

    wheel = build_wheel("0.3.36", cache_dir, python)   # cached: built once per version and machine
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

#: bump when the patch changes: it is part of the wheel's version (``0.3.36+servemesh1``)
PATCH_LEVEL = 1
MARKER = "servemesh_amx_tile_config_fix"
MMQ = Path("ggml/src/ggml-cpu/amx/mmq.cpp")

_STACK_CONFIG = """    alignas(64) tile_config_t tc = {};
    tc.palette_id = 1;
    tc.start_row = 0;
    tc.rows[0] = 8;   tc.colsb[0] = 64;
    tc.rows[1] = 8;   tc.colsb[1] = 64;
    tc.rows[2] = 16;  tc.colsb[2] = 32;
    tc.rows[3] = 16;  tc.colsb[3] = 32;
    tc.rows[4] = 16;  tc.colsb[4] = 64;
    tc.rows[5] = 16;  tc.colsb[5] = 64;
    tc.rows[6] = 16;  tc.colsb[6] = 64;
    tc.rows[7] = 16;  tc.colsb[7] = 64;

    _tile_loadconfig(&tc);"""

_STATIC_CONFIG = """    // servemesh: in static storage. On the stack, GCC <= 13.2 drops these stores as dead (its
    // _tile_loadconfig claims to read 8 bytes) and ldtilecfg faults on the garbage left.
    alignas(64) static const tile_config_t tc = [] {
        tile_config_t c = {};
        c.palette_id = 1;
        c.start_row = 0;
        c.rows[0] = 8;   c.colsb[0] = 64;
        c.rows[1] = 8;   c.colsb[1] = 64;
        c.rows[2] = 16;  c.colsb[2] = 32;
        c.rows[3] = 16;  c.colsb[3] = 32;
        c.rows[4] = 16;  c.colsb[4] = 64;
        c.rows[5] = 16;  c.colsb[5] = 64;
        c.rows[6] = 16;  c.colsb[6] = 64;
        c.rows[7] = 16;  c.colsb[7] = 64;
        return c;
    }();

    _tile_loadconfig(&tc);"""

_INCLUDES_END = '#include <type_traits>\n'

_MARKER_FUNCTION = f"""
// servemesh: this build carries the tile-configuration fix (see ggml_tile_config_init)
#if defined(__GNUC__)
extern "C" __attribute__((visibility("default"))) int {MARKER}(void) {{ return 1; }}
#endif
"""


class PatchError(RuntimeError):
    """The sources are not the ones the patch was written for."""


def patched(llama_cpp_root: Path) -> bool:
    """The fix is in this llama.cpp source tree."""
    path = llama_cpp_root / MMQ
    return path.exists() and MARKER in path.read_text()


def patch_source(llama_cpp_root: Path) -> bool:
    """Apply the fix to a llama.cpp source tree; False if it was applied already."""
    path = llama_cpp_root / MMQ
    text = path.read_text()
    if MARKER in text:
        return False
    if text.count(_STACK_CONFIG) != 1 or text.count(_INCLUDES_END) != 1:
        raise PatchError(f"{path} is not the AMX kernel file this patch knows: update tools/llama_cpp_build.py")
    text = text.replace(_STACK_CONFIG, _STATIC_CONFIG).replace(_INCLUDES_END, _INCLUDES_END + _MARKER_FUNCTION)
    path.write_text(text)
    return True


def local_version(version: str) -> str:
    """The version of the fixed build: ``==version`` still matches it (PEP 440 local label)."""
    return f"{version}+servemesh{PATCH_LEVEL}"


def download_sdist(python: str, version: str, dest: Path) -> Path:
    found = sorted(dest.glob(f"llama_cpp_python-{version}.tar.gz"))
    if not found:
        subprocess.run([python, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "--disable-pip-version-check", f"llama-cpp-python=={version}", "-d", str(dest)], check=True)
        found = sorted(dest.glob(f"llama_cpp_python-{version}.tar.gz"))
    if not found:
        raise PatchError(f"pip downloaded no llama_cpp_python-{version}.tar.gz into {dest}")
    return found[0]


def machine_key() -> str:
    """What a build is for: it is compiled for the CPU it was built on (``-march=native``),
    with the ``CMAKE_ARGS`` of that build, for this Python."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = platform.processor()
    seed = "\0".join((platform.machine(), sys.platform, f"{sys.version_info[:2]}", flags,
                      os.environ.get("CMAKE_ARGS", ""), str(PATCH_LEVEL)))
    return hashlib.sha256(seed.encode()).hexdigest()[:16]


def cached_wheel(version: str, cache: Path) -> Path | None:
    """The fixed build of ``version`` for this machine in ``cache``, if it was built before."""
    found = sorted((cache / machine_key()).glob(f"llama_cpp_python-{local_version(version)}-*.whl"))
    return found[0] if found else None


def build_wheel(version: str, cache: Path, python: str) -> Path:
    """The fixed llama-cpp-python ``version`` as a wheel in ``cache`` (built once: minutes)."""
    want = local_version(version)
    found = cached_wheel(version, cache)
    if found is not None:
        return found
    with tempfile.TemporaryDirectory(prefix="llama-cpp-build-") as tmp:
        work = Path(tmp)
        sdist = download_sdist(python, version, work)
        with tarfile.open(sdist) as tar:
            if hasattr(tarfile, "data_filter"):  # Python 3.11.4+: no links or paths out of the folder
                tar.extractall(work / "src", filter="data")
            else:
                tar.extractall(work / "src")
        root = work / "src" / sdist.name.removesuffix(".tar.gz")
        patch_source(root / "vendor" / "llama.cpp")
        init = root / "llama_cpp" / "__init__.py"
        text = init.read_text()
        if f'__version__ = "{version}"' not in text:
            raise PatchError(f"{init} does not say __version__ = {version!r}")
        init.write_text(text.replace(f'__version__ = "{version}"', f'__version__ = "{want}"'))
        subprocess.run([python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
                        "-w", str(work / "wheel"), str(root)], check=True)
        built = sorted((work / "wheel").glob("llama_cpp_python-*.whl"))
        if not built:
            raise PatchError("pip wheel made no llama_cpp_python wheel")
        home = cache / machine_key()
        home.mkdir(parents=True, exist_ok=True)
        target = home / built[0].name
        part = home / f".{built[0].name}.part"
        shutil.copy2(built[0], part)
        os.replace(part, target)  # a wheel in the cache is a whole one
        return target
