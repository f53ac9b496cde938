"""TCP request plane: one listening port per process, multiplexed streams per connection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from ...errors import InstanceUnavailable
from .. import codec
from ..context import Context
from ..serving import ServedEndpoint
from ..stream import RemoteStream
from ..tasks import within
from .framing import FramedProtocol
from .streams import StreamTable, deliver, request_frame

log = logging.getLogger("servemesh.transport.tcp")



class ServerConnection(FramedProtocol):
    def __init__(self, server: TcpServer) -> None:
        super().__init__(server.limit)
        self._server = server
        self.streams = StreamTable(server.endpoints, self._loop.create_task)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._server.connections.discard(self)
        self.streams.cancel_all()  # the caller is gone: stop its work

    def frame_received(self, frame: codec.Frame) -> None:
        ft = type(frame)
        if ft is codec.Request:
            self.streams.request(frame.sid, frame, self._write)  # type: ignore[arg-type]
        elif ft is codec.Credit:
            self.streams.grant(frame.sid, frame.n)  # type: ignore[union-attr]
        elif ft is codec.Cancel:
            self.streams.cancel(frame.sid)
        else:
            log.warning("unexpected %s frame from %s; closing", ft.__name__, self.peer)
            self.abort("unexpected frame")

    def _write(self, frame: codec.Frame) -> None:
        if not self.closed:
            self.write_frame(frame)

    async def close(self) -> None:
        await self.streams.close()
        self._flush()
        if self.transport is not None:
            self.transport.close()


class TcpServer:
    """Listens on ``host:port`` and serves the endpoints in ``endpoints``."""

    def __init__(self, endpoints: Mapping[str, ServedEndpoint], *, host: str, port: int,
                 public_host: str, limit: int) -> None:
        self.endpoints = endpoints
        self.limit = limit
        self.connections: set[ServerConnection] = set()
        self._host = host
        self._port = port
        self._public_host = public_host
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: ServerConnection(self), self._host, self._port,
                                                reuse_address=True)
        self._port = self._server.sockets[0].getsockname()[1]
        log.debug("tcp request plane listening on %s:%d", self._host, self._port)

    @property
    def address(self) -> str:
        return f"{self._public_host}:{self._port}"

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        await asyncio.gather(*(c.close() for c in list(self.connections)), return_exceptions=True)
        await self._server.wait_closed()
        self._server = None


class ClientConnection(FramedProtocol):
    def __init__(self, pool: TcpClientPool, address: str) -> None:
        super().__init__(pool.limit)
        self._pool = pool
        self.address = address
        self._streams: dict[int, RemoteStream] = {}
        self._next_sid = 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        reason = f"connection to {self.address} lost" + (f": {exc}" if exc else "")
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.lost(reason)

    def open_stream(self, path: str, payload: Any, ctx: Context | None, window: int,
                    instance_id: int) -> RemoteStream:
        sid = self._next_sid
        self._next_sid += 1
        self.write_frame(request_frame(sid, path, payload, ctx, window))  # raises with nothing sent
        stream = RemoteStream(self, sid, window, path, instance_id, self.address)
        self._streams[sid] = stream
        return stream

    def frame_received(self, frame: codec.Frame) -> None:
        if not deliver(self._streams, frame):
            log.warning("unexpected %s frame from %s; closing", type(frame).__name__, self.address)
            self.abort("unexpected frame")

    def send_cancel(self, sid: int) -> None:
        if self._streams.pop(sid, None) is not None and not self.closed:
            self.write_frame(codec.Cancel(sid))

    def send_credit(self, sid: int, n: int) -> None:
        if not self.closed:
            self.write_frame(codec.Credit(sid, n))

    @property
    def open_streams(self) -> int:
        return len(self._streams)


class TcpClientPool:
    """One multiplexed connection per remote address, opened on first use."""

    def __init__(self, *, limit: int, connect_timeout: float) -> None:
        self.limit = limit
        self._timeout = connect_timeout
        self._conns: dict[str, ClientConnection] = {}
        self._connecting: dict[str, asyncio.Future[ClientConnection]] = {}

    def get_nowait(self, address: str) -> ClientConnection | None:
        conn = self._conns.get(address)
        return conn if conn is not None and not conn.closed else None

    async def get(self, address: str, instance_id: int) -> ClientConnection:
        conn = self._conns.get(address)
        if conn is not None and not conn.closed:
            return conn
        pending = self._connecting.get(address)
        if pending is None:
            pending = asyncio.ensure_future(self._connect(address, instance_id))
            self._connecting[address] = pending
            pending.add_done_callback(lambda _: self._connecting.pop(address, None))
        return await asyncio.shield(pending)

    async def _connect(self, address: str, instance_id: int) -> ClientConnection:
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            _, conn = await within(
                loop.create_connection(lambda: ClientConnection(self, address), host, int(port)),
                self._timeout)
        except (TimeoutError, OSError, ValueError) as exc:
            raise InstanceUnavailable(instance_id, address, f"cannot connect: {exc or 'timed out'}") from exc
        self._conns[address] = conn
        return conn

    def forget(self, conn: ClientConnection) -> None:
        if self._conns.get(conn.address) is conn:
            del self._conns[conn.address]

    @property
    def connections(self) -> int:
        return len(self._conns)

    async def close(self) -> None:
        for pending in list(self._connecting.values()):
            pending.cancel()
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
