"""API keys on every HTTP surface (the OpenAI frontend) and on a worker's system port."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import openai
import pytest

from servemesh import DistributedRuntime
from servemesh.apps.llm import start_frontend
from servemesh.errors import ConfigError

from .mock_pipeline import mock_pipeline

ASK = {"model": "mock", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3}
PROBES = ("/health", "/live", "/ready")


def frontend(**settings: object) -> contextlib.AbstractAsyncContextManager[str]:
    return mock_pipeline(**settings)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "invalid_api_key"
    assert response.headers["x-request-id"]


async def test_the_openai_surface_needs_one_of_the_keys_but_probes_stay_open():
    async with frontend(api_key="key-one, key-two") as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        assert_401(await http.post("/v1/chat/completions", json=ASK))
        assert_401(await http.post("/v1/chat/completions", json=ASK, headers=bearer("key-three")))
        assert_401(await http.post("/v1/chat/completions", json=ASK, headers={"Authorization": "key-one"}))
        assert_401(await http.get("/v1/models", headers={"Authorization": "Bearer  key-one"}))
        assert_401(await http.get("/no/such/route"))  # unknown routes reveal nothing without a key
        assert_401(await http.get("/metrics"))
        assert_401(await http.get("/openapi.json"))
        for key in ("key-one", "key-two"):
            ok = await http.post("/v1/chat/completions", json=ASK, headers=bearer(key))
            assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3
        assert (await http.get("/metrics", headers=bearer("key-two"))).status_code == 200
        for probe in PROBES:
            assert (await http.get(probe)).status_code == 200, probe


async def test_the_official_openai_client_with_an_api_key():
    async with frontend(api_key="sk-test") as url:
        good = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)
        bad = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0)
        try:
            answer = await good.chat.completions.create(model="mock", messages=[{"role": "user", "content": "x"}],
                                                        max_tokens=5)
            assert answer.choices[0].message.content == "Hello"
            assert [m.id for m in (await good.models.list()).data] == ["mock"]
            with pytest.raises(openai.AuthenticationError) as refused:
                await bad.models.list()
            assert refused.value.body["code"] == "invalid_api_key"
        finally:
            await good.close()
            await bad.close()


async def test_metrics_can_be_made_public_and_keys_read_from_a_file(tmp_path: Path):
    keys = tmp_path / "keys"
    keys.write_text("# one key per line\n\nfile-key\n")
    async with frontend(api_key_file=str(keys), metrics_public=True) as url, \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        assert (await http.get("/metrics")).status_code == 200
        assert_401(await http.get("/v1/models"))
        assert (await http.get("/v1/models", headers=bearer("file-key"))).status_code == 200


async def test_without_keys_everything_is_open():
    async with frontend() as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        assert (await http.get("/v1/models")).status_code == 200
        assert (await http.get("/metrics")).status_code == 200


async def test_the_system_port_follows_the_same_rule():
    async with DistributedRuntime(system_port=0, api_key="sys-key") as rt:
        assert rt.system_url is not None
        async with httpx.AsyncClient(base_url=rt.system_url, timeout=10) as http:
            for probe in PROBES[:2]:
                assert (await http.get(probe)).status_code == 200, probe
            assert (await http.get("/ready")).status_code == 503  # open, and nothing is served yet
            refused = await http.get("/metrics")
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert "error" in refused.json()
            assert (await http.get("/metrics", headers=bearer("wrong"))).status_code == 401
            assert (await http.get("/metrics", headers=bearer("sys-key"))).status_code == 200
    async with DistributedRuntime(system_port=0, api_key="sys-key", metrics_public=True) as rt:
        assert rt.system_url is not None
        async with httpx.AsyncClient(base_url=rt.system_url, timeout=10) as http:
            assert (await http.get("/metrics")).status_code == 200


async def test_an_unreadable_or_empty_key_file_is_a_config_error(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.write_text("\n# nothing\n")
    for path in (str(tmp_path / "missing"), str(empty)):
        rt = DistributedRuntime(api_key_file=path)
        with pytest.raises(ConfigError, match=r"API key"):
            await start_frontend(await rt.start(), "127.0.0.1", 0)
        await rt.shutdown()
