"""Day 44 -- the int8 KV cache: quantize on write, dequantize in attention. Lesson: notes/day_44_kv_int8.md"""
from .decode_int8 import paged_decode_attention_int8
from .int8_cache import Int8PagedCache
from .kv_write_int8 import paged_kv_write_int8

__all__ = ["paged_kv_write_int8", "paged_decode_attention_int8", "Int8PagedCache"]
