"""Reference block allocator (day 28's contract) and paged KV cache backend (day 31's).

The KV pool is cut into `num_blocks` blocks of `block_size` token slots. A sequence owns a block
table: its position p lives in slot `table[p // block_size] * block_size + p % block_size`.
`fork` lets a second sequence share the first one's blocks (a ref count per block); the first
write into a shared block copies it first (copy on write), and the cache does that copy.
`truncate` gives back the end of a sequence: speculative decoding's rollback (day 35).
Every method either succeeds or raises with every table unchanged.
"""
from __future__ import annotations

from collections import deque

import torch

from shared.engine.errors import OutOfBlocksError


class BlockAllocator:
    """Fixed-size KV blocks: a free list, one block table per sequence, a ref count per block."""

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"BlockAllocator needs num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.free_blocks = deque(range(num_blocks))
        self.ref_counts = [0] * num_blocks
        self.tables: dict = {}      # seq_id -> list of block ids
        self.lengths: dict = {}     # seq_id -> tokens stored
        self.copies: list[tuple[int, int]] = []

    @property
    def num_free(self) -> int:
        return len(self.free_blocks)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _take(self, n: int, why: str) -> list[int]:
        if n > len(self.free_blocks):
            raise OutOfBlocksError(f"{why} needs {n} free KV blocks but only {len(self.free_blocks)} of "
                                   f"{self.num_blocks} are free: free a sequence or give the cache more blocks")
        taken = [self.free_blocks.popleft() for _ in range(n)]
        for b in taken:
            self.ref_counts[b] = 1
        return taken

    def _known(self, seq_id) -> None:
        if seq_id not in self.tables:
            raise ValueError(f"sequence {seq_id!r} has no blocks (never allocated, or already freed)")

    def allocate(self, seq_id, num_tokens: int) -> list[int]:
        """A new sequence holding num_tokens tokens (its prompt). Returns a copy of its block table."""
        if seq_id in self.tables:
            raise ValueError(f"sequence {seq_id!r} is allocated already: free it first")
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        self.tables[seq_id] = self._take(self.blocks_needed(num_tokens), f"a prompt of {num_tokens} tokens")
        self.lengths[seq_id] = num_tokens
        return list(self.tables[seq_id])

    def append_slot(self, seq_id) -> int:
        """Room for one more token; returns its slot. A new block when the last one is full; a copy
        of the last block when another sequence shares it (see take_copies)."""
        self._known(seq_id)
        table, n = self.tables[seq_id], self.lengths[seq_id]
        if n % self.block_size == 0:
            table += self._take(1, f"token {n} of sequence {seq_id!r}")
        elif self.ref_counts[table[-1]] > 1:
            (fresh,) = self._take(1, f"copying the shared last block of sequence {seq_id!r}")
            self.ref_counts[table[-1]] -= 1
            self.copies.append((table[-1], fresh))
            table[-1] = fresh
        self.lengths[seq_id] = n + 1
        return self.slot(seq_id, n)

    def slot(self, seq_id, position: int) -> int:
        self._known(seq_id)
        if not 0 <= position < self.lengths[seq_id]:
            raise ValueError(f"position {position} is outside sequence {seq_id!r} (length {self.lengths[seq_id]})")
        return self.tables[seq_id][position // self.block_size] * self.block_size + position % self.block_size

    def block_table(self, seq_id) -> list[int]:
        self._known(seq_id)
        return list(self.tables[seq_id])

    def length(self, seq_id) -> int:
        self._known(seq_id)
        return self.lengths[seq_id]

    def fork(self, parent_id, child_id) -> None:
        """child_id shares every block of parent_id (ref count + 1): no copy until one of them writes."""
        self._known(parent_id)
        if child_id in self.tables:
            raise ValueError(f"sequence {child_id!r} is allocated already: free it first")
        self.tables[child_id] = list(self.tables[parent_id])
        self.lengths[child_id] = self.lengths[parent_id]
        for b in self.tables[child_id]:
            self.ref_counts[b] += 1

    def free(self, seq_id) -> None:
        """Drop the sequence; a block goes back to the free list when no sequence holds it."""
        self._known(seq_id)
        for b in self.tables.pop(seq_id):
            self.ref_counts[b] -= 1
            if self.ref_counts[b] == 0:
                self.free_blocks.append(b)
        del self.lengths[seq_id]

    def truncate(self, seq_id, length: int) -> None:
        """Keep the sequence's first `length` tokens (day 35's rollback): the blocks past them leave
        its table, and one that no other table holds goes back to the free list."""
        self._known(seq_id)
        if not 0 <= length <= self.lengths[seq_id]:
            raise ValueError(f"truncate sequence {seq_id!r} to {length} tokens: it holds {self.lengths[seq_id]}, "
                             f"so 0..{self.lengths[seq_id]}")
        table, keep = self.tables[seq_id], self.blocks_needed(length)
        for b in table[keep:]:
            self.ref_counts[b] -= 1
            if self.ref_counts[b] == 0:
                self.free_blocks.append(b)
        del table[keep:]
        self.lengths[seq_id] = length

    def take_copies(self) -> list[tuple[int, int]]:
        """(source, destination) blocks copied on write since the last call: the cache copies them
        in the pool before it writes the step's tokens."""
        copies, self.copies = self.copies, []
        return copies


SEQ = 0     # the engine runs one sequence at a time (batching, days 48-53, brings more ids)


class PagedCache:
    """A cache backend like StaticCache (shared/engine/attention.py), over a pool of KV blocks.

    Pools k, v [layers, num_blocks, KV, block_size, hd]; blocks come from ops.BlockAllocator for
    sequence 0. `prepare(start, T)` (host) allocates, does the copy-on-write copies, and writes
    the step's slot_mapping / block_tables / context_lens into device buffers allocated once;
    `__call__` writes k, v through ops.paged_kv_write and attends: ops.attention over the prompt,
    ops.paged_decode_attention for one token (capture-safe: it reads only the fixed buffers), or
    ops.attention over the sequence's blocks gathered for a chunk after cached tokens.
    `rollback(length)` truncates the sequence (its later blocks go back to the pool).
    """

    def __init__(self, ops, config, num_blocks: int, block_size: int, dtype: torch.dtype, device):
        self.ops = ops
        self.allocator = ops.BlockAllocator(num_blocks, block_size)
        self.num_blocks, self.block_size = num_blocks, block_size
        self.max_len = num_blocks * block_size            # the most tokens one sequence can hold
        self.allocate_pools(config, num_blocks, block_size, dtype, device)
        self.slot_mapping = torch.full((self.max_len,), -1, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros((1, num_blocks), dtype=torch.int32, device=device)
        self.context_lens = torch.zeros(1, dtype=torch.int32, device=device)
        self.table: list[int] = []                        # what block_tables[0] holds on the device
        self.held = False                                 # whether sequence 0 holds blocks
        self.start = self.T = 0

    def allocate_pools(self, config, num_blocks: int, block_size: int, dtype: torch.dtype, device) -> None:
        """k, v [layers, num_blocks, KV, block_size, hd] in the model dtype (day 44's int8 cache
        overrides this: int8 pools and their scales)."""
        shape = (config.num_layers, num_blocks, config.num_kv_heads, block_size, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def pools(self) -> tuple[torch.Tensor, ...]:
        """Every tensor indexed [layer, block, ...] that holds the cache's contents: what a
        copy on write copies and what kv_bytes counts."""
        return self.k, self.v

    def kv_bytes(self) -> int:
        """Bytes the cache's contents take on the device (every pool; not the step's metadata)."""
        return sum(t.numel() * t.element_size() for t in self.pools())

    def release(self) -> None:
        """The sequence is finished: its blocks go back to the pool."""
        if self.held:
            self.allocator.free(SEQ)
            self.held = False

    def rollback(self, length: int) -> None:
        """Keep the first `length` tokens: the blocks past them go back to the pool (day 35)."""
        have = self.allocator.length(SEQ) if self.held else 0
        if not self.held or not 0 <= length <= have:
            raise ValueError(f"rollback to {length} tokens: the cache holds {have} tokens of this sequence, "
                             f"so 0..{have}")
        self.allocator.truncate(SEQ, length)
        self.table = self.allocator.block_table(SEQ)      # a prefix of what block_tables[0] holds
        self.context_lens.fill_(length)

    def prepare(self, start: int, T: int) -> None:
        """Blocks for positions start..start+T-1, then the step's metadata into the fixed buffers.
        start 0: a new sequence. Positions the sequence already holds keep their slots (a step
        run again); positions past its end get new slots."""
        a = self.allocator
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
        for src, dst in a.take_copies():                  # copy on write: the block before the write
            for pool in self.pools():
                pool[:, dst].copy_(pool[:, src])
        table = a.block_table(SEQ)
        slots = [a.slot(SEQ, p) for p in range(start, start + T)]
        if T == 1 and start > 0:                          # decode: host ints, one fill_ each, no sync
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
