"""``Peers``: one gateway worker among several that serve one port (``--workers``).

A scrape of ``/metrics`` on the shared port reaches one worker, chosen by whoever
accepts first, so that worker answers for all of them: it asks every other worker for
its own metrics over a Unix socket in the group's private directory
(``worker-<index>.sock``, each answering with its exposition and closing) and sums them
(:func:`~.metrics.merge_expositions`). A worker that does not answer in time (it is
restarting, or gone) is left out of that scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...log import Throttled

log = logging.getLogger("servemesh.gateway")
throttled = Throttled(log)

#: seconds a worker waits for another's metrics
PEER_TIMEOUT = 2.0


class Peers:
    """``await Peers(index, directory).start(render)``; ``await peers.close()`` when done.

    ``render`` gives this worker's own metrics (bytes in the Prometheus text format)."""

    def __init__(self, index: int, directory: str | Path) -> None:
        self.index = index
        self.directory = Path(directory)
        self.path = self.directory / f"worker-{index}.sock"
        self._server: asyncio.AbstractServer | None = None

    def info(self) -> dict[str, Any]:
        """This worker's identity, for the ``/health`` and ``/ready`` bodies."""
        return {"worker": self.index, "pid": os.getpid()}

    async def start(self, render: Callable[[], bytes]) -> Peers:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                writer.write(render())
                await writer.drain()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

        self.path.unlink(missing_ok=True)  # left by this worker's predecessor, if it died
        self._server = await asyncio.start_unix_server(answer, path=str(self.path))
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            self.path.unlink(missing_ok=True)

    async def gather(self) -> list[bytes]:
        """The other workers' metrics, from those that answer within :data:`PEER_TIMEOUT`."""
        others = sorted(p for p in self.directory.glob("worker-*.sock") if p != self.path)
        found = await asyncio.gather(*(self._fetch(path) for path in others))
        return [text for text in found if text is not None]

    async def _fetch(self, path: Path) -> bytes | None:
        try:
            async with asyncio.timeout(PEER_TIMEOUT):
                reader, writer = await asyncio.open_unix_connection(str(path))
                try:
                    return await reader.read()
                finally:
                    writer.close()
        except (OSError, TimeoutError) as exc:
            throttled.warning(("peer", path.name), "no metrics from %s: %s", path.stem, exc or type(exc).__name__)
            return None
