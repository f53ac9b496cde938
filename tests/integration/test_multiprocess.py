"""Worker processes discovered through a real etcd, over each transport (TCP and NATS)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from servemesh import (
    Context,
    DeadlineExceeded,
    DistributedRuntime,
    RemoteError,
    StreamIncomplete,
    ValidationError,
)
from servemesh.errors import FrameTooLarge

WORKER = Path(__file__).with_name("stream_worker.py")


@pytest.fixture(params=["tcp", "nats"])
def plane(request, etcd, nats):
    """Settings for the workers and the test's client runtime, one transport each run."""
    base = {"etcd": etcd.url, "nats": nats.url}
    env = {"SERVEMESH_ETCD": etcd.url, "SERVEMESH_NATS": nats.url, "SERVEMESH_LEASE_TTL": "3",
           "SERVEMESH_TRANSPORT": request.param}
    return {"name": request.param, "client": base, "env": env}


async def start_workers(spawn, plane, namespace: str, count: int, rt: DistributedRuntime):
    procs = [spawn(WORKER, namespace, env=plane["env"], name="worker") for _ in range(count)]
    client = await rt.namespace(namespace).component("worker").endpoint("stream").client()
    async with asyncio.timeout(30):
        while len(client.instance_ids()) < count:
            await client.wait_for_instances()
            await asyncio.sleep(0.05)
    return procs, client


async def test_concurrent_streams_arrive_complete_and_in_order(spawn, etcd, plane, namespace):
    async with DistributedRuntime(**plane["client"]) as rt:
        _, client = await start_workers(spawn, plane, namespace, 2, rt)

        async def one(i: int) -> tuple[list[int], int]:
            ks, pids = [], set()
            async for item in client.generate({"n": 100, "tag": i}):
                data = item.data()
                assert data["tag"] == i
                ks.append(data["k"])
                pids.add(data["pid"])
            assert len(pids) == 1
            return ks, pids.pop()

        results = await asyncio.gather(*(one(i) for i in range(200)))
        for ks, _ in results:
            assert ks == list(range(100))
        assert len({pid for _, pid in results}) == 2  # round robin used both workers


async def test_kill_9_mid_stream_fails_its_streams_and_routes_to_survivor(spawn, etcd, plane, namespace):
    async with DistributedRuntime(**plane["client"]) as rt:
        procs, client = await start_workers(spawn, plane, namespace, 2, rt)
        victim = procs[0]
        streams = [client.generate({"n": 50, "delay": 0.02}) for _ in range(10)]
        seen: list[list[int]] = [[] for _ in streams]
        outcomes: list[object] = [None] * len(streams)

        async def consume(i: int) -> None:
            try:
                async for item in streams[i]:
                    seen[i].append(item.data()["pid"])
                    if i == 0 and len(seen[i]) == 5:
                        os.kill(victim.pid, signal.SIGKILL)
                outcomes[i] = "complete"
            except StreamIncomplete as exc:
                outcomes[i] = exc

        await asyncio.gather(*(consume(i) for i in range(len(streams))))
        victim.wait()
        for i, outcome in enumerate(outcomes):
            pids = set(seen[i])
            assert len(pids) == 1
            if pids == {victim.pid}:
                assert isinstance(outcome, StreamIncomplete), outcome
                assert 0 < outcome.received < 50
            else:
                assert outcome == "complete" and len(seen[i]) == 50
        assert any(isinstance(o, StreamIncomplete) for o in outcomes)
        assert any(o == "complete" for o in outcomes)
        # new calls never wait on the dead worker: all succeed on the survivor
        for _ in range(6):
            items = [item.data()["pid"] async for item in client.generate({"n": 3})]
            assert items == [procs[1].pid] * 3
        assert victim.pid not in {i.id for i in client.instances()}


async def test_closing_the_stream_cancels_the_remote_handler(spawn, etcd, plane, namespace):
    async with DistributedRuntime(**plane["client"]) as rt:
        _, client = await start_workers(spawn, plane, namespace, 1, rt)
        stats = await rt.namespace(namespace).component("worker").endpoint("stats").client()
        await stats.wait_for_instances(10)
        stream = await client.generate({"n": 1000, "delay": 0.01})
        got = 0
        async for _ in stream:
            got += 1
            if got == 3:
                break
        await stream.aclose()
        async with asyncio.timeout(5):
            while True:
                state = [i.data() async for i in stats.generate({})][0]
                if state["cancelled"] >= 1:
                    break
        assert state["stopped_seen"] == 1  # the handler's context was stopped too


