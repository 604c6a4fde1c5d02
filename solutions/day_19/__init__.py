"""Day 19 -- static KV cache: layout, prefill write, append kernel. Lesson: notes/day_19_kv_cache.md"""
from .kv_cache import KVCache, kv_write

__all__ = ["KVCache", "kv_write"]
