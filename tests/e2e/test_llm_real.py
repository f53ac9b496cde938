"""The real gemma-3-270m model, on llama.cpp, through the pipeline (small max_tokens for CI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import openai

from servemesh.testing import free_port, wait_http_ok

ROOT = Path(__file__).resolve().parents[2]
LLM = ROOT / "examples" / "llm"
MODEL = "gemma-3-270m"


def ask(url: str, **kwargs) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "What is 2+2?"}],
                                          max_tokens=8, temperature=0.0, **kwargs)


def test_main_job_serves_the_real_model_embedded(tmp_path):
    """`python3 dev.py main` runs exactly this file."""
    port = free_port()
    log = tmp_path / "main.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(LLM / "pipeline.py"), "--port", str(port)], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/ready", 300, proc)
        resp = ask(url)
        assert resp.choices[0].message.content.strip()
        assert resp.usage.completion_tokens <= 8 and resp.usage.prompt_tokens > 5
        assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == MODEL
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    text = log.read_text()
    assert "runtime is embedded" in text
    assert f"curl {url}/v1/chat/completions" in text and "from openai import OpenAI" in text


def test_real_model_through_three_processes(spawn, etcd):
    env = {"SERVEMESH_ETCD": etcd.url}
    spawn(LLM / "engine.py", env=env, name="engine")
    spawn(LLM / "processor.py", env=env, name="processor")
    port = free_port()
    front = spawn(LLM / "frontend.py", "--port", str(port), env=env, name="frontend")
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/ready", 300, front)
    first = ask(url)
    again = ask(url)
    assert first.choices[0].message.content.strip()
    assert first.choices[0].message.content == again.choices[0].message.content  # greedy: deterministic
    streamed = "".join(c.choices[0].delta.content or "" for c in ask(url, stream=True) if c.choices)
    assert streamed == first.choices[0].message.content
