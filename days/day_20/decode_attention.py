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
    # TODO(day 20): red[tid] = value; barrier; halve the active threads each step (barrier after
    # each); read red[0]; one last barrier before anyone may write red again; return the result.
    pass


@cuda.jit
def decode_attention_kernel(q, k_cache, v_cache, cache_len, out, scores, group, scale):
    """One block per query head h (KV head h // group); threads stride over cache positions.

    Three passes over the valid prefix n = cache_len[0] (read here, on the device):
    scores s_j = q.k_j * scale and their max -> e_j = exp(s_j - max) and their sum ->
    out[h, d] = sum_j e_j v_j[d] / sum. `scores` [H, max_seq] fp32 is this block's scratch row.
    """
    # TODO(day 20): h = blockIdx.x, kv = h // group, n = min(cache_len[0], max_seq);
    # stage q[h] in shared memory as float32 (barrier); pass 1: scores + local max, block max;
    # pass 2: exp(s - max) + local sum, block sum; pass 3: thread (g, d) = divmod(tid, hd) sums
    # e_j * v[kv, j, d] over keys j = g, g + groups, ...; barrier; group 0 adds the groups, / sum.
    pass


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     cache_len: torch.Tensor, *, block_size: int = 256) -> torch.Tensor:
    """Attention of one new token: q [H, hd] over the first cache_len[0] positions of [KV, max_seq, hd].

    cache_len stays on the device and is read inside the kernel (no .item(), no host sync), so a
    captured CUDA graph can replay this launch at any length. Returns [H, hd] in q's dtype.
    """
    raise NotImplementedError("Day 20: decode_attention is not written yet -- edit days/day_20/decode_attention.py "
                              "(lesson: notes/day_20_decode_attention.md)")
