"""Day 05 -- matmul: naive, then shared-memory tiled (y = x @ W.T). Lesson: notes/day_05_matmul.md"""
from .matmul import matmul

__all__ = ["matmul"]
