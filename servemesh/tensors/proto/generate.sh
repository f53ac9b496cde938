#!/usr/bin/env bash
# Regenerates grpc_predict_v2_pb2.py, .pyi and _pb2_grpc.py from grpc_predict_v2.proto.
#
# grpcio-tools is pinned: its protoc (31.1) writes gencode for protobuf 6.31.1, which
# every protobuf runtime from 6.31.1 on (7.x included) loads without a warning, and its
# grpc plugin requires grpcio >= 1.75.1 at import. A newer pin raises both floors.
# Run from anywhere; it uses a throw-away virtualenv, never the project's.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="${GRPC_TOOLS_VENV:-/tmp/servemesh-grpc-tools}"

if [ ! -x "$tools/bin/python" ]; then
    python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet "grpcio-tools==1.75.1"
fi

"$tools/bin/python" -m grpc_tools.protoc -I "$here" \
    --python_out="$here" --pyi_out="$here" --grpc_python_out="$here" \
    "$here/grpc_predict_v2.proto"

# 1. A private descriptor pool: tritonclient, kserve and MLServer each register
#    "inference.*" messages in protobuf's default pool, and a second registration of the
#    same names there fails at import ("duplicate symbol 'inference.ServerLiveRequest'").
#    The wire format does not depend on the pool, so ours lives in its own.
# 2. Messages name their real module, so they pickle and print under servemesh's path.
# 3. The grpc module imports the messages relative to this package.
sed -i \
    -e 's|^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(|# servemesh: a private pool, see generate.sh\n_POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = _POOL.AddSerializedFile(|' \
    -e "s|BuildTopDescriptorsAndMessages(DESCRIPTOR, 'grpc_predict_v2_pb2', _globals)|BuildTopDescriptorsAndMessages(DESCRIPTOR, 'servemesh.tensors.proto.grpc_predict_v2_pb2', _globals)|" \
    "$here/grpc_predict_v2_pb2.py"
sed -i \
    -e 's|^import grpc_predict_v2_pb2 as grpc__predict__v2__pb2$|from . import grpc_predict_v2_pb2 as grpc__predict__v2__pb2|' \
    "$here/grpc_predict_v2_pb2_grpc.py"

grep -q '^_POOL = _descriptor_pool.DescriptorPool()$' "$here/grpc_predict_v2_pb2.py"
grep -q "'servemesh.tensors.proto.grpc_predict_v2_pb2'" "$here/grpc_predict_v2_pb2.py"
grep -q '^from . import grpc_predict_v2_pb2 as grpc__predict__v2__pb2$' "$here/grpc_predict_v2_pb2_grpc.py"
echo "regenerated in $here"
