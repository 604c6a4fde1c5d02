"""Day 42 -- the engine's `--quant w8a16`: quantize the model's matrices once, at load time.

A decode step of the fused forward (day 54) multiplies four matrices per layer -- wqkv, wo,
w_gate_up, w_down -- and the lm_head. Each becomes ONE QuantWeight (day 40), so the GEMV that
reads it reads int8. wqkv and w_gate_up are quantized whole, after fuse_projections: the kernel
reads one matrix with one set of scales (per tensor, a single scale for q, k and v together),
and wq, wk, wv, w_gate, w_up are re-pointed to row views of it (`QuantWeight.rows`), so day 16's
unfused forward reads the same bytes and memory is not doubled. Norms and the embedding stay in
the model dtype; the lm_head is quantized unless asked not to (a tied head keeps the embedding
table for the lookup, which reads one row).

Lesson: notes/day_42_int8_fast.md ("Quantizing the model")        Check: pytest checkers/day_42
"""
from shared.quant import QuantWeight

NOT_FUSED = ("quantize_weights needs fused weights: call shared.weights.fuse_projections(weights) first, "
             "so wqkv and w_gate_up are quantized whole")


def quantize_fused(quantize, whole, parts):
    """(the fused matrix quantized once, its parts as row views of it, in order)."""
    qw = quantize(whole)
    views, start = [], 0
    for p in parts:
        views.append(qw.rows(start, start + p.shape[0]))
        start += p.shape[0]
    return qw, views


def quantize_weights(weights, ops, *, scheme: str = "symmetric", granularity: str = "channel",
                     group_size: int = 128, head: bool = True):
    """Quantize a fused model's matrices to int8 IN PLACE with ops.quantize_int8; returns `weights`.

    Per layer: wqkv and w_gate_up become one QuantWeight each and wq, wk, wv, w_gate, w_up row
    views of them; wo and w_down QuantWeights. The lm_head too when `head`. scheme, granularity
    and group_size go to ops.quantize_int8 unchanged. A matrix that already is a QuantWeight is
    left alone, so a second call changes nothing. Weights that fuse_projections has not fused:
    ValueError (one line), before anything is quantized.
    """
    if not weights.fused:
        raise ValueError(NOT_FUSED)

    def quantize(w):
        if isinstance(w, QuantWeight):
            return w
        return ops.quantize_int8(w, scheme=scheme, granularity=granularity, group_size=group_size)

    for L in weights.layers:
        L.wqkv, (L.wq, L.wk, L.wv) = quantize_fused(quantize, L.wqkv, [L.wq, L.wk, L.wv])
        L.w_gate_up, (L.w_gate, L.w_up) = quantize_fused(quantize, L.w_gate_up, [L.w_gate, L.w_up])
        L.wo = quantize(L.wo)
        L.w_down = quantize(L.w_down)
    if head:
        weights.lm_head = quantize(weights.lm_head)
    return weights
