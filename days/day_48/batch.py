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
        # TODO(day 48): max_blocks None means num_blocks. One-line ValueError unless max_batch >= 1 and
        #   1 <= max_blocks <= num_blocks. Keep ops and device; allocator = ops.BlockAllocator(num_blocks,
        #   block_size); num_blocks, block_size, max_batch, max_blocks; max_len = max_blocks * block_size.
        #   Pools k, v: zeros [layers, num_blocks, KV, block_size, head_dim] of dtype on device (as day 31).
        #   Allocate once, int32 on the device: ids, positions, slot_mapping, context_lens [max_batch]
        #   (tip: the four rows of one [4, max_batch] tensor -- then one copy_ fills them all) and
        #   block_tables [max_batch, max_blocks]. rows = 0; prefill_slots = None (no prompt running).
        raise NotImplementedError("Day 48: BatchedPagedCache.__init__ is not written yet -- edit "
                                  "days/day_48/batch.py (lesson: notes/day_48_batched_decode.md)")

    def prepare_prefill(self, seq_id, T: int) -> None:
        """A new sequence of T prompt tokens at positions 0..T-1: blocks, then their slots."""
        # TODO(day 48): one-line ValueError unless 1 <= T <= max_len. allocator.allocate(seq_id, T) (it
        #   raises with nothing changed for a known id or a full pool); then prefill_slots = the T slots
        #   (allocator.slot(seq_id, p) for p in 0..T-1) as an int32 tensor on the device. A prefill is
        #   eager, never captured: a new tensor here is fine.
        raise NotImplementedError("Day 48: BatchedPagedCache.prepare_prefill is not written yet -- edit "
                                  "days/day_48/batch.py (lesson: notes/day_48_batched_decode.md)")

    def prepare_decode(self, seq_ids, tokens, rows: int | None = None) -> None:
        """One new token for each sequence (host work, before the step's launches): the token of
        sequence seq_ids[i] goes to row i at position length(seq_ids[i]). Rows B..rows-1 are
        padding. Checks everything first: a bad call raises with nothing changed."""
        # TODO(day 48): B = len(seq_ids); rows None means B. Check first, one-line ValueErrors: B >= 1 and
        #   len(tokens) == B; B <= rows <= max_batch; no sequence twice; lengths n_i = allocator.length(s)
        #   (it raises for an unknown id); every n_i < max_len (room in the table).
        #   Then count the sequences whose new token starts a block (n_i % block_size == 0): more than
        #   allocator.num_free -> raise OutOfBlocksError (one line: needed, free, what to do) BEFORE any
        #   append_slot, so a full pool changes nothing.
        #   Then append_slot for each sequence; read each table back; the new token's slot is
        #   table[n // block_size] * block_size + n % block_size. Row i: ids = tokens[i], positions = n_i,
        #   slot_mapping = that slot, context_lens = n_i + 1 (the new token is one of the keys it sees).
        #   Padding rows B..rows-1: ids 0, positions 0, slot -1 (paged_kv_write skips it), context 0
        #   (paged_decode_attention reads nothing and returns zeros). Build host lists, then copy_ them
        #   into [:rows] of the fixed buffers; block_tables[:rows, :width] from the tables padded with 0
        #   (width = the longest table; padding rows all 0). No read of any device value.
        #   Last: rows = rows, prefill_slots = None.
        raise NotImplementedError("Day 48: BatchedPagedCache.prepare_decode is not written yet -- edit "
                                  "days/day_48/batch.py (lesson: notes/day_48_batched_decode.md)")

    def free(self, seq_id) -> None:
        """The sequence is finished: its blocks go back to the pool."""
        # TODO(day 48): the allocator frees the sequence.
        raise NotImplementedError("Day 48: BatchedPagedCache.free is not written yet -- edit "
                                  "days/day_48/batch.py (lesson: notes/day_48_batched_decode.md)")

    def __call__(self, layer, q, k, v, positions):
        # TODO(day 48): this layer's pools kp, vp = k[layer], v[layer].
        #   Prefill (prefill_slots set): ops.paged_kv_write(kp, vp, k, v, prefill_slots), then
        #   ops.attention(q, k, v) -- the prompt attends over its own tokens.
        #   Decode: n = rows. ops.paged_kv_write with slot_mapping[:n], then ONE
        #   ops.paged_decode_attention(q, kp, vp, block_tables[:n], context_lens[:n]): row i through
        #   its own table and length.
        raise NotImplementedError("Day 48: BatchedPagedCache.__call__ is not written yet -- edit "
                                  "days/day_48/batch.py (lesson: notes/day_48_batched_decode.md)")


