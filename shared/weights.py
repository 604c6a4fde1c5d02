"""ModelWeights: the model's tensors under the engine's names (the contract type).

HF name                                   -> engine name
model.embed_tokens.weight                 -> embed            [vocab, hidden]
model.layers.{i}.input_layernorm.weight   -> layers[i].attn_norm [hidden]
model.layers.{i}.self_attn.{q,k,v,o}_proj -> layers[i].wq, wk, wv, wo   (out_features, in_features)
model.layers.{i}.post_attention_layernorm -> layers[i].mlp_norm
model.layers.{i}.mlp.{gate,up,down}_proj  -> layers[i].w_gate, w_up, w_down
model.norm.weight                         -> final_norm
lm_head.weight (or embed when tied)       -> lm_head
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from shared.config import ModelConfig

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


@dataclass
class ModelWeights:
    config: ModelConfig
    embed: torch.Tensor
    layers: list[LayerWeights]
    final_norm: torch.Tensor
    lm_head: torch.Tensor
    inv_freq: torch.Tensor | None = field(default=None)  # set by the engine from rope_frequencies

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype
