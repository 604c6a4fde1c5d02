"""Day 11 -- linear for real shapes: GEMV (decode) vs tiled GEMM (prefill). Lesson: notes/day_11_linear.md"""
from .linear import linear

__all__ = ["linear"]
