"""Day 28 -- a block allocator for the paged KV cache: pages, a free list, block tables, ref counts.

Lesson: notes/day_28_block_allocator.md        Check: pytest checkers/day_28

The KV pool (day 29) is cut into `num_blocks` blocks of `block_size` token slots. A sequence
owns a block table, the list of its blocks in order: its position p lives in block
table[p // block_size] at offset p % block_size, i.e. slot table[p // block_size] * block_size
+ p % block_size. Blocks need not be adjacent, so memory is taken one block at a time as a
sequence grows, and at most block_size - 1 slots per sequence are ever wasted.

`fork` lets a second sequence share every block of the first (parallel sampling, beam search, a
shared prompt): each block has a ref count, the number of tables holding it. The first write
into a shared, partly filled last block copies it first (copy on write); the allocator only
records (source, destination) and the cache copies the data. `truncate` gives back the end of a
sequence: speculative decoding (day 35) drops the drafts the target rejected.

Host-side Python: no kernel. Every method either succeeds or raises with nothing changed.
"""
from __future__ import annotations

from collections import deque

from shared.engine.errors import OutOfBlocksError


class BlockAllocator:
    """Fixed-size KV blocks: a free list, one block table per sequence, a ref count per block.

    Public state (the checker reads it): num_blocks, block_size, and ref_counts, a list with
    ref_counts[b] = how many block tables hold block b (0 = block b is free).
    """

    def __init__(self, num_blocks: int, block_size: int):
        """An empty pool: every block free (ref count 0), no sequences, no pending copies."""
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"BlockAllocator needs num_blocks >= 1 and block_size >= 1, got "
                             f"num_blocks={num_blocks}, block_size={block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.free_blocks: deque[int] = deque(range(num_blocks))   # FIFO: a freed block is reused last
        self.ref_counts = [0] * num_blocks
        self.tables: dict = {}       # seq_id -> its block ids, in position order
        self.lengths: dict = {}      # seq_id -> tokens it holds
        self.copies: list[tuple[int, int]] = []

    @property
    def num_free(self) -> int:
        """Blocks on the free list (ref count 0)."""
        return len(self.free_blocks)

    def blocks_needed(self, num_tokens: int) -> int:
        """Blocks that hold num_tokens tokens: ceil(num_tokens / block_size)."""
        return -(-num_tokens // self.block_size)

    def _take(self, n: int, why: str) -> list[int]:
        """n blocks off the free list, each with ref count 1 -- or OutOfBlocksError with nothing taken."""
        free = len(self.free_blocks)
        if n > free:
            raise OutOfBlocksError(f"{why} needs {n} free KV blocks but only {free} of {self.num_blocks} are "
                                   "free: free a sequence or give the cache more blocks")
        taken = [self.free_blocks.popleft() for _ in range(n)]
        for b in taken:
            self.ref_counts[b] = 1
        return taken

    def _known(self, seq_id) -> None:
        """ValueError for a sequence that was never allocated, or was freed already."""
        if seq_id not in self.tables:
            raise ValueError(f"sequence {seq_id!r} has no blocks (never allocated, or already freed)")

    def allocate(self, seq_id, num_tokens: int) -> list[int]:
        """A new sequence holding num_tokens tokens (its prompt). Returns a copy of its block table.

        ValueError if seq_id is allocated already -- even with 0 tokens and no block: allocate(x, 0)
        twice is an error (free it first) -- or if num_tokens < 0."""
        if seq_id in self.tables:
            raise ValueError(f"sequence {seq_id!r} is allocated already: free it first")
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        blocks = self._take(self.blocks_needed(num_tokens), f"a prompt of {num_tokens} tokens")
        self.tables[seq_id], self.lengths[seq_id] = blocks, num_tokens   # only after _take succeeded
        return list(blocks)

    def append_slot(self, seq_id) -> int:
        """Room for one more token; returns its slot. A new block when the last one is full; a copy
        of the last block when another sequence shares it (see take_copies)."""
        self._known(seq_id)
        table, n = self.tables[seq_id], self.lengths[seq_id]
        if n % self.block_size == 0:
            # every block is full (or there is none): position n starts a new block. A shared full
            # block is never written again, so it stays shared.
            table.extend(self._take(1, f"token {n} of sequence {seq_id!r}"))
        elif self.ref_counts[table[-1]] > 1:
            # position n goes into the last block, which another sequence still reads: copy on write
            (fresh,) = self._take(1, f"copying the shared last block of sequence {seq_id!r}")
            self.ref_counts[table[-1]] -= 1
            self.copies.append((table[-1], fresh))
            table[-1] = fresh
        self.lengths[seq_id] = n + 1
        return self.slot(seq_id, n)

    def slot(self, seq_id, position: int) -> int:
        """Where position lives in the pool: block * block_size + offset.

        ValueError unless 0 <= position < length(seq_id): a position the sequence does not hold yet
        (append_slot first) has no slot."""
        self._known(seq_id)
        if not 0 <= position < self.lengths[seq_id]:
            raise ValueError(f"position {position} is outside sequence {seq_id!r} (length {self.lengths[seq_id]})")
        return self.tables[seq_id][position // self.block_size] * self.block_size + position % self.block_size

    def block_table(self, seq_id) -> list[int]:
        """A copy of the sequence's block ids (the caller may not edit the allocator's own list)."""
        self._known(seq_id)
        return list(self.tables[seq_id])

    def length(self, seq_id) -> int:
        """Tokens the sequence holds."""
        self._known(seq_id)
        return self.lengths[seq_id]

    def fork(self, parent_id, child_id) -> None:
        """child_id shares every block of parent_id (ref count + 1): no copy until one of them writes.

        ValueError if parent_id is not allocated, or if child_id is allocated already (a fork never
        overwrites an existing sequence's table)."""
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
        its table, and one that no other table holds goes back to the free list.

        ValueError unless 0 <= length <= length(seq_id): a sequence only ever gets shorter here."""
        self._known(seq_id)
        if not 0 <= length <= self.lengths[seq_id]:
            raise ValueError(f"truncate sequence {seq_id!r} to {length} tokens: it holds {self.lengths[seq_id]}, "
                             f"so 0..{self.lengths[seq_id]}")
        table, keep = self.tables[seq_id], self.blocks_needed(length)   # a partly used block stays
        for b in table[keep:]:
            self.ref_counts[b] -= 1
            if self.ref_counts[b] == 0:            # a block another sequence shares stays held
                self.free_blocks.append(b)
        del table[keep:]
        self.lengths[seq_id] = length

    def take_copies(self) -> list[tuple[int, int]]:
        """(source, destination) blocks copied on write since the last call: the cache copies them
        in the pool before it writes the step's tokens."""
        copies, self.copies = self.copies, []
        return copies
