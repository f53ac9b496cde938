"""``uvicorn main:func``: a ``Function`` as an ASGI app with a lifespan.

Built on the function's first ASGI call (never at import). Lifespan startup starts the
service (runtime, object store, ``on_startup``); a failure is reported as
``lifespan.startup.failed``, and uvicorn exits with it. uvicorn answers SIGTERM by
letting requests in flight finish, then sends lifespan shutdown: the service drains
its runtime executions and awaits ``on_shutdown``.
"""

from __future__ import annotations

import logging
from typing import Any

from ...config import Settings
from ...functions.function import Function
from ...functions.serving import FunctionService
from ...runtime import DistributedRuntime
from .api import FunctionApi

log = logging.getLogger("servemesh.functions")


class FunctionAsgi:
    def __init__(self, func: Function) -> None:
        settings = Settings.from_env()
        self.runtime = DistributedRuntime(settings)
        self.service = FunctionService(func, self.runtime)
        self.api = FunctionApi(self.service)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.api.app(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.service.start()
                except Exception as exc:
                    log.error("%s", exc)
                    await self.service.close()
                    await self.runtime.shutdown()
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.runtime.request_shutdown()
                await self.service.drain(self.runtime.settings.drain_timeout)
                await self.service.close()
                await self.runtime.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
