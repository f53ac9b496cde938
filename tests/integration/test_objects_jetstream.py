"""The object store over a real nats-server's JetStream (the session's ``nats`` fixture,
started with -js on a free port): the backend's promises, compare-and-set metadata,
purged tombstones, refused links and foreign objects, and NATS credentials."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time

import nats as nats_py
import numpy as np
import pytest
from nats.js import api

from servemesh.config import Settings
from servemesh.errors import ConfigError
from servemesh.objects import (
    FOREVER,
    InvalidObjectRef,
    ObjectCorrupted,
    ObjectNotFound,
    Objects,
    ObjectStoreSettings,
    ObjectTooLarge,
    open_objects,
)
from servemesh.objects.jetstream import JetStreamStore
from servemesh.objects.refs import ref_for
from servemesh.testing import NatsServer, free_port

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def bucket(request) -> str:
    """A bucket of this test's own, so tests sharing the server never meet."""
    return "t_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16]


@pytest.fixture
async def open_store(nats, bucket):
    opened: list[JetStreamStore] = []

    async def make(clock=time.time, **kwargs) -> JetStreamStore:
        store = await JetStreamStore.connect(nats.url, bucket=bucket, clock=clock, **kwargs)
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.aclose()


@pytest.fixture
async def raw(nats):
    """A plain nats-py connection, to look at the bucket's stream from outside."""
    nc = await nats_py.connect(nats.url)
    yield nc.jetstream()
    await nc.close()


async def stream_messages(js, bucket: str) -> int:
    return (await js.stream_info(f"OBJ_{bucket}")).state.messages


async def test_values_round_trip_through_jetstream(open_store):
    async with Objects(await open_store()) as objects:
        for value in ({"data": "value"}, b"\x00raw", ["a", 1, None]):
            assert await objects.aget(await objects.acreate(value)) == value
        array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
        back = await objects.aget(await objects.acreate(array))
        assert back.dtype == np.int16 and back.shape == (2, 3, 4)
        np.testing.assert_array_equal(back, array)


async def test_a_payload_of_many_chunks_round_trips(open_store):
    store = await open_store(max_bytes=4 << 20)
    data = os.urandom(1 << 20) + b"tail"
    meta = await store.put(data)
    assert meta.ref == ref_for(data)
    assert (await store.get(meta.ref))[0] == data


async def test_identical_payloads_are_stored_once_and_extended_across_replicas(open_store, raw, bucket):
    clock = Clock()
    a = await open_store(clock)
    b = await open_store(clock)  # another replica: its own connection
    first = await a.put(b"shared", ttl=10)
    assert (first.created, first.expires) == (T0, T0 + 10)
    messages = await stream_messages(raw, bucket)
    clock.now = T0 + 5
    extended = await b.put(b"shared", ttl=100)
    assert extended.ref == first.ref and (extended.created, extended.expires) == (T0, T0 + 105)
    assert (await a.put(b"shared", ttl=1)).expires == T0 + 105
    assert await a.stat(first.ref) == extended
    assert await stream_messages(raw, bucket) == messages  # metadata rolled up, no second copy


async def test_expiry_gc_and_purged_tombstones(open_store, raw, bucket):
    clock = Clock()
    store = await open_store(clock)
    short = (await store.put(b"short", ttl=10)).ref
    kept = (await store.put(b"kept", ttl=FOREVER)).ref
    clock.now = T0 + 10
    with pytest.raises(ObjectNotFound) as caught:
        await store.get(short)
    assert caught.value.expired
    assert await store.gc() == 1
    clock.now = T0
    assert not await store.exists(short)  # removed, not merely hidden
    assert (await store.get(kept))[0] == b"kept"
    assert await store.delete(kept) is True
    assert await store.delete(kept) is False
    assert await stream_messages(raw, bucket) == 0  # no tombstones, no chunks left
    assert await store.gc() == 0  # an empty bucket


