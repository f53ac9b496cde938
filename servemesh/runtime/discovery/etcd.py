"""etcd discovery: registrations are keys bound to this process's lease.

The instance id is the lease id. A keep-alive task refreshes the lease every
TTL/3; if etcd stays unreachable past the TTL the lease is lost, and when etcd
returns the session re-grants the *same* lease id and puts its keys back (or
asks the runtime to exit, if so configured). Watches re-list and resume after
any break, so a client's live set converges after an etcd restart.

Authentication and TLS (docs/security.md): a user and password from the URL
(``https://user:password@host``) or ``etcd_user`` / ``etcd_password``; TLS for an
``https://`` URL or when ``etcd_ca`` / ``etcd_cert`` is set, verified with
``etcd_ca`` (gRPC's default roots when unset), presenting ``etcd_cert`` /
``etcd_key``. etcd's auth tokens die with a restart and whenever its users or
roles change; the session then authenticates again, as etcd's own client does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from ...errors import ConfigError, DiscoveryError
from ..records import InstanceRecord
from ..tasks import TaskSet, within
from ..tls import TlsFiles, pem_material, redact_url
from .base import WatchSink

if TYPE_CHECKING:
    from ...config import Settings

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
    try:
        port = parts.port
    except ValueError:
        port = None
        parts = parts._replace(netloc="")
    if not parts.hostname or parts.scheme not in ("http", "https"):
        raise ConfigError(f"etcd address {redact_url(url)!r} must look like http://host:port "
                          "or https://[user:password@]host:port")
    return parts.hostname, port or 2379


# etcd's messages for a token to renew (what etcd's Go client renews on); a restart
# forgets every token and any change to users or roles outdates them
_STALE_TOKEN = ("invalid auth token", "revision of auth store is old", "user name is empty")


def _explain(exc: BaseException, tls: bool) -> tuple[type[Exception], str] | None:
    """A configuration problem behind an etcd error, and what to do about it."""
    text = str(exc)
    low = text.lower()
    if "authentication failed" in low:
        return ConfigError, ("etcd refused the user name or password: check SERVEMESH_ETCD_USER and "
                             "SERVEMESH_ETCD_PASSWORD (or the user:password in SERVEMESH_ETCD)")
    if "user name is empty" in low:
        return ConfigError, ("etcd requires authentication: set SERVEMESH_ETCD_USER and SERVEMESH_ETCD_PASSWORD "
                             "(or a client certificate whose name is an etcd user, SERVEMESH_ETCD_CERT/KEY)")
    if "authentication is not enabled" in low:
        return ConfigError, ("etcd has authentication disabled, so the credentials protect nothing: enable it "
                             "(`etcdctl auth enable`, docs/security.md) or unset SERVEMESH_ETCD_USER and "
                             "SERVEMESH_ETCD_PASSWORD")
    if "permission denied" in low:
        return ConfigError, ("the etcd user may not use these keys: grant its role readwrite on "
                             "instances/<namespace>/ (docs/security.md)")
    if "wrong_version_number" in low or "wrong version number" in low:
        return ConfigError, ("etcd does not speak TLS on this port: use an http:// URL and unset "
                             "SERVEMESH_ETCD_CA / SERVEMESH_ETCD_CERT")
    if not tls:
        return None
    if "certificate_verify_failed" in low or "peer name" in low or "hostname" in low:
        return ConfigError, ("etcd's certificate is not trusted: SERVEMESH_ETCD_CA must hold the CA that signed it, "
                             "and its names (SAN) must include the host in SERVEMESH_ETCD")
    if "bad_certificate" in low or "certificate_required" in low or "unknown_ca" in low:
        return ConfigError, ("etcd refused this client's certificate: with --client-cert-auth, set "
                             "SERVEMESH_ETCD_CERT and SERVEMESH_ETCD_KEY to a certificate signed by etcd's "
                             "--trusted-ca-file")
    if "handshake" in low or "ssl" in low:
        return ConfigError, ("the TLS handshake with etcd failed: does etcd serve TLS on this port "
                             "(--cert-file)? if not, use an http:// URL and unset SERVEMESH_ETCD_CA / "
                             "SERVEMESH_ETCD_CERT")
    return None


@functools.cache
def _client_class() -> Any:
    """aetcd's client, able to open a TLS channel (aetcd 1.0 opens plaintext channels
    only) and to renew its auth token."""
    aetcd = _aetcd()
    from aetcd import rpc
    from aetcd.client import _handle_errors

    class Client(aetcd.Client):  # type: ignore[misc, name-defined]
        _is_connecting: bool

        def __init__(self, *args: Any, credentials: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._credentials = credentials

        @_handle_errors  # type: ignore[misc]
        async def connect(self) -> None:
            # aetcd's connect with the channel made here (secure when credentials are given)
            if self._connected.is_set():
                return
            if self._is_connecting:  # another task is connecting: wait for it
                await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
                return
            try:
                self._is_connecting = True
                target = f"{self._host}:{self._port}"
                options = list(self._options.items())
                if self._credentials is None:
                    self.channel = rpc.insecure_channel(target, options=options)
                else:
                    self.channel = rpc.secure_channel(target, self._credentials, options=options)
                self.auth_stub = rpc.AuthStub(self.channel)
                self.kvstub = rpc.KVStub(self.channel)
                self.clusterstub = rpc.ClusterStub(self.channel)
                self.leasestub = rpc.LeaseStub(self.channel)
                self.maintenancestub = rpc.MaintenanceStub(self.channel)
                self._watcher = aetcd.watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout)
                if self._username is not None:
                    await self._authenticate()
                self._connected.set()
            except BaseException:
                channel, self.channel = self.channel, None
                if channel is not None:
                    await channel.close()
                raise
            finally:
                self._is_connecting = False

        async def _authenticate(self) -> None:
            request = rpc.AuthenticateRequest(name=self._username, password=self._password)
            resp = await self.auth_stub.Authenticate(request, timeout=self._timeout)
            self.metadata = (("token", resp.token),)
            self._watcher._metadata = self.metadata  # the next watch stream carries it

        @_handle_errors  # type: ignore[misc]
        async def renew_token(self) -> None:
            await self._authenticate()
            # etcd checks a watch against the token its stream was opened with: end the
            # stream, so the watches (which re-list and watch again) get a new one
            await self._watcher._terminate_stream(None)

    return Client


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
        user: str | None = None,
        password: str | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
    ) -> None:
        self.url = redact_url(url)  # never a password in a message
        self._host, self._port = parse_etcd_url(url)
        parts = urlsplit(url if "://" in url else f"http://{url}")
        self._user = user or (unquote(parts.username) if parts.username else None)
        self._password = password or (unquote(parts.password) if parts.password else None)
        if bool(self._user) != bool(self._password):
            raise ConfigError("etcd authentication needs both a user and a password: set SERVEMESH_ETCD_USER "
                              "and SERVEMESH_ETCD_PASSWORD (or https://user:password@host in SERVEMESH_ETCD)")
        self._tls_files = TlsFiles("etcd", ca, cert, key)
        if bool(cert) != bool(key):
            raise ConfigError("an etcd client certificate needs both SERVEMESH_ETCD_CERT and SERVEMESH_ETCD_KEY")
        self.tls = parts.scheme == "https" or self._tls_files.any
        self._ttl = lease_ttl
        self._timeout = timeout
        self._on_lease_lost = on_lease_lost
        self._on_fatal = on_fatal
        self._client: Any = None
        self._lease_id = 0
        self._records: dict[str, InstanceRecord] = {}
        self._tasks = TaskSet("etcd discovery")
        self._lost = False
        self._closing = False

    @classmethod
    def from_settings(cls, settings: Settings,
                      on_fatal: Callable[[BaseException], None] | None = None) -> EtcdDiscovery:
        """The session the settings describe: URL, lease, timeouts, credentials and TLS."""
        if not settings.etcd:
            raise ConfigError("no etcd configured: set SERVEMESH_ETCD or run `servemesh up`")
        s = settings
        return cls(settings.etcd, lease_ttl=s.lease_ttl, timeout=s.connect_timeout, on_lease_lost=s.on_lease_lost,
                   on_fatal=on_fatal, user=s.etcd_user, password=s.etcd_password, ca=s.etcd_ca,
                   cert=s.etcd_cert, key=s.etcd_key)

    @property
    def instance_id(self) -> int:
        return self._lease_id

    def _make_client(self) -> Any:
        credentials = None
        if self.tls:
            import grpc

            pem = pem_material(self._tls_files)
            credentials = grpc.ssl_channel_credentials(pem.root, pem.key, pem.cert)
        return _client_class()(host=self._host, port=self._port, username=self._user, password=self._password,
                               timeout=self._timeout, options=_GRPC_OPTIONS, credentials=credentials)

    async def start(self) -> None:
        aetcd = _aetcd()
        self._client = self._make_client()
        try:
            lease = await within(self._client.lease(self._ttl), self._timeout)
        except (TimeoutError, aetcd.exceptions.ClientError, OSError) as exc:
            with contextlib.suppress(Exception):
                await within(self._client.close(), self._timeout)
            self._client = None
            explained = _explain(exc, self.tls)
            if explained is not None:
                kind, hint = explained
                raise kind(f"cannot use etcd at {self.url}: {hint} ({exc})") from exc
            hint = "start it with `servemesh up` or point SERVEMESH_ETCD at a running etcd"
            if not self.tls:
                hint += " (an etcd that serves TLS needs an https:// URL and SERVEMESH_ETCD_CA)"
            raise DiscoveryError(f"cannot reach etcd at {self.url}: {exc or type(exc).__name__}; {hint}") from exc
        self._lease_id = lease.id
        self._tasks.spawn(self._keep_alive(), name="etcd-keepalive")
        log.debug("etcd session at %s with lease %x (ttl %ss)", self.url, self._lease_id, self._ttl)

    async def close(self) -> None:
        self._closing = True
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
        await self._call(lambda: self._client.put(record.key.encode(), record.to_json(), lease=self._lease_id),
                         f"register {record.key}")
        self._records[record.key] = record

    async def unregister(self, record: InstanceRecord) -> None:
        self._records.pop(record.key, None)
        try:
            await self._call(lambda: self._client.delete(record.key.encode()), f"unregister {record.key}")
        except DiscoveryError:
            if not self._closing:
                raise  # else the lease's revocation (or expiry) removes the key

    async def list(self, prefix: str) -> list[InstanceRecord]:
        result = await self._call(lambda: self._client.get_prefix(prefix.encode()), f"list {prefix}")
        return [_parse(kv.value) for kv in result if _parse(kv.value) is not None]  # type: ignore[misc]

    async def watch(self, prefix: str, sink: WatchSink) -> _EtcdWatch:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = self._tasks.spawn(self._watch_loop(prefix, sink, ready), name=f"etcd-watch {prefix}")
        await ready
        return _EtcdWatch(task)

    async def _call(self, make: Callable[[], Awaitable[Any]], what: str) -> Any:
        aetcd = _aetcd()
        if self._client is None:
            raise DiscoveryError(f"cannot {what}: the etcd session is closed")
        try:
            try:
                return await within(make(), self._timeout)
            except aetcd.exceptions.ClientError as exc:
                if not await self._renew_token(exc):
                    raise
            return await within(make(), self._timeout)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            # gRPC cancels the calls in flight when close() closes the channel
            raise DiscoveryError(f"cannot {what}: the etcd session was closed meanwhile") from None
        except (TimeoutError, aetcd.exceptions.ClientError, OSError) as exc:
            explained = _explain(exc, tls=False)  # TLS problems show at start, not here
            if explained is not None:
                kind, hint = explained
                raise kind(f"etcd at {self.url} failed to {what}: {hint} ({exc})") from exc
            raise DiscoveryError(f"etcd at {self.url} failed to {what}: {exc or type(exc).__name__}") from exc

    async def _renew_token(self, exc: BaseException) -> bool:
        """Authenticate again if ``exc`` says the auth token is stale; True if that worked."""
        if self._user is None or not any(m in str(exc) for m in _STALE_TOKEN):
            return False
        aetcd = _aetcd()
        try:
            await within(self._client.renew_token(), self._timeout)
        except (TimeoutError, aetcd.exceptions.ClientError, OSError) as err:
            log.warning("etcd at %s: renewing the auth token failed: %r", self.url, err)
            return False
        log.info("etcd at %s: auth token renewed (%s)", self.url, exc)
        return True

    async def _watch_loop(self, prefix: str, sink: WatchSink, ready: asyncio.Future[None]) -> None:
        aetcd = _aetcd()
        known: set[str] = set()
        warned = renewed = False
        while True:
            try:
                snapshot = await within(self._client.get_prefix(prefix.encode()), self._timeout)
                renewed = False
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
                if not renewed and await self._renew_token(exc):
                    renewed = True  # once per failure: a token that keeps failing is an error
                    continue
                if not ready.done():
                    explained = _explain(exc, tls=False)
                    hint = f"{explained[1]} " if explained is not None else ""
                    kind = explained[0] if explained is not None else DiscoveryError
                    ready.set_exception(kind(f"cannot watch {prefix} on etcd at {self.url}: {hint}({exc})"))
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
                if await self._renew_token(exc):
                    continue  # retried at once (``failing`` keeps the pause short)
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
