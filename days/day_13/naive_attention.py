"""Day 13 -- naive attention for ONE head, in three kernels: scores, softmax, P @ V.

Lesson: notes/day_13_naive_attention.md        Check: pytest checkers/day_13
"""
import math

import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

MAX_THREADS = 1024  # the softmax block's reduction buffer; a block never has more threads


@cuda.jit
def scores_kernel(q, k, scores, scale, offset):
    """One thread per score: scores[i, j] = scale * (q[i] . k[j]), or -inf where key j is in
    query i's future (j > offset + i, offset = S - T)."""
    # TODO(day 13): (j, i) = cuda.grid(2); guard both; -inf above the shifted diagonal, else the scaled fp32 dot product.
    pass


@cuda.jit
def row_softmax_kernel(scores):
    """One block per row, in place: max, sum of exp(x - max), then exp(x - max) / sum."""
    # TODO(day 13): block max -> shared tree -> sum of exp(x - max) -> tree -> write; cuda.syncthreads() between steps.
    # (Or skip this kernel and call your day-04 softmax on the scores.)
    pass


@cuda.jit
def pv_kernel(probs, v, out):
    """One thread per output element: out[i, c] = sum_j probs[i, j] * v[j, c]."""
    # TODO(day 13): (c, i) = cuda.grid(2); guard; accumulate probs[i, j] * v[j, c] in fp32.
    pass


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, tile: int = 16,
                    softmax_threads: int = 64) -> torch.Tensor:
    """Causal attention for one head: softmax(q k^T / sqrt(d) + mask) v.

    q [T, d], k and v [S, d], T <= S; query i sits at position S - T + i (mask aligned to the
    end). Materializes the fp32 scores [T, S]: simple, and the reason flash attention exists.
    `tile` x `tile` threads per block for the scores and P @ V kernels; `softmax_threads`
    (a power of two) per row for the softmax. Returns [T, d] in q's dtype.
    """
    raise NotImplementedError("Day 13: naive_attention is not written yet -- edit days/day_13/naive_attention.py "
                              "(lesson: notes/day_13_naive_attention.md)")
