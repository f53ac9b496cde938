"""Chat replica of the capability demo: two chat handlers, one of which keeps its input
in the object store.

Written for AnyServe; only the import line changed (``from anyserve import ...``).
"""

from servemesh.capability import AnyServe, Context, ModelInferRequest, ModelInferResponse

app = AnyServe()


def _text(request: ModelInferRequest, name: str = "text") -> str:
    for tensor in request.inputs:
        if tensor.name == name and tensor.bytes_contents:
            return tensor.bytes_contents[0].decode("utf-8")
        if tensor.name == name and tensor.contents.bytes_contents:
            return tensor.contents.bytes_contents[0].decode("utf-8")
    return ""


def _reply(request: ModelInferRequest, text: str) -> ModelInferResponse:
    response = ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id)
    response.add_output(name="response", datatype="BYTES", shape=[1], bytes_contents=[text.encode("utf-8")])
    return response


@app.capability(type="chat", model="demo")
def chat_handler(request: ModelInferRequest, context: Context) -> ModelInferResponse:
    """Echo the text back."""
    text = _text(request)
    print(f"[chat] received {text!r}")
    return _reply(request, f"[Chat Response] You said: {text}")


@app.capability(type="chat", model="with-embedding")
def chat_with_embedding_handler(request: ModelInferRequest, context: Context) -> ModelInferResponse:
    """Store the text as an object, then read it back: the ref works on every replica."""
    text = _text(request)
    obj_ref = context.objects.create({"text": text, "processed": True})
    stored = context.objects.get(obj_ref)
    print(f"[chat+embed] stored {stored!r} as {obj_ref}")
    response = _reply(request, f"[Chat+Embed Response] Processed: {stored['text']}")
    response.add_output(name="obj_ref", datatype="BYTES", shape=[1], bytes_contents=[obj_ref.encode()])
    return response


if __name__ == "__main__":
    app.run()
