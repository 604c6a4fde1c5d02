"""Day 10 -- RMSNorm with fp32 accumulation. Lesson: notes/day_10_rmsnorm.md"""
from .rmsnorm import rmsnorm

__all__ = ["rmsnorm"]
