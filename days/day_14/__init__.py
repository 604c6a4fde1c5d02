"""Day 14 -- multi-head and grouped-query attention. Lesson: notes/day_14_gqa_attention.md"""
from .gqa_attention import attention

__all__ = ["attention"]
