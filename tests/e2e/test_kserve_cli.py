"""The KServe gateway as users run it: the examples' documented commands (`servemesh gateway
examples/kserve/<model>.py:app --http-port P --grpc-port Q`), and a gateway in front of
replica processes (`servemesh serve ... --api-server URL`), called with Triton's clients and,
in a process of their own (their protos clash with tritonclient's), kserve's. Readiness is
polled from the gateway's endpoints, never slept for."""

from __future__ import annotations

import queue
import re
import shlex
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp

from servemesh.testing import free_port, wait_http_ok, wait_until

from .conftest import ROOT

EXAMPLES = ROOT / "examples" / "kserve"
KSERVE_CLIENTS = Path(__file__).resolve().parent / "kserve_clients.py"
TEST_APP = "tests/integration/kserve_apps.py:app"
A = np.arange(16, dtype=np.float32) * 0.5
B = np.full(16, 3.0, dtype=np.float32)
Procs = Callable[..., subprocess.Popen[bytes]]


def documented_command(example: Path) -> list[str]:
    """The `servemesh gateway ...` line of the example's docstring, as documented."""
    found = re.search(r"^\s*(servemesh gateway .+)$", example.read_text(), re.MULTILINE)
    assert found, f"{example} documents no `servemesh gateway` command"
    return shlex.split(found.group(1))


def with_ports(command: list[str], http_port: int, grpc_port: int) -> list[str]:
    args = list(command[1:])  # after `servemesh`
    args[args.index("--http-port") + 1] = str(http_port)
    args[args.index("--grpc-port") + 1] = str(grpc_port)
    return args


def start_gateway(procs: Procs, *args: str) -> tuple[subprocess.Popen[bytes], int, int]:
    http_port, grpc_port = free_port(), free_port()
    proc = procs(*with_ports(["servemesh", *args], http_port, grpc_port))
    wait_http_ok(f"http://127.0.0.1:{http_port}/v2/health/live", 60, proc)
    return proc, http_port, grpc_port


def wait_model(http_port: int, model: str, proc: subprocess.Popen[bytes]) -> None:
    wait_http_ok(f"http://127.0.0.1:{http_port}/v2/models/{model}/ready", 60, proc)


