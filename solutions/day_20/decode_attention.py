"""Day 20 -- decode attention: one new query per head against the KV cache.

Lesson: notes/day_20_decode_attention.md        Check: pytest checkers/day_20
"""
import math

import numpy as np
import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

MAX_HEAD_DIM = 256      # q is staged in shared memory: a compile-time size
MAX_BLOCK = 1024


@cuda.jit(device=True)
def block_reduce(value, red, is_max):
    """Every thread of the block gets the max (is_max) or the sum of `value` (tree in shared memory).

    blockDim.x must be a power of two. Ends with a barrier, so `red` can be reused at once.
    """
    tid = cuda.threadIdx.x
    red[tid] = value
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if tid < stride:
            if is_max:
                red[tid] = max(red[tid], red[tid + stride])
            else:
                red[tid] += red[tid + stride]
        cuda.syncthreads()
        stride //= 2
    result = red[0]
    cuda.syncthreads()   # everyone has read red[0] before anyone writes red again
    return result


@cuda.jit
def decode_attention_kernel(q, k_cache, v_cache, cache_len, out, scores, group, scale):
    """One block per query head h (KV head h // group); threads stride over cache positions.

    Three passes over the valid prefix n = cache_len[0] (read here, on the device):
    scores s_j = q.k_j * scale and their max -> e_j = exp(s_j - max) and their sum ->
    out[h, d] = sum_j e_j v_j[d] / sum. `scores` [H, max_seq] fp32 is this block's scratch row.
    """
    h = cuda.blockIdx.x
    kv = h // group
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x
    hd = q.shape[1]
    n = min(cache_len[0], k_cache.shape[1])      # never read past the cache, whatever cache_len says

    q_sh = cuda.shared.array(MAX_HEAD_DIM, float32)
    red = cuda.shared.array(MAX_BLOCK, float32)
    for d in range(tid, hd, nthreads):
        q_sh[d] = float32(q[h, d])
    cuda.syncthreads()                            # q_sh complete before any dot product

    local_max = float32(-math.inf)
    for j in range(tid, n, nthreads):
        s = float32(0.0)
        for d in range(hd):
            s += q_sh[d] * float32(k_cache[kv, j, d])
        s *= scale
        scores[h, j] = s
        local_max = max(local_max, s)
    m = block_reduce(local_max, red, True)

    local_sum = float32(0.0)
    for j in range(tid, n, nthreads):
        e = math.exp(scores[h, j] - m)
        scores[h, j] = e
        local_sum += e
    total = block_reduce(local_sum, red, False)   # its barriers also publish every scores[h, j]

    inv = float32(1.0) / total if total > 0 else float32(0.0)
    # Pass 3: threads split the head dim AND the keys. With hd <= blockDim, the block holds
    # `groups` copies of the head dim; group g sums keys g, g + groups, ... (a serial loop over
    # all n keys per thread would leave most of the block idle), then group 0 adds the groups up.
    groups = max(nthreads // hd, 1)
    g, d0 = tid // hd, tid % hd
    acc = float32(0.0)
    if g < groups:
        for d in range(d0, hd, nthreads):        # d0 only, unless the head dim is wider than the block
            part = float32(0.0)
            for j in range(g, n, groups):         # coalesced: neighbouring threads, neighbouring d
                part += scores[h, j] * float32(v_cache[kv, j, d])
            if d == d0:
                acc = part
            else:
                out[h, d] = part * inv           # hd > blockDim: one group, no cross-group sum
    red[tid] = acc
    cuda.syncthreads()                            # every group's partial sum is in red
    if groups > 1 and tid < hd:
        total_d = float32(0.0)
        for k in range(groups):
            total_d += red[k * hd + tid]
        out[h, tid] = total_d * inv
    elif groups == 1 and tid < min(hd, nthreads):
        out[h, tid] = acc * inv


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     cache_len: torch.Tensor, *, block_size: int = 256) -> torch.Tensor:
    """Attention of one new token: q [H, hd] over the first cache_len[0] positions of [KV, max_seq, hd].

    cache_len stays on the device and is read inside the kernel (no .item(), no host sync), so a
    captured CUDA graph can replay this launch at any length. Returns [H, hd] in q's dtype.
    """
    if q.dim() != 2 or k_cache.dim() != 3 or k_cache.shape != v_cache.shape:
        raise ValueError(f"decode_attention: q must be [H, hd] and both caches [KV, max_seq, hd], got "
                         f"{tuple(q.shape)}, {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    H, hd = q.shape
    KV, max_seq, cache_hd = k_cache.shape
    if cache_hd != hd or H % KV:
        raise ValueError(f"decode_attention: q {tuple(q.shape)} does not fit caches {tuple(k_cache.shape)}: "
                         "head_dim must match and H must be a multiple of KV")
    if hd > MAX_HEAD_DIM:
        raise ValueError(f"decode_attention: head_dim {hd} > {MAX_HEAD_DIM}; raise MAX_HEAD_DIM")
    if not isinstance(cache_len, torch.Tensor) or cache_len.numel() != 1 or cache_len.dtype != torch.int32:
        raise ValueError("decode_attention: cache_len must be an int32 tensor [1] on the device "
                         "(torch.tensor([n], dtype=torch.int32, device=...)), not a Python int")
    if block_size < 32 or block_size > MAX_BLOCK or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two in 32..{MAX_BLOCK}, got {block_size}")
    for t in (q, k_cache, v_cache):
        if t.dtype not in (torch.float32, torch.float16):
            raise ValueError(f"decode_attention works on float32/float16, got {t.dtype}")
    gpu.require_device(q, k_cache, v_cache, cache_len)
    out = torch.empty((H, hd), dtype=q.dtype, device=q.device)
    scores = torch.empty((H, max_seq), dtype=torch.float32, device=q.device)
    gpu.launch(decode_attention_kernel, H, block_size, q, k_cache, v_cache, cache_len.reshape(1), out,
               scores, H // KV, np.float32(1.0 / math.sqrt(hd)))
    return out
