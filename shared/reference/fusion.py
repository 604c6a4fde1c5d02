"""Reference for day 54 (kernel fusion): the residual add and the next RMSNorm as one step.

The fused forward of day 54 is the same model as day 16's (shared/reference/model.py), so the
reference for `forward` stays there; this file holds the new kernel-level names.
"""
from __future__ import annotations

import torch

from shared.reference.ops import linear, rmsnorm, rope as rotate, silu_mul


def add_rmsnorm(h: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """h += x IN PLACE (in h's dtype, as HF adds residuals in the model dtype), then return
    rmsnorm(h, weight, eps) of the updated, rounded h (HF LlamaRMSNorm semantics)."""
    h += x
    return rmsnorm(h, weight, eps)


def norm_linear(h: torch.Tensor, norm_weight: torch.Tensor, eps: float, w: torch.Tensor, *,
                gated: bool = False, rope=None) -> torch.Tensor:
    """rmsnorm(h, norm_weight, eps) @ w.T: the norm as the GEMV's prologue (day 54, decode).
    gated: w = [gate; up] and the result is silu_mul(gate, up), the SwiGLU as its epilogue.
    rope = (positions, inv_freq, heads): the first `heads` heads of hd rows come out rotated."""
    y = linear(rmsnorm(h, norm_weight, eps), w)
    if rope is not None:
        positions, inv_freq, heads = rope
        hd = 2 * inv_freq.shape[0]
        qk = y[:, :heads * hd].view(y.shape[0], heads, hd)
        rotate(qk, qk[:, :0], positions, inv_freq)
    if not gated:
        return y
    F = w.shape[0] // 2
    return silu_mul(y[:, :F], y[:, F:])


def linear_add(x: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> None:
    """h += x @ w.T IN PLACE, the product rounded to h's dtype first (HF's h = h + o_proj(a))."""
    h += linear(x, w)
