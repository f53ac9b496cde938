"""``@worker`` and ``run``: the process entry points."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from ..config import Settings
from .distributed import DistributedRuntime

log = logging.getLogger("servemesh.runtime")

P = ParamSpec("P")
T = TypeVar("T")


def worker(
    fn: Callable[..., Awaitable[T]] | None = None, *, settings: Settings | None = None, **overrides: Any,
) -> Any:
    """Decorate ``async def main(runtime, ...)``; calling ``main(...)`` then builds the
    runtime, runs ``main`` until it returns or SIGINT/SIGTERM arrives (graceful
    shutdown; a second signal cancels at once), and closes everything.

    Usable as ``@worker`` or ``@worker(etcd="http://...", transport="nats")``."""

    def decorate(fn: Callable[..., Awaitable[T]]) -> Callable[..., Coroutine[Any, Any, T | None]]:
        @functools.wraps(fn)
        async def run_worker(*args: Any, **kwargs: Any) -> T | None:
            async with DistributedRuntime(settings, **overrides) as runtime:
                return await run_until_signalled(runtime, fn(runtime, *args, **kwargs))

        return run_worker

    return decorate(fn) if fn is not None else decorate


async def run_until_signalled(runtime: DistributedRuntime, main: Awaitable[T],
                              signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)) -> T | None:
    """Run ``main`` next to the runtime; one of ``signals`` or a fatal runtime error shuts
    the runtime down gracefully and then cancels ``main`` if it is still running."""
    loop = asyncio.get_running_loop()
    task: asyncio.Task[T] = asyncio.ensure_future(main)
    received = 0

    def on_signal(signum: int) -> None:
        nonlocal received
        received += 1
        if received == 1:
            log.info("%s received: shutting down gracefully (again to stop at once)",
                     signal.Signals(signum).name)
            runtime.request_shutdown()
        else:
            task.cancel()

    installed = []
    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
    stopped = asyncio.ensure_future(runtime.wait_stopped())
    try:
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
        try:
            result = await task
        except asyncio.CancelledError:
            if not (runtime.is_stopping or received):
                raise
            result = None
    finally:
        stopped.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)
    if runtime.fatal_error is not None:
        raise runtime.fatal_error
    return result


def run(main: Coroutine[Any, Any, T] | Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine (or a zero-argument async function) to completion on uvloop
    when it is installed, else asyncio. For ``if __name__ == "__main__":``."""
    coro = main() if callable(main) else main
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
