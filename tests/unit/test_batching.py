"""The continuous-batching loop (``llm/engines/batching.py``) over a backend with no model.

The backend here is a deterministic stand-in for a model: the next token is a function
of everything in the sequence's cache, so any slip in positions, prefix reuse or
copying changes the output. It also checks what llama.cpp would refuse (positions
that do not follow the cache) and that each step's answers go in one pass."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from collections.abc import Sequence as Seq
from typing import Any

import pytest

from servemesh.errors import Overloaded
from servemesh.llm.engines.batching import PAD, Batcher, DecodeFailed, EngineFault, Sequence, common_prefix

VOCAB = 1000
END = 999


class FakeBackend:
    """Per-slot caches of token ids; the next token hashes the slot's cache."""

    def __init__(self, slots: int, chunk: int = 8, deterministic: bool = False) -> None:
        self.kv: list[list[int]] = [[] for _ in range(slots)]
        self.chunk = chunk
        self.deterministic = deterministic
        self.steps: list[list[tuple[int, int, int, bool]]] = []  # (slot, n tokens, first position, pad)
        self.fail_with: BaseException | None = None
        self.fail_code = 0
        self.gate: asyncio.Event | None = None
        self.copies = 0

    def next_token(self, slot: int) -> int:
        digest = hashlib.blake2b(repr(self.kv[slot]).encode(), digest_size=4).digest()
        return int.from_bytes(digest, "little") % (VOCAB - 1)  # END only when asked for

    def decode(self, entries: Seq[tuple[int, Seq[int], int, bool, Any]]) -> list[int | None]:
        if self.fail_with is not None:
            raise self.fail_with
        if self.fail_code:
            raise DecodeFailed(self.fail_code)
        self.steps.append([(slot, len(tokens), first, sampler is PAD) for slot, tokens, first, _, sampler in entries])
        singles = sorted(slot for slot, tokens, _, _, _ in entries if len(tokens) == 1)
        assert singles == list(range(singles[0], singles[0] + len(singles))) if singles else True, \
            f"answers in more than one pass: {singles}"
        out: list[int | None] = []
        for slot, tokens, first, want, sampler in entries:
            assert first == len(self.kv[slot]), f"slot {slot}: position {first} after {len(self.kv[slot])} cells"
            self.kv[slot].extend(tokens)
            out.append(self.next_token(slot) if want and sampler is not PAD else None)
        for slot, _, first, _, sampler in entries:
            if sampler is PAD:
                del self.kv[slot][first:]
        return out

    def new_sampler(self, temperature: float, top_p: float, seed: int | None) -> Any:
        return ("sampler", seed)

    def free_sampler(self, sampler: Any) -> None:
        pass

    def is_end(self, token: int) -> bool:
        return token == END

    def trim(self, slot: int, keep: int) -> bool:
        del self.kv[slot][keep:]
        return True

    def clear(self, slot: int) -> None:
        self.kv[slot].clear()

    def copy(self, src: int, dst: int, keep: int) -> None:
        self.copies += 1
        self.kv[dst] = list(self.kv[src][:keep])


async def collect(seq: Sequence, cancel_after: int | None = None, batcher: Batcher | None = None) -> list[int]:
    out: list[int] = []
    while True:
        await seq.wake.wait()
        seq.wake.clear()
        out += seq.ready
        seq.ready = []
        if seq.error is not None:
            raise seq.error
        if seq.finish is not None:
            return out
        if cancel_after is not None and len(out) >= cancel_after:
            assert batcher is not None
            batcher.cancel(seq)
            return out


def prompt(n: int, seed: int) -> list[int]:
    return [(seed * 7919 + i * 31) % (VOCAB - 1) for i in range(n)]


@contextlib.asynccontextmanager
async def started_batcher(slots: int = 4, **options: Any) -> AsyncIterator[tuple[Batcher, FakeBackend]]:
    """A started batcher over a fake backend, closed on the way out."""
    backend = FakeBackend(slots, deterministic=options.pop("deterministic", False), chunk=options.pop("chunk", 8))
    batcher = Batcher(backend, asyncio.get_running_loop(), slots=slots,
                      batch_tokens=options.pop("batch_tokens", 64), **options)
    batcher.start()
    try:
        yield batcher, backend
    finally:
        await asyncio.to_thread(batcher.close)


async def generate(batcher: Batcher, tokens: list[int], max_tokens: int = 12) -> list[int]:
    seq = Sequence(prompt=tokens, max_tokens=max_tokens)
    batcher.submit(seq)
    return await collect(seq)


@pytest.mark.parametrize("deterministic", [False, True])
async def test_concurrent_requests_get_what_they_get_one_at_a_time(deterministic):
    prompts = [prompt(5 + 9 * i, i) for i in range(7)]
    async with started_batcher(slots=4, deterministic=deterministic) as (batcher, _), \
            started_batcher(slots=4, deterministic=deterministic) as (alone, _):
        together = await asyncio.gather(*(generate(batcher, p) for p in prompts))
        one_by_one = [await generate(alone, p) for p in prompts]
        assert together == one_by_one
        assert all(len(out) == 12 for out in together)
        assert batcher.stats.steps < alone.stats.steps  # they did share steps


