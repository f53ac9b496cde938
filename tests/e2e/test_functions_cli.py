"""Typed functions as users run them: `servemesh new function`, `servemesh validate`,
`servemesh serve-function` (SIGTERM drains, then on_shutdown; a failing on_startup exits with
its error) and `uvicorn main:func` in the function's directory. Readiness is polled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from servemesh.testing import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "functions" / "text" / "greet" / "1.0.0"


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servemesh", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*cmd: str, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"proc-{len(started)}.log", "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1", SERVEMESH_STATE_DIR=str(tmp_path / "state"))
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        proc.log_path = tmp_path / f"proc-{len(started)}.log"  # type: ignore[attr-defined]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def log_of(proc: subprocess.Popen[bytes]) -> str:
    return Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_new_function_scaffold_validates_and_serves(tmp_path: Path, procs: Callable[..., subprocess.Popen[bytes]]
                                                    ) -> None:
    made = cli("new", "function", "text/shout", "--dir", str(tmp_path))
    assert made.returncode == 0, made.stderr
    target = tmp_path / "text" / "shout" / "1.0.0"
    assert sorted(p.name for p in target.iterdir()) == ["Dockerfile", "main.py", "metadata.py", "requirements.txt"]
    checked = cli("validate", str(target))
    assert checked.returncode == 0 and "valid" in checked.stdout, checked.stderr

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = procs(sys.executable, "-m", "servemesh", "serve-function", str(target), "--port", str(port))
    wait_until(lambda: ready(url), "the function is ready", 30, proc)
    out = httpx.post(f"{url}/execute", json={"inputs": {"text": "hi"}, "params": {"times": 3}}, timeout=10)
    assert out.json() == {"result": "hi hi hi"}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log_of(proc)
    assert "function shout stopped: executions drained, on_shutdown done" in log_of(proc)


def test_validate_lists_every_problem_and_fails(tmp_path: Path) -> None:
    target = tmp_path / "text" / "bad" / "v1"
    target.mkdir(parents=True)
    (target / "metadata.py").write_text("from typing import Any\nfrom pydantic import BaseModel\n"
                                        "from servemesh.functions import Function\nfunc = Function('bad')\n\n"
                                        "@func.set_input\nclass Inputs(BaseModel):\n    x: Any\n")
    (target / "main.py").write_text("from metadata import func\n")
    done = cli("validate", str(target))
    assert done.returncode == 1
    assert "3 problem(s)" in done.stderr
    assert "metadata.py:4: version 'v1'" in done.stderr and "metadata.py:8: inputs.x" in done.stderr
    assert "no on_execute" in done.stderr


def broken_function(tmp_path: Path) -> Path:
    target = tmp_path / "text" / "broken" / "1.0.0"
    target.mkdir(parents=True)
    (target / "metadata.py").write_text("from pydantic import BaseModel\nfrom servemesh.functions import Function\n"
                                        "func = Function('broken')\n\n@func.set_input\nclass Inputs(BaseModel):\n"
                                        "    x: int\n")
    (target / "main.py").write_text("from metadata import func\n\n@func.on_startup\nasync def load():\n"
                                    "    raise FileNotFoundError('model.bin')\n\n@func.on_execute\n"
                                    "async def main(inputs, params):\n    return {}\n")
    return target


def test_a_failing_startup_exits_with_its_error(tmp_path: Path, procs: Callable[..., subprocess.Popen[bytes]]
                                                ) -> None:
    target = broken_function(tmp_path)
    proc = procs(sys.executable, "-m", "servemesh", "serve-function", str(target), "--port", str(free_port()))
    assert proc.wait(60) == 1
    assert "on_startup of function 'broken' failed: FileNotFoundError: model.bin" in log_of(proc)


def test_uvicorn_exits_when_startup_fails(tmp_path: Path, procs: Callable[..., subprocess.Popen[bytes]]) -> None:
    target = broken_function(tmp_path)
    proc = procs(sys.executable, "-m", "uvicorn", "--port", str(free_port()), "main:func", cwd=target)
    assert proc.wait(60) != 0
    assert "on_startup of function 'broken' failed: FileNotFoundError: model.bin" in log_of(proc)


def test_uvicorn_serves_the_function_object(procs: Callable[..., subprocess.Popen[bytes]]) -> None:
    """The seed's Dockerfile command: `uvicorn main:func` in the function's directory."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = procs(sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "main:func",
                 cwd=EXAMPLE)
    wait_until(lambda: ready(url), "uvicorn serves the function", 30, proc)
    out = httpx.post(f"{url}/execute", json={"inputs": {"person": {"name": "Ada"}}}, timeout=10)
    assert out.json() == {"greeting": "Hello, Ada!"}
    assert httpx.get(f"{url}/metadata").json()["category"] == "text"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) in (0, -signal.SIGTERM), log_of(proc)  # uvicorn re-raises the signal once stopped
    assert "Application shutdown complete" in log_of(proc)


DRAIN_MAIN = '''
import asyncio
import os
from pathlib import Path

from metadata import Inputs, Outputs, Params, func


def note(event):
    with Path(os.environ["FN_EVENTS"]).open("a") as f:
        f.write(event + "\\n")


@func.on_startup
async def start():
    note("startup")


@func.on_execute
async def main(inputs: Inputs, params: Params) -> Outputs:
    note("execute-begin")
    text = await asyncio.to_thread(lambda: Path(os.environ["FN_GATE"]).read_text())  # a FIFO: the test opens it
    note("execute-end")
    return Outputs(result=text)


@func.on_shutdown
async def stop():
    note("shutdown")
'''


def test_sigterm_drains_the_execution_in_flight_then_runs_on_shutdown(
        tmp_path: Path, procs: Callable[..., subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.functions.dirs import write_function

    target = write_function(tmp_path / "fns", name="drainer")
    (target / "main.py").write_text(DRAIN_MAIN)
    events, gate = tmp_path / "events.txt", tmp_path / "gate"
    os.mkfifo(gate)
    monkeypatch.setenv("FN_EVENTS", str(events))
    monkeypatch.setenv("FN_GATE", str(gate))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = procs(sys.executable, "-m", "servemesh", "serve-function", str(target), "--port", str(port))
    wait_until(lambda: ready(url), "the function is ready", 30, proc)

    def noted() -> list[str]:
        return events.read_text().split() if events.exists() else []

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, f"{url}/execute", json={"inputs": {"text": "x"}}, timeout=60)
        wait_until(lambda: "execute-begin" in noted(), "the execution started", 30, proc)
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: not ready(url), "/ready fails while draining", 30, proc)
        assert proc.poll() is None and "shutdown" not in noted()  # held open by the execution in flight
        gate.write_text("released")  # the function's read of the FIFO returns
        response = pending.result(60)
    assert response.status_code == 200 and response.json()["result"] == "released"
    assert proc.wait(30) == 0, log_of(proc)
    assert noted() == ["startup", "execute-begin", "execute-end", "shutdown"]
    assert "executions drained, on_shutdown done" in log_of(proc)
