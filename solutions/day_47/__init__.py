"""Day 47 -- W4A16: 4-bit Q4_1 weights (GGUF's own blocks) in the GEMV. Lesson: notes/day_47_w4a16.md"""
from .w4a16 import linear, linear_add, norm_linear

__all__ = ["linear", "norm_linear", "linear_add"]
