"""Fuzz a typed function's HTTP surface from its own OpenAPI document (schemathesis),
derandomized: valid and invalid requests for every operation. No request may get a 5xx,
and the function must still be ready afterwards. The function runs as users run it
(`servemesh serve-function examples/functions/text/greet/1.0.0`)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from .fuzzing import ROOT, fuzz_operations, served

EXAMPLES = 30


@pytest.fixture(scope="module")
def function(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    work = tmp_path_factory.mktemp("fuzz-function")
    greet = str(ROOT / "examples" / "functions" / "text" / "greet" / "1.0.0")
    with served(lambda port: [sys.executable, "-m", "servemesh", "serve-function", greet, "--port", str(port)],
                work / "function.log", SERVEMESH_STATE_DIR=str(work / "state")) as server:
        yield server


def test_no_fuzzed_request_gets_a_5xx_or_crashes_the_function(function: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, proc = function
    # negative cases need something to break: /execute's body (a path's string parameter has nothing)
    operations, tried = fuzz_operations(url, proc, examples=EXAMPLES, what="function",
                                        negative=lambda operation: operation.path == "/execute")
    assert {op.path for op in operations} >= {"/execute", "/metadata", "/objects", "/objects/{ref}"}
    assert tried >= len(operations) * 5
    assert httpx.get(f"{url}/ready").status_code == 200
