"""Day 10 -- RMSNorm: y = weight * (x / sqrt(mean(x^2) + eps)), exactly as HF's LlamaRMSNorm.

Lesson: notes/day_10_rmsnorm.md        Check: pytest checkers/day_10
"""
import math

import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32
from numba.core.types import float16

MAX_BLOCK = 1024  # shared-memory scratch size: one float per thread of the largest block


@cuda.jit
def rmsnorm_kernel(x, weight, out, n, eps, half):
    """One block per row: sum of squares (fp32) by a block reduction, then scale every element."""
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x
    partial = cuda.shared.array(MAX_BLOCK, float32)

    # TODO(day 10): 1. acc = fp32 sum of squares of this thread's strided slice (c = tid, tid + nthreads, ...);
    #    store it in partial[tid]; cuda.syncthreads().
    # 2. tree-reduce partial[] (step = nthreads // 2, ..., 1), cuda.syncthreads() after every step.
    # 3. inv_rms = 1 / sqrt(partial[0] / n + eps) in float32; for each of this thread's columns:
    #    normed = x * inv_rms (fp32), rounded to fp16 first if `half`; out = weight * normed.
    pass


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, *, block_size: int = 256) -> torch.Tensor:
    """RMSNorm over the last dim of x [..., hidden] with weight [hidden]; returns x's shape and dtype.

    Raise ValueError (one line) for a weight that is not [hidden], dtypes that differ or are not
    fp16/fp32, or a block_size that is not a power of two <= 1024. One block of `block_size`
    threads per row; `half` tells the kernel to round the normalized value to fp16 as HF does.
    """
    raise NotImplementedError("Day 10: rmsnorm is not written yet -- edit days/day_10/rmsnorm.py "
                              "(lesson: notes/day_10_rmsnorm.md)")
