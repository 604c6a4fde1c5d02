"""Day 20 -- decode attention over the KV cache (one query, GQA). Lesson: notes/day_20_decode_attention.md"""
from .decode_attention import decode_attention

__all__ = ["decode_attention"]
