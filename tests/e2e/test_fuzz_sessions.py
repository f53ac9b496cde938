"""Fuzz the sessions gateway from its own OpenAPI document (schemathesis), with a fixed
budget: no request may get a 5xx (the example app's actions only fail on the message
"boom"), and the server must still be ready afterwards. The gateway runs as users run it
(``servemesh sessions serve``, SQLite store)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from servemesh.testing import free_port, wait_http_ok

from .fuzzing import fuzz_operations

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = 30


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    tmp = tmp_path_factory.mktemp("fuzz-sessions")
    log = open(tmp / "sessions.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "servemesh.cli.main", "sessions", "serve",
                             "examples/sessions/burr_chat.py:builder", "--name", "chat", "--port", str(port),
                             "--store", f"sqlite:///{tmp}/s.db", "--chat", "ask,answer"],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/ready", 60, proc)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(20)


def test_no_fuzzed_request_gets_a_5xx_or_crashes_the_gateway(gateway: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, proc = gateway
    operations, tried = fuzz_operations(url, proc, examples=EXAMPLES, what="gateway",
                                        negative=lambda operation: operation.method == "post")
    assert {op.path for op in operations} >= {"/chat/getOrCreate", "/chat/ask", "/chat/answer/stream", "/chat/fork"}
    assert tried >= len(operations) * 10
    assert httpx.get(f"{url}/ready").status_code == 200
