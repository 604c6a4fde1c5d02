"""Day 40 -- quantization basics: scales, zero points, groups. Lesson: notes/day_40_quant_basics.md"""
from .quantize import quantize_int8

__all__ = ["quantize_int8"]
