"""W4 of shared/benchmarks/WORKLOADS.md, and real-model throughput.

    python benchmarks/gateway_bench.py [--duration 8] [--runs 3] [--real]

W4: `POST /v1/chat/completions` with `stream: true` through the frontend ->
processor -> mock engine (100 tokens as fast as it can), beside a minimal
Starlette/uvicorn SSE endpoint yielding the same 100 tokens, in the same run:
tokens/s at concurrency 32 and time to first token p50 at concurrency 1.

--real: gemma-3-270m tokens/s through the whole pipeline vs llama.cpp called
directly in one process, same prompt, greedy, same number of tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
N_TOKENS = 100
BODY = {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": N_TOKENS, "stream": True}


def minimal_app() -> object:
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    async def chat(request: object) -> StreamingResponse:
        async def body():  # the same chunk shape the frontend sends
            for k in range(N_TOKENS):
                chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "mock",
                         "choices": [{"index": 0, "delta": {"content": chr(97 + k % 26)}, "finish_reason": None}]}
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


async def one_stream(http: httpx.AsyncClient, url: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    first = 0.0
    tokens = 0
    async with http.stream("POST", f"{url}/v1/chat/completions", json=BODY) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if line.startswith("data: {") and '"content"' in line:
                tokens += 1
                if tokens == 1:
                    first = time.perf_counter() - t0
    return tokens, first


async def load(url: str, concurrency: int, duration: float,
               headers: dict[str, str] | None = None) -> tuple[float, float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as http:
        await one_stream(http, url)  # warm-up
        total = 0
        firsts: list[float] = []
        stop = time.perf_counter() + duration
        start = time.perf_counter()

        async def worker() -> None:
            nonlocal total
            while time.perf_counter() < stop:
                n, first = await one_stream(http, url)
                total += n
                firsts.append(first)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - start), statistics.median(firsts) * 1000


def start(cmd: list[str], url: str) -> subprocess.Popen[bytes]:
    from servemesh.testing import wait_http_ok

    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http_ok(url, 120, proc)
    return proc


def w4(args: argparse.Namespace) -> None:
    from servemesh.testing import free_port

    sm_port, base_port = free_port(), free_port()
    procs = [
        start([sys.executable, "examples/llm/pipeline.py", "--engine", "mock", "--port", str(sm_port)],
              f"http://127.0.0.1:{sm_port}/ready"),
        start([sys.executable, __file__, "--serve-minimal", str(base_port)], f"http://127.0.0.1:{base_port}/health"),
    ]
    try:
        rows = []
        for label, port in (("servemesh frontend", sm_port), ("minimal starlette", base_port)):
            url = f"http://127.0.0.1:{port}"
            tps = statistics.median(asyncio.run(load(url, 32, args.duration))[0] for _ in range(args.runs))
            ttft = statistics.median(asyncio.run(load(url, 1, args.duration))[1] for _ in range(args.runs))
            rows.append((label, tps, ttft))
            print(f"  {label:<20} {tps:>10,.0f} tokens/s (c=32)   TTFT p50 {ttft:.2f} ms (c=1)", flush=True)
        (_, sm_tps, sm_ttft), (_, base_tps, base_ttft) = rows
        print("\n| W4 | servemesh frontend | minimal Starlette SSE | ratio |\n|---|---:|---:|---:|")
        print(f"| tokens/s, c=32 | {sm_tps:,.0f} | {base_tps:,.0f} | {sm_tps / base_tps:.2f}x |")
        print(f"| TTFT p50, c=1 | {sm_ttft:.2f} ms | {base_ttft:.2f} ms | +{sm_ttft - base_ttft:.2f} ms |")
    finally:
        for p in procs:
            p.terminate()
            p.wait(20)


def real(args: argparse.Namespace) -> None:
    from servemesh.llm.model import load_llama, resolve_model
    from servemesh.testing import free_port

    prompt = "Write a long story about a lighthouse keeper."
    n = args.real_tokens
    path = resolve_model("gemma-3-270m")
    llm = load_llama(path, n_ctx=2048, verbose=False, chat_format="gemma")  # the engine's own settings
    messages = [{"role": "user", "content": prompt}]
    direct = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        out = llm.create_chat_completion(messages=messages, max_tokens=n, temperature=0.0)
        direct.append(out["usage"]["completion_tokens"] / (time.perf_counter() - t0))
        print(f"  llama.cpp directly: {out['usage']['completion_tokens']} tokens, "
              f"{direct[-1]:.1f} tokens/s", flush=True)
    del llm
    port = free_port()
    proc = start([sys.executable, "examples/llm/pipeline.py", "--port", str(port)], f"http://127.0.0.1:{port}/ready")
    try:
        via = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            resp = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=300, json={
                "model": "gemma-3-270m", "messages": messages, "max_tokens": n, "temperature": 0.0})
            via.append(resp.json()["usage"]["completion_tokens"] / (time.perf_counter() - t0))
            print(f"  through the pipeline: {resp.json()['usage']['completion_tokens']} tokens, "
                  f"{via[-1]:.1f} tokens/s", flush=True)
    finally:
        proc.terminate()
        proc.wait(20)
    d, v = statistics.median(direct), statistics.median(via)
    print("\n| gemma-3-270m, CPU | tokens/s |\n|---|---:|")
    print(f"| llama.cpp called directly | {d:.1f} |\n| through the servemesh pipeline | {v:.1f} ({v / d:.2f}x) |")


def serve_minimal(port: int) -> None:
    import uvicorn
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    app = minimal_app()
    app.router.routes.append(Route("/health", lambda r: PlainTextResponse("ok")))  # type: ignore[attr-defined]
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", loop="uvloop")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--real", action="store_true", help="also measure gemma through the pipeline")
    parser.add_argument("--real-only", action="store_true", help="only the real-model comparison")
    parser.add_argument("--real-tokens", type=int, default=128)
    parser.add_argument("--serve-minimal", type=int, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.serve_minimal:
        serve_minimal(a.serve_minimal)
    else:
        os.environ.setdefault("SERVEMESH_STATE_DIR", str(ROOT / "benchmarks" / ".no-stack"))
        print(f"W4 gateway benchmark: {a.runs} runs x {a.duration}s, {os.cpu_count()} cores")
        if not a.real_only:
            w4(a)
        if a.real or a.real_only:
            real(a)
