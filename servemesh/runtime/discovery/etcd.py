"""etcd discovery: registrations are keys bound to this process's lease.

The instance id is the lease id. A keep-alive task refreshes the lease every
TTL/3; if etcd stays unreachable past the TTL the lease is lost, and when etcd
returns the session re-grants the *same* lease id and puts its keys back (or
asks the runtime to exit, if so configured). Watches re-list and resume after
any break, so a client's live set converges after an etcd restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ...errors import ConfigError, DiscoveryError
from ..records import InstanceRecord
from ..tasks import TaskSet, within
from .base import WatchSink

log = logging.getLogger("servemesh.discovery")

_RETRY = 0.5

# A channel of its own (gRPC otherwise shares a process-wide subchannel, still in
# back-off after an etcd restart), and quick reconnects once etcd is back.
_GRPC_OPTIONS = {
    "grpc.use_local_subchannel_pool": 1,
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.min_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 1000,
}


def _aetcd() -> Any:
    import aetcd

    return aetcd


def parse_etcd_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if not parts.hostname:
        raise ConfigError(f"etcd address {url!r} must look like http://host:port")
    return parts.hostname, parts.port or 2379


class _EtcdWatch:
    def __init__(self, task: asyncio.Task[None]) -> None:
        self._task = task

    async def close(self) -> None:
        # bounded: a watch stuck inside a broken gRPC stream must not hold shutdown
        for _ in range(3):
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=1.0)
            if done:
                return
        log.warning("etcd watch task did not stop; abandoning it")


class EtcdDiscovery:
    kind = "etcd"

    def __init__(
        self,
        url: str,
        *,
        lease_ttl: int = 10,
        timeout: float = 3.0,
        on_lease_lost: str = "reregister",
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.url = url
        self._host, self._port = parse_etcd_url(url)
        self._ttl = lease_ttl
        self._timeout = timeout
        self._on_lease_lost = on_lease_lost
        self._on_fatal = on_fatal
        self._client: Any = None
        self._lease_id = 0
        self._records: dict[str, InstanceRecord] = {}
        self._tasks = TaskSet("etcd discovery")
        self._lost = False

    @property
    def instance_id(self) -> int:
        return self._lease_id

    async def start(self) -> None:
        aetcd = _aetcd()
        self._client = aetcd.Client(host=self._host, port=self._port, timeout=self._timeout, options=_GRPC_OPTIONS)
        try:
            lease = await within(self._client.lease(self._ttl), self._timeout)
        except (TimeoutError, aetcd.exceptions.ClientError, OSError) as exc:
            with contextlib.suppress(Exception):
                await within(self._client.close(), self._timeout)
            raise DiscoveryError(
                f"cannot reach etcd at {self.url}: {exc or type(exc).__name__}; "
                "start it with `servemesh up` or point SERVEMESH_ETCD at a running etcd"
            ) from exc
        self._lease_id = lease.id
        self._tasks.spawn(self._keep_alive(), name="etcd-keepalive")
        log.debug("etcd session at %s with lease %x (ttl %ss)", self.url, self._lease_id, self._ttl)

    async def close(self) -> None:
        await self._tasks.close()
        if self._client is None:
            return
        try:
            await within(self._client.revoke_lease(self._lease_id), self._timeout)
        except Exception as exc:  # etcd gone: the lease expires by itself
            log.warning("could not revoke lease %x (%r); its keys expire within %ss",
                        self._lease_id, exc, self._ttl)
        try:
            await within(self._client.close(), self._timeout)
        except (TimeoutError, OSError) as exc:  # never let a stuck channel hold the process
            log.warning("closing the etcd client timed out: %r", exc)
        self._client = None

    async def register(self, record: InstanceRecord) -> None:
        await self._call(self._client.put(record.key.encode(), record.to_json(), lease=self._lease_id),
                         f"register {record.key}")
        self._records[record.key] = record

    async def unregister(self, record: InstanceRecord) -> None:
        self._records.pop(record.key, None)
        await self._call(self._client.delete(record.key.encode()), f"unregister {record.key}")

    async def list(self, prefix: str) -> list[InstanceRecord]:
        result = await self._call(self._client.get_prefix(prefix.encode()), f"list {prefix}")
        return [_parse(kv.value) for kv in result if _parse(kv.value) is not None]  # type: ignore[misc]

    async def watch(self, prefix: str, sink: WatchSink) -> _EtcdWatch:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = self._tasks.spawn(self._watch_loop(prefix, sink, ready), name=f"etcd-watch {prefix}")
        await ready
        return _EtcdWatch(task)

    async def _call(self, coro: Any, what: str) -> Any:
        aetcd = _aetcd()
        try:
            return await within(coro, self._timeout)
        except (TimeoutError, aetcd.exceptions.ClientError, OSError) as exc:
            raise DiscoveryError(f"etcd at {self.url} failed to {what}: {exc or type(exc).__name__}") from exc

    async def _watch_loop(self, prefix: str, sink: WatchSink, ready: asyncio.Future[None]) -> None:
        aetcd = _aetcd()
        known: set[str] = set()
        warned = False
        while True:
            try:
                snapshot = await within(self._client.get_prefix(prefix.encode()), self._timeout)
                current: dict[str, InstanceRecord] = {}
                for kv in snapshot:
                    record = _parse(kv.value)
                    if record is not None:
                        current[kv.key.decode()] = record
                for key in known - current.keys():
                    sink.on_delete(key)
                for record in current.values():
                    sink.on_put(record)
                known = set(current)
                if not ready.done():
                    ready.set_result(None)
                if warned:
                    log.info("etcd watch on %s resumed", prefix)
                    warned = False
                watch = await self._client.watch_prefix(
                    prefix.encode(), start_revision=snapshot.header.revision + 1)
                try:
                    async for event in watch:
                        key = event.kv.key.decode()
                        if event.kind == "PUT":
                            record = _parse(event.kv.value)
                            if record is not None:
                                known.add(key)
                                sink.on_put(record)
                        else:
                            known.discard(key)
                            sink.on_delete(key)
                finally:
                    # aetcd's cancel waits on the watch stream, which may be broken: bounded
                    with contextlib.suppress(Exception):
                        await within(asyncio.shield(watch.cancel()), 1.0)
            except asyncio.CancelledError:
                raise
            except (TimeoutError, aetcd.exceptions.ClientError, OSError) as exc:
                if not ready.done():
                    ready.set_exception(DiscoveryError(f"cannot watch {prefix} on etcd at {self.url}: {exc}"))
                    return
                if not warned:
                    log.warning("etcd watch on %s broke (%r); known instances stay usable, retrying",
                                prefix, exc)
                    warned = True
            await asyncio.sleep(_RETRY)  # back off before re-listing

    async def _keep_alive(self) -> None:
        aetcd = _aetcd()
        interval = max(self._ttl / 3, 0.2)
        last_ok = time.monotonic()
        failing = False
        while True:
            await asyncio.sleep(interval if not failing else _RETRY)
            try:
                if self._lost:
                    await self._regrant()
                    last_ok = time.monotonic()
                    failing = False
                    continue
                reply = await within(self._client.refresh_lease(self._lease_id), self._timeout)
                if reply is None or reply.TTL <= 0:
                    raise _LeaseExpired()
                last_ok = time.monotonic()
                if failing:
                    log.info("etcd at %s reachable again; lease %x kept", self.url, self._lease_id)
                failing = False
            except asyncio.CancelledError:
                raise
            except _LeaseExpired:
                self._lease_lost("etcd reports the lease expired")
            except (TimeoutError, aetcd.exceptions.ClientError, OSError) as exc:
                if not failing:
                    log.warning("etcd at %s unreachable (%r); lease %x expires in %ss unless it returns",
                                self.url, exc, self._lease_id, self._ttl)
                failing = True
                if time.monotonic() - last_ok > self._ttl and not self._lost:
                    self._lease_lost(f"etcd unreachable for over {self._ttl}s")

    def _lease_lost(self, why: str) -> None:
        self._lost = True
        if self._on_lease_lost == "exit":
            log.error("lease %x lost (%s); exiting as configured (SERVEMESH_ON_LEASE_LOST=exit)",
                      self._lease_id, why)
            if self._on_fatal is not None:
                self._on_fatal(DiscoveryError(f"etcd lease lost: {why}"))
            return
        log.error("lease %x lost (%s): this process is invisible to clients until it re-registers",
                  self._lease_id, why)

    async def _regrant(self) -> None:
        aetcd = _aetcd()
        if self._on_lease_lost == "exit":
            return
        try:
            await within(self._client.lease(self._ttl, lease_id=self._lease_id), self._timeout)
        except aetcd.exceptions.DuplicateLeaseError:
            pass  # the lease survived after all
        for record in list(self._records.values()):
            await within(
                self._client.put(record.key.encode(), record.to_json(), lease=self._lease_id), self._timeout)
        self._lost = False
        log.info("re-registered %d endpoint(s) under lease %x", len(self._records), self._lease_id)


class _LeaseExpired(Exception):
    pass


def _parse(value: bytes) -> InstanceRecord | None:
    try:
        return InstanceRecord.from_json(value)
    except Exception:
        log.warning("ignoring a malformed instance record in etcd: %r", value[:200])
        return None
