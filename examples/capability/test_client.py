#!/usr/bin/env python3
"""Checks the capability demo (``run_demo.sh``) through its API server, as AnyServe's
test client did, and more: every answer is checked, and errors must be errors.

    python examples/capability/test_client.py [http://127.0.0.1:8080]

Exit status 0 when every check passed.
"""

from __future__ import annotations

import json
import sys

import httpx

API = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"


def tensor(name: str, text: str) -> dict:
    return {"name": name, "datatype": "BYTES", "shape": [1], "contents": {"bytes_contents": [text]}}


def output(body: dict, name: str) -> list:
    for out in body.get("outputs", []):
        if out["name"] == name:
            return next(iter(out["contents"].values()))
    raise AssertionError(f"no output {name!r} in {json.dumps(body)[:200]}")


def infer(http: httpx.Client, labels: dict, inputs: list, **body: str) -> httpx.Response:
    headers = {f"X-Capability-{k.title()}": str(v) for k, v in labels.items()}
    return http.post("/infer/json", headers=headers, json={**body, "inputs": inputs})


def check_health(http: httpx.Client) -> None:
    response = http.get("/health")
    assert response.status_code == 200 and response.json()["status"] == "healthy", response.text


def check_registry(http: httpx.Client) -> None:
    registry = http.get("/registry").json()
    ids = {r["replica_id"] for r in registry["replicas"]}
    assert registry["total"] == len(registry["replicas"]) >= 3, registry
    assert {"replica-chat", "replica-embed", "replica-heavy"} <= ids, ids
    for replica in registry["replicas"]:
        print(f"    {replica['replica_id']}: {replica['capabilities']}")


def check_registration(http: httpx.Client) -> None:
    registered = http.post("/register", json={"replica_id": "test-replica", "endpoint": "localhost:9999",
                                              "capabilities": [{"type": "test", "model": "demo"}]})
    assert registered.status_code == 200 and registered.json()["success"], registered.text
    ids = {r["replica_id"] for r in http.get("/registry").json()["replicas"]}
    assert "test-replica" in ids
    gone = http.request("DELETE", "/unregister", json={"replica_id": "test-replica"})
    assert gone.status_code == 200 and gone.json()["success"], gone.text


def check_chat(http: httpx.Client) -> None:
    response = infer(http, {"type": "chat"}, [tensor("text", "Hello, servemesh!")], model_name="chat")
    assert response.status_code == 200, response.text
    assert output(response.json(), "response") == ["[Chat Response] You said: Hello, servemesh!"]


def check_embed(http: httpx.Client) -> None:
    response = infer(http, {"type": "embed"}, [tensor("text", "Sample text for embedding")], model_name="embed")
    assert response.status_code == 200, response.text
    assert output(response.json(), "embedding") == [25.0, 5.0, 0.5]


def check_heavy(http: httpx.Client) -> None:
    response = infer(http, {"type": "heavy", "gpus": 2}, [tensor("data", "Heavy processing data")])
    assert response.status_code == 200, response.text
    assert output(response.json(), "status") == ["completed"]
    assert output(response.json(), "result_ref")[0].startswith("obj-")


def check_objects(http: httpx.Client) -> None:
    made = infer(http, {"type": "chat", "model": "with-embedding"}, [tensor("text", "kept in the store")])
    assert made.status_code == 200, made.text
    ref = output(made.json(), "obj_ref")[0]
    embedded = infer(http, {"type": "embed"}, [tensor("obj_ref", ref)])  # resolved by another replica
    assert embedded.status_code == 200, embedded.text
    assert output(embedded.json(), "embedding")[0] == float(len(str({"text": "kept in the store",
                                                                     "processed": True})))
    refused = infer(http, {"type": "embed"}, [tensor("obj_ref", "../../etc/passwd")])
    assert refused.status_code == 400, refused.text


def check_delegation(http: httpx.Client) -> None:
    response = infer(http, {"type": "summarize"}, [tensor("text", "delegated")])
    assert response.status_code == 200, response.text
    assert output(response.json(), "embedding") == [9.0, 9.0, 0.5]


def check_unknown(http: httpx.Client) -> None:
    response = infer(http, {"type": "unknown"}, [])
    assert response.status_code == 404, response.text
    assert response.json()["capability"] == {"type": "unknown"} and response.json()["available"]


def check_stream(http: httpx.Client) -> None:
    tokens, finish = [], ""
    with http.stream("POST", "/infer/stream", headers={"X-Capability-Type": "chat"},
                     json={"model_name": "chat", "id": "stream-1", "inputs": [tensor("text", "Tell me a story")]}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            assert not line.startswith("event: error"), line
            if line.startswith("data: "):
                data = json.loads(line[6:])
                tokens.append(output(data, "text_output")[0])
                finish = output(data, "finish_reason")[0]
    assert "".join(tokens) == "Hello world! This is streaming." and finish == "stop", (tokens, finish)


CHECKS = [check_health, check_registry, check_registration, check_chat, check_embed, check_heavy, check_objects,
          check_delegation, check_unknown, check_stream]


def main() -> int:
    failed = 0
    with httpx.Client(base_url=API, timeout=30) as http:
        for check in CHECKS:
            name = check.__name__.removeprefix("check_")
            try:
                check(http)
            except Exception as exc:  # report every check, then fail
                failed += 1
                print(f"[FAIL] {name}: {type(exc).__name__}: {exc}")
            else:
                print(f"[PASS] {name}")
    print(f"{len(CHECKS) - failed}/{len(CHECKS)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
