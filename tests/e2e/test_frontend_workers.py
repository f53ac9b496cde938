"""``examples/llm/frontend.py --workers 2``: worker processes sharing one port, over etcd
with a mock engine and a processor, all real processes."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from servemesh.testing import free_port, wait_http_ok, wait_until

ROOT = Path(__file__).resolve().parents[2]
LLM = ROOT / "examples" / "llm"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5}


@pytest.fixture
def frontend(spawn, etcd) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The pipeline's engine and processor, and the frontend with two workers (its URL and supervisor)."""
    env = {"SERVEMESH_ETCD": etcd.url, "SERVEMESH_LEASE_TTL": "3"}
    spawn(LLM / "engine.py", "--engine", "mock", "--model", "m", env=env, name="engine")
    spawn(LLM / "processor.py", "--engine", "mock", "--model", "m", env=env, name="processor")
    port = free_port()
    front = spawn(LLM / "frontend.py", "--port", str(port), "--workers", "2", env=env, name="frontend")
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/ready", 60, front)
    yield url, front


def ready_workers(url: str, front: subprocess.Popen[bytes], *,
                  not_pids: frozenset[int] = frozenset()) -> dict[int, tuple[httpx.Client, int]]:
    """A kept-alive connection to each ready worker (the kernel gives each new connection to
    one of them, and a connection stays with it): {index: (client, pid)}."""
    found: dict[int, tuple[httpx.Client, int]] = {}

    def both() -> bool:
        http = httpx.Client(base_url=url, timeout=10)
        ready = http.get("/ready")
        worker, pid = ready.json()["worker"], ready.json()["pid"]
        if ready.status_code == 200 and worker not in found and pid not in not_pids:
            found[worker] = (http, pid)
        else:
            http.close()
        return len(found) == 2

    wait_until(both, "both workers ready", 30, front)
    return found


def tree(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def gone(procs: list[psutil.Process]) -> bool:
    def dead(p: psutil.Process) -> bool:
        try:
            return p.status() == psutil.STATUS_ZOMBIE  # exited; its new parent has not reaped it yet
        except psutil.NoSuchProcess:
            return True
    return all(dead(p) for p in procs)


def chat_requests(text: str) -> float:
    prefix = 'servemesh_http_requests_total{route="/v1/chat/completions",status="200"} '
    return sum(float(line.removeprefix(prefix)) for line in text.splitlines() if line.startswith(prefix))


@pytest.mark.parametrize("stop", ["sigterm", "ctrl-c"])
def test_workers_share_the_port_metrics_sum_them_and_a_signal_stops_all(frontend, stop):
    url, front = frontend
    workers = ready_workers(url, front)
    processes = tree(front.pid)
    assert {pid for _, pid in workers.values()} <= {p.pid for p in processes}
    sent = 0
    for http, pid in workers.values():  # each worker serves 3 answers and 3 streams
        for _ in range(3):
            answer = http.post("/v1/chat/completions", json=CHAT)
            assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "Hello"
            with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as stream:
                assert stream.status_code == 200 and list(stream.iter_lines())[-2] == "data: [DONE]"
            sent += 2
        assert http.get("/health").json()["pid"] == pid  # still the same worker
    for _ in range(4):  # whichever worker answers the scrape reports them all
        metrics = httpx.get(f"{url}/metrics").text
        assert chat_requests(metrics) == sent == 12
        assert "servemesh_http_inflight 0.0" in metrics
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["models"] == ["m"] and health["worker"] in (0, 1)
    for http, _ in workers.values():
        http.close()

    if stop == "sigterm":
        front.send_signal(signal.SIGTERM)
    else:  # a terminal's Ctrl-C: SIGINT to every process of the foreground group
        for pid in (front.pid, *(p.pid for p in processes)):
            os.kill(pid, signal.SIGINT)
    assert front.wait(20) == 0
    wait_until(lambda: gone(processes), "the workers to exit", 10)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health")


def test_a_killed_worker_is_replaced_and_a_killed_supervisor_leaves_no_worker(frontend):
    url, front = frontend
    workers = ready_workers(url, front)
    _, victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    survivor, _ = workers[1]
    assert survivor.post("/v1/chat/completions", json=CHAT).status_code == 200  # served meanwhile
    replaced = ready_workers(url, front, not_pids=frozenset({victim}))
    assert replaced[0][1] != victim and replaced[1][1] == workers[1][1]
    assert replaced[0][0].post("/v1/chat/completions", json=CHAT).status_code == 200
    for http, _ in (*workers.values(), *replaced.values()):
        http.close()

    processes = tree(front.pid)
    front.kill()  # the supervisor: its workers see it go and shut down
    front.wait()
    wait_until(lambda: gone(processes), "the orphaned workers to exit", 15)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health")


def test_a_worker_that_cannot_start_stops_the_group_with_status_1(spawn):
    dead_etcd = f"http://127.0.0.1:{free_port()}"
    front = spawn(LLM / "frontend.py", "--port", "0", "--workers", "2", env={"SERVEMESH_ETCD": dead_etcd},
                  name="frontend")
    assert front.wait(30) == 1
    log = Path(front.log_path).read_text()  # type: ignore[attr-defined]
    assert "before it served: stopping" in log and "cannot reach etcd" in log
