"""A capability app of models for the KServe gateway tests (``servemesh serve
tests/integration/kserve_apps.py:app`` in the end-to-end ones). Handlers that wait for
their client to leave record it in ``CANCELLED`` (meaningful in the test's own process)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from servemesh.capability import App, Context, InferRequest, InferResponse, Stream, TensorSpec
from servemesh.errors import Cancelled

app = App("kserve-test")
VECTOR = [16]
FP32_IO = {"inputs": [TensorSpec("INPUT0", "FP32", VECTOR), TensorSpec("INPUT1", "FP32", VECTOR)],
           "outputs": [TensorSpec("OUTPUT0", "FP32", VECTOR), TensorSpec("OUTPUT1", "FP32", VECTOR)]}

#: handler name -> set once it started, and once it saw its client leave
STARTED = {name: threading.Event() for name in ("slow", "slow_words", "slow_async_words")}
CANCELLED = {name: threading.Event() for name in STARTED}


@app.capability(model="add_sub", versions=["1"], platform="test_numpy", **FP32_IO)
def add_sub(request: InferRequest) -> InferResponse:
    a, b = request.as_numpy("INPUT0"), request.as_numpy("INPUT1")
    response = InferResponse()
    response.set_numpy("OUTPUT0", a + b)
    response.set_numpy("OUTPUT1", a - b)
    return response


@app.capability(model="add_sub", versions=["2"], platform="test_numpy", **FP32_IO)
def add_sub_v2(request: InferRequest) -> InferResponse:
    a, b = request.as_numpy("INPUT0"), request.as_numpy("INPUT1")
    response = InferResponse()
    response.set_numpy("OUTPUT0", a + b + 1000)
    response.set_numpy("OUTPUT1", a - b - 1000)
    return response


@app.capability(model="echo")
def echo(request: InferRequest) -> InferResponse:
    """Every input back as an output of the same name (undeclared: any tensors)."""
    return InferResponse(outputs=list(request.inputs), parameters=dict(request.parameters))


@app.capability(model="int_double", inputs=[TensorSpec("X", "INT64", [-1, -1])],
                outputs=[TensorSpec("Y", "INT64", [-1, -1])])
def int_double(request: InferRequest) -> InferResponse:
    response = InferResponse()
    response.set_numpy("Y", request.as_numpy("X") * 2)
    return response


@app.capability(model="who")
def who(request: InferRequest, context: Context) -> InferResponse:
    response = InferResponse()
    response.add_output("REPLICA", "BYTES", [1], data=[context.replica_id.encode()])
    return response


@app.capability(model="boom")
def boom(request: InferRequest) -> InferResponse:
    raise KeyError("no such key")


@app.capability(model="words", stream=True, inputs=[TensorSpec("TEXT", "BYTES", [1])],
                outputs=[TensorSpec("OUTPUT", "BYTES", [1]), TensorSpec("INDEX", "INT64", [1])])
def words(request: InferRequest, context: Context, stream: Stream) -> None:
    for i, word in enumerate(request.as_numpy("TEXT").reshape(-1)[0].decode().split()):
        response = InferResponse()
        response.add_output("OUTPUT", "BYTES", [1], data=[word.encode()])
        response.add_output("INDEX", "INT64", [1], data=[i])
        stream.send(response)


@app.capability(model="slow")
async def slow(request: InferRequest, context: Context) -> InferResponse:
    STARTED["slow"].set()
    try:
        await asyncio.sleep(120)
    except asyncio.CancelledError:
        CANCELLED["slow"].set()
        raise
    return InferResponse()


@app.capability(model="slow_words", stream=True)
def slow_words(request: InferRequest, context: Context, stream: Stream) -> None:
    """One word at once, then one every 20 ms until the client leaves (at most 2 minutes)."""
    STARTED["slow_words"].set()
    try:
        for i in range(6000):
            response = InferResponse()
            response.add_output("OUTPUT", "BYTES", [1], data=[f"word{i} from {context.replica_id}".encode()])
            stream.send(response)
            time.sleep(0.02)
    except Cancelled:
        CANCELLED["slow_words"].set()
        raise


@app.capability(model="slow_async_words", stream=True)
async def slow_async_words(request: InferRequest, context: Context):  # type: ignore[no-untyped-def]
    STARTED["slow_async_words"].set()
    try:
        response = InferResponse()
        response.add_output("OUTPUT", "BYTES", [1], data=[b"first"])
        yield response
        await asyncio.sleep(120)
    except asyncio.CancelledError:
        CANCELLED["slow_async_words"].set()
        raise


def vector(seed: int) -> np.ndarray:
    return (np.arange(16, dtype=np.float32) * 0.5 + seed).astype(np.float32)


if __name__ == "__main__":
    app.run()
