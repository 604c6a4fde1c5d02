"""Day 32 -- memory study: contiguous vs paged KV, fragmentation. Lesson: notes/day_32_paged_memory.md"""
from .memory_study import MemoryStudy, Request, block_size_sweep, kv_memory_study, make_workload

__all__ = ["kv_memory_study", "block_size_sweep"]
