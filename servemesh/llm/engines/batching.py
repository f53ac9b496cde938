"""Continuous batching: slots, a prefix cache, KV accounting and the decode loop.

The :class:`Batcher` runs one thread that owns the model's context. Each step it
decodes one token for every running sequence plus chunks of pending prompts, in
one batch; sequences join and leave between steps. The event loop only submits
requests, cancels them, and receives tokens (one hand-over per step for all
sequences).

Each slot is one sequence of the model's KV cache with a stream of its own, so a
sequence's attention always spans exactly its own cells, from cell 0: the same
arithmetic whether it runs alone, beside others, or after a prefix-cache hit
(greedy output is identical token for token). A finished slot keeps its KV
state; a new request takes the free slot whose cached tokens share the longest
prefix with its prompt (the next turn of a chat, a shared system prompt) and
computes only the rest, or copies a longer prefix held by another slot.

Pure logic over a :class:`Backend` (``llama_batch.LlamaBackend`` in production),
so the scheduling is tested without a model and the model is tested without it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from typing import Any, Protocol

from ...errors import Overloaded, ServemeshError

log = logging.getLogger("servemesh.llm.batching")


class EngineFault(ServemeshError):
    """The model failed to decode a batch (the sequences in it end with this error)."""


#: the "sampler" of a stand-in entry (see ``Backend.decode``)
PAD: Any = type("Pad", (), {"__repr__": lambda self: "PAD"})()


class DecodeFailed(Exception):
    """A backend could not decode a batch: ``code`` 1 means no room in the KV cache."""

    def __init__(self, code: int) -> None:
        super().__init__(f"llama_decode failed with {code}")
        self.code = code


class Backend(Protocol):
    """What the decode loop needs from a model context with ``slots`` sequences."""

    #: deterministic: prompts are computed in chunks of this many positions, aligned to multiples of it
    chunk: int
    #: every token computed in a batch of the same shape, whatever else runs (see llama_batch.py)
    deterministic: bool

    def decode(self, entries: Seq[tuple[int, Seq[int], int, bool, Any]]) -> list[int | None]:
        """Decode ``(slot, tokens, first position, sample after the last token?, sampler)``
        entries (one per slot, by slot id) as one step; the sampled tokens (greedy when the
        sampler is None), None for entries that do not sample. An entry with no sampler
        and ``PAD`` as its sampler is a stand-in, removed again after the step. Raises
        :class:`DecodeFailed`."""
        ...

    def new_sampler(self, temperature: float, top_p: float, seed: int | None) -> Any: ...

    def free_sampler(self, sampler: Any) -> None: ...

    def is_end(self, token: int) -> bool:
        """End of generation (EOS, end of turn, ...)."""
        ...

    def trim(self, slot: int, keep: int) -> bool:
        """Drop the slot's cells from position ``keep`` on; False if it cannot (then clear it)."""
        ...

    def clear(self, slot: int) -> None: ...

    def copy(self, src: int, dst: int, keep: int) -> None:
        """``dst`` holds the first ``keep`` cells of ``src`` (and nothing else)."""
        ...


@dataclasses.dataclass(eq=False)
class Sequence:
    """One request: submitted by the event loop, run by the decode thread."""

    prompt: list[int]
    max_tokens: int
    stop: frozenset[int] = frozenset()
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    # -- the event loop's side: what the thread delivered
    ready: list[int] = dataclasses.field(default_factory=list)
    finish: str | None = None
    error: BaseException | None = None
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    cancelled: bool = False
    # -- the thread's side
    slot: Slot | None = None
    pending: list[int] = dataclasses.field(default_factory=list)
    last: int = -1
    generated: int = 0
    reused: int = 0
    sampler: Any = None


@dataclasses.dataclass(eq=False)
class Slot:
    id: int
    #: tokens whose KV state the slot holds, at positions 0..len-1
    tokens: list[int] = dataclasses.field(default_factory=list)
    #: how many of them were computed as prompt chunks (the rest one by one, as answer tokens)
    prefilled: int = 0
    seq: Sequence | None = None
    used_at: float = 0.0


