"""``Registry``: an API server's HTTP registrations (``POST /register``), with a TTL.

Each registration becomes runtime instance records in the API server's own discovery
store, so the router sees replicas registered over HTTP exactly as it sees those in
etcd. A servemesh replica says how to reach it on the request plane (its instance id
and ``transport``); a replica registered by hand (``curl``) has only its gRPC
``endpoint``, and its records say ``{"grpc": endpoint}`` (served by the gRPC
connector). A registration that misses its heartbeats for ``ttl`` seconds is dropped,
records and all.

Ownership of a replica id: a registration may carry a ``token``. Re-registering an id
from another endpoint, or unregistering it, needs the token it was registered with
(``RegistrationConflict`` otherwise); an id registered without a token cannot be
moved to another endpoint until it expires or is unregistered.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import RegistrationConflict, ValidationError
from ..runtime.discovery.memory import MemoryStore
from ..runtime.records import InstanceRecord
from . import wire

#: replicas one API server keeps (a bound on memory, whatever clients send)
MAX_REPLICAS = 10_000


@dataclasses.dataclass(frozen=True)
class RuntimeInfo:
    """How a servemesh replica is reached on the request plane."""

    namespace: str
    instance_id: int
    transport: dict[str, str]
    #: which of the capabilities stream
    streams: list[bool] | None = None
    #: each capability's declared model metadata (or None)
    models: list[dict[str, Any] | None] | None = None


@dataclasses.dataclass
class Registration:
    replica_id: str
    endpoint: str
    capabilities: list[dict[str, Any]]
    registered_at: float
    last_heartbeat: float
    token_hash: str | None
    runtime: RuntimeInfo | None
    records: tuple[InstanceRecord, ...] = ()

    def listing(self) -> dict[str, Any]:
        """The ``/registry`` entry."""
        return {"replica_id": self.replica_id, "endpoint": self.endpoint, "capabilities": self.capabilities,
                "registered_at": iso(self.registered_at), "last_heartbeat": iso(self.last_heartbeat),
                "source": "http"}


def iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat()


def _hash(token: str | None) -> str | None:
    return None if token is None else hashlib.sha256(token.encode()).hexdigest()


def foreign_instance_id(replica_id: str) -> int:
    """A stable instance id for a replica registered by hand (it has no runtime)."""
    return int(hashlib.sha256(b"capability-replica:" + replica_id.encode()).hexdigest()[:15], 16) | 1


class Registry:
    def __init__(self, store: MemoryStore, namespace: str, ttl: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.namespace = namespace
        self.ttl = ttl
        self.clock = clock
        self._entries: dict[str, Registration] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[Registration]:
        return list(self._entries.values())

    def get(self, replica_id: str) -> Registration | None:
        return self._entries.get(replica_id)

    def register(self, replica_id: str, endpoint: str, capabilities: Sequence[Mapping[str, Any]], *,
                 token: str | None = None, runtime: RuntimeInfo | None = None) -> tuple[Registration, bool]:
        """Register (or refresh: a heartbeat) ``replica_id``; the registration, and whether
        it is new. ``RegistrationConflict`` if the id belongs to another endpoint."""
        wire.check_replica_id(replica_id)
        labels = [wire.check_labels(dict(c), "registered capability") for c in capabilities]
        if runtime is not None and runtime.namespace != self.namespace:
            raise ValidationError(f"the replica serves in namespace {runtime.namespace!r}, this API server in "
                                  f"{self.namespace!r}: set the same SERVEMESH_CAPABILITY_NAMESPACE on both",
                                  field="servemesh.namespace")
        if runtime is not None and runtime.streams is not None and len(runtime.streams) != len(labels):
            raise ValidationError("servemesh.streams must have one flag per capability", field="servemesh.streams")
        if runtime is not None and runtime.models is not None and len(runtime.models) != len(labels):
            raise ValidationError("servemesh.models must have one entry per capability", field="servemesh.models")
        now = self.clock()
        old = self._entries.get(replica_id)
        if old is not None:
            self._check_owner(old, replica_id, endpoint, token)
            same = (old.endpoint == endpoint and old.capabilities == labels and old.runtime == runtime)
            if same:
                old.last_heartbeat = now
                return old, False
        elif len(self._entries) >= MAX_REPLICAS:
            raise ValidationError(f"this API server holds its limit of {MAX_REPLICAS} replicas", field="replica_id")
        entry = Registration(replica_id, endpoint, labels, old.registered_at if old else now, now,
                             _hash(token) if old is None or token is not None else old.token_hash, runtime)
        entry.records = self._records(entry)
        self._entries[replica_id] = entry
        if old is not None:
            keep = {r.key for r in entry.records}
            for record in old.records:
                if record.key not in keep:
                    self.store.delete(record.key)
        for record in entry.records:
            self.store.put(record)
        return entry, old is None

    def unregister(self, replica_id: str, token: str | None = None) -> bool:
        """Drop ``replica_id``; False if it is not registered. Needs its token if it has one."""
        entry = self._entries.get(replica_id)
        if entry is None:
            return False
        if entry.token_hash is not None and not _same(entry.token_hash, token):
            raise RegistrationConflict(replica_id, entry.endpoint, entry.endpoint,
                                       "it was registered with a token, and only that token unregisters it")
        self._drop(entry)
        return True

    def expire(self) -> list[str]:
        """Drop the registrations whose last heartbeat is older than the TTL; their ids."""
        deadline = self.clock() - self.ttl
        gone = [e for e in self._entries.values() if e.last_heartbeat < deadline]
        for entry in gone:
            self._drop(entry)
        return [e.replica_id for e in gone]

    def close(self) -> None:
        for entry in list(self._entries.values()):
            self._drop(entry)

    def _drop(self, entry: Registration) -> None:
        self._entries.pop(entry.replica_id, None)
        for record in entry.records:
            self.store.delete(record.key)

    def _check_owner(self, old: Registration, replica_id: str, endpoint: str, token: str | None) -> None:
        if old.token_hash is not None:
            if not _same(old.token_hash, token):
                raise RegistrationConflict(replica_id, endpoint, old.endpoint)
        elif old.endpoint != endpoint:
            raise RegistrationConflict(replica_id, endpoint, old.endpoint)

    def _records(self, entry: Registration) -> tuple[InstanceRecord, ...]:
        rt = entry.runtime
        if rt is not None:
            caps = wire.record_capabilities(entry.replica_id, entry.endpoint, entry.capabilities, rt.streams,
                                            rt.models)
            iid, transport = rt.instance_id, dict(rt.transport)
        else:
            caps = wire.record_capabilities(entry.replica_id, entry.endpoint, entry.capabilities)
            iid, transport = foreign_instance_id(entry.replica_id), {"grpc": entry.endpoint}
        return tuple(InstanceRecord(component=wire.COMPONENT, endpoint=name, namespace=self.namespace,
                                    instance_id=iid, transport=transport, capabilities=caps)
                     for name in (wire.UNARY, wire.STREAM))


def _same(token_hash: str, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(token_hash, _hash(token) or "")
