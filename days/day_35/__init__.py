"""Day 35 -- greedy speculative decoding and KV rollback. Lesson: notes/day_35_speculative.md"""
from .speculative import speculative

__all__ = ["speculative"]
