"""Day 41 -- W8A16 GEMV: int8 weights dequantized in the kernel. Lesson: notes/day_41_w8a16_gemv.md"""
from .w8a16 import linear

__all__ = ["linear"]
