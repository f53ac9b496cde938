"""The KServe Open Inference Protocol v2 surfaces, over capability replicas:

- ``service``: what both share (``KServeService``: a model is a capability with a
  ``model=<name>`` label; routing, metadata, Triton's config, index and statistics);
- ``rest``: ``/v2/...`` over HTTP with the binary tensor data extension (``KServeRest``);
- ``grpc_server``: ``inference.GRPCInferenceService`` with ``ModelStreamInfer``
  (``KServeGrpcServer``).

The gRPC module imports grpcio; import it where it is used. See docs/kserve.md.
"""
