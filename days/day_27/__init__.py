"""Day 27 -- flash-decoding: split-KV decode attention. Lesson: notes/day_27_flash_decoding.md"""
from .flash_decoding import decode_attention

__all__ = ["decode_attention"]
