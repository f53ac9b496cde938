"""Authentication and TLS against real servers: etcd with users and with TLS, NATS with
users, NKeys and TLS, and the TCP request plane over TLS and mutual TLS
(docs/security.md). Certificates are made per module (servemesh.testing.certs)."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import pytest

from servemesh import DistributedRuntime, InstanceUnavailable
from servemesh.config import Settings
from servemesh.errors import ConfigError, DiscoveryError
from servemesh.runtime import codec
from servemesh.runtime.client import InstanceInfo
from servemesh.runtime.discovery.etcd import EtcdDiscovery
from servemesh.runtime.records import instance_prefix
from servemesh.runtime.transport.nats_connect import connect
from servemesh.runtime.transport.streams import request_frame
from servemesh.testing import EtcdServer, NatsServer
from servemesh.testing.certs import CertAuthority, CertFiles, NatsOperator, make_user_nkey

WORKER = Path(__file__).with_name("stream_worker.py")


class Certs:
    def __init__(self, directory: Path) -> None:
        ca = CertAuthority(directory)
        self.server: CertFiles = ca.issue("server", hosts=["127.0.0.1", "localhost"])
        self.client: CertFiles = ca.issue("client", hosts=[])
        # a CA nobody trusts, and a client certificate it signed
        self.stranger: CertFiles = CertAuthority(directory, name="stranger").issue("client", hosts=[])


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def etcd_auth():
    with EtcdServer(root_password="root-secret") as server:
        yield server


@pytest.fixture(scope="module")
def etcd_tls(certs):
    with EtcdServer(tls=certs.server, client_cert_auth=True) as server:
        yield server


@pytest.fixture(scope="module")
def nkey(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return make_user_nkey(tmp_path_factory.mktemp("nkeys"))


@pytest.fixture(scope="module")
def nats_auth(nkey):
    with NatsServer(users=[{"user": "alice", "password": "nats-secret"}, {"nkey": nkey[1]}]) as server:
        yield server


@pytest.fixture(scope="module")
def nats_tls(certs):
    with NatsServer(tls=certs.server, verify_clients=True) as server:
        yield server


def runtime(**overrides) -> DistributedRuntime:
    """A runtime whose etcd session uses the credential and TLS settings."""
    settings = Settings.from_env(**overrides)
    return DistributedRuntime(settings, discovery=EtcdDiscovery.from_settings(settings))


async def numbers(request: dict):
    for k in range(int(request.get("n", 3))):
        yield {"k": k}


async def serve_and_call(server: DistributedRuntime, caller: DistributedRuntime,
                         path: str) -> tuple[list[dict], InstanceInfo]:
    """Serve ``numbers`` as ``path`` on ``server``; call it from ``caller``: the items and
    the instance's record."""
    task = asyncio.create_task(server.endpoint(path).serve_endpoint(numbers))
    try:
        async with asyncio.timeout(10):
            await server.wait_served(path)
            client = await caller.endpoint(path).client()
            items = [i async for i in client.generate({"n": 3}, annotated=False)]
            return items, client.instances()[0]
    finally:
        server.request_shutdown()
        await task


async def reachable(rt: DistributedRuntime, prefix: str) -> None:
    """Poll until ``rt`` can list ``prefix`` again (etcd restarted)."""
    async with asyncio.timeout(10):
        while True:
            try:
                await rt.discovery.list(prefix)
                return
            except DiscoveryError:
                await asyncio.sleep(0.1)


# -- etcd ------------------------------------------------------------------------------
async def test_etcd_user_limited_to_its_namespace_registers_and_discovers(etcd_auth, namespace):
    etcd_auth.add_user(namespace, "pw-1", prefix=f"instances/{namespace}/")
    server = runtime(etcd=etcd_auth.url, etcd_user=namespace, etcd_password="pw-1")
    # credentials in the URL work as well
    caller = runtime(etcd=etcd_auth.url.replace("://", f"://{namespace}:pw-1@"))
    async with caller:
        items, _ = await serve_and_call(server, caller, f"{namespace}.svc.numbers")
    assert items == [{"k": 0}, {"k": 1}, {"k": 2}]
    # the user may not register in another namespace
    async with runtime(etcd=etcd_auth.url, etcd_user=namespace, etcd_password="pw-1") as rt:
        with pytest.raises(ConfigError, match="may not use these keys"):
            async with asyncio.timeout(10):
                await rt.endpoint("elsewhere.svc.numbers").serve_endpoint(numbers)


