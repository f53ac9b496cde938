"""The event plane over a real NATS: between runtimes, in order, and what a subscriber
hears when the connection was cut."""

from __future__ import annotations

import asyncio

import pytest

from servemesh import DistributedRuntime
from servemesh.errors import EventsLost, FrameTooLarge
from servemesh.testing import NatsServer


async def test_events_go_between_runtimes_over_nats_in_order(etcd, nats, namespace):
    settings = {"etcd": etcd.url, "nats": nats.url}
    async with DistributedRuntime(**settings) as a, DistributedRuntime(**settings) as b:
        assert a.events.kind == "nats"
        subject = f"sm.{namespace}.events.t"
        exact = await b.events.subscribe(subject)
        wild = await b.events.subscribe(f"sm.{namespace}.events.>")
        for i in range(200):
            await a.events.publish(subject, b"%d" % i)
        await a.events.publish(f"sm.{namespace}.events.other", b"x")
        it = aiter(exact)
        assert [await asyncio.wait_for(anext(it), 10) for _ in range(200)] == [b"%d" % i for i in range(200)]
        it = aiter(wild)
        got = [await asyncio.wait_for(anext(it), 10) for _ in range(201)]
        assert got[-1] == b"x" and got[:3] == [b"0", b"1", b"2"]
        with pytest.raises(FrameTooLarge):  # NATS's max_payload (1 MiB)
            await a.events.publish(subject, b"y" * (2 << 20))
        await exact.close()
        assert b.events.subscriptions == 1  # type: ignore[attr-defined]
    assert b.events.subscriptions == 0  # type: ignore[attr-defined]  # closed with the runtime


async def test_a_cut_connection_is_events_lost_then_delivery_resumes(etcd):
    server = NatsServer()
    server.start()
    try:
        async with DistributedRuntime(etcd=etcd.url, nats=server.url) as rt:
            sub = await rt.events.subscribe("sm.cut.events.t")
            await rt.events.publish("sm.cut.events.t", b"before")
            it = aiter(sub)
            assert await asyncio.wait_for(anext(it), 10) == b"before"
            server.stop()
            server.start()  # the same port: the connection comes back by itself
            with pytest.raises(EventsLost) as lost:
                await asyncio.wait_for(anext(it), 30)
            assert "re-established" in lost.value.reason
            await rt.events.publish("sm.cut.events.t", b"after")
            assert await asyncio.wait_for(anext(it), 10) == b"after"
    finally:
        server.stop()
