"""The `servemesh` command against a real local stack, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from servemesh.testing import free_port, wait_http_ok

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "integration" / "stream_worker.py"


def sm(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "servemesh.cli.main", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"servemesh {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


@pytest.fixture
def stack(tmp_path):
    env = dict(os.environ, SERVEMESH_STATE_DIR=str(tmp_path / "state"))
    for var in ("SERVEMESH_ETCD", "SERVEMESH_NATS"):
        env.pop(var, None)
    sm("up", "--etcd-port", str(free_port()), "--nats-port", str(free_port()), env=env)
    yield env
    sm("down", env=env)


def test_up_ls_call_metrics_down(stack, spawn, tmp_path):
    env = stack
    record = json.loads((tmp_path / "state" / "stack.json").read_text())
    out = sm("status", env=env).stdout
    assert "etcd" in out and "healthy" in out and "NOT RESPONDING" not in out
    again = sm("up", env=env).stdout
    assert "already running" in again

    system_port = free_port()
    worker = spawn(WORKER, "cli", env={"SERVEMESH_STATE_DIR": env["SERVEMESH_STATE_DIR"],
                                      "SERVEMESH_SYSTEM_PORT": str(system_port)}, name="worker")
    wait_http_ok(f"http://127.0.0.1:{system_port}/ready", 30, worker)

    listing = sm("ls", "cli", env=env).stdout
    assert "NAMESPACE" in listing and "stream" in listing and "typed" in listing
    rows = [json.loads(line) for line in sm("ls", "cli", "--json", env=env).stdout.splitlines()]
    assert {r["endpoint"] for r in rows} == {"stream", "fail", "typed", "stats", "big", "blobs", "rss",
                                              "surrogate", "sleepy"}
    assert all(r["transport"]["tcp"].startswith("127.0.0.1:") for r in rows)

    items = [json.loads(line) for line in sm("call", "cli.worker.stream", '{"n": 4}', env=env).stdout.splitlines()]
    assert [i["k"] for i in items] == [0, 1, 2, 3] and items[0]["pid"] == worker.pid

    bad = sm("call", "cli.worker.typed", '{"prompt": "x", "max_tokens": "many"}', env=env, check=False)
    assert bad.returncode == 1 and "max_tokens" in bad.stderr
    missing = sm("call", "cli.nothing.here", "{}", "--wait", "0.2", env=env, check=False)
    assert missing.returncode == 1 and "cli.worker.stream" in missing.stderr and "servemesh ls cli" in missing.stderr
    garbled = sm("call", "cli.worker.stream", "{not json", env=env, check=False)
    assert garbled.returncode == 2 and "not valid JSON" in garbled.stderr
    failing = sm("call", "cli.worker.fail", '{"x": 1}', env=env, check=False)
    assert failing.returncode == 1 and "RemoteError" in failing.stderr and "x=1" in failing.stderr

    health = httpx.get(f"http://127.0.0.1:{system_port}/health").json()
    assert health["status"] == "ok" and "cli.worker.stream" in health["endpoints"]
    metrics = httpx.get(f"http://127.0.0.1:{system_port}/metrics").text
    assert 'servemesh_requests_total{endpoint="cli.worker.stream",outcome="ok"} 1.0' in metrics
    assert 'servemesh_requests_total{endpoint="cli.worker.typed",outcome="invalid"} 1.0' in metrics
    assert 'servemesh_inflight_streams{endpoint="cli.worker.stream"} 0.0' in metrics
    assert "servemesh_request_duration_seconds_bucket" in metrics

    worker.terminate()
    assert worker.wait(15) == 0
    assert "no live instances" in sm("ls", "cli", env=env).stdout

    sm("down", env=env)
    for pid in (record["etcd_pid"], record["nats_pid"]):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "embedded" in sm("status", env=env).stdout
    sm("up", "--etcd-port", str(free_port()), "--nats-port", str(free_port()), env=env)  # for the fixture's down


def test_run_serves_its_system_port_behind_an_api_key(spawn, tmp_path):
    port = free_port()
    example = ROOT / "examples" / "sdk" / "persona1_default.py"
    worker = spawn(Path(sys.executable).parent / "servemesh", "run", str(example),
                   "--system-port", str(port), "--api-key", "sk-cli",
                   env={"SERVEMESH_STATE_DIR": str(tmp_path / "state")}, name="run")
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/ready", 30, worker)  # probes stay open
    refused = httpx.get(f"{url}/metrics")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer sk-cli"}).status_code == 200
    worker.terminate()
    assert worker.wait(15) == 0
