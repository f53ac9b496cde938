"""Embedding replica of the capability demo: text in (or an object ref), a vector out.

Written for AnyServe; only the import line changed.
"""

from servemesh.capability import AnyServe, Context, ModelInferRequest, ModelInferResponse

app = AnyServe()


@app.capability(type="embed")
def embed_handler(request: ModelInferRequest, context: Context) -> ModelInferResponse:
    """A toy embedding of the text, or of the object an ``obj_ref`` input names."""
    text = ""
    for tensor in request.inputs:
        if tensor.name == "text" and tensor.contents.bytes_contents:
            text = tensor.contents.bytes_contents[0].decode("utf-8")
            break
        if tensor.name == "obj_ref" and tensor.bytes_contents:
            # a ref made by another replica: refs are opaque ids, never paths
            text = str(context.objects.get(tensor.bytes_contents[0].decode("utf-8")))
            break
    print(f"[embed] embedding {text[:50]!r}")
    vector = [float(len(text)), float(len(text) % 10), 0.5]
    response = ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id)
    response.add_output(name="embedding", datatype="FP32", shape=[3], fp32_contents=vector)
    return response


if __name__ == "__main__":
    app.run()
