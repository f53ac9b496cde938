"""``HttpServer``: an ASGI app on a socket inside a servemesh process (gateways, system port)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Generator
from typing import Any

import uvicorn

from ..errors import ConfigError
from .limits import HttpLimits
from .protocol import ConnectionGuard, GuardedProtocol
from .shape import Shape, plain_shape


class _DropClientNoise(logging.Filter):
    """uvicorn logs every malformed request; the guard logs them itself, throttled."""

    NOISE = frozenset({"Invalid HTTP request received.", "Unsupported upgrade request."})

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.NOISE


def _quiet_uvicorn() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropClientNoise) for f in logger.filters):
        logger.addFilter(_DropClientNoise())


class _Server(uvicorn.Server):
    # servemesh owns SIGINT/SIGTERM (graceful drain first); uvicorn must not take them
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A TCP socket listening on ``host:port`` (0 picks a free port).

    Listening from here on: a client that connects before anyone accepts waits in the
    backlog, so a socket made here may be handed to other processes that serve it."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(backlog)
    return sock


class HttpServer:
    """An ASGI app on ``host:port`` (0 picks a free port), started and stopped by its owner.

    ``limits`` bound open connections and the time to each request's head (the body's
    size and time are the app's middleware: ``servemesh.http.limits``); refusals at
    the socket are answered in ``shape``. A gateway gets both from ``kit.http_server``."""

    def __init__(self, app: Any, host: str, port: int, *, limits: HttpLimits | None = None,
                 shape: Shape = plain_shape, access_log: bool = False, sock: socket.socket | None = None) -> None:
        self.limits = limits or HttpLimits.default()
        self.guard = ConnectionGuard(self.limits, shape)
        backlog = max(2048, self.limits.max_connections)
        # ``sock``: a socket already listening, shared with other processes (``--workers``)
        self.sock = sock if sock is not None else listen(host, port, backlog)
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        _quiet_uvicorn()
        config = uvicorn.Config(
            # log_config=None: uvicorn's lines go through servemesh's logging, not a config of its own
            app, log_config=None, log_level="warning", access_log=access_log, lifespan="off",
            timeout_graceful_shutdown=5,
            http=functools.partial(GuardedProtocol, guard=self.guard),  # type: ignore[arg-type, call-arg]
            ws="none",  # no upgrades: every connection stays under the guard
            timeout_keep_alive=self.limits.header_timeout,  # type: ignore[arg-type]
            backlog=backlog)
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
