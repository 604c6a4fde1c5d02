"""Day 32 -- memory study: a static KV cache per sequence vs a paged pool, many sequences.

Lesson: notes/day_32_paged_memory.md        Check: pytest checkers/day_32

A server holds many sequences at once, of lengths it cannot know in advance. A static cache
must reserve the longest possible sequence for each of them; a paged pool (days 28-31) holds
only the blocks a sequence has reached, and wastes at most block_size - 1 slots per sequence (the
unfilled end of its last block). This day measures both on a seeded workload, step by step,
with the real BlockAllocator doing the allocation. Host Python only: no GPU, no model.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from shared.course.registry import resolve


@dataclass(frozen=True)
class Request:
    """Arrives at step `arrival`; its prompt is prefilled that step; it generates output_len tokens,
    one per step, feeding each back except the last (so it holds at most prompt_len + output_len - 1)."""
    arrival: int
    prompt_len: int
    output_len: int


def make_workload(num_requests: int = 32, *, seed: int = 0, prompt_range=(32, 1024), output_range=(16, 512),
                  arrival_span: int = 256) -> list[Request]:
    """Mixed lengths: prompt and output lengths log-uniform in their ranges (many short, a few
    long, like chat traffic), arrival steps uniform in [0, arrival_span). Seeded: the same list
    every time."""
    rng = random.Random(seed)

    def log_uniform(lo, hi):
        return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    reqs = [Request(rng.randrange(arrival_span), log_uniform(*prompt_range), log_uniform(*output_range))
            for _ in range(num_requests)]
    return sorted(reqs, key=lambda r: r.arrival)


@dataclass
class MemoryStudy:
    """Per-step numbers (index = step), all in KV slots (one slot = one token's keys and values
    in every layer). reserved: what a static cache of max_len per live sequence holds; allocated:
    the paged pool's blocks in use x block_size; used: tokens actually stored."""
    block_size: int
    max_len: int
    live: list[int] = field(default_factory=list)
    used: list[int] = field(default_factory=list)
    allocated: list[int] = field(default_factory=list)
    reserved: list[int] = field(default_factory=list)

    @property
    def peak_static(self) -> int:
        return max(self.reserved)

    @property
    def peak_paged(self) -> int:
        return max(self.allocated)

    @property
    def saving(self) -> float:
        """1 - peak paged / peak static: the share of peak KV memory the pool does not need."""
        return 1 - self.peak_paged / self.peak_static

    @property
    def waste_fraction(self) -> float:
        """Allocated but unused slots, summed over every step, over all allocated slots."""
        return sum(a - u for a, u in zip(self.allocated, self.used)) / sum(self.allocated)

    @property
    def peak_table_entries(self) -> int:
        """Block-table entries at the peak: one per allocated block (what the kernels look up)."""
        return self.peak_paged // self.block_size


def kv_memory_study(requests: list[Request], *, block_size: int, max_len: int | None = None,
                    allocator_cls=None) -> MemoryStudy:
    """Step through the workload with a BlockAllocator (the registry's: day 28's once finished).

    Each step, in this order: free the sequences that finished at the previous step; append one
    slot to every other live sequence; allocate the prompts of the requests arriving now; then
    record live, used, allocated and reserved. Ends after the last request's last step.
    max_len: what a static cache reserves per sequence (default: the longest prompt + output).
    """
    # TODO(day 32): check block_size >= 1 and a non-empty workload (one-line ValueError);
    # allocator_cls defaults to resolve("BlockAllocator"); a pool big enough for every request at
    # once (the sum of each request's ceil((prompt_len + output_len) / block_size)); then one loop
    # over steps 0 .. the last request's last step (arrival + output_len - 1), using the
    # allocator's allocate / append_slot / free / num_free, filling a MemoryStudy.
    raise NotImplementedError("Day 32: write kv_memory_study -- edit days/day_32/memory_study.py "
                              "(lesson: notes/day_32_paged_memory.md)")


def block_size_sweep(requests: list[Request], block_sizes=(8, 16, 32, 64)) -> list[dict]:
    """The trade-off: bigger blocks waste more of the last block, smaller ones mean longer block
    tables (more lookups per key in the decode kernel). One row per block size."""
    # TODO(day 32): one kv_memory_study per block size; a dict per row with block_size, peak_paged,
    # peak_static, saving, waste_fraction and peak_table_entries.
    raise NotImplementedError("Day 32: write block_size_sweep -- edit days/day_32/memory_study.py "
                              "(lesson: notes/day_32_paged_memory.md)")