async def test_breaking_out_of_the_loop_cancels_the_handler(spawn, etcd, plane, namespace):
    async with DistributedRuntime(**plane["client"]) as rt:
        _, client = await start_workers(spawn, plane, namespace, 1, rt)
        stats = await rt.namespace(namespace).component("worker").endpoint("stats").client()
        await stats.wait_for_instances(10)
        async for item in client.generate({"n": 1000, "delay": 0.01}):
            if item.data()["k"] == 2:
                break
        async with asyncio.timeout(5):
            while [i.data() async for i in stats.generate({})][0]["cancelled"] < 1:
                pass


async def test_stopping_the_context_cancels_the_remote_handler(spawn, etcd, plane, namespace):
    from servemesh import Cancelled

    async with DistributedRuntime(**plane["client"]) as rt:
        _, client = await start_workers(spawn, plane, namespace, 1, rt)
        stats = await rt.namespace(namespace).component("worker").endpoint("stats").client()
        await stats.wait_for_instances(10)
        ctx = Context()
        got = []
        with pytest.raises(Cancelled):
            async for item in client.generate({"n": 1000, "delay": 0.01}, context=ctx):
                got.append(item)
                if len(got) == 2:
                    ctx.stop_generating()
        async with asyncio.timeout(5):
            while [i.data() async for i in stats.generate({})][0]["cancelled"] < 1:
                pass


async def test_handler_exception_is_a_remote_error(spawn, etcd, plane, namespace):
    async with DistributedRuntime(**plane["client"]) as rt:
        await start_workers(spawn, plane, namespace, 1, rt)
        fail = await rt.endpoint(f"{namespace}.worker.fail").client()
        await fail.wait_for_instances(10)
        with pytest.raises(RemoteError) as info:
            async for _ in fail.generate({"x": 5}):
                pass
        assert info.value.remote_type == "ValueError"
        assert "cannot handle x=5" in str(info.value)


async def test_invalid_request_is_a_validation_error_naming_the_field(spawn, etcd, plane, namespace):
    async with DistributedRuntime(**plane["client"]) as rt:
        await start_workers(spawn, plane, namespace, 1, rt)
        typed = await rt.endpoint(f"{namespace}.worker.typed").client()
        await typed.wait_for_instances(10)
        with pytest.raises(ValidationError) as info:
            await typed.generate({"prompt": "hi", "max_tokens": "many"}).__anext__()
        assert info.value.field == "max_tokens"
        with pytest.raises(ValidationError) as info:
            await typed.generate({"max_tokens": 3}).__anext__()
        assert info.value.field == "prompt"
        with pytest.raises(ValidationError):
            await typed.generate(["not", "an", "object"]).__anext__()
        # the worker keeps serving
        items = [i.data() async for i in typed.generate({"prompt": "hi", "max_tokens": 2})]
        assert items == [{"echo": "hi", "max_tokens": 2}]


async def test_deadline_propagates_to_the_worker(spawn, etcd, plane, namespace):
    async with DistributedRuntime(**plane["client"]) as rt:
        _, client = await start_workers(spawn, plane, namespace, 1, rt)
        got = 0
        with pytest.raises(DeadlineExceeded):
            async for _ in client.generate({"n": 1000, "delay": 0.01}, context=Context(timeout=0.3)):
                got += 1
        assert 0 < got < 1000


async def test_oversized_payloads_give_typed_errors_and_leave_the_worker_healthy(spawn, plane, namespace):
    async with DistributedRuntime(**plane["client"], max_payload=64 * 1024) as rt:
        await start_workers(spawn, plane, namespace, 1, rt)
        big = await rt.endpoint(f"{namespace}.worker.big").client()
        await big.wait_for_instances(10)
        with pytest.raises(FrameTooLarge) as info:
            await big.generate({"size": 1, "pad": "y" * 100_000}).__anext__()
        assert info.value.size > info.value.limit == 64 * 1024
        # a response over the worker's limit (16 MiB default) is refused by the worker, and
        # the error keeps its class and fields across the hop
        with pytest.raises(FrameTooLarge) as remote:
            await big.generate({"size": 17 * 1024 * 1024}).__anext__()
        assert remote.value.size > remote.value.limit  # 16 MiB over TCP, NATS's max_payload over NATS
        items = [i.data() async for i in big.generate({"size": 10})]
        assert items == [{"blob": "x" * 10}]


