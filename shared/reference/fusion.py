"""Reference for day 54 (kernel fusion): the residual add and the next RMSNorm as one step.

The fused forward of day 54 is the same model as day 16's (shared/reference/model.py), so the
reference for `forward` stays there; this file holds the one new kernel-level name.
"""
from __future__ import annotations

import torch

from shared.reference.ops import rmsnorm


def add_rmsnorm(h: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """h += x IN PLACE (in h's dtype, as HF adds residuals in the model dtype), then return
    rmsnorm(h, weight, eps) of the updated, rounded h (HF LlamaRMSNorm semantics)."""
    h += x
    return rmsnorm(h, weight, eps)
