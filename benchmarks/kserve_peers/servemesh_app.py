"""The benchmark's add/sub model as a servemesh capability app (a replica answers OIP v2
gRPC ``ModelInfer`` on its ``--port``):

    servemesh serve benchmarks/kserve_peers/servemesh_app.py:app --port 8001
"""

from servemesh.capability import App, InferResponse

app = App()


@app.capability(type="addsub", model="addsub")
async def addsub(request, context):
    a = request.as_numpy("INPUT0")
    b = request.as_numpy("INPUT1")
    response = InferResponse(request.model_name, model_version=request.model_version, id=request.id)
    response.set_numpy("OUTPUT0", a + b)
    response.set_numpy("OUTPUT1", a - b)
    return response
