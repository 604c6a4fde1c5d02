"""Day 44 -- the quantizing paged KV write: day 29's scatter, one int8 row and one fp16 scale per
(token, KV head).

Lesson: notes/day_44_kv_int8.md        Check: pytest checkers/day_44

Layout (one layer): pools k_pool, v_pool [num_blocks, KV, block_size, hd] int8; scales k_scale,
v_scale [num_blocks, KV, block_size] fp16, the row at [b, h, o] scaled by the scale at [b, h, o].
Token t goes to slot = slot_mapping[t]: block slot // block_size, offset slot % block_size (day
28's slots); slot < 0 is padding and writes nothing. The rule (shared/reference/kv_int8.py):

    scale = fp16(max |x| / 127);  s = float32(scale);  q = clamp(rint(x / s), -127, 127)  (0 if s == 0)

A row's scale needs all of its hd values, so a thread owns the key row and the value row of one
token and head: for each, one pass for the maximum and one to round. A decode step writes KV
rows of each per layer, so the write is never what a step waits for.
"""
from __future__ import annotations

import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32, int32

from ..day_40.quantize import rint   # given on day 40: round half to even in float32, as torch.round

QMAX = 127
FLOATS = (torch.float16, torch.float32)


@cuda.jit(device=True)
def quantize_row(pool, scales, src, t, h, b, o):
    """src[t, h, :] -> pool[b, h, o, :] (int8) and scales[b, h, o] (fp16), by the rule above."""
    # TODO(day 44): 1. amax = max over d of |float32(src[t, h, d])| (hd = src.shape[2]), in float32.
    #   2. store amax / float32(QMAX) into scales[b, h, o] (the store rounds it to fp16), then READ IT BACK as
    #      float32: s is the scale every reader will see.
    #   3. for each d: qi = int32(rint(x / s)) when s > 0, else 0; clamp qi to [-QMAX, QMAX] (the rounded
    #      scale may be below amax / 127: x / s can pass 127.5) and store it into pool[b, h, o, d].
    pass


@cuda.jit
def kv_write_int8_kernel(k_pool, v_pool, k_scale, v_scale, k, v, slot_mapping):
    """One thread per (token t, KV head h): quantize k[t, h] and v[t, h] into slot slot_mapping[t]."""
    i = cuda.grid(1)
    tokens, heads = k.shape[0], k.shape[1]
    if i < tokens * heads:
        h = i % heads
        t = i // heads
        slot = slot_mapping[t]
        block_size = k_pool.shape[2]
        if 0 <= slot < k_pool.shape[0] * block_size:     # padding (< 0) and out-of-pool slots are skipped
            b = slot // block_size
            o = slot % block_size
            quantize_row(k_pool, k_scale, k, t, h, b, o)
            quantize_row(v_pool, v_scale, v, t, h, b, o)


def paged_kv_write_int8(k_pool: torch.Tensor, v_pool: torch.Tensor, k_scale: torch.Tensor, v_scale: torch.Tensor,
                        k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor, *, threads: int = 128) -> None:
    """Quantize k, v [T, KV, hd] (fp16/fp32) into one layer's int8 pools [num_blocks, KV, block_size,
    hd] and fp16 scales [num_blocks, KV, block_size], token t at slot slot_mapping[t] (int32 [T] on
    the device, read in the kernel; < 0 or past the pool: not written). `threads` per block."""
    if k_pool.dim() != 4 or k_pool.shape != v_pool.shape or k_pool.dtype != torch.int8 or v_pool.dtype != torch.int8:
        raise ValueError(f"paged_kv_write_int8: pools must both be int8 [num_blocks, KV, block_size, hd], got "
                         f"{k_pool.dtype} {tuple(k_pool.shape)} and {v_pool.dtype} {tuple(v_pool.shape)}")
    nb, kv, bs, hd = k_pool.shape
    for name, s in (("k_scale", k_scale), ("v_scale", v_scale)):
        if s.dtype != torch.float16 or tuple(s.shape) != (nb, kv, bs):
            raise ValueError(f"paged_kv_write_int8: {name} must be float16 [num_blocks, KV, block_size] = "
                             f"{[nb, kv, bs]}, got {s.dtype} {tuple(s.shape)}")
    if k.dim() != 3 or k.shape != v.shape or k.shape[1] != kv or k.shape[2] != hd:
        raise ValueError(f"paged_kv_write_int8: k and v must be [T, KV={kv}, hd={hd}], got {tuple(k.shape)} and "
                         f"{tuple(v.shape)}")
    if k.dtype not in FLOATS or v.dtype != k.dtype:
        raise ValueError(f"paged_kv_write_int8: k and v must be fp16 or fp32 (one dtype), got {k.dtype}/{v.dtype}")
    if slot_mapping.dtype != torch.int32 or slot_mapping.shape != (k.shape[0],):
        raise ValueError(f"paged_kv_write_int8: slot_mapping must be int32 [T={k.shape[0]}], got "
                         f"{slot_mapping.dtype} {tuple(slot_mapping.shape)}")
    if threads < 1:
        raise ValueError(f"paged_kv_write_int8: threads must be >= 1, got {threads}")
    gpu.require_device(k_pool, v_pool, k_scale, v_scale, k, v, slot_mapping)
    # TODO(day 44): launch kv_write_int8_kernel with one thread per (token, KV head) -- T * KV of them, `threads`
    #   per block (gpu.launch, gpu.cdiv) -- and nothing when T is 0. Then delete the raise below.
    raise NotImplementedError("Day 44: paged_kv_write_int8 is not written yet -- edit days/day_44/kv_write_int8.py "
                              "(quantize_row, then the launch; lesson: notes/day_44_kv_int8.md)")
