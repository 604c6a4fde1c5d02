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


def forward_fused(weights, ids: torch.Tensor, positions: torch.Tensor, ops, attend=None,
                  logits_at=None) -> torch.Tensor:
    """Day 54's fused forward as a composition of `ops` (not a registry name: the registry's
    `forward` reference is day 16's, which computes the same logits). Checkers of days before 54
    use it to run a decode step through norm_linear / linear_add without importing a later day:
    T == 1 makes per layer norm_linear(wqkv, rope=...), linear_add(wo), norm_linear(w_gate_up,
    gated=True), linear_add(w_down), then norm_linear(lm_head) with the final norm; T > 1 is day
    16's forward. Needs fused weights (shared.weights.fuse_projections)."""
    from shared.reference.model import forward as unfused
    if ids.shape[0] != 1:
        return unfused(weights, ids, positions, ops, attend, logits_at)
    if not weights.fused:
        raise ValueError("forward_fused needs fused weights: call shared.weights.fuse_projections(weights) first")
    if attend is None:
        def attend(layer, q, k, v, positions):
            return ops.attention(q, k, v)
    c, eps = weights.config, weights.config.rms_norm_eps
    H, KV, hd = c.num_heads, c.num_kv_heads, c.head_dim
    h = ops.embedding(ids, weights.embed)                  # the residual stream, updated in place
    for i, L in enumerate(weights.layers):
        qkv = ops.norm_linear(h, L.attn_norm, eps, L.wqkv, rope=(positions, weights.inv_freq, H + KV))
        q, k, v = (qkv[:, :H * hd].view(1, H, hd), qkv[:, H * hd:(H + KV) * hd].view(1, KV, hd),
                   qkv[:, (H + KV) * hd:].view(1, KV, hd))
        ops.linear_add(attend(i, q, k, v, positions).reshape(1, H * hd), L.wo, h)
        ops.linear_add(ops.norm_linear(h, L.mlp_norm, eps, L.w_gate_up, gated=True), L.w_down, h)
    last = h if logits_at is None else h[logits_at]
    return ops.norm_linear(last, weights.final_norm, eps, weights.lm_head).float()
