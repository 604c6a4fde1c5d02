"""Day 13 -- naive attention for ONE head, in three kernels: scores, softmax, P @ V.

Lesson: notes/day_13_naive_attention.md        Check: pytest checkers/day_13
"""
import math

import numpy as np
import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

MAX_THREADS = 1024  # the softmax block's reduction buffer; a block never has more threads


@cuda.jit
def scores_kernel(q, k, scores, scale, offset):
    """One thread per score: scores[i, j] = scale * (q[i] . k[j]), or -inf where key j is in
    query i's future (j > offset + i, offset = S - T)."""
    j, i = cuda.grid(2)                      # x runs along the keys, y along the queries
    if i < scores.shape[0] and j < scores.shape[1]:
        if j > offset + i:
            scores[i, j] = -math.inf
        else:
            acc = float32(0.0)
            for c in range(q.shape[1]):
                acc += float32(q[i, c]) * float32(k[j, c])
            scores[i, j] = acc * scale


@cuda.jit
def row_softmax_kernel(scores):
    """One block per row, in place: max, sum of exp(x - max), then exp(x - max) / sum."""
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x
    cols = scores.shape[1]
    red = cuda.shared.array(MAX_THREADS, float32)

    m = float32(-math.inf)
    for j in range(tid, cols, nthreads):
        m = max(m, scores[row, j])
    red[tid] = m
    cuda.syncthreads()
    half = nthreads // 2
    while half > 0:                          # tree: halve the active threads each step
        if tid < half:
            red[tid] = max(red[tid], red[tid + half])
        cuda.syncthreads()
        half //= 2
    m = red[0]
    cuda.syncthreads()                       # everyone has read red[0] before it is reused
    if m == -math.inf:                       # a fully masked row: define it as zeros
        m = float32(0.0)

    total = float32(0.0)
    for j in range(tid, cols, nthreads):
        total += math.exp(scores[row, j] - m)
    red[tid] = total
    cuda.syncthreads()
    half = nthreads // 2
    while half > 0:
        if tid < half:
            red[tid] += red[tid + half]
        cuda.syncthreads()
        half //= 2
    total = red[0]

    for j in range(tid, cols, nthreads):
        scores[row, j] = math.exp(scores[row, j] - m) / total if total > 0 else float32(0.0)


@cuda.jit
def pv_kernel(probs, v, out):
    """One thread per output element: out[i, c] = sum_j probs[i, j] * v[j, c]."""
    c, i = cuda.grid(2)
    if i < out.shape[0] and c < out.shape[1]:
        acc = float32(0.0)
        for j in range(probs.shape[1]):
            acc += probs[i, j] * float32(v[j, c])
        out[i, c] = acc


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, tile: int = 16,
                    softmax_threads: int = 64) -> torch.Tensor:
    """Causal attention for one head: softmax(q k^T / sqrt(d) + mask) v.

    q [T, d], k and v [S, d], T <= S; query i sits at position S - T + i (mask aligned to the
    end). Materializes the fp32 scores [T, S]: simple, and the reason flash attention exists.
    `tile` x `tile` threads per block for the scores and P @ V kernels; `softmax_threads`
    (a power of two) per row for the softmax. Returns [T, d] in q's dtype.
    """
    if q.dim() != 2 or k.dim() != 2 or v.dim() != 2:
        raise ValueError(f"naive_attention takes q [T, d], k [S, d], v [S, d]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    T, d = q.shape
    S = k.shape[0]
    if k.shape != (S, d) or v.shape != (S, d):
        raise ValueError(f"k and v must both be [S, {d}] like q's head size; got {tuple(k.shape)} and {tuple(v.shape)}")
    if T > S:
        raise ValueError(f"{T} queries but only {S} keys: every query needs its own key (T <= S)")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype}): cast them to one dtype")
    if softmax_threads & (softmax_threads - 1) or not 0 < softmax_threads <= MAX_THREADS:
        raise ValueError(f"softmax_threads={softmax_threads}: use a power of two up to {MAX_THREADS}")
    gpu.require_device(q, k, v)
    out = torch.empty(T, d, dtype=torch.float32, device=q.device)
    if T == 0:
        return out.to(q.dtype)
    scores = torch.empty(T, S, dtype=torch.float32, device=q.device)
    gpu.launch(scores_kernel, (gpu.cdiv(S, tile), gpu.cdiv(T, tile)), (tile, tile),
               q, k, scores, np.float32(1.0 / math.sqrt(d)), S - T)   # fp32: a Python float is fp64 in a kernel
    gpu.launch(row_softmax_kernel, T, softmax_threads, scores)
    gpu.launch(pv_kernel, (gpu.cdiv(d, tile), gpu.cdiv(T, tile)), (tile, tile), scores, v, out)
    return out.to(q.dtype)
