"""Capability serving as users run it: `servemesh api-server` and replicas (`servemesh serve
module:app`, `app.run()`) as processes; the demo script and its test client; a replica
killed with SIGKILL mid-traffic and mid-stream; etcd discovery; objects over NATS
JetStream; OIP v2 gRPC on a replica's port. Readiness is polled from /health and
/registry, never slept for."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from servemesh.testing import free_port, wait_http_ok, wait_until

from .conftest import FAST

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "capability"
APP = Path(__file__).resolve().parent / "capability_app.py"


def text_input(name: str, text: str) -> dict:
    return {"inputs": [{"name": name, "datatype": "BYTES", "shape": [1], "contents": {"bytes_contents": [text]}}]}


def output(body: dict, name: str) -> str:
    return next(o for o in body["outputs"] if o["name"] == name)["contents"]["bytes_contents"][0]


def api_server(procs: Callable[..., subprocess.Popen[bytes]], env: dict[str, str] | None = None) -> str:
    port = free_port()
    proc = procs("api-server", "--port", str(port), env=env)
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/health", 60, proc)
    return url


def replica(procs: Callable[..., subprocess.Popen[bytes]], replica_id: str, api: str | None, *extra: str,
            env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A replica of the test app, started with `app.run()` (the flags of `servemesh serve`)."""
    args = ["--port", "0", "--replica-id", replica_id, *extra]
    if api:
        args += ["--api-server", api]
    return procs(*args, script=APP, env=env)


def wait_registry(url: str, check: Callable[[set[str]], bool], timeout: float = 60,
                  procs: list[subprocess.Popen[bytes]] = ()) -> set[str]:
    ids: set[str] = set()

    def there() -> bool:
        nonlocal ids
        for proc in procs:
            assert proc.poll() is None, Path(proc.log_path).read_text()  # type: ignore[attr-defined]
        ids = {r["replica_id"] for r in httpx.get(f"{url}/registry", timeout=5).json()["replicas"]}
        return check(ids)

    wait_until(there, f"the registry at {url} as expected", timeout)
    return ids


