"""Failures of the infrastructure around workers: etcd restarts, workers killed and restarted."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from servemesh import DistributedRuntime
from servemesh.testing import EtcdServer

WORKER = Path(__file__).with_name("stream_worker.py")


async def _pids(client, n: int = 3) -> list[int]:
    return [i.data()["pid"] for i in [x async for x in client.generate({"n": n})]]


WORKER_ENDPOINTS = ("stream", "fail", "typed", "stats", "big", "blobs", "rss", "surrogate", "sleepy")


async def _worker_up(rt: DistributedRuntime, namespace: str, timeout: float = 30) -> None:
    """Every endpoint of the worker is registered (not only the one a test calls): the
    worker is done talking to etcd, so stopping etcd now cannot fail its start-up."""
    for name in WORKER_ENDPOINTS:
        client = await rt.endpoint(f"{namespace}.worker.{name}").client()
        await client.wait_for_instances(timeout)
        await client.close()


async def _wait(predicate, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_etcd_restart_keeps_known_instances_working_and_registrations_return(spawn, tmp_path, namespace):
    etcd = EtcdServer(data_dir=str(tmp_path / "etcd"))
    etcd.start()
    try:
        env = {"SERVEMESH_ETCD": etcd.url, "SERVEMESH_LEASE_TTL": "2"}
        worker = spawn(WORKER, namespace, env=env, name="worker")
        async with DistributedRuntime(etcd=etcd.url, lease_ttl=2) as rt:
            client = await rt.endpoint(f"{namespace}.worker.stream").client()
            await _worker_up(rt, namespace)
            assert await _pids(client) == [worker.pid] * 3

            etcd.stop()
            # calls to already-known instances keep working while etcd is down
            for _ in range(3):
                assert await _pids(client) == [worker.pid] * 3
                await asyncio.sleep(1)  # outlive the 2 s lease TTL

            etcd.start()
            key = f"instances/{namespace}/worker/stream:"
            async with asyncio.timeout(20):
                while key not in etcd.etcdctl("get", "--prefix", "--keys-only", f"instances/{namespace}/"):
                    await asyncio.sleep(0.2)
            assert await _pids(client) == [worker.pid] * 3

        # a brand-new client finds the re-registered worker through etcd
        async with DistributedRuntime(etcd=etcd.url) as fresh:
            client = await fresh.endpoint(f"{namespace}.worker.stream").client()
            await client.wait_for_instances(10)
            assert await _pids(client) == [worker.pid] * 3
    finally:
        etcd.stop()


async def test_killed_worker_leaves_within_ttl_and_a_restarted_one_is_used(spawn, etcd, namespace):
    env = {"SERVEMESH_ETCD": etcd.url, "SERVEMESH_LEASE_TTL": "2"}
    first = spawn(WORKER, namespace, env=env, name="worker")
    async with DistributedRuntime(etcd=etcd.url) as rt:
        client = await rt.endpoint(f"{namespace}.worker.stream").client()
        await client.wait_for_instances(30)
        (dead_id,) = client.instance_ids()
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        loop = asyncio.get_running_loop()
        killed = loop.time()
        # the key is gone within the TTL (plus etcd's expiry sweep)
        await _wait(lambda: dead_id not in client._instances, 10)
        assert loop.time() - killed < 2 + 3
        assert etcd.etcdctl("get", "--prefix", f"instances/{namespace}/").strip() == ""

        second = spawn(WORKER, namespace, env=env, name="worker")
        await client.wait_for_instances(30)  # same client, no restart
        assert await _pids(client) == [second.pid] * 3


async def test_killed_worker_is_routed_around_before_its_lease_expires(spawn, etcd, namespace):
    env = {"SERVEMESH_ETCD": etcd.url, "SERVEMESH_LEASE_TTL": "30"}
    victim = spawn(WORKER, namespace, env=env, name="worker")
    survivor = spawn(WORKER, namespace, env=env, name="worker")
    async with DistributedRuntime(etcd=etcd.url) as rt:
        client = await rt.endpoint(f"{namespace}.worker.stream").client()
        await _wait(lambda: len(client.instance_ids()) == 2, 30)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        # the lease (30 s) still lists the dead worker, yet no call fails or waits on it
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(10):
            assert await _pids(client, 1) == [survivor.pid]
        assert loop.time() - started < 5
        assert len(client._instances) == 2 and len(client.instance_ids()) == 1


async def test_lease_lost_with_exit_configured_stops_the_worker_with_a_clear_error(spawn, tmp_path, namespace):
    from ..conftest import read_log

    etcd = EtcdServer(data_dir=str(tmp_path / "etcd"))
    etcd.start()
    try:
        env = {"SERVEMESH_ETCD": etcd.url, "SERVEMESH_LEASE_TTL": "1", "SERVEMESH_ON_LEASE_LOST": "exit"}
        worker = spawn(WORKER, namespace, env=env, name="worker")
        async with DistributedRuntime(etcd=etcd.url) as rt:
            await _worker_up(rt, namespace)
        etcd.stop()  # unreachable for longer than the 1 s TTL
        code = await asyncio.to_thread(worker.wait, 30)
        assert code != 0
        log = read_log(worker)
        assert "lease" in log and "exiting as configured" in log and "DiscoveryError" in log
    finally:
        etcd.stop()
