"""Day 13 -- naive attention for one head. Lesson: notes/day_13_naive_attention.md"""
from .naive_attention import naive_attention

__all__ = ["naive_attention"]
