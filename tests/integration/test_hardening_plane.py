"""Hostile and broken peers on the request plane: one bad request or peer never hurts
other users, every call has a deadline, silent peers are detected, orphans are reaped."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from servemesh import (
    Cancelled,
    DeadlineExceeded,
    DistributedRuntime,
    InstanceUnavailable,
    NoInstancesError,
    StreamIncomplete,
)
from servemesh.errors import SerializationError
from servemesh.runtime import codec
from servemesh.testing import NatsServer

WORKER = Path(__file__).with_name("stream_worker.py")
FAST = {"SERVEMESH_HEARTBEAT_INTERVAL": "0.5", "SERVEMESH_HEARTBEAT_TIMEOUT": "2"}


@pytest.fixture(params=["tcp", "nats"])
def plane(request, etcd, nats):
    env = {"SERVEMESH_ETCD": etcd.url, "SERVEMESH_NATS": nats.url, "SERVEMESH_LEASE_TTL": "3",
           "SERVEMESH_TRANSPORT": request.param, **FAST}
    client = {"etcd": etcd.url, "nats": nats.url, "heartbeat_interval": 0.5, "heartbeat_timeout": 2.0}
    return {"name": request.param, "client": client, "env": env}


async def up(spawn, plane, namespace, rt, *, env=None, endpoint="stream"):
    proc = spawn(WORKER, namespace, env={**plane["env"], **(env or {})}, name="worker")
    client = await rt.endpoint(f"{namespace}.worker.{endpoint}").client()
    await client.wait_for_instances(30)
    return proc, client


async def inflight(rt, namespace) -> dict[str, int]:
    stats = await rt.endpoint(f"{namespace}.worker.stats").client()
    await stats.wait_for_instances(10)
    return [i async for i in stats.generate({}, annotated=False)][0]["inflight"]


async def test_an_unencodable_item_fails_only_its_own_stream(spawn, plane, namespace):
    async with DistributedRuntime(**plane["client"]) as rt:
        _, streams = await up(spawn, plane, namespace, rt)
        bad = await rt.endpoint(f"{namespace}.worker.surrogate").client()
        await bad.wait_for_instances(10)
        # a long stream on the same connection as the bad one
        good = asyncio.create_task(_collect(streams.generate({"n": 200, "delay": 0.005}, annotated=False)))
        await asyncio.sleep(0.1)
        with pytest.raises(SerializationError):
            [i async for i in bad.generate({"good": 2}, annotated=False)]
        items = await asyncio.wait_for(good, 30)
        assert [i["k"] for i in items] == list(range(200))  # never cut
        # and a request the caller cannot encode never leaves the caller
        with pytest.raises(SerializationError):
            [i async for i in streams.generate({"n": 1, "text": "\ud800"})]
        assert [i["k"] async for i in streams.generate({"n": 3}, annotated=False)] == [0, 1, 2]


async def _collect(stream) -> list:
    return [i async for i in stream]


async def test_a_call_without_a_deadline_still_has_one(spawn, plane, namespace):
    async with DistributedRuntime(**plane["client"]) as rt:
        await up(spawn, plane, namespace, rt, env={"SERVEMESH_REQUEST_TIMEOUT": "1"})
        sleepy = await rt.endpoint(f"{namespace}.worker.sleepy").client()
        await sleepy.wait_for_instances(10)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            [i async for i in sleepy.generate({"seconds": 30})]
        assert time.monotonic() - started < 10
        assert (await inflight(rt, namespace)).get(f"{namespace}.worker.sleepy", 0) == 0


async def test_a_stopped_worker_fails_its_callers_within_seconds(spawn, plane, namespace):
    async with DistributedRuntime(**plane["client"]) as rt:
        proc, streams = await up(spawn, plane, namespace, rt)
        stream = streams.generate({"n": 10_000, "delay": 0.01}, annotated=False)
        await stream.__anext__()
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StreamIncomplete):
                async for _ in stream:
                    pass
            assert time.monotonic() - started < 10
            # a new call to the stopped worker fails too, with a typed error, not a hang
            started = time.monotonic()
            with pytest.raises((InstanceUnavailable, NoInstancesError, StreamIncomplete)):
                [i async for i in streams.generate({"n": 3})]
            assert time.monotonic() - started < 15
        finally:
            os.kill(proc.pid, signal.SIGCONT)


async def test_a_killed_caller_over_nats_leaves_no_orphan_stream(spawn, etcd, nats, namespace, tmp_path):
    env = {"SERVEMESH_ETCD": etcd.url, "SERVEMESH_NATS": nats.url, "SERVEMESH_TRANSPORT": "nats",
           "SERVEMESH_MAX_CONCURRENCY": "2", **FAST}
    async with DistributedRuntime(etcd=etcd.url, nats=nats.url) as rt:
        await up(spawn, {"env": env}, namespace, rt)
        caller = tmp_path / "caller.py"
        caller.write_text(
            "import asyncio, sys\n"
            "from servemesh import DistributedRuntime\n"
            "async def main():\n"
            f"    async with DistributedRuntime(etcd={etcd.url!r}, nats={nats.url!r}) as rt:\n"
            f"        c = await rt.endpoint('{namespace}.worker.stream').client()\n"
            "        await c.wait_for_instances(30)\n"
            "        s = c.generate({'n': 100000, 'delay': 0.05})\n"
            "        await s.__anext__()\n"
            "        print('streaming', flush=True)\n"
            "        await asyncio.sleep(600)\n"
            "asyncio.run(main())\n")
        callers = [spawn(caller, name="caller") for _ in range(2)]
        path = f"{namespace}.worker.stream"
        async with asyncio.timeout(30):
            while (await inflight(rt, namespace)).get(path, 0) < 2:
                await asyncio.sleep(0.1)
        for proc in callers:
            os.kill(proc.pid, signal.SIGKILL)
        async with asyncio.timeout(15):  # reaped after the heartbeat timeout (2 s here)
            while (await inflight(rt, namespace)).get(path, 0) > 0:
                await asyncio.sleep(0.2)
        streams = await rt.endpoint(path).client()
        assert [i.data()["k"] async for i in streams.generate({"n": 2})] == [0, 1]  # slots free again


async def test_a_forged_cancel_never_hangs_the_caller(spawn, etcd, nats, namespace):
    import nats as nats_py

    env = {"SERVEMESH_ETCD": etcd.url, "SERVEMESH_NATS": nats.url, "SERVEMESH_TRANSPORT": "nats"}
    async with DistributedRuntime(etcd=etcd.url, nats=nats.url) as rt:
        _, streams = await up(spawn, {"env": env}, namespace, rt)
        subject = streams.instances()[0].transport["nats_tcp"]
        spy = await nats_py.connect(nats.url)  # without NATS permissions anyone can read requests
        seen: asyncio.Queue[str] = asyncio.Queue()

        async def on_msg(msg):
            if msg.reply and not msg.reply.rsplit(".", 1)[-1].startswith("p"):
                for frame in codec.decode_all(msg.data, 1 << 20):
                    if isinstance(frame, codec.Request):
                        await seen.put((msg.reply, frame.sid))

        await spy.subscribe(subject, cb=on_msg)
        try:
            victim = streams.generate({"n": 10_000, "delay": 0.01}, annotated=False)
            await victim.__anext__()
            reply, sid = await asyncio.wait_for(seen.get(), 10)
            await spy.publish(subject, codec.encode(codec.Cancel(sid)), reply=reply)
            started = time.monotonic()
            with pytest.raises(Cancelled):
                async for _ in victim:
                    pass
            assert time.monotonic() - started < 10
        finally:
            await spy.close()


async def test_nats_going_away_fails_calls_fast(spawn, etcd, namespace):
    private = NatsServer()
    private.start()
    try:
        env = {"SERVEMESH_ETCD": etcd.url, "SERVEMESH_NATS": private.url, "SERVEMESH_TRANSPORT": "nats"}
        async with DistributedRuntime(etcd=etcd.url, nats=private.url, instance_wait=0.5) as rt:
            _, streams = await up(spawn, {"env": env}, namespace, rt)
            stream = streams.generate({"n": 10_000, "delay": 0.01}, annotated=False)
            await stream.__anext__()
            private.stop()
            started = time.monotonic()
            with pytest.raises((StreamIncomplete, InstanceUnavailable)):
                async for _ in stream:
                    pass
            with pytest.raises((InstanceUnavailable, NoInstancesError)) as info:
                [i async for i in streams.generate({"n": 1})]
            assert time.monotonic() - started < 5
            assert "NATS" in str(info.value) or isinstance(info.value, NoInstancesError)
    finally:
        private.stop()


# -- raw peers on the TCP plane ---------------------------------------------------------
async def _tcp_worker(spawn, etcd, namespace, rt, **env):
    base = {"SERVEMESH_ETCD": etcd.url, "SERVEMESH_TRANSPORT": "tcp", **env}
    _, client = await up(spawn, {"env": base}, namespace, rt)
    host, port = client.instances()[0].transport["tcp"].rsplit(":", 1)
    return client, host, int(port)


def _request(sid: int, path: str, payload: object, window: int = 64) -> bytes:
    return codec.encode(codec.Request(sid, path, payload, "", window))


async def test_duplicate_stream_ids_disconnect_only_that_peer(spawn, etcd, namespace):
    async with DistributedRuntime(etcd=etcd.url) as rt:
        client, host, port = await _tcp_worker(spawn, etcd, namespace, rt)
        honest = client.generate({"n": 100, "delay": 0.01}, annotated=False)
        await honest.__anext__()
        reader, writer = await asyncio.open_connection(host, port)
        path = f"{namespace}.worker.stream"
        writer.write(_request(7, path, {"n": 1000, "delay": 0.01}) + _request(7, path, {"n": 1}))
        await writer.drain()
        async with asyncio.timeout(10):
            while await reader.read(65536):
                pass  # the worker hangs up on the broken peer
        writer.close()
        assert len([i async for i in honest]) == 99  # the honest caller's stream is whole


async def test_a_huge_window_cannot_stall_the_worker(spawn, etcd, namespace):
    async with DistributedRuntime(etcd=etcd.url) as rt:
        client, host, port = await _tcp_worker(spawn, etcd, namespace, rt)
        reader, writer = await asyncio.open_connection(host, port)
        blob = {"n": 10_000_000, "size": 10}
        writer.write(_request(1, f"{namespace}.worker.blobs", blob, window=2**40))
        await writer.drain()
        await reader.read(1 << 16)  # it is streaming to us; we never grant credit
        started = time.monotonic()
        assert [i["k"] async for i in client.generate({"n": 3}, annotated=False)] == [0, 1, 2]
        assert time.monotonic() - started < 5
        writer.close()


async def test_incomplete_frames_are_bounded_in_memory_and_time(spawn, etcd, namespace):
    async with DistributedRuntime(etcd=etcd.url) as rt:
        client, host, port = await _tcp_worker(spawn, etcd, namespace, rt, SERVEMESH_FRAME_TIMEOUT="1")
        rss = await rt.endpoint(f"{namespace}.worker.rss").client()
        await rss.wait_for_instances(10)

        async def worker_rss() -> int:
            return [i async for i in rss.generate({}, annotated=False)][0]["rss"]

        before = await worker_rss()
        chunk = b"x" * (1 << 20)

        async def flood() -> None:
            """A frame announced at 15 MiB and left 1 byte short, from its own connection."""
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write((15 << 20).to_bytes(4, "big"))
                for k in range(15):
                    writer.write(chunk if k < 14 else chunk[:-1])
                    await writer.drain()  # blocks while the worker holds back
                async with asyncio.timeout(10):  # the worker drops it after the frame timeout (1 s)
                    while await reader.read(65536):
                        pass
            except ConnectionError:
                pass
            finally:
                writer.close()

        floods = [asyncio.create_task(flood()) for _ in range(20)]
        peak = 0
        while not all(t.done() for t in floods):
            peak = max(peak, await worker_rss() - before)
            await asyncio.sleep(0.1)
        await asyncio.gather(*floods)
        assert peak < 120 << 20, f"worker RSS grew by {peak >> 20} MiB under 20 x 15 MiB incomplete frames"
        assert [i["k"] async for i in client.generate({"n": 2}, annotated=False)] == [0, 1]


async def test_frame_fuzzer_finds_no_crash(spawn, etcd, namespace):
    """A fixed budget of mutated and random frames against the TCP plane (seeded)."""
    rng = random.Random(1234)
    async with DistributedRuntime(etcd=etcd.url) as rt:
        client, host, port = await _tcp_worker(spawn, etcd, namespace, rt)
        path = f"{namespace}.worker.stream"
        valid = [
            _request(1, path, {"n": 3}),
            codec.encode(codec.Credit(1, 5)),
            codec.encode(codec.Cancel(1)),
            codec.encode(codec.Ping(3)),
            codec.encode(codec.Item(1, {"x": 1})),
            codec.encode(codec.Error(1, "remote", {"message": "x"})),
        ]
        for case in range(300):
            data = bytearray(rng.choice(valid))
            kind = case % 5
            if kind == 0:  # flip bytes
                for _ in range(rng.randint(1, 4)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            elif kind == 1:  # truncate
                data = data[: rng.randrange(1, len(data))]
            elif kind == 2:  # random body behind a plausible header
                body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
                data = bytearray(len(body).to_bytes(4, "big") + body)
            elif kind == 3:  # a valid msgpack array of random shape
                body = msgspec.msgpack.encode([rng.randint(-3, 12), rng.randint(-2, 2**40), "x" * rng.randint(0, 5)])
                data = bytearray(len(body).to_bytes(4, "big") + body)
            else:  # several frames glued, one of them damaged
                data = bytearray(b"".join(rng.choice(valid) for _ in range(3)))
                data[rng.randrange(len(data))] ^= 0xFF
            try:
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(bytes(data))
                await writer.drain()
                writer.write_eof()
                async with asyncio.timeout(5):
                    while await reader.read(65536):
                        pass
                writer.close()
            except (ConnectionError, TimeoutError):
                pass
        assert [i["k"] async for i in client.generate({"n": 3}, annotated=False)] == [0, 1, 2]


async def test_frames_at_the_nats_message_limit_fail_typed_never_silently(namespace):
    """A NATS message holds a frame's 4-byte header and body: a frame whose body is just
    under max_payload does not fit one. Such an item fails the stream with
    ``FrameTooLarge`` (never a stream that ends short and looks complete), such a
    request fails at once (never a hang), and the largest frame that fits arrives."""
    from servemesh.errors import FrameTooLarge
    from servemesh.runtime.discovery.memory import MemoryDiscovery, MemoryStore

    limit = 64 * 1024

    def text_for_body(body: int, frame: Callable[[str], codec.Frame]) -> str:
        for n in range(body - 300, body + 1):
            if codec.append_frame(bytearray(), frame("x" * n), 1 << 30) == body:
                return "x" * n
        raise AssertionError(f"no text gives a frame body of {body}")

    too_big = text_for_body(limit - 2, lambda t: codec.Item(1, t))
    fits = text_for_body(limit - codec.HEADER, lambda t: codec.Item(1, t))

    async def handler(request: dict):
        yield too_big if request["big"] else fits

    store = MemoryStore()
    with NatsServer(max_payload=limit) as server:
        settings = {"nats": server.url, "transport": "nats", "instance_wait": 0.5}
        async with DistributedRuntime(discovery=MemoryDiscovery(store), **settings) as worker, \
                DistributedRuntime(discovery=MemoryDiscovery(store), **settings) as caller:
            path = f"{namespace}.c.big"
            task = asyncio.create_task(worker.endpoint(path).serve_endpoint(handler))
            client = await caller.endpoint(path).client()
            await client.wait_for_instances(5)
            async with asyncio.timeout(10):
                assert [x async for x in client.generate({"big": False}, annotated=False)] == [fits]
                with pytest.raises(FrameTooLarge):
                    async for _ in client.generate({"big": True}, annotated=False):
                        pass
                with pytest.raises(FrameTooLarge):
                    async for _ in client.generate({"big": False, "pad": too_big}, annotated=False):
                        pass
                assert [x async for x in client.generate({"big": False}, annotated=False)] == [fits]
            worker.request_shutdown()
            await task
