"""Day 50 -- prefix sharing: chained block hashes, ref counts, copy on write. Lesson: notes/day_50_prefix_cache.md"""
from .prefix_cache import PrefixCache

__all__ = ["PrefixCache"]
