"""Day 24 -- the online softmax: one pass keeps a running (max, sum) that rescales as it goes.

Lesson: notes/day_24_online_softmax.md        Check: pytest checkers/day_24
"""
import math

import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

MAX_BLOCK = 1024


@cuda.jit(device=True)
def merge(m_a, l_a, m_b, l_b):
    """(max, sum) of the union of two parts: both sums rescaled to the larger max.

    A part that saw only -inf has (m, l) = (-inf, 0); when both have, the union does too
    (computing exp(-inf - -inf) would give NaN).
    """
    m = max(m_a, m_b)
    if m == -math.inf:
        return m, float32(0.0)
    return m, l_a * math.exp(m_a - m) + l_b * math.exp(m_b - m)


@cuda.jit
def online_softmax_kernel(x, out):
    """Block `row`: each thread folds its strided elements into a running (m, l); a shared-memory
    tree merges the block's pairs with the same rule; one more pass writes exp(x - m) / l."""
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x
    cols = x.shape[1]
    ms = cuda.shared.array(MAX_BLOCK, float32)
    ls = cuda.shared.array(MAX_BLOCK, float32)

    m = float32(-math.inf)            # the max so far
    l = float32(0.0)                  # sum of exp(x_j - m) so far, always relative to the current m
    for c in range(tid, cols, nthreads):
        xv = float32(x[row, c])
        m_new = max(m, xv)
        if m_new > -math.inf:         # all -inf so far: nothing to add (and -inf - -inf is NaN)
            l = l * math.exp(m - m_new) + math.exp(xv - m_new)
            m = m_new

    ms[tid] = m
    ls[tid] = l
    cuda.syncthreads()
    s = nthreads // 2
    while s > 0:
        if tid < s:
            m2, l2 = merge(ms[tid], ls[tid], ms[tid + s], ls[tid + s])
            ms[tid] = m2
            ls[tid] = l2
        cuda.syncthreads()            # this level is complete before the next one reads it
        s //= 2
    m = ms[0]
    l = ls[0]

    if l > 0:
        inv = float32(1.0) / l
        for c in range(tid, cols, nthreads):
            out[row, c] = math.exp(float32(x[row, c]) - m) * inv
    else:                             # a fully masked row: zeros, never NaN
        for c in range(tid, cols, nthreads):
            out[row, c] = float32(0.0)


def online_softmax(x: torch.Tensor, *, block_size: int = 256) -> torch.Tensor:
    """Softmax over the last dim of a 2-D float32/float16 tensor, in x's dtype, reading x twice
    (once for the running max and sum, once to write) instead of three times.

    One block of `block_size` threads (a power of two up to 1024) per row; a row that is all -inf
    gives zeros. A one-line ValueError unless x is 2-D float32/float16 and block_size is a power of
    two from 1 to 1024.
    """
    if x.dim() != 2:
        raise ValueError(f"online_softmax takes a 2-D [rows, cols] tensor, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"online_softmax takes float32 or float16, got {x.dtype}")
    if block_size < 1 or block_size > MAX_BLOCK or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two from 1 to {MAX_BLOCK}, got {block_size}")
    gpu.require_device(x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.shape[0] and x.shape[1]:
        gpu.launch(online_softmax_kernel, x.shape[0], block_size, x, out)
    return out


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, chunk: int = 16,
                      reverse: bool = False) -> torch.Tensor:
    """Causal GQA attention (the contract of shared.reference.attention) that never holds more
    than `chunk` keys' scores: per query row a running max m, sum l and output acc [hd], updated
    chunk by chunk with the online rescale. PyTorch ops per chunk: the flash algorithm in
    plain sight, before day 25 makes it a kernel.

    `reverse` walks the chunks last to first: the merge does not care about order, but early
    query rows then meet chunks they cannot see at all before any they can (m = -inf so far).

    A one-line ValueError unless q is [T, H, hd] and k and v are both [S, KV, hd] with q's head size
    hd, H is a multiple of KV (KV >= 1), T <= S and chunk >= 1.
    """
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"blocked_attention takes q [T, H, hd], k and v [S, KV, hd]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    T, H, hd = q.shape
    S, KV = k.shape[:2]
    if k.shape != (S, KV, hd) or v.shape != k.shape:
        raise ValueError(f"k and v must both be [S, KV, {hd}]; got {tuple(k.shape)} and {tuple(v.shape)}")
    if KV == 0 or H % KV:
        raise ValueError(f"{H} query heads cannot be split evenly over {KV} KV heads: H % KV must be 0")
    if T > S:
        raise ValueError(f"{T} queries but only {S} keys: the causal mask needs T <= S")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    g = H // KV
    qf = q.float().transpose(0, 1) / math.sqrt(hd)                  # [H, T, hd], scale folded in
    kf = k.float().transpose(0, 1).repeat_interleave(g, dim=0)      # [H, S, hd]: query head h -> KV h // g
    vf = v.float().transpose(0, 1).repeat_interleave(g, dim=0)
    qpos = torch.arange(S - T, S, device=q.device)[:, None]         # query i sits at S - T + i

    m = torch.full((H, T, 1), float("-inf"), device=q.device)       # O(1) state per row ...
    l = torch.zeros((H, T, 1), device=q.device)
    acc = torch.zeros((H, T, hd), device=q.device)                  # ... plus one output row
    starts = range(0, S, chunk)
    for start in (reversed(starts) if reverse else starts):
        end = min(start + chunk, S)
        s = qf @ kf[:, start:end].transpose(1, 2)                   # [H, T, chunk]: this chunk only
        kpos = torch.arange(start, end, device=q.device)[None, :]
        s = s.masked_fill(kpos > qpos, float("-inf"))
        m_new = torch.maximum(m, s.amax(-1, keepdim=True))
        base = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)  # nothing seen yet: no NaN
        alpha = torch.exp(m - base)                                 # rescales what was summed so far
        p = torch.exp(s - base)
        l = l * alpha + p.sum(-1, keepdim=True)
        acc = acc * alpha + p @ vf[:, start:end]
        m = m_new
    out = torch.where(l > 0, acc / l, torch.zeros_like(acc))
    return out.transpose(0, 1).to(q.dtype).contiguous()
