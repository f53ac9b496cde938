"""Fuzz a typed function's HTTP surface from its own OpenAPI document (schemathesis),
derandomized: valid and invalid requests for every operation. No request may get a 5xx,
and the function must still be ready afterwards. The function runs as users run it
(`servemesh serve-function examples/functions/text/greet/1.0.0`)."""

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
def function(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    work = tmp_path_factory.mktemp("fuzz-function")
    log = open(work / "function.log", "wb")
    env = dict(os.environ, PYTHONUNBUFFERED="1", SERVEMESH_STATE_DIR=str(work / "state"))
    proc = subprocess.Popen([sys.executable, "-m", "servemesh", "serve-function",
                             str(ROOT / "examples" / "functions" / "text" / "greet" / "1.0.0"), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/ready", 60, proc)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(20)


def test_no_fuzzed_request_gets_a_5xx_or_crashes_the_function(function: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, proc = function
    # negative cases need something to break: /execute's body (a path's string parameter has nothing)
    operations, tried = fuzz_operations(url, proc, examples=EXAMPLES, what="function",
                                        negative=lambda operation: operation.path == "/execute")
    assert {op.path for op in operations} >= {"/execute", "/metadata", "/objects", "/objects/{ref}"}
    assert tried >= len(operations) * 5
    assert httpx.get(f"{url}/ready").status_code == 200
