"""Day 54 -- kernel fusion: residual add + RMSNorm, fused QKV and gate/up, the norm and the add
inside the decode GEMVs. Lesson: notes/day_54_fusion.md"""
from .add_rmsnorm import add_rmsnorm
from .forward import forward
from .fused_linear import linear_add, norm_linear

__all__ = ["add_rmsnorm", "forward", "linear_add", "norm_linear"]
