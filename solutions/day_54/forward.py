"""Day 54 -- the fused forward pass: day 16's model in fewer, fuller launches.

Per layer: one linear for q, k, v (L.wqkv) instead of three, one for gate and up (L.w_gate_up)
instead of two. A prefill (T > 1) fuses each residual add with the RMSNorm after it
(add_rmsnorm); a decode step (T == 1) folds the norm into the GEMV after it (norm_linear) and
the add into the GEMV before it (linear_add), so no launch is left for either; the QKV GEMV
ends with RoPE (rope=...) and the gate/up GEMV with the SwiGLU (gated=True).
The weights are concatenated once at load time by shared.weights.fuse_projections.

Lesson: notes/day_54_fusion.md        Check: pytest checkers/day_54
"""
import torch

from shared.weights import ModelWeights

NOT_FUSED = ("forward (day 54) needs fused weights: call shared.weights.fuse_projections(weights) "
             "once after load_model")


def forward(weights: ModelWeights, ids: torch.Tensor, positions: torch.Tensor, ops, attend=None,
            logits_at=None) -> torch.Tensor:
    """Logits (fp32) for token ids [T] at positions [T]: [T, vocab], or only the rows logits_at picks.

    The same model and the same `attend` and `logits_at` contract as day 16's forward. Raise
    ValueError (one line) for ids/positions that are not both [T], weights.inv_freq unset, or
    weights that fuse_projections has not fused (weights.fused). q, k, v are views of the one qkv
    output and gate, up the two halves of the gate_up output: no copies; the forward does no
    torch arithmetic of its own and no host reads.
    T > 1: per layer ops.linear multiplies exactly L.wqkv, L.wo, L.w_gate_up and L.w_down; only
    the first norm (layer 0) is a plain ops.rmsnorm; every residual add is an ops.add_rmsnorm
    with the norm after it, the last with the final norm.
    T == 1: ops.norm_linear(h, norm, eps, w) for L.wqkv with rope=(positions, weights.inv_freq,
    H + KV) (RoPE inside), for L.w_gate_up with gated=True (the SwiGLU inside) and for the
    lm_head (with the final norm); ops.linear_add(x, w, h) for L.wo and L.w_down; no rmsnorm,
    add_rmsnorm, rope or silu_mul.
    """
    if ids.dim() != 1 or positions.shape != ids.shape:
        raise ValueError(f"forward takes ids [T] and positions [T]; got {tuple(ids.shape)} and {tuple(positions.shape)}")
    if weights.inv_freq is None:
        raise ValueError("weights.inv_freq is not set: weights.inv_freq = ops.rope_frequencies(weights.config).to(device)")
    if not weights.fused:
        raise ValueError(NOT_FUSED)
    if attend is None:
        def attend(layer, q, k, v, positions):
            return ops.attention(q, k, v)
    step = decode if ids.shape[0] == 1 else prefill
    return step(weights, ids, positions, ops, attend, logits_at)


def split_qkv(qkv: torch.Tensor, c):
    """q [T, H, hd], k and v [T, KV, hd]: views of the one [T, (H + 2 KV) * hd] output."""
    T, H, KV, hd = qkv.shape[0], c.num_heads, c.num_kv_heads, c.head_dim
    return (qkv[:, :H * hd].view(T, H, hd), qkv[:, H * hd:(H + KV) * hd].view(T, KV, hd),
            qkv[:, (H + KV) * hd:].view(T, KV, hd))


def prefill(weights, ids, positions, ops, attend, logits_at):
    """T > 1 tokens: the tiled GEMM reads each weight once for many tokens; the norms ride in
    add_rmsnorm, after the residual add before them."""
    c, eps = weights.config, weights.config.rms_norm_eps
    T, H, hd, inter = ids.shape[0], c.num_heads, c.head_dim, c.intermediate_size
    h = ops.embedding(ids, weights.embed)                # the residual stream, updated in place
    x = ops.rmsnorm(h, weights.layers[0].attn_norm, eps)
    for i, L in enumerate(weights.layers):
        q, k, v = split_qkv(ops.linear(x, L.wqkv), c)
        ops.rope(q, k, positions, weights.inv_freq)      # in place, through the views
        a = attend(i, q, k, v, positions).reshape(T, H * hd)
        x = ops.add_rmsnorm(h, ops.linear(a, L.wo), L.mlp_norm, eps)
        gate_up = ops.linear(x, L.w_gate_up)             # [T, 2 * inter]
        act = ops.silu_mul(gate_up[:, :inter], gate_up[:, inter:])
        last = i == len(weights.layers) - 1
        x = ops.add_rmsnorm(h, ops.linear(act, L.w_down),
                            weights.final_norm if last else weights.layers[i + 1].attn_norm, eps)
    if logits_at is not None:
        x = x[logits_at]                                 # the lm_head is the largest matmul: skip unused rows
    return ops.linear(x, weights.lm_head).float()


def decode(weights, ids, positions, ops, attend, logits_at):
    """One token: four GEMVs per layer and nothing between them but attention. Each norm is the
    prologue of the GEMV after it, each residual add the epilogue of the GEMV before it, RoPE
    the QKV GEMV's epilogue and the SwiGLU the gate/up GEMV's."""
    c, eps = weights.config, weights.config.rms_norm_eps
    H, KV, hd = c.num_heads, c.num_kv_heads, c.head_dim
    h = ops.embedding(ids, weights.embed)                # the residual stream, updated in place
    for i, L in enumerate(weights.layers):
        qkv = ops.norm_linear(h, L.attn_norm, eps, L.wqkv, rope=(positions, weights.inv_freq, H + KV))
        q, k, v = split_qkv(qkv, c)                      # q and k already rotated
        ops.linear_add(attend(i, q, k, v, positions).reshape(1, H * hd), L.wo, h)
        act = ops.norm_linear(h, L.mlp_norm, eps, L.w_gate_up, gated=True)     # [1, inter]
        ops.linear_add(act, L.w_down, h)
    last = h if logits_at is None else h[logits_at]
    return ops.norm_linear(last, weights.final_norm, eps, weights.lm_head).float()
