"""Fuzz the OpenAI frontend from its own OpenAPI document (schemathesis), with a fixed
budget: valid and invalid requests for every operation, derandomized. No request may
get a 5xx, and the server must still be alive and ready afterwards.

The pipeline runs as the user runs it (``examples/llm/pipeline.py --engine mock``,
embedded), behind an API key, with a small context so that no fuzzed ``max_tokens``
makes a request long."""

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
KEY = {"Authorization": "Bearer sk-fuzz"}
#: examples per operation and generation mode
EXAMPLES = 50


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    log = open(tmp_path_factory.mktemp("fuzz") / "pipeline.log", "wb")
    env = dict(os.environ, PYTHONUNBUFFERED="1", SERVEMESH_INSTANCE_WAIT="0.2")
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "llm" / "pipeline.py"), "--engine", "mock",
                             "--port", str(port), "--context-length", "512", "--api-key", "sk-fuzz"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/ready", 60, proc)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(20)


def test_no_fuzzed_request_gets_a_5xx_or_crashes_the_server(pipeline: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, proc = pipeline
    # negative cases need something to break: a body or parameters
    operations, tried = fuzz_operations(url, proc, examples=EXAMPLES, headers=KEY,
                                        negative=lambda operation: operation.method == "post")
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/v1/models"}
    assert tried >= len(operations) * 10
    assert httpx.get(f"{url}/ready").status_code == 200
