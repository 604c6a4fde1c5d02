"""Day 54 -- the residual add and the next RMSNorm in one kernel.

Every sub-block ends with `h = h + x` and the next one starts with `rmsnorm(h)`: two launches
that both walk the same row. One block per row does both: add, store h (rounded to its dtype,
as HF's residual add in the model dtype), fold the squares of the stored values, reduce, scale.

Lesson: notes/day_54_fusion.md        Check: pytest checkers/day_54
"""
import math

import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32
from numba.core.types import float16

MAX_BLOCK = 1024  # shared-memory scratch size: one float per thread of the largest block


@cuda.jit
def add_rmsnorm_kernel(h, x, weight, out, n, eps, half):
    """One block per row: h += x in place, then out = rmsnorm(h) with day 10's fp32 recipe."""
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x
    partial = cuda.shared.array(MAX_BLOCK, float32)

    # TODO(day 54): 1. for each of this thread's columns c (tid, tid + nthreads, ...): s = h + x in fp32;
    #    store s into h[row, c] (that rounds it to h's dtype); read it back as v = float32(h[row, c])
    #    and add v * v to an fp32 acc. partial[tid] = acc; cuda.syncthreads().
    # 2. tree-reduce partial[] as on day 10 (a barrier after every step).
    # 3. inv_rms = 1 / sqrt(partial[0] / n + eps) in float32; for each of this thread's columns:
    #    normed = float32(h[row, c]) * inv_rms, rounded to fp16 first if `half`; out = weight * normed.
    pass


def add_rmsnorm(h: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float, *,
                block_size: int = 256) -> torch.Tensor:
    """h += x IN PLACE, then return rmsnorm(h, weight, eps) in h's shape and dtype.

    h, x [..., hidden] of the same shape and dtype (fp16 or fp32), weight [hidden] of that
    dtype. The sum is rounded to h's dtype before the norm reads it (HF adds residuals in the
    model dtype). Raise ValueError (one line) for shapes or dtypes that differ, a weight that is
    not [hidden], an h that cannot be viewed as rows (the update must land in h itself), or a
    block_size that is not a power of two <= 1024. One block of `block_size` threads per row.
    """
    raise NotImplementedError("Day 54: add_rmsnorm is not written yet -- edit days/day_54/add_rmsnorm.py "
                              "(lesson: notes/day_54_fusion.md)")
