"""Day 03 -- reductions: shared memory, barriers, tree and warp reduce. Lesson: notes/day_03_reductions.md"""
from .reductions import row_max, row_sum

__all__ = ["row_sum", "row_max"]