async def test_gc_never_removes_an_object_another_replica_refreshed(open_store):
    clock = Clock()
    collector = await open_store(clock)
    writer = await open_store(clock)
    ref = (await writer.put(b"contested", ttl=10)).ref
    clock.now = T0 + 20
    seen = await collector._read(ref)  # the collector judged it expired ...
    assert seen is not None
    await writer.put(b"contested", ttl=100)  # ... then the writer stored it again
    assert await collector._remove(ref, *seen) is False
    assert (await collector.get(ref))[0] == b"contested"


async def test_size_limit_is_checked_before_download(open_store):
    big = await open_store(max_bytes=1 << 20)
    ref = (await big.put(b"z" * 5000)).ref
    small = await open_store(max_bytes=1000)
    with pytest.raises(ObjectTooLarge) as caught:
        await small.get(ref)
    assert (caught.value.size, caught.value.limit) == (5000, 1000)
    with pytest.raises(ObjectTooLarge):
        await small.put(b"z" * 1001)


async def test_traversal_refs_never_reach_nats(open_store):
    store = await open_store()
    for bad in ("../x", "/etc/passwd", "obj-../../x", "$O.bucket.M.>", "obj-" + "0" * 63 + "*"):
        with pytest.raises(InvalidObjectRef):
            await store.get(bad)


async def test_objects_servemesh_did_not_write_are_refused_and_left_alone(open_store, raw, bucket):
    clock = Clock()
    store = await open_store(clock)
    foreign = b"written with the nats CLI"
    ref = ref_for(foreign)
    await (await raw.object_store(bucket)).put(ref, foreign)
    with pytest.raises(ObjectCorrupted, match="not stored by servemesh"):
        await store.get(ref)
    clock.now = T0 + 1e9
    assert await store.gc() == 0


async def test_a_link_to_another_bucket_is_never_followed(open_store, raw, bucket):
    store = await open_store()
    ref = "obj-" + "a" * 64
    link = api.ObjectInfo(name=ref, bucket=bucket, nuid="n", size=0, chunks=0, digest="",
                          headers={"Servemesh-Created": [repr(T0)], "Servemesh-Expires": ["never"]},
                          options=api.ObjectMetaOptions(link=api.ObjectLink(bucket="elsewhere", name="secret")))
    subject = f"$O.{bucket}.M.{base64.urlsafe_b64encode(ref.encode()).decode()}"
    await raw.publish(subject, json.dumps(link.as_dict()).encode())
    with pytest.raises(ObjectCorrupted, match="link"):
        await store.get(ref)


async def test_open_objects_with_a_nats_url_and_the_sync_facade(nats, bucket):
    settings = ObjectStoreSettings(location=f"{nats.url}?bucket={bucket}", gc_interval=3600)
    async with open_objects(settings) as objects:
        ref = await asyncio.to_thread(objects.create, {"data": "value"})
        assert await asyncio.to_thread(objects.get, ref) == {"data": "value"}


async def test_nats_credentials_come_from_the_runtime_settings(tmp_path):
    with NatsServer(users=[{"user": "objects", "password": "s3cret-pw"}]) as server:
        good = Settings(nats_user="objects", nats_password="s3cret-pw", state_dir=str(tmp_path))
        settings = ObjectStoreSettings.from_settings(good, location=f"{server.url}?bucket=creds")
        async with open_objects(settings) as objects:
            assert await objects.aget(await objects.acreate({"auth": True})) == {"auth": True}
        bad = Settings(nats_user="objects", nats_password="wrong", state_dir=str(tmp_path))
        with pytest.raises(ConfigError, match="refused the credentials") as caught:
            async with open_objects(ObjectStoreSettings.from_settings(bad, location=f"{server.url}?bucket=creds")):
                pass
        assert "wrong" not in str(caught.value)


async def test_an_unreachable_nats_is_a_config_error():
    url = f"nats://127.0.0.1:{free_port('127.0.0.1')}"
    with pytest.raises(ConfigError, match="cannot connect to NATS"):
        await JetStreamStore.connect(url, connect_timeout=0.5)


async def test_the_bucket_keeps_objects_until_their_own_expiry(open_store, raw, bucket):
    # expiry lives in each object's metadata: a stream max age could not follow an extension
    await open_store()
    assert not (await raw.stream_info(f"OBJ_{bucket}")).config.max_age
