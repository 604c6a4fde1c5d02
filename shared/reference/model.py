"""Reference composition: the MLP and the full Llama forward pass, built from `ops`.

`ops` is a shared.course.registry.Ops: each component comes from the learner's finished day or the
reference. `attend(layer, q, k, v, positions)` is how the engine plugs in a KV cache without
the forward pass knowing about it (default: plain causal attention over the tokens given).
"""
from __future__ import annotations

import torch

from shared.weights import ModelWeights


def mlp(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, ops) -> torch.Tensor:
    """down( silu(gate(x)) * up(x) ): x [T, hidden] -> [T, hidden]."""
    return ops.linear(ops.silu_mul(ops.linear(x, w_gate), ops.linear(x, w_up)), w_down)


def forward(weights: ModelWeights, ids: torch.Tensor, positions: torch.Tensor, ops, attend=None,
            logits_at=None) -> torch.Tensor:
    """Logits (fp32) for token ids [T] at positions [T]: [T, vocab], or only the rows
    `logits_at` picks (a slice such as slice(-1, None), or an index tensor) -- a prefill needs
    one row, and the lm_head is the largest matmul of the model."""
    c = weights.config
    if attend is None:
        def attend(layer, q, k, v, positions):
            return ops.attention(q, k, v)
    T = ids.shape[0]
    h = ops.embedding(ids, weights.embed)
    for i, L in enumerate(weights.layers):
        x = ops.rmsnorm(h, L.attn_norm, c.rms_norm_eps)
        q = ops.linear(x, L.wq).view(T, c.num_heads, c.head_dim)
        k = ops.linear(x, L.wk).view(T, c.num_kv_heads, c.head_dim)
        v = ops.linear(x, L.wv).view(T, c.num_kv_heads, c.head_dim)
        ops.rope(q, k, positions, weights.inv_freq)
        a = attend(i, q, k, v, positions)
        h = h + ops.linear(a.reshape(T, c.num_heads * c.head_dim), L.wo)
        h = h + ops.mlp(ops.rmsnorm(h, L.mlp_norm, c.rms_norm_eps), L.w_gate, L.w_up, L.w_down, ops)
    if logits_at is not None:
        h = h[logits_at]
    h = ops.rmsnorm(h, weights.final_norm, c.rms_norm_eps)
    return ops.linear(h, weights.lm_head).float()
