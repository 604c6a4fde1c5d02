"""Day 16 -- the Llama forward pass: embedding, decoder layers, final norm, lm_head.

Lesson: notes/day_16_forward.md        Check: pytest checkers/day_16
"""
import torch

from shared.weights import ModelWeights


def decoder_layer(h: torch.Tensor, index: int, weights: ModelWeights, positions: torch.Tensor, ops,
                  attend) -> torch.Tensor:
    """One pre-norm block: h + attention(norm(h)), then + mlp(norm(h)). h [T, hidden] -> [T, hidden]."""
    c, L = weights.config, weights.layers[index]
    T = h.shape[0]
    x = ops.rmsnorm(h, L.attn_norm, c.rms_norm_eps)
    q = ops.linear(x, L.wq).view(T, c.num_heads, c.head_dim)
    k = ops.linear(x, L.wk).view(T, c.num_kv_heads, c.head_dim)
    v = ops.linear(x, L.wv).view(T, c.num_kv_heads, c.head_dim)
    ops.rope(q, k, positions, weights.inv_freq)          # in place: positions, not indices 0..T-1
    a = attend(index, q, k, v, positions)                # [T, H, hd]; a KV cache plugs in here
    h = h + ops.linear(a.reshape(T, c.num_heads * c.head_dim), L.wo)
    return h + ops.mlp(ops.rmsnorm(h, L.mlp_norm, c.rms_norm_eps), L.w_gate, L.w_up, L.w_down, ops)


def forward(weights: ModelWeights, ids: torch.Tensor, positions: torch.Tensor, ops, attend=None,
            logits_at=None) -> torch.Tensor:
    """Logits (fp32) for token ids [T] at positions [T]: [T, vocab], or only the rows logits_at picks.

    attend(layer, q, k, v, positions) -> [T, H, hd] is how the engine adds a KV cache without
    this function knowing; None means plain causal attention over the tokens given.
    logits_at (a slice like slice(-1, None), or an index tensor) selects the rows of the last
    hidden state that go through the final norm and the lm_head: a prefill needs only its last.
    """
    if ids.dim() != 1 or positions.shape != ids.shape:
        raise ValueError(f"forward takes ids [T] and positions [T]; got {tuple(ids.shape)} and {tuple(positions.shape)}")
    if weights.inv_freq is None:
        raise ValueError("weights.inv_freq is not set: weights.inv_freq = ops.rope_frequencies(weights.config).to(device)")
    if attend is None:
        def attend(layer, q, k, v, positions):
            return ops.attention(q, k, v)
    h = ops.embedding(ids, weights.embed)
    for i in range(len(weights.layers)):
        h = decoder_layer(h, i, weights, positions, ops, attend)
    if logits_at is not None:
        h = h[logits_at]                                 # the lm_head is the largest matmul: skip unused rows
    h = ops.rmsnorm(h, weights.final_norm, weights.config.rms_norm_eps)
    return ops.linear(h, weights.lm_head).float()
