"""W4 of shared/benchmarks/WORKLOADS.md: the OpenAI frontend streaming, beside a bare aiohttp SSE server.

    python benchmarks/gateway_bench.py [--duration 8] [--rounds 3]
    python benchmarks/gateway_bench.py --real-only          # gemma through the pipeline vs llama.cpp

W4: `POST /v1/chat/completions`, `stream: true`, 100 tokens, `stream_options.include_usage`,
driven by the shared aiohttp load client (`../shared/benchmarks/w4/w4_client.py`, keep-alive,
concurrency 1 and 32, fixed windows; it reports its own CPU so it is visibly not the bottleneck)
against, in the same run:

- the reference: the shared bare aiohttp server (`w4/sse_server.py`) yielding the same 100 chunks;
- servemesh embedded: `examples/llm/pipeline.py --engine mock`, one process;
- servemesh, three processes: engine, processor and frontend over etcd + TCP (`--workers 1`), and
  the same with the frontend as two worker processes on one port (`--workers 2`).

Rounds are interleaved (reference, then each servemesh setup, again and again) and medians are
printed with the ratio to the reference of the same rounds. W2 first-item latency at concurrency 32
comes from `runtime_bench.py` (its "W2 first item" row), run at the end.

--real: gemma-3-270m tokens/s through the whole pipeline vs llama.cpp called directly in one
process, same prompt, greedy, same number of tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
W4 = ROOT.parent / "shared" / "benchmarks" / "w4"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import stop_group, tree  # noqa: E402


def start(cmd: list[str], url: str | None, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A server in a process group of its own, waited for on ``url`` (an HTTP 200)."""
    from servemesh.testing import wait_http_ok

    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    if url is not None:
        wait_http_ok(url, 120, proc)
    return proc


class Setup:
    """One system under test: its processes, its URL, the PIDs whose CPU is reported."""

    def __init__(self, label: str, url: str, procs: list[subprocess.Popen[bytes]], model: str) -> None:
        self.label = label
        self.url = url
        self.procs = procs
        self.model = model

    def pids(self) -> list[int]:
        return [p for proc in self.procs for p in tree(proc.pid)]  # a --workers frontend: all its workers


def w4_phase(setup: Setup, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(W4 / "w4_client.py"), "--url", setup.url, "--model", setup.model,
           "--duration", str(args.duration), "--warmup", str(args.warmup), "--phases", str(concurrency),
           "--pids", ",".join(map(str, setup.pids()))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration * 4 + 60)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            if result["errors"]:
                print(f"  ! {setup.label} c={concurrency}: {result['errors']} errors: {out.stderr[-400:]}")
            return result
    raise RuntimeError(f"w4_client gave no result for {setup.label}: {out.stderr[-800:]}")


def stack_env(tmp: Path) -> tuple[dict[str, str], Any]:
    from servemesh.testing import EtcdServer

    etcd = EtcdServer()
    etcd.start()
    env = dict(os.environ, SERVEMESH_ETCD=etcd.url, SERVEMESH_TRANSPORT="tcp", SERVEMESH_STATE_DIR=str(tmp / "none"))
    return env, etcd


def w4(args: argparse.Namespace) -> None:
    from servemesh.testing import free_port, wait_tcp

    if not (W4 / "w4_client.py").exists():
        sys.exit(f"the shared W4 client is not at {W4} (give --w4-dir)")
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    py = sys.executable
    embedded_env = dict(os.environ, SERVEMESH_STATE_DIR=str(tmp / "none"))  # no recorded stack: embedded
    env, etcd = stack_env(tmp)
    setups: list[Setup] = []
    try:
        port = free_port()
        ref = start([py, str(W4 / "sse_server.py"), "--port", str(port), "--max-life", "100000"], None, env,
                    tmp / "ref.log")
        wait_tcp("127.0.0.1", port, 60, ref)
        setups.append(Setup("bare aiohttp SSE (reference)", f"http://127.0.0.1:{port}/v1/chat/completions",
                            [ref], "mock"))
        port = free_port()
        emb = start([py, "examples/llm/pipeline.py", "--engine", "mock", "--port", str(port)],
                    f"http://127.0.0.1:{port}/ready", embedded_env, tmp / "embedded.log")
        setups.append(Setup("servemesh embedded", f"http://127.0.0.1:{port}/v1/chat/completions", [emb], "mock"))
        engine = start([py, "examples/llm/engine.py", "--engine", "mock", "--model", "mock"], None, env,
                       tmp / "engine.log")
        processor = start([py, "examples/llm/processor.py", "--engine", "mock", "--model", "mock"], None, env,
                          tmp / "processor.log")
        for workers in args.workers:
            port = free_port()
            front = start([py, "examples/llm/frontend.py", "--port", str(port), "--workers", str(workers)],
                          f"http://127.0.0.1:{port}/ready", env, tmp / f"frontend-{workers}.log")
            label = f"servemesh 3 processes, --workers {workers}"
            setups.append(Setup(label, f"http://127.0.0.1:{port}/v1/chat/completions",
                                [front, processor, engine], "mock"))
        rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for r in range(args.rounds):
            for c in (1, 32):
                for setup in setups:
                    res = w4_phase(setup, c, args)
                    rows.setdefault((setup.label, c), []).append(res)
                    print(f"  round {r + 1} c={c:<2} {setup.label:<36} {res['chunks_per_s']:>10,.0f} tokens/s  "
                          f"TTFT p50 {res['ttft_p50_ms']:>7.2f} ms  p99 {res['ttft_p99_ms']:>7.2f} ms  "
                          f"client CPU {res['cpu_client_pct']:>5.1f}%  servers "
                          f"{sum(res['cpu_servers_pct'].values()):>5.1f}%", flush=True)
        report(rows, [s.label for s in setups], args)
    finally:
        for setup in setups:
            for proc in setup.procs:
                stop_group(proc)
        etcd.stop()


