"""The ``kserve`` package's REST and gRPC inference clients, unmodified, against a
KServe gateway serving the add_sub model; run as a script (kserve's generated protos and
tritonclient's clash in one process): ``python kserve_clients.py HTTP_URL GRPC_ADDRESS``.
Prints one line per check; exits 1 at the first failure."""

from __future__ import annotations

import asyncio
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

A = np.arange(16, dtype=np.float32) * 0.5
B = np.full(16, 3.0, dtype=np.float32)


def request(binary: bool) -> InferRequest:
    inputs = []
    for name, array in (("INPUT0", A), ("INPUT1", B)):
        tensor = InferInput(name, [16], "FP32")
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return InferRequest(model_name="add_sub", infer_inputs=inputs, request_id="kserve-1")


def check(what: str, ok: bool) -> None:
    print(f"{'ok ' if ok else 'FAILED'} {what}", flush=True)
    if not ok:
        raise SystemExit(1)


def outputs(response) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    return {o.name: o.as_numpy() for o in response.outputs}


async def main(http_url: str, grpc_address: str) -> None:
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    try:
        check("REST is_server_live", await rest.is_server_live(http_url) is True)
        check("REST is_server_ready", await rest.is_server_ready(http_url) is True)
        check("REST is_model_ready", await rest.is_model_ready(http_url, "add_sub") is True)
        for binary in (False, True):
            out = outputs(await rest.infer(http_url, request(binary), model_name="add_sub"))
            check(f"REST infer (binary inputs: {binary})", np.array_equal(out["OUTPUT0"], A + B)
                  and np.array_equal(out["OUTPUT1"], A - B))
    finally:
        await rest.close()
    grpc_client = InferenceGRPCClient(grpc_address, timeout=30)
    try:
        check("gRPC is_server_live", await grpc_client.is_server_live() is True)
        check("gRPC is_server_ready", await grpc_client.is_server_ready() is True)
        check("gRPC is_model_ready", await grpc_client.is_model_ready("add_sub") is True)
        response = await grpc_client.infer(request(False))
        out = outputs(response)
        check("gRPC infer", np.array_equal(out["OUTPUT0"], A + B) and np.array_equal(out["OUTPUT1"], A - B)
              and response.id == "kserve-1")
    finally:
        await grpc_client.close()
    print("kserve clients: all checks passed", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
