"""Fixtures of the end-to-end tests: servemesh commands and scripts as processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: short registration TTLs and heartbeats, so that replicas come and go quickly
FAST = {"SERVEMESH_CAPABILITY_TTL": "2", "SERVEMESH_CAPABILITY_HEARTBEAT": "0.3", "SERVEMESH_INSTANCE_WAIT": "0.5"}


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `python -m servemesh.cli.main ...` or a script; all stopped at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str] | None = None, script: Path | None = None) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"proc-{len(started)}.log", "wb")
        cmd = [sys.executable, str(script), *args] if script else [sys.executable, "-m", "servemesh.cli.main", *args]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1", **FAST, **(env or {})))
        proc.log_path = tmp_path / f"proc-{len(started)}.log"  # type: ignore[attr-defined]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
    for proc in started:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
