"""KV-cache-aware routing, the parts without I/O of their own (docs/llm.md, "KV-aware routing").

- ``block_hashes``: a prompt as chained hashes of its full blocks of ``BLOCK_SIZE``
  tokens, the same in every process;
- ``KvPublisher``: an engine says which blocks its KV cache holds; it refcounts them
  over owners (slots, sequences) and publishes only what changed, one ``KvEvent`` per
  event-loop turn, on the runtime's event plane;
- ``KvIndex``: a router's view of those events: block -> the instances that hold it,
  and how many leading blocks of a prompt each instance holds;
- ``KvChooser``: the choice for one request (a runtime ``Router``): the lowest
  ``overlap_weight * blocks to prefill + blocks in flight``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
from array import array
from collections.abc import Hashable, Iterable, Mapping, Sequence
from hashlib import blake2b
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import ConfigError, ServemeshError
from ..log import Throttled
from ..runtime.events import subject_token
from ..runtime.routing import Router

if TYPE_CHECKING:
    from ..runtime import DistributedRuntime
    from ..runtime.events import EventPlane

log = logging.getLogger("servemesh.llm.kv")
throttled = Throttled(log, per_minute=6)

#: tokens per block: the unit of caching, hashing and routing
BLOCK_SIZE = 16
#: the endpoint where an engine serves ``KvPublisher.state()`` (the router's snapshots)
KV_STATE_PATH = "inference.engine.kv_state"
#: at most this many hashes in one event (a bigger change goes as several)
MAX_EVENT_HASHES = 16384
_MASK = (1 << 63) - 1


def block_hashes(token_ids: Sequence[int], block_size: int = BLOCK_SIZE) -> list[int]:
    """One hash per full block of ``token_ids`` (a last partial block has none), chained:
    block ``i``'s hash covers the tokens of blocks ``0..i``, so equal hashes mean equal
    prefixes. BLAKE2b (8 bytes) over the previous hash and the block's tokens as
    little-endian int32: the same in every process and Python run; non-negative, < 2**63."""
    if block_size < 1:
        raise ConfigError(f"block_size must be at least 1, not {block_size}")
    count = len(token_ids) // block_size
    if not count:
        return []
    head = token_ids[: count * block_size]
    try:
        packed = array("i", head)
    except OverflowError:  # ids beyond int32: their low 32 bits, as the same bytes
        packed = array("I", [t & 0xFFFFFFFF for t in head])
    if sys.byteorder != "little":
        packed.byteswap()
    data = memoryview(packed).cast("B")
    step = block_size * 4
    digest = block_size.to_bytes(8, "little")  # the chain's seed: block sizes never share hashes
    out = []
    for start in range(0, len(data), step):
        h = blake2b(digest, digest_size=8)
        h.update(data[start:start + step])
        digest = h.digest()
        out.append(int.from_bytes(digest, "little") & _MASK)
    return out


def kv_subject(model: str, namespace: str = "inference") -> str:
    """The event subject of a model's KV events: ``sm.{namespace}.events.kv.{model}``
    (inside ``sm.{namespace}.>``, the namespace's NATS permission)."""
    return f"sm.{namespace}.events.kv.{subject_token(model)}"


class KvEvent(msgspec.Struct, frozen=True):
    """What an engine's KV cache gained (``stored``) and lost (``removed``) since its
    previous event: ``seq`` counts an instance's events from 1, so a gap says one was lost."""

    instance: int
    seq: int
    block_size: int
    stored: list[int] = []
    removed: list[int] = []


class KvState(msgspec.Struct, frozen=True):
    """An engine's snapshot (its ``kv_state`` endpoint): every block held, as of event ``seq``."""

    instance: int
    seq: int
    block_size: int
    blocks: list[int] = []


_encode = msgspec.msgpack.Encoder().encode
decode_event = msgspec.msgpack.Decoder(KvEvent).decode


# -- engine side ----------------------------------------------------------------------------
class KvPublisher:
    """Publishes the blocks an engine's KV cache holds, as changes (``KvEvent``).

    Owners (a slot, a sequence: anything hashable) ``hold`` blocks; a block is cached
    while any owner holds it. Everything that changed within one event-loop turn (or
    within ``interval_s``, if set) goes out as one event, in order, by one task owned by
    the runtime; while a publish is under way the next changes gather. With no event
    plane (etcd without NATS) it logs once and publishes nothing; ``state()`` still
    answers. Call its methods from the event loop."""

    def __init__(self, runtime: DistributedRuntime, model: str, block_size: int = BLOCK_SIZE, *,
                 namespace: str = "inference", interval_s: float = 0.0) -> None:
        if block_size < 1:
            raise ConfigError(f"block_size must be at least 1, not {block_size}")
        self.runtime = runtime
        self.model = model
        self.block_size = block_size
        self.subject = kv_subject(model, namespace)
        self.interval_s = interval_s
        #: events published (or attempted: a failed one leaves a gap the routers notice)
        self.published = 0
        self._holds: dict[Hashable, frozenset[int]] = {}
        self._refs: dict[int, int] = {}
        #: block -> held, for blocks whose state differs from what was last published
        self._changes: dict[int, bool] = {}
        self._seq = 0
        self._events: EventPlane | None = None
        self._off = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- what the engine tells it ---------------------------------------------------------
    def hold(self, owner: Hashable, hashes: Iterable[int]) -> None:
        """``owner`` now holds exactly these blocks (replacing what it held)."""
        new = hashes if isinstance(hashes, frozenset) else frozenset(hashes)
        old = self._holds.get(owner)
        if old is None:
            if not new:
                return
            for h in new:
                self._ref(h)
        else:
            if new == old:
                return
            for h in new - old:
                self._ref(h)
            for h in old - new:
                self._unref(h)
        if new:
            self._holds[owner] = new
        else:
            self._holds.pop(owner, None)
        if self._changes:
            self._wake.set()

    def drop(self, owner: Hashable) -> None:
        """``owner`` holds nothing any more."""
        old = self._holds.pop(owner, None)
        if old:
            for h in old:
                self._unref(h)
            if self._changes:
                self._wake.set()

    def _ref(self, h: int) -> None:
        n = self._refs.get(h, 0)
        self._refs[h] = n + 1
        if not n:
            self._changed(h, True)

    def _unref(self, h: int) -> None:
        n = self._refs[h] - 1
        if n:
            self._refs[h] = n
        else:
            del self._refs[h]
            self._changed(h, False)

    def _changed(self, h: int, held: bool) -> None:
        if self._off:
            return
        if h in self._changes:  # it changed back: as last published
            del self._changes[h]
        else:
            self._changes[h] = held

    def state(self) -> dict[str, Any]:
        """The snapshot a ``kv_state`` endpoint returns: every block held, as of ``seq``
        (the changes not yet published are in it too; applying them again changes nothing)."""
        return {"instance": self.runtime.instance_id, "seq": self._seq, "block_size": self.block_size,
                "blocks": sorted(self._refs)}

    @property
    def blocks(self) -> int:
        """How many distinct blocks are held."""
        return len(self._refs)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is not None or self._off:
            return
        try:
            self._events = self.runtime.events
        except ConfigError as exc:
            self._off = True
            self._changes.clear()
            log.warning("KV events of %s are off (routers cannot see this engine's cache): %s", self.model, exc)
            return
        self._task = self.runtime.tasks.spawn(self._run(), name=f"kv-publisher {self.model}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.interval_s > 0:
                await asyncio.sleep(self.interval_s)  # let more changes gather into one event
            while self._changes:
                changes, self._changes = self._changes, {}
                stored = [h for h, held in changes.items() if held]
                removed = [h for h, held in changes.items() if not held]
                for i in range(0, max(len(stored), len(removed)), MAX_EVENT_HASHES):
                    await self._publish(stored[i:i + MAX_EVENT_HASHES], removed[i:i + MAX_EVENT_HASHES])

    async def _publish(self, stored: list[int], removed: list[int]) -> None:
        assert self._events is not None
        self._seq += 1
        self.published += 1
        event = KvEvent(self.runtime.instance_id, self._seq, self.block_size, stored, removed)
        try:
            await self._events.publish(self.subject, _encode(event))
        except ServemeshError as exc:  # routers see the gap in seq and take a snapshot
            throttled.warning("publish", "KV event %d of %s not published: %s", self._seq, self.model, exc)


# -- router side ---------------------------------------------------------------------------
class KvIndex:
    """Block hash -> the instances holding it, kept from snapshots and events."""

    def __init__(self) -> None:
        self._holders: dict[int, set[int]] = {}
        self._blocks: dict[int, set[int]] = {}
        self._seq: dict[int, int] = {}

    def __contains__(self, instance: object) -> bool:
        """Whether ``instance`` is indexed (had a snapshot)."""
        return instance in self._seq

    def seq(self, instance: int) -> int | None:
        return self._seq.get(instance)

    def instances(self) -> dict[int, int]:
        """Each indexed instance, with how many blocks it holds."""
        return {i: len(self._blocks[i]) for i in self._seq}

    @property
    def size(self) -> int:
        """Distinct blocks held anywhere."""
        return len(self._holders)

    def replace(self, instance: int, blocks: Iterable[int], seq: int) -> None:
        """What ``instance`` holds as of its event ``seq`` (a snapshot)."""
        self.remove_instance(instance)
        mine = set(blocks)
        self._blocks[instance] = mine
        self._seq[instance] = seq
        holders = self._holders
        for h in mine:
            found = holders.get(h)
            if found is None:
                holders[h] = {instance}
            else:
                found.add(instance)

    def apply(self, event: KvEvent) -> bool:
        """Apply an event; False when the instance needs a snapshot: never indexed (the
        event is not applied), or events were missed (``seq`` skipped: applied anyway,
        the best there is until the snapshot comes). An event at or before the indexed
        ``seq`` is already in it and is ignored."""
        instance = event.instance
        last = self._seq.get(instance)
        if last is None:
            return False
        if event.seq <= last:
            return True
        self._seq[instance] = event.seq
        mine = self._blocks[instance]
        holders = self._holders
        for h in event.stored:
            if h not in mine:
                mine.add(h)
                found = holders.get(h)
                if found is None:
                    holders[h] = {instance}
                else:
                    found.add(instance)
        for h in event.removed:
            if h in mine:
                mine.discard(h)
                found = holders.get(h)
                if found is not None:
                    found.discard(instance)
                    if not found:
                        del holders[h]
        return event.seq == last + 1

    def remove_instance(self, instance: int) -> None:
        mine = self._blocks.pop(instance, None)
        self._seq.pop(instance, None)
        if not mine:
            return
        holders = self._holders
        for h in mine:
            found = holders.get(h)
            if found is not None:
                found.discard(instance)
                if not found:
                    del holders[h]

    def overlaps(self, hashes: Sequence[int]) -> dict[int, int]:
        """Instance -> how many leading blocks of ``hashes`` it holds (only those with one
        or more: an instance's count stops at its first missing block)."""
        if not hashes:
            return {}
        holders = self._holders
        first = holders.get(hashes[0])
        if not first:
            return {}
        active = set(first)
        found: dict[int, int] = {}
        for i in range(1, len(hashes)):
            have = holders.get(hashes[i])
            if have is None:
                for instance in active:
                    found[instance] = i
                return found
            if active <= have:
                continue
            for instance in active - have:
                found[instance] = i
            active &= have
            if not active:
                return found
        for instance in active:
            found[instance] = len(hashes)
        return found


def request_blocks(tokens: int, block_size: int = BLOCK_SIZE) -> int:
    """Blocks a prompt of ``tokens`` takes in a KV cache (a partial last block counts)."""
    return math.ceil(tokens / block_size)


class KvChooser:
    """The routing of one request, as a runtime ``Router`` (``Client.generate(..., router=)``).

    For each candidate: cost = ``overlap_weight`` * the blocks it would prefill (the
    request's ``blocks`` less its ``overlaps``) + its ``active`` blocks: what the requests
    in flight on it brought that it did not hold (a shared system prompt counts once, as
    in the engine's cache; every request at least one block). The lowest wins; ties go
    to the fewest active blocks, then the fewest streams, then ``tie`` (round robin: with
    nothing cached and nothing in flight, requests spread). The chosen instance's
    ``active`` count carries this request's share until ``release()``; a failover moves
    it."""

    __slots__ = ("_charge", "_holder", "active", "blocks", "choices", "chosen", "overlap_weight", "overlaps", "tie")

    def __init__(self, overlaps: Mapping[int, int], blocks: int, active: dict[int, int], *,
                 overlap_weight: float = 1.0, tie: Router | None = None) -> None:
        self.overlaps = overlaps
        self.blocks = blocks
        self.active = active
        self.overlap_weight = overlap_weight
        self.tie = tie
        #: the instance chosen last (kept after ``release()``, for the router's stats)
        self.chosen: int | None = None
        #: how many times it was asked: more than once, the first choice failed (a failover)
        self.choices = 0
        self._holder: int | None = None  # the instance whose active count holds our blocks
        self._charge = 0

    def cost(self, instance: int) -> float:
        prefill = max(self.blocks - self.overlaps.get(instance, 0), 0)
        return self.overlap_weight * prefill + self.active.get(instance, 0)

    def choose(self, candidates: Sequence[int], load: Mapping[int, int]) -> int:
        self.release()  # a failover: our blocks leave the instance that failed
        self.choices += 1
        if len(candidates) == 1:
            pick = candidates[0]
        else:
            active = self.active
            costs = {c: self.cost(c) for c in candidates}
            low = min(costs.values())
            best = [c for c in candidates if costs[c] == low]
            if len(best) > 1:
                least = min((active.get(c, 0), load.get(c, 0)) for c in best)
                best = [c for c in best if (active.get(c, 0), load.get(c, 0)) == least]
            pick = best[0] if len(best) == 1 else (self.tie.choose(best, load) if self.tie else min(best))
        self.chosen = self._holder = pick
        self._charge = max(self.blocks - self.overlaps.get(pick, 0), 1)
        self.active[pick] = self.active.get(pick, 0) + self._charge
        return pick

    @property
    def overlap(self) -> int:
        """Leading blocks of the request the chosen instance holds (0 before a choice)."""
        return 0 if self.chosen is None else self.overlaps.get(self.chosen, 0)

    def release(self) -> None:
        """Take this request's blocks off its instance's active count (again: a no-op)."""
        holder, self._holder = self._holder, None
        if holder is None:
            return
        left = self.active.get(holder, 0) - self._charge
        if left > 0:
            self.active[holder] = left
        else:
            self.active.pop(holder, None)


__all__ = ["BLOCK_SIZE", "KV_STATE_PATH", "KvChooser", "KvEvent", "KvIndex", "KvPublisher", "KvState",
           "block_hashes", "decode_event", "kv_subject", "request_blocks"]
