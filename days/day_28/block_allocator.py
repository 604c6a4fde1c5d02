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
        # TODO(day 28): one-line ValueError unless num_blocks >= 1 and block_size >= 1. Keep
        #   num_blocks, block_size; free_blocks (a collections.deque of every block id); ref_counts
        #   [0] * num_blocks; tables (seq_id -> block table), lengths (seq_id -> length); copies (a list).
        #   Use these names: day 50's PrefixCache subclasses this class and reads them.
        raise NotImplementedError("Day 28: BlockAllocator.__init__ is not written yet -- edit days/day_28/block_allocator.py "
                                  "(lesson: notes/day_28_block_allocator.md)")

    @property
    def num_free(self) -> int:
        """Blocks on the free list (ref count 0)."""
        raise NotImplementedError("Day 28: BlockAllocator.num_free is not written yet -- edit days/day_28/block_allocator.py "
                                  "(lesson: notes/day_28_block_allocator.md)")

    def blocks_needed(self, num_tokens: int) -> int:
        """Blocks that hold num_tokens tokens: ceil(num_tokens / block_size)."""
        raise NotImplementedError("Day 28: BlockAllocator.blocks_needed is not written yet -- edit days/day_28/block_allocator.py "
                                  "(lesson: notes/day_28_block_allocator.md)")

    def _take(self, n: int, why: str) -> list[int]:
        """n blocks off the free list, each with ref count 1 -- or OutOfBlocksError with nothing taken."""
        # TODO(day 28): check first, take after: if n > free, raise OutOfBlocksError(f"{why} needs {n}
        #   free KV blocks but only {free} of {num_blocks} are free: ...") before popping anything.
        raise NotImplementedError("Day 28: BlockAllocator._take is not written yet -- edit days/day_28/block_allocator.py "
                                  "(lesson: notes/day_28_block_allocator.md)")

    def _known(self, seq_id) -> None:
        """ValueError for a sequence that was never allocated, or was freed already."""
        raise NotImplementedError("Day 28: BlockAllocator._known is not written yet -- edit days/day_28/block_allocator.py "
                                  "(lesson: notes/day_28_block_allocator.md)")

    def allocate(self, seq_id, num_tokens: int) -> list[int]:
        """A new sequence holding num_tokens tokens (its prompt). Returns a copy of its block table.

        ValueError if seq_id is allocated already -- even with 0 tokens and no block: allocate(x, 0)
        twice is an error (free it first) -- or if num_tokens < 0."""
        # TODO(day 28): ValueError if seq_id is allocated already or num_tokens < 0; take
        #   blocks_needed(num_tokens) blocks (0 tokens -> an empty table); record table and length
        #   only once the take succeeded.
        raise NotImplementedError("Day 28: BlockAllocator.allocate is not written yet -- edit days/day_28/block_allocator.py "
                                  "(lesson: notes/day_28_block_allocator.md)")

    def append_slot(self, seq_id) -> int:
        """Room for one more token; returns its slot. A new block when the last one is full; a copy
        of the last block when another sequence shares it (see take_copies)."""
        # TODO(day 28): n = length. If n % block_size == 0, append a new block. Else, if the last block's
        #   ref count is > 1, take a fresh block, decrement the old one's count, record (old, fresh)
        #   and put fresh in the table. Then length = n + 1; return the slot of position n.
        raise NotImplementedError("Day 28: BlockAllocator.append_slot is not written yet -- edit days/day_28/block_allocator.py "
                                  "(lesson: notes/day_28_block_allocator.md)")

    def slot(self, seq_id, position: int) -> int:
        """Where position lives in the pool: block * block_size + offset.

        ValueError unless 0 <= position < length(seq_id): a position the sequence does not hold yet
        (append_slot first) has no slot."""
        raise NotImplementedError("Day 28: BlockAllocator.slot is not written yet -- edit days/day_28/block_allocator.py "
                                  "(lesson: notes/day_28_block_allocator.md)")

    def block_table(self, seq_id) -> list[int]:
        """A copy of the sequence's block ids (the caller may not edit the allocator's own list)."""
        raise NotImplementedError("Day 28: BlockAllocator.block_table is not written yet -- edit days/day_28/block_allocator.py "
                                  "(lesson: notes/day_28_block_allocator.md)")

    def length(self, seq_id) -> int:
        """Tokens the sequence holds."""
        raise NotImplementedError("Day 28: BlockAllocator.length is not written yet -- edit days/day_28/block_allocator.py "
                                  "(lesson: notes/day_28_block_allocator.md)")

    def fork(self, parent_id, child_id) -> None:
        """child_id shares every block of parent_id (ref count + 1): no copy until one of them writes.

        ValueError if parent_id is not allocated, or if child_id is allocated already (a fork never
        overwrites an existing sequence's table)."""
        raise NotImplementedError("Day 28: BlockAllocator.fork is not written yet -- edit days/day_28/block_allocator.py "
                                  "(lesson: notes/day_28_block_allocator.md)")

    def free(self, seq_id) -> None:
        """Drop the sequence; a block goes back to the free list when no sequence holds it."""
        # TODO(day 28): decrement each of its blocks' ref counts; only a block that reaches 0 goes
        #   back on the free list. A second free of the same id is a ValueError.
        raise NotImplementedError("Day 28: BlockAllocator.free is not written yet -- edit days/day_28/block_allocator.py "
                                  "(lesson: notes/day_28_block_allocator.md)")

    def truncate(self, seq_id, length: int) -> None:
        """Keep the sequence's first `length` tokens (day 35's rollback): the blocks past them leave
        its table, and one that no other table holds goes back to the free list.

        ValueError unless 0 <= length <= length(seq_id): a sequence only ever gets shorter here."""
        # TODO(day 28): check first (the sequence exists, 0 <= length <= its length). It keeps
        #   blocks_needed(length) blocks -- a partly used last block stays. Each block past them:
        #   ref count - 1, and back on the free list only at 0. Then the table and the length.
        raise NotImplementedError("Day 28: BlockAllocator.truncate is not written yet -- edit days/day_28/block_allocator.py "
                                  "(lesson: notes/day_28_block_allocator.md)")

    def take_copies(self) -> list[tuple[int, int]]:
        """(source, destination) blocks copied on write since the last call: the cache copies them
        in the pool before it writes the step's tokens."""
        raise NotImplementedError("Day 28: BlockAllocator.take_copies is not written yet -- edit days/day_28/block_allocator.py "
                                  "(lesson: notes/day_28_block_allocator.md)")
