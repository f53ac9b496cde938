"""Principals: 401 without a valid key, 403 outside the grant, list isolation, admins."""

from __future__ import annotations

import json

import pytest

from servemesh import DistributedRuntime
from servemesh.errors import ConfigError
from servemesh.sessions.acl import hash_key

from .sessions_helpers import counter, served


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def principals(tmp_path):
    path = tmp_path / "principals.json"
    path.write_text(json.dumps({"principals": [
        {"name": "alice", "key_sha256": hash_key("alice-key")},
        {"name": "bob", "key_sha256": hash_key("bob-key"), "partitions": ["$self", "shared"]},
        {"name": "ops", "key_sha256": hash_key("ops-key"), "admin": True},
    ]}))
    assert "alice-key" not in path.read_text()  # hashed at rest
    return str(path)


async def test_keys_grants_and_list_isolation(principals):
    async with DistributedRuntime(sessions_principals=principals) as rt, served(counter.app, rt,
                                                                                store="memory://") as c:
        r = await c.post("/counter/getOrCreate", json={"app_id": "x", "partition_key": "alice"})
        assert r.status_code == 401 and "Bearer" in r.json()["error"]
        r = await c.post("/counter/getOrCreate", json={"app_id": "x", "partition_key": "alice"},
                         headers=bearer("wrong"))
        assert r.status_code == 401
        assert (await c.get("/health")).status_code == 200  # probes stay open

        alice, bob, ops = bearer("alice-key"), bearer("bob-key"), bearer("ops-key")
        assert (await c.post("/counter/getOrCreate", json={"app_id": "a", "partition_key": "alice"},
                             headers=alice)).status_code == 200
        for pk in ("bob", "shared"):
            assert (await c.post("/counter/getOrCreate", json={"app_id": "b", "partition_key": pk},
                                 headers=bob)).status_code == 200
        r = await c.post("/counter/getOrCreate", json={"app_id": "a", "partition_key": "bob"}, headers=alice)
        assert r.status_code == 403 and r.json()["error"] == "principal 'alice' may not use partition 'bob'"
        r = await c.post("/counter/add", json={"app_id": "b", "partition_key": "shared"}, headers=alice)
        assert r.status_code == 403
        r = await c.get("/counter/exists", params={"app_id": "b", "partition_key": "bob"}, headers=alice)
        assert r.status_code == 403
        r = await c.post("/counter/fork", json={"app_id": "a", "partition_key": "alice", "new_app_id": "c",
                                                 "new_partition_key": "bob"}, headers=alice)
        assert r.status_code == 403

        def keys(body: dict) -> list[tuple[str, str]]:
            return [(s["partition_key"], s["app_id"]) for s in body["items"]]

        assert keys((await c.get("/counter/list", headers=alice)).json()) == [("alice", "a")]
        assert keys((await c.get("/counter/list", headers=bob)).json()) == [("bob", "b"), ("shared", "b")]
        assert (await c.get("/counter/list", params={"partition_key": "bob"}, headers=alice)).status_code == 403
        assert (await c.get("/counter/partitions", headers=alice)).json()["partitions"] == ["alice"]
        everything = keys((await c.get("/counter/list", headers=ops)).json())
        assert everything == [("alice", "a"), ("bob", "b"), ("shared", "b")]
        assert (await c.post("/counter/add", json={"app_id": "a", "partition_key": "alice"},
                             headers=ops)).status_code == 200


async def test_principals_and_gateway_keys_do_not_mix(principals):
    async with DistributedRuntime(sessions_principals=principals, api_key="k") as rt:
        with pytest.raises(ConfigError, match="not both"):
            async with served(counter.app, rt, store="memory://"):
                pass
