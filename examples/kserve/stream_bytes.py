"""A streaming (decoupled) BYTES model over KServe OIP v2: for a TEXT input of one string,
one response per word, each with OUTPUT (BYTES, shape [1]) holding the word, and INDEX
(INT64, shape [1]) its position.

    servemesh gateway examples/kserve/stream_bytes.py:app --http-port 8000 --grpc-port 8001

serves it with REST on :8000 and gRPC on :8001. Streams are reached over gRPC
``ModelStreamInfer`` (tritonclient's ``start_stream`` / ``async_stream_infer``); a REST
``infer`` of a streaming model is refused (400), as Triton refuses it for decoupled models.
"""

from servemesh.capability import App, Context, InferRequest, InferResponse, Stream, TensorSpec

app = App("stream_bytes")


@app.capability(model="words", stream=True, platform="servemesh_python",
                inputs=[TensorSpec("TEXT", "BYTES", [1])],
                outputs=[TensorSpec("OUTPUT", "BYTES", [1]), TensorSpec("INDEX", "INT64", [1])])
def words(request: InferRequest, context: Context, stream: Stream) -> None:
    text = request.as_numpy("TEXT").reshape(-1)[0].decode()
    for i, word in enumerate(text.split()):
        response = InferResponse()
        response.add_output("OUTPUT", "BYTES", [1], data=[word.encode()])
        response.add_output("INDEX", "INT64", [1], data=[i])
        stream.send(response)  # blocks while 64 responses wait (backpressure); raises once the client left


if __name__ == "__main__":
    app.run()
