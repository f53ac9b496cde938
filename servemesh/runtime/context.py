"""``Context``: what travels with every request: id, metadata, deadline, cancellation."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigError


class Context:
    """Per-request context.

    A client passes one to ``generate(..., context=ctx)``; a handler that accepts a
    second parameter receives the server-side one. Passing a handler's context to a
    downstream call links the two: stopping (or the client cancelling) the upstream
    request stops the downstream one, and the deadline carries over.
    """

    __slots__ = ("_callbacks", "_id", "_stopped", "deadline", "metadata")

    def __init__(
        self,
        id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> None:
        if timeout is not None and deadline is not None:
            raise ConfigError("give a Context either timeout= or deadline=, not both")
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"Context timeout must be positive, not {timeout}")
        self._id = id or None  # made on first use: most in-process calls never ask
        self.metadata: dict[str, Any] = dict(metadata) if metadata else {}
        #: absolute ``time.monotonic()`` deadline, or ``None``.
        self.deadline = deadline if timeout is None else time.monotonic() + timeout
        self._stopped = False
        self._callbacks: list[Callable[[], None]] | None = None

    @property
    def id(self) -> str:
        """The request id; it travels with every downstream call made with this context."""
        if self._id is None:
            self._id = _new_id()
        return self._id

    def remaining(self) -> float | None:
        """Seconds until the deadline (may be negative), or ``None`` without one."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def stop_generating(self) -> None:
        """Ask every stream made with this context to stop; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        callbacks, self._callbacks = self._callbacks, None
        for cb in callbacks or ():
            cb()

    def is_stopped(self) -> bool:
        return self._stopped

    def on_stop(self, cb: Callable[[], None]) -> Callable[[], None]:
        """Run ``cb`` when the context is stopped (at once if it already is).

        Returns a function that removes the callback."""
        if self._stopped:
            cb()
            return _noop
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(cb)

        def remove() -> None:
            if self._callbacks is not None:
                try:
                    self._callbacks.remove(cb)
                except ValueError:
                    pass

        return remove

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "active"
        return f"Context(id={self.id!r}, {state}, remaining={self.remaining()})"



def _noop() -> None:
    return None


_ids = itertools.count(1)
_prefix: list[str] = []


def _new_id() -> str:
    """A process-unique id: a random per-process prefix and a counter (cheap on the hot path)."""
    if not _prefix:
        _prefix.append(uuid.uuid4().hex[:12])
    return f"{_prefix[0]}-{next(_ids):x}"
