"""``KvRouting``: what the router's ``kv`` policy keeps (docs/llm.md, "KV-aware routing").

It subscribes to its model's KV events, keeps a ``KvIndex`` of them, takes a snapshot
(the engine's ``kv_state``) of each engine that appears and of any engine whose events
it may have missed (lost events, a gap in an engine's ``seq``), forgets an engine's
blocks when discovery drops it, and counts the blocks of the requests it has in flight
on each engine. Its tasks (the event reader, the snapshots) are its own and end with
``close()``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import EventsLost, ServemeshError
from ..log import Throttled
from ..runtime.routing import RoundRobin
from ..runtime.tasks import TaskSet, within
from .kv import (
    BLOCK_SIZE,
    KV_STATE_PATH,
    KvChooser,
    KvEvent,
    KvIndex,
    KvState,
    block_hashes,
    decode_event,
    kv_subject,
    request_blocks,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..runtime import Client, DistributedRuntime
    from ..runtime.events import Subscription

log = logging.getLogger("servemesh.llm.router")
throttled = Throttled(log, per_minute=6)

#: events of one engine held while its snapshot is on the way (then: another snapshot)
MAX_BUFFERED = 1024


class KvRouting:
    def __init__(self, runtime: DistributedRuntime, model: str, *, block_size: int = BLOCK_SIZE,
                 overlap_weight: float = 1.0, snapshot_timeout: float = 10.0, max_pending: int = 4096) -> None:
        self.runtime = runtime
        self.model = model
        self.block_size = block_size
        self.overlap_weight = overlap_weight
        self.snapshot_timeout = snapshot_timeout
        self.max_pending = max_pending
        self.subject = kv_subject(model)
        self.index = KvIndex()
        #: instance -> blocks of this router's requests in flight there
        self.active: dict[int, int] = {}
        self.counts = {"requests": 0, "kv_hits": 0, "blocks_requested": 0, "blocks_matched": 0,
                       "prefill_blocks_saved": 0, "failovers": 0, "events": 0, "events_lost": 0, "gaps": 0,
                       "snapshots": 0, "snapshot_failures": 0}
        self._tie = RoundRobin()
        self._tasks = TaskSet("kv router")
        self._states: Client | None = None
        self._sub: Subscription | None = None
        self._unlink: Callable[[], None] | None = None
        #: instance -> its events that arrived while its snapshot is on the way
        self._syncing: dict[int, list[KvEvent]] = {}
        #: instances to snapshot again once the snapshot under way has arrived
        self._again: set[int] = set()
        #: instances whose blocks are of another size than ours (never match: not indexed)
        self._foreign: set[int] = set()

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe, then take a snapshot of every engine there is (for up to
        ``snapshot_timeout``), so that the first request is routed by what they hold."""
        self._states = await self.runtime.endpoint(KV_STATE_PATH).client(
            router="round_robin", capabilities={"model": self.model})
        self._sub = await self.runtime.events.subscribe(self.subject, max_pending=self.max_pending)
        self._tasks.spawn(self._read(self._sub), name=f"kv-events {self.model}")
        self._unlink = self._states.on_change(self._instances_changed)
        syncs = self._sync_new()
        if syncs:
            await asyncio.wait(syncs, timeout=self.snapshot_timeout)

    async def close(self) -> None:
        if self._unlink is not None:
            self._unlink()
            self._unlink = None
        if self._sub is not None:
            await self._sub.close()
        await self._tasks.close()

    # -- routing ---------------------------------------------------------------------------
    def route(self, token_ids: list[int]) -> KvChooser:
        """The chooser of one request; ``finished(chooser)`` once its stream ended."""
        hashes = block_hashes(token_ids, self.block_size)
        overlaps = self.index.overlaps(hashes)
        counts = self.counts
        counts["requests"] += 1
        counts["blocks_requested"] += len(hashes)
        counts["blocks_matched"] += max(overlaps.values(), default=0)
        return KvChooser(overlaps, request_blocks(len(token_ids), self.block_size), self.active,
                         overlap_weight=self.overlap_weight, tie=self._tie)

    def finished(self, chooser: KvChooser) -> None:
        chooser.release()
        if chooser.choices > 1:
            self.counts["failovers"] += 1
        saved = chooser.overlap
        if saved:
            self.counts["kv_hits"] += 1
            self.counts["prefill_blocks_saved"] += saved

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "block_size": self.block_size, "overlap_weight": self.overlap_weight,
                "index_blocks": self.index.size,
                "instances": [{"instance": iid, "blocks": n, "active_blocks": self.active.get(iid, 0)}
                              for iid, n in sorted(self.index.instances().items())]}

    # -- engines coming and going ---------------------------------------------------------
    def _live(self) -> set[int]:
        return set(self._states.instance_ids()) if self._states is not None else set()

    def _instances_changed(self) -> None:
        self._sync_new()

    def _sync_new(self) -> list[asyncio.Task[None]]:
        """Forget the engines that left; take a snapshot of those that came."""
        live = self._live()
        for iid in [*self.index.instances(), *self._syncing]:
            if iid not in live:
                self._forget(iid)
        return [task for iid in sorted(live) if iid not in self.index and iid not in self._syncing
                if (task := self._sync_soon(iid)) is not None]

    def _forget(self, iid: int) -> None:
        if iid in self.index:
            log.info("engine %x of %s left: forgetting its %d cached blocks", iid, self.model,
                     self.index.instances()[iid])
        self.index.remove_instance(iid)
        self._syncing.pop(iid, None)
        self._again.discard(iid)
        self._foreign.discard(iid)

    def _sync_soon(self, iid: int) -> asyncio.Task[None] | None:
        if iid in self._syncing:
            self._again.add(iid)
            return None
        self._syncing[iid] = []
        try:
            return self._tasks.spawn(self._sync(iid), name=f"kv-snapshot {iid:x}")
        except RuntimeError:  # closing
            self._syncing.pop(iid, None)
            return None

    async def _sync(self, iid: int) -> None:
        assert self._states is not None
        try:
            answer = await within(self._states.one({}, iid), self.snapshot_timeout)
            state = msgspec.convert(answer, KvState)
        except (ServemeshError, TimeoutError, StopAsyncIteration, msgspec.ValidationError) as exc:
            self.counts["snapshot_failures"] += 1
            throttled.warning("snapshot", "no KV snapshot from engine %x of %s (its next event asks again): %r",
                              iid, self.model, exc)
            self._syncing.pop(iid, None)
            self._again.discard(iid)
            return
        buffered = self._syncing.pop(iid, None)
        if buffered is None or iid not in self._live():  # it left meanwhile
            return
        self.counts["snapshots"] += 1
        if state.block_size != self.block_size:
            if iid not in self._foreign:
                log.warning("engine %x of %s caches blocks of %d tokens, this router hashes %d: its cache is "
                            "not used for routing (give both the same block size)", iid, self.model,
                            state.block_size, self.block_size)
            self._foreign.add(iid)
            self.index.replace(iid, (), state.seq)
            return
        self._foreign.discard(iid)
        self.index.replace(iid, state.blocks, state.seq)
        for event in buffered:
            self._apply(event)
        if iid in self._again:
            self._again.discard(iid)
            self._sync_soon(iid)

    # -- events ----------------------------------------------------------------------------
    async def _read(self, sub: Subscription) -> None:
        while True:
            try:
                async for data in sub:
                    self._on_event(data)
                return
            except EventsLost as exc:
                self.counts["events_lost"] += 1
                log.warning("KV events of %s lost (%s): taking every engine's snapshot again", self.model, exc)
                for iid in sorted(self._live()):
                    self._sync_soon(iid)

    def _on_event(self, data: bytes) -> None:
        try:
            event = decode_event(data)
        except msgspec.DecodeError as exc:
            throttled.warning("garbage", "a malformed KV event on %s: %s", self.subject, exc)
            return
        self.counts["events"] += 1
        iid = event.instance
        buffered = self._syncing.get(iid)
        if buffered is not None:  # its snapshot is on the way: apply what is newer after it
            if len(buffered) < MAX_BUFFERED:
                buffered.append(event)
            else:
                self._again.add(iid)
            return
        if iid not in self.index:
            if iid in self._live():  # its snapshot failed: try again
                self._sync_soon(iid)
            return
        self._apply(event)

    def _apply(self, event: KvEvent) -> None:
        iid = event.instance
        if iid in self._foreign:
            return
        last = self.index.seq(iid)
        if not self.index.apply(event):
            self.counts["gaps"] += 1
            log.info("KV events of engine %x of %s skipped from %s to %d: taking its snapshot", iid, self.model,
                     last, event.seq)
            self._sync_soon(iid)


__all__ = ["KvRouting"]
