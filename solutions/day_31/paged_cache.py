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
        self.ops = ops
        self.allocator = ops.BlockAllocator(num_blocks, block_size)      # checks num_blocks, block_size >= 1
        self.num_blocks, self.block_size = num_blocks, block_size
        self.max_len = num_blocks * block_size            # the most tokens one sequence can hold
        shape = (config.num_layers, num_blocks, config.num_kv_heads, block_size, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.slot_mapping = torch.full((self.max_len,), -1, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros((1, num_blocks), dtype=torch.int32, device=device)
        self.context_lens = torch.zeros(1, dtype=torch.int32, device=device)
        self.table: list[int] = []                        # what block_tables[0] holds on the device
        self.held = False                                 # whether sequence 0 holds blocks
        self.start = self.T = 0

    def release(self) -> None:
        """The sequence is finished: its blocks go back to the pool (none after a prepare(0, T)
        that raised OutOfBlocksError: then this does nothing)."""
        if self.held:
            self.allocator.free(SEQ)
            self.held = False

    def rollback(self, length: int) -> None:
        """Keep the first `length` tokens: the blocks past them go back to the pool (day 35)."""
        have = self.allocator.length(SEQ) if self.held else 0
        if not self.held or not 0 <= length <= have:
            raise ValueError(f"rollback to {length} tokens: the cache holds {have} tokens of this sequence, "
                             f"so 0..{have}")
        self.allocator.truncate(SEQ, length)              # the allocator keeps the ref counts right
        self.table = self.allocator.block_table(SEQ)      # a prefix of what block_tables[0] holds
        self.context_lens.fill_(length)

    def prepare(self, start: int, T: int) -> None:
        """Blocks for positions start..start+T-1, then the step's metadata into the fixed buffers.

        start 0 begins a new sequence (the previous one's blocks are freed first). Positions the
        sequence already holds keep their slots (a step run again); later ones get new slots.
        Host ints only: fill_ / copy_ from host values, never a read of device memory.
        """
        a, bs = self.allocator, self.block_size
        if start == 0:
            self.release()
            a.allocate(SEQ, T)
            self.held = True
        else:
            if not self.held or start > a.length(SEQ):
                have = a.length(SEQ) if self.held else 0
                raise ValueError(f"prepare({start}, {T}): the cache holds {have} tokens of this sequence, "
                                 "so a step may start at most there")
            for _ in range(start + T - a.length(SEQ)):
                a.append_slot(SEQ)
        for src, dst in a.take_copies():                  # copy on write: copy the block, then write
            self.k[:, dst].copy_(self.k[:, src])
            self.v[:, dst].copy_(self.v[:, src])
        table = a.block_table(SEQ)
        slots = [table[p // bs] * bs + p % bs for p in range(start, start + T)]
        if T == 1 and start > 0:                          # decode: a fill_ per buffer, no new tensor
            self.slot_mapping[:1].fill_(slots[0])
            if len(table) != len(self.table) or table[-1] != self.table[-1]:
                self.block_tables[0, len(table) - 1].fill_(table[-1])   # a new block or a copy: the last
        else:
            self.slot_mapping[:T].copy_(torch.tensor(slots, dtype=torch.int32), non_blocking=True)
            self.block_tables[0, :len(table)].copy_(torch.tensor(table, dtype=torch.int32), non_blocking=True)
        self.table = table
        self.context_lens.fill_(start + T)
        self.start, self.T = start, T

    def __call__(self, layer, q, k, v, positions):
        ops, kp, vp = self.ops, self.k[layer], self.v[layer]
        ops.paged_kv_write(kp, vp, k, v, self.slot_mapping[:self.T])
        if self.T == 1 and self.start > 0:                # decode: lengths and tables read on the device
            return ops.paged_decode_attention(q, kp, vp, self.block_tables, self.context_lens)
        if self.start == 0:                               # prefill from empty: attend over the new tokens
            return ops.attention(q, k, v)
        end = self.start + self.T                         # a chunk after cached tokens: gather its blocks
        n = -(-end // self.block_size)
        blocks = self.block_tables[0, :n].long()
        _, KV, bs, hd = kp.shape
        keys = kp[blocks].transpose(1, 2).reshape(n * bs, KV, hd)[:end]
        values = vp[blocks].transpose(1, 2).reshape(n * bs, KV, hd)[:end]
        return ops.attention(q, keys, values)
