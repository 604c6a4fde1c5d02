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
    # TODO(day 54): validate as the docstring says, then one function per case: a prefill
    # (T > 1: linear, rope, add_rmsnorm as in the lesson) and a decode step (T == 1: norm_linear
    # with rope= for wqkv and gated=True for w_gate_up, linear_add for wo and w_down, norm_linear
    # with the final norm for the lm_head). q, k, v are views of the qkv output in both.
    raise NotImplementedError("Day 54: forward is not written yet -- edit days/day_54/forward.py "
                              "(lesson: notes/day_54_fusion.md)")
