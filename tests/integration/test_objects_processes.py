"""Two replica processes share objects: one creates them (from a sync handler in a worker
thread, as AnyServe handlers do) and prints the refs as a KServe ``BYTES`` tensor; the
other, a separate interpreter, resolves that tensor. Over NATS JetStream (replicas on
any machine) and over a local directory (replicas on one machine). The processes are
synchronised by their exit and their stdout, nothing else."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

WRITER = r'''
import asyncio, json, sys
import numpy as np
from servemesh.objects import ObjectStoreSettings, open_objects

def handler(objects):  # a synchronous handler, run off the event loop
    return objects.create({"data": "value", "from": "writer"})

async def main():
    async with open_objects(ObjectStoreSettings(location=sys.argv[1], gc_interval=3600)) as objects:
        ref = await asyncio.to_thread(handler, objects)
        array_ref = await objects.acreate(np.arange(12, dtype=np.float32).reshape(3, 4))
    print(json.dumps({"inputs": [
        {"name": "obj_ref", "datatype": "BYTES", "shape": [1], "data": [ref]},
        {"name": "array_ref", "datatype": "BYTES", "shape": [1], "data": [array_ref]},
    ]}))

asyncio.run(main())
'''

READER = r'''
import asyncio, json, sys
import numpy as np
from servemesh.objects import InvalidObjectRef, ObjectStoreSettings, open_objects, ref_from_tensor

def handler(objects, tensor):  # a synchronous handler, run off the event loop
    return objects.get(ref_from_tensor(tensor))

async def main():
    request = json.loads(sys.argv[2])
    tensors = {i["name"]: np.array([d.encode() for d in i["data"]], dtype=object) for i in request["inputs"]}
    async with open_objects(ObjectStoreSettings(location=sys.argv[1], gc_interval=3600)) as objects:
        value = await asyncio.to_thread(handler, objects, tensors["obj_ref"])
        array = await objects.aget(ref_from_tensor(tensors["array_ref"]))
        refused = []
        for bad in ("/etc/passwd", "../../etc/passwd", "obj-../../etc/passwd"):
            try:
                await objects.aget(bad)
            except InvalidObjectRef:
                refused.append(bad)
    print(json.dumps({"value": value, "array": array.tolist(), "dtype": str(array.dtype), "refused": refused}))

asyncio.run(main())
'''


def run(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert done.returncode == 0, f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(params=["jetstream", "local"])
def location(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "objects")
    server = request.getfixturevalue("nats")
    bucket = "t_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16]
    return f"{server.url}?bucket={bucket}"


def test_a_ref_made_in_one_process_is_resolved_in_another(location):
    request = run(WRITER, location)
    assert request["inputs"][0]["data"][0].startswith("obj-")
    answer = run(READER, location, json.dumps(request))
    assert answer["value"] == {"data": "value", "from": "writer"}
    assert answer["array"] == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0, 10.0, 11.0]]
    assert answer["dtype"] == "float32"
    assert answer["refused"] == ["/etc/passwd", "../../etc/passwd", "obj-../../etc/passwd"]
