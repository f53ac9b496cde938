"""The one error mapping, for gRPC surfaces: ``describe``'s HTTP status as a gRPC status code.

Imports grpcio: import this module where a gRPC server is built, not from the kit's
package.
"""

from __future__ import annotations

import grpc

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


def problem_of(exc: BaseException, debug: bool = False) -> tuple[grpc.StatusCode, Problem]:
    """``exc``'s gRPC status code and its problem (the message for the client)."""
    problem = describe(exc, debug=debug, handler_errors=True)
    return GRPC_CODES.get(problem.status, grpc.StatusCode.UNKNOWN), problem
