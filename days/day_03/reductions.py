"""Day 03 -- one block per row: row_sum and row_max with a shared-memory tree reduction.

Lesson: notes/day_03_reductions.md        Check: pytest checkers/day_03
"""
import math

import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

MAX_BLOCK = 1024   # shared arrays need a size known at compile time: the largest block we allow
WARP = 32


@cuda.jit(device=True)
def combine(a, b, is_max):
    """The reduction's operator: max or +."""
    # TODO(day 03): return the max of a and b if is_max, else their sum.
    pass


@cuda.jit
def row_reduce_kernel(x, out, is_max, use_shuffle):
    """Block `row` reduces x[row, :] into out[row].

    1. Each thread folds a strided slice of the row (c = tid, tid + B, ...) into a register.
    2. The B partial results go to shared memory; a tree halves the active threads each step,
       with a barrier between steps (each step reads what other threads wrote in the last one).
    3. On a GPU the last 32 values are folded by one warp with shuffles (no shared memory, no barrier).
    """
    # TODO(day 03): row = blockIdx.x, tid = threadIdx.x; partial = cuda.shared.array(MAX_BLOCK, float32);
    # start from the identity (-inf or 0), fold the strided slice, store, syncthreads, then the tree
    # (down to 1 value, or to 32 values + cuda.shfl_down_sync when use_shuffle); thread 0 writes out[row].
    pass


def row_sum(x: torch.Tensor, *, block_size: int = 256, warp_shuffle: bool | None = None) -> torch.Tensor:
    """[rows, cols] -> [rows] float32 sums, one block of `block_size` threads per row.

    warp_shuffle: finish with a warp shuffle (GPU only); None = on the GPU, off in the simulator.
    """
    raise NotImplementedError("Day 03: row_sum is not written yet -- edit days/day_03/reductions.py "
                              "(lesson: notes/day_03_reductions.md)")


def row_max(x: torch.Tensor, *, block_size: int = 256, warp_shuffle: bool | None = None) -> torch.Tensor:
    """[rows, cols] -> [rows] float32 maxima (-inf for a row of -inf); see row_sum for the knobs."""
    raise NotImplementedError("Day 03: row_max is not written yet -- edit days/day_03/reductions.py "
                              "(lesson: notes/day_03_reductions.md)")