@dataclasses.dataclass
class BatchStats:
    """Counters of the decode loop (read by the engine's ``stats`` endpoint and metrics)."""

    requests: int = 0
    prompt_tokens: int = 0
    #: prompt tokens whose KV state came from the prefix cache instead of being computed
    cached_tokens: int = 0
    #: requests that reused at least one cached token
    prefix_hits: int = 0
    generated_tokens: int = 0
    steps: int = 0
    rejected: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def common_prefix(a: Seq[int], b: Seq[int]) -> int:
    """Length of the common prefix of two token lists (compared 64 at a time in C)."""
    n = min(len(a), len(b))
    i = 0
    while i + 64 <= n and a[i:i + 64] == b[i:i + 64]:
        i += 64
    while i < n and a[i] == b[i]:
        i += 1
    return i


#: a slot's cache change for the event loop: (slot id, the tokens it now holds)
CacheChange = tuple[int, tuple[int, ...]]


class Batcher:
    """The decode loop over ``slots`` sequences of one context.

    ``submit`` (event loop) queues a :class:`Sequence`; at most ``max_waiting`` wait for
    a slot, then :class:`Overloaded`. A request must fit in one slot's context (the
    engine checks before submitting). ``batch_tokens`` bounds the
    tokens of one step (decode tokens first, then prompt chunks). ``on_cache`` is
    called on the event loop when a slot's cached tokens change by a whole
    ``block`` (for KV events)."""

    def __init__(self, backend: Backend, loop: asyncio.AbstractEventLoop, *, slots: int,
                 batch_tokens: int = 512, max_waiting: int = 64, name: str = "engine",
                 on_cache: Callable[[int, tuple[int, ...]], None] | None = None, block: int = 16) -> None:
        if slots < 1 or batch_tokens < slots:
            raise ValueError(f"need slots >= 1 and batch_tokens >= slots (got {slots}, {batch_tokens})")
        self.backend = backend
        self.loop = loop
        self.batch_tokens = batch_tokens
        self.max_waiting = max_waiting
        self.name = name
        self.on_cache = on_cache
        self.block = block
        self.slots = [Slot(i) for i in range(slots)]
        self.stats = BatchStats()
        self._incoming: collections.deque[Sequence] = collections.deque()
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._running: list[Sequence] = []
        self._wake = threading.Event()
        self._stopping = False
        # waiting = submitted - admitted; each counter is written by one thread only
        self._submitted = 0
        self._admitted = 0
        self._thread = threading.Thread(target=self._run, name=f"{name}-decode", daemon=True)
        self.failure: BaseException | None = None

    # -- the event loop's side -------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The decode thread runs (the backend may not be freed while it does)."""
        return self._thread.is_alive()

    @property
    def waiting(self) -> int:
        return self._submitted - self._admitted

    @property
    def busy(self) -> int:
        return sum(1 for s in self.slots if s.seq is not None)

    def submit(self, seq: Sequence) -> None:
        if self.failure is not None:
            raise EngineFault(f"the decode loop stopped: {self.failure}")
        if self._stopping:
            raise Overloaded(self.name, 0)
        if self.waiting >= self.max_waiting:
            self.stats.rejected += 1
            raise Overloaded(self.name, self.max_waiting)
        self._submitted += 1
        self._incoming.append(seq)
        self._wake.set()

    def cancel(self, seq: Sequence) -> None:
        """The caller left: the thread frees the sequence's slot at its next step."""
        seq.cancelled = True
        self._wake.set()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the loop (blocking: call from a worker thread)."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _deliver(self, updates: list[tuple[Sequence, list[int], str | None, BaseException | None]],
                 changes: list[CacheChange]) -> None:
        for seq, tokens, finish, error in updates:
            seq.ready.extend(tokens)
            if finish is not None:
                seq.finish = finish
            if error is not None:
                seq.error = error
            seq.wake.set()
        if self.on_cache is not None:
            for slot_id, held in changes:
                self.on_cache(slot_id, held)

    # -- the decode thread -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                updates: list[Any] = []
                changes: list[CacheChange] = []
                self._admit(updates, changes)
                if self._running:
                    self._step(updates, changes)
                if updates or changes:
                    self._send(updates, changes)
                if not self._running and not self._incoming and not self._waiting:
                    self._wake.wait()
                    self._wake.clear()
        except BaseException as exc:  # the model failed for good: every request learns it
            log.exception("the decode loop of %s failed", self.name)
            self.failure = exc
            error = EngineFault(f"the decode loop failed: {type(exc).__name__}: {exc}")
            self._send([(s, [], None, error) for s in (*self._running, *self._waiting, *self._incoming)], [])
            self._running.clear()
        finally:
            for seq in (*self._running, *self._waiting, *self._incoming):
                self._send([(seq, [], None, EngineFault("the engine is shutting down"))], [])
            for slot in self.slots:
                if slot.seq is not None and slot.seq.sampler is not None:
                    self.backend.free_sampler(slot.seq.sampler)

    def _send(self, updates: list[Any], changes: list[CacheChange]) -> None:
        try:
            self.loop.call_soon_threadsafe(self._deliver, updates, changes)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    def _admit(self, updates: list[Any], changes: list[CacheChange]) -> None:
        while self._incoming:
            self._waiting.append(self._incoming.popleft())
        while self._waiting:
            seq = self._waiting[0]
            if seq.cancelled:
                self._waiting.popleft()
                self._admitted += 1
                continue
            slot = self._place(seq, changes)
            if slot is None:
                return
            self._waiting.popleft()
            self._admitted += 1
            seq.slot = slot
            slot.seq = seq
            seq.sampler = None if seq.temperature == 0 else self.backend.new_sampler(
                seq.temperature, seq.top_p, seq.seed)
            self._running.append(seq)
            self.stats.requests += 1
            self.stats.prompt_tokens += len(seq.prompt)
            self.stats.cached_tokens += seq.reused
            self.stats.prefix_hits += seq.reused > 0

    def _place(self, seq: Sequence, changes: list[CacheChange]) -> Slot | None:
        """A free slot for ``seq`` and the cached prefix of its prompt it starts from, or None.

        Reusable: any common prefix; when deterministic, only the prompt-chunk part of a
        slot's cache, down to a chunk boundary (so the rest of the prompt is computed in
        the very chunks a cold start would use). The slot taken keeps the running slots
        consecutive (llama.cpp decodes consecutive sequences in one pass): a free slot
        holding the prefix if it can, else the least recently used one, with the prefix
        copied in from wherever it is."""
        free = [s for s in self.slots if s.seq is None]
        if not free:
            return None
        prompt = seq.prompt
        exact = self.backend.deterministic
        chunk = self.backend.chunk if exact else 1
        limit = len(prompt) - 1  # the last prompt token is always computed: its logits start the answer
        busy = [s.id for s in self.slots if s.seq is not None]
        if busy:
            lo, hi = min(busy), max(busy)
            holes = [s for s in free if lo < s.id < hi]
            allowed = holes or [s for s in free if s.id in (lo - 1, hi + 1)]
        else:
            allowed = free
        best: dict[int, int] = {}
        for slot in self.slots:
            n = min(common_prefix(slot.tokens, prompt), limit, slot.prefilled if exact else limit) // chunk * chunk
            if n:
                best[slot.id] = n
        found = max(best.values(), default=0)
        target = next((s for s in sorted(allowed, key=lambda s: s.used_at) if best.get(s.id) == found), None)
        if target is None or not found:
            target = min(allowed, key=lambda s: (len(s.tokens) > 0, s.used_at))
        if found and best.get(target.id) != found:
            src = next(s for s in self.slots if best.get(s.id) == found)
            self.backend.copy(src.id, target.id, found)
            target.tokens = list(prompt[:found])
            changes.append((target.id, tuple(target.tokens)))
        elif len(target.tokens) > found:
            if not self.backend.trim(target.id, found):
                self.backend.clear(target.id)
                found = 0
            del target.tokens[found:]
            changes.append((target.id, tuple(target.tokens)))
        target.prefilled = found
        seq.reused = found
        seq.pending = list(prompt[found:])
        return target

    def _step(self, updates: list[Any], changes: list[CacheChange]) -> None:
        running = []
        for seq in self._running:
            if seq.cancelled:
                self._release(seq)
            else:
                running.append(seq)
        self._running = running
        if not running:
            return
        exact = self.backend.deterministic
        chunk = self.backend.chunk
        entries: list[tuple[int, Seq[int], int, bool, Any]] = []
        plan: list[tuple[Sequence | None, int]] = []  # the sequence (None: a stand-in), its prompt tokens in it
        budget = self.batch_tokens
        for seq in running:  # every running answer gets its next token
            if not seq.pending:
                assert seq.slot is not None
                entries.append((seq.slot.id, (seq.last,), len(seq.slot.tokens), True, seq.sampler))
                plan.append((seq, 0))
                budget -= 1
        for seq in running:  # then whole prompt chunks, as many as fit
            if seq.pending:
                assert seq.slot is not None
                at = len(seq.slot.tokens)
                if exact:  # whole aligned chunks only
                    take = min(len(seq.pending), chunk - at % chunk)
                    if take > budget:
                        continue
                else:
                    take = min(len(seq.pending), budget)
                    if take <= 0:
                        break
                entries.append((seq.slot.id, seq.pending[:take], at, take == len(seq.pending), seq.sampler))
                plan.append((seq, take))
                budget -= take
        singles = sorted(e[0] for e in entries if len(e[1]) == 1)
        if singles and (exact or len(singles) > 1):
            # stand-ins fill the gaps, so the answers go in one pass; deterministic: every slot
            # has a row (with logits) in every step, so each row's arithmetic never changes
            have = set(singles)
            span = self.slots if exact else self.slots[singles[0]:singles[-1]]
            for slot in span:
                if slot.id not in have:
                    ahead = sum(take for s, take in plan if s is not None and s.slot is slot)
                    entries.append((slot.id, (0,), len(slot.tokens) + ahead, exact, PAD))
                    plan.append((None, 0))
        order = sorted(range(len(entries)), key=lambda i: entries[i][0])
        entries = [entries[i] for i in order]
        plan = [plan[i] for i in order]
        try:
            sampled = self.backend.decode(entries)
        except DecodeFailed as exc:
            error: BaseException = (Overloaded(self.name, len(self.slots)) if exc.code == 1
                                    else EngineFault(str(exc)))
            for owner, _ in plan:
                if owner is not None:
                    updates.append((owner, [], None, error))
                    self._release(owner)
            self._running = [s for s in self._running if s.slot is not None]
            return
        self.stats.steps += 1
        for (owner, take), (_, tokens, _, _, _), token in zip(plan, entries, sampled, strict=True):
            if owner is None:
                continue
            held = owner.slot
            assert held is not None
            before = len(held.tokens) // self.block
            held.tokens.extend(tokens)
            if take:
                del owner.pending[:take]
                held.prefilled = len(held.tokens)
            if len(held.tokens) // self.block != before:
                changes.append((held.id, tuple(held.tokens)))
            if token is None:
                continue
            owner.generated += 1
            self.stats.generated_tokens += 1
            finish = None
            if token in owner.stop or self.backend.is_end(token):
                finish = "stop"
            elif owner.generated >= owner.max_tokens:
                finish = "length"
            owner.last = token
            updates.append((owner, [token], finish, None))
            if finish is not None:
                self._release(owner)
        self._running = [s for s in self._running if s.slot is not None]

    def _release(self, seq: Sequence) -> None:
        slot = seq.slot
        if slot is None:
            return
        if seq.sampler is not None:
            self.backend.free_sampler(seq.sampler)
            seq.sampler = None
        slot.seq = None
        slot.used_at = time.monotonic()
        seq.slot = None


__all__ = ["PAD", "Backend", "BatchStats", "Batcher", "DecodeFailed", "EngineFault", "Sequence", "Slot",
           "common_prefix"]
