"""Day 17 -- sampling on the GPU: argmax, temperature, top-k, top-p. Lesson: notes/day_17_sampling.md"""
from .sampling import sample

__all__ = ["sample"]
