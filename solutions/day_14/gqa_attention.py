"""Day 14 -- causal grouped-query attention for all heads in one launch.

Lesson: notes/day_14_gqa_attention.md        Check: pytest checkers/day_14
"""
import math

import numpy as np
import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

MAX_SHARED_BYTES = 48 * 1024  # dynamic shared memory a block may ask for without opting in


@cuda.jit(device=True)
def block_max(red, base, tid, value):
    """Max of `value` over the block, through red[base : base + blockDim] (a power of two)."""
    red[base + tid] = value
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if tid < half:
            red[base + tid] = max(red[base + tid], red[base + tid + half])
        cuda.syncthreads()
        half //= 2
    result = red[base]
    cuda.syncthreads()        # all have read the result before the buffer is reused
    return result


@cuda.jit(device=True)
def block_sum(red, base, tid, value):
    """Sum of `value` over the block, like block_max."""
    red[base + tid] = value
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if tid < half:
            red[base + tid] += red[base + tid + half]
        cuda.syncthreads()
        half //= 2
    result = red[base]
    cuda.syncthreads()
    return result


@cuda.jit
def gqa_attention_kernel(q, k, v, out, scale, group):
    """One block per (query row t, query head h); it reads KV head h // group.

    Dynamic shared memory (fp32): [ q row (hd) | reduction buffer (blockDim) | scores (S) ].
    """
    t = cuda.blockIdx.x
    h = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x
    hd = q.shape[2]
    kvh = h // group                                   # GQA: `group` query heads share a KV head
    n_keys = k.shape[0] - q.shape[0] + t + 1           # causal, aligned to the end: keys 0..S-T+t
    smem = cuda.shared.array(0, float32)
    red = hd
    p = hd + nthreads

    for c in range(tid, hd, nthreads):                 # stage the scaled query row once
        smem[c] = float32(q[t, h, c]) * scale
    cuda.syncthreads()

    m = float32(-math.inf)
    for j in range(tid, n_keys, nthreads):             # scores: one key per thread, strided
        acc = float32(0.0)
        for c in range(hd):
            acc += smem[c] * float32(k[j, kvh, c])
        smem[p + j] = acc
        m = max(m, acc)
    m = block_max(smem, red, tid, m)

    total = float32(0.0)
    for j in range(tid, n_keys, nthreads):             # unnormalized probabilities
        e = math.exp(smem[p + j] - m)
        smem[p + j] = e
        total += e
    total = block_sum(smem, red, tid, total)           # its barriers also publish smem[p:]

    for c in range(tid, hd, nthreads):                 # out = P @ V, one output element per thread
        acc = float32(0.0)
        for j in range(n_keys):
            acc += smem[p + j] * float32(v[j, kvh, c])
        out[t, h, c] = acc / total


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_size: int = 64) -> torch.Tensor:
    """Causal grouped-query attention, every head in one launch.

    q [T, H, hd], k and v [S, KV, hd] with H % KV == 0 and T <= S (any strides: the engine
    passes views of its KV cache). Query i sits at position S - T + i. Scale 1/sqrt(hd), fp32
    math. `block_size` threads (a power of two) per (row, head). Returns [T, H, hd] in q's dtype.
    """
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"attention takes q [T, H, hd], k and v [S, KV, hd]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    T, H, hd = q.shape
    S, KV = k.shape[:2]
    if k.shape != (S, KV, hd) or v.shape != k.shape:
        raise ValueError(f"k and v must both be [S, KV, {hd}]; got {tuple(k.shape)} and {tuple(v.shape)}")
    if KV == 0 or H % KV:
        raise ValueError(f"{H} query heads cannot be split evenly over {KV} KV heads: H % KV must be 0")
    if T > S:
        raise ValueError(f"{T} queries but only {S} keys: every query needs its own key (T <= S)")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype}): cast them to one dtype")
    if block_size & (block_size - 1) or not 0 < block_size <= 1024:
        raise ValueError(f"block_size={block_size}: use a power of two up to 1024")
    shared_bytes = 4 * (hd + block_size + S)
    if shared_bytes > MAX_SHARED_BYTES:
        raise ValueError(f"{S} keys need {shared_bytes} bytes of shared memory (> {MAX_SHARED_BYTES}): "
                         "this attention keeps a row of scores on chip; use a shorter context")
    gpu.require_device(q, k, v)
    out = torch.empty(T, H, hd, dtype=q.dtype, device=q.device)
    if T and H:
        gpu.launch(gqa_attention_kernel, (T, H), block_size, q, k, v, out, np.float32(1.0 / math.sqrt(hd)), H // KV,
                   shared_bytes=shared_bytes)
    return out
