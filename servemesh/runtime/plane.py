"""``RequestPlane``: the transports of one runtime behind the seam of ``transport.base``.

The listener is the transport this process serves on (``inproc`` when embedded,
else ``Settings.transport``); the connectors are every transport, asked in
order whether they accept an instance record. Nothing here knows what a
transport is beyond those two Protocols.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..config import Settings
from ..errors import InstanceUnavailable
from .context import Context
from .records import InstanceRecord
from .serving import ServedEndpoint
from .tasks import TaskSet
from .transport.base import ClientStream, Connector, Listener
from .transport.inproc import InprocTransport
from .transport.memory import MemoryTransport
from .transport.nats import NatsTransport
from .transport.tcp import TcpTransport

Factory = Callable[[Settings, Mapping[str, ServedEndpoint], int], Any]

#: the network transports, by the name ``Settings.transport`` uses
TRANSPORTS: dict[str, Factory] = {"tcp": TcpTransport, "nats": NatsTransport, "memory": MemoryTransport}


class RequestPlane:
    def __init__(self, settings: Settings, endpoints: Mapping[str, ServedEndpoint], instance_id: int,
                 tasks: TaskSet, embedded: bool) -> None:
        inproc = InprocTransport(settings, endpoints, instance_id, tasks)
        self.transports: dict[str, Any] = {"inproc": inproc}
        for name, factory in TRANSPORTS.items():
            self.transports[name] = factory(settings, endpoints, instance_id)
        self.listener: Listener = self.transports["inproc" if embedded else settings.transport]
        #: asked in this order: this process's own endpoints first
        self.connectors: list[Connector] = list(self.transports.values())

    def add_connector(self, connector: Connector) -> None:
        """Reach records of a kind the built-in transports do not (e.g. gRPC replicas of the
        capability API); asked after this process's own endpoints, before the others."""
        self.connectors.insert(1, connector)

    def connector(self, record: InstanceRecord) -> Connector:
        for connector in self.connectors:
            if connector.accepts(record):
                return connector
        raise InstanceUnavailable(record.instance_id, record.address,
                                  f"no transport this process can use ({', '.join(record.transport)})")

    def open_nowait(self, record: InstanceRecord, request: Any, ctx: Context | None) -> ClientStream | None:
        """The common case without a coroutine: in-process, or a connection that is up."""
        for connector in self.connectors:
            if connector.accepts(record):
                return connector.open_nowait(record, request, ctx)
        return None

    async def open(self, record: InstanceRecord, request: Any, ctx: Context | None) -> ClientStream:
        return await self.connector(record).open(record, request, ctx)

    async def add(self, served: ServedEndpoint, record: InstanceRecord) -> dict[str, str]:
        return await self.listener.add(served, record)

    async def remove(self, path: str) -> None:
        await self.listener.remove(path)

    async def close(self) -> None:
        """Close the listener first (its streams are cancelled), then every connector."""
        await self.listener.close()
        for connector in self.connectors:
            if connector is not self.listener:
                await connector.close()
