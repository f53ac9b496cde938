"""W1-W3 of shared/benchmarks/WORKLOADS.md: servemesh (tcp, nats, inproc) beside its baselines.

    python benchmarks/runtime_bench.py               # ~8 s per measurement, medians of 3
    python benchmarks/runtime_bench.py --duration 2  # quicker

Client and servers are separate processes over loopback (a real etcd for
discovery, a real nats-server); inproc and bare-generator run in this process.
Prints a table with the ratio of each servemesh row to its baseline (raw asyncio
TCP for tcp, raw nats-py for nats, a bare async generator for inproc). The raw TCP
baseline writes once per loop turn, as filed; "raw tcp early flush" also writes
every 32 frames, as servemesh's transport does, and tcp rows show both ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import raw_nats  # noqa: E402
import raw_tcp  # noqa: E402

import servemesh  # noqa: E402
from servemesh import Context, DistributedRuntime  # noqa: E402

N_ITEMS = 100
RAW_NATS_SUBJECT = "rawbench.echo"
#: the raw baseline's second variant flushes like servemesh's transport does
EARLY_FLUSH = 32
ECHO_REQ = {"id": 0, "text": "x" * 100}


# -- the handlers, identical for every system ---------------------------------------
async def echo(request: dict) -> dict:
    return request


async def stream(request: dict) -> AsyncIterator[dict]:
    for k in range(int(request.get("n", N_ITEMS))):
        yield {"token_ids": [k]}
    yield {"finish_reason": "stop"}


# -- server processes -----------------------------------------------------------------
def _ns() -> str:
    return os.environ.get("BENCH_NS", "bench")


async def serve_worker(runtime: DistributedRuntime) -> None:
    comp = runtime.namespace(_ns()).component("worker")
    await asyncio.gather(comp.endpoint("echo").serve_endpoint(echo),
                         comp.endpoint("stream").serve_endpoint(stream))


async def serve_relay(runtime: DistributedRuntime) -> None:
    client = await runtime.endpoint(f"{_ns()}.worker.stream").client()
    await client.wait_for_instances(60)

    async def relay(request: dict, context: Context) -> AsyncIterator[Any]:
        async for item in client.generate(request, context=context, annotated=False):
            yield item

    await runtime.endpoint(f"{_ns()}.processor.relay").serve_endpoint(relay)


# -- load generation ------------------------------------------------------------------
#: one request; returns the items it received and when the first one came (perf_counter)
Op = Callable[[], Awaitable[tuple[int, float]]]


async def measure(op: Op, concurrency: int, duration: float, warmup: float) -> dict[str, float]:
    latencies: list[float] = []
    #: first-item latency of every request, under the same load as the throughput
    firsts: list[float] = []
    items = 0
    ops = 0
    recording = False
    stop_at = 0.0

    async def loop_() -> None:
        nonlocal items, ops
        while True:
            t0 = time.perf_counter()
            n, first = await op()
            t1 = time.perf_counter()
            if t1 > stop_at:
                return
            if recording:
                items += n
                ops += 1
                firsts.append(first - t0)
                if concurrency == 1:
                    latencies.append(t1 - t0)

    stop_at = time.perf_counter() + warmup
    await asyncio.gather(*(loop_() for _ in range(concurrency)))
    recording = True
    start = time.perf_counter()
    stop_at = start + duration
    await asyncio.gather(*(loop_() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    result = {"ops/s": ops / elapsed, "items/s": items / elapsed}
    if latencies:
        latencies.sort()
        result["p50_ms"] = latencies[len(latencies) // 2] * 1000
        result["p99_ms"] = latencies[int(len(latencies) * 0.99)] * 1000
    if firsts:
        firsts.sort()
        result["first_p50_ms"] = firsts[len(firsts) // 2] * 1000
        result["first_p99_ms"] = firsts[int(len(firsts) * 0.99)] * 1000
    return result


async def ttft(first: Callable[[], Awaitable[None]], duration: float) -> float:
    samples: list[float] = []
    end = time.perf_counter() + duration
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await first()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


def sm_ops(client: servemesh.Client, payload: Any) -> tuple[Op, Callable[[], Awaitable[None]]]:
    async def op() -> tuple[int, float]:
        n, first = 0, 0.0
        async for _ in client.generate(payload, annotated=False):
            if not n:
                first = time.perf_counter()
            n += 1
        return n, first

    async def first() -> None:
        stream = client.generate(payload, annotated=False)
        await stream.__anext__()
        await stream.aclose()

    return op, first


def raw_ops(client: raw_tcp.RawClient, kind: int, payload: Any) -> tuple[Op, Callable[[], Awaitable[None]]]:
    async def op() -> tuple[int, float]:
        n, first = 0, 0.0
        async for _ in client.call(kind, payload):
            if not n:
                first = time.perf_counter()
            n += 1
        return n, first

    async def first() -> None:
        s = client.call(kind, payload)
        await s.__anext__()
        async for _ in s:
            pass

    return op, first


def bare_ops(handler: Callable[[Any], AsyncIterator[Any]], payload: Any) -> tuple[Op, Any]:
    async def op() -> tuple[int, float]:
        n, first = 0, 0.0
        async for _ in handler(payload):
            if not n:
                first = time.perf_counter()
            n += 1
        return n, first

    async def first() -> None:
        agen = handler(payload)
        await agen.__anext__()
        await agen.aclose()  # type: ignore[attr-defined]

    return op, first


async def bare_echo(request: Any) -> AsyncIterator[Any]:
    yield await echo(request)


async def bare_relay(request: Any) -> AsyncIterator[Any]:
    async for item in stream(request):
        yield item


WORKLOADS = [
    ("W1 unary c=1", "echo", 1, "ops/s"),
    ("W1 unary c=1 p50 ms", "echo", 1, "p50_ms"),
    ("W1 unary c=1 p99 ms", "echo", 1, "p99_ms"),
    ("W1 unary c=64", "echo", 64, "ops/s"),
    ("W2 stream c=32 items/s", "stream", 32, "items/s"),
    # the same runs as the row above: how long a new stream waits behind the others
    ("W2 first item c=32 p50 ms", "stream", 32, "first_p50_ms"),
    ("W2 TTFT c=1 p50 ms", "stream", 1, "ttft"),
    ("W3 relay c=32 items/s", "relay", 32, "items/s"),
]


class Stack:
    """etcd, nats-server and every server process of the run; started before the loop."""

    def __init__(self) -> None:
        from servemesh.testing import EtcdServer, NatsServer, free_port, wait_tcp

        self.etcd = EtcdServer()
        self.nats = NatsServer()
        self.etcd.start()
        self.nats.start()
        me = [sys.executable, __file__]
        self.procs: list[subprocess.Popen[bytes]] = []
        for transport in ("tcp", "nats"):
            env = dict(os.environ, SERVEMESH_ETCD=self.etcd.url, SERVEMESH_NATS=self.nats.url,
                       SERVEMESH_TRANSPORT=transport, BENCH_NS=f"bench{transport}")
            self.procs.append(subprocess.Popen([*me, "--role", "worker"], env=env))
            self.procs.append(subprocess.Popen([*me, "--role", "relay"], env=env))
        #: (echo/stream port, relay port) of the raw TCP baseline, by early-flush setting
        self.raw: dict[int, tuple[int, int]] = {}
        for early in (0, EARLY_FLUSH):
            port, relay_port = free_port(), free_port()
            flag = ["--early", str(early)]
            self.procs.append(subprocess.Popen([*me, "--role", "raw", "--port", str(port), *flag]))
            wait_tcp("127.0.0.1", port, 30)
            self.procs.append(subprocess.Popen([*me, "--role", "raw", "--port", str(relay_port),
                                                "--upstream", str(port), *flag]))
            wait_tcp("127.0.0.1", relay_port, 30)
            self.raw[early] = (port, relay_port)
        self.procs.append(subprocess.Popen([*me, "--role", "raw-nats", "--nats", self.nats.url]))

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(10)
        self.nats.stop()
        self.etcd.stop()


async def bench(args: argparse.Namespace, stack: Stack) -> list[tuple[str, str, float]]:
    rows: list[tuple[str, str, float]] = []
    async with DistributedRuntime(etcd=stack.etcd.url, nats=stack.nats.url) as remote, DistributedRuntime(
            state_dir=str(HERE / ".no-stack")) as local:
        clients: dict[str, dict[str, servemesh.Client]] = {"tcp": {}, "nats": {}}
        for transport, by_name in clients.items():
            for name, path in (("echo", "worker.echo"), ("stream", "worker.stream"), ("relay", "processor.relay")):
                by_name[name] = await remote.endpoint(f"bench{transport}.{path}").client()
                await by_name[name].wait_for_instances(60)
        serving = [asyncio.create_task(local.endpoint(f"bench.local.{n}").serve_endpoint(h))
                   for n, h in (("echo", echo), ("stream", stream))]
        local_stream = await local.endpoint("bench.local.stream").client()

        async def local_relay(request: dict, context: Context) -> AsyncIterator[Any]:
            async for item in local_stream.generate(request, context=context, annotated=False):
                yield item

        serving.append(asyncio.create_task(local.endpoint("bench.local.relay").serve_endpoint(local_relay)))
        local_clients = {}
        for name in ("echo", "stream", "relay"):
            local_clients[name] = await local.endpoint(f"bench.local.{name}").client()
            await local_clients[name].wait_for_instances(10)
        raw: dict[int, tuple[raw_tcp.RawClient, raw_tcp.RawClient]] = {}
        for early, ports in stack.raw.items():
            raw[early] = (raw_tcp.RawClient(early), raw_tcp.RawClient(early))
            for conn, port in zip(raw[early], ports, strict=True):
                await conn.connect("127.0.0.1", port)
        rawn = raw_nats.RawNatsClient(RAW_NATS_SUBJECT)
        await rawn.connect(stack.nats.url)

        payload = {"echo": ECHO_REQ, "stream": {"n": N_ITEMS}, "relay": {"n": N_ITEMS}}
        systems: dict[str, Callable[[str], tuple[Op, Any] | None]] = {
            "servemesh tcp": lambda w: sm_ops(clients["tcp"][w], payload[w]),
            "raw asyncio tcp": lambda w: raw_ops(raw[0][w == "relay"],
                                                 raw_tcp.ECHO if w == "echo" else raw_tcp.STREAM, payload[w]),
            "raw tcp early flush": lambda w: raw_ops(raw[EARLY_FLUSH][w == "relay"],
                                                     raw_tcp.ECHO if w == "echo" else raw_tcp.STREAM, payload[w]),
            "servemesh nats": lambda w: sm_ops(clients["nats"][w], payload[w]),
            "raw nats-py": lambda w: None if w == "relay" else raw_nats_ops(rawn, w, payload[w]),
            "servemesh inproc": lambda w: sm_ops(local_clients[w], payload[w]),
            "bare generator": lambda w: bare_ops(
                {"echo": bare_echo, "stream": stream, "relay": bare_relay}[w], payload[w]),
        }
        measured: dict[tuple[str, str, int], list[dict[str, float]]] = {}
        for label, work, conc, metric in WORKLOADS:
            if args.only and not any(o in label for o in args.only):
                continue
            for system, make in systems.items():
                if args.systems and system not in args.systems:
                    continue
                ops = make(work)
                if ops is None:
                    continue
                op, first = ops
                values = []
                if metric == "ttft":
                    for _ in range(args.runs):
                        values.append(await ttft(first, args.duration))
                else:
                    key = (system, work, conc)
                    if key not in measured:  # rows of one workload share its runs
                        measured[key] = [await measure(op, conc, args.duration, args.warmup)
                                         for _ in range(args.runs)]
                    values = [m[metric] for m in measured[key]]
                rows.append((label, system, statistics.median(values)))
                print(f"  {label:<26} {system:<18} {rows[-1][2]:>14,.3f}", flush=True)
        local.request_shutdown()
        await asyncio.gather(*serving)
    return rows


def raw_nats_ops(client: raw_nats.RawNatsClient, work: str, payload: Any) -> tuple[Op, Any]:
    if work == "echo":
        async def op() -> tuple[int, float]:
            await client.echo(payload)
            return 1, time.perf_counter()

        async def first() -> None:
            await client.echo(payload)

        return op, first

    async def op_stream() -> tuple[int, float]:
        n, first = 0, 0.0
        async for _ in await client.stream(payload):
            if not n:
                first = time.perf_counter()
            n += 1
        return n, first

    async def first_stream() -> None:
        s = await client.stream(payload)
        await s.__anext__()
        async for _ in s:
            pass

    return op_stream, first_stream


def table(rows: list[tuple[str, str, float]]) -> str:
    base = {"servemesh tcp": "raw asyncio tcp", "servemesh nats": "raw nats-py",
            "servemesh inproc": "bare generator"}
    values = {(w, s): v for w, s, v in rows}
    lines = ["| workload | system | value | ratio to baseline | ratio to raw tcp early flush |",
             "|---|---|---:|---:|---:|"]

    def ratio(w: str, v: float, other: str) -> str:
        if not values.get((w, other)):
            return ""
        return f"{v / values[(w, other)]:.2f}x" + (" (latency)" if w.endswith(" ms") else "")

    for w, s, v in rows:
        early = ratio(w, v, "raw tcp early flush") if s == "servemesh tcp" else ""
        lines.append(f"| {w} | {s} | {v:,.3f} | {ratio(w, v, base[s]) if s in base else ''} | {early} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--role", choices=["bench", "worker", "relay", "raw", "raw-nats"], default="bench")
    parser.add_argument("--nats", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", type=int, default=0)
    parser.add_argument("--early", type=int, default=0, help="raw role: write once this many frames wait")
    parser.add_argument("--only", action="append", default=[], help="run workloads whose label contains this")
    parser.add_argument("--systems", action="append", default=[], help="run only this system (repeatable)")
    args = parser.parse_args()
    if args.role == "worker":
        servemesh.run(servemesh.worker(serve_worker)())
    elif args.role == "relay":
        servemesh.run(servemesh.worker(serve_relay)())
    elif args.role == "raw":
        servemesh.run(raw_tcp.serve(args.port, ("127.0.0.1", args.upstream) if args.upstream else None,
                                    args.early))
    elif args.role == "raw-nats":
        servemesh.run(raw_nats.serve(args.nats, RAW_NATS_SUBJECT))
    else:
        print(f"servemesh runtime benchmark: {args.runs} runs x {args.duration}s, {os.cpu_count()} cores")
        stack = Stack()
        try:
            rows = servemesh.run(bench(args, stack))
        finally:
            stack.close()
        print()
        print(table(rows))


if __name__ == "__main__":
    main()
