"""The README's main job, run as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_embedded_example_streams_a_reply():
    proc = subprocess.run([sys.executable, "examples/hello/pipeline.py", "how fast is it?"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "you asked: how fast is it?" in proc.stdout
    assert "[finish_reason=stop]" in proc.stdout
    assert "runtime is embedded" in proc.stderr
    assert "servemesh up" in proc.stderr  # tells the user how to go multi-process
