"""Capability serving: the API server and replica processes, beside a minimal FastAPI app.

    python benchmarks/capability_bench.py [--duration 4] [--runs 3]

- ``/infer/json`` at concurrency 1 and 32 (req/s, p50 latency): the client ->
  ``servemesh api-server`` -> a replica process (``servemesh serve``) -> back, for an
  ``async def`` handler and a ``def`` handler (worker thread);
- ``/infer/stream`` chunks/s at concurrency 32, 100 chunks per stream, for an async
  generator and a ``def`` handler calling ``stream.send``;

beside one FastAPI process (uvicorn, h11, uvloop, like the API server) whose routes
decode the same contents JSON, run the same handler and encode the same answer: no
routing, no registry, no second process. The same raw HTTP/1.1 keep-alive client
drives both. Targets (issue 14, 2 cores): >= 5,000 req/s at c=32, p50 <= 1 ms at c=1,
>= 50,000 SSE chunks/s.

This file is also the replica's app (``servemesh serve benchmarks/capability_bench.py:app``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fastapi import FastAPI, Request
from starlette.responses import Response, StreamingResponse

from servemesh.capability import App, ModelInferResponse
from servemesh.capability.wire import decode_request, encode_response

ROOT = Path(__file__).resolve().parents[1]
BODY = (b'{"model_name": "echo", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], '
        b'"contents": {"bytes_contents": ["Hello World"]}}]}')
CHUNKS = 100

app = App()


def echo(request):  # the work, the same everywhere
    response = ModelInferResponse(model_name=request.model_name, id=request.id)
    text = request.inputs[0].bytes_contents[0]
    response.add_output(name="response", datatype="BYTES", shape=[1], bytes_contents=[text])
    return response


def token(i: int):
    response = ModelInferResponse(model_name="t")
    response.add_output(name="text_output", datatype="BYTES", shape=[1], bytes_contents=[b"tok"])
    return response


@app.capability(type="echo")
async def async_echo(request, context):
    return echo(request)


@app.capability(type="echo-thread")
def thread_echo(request, context):
    return echo(request)


@app.capability(type="tokens", stream=True)
async def async_tokens(request, context):
    for i in range(CHUNKS):
        yield token(i)


@app.capability(type="tokens-thread", stream=True)
def thread_tokens(request, context, stream):
    for i in range(CHUNKS):
        stream.send(token(i))


# -- the baseline ----------------------------------------------------------------------------------
def minimal_app() -> FastAPI:
    fast = FastAPI()

    @fast.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    @fast.post("/infer/json")
    async def infer(request: Request) -> Response:
        return Response(encode_response(echo(decode_request(await request.body()))), media_type="application/json")

    @fast.post("/infer/stream")
    async def stream(request: Request) -> StreamingResponse:
        decode_request(await request.body())

        async def frames():
            for i in range(CHUNKS):
                yield b"data: " + encode_response(token(i)) + b"\n\n"

        return StreamingResponse(frames(), media_type="text/event-stream")

    return fast


def serve_minimal(port: int) -> None:
    import uvicorn

    uvicorn.run(minimal_app(), host="127.0.0.1", port=port, http="h11", loop="uvloop", log_level="warning",
                access_log=False)


# -- the load ------------------------------------------------------------------------------------
def request_bytes(path: str, capability: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"X-Capability-Type: {capability}\r\nContent-Length: {len(BODY)}\r\n\r\n").encode() + BODY


async def _unary_worker(port: int, data: bytes, stop: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            writer.write(data)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected answer: {head[:200]!r}")
            at = head.lower().index(b"content-length:")
            await reader.readexactly(int(head[at + 15:head.index(b"\r\n", at)]))
            latencies.append(time.perf_counter() - t0)
    finally:
        writer.close()


async def unary(port: int, capability: str, concurrency: int, duration: float) -> tuple[float, float]:
    """(req/s, p50 ms)"""
    data = request_bytes("/infer/json", capability)
    await _unary_worker(port, data, time.perf_counter() + 0.3, [])  # warm-up
    latencies: list[float] = []
    start = time.perf_counter()
    await asyncio.gather(*(_unary_worker(port, data, start + duration, latencies) for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - start), statistics.median(latencies) * 1000


async def _stream_worker(port: int, data: bytes, stop: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop:
            writer.write(data)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected answer: {head[:200]!r}")
            frames = 0
            while True:  # chunked transfer encoding
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                frames += (await reader.readexactly(size + 2)).count(b"data: ")
            if frames != CHUNKS:
                raise RuntimeError(f"a stream of {frames} frames, not {CHUNKS}")
            counts.append(frames)
    finally:
        writer.close()


async def stream(port: int, capability: str, concurrency: int, duration: float) -> float:
    """chunks/s"""
    data = request_bytes("/infer/stream", capability)
    counts: list[int] = []
    start = time.perf_counter()
    await asyncio.gather(*(_stream_worker(port, data, start + duration, counts) for _ in range(concurrency)))
    return sum(counts) / (time.perf_counter() - start)


def measure(coro_factory, runs: int) -> list:
    import uvloop

    return [uvloop.run(coro_factory()) for _ in range(runs)]


# -- the processes ------------------------------------------------------------------------------
def start(cmd: list[str], url: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    from servemesh.testing import wait_http_ok

    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_http_ok(url, 60, proc)
    return proc


def wait_registered(url: str, timeout: float = 60) -> None:
    import json
    import urllib.request

    from servemesh.testing import wait_until

    def registered() -> bool:
        with urllib.request.urlopen(f"{url}/registry", timeout=2) as response:
            return bool(json.load(response)["total"] >= 1)

    wait_until(registered, "a replica registered", timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--serve-minimal", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_minimal is not None:
        serve_minimal(args.serve_minimal)
        return

    from servemesh.testing import free_port

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("SERVEMESH_ETCD", None)
    api_port, base_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    sm = [sys.executable, "-m", "servemesh.cli.main"]
    procs = [start([*sm, "api-server", "--port", str(api_port), "--log-level", "warning"], f"{api}/health", env)]
    try:
        procs.append(subprocess.Popen([*sm, "serve", "benchmarks/capability_bench.py:app", "--port", "0",
                                       "--api-server", api, "--replica-id", "bench", "--log-level", "warning"],
                                      cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_registered(api)
        procs.append(start([sys.executable, __file__, "--serve-minimal", str(base_port)],
                           f"http://127.0.0.1:{base_port}/health", env))
        d, n = args.duration, args.runs
        rows = []

        def row(name: str, sm_value: float, base_value: float, unit: str, lower_is_better: bool = False) -> None:
            ratio = (base_value / sm_value) if lower_is_better else (sm_value / base_value)
            rows.append((name, sm_value, base_value, unit, ratio))
            print(f"  {name:<40} servemesh {sm_value:>10,.3f} {unit:<9} FastAPI {base_value:>10,.3f}  ({ratio:.2f}x)",
                  flush=True)

        for capability, label in (("echo", "async def"), ("echo-thread", "def (thread)")):
            sm32 = measure(lambda c=capability: unary(api_port, c, 32, d), n)
            base32 = measure(lambda: unary(base_port, "echo", 32, d), n)
            row(f"/infer/json c=32 req/s, {label}", statistics.median(r[0] for r in sm32),
                statistics.median(r[0] for r in base32), "req/s")
            sm1 = measure(lambda c=capability: unary(api_port, c, 1, d), n)
            base1 = measure(lambda: unary(base_port, "echo", 1, d), n)
            row(f"/infer/json c=1 p50, {label}", statistics.median(r[1] for r in sm1),
                statistics.median(r[1] for r in base1), "ms", lower_is_better=True)
        for capability, label in (("tokens", "async generator"), ("tokens-thread", "def + stream.send")):
            sm_chunks = statistics.median(measure(lambda c=capability: stream(api_port, c, 32, d), n))
            base_chunks = statistics.median(measure(lambda: stream(base_port, "tokens", 32, d), n))
            row(f"/infer/stream c=32 chunks/s, {label}", sm_chunks, base_chunks, "chunks/s")

        print("\n| workload | servemesh (API server -> replica) | FastAPI, one process | servemesh / FastAPI |")
        print("|---|---:|---:|---:|")
        for name, sm_value, base_value, unit, ratio in rows:
            print(f"| {name} | {sm_value:,.3f} {unit} | {base_value:,.3f} {unit} | {ratio:.2f}x |")
        print("\n(latency rows: the ratio is FastAPI / servemesh, so below 1 means slower)")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(20)


if __name__ == "__main__":
    main()
