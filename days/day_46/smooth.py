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
    # TODO(day 46): the largest MAGNITUDE each channel (column) reaches over the tokens (rows) of x
    #   -- a negative outlier counts -- as float32 [K] (x may be fp16). With `running` (the result of
    #   an earlier call: the statistics so far), return the elementwise larger of the two, so that
    #   calling it window by window gives what one call over all the tokens gives. Not the mean:
    #   the int8 scale of a token is set by its LARGEST value.
    raise NotImplementedError("Day 46: channel_max")


def smooth(act_max: torch.Tensor, weights, alpha: float = 0.5) -> torch.Tensor:
    """s [K] float32: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), W_j column j of every matrix
    in `weights` (they read the same input); both maxima clamped at FLOOR; a channel with a zero
    maximum on either side gets s_j = 1."""
    weights, alpha = check_smooth(act_max, weights, alpha)
    # TODO(day 46): act_max [K] (channel_max's result), weights a list of [N_i, K] matrices that all
    #   read this input (q, k and v; or gate and up), alpha in [0, 1].
    #   1. max|W_j|: the largest |w| of column j over EVERY matrix of the list (one s serves them all:
    #      the norm before them can only hold one 1/s), in float32 [K].
    #   2. s = max(act_max, FLOOR) ** alpha / max(max|W|, FLOOR) ** (1 - alpha), in float32: alpha goes
    #      with the activations, 1 - alpha with the weights.
    #   3. where act_max == 0 or max|W| == 0 (a channel never seen, or read by no weight), s = 1:
    #      nothing to balance there, and 1/s must stay finite.
    #   Return s [K] float32 on act_max's device.
    raise NotImplementedError("Day 46: smooth")


def fold_smoothing(norm_weight: torch.Tensor, weights, s: torch.Tensor):
    """(norm_weight / s, [w * s (column j by s_j) for w in weights]): new tensors in the inputs'
    dtypes, computed in float32; the inputs are not changed. x W^T is unchanged in exact arithmetic."""
    weights = check_fold(norm_weight, weights, s)
    # TODO(day 46): the norm's output is rmsnorm(h) * g, so g / s divides channel j of x by s_j; every
    #   weight [N, K] gets column j (not row j) multiplied by s_j. Compute in float32, round once to each
    #   tensor's own dtype, and return NEW tensors (norm, [w0, w1, ...]) in the order given -- the
    #   caller's tensors stay as they were.
    raise NotImplementedError("Day 46: fold_smoothing")
