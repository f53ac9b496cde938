"""One log format for every servemesh process and the user's own loggers."""

from __future__ import annotations

import logging
import sys
import time

from .config import Settings
from .errors import ConfigError

FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)-5s %(name)s: %(message)s"
DATEFMT = "%Y-%m-%dT%H:%M:%S"

_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
           "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str | int | None = None, *, settings: Settings | None = None) -> None:
    """Install the servemesh line format on the root logger.

    ``level`` defaults to ``SERVEMESH_LOG_LEVEL`` (``debug``, ``info``, ``warning``,
    ``error``). Calling it again replaces the earlier handler."""
    if level is None:
        level = (settings or Settings.from_env()).log_level
    if isinstance(level, str):
        try:
            level = _LEVELS[level.lower()]
        except KeyError:
            raise ConfigError(f"unknown log level {level!r}: use debug, info, warning or error") from None
    formatter = logging.Formatter(FORMAT, DATEFMT)
    formatter.converter = time.gmtime
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_servemesh", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler._servemesh = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    if level > logging.DEBUG:
        # third-party chatter stays at warning unless debugging everything
        for noisy in ("grpc", "asyncio", "nats", "uvicorn.access"):
            logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
