"""Reference for day 40: `quantize_int8` (PyTorch) and the given `dequantize`, the same
semantics as the day's kernels to the bit (int8 values, float32 scales, int8 zero points).

Per group of `group_size` columns of a row (the row for "channel", the whole matrix for
"tensor"), in float32, with lo / hi the group's min / max and clip in (0, 1]:

    symmetric:   scale = clip * max(-lo, hi) / 127          q = clamp(rint(w / scale), -127, 127)
    asymmetric:  scale = clip * (max(hi, 0) - min(lo, 0)) / 255
                 zero = -128 - rint(clip * min(lo, 0) / scale)
                 q = clamp(rint(w / scale) + zero, -128, 127)

evaluated left to right, each operation rounded to float32 (no fused multiply-add: a GPU
compiler fuses a * b - c * d into one, which rounds once instead of twice; written this way
no product is ever added to anything).

rint rounds half to even (torch.round). A scale that comes out 0 (an all-zero group) is 1, so
nothing divides by zero and every element comes back exactly 0. The range of the asymmetric
grid always contains 0: 0.0 is exact and the zero point fits in int8.
"""
from __future__ import annotations

import torch

from shared.quant import QuantWeight, check_finite, check_quantize_args, dequantize

__all__ = ["quantize_int8", "dequantize", "linear_w8a16"]


def _div(a: torch.Tensor, n: int) -> torch.Tensor:
    """a / n as a true float32 division: on CUDA, torch turns `tensor / python_number` into a multiply
    by the reciprocal, which differs in the last bit now and then (and so may flip a rounding)."""
    return a / torch.full_like(a, n)


def quantize_int8(w: torch.Tensor, *, scheme: str = "symmetric", granularity: str = "channel",
                  group_size: int = 128, clip: float = 1.0) -> QuantWeight:
    """w [out, in] fp16/fp32 -> QuantWeight (int8 q, fp32 scales, int8 zero points if asymmetric)."""
    gs = check_quantize_args(w, scheme, granularity, group_size, clip)
    check_finite(w)
    out, cols = w.shape
    x = w.float().reshape(out, cols // gs, gs)
    lo, hi = x.amin(-1), x.amax(-1)                                   # [out, groups]
    if granularity == "tensor":
        lo, hi = lo.amin().view(1, 1), hi.amax().view(1, 1)
    c = torch.tensor(clip, dtype=torch.float32)
    if scheme == "symmetric":
        scale = _div(c * torch.maximum(-lo, hi), 127)
        zero = None
    else:
        lo_, hi_ = lo.clamp(max=0), hi.clamp(min=0)
        scale = _div(c * (hi_ - lo_), 255)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    s = scale.unsqueeze(-1)                                           # broadcast over the group
    if scheme == "symmetric":
        q = torch.round(x / s).clamp(-127, 127)
    else:
        zero = -128 - torch.round(c * lo_ / scale)
        q = (torch.round(x / s) + zero.unsqueeze(-1)).clamp(-128, 127)
        zero = zero.to(torch.int8)
    return QuantWeight(q.view(out, cols).to(torch.int8), scale.contiguous(), zero, gs, scheme, granularity,
                       w.dtype)


def linear_w8a16(x: torch.Tensor, w: QuantWeight) -> torch.Tensor:
    """Day 41's oracle: x [T, in] (fp16/fp32) @ dequantize(w).T in float32, rounded once to x's
    dtype -- what `linear(x, w)` computes for a QuantWeight (the kernels sum in another order)."""
    return (x.float() @ dequantize(w, torch.float32).T).to(x.dtype)
