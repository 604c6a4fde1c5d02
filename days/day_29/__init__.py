"""Day 29 -- paged KV write (slot-mapping scatter). Lesson: notes/day_29_paged_kv_write.md"""
from .paged_kv_write import paged_kv_write

__all__ = ["paged_kv_write"]
