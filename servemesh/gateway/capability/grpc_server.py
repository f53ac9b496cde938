"""A replica's Open Inference Protocol v2 gRPC server (``ModelInfer``, ``ModelStreamInfer``).

Clients may call a replica directly on its ``--port``, as AnyServe's could. The
capability comes from ``x-capability-*`` metadata (as the HTTP headers); without any,
the replica's only handler of the kind asked for, or the one whose ``model`` (or
``type``) label is the request's ``model_name``. ``x-delegated-from`` and
``x-delegation-depth`` carry a delegation chain; a request that names no capability
(and that the replica cannot guess) is ``INVALID_ARGUMENT``, bytes that are not a
``ModelInferRequest`` too.

Errors become gRPC status codes through the kit's one error table (``kit.grpc``): a
handler's exception is ``INTERNAL`` with its type and message (``KeyError: 'x'``, never a
traceback), as over HTTP. Beside the status, the error's kind and fields travel as
trailing metadata (``x-servemesh-error``), so a ``GrpcConnector`` (an API server's, or
another replica's) rebuilds the exact error: a ``DelegationRefused`` stays a 508 after
any number of gRPC hops. A request of a ``ModelStreamInfer`` stream that fails gets a
response with ``error_message`` and the request's id (the error's kind and fields in its
``x-servemesh-error`` parameter), and the stream goes on, as Triton does.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc

from ...capability import wire
from ...capability.replica import Replica
from ...errors import ServemeshError, ValidationError
from ...runtime import Context as RuntimeContext
from ...runtime.errortable import as_servemesh_error
from ...tensors import from_proto, to_proto
from ...tensors.proto import grpc_predict_v2_pb2 as pb2
from ...tensors.proto import grpc_predict_v2_pb2_grpc as pb2_grpc
from ..kit import ApiError
from ..kit.grpc import (
    ERROR_KEY,
    GRPC_CODES,
    abort,
    add_inference_servicer,
    bind_server,
    error_text,
    parse_request,
    problem_of,
)

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


def _labels(labels: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in labels.items()) + "}"


class _Servicer(pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.debug = replica.runtime.settings.debug_errors
        self.timeout = replica.runtime.settings.request_timeout

    def _context(self, context: grpc.aio.ServicerContext) -> RuntimeContext:
        remaining = context.time_remaining()
        return RuntimeContext(timeout=remaining if remaining is not None and remaining > 0 else self.timeout)

    def _error(self, exc: Exception) -> BaseException:
        """What a caller sees for ``exc``: a handler's own exception (or one of this
        replica's) becomes ``RemoteError``, with its type and message, as over the
        request plane."""
        if not isinstance(exc, (ServemeshError, ApiError)):
            log.debug("a gRPC call of replica %s failed", self.replica.replica_id, exc_info=exc)
        return exc if isinstance(exc, ApiError) else as_servemesh_error(exc, self.replica.unary_path)

    def _serves(self) -> str:
        return ", ".join(_labels(c) for c in self.replica.app.get_capabilities())

    def _named(self, request: Any, want: Mapping[str, str], stream: bool) -> None:
        """Refuse a request that names no capability (when the replica cannot guess it)."""
        if not want and not request.model_name and self.replica.find_by_model("", stream) is None:
            raise ValidationError(
                "the request names no capability: send x-capability-* metadata (x-capability-type: chat) or set "
                f"model_name; replica {self.replica.replica_id} serves {self._serves()}")

    def _models(self) -> list[str]:
        names: list[str] = []
        for spec in self.replica.specs:
            for key in ("model", "type"):
                if key in spec.keys and str(spec.keys[key]) not in names:
                    names.append(str(spec.keys[key]))
        return names

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb2.ServerReadyResponse(ready=not self.replica.runtime.is_stopping)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return pb2.ModelReadyResponse(ready=request.name in self._models())

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb2.ServerMetadataResponse(name="servemesh", version="2", extensions=["capabilities"])

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.name not in self._models():
            await abort(context, ApiError(
                404, f"replica {self.replica.replica_id} serves no model {request.name!r} (models: "
                f"{', '.join(self._models())}; capabilities: {self._serves()})", type="not_found_error"),
                self.debug)
        return pb2.ModelMetadataResponse(name=request.name, platform="servemesh-capability")

    async def ModelInfer(self, data: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = parse_request(data)
            want, chain, depth = call_from_metadata(context.invocation_metadata())
            self._named(request, want, False)
            response = await self.replica.infer(from_proto(request), want, self._context(context), chain, depth)
            return to_proto(response)
        except Exception as exc:
            await abort(context, self._error(exc), self.debug)

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[Any],
                               context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            want, chain, depth = call_from_metadata(context.invocation_metadata())
        except Exception as exc:
            await abort(context, self._error(exc), self.debug)
            return
        async for data in request_iterator:
            request = None
            try:
                request = parse_request(data)
                self._named(request, want, True)
                async for response in self.replica.infer_stream(from_proto(request), want, self._context(context),
                                                                chain, depth):
                    yield pb2.ModelStreamInferResponse(infer_response=to_proto(response))
            except Exception as exc:  # this request failed; the stream goes on
                yield self._failed(request, self._error(exc))

    def _failed(self, request: Any, exc: BaseException) -> Any:
        """A stream's error response: the message, the request's id (as Triton sends it),
        and the error's kind and fields (``x-servemesh-error``) for a servemesh caller."""
        _, problem = problem_of(exc, self.debug)
        response = pb2.ModelInferResponse()
        if request is not None:
            response.id, response.model_name, response.model_version = \
                request.id, request.model_name, request.model_version
        text = error_text(exc)
        if text is not None:
            response.parameters[ERROR_KEY].string_param = text
        return pb2.ModelStreamInferResponse(error_message=problem.message, infer_response=response)


class ReplicaGrpcServer:
    """``server = ReplicaGrpcServer(host, port)`` binds at once (port 0: a free one);
    ``await server.start(replica)`` serves, ``await server.stop()`` ends."""

    def __init__(self, host: str, port: int, *, max_message: int = 64 * 1024 * 1024) -> None:
        self._server, self.port = bind_server(host, port, max_message)
        self.host = host

    async def start(self, replica: Replica) -> None:
        add_inference_servicer(_Servicer(replica), self._server)
        await self._server.start()

    async def stop(self, grace: float = 5.0) -> None:
        await self._server.stop(grace)
