"""KV-aware routing's pure parts: block hashes, the publisher's diffs, the index, the chooser."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import subprocess
import sys

from servemesh import DistributedRuntime
from servemesh.llm.kv import (
    BLOCK_SIZE,
    KvChooser,
    KvEvent,
    KvIndex,
    KvPublisher,
    block_hashes,
    decode_event,
    kv_subject,
)
from servemesh.runtime.routing import RoundRobin

TOKENS = [random.Random(7).randrange(0, 262144) for _ in range(1000)]


# -- block hashes ---------------------------------------------------------------------------
def test_one_hash_per_full_block_and_partial_blocks_ignored():
    assert block_hashes(TOKENS[:15]) == []
    assert len(block_hashes(TOKENS[:16])) == 1
    assert len(block_hashes(TOKENS[:47])) == 2
    assert block_hashes(TOKENS[:47]) == block_hashes(TOKENS[:32])  # the partial block changes nothing
    assert len(block_hashes(TOKENS, block_size=100)) == 10
    for h in block_hashes(TOKENS):
        assert 0 <= h < 2**63


def test_hashes_are_chained_so_equal_hashes_mean_equal_prefixes():
    base = block_hashes(TOKENS[:320])
    longer = block_hashes(TOKENS[:320] + [1, 2, 3] * 40)
    assert longer[:20] == base and len(longer) == 27
    # the same block after another first block hashes differently
    changed = [TOKENS[0] + 1, *TOKENS[1:320]]
    other = block_hashes(changed)
    assert all(a != b for a, b in zip(base, other, strict=True))
    # a block of the same tokens at another position hashes differently too
    repeated = block_hashes(TOKENS[:16] * 3)
    assert len(set(repeated)) == 3
    # another block size: other hashes, even where the tokens agree
    assert block_hashes(TOKENS[:32], block_size=32)[0] not in block_hashes(TOKENS[:32])


def test_hashes_are_the_same_in_another_process_and_python_run():
    code = ("import json, sys; from servemesh.llm.kv import block_hashes; "
            "print(json.dumps(block_hashes(json.loads(sys.stdin.read()))))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(TOKENS), capture_output=True, text=True,
                         env=env, check=True).stdout
    assert json.loads(out) == block_hashes(TOKENS)
    # the value itself is pinned (BLAKE2b-64 of the block size, then of the tokens as int32 LE):
    # engines and routers of other versions must agree, so a change of the scheme fails here
    assert block_hashes(list(range(16))) == [680576338011866086]


def test_ids_beyond_int32_and_other_sequences_hash():
    big = [2**40 + i for i in range(32)]
    assert len(block_hashes(big)) == 2
    assert block_hashes(tuple(TOKENS[:64])) == block_hashes(TOKENS[:64])


# -- the publisher ---------------------------------------------------------------------------
async def next_event(sub) -> KvEvent:
    return decode_event(await asyncio.wait_for(anext(aiter(sub)), 5))


async def test_the_publisher_refcounts_over_owners_and_publishes_one_diff_per_turn():
    async with DistributedRuntime() as rt:
        sub = rt.events.subscribe(kv_subject("m"))
        pub = KvPublisher(rt, "m")
        await pub.start()
        pub.hold("a", [1, 2, 3])
        pub.hold("b", [3, 4])  # the same turn: one event
        ev = await next_event(sub)
        assert (ev.instance, ev.seq, ev.block_size) == (rt.instance_id, 1, BLOCK_SIZE)
        assert sorted(ev.stored) == [1, 2, 3, 4] and ev.removed == []
        pub.hold("a", [1])  # 2 goes; 3 stays (b holds it)
        ev = await next_event(sub)
        assert (ev.seq, ev.stored, ev.removed) == (2, [], [2])
        pub.drop("b")
        pub.hold("c", [9])
        ev = await next_event(sub)
        assert (ev.seq, sorted(ev.stored), sorted(ev.removed)) == (3, [9], [3, 4])
        # changes undone within the turn are not published at all
        pub.hold("d", [50])
        pub.drop("d")
        pub.drop("a")
        pub.hold("e", [1])
        pub.hold("f", [60])
        ev = await next_event(sub)
        assert (ev.seq, ev.stored, ev.removed) == (4, [60], [])
        assert pub.state() == {"instance": rt.instance_id, "seq": 4, "block_size": BLOCK_SIZE, "blocks": [1, 9, 60]}
        assert sub.pending == 0
        await pub.close()
        pub.hold("g", [70])  # closed: nothing goes out
        await rt.events.publish(kv_subject("m"), b"marker")
        assert await asyncio.wait_for(anext(aiter(sub)), 5) == b"marker"


async def test_the_publisher_coalesces_while_a_publish_is_under_way():
    async with DistributedRuntime() as rt:
        sub = rt.events.subscribe(kv_subject("m"))
        pub = KvPublisher(rt, "m", interval_s=0.05)
        await pub.start()
        pub.hold("a", [1])
        await asyncio.sleep(0)  # other turns inside the interval: still one event
        pub.hold("b", [2])
        await asyncio.sleep(0)
        pub.drop("a")
        ev = await next_event(sub)
        assert (ev.seq, ev.stored, ev.removed) == (1, [2], [])
        await pub.close()


async def test_a_big_change_goes_as_several_events(monkeypatch):
    from servemesh.llm import kv

    monkeypatch.setattr(kv, "MAX_EVENT_HASHES", 10)
    async with DistributedRuntime() as rt:
        sub = rt.events.subscribe(kv_subject("m"))
        pub = KvPublisher(rt, "m")
        await pub.start()
        pub.hold("a", range(25))
        events = [await next_event(sub) for _ in range(3)]
        assert [e.seq for e in events] == [1, 2, 3]
        assert sorted(h for e in events for h in e.stored) == list(range(25))
        await pub.close()


async def test_without_an_event_plane_the_publisher_logs_once_and_does_nothing(caplog):
    rt = DistributedRuntime(etcd="http://127.0.0.1:1", nats=None)  # never started: no sockets
    pub = KvPublisher(rt, "m")
    with caplog.at_level(logging.WARNING, logger="servemesh.llm.kv"):
        await pub.start()
        await pub.start()
    assert len([r for r in caplog.records if "KV events of m are off" in r.message]) == 1
    pub.hold("a", [1, 2])
    pub.drop("a")
    pub.hold("b", [3])
    assert pub.state()["blocks"] == [3] and pub._changes == {}  # nothing gathers for nobody
    await pub.close()


# -- the index --------------------------------------------------------------------------------
def test_the_index_counts_leading_blocks_per_instance():
    index = KvIndex()
    index.replace(1, [10, 11, 12, 13], seq=5)
    index.replace(2, [10, 11, 13], seq=0)  # a hole at 12: 13 does not count for it
    index.replace(3, [11, 12], seq=0)  # no first block: nothing counts
    assert index.overlaps([10, 11, 12, 13, 14]) == {1: 4, 2: 2}
    assert index.overlaps([10, 11]) == {1: 2, 2: 2}
    assert index.overlaps([99, 10]) == {}
    assert index.overlaps([]) == {}
    assert index.instances() == {1: 4, 2: 3, 3: 2} and index.size == 4
    index.remove_instance(1)
    assert index.overlaps([10, 11, 12, 13]) == {2: 2}
    assert 1 not in index and index.size == 4  # 10, 11, 13 (2), 12 (3)
    index.remove_instance(2)
    index.remove_instance(3)
    assert index.size == 0 and index.instances() == {}


def test_events_apply_in_order_and_a_gap_or_a_stranger_asks_for_a_snapshot():
    index = KvIndex()
    assert not index.apply(KvEvent(7, 1, 16, [1], []))  # never snapshotted: not applied
    assert 7 not in index
    index.replace(7, [1, 2], seq=3)
    assert index.apply(KvEvent(7, 2, 16, [99], []))  # at or before the snapshot: already in it
    assert index.overlaps([99]) == {}
    assert index.apply(KvEvent(7, 4, 16, [3], [1]))
    assert index.overlaps([2, 3]) == {7: 2} and index.overlaps([1]) == {}
    assert not index.apply(KvEvent(7, 6, 16, [4], []))  # 5 was missed: applied, but resync
    assert index.seq(7) == 6 and index.overlaps([2, 3, 4]) == {7: 3}


# -- the chooser --------------------------------------------------------------------------------
def test_overlap_beats_load_up_to_the_weight():
    # 10 blocks; A holds 8 of them but has 5 blocks in flight; B holds none and is idle
    def pick(active: dict[int, int], weight: float) -> int:
        return KvChooser({1: 8}, 10, dict(active), overlap_weight=weight).choose([1, 2], {})

    assert pick({1: 5}, 1.0) == 1   # A: 2 + 5 = 7, B: 10
    assert pick({1: 9}, 1.0) == 2   # A: 2 + 9 = 11, B: 10
    assert pick({1: 9}, 2.0) == 1   # A: 4 + 9 = 13, B: 20
    assert pick({1: 30}, 2.0) == 2  # A: 4 + 30 = 34, B: 20
    assert pick({1: 9}, 0.0) == 2   # weight 0: load alone


def test_with_nothing_cached_it_is_least_loaded_and_ties_rotate():
    active = {1: 3, 2: 1, 3: 2}
    assert KvChooser({}, 4, dict(active)).choose([1, 2, 3], {}) == 2
    # equal blocks in flight: fewer streams wins
    assert KvChooser({}, 4, {1: 2, 2: 2}).choose([1, 2], {1: 3, 2: 1}) == 2
    tie = RoundRobin()
    picks = []
    for _ in range(4):
        chooser = KvChooser({}, 4, {}, tie=tie)
        picks.append(chooser.choose([1, 2], {}))
        chooser.release()
    assert picks == [1, 2, 1, 2]


def test_a_shared_prefix_counts_once_in_the_load():
    """Requests that share a long system prompt load their engine with what is their own."""
    active: dict[int, int] = {}
    for _ in range(3):  # three conversations on engine 1, which holds their 40-block system prompt
        KvChooser({1: 40}, 42, active).choose([1], {})
    assert active == {1: 6}
    follow_up = KvChooser({1: 42}, 44, active)  # its earlier turn is on 1
    assert follow_up.choose([1, 2], {}) == 1  # 2 prefill blocks + 6 in flight beats 44 + 0


def test_the_request_blocks_follow_the_choice_and_leave_on_release():
    active: dict[int, int] = {2: 1}
    chooser = KvChooser({1: 3}, 4, active)
    # what it brings that instance 1 does not hold: 1 block of 4
    assert chooser.choose([1, 2], {}) == 1 and active == {1: 1, 2: 1}
    # 1 failed before its first token: the failover asks again without it (2 holds none of it)
    assert chooser.choose([2], {}) == 2 and active == {2: 5}
    assert chooser.overlap == 0 and chooser.chosen == 2 and chooser.choices == 2
    chooser.release()
    chooser.release()
    assert active == {2: 1} and chooser.chosen == 2
