"""Day 42 -- making INT8 GEMV fast: the int8 decode GEMVs with day 54's fusions, the engine's
--quant w8a16 (quantize at load time) and the bytes a decode token moves.
Lesson: notes/day_42_int8_fast.md"""
from .int8_gemv import linear_add, norm_linear
from .quantize_model import quantize_weights
from .roofline import decode_bytes

__all__ = ["decode_bytes", "linear_add", "norm_linear", "quantize_weights"]
