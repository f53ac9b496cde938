"""The benchmark's FP32 model over KServe OIP v2: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1
(FP32, shape [16] each).

    servemesh gateway examples/kserve/add_sub.py:app --http-port 8000 --grpc-port 8001

serves it with REST on :8000 and gRPC on :8001 (see docs/kserve.md for calling it with
tritonclient and kserve). More replicas of it join with
``servemesh serve examples/kserve/add_sub.py:app --api-server http://127.0.0.1:8000 --port 0``.
"""

from servemesh.capability import App, InferRequest, InferResponse, TensorSpec

app = App("add_sub")

VECTOR = [16]


@app.capability(model="add_sub", versions=["1"], platform="servemesh_numpy",
                inputs=[TensorSpec("INPUT0", "FP32", VECTOR), TensorSpec("INPUT1", "FP32", VECTOR)],
                outputs=[TensorSpec("OUTPUT0", "FP32", VECTOR), TensorSpec("OUTPUT1", "FP32", VECTOR)])
def add_sub(request: InferRequest) -> InferResponse:
    a = request.as_numpy("INPUT0")
    b = request.as_numpy("INPUT1")
    response = InferResponse()
    response.set_numpy("OUTPUT0", a + b)
    response.set_numpy("OUTPUT1", a - b)
    return response


if __name__ == "__main__":
    app.run()  # a replica: the flags of `servemesh serve` (--api-server URL --port 0)
