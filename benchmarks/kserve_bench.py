"""KServe Open Inference Protocol v2: servemesh beside MLServer, the kserve ModelServer and Triton.

    PYTHONPATH=. python benchmarks/kserve_bench.py [--duration 3] [--runs 2] [--servers ...]
        [--servemesh-tree PATH]     # the servemesh checkout to measure (PYTHONPATH=PATH too)

The model: two FP32 [16] inputs INPUT0 and INPUT1, outputs OUTPUT0 = INPUT0 + INPUT1 and
OUTPUT1 = INPUT0 - INPUT1, named ``add_sub`` everywhere (benchmarks/kserve_peers/ has it
for every peer; servemesh serves examples/kserve/add_sub.py). Each server is asked once
over each protocol and its answer checked before anything is timed; then req/s, p50 and
p99 at concurrency 1 and 32 over

- REST: ``POST /v2/models/add_sub/infer`` with the OIP v2 JSON body (``data`` lists), from
  a raw asyncio HTTP/1.1 keep-alive client (uvloop, one connection per concurrent caller,
  the request bytes built once);
- gRPC: ``inference.GRPCInferenceService/ModelInfer`` with ``raw_input_contents`` (as
  tritonclient sends it), from grpc.aio on one channel, the request serialized once and
  the answer left undecoded (typed ``contents`` instead when a server refuses raw ones).

The same client drives every server; its CPU time is reported beside each row (and the
server's, all its processes added up), so a client that saturates is seen.

Servers (all started first, then measured in turn, row by row, alternating the order,
so that drifting background load spreads over all of them):

- ``servemesh``: ``servemesh gateway examples/kserve/add_sub.py:app`` of
  ``--servemesh-tree`` (default this checkout): OIP v2 REST and gRPC, the app served in
  the gateway's process (its handler is ``async def``: on the event loop, as the peers'
  predict methods are); ``--servemesh-cmd`` / ``--servemesh-app`` change what is started;
- ``servemesh-def``: the same gateway serving kserve_peers/servemesh_def_app.py, whose
  handler is a ``def`` (it runs in a worker thread);
- ``servemesh-async`` (not by default): the same gateway serving kserve_peers/servemesh_app.py,
  an ``async def`` handler without declared metadata;
- ``servemesh-remote``: the gateway with no app, and the app in a replica process
  (``servemesh serve ... --api-server``) that registered with it;
- ``servemesh-replica``: that replica's own OIP v2 gRPC port, no gateway in front;
- ``servemesh-capability``: the capability API server's ``/infer/json`` (contents JSON)
  in front of a replica; not OIP v2 REST, shown only when the tree has no gateway;
- ``mlserver``: MLServer with a custom ``MLModel`` runtime, in-process inference
  (``parallel_workers`` 0, ``--mlserver-workers``: MLServer 1.7.1's default of 1 fails
  to load the model with uvloop 0.23, and is 2-3x slower on this model with uvloop 0.21);
- ``kserve``: the ``kserve`` package's ``ModelServer`` with a ``kserve.Model``;
- ``triton``: the ``tritonserver`` that ``nvidia-pytriton`` bundles, serving a Python-backend
  model (``model.py``, Triton's add_sub example) from a model repository, one instance;
- ``pytriton``: the same Triton with the function bound by pytriton (the Python backend's
  stub hands each request over pytriton's proxy to the function in another process).

A server that does not start gets a line saying why (its log's last errors) instead of rows.

Per-request logging is off everywhere (MLServer: ``MLSERVER_DEBUG=false``; kserve:
``--enable_latency_logging false --configure_logging false``). The peers are never
installed next to servemesh (they pin other fastapi / pydantic / grpcio versions): each
gets its own virtual environment under ``--peers-dir`` (default
``$XDG_CACHE_HOME/servemesh-bench`` or ``~/.cache/servemesh-bench``), made with pip on
first use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from procs import stop_group, tree_cpu  # benchmarks/ is on sys.path when a benchmark runs as a script

from servemesh.tensors.proto import grpc_predict_v2_pb2 as pb2

ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(__file__).resolve().parent / "kserve_peers"
MODEL = "add_sub"
A = np.arange(16, dtype=np.float32) * 0.5  # exactly representable, so the answers compare exactly
B = 1.0 + np.arange(16, dtype=np.float32) * 0.25
SUM, DIFF = A + B, A - B
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"

#: peer -> (pip requirement, module that proves the install)
PEER_PACKAGES = {"mlserver": ("mlserver", "mlserver"), "kserve": ("kserve", "kserve"),
                 "triton": ("nvidia-pytriton", "pytriton"), "pytriton": ("nvidia-pytriton", "pytriton")}
PY_SPY = ("py-spy", "os")  # --profile's sampler: a binary, in its own venv too
DEFAULT_SERVERS = ["servemesh", "servemesh-def", "servemesh-remote", "servemesh-replica", "mlserver", "kserve",
                   "triton", "pytriton"]


# -- bodies -----------------------------------------------------------------------------------------
def rest_body() -> bytes:
    return json.dumps({"inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [16], "data": A.tolist()},
        {"name": "INPUT1", "datatype": "FP32", "shape": [16], "data": B.tolist()},
    ]}, separators=(",", ":")).encode()


def capability_body() -> bytes:
    return json.dumps({"model_name": MODEL, "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [16], "contents": {"fp32_contents": A.tolist()}},
        {"name": "INPUT1", "datatype": "FP32", "shape": [16], "contents": {"fp32_contents": B.tolist()}},
    ]}, separators=(",", ":")).encode()


def grpc_request(model: str, raw: bool = True) -> pb2.ModelInferRequest:
    request = pb2.ModelInferRequest(model_name=model)
    for name, values in (("INPUT0", A), ("INPUT1", B)):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[16])
        if raw:
            request.raw_input_contents.append(values.tobytes())
        else:
            tensor.contents.fp32_contents.extend(values.tolist())
    return request


def check_outputs(outputs: dict[str, np.ndarray]) -> None:
    for name, want in (("OUTPUT0", SUM), ("OUTPUT1", DIFF)):
        got = outputs.get(name)
        if got is None:
            raise ValueError(f"no {name} in the answer (got {sorted(outputs)})")
        if got.size != 16 or not np.array_equal(got.reshape(-1), want):
            raise ValueError(f"{name} is {got.tolist()}, not {want.tolist()}")


def check_rest_answer(body: bytes) -> None:
    answer = json.loads(body)
    outputs = {}
    for out in answer.get("outputs", []):
        data = out["data"] if "data" in out else out.get("contents", {}).get("fp32_contents", [])
        outputs[out["name"]] = np.asarray(data, dtype=np.float32).reshape(-1)
    check_outputs(outputs)


def check_grpc_answer(response: pb2.ModelInferResponse) -> str:
    """Checks the answer; says whether its outputs came raw or typed."""
    outputs = {}
    for i, out in enumerate(response.outputs):
        if response.raw_output_contents:
            outputs[out.name] = np.frombuffer(response.raw_output_contents[i], dtype="<f4")
        else:
            outputs[out.name] = np.asarray(out.contents.fp32_contents, dtype=np.float32)
    check_outputs(outputs)
    return "raw" if response.raw_output_contents else "typed"


# -- the REST client --------------------------------------------------------------------------------
def http_request(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def read_http_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected answer: {head[:300]!r}")
    lower = head.lower()
    at = lower.find(b"content-length:")
    if at >= 0:
        return await reader.readexactly(int(head[at + 15:head.index(b"\r\n", at)]))
    if b"transfer-encoding: chunked" not in lower:
        raise RuntimeError(f"an answer with neither Content-Length nor chunks: {head[:300]!r}")
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append((await reader.readexactly(size + 2))[:-2])


async def rest_once(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await read_http_answer(reader)
    finally:
        writer.close()


async def _rest_worker(port: int, data: bytes, start: float, stop: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (t0 := time.perf_counter()) < stop:
            writer.write(data)
            await read_http_answer(reader)
            if t0 >= start:
                latencies.append(time.perf_counter() - t0)
    finally:
        writer.close()


async def rest_load(port: int, data: bytes, concurrency: int, duration: float, warmup: float) -> list[float]:
    latencies: list[float] = []
    start = time.perf_counter() + warmup
    await asyncio.gather(*(_rest_worker(port, data, start, start + duration, latencies)
                           for _ in range(concurrency)))
    return latencies


# -- the gRPC client --------------------------------------------------------------------------------
def grpc_channel(port: int):  # -> grpc.aio.Channel
    import grpc

    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", -1)])


async def grpc_once(port: int, request: pb2.ModelInferRequest) -> pb2.ModelInferResponse:
    from servemesh.tensors.proto import grpc_predict_v2_pb2_grpc as pb2_grpc

    async with grpc_channel(port) as channel:
        return await pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)


async def grpc_load(port: int, data: bytes, concurrency: int, duration: float, warmup: float) -> list[float]:
    latencies: list[float] = []
    async with grpc_channel(port) as channel:
        call = channel.unary_unary(INFER_METHOD)  # bytes in, bytes out: no client-side protobuf work
        start = time.perf_counter() + warmup
        stop = start + duration

        async def worker() -> None:
            while (t0 := time.perf_counter()) < stop:
                await call(data, timeout=30)
                if t0 >= start:
                    latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies




# -- the servers --------------------------------------------------------------------------------
@dataclass
class Server:
    name: str
    cmd: list[str]
    env: dict[str, str]
    cwd: Path
    http_port: int | None = None  # OIP v2 REST (or the capability API server)
    grpc_port: int | None = None
    model: str = MODEL
    ready_url: str | None = None
    rest_path: str = f"/v2/models/{MODEL}/infer"
    rest_body: bytes = b""
    rest_headers: dict[str, str] = field(default_factory=dict)
    note: str = ""
    companions: list[Server] = field(default_factory=list)  # started after it (the capability replica)
    registry_url: str | None = None  # wait until a replica is registered there
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    failed: str | None = None
    grpc_data: bytes = b""
    grpc_form: str = ""

    def protocols(self) -> list[str]:
        return [p for p, port in (("REST", self.http_port), ("gRPC", self.grpc_port)) if port]


def log_tail(path: Path | None, lines: int = 6) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").strip().splitlines()
    errors = [line for line in text if "rror" in line or "xception" in line]
    return " | ".join((errors or text)[-lines:])[-600:]


def start_server(server: Server, logs: Path, timeout: float, started: list[Server]) -> None:
    """Starts it (and its companions), returns once the model is ready on every port."""
    from servemesh.testing import wait_http_ok, wait_until

    server.log = logs / f"{server.name}.log"
    with open(server.log, "wb") as out:
        server.proc = subprocess.Popen(server.cmd, cwd=server.cwd, env=server.env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
    started.append(server)
    if server.ready_url:
        wait_http_ok(server.ready_url, timeout, server.proc)
    for companion in server.companions:
        start_server(companion, logs, timeout, started)
    if server.registry_url:
        wait_registered(server, timeout)
    if server.grpc_port:
        def grpc_ready() -> bool:
            from servemesh.tensors.proto import grpc_predict_v2_pb2_grpc as pb2_grpc

            async def ask() -> bool:
                async with grpc_channel(server.grpc_port) as channel:
                    stub = pb2_grpc.GRPCInferenceServiceStub(channel)
                    return bool((await stub.ModelReady(pb2.ModelReadyRequest(name=server.model), timeout=1)).ready)

            try:
                return asyncio.run(ask())
            except Exception:
                return False

        wait_until(grpc_ready, f"{server.name} gRPC ModelReady", timeout, server.proc)


def wait_registered(server: Server, timeout: float) -> None:
    import urllib.request

    from servemesh.testing import wait_until

    def registered() -> bool:
        with urllib.request.urlopen(server.registry_url, timeout=2) as response:
            return bool(json.load(response)["total"] >= 1)

    wait_until(registered, f"a replica registered with {server.name}", timeout, server.proc)


def stop_server(server: Server) -> None:
    proc, server.proc = server.proc, None
    stop_group(proc)


def ensure_venv(peers_dir: Path, package: tuple[str, str], install: bool) -> Path:
    """The venv of ``package`` (pip requirement, module proving the install), made with pip on first use;
    its python."""
    requirement, module = package
    venv = peers_dir / requirement
    python = venv / "bin" / "python"
    works = python.exists() and subprocess.run([str(python), "-c", f"import {module}"],
                                               capture_output=True).returncode == 0
    if works and (package != PY_SPY or (venv / "bin" / "py-spy").exists()):
        return python
    if not install:
        raise RuntimeError(f"no venv with {requirement} in {venv} (run without --no-install to make it)")
    print(f"  making {venv} (pip install {requirement}) ...", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", requirement], check=True)
    return python


def version_of(python: Path, dist: str) -> str:
    found = subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
                           capture_output=True, text=True)
    return found.stdout.strip() or "?"


def servemesh_app(args: argparse.Namespace, tree: Path) -> str:
    if args.servemesh_app:
        return args.servemesh_app
    example = tree / "examples" / "kserve" / "add_sub.py"
    return f"{example}:app" if example.exists() else f"{PEERS / 'servemesh_app.py'}:app"


def servemesh_gateway_cmd(args: argparse.Namespace, tree: Path, app: str | None, http_port: int,
                          grpc_port: int) -> list[str] | None:
    if not args.servemesh_cmd and not (tree / "servemesh" / "cli" / "gateway.py").exists():
        return None
    template = args.servemesh_cmd or ("{python} -m servemesh.cli.main gateway {app} --http-port {http_port} "
                                      "--grpc-port {grpc_port} --log-level warning")
    return shlex.split(template.format(python=sys.executable, http_port=http_port, grpc_port=grpc_port,
                                       tree=tree, app=app or ""))


def make_servers(args: argparse.Namespace, names: list[str]) -> tuple[list[Server], list[tuple[str, str]],
                                                                       dict[str, str]]:
    """(servers to start, [(name, why it is not there)], {package: version})"""
    from servemesh.testing import free_port

    tree = Path(args.servemesh_tree).resolve()
    sm_env = dict(os.environ, PYTHONPATH=str(tree) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    sm_env.pop("SERVEMESH_ETCD", None)
    sm = [sys.executable, "-m", "servemesh.cli.main"]
    peers_dir = Path(args.peers_dir).expanduser()
    servers: list[Server] = []
    missing: list[tuple[str, str]] = []
    app = servemesh_app(args, tree)
    versions = {"servemesh tree": f"{tree} ({git_head(tree)})", "servemesh app": app}
    for name in names:
        if name in ("servemesh", "servemesh-async", "servemesh-def", "servemesh-remote"):
            http, grpc_ = free_port(), free_port()
            local = name != "servemesh-remote"
            served = (f"{PEERS / 'servemesh_app.py'}:app" if name == "servemesh-async" else
                      f"{PEERS / 'servemesh_def_app.py'}:app" if name == "servemesh-def" else app)
            cmd = servemesh_gateway_cmd(args, tree, served if local else None, http, grpc_)
            if cmd is None:
                missing.append((name, f"no OIP v2 gateway in {tree} (no servemesh gateway, no --servemesh-cmd)"))
                continue
            replicas = [] if local else [Server(f"{name}-replica", [
                *sm, "serve", app, "--port", "0", "--api-server", f"http://127.0.0.1:{http}", "--log-level",
                "warning"], sm_env, tree)]
            servers.append(Server(name, cmd, sm_env, tree, http_port=http, grpc_port=grpc_,
                                  ready_url=f"http://127.0.0.1:{http}/v2/health/live",
                                  note=("gateway, the async def app (kserve_peers/servemesh_app.py) in its process"
                                        if name == "servemesh-async" else
                                        "gateway, the def app (kserve_peers/servemesh_def_app.py) in its process"
                                        if name == "servemesh-def" else "gateway, the app served in its process"
                                        if local else "gateway -> a replica process (request plane)"),
                                  companions=replicas, registry_url=None if local else
                                  f"http://127.0.0.1:{http}/registry"))
        elif name == "servemesh-replica":
            port = free_port()
            servers.append(Server(name, [*sm, "serve", app, "--port", str(port), "--log-level", "warning"],
                                  sm_env, tree, grpc_port=port, note="a replica's own gRPC port, no gateway"))
        elif name == "servemesh-capability":
            api = free_port()
            replica = Server("servemesh-capability-replica", [
                *sm, "serve", app, "--port", "0", "--api-server", f"http://127.0.0.1:{api}", "--replica-id", "bench",
                "--log-level", "warning"], sm_env, tree)
            servers.append(Server(name, [*sm, "api-server", "--port", str(api), "--log-level", "warning"], sm_env,
                                  tree, http_port=api, ready_url=f"http://127.0.0.1:{api}/health",
                                  rest_path="/infer/json", rest_body=capability_body(),
                                  rest_headers={"X-Capability-Model": MODEL},
                                  note="API server /infer/json (contents JSON) -> replica", companions=[replica],
                                  registry_url=f"http://127.0.0.1:{api}/registry"))
        elif name in PEER_PACKAGES:
            try:
                python = ensure_venv(peers_dir, PEER_PACKAGES[name], not args.no_install)
            except (RuntimeError, subprocess.CalledProcessError) as exc:
                missing.append((name, f"not installed: {exc}"))
                continue
            versions[PEER_PACKAGES[name][0]] = version_of(python, PEER_PACKAGES[name][0])
            http, grpc_ = free_port(), free_port()
            env = dict(os.environ)
            env.pop("PYTHONPATH", None)
            ready = f"http://127.0.0.1:{http}/v2/models/{MODEL}/ready"
            if name == "mlserver":
                env.update(MLSERVER_HOST="127.0.0.1", MLSERVER_HTTP_PORT=str(http), MLSERVER_GRPC_PORT=str(grpc_),
                           MLSERVER_METRICS_PORT=str(free_port()), MLSERVER_DEBUG="false",
                           MLSERVER_PARALLEL_WORKERS=str(args.mlserver_workers))
                servers.append(Server(name, [str(python.parent / "mlserver"), "start", "."], env, PEERS / "mlserver",
                                      http_port=http, grpc_port=grpc_, ready_url=ready,
                                      note=f"MLModel runtime, parallel_workers={args.mlserver_workers}"))
            elif name == "kserve":
                servers.append(Server(name, [str(python), "kserve_addsub.py", "--model_name", MODEL,
                                             "--http_port", str(http), "--grpc_port", str(grpc_),
                                             "--enable_latency_logging", "false", "--configure_logging", "false"],
                                      env, PEERS, http_port=http, grpc_port=grpc_, ready_url=ready,
                                      note="kserve.Model on kserve.ModelServer"))
            elif name == "triton":
                servers.append(Server(name, [str(python), "triton_python_backend.py", "--http-port", str(http),
                                             "--grpc-port", str(grpc_), "--metrics-port", str(free_port())],
                                      env, PEERS, http_port=http, grpc_port=grpc_, ready_url=ready,
                                      note="Triton, Python backend (model.py), one instance"))
            else:  # pytriton
                # The Python backend stub links libpython3.X.so from the loader's path; a venv built on another
                # build of the same minor version (pyenv's, here) needs its own first, or the stub runs that
                # venv's standard library on the system's older interpreter and the model fails to load.
                libdir = subprocess.run(
                    [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                    capture_output=True, text=True).stdout.strip()
                if libdir:
                    env["LD_LIBRARY_PATH"] = libdir + os.pathsep + env.get("LD_LIBRARY_PATH", "")
                servers.append(Server(name, [str(python), "pytriton_addsub.py", "--http-port", str(http),
                                             "--grpc-port", str(grpc_), "--metrics-port", str(free_port())],
                                      env, PEERS, http_port=http, grpc_port=grpc_, ready_url=ready,
                                      note="Triton + pytriton: the Python backend hands requests to a bound "
                                           "function in another process"))
        else:
            raise SystemExit(f"unknown server {name!r}")
    for server in servers:
        if not server.rest_body:
            server.rest_body = rest_body()
    return servers, missing, versions


def git_head(tree: Path) -> str:
    found = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    return found.stdout.strip()[:70] or "not a git tree"


# -- the run ----------------------------------------------------------------------------------------
@dataclass
class Result:
    rps: float
    p50: float
    p99: float
    client_cpu: float  # % of one core
    server_cpu: float


def run_row(server: Server, protocol: str, concurrency: int, duration: float, warmup: float) -> Result:
    pids = [s.proc.pid for s in (server, *server.companions) if s.proc]
    server_cpu0 = sum(tree_cpu(p) for p in pids)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if protocol == "REST":
        import uvloop

        data = http_request(server.rest_path, server.rest_body, server.rest_headers)
        latencies = uvloop.run(rest_load(server.http_port, data, concurrency, duration, warmup))
    else:
        latencies = asyncio.run(grpc_load(server.grpc_port, server.grpc_data, concurrency, duration, warmup))
    wall = time.perf_counter() - wall0
    # CPU over the whole call (warm-up included): a rate, so the warm-up hardly moves it
    client = (time.process_time() - cpu0) / wall * 100
    serving = (sum(tree_cpu(p) for p in pids) - server_cpu0) / wall * 100
    latencies.sort()
    n = len(latencies)
    return Result(n / duration, latencies[n // 2] * 1000, latencies[min(n - 1, int(n * 0.99))] * 1000, client,
                  serving)


def verify(server: Server) -> None:
    """One request per protocol, its answer checked; picks raw or typed gRPC inputs."""
    if server.http_port:
        import uvloop

        body = uvloop.run(rest_once(server.http_port, http_request(server.rest_path, server.rest_body,
                                                                  server.rest_headers)))
        check_rest_answer(body)
    if server.grpc_port:
        errors = []
        for raw in (True, False):
            request = grpc_request(server.model, raw)
            try:
                out = check_grpc_answer(asyncio.run(grpc_once(server.grpc_port, request)))
            except Exception as exc:
                errors.append(f"{'raw' if raw else 'typed'} inputs: {exc}")
                continue
            server.grpc_data = request.SerializeToString()
            server.grpc_form = f"{'raw' if raw else 'typed'} in, {out} out"
            return
        raise RuntimeError("; ".join(errors))


# -- --profile: where a servemesh server's time goes ----------------------------------------------------
#: (layer, substrings of a frame that belong to it), innermost frame first; the first layer that matches wins
LAYERS = [
    ("the model (a + b, a - b)", ("add_sub (",)),
    ("OIP REST JSON decode / encode", ("tensors/rest.py", "_jsonbody.py")),
    ("protobuf <-> tensors", ("pb_codec.py",)),
    ("in-process hop: contents JSON encode / decode", ("capability/wire.py", "contents_json.py")),
    ("tensor objects (InferTensor, numpy)", ("tensors/tensor.py", "datatypes.py", "tensors/types.py", "numpy",
                                             "coerce.py")),
    ("def handler's worker-thread hop", ("concurrent/futures", "threading.py", "handlers.py:12")),
    ("routing + request plane", ("routing.py", "runtime/client.py", "runtime/serving.py", "transport/",
                                 "replica.py", "handlers.py", "catalog.py", "capability/models.py")),
    ("gateway glue (KServe service, stats, disconnect, mux, metrics)", ("gateway/kserve/", "gateway/kit/",
                                                                         "prometheus")),
    ("HTTP/1.1 (uvicorn h11, servemesh.http)", ("h11/", "uvicorn/", "servemesh/http/")),
    ("grpcio server (C core, Cython)", ("grpc/", "cygrpc")),
    ("asyncio / uvloop", ("asyncio/", "uvloop", "loop.c", "_asynciomodule")),
]
IDLE_LEAVES = ("epoll_wait", "epoll_pwait", "pthread_cond", "sem_wait", "sem_clockwait", "__lll_lock_wait", "futex",
               "poll (libc", "select (libc")


def layer_shares(path: Path) -> tuple[int, list[tuple[str, float]]]:
    """(busy samples, [(layer, share)]) of a py-spy raw profile: samples whose innermost frame is a wait
    (or an unnamed libc address: futex waits, mostly) are idle and left out."""
    import collections
    import re

    counts: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        leaf = frames[-1]
        if any(i in leaf for i in IDLE_LEAVES) or re.fullmatch(r"0x[0-9a-f]+ \(libc[^)]*\)", leaf):
            continue
        layer = next((name for f in reversed(frames) for name, marks in LAYERS if any(m in f for m in marks)),
                     "other")
        counts[layer] += int(n)
    busy = sum(counts.values())
    return busy, [(k, v / busy) for k, v in counts.most_common()] if busy else []


def profile(server: Server, args: argparse.Namespace, logs: Path, py_spy: Path) -> None:
    """py-spy on the server's main process while this client loads it (not timed: sampling slows it)."""
    for protocol in args.protocols:
        if protocol not in server.protocols():
            continue
        for concurrency in args.concurrency:
            out = logs / f"profile-{server.name}-{protocol}-c{concurrency}.txt"
            spy = subprocess.Popen([str(py_spy), "record", "-p", str(server.proc.pid), "-d", str(args.profile),
                                    "-r", "100", "--native", "-f", "raw", "-o", str(out)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.5)
            run_row(server, protocol, concurrency, args.profile + 0.5, 0.2)
            _, err = spy.communicate(timeout=60)
            if not out.exists():
                print(f"  profile {server.name} {protocol} c={concurrency}: py-spy failed: "
                      f"{err.decode(errors='replace').strip()[-300:]}")
                continue
            busy, shares = layer_shares(out)
            print(f"\n{server.name} {protocol} c={concurrency}: {busy} busy samples ({out})")
            for name, share in shares:
                print(f"  {share:6.1%}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds timed per row and run")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of load before each timed row")
    parser.add_argument("--runs", type=int, default=2, help="runs per row (interleaved; the median is shown)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--protocols", nargs="+", default=["REST", "gRPC"], choices=["REST", "gRPC"])
    parser.add_argument("--servers", nargs="+", default=None,
                        help=f"default: {' '.join(DEFAULT_SERVERS)} (plus servemesh-capability while there is no "
                             "gateway)")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "servemesh-bench"
    parser.add_argument("--peers-dir", default=str(cache), help="where the peers' venvs live [%(default)s]")
    parser.add_argument("--no-install", action="store_true", help="skip peers whose venv is not there yet")
    parser.add_argument("--servemesh-tree", default=str(ROOT),
                        help="the servemesh checkout to serve from (PYTHONPATH) [%(default)s]")
    parser.add_argument("--servemesh-app", default=None,
                        help="the capability app the servemesh rows serve (default: the tree's "
                             "examples/kserve/add_sub.py:app, else benchmarks/kserve_peers/servemesh_app.py:app)")
    parser.add_argument("--servemesh-cmd", default=None,
                        help="the gateway's command; {python} {app} {http_port} {grpc_port} {tree} are filled in "
                             "({app} is empty for servemesh-remote) [servemesh gateway {app} --http-port ...]")
    parser.add_argument("--mlserver-workers", type=int, default=0, help="MLServer's parallel_workers [0]")
    parser.add_argument("--profile", type=int, default=0, metavar="SECONDS",
                        help="after the table, py-spy each servemesh server this long per row (untimed) and "
                             "print where its time goes, by layer (py-spy gets its own venv in --peers-dir)")
    parser.add_argument("--start-timeout", type=float, default=120)
    parser.add_argument("--logs", default=None, help="folder for the servers' output [a temporary one]")
    args = parser.parse_args()

    names = args.servers or list(DEFAULT_SERVERS)
    logs = Path(args.logs or tempfile.mkdtemp(prefix="kserve-bench-"))
    logs.mkdir(parents=True, exist_ok=True)
    servers, missing, versions = make_servers(args, names)
    if args.servers is None and not any(s.name == "servemesh" for s in servers):
        more, more_missing, _ = make_servers(args, ["servemesh-capability"])
        servers[len([s for s in servers if s.name.startswith("servemesh")]):0] = more
        missing += more_missing
    print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"server logs in {logs}")
    for package, version in versions.items():
        print(f"  {package}: {version}")
    started: list[Server] = []
    try:
        for server in servers:
            t0 = time.perf_counter()
            try:
                start_server(server, logs, args.start_timeout, started)
                verify(server)
                print(f"  {server.name}: up in {time.perf_counter() - t0:.1f}s, answers checked"
                      f"{f' (gRPC: {server.grpc_form})' if server.grpc_port else ''}", flush=True)
            except Exception as exc:
                detail = log_tail(server.log)
                server.failed = f"{type(exc).__name__}: {exc}" + (f" -- log: {detail}" if detail else "")
                print(f"  {server.name}: did not start: {server.failed}", flush=True)
                for s in (server, *server.companions):
                    stop_server(s)
        live = [s for s in servers if not s.failed]
        time.sleep(1)
        idle = {s.name: sum(tree_cpu(p.proc.pid) for p in (s, *s.companions) if p.proc) for s in live}
        time.sleep(2)
        idle_pct = {s.name: (sum(tree_cpu(p.proc.pid) for p in (s, *s.companions) if p.proc) - idle[s.name]) / 2 * 100
                    for s in live}
        print("  idle CPU of the servers: " + ", ".join(f"{k} {v:.0f}%" for k, v in idle_pct.items()), flush=True)

        results: dict[tuple[str, str, int], list[Result]] = {}
        for protocol in args.protocols:
            for concurrency in args.concurrency:
                for run in range(args.runs):
                    order = live if run % 2 == 0 else live[::-1]
                    for server in order:
                        if protocol not in server.protocols():
                            continue
                        key = (server.name, protocol, concurrency)
                        try:
                            r = run_row(server, protocol, concurrency, args.duration, args.warmup)
                        except Exception as exc:
                            print(f"  {server.name} {protocol} c={concurrency}: failed: {exc!r} "
                                  f"{log_tail(server.log)}", flush=True)
                            continue
                        results.setdefault(key, []).append(r)
                        print(f"  {server.name:<22} {protocol:<4} c={concurrency:<3} {r.rps:>9,.0f} req/s  "
                              f"p50 {r.p50:7.2f} ms  p99 {r.p99:7.2f} ms  client CPU {r.client_cpu:4.0f}%  "
                              f"server CPU {r.server_cpu:4.0f}% ({r.server_cpu * 1e4 / r.rps:.0f} µs/req)", flush=True)
        report(args, servers, missing, results)
        if args.profile:
            try:
                py_spy = ensure_venv(Path(args.peers_dir).expanduser(), PY_SPY, not args.no_install).parent / "py-spy"
            except (RuntimeError, subprocess.CalledProcessError) as exc:
                print(f"\nno profile: {exc}")
            else:
                print("\nWhere the time goes (py-spy --native; idle samples left out; each sample to the innermost "
                      "frame of a layer):")
                for server in live:
                    if server.name.startswith("servemesh"):
                        profile(server, args, logs, py_spy)
    finally:
        for server in reversed(started):
            stop_server(server)


