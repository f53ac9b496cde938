"""``servemesh sessions serve`` as processes: a service replica and a gateway (etcd between
them), a session stepped, every process restarted, the session still there."""

from __future__ import annotations

import httpx

from servemesh.testing import free_port, wait_http_ok

APP = "examples/sessions/counter.py:app"


def test_a_session_survives_a_restart_of_every_process(spawn, etcd, namespace, tmp_path):
    db = f"sqlite:///{tmp_path}/sessions.db"
    env = {"SERVEMESH_ETCD": etcd.url, "SERVEMESH_SESSIONS_STORE": db}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key = {"app_id": "survivor", "partition_key": "p"}

    def start() -> list:
        service = spawn("-m", "servemesh.cli.main", "sessions", "serve", APP, "--no-gateway", "--namespace", namespace,
                        env=env, name="service")
        gateway = spawn("-m", "servemesh.cli.main", "sessions", "serve", APP, "--no-service", "--port", str(port),
                        "--namespace", namespace,
                        env=env, name="gateway")
        wait_http_ok(f"{url}/ready", 60, gateway)  # ready: the gateway sees a replica
        return [service, gateway]

    procs = start()
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.post("/counter/getOrCreate", json=key).status_code == 200
        assert c.post("/counter/add", json={**key, "amount": 40}).json()["sequence_id"] == 1
    for proc in procs:
        proc.terminate()
    for proc in procs:
        assert proc.wait(30) is not None

    start()
    with httpx.Client(base_url=url, timeout=30) as c:
        session = c.get("/counter/exists", params=key).json()
        assert (session["sequence_id"], session["state"]["total"], session["next_method"]) == (1, 40, "add")
        after = c.post("/counter/add", json={**key, "amount": 2}, headers={"If-Match": "1"}).json()
        assert (after["sequence_id"], after["state"]["total"]) == (2, 42)
        assert [s["sequence_id"] for s in c.get("/counter/history", params=key).json()["steps"]] == [0, 1, 2]
