"""Day 25 -- the flash attention forward kernel. Lesson: notes/day_25_flash_attention.md"""
from .flash_attention import attention

__all__ = ["attention"]
