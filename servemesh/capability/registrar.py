"""``Registrar``: a replica's registration with its API server, kept alive by heartbeats.

The replica ``POST``s its registration to ``{api_server}/register`` at start and again
every ``interval`` seconds (a heartbeat: the API server drops a registration that
misses them for its TTL), and unregisters at shutdown. Each answer carries the other
replicas' runtime records (``peers``), which a replica without etcd keeps in its own
discovery store (:class:`PeerSync`) so that it can delegate. A failed attempt is logged
(throttled) and retried at the next heartbeat; a 409 (the id is someone else's) too,
until the other registration expires.

HTTP goes through the standard library in a worker thread, with explicit timeouts: a
few small requests a minute need nothing more.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import msgspec

from ..errors import ConfigError, ServemeshError
from ..log import Throttled
from ..runtime.discovery.memory import MemoryStore
from ..runtime.records import InstanceRecord

log = logging.getLogger("servemesh.capability.registrar")
throttled = Throttled(log)


class RegistrationFailed(ServemeshError):
    """The API server refused the registration or could not be reached."""

    def __init__(self, url: str, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"registering with {url} failed ({status or 'unreachable'}): {message}")


class Registrar:
    def __init__(self, api_server: str, payload: dict[str, Any], *, interval: float, timeout: float = 5.0,
                 api_key: str | None = None, on_peers: Callable[[list[InstanceRecord]], None] | None = None) -> None:
        parts = urlsplit(api_server if "://" in api_server else f"http://{api_server}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--api-server {api_server!r} is not an http(s)://host:port URL")
        self.url = api_server
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self.payload = payload
        self.interval = self._configured = interval
        self.timeout = timeout
        self._api_key = api_key
        self._on_peers = on_peers
        self._lock = asyncio.Lock()
        #: the API server accepted the last attempt
        self.registered = False

    async def register(self) -> dict[str, Any]:
        """Register (or heartbeat) now; the API server's answer."""
        async with self._lock:  # a refresh and a heartbeat never race
            try:
                answer = await self._post("POST", "/register", self.payload)
            except RegistrationFailed:
                self.registered = False
                raise
        self.registered = True
        ttl = answer.get("ttl")
        if isinstance(ttl, (int, float)) and ttl > 0:  # heartbeat well within the server's TTL, whatever ours says
            self.interval = min(self._configured, ttl / 3)
        peers = answer.get("peers")
        if self._on_peers is not None and isinstance(peers, list):
            records = []
            for item in peers:
                try:
                    records.append(msgspec.convert(item, InstanceRecord))
                except msgspec.ValidationError:
                    continue
            self._on_peers(records)
        return answer

    async def refresh(self) -> None:
        """Register now to learn the current peers (a replica about to say "no replica
        has that capability" asks first); failures only logged."""
        try:
            await self.register()
        except RegistrationFailed as exc:
            throttled.warning("refresh", "%s", exc)

    async def run(self) -> None:
        """Heartbeat until cancelled (the first registration is ``register()``'s)."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.register()
            except RegistrationFailed as exc:
                throttled.warning(exc.status, "%s; retrying in %gs", exc, self.interval)

    async def unregister(self) -> None:
        body = {"replica_id": self.payload["replica_id"], "token": self.payload.get("token")}
        try:
            await self._post("POST", "/unregister", body)
        except RegistrationFailed as exc:
            log.warning("could not unregister: %s", exc)
        self.registered = False

    async def _post(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        return await asyncio.to_thread(self._request, method, self._prefix + path, data)

    def _request(self, method: str, path: str, data: bytes) -> dict[str, Any]:
        conn: http.client.HTTPConnection
        if self._scheme == "https":
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        headers = {"Content-Type": "application/json", "Content-Length": str(len(data))}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read(1 << 24)
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            raise RegistrationFailed(self.url, 0, str(exc) or type(exc).__name__) from None
        finally:
            conn.close()
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {}
        if status != 200 or not isinstance(answer, dict):
            message = answer.get("error") if isinstance(answer, dict) else None
            raise RegistrationFailed(self.url, status, str(message or raw[:200]))
        return answer


class PeerSync:
    """Keeps the peers an API server reports in a replica's own discovery store."""

    def __init__(self, store: MemoryStore, own_instance: int) -> None:
        self.store = store
        self.own = own_instance
        self._keys: set[str] = set()

    def apply(self, records: list[InstanceRecord]) -> None:
        fresh = {r.key: r for r in records if r.instance_id != self.own}
        for key in self._keys - set(fresh):
            self.store.delete(key)
        for key, record in fresh.items():
            if self.store.records.get(key) != record:
                self.store.put(record)
        self._keys = set(fresh)
