"""Day 28 -- block allocator: pages, free list, block tables, ref counts. Lesson: notes/day_28_block_allocator.md"""
from .block_allocator import BlockAllocator

__all__ = ["BlockAllocator"]
