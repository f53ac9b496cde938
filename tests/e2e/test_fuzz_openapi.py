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
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from servemesh.testing import free_port, wait_http_ok

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KEY = {"Authorization": "Bearer sk-fuzz"}
#: examples per operation and generation mode
EXAMPLES = 50
#: the whole run must stay under this (seconds)
BUDGET = 60


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
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=KEY, timeout=10)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/v1/models"}
    started = time.monotonic()
    tried = 0
    for operation in operations:
        # negative cases need something to break: a body or parameters
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if operation.method == "post" else [])
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                      phases=[Phase.explicit, Phase.generate, Phase.shrink],
                      suppress_health_check=list(HealthCheck))
            def fuzz(case: schemathesis.Case) -> None:
                nonlocal tried
                tried += 1
                response = case.call(base_url=url, headers=KEY, timeout=30)
                case.validate_response(response, checks=[not_a_server_error])

            fuzz()
            assert proc.poll() is None, f"the server died fuzzing {operation.label} ({mode.value})"
    assert tried >= len(operations) * 10
    assert time.monotonic() - started < BUDGET
    assert httpx.get(f"{url}/ready").status_code == 200
