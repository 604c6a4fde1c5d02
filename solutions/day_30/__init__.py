"""Day 30 -- paged decode attention through block tables. Lesson: notes/day_30_paged_decode.md"""
from .paged_decode import paged_decode_attention

__all__ = ["paged_decode_attention"]
