"""Tensors of the KServe Open Inference Protocol v2, and their wire forms.

One set of types for every surface that speaks OIP v2 (the KServe REST and gRPC
gateway, the AnyServe-compatible capability gateway, and handlers):

- ``InferTensor``, ``InferRequest`` (``ModelInferRequest``), ``InferResponse``
  (``ModelInferResponse``), ``RequestedOutput``;
- the contents JSON of AnyServe's ``/infer/json``: ``decode_contents_request``,
  ``encode_contents_response`` (and the client-side pair);
- the OIP REST JSON with binary tensor data: ``decode_rest_request``,
  ``encode_rest_response`` (and the client-side pair), ``HEADER_LENGTH``;
- protobuf: ``to_proto``, ``from_proto``; the generated messages are in
  ``servemesh.tensors.proto.grpc_predict_v2_pb2``;
- ``response_from_any`` for what a handler returns or streams;
- ``DATATYPES`` and the BF16 helpers.

The codecs are pure functions without I/O. Importing this package imports numpy and
msgspec; protobuf is imported only by the protobuf functions. See docs/tensors.md.
"""

from .coerce import response_from_any
from .contents_json import (
    decode_contents_request,
    decode_contents_response,
    encode_contents_request,
    encode_contents_response,
)
from .datatypes import DATATYPES, DatatypeInfo, bfloat16_to_float32, datatype_of, float32_to_bfloat16
from .params import Parameters, ParamValue
from .pb_codec import from_proto, to_proto
from .rest import (
    HEADER_LENGTH,
    decode_rest_request,
    decode_rest_response,
    encode_rest_request,
    encode_rest_response,
)
from .tensor import InferTensor, TensorContents
from .types import InferRequest, InferResponse, ModelInferRequest, ModelInferResponse, RequestedOutput

__all__ = [
    "DATATYPES",
    "HEADER_LENGTH",
    "DatatypeInfo",
    "InferRequest",
    "InferResponse",
    "InferTensor",
    "ModelInferRequest",
    "ModelInferResponse",
    "ParamValue",
    "Parameters",
    "RequestedOutput",
    "TensorContents",
    "bfloat16_to_float32",
    "datatype_of",
    "decode_contents_request",
    "decode_contents_response",
    "decode_rest_request",
    "decode_rest_response",
    "encode_contents_request",
    "encode_contents_response",
    "encode_rest_request",
    "encode_rest_response",
    "float32_to_bfloat16",
    "from_proto",
    "response_from_any",
    "to_proto",
]
