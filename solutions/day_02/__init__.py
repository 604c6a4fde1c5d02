"""Day 02 -- 2-D grids, strides, elementwise SiLU and SiLU(a)*b. Lesson: notes/day_02_elementwise.md"""
from .elementwise import silu, silu_mul

__all__ = ["silu", "silu_mul"]
