"""Reference loaders: safetensors files, config.json -> ModelConfig, weights -> ModelWeights."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from shared.config import ModelConfig, RopeScaling
from shared.weights import LAYER_NAMES, LayerWeights, ModelWeights


def load_safetensors(path) -> dict[str, torch.Tensor]:
    """{name: tensor} from a .safetensors file (CPU tensors, file dtypes)."""
    from safetensors.torch import load_file
    return load_file(str(path))


def load_config(model_dir) -> ModelConfig:
    """Parse config.json (both the classic keys and transformers 5's `rope_parameters`)."""
    path = Path(model_dir) / "config.json"
    c = json.loads(path.read_text())
    rope = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    theta = rope.get("rope_theta", c.get("rope_theta", 10000.0))
    rs = None
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind != "llama3":
            raise ValueError(f"{path}: rope scaling {kind!r} is not supported (only 'llama3')")
        rs = RopeScaling(float(scaling["factor"]), float(scaling["low_freq_factor"]),
                         float(scaling["high_freq_factor"]), int(scaling["original_max_position_embeddings"]))
    eos = c.get("eos_token_id")
    eos = () if eos is None else tuple(eos) if isinstance(eos, list) else (eos,)
    heads = c["num_attention_heads"]
    return ModelConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"], num_layers=c["num_hidden_layers"],
        num_heads=heads, num_kv_heads=c.get("num_key_value_heads") or heads,
        head_dim=c.get("head_dim") or c["hidden_size"] // heads,
        rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)), rope_theta=float(theta),
        max_position_embeddings=c.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(c.get("tie_word_embeddings", False)), rope_scaling=rs,
        bos_token_id=c.get("bos_token_id"), eos_token_ids=eos)


def load_model(model_dir, dtype: torch.dtype = torch.float32, device="cpu") -> ModelWeights:
    """Read config + *.safetensors, rename to engine names, cast, move; tie lm_head if asked."""
    model_dir = Path(model_dir)
    config = load_config(model_dir)
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_safetensors(f))
    if not tensors:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors files")

    def take(name):
        if name not in tensors:
            raise KeyError(f"{model_dir}: missing tensor {name}")
        return tensors.pop(name).to(device=device, dtype=dtype)

    embed = take("model.embed_tokens.weight")
    layers = [LayerWeights(**{eng: take(f"model.layers.{i}.{hf}") for hf, eng in LAYER_NAMES.items()})
              for i in range(config.num_layers)]
    final_norm = take("model.norm.weight")
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
        lm_head = embed
    else:
        lm_head = take("lm_head.weight")
    extra = [n for n in tensors if not n.endswith("rotary_emb.inv_freq")]
    if extra:
        raise KeyError(f"{model_dir}: unexpected tensors {extra[:5]}")
    return ModelWeights(config, embed, layers, final_norm, lm_head)