async def test_registration_has_the_documented_key_and_value(spawn, etcd, plane, namespace):
    async with DistributedRuntime(**plane["client"]) as rt:
        _, client = await start_workers(spawn, plane, namespace, 1, rt)
        (iid,) = client.instance_ids()
        out = etcd.etcdctl("get", "--prefix", f"instances/{namespace}/worker/stream")
        key, value = out.strip().split("\n", 1)
        assert key == f"instances/{namespace}/worker/stream:{iid:x}"
        record = json.loads(value)
        assert record["namespace"] == namespace
        assert record["component"] == "worker"
        assert record["endpoint"] == "stream"
        assert record["instance_id"] == iid
        if plane["name"] == "tcp":
            host, port = record["transport"]["tcp"].rsplit(":", 1)
            assert host == "127.0.0.1" and int(port) > 0
        else:
            assert record["transport"] == {"nats_tcp": f"sm.{namespace}.worker.stream-{iid:x}"}
        typed = etcd.etcdctl("get", "--print-value-only", f"instances/{namespace}/worker/typed:{iid:x}")
        schema = json.loads(typed)["schema"]["request"]
        assert schema["required"] == ["prompt", "max_tokens"]


async def test_sigterm_drains_in_flight_streams_and_leaves_discovery(spawn, etcd, plane, namespace):
    async with DistributedRuntime(**plane["client"]) as rt:
        procs, client = await start_workers(spawn, plane, namespace, 1, rt)
        streams = [await client.generate({"n": 40, "delay": 0.025}) for _ in range(5)]
        first = [await s.__anext__() for s in streams]
        assert len(first) == 5
        procs[0].send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        sent = loop.time()
        async with asyncio.timeout(5):
            while client.instance_ids():
                await asyncio.sleep(0.02)
        assert loop.time() - sent < 1.0  # the key vanished at once, not at lease expiry
        for s in streams:
            rest = [i async for i in s]
            assert len(rest) == 39  # every in-flight stream finished
        assert procs[0].wait(10) == 0
        assert etcd.etcdctl("get", "--prefix", f"instances/{namespace}/").strip() == ""


async def test_malformed_frames_get_typed_errors_and_the_worker_stays_healthy(spawn, plane, namespace):
    import msgspec

    async with DistributedRuntime(**plane["client"]) as rt:
        _, client = await start_workers(spawn, plane, namespace, 1, rt)
        (info,) = client.instances()
        garbage = [b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1",                       # not msgpack
                   b"\x00\x00\x00\x03" + msgspec.msgpack.encode([99, 1])[:3],    # unknown frame tag
                   b"\xff\xff\xff\xff" + b"x" * 16]                              # absurd length
        if plane["name"] == "tcp":
            host, port = info.transport["tcp"].rsplit(":", 1)
            for data in garbage:
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(data)
                await writer.drain()
                assert await asyncio.wait_for(reader.read(), 5) == b""  # the worker hangs up on it
                writer.close()
        else:
            import nats as nats_py

            from servemesh.runtime import codec

            nc = await nats_py.connect(plane["client"]["nats"])
            try:
                for data in garbage:
                    reply = await nc.request(info.transport["nats_tcp"], data, timeout=5)
                    (frame,) = codec.decode_all(reply.data, 1 << 20)
                    assert isinstance(frame, codec.Error) and frame.kind in ("protocol", "frame_too_large")
            finally:
                await nc.close()
        items = [i.data()["k"] async for i in client.generate({"n": 3})]  # still healthy
        assert items == [0, 1, 2]


def _own_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def test_a_slow_reader_of_large_items_keeps_both_sides_memory_bounded(spawn, plane, namespace):
    """200 MiB of items streamed to a caller that stops reading: the worker holds back
    (byte budget per stream, write-side flow control), so neither side's RSS grows by
    more than a few windows; then every item still arrives."""
    size = 1 << 20 if plane["name"] == "tcp" else 512 << 10  # NATS's max_payload is 1 MiB
    n = (200 << 20) // size
    bound = 64 << 20
    async with DistributedRuntime(**plane["client"]) as rt:
        await start_workers(spawn, plane, namespace, 1, rt)
        blobs = await rt.endpoint(f"{namespace}.worker.blobs").client()
        rss = await rt.endpoint(f"{namespace}.worker.rss").client()
        await blobs.wait_for_instances(10)
        await rss.wait_for_instances(10)

        async def worker_rss() -> int:
            return [i async for i in rss.generate({}, annotated=False)][0]["rss"]

        worker_before, own_before = await worker_rss(), _own_rss()
        stream = blobs.generate({"n": n, "size": size}, annotated=False)
        first = await stream.__anext__()
        assert first["k"] == 0 and len(first["blob"]) == size
        await asyncio.sleep(2)  # a fast producer would have sent everything by now
        worker_grew, own_grew = await worker_rss() - worker_before, _own_rss() - own_before
        assert worker_grew < bound, f"worker RSS grew by {worker_grew >> 20} MiB"
        assert own_grew < bound, f"caller RSS grew by {own_grew >> 20} MiB"
        ks = [item["k"] async for item in stream]
        assert ks == list(range(1, n))
