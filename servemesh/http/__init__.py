"""HTTP inside a servemesh process: the server, its limits and API keys.

- :class:`HttpServer`: an ASGI app on a socket (uvicorn), with the connection guard
  (``protocol.py``): open connections and the time to a request's head;
  :func:`listen`: a listening socket several processes may serve.
- :class:`HttpLimits`, :class:`BodyLimitMiddleware`: body size (413) and time (408).
- :class:`ApiKeys`, :class:`AuthMiddleware`: ``Authorization: Bearer <key>`` (401).
- :data:`Shape`: how a surface writes an error body; refusals below routing use it too.

Gateways get all of it from the gateway kit; the worker's system port from
``runtime/system.py``.
"""

from .auth import ApiKeys, AuthMiddleware
from .limits import BodyLimitMiddleware, HttpLimits
from .server import HttpServer, listen
from .shape import Shape, plain_shape

__all__ = ["ApiKeys", "AuthMiddleware", "BodyLimitMiddleware", "HttpLimits", "HttpServer", "Shape", "listen",
           "plain_shape"]
