"""ModelWeights: the model's tensors under the engine's names (the contract type).

HF name                                   -> engine name
model.embed_tokens.weight                 -> embed            [vocab, hidden]
model.layers.{i}.input_layernorm.weight   -> layers[i].attn_norm [hidden]
model.layers.{i}.self_attn.{q,k,v,o}_proj -> layers[i].wq, wk, wv, wo   (out_features, in_features)
model.layers.{i}.post_attention_layernorm -> layers[i].mlp_norm
model.layers.{i}.mlp.{gate,up,down}_proj  -> layers[i].w_gate, w_up, w_down
model.norm.weight                         -> final_norm
lm_head.weight (or embed when tied)       -> lm_head

fuse_projections(weights) (day 54) adds, per layer, wqkv = [wq; wk; wv] and w_gate_up = [w_gate; w_up]
and re-points wq, wk, wv, w_gate, w_up to row slices of them: one GEMV instead of three (two).
A matrix may be a QuantWeight (shared/quant.py) once day 42's quantize_weights has run: it
quantizes the fused matrices whole and re-points the parts to `QuantWeight.rows` views of them,
which fuse_projections recognises and leaves alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from shared.config import ModelConfig
from shared.q4 import Q4Weight
from shared.quant import QuantWeight

LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm",
    "self_attn.q_proj.weight": "wq",
    "self_attn.k_proj.weight": "wk",
    "self_attn.v_proj.weight": "wv",
    "self_attn.o_proj.weight": "wo",
    "post_attention_layernorm.weight": "mlp_norm",
    "mlp.gate_proj.weight": "w_gate",
    "mlp.up_proj.weight": "w_up",
    "mlp.down_proj.weight": "w_down",
}


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor
    wq: torch.Tensor
    wk: torch.Tensor
    wv: torch.Tensor
    wo: torch.Tensor
    mlp_norm: torch.Tensor
    w_gate: torch.Tensor
    w_up: torch.Tensor
    w_down: torch.Tensor
    wqkv: torch.Tensor | None = None        # [(H + 2 KV) * hd, hidden]: wq, wk, wv are row slices (day 54)
    w_gate_up: torch.Tensor | None = None   # [2 * inter, hidden]: w_gate, w_up are row slices (day 54)


@dataclass
class ModelWeights:
    config: ModelConfig
    embed: torch.Tensor
    layers: list[LayerWeights]
    final_norm: torch.Tensor
    lm_head: torch.Tensor
    inv_freq: torch.Tensor | None = field(default=None)  # set by the engine from rope_frequencies
    smoothing: dict | None = field(default=None)         # --quant w8a8-smooth: what day 46 computed (engine/smooth.py)

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def fused(self) -> bool:
        """Whether every layer has its concatenated projections (fuse_projections ran)."""
        return all(L.wqkv is not None and L.w_gate_up is not None for L in self.layers)


def _views_of(whole, parts: list) -> bool:
    """Whether parts are, in order, consecutive row slices of `whole` (same storage, same data);
    for a QuantWeight (Q4Weight), whether the parts' int8 values (nibble bytes) are row slices of its own."""
    if isinstance(whole, QuantWeight):
        return all(isinstance(p, QuantWeight) for p in parts) and _views_of(whole.q, [p.q for p in parts])
    if isinstance(whole, Q4Weight):            # day 47's 4-bit weights: the nibble bytes
        return all(isinstance(p, Q4Weight) for p in parts) and _views_of(whole.qs, [p.qs for p in parts])
    if whole is None or any(isinstance(p, (QuantWeight, Q4Weight)) for p in parts) \
            or sum(p.shape[0] for p in parts) != whole.shape[0]:
        return False
    row, start = whole.stride(0) * whole.element_size(), whole.data_ptr()
    for p in parts:
        if (p.untyped_storage().data_ptr() != whole.untyped_storage().data_ptr() or p.data_ptr() != start
                or p.shape[1:] != whole.shape[1:] or p.stride() != whole.stride() or p.dtype != whole.dtype):
            return False
        start += p.shape[0] * row
    return True


def _fuse(parts: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The rows of parts in one new contiguous matrix, and each part as a row-slice view of it."""
    if any(isinstance(p, (QuantWeight, Q4Weight)) for p in parts):
        raise ValueError("fuse_projections: a projection is quantized on its own; quantize after fusing "
                         "(day 42's quantize_weights quantizes wqkv and w_gate_up whole)")
    whole = torch.cat(parts, dim=0)
    views, start = [], 0
    for p in parts:
        views.append(whole[start:start + p.shape[0]])   # rows of a contiguous matrix: contiguous
        start += p.shape[0]
    return whole, views


def fuse_projections(weights: ModelWeights) -> ModelWeights:
    """Concatenate each layer's q/k/v and gate/up weights once (at load time), in place.

    L.wqkv = [wq; wk; wv] ([(H + 2 KV) * hd, hidden]) and L.w_gate_up = [w_gate; w_up]
    ([2 * inter, hidden]); wq, wk, wv, w_gate, w_up become row-slice views of them, so every
    earlier day keeps working and the memory does not double (the separate tensors are freed
    once nothing else holds them). Idempotent: a layer whose views already point into its fused
    tensor is left alone; one whose wq/wk/wv (or w_gate/w_up) were replaced is fused again.
    Returns `weights` (the same object).
    """
    for L in weights.layers:
        qkv = [L.wq, L.wk, L.wv]
        if not _views_of(L.wqkv, qkv):
            L.wqkv, (L.wq, L.wk, L.wv) = _fuse(qkv)
        gate_up = [L.w_gate, L.w_up]
        if not _views_of(L.w_gate_up, gate_up):
            L.w_gate_up, (L.w_gate, L.w_up) = _fuse(gate_up)
    return weights
