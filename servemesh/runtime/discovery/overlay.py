"""``OverlayDiscovery``: a discovery backend plus records kept in this process.

An API server learns of some instances from its backend (etcd) and of others by
itself (replicas that registered with it over HTTP). Its clients watch both as one
live set: a key is live while either source has it, so an instance both in etcd and
registered over HTTP leaves the set only when both let it go. Everything the process
registers itself goes to the backend.
"""

from __future__ import annotations

from ..records import InstanceRecord
from .base import Discovery, WatchHandle, WatchSink
from .memory import MemoryDiscovery, MemoryStore


class _Merge:
    """One watch over both sources: a key is deleted once no source has it."""

    def __init__(self, sink: WatchSink) -> None:
        self.sink = sink
        self.sources: dict[str, set[int]] = {}

    def put(self, source: int, record: InstanceRecord) -> None:
        self.sources.setdefault(record.key, set()).add(source)
        self.sink.on_put(record)

    def delete(self, source: int, key: str) -> None:
        holders = self.sources.get(key)
        if holders is None:
            return
        holders.discard(source)
        if not holders:
            del self.sources[key]
            self.sink.on_delete(key)


class _Side:
    def __init__(self, merge: _Merge, source: int) -> None:
        self._merge = merge
        self._source = source

    def on_put(self, record: InstanceRecord) -> None:
        self._merge.put(self._source, record)

    def on_delete(self, key: str) -> None:
        self._merge.delete(self._source, key)


class _Handles:
    def __init__(self, *handles: WatchHandle) -> None:
        self._handles = handles

    async def close(self) -> None:
        for handle in self._handles:
            await handle.close()


class OverlayDiscovery:
    def __init__(self, base: Discovery, store: MemoryStore) -> None:
        self.base = base
        self.store = store
        self._local = MemoryDiscovery(store)

    @property
    def instance_id(self) -> int:
        return self.base.instance_id

    @property
    def kind(self) -> str:
        return f"{self.base.kind}+local"

    async def start(self) -> None:
        await self.base.start()

    async def close(self) -> None:
        await self.base.close()

    async def register(self, record: InstanceRecord) -> None:
        await self.base.register(record)

    async def unregister(self, record: InstanceRecord) -> None:
        await self.base.unregister(record)

    async def list(self, prefix: str) -> list[InstanceRecord]:
        found = {r.key: r for r in await self.base.list(prefix)}
        for record in await self._local.list(prefix):
            found.setdefault(record.key, record)
        return [found[k] for k in sorted(found)]

    async def watch(self, prefix: str, sink: WatchSink) -> WatchHandle:
        merge = _Merge(sink)
        base = await self.base.watch(prefix, _Side(merge, 0))
        try:
            local = await self._local.watch(prefix, _Side(merge, 1))
        except BaseException:
            await base.close()
            raise
        return _Handles(base, local)
