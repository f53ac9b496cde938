"""``TaskSet``: the owner of background tasks. Every task is cancelled and awaited on close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Coroutine, Iterator
from typing import Any, TypeVar

log = logging.getLogger("servemesh.runtime")

T = TypeVar("T")


class TaskSet:
    """Owns tasks that outlive the call that started them.

    Unlike ``asyncio.TaskGroup``, one failing task does not cancel the others (a
    crashing watch must not kill every stream); the failure is logged instead.
    """

    __slots__ = ("_closed", "_name", "_tasks")

    def __init__(self, name: str) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._name = name
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        if self._closed:
            coro.close()
            raise RuntimeError(f"{self._name} is closed; no new tasks")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                log.error("background task %s of %s failed: %r", task.get_name(), self._name, exc,
                          exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def join(self) -> None:
        """Wait until every task running now has finished (without cancelling them)."""
        me = asyncio.current_task()
        pending = {t for t in self._tasks if t is not me}
        if pending:
            await asyncio.wait(pending)

    async def close(self) -> None:
        """Cancel every task and wait for all of them, even if the caller is cancelled."""
        self._closed = True
        if self._tasks:
            await asyncio.shield(self._cancel_all())

    async def _cancel_all(self) -> None:
        pending = set(self._tasks)
        while pending:
            for task in pending:
                task.cancel()
            # a task that swallowed its cancellation is cancelled again, not waited on forever
            _, pending = await asyncio.wait(pending, timeout=1.0)
            for task in pending:
                log.warning("task %s of %s ignored cancellation; cancelling again", task.get_name(), self._name)


async def within(awaitable: Awaitable[T], seconds: float | None) -> T:
    """``await awaitable`` with a time limit (``TimeoutError``).

    Used instead of ``asyncio.wait_for``, which on Python 3.11 can lose a
    cancellation that arrives as the inner call completes."""
    async with asyncio.timeout(seconds):
        return await awaitable


@contextlib.contextmanager
def own_error() -> Iterator[None]:
    """Around a ``TaskGroup``: when one task failed, raise its own error (a
    ``ConfigError`` the command line can print), not a group of one."""
    try:
        yield
    except BaseExceptionGroup as group:
        while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
            group = group.exceptions[0]
        if isinstance(group, BaseExceptionGroup):
            raise
        raise group from None
