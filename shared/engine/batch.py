"""Batched decode for the engine: many sequences in one paged pool, one step for all of them.

What the scheduler (day 49), the LLM API (day 51) and the server (day 52) call. The pieces come
from the registry like any kernel: `ops.BatchedPagedCache` (the pool, the allocator and the
step's fixed buffers) and `ops.BatchDecoder` (prefill one sequence; decode B sequences, one token
each, replaying a CUDA graph per batch-size bucket) -- day 48 once finished, else
shared/reference/batch.py. The runner owns one of each and adds what a scheduler asks before it
picks a batch: how many blocks a step would take, and a warm-up that captures every bucket.
Sequence ids are any hashable value (a request id); the host owns every table and length.

With `prefix_cache=True` the pool's allocator is `ops.PrefixCache` (day 50): a prompt's first full
blocks that are cached already (same tokens, same prefix) are shared, and the prefill computes
only the rest, attending over the sequence's blocks gathered from the pool (day 31's chunk path).
Only prompt blocks are cached: a decode step appends without token ids (day 48's cache).
"""
from __future__ import annotations

import torch

from shared.engine.errors import OutOfBlocksError
from shared.engine.runner import check_ids


class BatchRunner:
    """prefill(seq_id, ids) -> logits [vocab]; prefill_many([(seq_id, ids), ...]) -> logits [n, vocab];
    decode(seq_ids, tokens) -> logits [B, vocab]; free(seq_id). A failing call changes nothing (ValueError, OutOfBlocksError)."""

    def __init__(self, ops, weights, device, dtype: torch.dtype, *, num_blocks: int, block_size: int = 16,
                 max_batch: int = 64, max_len: int | None = None, graphs: bool = False, prefix_cache: bool = False):
        max_blocks = None if max_len is None else min(-(-max_len // block_size), num_blocks)
        self.cache = ops.BatchedPagedCache(ops, weights.config, num_blocks, block_size, dtype, device,
                                           max_batch=max_batch, max_blocks=max_blocks)
        self.decoder = ops.BatchDecoder(ops, weights, self.cache, graphs_cls=ops.DecodeGraphs if graphs else None)
        self.ops, self.weights = ops, weights
        self.block_size, self.max_batch = block_size, max_batch
        self.prefix = None
        if prefix_cache:             # the cache's every allocate, append and free now go through it
            self.prefix = self.cache.allocator = ops.PrefixCache(num_blocks, block_size)
        self.cached_tokens = 0       # prompt tokens found in the prefix cache, over every prefill

    @property
    def num_free(self) -> int:
        return self.cache.allocator.num_free

    def length(self, seq_id) -> int:
        """Tokens the pool holds for this sequence (its next token's position)."""
        return self.cache.allocator.length(seq_id)

    def blocks_to_prefill(self, num_tokens: int) -> int:
        """At most this many free blocks admit the prompt. With the prefix cache, one more: a fully
        cached prompt also copies its last block (and a hit that is evictable is not free)."""
        return -(-num_tokens // self.block_size) + (self.prefix is not None)

    def blocks_to_decode(self, seq_ids) -> int:
        """New blocks one decode step of these sequences takes: one per sequence whose next token
        starts a block (a scheduler preempts until this fits num_free)."""
        return sum(self.length(s) % self.block_size == 0 for s in seq_ids)

    def _check_prompt(self, ids: list) -> None:
        """One-line ValueErrors for a prompt no sequence can hold: empty, an id outside the
        vocabulary, or more tokens than one table's blocks."""
        c = self.cache
        if not ids:
            raise ValueError("empty prompt: give at least one token")
        check_ids(ids, self.weights.config.vocab_size)
        if len(ids) > c.max_len:
            raise ValueError(f"a prompt of {len(ids)} tokens: 1..{c.max_len} fit one sequence's table "
                             f"({c.max_blocks} blocks of {c.block_size})")

    def prefill(self, seq_id, ids) -> torch.Tensor:
        """The prompt's K/V into the pool; logits [vocab] of its next token."""
        if self.prefix is None:
            return self.decoder.prefill(seq_id, ids)
        return self.prefill_many([(seq_id, ids)])[0]

    def prefill_many(self, items) -> torch.Tensor:
        """Several new prompts in one forward: items = [(seq_id, ids), ...] -> logits [n, vocab], row
        i the next token's of items[i]. A prefill is launch-bound (each kernel launch costs tens of
        microseconds from Python, whatever T is), so n prompts as one stream of tokens cost about
        one prefill: the linear layers see all their tokens at once, only attention runs per prompt.
        With the prefix cache each prompt computes only its uncached suffix; a prompt that hits
        blocks another prompt of this call has yet to compute starts a second forward (a "wave")
        after them. All or nothing: everything is checked before a block is taken."""
        items = [(s, list(ids)) for s, ids in items]
        if not items:
            raise ValueError("prefill_many takes at least one (seq_id, ids) pair")
        if len(items) == 1 and self.prefix is None:
            return self.decoder.prefill(*items[0])[None]
        c, a = self.cache, self.cache.allocator
        if len({s for s, _ in items}) != len(items):
            raise ValueError(f"a sequence appears twice in one prefill: {[s for s, _ in items]}")
        for s, ids in items:
            self._check_prompt(ids)
            if self.prefix is not None and s in self.prefix.tables:     # (without: allocate says so, undone below)
                raise ValueError(f"sequence {s!r} is allocated already: free it first")
        need = sum(self.blocks_to_prefill(len(ids)) for _, ids in items)
        if need > a.num_free:
            raise OutOfBlocksError(f"these {len(items)} prompts need {need} KV blocks but only {a.num_free} of "
                                   f"{c.num_blocks} are free: prefill fewer at once")
        waves, written, done = [[]], set(), []
        try:
            for s, ids in items:
                if self.prefix is None:
                    a.allocate(s, len(ids))
                    start, copies = 0, []
                else:
                    start, copies = self.prefix.allocate_prompt(s, ids), self.prefix.take_copies()
                done.append(s)
                table = a.block_table(s)
                reads = set(table[:start // c.block_size]) | {src for src, _ in copies}
                if reads & written:                 # its cached blocks are this wave's to compute
                    waves.append([])
                    written = set()
                waves[-1].append((s, ids, start, table, copies))
                written |= set(table[start // c.block_size:])
        except Exception:                           # a held sequence (checked above with the prefix cache)
            for s in done:
                a.free(s)
            raise
        self.cached_tokens += sum(start for wave in waves for _, _, start, _, _ in wave)
        return torch.cat([self._forward_wave(wave) for wave in waves])

    def _forward_wave(self, wave) -> torch.Tensor:
        """One forward over the uncached suffixes of a wave's prompts, as one stream of tokens."""
        c, bs, dev = self.cache, self.cache.block_size, self.cache.device
        for _, _, _, _, copies in wave:             # a fully cached prompt's last block, every layer
            for src, dst in copies:
                c.k[:, dst].copy_(c.k[:, src])
                c.v[:, dst].copy_(c.v[:, src])
        tokens, slots, positions, parts = [], [], [], []
        for _, ids, start, table, _ in wave:
            tokens += ids[start:]
            slots += [table[p // bs] * bs + p % bs for p in range(start, len(ids))]
            positions += range(start, len(ids))
            parts.append((len(positions) - (len(ids) - start), len(positions), start, table, len(ids)))
        attend = PromptsAttend(c, torch.tensor(slots, dtype=torch.int32).to(dev), parts)
        last = torch.tensor([e - 1 for _, e, _, _, _ in parts]).to(dev)
        with torch.inference_mode():
            return self.ops.forward(self.weights, torch.tensor(tokens, dtype=torch.int32).to(dev),
                                    torch.tensor(positions, dtype=torch.int32).to(dev), self.ops, attend,
                                    logits_at=last)

    def decode(self, seq_ids, tokens) -> torch.Tensor:
        """Row i: the logits after tokens[i] for seq_ids[i]; overwritten by the next step."""
        return self.decoder(seq_ids, tokens)

    def free(self, seq_id) -> None:
        self.cache.free(seq_id)

    def warmup(self) -> int:
        """Run (so capture, with graphs) one step of every batch-size bucket before serving, with
        throwaway one-token sequences that are freed again. Returns the buckets run."""
        buckets = sorted({self.decoder.bucket(B) for B in range(1, self.max_batch + 1)})
        ids = [("warmup", i) for i in range(buckets[-1])]
        held = []
        try:
            self.prefill_many([(s, [0]) for s in ids])
            held = ids
            for b in buckets:
                self.decode(ids[:b], [0] * b)
        finally:
            for s in held:
                self.free(s)
        return len(buckets)


class PromptsAttend:
    """The attend of several prompts run as one stream of tokens: every k, v goes to its slot in
    one write, then each prompt's queries attend over its own keys only. parts: (begin, end) of
    the prompt in the stream, how many of its first positions were in the pool already (prefix
    cache hits), its block table and its length. A prompt with none attends over its fresh k, v;
    one with some over every position of the sequence, gathered from its blocks (attention aligns
    the causal mask to the end)."""

    def __init__(self, cache, slots, parts):
        self.cache, self.slots, self.parts = cache, slots, parts
        dev = cache.device
        self.blocks = [torch.tensor(table, dtype=torch.long).to(dev) if start else None
                       for _, _, start, table, _ in parts]

    def __call__(self, layer, q, k, v, positions):
        c = self.cache
        kp, vp = c.k[layer], c.v[layer]
        c.ops.paged_kv_write(kp, vp, k, v, self.slots)
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        KV, bs, hd = kp.shape[1], kp.shape[2], kp.shape[3]
        for (s, e, start, _, n), blocks in zip(self.parts, self.blocks):
            if not start:
                out[s:e] = c.ops.attention(q[s:e], k[s:e], v[s:e])
                continue
            keys = kp[blocks].transpose(1, 2).reshape(len(blocks) * bs, KV, hd)[:n]
            values = vp[blocks].transpose(1, 2).reshape(len(blocks) * bs, KV, hd)[:n]
            out[s:e] = c.ops.attention(q[s:e], keys, values)
        return out
