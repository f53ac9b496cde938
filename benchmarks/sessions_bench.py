"""Stateful sessions: ``servemesh sessions serve`` beside a hand-written FastAPI + Burr server.

    python benchmarks/sessions_bench.py [--duration 4] [--runs 3]

One step = one action on an existing session, stored in SQLite: ``POST /bench/count``
through the sessions gateway and service (one process, embedded; the default SQLite
store), beside a FastAPI process written the way Burr's own examples serve an app:
per request, build the application from the persister (``initialize_from``, Burr's
``SQLLitePersister``, ``with_state_persister``), take a step, return the state.
Steps/s and p50 latency at concurrency 1 and 32, each worker on a session of its own.
The same raw HTTP/1.1 keep-alive client drives both. Target (issue 15): >= 2x the
baseline's steps/s at c=32, p50 at c=1 <= the baseline's.

This file is also the served app (``benchmarks/sessions_bench.py:builder``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pydantic
from burr.core import ApplicationBuilder, State, action
from burr.integrations.pydantic import PydanticTypingSystem

ROOT = Path(__file__).resolve().parents[1]
PARTITION = "bench"


class Tally(pydantic.BaseModel):
    total: int = 0


@action(reads=["total"], writes=["total"])
def count(state: State, amount: int = 1) -> State:
    return state.update(total=state["total"] + amount)


def builder() -> ApplicationBuilder:
    return (ApplicationBuilder().with_actions(count=count).with_transitions(("count", "count"))
            .with_typing(PydanticTypingSystem(Tally)).with_state(Tally()).with_entrypoint("count"))


class CountRequest(pydantic.BaseModel):
    amount: int = 1


# -- the baseline: FastAPI + Burr by hand, as in Burr's examples ------------------------------------
def baseline_app(db: str) -> Any:
    from burr.core.persistence import SQLLitePersister
    from fastapi import FastAPI

    SQLLitePersister(db_path=db, table_name="burr_state").initialize()
    # a sqlite3 connection must not be used by two threads at once: one persister per worker thread
    local = threading.local()

    def persister() -> Any:
        if not hasattr(local, "persister"):
            local.persister = SQLLitePersister(db_path=db, table_name="burr_state")
        return local.persister

    fast = FastAPI()

    def load(app_id: str) -> Any:
        store = persister()
        return (ApplicationBuilder().with_actions(count=count).with_transitions(("count", "count"))
                .initialize_from(store, resume_at_next_action=True, default_state={"total": 0},
                                 default_entrypoint="count")
                .with_state_persister(store).with_identifiers(app_id=app_id, partition_key=PARTITION).build())

    @fast.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @fast.post("/count/{app_id}")
    def step(app_id: str, body: CountRequest) -> dict[str, Any]:
        app = load(app_id)
        _, _, state = app.step(inputs={"amount": body.amount})
        return {"state": {k: v for k, v in state.get_all().items() if not k.startswith("__")},
                "sequence_id": app.sequence_id}

    return fast


def serve_baseline(port: int, db: str) -> None:
    import uvicorn

    uvicorn.run(baseline_app(db), host="127.0.0.1", port=port, http="h11", loop="uvloop", log_level="warning",
                access_log=False)


# -- the load -----------------------------------------------------------------------------------
def request_bytes(path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


def step_request(kind: str, session: int) -> bytes:
    if kind == "servemesh":
        return request_bytes("/bench/count", {"app_id": f"s{session}", "partition_key": PARTITION, "amount": 1})
    return request_bytes(f"/count/s{session}", {"amount": 1})


async def _worker(port: int, data: bytes, stop: float, latencies: list[float], once: bool = False) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while once or time.perf_counter() < stop:
            t0 = time.perf_counter()
            writer.write(data)
            head = await reader.readuntil(b"\r\n\r\n")
            at = head.lower().index(b"content-length:")
            body = await reader.readexactly(int(head[at + 15:head.index(b"\r\n", at)]))
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected answer: {head[:100]!r} {body[:300]!r}")
            latencies.append(time.perf_counter() - t0)
            if once:
                return
    finally:
        writer.close()


async def load(kind: str, port: int, concurrency: int, duration: float) -> tuple[float, float]:
    """(steps/s, p50 ms); every worker steps its own, existing session."""
    requests = [step_request(kind, i) for i in range(concurrency)]
    await asyncio.gather(*(_worker(port, r, 0, [], once=True) for r in requests))  # the sessions exist
    await _worker(port, requests[0], time.perf_counter() + 0.3, [])  # warm-up
    latencies: list[float] = []
    start = time.perf_counter()
    await asyncio.gather(*(_worker(port, r, start + duration, latencies) for r in requests))
    return len(latencies) / (time.perf_counter() - start), statistics.median(latencies) * 1000


async def create_sessions(port: int, count: int) -> None:
    for i in range(count):
        await _worker(port, request_bytes("/bench/getOrCreate", {"app_id": f"s{i}", "partition_key": PARTITION}),
                      0, [], once=True)


def start(cmd: list[str], url: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    from servemesh.testing import wait_http_ok

    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_http_ok(url, 60, proc)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_port:
        serve_baseline(args.baseline_port, args.db)
        return
    import uvloop

    from servemesh.testing import free_port

    env = dict(os.environ, SERVEMESH_LOG_LEVEL="warning")
    results: dict[str, dict[int, list[tuple[float, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = free_port(), free_port()
        procs = [
            start([sys.executable, "-m", "servemesh.cli.main", "sessions", "serve",
                   "benchmarks/sessions_bench.py:builder", "--name", "bench", "--port", str(ours), "--store",
                   f"sqlite:///{tmp}/servemesh.db", "--log-level", "warning"],
                  f"http://127.0.0.1:{ours}/ready", env),
            start([sys.executable, __file__, "--baseline-port", str(theirs), "--db", f"{tmp}/burr.db"],
                  f"http://127.0.0.1:{theirs}/health", env),
        ]
        try:
            uvloop.run(create_sessions(ours, 32))
            for _ in range(args.runs):  # interleaved, so both see the same machine
                for kind, port in (("servemesh", ours), ("fastapi+burr", theirs)):
                    for concurrency in (1, 32):
                        result = uvloop.run(load(kind, port, concurrency, args.duration))
                        results.setdefault(kind, {}).setdefault(concurrency, []).append(result)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
    print(f"{'server':<14} {'c=1 steps/s':>12} {'c=1 p50 ms':>11} {'c=32 steps/s':>13} {'c=32 p50 ms':>12}")
    medians: dict[str, tuple[float, float, float, float]] = {}
    for kind, by_c in results.items():
        one = statistics.median(r[0] for r in by_c[1]), statistics.median(r[1] for r in by_c[1])
        many = statistics.median(r[0] for r in by_c[32]), statistics.median(r[1] for r in by_c[32])
        medians[kind] = (*one, *many)
        print(f"{kind:<14} {one[0]:>12,.0f} {one[1]:>11.2f} {many[0]:>13,.0f} {many[1]:>12.2f}")
    ours_m, base_m = medians["servemesh"], medians["fastapi+burr"]
    print(f"servemesh / baseline: c=32 steps/s {ours_m[2] / base_m[2]:.2f}x (target >= 2x), "
          f"c=1 p50 {ours_m[1]:.2f} vs {base_m[1]:.2f} ms (target <=)")


if __name__ == "__main__":
    main()
