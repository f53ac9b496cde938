"""TCP request plane: one listening port per process, multiplexed streams per connection.

TLS (docs/security.md): with ``tls_cert`` / ``tls_key`` the listener serves TLS and
the discovery record says so (``{"tcp": "host:port", "tls": "1"}``, or ``"mutual"``
when client certificates are required); callers verify such an instance with
``tls_ca`` against its advertised host, and present ``tls_cert`` / ``tls_key``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Mapping
from typing import Any

from ...config import Settings
from ...errors import InstanceUnavailable, ProtocolError
from .. import codec, tls
from ..context import Context
from ..records import InstanceRecord
from ..serving import ServedEndpoint
from ..stream import RemoteStream
from ..tasks import within
from .framing import FramedProtocol, Liveness, PartialBudget
from .streams import StreamTable, deliver, request_frame

log = logging.getLogger("servemesh.transport.tcp")


def liveness(settings: Settings) -> Liveness:
    return Liveness(settings.heartbeat_interval, settings.heartbeat_timeout, settings.frame_timeout)


class ServerConnection(FramedProtocol):
    def __init__(self, server: StreamServer) -> None:
        super().__init__(server.limit, server.liveness, server.budget, server.flush_frames)
        self._server = server
        self.streams = StreamTable(server.endpoints, self._loop.create_task, self, server.window_bytes,
                                   server.request_timeout)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._server.connections.discard(self)
        self.streams.cancel_all()  # the caller is gone: stop its work

    def frame_received(self, frame: codec.Frame, size: int) -> None:
        ft = type(frame)
        if ft is codec.Request:
            try:
                self.streams.request(frame.sid, frame, self.write_frame)  # type: ignore[arg-type]
            except ProtocolError as exc:  # a duplicate stream id: the peer is broken
                self.protocol_violation(str(exc))
                return
            self.watch_peer()
        elif ft is codec.Credit:
            self.streams.grant(frame.sid, frame.n, frame.bytes)  # type: ignore[union-attr]
        elif ft is codec.Cancel:
            self.streams.cancel(frame.sid)
        elif not self.control_frame(frame):
            self.protocol_violation(f"unexpected {ft.__name__} frame")

    def has_streams(self) -> bool:
        return len(self.streams) > 0

    async def close(self) -> None:
        await self.streams.close()
        self._flush()
        if self.transport is not None:
            self.transport.close()


class StreamServer:
    """The endpoints one listener serves and its open connections (TCP or memory)."""

    def __init__(self, endpoints: Mapping[str, ServedEndpoint], settings: Settings) -> None:
        self.endpoints = endpoints
        self.limit = settings.max_payload
        self.flush_frames = settings.flush_frames
        self.window_bytes = settings.stream_window_bytes
        self.request_timeout = settings.request_timeout
        self.liveness = liveness(settings)
        #: incomplete frames of all connections together: a few frames' worth
        self.budget = PartialBudget(4 * settings.max_payload)
        self.connections: set[ServerConnection] = set()

    def protocol(self) -> ServerConnection:
        return ServerConnection(self)

    async def close_connections(self) -> None:
        await asyncio.gather(*(c.close() for c in list(self.connections)), return_exceptions=True)


class ClientConnection(FramedProtocol):
    def __init__(self, pool: ConnectionPool, address: str) -> None:
        super().__init__(pool.limit, pool.liveness, flush_frames=pool.flush_frames)
        self._pool = pool
        self.address = address
        self._streams: dict[int, RemoteStream] = {}
        self._next_sid = 1

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._pool.forget(self)
        why = self.abort_reason or (str(exc) if exc else "")
        reason = f"connection to {self.address} lost" + (f": {why}" if why else "")
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.lost(reason)

    def open_stream(self, path: str, payload: Any, ctx: Context | None, instance_id: int) -> RemoteStream:
        sid = self._next_sid
        self._next_sid += 1
        pool = self._pool
        # raises with nothing sent if the request cannot be encoded
        self.write_frame(request_frame(sid, path, payload, ctx, pool.window, pool.window_bytes))
        stream = RemoteStream(self, sid, pool.window, path, instance_id, self.address, pool.window_bytes)
        self._streams[sid] = stream
        if self._beat_timer is None:
            self.watch_peer()
        return stream

    def frame_received(self, frame: codec.Frame, size: int) -> None:
        if not deliver(self._streams, frame, size) and not self.control_frame(frame):
            self.protocol_violation(f"unexpected {type(frame).__name__} frame")

    def has_streams(self) -> bool:
        return bool(self._streams)

    def send_cancel(self, sid: int) -> None:
        if self._streams.pop(sid, None) is not None and not self.closed:
            self.write_frame(codec.Cancel(sid))

    def send_credit(self, sid: int, n: int, nbytes: int) -> None:
        if not self.closed:
            self.write_frame(codec.Credit(sid, n, nbytes))

    @property
    def open_streams(self) -> int:
        return len(self._streams)


Dial = Callable[[str, Callable[[], ClientConnection]], Any]


class ConnectionPool:
    """One multiplexed connection per remote address, opened on first use."""

    def __init__(self, dial: Dial, settings: Settings) -> None:
        self.limit = settings.max_payload
        self.flush_frames = settings.flush_frames
        self.window = settings.stream_window
        self.window_bytes = settings.stream_window_bytes
        self.liveness = liveness(settings)
        self._dial = dial
        self._timeout = settings.connect_timeout
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
        try:
            _, conn = await within(self._dial(address, lambda: ClientConnection(self, address)), self._timeout)
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


#: the pool address of an instance that serves TLS: its advertised address behind this
TLS_PREFIX = "tls://"


def _dial_tcp(address: str, factory: Callable[[], ClientConnection],
              context: Callable[[], ssl.SSLContext] | None = None, handshake_timeout: float | None = None) -> Any:
    """Connect to ``host:port``, or over TLS to ``tls://host:port`` with ``context()``
    (checking the certificate's names against ``host``)."""
    loop = asyncio.get_running_loop()
    if not address.startswith(TLS_PREFIX):
        host, _, port = address.rpartition(":")
        return loop.create_connection(factory, host, int(port))
    host, _, port = address.removeprefix(TLS_PREFIX).rpartition(":")
    if context is None:
        raise ValueError("no TLS context to call a TLS instance with")
    host = host.strip("[]")
    return loop.create_connection(factory, host, int(port), ssl=context(), server_hostname=host,
                                  ssl_handshake_timeout=handshake_timeout)


class TcpTransport:
    """Connector and listener of the TCP request plane."""

    key = "tcp"

    def __init__(self, settings: Settings, endpoints: Mapping[str, ServedEndpoint], instance_id: int) -> None:
        self.settings = settings
        self._server = StreamServer(endpoints, settings)
        self._listener: asyncio.AbstractServer | None = None
        self._lock = asyncio.Lock()
        self.address = ""
        self._advertised: dict[str, str] = {}
        self._client_tls: ssl.SSLContext | None = None
        self.pool = ConnectionPool(self._dial, settings)

    # -- connector ----------------------------------------------------------------------
    def accepts(self, record: InstanceRecord) -> bool:
        return self.key in record.transport

    def open_nowait(self, record: InstanceRecord, request: Any, ctx: Context | None) -> RemoteStream | None:
        address = record.transport[self.key]
        conn = self.pool.get_nowait(address if "tls" not in record.transport else TLS_PREFIX + address)
        if conn is None:
            return None
        return conn.open_stream(record.path, request, ctx, record.instance_id)

    async def open(self, record: InstanceRecord, request: Any, ctx: Context | None) -> RemoteStream:
        address = record.transport[self.key]
        if "tls" in record.transport:
            self._check_tls(record)
            address = TLS_PREFIX + address
        conn = await self.pool.get(address, record.instance_id)
        return conn.open_stream(record.path, request, ctx, record.instance_id)

    # -- TLS ----------------------------------------------------------------------------
    def _check_tls(self, record: InstanceRecord) -> None:
        """Refuse (the caller fails over) a TLS instance this process cannot call."""
        if not self.settings.tls_ca:
            raise InstanceUnavailable(record.instance_id, record.address,
                                      "it serves over TLS and this process has no CA to verify it: "
                                      "set SERVEMESH_TLS_CA")
        if record.transport["tls"] == "mutual" and not self.settings.tls_cert:
            raise InstanceUnavailable(record.instance_id, record.address,
                                      "it requires a client certificate (mutual TLS): set SERVEMESH_TLS_CERT "
                                      "and SERVEMESH_TLS_KEY")

    def _client_context(self) -> ssl.SSLContext:
        if self._client_tls is None:
            self._client_tls = tls.plane_client_context(self.settings)  # ConfigError if its files are bad
        if self._client_tls is None:
            raise ValueError("no SERVEMESH_TLS_CA to verify a TLS instance with")
        return self._client_tls

    async def _dial(self, address: str, factory: Callable[[], ClientConnection]) -> Any:
        try:
            return await _dial_tcp(address, factory, self._client_context, self.settings.connect_timeout)
        except ssl.SSLCertVerificationError as exc:  # the pool makes it InstanceUnavailable
            host = address.removeprefix(TLS_PREFIX).rpartition(":")[0]
            raise OSError(f"its TLS certificate is not trusted ({exc.verify_message}): SERVEMESH_TLS_CA must "
                          f"hold the CA that signed it, and its names (SAN) must include {host}") from exc

    # -- listener -----------------------------------------------------------------------
    async def add(self, served: ServedEndpoint, record: InstanceRecord) -> dict[str, str]:
        async with self._lock:
            if self._listener is None:
                s = self.settings
                loop = asyncio.get_running_loop()
                server_tls = tls.plane_server_context(s)  # None: plain TCP; ConfigError if its files are bad
                # a peer that never completes the handshake (plain TCP, or silent) is dropped
                # after connect_timeout; it never reaches the stream table
                self._listener = await loop.create_server(
                    self._server.protocol, s.host, s.port, reuse_address=True, ssl=server_tls,
                    ssl_handshake_timeout=s.connect_timeout if server_tls is not None else None)
                port = self._listener.sockets[0].getsockname()[1]
                self.address = f"{s.public_host}:{port}"
                self._advertised = {self.key: self.address}
                if server_tls is not None:
                    self._advertised["tls"] = "mutual" if s.tls_mutual else "1"
                log.debug("tcp request plane listening on %s:%d%s", s.host, port,
                          " (TLS)" if server_tls is not None else "")
        return dict(self._advertised)

    async def remove(self, path: str) -> None:
        return None  # the endpoint table is shared: a removed path is refused by the stream table

    @property
    def connections(self) -> set[ServerConnection]:
        return self._server.connections

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            await self._server.close_connections()
            await self._listener.wait_closed()
            self._listener = None
        await self.pool.close()
