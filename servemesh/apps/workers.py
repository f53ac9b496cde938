"""Several worker processes serving one port (``--workers N``).

The supervisor (the process the user started) binds the listening socket once and
starts N workers (``multiprocessing``, spawn). Each inherits the socket, builds its
own ``DistributedRuntime`` from the same settings (a client of the same processors,
found in the same discovery) and serves the socket: the kernel hands every new
connection to one of them. The supervisor serves nothing itself.

- Readiness: each worker reports once it serves; the supervisor logs the group's
  address when all have.
- SIGINT or SIGTERM to the supervisor: SIGTERM to every worker, which drains
  gracefully; a second signal is passed on too (workers then stop at once), and
  workers still running ``drain_timeout`` + 10 s later are killed. Workers ignore
  SIGINT: a terminal's Ctrl-C reaches the whole foreground group, and their
  lifecycle is the supervisor's.
- A worker that exits on its own after it served is logged and replaced (same
  index). One that exits before it ever served (bad settings, discovery unreachable)
  stops the group: the supervisor exits with status 1 rather than restart it forever.
- No orphans: each worker watches the supervisor (multiprocessing's parent sentinel,
  a pipe that closes when the supervisor dies, even by SIGKILL) and then shuts down.
- The group's private directory (a temporary one, removed at exit, by the last
  orphaned worker if the supervisor was killed) holds the workers' metrics sockets
  (``gateway/kit/peers.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from ..config import Settings
from ..errors import ConfigError, ServemeshError
from ..http import listen
from ..log import configure_logging
from ..runtime import DistributedRuntime, run
from ..runtime.worker import run_until_signalled

log = logging.getLogger("servemesh.workers")

#: seconds past ``drain_timeout`` before workers that have not stopped are killed
KILL_AFTER = 10.0


@dataclasses.dataclass
class Seat:
    """A worker's place in the group, given to its ``main``."""

    #: 0 .. N-1, kept by a worker that replaces a dead one
    index: int
    #: the shared socket, already listening
    sock: socket.socket
    #: the group's private directory
    directory: str
    #: tell the supervisor this worker serves
    started: Callable[[], None]


Main = Callable[[DistributedRuntime, Seat], Awaitable[None]]


