"""Day 46 -- SmoothQuant-style smoothing: per-channel activation statistics, the smoothing vector,
and folding it into the model.

Lesson: notes/day_46_smoothquant.md        Check: pytest checkers/day_46

W8A8 (day 43) gives each token ONE int8 scale, max |x| / 127. A few channels of an LLM's
activations are 10-100x the rest on every token, so that scale is theirs and the other channels
keep only a few of int8's levels. Weights have no such outliers. Smoothing divides channel j of
the activations by s_j and multiplies column j of every weight that reads them by s_j:

    x W^T = (x diag(1/s)) (W diag(s))^T              s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

so the product is unchanged and both sides are easier to quantize (alpha = 0.5: after smoothing
channel j's largest activation equals its largest weight). In a Llama block the activations
that q, k, v (and gate, up) read are an RMSNorm's output, x = rmsnorm(h) * g: the 1/s goes into
g and costs nothing at run time. The engine (shared/engine/smooth.py, --quant w8a8-smooth)
gathers the statistics with `channel_max` on calibration text, then calls `smooth` and
`fold_smoothing` once per layer and pair, before quantizing. Host PyTorch, offline, once.
"""
from __future__ import annotations

import torch

from shared.reference.smooth import FLOOR, check_channel_max, check_fold, check_smooth   # given: one-line errors


def channel_max(x: torch.Tensor, running: torch.Tensor | None = None) -> torch.Tensor:
    """max |x| over the tokens of x [T, K], per channel, as float32 [K]; merged with `running`
    (an earlier call's result) when given."""
    check_channel_max(x, running)
    m = x.detach().abs().amax(0).float()
    if running is None:
        return m
    return torch.maximum(running.to(m.device), m)


def smooth(act_max: torch.Tensor, weights, alpha: float = 0.5) -> torch.Tensor:
    """s [K] float32: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), W_j column j of every matrix
    in `weights` (they read the same input); both maxima clamped at FLOOR; a channel with a zero
    maximum on either side gets s_j = 1."""
    weights, alpha = check_smooth(act_max, weights, alpha)
    a = act_max.detach().float()
    w = torch.stack([m.detach().abs().amax(0).float().to(a.device) for m in weights]).amax(0)
    s = a.clamp(min=FLOOR).pow(alpha) / w.clamp(min=FLOOR).pow(1 - alpha)
    return torch.where((a > 0) & (w > 0), s, torch.ones_like(s))


def fold_smoothing(norm_weight: torch.Tensor, weights, s: torch.Tensor):
    """(norm_weight / s, [w * s (column j by s_j) for w in weights]): new tensors in the inputs'
    dtypes, computed in float32; the inputs are not changed. x W^T is unchanged in exact arithmetic."""
    weights = check_fold(norm_weight, weights, s)
    s = s.float().to(norm_weight.device)
    norm = (norm_weight.float() / s).to(norm_weight.dtype)
    return norm, [(w.float() * s).to(w.dtype) for w in weights]