def add_sub_inputs(module: Any) -> list[Any]:
    inputs = []
    for name, array in (("INPUT0", A), ("INPUT1", B)):
        tensor = module.InferInput(name, [16], "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def run_kserve_clients(http_port: int, grpc_port: int) -> None:
    checked = subprocess.run([sys.executable, str(KSERVE_CLIENTS), f"http://127.0.0.1:{http_port}",
                              f"127.0.0.1:{grpc_port}"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "kserve clients: all checks passed" in checked.stdout


def test_the_documented_add_sub_command(procs):
    command = documented_command(EXAMPLES / "add_sub.py")
    assert command[:3] == ["servemesh", "gateway", "examples/kserve/add_sub.py:app"]
    proc, http_port, grpc_port = start_gateway(procs, *command[1:])
    wait_model(http_port, "add_sub", proc)
    http_client = thttp.InferenceServerClient(f"127.0.0.1:{http_port}")
    grpc_client = tgrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        for client, module in ((http_client, thttp), (grpc_client, tgrpc)):
            assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("add_sub")
            result = client.infer("add_sub", add_sub_inputs(module))
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
        assert http_client.get_model_metadata("add_sub")["inputs"][0] == {"name": "INPUT0", "datatype": "FP32",
                                                                          "shape": [16]}
    finally:
        http_client.close()
        grpc_client.close()
    run_kserve_clients(http_port, grpc_port)
    # the capability API is served by the same process
    registry = httpx.get(f"http://127.0.0.1:{http_port}/registry", timeout=10).json()
    assert registry["total"] == 1 and {"model": "add_sub", "version": ["1"]} in registry["replicas"][0]["capabilities"]


def stream_words(client: tgrpc.InferenceServerClient, model: str, text: bytes,
                 on_item: Callable[[Any], None] | None = None) -> tuple[list[bytes], list[str]]:
    """A stream's words and errors, until its final (empty) response or its first error."""
    items: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: items.put((result, error)))
    tensor = tgrpc.InferInput("TEXT", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([text], dtype=object))
    client.async_stream_infer(model, [tensor], request_id="stream-1", enable_empty_final_response=True)
    words: list[bytes] = []
    errors: list[str] = []
    try:
        while True:
            result, error = items.get(timeout=60)
            if error is not None:
                errors.append(str(error))
                return words, errors
            if result.get_response().parameters["triton_final_response"].bool_param:
                return words, errors
            words.append(result.as_numpy("OUTPUT")[0])
            if on_item is not None:
                on_item(words)
    finally:
        client.stop_stream(cancel_requests=True)


def test_the_documented_streaming_command(procs):
    command = documented_command(EXAMPLES / "stream_bytes.py")
    assert command[:3] == ["servemesh", "gateway", "examples/kserve/stream_bytes.py:app"]
    proc, http_port, grpc_port = start_gateway(procs, *command[1:])
    wait_model(http_port, "words", proc)
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        words, errors = stream_words(client, "words", b"streams of words over gRPC")
        assert errors == [] and words == [b"streams", b"of", b"words", b"over", b"gRPC"]
        config = thttp.InferenceServerClient(f"127.0.0.1:{http_port}").get_model_config("words")
        assert config["model_transaction_policy"]["decoupled"] is True
    finally:
        client.close()


@pytest.fixture
def gateway_and_replicas(procs: Procs) -> tuple[int, int, dict[str, subprocess.Popen[bytes]]]:
    """`servemesh gateway` (no app of its own) and two replica processes registered with it."""
    proc, http_port, grpc_port = start_gateway(procs, "gateway", "--http-port", "0", "--grpc-port", "0")
    url = f"http://127.0.0.1:{http_port}"
    replicas = {rid: procs("serve", TEST_APP, "--port", "0", "--replica-id", rid, "--api-server", url)
                for rid in ("kserve-a", "kserve-b")}

    def both_registered() -> bool:
        for replica in (proc, *replicas.values()):
            assert replica.poll() is None, Path(replica.log_path).read_text()  # type: ignore[attr-defined]
        entries = httpx.get(f"{url}/registry", timeout=5).json()["replicas"]
        return {e["replica_id"] for e in entries} == set(replicas)

    wait_until(both_registered, "both replicas registered with the gateway", 60)
    wait_model(http_port, "who", proc)
    return http_port, grpc_port, replicas


def test_a_gateway_in_front_of_replica_processes(gateway_and_replicas):
    http_port, grpc_port, replicas = gateway_and_replicas
    http_client = thttp.InferenceServerClient(f"127.0.0.1:{http_port}", concurrency=4)
    grpc_client = tgrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        served: Counter[bytes] = Counter()
        for _ in range(20):  # in turns or least loaded: both replicas serve
            served[http_client.infer("who", []).as_numpy("REPLICA")[0]] += 1
            served[grpc_client.infer("who", []).as_numpy("REPLICA")[0]] += 1
        assert set(served) == {b"kserve-a", b"kserve-b"}, served
        pending = [http_client.async_infer("add_sub", add_sub_inputs(thttp)) for _ in range(8)]
        for p in pending:
            np.testing.assert_array_equal(p.get_result().as_numpy("OUTPUT1"), A - B)
        words, errors = stream_words(grpc_client, "words", b"one two three")
        assert errors == [] and words == [b"one", b"two", b"three"]
        run_kserve_clients(http_port, grpc_port)

        # a replica killed mid-stream: the stream ends with an error, never short and silent
        killed: list[str] = []

        def kill_after_three(words: list[bytes]) -> None:
            if len(words) == 3 and not killed:
                victim = words[0].decode().rsplit(" ", 1)[-1]
                replicas[victim].send_signal(signal.SIGKILL)
                killed.append(victim)

        words, errors = stream_words(grpc_client, "slow_words", b"go", on_item=kill_after_three)
        assert killed and len(words) >= 3 and len(errors) == 1, (words, errors)
        assert "cut off" in errors[0] or "could not be reached" in errors[0], errors
        survivor = ({"kserve-a", "kserve-b"} - set(killed)).pop()
        replicas[killed[0]].wait(10)
        # the survivor serves everything from now on
        answers = {grpc_client.infer("who", []).as_numpy("REPLICA")[0] for _ in range(10)}
        assert answers == {survivor.encode()}, answers
    finally:
        http_client.close()
        grpc_client.close()
