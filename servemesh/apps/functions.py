"""A typed function in a servemesh process: ``servemesh serve-function DIR``.

:func:`serve_function` serves the HTTP surface at once (``/ready`` is 503), awaits
``on_startup``, serves the runtime endpoint, and reports ready. On shutdown (SIGTERM:
the runtime starts draining) it waits for executions in flight, then awaits
``on_shutdown``, then stops the HTTP server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..functions import Function
from ..functions.serving import FunctionService
from ..gateway.functions import FunctionApi
from ..runtime import DistributedRuntime

log = logging.getLogger("servemesh.functions")


async def serve_function(runtime: DistributedRuntime, func: Function, host: str = "127.0.0.1", port: int = 0,
                         on_ready: Callable[[str], Any] | None = None) -> None:
    """Serve ``func`` until the runtime begins to shut down; ``FunctionStartupError`` if
    ``on_startup`` fails (the caller exits with it)."""
    service = FunctionService(func, runtime)
    api = FunctionApi(service)
    server = api.kit.http_server(host, port)
    server.start()
    try:
        await service.start()
        log.info("function %s %s on %s (POST /execute, GET /metadata)", func.name, func.version, server.url)
        if on_ready is not None:
            on_ready(server.url)
        await runtime.wait_draining()
        await service.drain(runtime.settings.drain_timeout)
    finally:
        await service.close()
        await server.stop()


__all__ = ["serve_function"]