def report(rows: dict[tuple[str, int], list[dict[str, Any]]], labels: list[str], args: argparse.Namespace) -> None:
    def med(label: str, c: int, key: str) -> float:
        return statistics.median(r[key] for r in rows[(label, c)])

    ref = labels[0]
    print(f"\nW4, medians of {args.rounds} interleaved rounds of {args.duration:g} s, {os.cpu_count()} cores\n")
    print("| W4 | tokens/s c=1 | TTFT p50 c=1 | tokens/s c=32 | vs reference | TTFT p50 c=32 | TTFT p99 c=32 |"
          " client CPU c=32 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label in labels:
        t32 = med(label, 32, "chunks_per_s")
        ratio = t32 / med(ref, 32, "chunks_per_s")
        print(f"| {label} | {med(label, 1, 'chunks_per_s'):,.0f} | {med(label, 1, 'ttft_p50_ms'):.2f} ms | "
              f"{t32:,.0f} | {ratio:.2f}x | {med(label, 32, 'ttft_p50_ms'):.2f} ms | "
              f"{med(label, 32, 'ttft_p99_ms'):.2f} ms | {med(label, 32, 'cpu_client_pct'):.0f}% |")


def w2_first_item(args: argparse.Namespace) -> None:
    """W2 first-item latency at concurrency 32 (runtime_bench's row), servemesh TCP beside raw TCP."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "runtime_bench.py"), "--only", "W2 stream", "--only", "W2 first",
           "--systems", "servemesh tcp", "--systems", "raw asyncio tcp", "--systems", "raw tcp early flush",
           "--duration", str(args.duration / 2), "--runs", str(args.rounds)]
    print("\nW2 (100-item streams over TCP), from runtime_bench.py:", flush=True)
    subprocess.run(cmd, cwd=ROOT, check=False)


def real(args: argparse.Namespace) -> None:
    from servemesh.llm.model import load_llama, resolve_model
    from servemesh.testing import free_port

    prompt = "Write a long story about a lighthouse keeper."
    n = args.real_tokens
    path = resolve_model("gemma-3-270m")
    llm = load_llama(path, n_ctx=2048, verbose=False, chat_format="gemma")  # the engine's own settings
    messages = [{"role": "user", "content": prompt}]
    direct = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        out = llm.create_chat_completion(messages=messages, max_tokens=n, temperature=0.0)
        direct.append(out["usage"]["completion_tokens"] / (time.perf_counter() - t0))
        print(f"  llama.cpp directly: {out['usage']['completion_tokens']} tokens, "
              f"{direct[-1]:.1f} tokens/s", flush=True)
    del llm
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    env = dict(os.environ, SERVEMESH_STATE_DIR=str(tmp / "none"))
    proc = start([sys.executable, "examples/llm/pipeline.py", "--port", str(port)], f"http://127.0.0.1:{port}/ready",
                 env, tmp / "pipeline.log")
    try:
        via = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            resp = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=300, json={
                "model": "gemma-3-270m", "messages": messages, "max_tokens": n, "temperature": 0.0})
            via.append(resp.json()["usage"]["completion_tokens"] / (time.perf_counter() - t0))
            print(f"  through the pipeline: {resp.json()['usage']['completion_tokens']} tokens, "
                  f"{via[-1]:.1f} tokens/s", flush=True)
    finally:
        stop_group(proc)
    d, v = statistics.median(direct), statistics.median(via)
    print("\n| gemma-3-270m, CPU | tokens/s |\n|---|---:|")
    print(f"| llama.cpp called directly | {d:.1f} |\n| through the servemesh pipeline | {v:.1f} ({v / d:.2f}x) |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, action="append", help="frontend --workers of the 3-process setup "
                        "(repeatable; default 1 and 2)")
    parser.add_argument("--w4-dir", type=Path, help=f"the shared W4 client and server (default {W4})")
    parser.add_argument("--no-w2", action="store_true", help="skip the W2 first-item rows")
    parser.add_argument("--real", action="store_true", help="also measure gemma through the pipeline")
    parser.add_argument("--real-only", action="store_true", help="only the real-model comparison")
    parser.add_argument("--real-tokens", type=int, default=128)
    a = parser.parse_args()
    a.workers = a.workers or [1, 2]
    if a.w4_dir is not None:
        W4 = a.w4_dir
    print(f"W4 gateway benchmark: {a.rounds} rounds x {a.duration}s, {os.cpu_count()} cores", flush=True)
    if not a.real_only:
        w4(a)
        if not a.no_w2:
            w2_first_item(a)
    if a.real or a.real_only:
        real(a)
