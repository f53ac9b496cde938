"""Fuzz the sessions gateway from its own OpenAPI document (schemathesis), with a fixed
budget: no request may get a 5xx (the example app's actions only fail on the message
"boom"), and the server must still be ready afterwards. The gateway runs as users run it
(``servemesh sessions serve``, SQLite store)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from servemesh.testing import free_port, wait_http_ok

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = 30
BUDGET = 120


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
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=10)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/chat/getOrCreate", "/chat/ask", "/chat/answer/stream", "/chat/fork"}
    started = time.monotonic()
    tried = 0
    for operation in operations:
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if operation.method == "post" else [])
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                      phases=[Phase.explicit, Phase.generate, Phase.shrink],
                      suppress_health_check=list(HealthCheck))
            def fuzz(case: schemathesis.Case) -> None:
                nonlocal tried
                tried += 1
                response = case.call(base_url=url, timeout=30)
                case.validate_response(response, checks=[not_a_server_error])

            fuzz()
            assert proc.poll() is None, f"the gateway died fuzzing {operation.label} ({mode.value})"
    assert tried >= len(operations) * 10
    assert time.monotonic() - started < BUDGET
    assert httpx.get(f"{url}/ready").status_code == 200
