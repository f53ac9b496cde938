"""Fuzz the sessions gateway from its own OpenAPI document (schemathesis), with a fixed
budget: no request may get a 5xx (the example app's actions only fail on the message
"boom"), and the server must still be ready afterwards. The gateway runs as users run it
(``servemesh sessions serve``, SQLite store)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from .fuzzing import fuzz_operations, served

EXAMPLES = 30


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    tmp = tmp_path_factory.mktemp("fuzz-sessions")
    with served(lambda port: [sys.executable, "-m", "servemesh.cli.main", "sessions", "serve",
                              "examples/sessions/burr_chat.py:builder", "--name", "chat", "--port", str(port),
                              "--store", f"sqlite:///{tmp}/s.db", "--chat", "ask,answer"],
                tmp / "sessions.log") as server:
        yield server


def test_no_fuzzed_request_gets_a_5xx_or_crashes_the_gateway(gateway: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, proc = gateway
    operations, tried = fuzz_operations(url, proc, examples=EXAMPLES, what="gateway",
                                        negative=lambda operation: operation.method == "post")
    assert {op.path for op in operations} >= {"/chat/getOrCreate", "/chat/ask", "/chat/answer/stream", "/chat/fork"}
    assert tried >= len(operations) * 10
    assert httpx.get(f"{url}/ready").status_code == 200
