"""Day 31 -- paged prefill; the engine switches to the paged KV cache. Lesson: notes/day_31_paged_prefill.md"""
from .paged_cache import PagedCache

__all__ = ["PagedCache"]
