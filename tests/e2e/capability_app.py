"""A capability app for the end-to-end tests: answers say which replica served them,
a stream can be made slow, and objects can be made and used (``app.run()`` takes the
flags of ``servemesh serve``)."""

import time

from servemesh.capability import App, ModelInferResponse
from servemesh.objects import ref_from_tensor

app = App()


def reply(request, **outputs: str) -> ModelInferResponse:
    response = ModelInferResponse(model_name=request.model_name, id=request.id)
    for name, value in outputs.items():
        response.add_output(name=name, datatype="BYTES", shape=[1], bytes_contents=[value.encode()])
    return response


@app.capability(type="who")
def who(request, context):
    return reply(request, replica=context.replica_id)


@app.capability(type="slow", stream=True)
def slow(request, context, stream):
    """One token at once, then one every 50 ms until the caller leaves."""
    for i in range(2000):
        stream.send(reply(request, token=str(i), replica=context.replica_id))
        time.sleep(0.05)


@app.capability(type="stuck")
def stuck(request, context):
    """Never returns (a call that hangs): the replica must still stop after its drain. It
    first creates the file its input names, so a test knows it is running."""
    open(request.inputs[0].bytes_contents[0].decode(), "w").close()
    while True:
        time.sleep(3600)


@app.capability(type="make")
def make(request, context):
    text = request.inputs[0].bytes_contents[0].decode()
    return reply(request, obj_ref=context.objects.create({"text": text, "by": context.replica_id}))


@app.capability(type="use")
def use(request, context):
    value = context.objects.get(ref_from_tensor(request.inputs[0].bytes_contents))
    return reply(request, text=value["text"], made_by=value["by"], used_by=context.replica_id)


if __name__ == "__main__":
    app.run()
