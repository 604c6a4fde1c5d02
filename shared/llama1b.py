"""`--model llama-1b`: a seeded random model with Llama-3.2-1B's exact shapes, made on the spot.

The real weights are gated, but decode speed depends only on the shapes (bytes per token), so a
random model of the same shape measures the same thing anywhere. Tensors are written straight to
safetensors in bf16 (2.5 GB) with a seeded generator; HF transformers loads the same folder for
the baseline. It borrows the tiny model's byte-level tokenizer: benchmarks feed token ids.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

DIR = "llama-1b-random"


def config_dict() -> dict:
    """meta-llama/Llama-3.2-1B's config.json, shapes and RoPE included."""
    return dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128256, hidden_size=2048,
                intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                head_dim=64, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=131072,
                tie_word_embeddings=True, hidden_act="silu", torch_dtype="bfloat16",
                rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                bos_token_id=1, eos_token_id=2, pad_token_id=2)


def make(out: Path, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm
    from shared.models import _ready, _write_tiny_tokenizer

    c = config_dict()
    D, F, hd = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    H, KV = c["num_attention_heads"], c["num_key_value_heads"]
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.02):
        return (torch.randn(*shape, generator=g) * std).to(torch.bfloat16)

    def norm():
        return (1 + 0.1 * torch.randn(D, generator=g)).to(torch.bfloat16)

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        staging = Path(tmp) / DIR
        staging.mkdir()
        tensors = {"model.embed_tokens.weight": rand(c["vocab_size"], D), "model.norm.weight": norm()}
        for i in tqdm(range(c["num_hidden_layers"]), desc="llama-1b: random weights", leave=False):
            p = f"model.layers.{i}."
            tensors.update({p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm(),
                            p + "self_attn.q_proj.weight": rand(H * hd, D), p + "self_attn.k_proj.weight": rand(KV * hd, D),
                            p + "self_attn.v_proj.weight": rand(KV * hd, D), p + "self_attn.o_proj.weight": rand(D, H * hd),
                            p + "mlp.gate_proj.weight": rand(F, D), p + "mlp.up_proj.weight": rand(F, D),
                            p + "mlp.down_proj.weight": rand(D, F)})
        save_file(tensors, staging / "model.safetensors", metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(c, indent=2))
        _write_tiny_tokenizer(staging)
        (staging / ".complete").write_text(f"seed={seed}\n")
        if not _ready(out):
            shutil.rmtree(out, ignore_errors=True)
            os.replace(staging, out)
    return out
