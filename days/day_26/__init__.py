"""Day 26 -- fast flash attention (register tiles, 16-byte loads; tensor cores for fp16). Lesson: notes/day_26_flash_fast.md"""
from .flash_fast import attention

__all__ = ["attention"]
