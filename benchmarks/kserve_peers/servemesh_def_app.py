"""The benchmark's add/sub model with a ``def`` handler (run in a worker thread), for
``kserve_bench.py``'s ``servemesh-def`` row: what the thread hand-off costs beside
examples/kserve/add_sub.py's ``async def`` handler (the ``servemesh`` row).

    servemesh gateway benchmarks/kserve_peers/servemesh_def_app.py:app --http-port 8000 --grpc-port 8001
"""

from servemesh.capability import App, InferResponse

app = App()


@app.capability(model="add_sub")
def add_sub(request, context):
    a = request.as_numpy("INPUT0")
    b = request.as_numpy("INPUT1")
    response = InferResponse(request.model_name, model_version=request.model_version, id=request.id)
    response.set_numpy("OUTPUT0", a + b)
    response.set_numpy("OUTPUT1", a - b)
    return response
