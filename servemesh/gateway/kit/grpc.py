"""The one error mapping, for gRPC surfaces: ``describe``'s HTTP status as a gRPC status code.

Also what every OIP v2 gRPC server of servemesh shares: the servicer's registration
(``add_inference_servicer``: ``ModelInfer`` and ``ModelStreamInfer`` get the request's
bytes, so bytes that are not a ``ModelInferRequest`` become ``INVALID_ARGUMENT``, never
an ``UNKNOWN`` from grpcio), and the typed error a servemesh replica sends beside its
status (``x-servemesh-error``: the error table's kind and fields, as trailing metadata
of a call or a parameter of a stream's error response), from which a ``GrpcConnector``
rebuilds the exact error after any number of gRPC hops.

Imports grpcio: import this module where a gRPC server is built, not from the kit's
package.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ...errors import ConfigError, ServemeshError, ValidationError
from ...runtime import errortable
from ...tensors.proto import grpc_predict_v2_pb2 as pb2
from .errors import Problem, describe

#: HTTP status (from the kit's table) -> gRPC status code
GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
    508: grpc.StatusCode.FAILED_PRECONDITION,
}

#: the metadata key (and stream response parameter) carrying a servemesh error's kind and fields
ERROR_KEY = "x-servemesh-error"
#: larger errors travel without it (status code and message only): gRPC peers refuse
#: metadata over 8 KiB by default
MAX_ERROR_BYTES = 4096

SERVICE = "inference.GRPCInferenceService"
#: the methods whose servicer gets the request's bytes (``parse_request``)
RAW_REQUESTS = ("ModelInfer", "ModelStreamInfer")


def problem_of(exc: BaseException, debug: bool = False) -> tuple[grpc.StatusCode, Problem]:
    """``exc``'s gRPC status code and its problem (the message for the client)."""
    problem = describe(exc, debug=debug, handler_errors=True)
    return GRPC_CODES.get(problem.status, grpc.StatusCode.UNKNOWN), problem


# -- typed errors between servemesh processes ----------------------------------------------------
def error_text(exc: BaseException) -> str | None:
    """The ``x-servemesh-error`` value of a servemesh error (``None``: another exception,
    or one too large to travel as metadata)."""
    if not isinstance(exc, ServemeshError):
        return None
    kind, fields = errortable.encode(exc)
    text = json.dumps({"kind": kind, "fields": fields}, ensure_ascii=True, separators=(",", ":"), default=str)
    text = text.replace("\x7f", "\\u007f")  # metadata values are printable ASCII
    return text if len(text) <= MAX_ERROR_BYTES else None


def error_metadata(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """Trailing metadata carrying ``exc`` (empty when it cannot)."""
    text = error_text(exc)
    return () if text is None else ((ERROR_KEY, text),)


def error_from_text(text: str | bytes | None) -> ServemeshError | None:
    """The servemesh error an ``x-servemesh-error`` value names; ``None`` if it is not one."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("kind") not in errortable.KINDS:
        return None
    fields = data.get("fields")
    return errortable.decode(data["kind"], fields if isinstance(fields, dict) else None)


def error_from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> ServemeshError | None:
    """The servemesh error in a call's trailing metadata, if its server sent one."""
    for key, value in metadata or ():
        if key == ERROR_KEY:
            return error_from_text(value)
    return None


async def abort(context: grpc.aio.ServicerContext, exc: BaseException, debug: bool = False,
                typed: bool = True) -> None:
    """End the call with ``exc``'s status code and message (``typed``: and its kind and
    fields as trailing metadata). Raises, as ``context.abort`` does."""
    code, problem = problem_of(exc, debug)
    await context.abort(code, problem.message, trailing_metadata=error_metadata(exc) if typed else ())


# -- the servicer's registration --------------------------------------------------------------
def parse_request(data: bytes | Any) -> Any:
    """The ``ModelInferRequest`` in ``data`` (a message passes as itself)."""
    if not isinstance(data, bytes):
        return data
    try:
        return pb2.ModelInferRequest.FromString(data)
    except DecodeError as exc:
        raise ValidationError(f"the request is not a ModelInferRequest: {exc}") from None


def add_inference_servicer(servicer: Any, server: grpc.aio.Server) -> None:
    """Serve ``servicer`` (a ``GRPCInferenceServiceServicer``) on ``server``, its
    ``ModelInfer`` and ``ModelStreamInfer`` given the request's bytes."""
    handlers = {}
    for method in pb2.DESCRIPTOR.services_by_name[SERVICE.rsplit(".", 1)[1]].methods:
        request_cls = getattr(pb2, method.input_type.name)
        response_cls = getattr(pb2, method.output_type.name)
        deserialize = None if method.name in RAW_REQUESTS else request_cls.FromString
        make = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}[method.client_streaming, method.server_streaming]
        handlers[method.name] = make(getattr(servicer, method.name), request_deserializer=deserialize,
                                     response_serializer=response_cls.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def bind_server(host: str, port: int, max_message: int) -> tuple[grpc.aio.Server, int]:
    """A gRPC server bound to ``host:port`` (0: a free port) and the port it got; a port
    that cannot be had is a ``ConfigError`` that says which."""
    options = [("grpc.max_receive_message_length", max_message), ("grpc.max_send_message_length", max_message),
               ("grpc.so_reuseport", 0)]
    server = grpc.aio.server(options=options)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpcio: "Failed to bind to address ..."
        raise ConfigError(f"cannot listen for gRPC on {address}: {exc} (is the port in use?)") from None
    if not bound:
        raise ConfigError(f"cannot listen for gRPC on {address} (is the port in use?)")
    return server, bound
