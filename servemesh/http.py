"""Running an ASGI app inside a servemesh process (system port, gateways)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from typing import Any

import uvicorn


class _Server(uvicorn.Server):
    # servemesh owns SIGINT/SIGTERM (graceful drain first); uvicorn must not take them
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpServer:
    """An ASGI app on ``host:port`` (0 picks a free port), started and stopped by its owner."""

    def __init__(self, app: Any, host: str, port: int, *, access_log: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=access_log, lifespan="off",
                                timeout_graceful_shutdown=5)
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self.sock]),
                                                            name=f"http {self.url}")
        return self._task

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await asyncio.shield(self._task)
        self.sock.close()
