"""Triton (the ``tritonserver`` that ``nvidia-pytriton`` bundles) serving ``triton_repo/``
with its Python backend: the model is a ``TritonPythonModel`` (model.py) run by the
backend's stub process, no pytriton in the path.

    python triton_python_backend.py --http-port 8000 --grpc-port 8001 --metrics-port 8002

Run it with the venv that has ``nvidia-pytriton``; it lays out a backend folder (the
bundled backend plus the stub for this Python version, as pytriton does), then execs
tritonserver. The stub links ``libpython3.X.so`` from the loader's path: this script puts
the running interpreter's LIBDIR first on ``LD_LIBRARY_PATH`` (then the wheel's bundled
libraries, which the copied stub no longer finds by its rpath), and makes this venv's
numpy the one the stub imports (see below).
"""

import argparse
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np
import pytriton

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    args = parser.parse_args()
    dist = Path(pytriton.__file__).parent / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    work = Path(tempfile.mkdtemp(prefix="triton-python-"))
    backends = work / "backends"
    shutil.copytree(dist / "backends", backends)
    shutil.copy(dist / "python_backend_stubs" / version / "triton_python_backend_stub",
                backends / "python" / "triton_python_backend_stub")
    env = dict(os.environ)
    # the stub finds the bundled libraries (libcudart, ...) through an rpath relative to where the wheel put it
    libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
    paths = (sysconfig.get_config_var("LIBDIR"), str(libs), env.get("LD_LIBRARY_PATH"))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in paths if p)
    # The stub's interpreter ignores PYTHONPATH and searches '' (its working directory) first, then the site-packages
    # of the Python it was built on: point it at this venv's numpy (< 2, as pytriton pins it; the stub's pybind11
    # reads numpy 2 arrays wrongly: "output tensor shape does not match size of output").
    (work / "numpy").symlink_to(Path(np.__file__).parent)
    os.chdir(work)
    cmd = [str(dist / "bin" / "tritonserver"), f"--model-repository={HERE / 'triton_repo'}",
           f"--backend-directory={backends}", f"--cache-directory={dist / 'caches'}",
           "--http-address=127.0.0.1", f"--http-port={args.http_port}",
           "--grpc-address=127.0.0.1", f"--grpc-port={args.grpc_port}",
           f"--metrics-port={args.metrics_port}", "--log-verbose=0"]
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