def median_result(results: list[Result]) -> Result:
    return Result(*(statistics.median(getattr(r, f) for r in results)
                    for f in ("rps", "p50", "p99", "client_cpu", "server_cpu")))


def verdict(m: Result, protocol: str, concurrency: int, medians: dict[tuple[str, str, int], Result]) -> str:
    """The issue's target for one row: ahead of MLServer and the kserve ModelServer (more req/s and a lower
    p50), within 2x of Triton's Python backend (at least half its req/s, at most twice its p50)."""
    misses, checked = [], 0
    for peer in ("mlserver", "kserve"):
        p = medians.get((peer, protocol, concurrency))
        if p is not None:
            checked += 1
            if m.rps <= p.rps or m.p50 >= p.p50:
                misses.append(f"behind {peer}")
    t = medians.get(("triton", protocol, concurrency))
    if t is not None:
        checked += 1
        if m.rps < t.rps / 2 or m.p50 > 2 * t.p50:
            misses.append("not within 2x of triton")
    if not checked:
        return "-"
    return "met" if not misses else ", ".join(misses)


def report(args: argparse.Namespace, servers: list[Server], missing: list[tuple[str, str]],
           results: dict[tuple[str, str, int], list[Result]]) -> None:
    medians = {k: median_result(v) for k, v in results.items()}
    print(f"\n{args.runs} run(s) of {args.duration:g} s per row, interleaved; median shown. CPU: % of one core, "
          "client = this process (the load generator), server = all its processes; CPU per request = server CPU "
          "/ req/s, which moves less than req/s when other work takes the cores.\n")
    print("| server | protocol | c | req/s | p50 ms | p99 ms | client CPU | server CPU | server CPU per request |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for protocol in args.protocols:
        for concurrency in args.concurrency:
            for server in servers:
                r = medians.get((server.name, protocol, concurrency))
                if r is not None:
                    print(f"| {server.name} | {protocol} | {concurrency} | {r.rps:,.0f} | {r.p50:.2f} | {r.p99:.2f} | "
                          f"{r.client_cpu:.0f}% | {r.server_cpu:.0f}% | {r.server_cpu * 1e4 / r.rps:.0f} µs |")
    for server in servers:
        if server.failed:
            print(f"| {server.name}: did not start: {server.failed[:300]} ||||||||")
    for name, why in missing:
        print(f"| {name}: {why} ||||||||")

    ours = [s.name for s in servers if s.name.startswith("servemesh") and not s.failed]
    peers = [s.name for s in servers if not s.name.startswith("servemesh") and not s.failed]
    if ours and peers:
        print("\nservemesh / peer: req/s ratio (above 1: servemesh serves more), p50 ratio (peer p50 / servemesh "
              "p50, above 1: servemesh answers sooner)\n")
        print("| servemesh | protocol | c | " + " | ".join(f"vs {p}" for p in peers) + " | target |")
        print("|---|---|---:|" + "---:|" * len(peers) + "---|")
        for protocol in args.protocols:
            for concurrency in args.concurrency:
                for mine in ours:
                    m = medians.get((mine, protocol, concurrency))
                    if m is None:
                        continue
                    cells = []
                    for peer in peers:
                        p = medians.get((peer, protocol, concurrency))
                        cells.append(f"{m.rps / p.rps:.2f}x / {p.p50 / m.p50:.2f}x" if p else "-")
                    target = verdict(m, protocol, concurrency, medians)
                    print(f"| {mine} | {protocol} | {concurrency} | " + " | ".join(cells) + f" | {target} |")
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (on {os.cpu_count()} CPUs)")
    notes = "; ".join(f"{s.name}: {s.note}" + (f", gRPC {s.grpc_form}" if s.grpc_form else "")
                      for s in servers if not s.failed)
    print(f"\n{notes}")


if __name__ == "__main__":
    main()
