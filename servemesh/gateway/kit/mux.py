"""``PathMux``: several surfaces behind one HTTP server, chosen by path prefix.

Each surface keeps its own app, kit rules and error shape (OpenAI's ``{"error": {...}}``
under ``/v1``, KServe's ``{"error": "..."}`` under ``/v2``); everything else, the kit's
``/health``, ``/live``, ``/ready`` and ``/metrics`` included, goes to the default
surface. Surfaces served together share one ``GatewayMetrics`` (``GatewayKit(metrics=)``),
so ``/metrics`` counts them all.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send


class PathMux:
    """``PathMux(default, [("/v2", kserve.app), ("/v1", openai.app)])``: a request whose
    path is a prefix, or under it, goes to that app; anything else to ``default``."""

    def __init__(self, default: ASGIApp, prefixes: Sequence[tuple[str, ASGIApp]] = ()) -> None:
        self.default = default
        self.prefixes = [(p.rstrip("/"), app) for p, app in prefixes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            for prefix, app in self.prefixes:
                if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
                    await app(scope, receive, send)
                    return
        await self.default(scope, receive, send)
