"""``OverlayDiscovery``: a backend plus records kept in the process, watched as one set."""

from __future__ import annotations

from servemesh.runtime.discovery.memory import MemoryDiscovery, MemoryStore
from servemesh.runtime.discovery.overlay import OverlayDiscovery
from servemesh.runtime.records import InstanceRecord


class Sink:
    def __init__(self) -> None:
        self.live: dict[str, InstanceRecord] = {}

    def on_put(self, record: InstanceRecord) -> None:
        self.live[record.key] = record

    def on_delete(self, key: str) -> None:
        self.live.pop(key, None)


def record(iid: int, transport: str) -> InstanceRecord:
    return InstanceRecord(component="replica", endpoint="infer", namespace="cap", instance_id=iid,
                          transport={"tcp": transport})


async def test_a_key_stays_while_either_source_has_it():
    base_store, local = MemoryStore(), MemoryStore()
    base = MemoryDiscovery(base_store)
    overlay = OverlayDiscovery(base, local)
    await overlay.start()
    assert overlay.instance_id == base.instance_id and overlay.kind == "memory+local"
    sink = Sink()
    both = record(1, "h:1")
    base_store.put(both)
    local.put(record(2, "h:2"))
    handle = await overlay.watch("instances/cap/", sink)
    assert set(sink.live) == {both.key, record(2, "h:2").key}
    local.put(both)  # registered over HTTP too
    base_store.delete(both.key)  # its etcd lease expired: still registered over HTTP
    assert both.key in sink.live
    local.delete(both.key)
    assert both.key not in sink.live
    assert [r.instance_id for r in await overlay.list("instances/cap/")] == [2]
    mine = record(overlay.instance_id, "me:1")
    await overlay.register(mine)  # what the process registers goes to the backend
    assert mine.key in base_store.records and mine.key not in local.records
    await handle.close()
    local.put(record(3, "h:3"))
    assert record(3, "h:3").key not in sink.live  # the watch is closed
    await overlay.close()
    assert mine.key not in base_store.records


def test_a_records_path_is_worked_out_once_and_never_stored():
    import msgspec

    rec = record(1, "127.0.0.1:1")
    assert rec.path == "cap.replica.infer" and rec.path is rec.path
    assert b"path" not in rec.to_json() and b"path" not in msgspec.json.encode(rec)
    assert msgspec.structs.replace(rec, endpoint="other").path == "cap.replica.other"
    assert InstanceRecord.from_json(rec.to_json()) == rec