def serve_workers(main: Main, workers: int, host: str, port: int, settings: Settings) -> int:
    """Run ``main(runtime, seat)`` in ``workers`` processes serving one socket on
    ``host:port``, until SIGINT or SIGTERM; the supervisor's exit status. ``main`` must
    be picklable (a module's function, or a ``functools.partial`` of one)."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}")
    if settings.etcd is None:
        raise ConfigError("several workers need discovery they share: run `servemesh up` or set SERVEMESH_ETCD")
    if settings.system_port is not None:
        raise ConfigError("SERVEMESH_SYSTEM_PORT is one port per process: unset it with --workers "
                          "(the frontend serves /health and /metrics itself)")
    sock = listen(host, port, max(2048, settings.http_max_connections))
    directory = tempfile.mkdtemp(prefix="servemesh-workers-")
    try:
        return Supervisor(main, workers, sock, directory, settings).run()
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


@dataclasses.dataclass
class _Worker:
    index: int
    process: BaseProcess
    #: where the worker says it serves; ``None`` once it did (or died first)
    ready: Connection | None
    served: bool = False


class Supervisor:
    """Starts, watches and stops the workers (see the module docstring)."""

    def __init__(self, main: Main, workers: int, sock: socket.socket, directory: str, settings: Settings) -> None:
        self.main = main
        self.size = workers
        self.sock = sock
        self.directory = directory
        self.settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._stopping = False
        self._deadline = float("inf")
        self._status = 0
        self._announced = False

    def run(self) -> int:
        wake, wake_w = socket.socketpair()
        wake.setblocking(False)
        wake_w.setblocking(False)
        # signals only wake the loop below (their numbers arrive on ``wake``); the wake-up fd
        # first, so a signal arriving between the two calls is not lost
        old_fd = signal.set_wakeup_fd(wake_w.fileno())
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for index in range(self.size):
                self._start(index)
            while self._workers:
                self._step(wake)
            return self._status
        finally:
            self._kill_all()  # only after an error of the supervisor's own: none left otherwise
            signal.set_wakeup_fd(old_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake.close()
            wake_w.close()

    def _start(self, index: int) -> None:
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(target=_child, name=f"servemesh-worker-{index}",
                                        args=(self.main, self.settings, index, self.sock, self.directory, writer))
        process.start()
        writer.close()
        self._workers[index] = _Worker(index, process, reader)

    def _step(self, wake: socket.socket) -> None:
        by_sentinel = {w.process.sentinel: w for w in self._workers.values()}
        by_pipe = {w.ready: w for w in self._workers.values() if w.ready is not None}
        timeout = None if not self._stopping else max(0.0, self._deadline - time.monotonic())
        ready = wait([wake, *by_pipe, *by_sentinel], timeout)
        if not ready:  # past the deadline
            log.warning("workers still running %.0f s after they were asked to stop: killing them",
                        self.settings.drain_timeout + KILL_AFTER)
            self._kill_all()
            return
        if wake in ready:
            for _ in wake.recv(64):
                self._stop()
        for pipe, w in by_pipe.items():  # before the exits: a worker may serve and die at once
            if pipe in ready:
                self._on_ready(w)
        for sentinel, w in by_sentinel.items():
            if sentinel in ready:
                self._on_exit(w)

    def _on_ready(self, w: _Worker) -> None:
        assert w.ready is not None
        try:
            w.ready.recv()
            w.served = True
        except EOFError:
            pass  # it died first: its exit says the rest
        w.ready.close()
        w.ready = None
        if not self._announced and all(x.served for x in self._workers.values()):
            self._announced = True
            host, port = self.sock.getsockname()[:2]
            log.info("%d workers serving http://%s:%d", self.size, host, port)

    def _on_exit(self, w: _Worker) -> None:
        w.process.join()
        del self._workers[w.index]
        if w.ready is not None:
            w.ready.close()
        code = w.process.exitcode
        if self._stopping:
            return
        if not w.served:
            log.error("worker %d (pid %s) exited with status %s before it served: stopping", w.index, w.process.pid,
                      code)
            self._status = 1
            self._stop()
            return
        log.warning("worker %d (pid %s) exited with status %s: starting another", w.index, w.process.pid, code)
        self._start(w.index)

    def _stop(self) -> None:
        if not self._stopping:
            log.info("stopping %d workers gracefully (a second signal stops them at once)", len(self._workers))
            self._stopping = True
            self._deadline = time.monotonic() + self.settings.drain_timeout + KILL_AFTER
        for w in self._workers.values():
            if w.process.is_alive():
                w.process.terminate()

    def _kill_all(self) -> None:
        for w in list(self._workers.values()):
            if w.process.is_alive():
                w.process.kill()
            w.process.join()
            if w.ready is not None:
                w.ready.close()
        self._workers.clear()


# -- in a worker --------------------------------------------------------------------------------

def _child(main: Main, settings: Settings, index: int, sock: socket.socket, directory: str,
           ready: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(settings=settings)
    seat = Seat(index, sock, directory, started=lambda: ready.send(True))
    try:
        run(_serve(main, settings, seat))
    except ServemeshError as exc:
        log.error("worker %d: %s", index, exc)
        raise SystemExit(1) from None


async def _serve(main: Main, settings: Settings, seat: Seat) -> None:
    loop = asyncio.get_running_loop()
    parent = multiprocessing.parent_process()
    # readable (at EOF) once the supervisor is gone, however it went
    sentinel = parent.sentinel if parent is not None else None
    async with DistributedRuntime(settings) as runtime:

        orphan = False

        def orphaned(fd: int) -> None:
            nonlocal orphan
            orphan = True
            log.warning("worker %d: the supervisor is gone: shutting down", seat.index)
            loop.remove_reader(fd)
            runtime.request_shutdown()

        if sentinel is not None:
            loop.add_reader(sentinel, orphaned, sentinel)
        try:
            await run_until_signalled(runtime, main(runtime, seat), signals=(signal.SIGTERM,))
        finally:
            if sentinel is not None:
                loop.remove_reader(sentinel)
            if orphan:  # the supervisor cannot remove the group's directory: the last worker out does
                with contextlib.suppress(OSError):
                    os.rmdir(seat.directory)


__all__ = ["KILL_AFTER", "Main", "Seat", "Supervisor", "serve_workers"]

