"""Heavy-task replica of the capability demo: a slow handler (it runs in a worker
thread, so the replica keeps serving others meanwhile) that leaves its result in the
object store and answers with the ref.

Written for AnyServe; only the import line changed.
"""

import time

from servemesh.capability import AnyServe, Context, ModelInferRequest, ModelInferResponse

app = AnyServe()


@app.capability(type="heavy", gpus=2)
def heavy_handler(request: ModelInferRequest, context: Context) -> ModelInferResponse:
    data = ""
    for tensor in request.inputs:
        if tensor.name == "data" and tensor.contents.bytes_contents:
            data = tensor.contents.bytes_contents[0].decode("utf-8")
    print(f"[heavy] working on {data[:30]!r}")
    time.sleep(0.5)  # the heavy part
    obj_ref = context.objects.create({"input": data, "result": f"Heavy processing completed for: {data}",
                                      "iterations": 1000})
    response = ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id)
    response.add_output(name="result_ref", datatype="BYTES", shape=[1], bytes_contents=[str(obj_ref).encode()])
    response.add_output(name="status", datatype="BYTES", shape=[1], bytes_contents=[b"completed"])
    return response


@app.capability(type="summarize")
def summarize_handler(request: ModelInferRequest, context: Context) -> ModelInferResponse:
    """Not heavy itself: hands the request to a replica with the ``embed`` capability
    (delegation; the chain travels along, loops are refused)."""
    return context.delegate(capability={"type": "embed"})


if __name__ == "__main__":
    app.run()