async def test_etcd_wrong_or_missing_password_is_a_clear_error(etcd_auth, namespace):
    etcd_auth.add_user(namespace, "pw-2", prefix=f"instances/{namespace}/")
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        async with asyncio.timeout(10):
            await runtime(etcd=etcd_auth.url, etcd_user=namespace, etcd_password="not-it").start()
    assert time.monotonic() - started < 3
    assert "SERVEMESH_ETCD_PASSWORD" in str(info.value) and "not-it" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        async with asyncio.timeout(10):
            await runtime(etcd=etcd_auth.url.replace("://", f"://{namespace}:not-it@")).start()
    assert "not-it" not in str(info.value) and "***" in str(info.value)
    async with runtime(etcd=etcd_auth.url) as rt:  # etcd lets an anonymous session lease
        with pytest.raises(ConfigError, match="etcd requires authentication"):
            async with asyncio.timeout(10):
                await rt.endpoint(f"{namespace}.svc.numbers").serve_endpoint(numbers)


async def test_etcd_session_authenticates_again_after_an_etcd_restart(tmp_path, namespace):
    """etcd forgets its auth tokens when it restarts: the session gets a new one."""
    with EtcdServer(data_dir=str(tmp_path / "etcd"), root_password="root-secret") as etcd:
        creds = {"etcd": etcd.url, "etcd_user": "root", "etcd_password": "root-secret", "lease_ttl": 5}
        async with runtime(**creds) as server, runtime(**creds) as caller:
            first = asyncio.create_task(server.endpoint(f"{namespace}.svc.a").serve_endpoint(numbers))
            await server.wait_served(f"{namespace}.svc.a")
            etcd.stop()
            etcd.start()
            await reachable(caller, f"instances/{namespace}/")
            # a new registration and a new watch need a valid token
            second = asyncio.create_task(server.endpoint(f"{namespace}.svc.b").serve_endpoint(numbers))
            async with asyncio.timeout(10):
                await server.wait_served(f"{namespace}.svc.b")
                client = await caller.endpoint(f"{namespace}.svc.b").client()
                assert [i async for i in client.generate({"n": 2}, annotated=False)] == [{"k": 0}, {"k": 1}]
            server.request_shutdown()
            await asyncio.gather(first, second)


async def test_etcd_over_tls_with_client_certificates(etcd_tls, certs, namespace):
    tls = {"etcd_ca": certs.server.ca, "etcd_cert": certs.client.cert, "etcd_key": certs.client.key}
    async with runtime(etcd=etcd_tls.url, **tls) as caller:
        items, _ = await serve_and_call(runtime(etcd=etcd_tls.url, **tls), caller,
                                        f"{namespace}.svc.numbers")
    assert items == [{"k": 0}, {"k": 1}, {"k": 2}]
    cases = [
        ({"etcd_ca": certs.server.ca}, "SERVEMESH_ETCD_CERT"),  # no client certificate
        ({**tls, "etcd_cert": certs.stranger.cert, "etcd_key": certs.stranger.key}, "SERVEMESH_ETCD_CERT"),
        ({**tls, "etcd_ca": certs.stranger.ca}, "not trusted: SERVEMESH_ETCD_CA"),  # etcd's CA unknown
    ]
    for settings, message in cases:
        with pytest.raises(ConfigError, match=message):
            async with asyncio.timeout(10):
                await runtime(etcd=etcd_tls.url, **settings).start()


