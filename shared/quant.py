"""Quantized weights are a type: a `QuantWeight` carries the int8 values, their scales (and zero
points) and the layout, next to plain tensors, so `linear(x, w)` (day 41 on) can dispatch on the
weight's type and the forward pass is written once.

The meaning of the numbers (day 40; lesson: notes/day_40_quant_basics.md), per group of
`group_size` consecutive columns of a row, all arithmetic in float32:

    symmetric:   w ~ q * scale                 q in [-127, 127]
    asymmetric:  w ~ (q - zero) * scale        q, zero in [-128, 127]

`dequantize` is that formula. It is given, not part of the day: it defines what day 40's
`quantize_int8` must produce, and days 41-47 compute the same thing inside their kernels.
`check_quantize_args` and `check_finite` are the one-line errors every quantizer shares.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

SCHEMES = ("symmetric", "asymmetric")
GRANULARITIES = ("tensor", "channel", "group")
ACTIVATIONS = ("float", "int8")


@dataclass(frozen=True, eq=False)
class QuantWeight:
    """An int8 weight [out, in] in PyTorch Linear layout and what it takes to read it back.

    q:           int8 [out, in]
    scale:       float32, one per group: [1, 1] (tensor), [out, 1] (channel), [out, in // group_size] (group)
    zero:        int8, scale's shape (asymmetric); None (symmetric: the zero point is 0)
    group_size:  columns of a row that share one scale (= in for tensor and channel)
    scheme:      "symmetric" | "asymmetric";  granularity: "tensor" | "channel" | "group"
    dtype:       the dtype of the weight it came from (fp16 or fp32)
    activations: "float" (W8A16, days 41-42: x stays in its dtype) or "int8" (W8A8, day 43: `linear`
                 quantizes x per token and multiplies int8 by int8 in int32; symmetric weights only)

    Only shapes and dtypes are checked here (no value is read: building one is capture-safe).
    """
    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    group_size: int
    scheme: str
    granularity: str
    dtype: torch.dtype
    activations: str = "float"

    def __post_init__(self):
        q, s, z = self.q, self.scale, self.zero
        if q.dtype != torch.int8 or q.dim() != 2:
            raise ValueError(f"QuantWeight.q must be int8 [out, in], got {q.dtype} {tuple(q.shape)}")
        if self.scheme not in SCHEMES or self.granularity not in GRANULARITIES:
            raise ValueError(f"QuantWeight: scheme {self.scheme!r} / granularity {self.granularity!r}: "
                             f"use one of {SCHEMES} / {GRANULARITIES}")
        out, cols = q.shape
        if self.group_size < 1 or cols % self.group_size:
            raise ValueError(f"QuantWeight: group_size {self.group_size} does not divide in = {cols}")
        want = {"tensor": (1, 1), "channel": (out, 1), "group": (out, cols // self.group_size)}[self.granularity]
        if s.dtype != torch.float32 or tuple(s.shape) != want:
            raise ValueError(f"QuantWeight: {self.granularity} scales must be float32 {want}, "
                             f"got {s.dtype} {tuple(s.shape)}")
        if (z is None) != (self.scheme == "symmetric"):
            raise ValueError("QuantWeight: zero must be None for symmetric and an int8 tensor for asymmetric")
        if z is not None and (z.dtype != torch.int8 or z.shape != s.shape):
            raise ValueError(f"QuantWeight: zero points must be int8 {want}, got {z.dtype} {tuple(z.shape)}")
        if self.activations not in ACTIVATIONS:
            raise ValueError(f"QuantWeight: activations {self.activations!r}: use one of {ACTIVATIONS}")
        if self.activations == "int8" and z is not None:
            raise ValueError("QuantWeight: int8 activations need symmetric weights (an int32 dot product has no "
                             "room for zero points): quantize with scheme='symmetric'")

    @property
    def int8_activations(self) -> bool:
        return self.activations == "int8"

    def with_activations(self, activations: str) -> "QuantWeight":
        """The same tensors (nothing copied), read as W8A16 ("float") or W8A8 ("int8")."""
        return replace(self, activations=activations)

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    @property
    def nbytes(self) -> int:
        """Bytes this weight occupies: the int8 values, the scales, the zero points."""
        tensors = [self.q, self.scale] + ([self.zero] if self.zero is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def bytes_per_weight(self) -> float:
        return self.nbytes / self.q.numel()

    def rows(self, start: int, stop: int) -> "QuantWeight":
        """Rows start..stop-1 as a QuantWeight that shares this one's memory (q, and the scales and
        zero points of those rows; a per-tensor weight's single scale is shared as it is). Day 42
        quantizes wqkv and w_gate_up whole and re-points wq, wk, wv, w_gate, w_up to such views,
        as fuse_projections does for plain tensors."""
        if not 0 <= start <= stop <= self.q.shape[0]:
            raise ValueError(f"QuantWeight.rows({start}, {stop}) of a weight with {self.q.shape[0]} rows")

        def part(t):
            return t if t is None or t.shape[0] == 1 and self.granularity == "tensor" else t[start:stop]
        return QuantWeight(self.q[start:stop], part(self.scale), part(self.zero), self.group_size, self.scheme,
                           self.granularity, self.dtype, self.activations)


def check_quantize_args(w: torch.Tensor, scheme: str, granularity: str, group_size: int, clip: float) -> int:
    """One-line ValueErrors for what a caller can get wrong; returns the columns per scale."""
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError(f"quantize_int8 takes a 2-D weight [out, in], got "
                         f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    if w.dtype not in (torch.float16, torch.float32):
        raise ValueError(f"quantize_int8 takes float16 or float32 weights, got {w.dtype}: convert with .half()")
    if w.numel() == 0:
        raise ValueError(f"quantize_int8 of an empty weight {tuple(w.shape)}: nothing to quantize")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}: use one of {', '.join(GRANULARITIES)}")
    if not 0.0 < clip <= 1.0:
        raise ValueError(f"clip must be in (0, 1] (the fraction of the range the grid covers), got {clip}")
    cols = w.shape[1]
    if granularity != "group":
        return cols
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 or cols % group_size:
        raise ValueError(f"group_size {group_size!r} must be a positive int dividing in = {cols} "
                         f"(e.g. {next((d for d in (128, 64, 32) if cols % d == 0), cols)})")
    return group_size


def check_finite(w: torch.Tensor) -> None:
    """NaN or inf would make every scale of its group NaN or inf: refuse the weight (offline: a host read is fine)."""
    bad = ~torch.isfinite(w)
    if bool(bad.any()):
        r, c = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"w[{r}, {c}] is {w[r, c].item()}: fix the checkpoint before quantizing ({int(bad.sum())} "
                         "non-finite values)")


def dequantize(qw: QuantWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(q - zero) * scale in float32, each group with its own scale, as `dtype` [out, in]."""
    out, cols = qw.q.shape
    groups = cols // qw.group_size
    q = qw.q.float().view(out, groups, qw.group_size)
    if qw.zero is not None:
        q = q - qw.zero.float().view(-1, groups, 1)
    return (q * qw.scale.view(-1, groups, 1)).view(out, cols).to(dtype)
