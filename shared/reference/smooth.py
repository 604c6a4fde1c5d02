"""Reference for day 46: SmoothQuant-style smoothing. Same names and signatures as the day (the
contract is in days/day_46/smooth.py). The check_* helpers are the one-line errors the day is
given."""
from __future__ import annotations

import torch

FLOOR = 1e-5        # SmoothQuant's clamp: no maximum below this enters the ratio


def check_alpha(alpha) -> float:
    """One line for a migration strength the formula cannot take."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1] (the share of the difficulty moved into the "
                         f"weights; SmoothQuant's default 0.5), got {alpha!r}")
    return float(alpha)


def check_channel_max(x: torch.Tensor, running) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"channel_max takes activations [tokens, channels], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if running is not None and tuple(running.shape) != (x.shape[1],):
        raise ValueError(f"channel_max: running statistics of {tuple(running.shape)} for {x.shape[1]} channels")


def check_smooth(act_max: torch.Tensor, weights, alpha) -> tuple[list, float]:
    """(the weights as a list, alpha as a float); one line for what cannot be smoothed together."""
    alpha = check_alpha(alpha)
    weights = list(weights)
    if not weights:
        raise ValueError("smooth needs the weights that read this input (q, k, v or gate, up)")
    if act_max.dim() != 1:
        raise ValueError(f"smooth: act_max is one maximum per channel [K], got {tuple(act_max.shape)}")
    for w in weights:
        if w.dim() != 2 or w.shape[1] != act_max.shape[0]:
            raise ValueError(f"smooth: a weight of {tuple(w.shape)} does not read the {act_max.shape[0]} channels "
                             "of act_max: every matrix in the list must be [out, K] with the same K")
    return weights, alpha


def check_fold(norm_weight: torch.Tensor, weights, s: torch.Tensor) -> list:
    weights = list(weights)
    if norm_weight.dim() != 1 or tuple(s.shape) != tuple(norm_weight.shape):
        raise ValueError(f"fold_smoothing: s of {tuple(s.shape)} for a norm weight of {tuple(norm_weight.shape)}")
    for w in weights:
        if w.dim() != 2 or w.shape[1] != s.shape[0]:
            raise ValueError(f"fold_smoothing: a weight of {tuple(w.shape)} does not read {s.shape[0]} channels")
    return weights


def channel_max(x: torch.Tensor, running: torch.Tensor | None = None) -> torch.Tensor:
    """max |x| over the tokens of x [T, K], per channel, as float32 [K]; merged with `running`
    (an earlier call's result) when given."""
    check_channel_max(x, running)
    m = x.detach().abs().amax(0).float()
    return m if running is None else torch.maximum(running.to(m.device), m)


def smooth(act_max: torch.Tensor, weights, alpha: float = 0.5) -> torch.Tensor:
    """s [K] float32: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), W_j column j of every matrix
    in `weights` (they read the same input); both maxima clamped at FLOOR; a channel with a zero
    maximum on either side gets s_j = 1."""
    weights, alpha = check_smooth(act_max, weights, alpha)
    a = act_max.detach().float()
    wmax = torch.stack([w.detach().abs().amax(0).float().to(a.device) for w in weights]).amax(0)
    s = a.clamp(min=FLOOR).pow(alpha) / wmax.clamp(min=FLOOR).pow(1 - alpha)
    return torch.where((a > 0) & (wmax > 0), s, torch.ones_like(s))


def fold_smoothing(norm_weight: torch.Tensor, weights, s: torch.Tensor):
    """(norm_weight / s, [w * s (column j by s_j) for w in weights]): new tensors in the inputs'
    dtypes, computed in float32; the inputs are not changed. x W^T is unchanged in exact arithmetic."""
    weights = check_fold(norm_weight, weights, s)
    s = s.float().to(norm_weight.device)
    return (norm_weight.float() / s).to(norm_weight.dtype), [(w.float() * s).to(w.dtype) for w in weights]
