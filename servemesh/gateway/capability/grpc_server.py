"""A replica's Open Inference Protocol v2 gRPC server (``ModelInfer``, ``ModelStreamInfer``).

Clients may call a replica directly on its ``--port``, as AnyServe's could. The
capability comes from ``x-capability-*`` metadata (as the HTTP headers); without any,
the replica's only handler of the kind asked for, or the one whose ``model`` (or
``type``) label is the request's ``model_name``. ``x-delegated-from`` and
``x-delegation-depth`` carry a delegation chain. Errors become gRPC status codes
through the kit's one error table (``describe``) and the table below; a request of a
``ModelStreamInfer`` stream that fails gets a response with ``error_message`` and the
stream goes on, as Triton does.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from ...capability import wire
from ...capability.replica import Replica
from ...errors import ServemeshError
from ...runtime import Context as RuntimeContext
from ...tensors import from_proto, to_proto
from ...tensors.proto import grpc_predict_v2_pb2 as pb2
from ...tensors.proto import grpc_predict_v2_pb2_grpc as pb2_grpc
from ..kit.grpc import GRPC_CODES, problem_of

log = logging.getLogger("servemesh.gateway.capability.grpc")

__all__ = ["GRPC_CODES", "ReplicaGrpcServer", "call_from_metadata", "problem_of"]

def call_from_metadata(metadata: Any) -> tuple[dict[str, str], list[str], int]:
    """The labels asked for and the delegation chain, from a call's metadata."""
    raw = [(k.encode("latin-1"), v.encode("utf-8") if isinstance(v, str) else v)
           for k, v in (metadata or ()) if isinstance(k, str)]
    want = wire.want_from_headers(raw)
    values = {k.decode("latin-1"): v.decode("utf-8", "replace") for k, v in raw}
    chain, depth = wire.chain_from_headers(values.get(wire.DELEGATED_FROM), values.get(wire.DELEGATION_DEPTH))
    return want, chain, depth


class _Servicer(pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.debug = replica.runtime.settings.debug_errors
        self.timeout = replica.runtime.settings.request_timeout

    def _context(self, context: grpc.aio.ServicerContext) -> RuntimeContext:
        remaining = context.time_remaining()
        return RuntimeContext(timeout=remaining if remaining is not None and remaining > 0 else self.timeout)

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb2.ServerReadyResponse(ready=not self.replica.runtime.is_stopping)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        names = {str(s.keys.get(k)) for s in self.replica.specs for k in ("model", "type") if k in s.keys}
        return pb2.ModelReadyResponse(ready=request.name in names)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb2.ServerMetadataResponse(name="servemesh", version="2", extensions=["capabilities"])

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        return pb2.ModelMetadataResponse(name=request.name, platform="servemesh-capability")

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            want, chain, depth = call_from_metadata(context.invocation_metadata())
            response = await self.replica.infer(from_proto(request), want, self._context(context), chain, depth)
            return to_proto(response)
        except ServemeshError as exc:
            code, problem = problem_of(exc, self.debug)
            await context.abort(code, problem.message)
        except Exception as exc:  # a bug here, not in a handler (those arrive as RemoteError)
            log.exception("ModelInfer failed")
            code, problem = problem_of(exc, self.debug)
            await context.abort(code, problem.message)

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[Any],
                               context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            want, chain, depth = call_from_metadata(context.invocation_metadata())
        except ServemeshError as exc:
            code, problem = problem_of(exc, self.debug)
            await context.abort(code, problem.message)
            return
        async for request in request_iterator:
            try:
                async for response in self.replica.infer_stream(from_proto(request), want, self._context(context),
                                                                chain, depth):
                    yield pb2.ModelStreamInferResponse(infer_response=to_proto(response))
            except ServemeshError as exc:
                _, problem = problem_of(exc, self.debug)
                yield pb2.ModelStreamInferResponse(error_message=problem.message)


class ReplicaGrpcServer:
    """``server = ReplicaGrpcServer(host, port)`` binds at once (port 0: a free one);
    ``await server.start(replica)`` serves, ``await server.stop()`` ends."""

    def __init__(self, host: str, port: int, *, max_message: int = 64 * 1024 * 1024) -> None:
        options = [("grpc.max_receive_message_length", max_message), ("grpc.max_send_message_length", max_message),
                   ("grpc.so_reuseport", 0)]
        self._server = grpc.aio.server(options=options)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = self._server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot listen for gRPC on {address}")
        self.host = host

    async def start(self, replica: Replica) -> None:
        pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(replica), self._server)
        await self._server.start()

    async def stop(self, grace: float = 5.0) -> None:
        await self._server.stop(grace)
