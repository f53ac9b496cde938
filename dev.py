#!/usr/bin/env python3
"""Set-up and entry points for a fresh machine (Python 3.11+, pip, gcc).

    python3 dev.py main    # create .venv, install servemesh[llm], serve the LLM pipeline (OpenAI API)
    python3 dev.py test    # create .venv, install servemesh[dev], run ruff, mypy and pytest
                           # (first installs the system tools the image-builder tests use:
                           #  docker-registry, skopeo, umoci; apt-get, only when missing)

Uses only the standard library, so it runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"


def ensure_venv(extra: str) -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"servemesh needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating virtualenv in {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / f".installed-{extra.replace(',', '-') or 'base'}"
    # what the install depends on, the compiled relay's source included (a change rebuilds it)
    digest = hashlib.sha256(b"".join((ROOT / name).read_bytes() for name in (
        "pyproject.toml", "setup.py", "constraints.txt", "tools/llama_cpp_build.py",
        "servemesh/runtime/_relay.c"))).hexdigest()
    if "llm" in extra or extra == "dev":
        ensure_llama_cpp()  # every time: a pip install elsewhere may have replaced the fixed build
    if stamp.exists() and stamp.read_text() == digest:
        return
    spec = f"{ROOT}[{extra}]" if extra else str(ROOT)
    print(f"installing servemesh{f'[{extra}]' if extra else ''} into {VENV} ...", flush=True)
    run([str(PY), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-c",
         str(ROOT / "constraints.txt"), "-e", spec])
    stamp.write_text(digest)


def ensure_llama_cpp() -> None:
    """llama-cpp-python, built from its sdist with the fix to llama.cpp's AMX kernels
    (``tools/llama_cpp_build.py``); the wheel is kept in the user's cache, so a new
    virtualenv installs it without building again."""
    sys.path.insert(0, str(ROOT / "tools"))
    import llama_cpp_build

    pins = [line.split("==", 1)[1].strip() for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line.startswith("llama-cpp-python==")]
    if not pins:
        sys.exit("constraints.txt pins no llama-cpp-python version (llama-cpp-python==X)")
    want = llama_cpp_build.local_version(pins[0])
    have = subprocess.run([str(PY), "-c", "import importlib.metadata as m; print(m.version('llama-cpp-python'))"],
                          capture_output=True, text=True).stdout.strip()
    if have == want:
        return
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "servemesh-build"
    wheel = llama_cpp_build.cached_wheel(pins[0], cache)
    if wheel is None:
        print(f"building llama-cpp-python {want} from source (several minutes, once; kept in {cache}) ...",
              flush=True)
        try:
            wheel = llama_cpp_build.build_wheel(pins[0], cache, str(PY))
        except (llama_cpp_build.PatchError, subprocess.CalledProcessError, OSError) as exc:
            sys.exit(f"could not build llama-cpp-python {want}: {exc} (pip's output above says more)")
    # its dependencies come with servemesh's own install, next
    run([str(PY), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--force-reinstall", "--no-deps",
         str(wheel)])


def run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    code = subprocess.call(cmd, cwd=ROOT, env=env)
    if code != 0:
        sys.exit(code)


def main_job(args: list[str]) -> None:
    ensure_venv("stack,llm")
    run([str(PY), "examples/llm/pipeline.py", *args])


#: system tools the tests of `servemesh build` run against (Debian packages); never skipped when absent
SYSTEM_TOOLS = {"docker-registry": "docker-registry", "skopeo": "skopeo", "umoci": "umoci"}


def ensure_system_tools() -> None:
    """Install the missing tools with apt-get (once: a no-op when all are on PATH). The
    docker-registry package's own service is not used: tests start registries of their own."""
    missing = sorted({pkg for binary, pkg in SYSTEM_TOOLS.items() if shutil.which(binary) is None})
    if not missing:
        return
    if shutil.which("apt-get") is None:
        sys.exit(f"the tests need {', '.join(missing)} (Debian packages); install them with your package manager")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"installing {', '.join(missing)} for the image-builder tests (apt-get) ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    quiet = {"stdout": subprocess.DEVNULL}
    if subprocess.call([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                       env=env, **quiet) != 0:
        run([*sudo, "apt-get", "update", "-qq"], env=env)
        run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


def test(args: list[str]) -> None:
    ensure_system_tools()
    ensure_venv("dev")  # dev includes stack and llm
    bin_dir = VENV / "bin"
    run([str(bin_dir / "ruff"), "check", "servemesh", "tests", "examples", "benchmarks", "tools", "dev.py"])
    run([str(bin_dir / "mypy")])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    run([str(PY), "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], env=env)


def usage() -> None:
    sys.exit(__doc__)


if __name__ == "__main__":
    commands = {"main": main_job, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        usage()
    commands[sys.argv[1]](sys.argv[2:])
