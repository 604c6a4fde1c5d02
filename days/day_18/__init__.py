"""Day 18 -- naive generation: recompute the prefix, stop tokens. Lesson: notes/day_18_generate.md"""
from .generate import generate

__all__ = ["generate"]