async def test_a_follow_up_turn_reuses_the_cached_prefix_and_gets_the_cold_answer():
    async with started_batcher(slots=2) as (batcher, _), started_batcher(slots=2) as (cold, _):
        first = prompt(40, 1)
        answer = await generate(batcher, first)
        follow_up = first + answer + prompt(10, 2)
        warm_answer = await generate(batcher, follow_up)
        assert batcher.stats.prefix_hits == 1
        assert batcher.stats.cached_tokens == len(first) + len(answer) - 1  # the last answer token has no KV yet
        assert warm_answer == await generate(cold, follow_up)
        assert cold.stats.cached_tokens == 0


async def test_deterministic_mode_reuses_whole_prompt_chunks_only():
    async with started_batcher(slots=2, deterministic=True, chunk=8) as (batcher, backend):
        first = prompt(21, 1)
        answer = await generate(batcher, first)
        assert [n for step in backend.steps[:3] for _, n, _, pad in step if not pad] == [8, 8, 5]  # aligned chunks
        await generate(batcher, first + answer + prompt(6, 3))
        assert batcher.stats.cached_tokens == 16  # the answer's tokens and the partial chunk are computed again


async def test_a_shared_prefix_is_copied_from_a_busy_slot_and_slots_stay_consecutive():
    async with started_batcher(slots=4) as (batcher, backend):
        system = prompt(48, 9)
        first = Sequence(prompt=system + prompt(5, 0), max_tokens=20)
        batcher.submit(first)
        await first.wake.wait()  # its prompt is computed: the system prompt sits in a busy slot
        others = await asyncio.gather(*(generate(batcher, system + prompt(5, i), max_tokens=20) for i in (1, 2)))
        answers = [await collect(first), *others]
        assert all(len(a) == 20 for a in answers)
        assert batcher.stats.cached_tokens == 2 * 48 and backend.copies > 0
        # every step that had answers put them in one pass (the backend asserts it), with stand-ins if needed


async def test_cancelling_one_sequence_frees_its_slot_and_the_others_finish():
    async with started_batcher(slots=2) as (batcher, _backend):
        victim = Sequence(prompt=prompt(10, 1), max_tokens=10_000)
        batcher.submit(victim)
        other = asyncio.create_task(generate(batcher, prompt(10, 2), max_tokens=30))
        got = await collect(victim, cancel_after=3, batcher=batcher)
        assert len(got) >= 3
        third = await generate(batcher, prompt(10, 3), max_tokens=5)  # gets the freed slot
        assert len(third) == 5 and len(await other) == 30
        assert batcher.busy == 0


async def test_a_full_engine_queues_then_refuses():
    async with started_batcher(slots=1, max_waiting=1) as (batcher, _):
        running = Sequence(prompt=prompt(4, 1), max_tokens=10_000)
        batcher.submit(running)
        await running.wake.wait()  # it holds the only slot
        waiting = Sequence(prompt=prompt(4, 2), max_tokens=3)
        batcher.submit(waiting)
        assert batcher.waiting == 1
        with pytest.raises(Overloaded) as refused:
            batcher.submit(Sequence(prompt=prompt(4, 3), max_tokens=3))
        assert refused.value.limit == 1 and batcher.stats.rejected == 1
        batcher.cancel(running)
        assert len(await collect(waiting)) == 3  # the queued one runs once the slot is free
        assert batcher.waiting == 0


async def test_a_stop_token_ends_the_answer_with_stop():
    async with started_batcher(slots=1) as (batcher, _backend):
        tokens = prompt(6, 4)
        free = await generate(batcher, tokens, max_tokens=5)
        seq = Sequence(prompt=tokens, max_tokens=5, stop=frozenset({free[2]}))
        batcher.submit(seq)
        assert await collect(seq) == free[:3] and seq.finish == "stop"
        seq = Sequence(prompt=tokens, max_tokens=5)
        batcher.submit(seq)
        assert await collect(seq) == free and seq.finish == "length"


async def test_a_failed_decode_fails_its_sequences_and_a_crash_fails_everyone():
    async with started_batcher(slots=2) as (batcher, backend):
        backend.fail_code = 1
        with pytest.raises(Overloaded):
            await generate(batcher, prompt(4, 1))
        backend.fail_code = -3
        with pytest.raises(EngineFault, match="-3"):
            await generate(batcher, prompt(4, 1))
        backend.fail_code = 0
        assert len(await generate(batcher, prompt(4, 1), max_tokens=3)) == 3  # the loop goes on
        backend.fail_with = RuntimeError("segfault of the mind")
        with pytest.raises(EngineFault, match="segfault of the mind"):
            await generate(batcher, prompt(4, 2))
        with pytest.raises(EngineFault, match="decode loop stopped"):
            batcher.submit(Sequence(prompt=prompt(4, 3), max_tokens=2))


def test_common_prefix():
    assert common_prefix([], [1]) == 0
    assert common_prefix(list(range(200)), list(range(200))) == 200
    assert common_prefix(list(range(200)), [*range(130), 7, *range(131, 200)]) == 130
    assert common_prefix([1, 2, 3], [1, 2]) == 2


async def test_requests_waiting_when_every_running_one_ends_in_the_same_step_still_run():
    async with started_batcher(slots=2) as (batcher, _):
        results = await asyncio.wait_for(
            asyncio.gather(*(generate(batcher, prompt(6, i), max_tokens=4) for i in range(5))), 10)
        assert [len(r) for r in results] == [4] * 5
