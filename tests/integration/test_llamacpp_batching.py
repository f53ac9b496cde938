"""The llamacpp engine's continuous batching with the real gemma-3-270m, through the runtime.

Greedy answers are compared token for token: batched against one at a time, and a
prefix-cache hit against a cold engine (deterministic mode), so any slip in
positions, chunking or cache reuse shows."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from servemesh import DistributedRuntime, Overloaded, serve
from servemesh.llm.engines.llamacpp import LlamaCppEngine
from servemesh.llm.kv import block_hashes
from servemesh.llm.model import DEFAULT_MODEL, resolve_model
from servemesh.llm.processor import ENGINE_PATH
from servemesh.llm.protocol import EngineRequest, SamplingParams, engine_output
from servemesh.llm.tokenizer import GGUFTokenizer

QUESTIONS = ["What is 2+2?", "Name three colours.", "Write a haiku about the sea.", "Who wrote Hamlet?",
             "Explain gravity in one sentence.", "What is the capital of France?"]
SYSTEM = "You are a careful assistant who answers briefly and precisely. " * 12


@pytest.fixture(scope="module")
def tokenizer() -> GGUFTokenizer:
    return GGUFTokenizer(str(resolve_model(DEFAULT_MODEL)), DEFAULT_MODEL)


def chat(tok: GGUFTokenizer, *turns: str, system: str | None = SYSTEM) -> list[int]:
    messages = [{"role": "system", "content": system}] if system else []
    for i, text in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return tok.encode(tok.chat_prompt(messages))


@contextlib.asynccontextmanager
async def engine(system_port: int | None = None, **options: Any) -> AsyncIterator[tuple[DistributedRuntime, Any]]:
    """An embedded runtime serving one llamacpp engine; yields it and a client of generate."""
    async with DistributedRuntime(system_port=system_port) as rt:
        # one decode thread: llama.cpp's threads meet at a barrier after every op, so with
        # another process busy on this 2-core machine two threads wait on each other all
        # the time (the deterministic test took 216-445 s beside a CPU hog, 18 s without);
        # one thread takes ~30 s either way
        task = asyncio.create_task(serve(LlamaCppEngine, runtime=rt, model=DEFAULT_MODEL, n_ctx=1024,
                                         n_threads=1, **options))
        try:
            await rt.wait_served(ENGINE_PATH, timeout=120)
            yield rt, await rt.endpoint(ENGINE_PATH).client()
        finally:
            rt.request_shutdown()
            await task


async def answer(client: Any, tok: GGUFTokenizer, prompt: list[int], max_tokens: int = 24,
                 **sampling: Any) -> list[int]:
    request = EngineRequest(model=DEFAULT_MODEL, token_ids=prompt, stop_token_ids=tok.stop_token_ids,
                            sampling=SamplingParams(**{"max_tokens": max_tokens, "temperature": 0.0, **sampling}))
    out: list[int] = []
    async for item in client.generate(request, annotated=False):
        out += engine_output(item).token_ids
    return out


async def stats(rt: DistributedRuntime) -> dict[str, Any]:
    client = await rt.endpoint("inference.engine.stats").client()
    (only,) = [i async for i in client.generate({}, annotated=False)]
    return only


async def test_deterministic_greedy_is_the_same_batched_alone_and_after_a_prefix_hit(tokenizer):
    # eight short chats, 40 tokens each: in the default mode some of these answers differ
    # batched and alone (llama.cpp rounds by batch shape); deterministic mode must not
    prompts = [chat(tokenizer, q, system=None) for q in [*QUESTIONS, "List the days of the week.", "Count to ten."]]
    async with engine(slots=8, deterministic=True) as (rt, client):
        together = await asyncio.gather(*(answer(client, tokenizer, p, max_tokens=40) for p in prompts))
        one_by_one = [await answer(client, tokenizer, p, max_tokens=40) for p in prompts]
        assert together == one_by_one
        assert all(len(a) > 3 for a in together)
        # second turns after a shared system prompt: their prefix is in the slots already
        firsts = [chat(tokenizer, q) for q in QUESTIONS[:4]]
        answers = await asyncio.gather(*(answer(client, tokenizer, p) for p in firsts))
        more = tokenizer.encode("<end_of_turn>\n<start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n")
        follow_ups = [p + a + more for p, a in zip(firsts, answers, strict=True)]
        before = await stats(rt)
        warm = await asyncio.gather(*(answer(client, tokenizer, p) for p in follow_ups))
        after = await stats(rt)
        assert after["prefix_hits"] - before["prefix_hits"] == len(follow_ups)
        assert after["cached_tokens"] - before["cached_tokens"] >= 128 * len(follow_ups)
    async with engine(slots=1, deterministic=True) as (rt, client):  # cold: computed from scratch
        cold = []
        for p in follow_ups:
            await answer(client, tokenizer, chat(tokenizer, "Something else entirely.", system="Be terse."),
                         max_tokens=2)  # the only slot now holds nothing of ``p``
            before = await stats(rt)
            cold.append(await answer(client, tokenizer, p))
            assert (await stats(rt))["cached_tokens"] == before["cached_tokens"]
        assert warm == cold


@pytest.mark.parametrize("repack", ["auto", "off"])  # AMX kernels and widened Q5_0 here; the plain kernels
async def test_batched_answers_are_the_models_and_the_default_mode_shares_steps(tokenizer, repack):
    """The default mode batches freely; its answers are the model's greedy answers (the
    same as llama-cpp-python's own generate loop with the same attention settings and
    kernels, token for token, for a lone request)."""
    from servemesh.llm.model import load_llama

    prompt = chat(tokenizer, QUESTIONS[0], system=None)
    llm = await asyncio.to_thread(load_llama, resolve_model(DEFAULT_MODEL), repack=repack, n_ctx=512, n_threads=1,
                                  verbose=False, flash_attn=True, swa_full=True)  # as the engine's default mode
    reference: list[int] = []
    for token in llm.generate(prompt, temp=0.0, reset=True):
        if token in tokenizer.stop_token_ids or len(reference) == 24:
            reference.append(token) if token in tokenizer.stop_token_ids else None
            break
        reference.append(token)
    del llm
    async with engine(slots=4, repack=repack) as (rt, client):
        assert await answer(client, tokenizer, prompt) == reference
        results = await asyncio.gather(*(answer(client, tokenizer, chat(tokenizer, q), max_tokens=16)
                                         for q in QUESTIONS))
        s = await stats(rt)
        assert all(results) and s["generated_tokens"] >= sum(map(len, results))
        assert s["steps"] < s["generated_tokens"]  # several answers per step
        assert s["busy"] == 0 and s["generating"] == 0


async def test_cancelling_mid_batch_frees_the_slot_and_the_others_finish(tokenizer):
    async with engine(slots=2) as (rt, client):
        request = EngineRequest(model=DEFAULT_MODEL, token_ids=chat(tokenizer, "Tell me a very long story."),
                                sampling=SamplingParams(max_tokens=500, temperature=0.0))
        stream = client.generate(request, annotated=False)
        other = asyncio.create_task(answer(client, tokenizer, chat(tokenizer, QUESTIONS[1]), max_tokens=40))
        got = 0
        async for _ in stream:
            got += 1
            if got == 3:
                break
        await stream.aclose()
        third = await answer(client, tokenizer, chat(tokenizer, QUESTIONS[2]), max_tokens=8)  # the freed slot
        assert third and await other
        async with asyncio.timeout(10):
            while (s := await stats(rt))["busy"]:
                await asyncio.sleep(0.05)
        assert s["cancelled"] == 1 and s["generating"] == 0


async def test_a_full_engine_queues_then_answers_429(tokenizer):
    async with engine(slots=1, max_waiting=1) as (rt, client):
        long = EngineRequest(model=DEFAULT_MODEL, token_ids=chat(tokenizer, "Count to a thousand."),
                             sampling=SamplingParams(max_tokens=400, temperature=0.0))
        stream = client.generate(long, annotated=False)
        await stream.__anext__()  # it holds the only slot
        queued = asyncio.create_task(answer(client, tokenizer, chat(tokenizer, QUESTIONS[0]), max_tokens=4))
        async with asyncio.timeout(10):
            while (await stats(rt))["waiting"] == 0:
                await asyncio.sleep(0.02)
        with pytest.raises(Overloaded):
            await answer(client, tokenizer, chat(tokenizer, QUESTIONS[1]), max_tokens=4)
        await stream.aclose()  # the slot frees: the queued request runs
        assert len(await queued) == 4
        assert (await stats(rt))["rejected"] == 1


async def test_seeded_sampling_does_not_depend_on_the_batch(tokenizer):
    prompt = chat(tokenizer, "Write a poem about autumn.")

    async def sampled(client: Any) -> list[int]:
        return await answer(client, tokenizer, prompt, max_tokens=16, temperature=0.9, seed=1234)

    async with engine(slots=4, deterministic=True) as (_rt, client):
        alone = await sampled(client)
        crowd = await asyncio.gather(sampled(client), *(answer(client, tokenizer, chat(tokenizer, q))
                                                          for q in QUESTIONS[:3]))
        assert crowd[0] == alone
        other_seed = await answer(client, tokenizer, prompt, max_tokens=16, temperature=0.9, seed=99)
        assert other_seed != alone


async def test_the_engine_publishes_the_blocks_its_slots_hold_and_its_metrics(tokenizer):
    prompt = chat(tokenizer, QUESTIONS[3])
    async with engine(slots=2, system_port=0) as (rt, client):
        out = await answer(client, tokenizer, prompt, max_tokens=8)
        state_client = await rt.endpoint("inference.engine.kv_state").client()
        (state,) = [i async for i in state_client.generate({}, annotated=False)]
        held = set(state["blocks"])
        cached = prompt + out[:-1]
        assert set(block_hashes(cached)) <= held and block_hashes(cached)
        assert state["instance"] == rt.instance_id
        await answer(client, tokenizer, prompt + out[:-1] + [107], max_tokens=2)  # a prefix hit
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"{rt.system_url}/metrics")).text
        metrics = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                   if line.startswith("servemesh_engine_")}
        model = f'{{model="{DEFAULT_MODEL}"}}'
        assert metrics[f"servemesh_engine_requests_total{model}"] == 2
        assert metrics[f"servemesh_engine_prefix_hits_total{model}"] == 1
        assert metrics[f"servemesh_engine_cached_tokens_total{model}"] >= len(prompt)
        assert metrics[f"servemesh_engine_slots{model}"] == 2 and metrics[f"servemesh_engine_busy_slots{model}"] == 0


async def test_bad_requests_are_refused_before_they_take_a_slot(tokenizer):
    from servemesh.errors import ValidationError

    async with engine(slots=1) as (rt, client):
        with pytest.raises(ValidationError, match="exceeds the context of 1024"):
            await answer(client, tokenizer, [2] * 1000, max_tokens=100)
        with pytest.raises(ValidationError, match="token ids must be between"):
            await answer(client, tokenizer, [2, 10**7], max_tokens=2)
        assert (await stats(rt))["requests"] == 0
