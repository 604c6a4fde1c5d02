"""Day 31 -- the paged KV cache as an engine backend: blocks on the host, kernels on the device.

Lesson: notes/day_31_paged_prefill.md        Check: pytest checkers/day_31

A static cache reserves [max_len] positions per sequence up front. A paged cache keeps one pool
of fixed-size blocks and gives a sequence a block only when it needs one (day 28's allocator);
a block table maps position p to slot table[p // block_size] * block_size + p % block_size. The
host decides where every token goes (prepare); the kernels only read what prepare wrote into
buffers that never move (day 29's paged_kv_write, day 30's paged_decode_attention), so the
decode step is still one CUDA graph replay (day 23).
"""
from __future__ import annotations

import torch

SEQ = 0     # the engine runs one sequence at a time (batching, days 48-53, brings more ids)


class PagedCache:
    """A cache backend like StaticCache (shared/engine/attention.py), over a pool of KV blocks.

    k, v: pools [layers, num_blocks, KV, block_size, hd]; allocator: ops.BlockAllocator;
    slot_mapping int32 [max_len], block_tables int32 [1, num_blocks], context_lens int32 [1]:
    device buffers allocated once, rewritten by prepare() before every step. rollback(length)
    gives back the end of the sequence: the drafts a speculative verify wrote and lost (day 35).
    """

    def __init__(self, ops, config, num_blocks: int, block_size: int, dtype: torch.dtype, device):
        # TODO(day 31): keep ops; self.allocator = ops.BlockAllocator(num_blocks, block_size);
        # self.num_blocks, self.block_size, self.max_len = num_blocks * block_size;
        # the pools self.k, self.v [config.num_layers, num_blocks, config.num_kv_heads, block_size,
        # config.head_dim] in dtype on device; the three int32 device buffers above, allocated
        # here once; and whatever host state prepare() needs (does sequence 0 hold blocks? what
        # does block_tables hold on the device now?).
        raise NotImplementedError("Day 31: write PagedCache.__init__ (pools, allocator, fixed buffers) -- "
                                  "edit days/day_31/paged_cache.py (lesson: notes/day_31_paged_prefill.md)")

    def release(self) -> None:
        """The sequence is finished: its blocks go back to the pool (none after a prepare(0, T)
        that raised OutOfBlocksError: then this does nothing)."""
        # TODO(day 31): free sequence SEQ in the allocator if it holds blocks (the engine calls this
        # at the end of every generation; prepare(0, T) calls it too).
        raise NotImplementedError("Day 31: write PagedCache.release -- edit days/day_31/paged_cache.py "
                                  "(lesson: notes/day_31_paged_prefill.md)")

    def rollback(self, length: int) -> None:
        """Keep the first `length` tokens: the blocks past them go back to the pool (day 35)."""
        # TODO(day 31): a one-line ValueError unless sequence SEQ holds blocks and 0 <= length <= its
        #   length. Then self.allocator.truncate(SEQ, length) (day 28: it frees the blocks past them,
        #   ref counts right), remember the shorter table as what block_tables[0] starts with, and
        #   context_lens = length (fill_). Speculative decoding (day 35) calls this after each verify.
        raise NotImplementedError("Day 31: write PagedCache.rollback -- edit days/day_31/paged_cache.py "
                                  "(lesson: notes/day_31_paged_prefill.md)")

    def prepare(self, start: int, T: int) -> None:
        """Blocks for positions start..start+T-1, then the step's metadata into the fixed buffers.

        start 0 begins a new sequence (the previous one's blocks are freed first). Positions the
        sequence already holds keep their slots (a step run again); later ones get new slots.
        Host ints only: fill_ / copy_ from host values, never a read of device memory.
        """
        # TODO(day 31): 1. blocks: start 0 -> release, allocate(SEQ, T); else append_slot for each
        #    position past the sequence's length (a start past the length is a ValueError).
        # 2. copy on write: for (src, dst) in take_copies(), copy block src to dst in both pools,
        #    every layer, before anything writes into dst.
        # 3. slots from the block table; write slot_mapping[:T], the changed entries of
        #    block_tables[0] and context_lens = start + T. A decode step (T == 1, start > 0) uses
        #    fill_ with host ints only; a prefill may copy_ a host tensor (non_blocking=True).
        # 4. remember start and T for __call__.
        raise NotImplementedError("Day 31: write PagedCache.prepare -- edit days/day_31/paged_cache.py "
                                  "(lesson: notes/day_31_paged_prefill.md)")

    def __call__(self, layer, q, k, v, positions):
        # TODO(day 31): write k, v [T, KV, hd] into this layer's pools with ops.paged_kv_write and
        # slot_mapping[:T]; then attend:
        #   decode (T == 1, start > 0): ops.paged_decode_attention(q, k_pool, v_pool, block_tables,
        #                               context_lens) -- q [1, H, hd] is a batch of one;
        #   prefill from empty (start 0): ops.attention(q, k, v) over the new tokens;
        #   a chunk after cached tokens: gather the sequence's blocks from the pools into
        #                               [start + T, KV, hd] keys and values, then ops.attention.
        raise NotImplementedError("Day 31: write PagedCache.__call__ -- edit days/day_31/paged_cache.py "
                                  "(lesson: notes/day_31_paged_prefill.md)")
