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

Day 42: `quantize_weights` (the engine's --quant w8a16, at load time) and `decode_bytes` (what a
decode token reads and writes, for the roofline) are here too.
"""
from __future__ import annotations

import torch

from shared.quant import QuantWeight, check_finite, check_quantize_args, dequantize

__all__ = ["quantize_int8", "dequantize", "linear_w8a16", "quantize_activations", "linear_w8a8", "quantize_weights",
           "decode_bytes"]


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


# ---- day 43: W8A8, int8 activations per token --------------------------------------------------------
def quantize_activations(x: torch.Tensor, *, clip: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, in] (fp16/fp32) -> (q int8 [T, in], scale float32 [T, 1]): day 40's symmetric rule with one
    scale per token (row), in float32: scale = clip * max|x[t]| / 127 (a zero row: 1),
    q = clamp(rint(x / scale), -127, 127). The same values day 43's quantizer kernel must produce."""
    xf = x.float()
    c = torch.tensor(clip, dtype=torch.float32)
    scale = _div(c * xf.abs().amax(-1, keepdim=True), 127)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.round(xf / scale).clamp(-127, 127).to(torch.int8), scale


def linear_w8a8(x: torch.Tensor, w: QuantWeight) -> torch.Tensor:
    """Day 43's oracle: x quantized per token, the int8 products summed EXACTLY (integers; float64
    holds them without rounding), then the scales in float32:

        per tensor / channel:  y[t, n] = float32(I[t, n]) * scale_w[n] * scale_x[t]
        per group:             y[t, n] = (sum_g float32(I_g[t, n]) * scale_w[n, g]) * scale_x[t]

    with I (I_g) the int32 dot product of row t of q_x and row n of q_w (over group g); rounded once
    to x's dtype. Symmetric weights only (no zero points)."""
    if w.zero is not None:
        raise ValueError("linear_w8a8: int8 activations need symmetric weights (no zero points)")
    xq, sx = quantize_activations(x)
    T, K = x.shape
    N, groups = w.q.shape[0], K // w.group_size
    a = xq.double().view(T, groups, w.group_size).transpose(0, 1)           # [groups, T, gs]
    b = w.q.double().view(N, groups, w.group_size).permute(1, 2, 0)         # [groups, gs, N]
    acc = (a @ b).to(torch.int64).to(torch.int32).float()                   # [groups, T, N], exact integers
    sw = w.scale.view(-1, groups).T.unsqueeze(1)                            # [groups, 1, N or 1]
    y = (acc * sw).sum(0) if groups > 1 else acc[0] * sw[0]
    return (y * sx).to(x.dtype)


# ---- day 42: the engine's quantized weights, and what a decode token reads ------------------------
def quantize_weights(weights, ops, *, scheme: str = "symmetric", granularity: str = "channel",
                     group_size: int = 128, head: bool = True):
    """Quantize a fused model's matrices to int8 IN PLACE, at load time; returns `weights`.

    Each layer's wqkv and w_gate_up become ONE QuantWeight each (ops.quantize_int8 with these
    options), and wq, wk, wv, w_gate, w_up row views of them (`QuantWeight.rows`); wo and w_down
    become QuantWeights; the lm_head too when `head` (a tied head leaves the embedding table as
    it is: the lookup reads one row). Norms and the embedding stay. A matrix that already is a
    QuantWeight is left alone (idempotent). Weights that fuse_projections has not fused: ValueError.
    """
    if not weights.fused:
        raise ValueError("quantize_weights needs fused weights: call shared.weights.fuse_projections(weights) "
                         "first, so wqkv and w_gate_up are quantized whole")

    def quantize(w):
        return w if isinstance(w, QuantWeight) else ops.quantize_int8(w, scheme=scheme, granularity=granularity,
                                                                      group_size=group_size)

    def fused(whole, parts):
        qw = quantize(whole)
        views, start = [], 0
        for p in parts:
            views.append(qw.rows(start, start + p.shape[0]))
            start += p.shape[0]
        return qw, views

    for L in weights.layers:
        L.wqkv, (L.wq, L.wk, L.wv) = fused(L.wqkv, [L.wq, L.wk, L.wv])
        L.w_gate_up, (L.w_gate, L.w_up) = fused(L.w_gate_up, [L.w_gate, L.w_up])
        L.wo, L.w_down = quantize(L.wo), quantize(L.w_down)
    if head:
        weights.lm_head = quantize(weights.lm_head)
    return weights


DECODE_KEYS = ("weights", "scales", "norms", "embedding", "kv", "activations")


def decode_bytes(config, quant: str | None = None, *, context: int = 1, group_size: int | None = None,
                 head: bool = True, dtype_bytes: int = 2) -> dict:
    """Bytes one decode token (batch 1, day 54's fused step) moves, by kind -> {key: int}.

    quant None: every matrix in the model dtype (dtype_bytes each); "w8a16": int8 matrices with
    one float32 scale per row (group_size None) or per group of group_size columns, symmetric; the
    lm_head int8 too unless head=False. With L layers, D hidden, H / KV heads of hd, F inter, V vocab:
      weights      wqkv [(H + 2 KV) hd, D], wo [D, H hd], w_gate_up [2F, D], w_down [D, F] per layer, lm_head [V, D]
      scales       4 bytes per row (or per group) of each int8 matrix; 0 unquantized
      norms        2 D per layer + D (the final norm), dtype_bytes each
      embedding    one row: D values
      kv           L * 2 (K and V) * KV * hd values per position, for `context` positions read (the new token
                   included) and the new one written: context + 1 positions
      activations  each GEMV reads its input row and writes its output row (linear_add reads and writes h:
                   one more row), dtype_bytes each: per layer D + (H + 2 KV) hd | H hd + 2D | D + F | F + 2D;
                   then the head reads D and the logits are written once in fp32 (4 V bytes)
    """
    if quant not in (None, "w8a16"):
        raise ValueError(f"decode_bytes: quant must be None or 'w8a16', got {quant!r}")
    c, b = config, dtype_bytes
    D, F, V, hd = c.hidden_size, c.intermediate_size, c.vocab_size, c.head_dim
    H, KV, L = c.num_heads, c.num_kv_heads, c.num_layers
    layer = [((H + 2 * KV) * hd, D), (D, H * hd), (2 * F, D), (D, F)]           # [out, in] per layer
    mats = [(shape, True) for _ in range(L) for shape in layer] + [((V, D), head)]
    out = dict.fromkeys(DECODE_KEYS, 0)
    for (n, k), quantized in mats:
        if quant == "w8a16" and quantized:
            if group_size is not None and k % group_size:
                raise ValueError(f"decode_bytes: group_size {group_size} does not divide in = {k}")
            out["weights"] += n * k
            out["scales"] += 4 * n * (1 if group_size is None else k // group_size)
        else:
            out["weights"] += b * n * k
    out["norms"] = b * (2 * L + 1) * D
    out["embedding"] = b * D
    out["kv"] = b * L * 2 * KV * hd * (context + 1)
    per_layer = D + (H + 2 * KV) * hd + H * hd + 2 * D + D + F + F + 2 * D
    out["activations"] = b * (L * per_layer + D) + 4 * V
    return out
