"""The gateway kit: what every HTTP surface over the runtime shares.

- :class:`GatewayKit`: health/live/ready, Prometheus metrics, admission control,
  request ids, exception handlers; ``kit.install(app)``.
- :func:`describe` / :func:`status_of`: the one mapping from errors to HTTP.
- :func:`event`, :data:`DONE`, :func:`event_stream`: server-sent events.
- :class:`PathMux`: several surfaces behind one server, by path prefix.
- :class:`Peers`: one of several worker processes serving one port (``kit.join``).
"""

from .errors import ApiError, Problem, Shape, describe, status_of
from .gateway import OPS_ROUTES, GatewayKit, plain_shape
from .metrics import GatewayMetrics, merge_expositions
from .mux import PathMux
from .peers import Peers
from .sse import DONE, SSE_HEADERS, event, event_stream

__all__ = [
    "DONE",
    "OPS_ROUTES",
    "SSE_HEADERS",
    "ApiError",
    "GatewayKit",
    "GatewayMetrics",
    "PathMux",
    "Peers",
    "Problem",
    "Shape",
    "describe",
    "event",
    "event_stream",
    "merge_expositions",
    "plain_shape",
    "status_of",
]
