"""Day 22 -- benchmarking: TTFT, tok/s, memory, scaling, HF baseline. Lesson: notes/day_22_benchmark.md"""
from .benchmark import benchmark

__all__ = ["benchmark"]
