"""Work that stops when the client leaves, for answers that are not streamed.

Starlette's ``StreamingResponse`` runs its body next to a disconnect listener; a
plain response has none, so a client that hangs up while its answer is computed
would leave the work running. :func:`unless_disconnected` runs the work next to a
listener on ``receive``; whichever ends first cancels the other, and a departed
client becomes :class:`~servemesh.errors.Cancelled` (499 in the metrics; nobody
reads the answer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

from ...errors import Cancelled

T = TypeVar("T")


async def wait_disconnect(receive: Receive) -> None:
    """Return once the client is gone. Call it only after the request body was read."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """``await work``, cancelled if the client disconnects first."""
    job = asyncio.ensure_future(work)
    listener = asyncio.ensure_future(wait_disconnect(receive))
    try:
        await asyncio.wait((job, listener), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (listener, job):
            if not task.done():
                task.cancel()
        # wait for both to unwind (the job closes its runtime stream), whatever ended us
        await asyncio.wait((job, listener))
    if not listener.cancelled():
        listener.exception()  # retrieved: a listener that failed means the connection is gone too
    if job.cancelled():  # only the listener cancels it: we were not cancelled ourselves
        raise Cancelled("the client disconnected before the answer was ready")
    return job.result()
