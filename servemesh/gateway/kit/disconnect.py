"""Work that stops when the client leaves, for answers that are not streamed.

A plain response has no disconnect listener, so a client that hangs up while its
answer is computed would leave the work running (the kit's ``EventStream`` uses
the same listener for a stream's body). :func:`unless_disconnected` runs the work with a
listener on ``receive`` beside it; whichever ends first stops the other, and a
departed client becomes :class:`~servemesh.errors.Cancelled` (499 in the metrics;
nobody reads the answer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.types import Receive

from ...errors import Cancelled

T = TypeVar("T")


async def wait_disconnect(receive: Receive) -> None:
    """Return once the client is gone. Call it only after the request body was read."""
    while (await receive())["type"] != "http.disconnect":
        pass


#: seconds of work before a listener for the client's disconnect is started: most answers
#: are ready sooner, and then no listener task is made at all
LISTEN_AFTER = 0.02


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """``await work`` in this task, cancelled if the client disconnects first.

    A listener task watches ``receive`` once the work took ``LISTEN_AFTER`` seconds
    (a fast answer never pays for one). When the client leaves it cancels this task,
    and the cancellation is taken back here (``uncancel``), as ``asyncio.timeout``
    does, and turned into ``Cancelled``; any other cancellation passes through."""
    task = asyncio.current_task()
    assert task is not None
    gone = False
    listening = True
    listener: asyncio.Task[None] | None = None

    def cancel() -> None:
        nonlocal gone
        if listening:  # the work may have ended in the same loop turn: then it stands
            gone = True
            task.cancel(msg="the client disconnected")

    def listen() -> None:
        nonlocal listener
        if listening:
            listener = asyncio.ensure_future(_watch(receive, cancel))

    timer = asyncio.get_running_loop().call_later(LISTEN_AFTER, listen)
    try:
        result = await work
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            raise Cancelled("the client disconnected before the answer was ready") from None
        raise
    else:
        if gone:  # the work swallowed the cancellation and answered: take the request back
            task.uncancel()
        return result
    finally:
        listening = False
        timer.cancel()
        if listener is not None:  # owned: cancelled and awaited
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)


async def _watch(receive: Receive, on_disconnect: Callable[[], None]) -> None:
    try:
        await wait_disconnect(receive)
    except Exception:  # a receive that fails means the connection is gone too
        pass
    on_disconnect()