# -- NATS ------------------------------------------------------------------------------
async def test_nats_transport_with_user_and_password(etcd, nats_auth, namespace):
    settings = {"etcd": etcd.url, "nats": nats_auth.url, "transport": "nats",
                "nats_user": "alice", "nats_password": "nats-secret"}
    async with runtime(**settings) as caller:
        items, record = await serve_and_call(runtime(**settings), caller, f"{namespace}.svc.numbers")
    assert items == [{"k": 0}, {"k": 1}, {"k": 2}]
    assert set(record.transport) == {"nats_tcp"}


async def test_nats_permissions_of_one_namespace_carry_its_calls(etcd, namespace):
    """The per-namespace user of docs/security.md: its components' subjects and the
    ``_SM`` inboxes, nothing else."""
    own = [f"sm.{namespace}.>", "_SM.>"]
    user = {"user": "ns", "password": "ns-secret",
            "permissions": {"publish": {"allow": own}, "subscribe": {"allow": own}}}
    with NatsServer(users=[user]) as server:
        settings = {"etcd": etcd.url, "nats": server.url, "transport": "nats",
                    "nats_user": "ns", "nats_password": "ns-secret"}
        async with runtime(**settings) as caller:
            items, _ = await serve_and_call(runtime(**settings), caller, f"{namespace}.svc.numbers")
        assert items == [{"k": 0}, {"k": 1}, {"k": 2}]
        assert "Violation" not in server.log()


