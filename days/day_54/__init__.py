"""Day 54 -- kernel fusion: residual add + RMSNorm, fused QKV and gate/up. Lesson: notes/day_54_fusion.md"""
from .add_rmsnorm import add_rmsnorm
from .forward import forward

__all__ = ["add_rmsnorm", "forward"]
