"""The batching loop's backend on llama.cpp: one context, one KV stream per slot.

Through llama-cpp-python's low-level bindings (the C API): ``llama_batch`` for
decode/prefill batches, ``llama_memory_*`` for the prefix cache, a sampler chain
per sequence (top-p, temperature, seeded distribution) and an argmax over the
logits for greedy decoding. Every call here runs on the decode thread.

Batch invariance (``deterministic=True``): llama.cpp's CPU matrix kernels pick
their tiles by the shape of the batch, and the tiles do not round alike, so a
token's logits can change with what else is in its batch, and greedy output with
load and with prefix-cache hits (vLLM and SGLang have the same property and the
same kind of opt-in mode). Deterministic mode gives every token the same batch
shape whatever else runs: flash attention off (its kernel also varies by shape);
a KV stream per slot, so a sequence attends to exactly its own cells; each step's
answer tokens decoded as one row per slot (stand-ins in idle slots, every row
with logits), so a slot's row always sits in the same place; prompts computed in
chunks aligned to multiples of ``CHUNK`` positions, each chunk alone; and the
prefix cache reusing whole prompt chunks only. It costs throughput when few
slots are busy. The default mode batches freely, with flash attention (11% faster
for eight sequences here);
llama.cpp decodes consecutive sequence ids in one pass only, so gaps between
answering slots get stand-in tokens, removed after the step.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ..model import weights_for
from .batching import PAD, DecodeFailed

log = logging.getLogger("servemesh.llm.llamacpp")

#: prompts are computed in chunks of this many positions, aligned to multiples of it
CHUNK = 64


class LlamaBackend:
    """A model and a context of ``slots`` sequences, each with ``n_ctx`` cells of its own."""

    def __init__(self, path: Path, *, slots: int, n_ctx: int, batch_tokens: int,
                 n_threads: int | None = None, deterministic: bool = False, repack: str = "auto") -> None:
        import llama_cpp as ll
        import numpy as np

        self.ll = ll
        self.np = np
        quiet = logging.getLogger("llama-cpp-python")  # llama.cpp's own log, through llama-cpp-python
        if quiet.level == logging.NOTSET:
            quiet.setLevel(logging.ERROR)
        ll.llama_backend_init()
        path, repacked = weights_for(path, repack)
        mparams = ll.llama_model_default_params()
        if hasattr(mparams, "use_extra_bufts"):
            mparams.use_extra_bufts = repacked
        self.model = ll.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise ConfigError(f"llama.cpp could not load the model {path}")
        threads = n_threads or max(1, os.cpu_count() or 1)
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = n_ctx * slots
        room = batch_tokens + slots  # a step's tokens, and stand-ins
        cparams.n_batch = room
        cparams.n_ubatch = room
        cparams.n_seq_max = slots
        # flash attention picks its kernel by the batch's shape: off when every token must be computed alike
        cparams.flash_attn_type = (ll.LLAMA_FLASH_ATTN_TYPE_DISABLED if deterministic
                                   else ll.LLAMA_FLASH_ATTN_TYPE_ENABLED)
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.kv_unified = False  # a stream per slot: a sequence's arithmetic never depends on its neighbours
        cparams.swa_full = True  # the prefix cache trims sequences at any position
        cparams.no_perf = True
        self.ctx = ll.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            ll.llama_model_free(self.model)
            raise ConfigError(f"llama.cpp could not create a context of {slots} x {n_ctx} tokens for {path}")
        self.mem = ll.llama_get_memory(self.ctx)
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.n_vocab = ll.llama_vocab_n_tokens(self.vocab)
        self.batch = ll.llama_batch_init(room, 0, 1)
        self.capacity = room
        self.chunk = CHUNK
        self.deterministic = deterministic
        self._ends: dict[int, bool] = {}

    def decode(self, entries: Sequence[tuple[int, Sequence[int], int, bool, Any]]) -> list[int | None]:
        """One step: prompt chunks grouped by length (deterministic: each alone), one call
        per group, then every single token (answers, and stand-ins) in one call."""
        out: list[int | None] = [None] * len(entries)
        singles = [i for i, e in enumerate(entries) if len(e[1]) == 1]
        chunks: dict[int, list[int]] = {}
        for i, entry in enumerate(entries):
            if len(entry[1]) > 1:
                chunks.setdefault(len(entry[1]), []).append(i)
        groups = [[i] for g in chunks.values() for i in g] if self.deterministic else list(chunks.values())
        for group in (*groups, singles):
            if group:
                self._decode([entries[i] for i in group], out, group)
        for slot, _, first, _, sampler in entries:
            if sampler is PAD:
                self.ll.llama_memory_seq_rm(self.mem, slot, first, -1)
        return out

    def _decode(self, entries: list[tuple[int, Sequence[int], int, bool, Any]], out: list[int | None],
                where: list[int]) -> None:
        b = self.batch
        token, pos, n_seq, seq_id, logits = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        i = 0
        ends = []
        for slot, tokens, first, want, _ in entries:
            n = len(tokens)
            for j in range(n):
                token[i] = tokens[j]
                pos[i] = first + j
                n_seq[i] = 1
                seq_id[i][0] = slot
                logits[i] = 0
                i += 1
            if want:
                logits[i - 1] = 1
            ends.append(i - 1)
        assert i <= self.capacity
        b.n_tokens = i
        code = int(self.ll.llama_decode(self.ctx, b))
        if code != 0:
            raise DecodeFailed(code)
        rows = [want for _, _, _, want, _ in entries]  # output rows, in batch order
        greedy = [(rows[:j].count(True), k) for j, ((_, _, _, want, sampler), k) in
                  enumerate(zip(entries, where, strict=True)) if want and sampler is None]
        if greedy:  # one argmax over every greedy row: no call (and no GIL hand-over) per row
            logits = self.np.ctypeslib.as_array(self.ll.llama_get_logits(self.ctx),
                                                shape=(rows.count(True), self.n_vocab))
            best = logits.argmax(axis=1).tolist()
            for row, k in greedy:
                out[k] = best[row]
        for (_, _, _, want, sampler), end, k in zip(entries, ends, where, strict=True):
            if want and sampler is not None and sampler is not PAD:
                out[k] = self.sample(end, sampler)

    def sample(self, index: int, sampler: Any) -> int:
        """The next token from the logits of batch position ``index`` of the last decode."""
        if sampler is None:  # greedy: an argmax over the logits (no candidate array to build)
            row = self.ll.llama_get_logits_ith(self.ctx, index)
            return int(self.np.ctypeslib.as_array(row, shape=(self.n_vocab,)).argmax())
        return int(self.ll.llama_sampler_sample(sampler, self.ctx, index))

    def new_sampler(self, temperature: float, top_p: float, seed: int | None) -> Any:
        ll = self.ll
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        if top_p < 1.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(top_p, 1))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(temperature))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(
            seed & 0xFFFFFFFF if seed is not None else random.getrandbits(32)))
        return chain

    def free_sampler(self, sampler: Any) -> None:
        self.ll.llama_sampler_free(sampler)

    def is_end(self, token: int) -> bool:
        end = self._ends.get(token)
        if end is None:
            end = self._ends[token] = bool(self.ll.llama_vocab_is_eog(self.vocab, token))
        return end

    def trim(self, slot: int, keep: int) -> bool:
        return bool(self.ll.llama_memory_seq_rm(self.mem, slot, keep, -1))

    def clear(self, slot: int) -> None:
        self.ll.llama_memory_seq_rm(self.mem, slot, -1, -1)

    def copy(self, src: int, dst: int, keep: int) -> None:
        # between streams llama.cpp copies a whole sequence; the tail is dropped after
        self.ll.llama_memory_seq_rm(self.mem, dst, -1, -1)
        self.ll.llama_memory_seq_cp(self.mem, src, dst, -1, -1)
        if not self.ll.llama_memory_seq_rm(self.mem, dst, keep, -1):
            raise RuntimeError(f"llama.cpp cannot trim slot {dst} to {keep} tokens")

    def close(self) -> None:
        ll = self.ll
        if self.batch is not None:
            ll.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            ll.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            ll.llama_model_free(self.model)
            self.model = None


__all__ = ["LlamaBackend"]
