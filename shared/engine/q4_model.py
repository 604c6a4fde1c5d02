"""Day 47's two 4-bit modes at load time: every matrix of the fused model becomes a Q4Weight
(shared/q4.py), once, and the forward pass dispatches on the type.

- `--quant w4a16 [--quant-group G]`: the loaded fp16 matrices quantized to Q4_1-style groups
  (quantize_q4: asymmetric, 4 bits, fp16 d and m per group of G, 32 by default); the lm_head too
  unless --no-quant-head.
- `--quant gguf`: the model folder's GGUF file (SmolLM2's Q4_1 .gguf, kept there by `tinyinfer
  model prepare`) read as it is: each layer matrix's Q4_1 blocks become a Q4Weight without a
  requantization or an fp16 copy (llama.cpp's q/k row order undone by permuting whole rows of
  blocks; rows hold whole blocks, so nothing inside a block moves). Tensors that are not layer
  matrices (the Q8_0 token embedding, tied to the lm_head in SmolLM2, and the F32 norms) stay as
  the engine loaded them from the prepared folder. A layer matrix of another block type is
  refused with the types found.
"""
from __future__ import annotations

from pathlib import Path

import torch

from shared.q4 import Q4Weight, from_gguf_blocks, quantize_q4

SUPPORTED = ("Q4_1",)
GGUF_MATRIX = {"attn_q": "wq", "attn_k": "wk", "attn_v": "wv", "attn_output": "wo",
               "ffn_gate": "w_gate", "ffn_up": "w_up", "ffn_down": "w_down"}


def gguf_file(model_dir) -> Path | None:
    """The model folder's .gguf (None if it has none; the first by name if several)."""
    files = sorted(Path(model_dir).glob("*.gguf"))
    return files[0] if files else None


def check_gguf(model_dir) -> Path:
    """--quant gguf needs a GGUF in the model folder: one-line ValueError before any kernel."""
    path = gguf_file(model_dir)
    if path is None:
        raise ValueError(f"--quant gguf reads the model's GGUF file, and {model_dir} has none: re-run "
                         "`tinyinfer model prepare --force` (it keeps the .gguf), copy the .gguf into the folder, "
                         "or use --quant w4a16 (the same 4-bit groups, quantized from the fp16 weights)")
    return path


def cat_rows(parts: list[Q4Weight]) -> tuple[Q4Weight, list[Q4Weight]]:
    """The rows of Q4Weights in one (new, contiguous) Q4Weight and each part as a row view of it."""
    whole = Q4Weight(torch.cat([p.qs for p in parts]), torch.cat([p.d for p in parts]),
                     torch.cat([p.m for p in parts]), parts[0].group_size, parts[0].dtype)
    views, start = [], 0
    for p in parts:
        views.append(whole.rows(start, start + p.shape[0]))
        start += p.shape[0]
    return whole, views


def _set(weights, index: int, layer: dict) -> None:
    """Point layer `index`'s matrices at Q4Weights: wqkv, w_gate_up whole, the parts row views of them
    (the fused fp16 ones, if any, are dropped: nothing needs fusing first)."""
    L = weights.layers[index]
    L.wqkv, (L.wq, L.wk, L.wv) = cat_rows([layer["wq"], layer["wk"], layer["wv"]])
    L.w_gate_up, (L.w_gate, L.w_up) = cat_rows([layer["w_gate"], layer["w_up"]])
    L.wo, L.w_down = layer["wo"], layer["w_down"]


def quantize_model(weights, group_size: int = 32, head: bool = True):
    """--quant w4a16: every matrix of the model to a Q4Weight in place; returns weights."""
    for i, L in enumerate(weights.layers):
        _set(weights, i, {name: quantize_q4(getattr(L, name), group_size) for name in GGUF_MATRIX.values()})
    if head:
        weights.lm_head = quantize_q4(weights.lm_head, group_size)
    return weights


def load_gguf(weights, path, device=None):
    """--quant gguf: the layer matrices from the GGUF's own Q4_1 blocks, in place; returns weights.
    One-line ValueErrors: a layer matrix of another type (the types found, the supported ones), a
    GGUF whose layers or shapes do not match the loaded model."""
    import numpy as np
    from gguf import GGUFReader
    from shared.models import _unpermute

    r = GGUFReader(str(path))
    c = weights.config
    device = weights.embed.device if device is None else device
    layers: dict[int, dict] = {}
    bad: dict[str, list[str]] = {}
    for t in r.tensors:
        parts = t.name.split(".")
        if parts[0] != "blk" or parts[2] not in GGUF_MATRIX:
            continue                               # embedding, output, norms: as the engine loaded them
        kind = t.tensor_type.name
        if kind not in SUPPORTED:
            bad.setdefault(kind, []).append(t.name)
            continue
        raw = np.asarray(t.data)
        if parts[2] == "attn_q":
            raw = _unpermute(raw, c.num_heads)
        elif parts[2] == "attn_k":
            raw = _unpermute(raw, c.num_kv_heads)
        w = from_gguf_blocks(torch.from_numpy(np.array(raw, copy=True)), weights.dtype)   # the file is read-only
        layers.setdefault(int(parts[1]), {})[GGUF_MATRIX[parts[2]]] = w
    if bad:
        found = ", ".join(f"{k} ({len(v)} matrices, e.g. {v[0]})" for k, v in sorted(bad.items()))
        raise ValueError(f"{path}: --quant gguf runs layer matrices in {' / '.join(SUPPORTED)} blocks only; this file "
                         f"has {found}: use --quant w4a16, or a {SUPPORTED[0]} GGUF")
    if sorted(layers) != list(range(len(weights.layers))) or \
            any(set(v) != set(GGUF_MATRIX.values()) for v in layers.values()):
        raise ValueError(f"{path}: its layers do not match the model ({len(layers)} in the GGUF, "
                         f"{len(weights.layers)} loaded): is it the GGUF of this model?")
    for i, parts in layers.items():
        L = weights.layers[i]
        for name, w in parts.items():
            if tuple(w.shape) != tuple(getattr(L, name).shape):
                raise ValueError(f"{path}: layer {i} {name} is {tuple(w.shape)} in the GGUF, "
                                 f"{tuple(getattr(L, name).shape)} in the model: is it the GGUF of this model?")
            parts[name] = Q4Weight(w.qs.to(device), w.d.to(device), w.m.to(device), w.group_size, w.dtype)
        _set(weights, i, parts)
    return weights
