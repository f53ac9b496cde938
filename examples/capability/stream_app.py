"""Streaming replica of the capability demo: tokens sent one by one as OIP v2 protobuf
stream responses, and an echo built from AnyServe's kserve tensor classes.

Written for AnyServe; only the import lines changed (``anyserve`` ->
``servemesh.capability``, ``anyserve._proto`` -> ``servemesh.tensors.proto``,
``anyserve.kserve`` -> ``servemesh.capability.kserve``).
"""

import time

from servemesh.capability import AnyServe
from servemesh.tensors.proto import grpc_predict_v2_pb2

app = AnyServe()

TOKENS = ["Hello", " ", "world", "!", " ", "This", " ", "is", " ", "streaming", "."]


@app.capability(type="chat", stream=True)
def chat_stream_handler(request, context, stream):
    print(f"[stream] request {request.id!r}")
    for i, token in enumerate(TOKENS):
        last = i == len(TOKENS) - 1
        response = grpc_predict_v2_pb2.ModelStreamInferResponse(
            error_message="",
            infer_response=grpc_predict_v2_pb2.ModelInferResponse(model_name="chat", id=request.id),
        )
        text_output = response.infer_response.outputs.add()
        text_output.name = "text_output"
        text_output.datatype = "BYTES"
        text_output.shape.append(1)
        text_output.contents.bytes_contents.append(token.encode())
        finish = response.infer_response.outputs.add()
        finish.name = "finish_reason"
        finish.datatype = "BYTES"
        finish.shape.append(1)
        finish.contents.bytes_contents.append(b"stop" if last else b"")
        stream.send(response)
        time.sleep(0.01)


@app.capability(type="echo")
def echo_handler(request, context):
    from servemesh.capability.kserve import InferOutputTensor, InferTensorContents, ModelInferResponse

    text = "no input"
    for tensor in request.inputs:
        if tensor.contents.bytes_contents:
            text = tensor.contents.bytes_contents[0].decode("utf-8")
            break
    return ModelInferResponse(
        model_name="echo",
        id=request.id,
        outputs=[InferOutputTensor(name="output", datatype="BYTES", shape=[1],
                                   contents=InferTensorContents(bytes_contents=[f"Echo: {text}".encode()]))],
    )


if __name__ == "__main__":
    app.run()  # the flags of `servemesh serve`: --port, --api-server, --object-store, --replica-id
