"""The capability surfaces (AnyServe-compatible), built on the gateway kit:

- ``api``: the API server (``CapabilityApiServer``): ``/register``, ``/unregister``,
  ``/registry``, ``/infer/json``, ``/infer/stream``, routed by ``X-Capability-*``;
- ``grpc_server``: a replica's OIP v2 gRPC server (``ReplicaGrpcServer``);
- ``grpc_connector``: the request plane's connector to replicas that only speak gRPC.

The gRPC modules import grpcio; import them where they are used. See docs/capability.md.
"""
