"""Day 48 -- batched decode of ragged sequences: B sequences, one token each, one forward.

Lesson: notes/day_48_batched_decode.md        Check: pytest checkers/day_48

A decode step reads every weight to make one token: on a GPU it is memory-bound, so B sequences
decoded together cost about as much as one -- the weights are read once for B tokens. The
sequences are ragged (each at its own length), so every row of the batch carries its own
position, its own slot in the pool and its own block table and length: day 30's
paged_decode_attention already takes those per row. The host prepares all of it before the step
(prepare_decode) into buffers allocated once, so one CUDA graph per batch-size bucket replays it.
"""
from __future__ import annotations

import torch

from shared.engine.errors import OutOfBlocksError
from shared.engine.runner import check_ids
from shared.weights import fuse_projections


class BatchedPagedCache:
    """One KV pool for many sequences, and the decode step's metadata for up to max_batch rows.

    k, v: pools [layers, num_blocks, KV, block_size, hd]; allocator: ops.BlockAllocator (the host
    truth: a table and a length per sequence id). Device buffers, int32, allocated once:
    ids, positions, slot_mapping, context_lens [max_batch]; block_tables [max_batch, max_blocks].
    rows = the rows the last prepare_decode filled (B, or B padded to a graph bucket).
    """

    def __init__(self, ops, config, num_blocks: int, block_size: int, dtype: torch.dtype, device, *,
                 max_batch: int = 64, max_blocks: int | None = None):
        max_blocks = num_blocks if max_blocks is None else max_blocks
        if max_batch < 1 or not 1 <= max_blocks <= max(num_blocks, 1):
            raise ValueError(f"BatchedPagedCache needs max_batch >= 1 and 1 <= max_blocks <= num_blocks "
                             f"({num_blocks}), got max_batch={max_batch}, max_blocks={max_blocks}")
        self.ops, self.device = ops, device
        self.allocator = ops.BlockAllocator(num_blocks, block_size)
        self.num_blocks, self.block_size = num_blocks, block_size
        self.max_batch, self.max_blocks = max_batch, max_blocks
        self.max_len = max_blocks * block_size                  # the most tokens one sequence can hold
        shape = (config.num_layers, num_blocks, config.num_kv_heads, block_size, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.meta = torch.zeros((4, max_batch), dtype=torch.int32, device=device)   # one copy_ per step
        self.ids, self.positions, self.slot_mapping, self.context_lens = self.meta  # row views
        self.block_tables = torch.zeros((max_batch, max_blocks), dtype=torch.int32, device=device)
        self.rows = 0
        self.prefill_slots: torch.Tensor | None = None          # set while a prompt runs

    def prepare_prefill(self, seq_id, T: int) -> None:
        """A new sequence of T prompt tokens at positions 0..T-1: blocks, then their slots."""
        if not 1 <= T <= self.max_len:
            raise ValueError(f"a prompt of {T} tokens: 1..{self.max_len} fit one sequence's table "
                             f"({self.max_blocks} blocks of {self.block_size})")
        a = self.allocator
        a.allocate(seq_id, T)                                   # ValueError / OutOfBlocksError: nothing changed
        slots = [a.slot(seq_id, p) for p in range(T)]
        self.prefill_slots = torch.tensor(slots, dtype=torch.int32).to(self.device)

    def prepare_decode(self, seq_ids, tokens, rows: int | None = None) -> None:
        """One new token for each sequence (host work, before the step's launches): the token of
        sequence seq_ids[i] goes to row i at position length(seq_ids[i]). Rows B..rows-1 are
        padding. Checks everything first: a bad call raises with nothing changed."""
        a, bs = self.allocator, self.block_size
        seq_ids, tokens = list(seq_ids), list(tokens)
        B = len(seq_ids)
        rows = B if rows is None else rows
        if B == 0 or len(tokens) != B:
            raise ValueError(f"a decode step takes one token per sequence: got {B} sequences and "
                             f"{len(tokens)} tokens")
        if not B <= rows <= self.max_batch:
            raise ValueError(f"rows must be in {B}..{self.max_batch} (the batch, padded at most to max_batch), "
                             f"got {rows}")
        if len(set(seq_ids)) != B:
            raise ValueError(f"a sequence appears twice in one decode step: {seq_ids}")
        lengths = [a.length(s) for s in seq_ids]                # ValueError for a sequence with no blocks
        for s, n in zip(seq_ids, lengths):
            if n >= self.max_len:
                raise ValueError(f"sequence {s!r} holds {n} tokens, the most one table holds "
                                 f"({self.max_blocks} blocks of {bs}): finish it")
        need = sum(n % bs == 0 for n in lengths)                # a token at a block boundary starts a block
        if need > a.num_free:
            raise OutOfBlocksError(f"this decode step needs {need} new KV blocks but only {a.num_free} of "
                                   f"{self.num_blocks} are free: free (or preempt) a sequence, or give the cache "
                                   "more blocks")
        for s in seq_ids:
            a.append_slot(s)                                    # checked above: cannot fail
        tables = [a.block_table(s) for s in seq_ids]
        slots = [t[n // bs] * bs + n % bs for t, n in zip(tables, lengths)]
        pad = rows - B
        self.meta[:, :rows].copy_(torch.tensor([tokens + [0] * pad, lengths + [0] * pad, slots + [-1] * pad,
                                                [n + 1 for n in lengths] + [0] * pad], dtype=torch.int32),
                                  non_blocking=True)
        width = max(len(t) for t in tables)                     # entries past a row's length are never read
        grid = [t + [0] * (width - len(t)) for t in tables] + [[0] * width] * pad
        self.block_tables[:rows, :width].copy_(torch.tensor(grid, dtype=torch.int32), non_blocking=True)
        self.rows, self.prefill_slots = rows, None

    def free(self, seq_id) -> None:
        """The sequence is finished: its blocks go back to the pool."""
        self.allocator.free(seq_id)

    def __call__(self, layer, q, k, v, positions):
        ops, kp, vp = self.ops, self.k[layer], self.v[layer]
        if self.prefill_slots is not None:                      # a prompt: attend over its own tokens
            ops.paged_kv_write(kp, vp, k, v, self.prefill_slots)
            return ops.attention(q, k, v)
        n = self.rows                                           # decode: every row through its own table
        ops.paged_kv_write(kp, vp, k, v, self.slot_mapping[:n])
        return ops.paged_decode_attention(q, kp, vp, self.block_tables[:n], self.context_lens[:n])


class BatchDecoder:
    """decoder(seq_ids, tokens) -> fp32 logits [B, vocab]: one decode step for B sequences.

    cache: a BatchedPagedCache holding the sequences (prefill(seq_id, ids) puts a prompt there).
    With graphs_cls (day 23's DecodeGraphs) the step is one graph per batch-size bucket: B is
    padded to bucket(B), and every length shares the graph (the kernels read lengths on the
    device). The returned tensor may be overwritten by the next step.
    """

    def __init__(self, ops, weights, cache, *, graphs_cls=None):
        self.ops, self.weights, self.cache = ops, weights, cache
        fuse_projections(weights)          # day 54's forward reads wqkv / w_gate_up (idempotent)
        self.graphs = (graphs_cls(self._step, max_len=cache.max_len, min_bucket=cache.max_len)
                       if graphs_cls is not None else None)

    def bucket(self, B: int) -> int:
        """The graph size for B rows: the next power of two, at most max_batch."""
        if not 1 <= B <= self.cache.max_batch:
            raise ValueError(f"a batch of {B} sequences: 1..{self.cache.max_batch} (max_batch) per step")
        b = 1
        while b < B:
            b *= 2
        return min(b, self.cache.max_batch)

    def prefill(self, seq_id, ids) -> torch.Tensor:
        """A new sequence's prompt, eagerly: its K/V into the pool; logits [vocab] of its next token."""
        ids = list(ids)
        if not ids:
            raise ValueError("empty prompt: give at least one token")
        check_ids(ids, self.weights.config.vocab_size)
        T, dev = len(ids), self.cache.device
        self.cache.prepare_prefill(seq_id, T)
        with torch.inference_mode():
            return self.ops.forward(self.weights, torch.tensor(ids, dtype=torch.int32, device=dev),
                                    torch.arange(T, dtype=torch.int32, device=dev), self.ops, self.cache,
                                    logits_at=slice(-1, None))[0]

    def __call__(self, seq_ids, tokens) -> torch.Tensor:
        seq_ids, tokens = list(seq_ids), list(tokens)
        B = len(seq_ids)
        if len(tokens) != B:
            raise ValueError(f"a decode step takes one token per sequence: got {B} sequences and {len(tokens)} tokens")
        rows = self.bucket(B) if self.graphs is not None else B
        check_ids(tokens, self.weights.config.vocab_size)
        self.cache.prepare_decode(seq_ids, tokens, rows)
        out = self.graphs.run(rows, self.cache.max_len) if self.graphs is not None else self._step(rows)
        return out[:B]

    def _step(self, rows: int, bucket: int | None = None) -> torch.Tensor:
        """The forward of the cache's rows -> logits [rows, vocab]. Reads only fixed buffers (what
        a graph captures); running it twice changes nothing."""
        c = self.cache
        with torch.inference_mode():
            return self.ops.forward(self.weights, c.ids[:rows], c.positions[:rows], self.ops, c)


def forward_batch(weights, cache, seq_ids, tokens, ops) -> torch.Tensor:
    """One eager decode step: fp32 logits [B, vocab], row i for seq_ids[i] after tokens[i]."""
    return BatchDecoder(ops, weights, cache)(seq_ids, tokens)
