"""Fuzz the OpenAI frontend from its own OpenAPI document (schemathesis), with a fixed
budget: valid and invalid requests for every operation, derandomized. No request may
get a 5xx, and the server must still be alive and ready afterwards.

The pipeline runs as the user runs it (``examples/llm/pipeline.py --engine mock``,
embedded), behind an API key, with a small context so that no fuzzed ``max_tokens``
makes a request long."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from .fuzzing import ROOT, fuzz_operations, served

KEY = {"Authorization": "Bearer sk-fuzz"}
#: examples per operation and generation mode
EXAMPLES = 50


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with served(lambda port: [sys.executable, str(ROOT / "examples" / "llm" / "pipeline.py"), "--engine", "mock",
                              "--port", str(port), "--context-length", "512", "--api-key", "sk-fuzz"],
                tmp_path_factory.mktemp("fuzz") / "pipeline.log", SERVEMESH_INSTANCE_WAIT="0.2") as server:
        yield server


def test_no_fuzzed_request_gets_a_5xx_or_crashes_the_server(pipeline: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, proc = pipeline
    # negative cases need something to break: a body or parameters
    operations, tried = fuzz_operations(url, proc, examples=EXAMPLES, headers=KEY,
                                        negative=lambda operation: operation.method == "post")
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/v1/models"}
    assert tried >= len(operations) * 10
    assert httpx.get(f"{url}/ready").status_code == 200
