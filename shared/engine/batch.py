"""Batched decode for the engine: many sequences in one paged pool, one step for all of them.

What the scheduler (day 49), the LLM API (day 51) and the server (day 52) call. The pieces come
from the registry like any kernel: `ops.BatchedPagedCache` (the pool, the allocator and the
step's fixed buffers) and `ops.BatchDecoder` (prefill one sequence; decode B sequences, one token
each, replaying a CUDA graph per batch-size bucket) -- day 48 once finished, else
shared/reference/batch.py. The runner owns one of each and adds what a scheduler asks before it
picks a batch: how many blocks a step would take, and a warm-up that captures every bucket.
Sequence ids are any hashable value (a request id); the host owns every table and length.
"""
from __future__ import annotations

import torch


class BatchRunner:
    """prefill(seq_id, ids) -> logits [vocab]; decode(seq_ids, tokens) -> logits [B, vocab];
    free(seq_id). A failing call changes nothing (ValueError, OutOfBlocksError)."""

    def __init__(self, ops, weights, device, dtype: torch.dtype, *, num_blocks: int, block_size: int = 16,
                 max_batch: int = 64, max_len: int | None = None, graphs: bool = False):
        max_blocks = None if max_len is None else min(-(-max_len // block_size), num_blocks)
        self.cache = ops.BatchedPagedCache(ops, weights.config, num_blocks, block_size, dtype, device,
                                           max_batch=max_batch, max_blocks=max_blocks)
        self.decoder = ops.BatchDecoder(ops, weights, self.cache, graphs_cls=ops.DecodeGraphs if graphs else None)
        self.block_size, self.max_batch = block_size, max_batch

    @property
    def num_free(self) -> int:
        return self.cache.allocator.num_free

    def length(self, seq_id) -> int:
        """Tokens the pool holds for this sequence (its next token's position)."""
        return self.cache.allocator.length(seq_id)

    def blocks_to_prefill(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def blocks_to_decode(self, seq_ids) -> int:
        """New blocks one decode step of these sequences takes: one per sequence whose next token
        starts a block (a scheduler preempts until this fits num_free)."""
        return sum(self.length(s) % self.block_size == 0 for s in seq_ids)

    def prefill(self, seq_id, ids) -> torch.Tensor:
        return self.decoder.prefill(seq_id, ids)

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
            for s in ids:
                self.prefill(s, [0])
                held.append(s)
            for b in buckets:
                self.decode(ids[:b], [0] * b)
        finally:
            for s in held:
                self.free(s)
        return len(buckets)
