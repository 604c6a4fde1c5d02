"""Day 01 -- first kernel: vector add. Lesson: notes/day_01_vector_add.md"""
from .vector_add import vector_add

__all__ = ["vector_add"]
