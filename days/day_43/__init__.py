"""Day 43 -- W8A8 with dp4a: int8 activations per token, int8 x int8 -> int32 (inline PTX).
Lesson: notes/day_43_w8a8.md"""
from .w8a8 import int8_matmul, linear, linear_add, norm_linear, quantize_activations

__all__ = ["int8_matmul", "linear", "linear_add", "norm_linear", "quantize_activations"]
