"""Day 07 -- from a Hugging Face model folder to ModelConfig + ModelWeights.

config.json -> ModelConfig (classic keys or transformers 5's `rope_parameters`);
*.safetensors -> tensors renamed to the engine's names (shared/weights.py), every shape checked
against the config, cast to the requested dtype, moved to the device, lm_head tied if asked.

Lesson: notes/day_07_load_model.md        Check: pytest checkers/day_07
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from shared.config import ModelConfig, RopeScaling
from shared.weights import LAYER_NAMES, LayerWeights, ModelWeights
from solutions.day_06 import load_safetensors

REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def load_config(model_dir) -> ModelConfig:
    """Parse config.json (both the classic keys and transformers 5's `rope_parameters`)."""
    path = Path(model_dir) / "config.json"
    c = _read_config(path)
    missing = [k for k in REQUIRED if k not in c]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    for k in REQUIRED + ("num_key_value_heads", "head_dim", "max_position_embeddings"):
        v = c.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{path}: {k} must be a positive integer, got {v!r}")
    heads = c["num_attention_heads"]
    kv_heads = c.get("num_key_value_heads") or heads
    if c.get("head_dim") is None and c["hidden_size"] % heads:
        raise ValueError(f"{path}: hidden_size {c['hidden_size']} is not a multiple of num_attention_heads {heads}; give head_dim")
    if heads % kv_heads:
        raise ValueError(f"{path}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    theta, scaling = _rope(path, c)
    eos = c.get("eos_token_id")
    return ModelConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_layers=c["num_hidden_layers"], num_heads=heads, num_kv_heads=kv_heads,
        head_dim=c.get("head_dim") or c["hidden_size"] // heads,
        rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)), rope_theta=theta,
        max_position_embeddings=c.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(c.get("tie_word_embeddings", False)), rope_scaling=scaling,
        bos_token_id=c.get("bos_token_id"),
        eos_token_ids=() if eos is None else tuple(eos) if isinstance(eos, list) else (eos,))


def _read_config(path: Path) -> dict:
    """config.json as a dict, refusing anything that is not a Llama: Gemma, Qwen2, Mistral...
    name their tensors as Llama does, so they would load and silently generate nonsense."""
    try:
        c = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(c, dict):
        raise ValueError(f"{path}: must be a JSON object, got {type(c).__name__}")
    kind, archs = c.get("model_type", "llama"), c.get("architectures") or ["LlamaForCausalLM"]
    if kind != "llama" or archs != ["LlamaForCausalLM"]:
        raise ValueError(f"{path}: model_type {kind!r}, architectures {archs}: not a Llama model "
                         "(tinyinfer runs LlamaForCausalLM only)")
    return c


def _rope(path: Path, c: dict) -> tuple[float, RopeScaling | None]:
    """(rope_theta, llama3 scaling or None) from `rope_parameters` (transformers 5) or the classic keys."""
    params = c.get("rope_parameters") or {}
    theta = float(params.get("rope_theta", c.get("rope_theta", 10000.0)))
    scaling = c.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise ValueError(f"{path}: rope scaling {kind!r} is not supported (only 'llama3')")
    return theta, RopeScaling(float(scaling["factor"]), float(scaling["low_freq_factor"]),
                              float(scaling["high_freq_factor"]), int(scaling["original_max_position_embeddings"]))


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape, for every tensor the model needs (lm_head only when untied)."""
    c = config
    hidden, q, kv = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    layer = {"input_layernorm.weight": (hidden,), "self_attn.q_proj.weight": (q, hidden),
             "self_attn.k_proj.weight": (kv, hidden), "self_attn.v_proj.weight": (kv, hidden),
             "self_attn.o_proj.weight": (hidden, q), "post_attention_layernorm.weight": (hidden,),
             "mlp.gate_proj.weight": (c.intermediate_size, hidden), "mlp.up_proj.weight": (c.intermediate_size, hidden),
             "mlp.down_proj.weight": (hidden, c.intermediate_size)}
    shapes = {"model.embed_tokens.weight": (c.vocab_size, hidden), "model.norm.weight": (hidden,)}
    shapes.update({f"model.layers.{i}.{n}": s for i in range(c.num_layers) for n, s in layer.items()})
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, hidden)
    return shapes


def load_model(model_dir, dtype: torch.dtype = torch.float32, device="cpu") -> ModelWeights:
    """Read config + *.safetensors, rename to engine names, cast, move; tie lm_head if asked."""
    model_dir = Path(model_dir)
    config = load_config(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors files")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        for name, t in load_safetensors(f).items():
            if name in tensors:
                raise ValueError(f"{model_dir}: tensor {name} is in more than one file ({f.name})")
            tensors[name] = t

    want = expected_shapes(config)
    ignored = {n for n in tensors if n.endswith("rotary_emb.inv_freq")}
    if config.tie_word_embeddings:
        ignored.add("lm_head.weight")  # some checkpoints store the tied copy too
    missing = [n for n in want if n not in tensors]
    extra = [n for n in tensors if n not in want and n not in ignored]
    if missing:
        raise KeyError(f"{model_dir}: missing tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if extra:
        raise ValueError(f"{model_dir}: unexpected tensor {extra[0]} (not part of a {config.num_layers}-layer Llama)")
    for name, shape in want.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{model_dir}: tensor {name} has shape {tuple(tensors[name].shape)}, the config says {shape}")

    def take(name):
        return tensors[name].to(device=device, dtype=dtype).contiguous()

    embed = take("model.embed_tokens.weight")
    layers = [LayerWeights(**{eng: take(f"model.layers.{i}.{hf}") for hf, eng in LAYER_NAMES.items()})
              for i in range(config.num_layers)]
    lm_head = embed if config.tie_word_embeddings else take("lm_head.weight")
    return ModelWeights(config, embed, layers, take("model.norm.weight"), lm_head)