@pytest.mark.parametrize("discovery", ["http", "etcd"])
def test_the_demo_script_and_its_test_client(tmp_path, discovery, request):
    port = free_port()
    env = dict(os.environ, API_PORT=str(port), OBJECTS=str(tmp_path / "objects"), PYTHON=sys.executable, **FAST)
    if discovery == "etcd":  # replicas in etcd (leases) too; peers found there
        env.update(SERVEMESH_ETCD=request.getfixturevalue("etcd").url, SERVEMESH_CAPABILITY_NAMESPACE="demo-etcd")
    log = open(tmp_path / "demo.log", "wb")
    demo = subprocess.Popen(["bash", str(EXAMPLES / "run_demo.sh")], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/health", 60, demo)
        wait_registry(url, lambda ids: len(ids) == 4, procs=[demo])
        client = subprocess.run([sys.executable, str(EXAMPLES / "test_client.py"), url], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert client.returncode == 0, client.stdout + client.stderr
        assert "10/10 checks passed" in client.stdout
        # the seed's curl examples, as its README gives them
        for cap, name, text in (("chat", "text", "Hello World"), ("embed", "text", "Sample text"),
                                ("heavy", "data", "Heavy task")):
            answer = httpx.post(f"{url}/infer/json", headers={"X-Capability-Type": cap}, json=text_input(name, text),
                                timeout=30)
            assert answer.status_code == 200 and answer.json()["outputs"], answer.text
    finally:
        os.killpg(demo.pid, signal.SIGTERM)
        demo.wait(30)
    assert "Traceback" not in (tmp_path / "demo.log").read_text()


def test_a_replica_killed_mid_traffic_leaves_routing_and_the_registry(procs):
    url = api_server(procs)
    victim = replica(procs, "victim", url)
    survivor = replica(procs, "survivor", url)
    wait_registry(url, lambda ids: ids == {"victim", "survivor"}, procs=[victim, survivor])
    served: Counter[str] = Counter()
    failures: list[int] = []
    killed_at = 0

    async def worker(http: httpx.AsyncClient) -> None:
        for _ in range(150):
            response = await http.post("/infer/json", headers={"X-Capability-Type": "who"},
                                       json=text_input("x", "hi"))
            if response.status_code != 200:
                failures.append(response.status_code)
                continue
            served[output(response.json(), "replica")] += 1

    async def killer() -> None:
        nonlocal killed_at
        while served["victim"] < 20:  # both replicas are getting traffic
            await asyncio.sleep(0.005)
        victim.send_signal(signal.SIGKILL)
        killed_at = sum(served.values())

    async def traffic() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            await asyncio.gather(killer(), *(worker(http) for _ in range(4)))

    asyncio.run(traffic())
    victim.wait(10)
    assert served["victim"] >= 20 and served["survivor"] >= 20
    # only the requests in flight when it died may fail (as 502/503), never many, never a 200 with nothing
    assert len(failures) <= 4 and set(failures) <= {502, 503}, failures
    assert sum(served.values()) + len(failures) == 600 and killed_at
    ids = wait_registry(url, lambda ids: "victim" not in ids, timeout=15, procs=[survivor])
    assert ids == {"survivor"}
    after = [output(httpx.post(f"{url}/infer/json", headers={"X-Capability-Type": "who"},
                               json=text_input("x", "hi")).json(), "replica") for _ in range(5)]
    assert after == ["survivor"] * 5


def test_a_replica_killed_mid_stream_ends_the_stream_with_an_error_frame(procs):
    url = api_server(procs)
    victim = replica(procs, "streamer", url)
    wait_registry(url, lambda ids: ids == {"streamer"}, procs=[victim])
    events = []
    with httpx.stream("POST", f"{url}/infer/stream", headers={"X-Capability-Type": "slow"},
                      json=text_input("x", "go"), timeout=30) as response:
        assert response.status_code == 200
        name = "message"
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
                name = "message"
                if len(events) == 3:
                    victim.send_signal(signal.SIGKILL)
    assert [n for n, _ in events[:3]] == ["message"] * 3
    last_name, last = events[-1]
    assert last_name == "error" and last["status"] in (502, 503), events[-1]
    assert last["code"] in ("stream_incomplete", "instance_unavailable")


def test_discovery_through_etcd(procs, etcd):
    env = {"SERVEMESH_ETCD": etcd.url, "SERVEMESH_LEASE_TTL": "2", "SERVEMESH_CAPABILITY_NAMESPACE": "cap-etcd"}
    url = api_server(procs, env=env)
    worker = replica(procs, "etcd-replica", None, env=env)  # no --api-server: etcd only
    wait_registry(url, lambda ids: ids == {"etcd-replica"}, procs=[worker])
    entry = httpx.get(f"{url}/registry").json()["replicas"][0]
    assert entry["source"] == "discovery" and {"type": "who"} in entry["capabilities"]
    keys = etcd.etcdctl("get", "--prefix", "--keys-only", "instances/cap-etcd/replica/").split()
    assert len(keys) == 2  # the unary and the streaming endpoint, under the replica's lease
    answer = httpx.post(f"{url}/infer/json", headers={"X-Capability-Type": "who"}, json=text_input("x", "hi"))
    assert answer.status_code == 200 and output(answer.json(), "replica") == "etcd-replica"
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    wait_registry(url, lambda ids: not ids, timeout=20)  # its lease expired
    gone = httpx.post(f"{url}/infer/json", headers={"X-Capability-Type": "who"}, json=text_input("x", "hi"))
    assert gone.status_code == 503 and gone.json()["code"] == "no_instances"


def test_objects_over_jetstream_between_two_replica_processes(procs, nats):
    store = f"{nats.url}?bucket=capability_e2e"
    url = api_server(procs)
    maker = replica(procs, "maker", url, "--object-store", store)
    user = replica(procs, "user", url, "--object-store", store)
    wait_registry(url, lambda ids: ids == {"maker", "user"}, procs=[maker, user])
    made = httpx.post(f"{url}/infer/json", headers={"X-Capability-Type": "make"}, json=text_input("t", "over NATS"))
    assert made.status_code == 200, made.text
    ref = output(made.json(), "obj_ref")
    readers = set()
    for _ in range(4):  # both replicas serve "use": requests go to each in turn
        used = httpx.post(f"{url}/infer/json", headers={"X-Capability-Type": "use"}, json=text_input("obj_ref", ref))
        assert used.status_code == 200, used.text
        body = used.json()
        assert output(body, "text") == "over NATS" and output(body, "made_by") in ("maker", "user")
        readers.add(output(body, "used_by"))
    assert readers == {"maker", "user"}  # so one of them read what the other process wrote


def log_of(proc: subprocess.Popen[bytes]) -> str:
    return Path(proc.log_path).read_text()  # type: ignore[attr-defined]


def test_oip_grpc_on_a_replica_port(procs):
    port = free_port()
    worker = procs("serve", "examples.capability.stream_app:app", "--port", str(port), "--replica-id", "g")
    asyncio.run(grpc_calls(port, worker))


async def grpc_calls(port: int, worker: subprocess.Popen[bytes]) -> None:
    import grpc

    from servemesh.tensors.proto import grpc_predict_v2_pb2 as pb2
    from servemesh.tensors.proto import grpc_predict_v2_pb2_grpc as pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb2_grpc.GRPCInferenceServiceStub(channel)
        deadline = time.monotonic() + 60
        while True:  # readiness: the gRPC server answers ServerReady
            assert worker.poll() is None, log_of(worker)
            try:
                if (await stub.ServerReady(pb2.ServerReadyRequest(), timeout=1)).ready:
                    break
            except grpc.aio.AioRpcError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        request = pb2.ModelInferRequest(model_name="echo", id="e-1")
        request.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"hi")
        echo = await stub.ModelInfer(request)  # chosen by model_name: no metadata needed
        assert echo.id == "e-1" and echo.outputs[0].contents.bytes_contents[0] == b"Echo: hi"
        labelled = await stub.ModelInfer(request, metadata=[("x-capability-type", "echo")])
        assert labelled.outputs[0].contents.bytes_contents[0] == b"Echo: hi"

        stream = stub.ModelStreamInfer(iter([pb2.ModelInferRequest(model_name="chat", id="s-1")]),
                                       metadata=[("x-capability-type", "chat")])
        tokens = []
        async for message in stream:
            assert not message.error_message
            outputs = {o.name: o.contents.bytes_contents[0] for o in message.infer_response.outputs}
            tokens.append(outputs["text_output"].decode())
        assert "".join(tokens) == "Hello world! This is streaming." and outputs["finish_reason"] == b"stop"

        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.ModelInfer(request, metadata=[("x-capability-type", "nothing")])
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        failing = stub.ModelStreamInfer(iter([pb2.ModelInferRequest(model_name="chat")]),
                                        metadata=[("x-capability-type", "nothing")])
        errors = [m.error_message async for m in failing]
        assert len(errors) == 1 and "nothing" in errors[0]


def test_start_up_mistakes_are_one_line_errors_not_tracebacks_or_endless_retries(procs):
    """A port out of range, a port in use, a token too short, an API server that refuses
    the registration: each stops the command at once with one line that says what."""
    url = api_server(procs)
    taken = url.rsplit(":", 1)[1]

    def run(*args: str, script: Path | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, str(script), *args] if script else [sys.executable, "-m", "servemesh.cli.main", *args]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, **FAST))

    for args in (["serve", f"{APP}:app", "--port", "70000"], ["serve", f"{APP}:app", "--port", "-5"],
                 ["api-server", "--port", "70000"]):
        out = run(*args)
        assert out.returncode == 2 and "--port" in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
    assert run("--port", "70000", script=APP).returncode == 2  # app.run()'s flags

    in_use = run("api-server", "--port", taken)
    assert in_use.returncode == 1 and f"cannot listen on 127.0.0.1:{taken}" in in_use.stderr, in_use.stderr
    assert "Traceback" not in in_use.stderr
    grpc_in_use = run("serve", f"{APP}:app", "--port", taken)
    assert grpc_in_use.returncode == 1 and "cannot listen for gRPC" in grpc_in_use.stderr, grpc_in_use.stderr
    assert "Traceback" not in grpc_in_use.stderr

    short = run("--port", "0", "--api-server", url, "--token", "abc", script=APP)
    assert short.returncode == 1 and "8 to 256 characters" in short.stderr, short.stderr

    refused = run("--port", "0", "--api-server", url + "/nowhere", script=APP)
    assert refused.returncode == 1 and "(404)" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr


def test_sigterm_stops_a_replica_whose_def_handler_never_returns(procs, tmp_path):
    url = api_server(procs)
    running = tmp_path / "handler-running"
    proc = replica(procs, "stuck", url, env={"SERVEMESH_DRAIN_TIMEOUT": "1"})
    wait_registry(url, lambda ids: ids == {"stuck"}, procs=[proc])

    answers: list[object] = []

    def call() -> None:
        try:
            answers.append(httpx.post(f"{url}/infer/json", headers={"X-Capability-Type": "stuck"},
                                      json=text_input("t", str(running)), timeout=30))
        except httpx.HTTPError as exc:
            answers.append(exc)

    import threading

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    wait_until(lambda: answers or running.exists(), "the stuck handler running", 30)
    assert not answers, answers
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert "still running after the drain" in Path(proc.log_path).read_text()  # type: ignore[attr-defined]

