"""Typed functions: image builds and pushes, and ``/execute`` beside a plain FastAPI endpoint.

    python benchmarks/functions_bench.py [--duration 4] [--runs 3]

- **cold build + push**: a small function (no requirements; servemesh as its source, the
  base a one-file rootfs tar) built with an empty cache and pushed to an empty repository
  of a real ``docker-registry`` on loopback;
- **incremental rebuild + push**: the same function after a one-line code change and a
  patch version bump: one small layer and the config go up (target: <= 2 s on 2 cores);
- **/execute req/s at c=32**: ``servemesh serve-function`` (the gateway kit: request ids,
  admission, metrics, the ports validated by their models) beside one FastAPI process
  (uvicorn, h11, uvloop) whose endpoint validates the same pydantic models and does the
  same work, no kit. The same raw HTTP/1.1 keep-alive client drives both, in this run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from fastapi import FastAPI
from pydantic import BaseModel, Field

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

BODY = json.dumps({"inputs": {"text": "hello"}, "params": {"times": 2}}).encode()

METADATA = '''from pydantic import BaseModel, Field

from servemesh.functions import Function

func = Function(description="repeats text", name="repeat", version="{version}")


@func.set_input
class Inputs(BaseModel):
    text: str


@func.set_param
class Params(BaseModel):
    times: int = Field(1, ge=1, le=10)


@func.set_output
class Outputs(BaseModel):
    result: str
'''

MAIN = '''from metadata import Inputs, Outputs, Params, func


@func.on_execute
async def main(inputs: Inputs, params: Params) -> Outputs:
    return Outputs(result=" ".join([inputs.text{suffix}] * params.times))
'''


def write(directory: Path, version: str, suffix: str = "") -> Path:
    target = directory / "text" / "repeat" / version
    target.mkdir(parents=True, exist_ok=True)
    (target / "metadata.py").write_text(METADATA.replace("{version}", version))
    (target / "main.py").write_text(MAIN.replace("{suffix}", suffix))
    return target


def rootfs(directory: Path) -> Path:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("etc/os-release")
        data = b"ID=bench\n"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    path = directory / "rootfs.tar"
    path.write_bytes(out.getvalue())
    return path


# -- builds ------------------------------------------------------------------------------------
def builds(runs: int) -> dict[str, list[float]]:
    from servemesh.functions.build import BuildOptions, RegistryClient, build, push
    from servemesh.testing import RegistryServer

    times: dict[str, list[float]] = {"cold": [], "incremental": [], "noop": [], "uploaded": []}
    with RegistryServer() as registry:
        for run in range(runs):
            with tempfile.TemporaryDirectory(prefix="fn-bench-") as tmp:
                work = Path(tmp)
                opts = BuildOptions(registry=f"{registry.host}/run{run}", cache=work / "cache",
                                    base=str(rootfs(work)), servemesh_deps=False)
                with RegistryClient(registry.host) as client:
                    t0 = time.perf_counter()
                    push(build(write(work, "1.0.0"), opts), client)
                    times["cold"].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    report = push(build(write(work, "1.0.0"), opts), client)
                    times["noop"].append(time.perf_counter() - t0)
                    assert not report.manifest_put
                    t0 = time.perf_counter()
                    report = push(build(write(work, "1.0.1", suffix=".upper()"), opts), client)
                    times["incremental"].append(time.perf_counter() - t0)
                    times["uploaded"].append(sum(size for _, size in report.uploaded))
    return times


# -- /execute -------------------------------------------------------------------------------------
class Inputs(BaseModel):
    text: str


class Params(BaseModel):
    times: int = Field(1, ge=1, le=10)


class Outputs(BaseModel):
    result: str


class ExecuteRequest(BaseModel):
    inputs: Inputs
    params: Params = Params()


def baseline_app() -> FastAPI:  # the same work, a plain FastAPI endpoint
    app = FastAPI()

    @app.get("/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/execute")
    async def execute(request: ExecuteRequest) -> Outputs:
        return Outputs(result=" ".join([request.inputs.text] * request.params.times))

    return app


def request_bytes() -> bytes:
    return (f"POST /execute HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY


async def load(port: int, concurrency: int, duration: float) -> float:
    import asyncio

    from capability_bench import _unary_worker

    data = request_bytes()
    await _unary_worker(port, data, time.perf_counter() + 0.3, [])  # warm-up
    latencies: list[float] = []
    start = time.perf_counter()
    await asyncio.gather(*(_unary_worker(port, data, start + duration, latencies) for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - start)


def start(cmd: list[str], port: int, env: dict[str, str], cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    from servemesh.testing import wait_http_ok

    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_http_ok(f"http://127.0.0.1:{port}/ready", 60, proc)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--serve-baseline", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline is not None:
        import uvicorn

        uvicorn.run(baseline_app(), host="127.0.0.1", port=args.serve_baseline, http="h11", loop="uvloop",
                    log_level="warning", access_log=False)
        return

    import uvloop

    from servemesh.testing import free_port

    times = builds(args.runs)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory(prefix="fn-bench-") as tmp:
        target = write(Path(tmp), "1.0.0")
        env["SERVEMESH_STATE_DIR"] = str(Path(tmp) / "state")
        sm_port, base_port = free_port(), free_port()
        procs = [start([sys.executable, "-m", "servemesh", "serve-function", str(target), "--port", str(sm_port),
                        "--log-level", "warning"], sm_port, env),
                 start([sys.executable, __file__, "--serve-baseline", str(base_port)], base_port, env)]
        try:
            sm = [uvloop.run(load(sm_port, args.concurrency, args.duration)) for _ in range(args.runs)]
            base = [uvloop.run(load(base_port, args.concurrency, args.duration)) for _ in range(args.runs)]
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)

    def med(values: list[float]) -> float:
        return statistics.median(values)

    print(f"medians of {args.runs} runs")
    print("| workload | value |")
    print("|---|---:|")
    print(f"| cold build + push | {med(times['cold']):.3f} s |")
    print(f"| rebuild + push, no change (nothing uploaded) | {med(times['noop']):.3f} s |")
    print(f"| incremental rebuild + push (code change, patch bump) | {med(times['incremental']):.3f} s "
          f"({med(times['uploaded']):.0f} bytes uploaded) |")
    print(f"| /execute c={args.concurrency}, servemesh serve-function | {med(sm):,.0f} req/s |")
    print(f"| /execute c={args.concurrency}, plain FastAPI endpoint | {med(base):,.0f} req/s |")
    print(f"| servemesh / FastAPI | {med(sm) / med(base):.2f}x |")


if __name__ == "__main__":
    main()
