"""What TLS and authentication cost, measured against the same setup without them.

    python benchmarks/security_bench.py [--duration 3] [--runs 3]

W1 (unary echo) at concurrency 64 and its p50 at concurrency 1 over the TCP request
plane: plain, TLS (server certificate verified by the caller) and mutual TLS, each
against its own worker process (etcd for discovery). W4 (OpenAI chat streaming,
mock engine) at concurrency 32 through the embedded pipeline, without and with an
API key. Every row is compared with the plain one of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import gateway_bench  # noqa: E402
import runtime_bench  # noqa: E402

import servemesh  # noqa: E402
from servemesh import DistributedRuntime  # noqa: E402

KEY = "sk-bench-0123456789abcdef"


def worker_env(etcd: str, namespace: str, tls: dict[str, str]) -> dict[str, str]:
    return dict(os.environ, SERVEMESH_ETCD=etcd, SERVEMESH_TRANSPORT="tcp", BENCH_NS=namespace,
                PYTHONUNBUFFERED="1", **tls)


async def w1(etcd: str, namespace: str, client_tls: dict[str, object], args: argparse.Namespace) -> tuple[float, float]:
    async with DistributedRuntime(etcd=etcd, **client_tls) as rt:  # type: ignore[arg-type]
        client = await rt.endpoint(f"{namespace}.worker.echo").client()
        await client.wait_for_instances(60)
        op, _ = runtime_bench.sm_ops(client, runtime_bench.ECHO_REQ)
        ops = [(await runtime_bench.measure(op, 64, args.duration, args.warmup))["ops/s"] for _ in range(args.runs)]
        p50 = [(await runtime_bench.measure(op, 1, args.duration, args.warmup))["p50_ms"] for _ in range(args.runs)]
        return statistics.median(ops), statistics.median(p50)


def tls_rows(args: argparse.Namespace) -> list[tuple[str, float, float]]:
    from servemesh.testing import EtcdServer
    from servemesh.testing.certs import CertAuthority

    certs = Path(tempfile.mkdtemp(prefix="sm-bench-certs-"))
    ca = CertAuthority(certs)
    server = ca.issue("worker", hosts=["127.0.0.1", "localhost"])
    caller = ca.issue("caller", hosts=["127.0.0.1"])
    setups = {
        "plain tcp": ({}, {}),
        "tls": ({"SERVEMESH_TLS_CERT": server.cert, "SERVEMESH_TLS_KEY": server.key},
                {"tls_ca": server.ca}),
        "mutual tls": ({"SERVEMESH_TLS_CERT": server.cert, "SERVEMESH_TLS_KEY": server.key,
                        "SERVEMESH_TLS_CA": server.ca, "SERVEMESH_TLS_MUTUAL": "true"},
                       {"tls_ca": caller.ca, "tls_cert": caller.cert, "tls_key": caller.key}),
    }
    rows = []
    with EtcdServer() as etcd:
        for name, (env, client_tls) in setups.items():
            namespace = f"sec{len(rows)}"
            proc = subprocess.Popen([sys.executable, str(HERE / "runtime_bench.py"), "--role", "worker"],
                                    env=worker_env(etcd.url, namespace, env), cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                ops, p50 = servemesh.run(w1(etcd.url, namespace, client_tls, args))
            finally:
                proc.terminate()
                proc.wait(20)
            rows.append((name, ops, p50))
            print(f"  W1 {name:<12} {ops:>10,.0f} req/s (c=64)   p50 {p50:.3f} ms (c=1)", flush=True)
    return rows


def auth_rows(args: argparse.Namespace) -> list[tuple[str, float]]:
    from servemesh.testing import free_port

    rows = []
    for name, extra in (("no api key", []), ("api key", ["--api-key", KEY])):
        port = free_port()
        proc = gateway_bench.start([sys.executable, "examples/llm/pipeline.py", "--engine", "mock",
                                    "--port", str(port), *extra], f"http://127.0.0.1:{port}/ready")
        try:
            headers = {"Authorization": f"Bearer {KEY}"} if extra else {}
            url = f"http://127.0.0.1:{port}"
            tps = statistics.median(asyncio.run(gateway_bench.load(url, 32, args.duration, headers))[0]
                                    for _ in range(args.runs))
        finally:
            proc.terminate()
            proc.wait(20)
        rows.append((name, tps))
        print(f"  W4 {name:<12} {tps:>10,.0f} tokens/s (c=32)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"security cost: {args.runs} runs x {args.duration}s, {os.cpu_count()} cores")
    tls = tls_rows(args)
    auth = auth_rows(args)
    base_ops, base_p50 = tls[0][1], tls[0][2]
    print("\n| workload | setup | value | vs plain |\n|---|---|---:|---:|")
    for name, ops, _ in tls:
        print(f"| W1 c=64 req/s | {name} | {ops:,.0f} | {ops / base_ops:.2f}x |")
    for name, _, p50 in tls:
        print(f"| W1 c=1 p50 ms | {name} | {p50:.3f} | +{p50 - base_p50:.3f} ms |")
    for name, tps in auth:
        print(f"| W4 c=32 tokens/s | {name} | {tps:,.0f} | {tps / auth[0][1]:.2f}x |")


if __name__ == "__main__":
    main()