class BatchDecoder:
    """decoder(seq_ids, tokens) -> fp32 logits [B, vocab]: one decode step for B sequences.

    cache: a BatchedPagedCache holding the sequences (prefill(seq_id, ids) puts a prompt there).
    With graphs_cls (day 23's DecodeGraphs) the step is one graph per batch-size bucket: B is
    padded to bucket(B), and every length shares the graph (the kernels read lengths on the
    device). The returned tensor may be overwritten by the next step.
    """

    def __init__(self, ops, weights, cache, *, graphs_cls=None):
        # TODO(day 48): keep ops, weights, cache; fuse_projections(weights) (day 54's forward needs it;
        #   it does nothing the second time). graphs_cls given: graphs = graphs_cls(self._step,
        #   max_len=cache.max_len, min_bucket=cache.max_len) -- one length bucket: the graph depends on
        #   the batch size only. Else graphs = None.
        raise NotImplementedError("Day 48: BatchDecoder.__init__ is not written yet -- edit "
                                  "days/day_48/batch.py (lesson: notes/day_48_batched_decode.md)")

    def bucket(self, B: int) -> int:
        """The graph size for B rows: the next power of two, at most max_batch."""
        # TODO(day 48): one-line ValueError unless 1 <= B <= cache.max_batch; then 1, 2, 4, ... -- the first
        #   >= B -- capped at cache.max_batch.
        raise NotImplementedError("Day 48: BatchDecoder.bucket is not written yet -- edit "
                                  "days/day_48/batch.py (lesson: notes/day_48_batched_decode.md)")

    def prefill(self, seq_id, ids) -> torch.Tensor:
        """A new sequence's prompt, eagerly: its K/V into the pool; logits [vocab] of its next token."""
        # TODO(day 48): one-line ValueError for no ids; check_ids(ids, vocab_size). cache.prepare_prefill(
        #   seq_id, T); under torch.inference_mode(): ops.forward(weights, ids, positions 0..T-1 (int32 on the
        #   cache's device), ops, cache, logits_at=...) -- only the last row -- and return it as [vocab].
        raise NotImplementedError("Day 48: BatchDecoder.prefill is not written yet -- edit "
                                  "days/day_48/batch.py (lesson: notes/day_48_batched_decode.md)")

    def __call__(self, seq_ids, tokens) -> torch.Tensor:
        # TODO(day 48): one-line ValueError unless len(tokens) == len(seq_ids) = B. rows = bucket(B) with
        #   graphs, else B. check_ids(tokens, vocab_size) -- every check before the cache changes. Then
        #   cache.prepare_decode(seq_ids, tokens, rows), and graphs.run(rows, cache.max_len) or
        #   self._step(rows). Return the first B rows.
        raise NotImplementedError("Day 48: BatchDecoder.__call__ is not written yet -- edit "
                                  "days/day_48/batch.py (lesson: notes/day_48_batched_decode.md)")

    def _step(self, rows: int, bucket: int | None = None) -> torch.Tensor:
        """The forward of the cache's rows -> logits [rows, vocab]. Reads only fixed buffers (what
        a graph captures); running it twice changes nothing."""
        # TODO(day 48): under torch.inference_mode(): ops.forward(weights, cache.ids[:rows],
        #   cache.positions[:rows], ops, cache) -- the cache is the attend; every row's logits.
        raise NotImplementedError("Day 48: BatchDecoder._step is not written yet -- edit "
                                  "days/day_48/batch.py (lesson: notes/day_48_batched_decode.md)")


def forward_batch(weights, cache, seq_ids, tokens, ops) -> torch.Tensor:
    """One eager decode step: fp32 logits [B, vocab], row i for seq_ids[i] after tokens[i]."""
    # TODO(day 48): a BatchDecoder without graphs, called once.
    raise NotImplementedError("Day 48: forward_batch is not written yet -- edit "
                              "days/day_48/batch.py (lesson: notes/day_48_batched_decode.md)")
