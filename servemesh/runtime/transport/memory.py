"""The in-memory twin of a network transport, for tests (as httpx's mock transport).

Streams go through the real framing and codec of the TCP transport (frames are
encoded, split into bytes, decoded, flow-controlled) over an in-process pipe
instead of a socket. Select it with ``transport="memory"``; runtimes of one
process that share a ``MemoryDiscovery`` store find and call each other over it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping
from typing import Any

from ...config import Settings
from ..context import Context
from ..records import InstanceRecord
from ..serving import ServedEndpoint
from ..stream import RemoteStream
from .tcp import ClientConnection, ConnectionPool, StreamServer


class _Pipe(asyncio.Transport):
    """One end of an in-memory byte pipe: what is written arrives at the peer's
    protocol on a later loop turn, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol, name: str) -> None:
        super().__init__()
        self._loop = loop
        self._protocol = protocol
        self._name = name
        self._peer: _Pipe | None = None
        self._closing = False
        #: bytes written that the peer has not received yet (they arrive on a later turn)
        self._in_flight = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        peer = self._peer
        if self._closing or peer is None or peer._closing:
            return
        chunk = bytes(data)
        self._in_flight += len(chunk)
        self._loop.call_soon(self._deliver, peer, chunk)

    def _deliver(self, peer: _Pipe, chunk: bytes) -> None:
        self._in_flight -= len(chunk)
        peer._protocol.data_received(chunk)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.call_soon(self._protocol.connection_lost, None)
        if self._peer is not None:
            self._peer.close()

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("memory", self._name) if name == "peername" else default

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def get_write_buffer_size(self) -> int:
        return self._in_flight


class MemoryNetwork:
    """Listeners by name: the in-memory counterpart of host:port addresses."""

    def __init__(self) -> None:
        self.listeners: dict[str, StreamServer] = {}
        self._names = itertools.count(1)

    def name(self) -> str:
        return f"mem-{next(self._names)}"

    async def dial(self, address: str, factory: Callable[[], ClientConnection]) -> tuple[_Pipe, ClientConnection]:
        server = self.listeners.get(address)
        if server is None:
            raise ConnectionRefusedError(f"no memory listener named {address}")
        loop = asyncio.get_running_loop()
        client = factory()
        served = server.protocol()
        client_end, server_end = _Pipe(loop, client, address), _Pipe(loop, served, address)
        client_end._peer, server_end._peer = server_end, client_end
        served.connection_made(server_end)
        client.connection_made(client_end)
        return client_end, client


#: this process's in-memory network (as the loopback interface is the machine's)
NETWORK = MemoryNetwork()


class MemoryTransport:
    """Connector and listener over ``MemoryNetwork``."""

    key = "memory"

    def __init__(self, settings: Settings, endpoints: Mapping[str, ServedEndpoint], instance_id: int,
                 network: MemoryNetwork = NETWORK) -> None:
        self._network = network
        self._server = StreamServer(endpoints, settings)
        self.address = ""
        self.pool = ConnectionPool(network.dial, settings)

    def accepts(self, record: InstanceRecord) -> bool:
        return self.key in record.transport

    def open_nowait(self, record: InstanceRecord, request: Any, ctx: Context | None) -> RemoteStream | None:
        conn = self.pool.get_nowait(record.transport[self.key])
        return None if conn is None else conn.open_stream(record.path, request, ctx, record.instance_id)

    async def open(self, record: InstanceRecord, request: Any, ctx: Context | None) -> RemoteStream:
        conn = await self.pool.get(record.transport[self.key], record.instance_id)
        return conn.open_stream(record.path, request, ctx, record.instance_id)

    async def add(self, served: ServedEndpoint, record: InstanceRecord) -> dict[str, str]:
        if not self.address:
            self.address = self._network.name()
            self._network.listeners[self.address] = self._server
        return {self.key: self.address}

    async def remove(self, path: str) -> None:
        return None

    async def close(self) -> None:
        if self.address:
            self._network.listeners.pop(self.address, None)
            await self._server.close_connections()
        await self.pool.close()
