"""Day 24 -- online softmax; blocked attention over KV chunks. Lesson: notes/day_24_online_softmax.md"""
from .online_softmax import blocked_attention, online_softmax

__all__ = ["online_softmax", "blocked_attention"]
