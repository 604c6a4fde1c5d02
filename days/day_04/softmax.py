"""Day 04 -- a numerically stable softmax over each row, in one kernel (one block per row).

Lesson: notes/day_04_softmax.md        Check: pytest checkers/day_04
"""
import math

import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

MAX_BLOCK = 1024


@cuda.jit(device=True)
def block_reduce(buf, value, is_max):
    """Every thread of the block gets the max (or sum) of all threads' `value` (a day-03 tree)."""
    # TODO(day 04): buf[tid] = value; syncthreads; the tree with a barrier per step; read buf[0];
    # syncthreads again before returning it (the next call overwrites buf).
    pass


@cuda.jit
def softmax_kernel(x, out):
    """Block `row`: m = max(x), s = sum(exp(x - m)), out = exp(x - m) / s -- three strided passes."""
    # TODO(day 04): pass 1 max (from -inf; a row of -inf uses m = 0), pass 2 sum of exp(x - m) in float32,
    # pass 3 write exp(x - m) / s (0 when s == 0). Threads stride over the row: c = tid, tid + blockDim, ...
    pass


def softmax(x: torch.Tensor, *, block_size: int = 256) -> torch.Tensor:
    """Stable softmax over the last dim of a 2-D float32/float16 tensor, in x's dtype.

    One block of `block_size` threads (a power of two, 32..1024) per row; a row that is all -inf
    gives zeros (nothing to normalise), never NaN.
    """
    raise NotImplementedError("Day 04: softmax is not written yet -- edit days/day_04/softmax.py "
                              "(lesson: notes/day_04_softmax.md)")