async def test_nats_permissions_refused_fail_loudly_and_register_nothing(etcd, namespace):
    """A worker whose NATS user may not subscribe to its namespace fails to serve with
    a ``ConfigError`` naming the permission, and nothing is registered; a caller that
    may not publish there gets a refusal naming it, in seconds, not a hang."""
    everything = {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    deaf = {"user": "deaf", "password": "deaf-secret",
            "permissions": {**everything, "subscribe": {"allow": ["_SM.>"]}}}
    mute = {"user": "mute", "password": "mute-secret",
            "permissions": {**everything, "publish": {"allow": ["_SM.>"]}}}
    good = {"user": "good", "password": "good-secret", "permissions": everything}
    path = f"{namespace}.svc.numbers"
    with NatsServer(users=[deaf, mute, good]) as server:
        def as_user(user: dict) -> DistributedRuntime:
            return runtime(etcd=etcd.url, nats=server.url, transport="nats", nats_user=user["user"],
                           nats_password=user["password"], instance_wait=0.5)

        async with as_user(deaf) as worker, as_user(good) as caller:
            with pytest.raises(ConfigError) as info:
                async with asyncio.timeout(10):
                    await worker.endpoint(path).serve_endpoint(numbers)
            assert f"subscribe to sm.{namespace}.svc.numbers-" in str(info.value)
            assert f"sm.{namespace}.>" in str(info.value)
            client = await caller.endpoint(path).client()
            assert client.instances() == []
            assert await caller.discovery.list(instance_prefix(namespace)) == []

        async with as_user(good) as worker, as_user(mute) as caller:
            task = asyncio.create_task(worker.endpoint(path).serve_endpoint(numbers))
            try:
                await asyncio.wait_for(worker.wait_served(path), 10)
                client = await caller.endpoint(path).client()
                await client.wait_for_instances(10)
                assert len(await caller.discovery.list(instance_prefix(namespace))) == 1
                started = time.monotonic()
                with pytest.raises(InstanceUnavailable) as refused:
                    async for _ in client.generate({"n": 3}):
                        pass
                assert time.monotonic() - started < 5
                assert "publish" in str(refused.value) and "permission" in str(refused.value)
            finally:
                worker.request_shutdown()
                await task


async def test_nats_transport_with_a_creds_file(etcd, tmp_path, namespace):
    """Operator mode: a user is a JWT its account signed, and a ``.creds`` file holds
    that JWT and the user's seed (``SERVEMESH_NATS_CREDS``). Calls go through with the
    per-namespace permissions in the JWT; a user of a foreign account is refused at
    once with the credentials hint."""
    operator = NatsOperator(tmp_path / "operator")
    creds = operator.user("ns", allow=[f"sm.{namespace}.>", "_SM.>"])
    stranger = NatsOperator(tmp_path / "other").user("stranger")
    with NatsServer(operator=operator) as server:
        settings = {"etcd": etcd.url, "nats": server.url, "transport": "nats", "nats_creds": creds}
        async with runtime(**settings) as caller:
            items, record = await serve_and_call(runtime(**settings), caller, f"{namespace}.svc.numbers")
        assert items == [{"k": 0}, {"k": 1}, {"k": 2}]
        assert set(record.transport) == {"nats_tcp"}
        assert "Violation" not in server.log()
        started = time.monotonic()
        with pytest.raises(ConfigError) as info:
            await connect(server.url, "t", 3.0, settings=Settings(nats=server.url, nats_creds=stranger))
        assert time.monotonic() - started < 2
        assert "NATS refused the credentials" in str(info.value)


async def test_nats_with_an_nkey(nats_auth, nkey):
    nc = await connect(nats_auth.url, "t", 3.0, settings=Settings(nats=nats_auth.url, nats_nkey=nkey[0]))
    try:
        sub = await nc.subscribe("ping")
        await nc.publish("ping", b"1")
        assert (await sub.next_msg(timeout=3)).data == b"1"
    finally:
        await nc.close()


async def test_wrong_nats_credentials_fail_fast(etcd, nats_auth, tmp_path, namespace):
    other_seed, _ = make_user_nkey(tmp_path, "stranger")
    for creds in ({"nats_user": "alice", "nats_password": "not-it"}, {"nats_nkey": other_seed}, {}):
        rt = runtime(etcd=etcd.url, nats=nats_auth.url, transport="nats", **creds)
        async with rt:
            started = time.monotonic()
            with pytest.raises(ConfigError) as info:
                async with asyncio.timeout(10):  # never an endless reconnect loop
                    await rt.endpoint(f"{namespace}.svc.numbers").serve_endpoint(numbers)
            assert time.monotonic() - started < 2
            assert "NATS refused the credentials" in str(info.value) and "not-it" not in str(info.value)


async def test_nats_over_tls_with_client_certificates(nats_tls, certs):
    good = {"nats_ca": certs.server.ca, "nats_cert": certs.client.cert, "nats_key": certs.client.key}
    nc = await connect(nats_tls.url, "t", 3.0, settings=Settings(nats=nats_tls.url, **good))
    try:
        assert nc.connected_url.scheme == "tls"
        sub = await nc.subscribe("ping")
        await nc.publish("ping", b"1")
        assert (await sub.next_msg(timeout=3)).data == b"1"
    finally:
        await nc.close()
    cases = [({}, "certificate is not trusted"),  # the system's roots do not know the test CA
             ({**good, "nats_ca": certs.stranger.ca}, "certificate is not trusted"),
             ({"nats_ca": certs.server.ca}, "SERVEMESH_NATS_CERT"),  # no client certificate
             ({**good, "nats_cert": certs.stranger.cert, "nats_key": certs.stranger.key}, "SERVEMESH_NATS_CERT")]
    for settings, message in cases:
        with pytest.raises(ConfigError, match=message):
            await connect(nats_tls.url, "t", 3.0, settings=Settings(nats=nats_tls.url, **settings))


async def test_nats_refuses_plaintext_where_tls_is_expected(nats_auth, certs):
    url = nats_auth.url.replace("nats://", "tls://")
    with pytest.raises(ConfigError, match="does not use TLS"):
        await connect(url, "t", 3.0, settings=Settings(nats=url, nats_user="alice", nats_password="nats-secret",
                                                        nats_ca=certs.server.ca))


# -- the TCP request plane ---------------------------------------------------------------
def request_bytes(path: str) -> bytes:
    """A well-formed request for three items of ``path``, as a caller sends it."""
    return codec.encode(request_frame(1, path, {"n": 3}, None, 16, 1 << 20))


async def start_worker(spawn, etcd, namespace: str, env: dict[str, str], rt: DistributedRuntime):
    spawn(WORKER, namespace, env={"SERVEMESH_ETCD": etcd.url, "SERVEMESH_LEASE_TTL": "3", **env}, name="worker")
    client = await rt.endpoint(f"{namespace}.worker.stream").client()
    await client.wait_for_instances(20)
    (record,) = await rt.discovery.list(f"instances/{namespace}/worker/stream")
    return record


async def test_tcp_plane_over_tls(spawn, etcd, certs, namespace):
    env = {"SERVEMESH_TLS_CERT": certs.server.cert, "SERVEMESH_TLS_KEY": certs.server.key}
    async with runtime(etcd=etcd.url, tls_ca=certs.server.ca) as rt:
        record = await start_worker(spawn, etcd, namespace, env, rt)
        assert record.transport["tls"] == "1"
        client = await rt.endpoint(f"{namespace}.worker.stream").client()
        assert [i["k"] async for i in client.generate({"n": 3}, annotated=False)] == [0, 1, 2]

        # a plain TCP peer is dropped at the handshake; the worker keeps serving
        host, port = record.transport["tcp"].rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request_bytes(f"{namespace}.worker.stream"))
        data = await asyncio.wait_for(reader.read(), 5)
        assert data == b"" or data[0] == 0x15  # at most a TLS alert record, then the worker hangs up
        writer.close()
        assert [i["k"] async for i in client.generate({"n": 2}, annotated=False)] == [0, 1]

    for settings, reason in (({}, "set SERVEMESH_TLS_CA"),
                             ({"tls_ca": certs.stranger.ca}, "not trusted")):
        async with runtime(etcd=etcd.url, **settings) as rt:
            client = await rt.endpoint(f"{namespace}.worker.stream").client()
            await client.wait_for_instances(10)
            started = time.monotonic()
            with pytest.raises(InstanceUnavailable) as info:
                [i async for i in client.generate({"n": 1})]
            assert reason in info.value.reason
            assert time.monotonic() - started < 5


