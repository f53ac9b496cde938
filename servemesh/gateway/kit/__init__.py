"""The gateway kit: what every HTTP surface over the runtime shares.

- :class:`GatewayKit`: health/live/ready, Prometheus metrics, admission control,
  request ids, exception handlers; ``kit.install(app)``.
- :func:`describe` / :func:`status_of`: the one mapping from errors to HTTP.
- :func:`event`, :data:`DONE`, :func:`event_stream`: server-sent events.
"""

from .errors import ApiError, Problem, Shape, describe, status_of
from .gateway import OPS_ROUTES, GatewayKit, plain_shape
from .sse import DONE, SSE_HEADERS, event, event_stream

__all__ = [
    "DONE",
    "OPS_ROUTES",
    "SSE_HEADERS",
    "ApiError",
    "GatewayKit",
    "Problem",
    "Shape",
    "describe",
    "event",
    "event_stream",
    "plain_shape",
    "status_of",
]
