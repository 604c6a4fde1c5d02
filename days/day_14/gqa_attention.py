"""Day 14 -- causal grouped-query attention for all heads in one launch.

Lesson: notes/day_14_gqa_attention.md        Check: pytest checkers/day_14
"""
import math

import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

MAX_SHARED_BYTES = 48 * 1024  # dynamic shared memory a block may ask for without opting in


@cuda.jit(device=True)
def block_max(red, base, tid, value):
    """Max of `value` over the block, through red[base : base + blockDim] (a power of two)."""
    # TODO(day 14): write value to red[base + tid]; tree over the block with cuda.syncthreads() each step;
    # TODO(day 14): read the result, then one more barrier before anyone reuses the buffer.
    pass


@cuda.jit(device=True)
def block_sum(red, base, tid, value):
    """Sum of `value` over the block, like block_max."""
    # TODO(day 14): the same tree as block_max, adding instead of taking the max.
    pass


@cuda.jit
def gqa_attention_kernel(q, k, v, out, scale, group):
    """One block per (query row t, query head h); it reads KV head h // group.

    Dynamic shared memory (fp32): [ q row (hd) | reduction buffer (blockDim) | scores (S) ].
    """
    # TODO(day 14): t, h from the block index; kv head = h // group; this row sees keys 0..S-T+t.
    # TODO(day 14): smem = cuda.shared.array(0, float32): stage the scaled q row, barrier;
    # TODO(day 14): scores for your strided keys into smem (fp32), block max, exp(score - max), block sum;
    # TODO(day 14): then one output element per thread: sum_j p_j * v[j, kvh, c] / sum.
    pass


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_size: int = 64) -> torch.Tensor:
    """Causal grouped-query attention, every head in one launch.

    q [T, H, hd], k and v [S, KV, hd] with H % KV == 0 and T <= S (any strides: the engine
    passes views of its KV cache). Query i sits at position S - T + i. Scale 1/sqrt(hd), fp32
    math. `block_size` threads (a power of two) per (row, head). Returns [T, H, hd] in q's dtype.
    """
    raise NotImplementedError("Day 14: attention is not written yet -- edit days/day_14/gqa_attention.py "
                              "(lesson: notes/day_14_gqa_attention.md)")
