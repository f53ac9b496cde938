"""Fuzzing an HTTP surface from its own OpenAPI document (schemathesis), the one way every
gateway's fuzz test does it: derandomized, valid requests for every operation and
invalid ones where there is something to break; no answer may be a 5xx, and the server
process must outlive every operation."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from servemesh.testing import free_port, wait_http_ok

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def served(command: Callable[[int], list[str]], log: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The server ``command(port)`` starts (from the repository root, its output in
    ``log``), once its ``/ready`` answers 200: its URL and process; stopped after."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(command(port), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1", **env))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/ready", 60, proc)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(20)


def fuzz_operations(url: str, proc: subprocess.Popen[bytes], *, examples: int,
                    negative: Callable[[Any], bool], headers: dict[str, str] | None = None,
                    what: str = "server") -> tuple[list[Any], int]:
    """Fuzz every operation of ``url``'s ``/openapi.json``; the operations and how many
    requests were sent. ``negative(operation)``: whether to send it invalid requests too."""
    extra: dict[str, Any] = {"headers": headers} if headers else {}
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=10, **extra)
    operations = [result.ok() for result in schema.get_all_operations()]
    tried = 0
    for operation in operations:
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if negative(operation) else [])
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                      phases=[Phase.explicit, Phase.generate, Phase.shrink],
                      suppress_health_check=list(HealthCheck))
            def fuzz(case: schemathesis.Case) -> None:
                nonlocal tried
                tried += 1
                response = case.call(base_url=url, timeout=30, **extra)
                case.validate_response(response, checks=[not_a_server_error])

            fuzz()
            assert proc.poll() is None, f"the {what} died fuzzing {operation.label} ({mode.value})"
    return operations, tried
