"""In-process discovery: the embedded mode's backend and the test twin of etcd."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from ...errors import DiscoveryError
from ..records import InstanceRecord
from .base import WatchSink

if TYPE_CHECKING:
    from ..events import MemoryBus


class MemoryStore:
    """Records shared by every ``MemoryDiscovery`` session made from it."""

    def __init__(self) -> None:
        self.records: dict[str, InstanceRecord] = {}
        self.watchers: list[tuple[str, WatchSink]] = []
        #: the in-process event bus of the runtimes on this store (``events.memory_bus``)
        self.bus: MemoryBus | None = None

    def put(self, record: InstanceRecord) -> None:
        self.records[record.key] = record
        for prefix, sink in list(self.watchers):
            if record.key.startswith(prefix):
                sink.on_put(record)

    def delete(self, key: str) -> None:
        if self.records.pop(key, None) is None:
            return
        for prefix, sink in list(self.watchers):
            if key.startswith(prefix):
                sink.on_delete(key)


class _MemoryWatch:
    def __init__(self, store: MemoryStore, entry: tuple[str, WatchSink]) -> None:
        self._store = store
        self._entry = entry

    async def close(self) -> None:
        try:
            self._store.watchers.remove(self._entry)
        except ValueError:
            pass


class MemoryDiscovery:
    """Discovery inside one process. Pass one ``MemoryStore`` to several runtimes
    to let them find each other (over TCP) without etcd."""

    kind = "memory"

    def __init__(self, store: MemoryStore | None = None) -> None:
        self.store = store or MemoryStore()
        self._id = random.getrandbits(63) or 1
        self._mine: set[str] = set()
        self._closed = False

    @property
    def instance_id(self) -> int:
        return self._id

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._closed = True
        for key in list(self._mine):
            self.store.delete(key)
        self._mine.clear()

    async def register(self, record: InstanceRecord) -> None:
        if self._closed:
            raise DiscoveryError("discovery session is closed")
        self._mine.add(record.key)
        self.store.put(record)

    async def unregister(self, record: InstanceRecord) -> None:
        self._mine.discard(record.key)
        self.store.delete(record.key)

    async def list(self, prefix: str) -> list[InstanceRecord]:
        return [r for k, r in sorted(self.store.records.items()) if k.startswith(prefix)]

    async def watch(self, prefix: str, sink: WatchSink) -> _MemoryWatch:
        entry = (prefix, sink)
        self.store.watchers.append(entry)
        for key, record in sorted(self.store.records.items()):
            if key.startswith(prefix):
                sink.on_put(record)
        return _MemoryWatch(self.store, entry)