async def test_tcp_plane_with_mutual_tls(spawn, etcd, certs, namespace):
    env = {"SERVEMESH_TLS_CERT": certs.server.cert, "SERVEMESH_TLS_KEY": certs.server.key,
           "SERVEMESH_TLS_CA": certs.server.ca, "SERVEMESH_TLS_MUTUAL": "true"}
    good = {"tls_ca": certs.server.ca, "tls_cert": certs.client.cert, "tls_key": certs.client.key}
    async with runtime(etcd=etcd.url, **good) as rt:
        record = await start_worker(spawn, etcd, namespace, env, rt)
        assert record.transport["tls"] == "mutual"
        client = await rt.endpoint(f"{namespace}.worker.stream").client()
        assert [i["k"] async for i in client.generate({"n": 3}, annotated=False)] == [0, 1, 2]

    # the worker itself refuses a TLS peer without a client certificate
    host, port = record.transport["tcp"].rsplit(":", 1)
    context = ssl.create_default_context(cafile=certs.server.ca)
    reader, writer = await asyncio.open_connection(host, int(port), ssl=context, server_hostname=host)
    writer.write(request_bytes(f"{namespace}.worker.stream"))  # TLS 1.3: sent before the refusal arrives
    try:
        data = await asyncio.wait_for(reader.read(), 5)
    except ssl.SSLError as exc:
        assert "CERTIFICATE_REQUIRED" in str(exc)
        data = b""
    except ConnectionResetError:  # the worker hung up before our read saw the alert
        data = b""
    assert data == b""  # never an answer
    writer.close()

    cases = [({"tls_ca": certs.server.ca}, "SERVEMESH_TLS_CERT"),  # known to need one: not even dialled
             ({**good, "tls_cert": certs.stranger.cert, "tls_key": certs.stranger.key}, "lost")]  # refused
    for settings, reason in cases:
        async with runtime(etcd=etcd.url, **settings) as rt:
            client = await rt.endpoint(f"{namespace}.worker.stream").client()
            await client.wait_for_instances(10)
            with pytest.raises(InstanceUnavailable) as info:
                [i async for i in client.generate({"n": 1})]
            assert reason in info.value.reason
