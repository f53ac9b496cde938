"""The discovery seam: where instances are registered and watched."""

from __future__ import annotations

from typing import Protocol

from ..records import InstanceRecord


class WatchSink(Protocol):
    """Receives the live set of a prefix: a snapshot of puts, then changes."""

    def on_put(self, record: InstanceRecord) -> None: ...

    def on_delete(self, key: str) -> None: ...


class WatchHandle(Protocol):
    async def close(self) -> None: ...


class Discovery(Protocol):
    """One process's session with a discovery backend.

    ``instance_id`` is the session's identity (the etcd lease id); every record
    the session registers disappears when the session closes or dies.
    """

    @property
    def instance_id(self) -> int: ...

    @property
    def kind(self) -> str: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def register(self, record: InstanceRecord) -> None: ...

    async def unregister(self, record: InstanceRecord) -> None: ...

    async def list(self, prefix: str) -> list[InstanceRecord]: ...

    async def watch(self, prefix: str, sink: WatchSink) -> WatchHandle:
        """Deliver the current records under ``prefix`` to ``sink``, then every change,
        until closed. Returns once the snapshot was delivered."""
        ...
