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


class Throttled:
    """Log lines about things outsiders control (malformed frames, bad requests) at
    most ``per_minute`` times a minute per key; the lines held back are counted and
    reported with the next one that goes out."""

    def __init__(self, logger: logging.Logger, per_minute: int = 10, max_keys: int = 1024) -> None:
        self.logger = logger
        self.per_minute = per_minute
        self.max_keys = max_keys
        self._windows: dict[object, tuple[float, int, int]] = {}  # key -> (window start, sent, held back)

    def warning(self, key: object, message: str, *args: object, exc_info: BaseException | None = None) -> None:
        self.log(logging.WARNING, key, message, *args, exc_info=exc_info)

    def log(self, level: int, key: object, message: str, *args: object,
            exc_info: BaseException | None = None) -> None:
        now = time.monotonic()
        start, sent, held = self._windows.get(key, (now, 0, 0))
        if now - start >= 60.0:
            start, sent = now, 0
        if sent >= self.per_minute:
            self._windows[key] = (start, sent, held + 1)
            return
        if len(self._windows) >= self.max_keys and key not in self._windows:
            self._windows.clear()  # bounded memory: forget old keys rather than grow
        self._windows[key] = (start, sent + 1, 0)
        if held:
            message += f" ({held} similar lines suppressed)"
        self.logger.log(level, message, *args, exc_info=exc_info)
