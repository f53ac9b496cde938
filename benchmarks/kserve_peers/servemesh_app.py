"""The benchmark's add/sub model as a servemesh capability app with an ``async def``
handler (on the event loop; examples/kserve/add_sub.py has a ``def`` one, run in a worker
thread). ``kserve_bench.py --servemesh-app`` picks which one the servemesh rows serve:

    servemesh gateway benchmarks/kserve_peers/servemesh_app.py:app --http-port 8000 --grpc-port 8001
    servemesh serve benchmarks/kserve_peers/servemesh_app.py:app --port 8001   # a replica, gRPC only
"""

from servemesh.capability import App, InferResponse

app = App()


@app.capability(model="add_sub")
async def add_sub(request, context):
    a = request.as_numpy("INPUT0")
    b = request.as_numpy("INPUT1")
    response = InferResponse(request.model_name, model_version=request.model_version, id=request.id)
    response.set_numpy("OUTPUT0", a + b)
    response.set_numpy("OUTPUT1", a - b)
    return response
